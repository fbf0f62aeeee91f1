"""Prepared images by the hash of their bytes: a chat UI re-sends the same image every
turn, and decoding, resizing and hashing it again each time is wasted work.

An entry is the image after decoding, orientation, conversion and the model's geometry,
with the size it had before (so a cached image counts against the pixel budgets exactly
as a fresh one would: a request gets the same answer whatever the cache holds). Least
recently used entries go first once the bytes held pass the bound.

The key is the SHA-256 of the encoded bytes: the server's own, never a client's, over
the whole content (not a prefix, not a weak hash). It also names the image to vLLM
(``multi_modal_uuids``), whose prefix and encoder caches then need no pixel hash.
"""

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image


def content_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Prepared:
    image: Image.Image
    key: str  # content_key of the encoded bytes
    size: tuple[int, int]  # width, height before preprocessing

    @property
    def nbytes(self) -> int:
        return self.image.width * self.image.height * len(self.image.getbands())


class PreparedCache:
    def __init__(self, max_bytes: int, metrics=None):
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.held = 0
        self._entries: OrderedDict[str, Prepared] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Prepared | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if self.metrics is not None:
            (self.metrics.image_cache_hits if entry is not None else self.metrics.image_cache_misses).inc()
        return entry

    def put(self, entry: Prepared) -> None:
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(entry.key, None)
            if old is not None:
                self.held -= old.nbytes
            self._entries[entry.key] = entry
            self.held += entry.nbytes
            while self.held > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.held -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._entries)
