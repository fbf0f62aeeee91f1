"""Image fetching against hostile servers on loopback, in process (no engine).

Each test is one class of attack from ``tests/advisories.md``: DNS rebinding, redirect
to a non-allowed loopback address, slow drip, gzip bomb, a failing sibling, budgets,
and what error messages may say.
"""

import asyncio
import base64
import socket
import time
import tracemalloc

import pytest

from llava_model.image_processing import ImageProcessingConfig
from server.config import ServerSettings
from server.errors import APIError
from server.media.loader import ImageLoader
from tests.hostile import hostile_server, redirect
from tests.images import noise
from tests.server_proc import png

PROCESSING = ImageProcessingConfig(image_size=32, shortest_edge=32)


def loader(**overrides) -> ImageLoader:
    settings = {"allowed_image_hosts": ["127.0.0.1"], "image_timeout_s": 1.0, "image_connect_timeout_s": 0.5,
                "max_image_bytes": 300_000, **overrides}
    return ImageLoader(ServerSettings(**settings), PROCESSING)


def load(images: ImageLoader, *urls: str, answers=None, calls: dict | None = None):
    """Load ``urls`` as one request; return the images or the APIError.

    ``answers(host, call)``: the event loop's resolver answers from it for the names it
    knows (the rest resolve as usual), counting calls per name in ``calls``. Injected in
    the loop, so the check and the connection see the same resolver; nothing touches
    system DNS."""

    async def run():
        if answers is not None:
            loop = asyncio.get_running_loop()
            real = loop.getaddrinfo

            async def fake(host, port, *args, **kwargs):
                name = host.decode() if isinstance(host, bytes) else host
                answer = answers(name, calls.get(name, 0))
                if answer is None:
                    return await real(host, port, *args, **kwargs)
                calls[name] = calls.get(name, 0) + 1
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer, port))]

            loop.getaddrinfo = fake
        try:
            with images.request_media() as media:
                return await images.load_all(list(urls), media)
        except APIError as exc:
            return exc
        finally:
            await images.aclose()

    return asyncio.run(run())


def data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def assert_refused(result, *fragments: str) -> str:
    assert isinstance(result, APIError) and result.status == 400, result
    for fragment in fragments:
        assert fragment in result.message, result.message
    return result.message


def test_a_plain_image_loads():
    with hostile_server() as (base, record):
        result = load(loader(), base + "/img.png")
    assert not isinstance(result, APIError), result.message
    assert result[0].image.size == (32, 32)
    assert record.headers["/img.png"]["accept-encoding"] == "identity"


def test_dns_rebinding_cannot_reach_loopback():
    """The name answers a public address for the check and loopback afterwards; the
    connection must go to the address that was checked, never to the loopback server."""
    def rebinding(host, call):
        if host != "rebind.test":
            return None
        return "93.184.216.34" if call == 0 else "127.0.0.1"

    calls: dict[str, int] = {}
    with hostile_server() as (base, record):
        port = base.rsplit(":", 1)[1]
        result = load(loader(allowed_image_hosts=[]), f"http://rebind.test:{port}/img.png",
                      answers=rebinding, calls=calls)
    assert record.hits.get("/img.png", 0) == 0, "the fetch reached the loopback server"
    assert_refused(result, "image 1")
    assert calls["rebind.test"] == 1  # resolved once, connected to what was checked


def test_refusal_does_not_echo_the_resolved_address():
    def internal(host, call):
        return "10.20.30.40" if host == "intranet.test" else None

    result = load(loader(allowed_image_hosts=[]), "http://intranet.test/a.png", answers=internal, calls={})
    message = assert_refused(result, "refused")
    assert "10.20.30.40" not in message


def test_redirect_to_a_non_allowed_loopback_address_is_refused():
    with hostile_server("127.0.0.2") as (inner, inner_record):
        hop = {"/hop": redirect(inner + "/img.png")}
        with hostile_server(routes=hop) as (base, _):
            result = load(loader(), base + "/hop")
    assert_refused(result, "refused")
    assert inner_record.hits == {}


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1\\@example.com/a.png", "http://user:pw@127.0.0.1/a.png", "http://2130706433/a.png",
            "http://[::ffff:127.0.0.1]/a.png", "http://0x7f.1/a.png", "http://100.100.100.200/latest/meta-data"],
)
def test_parser_tricks_are_refused(url):
    result = load(loader(allowed_image_hosts=[]), url)
    assert isinstance(result, APIError) and result.status == 400, result


@pytest.mark.parametrize(
    "location", ["data:image/png;base64,AAAA", "mailto:x@y", "javascript:alert(1)", "about:blank", "http:x.png",
                 "file:x", "http://[zz/x"],
)
def test_a_redirect_to_a_url_httpx_cannot_build_is_a_400(location):
    # httpx prepares the next request of a redirect while receiving it, and raises InvalidURL
    # (not an HTTPError) for these; the fetcher let that escape as a 500
    with hostile_server(routes={"/hop": redirect(location)}) as (base, _):
        result = load(loader(), base + "/hop")
    assert_refused(result, "image 1:")


@pytest.mark.parametrize("url", ["http://[zz/x", "https://[::1/a.png", "file:///tmp/a.png%00.txt"])
def test_urls_python_cannot_parse_are_a_400(url, tmp_path):
    # urlsplit raises on an unclosed IPv6 bracket, Path on an embedded NUL; both were 500s
    result = load(loader(allowed_local_image_dir=tmp_path), url)
    assert_refused(result, "image 1:")


def test_slow_drip_hits_one_deadline():
    """Each byte arrives well within the per-read timeout; the whole fetch may not take
    longer than --image-timeout-s."""
    with hostile_server() as (base, _):
        started = time.monotonic()
        result = load(loader(image_timeout_s=1.0), base + "/drip")
        took = time.monotonic() - started
    assert_refused(result, "longer than 1 s")
    assert took < 5.0  # the drip would take 400 s


def test_gzip_bomb_is_capped_on_decoded_bytes():
    """The server compresses though asked not to; inflating stops at the cap instead of
    materialising the bomb chunk by chunk."""
    with hostile_server() as (base, record):
        tracemalloc.start()
        try:
            result = load(loader(), base + "/gzip-bomb")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert_refused(result, "larger than the limit of 300000 bytes")
    assert record.headers["/gzip-bomb"]["accept-encoding"] == "identity"
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB held while refusing a gzip bomb"


def test_a_failing_image_cancels_its_siblings():
    with hostile_server() as (base, record):
        started = time.monotonic()
        result = load(loader(image_timeout_s=30.0), base + "/drip-fast", "data:image/png;base64,bm90IGFuIGltYWdl")
        assert_refused(result, "image 2", "cannot decode")
        deadline = time.monotonic() + 3.0
        while "/drip-fast" not in record.hung_up and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "/drip-fast" in record.hung_up, "the sibling fetch kept running after the request failed"
    assert record.hung_up["/drip-fast"] - started < 3.0


def test_undecodable_image_error_has_no_internals():
    message = assert_refused(load(loader(), "data:image/png;base64," + base64.b64encode(b"GIF89a junk").decode()),
                             "cannot decode")
    for leak in ("0x", "BytesIO", "object at", "Traceback", "/"):
        assert leak not in message, message


def test_request_wide_byte_budget():
    big = data_url(noise(150, 150, seed=1))  # ~68 KB each
    result = load(loader(max_request_image_bytes=100_000), big, big)
    assert isinstance(result, APIError) and result.status == 400 and result.code == "request_media_too_large"
    assert len(load(loader(max_request_image_bytes=200_000), big, big)) == 2


def test_request_wide_pixel_budget():
    url = data_url(noise(100, 100, seed=2))
    result = load(loader(max_request_image_pixels=15_000), url, url)
    assert isinstance(result, APIError) and result.status == 400 and "pixels in total" in result.message


def test_server_wide_budget_is_429_and_is_given_back():
    images = loader(max_image_bytes_in_flight=200_000)
    url = data_url(noise(150, 150, seed=3))  # ~68 KB encoded + 67.5 KB decoded

    async def run():
        first = images.request_media()
        await images.load_all([url], first)  # holds its images until released
        try:
            with images.request_media() as second:
                await images.load_all([url], second)
        except APIError as exc:
            refused = exc
        else:
            refused = None
        first.release()
        with images.request_media() as third:  # the budget came back
            await images.load_all([url], third)
        held = images.budget.held
        await images.aclose()
        return refused, held

    refused, held = asyncio.run(run())
    assert refused is not None and refused.status == 429 and refused.headers["Retry-After"] == "1"
    assert held == 0


@pytest.mark.parametrize("processing", [PROCESSING, ImageProcessingConfig(image_size=32, shortest_edge=40)])
def test_prepared_images_never_share_a_cache_key(processing):
    """vLLM keys its prefix and encoder caches on a hash of the image we hand it. Images
    with the same raw bytes but other shapes, or that carry the same EXIF ImageID, must
    get different keys (the hash-collision advisories)."""
    import io
    import uuid

    import numpy as np
    from PIL import Image
    from vllm.multimodal.hasher import MultiModalHasher

    pixels = np.asarray(noise(60, 20, seed=6)).tobytes()
    wide = Image.frombytes("RGB", (60, 20), pixels)
    tall = Image.frombytes("RGB", (20, 60), pixels)

    def with_image_id(image) -> bytes:
        exif = Image.Exif()
        exif[Image.ExifTags.Base.ImageID] = str(uuid.UUID(int=7))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", exif=exif)
        return buf.getvalue()

    images = ImageLoader(ServerSettings(), processing)
    with images.request_media() as media:
        pairs = [
            (images._prepared(png(wide), media).image, images._prepared(png(tall), media).image),
            (images._prepared(with_image_id(noise(40, 30, seed=1)), media).image,
             images._prepared(with_image_id(noise(40, 30, seed=2)), media).image),
        ]
    for first, second in pairs:
        assert MultiModalHasher.hash_kwargs("sha256", image=first) != MultiModalHasher.hash_kwargs(
            "sha256", image=second)


def test_prepared_images_are_reused_by_content_and_bounded():
    images = loader(image_cache_bytes=3 * 32 * 32 * 3)  # room for three prepared 32x32 images
    urls = [data_url(noise(50, 40, seed=i)) for i in range(4)]

    async def run():
        out = []
        for url in [urls[0], urls[0], urls[1], urls[2], urls[3], urls[0]]:
            with images.request_media() as media:
                out.append((await images.load_all([url], media))[0])
        # A cached image counts against the pixel budget as a fresh one does (50x40 > 1999).
        with images.request_media() as media:
            media.max_pixels = 1999
            try:
                await images.load_all([urls[0]], media)
            except APIError as exc:
                out.append(exc)
        await images.aclose()
        return out

    first, again, *_, evicted, refused = asyncio.run(run())
    assert again is first  # the same bytes: the prepared image itself, nothing decoded
    assert evicted is not first and evicted.key == first.key  # pushed out by three others, made anew
    assert evicted.image.tobytes() == first.image.tobytes()
    assert len(images.cache) == 3 and images.cache.held == 3 * 32 * 32 * 3
    assert isinstance(refused, APIError) and "pixels in total" in refused.message
