"""The dashboard: a small page served by the detector's own process, live over server-sent events.

``GET /``            the page (``dashboard.html``: plain HTML and JavaScript, no build step)
``GET /events``      server-sent events, one ``data: {json}`` per decision
``GET /state``       the latest decision and the override summary (JSON)
``POST /override``   ``{"state": "Focused"}`` or ``{"state": null}``: the person's override

It binds to loopback unless told otherwise. Each client's event queue is bounded (old
events are dropped for a slow client), so memory stays flat however long it runs.
"""

from __future__ import annotations

import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files

from brainfm.live.outputs import OverrideLog

QUEUE_SIZE = 256


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (loopback) -> ``(host, port)``."""
    host, _, port = address.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ValueError(f"--serve takes HOST:PORT or PORT, got {address!r}") from None


class Dashboard:
    """HTTP server thread plus the fan-out of decisions to connected pages."""

    def __init__(self, address: str, overrides: OverrideLog, states: tuple[str, ...]):
        self.overrides, self.states = overrides, states
        self.clients: list[queue.Queue] = []
        self.lock = threading.Lock()
        self.latest: dict | None = None
        self.page = files("brainfm.live").joinpath("dashboard.html").read_bytes()
        self.httpd = ThreadingHTTPServer(parse_address(address), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="dashboard", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def publish(self, record: dict) -> None:
        self.latest = record
        data = json.dumps({**record, "overrides": self.overrides.summary()})
        with self.lock:
            for q in self.clients:
                if q.full():
                    q.get_nowait()
                q.put_nowait(data)

    def close(self) -> None:
        with self.lock:
            for q in self.clients:
                q.put_nowait(None)
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        dash = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the detector prints its own lines
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path in ("/", "/index.html"):
                    self._send(200, dash.page, "text/html; charset=utf-8")
                elif self.path == "/state":
                    body = {"latest": dash.latest, "overrides": dash.overrides.summary(), "states": dash.states}
                    self._send(200, json.dumps(body).encode())
                elif self.path == "/events":
                    self._events()
                else:
                    self._send(404, b'{"error": "not found"}')

            def _events(self) -> None:
                q: queue.Queue = queue.Queue(QUEUE_SIZE)
                with dash.lock:
                    dash.clients.append(q)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                try:
                    self.wfile.write(f"event: hello\ndata: {json.dumps({'states': dash.states})}\n\n".encode())
                    self.wfile.flush()
                    while (data := q.get()) is not None:
                        self.wfile.write(f"data: {data}\n\n".encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with dash.lock:
                        dash.clients.remove(q)

            def do_POST(self) -> None:  # noqa: N802
                if self.path != "/override":
                    return self._send(404, b'{"error": "not found"}')
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                    t = dash.latest["t"] if dash.latest else None
                    dash.overrides.set(body.get("state"), t)
                except (ValueError, AttributeError) as err:
                    return self._send(400, json.dumps({"error": str(err)}).encode())
                self._send(200, json.dumps(dash.overrides.summary()).encode())

        return Handler
