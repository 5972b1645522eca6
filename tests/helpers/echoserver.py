"""A tiny HTTP backend for data-plane tests, run as `python echoserver.py NAME HOST PORT` (stdlib only, so
the tests' kubelet can start it by path): every request is answered 200 with NAME, and its `x-request-id`
is printed to stdout as `request <id>`, so a test can tell which backend saw which request; `/metrics`
counts them for Prometheus (`echo_requests_total`), `/healthz` is the readiness probe. Also the
Deployment and Service that run it (`deployment`, `service`): NAME is the pod's name, HOST its address."""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PORT = 8000
ANSWERED: list[str] = []  # request ids (list.append is atomic: the server's threads share it)


class Echo(BaseHTTPRequestHandler):
    server_version = "echo"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall per answer

    def do_GET(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/metrics":
            body = f"# TYPE echo_requests_total counter\necho_requests_total {len(ANSWERED)}\n".encode()
        else:
            if self.path != "/healthz":
                ANSWERED.append(self.headers.get("x-request-id", "-"))
                print(f"request {ANSWERED[-1]}", flush=True)
            body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815 - the name BaseHTTPRequestHandler looks up

    def log_message(self, format: str, *args: object) -> None:
        pass


def deployment(name: str, replicas: int) -> dict[str, Any]:
    """`replicas` echo servers labelled app=echo, variant=`name`, each answering with its pod's name."""
    labels = {"app": "echo", "variant": name}
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    container = {
        "name": "echo",
        "image": "localhost/echo:test",
        "command": ["python", str(Path(__file__).resolve())],
        "args": ["$(POD_NAME)", "$(POD_IP)", str(PORT)],
        "env": env,
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def service(name: str) -> dict[str, Any]:
    """A Service selecting the Deployment `name`, its port `http` (8000)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": "echo", "variant": name},
            "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
        },
    }


def main() -> None:
    name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    server = ThreadingHTTPServer((host, port), Echo)
    server.name = name  # type: ignore[attr-defined]
    print(f"{name} listening on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
