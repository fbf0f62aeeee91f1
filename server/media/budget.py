"""What images may cost: per request and for the whole server.

Bytes are charged as they arrive (encoded bytes while fetching or decoding a data URL,
then 3 bytes per pixel for the decoded picture), before the memory is used; the
request's charge is released when its images have been handed on (or it fails).

- Server-wide: image bytes held in flight by all requests; past it, 429 with
  ``Retry-After`` (the request can succeed later).
- Per request: total image bytes and total pixels across its images; past them, 400
  (the same request would fail again).
"""

import threading
from typing import Self

from server.errors import APIError, bad_request


class ServerMediaBudget:
    """Image bytes held by all requests in flight (thread-safe: decoding runs in workers)."""

    def __init__(self, limit: int, gauge=None):
        self.limit = limit
        self.held = 0
        self.gauge = gauge
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            if self.held + n > self.limit:
                raise APIError(
                    429, "the server is holding as many image bytes as it may; retry shortly",
                    code="media_budget_exhausted", headers={"Retry-After": "1"},
                )
            self.held += n
            self._show()

    def give_back(self, n: int) -> None:
        with self._lock:
            self.held -= n
            self._show()

    def _show(self) -> None:
        if self.gauge is not None:
            self.gauge.set(self.held)


class RequestMedia:
    """One request's charge: its own limits, and its share of the server's budget.

    Use as a context manager; everything it took goes back on exit, whatever happened.
    """

    def __init__(self, server: ServerMediaBudget, max_bytes: int, max_pixels: int):
        self.server = server
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.image_bytes = 0  # encoded bytes of this request's images
        self.pixels = 0
        self.charged = 0  # what this request holds of the server's budget
        self.closed = False
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        with self._lock:
            charged, self.charged, self.closed = self.charged, 0, True
        if charged:
            self.server.give_back(charged)

    def add_bytes(self, n: int) -> None:
        """Encoded image bytes arriving (fetch chunks, a decoded data URL)."""
        with self._lock:
            if self.image_bytes + n > self.max_bytes:
                raise bad_request(
                    f"the request's images are larger than {self.max_bytes} bytes in total",
                    param="messages", code="request_media_too_large",
                )
            self.image_bytes += n
        self._charge(n)

    def add_pixels(self, width: int, height: int) -> None:
        """A picture about to be decoded (known from its header)."""
        n = width * height
        with self._lock:
            if self.pixels + n > self.max_pixels:
                raise bad_request(
                    f"the request's images have more than {self.max_pixels} pixels in total",
                    param="messages", code="request_media_too_large",
                )
            self.pixels += n
        self._charge(3 * n)

    def _charge(self, n: int) -> None:
        self.server.take(n)
        with self._lock:
            late = self.closed  # a worker still decoding after the request ended
            if not late:
                self.charged += n
        if late:
            self.server.give_back(n)
            raise APIError(499, "the request has ended")
