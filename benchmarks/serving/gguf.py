"""GGUF files of a benchmark checkpoint, for llama.cpp's server (the ``llamacpp`` contenders).

Runs in the conversion venv that ``llamacpp_venv.sh`` makes (the vendored llama.cpp's
``gguf`` package beside the main venv's torch and transformers)::

    PYTHONPATH=. .llamacpp/venv/bin/python -m benchmarks.serving.gguf models/bench/small \\
        --types f16 q8_0            # -> models/bench/small-gguf/{llm-f16,llm-q8_0,mmproj-f16}.gguf

The language model goes through the vendored llama.cpp's own converter; the vision part is
written here; the tokenisation of the result is checked against ours:

- the language model: ``convert_hf_to_gguf.py`` (llava-hf checkpoints are a registered
  architecture; it keeps the ``language_model.*`` tensors). Its BPE pre-tokenizer check
  recognises tokenizers by the hash of their output on a test text, and our tokenizers are
  trained in code (llava_model/tiny.py), so no hash can be listed for them. What the check
  wants to know is which pre-tokenizer to run; ours is written in tokenizer.json, and when that
  is exactly GPT-2's (byte-level, GPT-2 split regex, no normaliser, no prefix space, no byte
  fallback) the answer is llama.cpp's ``gpt-2`` pre-tokenizer. So ``gpt-2`` is given for such a
  tokenizer only, and ``check_tokens`` then compares llama.cpp's tokenisation (the built
  ``llama-tokenize``) with ours on sample prompts.
- the vision tower and projector (``mmproj``): convert_hf_to_gguf's ``--mmproj`` takes
  ``LlavaForConditionalGeneration`` only with a Pixtral tower, and llama.cpp's LLaVA-1.5 script
  (tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py) is written for transformers 4.x
  (llama.cpp pins 4.57.6): under our 5.19 it stops at ``CLIPVisionModel.vision_model``, which
  5.x no longer has. Rather than a second transformers for one script, ``convert_mmproj``
  writes the file itself with the ``gguf`` package: the keys and tensor names that llama.cpp's
  CLIP loader reads (tools/mtmd/clip-impl.h), projector type ``mlp`` (LLaVA-1.5's), the tower
  cut after its second-to-last layer as LLaVA-1.5 reads it.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

LLAMACPP = Path(".llamacpp")
TYPES = ("f16", "bf16", "q8_0", "f32")


def gguf_dir(model: Path) -> Path:
    """Where the GGUF files of the checkpoint ``model`` go: ``<model>-gguf`` beside it."""
    return model.parent / f"{model.name}-gguf"


def gguf_paths(model: Path, outtype: str) -> tuple[Path, Path]:
    """(language model, mmproj) of ``model`` for llama-server's ``--model`` / ``--mmproj``."""
    out = gguf_dir(model)
    return out / f"llm-{outtype}.gguf", out / "mmproj-f16.gguf"


# --- the tokenizer --------------------------------------------------------------------------

def gpt2_pretokenizer_reason(model: Path) -> str | None:
    """None when ``model``'s tokenizer.json pre-tokenises exactly as GPT-2 does (so llama.cpp's
    ``gpt-2`` pre-tokenizer is the right one); otherwise why not."""
    path = model / "tokenizer.json"
    if not path.is_file():
        return "no tokenizer.json"
    tok = json.loads(path.read_text())
    bpe, pre, dec = tok.get("model") or {}, tok.get("pre_tokenizer") or {}, tok.get("decoder") or {}
    if bpe.get("type") != "BPE" or bpe.get("byte_fallback") or bpe.get("continuing_subword_prefix") \
            or bpe.get("end_of_word_suffix"):
        return f"model is not a plain byte-level BPE: { {k: v for k, v in bpe.items() if k not in ('vocab', 'merges')} }"
    if tok.get("normalizer") is not None:
        return f"has a normalizer: {tok['normalizer']}"
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        return f"pre-tokenizer is not GPT-2's ByteLevel split: {pre}"
    if dec.get("type") != "ByteLevel":
        return f"decoder is not ByteLevel: {dec}"
    return None


def _hf_tokenizer(model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def sample_prompts() -> list[str]:
    """Texts on which llama.cpp's tokenisation must equal ours: chat prompts as the server
    renders them, the load generator's words, and edge cases of the GPT-2 split."""
    from benchmarks.serving.loadgen import WORDS
    from llava_model.chat_format import Turn, prompt

    import random

    rng = random.Random(0)
    loadgen_text = " ".join(rng.choice(WORDS) for _ in range(64))
    return [
        prompt("vicuna_v1", None, [Turn("user", "What is in the image?")]),
        prompt("vicuna_v1", None, [Turn("user", loadgen_text)]),
        prompt("vicuna_v1", None, [Turn("user", "How many?"), Turn("assistant", "Three."),
                                   Turn("user", "And now?")]),
        loadgen_text,
        "Hello world! It's 2026-11-28, isn't it? We'll see: 3.14159 ... 1000000 items.",
        "  leading spaces,\ttabs\tand\n\nnewlines   \n trailing  ",
        "Ünïcödé ça va? 你好 — emoji 🦙 and “quotes” ’ ‘",
        "don't I'LL you've THEY'RE we'd she's",
        "bakemo tisuvo kalaru", "",
    ]


def llamacpp_tokens(llm: Path, text: str, llama_tokenize: Path) -> list[int]:
    """Token ids of ``text`` by llama.cpp (its tokenizer from the GGUF, BOS added as the GGUF
    says; special-token text is not parsed, as a chat server does not parse user text)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        out = subprocess.run(
            [str(llama_tokenize), "-m", str(llm), "-f", f.name, "--ids", "--no-escape", "--log-disable", "--no-parse-special"],
            capture_output=True, text=True, check=True,
        ).stdout
    return json.loads(out.strip().splitlines()[-1])


def check_tokens(model: Path, llm: Path, llama_tokenize: Path = LLAMACPP / "bin/llama-tokenize") -> list[str]:
    """Compares llama.cpp's token ids with ours on ``sample_prompts``; returns the mismatches."""
    tok = _hf_tokenizer(model)
    problems = []
    for text in sample_prompts():
        ours = tok(text, split_special_tokens=True)["input_ids"]
        theirs = llamacpp_tokens(llm, text, llama_tokenize)
        if ours != theirs:
            problems.append(f"{text[:40]!r}: ours {ours[:12]}... ({len(ours)}), llama.cpp {theirs[:12]}... ({len(theirs)})")
    return problems


# --- the converters -------------------------------------------------------------------------

def convert_llm(model: Path, out: Path, outtype: str, src: Path = LLAMACPP / "src") -> None:
    """The language model of ``model`` as GGUF ``out`` (``outtype``: f16, bf16, q8_0, f32)."""
    reason = gpt2_pretokenizer_reason(model)
    if reason is not None:
        raise SystemExit(f"{model}: the tokenizer is not a GPT-2-style byte-level BPE ({reason}); "
                         "this converter wrapper only knows how to describe that kind to llama.cpp")
    if str(src.resolve()) not in sys.path:
        sys.path.append(str(src.resolve()))  # last: its tests/ must not hide ours
    import convert_hf_to_gguf  # the vendored converter (also puts its gguf-py on the path)
    from conversion.base import TextModel

    recognise = TextModel.get_vocab_base_pre

    def pre_tokenizer(self, tokenizer) -> str:
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            # an unlisted hash; tokenizer.json says GPT-2's split (checked above)
            print("pre-tokenizer: gpt-2, as tokenizer.json describes it (its hash is not listed, "
                  "as no trained-in-code tokenizer's can be: the warning above is expected)", flush=True)
            return "gpt-2"

    TextModel.get_vocab_base_pre = pre_tokenizer
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(model), "--outfile", str(out), "--outtype", outtype]
    try:
        convert_hf_to_gguf.main()
    finally:
        sys.argv = argv
        TextModel.get_vocab_base_pre = recognise


# CLIP tensor names in the checkpoint (below ``vision_model.``) and in llama.cpp's mmproj files
# (tools/mtmd/clip-impl.h: TN_*), per encoder layer and outside the layers.
_CLIP_LAYER = {
    "layer_norm1": "ln1", "layer_norm2": "ln2", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.out_proj": "attn_out", "mlp.fc1": "ffn_up", "mlp.fc2": "ffn_down",
}
_CLIP_TOP = {
    "embeddings.class_embedding": "v.class_embd", "embeddings.patch_embedding.weight": "v.patch_embd.weight",
    "embeddings.position_embedding.weight": "v.position_embd.weight",
    "pre_layrnorm.weight": "v.pre_ln.weight", "pre_layrnorm.bias": "v.pre_ln.bias",
}


def mmproj_tensors(model: Path) -> tuple[dict, dict]:
    """(llava config, {mmproj tensor name: float32 array}) of a llava-hf checkpoint whose tower is
    CLIP and whose projector is mlp2x_gelu, cut for LLaVA-1.5's features: the tower up to its
    second-to-last layer (``vision_feature_layer`` -2), no post-layernorm."""
    from safetensors.numpy import load_file

    config = json.loads((model / "config.json").read_text())
    vision = config["vision_config"]
    if vision.get("model_type") != "clip_vision_model":
        raise SystemExit(f"vision tower {vision.get('model_type')!r}: only CLIP is handled here")
    if config.get("vision_feature_layer", -2) != -2 or config.get("vision_feature_select_strategy", "default") != "default":
        raise SystemExit("only LLaVA-1.5's vision features (layer -2, CLS dropped) are handled here")
    if config.get("projector_type", "mlp2x_gelu") != "mlp2x_gelu" or config.get("projector_hidden_act", "gelu") != "gelu":
        raise SystemExit("only the mlp2x_gelu projector is handled here")
    keep = vision["num_hidden_layers"] - 1
    out = {}
    for path in sorted(model.glob("*.safetensors")):
        for name, array in load_file(path).items():
            # vision_tower.vision_model.*, vision_tower.* or model.vision_tower.* (layouts seen)
            if (m := re.fullmatch(r"(?:model\.)?vision_tower\.(?:vision_model\.)?(.*)", name)):
                rest = m.group(1)
                if (layer := re.fullmatch(r"encoder\.layers\.(\d+)\.(.*)\.(weight|bias)", rest)):
                    index, part, kind = int(layer.group(1)), layer.group(2), layer.group(3)
                    if index < keep:
                        out[f"v.blk.{index}.{_CLIP_LAYER[part]}.{kind}"] = array
                elif rest in _CLIP_TOP:
                    out[_CLIP_TOP[rest]] = array
                elif not rest.startswith("post_layernorm."):
                    raise SystemExit(f"unexpected vision tensor {name}")
            elif (m := re.fullmatch(r"(?:model\.)?multi_modal_projector\.linear_([12])\.(weight|bias)", name)):
                out[f"mm.{0 if m.group(1) == '1' else 2}.{m.group(2)}"] = array
    expected = len(_CLIP_TOP) + 2 * len(_CLIP_LAYER) * keep + 4
    if len(out) != expected:
        raise SystemExit(f"{model}: {len(out)} vision/projector tensors found, {expected} expected")
    return config, out


def convert_mmproj(model: Path, out: Path) -> None:
    """CLIP tower + projector of ``model`` as llama.cpp's mmproj GGUF ``out``: matrices and the
    patch convolution f16, vectors (norms, biases, the class embedding) f32."""
    import gguf
    import numpy as np

    config, tensors = mmproj_tensors(model)
    vision = config["vision_config"]
    pre = json.loads((model / "preprocessor_config.json").read_text())
    writer = gguf.GGUFWriter(str(out), arch="clip")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_name(model.name)
    writer.add_description("LLaVA-1.5-style image encoder (CLIP + mlp2x_gelu projector)")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_llava_projector", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_uint32("clip.vision.image_size", vision["image_size"])
    writer.add_uint32("clip.vision.patch_size", vision["patch_size"])
    writer.add_uint32("clip.vision.embedding_length", vision["hidden_size"])
    writer.add_uint32("clip.vision.feed_forward_length", vision["intermediate_size"])
    writer.add_uint32("clip.vision.projection_dim", vision.get("projection_dim", vision["hidden_size"]))
    writer.add_uint32("clip.vision.attention.head_count", vision["num_attention_heads"])
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", vision.get("layer_norm_eps", 1e-5))
    # The tower's first n-1 layers are stored; the feature is the output of the last of them (HF's
    # hidden_states[-2]). Said explicitly: without feature_layer, llama.cpp's llava graph runs
    # only block_count - 1 layers (its LLaVA-1.5 files store n-1 and so read hidden_states[-3]).
    writer.add_uint32("clip.vision.block_count", vision["num_hidden_layers"] - 1)
    writer.add_array("clip.vision.feature_layer", [vision["num_hidden_layers"] - 1])
    writer.add_array("clip.vision.image_mean", [float(x) for x in pre["image_mean"]])
    writer.add_array("clip.vision.image_std", [float(x) for x in pre["image_std"]])
    act = vision.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise SystemExit(f"vision activation {act!r}: llama.cpp's CLIP runs quick_gelu or gelu")
    writer.add_bool("clip.use_gelu", act == "gelu")  # false: quick_gelu
    for name, array in tensors.items():
        matrix = name.endswith(".weight") and array.ndim in (2, 4)
        writer.add_tensor(name, array.astype(np.float16 if matrix else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- the command ----------------------------------------------------------------------------

def ensure(model: Path, types: list[str], check: bool = True, force: bool = False) -> list[Path]:
    """Converts what is missing; with ``check``, verifies the tokenisation of each LLM file."""
    out = gguf_dir(model)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for outtype in types:
        llm, mmproj = gguf_paths(model, outtype)
        if force or not llm.is_file():
            partial = llm.with_suffix(".partial")
            convert_llm(model, partial, outtype)
            partial.replace(llm)
        written.append(llm)
        if check:
            problems = check_tokens(model, llm)
            if problems:
                raise SystemExit(f"{llm}: llama.cpp tokenises differently from ours:\n  " + "\n  ".join(problems))
            print(f"{llm}: tokenisation matches ours on {len(sample_prompts())} sample texts", flush=True)
    _, mmproj = gguf_paths(model, types[0] if types else "f16")
    if force or not mmproj.is_file():
        partial = mmproj.with_suffix(".partial")
        convert_mmproj(model, partial)
        partial.replace(mmproj)
    written.append(mmproj)
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="llava-hf checkpoint directory (e.g. models/bench/small)")
    p.add_argument("--types", nargs="+", default=["f16", "q8_0"], choices=TYPES, help="LLM weight types")
    p.add_argument("--no-check", action="store_true", help="skip the tokenisation check")
    p.add_argument("--force", action="store_true", help="convert again even if the files exist")
    args = p.parse_args(argv)
    for path in ensure(args.model, args.types, check=not args.no_check, force=args.force):
        print(path)


if __name__ == "__main__":
    main()
