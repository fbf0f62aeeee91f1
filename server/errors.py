"""One error type, always answered in OpenAI's shape.

``{"error": {"message", "type", "param", "code"}}`` with the matching status. Request
validation problems become 400s with a readable message (never pydantic's internals);
anything unexpected becomes a 500 that says nothing about the server's insides.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("server.errors")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none"}


def _location(loc: tuple) -> str:
    """``messages[0].content`` from pydantic's loc, without union-member and tag noise."""
    parts: list[str] = []
    for part in loc:
        part = str(part)
        if part == "body" or "[" in part or "-" in part or part in _TYPE_NAMES:
            continue
        if parts and parts[-1] == part:  # a discriminator tag followed by the same field
            continue
        parts.append(part)
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    if errors[0].get("type") == "json_invalid":
        return "request body is not valid JSON", None
    # The most specific place wins (a list alternative's inner error over "not a string").
    where = max((_location(tuple(e.get("loc", ()))) for e in errors), key=len)
    # Alternatives of one union fail together: say what each wanted, once.
    same = [e for e in errors if _location(tuple(e.get("loc", ()))) == where]
    wanted = []
    for e in same:
        msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        if msg not in wanted:
            wanted.append(msg)
    message = " or ".join(wanted) if len(wanted) > 1 else wanted[0]
    rest = len(errors) - len(same)
    more = f" (and {rest} more problem(s))" if rest else ""
    return f"{where}: {message}{more}", where


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind and kind != "application/json" and not kind.endswith("+json"):
            # FastAPI parses only JSON-typed bodies (so a browser's cross-site form post cannot
            # make a request); curl's -d alone sends a form type: say what is missing
            return bad_request(f"the body must be JSON sent with Content-Type: application/json "
                               f"(it came as {kind[:64]!r})").response()
        message, param = validation_message(exc)
        return bad_request(message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return APIError(exc.status_code, message, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error")
        return APIError(500, "internal server error").response()
