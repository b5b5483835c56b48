"""2-bit packing of ternary weights: 4 trits per byte plus one float32 scale per tensor.

Two byte layouts, both ``Kq = ceil(K / 4)`` bytes per row and both decoding to the codes of
columns ``0 .. 4 * Kq - 1`` in natural order (padding columns last, trit 0):

``"quarter"`` (the PyTorch reference and the Triton kernel; what ``pack_weight`` returns):

* a ``[N, K]`` weight (``nn.Linear`` orientation: out x in) becomes ``data`` uint8 ``[N, Kq]``
  with ``Kq = ceil(K / 4)``;
* the columns are split in four *quarters* of ``Kq`` columns: bits ``2i..2i+1`` of byte
  ``data[n, j]`` hold the trit of column ``i * Kq + j`` (i = 0..3);
* a trit ``t`` in {-1, 0, 1} is stored as the code ``t + 1`` in {0, 1, 2}; code 3 never occurs;
  padding columns (``K <= k < 4 * Kq``) hold trit 0.

Quarter-strided rather than interleaved packing lets a kernel unpack a tile with one shift and
mask per quarter and multiply it with a contiguous slice of the activations, with no reshuffle.

``"block256"`` (the native CPU kernel, :mod:`biasmed.ternary.native`): the same idea per 64-byte
block, so that one SIMD load serves 256 columns: the row is cut into ``F = Kq // 64`` blocks of
64 bytes and a tail of ``T = Kq - 64 F`` bytes; bits ``2i..2i+1`` of byte ``j`` of block ``b``
hold column ``256 b + 64 i + j``, and of tail byte ``j`` column ``256 F + T i + j``.  A weight
whose rows are shorter than 256 columns has no block and is laid out exactly as ``"quarter"``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from biasmed.ternary.quant import ternarize


@dataclass(frozen=True)
class PackedTernary:
    """A packed ternary weight: ``W ≈ unpack(data) * scale``."""

    data: torch.Tensor  # uint8 [out_features, ceil(in_features / 4)]
    scale: torch.Tensor  # float32 scalar (dequantization factor, = max(mean|W|, 1e-5))
    in_features: int
    out_features: int
    layout: str = "quarter"  # byte order of ``data``: "quarter" or "block256" (module docstring)

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
        return unpack_ternary(self.data, self.in_features, self.layout)

    def dequantize(self) -> torch.Tensor:
        """The fake-quantized float32 weight ``trits * scale``."""
        return self.unpack().float() * self.scale


LAYOUTS = ("quarter", "block256")
_BLOCK_BYTES = 64  # block256: bytes per block (one 512-bit load), 256 columns


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown packed layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def _pack_quarters(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[N, 4 * G]`` -> ``[N, G]``: byte j holds columns ``i * G + j`` at bits 2i."""
    n, g = codes.shape[0], codes.shape[1] // 4
    c = codes.view(n, 4, g)
    return c[:, 0] | (c[:, 1] << 2) | (c[:, 2] << 4) | (c[:, 3] << 6)


def pack_codes(codes: torch.Tensor, layout: str = "quarter") -> torch.Tensor:
    """Pack uint8 codes ``[N, 4 * Kq]`` (natural column order, padding included) into ``[N, Kq]``."""
    _check_layout(layout)
    n, kq = codes.shape[0], codes.shape[1] // 4
    full = kq // _BLOCK_BYTES if layout == "block256" else 0
    if full == 0:
        return _pack_quarters(codes)
    head = codes[:, : 4 * _BLOCK_BYTES * full].reshape(n * full, 4 * _BLOCK_BYTES)
    out = torch.empty(n, kq, dtype=torch.uint8, device=codes.device)
    out[:, : _BLOCK_BYTES * full] = _pack_quarters(head).view(n, _BLOCK_BYTES * full)
    if kq > _BLOCK_BYTES * full:
        out[:, _BLOCK_BYTES * full :] = _pack_quarters(codes[:, 4 * _BLOCK_BYTES * full :].contiguous())
    return out


def pack_ternary(trits: torch.Tensor, layout: str = "quarter") -> torch.Tensor:
    """Pack int trits ``[N, K]`` in {-1, 0, 1} into uint8 ``[N, ceil(K / 4)]``."""
    if trits.dim() != 2:
        raise ValueError(f"pack_ternary expects a 2-D weight, got shape {tuple(trits.shape)}")
    if trits.numel() and (trits.min() < -1 or trits.max() > 1):
        raise ValueError("pack_ternary expects values in {-1, 0, 1}")
    n, k = trits.shape
    kq = (k + 3) // 4
    codes = torch.ones(n, 4 * kq, dtype=torch.uint8, device=trits.device)  # padding: trit 0
    codes[:, :k] = (trits + 1).to(torch.uint8)
    return pack_codes(codes, layout)


def _unpack_quarters(data: torch.Tensor) -> torch.Tensor:
    # One broadcast shift and one in-place mask: uint8 ops that vectorise well on CPU.
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=data.device).view(1, 4, 1)
    codes = data.unsqueeze(1) >> shifts
    codes &= 3
    return codes.view(data.shape[0], 4 * data.shape[1])


def unpack_codes(data: torch.Tensor, layout: str = "quarter") -> torch.Tensor:
    """All codes (trit + 1, in {0, 1, 2}) as int8 ``[N, 4 * Kq]`` in column order, padding included."""
    _check_layout(layout)
    n, kq = data.shape
    full = kq // _BLOCK_BYTES if layout == "block256" else 0
    if full == 0:
        return _unpack_quarters(data).view(torch.int8)
    out = torch.empty(n, 4 * kq, dtype=torch.uint8, device=data.device)
    head = data[:, : _BLOCK_BYTES * full].reshape(n * full, _BLOCK_BYTES)
    out[:, : 4 * _BLOCK_BYTES * full] = _unpack_quarters(head).view(n, 4 * _BLOCK_BYTES * full)
    if kq > _BLOCK_BYTES * full:
        out[:, 4 * _BLOCK_BYTES * full :] = _unpack_quarters(data[:, _BLOCK_BYTES * full :].contiguous())
    return out.view(torch.int8)


def repack(w: PackedTernary, layout: str, rows_per_step: int = 4096) -> PackedTernary:
    """The same weight in another byte layout (row blocks at a time: little extra memory)."""
    _check_layout(layout)
    if w.layout == layout:
        return w
    data = torch.empty_like(w.data)
    for n0 in range(0, w.data.shape[0], rows_per_step):
        block = w.data[n0 : n0 + rows_per_step]
        data[n0 : n0 + block.shape[0]] = pack_codes(unpack_codes(block, w.layout).view(torch.uint8), layout)
    return replace(w, data=data, layout=layout)


def unpack_quarter(data: torch.Tensor, i: int) -> torch.Tensor:
    """Trits of quarter ``i`` (columns ``i*Kq .. i*Kq+Kq-1``) of the "quarter" layout, int8 ``[N, Kq]``."""
    return ((data >> (2 * i)) & 3).view(torch.int8) - 1


def unpack_ternary(data: torch.Tensor, in_features: int, layout: str = "quarter") -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: int8 ``[N, in_features]``."""
    trits = unpack_codes(data, layout)[:, :in_features]
    return (trits - 1).contiguous()


def pack_weight(weight: torch.Tensor, layout: str = "quarter") -> PackedTernary:
    """Ternarize a latent weight (per-tensor absmean scale) and pack it."""
    trits, scale = ternarize(weight)
    return PackedTernary(
        data=pack_ternary(trits, layout),
        scale=scale.reshape(()),
        in_features=int(weight.shape[1]),
        out_features=int(weight.shape[0]),
        layout=layout,
    )
