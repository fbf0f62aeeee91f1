"""Fetching an image over HTTP(S) from a destination nobody controls.

- The URL is parsed once, by the same parser the client connects with; URLs with
  credentials are refused.
- Each hop resolves its host once; every address is checked (``AddressPolicy``) and
  the connection goes to the address that was checked (the Host header and TLS SNI
  still carry the name), so a name that answers differently on a second lookup (DNS
  rebinding) cannot steer the connection elsewhere. Redirects are followed by hand,
  each hop checked the same way.
- One monotonic deadline covers the whole fetch: lookups, connects, redirects, body.
- ``Accept-Encoding: identity`` is asked for; a server that compresses anyway is
  inflated in bounded steps, so the byte cap holds on the *decoded* size (no gzip bomb).
- ``on_bytes(n)`` is called as bytes arrive, so the caller can charge its budgets
  before the bytes are all in memory.

Error messages give the reason, never a resolved address or an exception's repr.
"""

import asyncio
import ipaddress
import socket
import zlib
from collections.abc import Awaitable, Callable

import httpx

from server.media.policy import AddressPolicy

Resolver = Callable[[str, int], Awaitable[list[str]]]


class FetchError(Exception):
    """Why an image could not be fetched (safe to show the client)."""


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _Inflater:
    """Bounded decoding of a ``Content-Encoding`` (identity, gzip, deflate)."""

    def __init__(self, encoding: str):
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self.z = None
        elif encoding in ("gzip", "x-gzip"):
            self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self.z = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            raise FetchError(f"the image server sent an unsupported content-encoding {encoding[:32]!r}")

    def feed(self, data: bytes, room: int) -> bytes:
        """Decode ``data``; raise if it decodes to more than ``room`` bytes."""
        if self.z is None:
            out = data
        else:
            try:
                out = self.z.decompress(data, room + 1)
            except zlib.error:
                raise FetchError("the image server sent a corrupt compressed body") from None
        if len(out) > room:
            raise _TooLarge()
        return out


class _TooLarge(Exception):
    pass


class Fetcher:
    def __init__(
        self,
        policy: AddressPolicy,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.policy = policy
        self.resolver = resolver or system_resolver
        timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self.client = httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, trust_env=False, transport=transport
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def fetch(
        self,
        url: str,
        *,
        max_bytes: int,
        deadline_s: float,
        max_redirects: int,
        on_bytes: Callable[[int], None] = lambda n: None,
    ) -> bytes:
        try:
            async with asyncio.timeout(deadline_s):
                return await self._follow(url, max_bytes, max_redirects, on_bytes)
        except TimeoutError:
            raise FetchError(f"fetching it timed out (longer than {deadline_s:g} s in all)") from None

    async def _follow(self, url: str, cap: int, max_redirects: int, on_bytes) -> bytes:
        for _ in range(max_redirects + 1):
            target, name, address = await self._destination(url)
            try:
                request = self.client.build_request(
                    "GET",
                    target.copy_with(host=address),
                    headers={"Host": target.netloc.decode("ascii"), "Accept-Encoding": "identity"},
                    extensions={"sni_hostname": name} if target.scheme == "https" else {},
                )
                response = await self.client.send(request, stream=True)
                try:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchError("redirect without a location")
                        url = str(target.join(location))
                        continue
                    if response.status_code != 200:
                        raise FetchError(f"fetching it returned HTTP {response.status_code}")
                    return await self._body(response, cap, on_bytes)
                finally:
                    await response.aclose()
            except httpx.TimeoutException:
                raise FetchError("fetching it timed out") from None
            except httpx.HTTPError as exc:
                raise FetchError(f"fetching it failed: {type(exc).__name__}") from None
            except httpx.InvalidURL:
                # not an HTTPError: raised while httpx prepares the next request of a redirect
                # whose location it cannot build (data:, mailto:, "http:x.png", ...)
                raise FetchError("redirect to a URL that is not valid") from None
        raise FetchError(f"more than {max_redirects} redirects")

    async def _destination(self, url: str) -> tuple[httpx.URL, str, str]:
        """The parsed URL, its host name and the checked address to connect to."""
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise FetchError("the URL is not valid") from None
        if target.scheme not in ("http", "https"):
            raise FetchError("redirect to a non-HTTP URL" if target.scheme else "the URL has no scheme")
        if target.userinfo:
            raise FetchError("URLs with credentials are not accepted")
        name = target.host
        if not name:
            raise FetchError("the URL has no host")
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            addresses = [ipaddress.ip_address(name)]
        except ValueError:
            try:
                found = await self.resolver(name, port)
            except (OSError, UnicodeError):
                raise FetchError(f"cannot resolve host {name!r}") from None
            addresses = []
            for text in found:
                try:
                    addresses.append(ipaddress.ip_address(text.split("%")[0]))
                except ValueError:
                    continue
            if not addresses:
                raise FetchError(f"cannot resolve host {name!r}")
        if not all(self.policy.allows(name, ip) for ip in addresses):
            raise FetchError(f"destination {name!r} is not a public address; refused")
        return target, name, str(addresses[0])

    async def _body(self, response: httpx.Response, cap: int, on_bytes) -> bytes:
        too_large = FetchError(f"larger than the limit of {cap} bytes")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise too_large
        inflater = _Inflater(response.headers.get("content-encoding", ""))
        chunks, size, raw = [], 0, 0
        try:
            async for data in response.aiter_raw():
                raw += len(data)
                if raw > cap:
                    raise too_large
                piece = inflater.feed(data, cap - size)
                if piece:
                    size += len(piece)
                    on_bytes(len(piece))
                    chunks.append(piece)
        except _TooLarge:
            raise too_large from None
        return b"".join(chunks)
