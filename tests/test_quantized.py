"""Quantised LLMs: tiny quantised checkpoints built in code load in our class and stay close
to the unquantised model; what a CPU engine cannot run is refused at start-up by name.

Closeness is measured with teacher forcing: the unquantised model's greedy continuation is
fed to every model as the prompt, and the full next-token distributions (all 512 tokens,
``prompt_logprobs``) are compared position by position, so one flipped near-tie does not
cascade into a different continuation. With every log-probability within ``eps`` of the
reference, the top-1 token cannot change where the reference's top-1 leads its runner-up
by more than ``2 * eps``: that is asserted too.

Tolerances (measured on this machine in brackets, max |Δ logprob| over the vocabulary):
- W8A8 int8, float32, against the float32 model: eps 0.3 [0.14]. Per-channel int8 weights
  and per-token int8 activations each round to ~1 % of a value's range; a model that only
  rounds the weights (dequantised, float activations) is 0.10-0.12 away, so the activations
  add about as much again. 0.3 leaves 2x headroom for another CPU's int8 kernel (oneDNN or
  the AMX one), while a wrong scale or channel order moves log-probabilities by whole units.
  On an AVX2-only CPU oneDNN's int8 GEMM saturates: 0.67 there, 0.13 with ``kernels.cpu_int8``.
- W4A16 (4-bit, group 32), bfloat16, against the same weights dequantised in a bfloat16
  float model: eps 0.15 [0.05]: the kernel must compute exactly the checkpoint's 4-bit
  weights (a wrong nibble order or group scale gives a different model). Against the
  unquantised bfloat16 model 4-bit rounding of random weights is genuinely lossy (0.16
  total variation, 1.2 logprob): only reported and bounded loosely (TV <= 0.3).
"""

import json
import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest
import torch
from vllm import SamplingParams

from llava_model.completeness import QuantisedTowerError, missing_tensors, refuse_quantised_tower
from llava_model.quantize import (
    SCHEMES,
    build_quantized_tiny_llava,
    dequantize,
    pack_int32,
    quantization_config,
    quantize_int,
)
from llava_model.tiny import TinyLlavaSpec, build_tiny_llava, build_tokenizer
from server.config import ServerSettings
from server.engine import UnsupportedModelError, check_model_config
from server.quantization import WNA16_OP, UnsupportedQuantization, check_quantization, has_cpu_op
from tests.conftest import close_llm, make_llm
from tests.images import photo_like
from tests.server_proc import png, running_server

SPEC = TinyLlavaSpec()
NEW_TOKENS = 24
PROMPTS = [
    ("USER: <image>\nWhat is in the image? ASSISTANT:", photo_like(60, 40, seed=5)),
    ("USER: Describe a red circle. ASSISTANT:", None),
]
EPS_W8A8 = 0.3
EPS_W4A16_EXACT = 0.15
TV_W4A16 = 0.3


# ---- building blocks, no engine --------------------------------------------------------------

def test_int_rounding_is_within_half_a_step_and_packs_back():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    for bits, group in ((8, None), (4, 32)):
        q, scale = quantize_int(w, bits, group)
        assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
        steps = scale.repeat_interleave(group, dim=1) if group else scale
        assert ((w - q * steps).abs() <= steps / 2 + 1e-6).all()
        if bits == 4:
            scheme = SCHEMES["w4a16"]
            tensors = {"L.weight_packed": pack_int32(q, 4), "L.weight_scale": scale}
            assert tensors["L.weight_packed"].shape == (64, 16)
            assert torch.equal(dequantize(tensors, "L", scheme), q * steps)


def test_cpu_table_accepts_what_runs_and_names_what_does_not():
    ok = {name: check_quantization(quantization_config(s), cpu=True) for name, s in SCHEMES.items() if name != "w8a16"}
    assert ok["w8a8-int8"].variant == ok["w8a8-int8-static"].variant == "W8A8 int8"
    assert "float32" in ok["w8a8-int8"].dtypes and "float32" not in ok["w4a16"].dtypes
    assert check_quantization({"quant_method": "gptq", "bits": 4}, cpu=True).dtypes == ("bfloat16", "float16")
    for quant, named in (
        (quantization_config(SCHEMES["w8a16"]), "8-bit weight-only"),
        ({"quant_method": "gptq", "bits": 8}, "'gptq' runs on GPUs only"),
        ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "'fp8' runs on GPUs only"),
    ):
        with pytest.raises(UnsupportedQuantization, match="GPUs only") as info:
            check_quantization(quant, cpu=True)
        assert named in str(info.value) and "gptq: 4-bit" in str(info.value)
        assert check_quantization(quant, cpu=False) is not None  # a GPU engine lets vLLM decide
    with pytest.raises(UnsupportedQuantization, match="'bitsandbytes' is not supported; supported: compressed"):
        check_quantization({"quant_method": "bitsandbytes"}, cpu=False)


def test_config_check_refuses_float32_for_4_bit_weights(tmp_path):
    config = {"architectures": ["LlavaForConditionalGeneration"],
              "text_config": {"quantization_config": quantization_config(SCHEMES["w4a16"])}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    settings = ServerSettings(model=str(tmp_path), dtype="float32")
    with pytest.raises(UnsupportedModelError, match="W4A16 runs in bfloat16 or float16 .* not --dtype float32"):
        check_model_config(settings, environ={}, cpu=True)
    half = ServerSettings(model=str(tmp_path), dtype="bfloat16")
    assert check_model_config(half, environ={}, cpu=True, cpu_op=lambda op: True).variant == "W4A16"
    assert check_model_config(settings, environ={}, cpu=False).variant == "W4A16"  # GPUs: any dtype
    # a CPU whose vLLM kernel library has no 4-bit GEMM (the AVX2 one): refused at start-up, by
    # name, not failed inside the engine at the first request
    with pytest.raises(UnsupportedModelError, match="needs vLLM's CPU kernel cpu_gemm_wna16.*AVX2"):
        check_model_config(half, environ={}, cpu=True, cpu_op=lambda op: False)
    assert check_model_config(half, environ={}, cpu=False, cpu_op=lambda op: False).variant == "W4A16"


def test_quantised_tower_tensors_and_missing_shard_scales_are_caught():
    tower = [("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", torch.zeros(2, 2, dtype=torch.int8))]
    with pytest.raises(QuantisedTowerError, match="fc1.weight .*only the language model"):
        list(refuse_quantised_tower(tower))
    fine = [("vision_tower.vision_model.embeddings.position_ids", torch.arange(4)),
            ("language_model.model.layers.0.mlp.down_proj.weight_scale", torch.ones(2, 1))]
    assert [n for n, _ in refuse_quantised_tower(fine)] == [n for n, _ in fine]
    layer = "language_model.model.layers.0.self_attn."
    params = [layer + "qkv_proj.input_scale", layer + "attn.k_scale"]
    seen = {layer + "q_proj.input_scale", layer + "v_proj.input_scale"}
    loaded = {layer + "qkv_proj.input_scale"}  # vLLM reports the packed one after any shard
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    assert missing_tensors(params, loaded, seen, packed) == [layer + "k_proj.input_scale"]


# ---- in-process engines: each model loaded once ------------------------------------------------

def _dequantized_copy(src, out, scheme):
    """The quantised checkpoint with every quantised layer turned back into its float weight."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, out)
    tensors = load_file(str(src / "model.safetensors"))
    layers = {name.removesuffix(".weight_scale") for name in tensors if name.endswith(".weight_scale")}
    state = {n: t for n, t in tensors.items() if n.rpartition(".")[0] not in layers}
    state.update({f"{layer}.weight": dequantize(tensors, layer, scheme) for layer in layers})
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    del config["quantization_config"]
    (out / "config.json").write_text(json.dumps(config))


def _inputs(ids, image):
    return {"prompt_token_ids": ids, "multi_modal_data": {"image": image}} if image else {"prompt_token_ids": ids}


def _engine_results(model_dir, dtype, forced=None):
    """(greedy continuations, per prompt (positions, 512) log-probabilities of the forced
    sequences, the first layer's quantisation scheme); the engine is closed again."""
    tok = build_tokenizer()
    llm = make_llm(model_dir, dtype=dtype, max_logprobs=-1)
    try:
        prompt_ids = [tok(p)["input_ids"] for p, _ in PROMPTS]
        greedy = SamplingParams(max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, temperature=0.0)
        outs = llm.generate([_inputs(i, img) for i, (_, img) in zip(prompt_ids, PROMPTS)], greedy, use_tqdm=False)
        continuations = [list(o.outputs[0].token_ids) for o in outs]
        forced = forced or continuations
        scoring = SamplingParams(max_tokens=1, prompt_logprobs=-1, temperature=0.0)
        seqs = [_inputs(i + f, img) for i, f, (_, img) in zip(prompt_ids, forced, PROMPTS)]
        scored = llm.generate(seqs, scoring, use_tqdm=False)
        logprobs = []
        for o, f in zip(scored, forced):
            rows = o.prompt_logprobs[-len(f):]  # the positions that predict the forced tokens' successors
            logprobs.append(torch.tensor([[row[t].logprob for t in range(SPEC.vocab_size)] for row in rows]))
        scheme = llm.apply_model(
            lambda m: type(getattr(m.language_model.model.layers[0].self_attn.qkv_proj, "scheme", None)).__name__
        )[0]
    finally:
        close_llm(llm)
    return continuations, logprobs, scheme


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    build_tiny_llava(root / "ref", SPEC)
    build_quantized_tiny_llava(root / "w8a8", SPEC, "w8a8-int8")
    build_quantized_tiny_llava(root / "w4a16", SPEC, "w4a16")
    _dequantized_copy(root / "w4a16", root / "w4a16-deq", SCHEMES["w4a16"])
    out = {"dirs": root}
    started = time.perf_counter()
    out["ref32"] = _engine_results(root / "ref", "float32")
    out["w8a8"] = _engine_results(root / "w8a8", "float32", forced=out["ref32"][0])
    out["wna16_kernel"] = has_cpu_op(WNA16_OP)  # vLLM's AVX2 kernel library (CPUs without AVX-512) lacks it
    if out["wna16_kernel"]:
        out["ref16"] = _engine_results(root / "ref", "bfloat16")
        out["w4a16"] = _engine_results(root / "w4a16", "bfloat16", forced=out["ref16"][0])
        out["w4a16-deq"] = _engine_results(root / "w4a16-deq", "bfloat16", forced=out["ref16"][0])
    print(f"engines: {time.perf_counter() - started:.1f} s")
    return out


def _compare(ours, reference, eps=None, label=""):
    """max |Δ logprob|, max total variation; with ``eps``, asserts the top-1 rule."""
    worst, tv = 0.0, 0.0
    for a, b in zip(ours, reference, strict=True):
        assert a.shape == b.shape == (NEW_TOKENS, SPEC.vocab_size)
        worst = max(worst, (a - b).abs().max().item())
        tv = max(tv, 0.5 * (a.exp() - b.exp()).abs().sum(dim=1).max().item())
        if eps is not None:
            top2 = b.topk(2, dim=1).values
            clear = (top2[:, 0] - top2[:, 1]) > 2 * eps
            assert torch.equal(a.argmax(1)[clear], b.argmax(1)[clear])
    agree = sum((a.argmax(1) == b.argmax(1)).sum().item() for a, b in zip(ours, reference)) / (2 * NEW_TOKENS)
    print(f"{label}: max |dlogprob| {worst:.4f}, max TV {tv:.4f}, top-1 agreement {agree:.3f}")
    return worst, tv


def test_w8a8_int8_loads_with_the_int8_scheme_and_stays_close(results):
    continuations, logprobs, scheme = results["w8a8"]
    assert scheme == "CompressedTensorsW8A8Int8"
    assert results["ref32"][2] == "NoneType"  # the reference really is unquantised
    worst, _ = _compare(logprobs, results["ref32"][1], EPS_W8A8, "w8a8 int8 vs float32")
    assert 0 < worst <= EPS_W8A8  # quantised (not bit-identical), and close
    assert all(len(c) == NEW_TOKENS for c in continuations)


def test_w4a16_computes_exactly_its_4_bit_weights(results):
    """Where this CPU's vLLM kernels have no 4-bit GEMM, the server refuses the checkpoint at
    start-up by name instead (it failed inside the engine at the first request)."""
    if not results["wna16_kernel"]:
        done = _serve(results["dirs"] / "w4a16")
        assert done.returncode != 0 and "needs vLLM's CPU kernel cpu_gemm_wna16" in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        return
    _, logprobs, scheme = results["w4a16"]
    assert scheme == "CompressedTensorsWNA16"
    worst, _ = _compare(logprobs, results["w4a16-deq"][1], EPS_W4A16_EXACT, "w4a16 vs dequantised bf16")
    assert worst <= EPS_W4A16_EXACT
    _, tv = _compare(logprobs, results["ref16"][1], label="w4a16 vs unquantised bf16")
    assert tv <= TV_W4A16


def test_checkpoint_keeps_tower_projector_and_head_in_float(results):
    from safetensors.torch import load_file

    dtypes = {name: t.dtype for name, t in load_file(str(results["dirs"] / "w8a8" / "model.safetensors")).items()}
    int8 = {n for n, d in dtypes.items() if d == torch.int8}
    assert len(int8) == 7 * SPEC.num_layers and all(n.startswith("language_model.model.layers.") for n in int8)
    assert dtypes["language_model.lm_head.weight"] == torch.float32
    assert all(d.is_floating_point for n, d in dtypes.items() if n.startswith(("vision_tower.", "multi_modal")))


# ---- through the server ----------------------------------------------------------------------

def test_served_w8a8_answers_with_dtype_auto(results, tmp_path):
    log = tmp_path / "log"
    url = "data:image/png;base64," + __import__("base64").b64encode(png(photo_like(48, 40, seed=3))).decode()
    body = {"model": "w8a8", "temperature": 0, "max_tokens": 8, "min_tokens": 8, "logprobs": True,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "What is in the image?"}]}]}
    with running_server(results["dirs"] / "w8a8", log_path=log) as (base, _):
        r = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"][0]["logprobs"]["content"]) == 8
    assert "quantised checkpoint: compressed-tensors W8A8 int8" in log.read_text()


def _serve(model, *flags):
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    return subprocess.run([sys.executable, "-m", "server", "--model", str(model), *flags],
                          capture_output=True, text=True, timeout=120, env=env, check=False)


@pytest.mark.parametrize(
    "quant, flags, named",
    [
        ({"quant_method": "gptq", "bits": 8, "group_size": 128}, (), "'gptq' runs on GPUs only"),
        ({"quant_method": "bitsandbytes"}, (), "'bitsandbytes' is not supported"),
        (quantization_config(SCHEMES["w4a16"]), ("--dtype", "float32"), "not --dtype float32"),
    ],
    ids=["gptq-8bit", "unknown", "w4a16-float32"],
)
def test_unsupported_quantisation_is_refused_at_startup(results, tmp_path, quant, flags, named):
    bad = tmp_path / "bad"
    shutil.copytree(results["dirs"] / "ref", bad)
    config = json.loads((bad / "config.json").read_text())
    config["quantization_config"] = quant
    (bad / "config.json").write_text(json.dumps(config))
    done = _serve(bad, *flags)
    assert done.returncode != 0
    assert named in done.stderr, done.stderr[-2000:]
    assert "compressed-tensors: W8A8 int8" in done.stderr or "bfloat16" in done.stderr
    assert "Traceback" not in done.stderr
