"""API keys and what each may do. `LEADSCORE_API_KEYS` lists keys, each optionally with its scopes after a colon
(`reader:read`, `producer:write`, `ops:admin`, `tool:read+write`); a key without scopes may do everything.

  read    GET routes and POST /leads/batch-get (reads that take a body)
  write   POST /events
  admin   everything, and it alone the model registry (/models) and erasure (DELETE /leads/{id})

Keys are compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from app.settings import Scope, parse_key

# POST routes that only read.
_READING_POSTS = frozenset({"/leads/batch-get"})


def required_scope(method: str, path: str) -> Scope:
    if path == "/models" or path.startswith("/models/"):
        return Scope.ADMIN
    if method in ("GET", "HEAD", "OPTIONS") or (method == "POST" and path in _READING_POSTS):
        return Scope.READ
    if method == "POST" and path == "/events":
        return Scope.WRITE
    return Scope.ADMIN


@dataclass(frozen=True)
class ApiKeys:
    scopes_by_key: dict[bytes, frozenset[Scope]]

    @classmethod
    def parse(cls, entries: list[str]) -> ApiKeys:
        parsed = (parse_key(entry) for entry in entries)
        return cls({key.encode(): scopes for key, scopes in parsed})

    @property
    def open(self) -> bool:
        """No keys configured: anyone who can reach the API may use it."""
        return not self.scopes_by_key

    def scopes(self, presented: bytes | None) -> frozenset[Scope] | None:
        """The presented key's scopes, or None for no key or an unknown one (every key is compared, in constant
        time, so the answer's timing does not tell how much of a key was right)."""
        found: frozenset[Scope] | None = None
        for key, scopes in self.scopes_by_key.items():
            if hmac.compare_digest(key, presented or b"") and presented is not None:
                found = scopes
        return found

    def allows(self, scopes: frozenset[Scope], needed: Scope) -> bool:
        return needed in scopes or Scope.ADMIN in scopes
