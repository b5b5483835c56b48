"""Triton kernel: int8 activations x packed 2-bit ternary weights, int32 accumulation.

The kernel reads the packed bytes (layout in :mod:`biasmed.ternary.packing`) tile by tile and
unpacks each quarter in registers with one shift and mask, so no unpacked weight ever exists in
memory.  Per K-tile of ``BLOCK_KQ`` bytes it issues four ``tl.dot`` int8 x int8 -> int32
products, one per quarter, against the matching activation columns ``i * Kq + j``.
The epilogue multiplies by ``w_scale / x_scale[m]`` (or stores the raw int32 sums).
Small batches split K across programs (int32 atomics, exact) to fill the GPU.

``triton`` is imported lazily; on CPU the kernel runs under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

from biasmed.ternary.packing import PackedTernary


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and launch options for one call."""

    block_m: int
    block_n: int
    block_kq: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def ternary_mm_kernel(
        x_ptr,  # int8 [M, K]
        w_ptr,  # uint8 [N, KQ]
        xs_ptr,  # float32 [M]: activation scales (only read when DEQUANT)
        ws_ptr,  # float32 [1]: weight dequant factor (only read when DEQUANT)
        out_ptr,  # float32 or int32 [M, N]
        M,
        N,
        K,
        KQ,
        stride_xm,
        stride_wn,
        stride_om,
        DEQUANT: tl.constexpr,
        SPLIT_K: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_KQ: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        pid_k = tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_j = tl.arange(0, BLOCK_KQ)
        m_mask = offs_m < M
        n_mask = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for j0 in range(pid_k * BLOCK_KQ, KQ, BLOCK_KQ * SPLIT_K):
            j = j0 + offs_j
            j_mask = j < KQ
            # 0x55 = four codes 1 = four zero trits, so masked bytes add nothing.
            wb = tl.load(
                w_ptr + offs_n[None, :] * stride_wn + j[:, None],
                mask=j_mask[:, None] & n_mask[None, :],
                other=0x55,
            )
            for i in tl.static_range(4):
                k = i * KQ + j
                xk = tl.load(
                    x_ptr + offs_m[:, None] * stride_xm + k[None, :],
                    mask=m_mask[:, None] & (j_mask & (k < K))[None, :],
                    other=0,
                )
                wt = ((wb >> (2 * i)) & 3).to(tl.int8) - 1
                acc += tl.dot(xk, wt, out_dtype=tl.int32)
        out_offs = offs_m[:, None] * stride_om + offs_n[None, :]
        out_mask = m_mask[:, None] & n_mask[None, :]
        if SPLIT_K > 1:
            tl.atomic_add(out_ptr + out_offs, acc, mask=out_mask)
        elif DEQUANT:
            xs = tl.load(xs_ptr + offs_m, mask=m_mask, other=1.0)
            ws = tl.load(ws_ptr)
            y = acc.to(tl.float32) * (ws / xs)[:, None]
            tl.store(out_ptr + out_offs, y, mask=out_mask)
        else:
            tl.store(out_ptr + out_offs, acc, mask=out_mask)

    return ternary_mm_kernel


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 1


def choose_config(m: int, n: int, kq: int, device: torch.device) -> LaunchConfig:
    """Heuristic tiles: narrow N tiles and split-K for small batches (memory bound)."""
    if m <= 16:
        block_m, block_n, block_kq = 16, 32, 128
    elif m <= 64:
        block_m, block_n, block_kq = 64, 64, 64
    else:
        block_m, block_n, block_kq = 128, 128, 32
    tiles = math.ceil(m / block_m) * math.ceil(n / block_n)
    k_steps = math.ceil(kq / block_kq)
    split = 1
    target = 2 * _sm_count(device)
    if tiles < target:
        split = max(1, min(k_steps, target // max(1, tiles), 16))
    return LaunchConfig(block_m, block_n, block_kq, split)


def _launch(
    x_q: torch.Tensor,
    w: PackedTernary,
    x_scale: torch.Tensor | None,
    config: LaunchConfig | None,
) -> torch.Tensor:
    import triton

    if x_q.dtype != torch.int8 or x_q.dim() != 2 or x_q.shape[1] != w.in_features:
        raise ValueError(f"x_q must be int8 [M, {w.in_features}], got {x_q.dtype} {tuple(x_q.shape)}")
    x_q = x_q.contiguous()
    data = w.data.contiguous()
    m, k = x_q.shape
    n, kq = data.shape
    cfg = config or choose_config(m, n, kq, x_q.device)
    dequant = x_scale is not None and cfg.split_k == 1
    if cfg.split_k > 1 or x_scale is None:
        out = torch.zeros(m, n, dtype=torch.int32, device=x_q.device)
    else:
        out = torch.empty(m, n, dtype=torch.float32, device=x_q.device)
    xs = x_scale.reshape(-1).float().contiguous() if dequant and x_scale is not None else out  # dummy pointer otherwise
    ws = w.scale.reshape(1).float().to(x_q.device) if dequant else out
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), cfg.split_k)
    _kernel()[grid](
        x_q, data, xs, ws, out, m, n, k, kq,
        x_q.stride(0), data.stride(0), out.stride(0),
        DEQUANT=dequant, SPLIT_K=cfg.split_k,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_KQ=cfg.block_kq,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if x_scale is not None and not dequant:  # split-K: dequantize the exact int32 sums here
        return out.float() * (w.scale.float().to(out.device) / x_scale.reshape(-1, 1).float())
    return out


def ternary_matmul_triton(x_q: torch.Tensor, w: PackedTernary, config: LaunchConfig | None = None) -> torch.Tensor:
    """Exact int32 ``x_q [M, K] @ trits^T`` computed from the packed bytes."""
    return _launch(x_q, w, None, config)


def ternary_linear_triton(
    x_q: torch.Tensor, x_scale: torch.Tensor, w: PackedTernary, config: LaunchConfig | None = None
) -> torch.Tensor:
    """Dequantized float32 ``(x_q @ trits^T) * w.scale / x_scale`` (x_scale: ``[M]`` or ``[M, 1]``)."""
    return _launch(x_q, w, x_scale, config)


_SIGNATURE = {
    "x_ptr": "*i8", "w_ptr": "*u8", "xs_ptr": "*fp32", "ws_ptr": "*fp32", "out_ptr": "*fp32",
    "M": "i32", "N": "i32", "K": "i32", "KQ": "i32", "stride_xm": "i32", "stride_wn": "i32", "stride_om": "i32",
    "DEQUANT": "constexpr", "SPLIT_K": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
    "BLOCK_KQ": "constexpr",
}  # fmt: skip


def compile_ahead(config: LaunchConfig, dequant: bool = True, arch: int = 90) -> dict[str, Any]:
    """Compile the kernel for NVIDIA ``sm_<arch>`` without a GPU; returns the assembly by stage.

    Proves the kernel lowers to real tensor-core code (``ptx``, ``cubin``) where no GPU is at
    hand; it works even while the kernel runs interpreted (``TRITON_INTERPRET=1``).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    signature = dict(_SIGNATURE)
    if not dequant or config.split_k > 1:
        signature["out_ptr"] = "*i32"
    constexprs = {
        "DEQUANT": dequant and config.split_k == 1,
        "SPLIT_K": config.split_k,
        "BLOCK_M": config.block_m,
        "BLOCK_N": config.block_n,
        "BLOCK_KQ": config.block_kq,
    }
    source = ASTSource(fn=JITFunction(_kernel().fn), signature=signature, constexprs=constexprs)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    return dict(triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options).asm)
