"""int8 x packed-ternary matmul: a pure-PyTorch reference and a dispatcher.

``ternary_matmul(x_q, w)`` returns the exact int32 product ``x_q @ trits(w)^T``;
``ternary_linear(x_q, x_scale, w)`` returns the dequantized output
``(x_q @ trits^T) * (w.scale / x_scale)``, i.e. the BitLinear output.

Backends:

* ``"reference"`` (this module): unpacks at most ``chunk_bytes`` of weights at a time to codes
  ``c = trit + 1`` and accumulates ``x @ c^T - sum(x)`` in int32 with ``torch._int_mm``;
* ``"triton"`` (:mod:`biasmed.ternary.triton_kernel`): reads the packed bytes directly;
* ``"auto"``: Triton for CUDA tensors when triton imports, else the reference.

The environment variable ``BIASMED_TERNARY_BACKEND`` overrides ``"auto"``.
"""

from __future__ import annotations

import functools
import os

import torch

from biasmed.ternary.packing import PackedTernary, unpack_codes
from biasmed.ternary.quant import dequantize_output

BACKENDS = ("auto", "reference", "triton")
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
        out[:, n0 : n0 + block.shape[0]] = _int_matmul(x_pad, unpack_codes(block))
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
    """Turn ``"auto"`` (or the env override) into ``"reference"`` or ``"triton"``."""
    if backend == "auto":
        backend = os.environ.get("BIASMED_TERNARY_BACKEND", "auto") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"unknown ternary backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "reference"
    return backend


def _flatten(x_q: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    lead = tuple(x_q.shape[:-1])
    return x_q.reshape(-1, x_q.shape[-1]).contiguous(), lead


def ternary_matmul(x_q: torch.Tensor, w: PackedTernary, backend: str = "auto") -> torch.Tensor:
    """Exact int32 ``x_q [..., K] @ trits(w)^T`` -> ``[..., N]``."""
    x2, lead = _flatten(x_q)
    if resolve_backend(backend, x2.device) == "triton":
        from biasmed.ternary.triton_kernel import ternary_matmul_triton

        out = ternary_matmul_triton(x2, w)
    else:
        out = ternary_matmul_reference(x2, w)
    return out.reshape(*lead, w.out_features)


def ternary_linear(
    x_q: torch.Tensor, x_scale: torch.Tensor, w: PackedTernary, backend: str = "auto"
) -> torch.Tensor:
    """Dequantized BitLinear output for int8 ``x_q [..., K]`` and its per-token scale ``[..., 1]``.

    float32 (float64 on the reference path when ``x_scale`` is float64)."""
    x2, lead = _flatten(x_q)
    s2 = x_scale.reshape(-1, 1)
    if resolve_backend(backend, x2.device) == "triton":
        from biasmed.ternary.triton_kernel import ternary_linear_triton

        out = ternary_linear_triton(x2, s2, w)
    else:
        out = dequantize_output(ternary_matmul_reference(x2, w), s2, w.scale)
    return out.reshape(*lead, w.out_features)
