"""Kernels against their PyTorch references: dtype x shape sweeps, odd strides, bias on/off.

The Triton kernels' tests live in ``test_triton_kernels.py``: on a GPU they run
directly; on CPU this module runs them in a subprocess under ``TRITON_INTERPRET=1``.
"""

import pytest
import torch

from kernels.cpu_projector import PackedCpuProjector, cpu_fused_available
from kernels.dispatch import KernelConfigError, choose_backend, resolve_backends
from kernels.preprocess import normalize_fused_cpu, normalize_images, normalize_reference
from kernels.projector import gelu_form, projector_reference

# Relative error ||out - ref|| / ||ref|| against an fp64 reference, per input dtype.
TOL = {torch.float32: 2e-5, torch.bfloat16: 1.5e-2, torch.float16: 2e-3}
TOKENS = [1, 7, 83, 576, 2 * 576 + 13]
TINY, SMALL, LARGE = (64, 128), (256, 512), (1024, 4096)
HAS_CUDA = torch.cuda.is_available()


def make_weights(d_in, d_out, dtype, bias=True, mlp=True, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    w1 = (torch.randn(d_out, d_in, generator=g) / d_in**0.5).to(device, dtype)
    b1 = (torch.randn(d_out, generator=g) * 0.1).to(device, dtype) if bias else None
    w2 = (torch.randn(d_out, d_out, generator=g) / d_out**0.5).to(device, dtype) if mlp else None
    b2 = (torch.randn(d_out, generator=g) * 0.1).to(device, dtype) if bias and mlp else None
    return w1, b1, w2, b2


def make_input(tokens, d_in, dtype, contiguous=True, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    if contiguous:
        return torch.randn(tokens, d_in, generator=g).to(device, dtype)
    return torch.randn(tokens, 2 * d_in, generator=g).to(device, dtype)[:, ::2]  # stride 2 along K


def rel_err(out, x, weights, act):
    up = [None if t is None else t.double().cpu() for t in weights]
    ref = projector_reference(x.double().cpu(), *up, act=act)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    return ((out.double().cpu() - ref).norm() / ref.norm()).item()


# ---- CPU fused projector ---------------------------------------------------------------

CPU_DTYPES = [d for d in (torch.float32, torch.bfloat16) if cpu_fused_available(d)]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("sizes", [TINY, SMALL], ids=["tiny", "small"])
@pytest.mark.parametrize("act", ["gelu", "gelu_pytorch_tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_cpu_fused_projector(dtype, tokens, sizes, act, bias):
    weights = make_weights(*sizes, dtype, bias=bias)
    packed = PackedCpuProjector.pack(*weights, gelu_form(act))
    x = make_input(tokens, sizes[0], dtype, contiguous=tokens % 2 == 0)
    assert rel_err(packed(x), x, weights, act) < TOL[dtype]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
def test_cpu_fused_single_linear(dtype):
    weights = make_weights(*TINY, dtype, mlp=False)
    x = make_input(83, TINY[0], dtype)
    assert rel_err(PackedCpuProjector.pack(*weights, "none")(x), x, weights, "gelu") < TOL[dtype]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("tokens", [576, 2 * 576 + 13])
def test_cpu_fused_projector_llava_7b_shape(dtype, tokens):
    weights = make_weights(*LARGE, dtype)
    x = make_input(tokens, LARGE[0], dtype)
    assert rel_err(PackedCpuProjector.pack(*weights, "none")(x), x, weights, "gelu") < TOL[dtype]


# ---- Triton (tests/test_triton_kernels.py, interpreted in a subprocess here) -------------


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU the Triton tests run directly")
def test_triton_kernels_under_interpreter():
    """Triton must be imported with TRITON_INTERPRET=1 set, so its tests run apart."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_triton_kernels.py"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


# ---- dispatch ------------------------------------------------------------------------------


CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture
def kernels_env(monkeypatch):
    """Set ``LLAVA_KERNELS`` (no interpreter); returns the setter. Logs start afresh."""
    import kernels.dispatch

    pytest.importorskip("triton")  # the expectations below assume Triton is installed
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(kernels.dispatch, "_logged", set())
    return lambda value: monkeypatch.setenv("LLAVA_KERNELS", value)


def test_auto_choices(kernels_env):
    kernels_env("auto")
    assert choose_backend("preprocess", CPU) == "fused"
    assert choose_backend("projector", CPU, torch.float32) == "reference"  # fused is not faster in fp32
    assert choose_backend("projector", CUDA, torch.bfloat16) == "reference"  # cuBLAS beat our Triton GEMM
    assert choose_backend("preprocess", CUDA) == "triton"
    assert resolve_backends(CPU, torch.float32) == {"projector": "reference", "preprocess": "fused"}


def test_one_backend_applies_where_it_runs_and_the_rest_stay_auto(kernels_env, caplog):
    """The CUDA server case: Triton for the projector; preprocessing runs on CPU, stays auto."""
    kernels_env("triton")
    with caplog.at_level("WARNING", logger="kernels.dispatch"):
        assert resolve_backends(CUDA, torch.bfloat16) == {"projector": "triton", "preprocess": "fused"}
        resolve_backends(CUDA, torch.bfloat16)
    logged = [r.getMessage() for r in caplog.records]
    assert logged == ["LLAVA_KERNELS=triton applies to projector; preprocess on cpu stays auto"]
    kernels_env("fused")
    assert resolve_backends(CUDA, torch.bfloat16) == {"projector": "reference", "preprocess": "fused"}
    kernels_env("reference")
    assert resolve_backends(CUDA, torch.bfloat16) == {"projector": "reference", "preprocess": "reference"}


def test_one_backend_that_runs_nowhere_is_refused(kernels_env):
    kernels_env("triton")
    with pytest.raises(KernelConfigError, match=r"LLAVA_KERNELS=triton cannot run for any operation") as err:
        resolve_backends(CPU, torch.float32)
    message = str(err.value)
    assert "projector on cpu (float32) can use auto, reference" in message
    assert "preprocess on cpu can use auto, reference, fused" in message
    assert "TRITON_INTERPRET=1" in message


def test_per_operation_choices(kernels_env):
    kernels_env("projector=triton, preprocess=reference")
    assert resolve_backends(CUDA, torch.bfloat16) == {"projector": "triton", "preprocess": "reference"}
    kernels_env("projector=reference")
    assert resolve_backends(CPU, torch.float32) == {"projector": "reference", "preprocess": "fused"}
    kernels_env("PREPROCESS=Fused")
    assert resolve_backends(CUDA, torch.bfloat16) == {"projector": "reference", "preprocess": "fused"}


@pytest.mark.parametrize(
    "value,device,message",
    [
        ("preprocess=triton", CUDA, r"LLAVA_KERNELS: preprocess=triton cannot run for preprocess on cpu; "
                                    r"preprocess on cpu can use auto, reference, fused"),
        ("projector=fused", CUDA, r"LLAVA_KERNELS: projector=fused cannot run for projector on cuda \(bfloat16\); "
                                  r"projector on cuda \(bfloat16\) can use auto, reference, triton"),
        ("projector=triton", CPU, r"projector=triton cannot run for projector on cpu.*TRITON_INTERPRET=1"),
    ],
)
def test_per_operation_choice_that_cannot_run_is_refused(kernels_env, value, device, message):
    kernels_env(value)
    with pytest.raises(KernelConfigError, match=message):
        resolve_backends(device, torch.bfloat16)


@pytest.mark.parametrize(
    "value,message",
    [
        ("fastest", r"'fastest' is not one of auto, reference, fused, triton"),
        ("projector=fastest", r"backend 'fastest' for projector"),
        ("vision=triton", r"operation 'vision' is not one of projector, preprocess"),
        ("triton,projector=fused", r"'triton' has no operation"),
        ("projector=fused,projector=reference", r"projector is named twice"),
    ],
)
def test_unknown_settings_are_refused(kernels_env, value, message):
    kernels_env(value)
    with pytest.raises(KernelConfigError, match=r"LLAVA_KERNELS=.*" + message):
        resolve_backends(CPU, torch.float32)


def test_interpreter_runs_triton_on_cpu(kernels_env, monkeypatch):
    pytest.importorskip("triton")
    kernels_env("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backends(CPU, torch.float32) == {"projector": "triton", "preprocess": "triton"}


def test_per_call_choice_follows_the_tensors_device_and_never_raises(kernels_env):
    """A resolved choice that cannot run on the tensors' device gives way to auto's pick there."""
    kernels_env("triton")
    assert choose_backend("preprocess", CUDA, choice="fused") == "triton"
    assert choose_backend("projector", CPU, torch.float32, choice="triton") == "reference"
    assert choose_backend("preprocess", CPU) == "fused"  # read from the environment: still no raise
    batch = random_batch(1)
    torch.testing.assert_close(normalize_images(batch, MEAN, STD), normalize_reference(batch, MEAN, STD))


# ---- LLAVA_KERNELS at engine start (in-process engines, see conftest) ------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from llava_model.tiny import TinyLlavaSpec, build_tiny_llava

    out = tmp_path_factory.mktemp("tiny")
    build_tiny_llava(out, TinyLlavaSpec())
    return out


def test_engine_start_refuses_a_backend_that_cannot_run(tiny_dir, kernels_env, engine_factory):
    kernels_env("triton")
    with pytest.raises(KernelConfigError, match=r"LLAVA_KERNELS=triton cannot run for any operation.*TRITON_INTERPRET"):
        engine_factory(tiny_dir)


def test_engine_with_a_per_operation_backend_serves_images(tiny_dir, kernels_env, engine_factory):
    from vllm import SamplingParams

    from tests.images import noise

    kernels_env("projector=reference")
    llm = engine_factory(tiny_dir)
    kernel = llm.apply_model(lambda model: model.multi_modal_projector._kernel.func.__name__)
    assert kernel == ["projector_reference"]
    prompt = {"prompt": "<image> what?", "multi_modal_data": {"image": noise(40, 30)}}
    out = llm.generate([prompt], SamplingParams(max_tokens=3, min_tokens=3), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3


# ---- preprocessing --------------------------------------------------------------------------

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def random_batch(b=3, h=37, w=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=g)


def regions_for(batch):
    b, h, w, _ = batch.shape
    return torch.tensor([[0, 0, h, w], [3, 0, h - 6, w], [0, 5, h, w - 11]][:b], dtype=torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("with_regions", [False, True])
def test_fused_cpu_normalize(dtype, with_regions):
    batch = random_batch()
    regions = regions_for(batch) if with_regions else None
    ref = normalize_reference(batch, MEAN, STD, dtype=torch.float32, regions=regions)
    out = normalize_fused_cpu(batch, MEAN, STD, dtype=dtype, regions=regions)
    atol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0)


def test_regions_fill_with_mean_colour():
    batch = random_batch(2)
    regions = regions_for(batch)
    out = normalize_reference(batch, MEAN, STD, regions=regions)
    fill = [(int(m * 255) / 255 - m) / s for m, s in zip(MEAN, STD)]
    torch.testing.assert_close(out[1, :, 0, 0], torch.tensor(fill), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1, :, 5, 5], normalize_reference(batch, MEAN, STD)[1, :, 5, 5])


def test_a_vllm_worker_starts_in_a_process_that_loaded_numba():
    """vLLM 0.32's CPU worker start scans every module and trips over llvmlite's library
    handle once numba is loaded; our resampler loads numba, so the guard must hold, both
    when numba came first through us and when a user's library loaded it before the
    plugin ran. Without the guard the same start fails (the control)."""
    import subprocess
    import sys

    start = "from vllm.platforms import current_platform; current_platform.register_triton_kernel_overrides()"
    ours = f"import kernels.resample as r; r.warm_up(); {start}; print('started')"
    user = f"import numba; import llava_model; llava_model.register(); {start}; print('started')"
    control = f"import numba; {start}; print('started')"
    for code, works in ((ours, True), (user, True), (control, False)):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert ("started" in done.stdout) == works, (code, done.stderr[-2000:])
        if not works:
            assert "'_lib_fn_wrapper' object has no attribute 'get'" in done.stderr


def test_one_pass_cpu_normalize_is_bit_equal_to_the_torch_passes():
    from kernels.preprocess import _channel_affine, _loops, affine_passes

    batch = random_batch(b=4, h=41, w=23, seed=3)
    scale, shift = _channel_affine(MEAN, STD, 1 / 255)
    want = torch.empty((4, 3, 41, 23))
    affine_passes(batch, scale, shift, want)
    got = normalize_fused_cpu(batch, MEAN, STD)
    assert _loops() is not None  # numba is a dependency: the compiled pass is what ran
    assert torch.equal(got, want)
    strided = normalize_fused_cpu(batch[:, :, ::2], MEAN, STD)  # not contiguous: the torch passes
    assert torch.equal(strided, want[:, :, :, ::2])
