"""``llava-serve`` / ``python -m server``: flags in the spirit of ``vllm serve``.

Every flag can also come from the environment as ``LLAVA_<FLAG>`` (e.g.
``LLAVA_MODEL``, ``LLAVA_API_KEY=k1,k2``); flags win. SIGTERM stops accepting
connections, lets requests in flight finish within ``--shutdown-grace-s``, shuts
the engine down and exits 0.
"""

import argparse
import errno
import ipaddress
import logging
import socket
import sys

from pydantic import ValidationError

from server.config import ServerSettings
from server.engine import StartupError, check_startup


def _graceful_server_class():
    import contextlib
    import signal

    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises the signal that stopped it, so the process dies *by* SIGTERM;
        after a clean drain and engine shutdown we exit 0 instead."""

        async def startup(self, sockets=None):
            # uvicorn listens on ``sockets`` right after the app's startup (the engine's load):
            # they are made reusable in between, never while the model loads
            app_startup = self.lifespan.startup

            async def then_reusable():
                await app_startup()
                reusable_once_listening(sockets or [])

            self.lifespan.startup = then_reusable
            await super().startup(sockets=sockets)

        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return GracefulServer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llava-serve", description="OpenAI-compatible server for LLaVA models.")
    add = p.add_argument
    add("--model", help="model directory (llava-hf layout); default: the built-in model in models/default")
    add("--served-model-name")
    add("--host")
    add("--port", type=int)
    add("--api-key", action="append", help="accepted API key (repeatable)")
    add("--api-key-file", help="file with one API key per line")
    add("--allow-unauthenticated", action="store_true", default=None,
        help="allow listening on a non-loopback address without an API key")
    add("--health-needs-key", action="store_true", default=None)
    add("--metrics-needs-key", action="store_true", default=None)
    add("--max-model-len", type=int)
    add("--max-num-seqs", type=int)
    add("--kv-cache-gb", type=float)
    add("--block-size", type=int, help="KV-cache block in tokens: the grain of prefix-cache reuse")
    add("--tensor-parallel-size", type=int)
    add("--pipeline-parallel-size", type=int)
    add("--dtype")
    add("--enforce-eager", action="store_true", default=None)
    add("--chat-template", help="vicuna_v1, mistral_instruct, chatml, or a Jinja file")
    add("--reply-memory-tokens", type=int,
        help="ids of sent replies kept, so a reply sent back as history reads as the tokens generated (0: none)")
    add("--lora-modules", action="append", metavar="NAME=PATH",
        help="a LoRA adapter of the LLM served as model NAME (repeatable; PEFT directory)")
    add("--max-loras", type=int, help="adapters one engine step may mix (default 4)")
    add("--max-lora-rank", type=int, help="largest adapter rank accepted (default 64)")
    add("--runtime-lora-dir", metavar="DIR",
        help="enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter for adapters below DIR "
             "(needs --api-key or --api-key-file)")
    add("--limit-images-per-prompt", type=int)
    add("--max-image-bytes", type=int)
    add("--max-image-pixels", type=int)
    add("--max-request-image-bytes", type=int, help="all images of one request together (400 past it)")
    add("--max-request-image-pixels", type=int, help="all images of one request together (400 past it)")
    add("--max-image-bytes-in-flight", type=int, help="server-wide image memory (429 past it)")
    add("--image-timeout-s", type=float, help="deadline for the whole fetch of one image, redirects included")
    add("--image-connect-timeout-s", type=float)
    add("--image-max-redirects", type=int)
    add("--allowed-image-hosts", action="append", help="host or CIDR allowed even if private (repeatable)")
    add("--allowed-local-image-dir", help="serve file:// image URLs from below this directory")
    add("--image-workers", type=int)
    add("--image-cache-bytes", type=int, help="prepared images kept by content hash, LRU (0: none)")
    add("--frontend-threads", type=int, help="torch threads of the HTTP process (image resizing)")
    add("--cpu-reserved-cores", type=int, help="CPU engines: cores not bound to the model (vLLM default 1)")
    add("--max-inflight", type=int)
    add("--request-timeout-s", type=float)
    add("--shutdown-grace-s", type=float)
    add("--max-body-bytes", type=int)
    add("--log-level")
    return p


def settings_from(argv: list[str] | None) -> ServerSettings:
    args = vars(parser().parse_args(argv))
    given = {k: v for k, v in args.items() if v is not None}
    return ServerSettings(**given)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: ServerSettings) -> None:
    """Open by default only on loopback: a network address needs a key or an explicit opt-out."""
    if is_loopback(settings.host) or settings.api_keys() or settings.allow_unauthenticated:
        return
    raise ExposureError(
        f"refusing to listen on {settings.host} without an API key: anyone who can reach it could use "
        "the model. Set one with --api-key / LLAVA_API_KEY (or --api-key-file), or pass "
        "--allow-unauthenticated (LLAVA_ALLOW_UNAUTHENTICATED=1) if a proxy in front checks access."
    )


class ExposureError(ValueError):
    pass


def bind_listeners(host: str, port: int) -> list[socket.socket]:
    """Bind every address ``host`` resolves to, before the engine loads (loading takes from
    seconds to minutes): a port already in use is refused at once, and nothing can take the
    port while the model loads. The sockets listen only once the app is ready (uvicorn calls
    ``listen``), so until then connections are refused."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sockets.append(_bind(family, kind, proto, address))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = (exc.strerror or str(exc)).lower()
        hint = "; another process holds it: stop it or pick another --port" if exc.errno == errno.EADDRINUSE else ""
        raise StartupError(f"cannot listen on {host}:{port}: {reason}{hint}") from None
    return sockets


def reusable_once_listening(sockets: list[socket.socket]) -> None:
    """SO_REUSEADDR on the listeners, set just before they listen. The connections they accept
    inherit it, and Linux lets a new SO_REUSEADDR bind pass the TIME_WAIT connections a stopped
    server leaves on its port (for a minute) only if those had it too: without this, a restart
    right after a stop was refused as "address already in use". Not set while the model loads,
    when it would let a second server bind the same port (see ``_bind``); once listening, no
    other socket can bind it, SO_REUSEADDR or not."""
    for sock in sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)


def _bind(family: int, kind: int, proto: int, address: tuple) -> socket.socket:
    """Bound without SO_REUSEADDR where possible: Linux lets two SO_REUSEADDR sockets share a
    port while neither listens yet, so two servers loading at once would both get it. Only
    where that bind fails is it tried with SO_REUSEADDR, which succeeds if all the port holds is
    connections of a server stopped moments ago (TIME_WAIT; ``reusable_once_listening``), and
    still fails on a live holder."""
    sock = socket.socket(family, kind, proto)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> None:
    try:
        settings = settings_from(argv)
        check_exposure(settings)
        # Model directory and config.json, parallel layout: refused here, before any engine.
        check_startup(settings)
        listeners = bind_listeners(settings.host, settings.port)
    except ValidationError as exc:
        first = exc.errors()[0]
        sys.exit(f"llava-serve: error: {'.'.join(map(str, first['loc']))}: {first['msg']}")
    except (StartupError, ExposureError) as exc:
        sys.exit(f"llava-serve: error: {exc}")

    import uvicorn

    from server.app import build_app
    from server.ops.middleware import configure_logging

    configure_logging(settings.log_level)
    import torch

    torch.set_num_threads(settings.frontend_threads)
    if not is_loopback(settings.host) and not settings.api_keys():
        logging.getLogger("server").warning("listening on %s without an API key (--allow-unauthenticated)",
                                            settings.host)
    config = uvicorn.Config(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    logging.getLogger("server").info("listening on %s once the engine is ready",
                                     ", ".join(_address(sock) for sock in listeners))
    _graceful_server_class()(config).run(sockets=listeners)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


if __name__ == "__main__":
    main()
