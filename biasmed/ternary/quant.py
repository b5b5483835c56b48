"""BitLinear quantization math (MatMul-free LM / BitNet b1.58 style).

Conventions, confirmed against the public HGRN-bit code (``mmfreelm/ops/fusedbitnet.py``):

* activations: per token (last dim), ``scale = 127 / max(|x|, 1e-5)``,
  ``x_q = clamp(round(x * scale), -128, 127)`` (int8);
* weights: per tensor, ``s = 1 / max(mean|W|, 1e-5)``, ``W_t = clamp(round(W * s), -1, 1)``;
* the published layer "fake-quantizes" (dequantizes) both operands *before* an ordinary float
  matmul: ``y = (x_q / scale) @ (W_t / s)^T``.  That equals ``(x_q @ W_t^T) / scale / s``; biasmed
  accumulates the integer product exactly and dequantizes *after* the matmul, in both the latent
  and the packed path, so the two paths agree bit for bit.  (An fp32 sum of int8 x ternary
  products is exact while ``K * 128 < 2**24``, i.e. for any K below 131072.)

Rounding is round-half-to-even (``torch.round``), as in the public code; the straight-through
estimator of the public code only matters for training and is not needed for inference.
Math runs in float32 (float64 when the input is float64) whatever the storage dtype.
"""

from __future__ import annotations

import torch

ACT_EPS = 1e-5  # floor on max|x| per token
WEIGHT_EPS = 1e-5  # floor on mean|W| per tensor
ACT_QMAX = 127.0


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for 16/32-bit tensors, float64 for float64 ones."""
    return torch.promote_types(t.dtype, torch.float32)


def _up(t: torch.Tensor) -> torch.Tensor:
    return t.to(compute_dtype(t))


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm: ``x * rsqrt(mean(x^2) + eps) * weight`` in the compute dtype."""
    x = _up(x)
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight.to(y.dtype)


def activation_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-token scale ``127 / max(|x|, 1e-5)`` (keepdim)."""
    return ACT_QMAX / _up(x).abs().amax(dim=-1, keepdim=True).clamp(min=ACT_EPS)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x_q int8, scale [..., 1])`` with ``x ≈ x_q / scale``."""
    scale = activation_scale(x)
    x_q = (_up(x) * scale).round().clamp(-128, 127).to(torch.int8)
    return x_q, scale


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-tensor ternarization scale ``s = 1 / max(mean|W|, 1e-5)`` (scalar)."""
    return 1.0 / _up(w).abs().mean().clamp(min=WEIGHT_EPS)


def ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(trits int8 in {-1,0,1}, dequant scalar)`` with ``W ≈ trits * dequant``.

    ``dequant`` is ``1 / s`` (that is ``max(mean|W|, 1e-5)`` up to rounding), the factor applied
    after the integer matmul; float32 unless ``w`` is float64.
    """
    s = weight_scale(w)
    trits = (_up(w) * s).round().clamp(-1, 1).to(torch.int8)
    return trits, 1.0 / s


def dequantize_output(acc: torch.Tensor, x_scale: torch.Tensor, w_dequant: torch.Tensor) -> torch.Tensor:
    """BitLinear epilogue ``acc * (w_dequant / x_scale)`` (x_scale ``[..., 1]``)."""
    dtype = torch.promote_types(x_scale.dtype, torch.float32)
    return acc.to(dtype) * (w_dequant.to(dtype) / x_scale.to(dtype))


def bitlinear_latent(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BitLinear on an already normalised input from the latent weight (no packing).

    The matmul runs on integer-valued floats, so it is exact and equals the packed kernels.
    """
    x_q, x_scale = quantize_activations(x)
    trits, w_dequant = ternarize(weight)
    dtype = x_scale.dtype
    acc = torch.nn.functional.linear(x_q.to(dtype), trits.to(dtype))
    return dequantize_output(acc, x_scale, w_dequant)


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """The published formulation: quantize to int8 levels and dequantize again."""
    scale = activation_scale(x)
    return (_up(x) * scale).round().clamp(-128, 127) / scale


def fake_quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """The published formulation: ``clamp(round(W*s), -1, 1) / s``."""
    s = weight_scale(w)
    return (_up(w) * s).round().clamp(-1, 1) / s
