// GGUF block layouts, type table, portable (scalar) dequantizers and the activation
// quantization shared by every CPU architecture's kernels. No torch here: the standalone
// kernel tests (tests/kernels/) compile this header with a plain C++ compiler.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace {


constexpr int QK = 32;     // values per legacy block (Q4_0 .. Q8_0)
constexpr int QK_K = 256;  // values per k-quant super-block

// ggml type ids (gguf.GGMLQuantizationType)
enum : int64_t {
  T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
  T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_BF16 = 30, T_MXFP4 = 39,
};

// -- block layouts (ggml-common.h) ---------------------------------------------------------
#pragma pack(push, 1)
struct block_q4_0 { uint16_t d; uint8_t qs[16]; };
struct block_q4_1 { uint16_t d, m; uint8_t qs[16]; };
struct block_q5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; };
struct block_q5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; };
struct block_q8_0 { uint16_t d; int8_t qs[32]; };
struct block_q2_K { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; };
struct block_q3_K { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; };
struct block_q4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; };
struct block_q5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };
struct block_q6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; };
struct block_mxfp4 { uint8_t e; uint8_t qs[16]; };  // E8M0 exponent, 32 E2M1 codes
#pragma pack(pop)
static_assert(sizeof(block_q4_0) == 18 && sizeof(block_q4_1) == 20, "layout");
static_assert(sizeof(block_q5_0) == 22 && sizeof(block_q5_1) == 24, "layout");
static_assert(sizeof(block_q8_0) == 34 && sizeof(block_q2_K) == 84, "layout");
static_assert(sizeof(block_q3_K) == 110 && sizeof(block_q4_K) == 144, "layout");
static_assert(sizeof(block_q5_K) == 176 && sizeof(block_q6_K) == 210, "layout");
static_assert(sizeof(block_mxfp4) == 17, "layout");

// Quantized activations (ours, not a file format).
struct act_q8_0 { float d; float s; int8_t qs[QK]; };                 // s = d * sum(qs)
struct act_q8_K { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; };  // bsums: per 16

enum ActKind { ACT_F32, ACT_Q8_0, ACT_Q8_K };

struct TypeInfo {
  int64_t type;
  int block;      // values per block
  int bytes;      // bytes per block
  ActKind act;
};

const TypeInfo kTypes[] = {
    {T_F32, 1, 4, ACT_F32},          {T_F16, 1, 2, ACT_F32},          {T_BF16, 1, 2, ACT_F32},
    {T_Q4_0, QK, 18, ACT_Q8_0},      {T_Q4_1, QK, 20, ACT_Q8_0},      {T_Q5_0, QK, 22, ACT_Q8_0},
    {T_Q5_1, QK, 24, ACT_Q8_0},      {T_Q8_0, QK, 34, ACT_Q8_0},      {T_Q2_K, QK_K, 84, ACT_Q8_K},
    {T_Q3_K, QK_K, 110, ACT_Q8_K},   {T_Q4_K, QK_K, 144, ACT_Q8_K},   {T_Q5_K, QK_K, 176, ACT_Q8_K},
    {T_Q6_K, QK_K, 210, ACT_Q8_K},   {T_MXFP4, QK, 17, ACT_Q8_0},
};

// nullptr for a type the kernels do not handle
inline const TypeInfo* find_type(int64_t type) {
  for (const auto& t : kTypes)
    if (t.type == type) return &t;
  return nullptr;
}

// IEEE half -> float, exact on every path (so all of them agree bit for bit with numpy).
inline float h2f(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#elif defined(__aarch64__) && !defined(_MSC_VER)
  __fp16 f;
  std::memcpy(&f, &h, 2);
  return (float)f;
#else
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal half: normalise
    int e = -1;
    uint32_t m = man;
    do { ++e; m <<= 1; } while (!(m & 0x400));
    bits = sign | ((uint32_t)(112 - e) << 23) | ((m & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}
// MXFP4: E2M1 values doubled (ggml's kvalues_mxfp4), and the E8M0 scale halved to match:
// 2^(e - 128) as float32 bits, subnormal for e < 2 (ggml_e8m0_to_fp32_half)
alignas(16) const int8_t kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
inline float e8m0_half(uint8_t e) {
  const uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline float bf2f(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// -- dequantization (one row of n values), mirrors ggml's dequantize_row_* ------------------
// Same float operations as gguf-py, so results are bit-identical to gguf.quants.dequantize.

// __restrict: the output never aliases the blocks, which lets the compiler vectorize the loops.
inline bool deq_row_portable(int64_t type, const uint8_t* __restrict src, float* __restrict y, int64_t n) {
  switch (type) {
    case T_F32: std::memcpy(y, src, n * 4); return true;
    case T_F16: {
      const uint16_t* s = (const uint16_t*)src;
      for (int64_t i = 0; i < n; ++i) y[i] = h2f(s[i]);
      return true;
    }
    case T_BF16: {
      const uint16_t* s = (const uint16_t*)src;
      for (int64_t i = 0; i < n; ++i) y[i] = bf2f(s[i]);
      return true;
    }
    case T_Q4_0: {
      const block_q4_0* b = (const block_q4_0*)src;
      for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < 16; ++j) {
          y[j] = ((b[i].qs[j] & 0xF) - 8) * d;
          y[j + 16] = ((b[i].qs[j] >> 4) - 8) * d;
        }
      }
      return true;
    }
    case T_Q4_1: {
      const block_q4_1* b = (const block_q4_1*)src;
      for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        for (int j = 0; j < 16; ++j) {
          y[j] = (b[i].qs[j] & 0xF) * d + m;
          y[j + 16] = (b[i].qs[j] >> 4) * d + m;
        }
      }
      return true;
    }
    case T_Q5_0: {
      const block_q5_0* b = (const block_q5_0*)src;
      for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = h2f(b[i].d);
        uint32_t qh;
        std::memcpy(&qh, b[i].qh, 4);
        for (int j = 0; j < 16; ++j) {
          const int xh0 = ((qh >> j) << 4) & 0x10, xh1 = (qh >> (j + 12)) & 0x10;
          y[j] = (((b[i].qs[j] & 0xF) | xh0) - 16) * d;
          y[j + 16] = (((b[i].qs[j] >> 4) | xh1) - 16) * d;
        }
      }
      return true;
    }
    case T_Q5_1: {
      const block_q5_1* b = (const block_q5_1*)src;
      for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        uint32_t qh;
        std::memcpy(&qh, b[i].qh, 4);
        for (int j = 0; j < 16; ++j) {
          const int xh0 = ((qh >> j) << 4) & 0x10, xh1 = (qh >> (j + 12)) & 0x10;
          y[j] = ((b[i].qs[j] & 0xF) | xh0) * d + m;
          y[j + 16] = ((b[i].qs[j] >> 4) | xh1) * d + m;
        }
      }
      return true;
    }
    case T_Q8_0: {
      const block_q8_0* b = (const block_q8_0*)src;
      for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < QK; ++j) y[j] = b[i].qs[j] * d;
      }
      return true;
    }
    case T_Q2_K: {
      const block_q2_K* b = (const block_q2_K*)src;
      for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        const uint8_t* q = b[i].qs;
        int is = 0;
        for (int c = 0; c < QK_K; c += 128) {
          for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; ++half) {
              const uint8_t sc = b[i].scales[is++];
              const float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
              for (int l = 0; l < 16; ++l) *y++ = dl * ((q[l + 16 * half] >> shift) & 3) - ml;
            }
          }
          q += 32;
        }
      }
      return true;
    }
    case T_Q3_K: {
      const block_q3_K* b = (const block_q3_K*)src;
      for (int64_t i = 0; i < n / QK_K; ++i) {
        int8_t scales[16];
        {
          uint32_t aux[4];
          std::memcpy(aux, b[i].scales, 12);
          const uint32_t tmp = aux[2], k1 = 0x03030303, k2 = 0x0f0f0f0f;
          aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
          aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
          aux[0] = (aux[0] & k2) | (((tmp >> 0) & k1) << 4);
          aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
          std::memcpy(scales, aux, 16);
        }
        const float d = h2f(b[i].d);
        const uint8_t* q = b[i].qs;
        const uint8_t* hm = b[i].hmask;
        uint8_t m = 1;
        int is = 0;
        for (int c = 0; c < QK_K; c += 128) {
          for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; ++half) {
              const float dl = d * (scales[is++] - 32);
              for (int l = 16 * half; l < 16 * half + 16; ++l)
                *y++ = dl * ((int8_t)((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
            }
            m <<= 1;
          }
          q += 32;
        }
      }
      return true;
    }
    case T_Q4_K:
    case T_Q5_K: {
      const bool five = type == T_Q5_K;
      const int bs = five ? 176 : 144;
      for (int64_t i = 0; i < n / QK_K; ++i) {
        const uint8_t* blk = src + i * bs;
        const float d = h2f(*(const uint16_t*)blk), dmin = h2f(*(const uint16_t*)(blk + 2));
        const uint8_t* sc = blk + 4;
        const uint8_t* qh = blk + 16;
        const uint8_t* q = blk + (five ? 48 : 16);
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < 8; j += 2) {
          int s[2], mm[2];
          for (int k = 0; k < 2; ++k) {
            const int jj = j + k;
            if (jj < 4) {
              s[k] = sc[jj] & 63;
              mm[k] = sc[jj + 4] & 63;
            } else {
              s[k] = (sc[jj + 4] & 0xF) | ((sc[jj - 4] >> 6) << 4);
              mm[k] = (sc[jj + 4] >> 4) | ((sc[jj] >> 6) << 4);
            }
          }
          const float d1 = d * s[0], m1 = dmin * mm[0], d2 = d * s[1], m2 = dmin * mm[1];
          for (int l = 0; l < 32; ++l) y[l] = d1 * ((q[l] & 0xF) + (five && (qh[l] & u1) ? 16 : 0)) - m1;
          for (int l = 0; l < 32; ++l) y[l + 32] = d2 * ((q[l] >> 4) + (five && (qh[l] & u2) ? 16 : 0)) - m2;
          y += 64;
          q += 32;
          u1 <<= 2;
          u2 <<= 2;
        }
      }
      return true;
    }
    case T_Q6_K: {
      const block_q6_K* b = (const block_q6_K*)src;
      for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = h2f(b[i].d);
        const uint8_t* ql = b[i].ql;
        const uint8_t* qh = b[i].qh;
        const int8_t* sc = b[i].scales;
        for (int c = 0; c < 2; ++c, y += 128, ql += 64, qh += 32, sc += 8) {
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = (int)((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
            const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * sc[is] * q1;
            y[l + 32] = d * sc[is + 2] * q2;
            y[l + 64] = d * sc[is + 4] * q3;
            y[l + 96] = d * sc[is + 6] * q4;
          }
        }
      }
      return true;
    }
    case T_MXFP4: {
      const block_mxfp4* b = (const block_mxfp4*)src;
      for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = e8m0_half(b[i].e);
        for (int j = 0; j < QK / 2; ++j) {
          y[j] = d * (float)kvalues_mxfp4[b[i].qs[j] & 0xF];
          y[j + QK / 2] = d * (float)kvalues_mxfp4[b[i].qs[j] >> 4];
        }
      }
      return true;
    }
  }
  return false;
}

// -- activation quantization ----------------------------------------------------------------
// Symmetric 8-bit per block: d = amax / 127, q = round_half_even(x * (127 / amax)).
// Plain scalar float ops, so tests can reproduce the exact same q and d with numpy.

void quantize_q8_0(const float* x, act_q8_0* a, int64_t n) {
  for (int64_t i = 0; i < n / QK; ++i, x += QK) {
    float amax = 0.f;
    for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float id = amax > 0.f ? 127.f / amax : 0.f;
    int sum = 0;
    for (int j = 0; j < QK; ++j) {
      const int q = (int)std::nearbyint(x[j] * id);
      a[i].qs[j] = (int8_t)std::max(-127, std::min(127, q));
      sum += a[i].qs[j];
    }
    a[i].d = amax / 127.f;
    a[i].s = a[i].d * (float)sum;
  }
}

void quantize_q8_K(const float* x, act_q8_K* a, int64_t n) {
  for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
    float amax = 0.f;
    for (int j = 0; j < QK_K; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float id = amax > 0.f ? 127.f / amax : 0.f;
    for (int j = 0; j < QK_K; ++j) {
      const int q = (int)std::nearbyint(x[j] * id);
      a[i].qs[j] = (int8_t)std::max(-127, std::min(127, q));
    }
    for (int g = 0; g < QK_K / 16; ++g) {
      int s = 0;
      for (int j = 0; j < 16; ++j) s += a[i].qs[16 * g + j];
      a[i].bsums[g] = (int16_t)s;
    }
    a[i].d = amax / 127.f;
  }
}

}  // namespace
