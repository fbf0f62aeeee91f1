"""Images of a request: fetched, capped, checked and decoded off the event loop.

Sources: ``data:image/...;base64,...``, ``http(s)://`` (one shared client; connect and
total timeouts; a byte cap enforced while streaming; redirects followed by hand, each
hop checked; private, loopback, link-local and metadata destinations refused unless
allow-listed), and ``file://`` below an explicitly allowed directory only. Every
failure is an ``APIError`` 400 naming the image and the reason.
"""

import asyncio
import base64
import binascii
import ipaddress
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx
from PIL import Image

from llava_model.image_processing import ImageError, ImageProcessingConfig, decode_image, fit_geometry, to_rgb
from server.config import ServerSettings
from server.errors import bad_request


class ImageFetchError(Exception):
    """Why one image could not be used (wrapped into a 400 naming the image)."""


def _networks(entries: list[str]) -> tuple[set[str], list[ipaddress._BaseNetwork]]:
    hosts, nets = set(), []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.add(entry.lower())
    return hosts, nets


def _forbidden(ip: ipaddress._BaseAddress) -> bool:
    return (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
        or ip.is_multicast or ip.is_unspecified
    )


class ImageLoader:
    """One per server: the HTTP client, the worker pool and the limits."""

    def __init__(self, settings: ServerSettings, processing: ImageProcessingConfig, metrics=None):
        self.settings = settings
        self.processing = processing
        self.metrics = metrics
        self.allowed_hosts, self.allowed_nets = _networks(settings.allowed_image_hosts)
        timeout = httpx.Timeout(settings.image_timeout_s, connect=settings.image_connect_timeout_s)
        self.client = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)
        self.pool = ThreadPoolExecutor(max_workers=settings.image_workers, thread_name_prefix="image")

    async def aclose(self) -> None:
        await self.client.aclose()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- sources ---------------------------------------------------------------------------
    async def load_all(self, urls: list[str]) -> list[Image.Image]:
        if len(urls) > self.settings.limit_images_per_prompt:
            raise bad_request(
                f"{len(urls)} images in one request; at most {self.settings.limit_images_per_prompt} are allowed",
                param="messages",
                code="too_many_images",
            )
        return list(await asyncio.gather(*(self._load(i, url) for i, url in enumerate(urls))))

    async def _load(self, index: int, url: str) -> Image.Image:
        where = f"image {index + 1}"
        started = time.perf_counter()
        try:
            data = await self._bytes(url)
        except ImageFetchError as exc:
            raise bad_request(f"{where}: {exc}", param="messages", code="invalid_image") from None
        if self.metrics is not None:
            self.metrics.image_fetch.observe(time.perf_counter() - started)
        started = time.perf_counter()
        try:
            image = await asyncio.get_running_loop().run_in_executor(self.pool, self._prepare, data)
        except ImageError as exc:
            raise bad_request(f"{where}: {exc}", param="messages", code="invalid_image") from None
        if self.metrics is not None:
            self.metrics.image_preprocess.observe(time.perf_counter() - started)
        return image

    async def _bytes(self, url: str) -> bytes:
        scheme = urlsplit(url).scheme.lower()
        if scheme == "data":
            return self._data_url(url)
        if scheme in ("http", "https"):
            return await self._fetch(url)
        if scheme == "file":
            return self._local(url)
        raise ImageFetchError(f"unsupported URL scheme {scheme or '(none)'!r}; use http(s) or a data: URL")

    def _data_url(self, url: str) -> bytes:
        header, _, payload = url.partition(",")
        if not header.startswith("data:image/") or ";base64" not in header:
            raise ImageFetchError("data URLs must look like data:image/<type>;base64,<data>")
        if len(payload) * 3 // 4 > self.settings.max_image_bytes:
            raise ImageFetchError(f"larger than the limit of {self.settings.max_image_bytes} bytes")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageFetchError("data URL is not valid base64") from None

    def _local(self, url: str) -> bytes:
        root = self.settings.allowed_local_image_dir
        if root is None:
            raise ImageFetchError("file:// URLs are disabled (see --allowed-local-image-dir)")
        path = Path(unquote(urlsplit(url).path)).resolve()
        if not path.is_relative_to(root.resolve()):
            raise ImageFetchError("file is outside the allowed local image directory")
        if not path.is_file():
            raise ImageFetchError("no such file")
        if path.stat().st_size > self.settings.max_image_bytes:
            raise ImageFetchError(f"larger than the limit of {self.settings.max_image_bytes} bytes")
        return path.read_bytes()

    async def _check_destination(self, url: str) -> None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if not host:
            raise ImageFetchError("URL has no host")
        if host in self.allowed_hosts:
            return
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise ImageFetchError(f"cannot resolve host {host!r}") from None
        for info in infos:
            ip = ipaddress.ip_address(info[4][0])
            if _forbidden(ip) and not any(ip in net for net in self.allowed_nets):
                raise ImageFetchError(
                    f"destination {host} ({ip}) is a private, loopback, link-local or reserved address; refused"
                )

    async def _fetch(self, url: str) -> bytes:
        cap = self.settings.max_image_bytes
        for _ in range(self.settings.image_max_redirects + 1):
            await self._check_destination(url)
            try:
                async with self.client.stream("GET", url) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise ImageFetchError("redirect without a location")
                        url = urljoin(url, location)
                        if urlsplit(url).scheme.lower() not in ("http", "https"):
                            raise ImageFetchError("redirect to a non-HTTP URL")
                        continue
                    if response.status_code != 200:
                        raise ImageFetchError(f"fetching it returned HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > cap:
                        raise ImageFetchError(f"larger than the limit of {cap} bytes")
                    chunks, size = [], 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > cap:
                            raise ImageFetchError(f"larger than the limit of {cap} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.TimeoutException:
                raise ImageFetchError("fetching it timed out") from None
            except httpx.HTTPError as exc:
                raise ImageFetchError(f"fetching it failed: {type(exc).__name__}") from None
        raise ImageFetchError(f"more than {self.settings.image_max_redirects} redirects")

    # ---- decoding (worker threads) -------------------------------------------------------
    def _prepare(self, data: bytes) -> Image.Image:
        """Decode, orient, convert and bring to the model's square size, so the engine's
        own preprocessing has only the normalisation left to do. (Only where doing the
        geometry twice changes nothing: a resize target equal to the crop.)"""
        image = to_rgb(decode_image(data, max_pixels=self.settings.max_image_pixels))
        if self.processing.shortest_edge != self.processing.image_size:
            return image
        return Image.fromarray(fit_geometry(image, self.processing))
