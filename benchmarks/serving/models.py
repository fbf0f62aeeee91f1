"""Benchmark model configurations, random weights built in code (nothing downloaded).

- ``tiny``: the test model (CI smoke runs).
- ``small``: CLIP ViT-B/16 at 224 px (196 image tokens) + a ~134M-parameter
  Llama-shaped LLM (768 wide, 12 layers) with a 32k vocabulary.
- ``llava-1.5-7b``: CLIP ViT-L/14 at 336 px + a Llama-7B-shaped LLM, for a GPU
  machine (building it takes ~30 GB of host memory in fp32).
"""

import argparse
from pathlib import Path

from llava_model.tiny import TinyLlavaSpec, build_tiny_llava

CONFIGS = {
    "tiny": TinyLlavaSpec(),
    "small": TinyLlavaSpec(
        hidden_size=768, num_heads=12, num_kv_heads=12, intermediate_size=2048, num_layers=12,
        vocab_size=32000, tokenizer_vocab=32000, vision_hidden=768, vision_layers=12, vision_heads=12,
        vision_mlp_ratio=4, image_size=224, patch_size=16, init_std=0.02,
    ),
    "llava-1.5-7b": TinyLlavaSpec(
        hidden_size=4096, num_heads=32, num_kv_heads=32, intermediate_size=11008, num_layers=32,
        vocab_size=32000, tokenizer_vocab=32000, vision_hidden=1024, vision_layers=24, vision_heads=16,
        vision_mlp_ratio=4, image_size=336, patch_size=14, init_std=0.02,
    ),
}


def ensure_model(name: str, root: Path = Path("models/bench")) -> Path:
    """Build ``name`` under ``root`` once; later calls reuse it."""
    out = root / name
    if not (out / "model.safetensors").is_file():
        tmp = root / f"{name}.partial"
        build_tiny_llava(tmp, CONFIGS[name])
        if out.exists():
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build a benchmark model.")
    parser.add_argument("name", choices=list(CONFIGS))
    print(ensure_model(parser.parse_args().name))
