"""ASGI middleware: request ids with structured logs, body-size cap, request counting."""

import contextvars
import json
import logging
import time
import uuid

from server.errors import APIError

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


class RequestContext:
    """Request id (taken from ``X-Request-Id`` or made), echoed back, on every log line;
    one access-log line and one ``llava_requests`` count per request; body cap (413)."""

    def __init__(self, app, max_body_bytes: int, metrics):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = {"code": 500}
        cap = self.max_body_bytes

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            await self._reply(send, rid, APIError(413, f"request body is larger than {cap} bytes"), status)
            self._done(scope, status["code"], started)
            request_id.reset(token)
            return

        received = {"bytes": 0}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > cap:
                    raise APIError(413, f"request body is larger than {cap} bytes")
            return message

        async def tagged_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, limited_receive, tagged_send)
        finally:
            self._done(scope, status["code"], started)
            request_id.reset(token)

    async def _reply(self, send, rid, error: APIError, status) -> None:
        status["code"] = error.status
        body = json.dumps(error.body()).encode()
        await send({
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"x-request-id", rid.encode("latin-1"))],
        })
        await send({"type": "http.response.body", "body": body})

    def _done(self, scope, code: int, started: float) -> None:
        path = scope.get("path", "")
        endpoint = path if path in ("/v1/chat/completions", "/v1/models", "/health", "/metrics") else "other"
        self.metrics.requests.labels(endpoint=endpoint, status=str(code)).inc()
        access_log.info(
            "%s %s -> %d", scope.get("method"), path, code,
            extra={"status": code, "path": path, "method": scope.get("method"),
                   "duration_ms": round((time.perf_counter() - started) * 1e3, 1)},
        )


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
