"""int8 x packed-ternary matmul: a pure-PyTorch reference and a dispatcher.

``ternary_matmul(x_q, w)`` returns the exact int32 product ``x_q @ trits(w)^T``;
``ternary_linear(x_q, x_scale, w)`` returns the dequantized output
``(x_q @ trits^T) * (w.scale / x_scale)``, i.e. the BitLinear output;
``bitlinear(x, w)`` does the same from the float activations (quantization included: fused into
the native kernel, which then never materialises the int8 activations in PyTorch).

Backends:

* ``"reference"`` (this module): unpacks at most ``chunk_bytes`` of weights at a time to codes
  ``c = trit + 1`` and accumulates ``x @ c^T - sum(x)`` in int32 with ``torch._int_mm``;
* ``"native"`` (:mod:`biasmed.ternary.native`): the C++ CPU kernel (AVX-512 VNNI / AVX2 /
  scalar), built on first use; weights in the ``"block256"`` layout;
* ``"triton"`` (:mod:`biasmed.ternary.triton_kernel`): reads the packed bytes directly;
* ``"auto"``: Triton for CUDA tensors when triton imports; native for CPU tensors when it builds
  here; else the reference.  All are exact, so they give the same results bit for bit.

The environment variable ``BIASMED_TERNARY_BACKEND`` overrides ``"auto"``.  A weight in the other
layout than its backend wants is repacked on the fly (correct but slow: models repack at load).
"""

from __future__ import annotations

import functools
import os

import torch

from biasmed.ternary import native
from biasmed.ternary.packing import PackedTernary, repack, unpack_codes
from biasmed.ternary.quant import dequantize_output, quantize_activations, rms_norm

BACKENDS = ("auto", "reference", "native", "triton")
_LAYOUT = {"reference": None, "native": native.LAYOUT, "triton": "quarter"}  # None: any layout
_DEFAULT_CHUNK_BYTES = 8 << 20  # unpacked int8 weight bytes per reference step


def _int_matmul(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ b_t^T`` for int8 ``a [M, K]`` and ``b_t [N, K]``, as int32 ``[M, N]``."""
    if a.device.type == "cpu":
        try:
            return torch._int_mm(a, b_t.t())
        except (RuntimeError, AttributeError):  # very old torch: slow but exact
            return a.int() @ b_t.int().t()
    # Fallback off CPU (no triton): float64 products of small integers are exact.
    return (a.double() @ b_t.double().t()).round().to(torch.int32)


def ternary_matmul_reference(
    x_q: torch.Tensor, w: PackedTernary, *, chunk_bytes: int = _DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """Exact int32 ``x_q [M, K] @ trits^T`` by unpacking row blocks of the packed weight."""
    _check(x_q, w)
    m, k = x_q.shape
    kq = w.quarter
    x_pad = x_q if k == 4 * kq else torch.nn.functional.pad(x_q, (0, 4 * kq - k))
    # trit = code - 1, so x . trits = x . codes - sum(x): codes need no sign fix-up pass.
    x_sum = x_q.sum(dim=1, keepdim=True, dtype=torch.int32)
    out = torch.empty(m, w.out_features, dtype=torch.int32, device=x_q.device)
    rows = max(1, chunk_bytes // max(1, 4 * kq))
    for n0 in range(0, w.out_features, rows):
        block = w.data[n0 : n0 + rows]
        out[:, n0 : n0 + block.shape[0]] = _int_matmul(x_pad, unpack_codes(block, w.layout))
    return out.sub_(x_sum)


def _check(x_q: torch.Tensor, w: PackedTernary) -> None:
    if x_q.dtype != torch.int8 or x_q.dim() != 2:
        raise ValueError(f"x_q must be a 2-D int8 tensor, got {x_q.dtype} {tuple(x_q.shape)}")
    if x_q.shape[1] != w.in_features:
        raise ValueError(f"x_q has {x_q.shape[1]} features, the weight expects {w.in_features}")


@functools.cache
def triton_available() -> bool:
    """Whether ``import triton`` works here (cached)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``"auto"`` (or the env override) into ``"reference"``, ``"native"`` or ``"triton"``.

    ``"native"`` off CPU, or where the kernel cannot be built (one warning said why), becomes
    ``"reference"``.
    """
    if backend == "auto":
        backend = os.environ.get("BIASMED_TERNARY_BACKEND", "auto") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"unknown ternary backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda" and triton_available():
            return "triton"
        backend = "native" if device.type == "cpu" else "reference"
    if backend == "native" and (device.type != "cpu" or not native.available()):
        return "reference"
    return backend


def _native_kernel() -> native.NativeKernel:
    """The loaded native kernel (callers resolved the backend to ``"native"``, so it loaded)."""
    kernel = native.load()
    if kernel is None:  # pragma: no cover - resolve_backend never answers "native" then
        raise RuntimeError("the native ternary kernel is not available")
    return kernel


def layout_for(backend: str, device: torch.device) -> str:
    """The packed layout the resolved backend reads without repacking."""
    return _LAYOUT[resolve_backend(backend, device)] or "quarter"


def _as_layout(w: PackedTernary, backend: str) -> PackedTernary:
    want = _LAYOUT[backend]
    return w if want is None or w.layout == want else repack(w, want)


def _flatten(x_q: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    lead = tuple(x_q.shape[:-1])
    return x_q.reshape(-1, x_q.shape[-1]).contiguous(), lead


def ternary_matmul(x_q: torch.Tensor, w: PackedTernary, backend: str = "auto") -> torch.Tensor:
    """Exact int32 ``x_q [..., K] @ trits(w)^T`` -> ``[..., N]``."""
    x2, lead = _flatten(x_q)
    chosen = resolve_backend(backend, x2.device)
    w = _as_layout(w, chosen)
    if chosen == "triton":
        from biasmed.ternary.triton_kernel import ternary_matmul_triton

        out = ternary_matmul_triton(x2, w)
    elif chosen == "native":
        _check(x2, w)
        out = _native_kernel().gemm_i8(x2, w)
    else:
        out = ternary_matmul_reference(x2, w)
    return out.reshape(*lead, w.out_features)


def ternary_linear(x_q: torch.Tensor, x_scale: torch.Tensor, w: PackedTernary, backend: str = "auto") -> torch.Tensor:
    """Dequantized BitLinear output for int8 ``x_q [..., K]`` and its per-token scale ``[..., 1]``.

    float32 (float64 on the reference path when ``x_scale`` is float64)."""
    x2, lead = _flatten(x_q)
    s2 = x_scale.reshape(-1, 1)
    chosen = resolve_backend(backend, x2.device)
    w = _as_layout(w, chosen)
    if chosen == "triton" and w.scale.dim() == 0:
        from biasmed.ternary.triton_kernel import ternary_linear_triton

        out = ternary_linear_triton(x2, s2, w)
    else:
        out = dequantize_output(ternary_matmul(x2, w, chosen), s2, w.scale)
    return out.reshape(*lead, w.out_features)


def bitlinear(x: torch.Tensor, w: PackedTernary, backend: str = "auto") -> torch.Tensor:
    """BitLinear from already normalised float activations ``x [..., K]``: per-token int8
    quantization, the exact integer product, the float epilogue.  ``w.scale``: a scalar, or one
    value per output row.  float32 output (float64 for float64 ``x`` on the reference path).

    On the native backend a float32 ``x`` goes to the kernel as it is: quantization, product and
    epilogue run in one call, with the same float32 operations as the PyTorch path.
    """
    chosen = resolve_backend(backend, x.device)
    if chosen == "native" and x.dtype in (torch.float32, torch.bfloat16, torch.float16):
        # quantize_activations computes in float32 for 16-bit inputs too: upcasting first is exact
        x2 = x.reshape(-1, x.shape[-1]).float()
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        out = _native_kernel().linear_f32(x2, _as_layout(w, chosen))
        return out.reshape(*x.shape[:-1], w.out_features)
    x_q, x_scale = quantize_activations(x)
    return ternary_linear(x_q, x_scale, w, chosen)


def normed_bitlinear(
    x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: PackedTernary, backend: str = "auto"
) -> torch.Tensor:
    """HGRN-bit's BitLinear from raw activations: RMSNorm (own weight), then :func:`bitlinear`.

    On the native backend with float32 ``x`` the norm runs inside the kernel call too (one
    call per projection; the norm's sum of squares is accumulated in double there).
    """
    chosen = resolve_backend(backend, x.device)
    if chosen == "native" and x.dtype == torch.float32:
        x2 = x.reshape(-1, x.shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        out = _native_kernel().bitlinear_f32(x2, norm_weight, eps, _as_layout(w, chosen))
        return out.reshape(*x.shape[:-1], w.out_features)
    return bitlinear(rms_norm(x, norm_weight, eps), w, chosen)
