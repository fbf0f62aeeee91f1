"""Image preprocessing per image: ours (each resampler) vs transformers' CLIP/LLaVA/LLaVA-NeXT image processor.

    python -m benchmarks.kernels.preprocess [--batch 8] [--rounds 7] [--threads N] [--modes pad crop anyres]

Photo-like images of common camera sizes, LLaVA-1.5 settings (pad to square or
centre crop, 336 px) and LLaVA-1.6's (``anyres``: LLaVA-1.6's grid pinpoints, 336-px
tiles, base image plus up to 4 tiles). Both sides start from a decoded PIL image and end
with float32 tensors. Ours runs once per resampler: ``exact`` (the default, PIL's
bytes), ``torch`` (within two grey levels) and ``pil``. transformers runs its PIL
backend: its torchvision backend needs torchvision, which this CPU install leaves out.
"""

import argparse
import os

import torch

from benchmarks.kernels.timing import interleaved_medians, table
from kernels.ceiling import ceilings_line
from llava_model.image_processing import ImageProcessingConfig, preprocess_anyres, preprocess_images
from tests.images import photo_like
from tests.reference import hf_processor

LLAVA_16_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))

SIZES = [(640, 480), (1024, 768), (336, 336), (1920, 1080)]
RESAMPLERS = ("exact", "torch", "pil")


def _next_processor(side: int):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    return LlavaNextImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_grid_pinpoints=[list(p) for p in LLAVA_16_PINPOINTS],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--modes", nargs="+", default=["pad", "crop"], choices=["pad", "crop", "anyres"])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    side = 336
    rows = []
    for mode in args.modes:
        geometry = "resize" if mode == "anyres" else mode
        configs = {
            r: ImageProcessingConfig(image_size=side, shortest_edge=side, aspect_mode=geometry, resampler=r)
            for r in RESAMPLERS
        }
        hf = _next_processor(side) if mode == "anyres" else hf_processor(mode, side)
        for w, h in SIZES:
            images = [photo_like(w, h, seed=i) for i in range(args.batch)]
            variants = {"transformers": lambda: hf(images=images, return_tensors="pt")["pixel_values"]}
            for name, cfg in configs.items():
                if mode == "anyres":
                    variants[name] = lambda cfg=cfg: preprocess_anyres(images, cfg, LLAVA_16_PINPOINTS, torch.float32)
                else:
                    variants[name] = lambda cfg=cfg: preprocess_images(images, cfg, torch.float32)
            times = interleaved_medians(variants, rounds=args.rounds)
            per = {k: v / args.batch * 1e3 for k, v in times.items()}
            row = {"mode": mode, "image": f"{w}x{h}", "transformers ms/img": f"{per['transformers']:.2f}"}
            for name in RESAMPLERS:
                row[f"{name} ms/img"] = f"{per[name]:.2f}"
                row[f"{name} speed-up"] = f"{per['transformers'] / per[name]:.2f}"
            rows.append(row)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"batch of {args.batch} images, {torch.get_num_threads()} torch threads, load average {load}")
    print(ceilings_line())
    print("(timings vary between runs and machines, and with other load: compare within one run)")
    columns = ["mode", "image", "transformers ms/img"]
    columns += [f"{name} ms/img" for name in RESAMPLERS] + [f"{name} speed-up" for name in RESAMPLERS]
    print(table(rows, columns))


if __name__ == "__main__":
    main()
