"""ASGI middleware: request ids with structured logs and counting; the gate (key, body cap)."""

import contextvars
import json
import logging
import time
import uuid

from server.errors import APIError
from server.ops.auth import key_ok, needs_key

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": request_id.get(),
            "msg": record.getMessage(),
        }
        for key in ("status", "path", "method", "duration_ms"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter())
    for name in ("server", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


access_log = logging.getLogger("server.access")
log = logging.getLogger("server.errors")


async def send_error(send, error: APIError, extra_headers: list | None = None) -> None:
    """Answer with ``error`` straight from ASGI (before the application runs)."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


class RequestContext:
    """Request id (taken from ``X-Request-Id`` or made), echoed back, on every log line;
    one access-log line and one ``llava_requests`` count per request."""

    def __init__(self, app, metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = {"code": 500, "started": False}

        async def tagged_send(message):
            if message["type"] == "http.response.start":
                status["started"] = True
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, tagged_send)
        except Exception:
            if status["started"]:
                raise  # mid-response: only cutting the connection tells the client
            # Answered here rather than by Starlette's outermost handler, which re-raises after
            # its 500 so that uvicorn drops the connection (without "Connection: close").
            log.exception("unhandled error")
            await send_error(tagged_send, APIError(500, "internal server error"))
        finally:
            self._done(scope, status["code"], started)
            request_id.reset(token)

    def _done(self, scope, code: int, started: float) -> None:
        path = scope.get("path", "")
        endpoint = path if path in ("/v1/chat/completions", "/v1/models", "/health", "/metrics") else "other"
        self.metrics.requests.labels(endpoint=endpoint, status=str(code)).inc()
        access_log.info(
            "%s %s -> %d", scope.get("method"), path, code,
            extra={"status": code, "path": path, "method": scope.get("method"),
                   "duration_ms": round((time.perf_counter() - started) * 1e3, 1)},
        )


class Gate:
    """What a request must pass before the application parses anything.

    1. The API key, from the headers alone: an unauthenticated client gets 401 without
       the server reading, parsing or validating its body.
    2. The body size: declared (``Content-Length``) or counted while reading a chunked
       body, over ``max_body_bytes`` is 413. The body is read here, whole, and handed
       on; later ``receive`` calls reach the client (so disconnects are still seen).
    """

    def __init__(self, app, *, keys: list[str], max_body_bytes: int, health_needs_key: bool,
                 metrics_needs_key: bool):
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.health_needs_key = health_needs_key
        self.metrics_needs_key = metrics_needs_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        guarded = self.keys and needs_key(path, health=self.health_needs_key, metrics=self.metrics_needs_key)
        if guarded and not key_ok(headers.get(b"authorization", b"").decode("latin-1"), self.keys):
            error = APIError(401, "missing or invalid API key", code="invalid_api_key",
                             headers={"WWW-Authenticate": "Bearer"})
            return await send_error(send, error)
        cap = self.max_body_bytes
        too_large = APIError(413, f"request body is larger than {cap} bytes", code="request_too_large")
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > cap:
            return await send_error(send, too_large, [(b"connection", b"close")])
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > cap:
                return await send_error(send, too_large, [(b"connection", b"close")])
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class InflightLimiter:
    """A bound on requests in flight; past it, 429 with Retry-After."""

    def __init__(self, limit: int, gauge):
        self.limit = limit
        self.count = 0
        self.gauge = gauge

    def acquire(self) -> None:
        if self.count >= self.limit:
            raise APIError(429, f"server is at its limit of {self.limit} requests in flight; retry shortly",
                           code="overloaded", headers={"Retry-After": "1"})
        self.count += 1
        self.gauge.set(self.count)

    def release(self) -> None:
        self.count -= 1
        self.gauge.set(self.count)
