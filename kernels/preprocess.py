"""Image normalisation: a batch of uint8 HWC images -> normalised CHW tensors.

``(B, H, W, 3) uint8`` -> ``(B, 3, H, W)`` in ``dtype``, computing
``(v * rescale - mean[c]) / std[c]``. The reference looks each byte up in a
256-entry table per channel, so every output equals the float32 formula exactly.
"""

from collections.abc import Sequence

import torch

from kernels.dispatch import forced_backend


def _lookup_table(mean: Sequence[float], std: Sequence[float], rescale: float) -> torch.Tensor:
    # Rescale in float64 then round to float32, as the reference processors do.
    levels = (torch.arange(256, dtype=torch.float64) * rescale).to(torch.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)
    return (levels[None, :] - mean_t[:, None]) / std_t[:, None]  # (3, 256)


def normalize_reference(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    rescale: float = 1 / 255,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) uint8 images, got {tuple(images.shape)} {images.dtype}")
    table = _lookup_table(mean, std, rescale)  # (3, 256)
    idx = images.permute(0, 3, 1, 2).long()  # (B, 3, H, W)
    out = table[torch.arange(3)[None, :, None, None], idx]
    return out.to(dtype)


def normalize_images(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    rescale: float = 1 / 255,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dispatch: the reference is the only path until fused kernels land."""
    forced_backend()
    return normalize_reference(images, mean, std, rescale, dtype)
