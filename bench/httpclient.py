"""A minimal HTTP/1.1 keep-alive GET client on asyncio streams, for load generation and freshness probes.

A general client (httpx) costs more CPU per request than the server under test on a 2-core machine;
this one does only what the benchmark needs: GET, Content-Length bodies, one request at a time per
connection.
"""

from __future__ import annotations

import asyncio
import contextlib

_HEADER_END = b"\r\n\r\n"


class HttpError(RuntimeError):
    """The server's answer is not something this client understands (or the connection broke)."""


class HttpConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> HttpConnection:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of GET `path`; reconnects once if the server closed the idle connection."""
        if self._writer is None or self._writer.is_closing():
            await self.open()
        try:
            return await self._exchange(path)
        except (ConnectionError, asyncio.IncompleteReadError):
            await self.close()
            await self.open()
            return await self._exchange(path)

    async def _exchange(self, path: str) -> tuple[int, bytes]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
        head = await self._reader.readuntil(_HEADER_END)
        status_line, *header_lines = head[: -len(_HEADER_END)].split(b"\r\n")
        try:
            status = int(status_line.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpError(f"not an HTTP status line: {status_line[:80]!r}") from None
        length = None
        for line in header_lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            elif name.strip().lower() == b"transfer-encoding":
                raise HttpError("chunked responses are not supported by the benchmark client")
        if length is None:
            raise HttpError("response without Content-Length")
        body = await self._reader.readexactly(length) if length else b""
        return status, body

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
