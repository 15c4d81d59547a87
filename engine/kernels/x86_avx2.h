// x86-64 kernels: AVX2 + FMA + F16C (as in ggml-cpu/arch/x86). Included by qgemv.cpp after
// blocks.h; provides deq_row_simd() and dot_for().
#pragma once

#include <immintrin.h>

#include "blocks.h"

namespace {

// -- AVX2 helpers (as in ggml-cpu/arch/x86) -------------------------------------------------

inline float hsum_float_8(const __m256 x) {
  __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}

inline int hsum_i32_8(const __m256i a) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

// 16 bytes of nibbles -> 32 bytes: low nibbles first, then high nibbles (legacy block order).
inline __m256i bytes_from_nibbles_32(const uint8_t* p) {
  const __m128i t = _mm_loadu_si128((const __m128i*)p);
  const __m256i b = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
  return _mm256_and_si256(_mm256_set1_epi8(0xF), b);
}

// 32 bits -> 32 bytes, 0xFF where the bit is set.
inline __m256i bytes_from_bits_32(const uint8_t* p) {
  uint32_t x32;
  std::memcpy(&x32, p, 4);
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                         0x0101010101010101, 0x0000000000000000);
  __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x32), shuf);
  bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

// 32 int8 values v times float scales (s0 for the first 16, s1 for the last 16) -> y[0..32)
inline void store_i8x32(const __m256i v, float s0, float s1, float* y) {
  const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
  const __m256 d0 = _mm256_set1_ps(s0), d1 = _mm256_set1_ps(s1);
  _mm256_storeu_ps(y + 0, _mm256_mul_ps(d0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
  _mm256_storeu_ps(y + 8, _mm256_mul_ps(d0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
  _mm256_storeu_ps(y + 16, _mm256_mul_ps(d1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
  _mm256_storeu_ps(y + 24, _mm256_mul_ps(d1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
}

void deq_q4_0_avx2(const uint8_t* src, float* y, int64_t n) {
  const block_q4_0* b = (const block_q4_0*)src;
  for (int64_t i = 0; i < n / QK; ++i, y += QK) {
    const float d = h2f(b[i].d);
    store_i8x32(_mm256_sub_epi8(bytes_from_nibbles_32(b[i].qs), _mm256_set1_epi8(8)), d, d, y);
  }
}

// Codes -> doubled E2M1 values by a byte shuffle; the scale is a power of two, so the products
// are exact and equal gguf-py's.
void deq_mxfp4_avx2(const uint8_t* src, float* y, int64_t n) {
  const block_mxfp4* b = (const block_mxfp4*)src;
  const __m256i table = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i*)kvalues_mxfp4));
  for (int64_t i = 0; i < n / QK; ++i, y += QK) {
    const float d = e8m0_half(b[i].e);
    store_i8x32(_mm256_shuffle_epi8(table, bytes_from_nibbles_32(b[i].qs)), d, d, y);
  }
}

// One half (c = 0 or 1: 128 values) of a Q6_K super-block as four registers of 32 unsigned
// 6-bit values: 4 low bits from ql, bit pair k of qh (bits 2k, 2k+1) shifted straight to bits 4
// and 5 and masked once. Shared by the dequantizer and both builds of dot_q6_k.
inline void unpack_q6_k_half(const uint8_t* ql, const uint8_t* qh, int c, __m256i u[4]) {
  const __m256i m4 = _mm256_set1_epi8(0xF), m30 = _mm256_set1_epi8(0x30);
  const __m256i hb = _mm256_loadu_si256((const __m256i*)(qh + 32 * c));
  const __m256i b1 = _mm256_loadu_si256((const __m256i*)(ql + 64 * c));
  const __m256i b2 = _mm256_loadu_si256((const __m256i*)(ql + 64 * c + 32));
  u[0] = _mm256_or_si256(_mm256_and_si256(b1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
  u[1] = _mm256_or_si256(_mm256_and_si256(b2, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
  u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4), _mm256_and_si256(hb, m30));
  u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                         _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
}

void deq_q6_k_avx2(const uint8_t* src, float* y, int64_t n) {
  const block_q6_K* b = (const block_q6_K*)src;
  const __m256i m32 = _mm256_set1_epi8(32);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = h2f(b[i].d);
    const int8_t* sc = b[i].scales;
    for (int c = 0; c < 2; ++c, y += 128) {
      __m256i u[4];
      unpack_q6_k_half(b[i].ql, b[i].qh, c, u);
      for (int k = 0; k < 4; ++k) {
        const int s = 8 * c + 2 * k;
        store_i8x32(_mm256_sub_epi8(u[k], m32), d * sc[s], d * sc[s + 1], y + 32 * k);
      }
    }
  }
}

// The dequantizers with an AVX2 version (the rest use the portable ones of blocks.h).
inline bool deq_row_simd(int64_t type, const uint8_t* src, float* y, int64_t n) {
  switch (type) {
    case T_F16: {
      const uint16_t* s = (const uint16_t*)src;
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(s + i))));
      for (; i < n; ++i) y[i] = h2f(s[i]);
      return true;
    }
    case T_Q4_0: deq_q4_0_avx2(src, y, n); return true;
    case T_Q6_K: deq_q6_k_avx2(src, y, n); return true;
    case T_MXFP4: deq_mxfp4_avx2(src, y, n); return true;
  }
  return false;
}

// -- dot products: one weight row . T activation rows (x86_dots.h), per instruction set ----

constexpr int kMaxT = 8;  // tokens per kernel call; gemv loops over groups of this many

#define DOT_ARGS const uint8_t *w, const uint8_t *A, int64_t as, int T_, int64_t n, float *y, int64_t ys
using DotFn = void (*)(DOT_ARGS);

// Instantiated for 1, 2, 4 and 8 tokens, so that the per-token accumulators live in
// registers; other token counts are split into such groups (7 = 4 + 2 + 1).
struct DotSet {
  DotFn by_log2[4];  // [k]: 2^k tokens
};

namespace avx2 {
#include "x86_dots.h"
}  // namespace avx2

// The same kernels for CPUs with AVX-512 VNNI (Ice Lake and later Xeons, Zen 4/5), chosen at
// run time. MSVC compiles intrinsics of any instruction set without target pragmas.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
#endif
namespace avx512 {
#define LLMLENS_VNNI 1
#include "x86_dots.h"
#undef LLMLENS_VNNI
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
#undef DOT_ARGS

// -- run-time choice of the instruction set ----------------------------------------------------

enum class Isa { avx2, avx512_vnni };

inline bool cpu_has_avx512_vnni() {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
  return false;  // MSVC: the AVX2 kernels (no cpuid probe written for it yet)
#endif
}

inline Isa& active_isa() {
  static Isa isa = cpu_has_avx512_vnni() ? Isa::avx512_vnni : Isa::avx2;
  return isa;
}

inline const char* isa_name() { return active_isa() == Isa::avx512_vnni ? "avx512-vnni" : "avx2"; }

// "avx2" always works on a CPU that loaded this library; "avx512-vnni" only where the CPU has it.
inline bool set_isa(const char* name) {
  if (std::strcmp(name, "avx2") == 0) return active_isa() = Isa::avx2, true;
  if (std::strcmp(name, "avx512-vnni") == 0 && cpu_has_avx512_vnni()) return active_isa() = Isa::avx512_vnni, true;
  return false;
}

inline const char* isa_choices() { return cpu_has_avx512_vnni() ? "avx2, avx512-vnni" : "avx2"; }

inline DotSet dot_for(int64_t type) {
  return active_isa() == Isa::avx512_vnni ? avx512::dot_for(type) : avx2::dot_for(type);
}

}  // namespace
