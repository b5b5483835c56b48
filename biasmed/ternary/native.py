"""The native CPU kernel: packed ternary weights x int8 activations, built on first use.

The C++ source (:mod:`biasmed.ternary._native_source`) holds an AVX-512 VNNI, an AVX2 and a
scalar variant in one library; ``bt_isa()`` picks one at run time from cpuid, so one build serves
any x86-64 CPU.  It is compiled once with the system C++ compiler (``$CXX``, default ``g++``)
into biasmed's cache folder (``$BIASMED_CACHE_DIR/kernels``, else ``~/.cache/biasmed/kernels``),
under a name that hashes the source, the flags and the compiler's version, and loaded with
ctypes.  Where that fails (no compiler, not x86-64, ``BIASMED_TERNARY_NATIVE=0``) :func:`load`
returns None after one warning line on stderr, and the callers use the PyTorch reference.

Weights must be in the ``"block256"`` layout (:mod:`biasmed.ternary.packing`); results are exact
(int32) and the float path reproduces :func:`biasmed.ternary.quant.quantize_activations` and
:func:`~biasmed.ternary.quant.dequantize_output` operation for operation, so it equals the
reference bit for bit.  ``BIASMED_TERNARY_ISA`` (``scalar``, ``avx2`` or ``avx512-vnni``, alias
``avx512``) forces an instruction set no higher than the CPU's, for tests and benchmarks of the
lower paths; an unknown name or one this CPU lacks is an :class:`~biasmed.errors.InputError`.
Calls run on the calling thread unless ``BIASMED_TERNARY_THREADS=N``
(N > 1) lets products of a few million multiply-adds or more split their output rows over N
threads.  One thread is the default because threads are started per call: measured on a shared
2-core machine under load, a thread start waited up to a scheduler timeslice (~4 ms), turning a
0.2 ms product into 4 ms; on an idle machine 2 threads speed up prefill and large batches.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from biasmed._paths import cache_root
from biasmed.errors import InputError, one_line
from biasmed.ternary._native_source import SOURCE
from biasmed.ternary.packing import PackedTernary

LAYOUT = "block256"
ISA_NAMES = ("scalar", "avx2", "avx512-vnni")
# -ffp-contract=off: no fused multiply-adds, so the float epilogue rounds exactly like torch's.
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-ffp-contract=off")
ENV_SWITCH = "BIASMED_TERNARY_NATIVE"  # "0" turns the native kernel off
ENV_THREADS = "BIASMED_TERNARY_THREADS"  # threads per large product (default 1, see above)
ENV_ISA = "BIASMED_TERNARY_ISA"  # force a lower instruction set (tests, benchmarks)
_ISA_ALIASES = {"avx512": "avx512-vnni"}

_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p


@dataclass(frozen=True)
class NativeKernel:
    """The loaded library and the instruction set it chose."""

    lib: ctypes.CDLL
    isa: int
    path: Path

    @property
    def isa_name(self) -> str:
        return ISA_NAMES[self.isa]

    def gemm_i8(self, x_q: torch.Tensor, w: PackedTernary) -> torch.Tensor:
        """Exact int32 ``x_q [M, K] @ trits^T`` (int8 ``x_q``, CPU, ``w`` in block256)."""
        _check(x_q, w, torch.int8)
        m = x_q.shape[0]
        out = torch.empty(m, w.out_features, dtype=torch.int32)
        rc = self.lib.bt_gemm_i8(
            self.isa, _threads(), x_q.data_ptr(), m, w.in_features, x_q.stride(0), w.data.data_ptr(), w.out_features,
            out.data_ptr(),
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("native ternary kernel: out of memory")
        return out

    def linear_f32(self, x: torch.Tensor, w: PackedTernary) -> torch.Tensor:
        """BitLinear on a normalised float32 ``x [M, K]``: quantize, multiply, dequantize, fused.

        ``w.scale`` is a scalar or one value per output row.  Returns float32 ``[M, N]``.
        """
        _check(x, w, torch.float32)
        m = x.shape[0]
        scale = w.scale.to(torch.float32).contiguous()
        out = torch.empty(m, w.out_features, dtype=torch.float32)
        rc = self.lib.bt_linear_f32(
            self.isa, _threads(), x.data_ptr(), m, w.in_features, x.stride(0), w.data.data_ptr(), w.out_features,
            scale.data_ptr(), int(scale.numel() > 1), out.data_ptr(), None,
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("native ternary kernel: out of memory")
        return out

    def bitlinear_f32(self, x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: PackedTernary) -> torch.Tensor:
        """RMSNorm (``norm_weight``, ``eps``) then :meth:`linear_f32`, in one call (float32 ``x [M, K]``).

        The sum of squares is accumulated in double, so the norm may differ from
        :func:`biasmed.ternary.quant.rms_norm` in the last bit.
        """
        _check(x, w, torch.float32)
        m = x.shape[0]
        scale = w.scale.to(torch.float32).contiguous()
        norm = norm_weight.to(torch.float32).contiguous()
        out = torch.empty(m, w.out_features, dtype=torch.float32)
        rc = self.lib.bt_bitlinear_f32(
            self.isa, _threads(), x.data_ptr(), m, w.in_features, x.stride(0), norm.data_ptr(), eps,
            w.data.data_ptr(), w.out_features, scale.data_ptr(), int(scale.numel() > 1), out.data_ptr(),
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("native ternary kernel: out of memory")
        return out

    def hgrn_scan_f32(
        self, i: torch.Tensor, f: torch.Tensor, h0: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """HGRN's ``h_t = f_t * h_{t-1} + i_t`` (fused multiply-add) over dim 1 of float32 ``[B, T, D]``: all ``h`` and the last.

        One rounding per step, like torch.addcmul on CPU in the PyTorch loop
        (:func:`biasmed.ternary.hgrn_bit.hgrn_recurrence`), so the same values bit for bit.
        """
        bsz, seq, dim = i.shape
        if f.shape != i.shape or i.dtype != torch.float32 or f.dtype != torch.float32:
            raise ValueError(
                f"expected two float32 [B, T, D] tensors, got {i.dtype} {tuple(i.shape)}, {f.dtype} {tuple(f.shape)}"
            )
        i, f = i.contiguous(), f.contiguous()
        h = torch.zeros(bsz, dim) if h0 is None else h0.to(torch.float32).reshape(bsz, dim).clone()
        out = torch.empty_like(i)
        self.lib.bt_hgrn_scan_f32(i.data_ptr(), f.data_ptr(), h.data_ptr(), out.data_ptr(), bsz, seq, dim)
        return out, h


def _threads() -> int:
    try:
        return max(1, int(os.environ.get(ENV_THREADS, "1")))
    except ValueError:
        return 1


def _check(x: torch.Tensor, w: PackedTernary, dtype: torch.dtype) -> None:
    if x.dtype != dtype or x.dim() != 2 or x.shape[1] != w.in_features or x.stride(1) != 1:
        raise ValueError(f"expected a row-major {dtype} [M, {w.in_features}] tensor, got {x.dtype} {tuple(x.shape)}")
    if x.device.type != "cpu" or w.data.device.type != "cpu":
        raise ValueError("the native ternary kernel runs on CPU tensors only")
    if w.layout != LAYOUT or not w.data.is_contiguous():
        raise ValueError(f"the native ternary kernel needs contiguous weights in the {LAYOUT!r} layout")


def compiler() -> str:
    """The C++ compiler: ``$CXX``, else ``g++``."""
    return os.environ.get("CXX") or "g++"


def kernel_dir() -> Path:
    return cache_root() / "kernels"


def _compiler_identity(cxx: str) -> str:
    proc = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout.splitlines()[0] if proc.stdout else cxx


def build(cxx: str | None = None, directory: Path | None = None, source: str = SOURCE) -> Path:
    """Compile the library unless a build of this source, flags and compiler is cached; its path.

    ``source`` is this version's C++ unless given (benchmarks build an older one to compare).

    Concurrent builders (parallel test workers, several processes) are safe: each compiles to a
    private temporary name and renames it into place atomically.
    """
    cxx = cxx or compiler()
    directory = directory or kernel_dir()
    key = hashlib.sha256("\0".join([source, *FLAGS, _compiler_identity(cxx), platform.machine()]).encode())
    lib = directory / f"ternary_cpu_{key.hexdigest()[:16]}.so"
    if lib.is_file():
        return lib
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as tmp:
        src = Path(tmp) / "ternary_cpu.cpp"
        src.write_text(source, encoding="utf-8")
        out = Path(tmp) / lib.name
        proc = subprocess.run([cxx, *FLAGS, str(src), "-o", str(out)], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[0]
            raise RuntimeError(f"{cxx} failed: {first}")
        os.replace(out, lib)
    return lib


def _open(path: Path) -> NativeKernel:
    lib = ctypes.CDLL(str(path))
    lib.bt_isa.restype = ctypes.c_int
    lib.bt_isa.argtypes = []
    lib.bt_gemm_i8.restype = ctypes.c_int
    lib.bt_gemm_i8.argtypes = [ctypes.c_int, ctypes.c_int, _ptr, _i64, _i64, _i64, _ptr, _i64, _ptr]
    lib.bt_linear_f32.restype = ctypes.c_int
    lib.bt_linear_f32.argtypes = [
        ctypes.c_int, ctypes.c_int, _ptr, _i64, _i64, _i64, _ptr, _i64, _ptr, ctypes.c_int, _ptr, _ptr,
    ]  # fmt: skip
    lib.bt_bitlinear_f32.restype = ctypes.c_int
    lib.bt_bitlinear_f32.argtypes = [
        ctypes.c_int, ctypes.c_int, _ptr, _i64, _i64, _i64, _ptr, ctypes.c_float, _ptr, _i64, _ptr, ctypes.c_int, _ptr,
    ]  # fmt: skip
    lib.bt_vnni_peak.restype = ctypes.c_int
    lib.bt_vnni_peak.argtypes = [_i64]
    lib.bt_maddubs_peak.restype = ctypes.c_int
    lib.bt_maddubs_peak.argtypes = [_i64]
    lib.bt_hgrn_scan_f32.restype = None
    lib.bt_hgrn_scan_f32.argtypes = [_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64]
    return NativeKernel(lib=lib, isa=int(lib.bt_isa()), path=path)


def forced_isa() -> int | None:
    """The instruction set ``$BIASMED_TERNARY_ISA`` asks for (an index into ISA_NAMES), None if unset."""
    value = os.environ.get(ENV_ISA, "").strip().lower()
    if not value:
        return None
    name = _ISA_ALIASES.get(value, value)
    if name not in ISA_NAMES:
        raise InputError(
            one_line(f"{ENV_ISA}={value!r}: unknown instruction set; choose one of {', '.join(ISA_NAMES)}")
        )
    return ISA_NAMES.index(name)


def _unavailable(reason: str) -> None:
    # One line, once per process (load() is cached): the run goes on with the reference kernel.
    sys.stderr.write(
        f"biasmed: warning: native ternary kernel unavailable ({reason}); using the slower PyTorch reference kernel\n"
    )


@functools.cache
def load() -> NativeKernel | None:
    """The native kernel, built and loaded once per process; None (after one warning) if impossible."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None  # asked for explicitly: no warning
    forced = forced_isa()  # a bad setting is the user's error, not a reason to fall back
    if platform.machine().lower() not in ("x86_64", "amd64"):
        _unavailable(f"it is written for x86-64, this is {platform.machine()}")
        return None
    try:
        kernel = _open(build())
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        text = str(exc).strip().splitlines()
        _unavailable(text[0] if text else type(exc).__name__)
        return None
    if forced is None:
        return kernel
    if forced > kernel.isa:  # it would die on an illegal instruction
        raise InputError(f"{ENV_ISA}={ISA_NAMES[forced]}: this CPU runs {kernel.isa_name} at most")
    return NativeKernel(lib=kernel.lib, isa=forced, path=kernel.path)


def available() -> bool:
    """Whether the native kernel can run here (builds it on the first call)."""
    return load() is not None
