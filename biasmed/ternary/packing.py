"""2-bit packing of ternary weights: 4 trits per byte plus one float32 scale per tensor.

Layout (shared by the PyTorch reference and the Triton kernel, and by anyone serving the
weights, e.g. the vLLM plugin):

* a ``[N, K]`` weight (``nn.Linear`` orientation: out x in) becomes ``data`` uint8 ``[N, Kq]``
  with ``Kq = ceil(K / 4)``;
* the columns are split in four *quarters* of ``Kq`` columns: bits ``2i..2i+1`` of byte
  ``data[n, j]`` hold the trit of column ``i * Kq + j`` (i = 0..3);
* a trit ``t`` in {-1, 0, 1} is stored as the code ``t + 1`` in {0, 1, 2}; code 3 never occurs;
  padding columns (``K <= k < 4 * Kq``) hold trit 0.

Quarter-strided rather than interleaved packing lets a kernel unpack a tile with one shift and
mask per quarter and multiply it with a contiguous slice of the activations, with no reshuffle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from biasmed.ternary.quant import ternarize


@dataclass(frozen=True)
class PackedTernary:
    """A packed ternary weight: ``W ≈ unpack(data) * scale``."""

    data: torch.Tensor  # uint8 [out_features, ceil(in_features / 4)]
    scale: torch.Tensor  # float32 scalar (dequantization factor, = max(mean|W|, 1e-5))
    in_features: int
    out_features: int

    @property
    def quarter(self) -> int:
        """``Kq``: the number of packed bytes per row."""
        return int(self.data.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (packed trits + the scale)."""
        return self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()

    def unpack(self) -> torch.Tensor:
        """The trits as int8 ``[out_features, in_features]`` (a full copy: tests and debugging)."""
        return unpack_ternary(self.data, self.in_features)

    def dequantize(self) -> torch.Tensor:
        """The fake-quantized float32 weight ``trits * scale``."""
        return self.unpack().float() * self.scale


def pack_ternary(trits: torch.Tensor) -> torch.Tensor:
    """Pack int trits ``[N, K]`` in {-1, 0, 1} into uint8 ``[N, ceil(K / 4)]``."""
    if trits.dim() != 2:
        raise ValueError(f"pack_ternary expects a 2-D weight, got shape {tuple(trits.shape)}")
    if trits.numel() and (trits.min() < -1 or trits.max() > 1):
        raise ValueError("pack_ternary expects values in {-1, 0, 1}")
    n, k = trits.shape
    kq = (k + 3) // 4
    codes = torch.ones(n, 4 * kq, dtype=torch.uint8, device=trits.device)  # padding: trit 0
    codes[:, :k] = (trits + 1).to(torch.uint8)
    codes = codes.view(n, 4, kq)
    return codes[:, 0] | (codes[:, 1] << 2) | (codes[:, 2] << 4) | (codes[:, 3] << 6)


def unpack_codes(data: torch.Tensor) -> torch.Tensor:
    """All codes (trit + 1, in {0, 1, 2}) as int8 ``[N, 4 * Kq]``, padding columns included.

    One broadcast shift and one in-place mask: uint8 ops that vectorise well on CPU.
    """
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=data.device).view(1, 4, 1)
    codes = data.unsqueeze(1) >> shifts
    codes &= 3
    return codes.view(data.shape[0], 4 * data.shape[1]).view(torch.int8)


def unpack_quarter(data: torch.Tensor, i: int) -> torch.Tensor:
    """Trits of quarter ``i`` (columns ``i*Kq .. i*Kq+Kq-1``) as int8 ``[N, Kq]``."""
    return ((data >> (2 * i)) & 3).view(torch.int8) - 1


def unpack_ternary(data: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: int8 ``[N, in_features]``."""
    trits = unpack_codes(data)[:, :in_features]
    return (trits - 1).contiguous()


def pack_weight(weight: torch.Tensor) -> PackedTernary:
    """Ternarize a latent weight (per-tensor absmean scale) and pack it."""
    trits, scale = ternarize(weight)
    return PackedTernary(
        data=pack_ternary(trits),
        scale=scale.reshape(()),
        in_features=int(weight.shape[1]),
        out_features=int(weight.shape[0]),
    )
