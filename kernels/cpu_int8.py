"""Exact W8A8 int8 layers on CPUs whose int8 GEMM saturates (no VNNI), inside vLLM's engine.

vLLM 0.32 runs a W8A8 int8 layer on a CPU without AMX through oneDNN. On CPUs without VNNI
(AVX2-only ones such as AMD Zen 3, or AVX-512 without VNNI) oneDNN multiplies int8 by
``vpmaddubsw``, which adds each pair of u8 x s8 products into a saturating 16-bit lane:
two products of 255 x 127 overflow it. Measured on such a CPU, a 512-deep int8 product of
random full-range weights came back up to 34 off on a scale of 185, and our tiny W8A8
model's log-probabilities moved 0.67 from the unquantised model's (0.14 on VNNI CPUs).

Weights of magnitude at most 64 cannot saturate (2 x 255 x 64 < 2**15). So where a start-up
probe sees the saturation, every int8 weight ``w`` is split into ``hi = floor(w / 2)`` and
``lo = w - hi`` (both in [-64, 64]); vLLM prepares ``hi`` as it would the weight, a second
oneDNN handler with the same scales holds ``lo``, and each call quantises the activations
once, as vLLM does, runs both GEMMs and adds them: the integer products are exact again.
It costs twice the int8 weight memory (as much as bfloat16) and about twice the int8 GEMM
time (two GEMMs of the layer's width measured 1.5x one; a single GEMM of twice the width,
2.9x). On CPUs whose int8 GEMM is exact nothing changes.

``install`` wraps two methods of vLLM's CPU int8 kernel class; it is called by our vLLM plugin
(``llava_model.register``) in every process, so it covers whichever model vLLM loads.
"""

import dataclasses
import functools
import logging

import torch

log = logging.getLogger(__name__)

LO_ATTR = "_llava_int8_lo"  # on a kernel object: the lo half's oneDNN handler and zero-point term


def split_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)`` int8 with ``hi + lo == weight`` and every value in [-64, 64]."""
    hi = torch.bitwise_right_shift(weight, 1)  # arithmetic: floor(w / 2), -128 -> -64
    return hi, weight - hi


def _azp_term(weight_t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """vLLM's activation zero-point term for a [K, N] int8 weight (asymmetric or dynamic inputs)."""
    return weight_t.sum(dim=0, keepdim=True, dtype=torch.float32) * scale.squeeze()


def _mm(handler, x_q, x_s, x_zp, adj, bias, dtype: torch.dtype) -> torch.Tensor:
    """One oneDNN int8 GEMM of quantised activations, as vLLM's apply runs it."""
    from vllm import _custom_ops as ops

    out = torch.empty((x_q.shape[0], handler.n), dtype=dtype)
    ops.onednn_scaled_mm(handler, x_q, out, x_s, x_zp, adj, bias)
    return out


def _onednn_int8_mm(weight: torch.Tensor, x: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """``x`` (float32) through vLLM's oneDNN int8 path with int8 ``weight`` ([N, K]), unit scales,
    dynamic per-token activation quantisation, as vLLM runs a W8A8 layer."""
    from vllm import _custom_ops as ops

    scales = torch.ones(weight.shape[0], 1, dtype=torch.float32)
    handler = ops.create_onednn_scaled_mm(weight.t(), scales, torch.float32, True, not symmetric, 1)
    x_q, x_s, x_zp = ops.onednn_scaled_int8_quant(x, None, None, symmetric)
    adj = None if symmetric else _azp_term(weight.t(), scales)
    return _mm(handler, x_q, x_s, x_zp, adj, None, torch.float32)


@functools.cache
def saturates() -> bool:
    """Whether this CPU's oneDNN int8 GEMM (as vLLM calls it) gets a worst-case product wrong:
    weights at +127 and activations quantised to the top of their range, where every pair of
    products overflows 16 bits if the kernel adds them there. Measured once per process, in
    float32 whatever the default dtype (vLLM prepares a bfloat16 model's weights under it)."""
    weight = torch.full((8, 64), 127, dtype=torch.int8)
    x = torch.full((2, 64), 3.0, dtype=torch.float32)
    x[1, ::2] = -1.0  # an asymmetric row: quantised to the bottom and top of u8
    for symmetric in (True, False):
        exact = x @ weight.float().t()
        got = _onednn_int8_mm(weight, x, symmetric)
        if not torch.allclose(got, exact, rtol=0.02, atol=0.02 * exact.abs().max().item()):
            return True
    return False


def _process_split(original, kernel, layer: torch.nn.Module) -> None:
    """vLLM's oneDNN weight preparation on the ``hi`` half, with per-channel scales; then a second
    oneDNN handler (and activation zero-point term) for the ``lo`` half, kept on the kernel."""
    from vllm import _custom_ops as ops

    w_name, s_name, i_s_name, _, azp_name = kernel.layer_param_names
    weight, scale = getattr(layer, w_name), getattr(layer, s_name)
    n = weight.shape[0]
    if kernel.config.is_channelwise:
        channel = scale.reshape(n, 1)
    elif len(layer.logical_widths) > 1:  # fused QKV / MLP: one scale per part
        from vllm.model_executor.layers.quantization.utils.w8a8_utils import convert_to_channelwise

        channel = convert_to_channelwise(scale, layer.logical_widths)
    else:
        channel = scale.reshape(1, 1).expand(n, 1)
    hi, lo = split_weight(weight.data)
    layer.register_parameter(w_name, torch.nn.Parameter(hi, requires_grad=False))
    layer.register_parameter(s_name, torch.nn.Parameter(channel.to(torch.float32), requires_grad=False))
    config = kernel.config
    kernel.config = dataclasses.replace(config, is_channelwise=True)  # the scales are per channel now
    try:
        original(kernel, layer)
    finally:
        kernel.config = config
    scale = getattr(layer, s_name)
    handler = ops.create_onednn_scaled_mm(
        lo.t(), scale, torch.get_default_dtype(), getattr(layer, i_s_name) is None, not config.input_symmetric, 32
    )
    adj = None if getattr(layer, azp_name, None) is None else _azp_term(lo.t(), scale)  # as vLLM's for hi
    setattr(kernel, LO_ATTR, (handler, adj))


def _apply_split(kernel, layer: torch.nn.Module, x: torch.Tensor, bias) -> torch.Tensor:
    """Both halves' products, the activations quantised once, exactly as vLLM's apply does."""
    from vllm import _custom_ops as ops

    lo_handler, lo_adj = getattr(kernel, LO_ATTR)
    _, _, i_s, i_zp, hi_adj = kernel._get_layer_params(layer)
    flat = x.reshape(-1, x.shape[-1])
    x_q, x_s, x_zp = ops.onednn_scaled_int8_quant(flat, i_s, i_zp, kernel.config.input_symmetric)
    out = _mm(kernel.dnnl_handler, x_q, x_s, x_zp, hi_adj, bias, x.dtype)
    out += _mm(lo_handler, x_q, x_s, x_zp, lo_adj, None, x.dtype)
    return out.reshape(*x.shape[:-1], out.shape[-1])


@functools.cache
def _warn_once() -> None:
    log.warning(
        "this CPU's oneDNN int8 GEMM saturates (no VNNI): W8A8 int8 layers run as two exact "
        "half-weight GEMMs (twice the int8 weight memory and GEMM time)"
    )


def install() -> bool:
    """Wrap vLLM's CPU int8 kernel so that, where ``saturates()``, its oneDNN layers run split.
    Idempotent; returns whether the class was wrapped (False where vLLM has no such class)."""
    try:
        from vllm.model_executor.kernels.linear.scaled_mm.cpu import CPUInt8ScaledMMLinearKernel as cls
    except ImportError:
        return False
    if getattr(cls, "_llava_int8_split", False):
        return True
    process, apply = cls.process_weights_for_onednn, cls._apply_weights_onednn

    def process_weights_for_onednn(self, layer):
        if not saturates():
            return process(self, layer)
        _warn_once()
        return _process_split(process, self, layer)

    def _apply_weights_onednn(self, layer, x, bias=None):
        if getattr(self, LO_ATTR, None) is None:
            return apply(self, layer, x, bias)
        return _apply_split(self, layer, x, bias)

    cls.process_weights_for_onednn = process_weights_for_onednn
    cls._apply_weights_onednn = _apply_weights_onednn
    cls._llava_int8_split = True
    return True
