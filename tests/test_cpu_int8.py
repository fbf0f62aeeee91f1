"""W8A8 int8 layers compute their integer products exactly on every CPU (``kernels.cpu_int8``).

vLLM's oneDNN int8 GEMM saturates on CPUs without VNNI (AVX2 only); there our wrapper runs
each layer as two half-weight GEMMs. The layer tests drive vLLM's own CPU int8 kernel class
on a bare layer, as vLLM's W8A8 scheme does, and compare with a float64 product of the same
quantised integers: with the split forced on they must agree on every CPU; with it off they
agree exactly where the probe says this CPU's GEMM does not saturate (on a CPU that
saturates, that is the old code's defect, measured).
"""

import pytest
import torch
from vllm import _custom_ops as ops
from vllm.model_executor.kernels.linear.scaled_mm.cpu import CPUInt8ScaledMMLinearKernel
from vllm.model_executor.kernels.linear.scaled_mm.ScaledMMLinearKernel import Int8ScaledMMLinearLayerConfig
from vllm.utils.torch_utils import set_default_torch_dtype

from kernels import cpu_int8

NAMES = ("weight", "weight_scale", "input_scale", "input_zero_point", "azp_adj")
K, WIDTHS = 512, (96, 64)  # a fused layer of two parts (like QKV), 160 outputs


def test_split_halves_add_back_and_fit_seven_bits():
    every = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8)
    hi, lo = cpu_int8.split_weight(every)
    assert torch.equal(hi.int() + lo.int(), every.int())
    for half in (hi, lo):  # 2 x 255 x 64 = 32640 fits a signed 16-bit lane
        assert half.dtype == torch.int8 and half.abs().max() <= 64


def test_the_wrapper_is_installed_by_our_vllm_plugin():
    import llava_model

    llava_model.register()
    assert getattr(CPUInt8ScaledMMLinearKernel, "_llava_int8_split", False)
    assert cpu_int8.install()  # idempotent


def test_the_probe_answers_the_same_under_a_bfloat16_default_dtype():
    """vLLM prepares a bfloat16 model's weights with bfloat16 as torch's default dtype, and the
    probe first runs there."""
    first = cpu_int8.saturates()
    cpu_int8.saturates.cache_clear()
    try:
        with set_default_torch_dtype(torch.bfloat16):
            assert cpu_int8.saturates() == first
    finally:
        cpu_int8.saturates.cache_clear()


def _layer(case: str, gen: torch.Generator) -> tuple[torch.nn.Module, CPUInt8ScaledMMLinearKernel]:
    static, channelwise, symmetric = case == "static", case != "tensor", case != "asymmetric"
    n = sum(WIDTHS)
    layer = torch.nn.Module()
    weight = torch.randint(-128, 128, (n, K), generator=gen).to(torch.int8)
    weight[:, :64] = 127  # the worst case, beside random full-range values
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    scale = torch.rand(n if channelwise else len(WIDTHS), 1, generator=gen) * 0.01 + 0.001
    layer.weight_scale = torch.nn.Parameter(scale, requires_grad=False)
    layer.input_scale = torch.nn.Parameter(torch.tensor([0.05]), requires_grad=False) if static else None
    layer.input_zero_point = None
    layer.logical_widths = list(WIDTHS)
    layer.bias = torch.nn.Parameter(torch.randn(n, generator=gen), requires_grad=False)
    config = Int8ScaledMMLinearLayerConfig(
        is_static_input_scheme=static, is_channelwise=channelwise, input_symmetric=symmetric
    )
    return layer, CPUInt8ScaledMMLinearKernel(config, NAMES)


def _exact(layer_weight, scale, x, case):
    """float64 product of the integers vLLM's activation quantisation produces."""
    static = torch.tensor([0.05]) if case == "static" else None
    x_q, x_s, x_zp = ops.onednn_scaled_int8_quant(x, static, None, case != "asymmetric")
    x_int = x_q.double() - (0 if x_zp is None else x_zp.double().view(-1, 1))
    return (x_int * x_s.double().view(-1, 1)) @ (layer_weight.double() * scale.double()).t()


@pytest.mark.parametrize("case", ["channel", "tensor", "asymmetric", "static", "bfloat16"])
@pytest.mark.parametrize("split", [True, False])
def test_a_vllm_int8_layer_computes_its_integers_exactly(case, split, monkeypatch):
    cpu_int8.install()
    saturating = cpu_int8.saturates()
    monkeypatch.setattr(cpu_int8, "saturates", lambda: split)
    gen = torch.Generator().manual_seed(len(case))
    layer, kernel = _layer(case, gen)
    weight = layer.weight.data.clone()
    scale = layer.weight_scale.data.reshape(-1, 1)
    if scale.shape[0] != weight.shape[0]:  # per-tensor scales of a fused layer, one per part
        scale = torch.cat([s.expand(w, 1) for s, w in zip(scale, WIDTHS, strict=True)])
    dtype = torch.bfloat16 if case == "bfloat16" else torch.float32  # the model's dtype
    bias = layer.bias.data.to(dtype)
    layer.bias.data = bias
    with set_default_torch_dtype(dtype):  # vLLM loads a model under its dtype: the output's
        kernel.process_weights_after_loading(layer)
    x = torch.randn(5, K, generator=gen) * 3 + (1.0 if case == "asymmetric" else 0.0)
    x[0] = x[0].abs() + 1  # a token that quantises to the top of the range
    x = x.to(dtype)
    out = kernel.apply_weights(layer, x, layer.bias)
    want = _exact(weight, scale, x, case) + bias.double()
    assert out.shape == (5, sum(WIDTHS)) and out.dtype == dtype
    error = (out.double() - want).abs().max().item() / want.abs().max().item()
    if split or not saturating:
        assert error < (1e-2 if dtype == torch.bfloat16 else 1e-4), (case, split, error)
    else:  # vLLM's own path on a CPU that saturates: the defect the split removes
        assert error > 1e-2, (case, error)
