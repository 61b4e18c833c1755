"""A scripted HTTP server on 127.0.0.1 (stdlib ``http.server`` in a thread): the fault injector of the HTTP
client tests. It stands in for an OpenAI-compatible or vLLM server at the network boundary, so that
statuses, malformed bodies and slow answers come over a real socket in a chosen order."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Step = tuple[int, str, float]
"""(status, body, delay_s) of one answer."""


class FaultServer:
    """Answers the i-th request to a path with ``routes[path][i]``, or with ``script[i]`` for a path without
    a route (the last entry repeats). ``calls`` counts every request; ``requests`` holds (method, path,
    headers, body) of each, in arrival order."""

    def __init__(self, script: list[Step], routes: dict[str, list[Step]] | None = None):
        self.script, self.routes = script, dict(routes or {})
        self.calls = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self._per_path: dict[str, int] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer._lock:
                    outer.calls += 1
                    outer.requests.append((self.command, self.path, dict(self.headers), body))
                    steps = outer.routes.get(self.path, outer.script)
                    i = outer._per_path.get(self.path, 0)
                    outer._per_path[self.path] = i + 1
                status, text, delay = steps[min(i, len(steps) - 1)]
                time.sleep(delay)
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout)
                    pass

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.base = self.root + "/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
