"""LoRA adapters on the language model through our model class (SupportsLoRA).

An adapter's greedy output equals transformers' on the base weights with the adapter
merged in (W + alpha/r * B @ A), and a zero adapter changes nothing.
"""

import json

import torch
from safetensors.torch import save_file
from vllm import SamplingParams
from vllm.lora.request import LoRARequest

from llava_model.tiny import TinyLlavaSpec, build_tiny_llava, build_tokenizer
from tests.images import photo_like
from tests.reference import hf_greedy

SPEC = TinyLlavaSpec(seed=5)
RANK, ALPHA = 8, 16
TARGETS = {"q_proj": SPEC.hidden_size, "v_proj": SPEC.hidden_size // SPEC.num_heads * SPEC.num_kv_heads}
PROMPT = "USER: <image>\nWhat is in the image? ASSISTANT:"


def write_adapter(path, scale: float) -> dict[str, torch.Tensor]:
    """A PEFT-format adapter for q_proj and v_proj of every layer."""
    path.mkdir()
    g = torch.Generator().manual_seed(1)
    state = {}
    for layer in range(SPEC.num_layers):
        for proj, out in TARGETS.items():
            prefix = f"base_model.model.language_model.model.layers.{layer}.self_attn.{proj}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(RANK, SPEC.hidden_size, generator=g) * 0.1
            state[f"{prefix}.lora_B.weight"] = torch.randn(out, RANK, generator=g) * scale
    save_file(state, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "target_modules": list(TARGETS), "bias": "none",
    }))
    return state


def merge_into(model, state) -> None:
    with torch.no_grad():
        for layer in range(SPEC.num_layers):
            attention = model.model.language_model.layers[layer].self_attn
            for proj in TARGETS:
                prefix = f"base_model.model.language_model.model.layers.{layer}.self_attn.{proj}"
                delta = state[f"{prefix}.lora_B.weight"] @ state[f"{prefix}.lora_A.weight"] * (ALPHA / RANK)
                getattr(attention, proj).weight += delta


def test_lora_adapter_matches_merged_weights(tmp_path, engine_factory):
    model = build_tiny_llava(tmp_path / "model", SPEC)
    tokenizer = build_tokenizer()
    strong = write_adapter(tmp_path / "strong", scale=0.3)
    write_adapter(tmp_path / "zero", scale=0.0)
    llm = engine_factory(tmp_path / "model", enable_lora=True, max_lora_rank=RANK)
    image = photo_like(40, 30, seed=2)
    request = {"prompt": PROMPT, "multi_modal_data": {"image": image}}
    params = SamplingParams(max_tokens=24, min_tokens=24, temperature=0.0)

    def run(lora=None):
        return list(llm.generate([request], params, lora_request=lora, use_tqdm=False)[0].outputs[0].token_ids)

    base = run()
    assert base == hf_greedy(model, tokenizer, PROMPT, [image], SPEC, 24)
    assert run(LoRARequest("zero", 1, str(tmp_path / "zero"))) == base
    with_adapter = run(LoRARequest("strong", 2, str(tmp_path / "strong")))
    merge_into(model, strong)
    assert with_adapter == hf_greedy(model, tokenizer, PROMPT, [image], SPEC, 24)
    assert with_adapter != base  # the adapter really acts
