"""Image normalisation: a batch of uint8 HWC images -> normalised CHW tensors.

``(B, H, W, 3) uint8`` -> ``(B, 3, H, W)`` in ``dtype``, computing
``(v * rescale - mean[c]) / std[c]``. With ``regions`` (``(B, 4)`` ints: top, left,
height, width of each image inside its canvas), pixels outside an image's region
become the normalised ``fill`` colour (LLaVA's pad-to-square with the mean colour),
whatever the canvas held there.

The reference looks each byte up in a 256-entry table per channel; the fused CPU
path is one compiled pass (``kernels.preprocess_jit``; bit-equal to, and without numba,
torch's strided conversion plus multiply and add); the Triton path is one kernel.
The multimodal processor runs this on CPU tensors; its backend is resolved once
when the processor is set up (``kernels.dispatch``).
"""

from collections.abc import Sequence

import torch

from kernels.dispatch import choose_backend
from kernels.jit import compiled


def _channel_affine(mean, std, rescale) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale``, ``shift`` with ``out = v * scale + shift``, per channel, fp32."""
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = rescale / std_t
    shift = -torch.tensor(mean, dtype=torch.float64) / std_t
    return scale.float(), shift.float()


def _fill_values(fill: Sequence[int] | None, mean, std, rescale) -> torch.Tensor:
    """The normalised value of the fill colour (default: the mean colour, as LLaVA pads)."""
    colour = [int(m * 255) for m in mean] if fill is None else list(fill)
    table = _lookup_table(mean, std, rescale)
    return table[torch.arange(3), torch.tensor(colour)]


def _lookup_table(mean: Sequence[float], std: Sequence[float], rescale: float) -> torch.Tensor:
    # Rescale in float64 then round to float32, as the reference processors do.
    levels = (torch.arange(256, dtype=torch.float64) * rescale).to(torch.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)
    return (levels[None, :] - mean_t[:, None]) / std_t[:, None]  # (3, 256)


def _outside_mask(regions: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 1, H, W) bool: True where a pixel lies outside its image's region."""
    r = regions.to(torch.long)
    rows = torch.arange(height)[None, :]
    cols = torch.arange(width)[None, :]
    inside_rows = (rows >= r[:, 0:1]) & (rows < r[:, 0:1] + r[:, 2:3])  # (B, H)
    inside_cols = (cols >= r[:, 1:2]) & (cols < r[:, 1:2] + r[:, 3:4])  # (B, W)
    return ~(inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


def _check(images: torch.Tensor, regions: torch.Tensor | None) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) uint8 images, got {tuple(images.shape)} {images.dtype}")
    if regions is not None and tuple(regions.shape) != (images.shape[0], 4):
        raise ValueError(f"regions must be (B, 4), got {tuple(regions.shape)}")


def normalize_reference(images, mean, std, rescale=1 / 255, dtype=torch.float32, regions=None, fill=None):
    _check(images, regions)
    table = _lookup_table(mean, std, rescale)  # (3, 256)
    idx = images.permute(0, 3, 1, 2).long()  # (B, 3, H, W)
    out = table[torch.arange(3)[None, :, None, None], idx]
    if regions is not None:
        fill_t = _fill_values(fill, mean, std, rescale)[None, :, None, None]
        out = torch.where(_outside_mask(regions.cpu(), *images.shape[1:3]).to(out.device), fill_t, out)
    return out.to(dtype)


def _loops():
    """``kernels.preprocess_jit``, or ``None`` (``kernels.jit``)."""
    return compiled("preprocess_jit")


def affine_passes(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> None:
    """``out = float(images) * scale + shift`` in torch: HWC uint8 -> CHW, three passes."""
    out.copy_(images.permute(0, 3, 1, 2))  # one strided pass: HWC uint8 -> CHW float
    out.mul_(scale[None, :, None, None]).add_(shift[None, :, None, None])


def normalize_fused_cpu(images, mean, std, rescale=1 / 255, dtype=torch.float32, regions=None, fill=None):
    _check(images, regions)
    scale, shift = _channel_affine(mean, std, rescale)
    work = torch.float32 if dtype != torch.float64 else dtype
    out = torch.empty((images.shape[0], 3, *images.shape[1:3]), dtype=work)
    loops = _loops()
    if loops is not None and work == torch.float32 and images.is_contiguous() and images.device.type == "cpu":
        loops.normalize_hwc(images.numpy(), scale.numpy(), shift.numpy(), out.numpy())  # bit-equal, one pass
    else:
        affine_passes(images, scale, shift, out)
    if regions is not None:
        fill_t = _fill_values(fill, mean, std, rescale)
        for i, (top, left, height, width) in enumerate(regions.tolist()):
            if (top, left, height, width) == (0, 0, *images.shape[1:3]):
                continue
            keep = out[i, :, top : top + height, left : left + width].clone()
            out[i] = fill_t[:, None, None]
            out[i, :, top : top + height, left : left + width] = keep
    return out if out.dtype == dtype else out.to(dtype)


def normalize_images(
    images, mean, std, rescale=1 / 255, dtype=torch.float32, regions=None, fill=None, backend=None
):
    """Dispatch to Triton (CUDA), the fused CPU path, or the reference.

    ``backend``: the processor's choice resolved at set-up; ``None`` reads
    ``LLAVA_KERNELS`` now. One that cannot run on ``images.device`` gives way to ``auto``.
    """
    backend = choose_backend("preprocess", images.device, choice=backend)
    if backend == "triton":
        from kernels.triton_preprocess import normalize_triton

        scale, shift = _channel_affine(mean, std, rescale)
        fill_t = _fill_values(fill, mean, std, rescale) if regions is not None else None
        return normalize_triton(images, scale, shift, dtype, regions, fill_t)
    if backend == "fused":
        return normalize_fused_cpu(images, mean, std, rescale, dtype, regions, fill)
    return normalize_reference(images, mean, std, rescale, dtype, regions, fill)
