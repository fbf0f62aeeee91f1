"""Image preprocessing per image: ours vs transformers' CLIP/LLaVA image processor.

    python -m benchmarks.kernels.preprocess

Photo-like images of common camera sizes, LLaVA-1.5 settings (pad to square,
336 px). Both sides start from a decoded PIL image and end with a float32 tensor.
"""

import argparse

import torch

from benchmarks.kernels.timing import interleaved_medians, table
from llava_model.image_processing import ImageProcessingConfig, preprocess_images
from tests.images import photo_like
from tests.reference import hf_processor

SIZES = [(640, 480), (1024, 768), (336, 336), (1920, 1080)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    side = 336
    rows = []
    for mode in ("pad", "crop"):
        ours_cfg = ImageProcessingConfig(image_size=side, shortest_edge=side, aspect_mode=mode)
        hf = hf_processor(mode, side)
        for w, h in SIZES:
            images = [photo_like(w, h, seed=i) for i in range(args.batch)]
            times = interleaved_medians(
                {
                    "transformers": lambda: hf(images=images, return_tensors="pt")["pixel_values"],
                    "ours": lambda: preprocess_images(images, ours_cfg, torch.float32),
                },
                rounds=args.rounds,
            )
            per = {k: v / args.batch for k, v in times.items()}
            rows.append({
                "mode": mode, "image": f"{w}x{h}", "transformers ms/img": f"{per['transformers'] * 1e3:.2f}",
                "ours ms/img": f"{per['ours'] * 1e3:.2f}", "speed-up": f"{per['transformers'] / per['ours']:.2f}",
            })
    print(f"batch of {args.batch} images, {torch.get_num_threads()} torch threads")
    print(table(rows, ["mode", "image", "transformers ms/img", "ours ms/img", "speed-up"]))


if __name__ == "__main__":
    main()
