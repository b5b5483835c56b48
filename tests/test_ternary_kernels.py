"""Packed ternary weights and the int8 x ternary kernels (PyTorch reference, native CPU, Triton).

The Triton kernel runs on CPU tensors under ``TRITON_INTERPRET=1`` (set below, before triton is
first imported), on small shapes so the interpreter stays quick.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`

torch = pytest.importorskip("torch")

from biasmed.errors import InputError  # noqa: E402
from biasmed.ternary import native  # noqa: E402
from biasmed.ternary.kernels import (  # noqa: E402
    bitlinear,
    normed_bitlinear,
    resolve_backend,
    ternary_linear,
    ternary_matmul,
    ternary_matmul_reference,
)
from biasmed.ternary.packing import (  # noqa: E402
    LAYOUTS,
    PackedTernary,
    pack_ternary,
    pack_weight,
    repack,
    unpack_ternary,
)
from biasmed.ternary.quant import (  # noqa: E402
    bitlinear_latent,
    fake_quantize_activations,
    fake_quantize_weight,
    quantize_activations,
    rms_norm,
)

SHAPES = [(1, 64, 48), (5, 130, 17), (33, 256, 96)]  # (M, K, N); K=130 is not a multiple of 4


def _case(m: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, PackedTernary]:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=gen)
    x_q = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    return x_q, weight, pack_weight(weight)


def _exact(x_q: torch.Tensor, w: PackedTernary) -> torch.Tensor:
    """Independent int64 product from the unpacked trits."""
    return (x_q.long() @ w.unpack().long().T).to(torch.int32)


# --------------------------------------------------------------------------- packing


@pytest.mark.parametrize("k", [1, 4, 7, 130])
def test_pack_unpack_roundtrip_and_layout(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    trits = torch.randint(-1, 2, (6, k), generator=gen, dtype=torch.int8)
    data = pack_ternary(trits)
    kq = (k + 3) // 4
    assert data.dtype == torch.uint8 and data.shape == (6, kq)
    assert torch.equal(unpack_ternary(data, k), trits)
    # documented layout: column i*Kq + j lives in bits 2i..2i+1 of byte j, as code trit + 1
    for col in range(k):
        i, j = divmod(col, kq)
        code = (data[:, j].long() >> (2 * i)) & 3
        assert torch.equal(code - 1, trits[:, col].long())
    codes = torch.stack([(data.long() >> s) & 3 for s in (0, 2, 4, 6)])
    assert not (codes == 3).any()  # code 3 never used; padding is trit 0


def test_pack_rejects_non_ternary() -> None:
    with pytest.raises(ValueError, match="-1, 0, 1"):
        pack_ternary(torch.tensor([[2, 0]], dtype=torch.int8))


def test_pack_weight_is_ternary_and_one_seventh_of_bf16() -> None:
    weight = torch.randn(96, 256, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    w = pack_weight(weight)
    trits = w.unpack()
    assert set(trits.unique().tolist()) == {-1, 0, 1}
    assert w.scale.dtype == torch.float32 and w.scale.dim() == 0
    torch.testing.assert_close(w.dequantize(), fake_quantize_weight(weight), rtol=1e-6, atol=1e-7)
    bf16_bytes = weight.numel() * weight.element_size()
    assert w.nbytes == 96 * 64 + 4
    assert w.nbytes <= bf16_bytes / 7


# --------------------------------------------------------------------------- reference kernel


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matmul_is_exact(shape: tuple[int, int, int]) -> None:
    x_q, _, w = _case(*shape, seed=1)
    want = _exact(x_q, w)
    got = ternary_matmul_reference(x_q, w)
    assert got.dtype == torch.int32 and torch.equal(got, want)
    # a tiny chunk forces many unpack blocks, including a ragged last one
    assert torch.equal(ternary_matmul_reference(x_q, w, chunk_bytes=4 * w.quarter * 5), want)


def test_dispatcher_shapes_and_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    x_q, _, w = _case(6, 64, 40, seed=2)
    x3 = x_q.reshape(2, 3, 64)
    assert torch.equal(ternary_matmul(x3, w), _exact(x_q, w).reshape(2, 3, 40))
    on_cpu = "native" if native.available() else "reference"
    assert resolve_backend("auto", torch.device("cpu")) == on_cpu
    assert resolve_backend("native", torch.device("meta")) == "reference"  # native is CPU only
    monkeypatch.setenv("BIASMED_TERNARY_BACKEND", "triton")
    assert resolve_backend("auto", torch.device("cpu")) == "triton"
    assert resolve_backend("reference", torch.device("cpu")) == "reference"
    with pytest.raises(ValueError, match="unknown ternary backend"):
        resolve_backend("cuda-magic", torch.device("cpu"))
    with pytest.raises(ValueError, match="features"):
        ternary_matmul(torch.zeros(1, 63, dtype=torch.int8), w, backend="reference")


def test_bitlinear_paths_agree_with_published_fake_quant() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 128, generator=gen)
    weight = torch.randn(72, 128, generator=gen)
    x_q, x_scale = quantize_activations(x)
    assert x_q.dtype == torch.int8 and int(x_q.abs().max()) == 127
    packed = ternary_linear(x_q, x_scale, pack_weight(weight), backend="reference")
    assert torch.equal(packed, bitlinear_latent(x, weight))  # exact integer sums both ways
    published = torch.nn.functional.linear(fake_quantize_activations(x), fake_quantize_weight(weight))
    torch.testing.assert_close(packed, published, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 7, 130, 253, 256, 300, 1030])
def test_block256_layout_roundtrip(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    trits = torch.randint(-1, 2, (5, k), generator=gen, dtype=torch.int8)
    for layout in LAYOUTS:
        data = pack_ternary(trits, layout)
        assert data.shape == (5, (k + 3) // 4)  # same bytes in both layouts
        assert torch.equal(unpack_ternary(data, k, layout), trits)
    w = PackedTernary(pack_ternary(trits), torch.tensor(0.5), k, 5)
    blocked = repack(w, "block256")
    assert blocked.layout == "block256" and torch.equal(blocked.unpack(), trits)
    assert torch.equal(repack(blocked, "quarter").data, w.data)
    if k >= 256:  # documented: byte j of block 0 holds column 64 i + j at bits 2i
        for col in (0, 1, 63, 64, 130, 255):
            i, j = divmod(col, 64)
            assert torch.equal(((blocked.data[:, j].long() >> (2 * i)) & 3) - 1, trits[:, col].long())


# --------------------------------------------------------------------------- native CPU kernel

# (K, N): odd and even sizes, with and without whole 256-column blocks and a tail (of more than
# 32 bytes at K = 130 and 1411: both AVX2 halves); 1411 and 2816 have more whole blocks than the
# AVX2 kernel sums in int16 before widening (kFlush256 = 4)
NATIVE_SHAPES = [(1, 1), (7, 5), (130, 17), (253, 33), (256, 96), (300, 7), (1030, 9), (1411, 13), (2816, 11)]
NATIVE_BATCHES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 64, 75]


@pytest.fixture(scope="module")
def native_kernel() -> native.NativeKernel:
    kernel = native.load()
    if kernel is None:
        pytest.skip("the native ternary kernel cannot be built here (no C++ compiler or not x86-64)")
    return kernel


def _isas(kernel: native.NativeKernel) -> list[native.NativeKernel]:
    """The kernel at each instruction set this CPU runs (the scalar one always)."""
    return [native.NativeKernel(kernel.lib, isa, kernel.path) for isa in range(kernel.isa + 1)]


@pytest.mark.parametrize("shape", NATIVE_SHAPES)
def test_native_kernel_is_exact(native_kernel: native.NativeKernel, shape: tuple[int, int]) -> None:
    k, n = shape
    gen = torch.Generator().manual_seed(k * 131 + n)
    w = pack_weight(torch.randn(n, k, generator=gen))
    blocked = repack(w, "block256")
    for kernel in _isas(native_kernel):
        for m in NATIVE_BATCHES:
            x_q = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
            x_q[0, : min(k, 3)] = -128  # the extremes of both operands
            got = kernel.gemm_i8(x_q, blocked)
            assert got.dtype == torch.int32
            assert torch.equal(got, ternary_matmul_reference(x_q, w)), (kernel.isa_name, m, k, n)
            x = torch.randn(m, k, generator=gen) * 3
            x_q, x_scale = quantize_activations(x)
            want = ternary_linear(x_q, x_scale, w, backend="reference")
            assert torch.equal(kernel.linear_f32(x, blocked), want), (kernel.isa_name, m, k, n)


def test_native_kernel_per_row_scales_and_dispatch(native_kernel: native.NativeKernel) -> None:
    gen = torch.Generator().manual_seed(9)
    w = pack_weight(torch.randn(24, 300, generator=gen))
    rows = PackedTernary(w.data, torch.rand(24, generator=gen) + 0.5, 300, 24)  # one scale per row
    x = torch.randn(2, 3, 300, generator=gen)
    for weight in (w, rows):
        want = bitlinear(x, weight, backend="reference")
        assert torch.equal(bitlinear(x, weight, backend="native"), want)  # repacked on the fly
        assert torch.equal(bitlinear(x, repack(weight, "block256"), backend="native"), want)
    assert torch.equal(ternary_matmul(x.sign().to(torch.int8), repack(w, "block256"), backend="native"),
                       ternary_matmul(x.sign().to(torch.int8), w, backend="reference"))


@pytest.fixture
def forced_avx2(native_kernel: native.NativeKernel, monkeypatch: pytest.MonkeyPatch):
    """The process-wide kernel with ``BIASMED_TERNARY_ISA=avx2``, as tests and benchmarks force it."""
    if native_kernel.isa < native.ISA_NAMES.index("avx2"):
        pytest.skip("this CPU has no AVX2")
    monkeypatch.setenv(native.ENV_ISA, "avx2")
    native.load.cache_clear()
    try:
        kernel = native.load()
        assert kernel is not None and kernel.isa_name == "avx2"
        yield kernel
    finally:
        monkeypatch.delenv(native.ENV_ISA)
        native.load.cache_clear()


@pytest.mark.parametrize("shape", [(1411, 13), (2816, 11), (130, 17), (7, 5)])
def test_forced_avx2_path_is_exact_through_the_dispatcher(forced_avx2: native.NativeKernel, shape) -> None:
    k, n = shape
    gen = torch.Generator().manual_seed(k + n)
    w = pack_weight(torch.randn(n, k, generator=gen))
    blocked = repack(w, "block256")
    norm = torch.rand(k, generator=gen) + 0.5
    for m in (1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 64, 75):
        x_q = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
        assert torch.equal(ternary_matmul(x_q, blocked, backend="native"), _exact(x_q, w)), (m, k, n)
        x = torch.randn(m, k, generator=gen) * 3
        assert torch.equal(bitlinear(x, blocked, backend="native"), bitlinear(x, w, backend="reference")), (m, k, n)
        # the fused RMSNorm + BitLinear: its norm sums squares in double (see native.bitlinear_f32),
        # so it equals the scalar variant bit for bit and the PyTorch path to rounding
        fused = normed_bitlinear(x, norm, 1e-6, blocked, backend="native")
        scalar = native.NativeKernel(forced_avx2.lib, 0, forced_avx2.path).bitlinear_f32(x, norm, 1e-6, blocked)
        assert torch.equal(fused, scalar), (m, k, n)
        want = bitlinear(rms_norm(x, norm, 1e-6), w, backend="reference")
        assert torch.allclose(fused, want, rtol=0, atol=1e-3 * float(want.abs().max())), (m, k, n)


def test_avx2_int16_partial_sums_cannot_saturate(native_kernel: native.NativeKernel) -> None:
    """The worst bytes: every code 3 (not even a valid trit) against -128 everywhere, over more
    whole blocks than one int16 run: each int16 lane reaches 8 * 4 * 768 = 24576 before widening."""
    k, n = 2816, 5
    w = PackedTernary(torch.full((n, k // 4), 0xFF, dtype=torch.uint8), torch.tensor(1.0), k, n, "block256")
    for value in (-128, 127):
        x_q = torch.full((6, k), value, dtype=torch.int8)
        want = torch.full((6, n), 2 * value * k, dtype=torch.int32)  # (code 3 - 1) * x per column
        assert torch.equal(ternary_matmul_reference(x_q, w), want)
        for kernel in _isas(native_kernel):
            assert torch.equal(kernel.gemm_i8(x_q, w), want), kernel.isa_name


def test_forced_isa_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV_ISA, "sse9")
    native.load.cache_clear()
    try:
        with pytest.raises(InputError, match="BIASMED_TERNARY_ISA='sse9': unknown instruction set; choose one of"):
            native.load()
        monkeypatch.setenv(native.ENV_ISA, "scalar")
        native.load.cache_clear()
        kernel = native.load()
        if kernel is None:
            return  # no compiler here: nothing more to force
        assert kernel.isa_name == "scalar"
        monkeypatch.setenv(native.ENV_ISA, "AVX512")  # the short alias, any case
        assert native.forced_isa() == native.ISA_NAMES.index("avx512-vnni")
        # more than the CPU runs would die on an illegal instruction: refused (a CPU with AVX2 only)
        real_open = native._open
        monkeypatch.setattr(native, "_open", lambda path: replace(real_open(path), isa=1))
        native.load.cache_clear()
        with pytest.raises(InputError, match="BIASMED_TERNARY_ISA=avx512-vnni: this CPU runs avx2 at most"):
            native.load()
    finally:
        monkeypatch.delenv(native.ENV_ISA)
        native.load.cache_clear()


def test_without_a_compiler_the_reference_runs_after_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("BIASMED_CACHE_DIR", str(tmp_path / "cache"))  # no cached build to fall back on
    native.load.cache_clear()
    try:
        x_q, _, w = _case(3, 130, 17, seed=10)
        assert resolve_backend("auto", torch.device("cpu")) == "reference"
        assert torch.equal(ternary_matmul(x_q, w), _exact(x_q, w))
        assert torch.equal(ternary_matmul(x_q, w, backend="native"), _exact(x_q, w))
        assert not native.available()
        lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("biasmed: warning: native ternary kernel unavailable")
        assert "no-such-compiler" in lines[0] and "reference" in lines[0]
    finally:
        native.load.cache_clear()  # the next user builds (or finds) the real kernel again


# --------------------------------------------------------------------------- Triton kernel


@pytest.fixture(scope="module")
def triton_kernel():
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"triton cannot be imported here ({exc}); the GPU kernel is untested")
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("triton was configured without TRITON_INTERPRET=1 and there is no GPU")
    from biasmed.ternary import triton_kernel

    return triton_kernel


@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matmul_equals_reference_exactly(triton_kernel, shape: tuple[int, int, int]) -> None:
    x_q, _, w = _case(*shape, seed=4)
    want = ternary_matmul_reference(x_q, w)
    assert torch.equal(triton_kernel.ternary_matmul_triton(x_q, w), want)
    split = triton_kernel.LaunchConfig(block_m=16, block_n=32, block_kq=16, split_k=3)
    assert torch.equal(triton_kernel.ternary_matmul_triton(x_q, w, split), want)


def test_triton_dequantized_output_matches_reference(triton_kernel) -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, 96, generator=gen)
    w = pack_weight(torch.randn(40, 96, generator=gen))
    x_q, x_scale = quantize_activations(x)
    want = ternary_linear(x_q, x_scale, w, backend="reference")
    fused = triton_kernel.ternary_linear_triton(x_q, x_scale, w)
    split = triton_kernel.ternary_linear_triton(x_q, x_scale, w, triton_kernel.LaunchConfig(16, 32, 16, 2))
    torch.testing.assert_close(fused, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(split, want, rtol=1e-6, atol=0)
    assert torch.equal(ternary_linear(x_q, x_scale, w, backend="triton"), fused)


# Ahead-of-time compilation cannot run under TRITON_INTERPRET=1 (the interpreter replaces the
# language's values), and this session set it before triton was imported; so the compile runs
# in a fresh interpreter whose environment lacks it.
_COMPILE_AHEAD = """
import json, sys
import torch
import triton
from biasmed.ternary import triton_kernel
config = triton_kernel.choose_config(1, 6912, 640, torch.device("cpu"))  # batch-1 tiles
try:
    asm = triton_kernel.compile_ahead(config, arch=90)
except (ImportError, TypeError) as exc:  # the compile API of another triton release (written for 3.9)
    print(json.dumps({"skip": f"ahead-of-time compile API differs in triton {triton.__version__}: {exc}"}))
    sys.exit(0)
except Exception as exc:  # e.g. a triton build without the CUDA backend or ptxas
    text = str(exc)
    if "ptxas" in text.lower() or "backend" in text.lower():
        print(json.dumps({"skip": f"triton cannot compile for CUDA here: {text.splitlines()[0] if text else exc!r}"}))
        sys.exit(0)
    raise
print(json.dumps({"mma": "mma" in asm["ptx"], "cubin_bytes": len(asm["cubin"])}))
"""


def test_triton_kernel_compiles_to_tensor_core_code_for_h100() -> None:
    """No GPU here: compile ahead for sm_90 to prove the int8 dot lowers to MMA instructions."""
    import json
    import subprocess
    import sys

    try:
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001  # pragma: no cover - any import failure means no triton
        pytest.skip(f"triton cannot be imported here ({exc}); the GPU kernel is untested")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences triton 3.9's notice; same result
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_AHEAD], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result["mma"] and result["cubin_bytes"] > 0


def test_tiny_model_forward_on_triton_backend(triton_kernel, tmp_path) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    import biasmed.ternary  # noqa: F401  (registers hgrn_bit)
    from biasmed.ternary.checkpoint import make_tiny_hgrn_checkpoint

    ckpt = make_tiny_hgrn_checkpoint(tmp_path / "m", hidden_size=32, intermediate_size=32, with_tokenizer=False)

    model = AutoModelForCausalLM.from_pretrained(str(ckpt), packed_ternary=True)
    ids = torch.randint(3, 384, (1, 3), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        model.set_ternary_backend("reference")
        want = model(input_ids=ids, use_cache=False).logits
        model.set_ternary_backend("triton")
        got = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
