"""Optional API keys: ``Authorization: Bearer <key>``, compared in constant time."""

import hmac


def key_ok(authorization: str, keys: list[str]) -> bool:
    """True when the ``Authorization`` header value carries one of ``keys``."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    ok = False
    for key in keys:  # no early exit: the time does not depend on which key matched
        ok |= hmac.compare_digest(token.encode(), key.encode())
    return scheme.lower() == "bearer" and ok


def needs_key(path: str, *, health: bool, metrics: bool) -> bool:
    """Every path needs the key (when keys are set), except /health and /metrics unless asked."""
    if path == "/health":
        return health
    if path == "/metrics":
        return metrics
    return True
