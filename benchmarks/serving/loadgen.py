"""A load generator for any OpenAI-compatible chat server, with image requests.

Closed loop (``concurrency`` requests always in flight) or open loop (``rate``
requests per second, Poisson arrivals). Every request streams, so time to first
token (TTFT), inter-token latency (ITL) and time per output token (TPOT) are
measured from the chunks; ``ignore_eos`` + ``min_tokens`` fix the output length.

    python -m benchmarks.serving.loadgen --base-url http://127.0.0.1:8000 --model tiny
"""

import argparse
import asyncio
import base64
import io
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field

import httpx

from tests.images import noise, photo_like

WORDS = ("red blue green circle square triangle left right above below small large "
         "how many objects are there in the picture what colour is shape near far").split()


@dataclass
class LoadConfig:
    base_url: str
    model: str
    api_key: str | None = None
    num_requests: int = 64
    concurrency: int | None = 16  # closed loop; None with rate set: open loop
    rate: float | None = None  # requests per second (Poisson)
    image_size: tuple[int, int] = (336, 336)
    image_kind: str = "photo"  # photo | noise
    images_per_request: tuple[int, ...] = (1,)  # cycled, e.g. (1, 2)
    input_words: int = 64  # text length (words; about one token each)
    output_tokens: int = 64
    warmup: int = 2
    seed: int = 0
    timeout_s: float = 600.0
    # False: a new connection per request. llama-server (llama.cpp, as built by llamacpp_venv.sh)
    # closes a kept-alive connection after a streamed response while advertising keep-alive, so a
    # reused connection fails now and then ("Server disconnected without sending a response").
    keepalive: bool = True


@dataclass
class Result:
    ok: bool
    error: str = ""
    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    itls: list[float] = field(default_factory=list)
    text: str = ""


def _image_url(cfg: LoadConfig, seed: int) -> str:
    make = photo_like if cfg.image_kind == "photo" else noise
    image = make(*cfg.image_size, seed=seed)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def build_requests(cfg: LoadConfig, count: int, offset: int = 0) -> list[dict]:
    """Distinct images and texts per request (and per ``cfg.seed``), so no server can
    answer from its image or prefix cache."""
    rng = random.Random(cfg.seed + offset)
    bodies = []
    for i in range(count):
        n_images = cfg.images_per_request[i % len(cfg.images_per_request)]
        parts = [{"type": "image_url", "image_url": {"url": _image_url(cfg, cfg.seed * 100_000 + offset + i * 7 + k)}}
                 for k in range(n_images)]
        text = " ".join(rng.choice(WORDS) for _ in range(cfg.input_words))
        parts.append({"type": "text", "text": text})
        bodies.append({
            "model": cfg.model, "messages": [{"role": "user", "content": parts}],
            "max_tokens": cfg.output_tokens, "min_tokens": cfg.output_tokens, "ignore_eos": True,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True},
        })
    return bodies


async def send(client: httpx.AsyncClient, cfg: LoadConfig, body: dict) -> Result:
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    start = time.perf_counter()
    last = None
    result = Result(ok=False)
    try:
        async with client.stream("POST", cfg.base_url + "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                result.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if "error" in chunk:
                    result.error = str(chunk["error"])[:200]
                    return result
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                    result.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
                pieces = [(c.get("delta") or {}).get("content") or "" for c in chunk.get("choices", [])]
                result.text += "".join(pieces)
                if any(pieces):
                    now = time.perf_counter()
                    if last is None:
                        result.ttft = now - start
                    else:
                        result.itls.append(now - last)
                    last = now
        result.latency = time.perf_counter() - start
        result.ok = result.output_tokens > 0 and last is not None
        if not result.ok:
            result.error = "stream ended without tokens or usage"
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    return result


async def _closed_loop(client, cfg, bodies) -> list[Result]:
    queue = list(bodies)
    results: list[Result] = []

    async def worker():
        while queue:
            results.append(await send(client, cfg, queue.pop()))

    await asyncio.gather(*(worker() for _ in range(cfg.concurrency or 1)))
    return results


async def _open_loop(client, cfg, bodies) -> list[Result]:
    rng = random.Random(cfg.seed)
    tasks = []
    for body in bodies:
        tasks.append(asyncio.create_task(send(client, cfg, body)))
        await asyncio.sleep(rng.expovariate(cfg.rate))
    return list(await asyncio.gather(*tasks))


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0}
    ordered = sorted(values)

    def pct(q):
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    return {"mean": statistics.fmean(ordered), "p50": pct(0.5), "p99": pct(0.99)}


def summarize(cfg: LoadConfig, results: list[Result], duration: float) -> dict:
    good = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in good)
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in good if r.output_tokens > 1]
    return {
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("api_key",)},
        "completed": len(good),
        "errors": len(results) - len(good),
        "error_samples": sorted({r.error for r in results if not r.ok})[:5],
        "duration_s": duration,
        "requests_per_s": len(good) / duration if duration else 0.0,
        "output_tokens_per_s": tokens / duration if duration else 0.0,
        "ttft_s": _stats([r.ttft for r in good]),
        "tpot_s": _stats(tpots),
        "itl_s": _stats([x for r in good for x in r.itls]),
        "e2e_s": _stats([r.latency for r in good]),
        "prompt_tokens_mean": statistics.fmean(r.prompt_tokens for r in good) if good else 0.0,
        "output_tokens_mean": tokens / len(good) if good else 0.0,
        "images_per_request_mean": statistics.fmean(
            cfg.images_per_request[i % len(cfg.images_per_request)] for i in range(len(results))
        ) if results else 0.0,
    }


async def run_load(cfg: LoadConfig) -> dict:
    bodies = build_requests(cfg, cfg.num_requests)
    warm = build_requests(cfg, cfg.warmup, offset=10_000_000)
    limits = httpx.Limits(max_connections=max(cfg.concurrency or 0, 256),
                          **({} if cfg.keepalive else {"max_keepalive_connections": 0}))
    async with httpx.AsyncClient(timeout=cfg.timeout_s, limits=limits) as client:
        if warm:
            await _closed_loop(client, LoadConfig(**{**asdict(cfg), "concurrency": len(warm)}), warm)
        start = time.perf_counter()
        if cfg.rate:
            results = await _open_loop(client, cfg, bodies)
        else:
            results = await _closed_loop(client, cfg, bodies)
        duration = time.perf_counter() - start
    return summarize(cfg, results, duration)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--api-key")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rate", type=float, help="open loop: requests per second")
    p.add_argument("--image-size", type=int, nargs=2, default=(336, 336))
    p.add_argument("--image-kind", choices=["photo", "noise"], default="photo")
    p.add_argument("--images-per-request", type=int, nargs="+", default=[1])
    p.add_argument("--input-words", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    cfg = LoadConfig(
        base_url=args.base_url, model=args.model, api_key=args.api_key, num_requests=args.num_requests,
        concurrency=None if args.rate else args.concurrency, rate=args.rate, image_size=tuple(args.image_size),
        image_kind=args.image_kind, images_per_request=tuple(args.images_per_request),
        input_words=args.input_words, output_tokens=args.output_tokens, warmup=args.warmup,
    )
    print(json.dumps(asyncio.run(run_load(cfg)), indent=2))


if __name__ == "__main__":
    main()
