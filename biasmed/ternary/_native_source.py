"""C++ source of the native CPU kernel (:mod:`biasmed.ternary.native` compiles it on first use).

Kept in a Python module so that it ships with the package whatever the install method.
"""

SOURCE = r"""// Packed ternary weights x int8 activations on x86-64 CPUs, exact int32 accumulation.
//
// Weight layout ("block256", see biasmed/ternary/packing.py): each row of K columns takes
// Kq = ceil(K/4) bytes. The first F = floor(Kq/64) 64-byte blocks hold 256 columns each:
// bits 2i..2i+1 of byte j of block b hold the code (trit + 1) of column 256b + 64i + j. The
// remaining T = Kq - 64F bytes hold the tail the same way with stride T instead of 64.
// So one 64-byte load and four shift+mask steps give the codes of four contiguous runs of 64
// columns, ready for byte dot products against contiguous activations, with no shuffles.
//
// Codes are unsigned (0..2), activations signed: x . trits = x . codes - sum(x), which is the
// shape the u8 x s8 instructions want (VNNI vpdpbusd, AVX2 vpmaddubsw + vpmaddwd).
// Every ISA variant is compiled into this one library with target attributes; bt_isa() picks
// one at run time from cpuid, so the same build works on any x86-64 CPU.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <thread>
#include <vector>

typedef int64_t i64;

#define T512 __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define T256 __attribute__((target("avx2")))

enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512VNNI = 2 };
enum { NR = 4 };  // weight rows per strip

extern "C" int bt_isa(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vnni"))
        return ISA_AVX512VNNI;
    if (__builtin_cpu_supports("avx2")) return ISA_AVX2;
    return ISA_SCALAR;
}

struct Shape {
    i64 kq;    // bytes per weight row
    i64 full;  // 64-byte blocks per row
    i64 tail;  // tail bytes per row
    i64 kpad;  // padded columns: 256 * full + 4 * tail
};

static Shape shape_of(i64 k) {
    Shape s;
    s.kq = (k + 3) / 4;
    s.full = s.kq / 64;  // from the byte count alone, so the Python side agrees without K
    s.tail = s.kq - 64 * s.full;
    s.kpad = 256 * s.full + 4 * s.tail;
    return s;
}

// Codes of one row in natural column order (padded to kpad).
static inline void decode_row(const uint8_t* row, const Shape& s, uint8_t* codes) {
    for (i64 b = 0; b < s.full; ++b)
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 64; ++j) codes[256 * b + 64 * i + j] = (row[64 * b + j] >> (2 * i)) & 3;
    const uint8_t* t = row + 64 * s.full;
    uint8_t* c = codes + 256 * s.full;
    for (int i = 0; i < 4; ++i)
        for (i64 j = 0; j < s.tail; ++j) c[s.tail * i + j] = (t[j] >> (2 * i)) & 3;
}

// Scalar dot of codes and activations over columns [from, to).
static inline int32_t dot_scalar(const uint8_t* c, const int8_t* x, i64 from, i64 to) {
    int32_t acc = 0;
    for (i64 k = from; k < to; ++k) acc += (int32_t)c[k] * (int32_t)x[k];
    return acc;
}

// ------------------------------------------------------------------------------ scalar
static void gemm_scalar(const int8_t* x, i64 m, const int32_t* xsum, const uint8_t* w, i64 n0, i64 n1,
                        const Shape& s, int32_t* out, i64 ldo, uint8_t* codes) {
    for (i64 n = n0; n < n1; ++n) {
        decode_row(w + n * s.kq, s, codes);
        for (i64 r = 0; r < m; ++r) out[r * ldo + n] = dot_scalar(codes, x + r * s.kpad, 0, s.kpad) - xsum[r];
    }
}

// ------------------------------------------------------------------------------ AVX2
// Register-blocked like the AVX-512 path below: MR activation rows x NR weight rows. Each
// 32-byte half of a 64-byte weight block is decoded once in registers (shift + mask: 4 vectors
// of 32 codes) and every code vector is applied to all MR activation rows with vpmaddubsw
// (codes u8 x activations s8, the activation load folded into the instruction). The int16
// products are summed with vpaddw and widened to int32 (vpmaddwd by 1) only every kFlush256
// blocks: 2 instructions per 32 multiply-adds instead of 3 (vpmaddubsw + vpmaddwd + vpaddd).
//
// Why no int16 lane can saturate or wrap, whatever the bytes: a 2-bit code is at most 3 and
// |x| <= 128, so one vpmaddubsw lane (a sum of two products) is at most 2 * 3 * 128 = 768 in
// magnitude, and a lane sums 8 of them per block (2 halves x 4 codes per byte) over at most
// kFlush256 blocks: 8 * 4 * 768 = 24576 < 32767. (Real codes are at most 2: 16384.)
static const int kFlush256 = 4;
static_assert(2 * 3 * 128 * 8 * kFlush256 <= 32767, "the int16 partial sums must not saturate");

T256 static inline int32_t hsum256(__m256i v) {
    __m128i a = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 0x4E));
    a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 0xB1));
    return _mm_cvtsi128_si32(a);
}

// Lane j of the result = the sum of the 8 lanes of v[j].
T256 static inline __m256i reduce8(const __m256i* v) {
    const __m256i t0 = _mm256_hadd_epi32(v[0], v[1]), t1 = _mm256_hadd_epi32(v[2], v[3]);
    const __m256i t2 = _mm256_hadd_epi32(v[4], v[5]), t3 = _mm256_hadd_epi32(v[6], v[7]);
    const __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

// One 64-byte block of NR weight rows (bytes at rows[r] + off) against MR activation rows at
// column `col`, the four codes of a byte `stride` columns apart (64 in full blocks, the tail
// length in the tail); `halves` is 1 when the second 32 bytes are all padding.
template <int MR, int NR>
T256 static inline void block_256(__m256i* acc, const uint8_t* const* rows, i64 off, const int8_t* x, i64 ldx,
                                  i64 col, i64 stride, int halves) {
    const __m256i m3 = _mm256_set1_epi8(3);
#pragma GCC unroll 2
    for (int h = 0; h < halves; ++h)
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
#pragma GCC unroll 8
            for (int r = 0; r < NR; ++r) {
                // Reloaded for each i (an L1 hit) rather than kept: the registers hold accumulators.
                const __m256i v = _mm256_loadu_si256((const __m256i*)(rows[r] + off + 32 * h));
                const __m256i c = _mm256_and_si256(i ? _mm256_srli_epi16(v, 2 * i) : v, m3);
#pragma GCC unroll 8
                for (int a = 0; a < MR; ++a) {
                    const __m256i xa = _mm256_loadu_si256((const __m256i*)(x + a * ldx + col + stride * i + 32 * h));
                    acc[a * NR + r] = _mm256_add_epi16(acc[a * NR + r], _mm256_maddubs_epi16(c, xa));
                }
            }
            // Keeps g++ from reassociating the int16 sums into trees of products computed ahead,
            // which spilled most of them to the stack (measured: 80 instead of ~150 GMAC/s).
#pragma GCC unroll 16
            for (int j = 0; j < MR * NR; ++j) __asm__("" : "+x"(acc[j]));
        }
}

// out[a, n + r] for a < MR, r < nr (<= NR): x rows (stride s.kpad), weight rows n.. . `ahead`:
// this call is the first to read these weight rows, so it prefetches the same blocks of the next
// NR rows (weights not in cache stream from DRAM; measured, batch 1 forced to AVX2 on Zen 4:
// 2560->13824 1.54 -> 1.12 ms, 2048->32000 3.29 -> 2.33 ms; two strips ahead was no better).
template <int MR, int NR>
T256 static void micro_256(const int8_t* x, const int32_t* xsum, const uint8_t* w, i64 n, int nr, const Shape& s,
                           int32_t* out, i64 ldo, bool ahead) {
    static_assert(MR * NR <= 12, "12 int16 accumulators at most: 16 ymm registers");
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[MR * NR], wide[16];
    for (int j = 0; j < 16; ++j) wide[j] = _mm256_setzero_si256();
    const uint8_t* rows[NR];
    for (int r = 0; r < NR; ++r) rows[r] = w + (n + (r < nr ? r : nr - 1)) * s.kq;  // extra rows: discarded
    const i64 ldx = s.kpad;
    for (i64 b0 = 0; b0 < s.full; b0 += kFlush256) {
        for (int j = 0; j < MR * NR; ++j) acc[j] = _mm256_setzero_si256();
        const i64 b1 = std::min<i64>(s.full, b0 + kFlush256);
        for (i64 b = b0; b < b1; ++b) {
            if (ahead)
                for (int r = 0; r < NR; ++r) _mm_prefetch((const char*)(rows[r] + NR * s.kq + 64 * b), _MM_HINT_T0);
            block_256<MR, NR>(acc, rows, 64 * b, x, ldx, 256 * b, 64, 2);
        }
        for (int j = 0; j < MR * NR; ++j) wide[j] = _mm256_add_epi32(wide[j], _mm256_madd_epi16(acc[j], ones));
    }
    if (s.tail) {
        // The tail bytes in zero-padded copies: the zero codes cancel whatever activation bytes
        // the full-width loads read past the tail (the activation buffer has 64 bytes of slack).
        alignas(32) uint8_t tail[NR][64];
        const uint8_t* trows[NR];
        for (int r = 0; r < NR; ++r) {
            memset(tail[r], 0, 64);
            memcpy(tail[r], rows[r] + 64 * s.full, s.tail);
            trows[r] = tail[r];
        }
        for (int j = 0; j < MR * NR; ++j) acc[j] = _mm256_setzero_si256();
        block_256<MR, NR>(acc, trows, 0, x, ldx, 256 * s.full, s.tail, s.tail > 32 ? 2 : 1);
        for (int j = 0; j < MR * NR; ++j) wide[j] = _mm256_add_epi32(wide[j], _mm256_madd_epi16(acc[j], ones));
    }
    alignas(32) int32_t sums[16];
    _mm256_store_si256((__m256i*)sums, reduce8(wide));
    if constexpr (MR * NR > 8) _mm256_store_si256((__m256i*)(sums + 8), reduce8(wide + 8));
    for (int a = 0; a < MR; ++a)
        for (int r = 0; r < nr; ++r) out[a * ldo + n + r] = sums[a * NR + r] - xsum[a];
}

template <int MR, int NR>
T256 static void cols_256(const int8_t* x, const int32_t* xsum, const uint8_t* w, i64 n0, i64 n1, const Shape& s,
                          int32_t* out, i64 ldo, bool ahead) {
    for (i64 n = n0; n < n1; n += NR)
        micro_256<MR, NR>(x, xsum, w, n, (int)std::min<i64>(NR, n1 - n), s, out, ldo, ahead);
}

// Blocks of 4 activation rows x 3 weight rows (12 int16 accumulators, a code vector and the
// mask fill 14 of the 16 ymm registers), weight rows outer within chunks of 64 activation rows
// as in gemm_512; the 1-3 rows left over take 1 x 8, 2 x 6 or 3 x 4. (Measured on Zen 4 forced
// to AVX2: 6 x 2, 5 x 2 and 3 x 4 blocks within noise of 4 x 3 in quick runs; interleaved in one
// process, 16-row chunks sized to L1 were 0-13% slower at batch 64, 1 x 4 at batch 1 within
// noise of 1 x 8.)
T256 static void gemm_avx2(const int8_t* x, i64 m, const int32_t* xsum, const uint8_t* w, i64 n0, i64 n1,
                           const Shape& s, int32_t* out, i64 ldo, uint8_t* /*codes*/) {
    const i64 chunk = 64;
    constexpr int MB = 4, NB = 3;
    for (i64 c0 = 0; c0 < m; c0 += chunk) {
        const i64 c1 = std::min(m, c0 + chunk);
        const i64 full = c1 - (c1 - c0) % MB;
        if (full > c0)
            for (i64 n = n0; n < n1; n += NB) {
                const int nr = (int)std::min<i64>(NB, n1 - n);
                for (i64 r0 = c0; r0 < full; r0 += MB)
                    micro_256<MB, NB>(x + r0 * s.kpad, xsum + r0, w, n, nr, s, out + r0 * ldo, ldo, r0 == c0);
            }
        const i64 left = c1 - full;
        const int8_t* xl = x + full * s.kpad;
        int32_t* ol = out + full * ldo;
        const bool ahead = full == c0;  // no 4-row block has read the weights of this chunk yet
        if (left == 1) cols_256<1, 8>(xl, xsum + full, w, n0, n1, s, ol, ldo, ahead);
        else if (left == 2) cols_256<2, 6>(xl, xsum + full, w, n0, n1, s, ol, ldo, ahead);
        else if (left == 3) cols_256<3, 4>(xl, xsum + full, w, n0, n1, s, ol, ldo, ahead);
    }
}

// ------------------------------------------------------------------------------ AVX-512 VNNI
// One register-blocked micro-kernel for every batch size: MR activation rows x NR weight rows,
// MR * NR <= 16 int32 accumulators. Each 64-byte weight block is loaded and decoded once into
// registers (shift + mask) and applied to all MR activation rows with vpdpbusd, so the decode
// costs 1/MR of the products. The accumulators are reduced together at the end (reduce16:
// ~45 instructions for 16 sums instead of ~8 per sum), and the byte tail of a row (K not a
// multiple of 256) goes through the same loop with masked weight loads, whose zero codes cancel
// whatever activation bytes the unmasked activation loads read.
T512 static inline __m512i dot512(__m512i acc, __m512i c, __m512i x) { return _mm512_dpbusd_epi32(acc, c, x); }

// Lane j of the result = the sum of the 16 lanes of v[j].
T512 static inline __m512i reduce16(const __m512i* v) {
    __m512i t[8], u[4], w[2];
    for (int p = 0; p < 8; ++p)
        t[p] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * p], v[2 * p + 1]),
                                _mm512_unpackhi_epi32(v[2 * p], v[2 * p + 1]));
    for (int q = 0; q < 4; ++q)
        u[q] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * q], t[2 * q + 1]),
                                _mm512_unpackhi_epi64(t[2 * q], t[2 * q + 1]));
    for (int r = 0; r < 2; ++r)
        w[r] = _mm512_add_epi32(_mm512_shuffle_i32x4(u[2 * r], u[2 * r + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_i32x4(u[2 * r], u[2 * r + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// One 64-byte block of NR weight rows (v) against MR activation rows at column `col`, the four
// codes of a byte `stride` columns apart (64 in full blocks, the tail length in the tail).
template <int MR, int NR>
T512 static inline void block_512(__m512i* acc, const __m512i* v, const int8_t* x, i64 ldx, i64 col, i64 stride) {
    const __m512i m3 = _mm512_set1_epi8(3);
    if constexpr (MR <= 2) {
        // Few activation rows: keep their 4 x MR vectors in registers, decode row by row.
        __m512i xv[MR][4];
        for (int a = 0; a < MR; ++a)
            for (int i = 0; i < 4; ++i) xv[a][i] = _mm512_loadu_si512(x + a * ldx + col + stride * i);
        for (int r = 0; r < NR; ++r)
            for (int i = 0; i < 4; ++i) {
                __m512i c = _mm512_and_si512(i ? _mm512_srli_epi16(v[r], 2 * i) : v[r], m3);
                for (int a = 0; a < MR; ++a) acc[a * NR + r] = dot512(acc[a * NR + r], c, xv[a][i]);
            }
    } else {
        for (int i = 0; i < 4; ++i) {
            __m512i c[NR];
            for (int r = 0; r < NR; ++r) c[r] = _mm512_and_si512(i ? _mm512_srli_epi16(v[r], 2 * i) : v[r], m3);
            for (int a = 0; a < MR; ++a) {
                __m512i xa = _mm512_loadu_si512(x + a * ldx + col + stride * i);
                for (int r = 0; r < NR; ++r) acc[a * NR + r] = dot512(acc[a * NR + r], c[r], xa);
            }
        }
    }
}

// out[a, n + r] for a < MR, r < nr (<= NR): x rows r0.. (stride s.kpad), weight rows n.. .
template <int MR, int NR>
T512 static void micro_512(const int8_t* x, const int32_t* xsum, const uint8_t* w, i64 n, int nr, const Shape& s,
                           int32_t* out, i64 ldo) {
    static_assert(MR * NR <= 16, "16 accumulators at most");
    __m512i acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_si512();
    const uint8_t* rows[NR];
    for (int r = 0; r < NR; ++r) rows[r] = w + (n + (r < nr ? r : nr - 1)) * s.kq;  // extra rows: discarded
    const i64 ldx = s.kpad;
    for (i64 b = 0; b < s.full; ++b) {
        __m512i v[NR];
        for (int r = 0; r < NR; ++r) v[r] = _mm512_loadu_si512(rows[r] + 64 * b);
        block_512<MR, NR>(acc, v, x, ldx, 256 * b, 64);
    }
    if (s.tail) {
        const __mmask64 mask = ~0ULL >> (64 - s.tail);
        __m512i v[NR];
        for (int r = 0; r < NR; ++r) v[r] = _mm512_maskz_loadu_epi8(mask, rows[r] + 64 * s.full);
        block_512<MR, NR>(acc, v, x, ldx, 256 * s.full, s.tail);
    }
    alignas(64) int32_t sums[16];
    _mm512_store_si512(sums, reduce16(acc));
    for (int a = 0; a < MR; ++a)
        for (int r = 0; r < nr; ++r) out[a * ldo + n + r] = sums[a * NR + r] - xsum[a];
}

// Rows [r0, r0 + mr) x weight rows [n0, n1) with the MR x NR shape that fits mr (< 4) best.
template <int MR, int NR>
T512 static void cols_512(const int8_t* x, const int32_t* xsum, const uint8_t* w, i64 n0, i64 n1, const Shape& s,
                          int32_t* out, i64 ldo) {
    for (i64 n = n0; n < n1; n += NR)
        micro_512<MR, NR>(x, xsum, w, n, (int)std::min<i64>(NR, n1 - n), s, out, ldo);
}

T512 static void rows_512(int mr, const int8_t* x, const int32_t* xsum, const uint8_t* w, i64 n0, i64 n1,
                          const Shape& s, int32_t* out, i64 ldo) {
    switch (mr) {
        case 1: return cols_512<1, 8>(x, xsum, w, n0, n1, s, out, ldo);
        case 2: return cols_512<2, 8>(x, xsum, w, n0, n1, s, out, ldo);
        default: return cols_512<3, 4>(x, xsum, w, n0, n1, s, out, ldo);
    }
}

// (m = 1 takes 8 weight rows at a time: with 16 the weights streamed from DRAM at half the rate
// when they were not in cache, e.g. the 8 MB lm_head of a decode step.)
// Blocks of 4 activation rows x 4 weight rows (measured on Zen 4: 4 x 4 needs one activation
// load per 4 vpdpbusd and reached 140-190 GMAC/s; 8 x 2 decodes less but loads twice as often
// and stayed at 100-130). Weight rows are the outer loop within a chunk of activation rows, so
// a strip of 4 weight rows stays in L1 while every 4-row block of the chunk passes over it;
// chunks bound the activation working set (64 rows of K = 2816 bytes: ~180 KB, in L2). The
// 1-3 rows left over use the shapes above.
T512 static void gemm_512(const int8_t* x, i64 m, const int32_t* xsum, const uint8_t* w, i64 n0, i64 n1,
                          const Shape& s, int32_t* out, i64 ldo, uint8_t* /*codes*/) {
    const i64 chunk = 64;
    for (i64 c0 = 0; c0 < m; c0 += chunk) {
        const i64 c1 = std::min(m, c0 + chunk);
        const i64 full = c1 - (c1 - c0) % 4;
        if (full > c0)
            for (i64 n = n0; n < n1; n += 4) {
                const int nr = (int)std::min<i64>(4, n1 - n);
                for (i64 r0 = c0; r0 < full; r0 += 4)
                    micro_512<4, 4>(x + r0 * s.kpad, xsum + r0, w, n, nr, s, out + r0 * ldo, ldo);
            }
        if (c1 > full)
            rows_512((int)(c1 - full), x + full * s.kpad, xsum + full, w, n0, n1, s, out + full * ldo, ldo);
    }
}

// ------------------------------------------------------------------------------ driver
static void gemm_range(int isa, const int8_t* x, i64 m, const int32_t* xsum, const uint8_t* w, i64 n, i64 n0,
                       i64 n1, const Shape& s, int32_t* out) {
    uint8_t* codes = isa == ISA_SCALAR ? (uint8_t*)malloc(NR * s.kpad + 64) : nullptr;
    if (isa == ISA_AVX512VNNI) gemm_512(x, m, xsum, w, n0, n1, s, out, n, codes);
    else if (isa == ISA_AVX2) gemm_avx2(x, m, xsum, w, n0, n1, s, out, n, codes);
    else gemm_scalar(x, m, xsum, w, n0, n1, s, out, n, codes);
    free(codes);
}

// Output rows split across `threads` threads (the caller's included). Threads are started per
// call, which costs tens of microseconds, so only products of a few million MACs are split;
// the small GEMVs of a decode step stay on the calling thread.
static const double kMinSplitMacs = 4e6;

static void gemm(int isa, const int8_t* x, i64 m, const int32_t* xsum, const uint8_t* w, i64 n, const Shape& s,
                 int32_t* out, int threads) {
    if (threads <= 1 || (double)m * (double)n * (double)s.kpad < kMinSplitMacs || n < 8 * (i64)threads) {
        gemm_range(isa, x, m, xsum, w, n, 0, n, s, out);
        return;
    }
    const i64 chunk = ((n + threads - 1) / threads + NR - 1) / NR * NR;  // whole strips per thread
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) {
        const i64 a = t * chunk, b = std::min(n, a + chunk);
        if (a < b) pool.emplace_back(gemm_range, isa, x, m, xsum, w, n, a, b, std::cref(s), out);
    }
    gemm_range(isa, x, m, xsum, w, n, 0, std::min(n, chunk), s, out);
    for (auto& th : pool) th.join();
}

// Activations copied into zero-padded rows of kpad columns, with their sums.
static void pad_rows(const int8_t* xq, i64 m, i64 k, i64 ldx, const Shape& s, int8_t* xp, int32_t* xsum) {
    for (i64 r = 0; r < m; ++r) {
        int32_t sum = 0;
        for (i64 c = 0; c < k; ++c) sum += xq[r * ldx + c];
        memcpy(xp + r * s.kpad, xq + r * ldx, k);
        memset(xp + r * s.kpad + k, 0, s.kpad - k);
        xsum[r] = sum;
    }
}

// out[m, n] = xq[m, :] . trits[n, :] (int32, exact).
extern "C" int bt_gemm_i8(int isa, int threads, const int8_t* xq, i64 m, i64 k, i64 ldx, const uint8_t* w,
                          i64 n, int32_t* out) {
    Shape s = shape_of(k);
    int8_t* xp = (int8_t*)malloc(m * s.kpad + 64);
    int32_t* xsum = (int32_t*)malloc(sizeof(int32_t) * m);
    if (!xp || !xsum) return -1;
    pad_rows(xq, m, k, ldx, s, xp, xsum);
    gemm(isa, xp, m, xsum, w, n, s, out, threads);
    free(xp);
    free(xsum);
    return 0;
}

// Per-token int8 quantization exactly as biasmed.ternary.quant.quantize_activations (the same
// float32 operations in the same order, so the same levels): scale = 127 / max(max|x|, 1e-5),
// q = clamp(round_half_even(x * scale), -128, 127). Inlined into each ISA's wrapper below so the
// compiler vectorises it for that ISA.
static inline void quantize_rows(const float* x, i64 m, i64 k, i64 ldx, const Shape& s, int8_t* xp,
                                 int32_t* xsum, float* xs) {
    for (i64 r = 0; r < m; ++r) {
        const float* xr = x + r * ldx;
        float amax = 0.0f;
        for (i64 c = 0; c < k; ++c) amax = fmaxf(amax, fabsf(xr[c]));
        // torch evaluates 127 / t as reciprocal(t) * 127: the same two roundings here.
        const float scale = (1.0f / fmaxf(amax, 1e-5f)) * 127.0f;
        int8_t* q = xp + r * s.kpad;
        int32_t sum = 0;
        for (i64 c = 0; c < k; ++c) {
            float v = nearbyintf(xr[c] * scale);  // default rounding mode: half to even, like torch.round
            v = fminf(fmaxf(v, -128.0f), 127.0f);
            q[c] = (int8_t)(int32_t)v;
            sum += q[c];
        }
        memset(q + k, 0, s.kpad - k);
        xsum[r] = sum;
        xs[r] = scale;
    }
}

// The BitLinear epilogue: float(acc) * (w_scale / x_scale), as dequantize_output computes it.
static inline void dequantize(const int32_t* acc, i64 m, i64 n, const float* ws, int per_row, const float* xs,
                              float* out) {
    for (i64 r = 0; r < m; ++r)
        for (i64 c = 0; c < n; ++c) out[r * n + c] = (float)acc[r * n + c] * ((per_row ? ws[c] : ws[0]) / xs[r]);
}

// The same float32 operations as quantize_rows, 16 lanes at a time (round half to even with
// vrndscaleps; the clamp and the int8 conversion are exact on integral values).
T512 static void quantize_512(const float* x, i64 m, i64 k, i64 ldx, const Shape& s, int8_t* xp, int32_t* xsum,
                              float* xs) {
    for (i64 r = 0; r < m; ++r) {
        const float* xr = x + r * ldx;
        __m512 mx = _mm512_setzero_ps();
        i64 c = 0;
        for (; c + 16 <= k; c += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(xr + c)));
        float amax = _mm512_reduce_max_ps(mx);
        for (; c < k; ++c) amax = fmaxf(amax, fabsf(xr[c]));
        const float scale = (1.0f / fmaxf(amax, 1e-5f)) * 127.0f;
        const __m512 vs = _mm512_set1_ps(scale), lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
        int8_t* q = xp + r * s.kpad;
        __m512i vsum = _mm512_setzero_si512();
        for (c = 0; c + 16 <= k; c += 16) {
            __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(xr + c), vs),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m512i iv = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(v, lo), hi));
            vsum = _mm512_add_epi32(vsum, iv);
            _mm_storeu_si128((__m128i*)(q + c), _mm512_cvtepi32_epi8(iv));
        }
        int32_t sum = _mm512_reduce_add_epi32(vsum);
        for (; c < k; ++c) {
            float v = fminf(fmaxf(nearbyintf(xr[c] * scale), -128.0f), 127.0f);
            q[c] = (int8_t)(int32_t)v;
            sum += q[c];
        }
        memset(q + k, 0, s.kpad - k);
        xsum[r] = sum;
        xs[r] = scale;
    }
}
// quantize_512 with 8 lanes: the int32 levels (already in [-128, 127], so the saturating packs
// are exact) are packed to bytes per 128-bit lane and put back in order by one permute.
T256 static void quantize_avx2(const float* x, i64 m, i64 k, i64 ldx, const Shape& s, int8_t* xp, int32_t* xsum,
                               float* xs) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (i64 r = 0; r < m; ++r) {
        const float* xr = x + r * ldx;
        __m256 mx = _mm256_setzero_ps();
        i64 c = 0;
        for (; c + 8 <= k; c += 8) mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(xr + c), absmask));
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, mx);
        float amax = 0.0f;
        for (int j = 0; j < 8; ++j) amax = fmaxf(amax, lanes[j]);
        for (; c < k; ++c) amax = fmaxf(amax, fabsf(xr[c]));
        const float scale = (1.0f / fmaxf(amax, 1e-5f)) * 127.0f;
        const __m256 vs = _mm256_set1_ps(scale), lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
        int8_t* q = xp + r * s.kpad;
        __m256i vsum = _mm256_setzero_si256();
        for (c = 0; c + 32 <= k; c += 32) {
            __m256i iv[4];
            for (int j = 0; j < 4; ++j) {
                __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + c + 8 * j), vs),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                iv[j] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
                vsum = _mm256_add_epi32(vsum, iv[j]);
            }
            const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(iv[0], iv[1]), _mm256_packs_epi32(iv[2], iv[3]));
            _mm256_storeu_si256((__m256i*)(q + c), _mm256_permutevar8x32_epi32(b, order));
        }
        int32_t sum = hsum256(vsum);
        for (; c < k; ++c) {
            float v = fminf(fmaxf(nearbyintf(xr[c] * scale), -128.0f), 127.0f);
            q[c] = (int8_t)(int32_t)v;
            sum += q[c];
        }
        memset(q + k, 0, s.kpad - k);
        xsum[r] = sum;
        xs[r] = scale;
    }
}
T512 static void dequantize_512(const int32_t* acc, i64 m, i64 n, const float* ws, int per_row, const float* xs,
                                float* out) {
    for (i64 r = 0; r < m; ++r) {
        const int32_t* a = acc + r * n;
        float* o = out + r * n;
        i64 c = 0;
        if (per_row) {
            const __m512 vx = _mm512_set1_ps(xs[r]);
            for (; c + 16 <= n; c += 16)
                _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(a + c)),
                                                      _mm512_div_ps(_mm512_loadu_ps(ws + c), vx)));
            for (; c < n; ++c) o[c] = (float)a[c] * (ws[c] / xs[r]);
        } else {
            const float f = ws[0] / xs[r];
            const __m512 vf = _mm512_set1_ps(f);
            for (; c + 16 <= n; c += 16)
                _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(a + c)), vf));
            for (; c < n; ++c) o[c] = (float)a[c] * f;
        }
    }
}
T256 static void dequantize_avx2(const int32_t* acc, i64 m, i64 n, const float* ws, int per_row, const float* xs,
                                 float* out) {
    for (i64 r = 0; r < m; ++r) {
        const int32_t* a = acc + r * n;
        float* o = out + r * n;
        i64 c = 0;
        if (per_row) {
            const __m256 vx = _mm256_set1_ps(xs[r]);
            for (; c + 8 <= n; c += 8)
                _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i*)(a + c))),
                                                      _mm256_div_ps(_mm256_loadu_ps(ws + c), vx)));
            for (; c < n; ++c) o[c] = (float)a[c] * (ws[c] / xs[r]);
        } else {
            const float f = ws[0] / xs[r];
            const __m256 vf = _mm256_set1_ps(f);
            for (; c + 8 <= n; c += 8)
                _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i*)(a + c))), vf));
            for (; c < n; ++c) o[c] = (float)a[c] * f;
        }
    }
}

// RMSNorm of each row in place of x (into y): y = (x * rsqrt(mean(x^2) + eps)) * weight, the
// operations of biasmed.ternary.quant.rms_norm; the sum of squares is accumulated in double,
// so it can differ from torch's float32 reduction in the last bit of the mean.
static inline void rms_rows(const float* x, i64 m, i64 k, i64 ldx, const float* weight, float eps, float* y) {
    for (i64 r = 0; r < m; ++r) {
        const float* xr = x + r * ldx;
        double ss = 0.0;
        for (i64 c = 0; c < k; ++c) ss += (double)xr[c] * (double)xr[c];
        const float inv = 1.0f / sqrtf((float)(ss / (double)k) + eps);
        float* yr = y + r * k;
        for (i64 c = 0; c < k; ++c) yr[c] = (xr[c] * inv) * weight[c];
    }
}
// The sum of squares in double over 8 lanes (rounded to float it matches the serial double sum
// except in rare last-bit cases), the scaling in float32 like rms_rows.
T512 static void rms_512(const float* x, i64 m, i64 k, i64 ldx, const float* weight, float eps, float* y) {
    for (i64 r = 0; r < m; ++r) {
        const float* xr = x + r * ldx;
        __m512d acc = _mm512_setzero_pd();
        i64 c = 0;
        for (; c + 8 <= k; c += 8) {
            __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(xr + c));
            acc = _mm512_add_pd(acc, _mm512_mul_pd(v, v));
        }
        double ss = _mm512_reduce_add_pd(acc);
        for (; c < k; ++c) ss += (double)xr[c] * (double)xr[c];
        const float inv = 1.0f / sqrtf((float)(ss / (double)k) + eps);
        const __m512 vi = _mm512_set1_ps(inv);
        float* yr = y + r * k;
        for (c = 0; c + 16 <= k; c += 16)
            _mm512_storeu_ps(yr + c, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(xr + c), vi),
                                                   _mm512_loadu_ps(weight + c)));
        for (; c < k; ++c) yr[c] = (xr[c] * inv) * weight[c];
    }
}
T256 static void rms_avx2(const float* x, i64 m, i64 k, i64 ldx, const float* weight, float eps, float* y) {
    rms_rows(x, m, k, ldx, weight, eps, y);
}

// BitLinear on a float32 x [m, k] that is already normalised: quantize, exact integer product,
// dequantize into out [m, n] (float32). w_scale holds one value, or one per output row when
// per_row is set (vLLM's merged projections). x_scale_out (optional) receives the token scales.
extern "C" int bt_linear_f32(int isa, int threads, const float* x, i64 m, i64 k, i64 ldx, const uint8_t* w,
                             i64 n, const float* w_scale, int per_row, float* out, float* x_scale_out) {
    Shape s = shape_of(k);
    int8_t* xp = (int8_t*)malloc(m * s.kpad + 64);
    int32_t* xsum = (int32_t*)malloc(sizeof(int32_t) * m);
    float* xs = (float*)malloc(sizeof(float) * m);
    int32_t* acc = (int32_t*)malloc(sizeof(int32_t) * m * n);
    if (!xp || !xsum || !xs || !acc) return -1;
    if (isa == ISA_AVX512VNNI) quantize_512(x, m, k, ldx, s, xp, xsum, xs);
    else if (isa == ISA_AVX2) quantize_avx2(x, m, k, ldx, s, xp, xsum, xs);
    else quantize_rows(x, m, k, ldx, s, xp, xsum, xs);
    gemm(isa, xp, m, xsum, w, n, s, acc, threads);
    if (isa == ISA_AVX512VNNI) dequantize_512(acc, m, n, w_scale, per_row, xs, out);
    else if (isa == ISA_AVX2) dequantize_avx2(acc, m, n, w_scale, per_row, xs, out);
    else dequantize(acc, m, n, w_scale, per_row, xs, out);
    if (x_scale_out) memcpy(x_scale_out, xs, sizeof(float) * m);
    free(xp);
    free(xsum);
    free(xs);
    free(acc);
    return 0;
}
// The whole BitLinear of HGRN-bit: the layer's own RMSNorm (norm_weight, eps), then
// bt_linear_f32. One call per projection, so a decode step pays no per-op framework overhead.
extern "C" int bt_bitlinear_f32(int isa, int threads, const float* x, i64 m, i64 k, i64 ldx, const float* norm_weight,
                                float eps, const uint8_t* w, i64 n, const float* w_scale, int per_row, float* out) {
    float* y = (float*)malloc(sizeof(float) * m * k + 64);
    if (!y) return -1;
    if (isa == ISA_AVX512VNNI) rms_512(x, m, k, ldx, norm_weight, eps, y);
    else if (isa == ISA_AVX2) rms_avx2(x, m, k, ldx, norm_weight, eps, y);
    else rms_rows(x, m, k, ldx, norm_weight, eps, y);
    int rc = bt_linear_f32(isa, threads, y, m, k, k, w, n, w_scale, per_row, out, nullptr);
    free(y);
    return rc;
}

// HGRN's recurrence h_t = fma(f_t, h_{t-1}, i_t) over [B, T, D] float32 (contiguous), h [B, D]
// in place (the state in, the last state out); out [B, T, D] receives every h_t. One rounding
// per step, as torch.addcmul's CPU kernel computes it (a fused multiply-add), so it equals the
// PyTorch loop bit for bit on CPUs with FMA (torch's AVX2/AVX-512 kernels); without FMA torch's
// default kernel rounds twice, and so does the fallback here.
template <bool FUSED>
static inline void scan_rows(const float* i, const float* f, float* h, float* out, i64 b, i64 t, i64 d) {
    for (i64 z = 0; z < b; ++z) {
        float* hz = h + z * d;
        for (i64 s = 0; s < t; ++s) {
            const i64 o = (z * t + s) * d;
            for (i64 c = 0; c < d; ++c) {
                hz[c] = FUSED ? fmaf(f[o + c], hz[c], i[o + c]) : i[o + c] + f[o + c] * hz[c];
                out[o + c] = hz[c];
            }
        }
    }
}
__attribute__((target("avx2,fma"))) static void scan_fma(const float* i, const float* f, float* h, float* out, i64 b,
                                                         i64 t, i64 d) { scan_rows<true>(i, f, h, out, b, t, d); }

extern "C" void bt_hgrn_scan_f32(const float* i, const float* f, float* h, float* out, i64 b, i64 t, i64 d) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) scan_fma(i, f, h, out, b, t, d);
    else scan_rows<false>(i, f, h, out, b, t, d);
}

// Diagnostics for benchmarks/ternary_native.py: `iters` rounds of 12 independent vpdpbusd zmm
// (64 multiply-adds each), the instruction-throughput ceiling of every AVX-512 product above.
// Returns a value that depends on the work so it cannot be optimised away.
T512 static int vnni_peak_512(i64 iters) {
    __m512i acc[12];
    for (int j = 0; j < 12; ++j) acc[j] = _mm512_set1_epi32(j);
    __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(2);
    for (i64 it = 0; it < iters; ++it) {
        for (int j = 0; j < 12; ++j) acc[j] = _mm512_dpbusd_epi32(acc[j], a, b);
        __asm__ volatile("" : "+v"(a));
    }
    int r = 0;
    for (int j = 0; j < 12; ++j) r += _mm512_reduce_add_epi32(acc[j]);
    return r;
}
extern "C" int bt_vnni_peak(i64 iters) { return bt_isa() == ISA_AVX512VNNI ? vnni_peak_512(iters) : -1; }

// The same for the AVX2 products: 12 independent vpmaddubsw (a memory operand, 32 multiply-adds
// each) + vpaddw chains, the inner step of micro_256 without the decode.
alignas(64) static int8_t peak_bytes[12 * 32];
T256 static int maddubs_peak_256(i64 iters) {
    // In assembly: g++ kept the accumulators of the same loop in C on the stack.
    alignas(32) int16_t sums[16];
    if (iters < 1) iters = 1;
    __asm__ volatile(
        "vpxor %%ymm0, %%ymm0, %%ymm0\n" "vpxor %%ymm1, %%ymm1, %%ymm1\n" "vpxor %%ymm2, %%ymm2, %%ymm2\n" "vpxor %%ymm3, %%ymm3, %%ymm3\n"
        "vpxor %%ymm4, %%ymm4, %%ymm4\n" "vpxor %%ymm5, %%ymm5, %%ymm5\n" "vpxor %%ymm6, %%ymm6, %%ymm6\n" "vpxor %%ymm7, %%ymm7, %%ymm7\n"
        "vpxor %%ymm8, %%ymm8, %%ymm8\n" "vpxor %%ymm9, %%ymm9, %%ymm9\n" "vpxor %%ymm10, %%ymm10, %%ymm10\n" "vpxor %%ymm11, %%ymm11, %%ymm11\n"
        "vpcmpeqb %%ymm12, %%ymm12, %%ymm12\n vpabsb %%ymm12, %%ymm12\n"  // 32 bytes of 1
        "1:\n"
        "vpmaddubsw 0(%[p]), %%ymm12, %%ymm13\n vpaddw %%ymm13, %%ymm0, %%ymm0\n"
        "vpmaddubsw 32(%[p]), %%ymm12, %%ymm14\n vpaddw %%ymm14, %%ymm1, %%ymm1\n"
        "vpmaddubsw 64(%[p]), %%ymm12, %%ymm15\n vpaddw %%ymm15, %%ymm2, %%ymm2\n"
        "vpmaddubsw 96(%[p]), %%ymm12, %%ymm13\n vpaddw %%ymm13, %%ymm3, %%ymm3\n"
        "vpmaddubsw 128(%[p]), %%ymm12, %%ymm14\n vpaddw %%ymm14, %%ymm4, %%ymm4\n"
        "vpmaddubsw 160(%[p]), %%ymm12, %%ymm15\n vpaddw %%ymm15, %%ymm5, %%ymm5\n"
        "vpmaddubsw 192(%[p]), %%ymm12, %%ymm13\n vpaddw %%ymm13, %%ymm6, %%ymm6\n"
        "vpmaddubsw 224(%[p]), %%ymm12, %%ymm14\n vpaddw %%ymm14, %%ymm7, %%ymm7\n"
        "vpmaddubsw 256(%[p]), %%ymm12, %%ymm15\n vpaddw %%ymm15, %%ymm8, %%ymm8\n"
        "vpmaddubsw 288(%[p]), %%ymm12, %%ymm13\n vpaddw %%ymm13, %%ymm9, %%ymm9\n"
        "vpmaddubsw 320(%[p]), %%ymm12, %%ymm14\n vpaddw %%ymm14, %%ymm10, %%ymm10\n"
        "vpmaddubsw 352(%[p]), %%ymm12, %%ymm15\n vpaddw %%ymm15, %%ymm11, %%ymm11\n"
        "dec %[n]\n jnz 1b\n"
        "vpaddw %%ymm1, %%ymm0, %%ymm0\n" "vpaddw %%ymm2, %%ymm0, %%ymm0\n" "vpaddw %%ymm3, %%ymm0, %%ymm0\n" "vpaddw %%ymm4, %%ymm0, %%ymm0\n"
        "vpaddw %%ymm5, %%ymm0, %%ymm0\n" "vpaddw %%ymm6, %%ymm0, %%ymm0\n" "vpaddw %%ymm7, %%ymm0, %%ymm0\n" "vpaddw %%ymm8, %%ymm0, %%ymm0\n"
        "vpaddw %%ymm9, %%ymm0, %%ymm0\n" "vpaddw %%ymm10, %%ymm0, %%ymm0\n" "vpaddw %%ymm11, %%ymm0, %%ymm0\n"
        "vmovdqa %%ymm0, (%[o])\n vzeroupper\n"
        : [n] "+r"(iters)
        : [p] "r"(peak_bytes), [o] "r"(sums)
        : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
          "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    int r = 0;
    for (int j = 0; j < 16; ++j) r += sums[j];
    return r;
}
extern "C" int bt_maddubs_peak(i64 iters) { return bt_isa() >= ISA_AVX2 ? maddubs_peak_256(iters) : -1; }
"""
