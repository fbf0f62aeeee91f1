"""Where ours spends a serving run's time: preprocessing, vision tower, projector, LLM
(steps carrying prefill vs decode-only steps), logits, and the rest of the engine step
(scheduling, input preparation, sampling, output processing).

The engine runs in this process (vLLM's in-process mode), with our model class and the
settings the server uses, at a fixed number of requests in flight (``--concurrency``,
as ``max_num_seqs``), so each part can be timed by wrapping it: our processor's
preprocessing, ``encode_images`` and the projector, the LLM's forward (its token count
says whether the step carried prefill) and ``compute_logits``. On a CPU every call is
synchronous, so wall-clock time per call is the part's time. What HTTP costs on the
front-end core is measured by ``benchmarks.serving.run`` (ours vs this in-process
total), not here.

    python -m benchmarks.serving.profile --config small --concurrency 16 --num-requests 64
"""

import argparse
import os
import random
import time
from collections import defaultdict

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


class Timers:
    """Seconds and calls per part; ``wrap`` times a callable into a part."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, part, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                name = part(*args, **kwargs) if callable(part) else part
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed


TIMERS = Timers()


def _install(model) -> str:
    """Wrap the model's parts (runs inside the engine's worker: this process)."""
    decode_limit = model._profile_decode_limit
    projector = model.multi_modal_projector
    projector.forward = TIMERS.wrap("projector", projector.forward)
    model.encode_images = TIMERS.wrap("vision tower + projector", model.encode_images)

    def llm_part(input_ids, positions, *args, **kwargs):
        return "LLM, decode-only steps" if positions.shape[-1] <= decode_limit else "LLM, steps with prefill"

    # our class's forward (the LLM's own is compiled by vLLM, which bypasses an instance wrapper)
    model.forward = TIMERS.wrap(llm_part, model.forward)
    model.compute_logits = TIMERS.wrap("logits", model.compute_logits)
    return "installed"


def main(argv: list[str] | None = None) -> None:
    from vllm import LLM, SamplingParams

    from benchmarks.serving.loadgen import WORDS
    from benchmarks.serving.models import CONFIGS, ensure_model
    from llava_model.chat_format import Turn, prompt
    from llava_model.processing import LlavaMultiModalProcessor
    from server.engine import CPU_BLOCK_SIZE
    from tests.images import photo_like

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="small", choices=list(CONFIGS))
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--input-words", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--eager", action="store_true")
    args = p.parse_args(argv)

    processor_call = LlavaMultiModalProcessor._call_hf_processor
    LlavaMultiModalProcessor._call_hf_processor = TIMERS.wrap("preprocessing (our processor)", processor_call)
    model_dir = ensure_model(args.config)
    llm = LLM(
        model=str(model_dir), dtype=args.dtype, max_model_len=1024, max_num_seqs=args.concurrency,
        block_size=CPU_BLOCK_SIZE, enforce_eager=args.eager, limit_mm_per_prompt={"image": 1},
        distributed_executor_backend="uni", seed=0, kv_cache_memory_bytes=2 * 2**30,
    )

    def setup(model):
        model._profile_decode_limit = args.concurrency
        return _install(model)

    llm.apply_model(setup)
    side = CONFIGS[args.config].image_size
    rng = random.Random(5)
    requests = []
    for i in range(args.num_requests + args.concurrency):  # distinct: no cache answers for another
        text = "<image>\n" + " ".join(rng.choice(WORDS) for _ in range(args.input_words))
        requests.append({"prompt": prompt("vicuna_v1", None, [Turn("user", text)]),
                         "multi_modal_data": {"image": photo_like(side, side, seed=1000 + i)}})
    warmup, requests = requests[: args.concurrency], requests[args.concurrency :]
    params = SamplingParams(max_tokens=args.output_tokens, min_tokens=args.output_tokens, ignore_eos=True,
                            temperature=0.0)
    llm.generate(warmup, params, use_tqdm=False)  # warm-up (and compilation)
    TIMERS.seconds.clear()
    TIMERS.calls.clear()
    start = time.perf_counter()
    llm.generate(requests, params, use_tqdm=False)
    total = time.perf_counter() - start

    seconds = dict(TIMERS.seconds)
    seconds["vision tower"] = seconds.pop("vision tower + projector", 0.0) - seconds.get("projector", 0.0)
    accounted = sum(seconds.values())
    seconds["rest of the engine step (scheduling, inputs, sampling, outputs)"] = total - accounted
    print(f"{args.num_requests} requests, {args.concurrency} in flight, {args.config}, {args.dtype}: "
          f"{total:.1f} s, {args.num_requests / total:.2f} req/s")
    print("| part | seconds | share | calls |\n| --- | --- | --- | --- |")
    for name, value in sorted(seconds.items(), key=lambda item: -item[1]):
        calls = TIMERS.calls.get(name, TIMERS.calls.get("vision tower + projector", "") if name == "vision tower" else "")
        print(f"| {name} | {value:.2f} | {value / total:.1%} | {calls} |")


if __name__ == "__main__":
    main()
