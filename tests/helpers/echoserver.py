"""A tiny HTTP backend for data-plane tests, run as `python echoserver.py NAME HOST PORT` (stdlib only, so
the tests' kubelet can start it by path): every request is answered 200 with NAME, and its `x-request-id`
is printed to stdout as `request <id>`, so a test can tell which backend saw which request."""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    server_version = "echo"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall per answer

    def do_GET(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/healthz":
            print(f"request {self.headers.get('x-request-id', '-')}", flush=True)
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815 - the name BaseHTTPRequestHandler looks up

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    server = ThreadingHTTPServer((host, port), Echo)
    server.name = name  # type: ignore[attr-defined]
    print(f"{name} listening on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
