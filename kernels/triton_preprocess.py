"""Triton: uint8 HWC image batch -> normalised CHW in one pass, with the pad fill.

One program handles ``BLOCK`` pixels of one image: it reads the three bytes of each
pixel, applies ``v * scale[c] + shift[c]`` in fp32, substitutes the fill value
outside the image's region, and writes three channel planes in the output dtype.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _normalize_kernel(
    src_ptr, dst_ptr, regions_ptr, scale_ptr, shift_ptr, fill_ptr,
    H, W,
    HAS_REGIONS: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    img = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    src = src_ptr + img * H * W * 3 + offs * 3
    dst = dst_ptr + img * 3 * H * W + offs
    if HAS_REGIONS:
        top = tl.load(regions_ptr + img * 4)
        left = tl.load(regions_ptr + img * 4 + 1)
        height = tl.load(regions_ptr + img * 4 + 2)
        width = tl.load(regions_ptr + img * 4 + 3)
        row = offs // W
        col = offs % W
        inside = (row >= top) & (row < top + height) & (col >= left) & (col < left + width)
    for c in tl.static_range(3):
        v = tl.load(src + c, mask=mask, other=0).to(tl.float32)
        out = v * tl.load(scale_ptr + c) + tl.load(shift_ptr + c)
        if HAS_REGIONS:
            out = tl.where(inside, out, tl.load(fill_ptr + c))
        tl.store(dst + c * H * W, out.to(dst_ptr.dtype.element_ty), mask=mask)


def normalize_triton(images, scale, shift, dtype, regions=None, fill=None, block: int = 1024):
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) uint8 images, got {tuple(images.shape)} {images.dtype}")
    images = images.contiguous()
    b, h, w, _ = images.shape
    out = torch.empty((b, 3, h, w), dtype=dtype, device=images.device)
    if b == 0 or h * w == 0:
        return out
    device = images.device
    scale, shift = scale.to(device), shift.to(device)
    has_regions = regions is not None
    regions_t = regions.to(device=device, dtype=torch.int32).contiguous() if has_regions else scale
    fill_t = fill.to(device=device, dtype=torch.float32) if has_regions else scale
    grid = (triton.cdiv(h * w, block), b)
    _normalize_kernel[grid](images, out, regions_t, scale, shift, fill_t, h, w, HAS_REGIONS=has_regions, BLOCK=block)
    return out
