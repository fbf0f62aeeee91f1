"""Write a trained LLaVA as a servable checkpoint: llava-hf Hub layout + tokenizer +
chat template + image processor config (+ a LoRA adapter in PEFT format), with the prompt
tokenisation it was trained with (``llava_prompt_tokenization`` in config.json, see
``llava_model.prompt_ids``).

The directory is written beside its destination and renamed into place, so a reader
sees either the old checkpoint or the complete new one, never half of one.
"""

import json
import shutil
from pathlib import Path

import torch

LLM_LORA_PREFIX = "base_model.model.language_model.model."

def _swap_in(tmp: Path, out: Path) -> None:
    old = out.with_name(out.name + ".old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def adapter_state(peft_model) -> dict[str, torch.Tensor]:
    """The LLM's LoRA tensors under the names our vLLM model's LoRA loader expects."""
    from peft import get_peft_model_state_dict

    out = {}
    for name, tensor in get_peft_model_state_dict(peft_model).items():
        marker = "language_model."
        if marker not in name or "lora_" not in name:
            continue  # the projector trains in full; it is part of the base weights
        rest = name.split(marker, 1)[1]
        rest = rest.removeprefix("model.")
        out[LLM_LORA_PREFIX + rest] = tensor.detach().contiguous()
    return out


def export(model, tokenizer, processor: dict, out_dir: str | Path, chat_format: str = "vicuna_v1",
           metadata: dict | None = None, dtype: torch.dtype | None = None,
           state_dict: dict[str, torch.Tensor] | None = None, prompt_tokenization: str | None = None) -> Path:
    """Export ``model`` (a transformers LLaVA, or a PEFT model around one) to ``out_dir``.

    A PEFT model is written twice: merged weights at the top level (what the server
    serves by default), and the adapter alone under ``lora/`` for ``--enable-lora`` use
    over the base (``lora/base`` holds that base: the LLM as it was, the trained projector).
    ``prompt_tokenization`` is how the training data was tokenised (``None``: the model
    config's own setting, ``whole`` when it has none); the server and the generator read
    it back and tokenise prompts the same way.
    """
    from safetensors.torch import save_file

    from llava_model.chat_format import chat_template
    from llava_model.prompt_ids import check_tokenization, write_prompt_tokenization
    from llava_model.prompt_ids import prompt_tokenization as tokenization_of
    from llava_model.weights import save_hub_layout, save_hub_state

    if prompt_tokenization is None:
        prompt_tokenization = tokenization_of(getattr(model, "config", None))
    check_tokenization(prompt_tokenization)

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if hasattr(model, "peft_config") and state_dict is None:
        cfg = next(iter(model.peft_config.values()))
        state = adapter_state(model)
        lora_dir = tmp / "lora"
        lora_dir.mkdir()
        save_file(state, str(lora_dir / "adapter_model.safetensors"))
        (lora_dir / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": cfg.r, "lora_alpha": cfg.lora_alpha, "bias": "none",
            "target_modules": sorted({n.rsplit(".", 3)[-3] for n in state}),
        }, indent=1))
        base = {k.replace(".base_layer", ""): v for k, v in model.base_model.model.state_dict().items()
                if "lora_" not in k}
        save_hub_state(base, model.base_model.model.config, lora_dir / "base", dtype=dtype)
        model = model.merge_and_unload()
    if state_dict is not None:  # gathered from shards (FSDP)
        save_hub_state(state_dict, model.config, tmp, dtype=dtype)
    else:
        save_hub_layout(model, tmp, dtype=dtype)
    # The chat template of the format the model was trained with, whichever it is: a server
    # that reads it (ours, vLLM's) prompts the model exactly as training did. ``plain`` too:
    # a stage-1 (or freshly assembled) checkpoint served with it captions its images, which
    # is what it learnt; served with another format it would read a layout it never saw.
    tokenizer.chat_template = chat_template(chat_format)
    for target in [tmp, *([tmp / "lora" / "base"] if (tmp / "lora").is_dir() else [])]:
        tokenizer.save_pretrained(target)
        (target / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
        write_prompt_tokenization(target, prompt_tokenization)
    (tmp / "llava_train.json").write_text(json.dumps(
        {"chat_format": chat_format, "prompt_tokenization": prompt_tokenization, **(metadata or {})}, indent=1))
    _swap_in(tmp, out)
    return out
