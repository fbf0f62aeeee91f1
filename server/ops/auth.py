"""Optional API keys: ``Authorization: Bearer <key>``, compared in constant time."""

import hmac

from fastapi import Request

from server.errors import APIError


def check_key(request: Request, keys: list[str]) -> None:
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    ok = False
    for key in keys:  # no early exit: the time does not depend on which key matched
        ok |= hmac.compare_digest(token.encode(), key.encode())
    if scheme.lower() != "bearer" or not ok:
        raise APIError(401, "missing or invalid API key", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
