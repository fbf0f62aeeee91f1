"""A request's images: fetched, charged to the budgets, decoded off the event loop.

Sources: ``data:image/...;base64,...``, ``http(s)://`` (``Fetcher``: checked
addresses, one deadline, bounded decoding), and ``file://`` below an explicitly
allowed directory only. The images of one request load concurrently; the first
failure cancels the others. Every failure is an ``APIError`` naming the image.
"""

import asyncio
import base64
import binascii
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image

from llava_model.image_processing import ImageError, ImageProcessingConfig, decode_image, fit_geometry, to_rgb
from server.config import ServerSettings
from server.errors import bad_request
from server.media.budget import RequestMedia, ServerMediaBudget
from server.media.cache import Prepared, PreparedCache, content_key
from server.media.fetch import Fetcher, FetchError, Resolver
from server.media.policy import AddressPolicy


class ImageLoader:
    """One per server: the fetcher, the decoding workers, the limits and budgets."""

    def __init__(
        self,
        settings: ServerSettings,
        processing: ImageProcessingConfig,
        metrics=None,
        resolver: Resolver | None = None,
        geometry: bool = True,
    ):
        self.settings = settings
        self.processing = processing
        self.geometry = geometry  # False: the engine's processor needs the image as it is (anyres)
        self.metrics = metrics
        self.fetcher = Fetcher(
            AddressPolicy(settings.allowed_image_hosts),
            connect_timeout_s=settings.image_connect_timeout_s,
            read_timeout_s=settings.image_timeout_s,
            resolver=resolver,
        )
        gauge = metrics.image_bytes_in_flight if metrics is not None else None
        self.budget = ServerMediaBudget(settings.max_image_bytes_in_flight, gauge)
        self.pool = ThreadPoolExecutor(max_workers=settings.image_workers, thread_name_prefix="image")
        self.cache = PreparedCache(settings.image_cache_bytes, metrics)

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def request_media(self) -> RequestMedia:
        s = self.settings
        return RequestMedia(self.budget, s.max_request_image_bytes, s.max_request_image_pixels)

    async def load_all(self, urls: list[str], media: RequestMedia) -> list[Prepared]:
        if len(urls) > self.settings.limit_images_per_prompt:
            raise bad_request(
                f"{len(urls)} images in one request; at most {self.settings.limit_images_per_prompt} are allowed",
                param="messages",
                code="too_many_images",
            )
        tasks = [asyncio.create_task(self._load(i, url, media)) for i, url in enumerate(urls)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()
            return [task.result() for task in tasks]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _load(self, index: int, url: str, media: RequestMedia) -> Prepared:
        where = f"image {index + 1}"
        started = time.perf_counter()
        try:
            data = await self._bytes(url, media)
        except FetchError as exc:
            raise bad_request(f"{where}: {exc}", param="messages", code="invalid_image") from None
        if self.metrics is not None:
            self.metrics.image_fetch.observe(time.perf_counter() - started)
        started = time.perf_counter()
        try:
            prepared = await asyncio.get_running_loop().run_in_executor(self.pool, self._prepared, data, media)
        except ImageError as exc:
            raise bad_request(f"{where}: {exc}", param="messages", code="invalid_image") from None
        if self.metrics is not None:
            self.metrics.image_preprocess.observe(time.perf_counter() - started)
        return prepared

    async def _bytes(self, url: str, media: RequestMedia) -> bytes:
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:  # e.g. an unclosed IPv6 bracket
            raise FetchError("the URL is not valid") from None
        s = self.settings
        if scheme == "data":
            return self._data_url(url, media)
        if scheme in ("http", "https"):
            return await self.fetcher.fetch(
                url, max_bytes=s.max_image_bytes, deadline_s=s.image_timeout_s,
                max_redirects=s.image_max_redirects, on_bytes=media.add_bytes,
            )
        if scheme == "file":
            return self._local(url, media)
        raise FetchError(f"unsupported URL scheme {scheme[:16] or '(none)'!r}; use http(s) or a data: URL")

    def _data_url(self, url: str, media: RequestMedia) -> bytes:
        header, _, payload = url.partition(",")
        if not header.startswith("data:image/") or ";base64" not in header:
            raise FetchError("data URLs must look like data:image/<type>;base64,<data>")
        size = len(payload) * 3 // 4
        if size > self.settings.max_image_bytes:
            raise FetchError(f"larger than the limit of {self.settings.max_image_bytes} bytes")
        media.add_bytes(size)
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise FetchError("data URL is not valid base64") from None

    def _local(self, url: str, media: RequestMedia) -> bytes:
        root = self.settings.allowed_local_image_dir
        if root is None:
            raise FetchError("file:// URLs are disabled (see --allowed-local-image-dir)")
        try:
            path = Path(unquote(urlsplit(url).path)).resolve()
        except (ValueError, OSError):  # e.g. an embedded NUL byte
            raise FetchError("not a valid file path") from None
        if not path.is_relative_to(root.resolve()):
            raise FetchError("file is outside the allowed local image directory")
        if not path.is_file():
            raise FetchError("no such file")
        size = path.stat().st_size
        if size > self.settings.max_image_bytes:
            raise FetchError(f"larger than the limit of {self.settings.max_image_bytes} bytes")
        media.add_bytes(size)
        return path.read_bytes()

    # ---- decoding (worker threads) -------------------------------------------------------
    def _prepared(self, data: bytes, media: RequestMedia) -> Prepared:
        """From the cache when these bytes were prepared before, else ``_prepare``d now."""
        key = content_key(data)
        entry = self.cache.get(key)
        if entry is not None:
            media.add_pixels(*entry.size)  # the same budgets as a fresh decode
            return entry
        size = _header_size(data)
        if size is not None and size[0] * size[1] <= self.settings.max_image_pixels:
            media.add_pixels(*size)  # else decode_image below refuses it with the reason
        entry = Prepared(self._prepare(data), key, size or (0, 0))
        self.cache.put(entry)
        return entry

    def _prepare(self, data: bytes) -> Image.Image:
        """Decode, orient, convert and bring to the model's square size, so the engine's own
        preprocessing has only the normalisation left to do. (Only where doing the geometry
        twice changes nothing: a resize target equal to the crop.)"""
        image = to_rgb(decode_image(data, max_pixels=self.settings.max_image_pixels))
        if not self.geometry or self.processing.shortest_edge != self.processing.image_size:
            return image
        return Image.fromarray(fit_geometry(image, self.processing))


def _header_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # noqa: BLE001 (PIL raises many types; decode_image then says why)
        return None
