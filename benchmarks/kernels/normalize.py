"""Batch normalisation of resized images: our kernel vs plain PyTorch, side by side.

    python -m benchmarks.kernels.normalize [--device cuda]

Input: ``(B, 336, 336, 3)`` uint8 (already resized). Output: ``(B, 3, 336, 336)``
normalised, in bf16 and fp32. "eager" is the textbook chain of PyTorch ops.
"""

import argparse

import torch

from benchmarks.kernels.timing import interleaved_medians, table
from kernels.ceiling import ceilings_line
from kernels.preprocess import normalize_images

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def eager(images, mean, std, dtype):
    x = images.permute(0, 3, 1, 2).float().div(255)
    return ((x - mean[None, :, None, None]) / std[None, :, None, None]).to(dtype)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    dev = args.device
    mean_t, std_t = torch.tensor(MEAN, device=dev), torch.tensor(STD, device=dev)
    rows = []
    for batch in (1, 16, 64):
        images = torch.randint(0, 256, (batch, 336, 336, 3), dtype=torch.uint8, device=dev)
        for dtype in (torch.bfloat16, torch.float32):
            times = interleaved_medians(
                {
                    "eager": lambda: eager(images, mean_t, std_t, dtype),
                    "ours": lambda: normalize_images(images, MEAN, STD, dtype=dtype),
                },
                device=dev,
                rounds=args.rounds,
            )
            moved = images.numel() * (1 + torch.tensor([], dtype=dtype).element_size())
            rows.append({
                "batch": batch, "dtype": str(dtype).removeprefix("torch."),
                "eager ms": f"{times['eager'] * 1e3:.3f}", "ours ms": f"{times['ours'] * 1e3:.3f}",
                "speed-up": f"{times['eager'] / times['ours']:.2f}",
                "ours GB/s": f"{moved / times['ours'] / 1e9:.1f}",
            })
    print(f"device: {dev}")
    print(ceilings_line(dev))
    print(table(rows, ["batch", "dtype", "eager ms", "ours ms", "speed-up", "ours GB/s"]))


if __name__ == "__main__":
    main()
