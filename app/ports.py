"""Ports a leadscore process listens on: taken ones are refused up front with a message saying what to do."""

from __future__ import annotations

import socket


class PortInUse(OSError):
    """A port the process must listen on is taken; the message names it and what to do."""


def ensure_port_free(host: str, port: int, *, what: str, option: str) -> None:
    """Raise PortInUse unless `host:port` can be bound now (`what` listens there, `option` chooses the port)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The option servers set: a port whose old connections sit in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUse(
                f"port {port} on {host} is already in use ({exc.strerror}), so {what} cannot listen there: "
                f"stop what uses it, or choose another port with {option}"
            ) from None
