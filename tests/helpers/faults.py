"""Faults: the simulator's own (`control`), and a switchable one in front of an HTTP service (a proxy that forwards,
or answers 503, or stalls)."""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


def control(sim: Any, method: str, body: dict[str, Any] | None = None, auth: bool = True) -> httpx.Response:
    """A request to the simulator's /simulator/faults (simulator/faults.py)."""
    headers = {"Authorization": f"PVEAPIToken={sim.token_id}={sim.token_secret}"} if auth else {}
    trust = ssl.create_default_context(cafile=sim.cafile)
    return httpx.request(method, f"{sim.url}/simulator/faults", json=body, headers=headers, verify=trust)


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class FaultyProxy:
    """Forwards every request to `target` while healthy; `failing` answers 503, `stall_s` delays the answer."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.failing = False
        self.stall_s = 0.0
        self.refused = 0  # requests answered with a fault
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.failing:
                    proxy.refused += 1
                    self._answer(503, b'{"code": "UNAVAILABLE", "message": "injected fault"}')
                    return
                time.sleep(proxy.stall_s)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                answer = httpx.request(self.command, proxy.target + self.path, headers=headers, content=body)
                self._answer(answer.status_code, answer.content, answer.headers.get("content-type"))

            def _answer(self, status: int, body: bytes, content_type: str | None = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type or "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-proxy", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
