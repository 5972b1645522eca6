"""The model server's HTTP face (stdlib ThreadingHTTPServer): OpenAI-compatible chat completions, the model
list, health and Prometheus metrics on one port.

    POST /v1/chat/completions   {"messages": [...], "max_tokens"|"max_completion_tokens", "temperature",
                                 "stop", "n": 1}
    GET  /v1/models             the one model served (its id is the ModelDeployment's name)
    GET  /health                200 once the version is loaded and verified, 503 before
    GET  /metrics               Prometheus exposition (docs/serving.md)

Every answer echoes `x-request-id` and names the variant in `x-finetune-variant`. A bad request is a 400 in
OpenAI's error shape naming the field; a generation failure a 500.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from finetune_api.serving import REQUEST_ID_HEADER, VARIANT_HEADER, CapturedReply, ServeContract
from finetune_trainer.serve.batching import Generator, Request
from finetune_trainer.serve.metrics import ServerMetrics

MAX_BODY = 4 * 1024 * 1024
ROLES = ("system", "user", "assistant", "tool", "developer")


class RequestError(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise RequestError(f"{where} must be a string or a list of text parts", where)


def parse_request(body: bytes, max_new_tokens: int) -> Request:
    """A chat completion request, validated; RequestError names the field that is wrong."""
    try:
        data = json.loads(body or b"null")
    except ValueError as err:
        raise RequestError(f"the body is not JSON: {err}") from err
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        clean.append(
            {"role": message["role"], "content": _text(message.get("content", ""), f"messages[{i}].content")}
        )
    limit = data.get("max_completion_tokens", data.get("max_tokens", max_new_tokens))
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise RequestError("max_tokens must be a positive integer", "max_tokens")
    temperature = data.get("temperature", 0.0)
    if not isinstance(temperature, int | float) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
        raise RequestError("temperature must be a number from 0 to 2", "temperature")
    if data.get("stream", False) is not False:
        raise RequestError("stream must be false: replies are sent whole", "stream")
    if data.get("n", 1) != 1:
        raise RequestError("n must be 1", "n")
    stop = data.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise RequestError("stop must be a string or a list of up to 4 strings", "stop")
    return Request(clean, min(limit, max_new_tokens), float(temperature), tuple(stop))


class Server:
    """What the handler needs: the contract, the generator once loaded, metrics, and where replies go."""

    def __init__(self, contract: ServeContract, metrics: ServerMetrics) -> None:
        self.contract = contract
        self.metrics = metrics
        self.generator: Generator | None = None
        self.keep: Callable[[CapturedReply], None] | None = None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                return  # metrics tell the story; one line per request would drown the log

            def do_GET(self) -> None:
                if self.path == "/health":
                    ready = server.generator is not None
                    self._json(200 if ready else 503, {"status": "ok" if ready else "loading"})
                elif self.path == "/metrics":
                    self._send(200, generate_latest(server.metrics.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/v1/models":
                    model = {
                        "id": server.contract.deployment,
                        "object": "model",
                        "owned_by": "finetune-operator",
                    }
                    self._json(
                        200, {"object": "list", "data": [model | {"digest": server.contract.model.digest}]}
                    )
                else:
                    self._error(404, f"no route {self.path}")

            def do_POST(self) -> None:
                if self.path != "/v1/chat/completions":
                    self._error(404, f"no route {self.path}")
                    return
                started = time.monotonic()
                length = int(self.headers.get("content-length") or 0)
                if length > MAX_BODY:
                    self._error(413, f"the body is larger than {MAX_BODY} bytes", started=started)
                    return
                body = self.rfile.read(length)
                if server.generator is None:
                    self._error(503, "the model is still loading", started=started)
                    return
                try:
                    request = parse_request(body, server.contract.max_new_tokens)
                except RequestError as err:
                    self._error(400, str(err), param=err.param, started=started)
                    return
                try:
                    reply = server.generator.submit(request).result()
                except Exception as err:
                    self._error(500, f"generation failed: {type(err).__name__}: {err}", started=started)
                    return
                answer = {
                    "id": f"chatcmpl-{uuid.uuid4().hex}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": server.contract.deployment,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply.text},
                            "finish_reason": reply.finish_reason,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": reply.prompt_tokens,
                        "completion_tokens": reply.completion_tokens,
                        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                    },
                }
                self._json(200, answer, started=started)
                metrics = server.metrics
                metrics.tokens.labels(**metrics.labels, kind="prompt").inc(reply.prompt_tokens)
                metrics.tokens.labels(**metrics.labels, kind="completion").inc(reply.completion_tokens)
                request_id = self.headers.get(REQUEST_ID_HEADER)
                if request_id and server.keep is not None:
                    server.keep(
                        CapturedReply(
                            request_id=request_id,
                            variant=server.contract.variant,
                            digest=server.contract.model.digest,
                            time=datetime.now(UTC),
                            messages=list(request.messages),
                            reply=reply.text,
                            status=200,
                            latency_seconds=round(time.monotonic() - started, 6),
                        )
                    )

            def _error(
                self, code: int, message: str, *, param: str | None = None, started: float | None = None
            ) -> None:
                kind = "invalid_request_error" if code < 500 else "server_error"
                self._json(
                    code,
                    {"error": {"message": message, "type": kind, "param": param, "code": None}},
                    started=started,
                )

            def _json(self, code: int, payload: Any, *, started: float | None = None) -> None:
                self._send(code, json.dumps(payload).encode(), "application/json")
                if started is not None:
                    server.metrics.answered(code, time.monotonic() - started)

            def _send(self, code: int, data: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header(VARIANT_HEADER, server.contract.variant)
                request_id = self.headers.get(REQUEST_ID_HEADER)
                if request_id:
                    self.send_header(REQUEST_ID_HEADER, request_id)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def listen(server: Server, host: str, port: int) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer((host, port), server.handler())
    httpd.daemon_threads = True
    return httpd
