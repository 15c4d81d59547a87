// ARM64 kernels: NEON (ASIMD), with the int8 dot-product instructions (armv8.2 `dotprod`)
// where the CPU has them (as in ggml-cpu/arch/arm). Included by qgemv.cpp after blocks.h;
// provides what x86_avx2.h provides: deq_row_simd(), the dot kernels, dot_for() and the
// run-time choice of instruction set (isa_name(), set_isa(), isa_choices()).
//
// Same numerics as x86_avx2.h: weight codes and activation bytes meet in exact int32 sums
// (vdotq_s32, or vmull_s8 + vpadalq_s16 without dotprod), only the per-block scale products
// are f32, so results equal the x86 ones up to the f32 rounding of those products.
// Differences in form: codes with a fixed offset (Q4_0, Q5_0, Q3_K, Q6_K) are made signed
// before the product (a signed x signed dot needs no unsigned operand, unlike maddubs), and
// accumulators have 4 float lanes instead of 8.
//
// Two builds of the dot kernels in one library: `neon_base` for any ARMv8-A CPU and
// `neon_dotprod` compiled for armv8.2-a+dotprod (GCC's target pragma); dot_for() uses the
// dotprod one where the CPU's hwcaps have it (set_isa() switches). A compiler already targeting dotprod (-march=...+dotprod,
// Apple clang for M-series) builds only `neon_dotprod`; one without the pragma (clang on Linux,
// MSVC) builds only `neon_base`.
//
// This file includes itself once per build of the kernels: the part under
// LLMLENS_NEON_KERNELS is the kernels, the rest the shared helpers and the dispatch.

#if !defined(LLMLENS_NEON_KERNELS)
#if !defined(LLMLENS_AARCH64_NEON_H)  // not #pragma once: that would stop the self-includes
#define LLMLENS_AARCH64_NEON_H

#include <arm_neon.h>

#if defined(__linux__)
#include <sys/auxv.h>
#endif
#if defined(__APPLE__)
#include <sys/sysctl.h>
#endif

#include "blocks.h"

namespace {

// -- shared helpers (no dotprod instructions) ---------------------------------------------

inline const act_q8_0* act0(const uint8_t* A, int64_t as, int t) { return (const act_q8_0*)(A + t * as); }
inline const act_q8_K* actK(const uint8_t* A, int64_t as, int t) { return (const act_q8_K*)(A + t * as); }

alignas(16) const uint8_t kBitIndex[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
alignas(16) const uint8_t kBitMask[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};

// 16 bits (little-endian, at p) -> 16 bytes, 0x10 where the bit is set (Q5 fifth bits).
inline uint8x16_t fifth_bits_16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint8x16_t b = vqtbl1q_u8(vreinterpretq_u8_u16(vdupq_n_u16(h)), vld1q_u8(kBitIndex));
  return vandq_u8(vtstq_u8(b, vld1q_u8(kBitMask)), vdupq_n_u8(0x10));
}

// 16 int8 values times one float scale -> y[0..16), one rounding each (as the scalar code).
inline void store_i8x16(const int8x16_t v, float d, float* y) {
  const int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_high_s8(v);
  const float32x4_t dv = vdupq_n_f32(d);
  vst1q_f32(y + 0, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), dv));
  vst1q_f32(y + 4, vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(lo)), dv));
  vst1q_f32(y + 8, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), dv));
  vst1q_f32(y + 12, vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(hi)), dv));
}

// 16 unsigned values times d minus m -> y[0..16): d * u - m, two roundings (no fused op).
inline void store_u8x16_min(const uint8x16_t v, float d, float m, float* y) {
  const uint16x8_t lo = vmovl_u8(vget_low_u8(v)), hi = vmovl_high_u8(v);
  const float32x4_t dv = vdupq_n_f32(d), mv = vdupq_n_f32(m);
  vst1q_f32(y + 0, vsubq_f32(vmulq_f32(dv, vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)))), mv));
  vst1q_f32(y + 4, vsubq_f32(vmulq_f32(dv, vcvtq_f32_u32(vmovl_high_u16(lo))), mv));
  vst1q_f32(y + 8, vsubq_f32(vmulq_f32(dv, vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)))), mv));
  vst1q_f32(y + 12, vsubq_f32(vmulq_f32(dv, vcvtq_f32_u32(vmovl_high_u16(hi))), mv));
}

inline void deq_q4_0_neon(const uint8_t* src, float* y, int64_t n) {
  const block_q4_0* b = (const block_q4_0*)src;
  const uint8x16_t m4 = vdupq_n_u8(0xF);
  const int8x16_t s8 = vdupq_n_s8(8);
  for (int64_t i = 0; i < n / QK; ++i, y += QK) {
    const float d = h2f(b[i].d);
    const uint8x16_t q = vld1q_u8(b[i].qs);
    store_i8x16(vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, m4)), s8), d, y);
    store_i8x16(vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), s8), d, y + 16);
  }
}

inline void deq_q8_0_neon(const uint8_t* src, float* y, int64_t n) {
  const block_q8_0* b = (const block_q8_0*)src;
  for (int64_t i = 0; i < n / QK; ++i, y += QK) {
    const float d = h2f(b[i].d);
    store_i8x16(vld1q_s8(b[i].qs), d, y);
    store_i8x16(vld1q_s8(b[i].qs + 16), d, y + 16);
  }
}

void unpack_scales_k4(const uint8_t* scales, uint8_t sc[8], uint8_t mn[8]) {
  uint32_t u[4];
  std::memcpy(u, scales, 12);
  const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
  u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
  const uint32_t uaux = u[1] & k1;
  u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
  u[2] = uaux;
  u[0] &= k1;
  std::memcpy(sc, u, 8);
  std::memcpy(mn, u + 2, 8);
}

void unpack_scales_q3(const uint8_t* scales, int8_t out[16]) {
  uint32_t aux[4];
  std::memcpy(aux, scales, 12);
  const uint32_t tmp = aux[2], k1 = 0x03030303, k2 = 0x0f0f0f0f;
  aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
  aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
  aux[0] = (aux[0] & k2) | (((tmp >> 0) & k1) << 4);
  aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
  std::memcpy(out, aux, 16);
}

// Q4_K: y = (d * sc) * u - dmin * mn, per 32 values, as deq_row_portable rounds it.
inline void deq_q4_k_neon(const uint8_t* src, float* y, int64_t n) {
  const block_q4_K* b = (const block_q4_K*)src;
  const uint8x16_t m4 = vdupq_n_u8(0xF);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
    uint8_t sc[8], mn[8];
    unpack_scales_k4(b[i].scales, sc, mn);
    for (int j = 0; j < 4; ++j, y += 64) {
      const float d1 = d * sc[2 * j], m1 = dmin * mn[2 * j];
      const float d2 = d * sc[2 * j + 1], m2 = dmin * mn[2 * j + 1];
      for (int h = 0; h < 2; ++h) {
        const uint8x16_t q = vld1q_u8(b[i].qs + 32 * j + 16 * h);
        store_u8x16_min(vandq_u8(q, m4), d1, m1, y + 16 * h);
        store_u8x16_min(vshrq_n_u8(q, 4), d2, m2, y + 32 + 16 * h);
      }
    }
  }
}

// Q6_K 6-bit codes of one 128-value half (qh 32 bytes, ql 64 bytes) as signed bytes u - 32,
// in value order: v[g] holds values 16 g .. 16 g + 15.
inline void q6_k_unpack(const uint8_t* ql, const uint8_t* qh, int8x16_t v[8]) {
  const uint8x16_t m4 = vdupq_n_u8(0xF), m3 = vdupq_n_u8(3);
  const int8x16_t s32 = vdupq_n_s8(32);
  for (int h = 0; h < 2; ++h) {
    const uint8x16_t hb = vld1q_u8(qh + 16 * h);
    const uint8x16_t b1 = vld1q_u8(ql + 16 * h), b2 = vld1q_u8(ql + 32 + 16 * h);
    const uint8x16_t u[4] = {
        vorrq_u8(vandq_u8(b1, m4), vshlq_n_u8(vandq_u8(hb, m3), 4)),
        vorrq_u8(vandq_u8(b2, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 2), m3), 4)),
        vorrq_u8(vshrq_n_u8(b1, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 4), m3), 4)),
        vorrq_u8(vshrq_n_u8(b2, 4), vshlq_n_u8(vshrq_n_u8(hb, 6), 4)),
    };
    for (int k = 0; k < 4; ++k) v[2 * k + h] = vsubq_s8(vreinterpretq_s8_u8(u[k]), s32);
  }
}

// Q6_K: y = (d * sc) * (u - 32), as deq_row_portable rounds it.
inline void deq_q6_k_neon(const uint8_t* src, float* y, int64_t n) {
  const block_q6_K* b = (const block_q6_K*)src;
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = h2f(b[i].d);
    for (int c = 0; c < 2; ++c, y += 128) {
      int8x16_t v[8];
      q6_k_unpack(b[i].ql + 64 * c, b[i].qh + 32 * c, v);
      for (int g = 0; g < 8; ++g) store_i8x16(v[g], d * b[i].scales[8 * c + g], y + 16 * g);
    }
  }
}

// The dequantizers with a NEON version (the rest use the portable ones of blocks.h); exact
// conversions and one rounding per product, so all are bit-identical to deq_row_portable.
inline bool deq_row_simd(int64_t type, const uint8_t* src, float* y, int64_t n) {
  switch (type) {
    case T_F16: {
      const uint16_t* s = (const uint16_t*)src;
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) {
        const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(s + i));
        vst1q_f32(y + i, vcvt_f32_f16(vget_low_f16(h)));
        vst1q_f32(y + i + 4, vcvt_high_f32_f16(h));
      }
      for (; i < n; ++i) y[i] = h2f(s[i]);
      return true;
    }
    case T_BF16: {
      const uint16_t* s = (const uint16_t*)src;
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) {
        const uint16x8_t h = vld1q_u16(s + i);
        vst1q_f32(y + i, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16)));
        vst1q_f32(y + i + 4, vreinterpretq_f32_u32(vshll_high_n_u16(h, 16)));
      }
      for (; i < n; ++i) y[i] = bf2f(s[i]);
      return true;
    }
    case T_Q4_0: deq_q4_0_neon(src, y, n); return true;
    case T_Q8_0: deq_q8_0_neon(src, y, n); return true;
    case T_Q4_K: deq_q4_k_neon(src, y, n); return true;
    case T_Q6_K: deq_q6_k_neon(src, y, n); return true;
  }
  return false;
}

constexpr int kMaxT = 8;  // tokens per kernel call; gemv loops over groups of this many

#define DOT_ARGS const uint8_t *w, const uint8_t *A, int64_t as, int T_, int64_t n, float *y, int64_t ys
using DotFn = void (*)(DOT_ARGS);

// Instantiated for 1, 2, 4 and 8 tokens, so that the per-token accumulators live in
// registers; other token counts are split into such groups (7 = 4 + 2 + 1).
struct DotSet {
  DotFn by_log2[4];  // [k]: 2^k tokens
};

}  // namespace

// -- the kernels, once per instruction set -----------------------------------------------

#if defined(__ARM_FEATURE_DOTPROD)
#define LLMLENS_NEON_KERNELS neon_dotprod
#define LLMLENS_NEON_DOTPROD 1
#include "aarch64_neon.h"
#undef LLMLENS_NEON_DOTPROD
#undef LLMLENS_NEON_KERNELS
#define LLMLENS_NEON_HAVE_BASE 0
#define LLMLENS_NEON_HAVE_DOTPROD 1
#else
#define LLMLENS_NEON_KERNELS neon_base
#define LLMLENS_NEON_DOTPROD 0
#include "aarch64_neon.h"
#undef LLMLENS_NEON_DOTPROD
#undef LLMLENS_NEON_KERNELS
#define LLMLENS_NEON_HAVE_BASE 1
#if defined(__GNUC__) && !defined(__clang__) && (defined(__linux__) || defined(__APPLE__))
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#define LLMLENS_NEON_KERNELS neon_dotprod
#define LLMLENS_NEON_DOTPROD 1
#include "aarch64_neon.h"
#undef LLMLENS_NEON_DOTPROD
#undef LLMLENS_NEON_KERNELS
#pragma GCC pop_options
#define LLMLENS_NEON_HAVE_DOTPROD 1
#else
#define LLMLENS_NEON_HAVE_DOTPROD 0
#endif
#endif

namespace {

// Whether the CPU executes the dot-product instructions (its hwcaps: a cheap query).
inline bool cpu_has_dotprod() {
#if defined(__ARM_FEATURE_DOTPROD)
  return true;
#elif defined(__linux__) && defined(AT_HWCAP)
  return (getauxval(AT_HWCAP) & (1UL << 20)) != 0;  // HWCAP_ASIMDDP
#elif defined(__APPLE__)
  int v = 0;
  size_t len = sizeof(v);
  return sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &len, nullptr, 0) == 0 && v != 0;
#else
  return false;
#endif
}

// -- run-time choice of the instruction set (the interface of x86_avx2.h) ------------------

inline bool isa_available(bool dotprod) {
  return dotprod ? LLMLENS_NEON_HAVE_DOTPROD && cpu_has_dotprod() : LLMLENS_NEON_HAVE_BASE;
}

// true: the dotprod build; by default wherever the CPU has it
inline bool& active_dotprod() {
  static bool dotprod = isa_available(true);
  return dotprod;
}

inline const char* isa_name() { return active_dotprod() ? "neon-dotprod" : "neon"; }

// "neon" where the base build is compiled in, "neon-dotprod" only where the CPU has it.
inline bool set_isa(const char* name) {
  const bool dotprod = std::strcmp(name, "neon-dotprod") == 0;
  if ((!dotprod && std::strcmp(name, "neon") != 0) || !isa_available(dotprod)) return false;
  active_dotprod() = dotprod;
  return true;
}

inline const char* isa_choices() {
  return isa_available(false) ? (isa_available(true) ? "neon, neon-dotprod" : "neon") : "neon-dotprod";
}

inline DotSet dot_for(int64_t type) {
#if LLMLENS_NEON_HAVE_DOTPROD
  if (active_dotprod()) return neon_dotprod::dot_for(type);
#endif
#if LLMLENS_NEON_HAVE_BASE
  return neon_base::dot_for(type);
#else
  return neon_dotprod::dot_for(type);
#endif
}

}  // namespace

#undef DOT_ARGS
#endif  // LLMLENS_AARCH64_NEON_H

#else  // LLMLENS_NEON_KERNELS: the kernels, in namespace LLMLENS_NEON_KERNELS

namespace {
namespace LLMLENS_NEON_KERNELS {

// acc + the 16-byte signed dot a . b, spread over 4 int32 lanes (only their sum is used).
inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if LLMLENS_NEON_DOTPROD
  return vdotq_s32(acc, a, b);
#else
  // |a_i b_i| <= 128 * 127, so the int16 sum of two products cannot overflow
  return vpadalq_s16(acc, vmlal_high_s8(vmull_s8(vget_low_s8(a), vget_low_s8(b)), a, b));
#endif
}

// a . q for one 32-value block: lo holds values 0..15, hi 16..31.
inline int32x4_t dot32(int8x16_t lo, int8x16_t hi, const int8_t* q) {
  return dot16(dot16(vdupq_n_s32(0), lo, vld1q_s8(q)), hi, vld1q_s8(q + 16));
}

// -- dot products: one weight row . T activation rows --------------------------------------
// As in x86_avx2.h: each weight block is unpacked once and multiplied with the same block of
// every token. `A` holds T activation rows `as` bytes apart; results go to y[t * ys].

template <int FT>
void dot_f32(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const float* v = (const float*)w;
  float32x4_t acc0[kMaxT], acc1[kMaxT];
  for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = vdupq_n_f32(0.f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const float32x4_t w0 = vld1q_f32(v + i), w1 = vld1q_f32(v + i + 4);
    for (int t = 0; t < T; ++t) {
      const float* x = (const float*)(A + t * as) + i;
      acc0[t] = vfmaq_f32(acc0[t], w0, vld1q_f32(x));
      acc1[t] = vfmaq_f32(acc1[t], w1, vld1q_f32(x + 4));
    }
  }
  for (int t = 0; t < T; ++t) {
    const float* x = (const float*)(A + t * as);
    float s = vaddvq_f32(vaddq_f32(acc0[t], acc1[t]));
    for (int64_t j = i; j < n; ++j) s += v[j] * x[j];
    y[t * ys] = s;
  }
}

// F16 and BF16: 8 values per step widened to f32, then as dot_f32.
template <int FT, bool BF>
void dot_half(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const uint16_t* v = (const uint16_t*)w;
  float32x4_t acc0[kMaxT], acc1[kMaxT];
  for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = vdupq_n_f32(0.f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint16x8_t h = vld1q_u16(v + i);
    float32x4_t w0, w1;
    if (BF) {
      w0 = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
      w1 = vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));
    } else {
      w0 = vcvt_f32_f16(vget_low_f16(vreinterpretq_f16_u16(h)));
      w1 = vcvt_high_f32_f16(vreinterpretq_f16_u16(h));
    }
    for (int t = 0; t < T; ++t) {
      const float* x = (const float*)(A + t * as) + i;
      acc0[t] = vfmaq_f32(acc0[t], w0, vld1q_f32(x));
      acc1[t] = vfmaq_f32(acc1[t], w1, vld1q_f32(x + 4));
    }
  }
  for (int t = 0; t < T; ++t) {
    const float* x = (const float*)(A + t * as);
    float s = vaddvq_f32(vaddq_f32(acc0[t], acc1[t]));
    for (int64_t j = i; j < n; ++j) s += (BF ? bf2f(v[j]) : h2f(v[j])) * x[j];
    y[t * ys] = s;
  }
}

template <int FT> void dot_f16(DOT_ARGS) { dot_half<FT, false>(w, A, as, T_, n, y, ys); }
template <int FT> void dot_bf16(DOT_ARGS) { dot_half<FT, true>(w, A, as, T_, n, y, ys); }

// 32-value blocks against Q8_0 activations. Decode(i, dw, m, lo, hi) gives block i's scale,
// its min m (HAS_MIN) and its signed codes c, so that w = dw * c (+ m):
//   w . x = dw * da * (c . q) + m * s   (s = da * sum(q), from the activation block)
// With one token, even and odd blocks go to two accumulators: a single fma chain would bound
// the speed on a cached row.
template <int FT, bool HAS_MIN, class Decode>
inline void dot_blocks32(const uint8_t* A, int64_t as, int T_, int64_t n, float* y, int64_t ys, Decode decode) {
  const int T = FT ? FT : T_;
  const int64_t nb = n / QK;
  if (FT == 1) {
    const act_q8_0* a = act0(A, as, 0);
    float32x4_t acc[2] = {vdupq_n_f32(0.f), vdupq_n_f32(0.f)};
    float off = 0.f;
    for (int64_t i = 0; i < nb; i += 2) {
      for (int k = 0; k < 2 && i + k < nb; ++k) {
        float dw, m = 0.f;
        int8x16_t lo, hi;
        decode(i + k, dw, m, lo, hi);
        acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(dot32(lo, hi, a[i + k].qs)), dw * a[i + k].d);
        if (HAS_MIN) off += m * a[i + k].s;
      }
    }
    y[0] = vaddvq_f32(vaddq_f32(acc[0], acc[1])) + off;
    return;
  }
  float32x4_t acc[kMaxT];
  float off[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = vdupq_n_f32(0.f), off[t] = 0.f;
  for (int64_t i = 0; i < nb; ++i) {
    float dw, m = 0.f;
    int8x16_t lo, hi;
    decode(i, dw, m, lo, hi);
    for (int t = 0; t < T; ++t) {
      const act_q8_0& a = act0(A, as, t)[i];
      acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(dot32(lo, hi, a.qs)), dw * a.d);
      if (HAS_MIN) off[t] += m * a.s;
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = vaddvq_f32(acc[t]) + off[t];
}

template <int FT>
void dot_q4_0(DOT_ARGS) {
  const block_q4_0* b = (const block_q4_0*)w;
  dot_blocks32<FT, false>(A, as, T_, n, y, ys, [b](int64_t i, float& dw, float&, int8x16_t& lo, int8x16_t& hi) {
    dw = h2f(b[i].d);
    const uint8x16_t q = vld1q_u8(b[i].qs);
    lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0xF))), vdupq_n_s8(8));
    hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), vdupq_n_s8(8));
  });
}

template <int FT>
void dot_q4_1(DOT_ARGS) {
  const block_q4_1* b = (const block_q4_1*)w;
  dot_blocks32<FT, true>(A, as, T_, n, y, ys, [b](int64_t i, float& dw, float& m, int8x16_t& lo, int8x16_t& hi) {
    dw = h2f(b[i].d);
    m = h2f(b[i].m);
    const uint8x16_t q = vld1q_u8(b[i].qs);
    lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0xF)));
    hi = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
  });
}

template <int FT>
void dot_q5_0(DOT_ARGS) {
  const block_q5_0* b = (const block_q5_0*)w;
  dot_blocks32<FT, false>(A, as, T_, n, y, ys, [b](int64_t i, float& dw, float&, int8x16_t& lo, int8x16_t& hi) {
    dw = h2f(b[i].d);
    const uint8x16_t q = vld1q_u8(b[i].qs);
    const uint8x16_t ul = vorrq_u8(vandq_u8(q, vdupq_n_u8(0xF)), fifth_bits_16(b[i].qh));
    const uint8x16_t uh = vorrq_u8(vshrq_n_u8(q, 4), fifth_bits_16(b[i].qh + 2));
    lo = vsubq_s8(vreinterpretq_s8_u8(ul), vdupq_n_s8(16));
    hi = vsubq_s8(vreinterpretq_s8_u8(uh), vdupq_n_s8(16));
  });
}

template <int FT>
void dot_q5_1(DOT_ARGS) {
  const block_q5_1* b = (const block_q5_1*)w;
  dot_blocks32<FT, true>(A, as, T_, n, y, ys, [b](int64_t i, float& dw, float& m, int8x16_t& lo, int8x16_t& hi) {
    dw = h2f(b[i].d);
    m = h2f(b[i].m);
    const uint8x16_t q = vld1q_u8(b[i].qs);
    lo = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, vdupq_n_u8(0xF)), fifth_bits_16(b[i].qh)));
    hi = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q, 4), fifth_bits_16(b[i].qh + 2)));
  });
}

template <int FT>
void dot_q8_0(DOT_ARGS) {
  const block_q8_0* b = (const block_q8_0*)w;
  dot_blocks32<FT, false>(A, as, T_, n, y, ys, [b](int64_t i, float& dw, float&, int8x16_t& lo, int8x16_t& hi) {
    dw = h2f(b[i].d);
    lo = vld1q_s8(b[i].qs);
    hi = vld1q_s8(b[i].qs + 16);
  });
}

// MXFP4: the 4-bit codes become their (doubled) E2M1 values through a table lookup.
template <int FT>
void dot_mxfp4(DOT_ARGS) {
  const block_mxfp4* b = (const block_mxfp4*)w;
  const int8x16_t lut = vld1q_s8(kvalues_mxfp4);
  dot_blocks32<FT, false>(A, as, T_, n, y, ys, [b, lut](int64_t i, float& dw, float&, int8x16_t& lo, int8x16_t& hi) {
    dw = e8m0_half(b[i].e);
    const uint8x16_t q = vld1q_u8(b[i].qs);
    lo = vqtbl1q_s8(lut, vandq_u8(q, vdupq_n_u8(0xF)));
    hi = vqtbl1q_s8(lut, vshrq_n_u8(q, 4));
  });
}

// K-quants against Q8_K: per super-block and token, an exact int32 sum of code . q8 times the
// integer sub-block scales; mins and offsets through the activation's per-16 sums.

// sumi[t] += scale * (codes . q8 of token t at byte `at` of super-block i), 16 values
#define ACC16(codes, scale, at)                                                                \
  for (int t = 0; t < T; ++t)                                                                  \
    sumi[t] = vmlaq_n_s32(sumi[t], dot16(vdupq_n_s32(0), (codes), vld1q_s8(actK(A, as, t)[i].qs + (at))), (scale));
// the same for 32 values under one scale
#define ACC32(c0, c1, scale, at)                                                               \
  for (int t = 0; t < T; ++t)                                                                  \
    sumi[t] = vmlaq_n_s32(sumi[t], dot32((c0), (c1), actK(A, as, t)[i].qs + (at)), (scale));

template <int FT, bool FIVE>
void dot_q4_5_k(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const int bs = FIVE ? 176 : 144;
  const uint8x16_t m4 = vdupq_n_u8(0xF), one = vdupq_n_u8(1);
  float acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = 0.f;
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const uint8_t* blk = w + i * bs;
    const float dw = h2f(*(const uint16_t*)blk), dminw = h2f(*(const uint16_t*)(blk + 2));
    uint8_t sc[8], mn[8];
    unpack_scales_k4(blk + 4, sc, mn);
    // fifth bits: bit 2j of qh byte l is for value 64 j + l, bit 2j+1 for 64 j + 32 + l
    uint8x16_t h0 = FIVE ? vld1q_u8(blk + 16) : vdupq_n_u8(0);
    uint8x16_t h1 = FIVE ? vld1q_u8(blk + 32) : vdupq_n_u8(0);
    const uint8_t* q4 = blk + (FIVE ? 48 : 16);
    int32x4_t sumi[kMaxT];
    for (int t = 0; t < T; ++t) sumi[t] = vdupq_n_s32(0);
    for (int j = 0; j < 4; ++j) {
      const uint8x16_t b0 = vld1q_u8(q4 + 32 * j), b1 = vld1q_u8(q4 + 32 * j + 16);
      uint8x16_t l0 = vandq_u8(b0, m4), l1 = vandq_u8(b1, m4);
      uint8x16_t u0 = vshrq_n_u8(b0, 4), u1 = vshrq_n_u8(b1, 4);
      if (FIVE) {
        l0 = vorrq_u8(l0, vshlq_n_u8(vandq_u8(h0, one), 4));
        l1 = vorrq_u8(l1, vshlq_n_u8(vandq_u8(h1, one), 4));
        u0 = vorrq_u8(u0, vshlq_n_u8(vandq_u8(h0, vdupq_n_u8(2)), 3));
        u1 = vorrq_u8(u1, vshlq_n_u8(vandq_u8(h1, vdupq_n_u8(2)), 3));
        h0 = vshrq_n_u8(h0, 2);
        h1 = vshrq_n_u8(h1, 2);
      }
      ACC32(vreinterpretq_s8_u8(l0), vreinterpretq_s8_u8(l1), sc[2 * j], 64 * j)
      ACC32(vreinterpretq_s8_u8(u0), vreinterpretq_s8_u8(u1), sc[2 * j + 1], 64 * j + 32)
    }
    for (int t = 0; t < T; ++t) {
      const act_q8_K& a = actK(A, as, t)[i];
      int msum = 0;
      for (int j = 0; j < 8; ++j) msum += mn[j] * (a.bsums[2 * j] + a.bsums[2 * j + 1]);
      acc[t] += a.d * dw * (float)vaddvq_s32(sumi[t]) - a.d * dminw * (float)msum;
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = acc[t];
}

template <int FT> void dot_q4_k(DOT_ARGS) { dot_q4_5_k<FT, false>(w, A, as, T_, n, y, ys); }
template <int FT> void dot_q5_k(DOT_ARGS) { dot_q4_5_k<FT, true>(w, A, as, T_, n, y, ys); }

// value = d * sc * (u - 32): signed codes from q6_k_unpack, an int8 scale per 16 values
template <int FT>
void dot_q6_k(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const block_q6_K* b = (const block_q6_K*)w;
  float acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = 0.f;
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const int8_t* sc = b[i].scales;
    int32x4_t sumi[kMaxT];
    for (int t = 0; t < T; ++t) sumi[t] = vdupq_n_s32(0);
    for (int c = 0; c < 2; ++c) {
      int8x16_t v[8];
      q6_k_unpack(b[i].ql + 64 * c, b[i].qh + 32 * c, v);
      for (int g = 0; g < 8; ++g) ACC16(v[g], sc[8 * c + g], 128 * c + 16 * g)
    }
    const float dw = h2f(b[i].d);
    for (int t = 0; t < T; ++t) acc[t] += actK(A, as, t)[i].d * dw * (float)vaddvq_s32(sumi[t]);
  }
  for (int t = 0; t < T; ++t) y[t * ys] = acc[t];
}

// value = d * (s - 32) * (u - 4), u = 2 low bits | hmask bit << 2: signed codes u - 4
template <int FT>
void dot_q3_k(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const block_q3_K* b = (const block_q3_K*)w;
  const uint8x16_t m3 = vdupq_n_u8(3), one = vdupq_n_u8(1);
  const int8x16_t s4 = vdupq_n_s8(4);
  float acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = 0.f;
  for (int64_t i = 0; i < n / QK_K; ++i) {
    int8_t scales[16];
    unpack_scales_q3(b[i].scales, scales);
    // hmask bit 4c + j of byte l is for value 128 c + 32 j + l
    uint8x16_t hm0 = vld1q_u8(b[i].hmask), hm1 = vld1q_u8(b[i].hmask + 16);
    int32x4_t sumi[kMaxT];
    for (int t = 0; t < T; ++t) sumi[t] = vdupq_n_s32(0);
    for (int c = 0; c < 2; ++c) {
      uint8x16_t q0 = vld1q_u8(b[i].qs + 32 * c), q1 = vld1q_u8(b[i].qs + 32 * c + 16);
      for (int j = 0; j < 4; ++j) {
        const int8x16_t c0 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q0, m3), vshlq_n_u8(vandq_u8(hm0, one), 2))), s4);
        const int8x16_t c1 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q1, m3), vshlq_n_u8(vandq_u8(hm1, one), 2))), s4);
        const int s = 8 * c + 2 * j;
        ACC16(c0, scales[s] - 32, 128 * c + 32 * j)
        ACC16(c1, scales[s + 1] - 32, 128 * c + 32 * j + 16)
        q0 = vshrq_n_u8(q0, 2);
        q1 = vshrq_n_u8(q1, 2);
        hm0 = vshrq_n_u8(hm0, 1);
        hm1 = vshrq_n_u8(hm1, 1);
      }
    }
    const float dw = h2f(b[i].d);
    for (int t = 0; t < T; ++t) acc[t] += actK(A, as, t)[i].d * dw * (float)vaddvq_s32(sumi[t]);
  }
  for (int t = 0; t < T; ++t) y[t * ys] = acc[t];
}

// value = d * (sc & 15) * u - dmin * (sc >> 4), u = 2 bits
template <int FT>
void dot_q2_k(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const block_q2_K* b = (const block_q2_K*)w;
  const uint8x16_t m3 = vdupq_n_u8(3);
  float acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = 0.f;
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const uint8_t* sc = b[i].scales;
    int32x4_t sumi[kMaxT];
    for (int t = 0; t < T; ++t) sumi[t] = vdupq_n_s32(0);
    for (int c = 0; c < 2; ++c) {
      uint8x16_t q0 = vld1q_u8(b[i].qs + 32 * c), q1 = vld1q_u8(b[i].qs + 32 * c + 16);
      for (int j = 0; j < 4; ++j) {
        const int s = 8 * c + 2 * j;
        ACC16(vreinterpretq_s8_u8(vandq_u8(q0, m3)), sc[s] & 0xF, 128 * c + 32 * j)
        ACC16(vreinterpretq_s8_u8(vandq_u8(q1, m3)), sc[s + 1] & 0xF, 128 * c + 32 * j + 16)
        q0 = vshrq_n_u8(q0, 2);
        q1 = vshrq_n_u8(q1, 2);
      }
    }
    const float dw = h2f(b[i].d), dminw = h2f(b[i].dmin);
    for (int t = 0; t < T; ++t) {
      const act_q8_K& a = actK(A, as, t)[i];
      int msum = 0;
      for (int g = 0; g < 16; ++g) msum += (sc[g] >> 4) * a.bsums[g];
      acc[t] += a.d * (dw * (float)vaddvq_s32(sumi[t]) - dminw * (float)msum);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = acc[t];
}

#undef ACC16
#undef ACC32

#define DOT_PAIR(fn) DotSet{{&fn<1>, &fn<2>, &fn<4>, &fn<8>}}

DotSet dot_for(int64_t type) {
  switch (type) {
    case T_F32: return DOT_PAIR(dot_f32);
    case T_F16: return DOT_PAIR(dot_f16);
    case T_BF16: return DOT_PAIR(dot_bf16);
    case T_Q4_0: return DOT_PAIR(dot_q4_0);
    case T_Q4_1: return DOT_PAIR(dot_q4_1);
    case T_Q5_0: return DOT_PAIR(dot_q5_0);
    case T_Q5_1: return DOT_PAIR(dot_q5_1);
    case T_Q8_0: return DOT_PAIR(dot_q8_0);
    case T_Q2_K: return DOT_PAIR(dot_q2_k);
    case T_Q3_K: return DOT_PAIR(dot_q3_k);
    case T_Q4_K: return DOT_PAIR(dot_q4_k);
    case T_Q5_K: return DOT_PAIR(dot_q5_k);
    case T_Q6_K: return DOT_PAIR(dot_q6_k);
    case T_MXFP4: return DOT_PAIR(dot_mxfp4);
  }
  return DotSet{{nullptr, nullptr, nullptr, nullptr}};
}
#undef DOT_PAIR

}  // namespace LLMLENS_NEON_KERNELS
}  // namespace

#endif  // LLMLENS_NEON_KERNELS
