// Small per-layer ops of a decode step, fused: RMS norm and single-query attention over the
// KV cache. In a decode step each of these is a handful of PyTorch ops on vectors of a few
// hundred values, so dispatch (~5-20 us an op) costs more than the arithmetic; and the cache
// is read in its stored precision (float16, as llama.cpp keeps it) without first making a
// float32 copy of every key. Portable C++: AVX2/F16C intrinsics where the build has them,
// loops the compiler vectorises elsewhere (NEON). Included by qgemv.cpp after blocks.h and the
// architecture's kernels (x86_avx2.h gives hsum_float_8).

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define LLMLENS_LAYER_AVX2 1
#else
#define LLMLENS_LAYER_AVX2 0
#endif

namespace layer_ops {

// y = x / sqrt(mean(x^2) + eps) * w for one row of n values (float32 sums, as torch's rms_norm).
inline void rms_norm_row(const float* x, const float* w, float* y, int64_t n, float eps) {
  float ss = 0.f;
  int64_t i = 0;
#if LLMLENS_LAYER_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  ss = hsum_float_8(acc);
#endif
  for (; i < n; ++i) ss += x[i] * x[i];
  const float r = 1.f / std::sqrt(ss / (float)n + eps);
  for (int64_t j = 0; j < n; ++j) y[j] = x[j] * r * w[j];
}

// One position of one head: o[i] = x[i] c[i] + x[partner(i)] s[i] for i < r (partner i + r/2 mod r
// in NEOX mode, i ^ 1 for adjacent pairs), x[i] for r <= i < D; x is `sd` floats apart.
inline void rope_row(const float* x, int64_t sd, const float* c, const float* s, int64_t r,
                     int64_t D, bool neox, float* o) {
  const int64_t half = r / 2;
  for (int64_t i = 0; i < r; ++i) {
    const int64_t p = neox ? (i + half) % r : (i ^ 1);
    const float prod = x[i * sd] * c[i], other = x[p * sd] * s[i];
    o[i] = prod + other;
  }
  for (int64_t i = r; i < D; ++i) o[i] = x[i * sd];
}

// src row of n values (float16 bits or float32) -> float32 dst
inline void load_row(const void* src, bool f16, int64_t n, float* dst) {
  if (!f16) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  const uint16_t* h = (const uint16_t*)src;
  int64_t i = 0;
#if LLMLENS_LAYER_AVX2
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + i))));
#endif
  for (; i < n; ++i) dst[i] = h2f(h[i]);
}

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
  int64_t i = 0;
#if LLMLENS_LAYER_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  s = hsum_float_8(_mm256_add_ps(acc0, acc1));
#endif
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += a * x over n values
inline void axpy(float a, const float* x, float* y, int64_t n) {
  int64_t i = 0;
#if LLMLENS_LAYER_AVX2
  const __m256 av = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
  for (; i < n; ++i) y[i] += a * x[i];
}

// One strided view of cached keys or values: row s of head h starts at
// base + (h * head_stride + s * row_stride) elements.
struct CacheView {
  const uint8_t* base;
  bool f16;
  int64_t head_stride, row_stride, width;
  const void* row(int64_t h, int64_t s) const {
    return base + (h * head_stride + s * row_stride) * (f16 ? 2 : 4);
  }
};

#if LLMLENS_LAYER_AVX2
// 8 values of a cached row from element offset d, as float32
inline __m256 load8(const void* row, bool f16, int64_t d) {
  return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)row + d)))
             : _mm256_loadu_ps((const float*)row + d);
}

// exp(x) for 8 floats (Cephes' expf: range reduction by ln 2, degree-5 polynomial, ~1 ulp);
// scores minus their max are <= 0, so only the underflow end needs clamping.
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// Software prefetch of one cached row: the cache is cold in a decode step (a whole model's
// weights were read since this layer's keys), and the hardware prefetchers alone read it at
// 2-3 GB/s a core here (measured on 256-wide float16 rows).
inline void prefetch_row(const void* row, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch((const char*)row + o, _MM_HINT_T0);
}

// sc[g * ns + j] = scale * q_g . k_j for GN query heads (q rows D apart) and keys [s0, s0 + n):
// each key row is loaded once for all heads.
template <int GN>
void scores_avx2(const float* q, int64_t D, const CacheView& K, int64_t h, int64_t s0, int64_t n,
                 float scale, float* sc, int64_t ns) {
  const int64_t row_bytes = D * (K.f16 ? 2 : 4);
  constexpr int64_t kAhead = 4;  // rows
  for (int64_t j = 0; j < n; ++j) {
    if (j + kAhead < n) prefetch_row(K.row(h, s0 + j + kAhead), row_bytes);
    const void* kr = K.row(h, s0 + j);
    __m256 acc[GN];
    for (int g = 0; g < GN; ++g) acc[g] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
      const __m256 kv = load8(kr, K.f16, d);
      for (int g = 0; g < GN; ++g) acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * D + d), kv, acc[g]);
    }
    for (int g = 0; g < GN; ++g) sc[g * ns + j] = hsum_float_8(acc[g]) * scale;
  }
}

// acc[g * Dv + d] += sum_j p[g * ns + j] * v_j[d] for GN heads over keys [s0, s0 + n), in
// blocks of keys small enough to stay in L1 while every 8-value column of them is summed.
template <int GN>
void pv_avx2(const float* p, int64_t ns, const CacheView& V, int64_t h, int64_t s0, int64_t n, float* acc) {
  const int64_t Dv = V.width, row_bytes = Dv * (V.f16 ? 2 : 4);
  constexpr int64_t kBlock = 32;
  for (int64_t j = 0; j < std::min(n, kBlock); ++j) prefetch_row(V.row(h, s0 + j), row_bytes);
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    for (int64_t j = b1; j < std::min(n, b1 + kBlock); ++j) prefetch_row(V.row(h, s0 + j), row_bytes);
    for (int64_t d = 0; d < Dv; d += 8) {
      __m256 a[GN];
      for (int g = 0; g < GN; ++g) a[g] = _mm256_loadu_ps(acc + g * Dv + d);
      for (int64_t j = b0; j < b1; ++j) {
        const __m256 vv = load8(V.row(h, s0 + j), V.f16, d);
        for (int g = 0; g < GN; ++g) a[g] = _mm256_fmadd_ps(_mm256_set1_ps(p[g * ns + j]), vv, a[g]);
      }
      for (int g = 0; g < GN; ++g) _mm256_storeu_ps(acc + g * Dv + d, a[g]);
    }
  }
}

#endif

// Copies the chunk's unnormalised weights exp(score - m) [G, n] into columns [s0, s0 + n) of
// rows `stride` apart: the caller rescales them once every chunk's max and sum are known.
inline void keep_weights(const float* sc, int64_t G, int64_t n, float* probs, int64_t stride, int64_t s0) {
  if (probs == nullptr) return;
  for (int64_t g = 0; g < G; ++g) std::copy(sc + g * n, sc + (g + 1) * n, probs + g * stride + s0);
}

// Partial softmax attention of the G query heads of kv head h over keys [s0, s1): the running
// max m[g], the sum l[g] of exp(score - m) and acc[g] = sum exp(score - m) v (Dv values each).
// `work` is scratch space (G * (s1 - s0) scores plus staging rows). With `probs`, the weights
// also go to probs[g * probs_stride + s] (see keep_weights), for an inspection recorder.
inline void attend_chunk(const float* q, int64_t G, int64_t D, const CacheView& K, const CacheView& V,
                         int64_t h, int64_t s0, int64_t s1, float scale, float* m, float* l,
                         float* acc, std::vector<float>& work, float* probs = nullptr,
                         int64_t probs_stride = 0) {
  const int64_t n = s1 - s0, Dv = V.width;
  work.resize((size_t)(G * n + D + Dv));
  float* sc = work.data();  // [G, n]
  std::fill(acc, acc + G * Dv, 0.f);
#if LLMLENS_LAYER_AVX2
  if (D % 8 == 0 && Dv % 8 == 0) {
    // heads in groups of up to 8, whose accumulators stay in registers
    for (int64_t g0 = 0; g0 < G; g0 += 8) {
      const int64_t gn = std::min<int64_t>(8, G - g0);
      const float* qg = q + g0 * D;
      float* s = sc + g0 * n;
      switch (gn) {
#define LLMLENS_GN(N) case N: scores_avx2<N>(qg, D, K, h, s0, n, scale, s, n); break;
        LLMLENS_GN(1) LLMLENS_GN(2) LLMLENS_GN(3) LLMLENS_GN(4)
        LLMLENS_GN(5) LLMLENS_GN(6) LLMLENS_GN(7) LLMLENS_GN(8)
#undef LLMLENS_GN
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      float* s = sc + g * n;
      __m256 mx8 = _mm256_set1_ps(-INFINITY);
      int64_t j = 0;
      for (; j + 8 <= n; j += 8) mx8 = _mm256_max_ps(mx8, _mm256_loadu_ps(s + j));
      float mx = -INFINITY;
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, mx8);
      for (float v : lanes) mx = std::max(mx, v);
      for (int64_t t = j; t < n; ++t) mx = std::max(mx, s[t]);
      const __m256 mv = _mm256_set1_ps(mx);
      __m256 sum8 = _mm256_setzero_ps();
      for (j = 0; j + 8 <= n; j += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
        _mm256_storeu_ps(s + j, e);
        sum8 = _mm256_add_ps(sum8, e);
      }
      float sum = hsum_float_8(sum8);
      for (; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
      m[g] = mx;
      l[g] = sum;
    }
    keep_weights(sc, G, n, probs, probs_stride, s0);
    for (int64_t g0 = 0; g0 < G; g0 += 8) {
      const int64_t gn = std::min<int64_t>(8, G - g0);
      const float* p = sc + g0 * n;
      float* a = acc + g0 * Dv;
      switch (gn) {
#define LLMLENS_GN(N) case N: pv_avx2<N>(p, n, V, h, s0, n, a); break;
        LLMLENS_GN(1) LLMLENS_GN(2) LLMLENS_GN(3) LLMLENS_GN(4)
        LLMLENS_GN(5) LLMLENS_GN(6) LLMLENS_GN(7) LLMLENS_GN(8)
#undef LLMLENS_GN
      }
    }
    return;
  }
#endif
  float* row = sc + G * n;  // staging of one cached row as float32
  float* vrow = row + D;
  for (int64_t j = 0; j < n; ++j) {
    const float* kr = (const float*)K.row(h, s0 + j);
    if (K.f16) load_row(kr, true, D, row), kr = row;
    for (int64_t g = 0; g < G; ++g) sc[g * n + j] = dot(q + g * D, kr, D) * scale;
  }
  for (int64_t g = 0; g < G; ++g) {
    float* s = sc + g * n;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[j]);
    float sum = 0.f;
    for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
    m[g] = mx;
    l[g] = sum;
  }
  keep_weights(sc, G, n, probs, probs_stride, s0);
  for (int64_t j = 0; j < n; ++j) {
    const float* vr = (const float*)V.row(h, s0 + j);
    if (V.f16) load_row(vr, true, Dv, vrow), vr = vrow;
    for (int64_t g = 0; g < G; ++g) axpy(sc[g * n + j], vr, acc + g * Dv, Dv);
  }
}

}  // namespace layer_ops
