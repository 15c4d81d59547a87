// Fused dequantize-and-multiply CPU kernels over GGUF's packed blocks (AVX2 + FMA + F16C).
//
// y[t, r] = sum_i W[r, i] * x[t, i] for a weight W kept in ggml's block layout, as llama.cpp's
// ggml-cpu does it: each activation row is first quantized to 8 bits per block (Q8_0-like
// blocks of 32 for the legacy types and MXFP4, Q8_K blocks of 256 for the k-quants), then every weight
// block is unpacked to bytes in registers and multiplied with integer dot products
// (_mm256_maddubs_epi16 / _mm256_madd_epi16); only the block scales are floats. Float weight
// types (F32, F16, BF16) are multiplied in f32 with FMA, without activation quantization.
//
// Numerics: rounding x to 8 bits moves each activation by at most amax_block / 254; the
// integer sums are exact and only the per-block scale products are rounded in f32. So the
// result is the exact product of W with the rounded x up to f32 rounding (what the tests
// check); against W x the outputs' relative L2 error is ~0.5% (Gemma 3 270M weights,
// Gaussian x), as with llama.cpp.
//
// Also: dequantize rows to f32 (for prefill, where a chunk of rows is decoded once and
// multiplied with MKL GEMM) and get_rows (embedding lookup of a few rows).
//
// Threads: OpenMP over output rows (the same libgomp PyTorch uses, so the pool is shared).
// The GIL is released while a kernel runs. Compiled with -mavx2 -mfma -mf16c; the Python
// loader only loads this library on CPUs that have those (see engine/kernels/__init__.py).

#include <torch/extension.h>
#include <torch/version.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

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

const TypeInfo& type_info(int64_t type) {
  for (const auto& t : kTypes)
    if (t.type == type) return t;
  TORCH_CHECK(false, "qgemv: unsupported ggml type ", type);
}

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
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

void deq_q4_0_avx2(const uint8_t* src, float* y, int64_t n);
void deq_q6_k_avx2(const uint8_t* src, float* y, int64_t n);

// __restrict: the output never aliases the blocks, which lets the compiler vectorize the loops.
void deq_row(int64_t type, const uint8_t* __restrict src, float* __restrict y, int64_t n) {
  switch (type) {
    case T_F32: std::memcpy(y, src, n * 4); return;
    case T_F16: {
      const uint16_t* s = (const uint16_t*)src;
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(s + i))));
      for (; i < n; ++i) y[i] = h2f(s[i]);
      return;
    }
    case T_BF16: {
      const uint16_t* s = (const uint16_t*)src;
      for (int64_t i = 0; i < n; ++i) y[i] = bf2f(s[i]);
      return;
    }
    case T_Q4_0: deq_q4_0_avx2(src, y, n); return;
    case T_Q4_1: {
      const block_q4_1* b = (const block_q4_1*)src;
      for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        for (int j = 0; j < 16; ++j) {
          y[j] = (b[i].qs[j] & 0xF) * d + m;
          y[j + 16] = (b[i].qs[j] >> 4) * d + m;
        }
      }
      return;
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
      return;
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
      return;
    }
    case T_Q8_0: {
      const block_q8_0* b = (const block_q8_0*)src;
      for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < QK; ++j) y[j] = b[i].qs[j] * d;
      }
      return;
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
      return;
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
      return;
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
      return;
    }
    case T_Q6_K: deq_q6_k_avx2(src, y, n); return;
    case T_MXFP4: {
      const block_mxfp4* b = (const block_mxfp4*)src;
      for (int64_t i = 0; i < n / QK; ++i, y += QK) {
        const float d = e8m0_half(b[i].e);
        for (int j = 0; j < QK / 2; ++j) {
          y[j] = d * (float)kvalues_mxfp4[b[i].qs[j] & 0xF];
          y[j + QK / 2] = d * (float)kvalues_mxfp4[b[i].qs[j] >> 4];
        }
      }
      return;
    }
  }
  TORCH_CHECK(false, "qgemv: no dequantizer for ggml type ", type);
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

// unsigned bytes u . signed bytes s -> 8 int32 partial sums
inline __m256i dot_us8(const __m256i u, const __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// Two int16 scales for the two 16-value halves of a 32-byte group, as 16 x int16 lanes.
inline __m256i scales_2x16(int lo, int hi) {
  return _mm256_set_m128i(_mm_set1_epi16((short)hi), _mm_set1_epi16((short)lo));
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

void deq_q6_k_avx2(const uint8_t* src, float* y, int64_t n) {
  const block_q6_K* b = (const block_q6_K*)src;
  const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3), m32 = _mm256_set1_epi8(32);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const float d = h2f(b[i].d);
    const int8_t* sc = b[i].scales;
    for (int c = 0; c < 2; ++c, y += 128) {
      const __m256i hb = _mm256_loadu_si256((const __m256i*)(b[i].qh + 32 * c));
      const __m256i b1 = _mm256_loadu_si256((const __m256i*)(b[i].ql + 64 * c));
      const __m256i b2 = _mm256_loadu_si256((const __m256i*)(b[i].ql + 64 * c + 32));
      const __m256i u[4] = {
          _mm256_or_si256(_mm256_and_si256(b1, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4)),
          _mm256_or_si256(_mm256_and_si256(b2, m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4)),
      };
      for (int k = 0; k < 4; ++k) {
        const int s = 8 * c + 2 * k;
        store_i8x32(_mm256_sub_epi8(u[k], m32), d * sc[s], d * sc[s + 1], y + 32 * k);
      }
    }
  }
}

// -- dot products: one weight row . T activation rows --------------------------------------
// Each weight block is unpacked once and multiplied with the same block of every token, so
// T tokens cost less than T single-token calls. Template FT > 0 fixes T at compile time
// (accumulators stay in registers); FT = 0 would take T at run time.
// `A` holds T activation rows `as` bytes apart; results go to y[t * ys].

constexpr int kMaxT = 8;  // tokens per kernel call; gemv loops over groups of this many

#define DOT_ARGS const uint8_t *w, const uint8_t *A, int64_t as, int T_, int64_t n, float *y, int64_t ys

template <int FT>
void dot_f32(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const float* v = (const float*)w;
  __m256 acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 wv = _mm256_loadu_ps(v + i);
    for (int t = 0; t < T; ++t)
      acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps((const float*)(A + t * as) + i), acc[t]);
  }
  for (int t = 0; t < T; ++t) {
    const float* x = (const float*)(A + t * as);
    float s = hsum_float_8(acc[t]);
    for (int64_t j = i; j < n; ++j) s += v[j] * x[j];
    y[t * ys] = s;
  }
}

template <int FT>
void dot_f16(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const uint16_t* v = (const uint16_t*)w;
  __m256 acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(v + i)));
    for (int t = 0; t < T; ++t)
      acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps((const float*)(A + t * as) + i), acc[t]);
  }
  for (int t = 0; t < T; ++t) {
    const float* x = (const float*)(A + t * as);
    float s = hsum_float_8(acc[t]);
    for (int64_t j = i; j < n; ++j) s += h2f(v[j]) * x[j];
    y[t * ys] = s;
  }
}

template <int FT>
void dot_bf16(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const uint16_t* v = (const uint16_t*)w;
  __m256 acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(v + i)));
    const __m256 wv = _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
    for (int t = 0; t < T; ++t)
      acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps((const float*)(A + t * as) + i), acc[t]);
  }
  for (int t = 0; t < T; ++t) {
    const float* x = (const float*)(A + t * as);
    float s = hsum_float_8(acc[t]);
    for (int64_t j = i; j < n; ++j) s += bf2f(v[j]) * x[j];
    y[t * ys] = s;
  }
}

inline const act_q8_0* act0(const uint8_t* A, int64_t as, int t) { return (const act_q8_0*)(A + t * as); }
inline const act_q8_K* actK(const uint8_t* A, int64_t as, int t) { return (const act_q8_K*)(A + t * as); }

// Legacy types with unsigned codes u: w = dw * (u - OFF) + m.
//   w . x = dw * da * (u . q) - OFF * dw * s + m * s   (s = da * sum(q), from the activation block)
// Decode gives (dw, m, u) for block i.
template <int FT, int OFF, bool HAS_MIN, class Decode>
inline void dot_legacy(const uint8_t* A, int64_t as, int T_, int64_t n, float* y, int64_t ys, Decode decode) {
  const int T = FT ? FT : T_;
  __m256 acc[kMaxT];
  float off[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps(), off[t] = 0.f;
  for (int64_t i = 0; i < n / QK; ++i) {
    float dw, m;
    const __m256i u = decode(i, dw, m);
    for (int t = 0; t < T; ++t) {
      const act_q8_0& a = act0(A, as, t)[i];
      const __m256i q = _mm256_loadu_si256((const __m256i*)a.qs);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a.d), _mm256_cvtepi32_ps(dot_us8(u, q)), acc[t]);
      off[t] += (HAS_MIN ? m : -(float)OFF * dw) * a.s;
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = hsum_float_8(acc[t]) + off[t];
}

template <int FT>
void dot_q4_0(DOT_ARGS) {
  const block_q4_0* b = (const block_q4_0*)w;
  dot_legacy<FT, 8, false>(A, as, T_, n, y, ys, [b](int64_t i, float& dw, float&) {
    dw = h2f(b[i].d);
    return bytes_from_nibbles_32(b[i].qs);
  });
}

template <int FT>
void dot_q4_1(DOT_ARGS) {
  const block_q4_1* b = (const block_q4_1*)w;
  dot_legacy<FT, 0, true>(A, as, T_, n, y, ys, [b](int64_t i, float& dw, float& m) {
    dw = h2f(b[i].d);
    m = h2f(b[i].m);
    return bytes_from_nibbles_32(b[i].qs);
  });
}

template <int FT>
void dot_q5_0(DOT_ARGS) {
  const block_q5_0* b = (const block_q5_0*)w;
  dot_legacy<FT, 16, false>(A, as, T_, n, y, ys, [b](int64_t i, float& dw, float&) {
    dw = h2f(b[i].d);
    return _mm256_or_si256(bytes_from_nibbles_32(b[i].qs),
                           _mm256_and_si256(bytes_from_bits_32(b[i].qh), _mm256_set1_epi8(0x10)));
  });
}

template <int FT>
void dot_q5_1(DOT_ARGS) {
  const block_q5_1* b = (const block_q5_1*)w;
  dot_legacy<FT, 0, true>(A, as, T_, n, y, ys, [b](int64_t i, float& dw, float& m) {
    dw = h2f(b[i].d);
    m = h2f(b[i].m);
    return _mm256_or_si256(bytes_from_nibbles_32(b[i].qs),
                           _mm256_and_si256(bytes_from_bits_32(b[i].qh), _mm256_set1_epi8(0x10)));
  });
}

// Q8_0 weights are signed: |w| . sign(q, w), since maddubs wants one unsigned operand.
template <int FT>
void dot_q8_0(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const block_q8_0* b = (const block_q8_0*)w;
  const int64_t nb = n / QK;
  if (T == 1) {  // two accumulators: one add chain would bound a cached row
    const act_q8_0* a = act0(A, as, 0);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
      for (int k = 0; k < 2; ++k) {
        const __m256i x = _mm256_loadu_si256((const __m256i*)b[i + k].qs);
        const __m256i q = _mm256_loadu_si256((const __m256i*)a[i + k].qs);
        const __m256 p = _mm256_cvtepi32_ps(dot_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(q, x)));
        if (k == 0) acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b[i].d) * a[i].d), p, acc0);
        else acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b[i + 1].d) * a[i + 1].d), p, acc1);
      }
    }
    for (; i < nb; ++i) {
      const __m256i x = _mm256_loadu_si256((const __m256i*)b[i].qs);
      const __m256i q = _mm256_loadu_si256((const __m256i*)a[i].qs);
      const __m256 p = _mm256_cvtepi32_ps(dot_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(q, x)));
      acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b[i].d) * a[i].d), p, acc0);
    }
    y[0] = hsum_float_8(_mm256_add_ps(acc0, acc1));
    return;
  }
  __m256 acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const float dw = h2f(b[i].d);
    const __m256i x = _mm256_loadu_si256((const __m256i*)b[i].qs);
    const __m256i ax = _mm256_sign_epi8(x, x);
    for (int t = 0; t < T; ++t) {
      const act_q8_0& a = act0(A, as, t)[i];
      const __m256i q = _mm256_loadu_si256((const __m256i*)a.qs);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a.d), _mm256_cvtepi32_ps(dot_us8(ax, _mm256_sign_epi8(q, x))), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = hsum_float_8(acc[t]);
}

// MXFP4 weights: the 4-bit codes become their signed values through a byte shuffle, then
// as Q8_0: |w| . sign(q, w), scaled by the block's E8M0 scale times the activation's.
template <int FT>
void dot_mxfp4(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const block_mxfp4* b = (const block_mxfp4*)w;
  const __m256i lut = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i*)kvalues_mxfp4));
  __m256 acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / QK; ++i) {
    const float dw = e8m0_half(b[i].e);
    const __m256i x = _mm256_shuffle_epi8(lut, bytes_from_nibbles_32(b[i].qs));
    const __m256i ax = _mm256_sign_epi8(x, x);
    for (int t = 0; t < T; ++t) {
      const act_q8_0& a = act0(A, as, t)[i];
      const __m256i q = _mm256_loadu_si256((const __m256i*)a.qs);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a.d), _mm256_cvtepi32_ps(dot_us8(ax, _mm256_sign_epi8(q, x))), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = hsum_float_8(acc[t]);
}

// K-quants against Q8_K. Each 32-value group: unsigned codes u (<= 63) times the int16 scales
// of its two 16-value halves; offsets and mins go through the activation's per-16 sums.

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

// sumi[t] += madd(scales, maddubs(u, q8 of token t at byte offset `at` of the super-block))
#define ACC_TOKENS(u, scales, at)                                                            \
  for (int t = 0; t < T; ++t) {                                                              \
    const __m256i q8 = _mm256_loadu_si256((const __m256i*)(actK(A, as, t)[i].qs + (at)));    \
    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16((scales), _mm256_maddubs_epi16((u), q8))); \
  }

template <int FT, bool FIVE>
void dot_q4_5_k(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const int bs = FIVE ? 176 : 144;
  const __m256i m4 = _mm256_set1_epi8(0xF), one = _mm256_set1_epi8(1);
  __m256 acc[kMaxT];
  float acc_m[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps(), acc_m[t] = 0.f;
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const uint8_t* blk = w + i * bs;
    const float dw = h2f(*(const uint16_t*)blk), dminw = h2f(*(const uint16_t*)(blk + 2));
    uint8_t sc[8], mn[8];
    unpack_scales_k4(blk + 4, sc, mn);
    const __m256i hbits = FIVE ? _mm256_loadu_si256((const __m256i*)(blk + 16)) : _mm256_setzero_si256();
    const uint8_t* q4 = blk + (FIVE ? 48 : 16);
    __m256i sumi[kMaxT];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      const __m256i bits = _mm256_loadu_si256((const __m256i*)(q4 + 32 * j));
      __m256i ul = _mm256_and_si256(bits, m4);
      __m256i uh = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
      if (FIVE) {  // 5th bit of group 2j is bit 2j of qh, of group 2j+1 bit 2j+1
        ul = _mm256_or_si256(ul, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j), one), 4));
        uh = _mm256_or_si256(uh, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j + 1), one), 4));
      }
      const __m256i sl = _mm256_set1_epi16(sc[2 * j]), sh = _mm256_set1_epi16(sc[2 * j + 1]);
      ACC_TOKENS(ul, sl, 64 * j)
      ACC_TOKENS(uh, sh, 64 * j + 32)
    }
    for (int t = 0; t < T; ++t) {
      const act_q8_K& a = actK(A, as, t)[i];
      int msum = 0;
      for (int j = 0; j < 8; ++j) msum += mn[j] * (a.bsums[2 * j] + a.bsums[2 * j + 1]);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(a.d * dw), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
      acc_m[t] += a.d * dminw * (float)msum;
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = hsum_float_8(acc[t]) - acc_m[t];
}

template <int FT> void dot_q4_k(DOT_ARGS) { dot_q4_5_k<FT, false>(w, A, as, T_, n, y, ys); }
template <int FT> void dot_q5_k(DOT_ARGS) { dot_q4_5_k<FT, true>(w, A, as, T_, n, y, ys); }

// value = d * sc * (u - 32), u = 4 low bits | 2 high bits << 4
template <int FT>
void dot_q6_k(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const block_q6_K* b = (const block_q6_K*)w;
  const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
  float acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = 0.f;
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const uint8_t* ql = b[i].ql;
    const uint8_t* qh = b[i].qh;
    const int8_t* sc = b[i].scales;
    __m256i sumi[kMaxT];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    for (int c = 0; c < 2; ++c) {
      const __m256i hb = _mm256_loadu_si256((const __m256i*)(qh + 32 * c));
      const __m256i b1 = _mm256_loadu_si256((const __m256i*)(ql + 64 * c));
      const __m256i b2 = _mm256_loadu_si256((const __m256i*)(ql + 64 * c + 32));
      const __m256i u[4] = {
          _mm256_or_si256(_mm256_and_si256(b1, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4)),
          _mm256_or_si256(_mm256_and_si256(b2, m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4)),
      };
      for (int k = 0; k < 4; ++k) {
        const int s = 8 * c + 2 * k;
        const __m256i scl = scales_2x16(sc[s], sc[s + 1]);
        ACC_TOKENS(u[k], scl, 128 * c + 32 * k)
      }
    }
    const float dw = h2f(b[i].d);
    for (int t = 0; t < T; ++t) {
      const act_q8_K& a = actK(A, as, t)[i];
      int off = 0;  // the -32 offset, through the per-16 sums of q8
      for (int g = 0; g < 16; ++g) off += sc[g] * a.bsums[g];
      acc[t] += a.d * dw * (float)(hsum_i32_8(sumi[t]) - 32 * off);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = acc[t];
}

// value = d * (s - 32) * (u - 4), u = 2 low bits | hmask bit << 2
template <int FT>
void dot_q3_k(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const block_q3_K* b = (const block_q3_K*)w;
  const __m256i m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
  float acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = 0.f;
  for (int64_t i = 0; i < n / QK_K; ++i) {
    int8_t scales[16];
    unpack_scales_q3(b[i].scales, scales);
    const __m256i hm = _mm256_loadu_si256((const __m256i*)b[i].hmask);
    __m256i sumi[kMaxT];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    for (int c = 0; c < 2; ++c) {
      const __m256i bits = _mm256_loadu_si256((const __m256i*)(b[i].qs + 32 * c));
      for (int j = 0; j < 4; ++j) {
        const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * j), m2);
        const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm, 4 * c + j), one), 2);
        const __m256i u = _mm256_or_si256(lo, hi);
        const int s = 8 * c + 2 * j;
        const __m256i scl = scales_2x16(scales[s] - 32, scales[s + 1] - 32);
        ACC_TOKENS(u, scl, 128 * c + 32 * j)
      }
    }
    const float dw = h2f(b[i].d);
    for (int t = 0; t < T; ++t) {
      const act_q8_K& a = actK(A, as, t)[i];
      int off = 0;
      for (int g = 0; g < 16; ++g) off += (scales[g] - 32) * a.bsums[g];
      acc[t] += a.d * dw * (float)(hsum_i32_8(sumi[t]) - 4 * off);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = acc[t];
}

// value = d * (sc & 15) * u - dmin * (sc >> 4), u = 2 bits
template <int FT>
void dot_q2_k(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const block_q2_K* b = (const block_q2_K*)w;
  const __m256i m2 = _mm256_set1_epi8(3);
  float acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = 0.f;
  for (int64_t i = 0; i < n / QK_K; ++i) {
    __m256i sumi[kMaxT];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    for (int c = 0; c < 2; ++c) {
      const __m256i bits = _mm256_loadu_si256((const __m256i*)(b[i].qs + 32 * c));
      for (int j = 0; j < 4; ++j) {
        const __m256i u = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * j), m2);
        const int s = 8 * c + 2 * j;
        const __m256i scl = scales_2x16(b[i].scales[s] & 0xF, b[i].scales[s + 1] & 0xF);
        ACC_TOKENS(u, scl, 128 * c + 32 * j)
      }
    }
    const float dw = h2f(b[i].d), dminw = h2f(b[i].dmin);
    for (int t = 0; t < T; ++t) {
      const act_q8_K& a = actK(A, as, t)[i];
      int msum = 0;
      for (int g = 0; g < 16; ++g) msum += (b[i].scales[g] >> 4) * a.bsums[g];
      acc[t] += a.d * (dw * (float)hsum_i32_8(sumi[t]) - dminw * (float)msum);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = acc[t];
}

#undef ACC_TOKENS

using DotFn = void (*)(DOT_ARGS);
#undef DOT_ARGS

// Instantiated for 1, 2, 4 and 8 tokens, so that the per-token accumulators live in
// registers; other token counts are split into such groups (7 = 4 + 2 + 1).
struct DotSet {
  DotFn by_log2[4];  // [k]: 2^k tokens
};

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
  TORCH_CHECK(false, "qgemv: unsupported ggml type ", type);
}
#undef DOT_PAIR

int64_t row_bytes(const TypeInfo& ti, int64_t n) {
  TORCH_CHECK(n % ti.block == 0, "qgemv: row length ", n, " is not a multiple of the block size ", ti.block);
  return n / ti.block * ti.bytes;
}

void check_weight(const torch::Tensor& w, const TypeInfo& ti, int64_t n) {
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == torch::kUInt8, "qgemv: weight must be a CPU uint8 tensor");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "qgemv: weight must be contiguous [rows, row_bytes]");
  TORCH_CHECK(w.size(1) == row_bytes(ti, n), "qgemv: weight has ", w.size(1), " bytes per row, expected ",
              row_bytes(ti, n), " for ", n, " values");
}

constexpr int64_t kPrefetchBytes = 1024;

int threads_for(int64_t nthreads, int64_t work_rows, int64_t min_rows) {
  const int64_t cap = std::max<int64_t>(1, work_rows / std::max<int64_t>(1, min_rows));
  return (int)std::max<int64_t>(1, std::min<int64_t>(nthreads, cap));
}

}  // namespace

// y [T, rows] = x [T, n] @ W^T, W = rows of `n` values in ggml type `type`.
torch::Tensor gemv(torch::Tensor w, int64_t type, torch::Tensor x, int64_t nthreads) {
  const TypeInfo& ti = type_info(type);
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2,
              "qgemv: x must be a CPU float32 [T, n] tensor");
  x = x.contiguous();
  const int64_t T = x.size(0), n = x.size(1), rows = w.size(0);
  check_weight(w, ti, n);
  auto y = torch::empty({T, rows}, x.options());
  if (T == 0 || rows == 0) return y;

  // quantize the activations once per call (T rows of n values, tiny next to W)
  int64_t arb;
  switch (ti.act) {
    case ACT_F32: arb = n * 4; break;
    case ACT_Q8_0: arb = n / QK * (int64_t)sizeof(act_q8_0); break;
    default: arb = n / QK_K * (int64_t)sizeof(act_q8_K); break;
  }
  std::vector<uint8_t> act((size_t)(T * arb));
  const float* X = x.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    uint8_t* dst = act.data() + t * arb;
    if (ti.act == ACT_F32) std::memcpy(dst, X + t * n, n * 4);
    else if (ti.act == ACT_Q8_0) quantize_q8_0(X + t * n, (act_q8_0*)dst, n);
    else quantize_q8_K(X + t * n, (act_q8_K*)dst, n);
  }

  const DotSet dot = dot_for(type);
  const uint8_t* W = w.data_ptr<uint8_t>();
  const int64_t rb = w.size(1);
  float* Y = y.data_ptr<float>();
  const uint8_t* A = act.data();
  const int nth = threads_for(nthreads, rows, 16);
  // Software prefetch of the row ~1 KiB ahead: the hardware prefetcher alone leaves a
  // single core at ~60% of its streaming bandwidth on the 178 MB Q8_0 output head.
  const int64_t pf_rows = std::max<int64_t>(1, (kPrefetchBytes + rb - 1) / rb);
  const uint8_t* W_end = W + rows * rb;
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* wr = W + r * rb;
    const uint8_t* pf = wr + pf_rows * rb;
    if (pf + rb <= W_end)
      for (int64_t o = 0; o < rb; o += 64) _mm_prefetch((const char*)pf + o, _MM_HINT_T0);
    for (int64_t t0 = 0; t0 < T;) {
      const int64_t left = T - t0;
      const int k = left >= 8 ? 3 : left >= 4 ? 2 : left >= 2 ? 1 : 0;
      dot.by_log2[k](wr, A + t0 * arb, arb, 1 << k, n, Y + t0 * rows + r, rows);
      t0 += 1 << k;
    }
  }
  return y;
}

// Rows [start, start + count) of W as float32 [count, n].
// `out`, if given, is a contiguous float32 buffer of at least count * n values that is
// reused (a fresh multi-MB tensor costs page faults on every call).
torch::Tensor dequant_rows(torch::Tensor w, int64_t type, int64_t n, int64_t start, int64_t count,
                           int64_t nthreads, c10::optional<torch::Tensor> out) {
  const TypeInfo& ti = type_info(type);
  check_weight(w, ti, n);
  TORCH_CHECK(start >= 0 && count >= 0 && start + count <= w.size(0), "qgemv: rows out of range");
  torch::Tensor y;
  if (out.has_value()) {
    TORCH_CHECK(out->scalar_type() == torch::kFloat32 && out->is_contiguous() && out->numel() >= count * n,
                "qgemv: out must be a contiguous float32 tensor of at least ", count * n, " values");
    y = out->view({-1}).narrow(0, 0, count * n).view({count, n});
  } else {
    y = torch::empty({count, n}, torch::kFloat32);
  }
  const uint8_t* W = w.data_ptr<uint8_t>();
  const int64_t rb = w.size(1);
  float* Y = y.data_ptr<float>();
  const int nth = threads_for(nthreads, count * n, 1 << 16);
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t r = 0; r < count; ++r) deq_row(type, W + (start + r) * rb, Y + r * n, n);
  return y;
}

// Rows ids[i] of W as float32 [len(ids), n] (embedding lookup).
torch::Tensor get_rows(torch::Tensor w, int64_t type, int64_t n, torch::Tensor ids) {
  const TypeInfo& ti = type_info(type);
  check_weight(w, ti, n);
  ids = ids.to(torch::kInt64).contiguous().view({-1});
  const int64_t N = ids.size(0), rows = w.size(0), rb = w.size(1);
  const int64_t* I = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i)
    TORCH_CHECK(I[i] >= 0 && I[i] < rows, "qgemv: row id ", I[i], " out of range [0, ", rows, ")");
  auto y = torch::empty({N, n}, torch::kFloat32);
  const uint8_t* W = w.data_ptr<uint8_t>();
  float* Y = y.data_ptr<float>();
  for (int64_t i = 0; i < N; ++i) deq_row(type, W + I[i] * rb, Y + i * n, n);
  return y;
}

// Activation quantization as the kernels do it, for tests: returns the dequantized values.
torch::Tensor quantize_activations(torch::Tensor x, int64_t type) {
  const TypeInfo& ti = type_info(type);
  x = x.contiguous();
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.dim() == 2, "x must be float32 [T, n]");
  const int64_t T = x.size(0), n = x.size(1);
  TORCH_CHECK(n % ti.block == 0, "row length not a multiple of the block size");
  auto y = x.clone();
  float* Y = y.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    float* row = Y + t * n;
    if (ti.act == ACT_Q8_0) {
      std::vector<act_q8_0> a(n / QK);
      quantize_q8_0(row, a.data(), n);
      for (int64_t i = 0; i < n; ++i) row[i] = a[i / QK].qs[i % QK] * a[i / QK].d;
    } else if (ti.act == ACT_Q8_K) {
      std::vector<act_q8_K> a(n / QK_K);
      quantize_q8_K(row, a.data(), n);
      for (int64_t i = 0; i < n; ++i) row[i] = a[i / QK_K].qs[i % QK_K] * a[i / QK_K].d;
    }
  }
  return y;
}

std::vector<int64_t> supported_types() {
  std::vector<int64_t> out;
  for (const auto& t : kTypes) out.push_back(t.type);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.def("gemv", &gemv, "y [T, rows] = x [T, n] @ W^T for GGUF-packed W",
        py::arg("w"), py::arg("type"), py::arg("x"), py::arg("nthreads"),
        py::call_guard<py::gil_scoped_release>());
  m.def("dequant_rows", &dequant_rows, "rows of W as float32", py::arg("w"), py::arg("type"),
        py::arg("n"), py::arg("start"), py::arg("count"), py::arg("nthreads"),
        py::arg("out") = py::none(), py::call_guard<py::gil_scoped_release>());
  m.def("get_rows", &get_rows, "selected rows of W as float32", py::arg("w"), py::arg("type"),
        py::arg("n"), py::arg("ids"), py::call_guard<py::gil_scoped_release>());
  m.def("quantize_activations", &quantize_activations, "activation rounding of the kernels (tests)",
        py::arg("x"), py::arg("type"));
  m.def("supported_types", &supported_types);
  // What the library was compiled against: the loader refuses a library built for another torch
  // (an upgraded venv) instead of risking a crash on a changed C++ ABI.
  m.attr("torch_version") = std::to_string(TORCH_VERSION_MAJOR) + "." +
                            std::to_string(TORCH_VERSION_MINOR) + "." +
                            std::to_string(TORCH_VERSION_PATCH);
#ifdef _GLIBCXX_USE_CXX11_ABI
  m.attr("cxx11_abi") = static_cast<bool>(_GLIBCXX_USE_CXX11_ABI);
#endif
#ifdef LLMLENS_SOURCE_HASH
#define LLMLENS_STR2(x) #x
#define LLMLENS_STR(x) LLMLENS_STR2(x)
  m.attr("source_hash") = LLMLENS_STR(LLMLENS_SOURCE_HASH);
#endif
}
