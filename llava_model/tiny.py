"""Tiny random LLaVA checkpoints built in code, for tests and smoke benchmarks.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a few
sentences, and the weights are random (seeded). ``build_tiny_llava`` writes a
directory in the llava-hf layout that transformers and our vLLM model both load.
"""

from dataclasses import dataclass
from pathlib import Path

from llava_model.chat_format import VICUNA_ASSISTANT, VICUNA_SYSTEM, VICUNA_USER

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

_CORPUS = [
    *VICUNA_SYSTEM.replace(". ", ".\n").splitlines(),  # a sentence a line
    f"{VICUNA_USER} What is in the image? {VICUNA_ASSISTANT} A red circle above a blue square.",
    f"{VICUNA_USER} How many objects are there? {VICUNA_ASSISTANT} There are three objects.",
    "Describe the picture in detail. The background is green and there is a small yellow triangle.",
    "Is there a cat on the left? Yes, the cat sits left of the dog, below the window.",
    "0 1 2 3 4 5 6 7 8 9 colour shape size position count overlap",
]


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Sizes of a tiny LLaVA. Head size 64 is one vLLM's CPU attention supports."""

    text_arch: str = "llama"  # llama | mistral | qwen2
    hidden_size: int = 128
    num_heads: int = 2
    num_kv_heads: int = 1
    intermediate_size: int = 256
    num_layers: int = 2
    vocab_size: int = 512
    tie_word_embeddings: bool = False
    vision_tower: str = "clip"  # clip | siglip (SigLIP's processor: aspect_mode "resize")
    vision_head: bool = True  # SigLIP's pooling head in the checkpoint (never used by LLaVA)
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 2
    vision_mlp_ratio: int = 2
    image_size: int = 32
    patch_size: int = 8
    projector_type: str = "mlp2x_gelu"  # mlp2x_gelu | linear | identity
    vision_feature_layer: int | tuple[int, ...] = -2
    vision_feature_select_strategy: str = "default"
    aspect_mode: str = "pad"
    resampler: str = "exact"  # exact | torch | pil (see llava_model.image_processing)
    init_std: float = 0.08
    seed: int = 0
    tokenizer_vocab: int = 400  # trained size; at most vocab_size
    # LLaVA-NeXT (anyres) when set: (height, width) resolutions, multiples of image_size
    grid_pinpoints: tuple[tuple[int, int], ...] | None = None


def _syllable_words(count: int, seed: int = 0) -> list[str]:
    """Made-up words, enough distinct ones for a large BPE vocabulary."""
    import random

    rng = random.Random(seed)
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    return [
        "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 4)))
        for _ in range(count)
    ]


def train_bpe(corpus: list[str], special_tokens: list[str], vocab_size: int):
    """A deterministic byte-level BPE tokenizer trained on ``corpus``; ``<s>`` starts every text.

    The usual names (``<s>``, ``</s>``, ``<unk>``, ``<pad>``) become the tokenizer's
    bos/eos/unk/pad tokens when they are among ``special_tokens``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    named = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, **{k: v for k, v in named.items() if v in special_tokens}
    )


def build_tokenizer(
    out_dir: Path | None = None, special_tokens: list[str] = SPECIAL_TOKENS, vocab_size: int = 400
):
    """The tiny models' tokenizer, with LLaVA's special tokens.

    Larger vocabularies (e.g. 32000, Llama-sized) are trained on made-up words as well.
    """
    corpus = _CORPUS if vocab_size <= 400 else _CORPUS + [" ".join(_syllable_words(vocab_size * 8))]
    fast = train_bpe(corpus, special_tokens, vocab_size)
    if out_dir is not None:
        fast.save_pretrained(out_dir)
    return fast


def _text_config(spec: TinyLlavaSpec, pad_id: int, bos_id: int, eos_id: int):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
    if spec.text_arch not in classes:
        raise ValueError(f"text_arch {spec.text_arch!r} is not one of {sorted(classes)}")
    return classes[spec.text_arch](
        hidden_size=spec.hidden_size,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        vocab_size=spec.vocab_size,
        max_position_embeddings=1024,
        tie_word_embeddings=spec.tie_word_embeddings,
        initializer_range=spec.init_std,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def _vision_config(spec: TinyLlavaSpec):
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    sizes = {
        "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_hidden * spec.vision_mlp_ratio,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
    }
    if spec.vision_tower == "clip":
        return CLIPVisionConfig(projection_dim=spec.vision_hidden, initializer_range=spec.init_std, **sizes)
    if spec.vision_tower == "siglip":
        vision = SiglipVisionConfig(**sizes)
        if not spec.vision_head:
            vision.vision_use_head = False  # as llava-interleave's configs say
        return vision
    raise ValueError(f"vision_tower {spec.vision_tower!r} is not 'clip' or 'siglip'")


def tiny_llava_config(spec: TinyLlavaSpec, tokenizer):
    from transformers import LlavaConfig, LlavaNextConfig

    vision = _vision_config(spec)
    text = _text_config(spec, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    layer = spec.vision_feature_layer
    common = {
        "vision_config": vision,
        "text_config": text,
        "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
        "vision_feature_layer": list(layer) if isinstance(layer, tuple) else layer,
        "vision_feature_select_strategy": spec.vision_feature_select_strategy,
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": spec.tie_word_embeddings,
    }
    if spec.grid_pinpoints is not None:
        config = LlavaNextConfig(image_grid_pinpoints=[list(p) for p in spec.grid_pinpoints], **common)
    else:
        config = LlavaConfig(**common)
    config.projector_type = spec.projector_type
    return config


def build_tiny_hf_model(spec: TinyLlavaSpec):
    """(model, tokenizer): a transformers ``LlavaForConditionalGeneration`` in fp32.

    For ``linear`` and ``identity`` projectors the model's projector is swapped for
    the matching module, so it serves as the reference for those types too.
    """
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    from llava_model.hf_projector import replace_hf_projector

    tokenizer = build_tokenizer(vocab_size=spec.tokenizer_vocab)
    config = tiny_llava_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    model_class = LlavaForConditionalGeneration if spec.grid_pinpoints is None else LlavaNextForConditionalGeneration
    model = model_class(config).eval()
    replace_hf_projector(model, spec.projector_type)
    return model, tokenizer


def preprocessor_config(spec: TinyLlavaSpec) -> dict:
    from llava_model.image_processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    if spec.vision_tower == "siglip":  # SiglipImageProcessor's file: straight to the size, mean/std 0.5
        if spec.aspect_mode != "resize":
            raise ValueError("SigLIP's processor resizes straight to its size: use aspect_mode 'resize'")
        return {
            "image_processor_type": "SiglipImageProcessor",
            "size": {"height": spec.image_size, "width": spec.image_size},
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "do_convert_rgb": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "resample": 3,
            "resampler": spec.resampler,
        }
    clip = {  # CLIP's processor settings, which LLaVA's and LLaVA-NeXT's extend
        "size": {"shortest_edge": spec.image_size},
        "crop_size": {"height": spec.image_size, "width": spec.image_size},
        "do_resize": True,
        "do_center_crop": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "resample": 3,
        "resampler": spec.resampler,
    }
    if spec.grid_pinpoints is not None:  # LlavaNextImageProcessor's file (do_pad: batches of equal tile counts)
        return {"image_processor_type": "LlavaNextImageProcessor",
                "image_grid_pinpoints": [list(p) for p in spec.grid_pinpoints], "do_pad": True, **clip}
    return {
        "image_processor_type": "LlavaImageProcessor" if spec.aspect_mode == "pad" else "CLIPImageProcessor",
        "do_pad": spec.aspect_mode == "pad",
        "image_aspect_ratio": spec.aspect_mode,
        **clip,
    }


def write_processor_files(out_dir: Path, spec: TinyLlavaSpec) -> None:
    import json

    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(spec), indent=2))


def build_tiny_llava(out_dir: str | Path, spec: TinyLlavaSpec = TinyLlavaSpec()):
    """Write a tiny llava-hf checkpoint to ``out_dir``; returns the HF model."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_tiny_hf_model(spec)
    from llava_model.weights import save_hub_layout

    save_hub_layout(model, out)
    tokenizer.save_pretrained(out)
    write_processor_files(out, spec)
    return model


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m llava_model.tiny", description="Write a tiny random LLaVA checkpoint (llava-hf layout)."
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--text-arch", default="llama", choices=["llama", "mistral", "qwen2"])
    parser.add_argument("--projector", default="mlp2x_gelu", choices=["mlp2x_gelu", "linear", "identity"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    spec = TinyLlavaSpec(
        text_arch=args.text_arch,
        projector_type=args.projector,
        vision_hidden=128 if args.projector == "identity" else 64,
        seed=args.seed,
    )
    build_tiny_llava(args.out, spec)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
