"""The serving benchmark: contenders started one after another, same model, same client.

    python -m benchmarks.serving.run --config small            # make bench
    python -m benchmarks.serving.run --config tiny --contenders ours --concurrency 2 --num-requests 6

Contenders: ``ours`` (llava-serve), ``vllm`` (vLLM's own OpenAI server and built-in
LLaVA, from the baseline venv made by baseline_venv.sh, as shipped), ``vllm-tuned`` (the
same server with the CPU settings ours applies: no core reserved for the front end on a
small machine, our KV-cache block size), ``hf`` (per-request transformers worker),
``llamacpp`` / ``llamacpp-q8`` (llama.cpp's native server, built from llama-cpp-python's
sdist by llamacpp_venv.sh, on the same checkpoint converted to GGUF by gguf.py: LLM
weights in ``--dtype`` (bf16 or f16) or q8_0, the vision tower in f16).

Scenarios: closed loop at each ``--concurrency``; open loop at each ``--rate``; the
goodput sweep (``--goodput R1 R2 ...``: open loop at rising rates, the highest rate whose
p99 TTFT and p99 TPOT meet the SLO); ``--multiturn``; image count and size per request
(``--images-per-request``, ``--image-size``). Every run reports its share of this
machine's measured matmul ceiling (``benchmarks.serving.flops``).

Writes ``<out>.json``, ``<out>.md`` and ``<out>.png``; with ``--vllm-client`` also runs
vLLM's own benchmark client against ours as a cross-check.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.serving.flops import ceiling_share, request_flops
from benchmarks.serving.loadgen import LoadConfig, run_load
from benchmarks.serving.models import CONFIGS, ensure_model
from benchmarks.serving.multiturn import MultiTurnConfig, run_multiturn
from benchmarks.serving.report import write_report
from kernels.ceiling import ceilings
from llava_model.chat_format import IMAGE, chat_template
from server.child_process import stop, wait_healthy

BASELINE_PYTHON = Path(".venv-baseline/bin/python")
LLAMA_SERVER = Path(".llamacpp/bin/llama-server")
LLAMACPP_PYTHON = Path(".llamacpp/venv/bin/python")
GGUF_TYPES = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}
# The goodput SLO (issue: p99 TTFT <= 2 s and p99 TPOT <= 200 ms).
SLO_TTFT_P99_S = 2.0
SLO_TPOT_P99_S = 0.2
CONTENDERS = ("ours", "vllm", "vllm-tuned", "hf", "llamacpp", "llamacpp-q8")


@dataclass
class Contender:
    name: str
    cmd: list[str] | Callable[[], list[str]]  # a callable prepares files first (GGUF conversion)
    env: dict[str, str]


def llamacpp_slots(model: Path, args) -> int:
    """llama-server's --parallel: as many sequences of --max-model-len as the KV-cache budget
    that ours gets (--kv-cache-gb, f16 cache) holds, at most the 64 of ours and vLLM."""
    text = json.loads((model / "config.json").read_text())["text_config"]
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    per_token = 2 * text["num_hidden_layers"] * text["num_key_value_heads"] * head_dim * 2  # K and V, 2 bytes
    return max(1, min(64, int(args.kv_cache_gb * 2**30) // (args.max_model_len * per_token)))


def ensure_gguf(model: Path, outtype: str) -> tuple[Path, Path]:
    """The GGUF language model (``outtype``) and mmproj of ``model``, converted (and their
    tokenisation checked) in the conversion venv on first use."""
    from benchmarks.serving.gguf import gguf_paths

    llm, mmproj = gguf_paths(model, outtype)
    if not (llm.is_file() and mmproj.is_file()):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")]))}
        subprocess.run([str(LLAMACPP_PYTHON), "-m", "benchmarks.serving.gguf", str(model), "--types", outtype],
                       env=env, check=True)
    return llm, mmproj


def llamacpp_template(name: str = "vicuna_v1") -> str:
    """``name`` as a Jinja template for llama-server, rendering the same prompt as ours.

    llama-server hands the template a message with images as one string in which every image
    is its media marker (pinned to IMAGE through LLAMA_MEDIA_MARKER in the contender's env),
    glued to the text after it; ours joins a message's parts with newlines. So each marker gets
    its newline back (images first, as in the load generator's requests and in LLaVA's data)."""
    template = chat_template(name)
    plain = "{%- if content is string -%}{{ content }}"
    if template.count(plain) != 1:
        raise RuntimeError("chat_format's Jinja layout changed; update llamacpp_template")
    glued = "{%- if content is string -%}{{ content.replace(" + json.dumps(IMAGE) + ", " + json.dumps(IMAGE + "\n") + ") }}"
    return template.replace(plain, glued)


def llamacpp_cmd(model: Path, outtype: str, served: str, port: int, args, logs: Path) -> list[str]:
    llm, mmproj = ensure_gguf(model, outtype)
    slots = llamacpp_slots(model, args)
    template = logs / "vicuna_v1_llamacpp.jinja"
    template.write_text(llamacpp_template())
    return [
        str(LLAMA_SERVER), "--model", str(llm), "--mmproj", str(mmproj), "--alias", served,
        "--host", "127.0.0.1", "--port", str(port),
        # one context of --max-model-len per slot, continuous batching across the slots
        "--parallel", str(slots), "--ctx-size", str(slots * args.max_model_len), "--cont-batching",
        "--jinja", "--chat-template-file", str(template),
        "--no-webui",
    ]


def contenders(model: Path, served: str, port: int, args, vicuna_jinja: Path) -> dict[str, Contender]:
    """``vicuna_jinja``: vicuna_v1 as a Jinja file, for vLLM's server (ours has it built in)."""
    from server.engine import CPU_BLOCK_SIZE, RESERVED_ENV

    eager = ["--enforce-eager"] if args.eager else []
    eager += ["--block-size", str(args.block_size)] if args.block_size else []
    common_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(args.kv_cache_gb)))}
    common_env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    llamacpp_env = {**os.environ, "LLAMA_MEDIA_MARKER": IMAGE}
    images = str(max(2, *args.images_per_request))
    vllm_cmd = [
        str(BASELINE_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--served-model-name", served, "--port", str(port), "--max-model-len", str(args.max_model_len),
        "--max-num-seqs", "64", "--limit-mm-per-prompt", json.dumps({"image": int(images)}), "--dtype", args.dtype,
        "--chat-template", str(vicuna_jinja), *eager,
    ]
    # What ours sets on a CPU engine (server.engine.cpu_engine_env, CPU_BLOCK_SIZE), given to vLLM too.
    tuned = ["--block-size", str(CPU_BLOCK_SIZE)] if not args.block_size else []
    return {
        "ours": Contender("ours", [
            sys.executable, "-m", "server", "--model", str(model), "--served-model-name", served,
            "--port", str(port), "--max-model-len", str(args.max_model_len), "--kv-cache-gb", str(args.kv_cache_gb),
            "--max-num-seqs", "64", "--limit-images-per-prompt", images, "--dtype", args.dtype,
            "--max-inflight", "4096", "--log-level", "warning", *eager,
        ], common_env),
        "vllm": Contender("vllm", vllm_cmd, {**common_env, "VLLM_PLUGINS": ""}),
        "vllm-tuned": Contender("vllm-tuned", [*vllm_cmd, *tuned],
                                {**common_env, "VLLM_PLUGINS": "", RESERVED_ENV: "0"}),
        "hf": Contender("hf", [
            sys.executable, "-m", "benchmarks.serving.hf_worker", "--model", str(model),
            "--served-model-name", served, "--port", str(port), "--dtype", args.dtype,
        ], common_env),
        "llamacpp": Contender("llamacpp", lambda: llamacpp_cmd(
            model, GGUF_TYPES[args.dtype], served, port, args, vicuna_jinja.parent), llamacpp_env),
        "llamacpp-q8": Contender("llamacpp-q8", lambda: llamacpp_cmd(
            model, "q8_0", served, port, args, vicuna_jinja.parent), llamacpp_env),
    }


def port_is_free(base: str) -> bool:
    url = httpx.URL(base)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as servers bind: connections of a stopped server waiting out TIME_WAIT do not count
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((url.host, url.port))
        except OSError:
            return False
    return True


def start(contender: Contender, base: str, log: Path, timeout: float = 600) -> subprocess.Popen:
    # Another server on the port (one left from an earlier run) would answer /health and be
    # measured in this contender's name while the contender fails to bind.
    if not port_is_free(base):
        raise RuntimeError(f"{base} is already in use: stop what listens there before measuring {contender.name}")
    cmd = contender.cmd() if callable(contender.cmd) else contender.cmd
    proc = subprocess.Popen(cmd, env=contender.env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        if wait_healthy(proc, base, timeout):
            return proc
    except TimeoutError:
        stop(proc, grace=10)
        raise RuntimeError(f"{contender.name} did not become healthy in {timeout} s; see {log}") from None
    raise RuntimeError(f"{contender.name} exited with {proc.returncode}; see {log}")


def vllm_client(base: str, served: str, model: Path, args, out_dir: Path) -> dict:
    """vLLM's own benchmark client (random-mm) against a running server."""
    side = CONFIGS[args.config].image_size
    argv = [
        "--backend", "openai-chat", "--base-url", base, "--endpoint", "/v1/chat/completions",
        "--model", served, "--tokenizer", str(model), "--dataset-name", "random-mm",
        "--num-prompts", str(args.num_requests), "--max-concurrency", "16",
        "--random-input-len", str(args.input_words), "--random-output-len", str(args.output_tokens),
        "--random-mm-base-items-per-request", "1", "--random-mm-limit-mm-per-prompt", json.dumps({"image": 2}),
        "--random-mm-bucket-config", json.dumps({str((side, side, 1)): 1.0}).replace('"(', "(").replace(')"', ")"),
        "--ignore-eos", "--save-result", "--result-dir", str(out_dir), "--result-filename", "vllm_client.json",
    ]
    code = ("import argparse, sys\nfrom vllm.benchmarks.serve import add_cli_args, main\n"
            "p = argparse.ArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=1800)
    path = out_dir / "vllm_client.json"
    if result.returncode != 0 or not path.exists():
        return {"error": (result.stderr or result.stdout)[-1500:]}
    data = json.loads(path.read_text())
    keep = ("completed", "request_throughput", "output_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms")
    return {k: data.get(k) for k in keep}


def meets_slo(summary: dict) -> bool:
    """Every request completed, p99 TTFT and p99 TPOT within the goodput SLO."""
    return (
        summary["errors"] == 0
        and summary["ttft_s"]["p99"] <= SLO_TTFT_P99_S
        and summary["tpot_s"]["p99"] <= SLO_TPOT_P99_S
    )


def _work(summary: dict, model: Path, machine: dict[str, float], dtype: str) -> dict:
    """FLOPs per request from the config and the run's token counts, and the share of the
    measured matmul ceiling in ``dtype`` the run's request rate amounts to."""
    flops = request_flops(model, summary["prompt_tokens_mean"], summary["output_tokens_mean"],
                          summary["images_per_request_mean"])
    return {"flops_per_request": flops,
            "ceiling_share": ceiling_share(summary["requests_per_s"], flops, machine.get(dtype, 0.0))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="small", choices=list(CONFIGS))
    p.add_argument("--contenders", nargs="+", default=["ours", "vllm", "vllm-tuned", "hf"], choices=CONTENDERS)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--rate", type=float, nargs="*", default=[], help="also open-loop runs at these req/s")
    p.add_argument("--goodput", type=float, nargs="*", default=[], metavar="RATE",
                   help="goodput sweep (not for hf): open loop at these rising req/s until the SLO fails")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--hf-num-requests", type=int, default=16, help="the per-request worker is slow")
    p.add_argument("--hf-concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--image-size", type=int, nargs=2, default=(336, 336))
    p.add_argument("--image-kind", choices=["photo", "noise"], default="photo")
    p.add_argument("--images-per-request", type=int, nargs="+", default=[1])
    p.add_argument("--input-words", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--kv-cache-gb", type=float, default=2.0)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--eager", action="store_true", help="skip torch.compile in both engines (faster start)")
    p.add_argument("--block-size", type=int, default=None, help="KV-cache block for ours and vLLM (default: theirs)")
    p.add_argument("--vllm-client", action="store_true",
                   help="cross-check ours and vLLM with vLLM's own benchmark client")
    p.add_argument("--multiturn", type=int, default=0, metavar="N",
                   help="also N four-turn conversations about one image each (not for hf): TTFT per turn")
    p.add_argument("--port", type=int, default=8311)
    p.add_argument("--out", default=None, help="output path prefix (default benchmarks/results/serving_<config>)")
    args = p.parse_args(argv)

    model = ensure_model(args.config)
    served, base = "bench-model", f"http://127.0.0.1:{args.port}"
    out = Path(args.out or f"benchmarks/results/serving_{args.config}")
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    vicuna_jinja = logs / "vicuna_v1.jinja"
    vicuna_jinja.write_text(chat_template("vicuna_v1"))
    runs, cross_check, multiturn = [], {}, {}
    # A SIGTERM (kill) unwinds through the ``finally`` below and stops the running contender,
    # rather than leaving it serving on the port.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    machine = ceilings()  # measured before any server runs, on this process's threads
    print(f"measured matmul ceilings, GFLOP/s: {machine}", flush=True)
    for name in args.contenders:
        contender = contenders(model, served, args.port, args, vicuna_jinja)[name]
        if name.startswith("vllm") and not BASELINE_PYTHON.exists():
            raise SystemExit("no baseline venv: run `bash benchmarks/serving/baseline_venv.sh` first")
        if name.startswith("llamacpp") and not (LLAMA_SERVER.exists() and LLAMACPP_PYTHON.exists()):
            raise SystemExit("no llama.cpp build: run `bash benchmarks/serving/llamacpp_venv.sh` first")
        if name == "llamacpp" and args.dtype not in GGUF_TYPES:
            raise SystemExit(f"--dtype {args.dtype}: the llamacpp contender has GGUF types for {sorted(GGUF_TYPES)}")
        print(f"== {name}: starting", flush=True)
        proc = start(contender, base, logs / f"{name}.log")
        try:
            levels = args.hf_concurrency if name == "hf" else args.concurrency
            count = args.hf_num_requests if name == "hf" else args.num_requests
            modes = [("concurrency", c) for c in levels] + ([] if name == "hf" else [("rate", r) for r in args.rate])
            modes += [] if name == "hf" else [("goodput", r) for r in sorted(args.goodput)]
            missed_slo = False
            for index, (mode, value) in enumerate(modes):
                if mode == "goodput" and missed_slo:
                    continue  # a higher rate would only miss it by more
                # Fresh prompts and images for every level (the same for every contender): a
                # repeated request would be served from the engine's prefix and image caches.
                cfg = LoadConfig(
                    seed=1 + index,
                    base_url=base, model=served, num_requests=count,
                    concurrency=value if mode == "concurrency" else None,
                    rate=None if mode == "concurrency" else value, image_size=tuple(args.image_size),
                    image_kind=args.image_kind, images_per_request=tuple(args.images_per_request),
                    input_words=args.input_words, output_tokens=args.output_tokens,
                    keepalive=not name.startswith("llamacpp"),
                )
                summary = asyncio.run(run_load(cfg))
                summary.update(contender=name, mode=mode, level=value, **_work(summary, model, machine, args.dtype))
                if mode == "goodput":
                    summary["meets_slo"] = meets_slo(summary)
                    missed_slo = not summary["meets_slo"]
                runs.append(summary)
                print(f"   {mode}={value}: {summary['requests_per_s']:.2f} req/s, "
                      f"p99 TTFT {summary['ttft_s']['p99']:.2f} s, p99 TPOT {summary['tpot_s']['p99'] * 1e3:.0f} ms, "
                      f"{summary['ceiling_share']:.1%} of the {args.dtype} ceiling, errors {summary['errors']}"
                      + (f", SLO {'met' if summary['meets_slo'] else 'missed'}" if mode == "goodput" else ""),
                      flush=True)
            if args.multiturn and name != "hf":
                # chat-sized turns (MultiTurnConfig's), so four of them fit the context
                multiturn[name] = asyncio.run(run_multiturn(MultiTurnConfig(
                    base_url=base, model=served, conversations=args.multiturn, image_size=tuple(args.image_size),
                    image_kind=args.image_kind, keepalive=not name.startswith("llamacpp"),
                )))
                print(f"   multi-turn: TTFT by turn {[round(t, 3) for t in multiturn[name]['ttft_s_by_turn']]} s, "
                      f"turn 2 / turn 1 = {multiturn[name]['turn2_over_turn1']:.2f}", flush=True)
            if args.vllm_client and name in ("ours", "vllm", "vllm-tuned"):  # the same tool against each
                cross_check[name] = vllm_client(base, served, model, args, logs)
        finally:
            stop(proc, grace=90)
    # Measured again with every server stopped: a start right after other work (a server still
    # exiting) measured low. Shares use the higher of the two, per dtype.
    after = ceilings()
    print(f"measured matmul ceilings again, GFLOP/s: {after}", flush=True)
    best = {k: max(machine.get(k, 0.0), after.get(k, 0.0)) for k in machine.keys() | after.keys()}
    for run in runs:
        run["ceiling_share"] = ceiling_share(run["requests_per_s"], run["flops_per_request"], best.get(args.dtype, 0.0))
    settings = {"model": str(model), "ceilings_gflops": best, "ceilings_gflops_start": machine,
                "ceilings_gflops_end": after}
    write_report(out, runs, cross_check, vars(args) | settings,
                 multiturn)
    print(f"wrote {out}.json, {out}.md, {out}.png (server logs in {logs})")


if __name__ == "__main__":
    main()
