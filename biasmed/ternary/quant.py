"""BitLinear quantization math (MatMul-free LM / BitNet b1.58 style).

Conventions, confirmed against the public HGRN-bit code (``mmfreelm/ops/fusedbitnet.py``):

* activations: per token (last dim), ``scale = 127 / max(|x|, 1e-5)``,
  ``x_q = clamp(round(x * scale), -128, 127)`` (int8);
* weights: per tensor, ``s = 1 / max(mean|W|, 1e-5)``, ``W_t = clamp(round(W * s), -1, 1)``;
* the published layer "fake-quantizes" (dequantizes) both operands *before* an ordinary float
  matmul: ``y = (x_q / scale) @ (W_t / s)^T``.  That equals ``(x_q @ W_t^T) / scale / s``, so the
  packed path accumulates the integer product exactly and dequantizes *after* the matmul.

Rounding is round-half-to-even (``torch.round``), as in the public code; the straight-through
estimator of the public code only matters for training and is not needed for inference.
All math runs in float32 whatever the storage dtype.
"""

from __future__ import annotations

import torch

ACT_EPS = 1e-5  # floor on max|x| per token
WEIGHT_EPS = 1e-5  # floor on mean|W| per tensor
ACT_QMAX = 127.0


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm in float32: ``x / sqrt(mean(x^2) + eps) * weight``."""
    x = x.float()
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight.float()


def activation_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-token scale ``127 / max(|x|, 1e-5)`` (float32, keepdim)."""
    return ACT_QMAX / x.float().abs().amax(dim=-1, keepdim=True).clamp(min=ACT_EPS)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x_q int8, scale float32 [..., 1])`` with ``x ≈ x_q / scale``."""
    scale = activation_scale(x)
    x_q = (x.float() * scale).round().clamp(-128, 127).to(torch.int8)
    return x_q, scale


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """The published fake-quant: quantize to int8 levels and dequantize again (float32)."""
    scale = activation_scale(x)
    return (x.float() * scale).round().clamp(-128, 127) / scale


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-tensor ternarization scale ``s = 1 / max(mean|W|, 1e-5)`` (float32 scalar)."""
    return 1.0 / w.float().abs().mean().clamp(min=WEIGHT_EPS)


def ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(trits int8 in {-1,0,1}, dequant float32 scalar)`` with ``W ≈ trits * dequant``.

    ``dequant`` is ``1 / s`` (that is ``max(mean|W|, 1e-5)``), the factor applied after the
    integer matmul.
    """
    s = weight_scale(w)
    trits = (w.float() * s).round().clamp(-1, 1).to(torch.int8)
    return trits, (1.0 / s).float()


def fake_quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """The published fake-quant weight ``clamp(round(W*s), -1, 1) / s`` (float32)."""
    s = weight_scale(w)
    return (w.float() * s).round().clamp(-1, 1) / s
