"""Convert a checkpoint of the original LLaVA repo into the llava-hf Hub layout.

LLaVA-1.5 checkpoints become ``LlavaForConditionalGeneration``; LLaVA-NeXT ones
(``image_aspect_ratio: anyres``, ``mm_patch_merge_type: spatial_unpad``) become
``LlavaNextForConditionalGeneration``, pinpoints turned into (height, width) pairs. The
original repo saves a causal LM (``LlavaLlamaForCausalLM`` and friends) whose
config carries ``mm_*`` keys and whose projector lives at ``model.mm_projector``;
the CLIP tower is usually referenced by name only, so it is read from a local CLIP
directory (``--vision-tower``). The result has ``<image>`` (and ``<pad>`` when the
tokenizer lacks one) added to the tokenizer, embeddings resized to match (new rows
set to the mean of the old ones), and loads in transformers and in our vLLM model. Its
config.json says ``"llava_prompt_tokenization": "chunks"``: prompts are tokenised as the
original repo trained them (see ``llava_model.prompt_ids``).

    llava-convert SRC --vision-tower CLIP_DIR --out DST
"""

import argparse
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from llava_model.hf_projector import PROJECTOR_TYPES
from llava_model.image_processing import aspect_mode_for
from llava_model.prompt_ids import SETTING as PROMPT_TOKENIZATION

TEXT_MODEL_TYPES = {"llava_llama": "llama", "llava": "llama", "llava_mistral": "mistral", "llava_qwen": "qwen2"}
SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}
_CLIP_VISION_PARTS = {"embeddings", "pre_layrnorm", "encoder", "post_layernorm"}
_PREPROCESSOR_KEYS = ("image_mean", "image_std", "resample", "rescale_factor", "size", "crop_size")


class ConversionError(ValueError):
    """The source checkpoint cannot be converted; the message says why."""


@dataclass(frozen=True)
class ConvertOptions:
    source: Path
    vision_tower: Path | None
    out: Path
    pad_vocab_to: int = 64  # round the new vocabulary up to a multiple of this
    dtype: str = "auto"  # auto keeps the source dtype; else float32 / float16 / bfloat16


def _read_tensors(directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if files:
        for f in files:
            yield from load_file(str(f)).items()
        return
    files = sorted(p for p in directory.glob("*.bin") if p.name != "training_args.bin")
    if not files:
        raise ConversionError(f"no *.safetensors or *.bin weights in {directory}")
    for f in files:
        yield from torch.load(f, map_location="cpu", weights_only=True).items()


def _projector_name(name: str, kind: str) -> str | None:
    match = re.fullmatch(r"model\.mm_projector\.(?:(\d+)\.)?(weight|bias)", name)
    if match is None:
        return None
    index, leaf = match.groups()
    if kind == "linear" and index is None:
        return f"multi_modal_projector.linear_1.{leaf}"
    if kind == "mlp2x_gelu" and index in ("0", "2"):
        return f"multi_modal_projector.linear_{1 if index == '0' else 2}.{leaf}"
    raise ConversionError(f"projector tensor {name} does not fit projector type {kind!r}")


def rename_original(name: str, kind: str) -> str | None:
    """Hub name of an original-repo tensor; ``None`` for tensors that are dropped."""
    projector = _projector_name(name, kind)
    if projector is not None:
        return projector
    if name.endswith("rotary_emb.inv_freq"):  # recomputed, never loaded
        return None
    if name == "model.image_newline":  # LLaVA-NeXT's row separator
        return "image_newline"
    if name.startswith("model.vision_tower.vision_tower."):
        return "vision_tower." + name.removeprefix("model.vision_tower.vision_tower.")
    if name.startswith("model."):
        return "language_model." + name
    if name.startswith("lm_head."):
        return "language_model." + name
    raise ConversionError(f"unexpected tensor {name} in the source checkpoint")


def _text_config(src: dict):
    from transformers import AutoConfig

    model_type = TEXT_MODEL_TYPES.get(src.get("model_type", ""))
    if model_type is None:
        raise ConversionError(
            f"model_type {src.get('model_type')!r} is not an original LLaVA type {sorted(TEXT_MODEL_TYPES)}"
        )
    fields = {k: v for k, v in src.items() if not k.startswith("mm_") and k not in ("model_type", "architectures")}
    return AutoConfig.for_model(model_type, **fields)


def _check_supported(src: dict) -> str:
    if src.get("mm_use_im_start_end"):
        raise ConversionError("mm_use_im_start_end=true checkpoints are not supported by the llava-hf layout")
    kind = src.get("mm_projector_type", "linear")
    if kind not in PROJECTOR_TYPES:
        raise ConversionError(f"mm_projector_type {kind!r} is not one of {PROJECTOR_TYPES}")
    feature = src.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURE:
        raise ConversionError(f"mm_vision_select_feature {feature!r} is not one of {sorted(SELECT_FEATURE)}")
    return kind


def anyres_pinpoints(src: dict) -> list[list[int]] | None:
    """LLaVA-NeXT's settings of an original config: ``None`` when it is not ``anyres``, else
    its ``image_grid_pinpoints`` as (height, width) pairs.

    The original repo writes pinpoints (and image sizes) as (width, height); transformers'
    LLaVA-NeXT, which our model follows, reads them as (height, width). Swapping each pair
    keeps every choice the original made, ties between a tall and a wide grid included.
    """
    aspect = src.get("image_aspect_ratio", "square")
    if not (isinstance(aspect, str) and aspect.startswith("anyres")):
        return None
    if aspect != "anyres":
        raise ConversionError(f"image_aspect_ratio {aspect!r} is not supported; of the anyres modes only 'anyres' is")
    merge = src.get("mm_patch_merge_type", "flat")
    if merge != "spatial_unpad":
        raise ConversionError(
            f"mm_patch_merge_type {merge!r} is not supported with anyres; LLaVA-NeXT's is 'spatial_unpad'"
        )
    pinpoints = src.get("image_grid_pinpoints")
    if not isinstance(pinpoints, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p) for p in pinpoints
    ) or not pinpoints:
        raise ConversionError(f"image_grid_pinpoints {pinpoints!r} is not a list of [width, height] pairs")
    return [[height, width] for width, height in pinpoints]


def _resize_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    if rows <= weight.shape[0]:
        return weight
    extra = weight.float().mean(dim=0, keepdim=True).to(weight.dtype).expand(rows - weight.shape[0], -1)
    return torch.cat([weight, extra], dim=0)


def convert(opts: ConvertOptions) -> Path:
    from transformers import AutoTokenizer, CLIPVisionConfig, LlavaConfig, LlavaNextConfig

    from llava_model import ARCHITECTURE, NEXT_ARCHITECTURE

    src = json.loads((opts.source / "config.json").read_text())
    kind = _check_supported(src)
    pinpoints = anyres_pinpoints(src)
    text_config = _text_config(src)

    weights: dict[str, torch.Tensor] = {}
    for name, tensor in _read_tensors(opts.source):
        new = rename_original(name, kind)
        if new is not None:
            weights[new] = tensor
    tower_dir = opts.vision_tower
    if tower_dir is None:
        raise ConversionError(
            f"pass --vision-tower: a local CLIP directory for {src.get('mm_vision_tower', 'the vision tower')}"
        )
    vision_config = CLIPVisionConfig.from_pretrained(tower_dir)
    if not any(n.startswith("vision_tower.") for n in weights):  # not saved with the LM
        for name, tensor in _read_tensors(tower_dir):
            inner = name.removeprefix("vision_model.")  # CLIPModel saves carry the prefix
            if inner.split(".")[0] in _CLIP_VISION_PARTS:
                weights["vision_tower.vision_model." + inner] = tensor
    if not any(n.startswith("vision_tower.") for n in weights):
        raise ConversionError(f"no CLIP vision tensors found in {tower_dir}")

    tokenizer = AutoTokenizer.from_pretrained(opts.source)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    vocab = max(len(tokenizer), text_config.vocab_size)
    vocab = -(-vocab // opts.pad_vocab_to) * opts.pad_vocab_to if vocab > text_config.vocab_size else vocab
    for name in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        if name in weights:
            weights[name] = _resize_rows(weights[name], vocab)
    text_config.vocab_size = vocab
    text_config.pad_token_id = tokenizer.pad_token_id

    if pinpoints is not None and "image_newline" not in weights:
        raise ConversionError("an anyres checkpoint needs model.image_newline; the source has none")
    next_config = {} if pinpoints is None else {"image_grid_pinpoints": pinpoints}
    config = (LlavaConfig if pinpoints is None else LlavaNextConfig)(
        **next_config,
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=src.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=SELECT_FEATURE[src.get("mm_vision_select_feature", "patch")],
        projector_hidden_act="gelu",
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    config.projector_type = kind
    # The original repo tokenises prompts chunk by chunk around each <image>
    # (llava.mm_utils.tokenizer_image_token); serve and fine-tune the model the same way.
    setattr(config, PROMPT_TOKENIZATION, "chunks")
    config.architectures = [ARCHITECTURE if pinpoints is None else NEXT_ARCHITECTURE]
    _write(opts, config, tokenizer, weights, src, tower_dir, vision_config.image_size, pinpoints)
    return opts.out


def _write(opts, config, tokenizer, weights, src, tower_dir, image_size, pinpoints) -> None:
    from safetensors.torch import save_file

    tmp = opts.out.with_name(opts.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if opts.dtype != "auto":
        dtype = getattr(torch, opts.dtype)
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    preprocessor = {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}
    tower_pre = tower_dir / "preprocessor_config.json"
    if tower_pre.exists():
        found = json.loads(tower_pre.read_text())
        preprocessor.update({k: found[k] for k in _PREPROCESSOR_KEYS if k in found})
    if pinpoints is not None:  # do_pad: batches padded to equal tile counts (transformers' meaning)
        preprocessor.update(image_processor_type="LlavaNextImageProcessor", image_grid_pinpoints=pinpoints, do_pad=True)
    else:
        aspect = src.get("image_aspect_ratio", "square")  # the original repo's default
        try:
            mode = aspect_mode_for(aspect)
        except ValueError:
            raise ConversionError(f"image_aspect_ratio {aspect!r} is not supported") from None
        preprocessor.update(
            image_processor_type="LlavaImageProcessor" if mode == "pad" else "CLIPImageProcessor",
            do_pad=mode == "pad",
            image_aspect_ratio=mode,
        )
    (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    if opts.out.exists():
        shutil.rmtree(opts.out)
    tmp.rename(opts.out)  # the destination appears whole or not at all


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llava-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="original LLaVA checkpoint directory")
    parser.add_argument("--vision-tower", type=Path, help="local CLIP (vision) checkpoint directory")
    parser.add_argument("--out", type=Path, required=True, help="output directory (llava-hf layout)")
    parser.add_argument("--pad-vocab-to", type=int, default=64)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    try:
        out = convert(ConvertOptions(args.source, args.vision_tower, args.out, args.pad_vocab_to, args.dtype))
    except (ConversionError, FileNotFoundError) as exc:
        parser.exit(2, f"llava-convert: error: {exc}\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
