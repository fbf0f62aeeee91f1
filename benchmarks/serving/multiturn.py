"""Multi-turn conversations about one image, as chat UIs send them: every turn re-sends the
whole history, the image included. Time to first token per turn shows what the server's
caches save: later turns should need neither the image's preparation and vision tower
nor the prefill of the history (prefix caching keyed by the image's content).

Conversations run one after another (concurrency 1), each with its own image.

    python -m benchmarks.serving.multiturn --base-url http://127.0.0.1:8000 --model tiny
"""

import argparse
import asyncio
import json
import random
import statistics
from dataclasses import asdict, dataclass

import httpx

from benchmarks.serving.loadgen import WORDS, LoadConfig, _image_url, send


@dataclass
class MultiTurnConfig:
    base_url: str
    model: str
    api_key: str | None = None
    conversations: int = 4
    turns: int = 4
    image_size: tuple[int, int] = (336, 336)
    image_kind: str = "photo"
    input_words: int = 32  # per user turn
    output_tokens: int = 32  # per assistant turn
    seed: int = 0
    timeout_s: float = 600.0
    keepalive: bool = True  # False: a new connection per request (see LoadConfig.keepalive)


def _body(cfg: MultiTurnConfig, messages: list[dict]) -> dict:
    return {
        "model": cfg.model, "messages": messages, "max_tokens": cfg.output_tokens,
        "min_tokens": cfg.output_tokens, "ignore_eos": True, "temperature": 0.0, "stream": True,
        "stream_options": {"include_usage": True},
    }


async def run_multiturn(cfg: MultiTurnConfig) -> dict:
    """TTFT of every turn of every conversation, and turn ``k`` against turn 1."""
    rng = random.Random(cfg.seed)
    load = LoadConfig(base_url=cfg.base_url, model=cfg.model, api_key=cfg.api_key,
                      image_size=cfg.image_size, image_kind=cfg.image_kind, timeout_s=cfg.timeout_s)
    ttfts: list[list[float]] = [[] for _ in range(cfg.turns)]
    prompts: list[list[int]] = [[] for _ in range(cfg.turns)]
    errors: list[str] = []
    limits = httpx.Limits(**({} if cfg.keepalive else {"max_keepalive_connections": 0}))
    async with httpx.AsyncClient(timeout=cfg.timeout_s, limits=limits) as client:
        for conversation in range(cfg.conversations):
            image = {"type": "image_url", "image_url": {"url": _image_url(load, 7_000_000 + cfg.seed * 1000 + conversation)}}
            history: list[dict] = []
            for turn in range(cfg.turns):
                text = {"type": "text", "text": " ".join(rng.choice(WORDS) for _ in range(cfg.input_words))}
                user = {"role": "user", "content": [image, text] if turn == 0 else [text]}
                result = await send(client, load, _body(cfg, [*history, user]))
                if not result.ok:
                    errors.append(result.error)
                    break
                ttfts[turn].append(result.ttft)
                prompts[turn].append(result.prompt_tokens)
                history += [user, {"role": "assistant", "content": result.text}]
    means = [statistics.fmean(t) if t else 0.0 for t in ttfts]
    later = [x for t in ttfts[1:] for x in t]
    first = means[0]
    return {
        "config": {k: v for k, v in asdict(cfg).items() if k != "api_key"},
        "completed_turns": sum(len(t) for t in ttfts),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "ttft_s_by_turn": means,
        "prompt_tokens_by_turn": [statistics.fmean(p) if p else 0.0 for p in prompts],
        "turn2_over_turn1": means[1] / first if first and cfg.turns > 1 else 0.0,
        "later_over_turn1": statistics.fmean(later) / first if first and later else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--api-key")
    p.add_argument("--conversations", type=int, default=4)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--image-size", type=int, nargs=2, default=(336, 336))
    p.add_argument("--input-words", type=int, default=32)
    p.add_argument("--output-tokens", type=int, default=32)
    args = p.parse_args(argv)
    cfg = MultiTurnConfig(base_url=args.base_url, model=args.model, api_key=args.api_key,
                          conversations=args.conversations, turns=args.turns, image_size=tuple(args.image_size),
                          input_words=args.input_words, output_tokens=args.output_tokens)
    print(json.dumps(asyncio.run(run_multiturn(cfg)), indent=2))


if __name__ == "__main__":
    main()
