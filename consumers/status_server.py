"""The consumer's HTTP port: /metrics for Prometheus, /healthz and /readyz for orchestrators.

It runs in threads of its own, so it answers (and reports a wedged loop) even when the worker's event loop
is blocked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import orjson
from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from consumers.progress import ConsumerProgress

StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Health probes every few seconds would drown the log."""


class StatusServer:
    """Serves a ConsumerProgress's checks and the process's metrics on host:port until `close`."""

    def __init__(self, progress: ConsumerProgress, host: str, port: int) -> None:
        self.progress = progress
        metrics_app = make_wsgi_app()

        def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            check = {"/healthz": progress.health, "/readyz": progress.readiness}.get(path)
            if check is None:
                body: Iterable[bytes] = metrics_app(environ, start_response)
                return body
            ok, document = check()
            payload = orjson.dumps(document)
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
            return [payload]

        # Binding here, not in the thread, so a port in use fails the caller with OSError at once.
        self._server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
        self.port: int = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="consumer-status", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
