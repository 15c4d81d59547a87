// The dot-product kernels, included twice by x86_avx2.h: once in namespace avx2 (AVX2 + FMA +
// F16C) and once in namespace avx512 compiled for AVX-512 VL/BW + VNNI, where the unsigned x
// signed byte products go through one vpdpbusd instead of vpmaddubsw + vpmaddwd. Everything
// else is the same code, so both give the same integer sums and the same results.
// (No include guard, on purpose.)

// unsigned bytes u . signed bytes s -> 8 int32 partial sums
inline __m256i dot_us8(const __m256i u, const __m256i s) {
#if LLMLENS_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// -- dot products: one weight row . T activation rows --------------------------------------
// Each weight block is unpacked once and multiplied with the same block of every token, so
// T tokens cost less than T single-token calls. Template FT > 0 fixes T at compile time
// (accumulators stay in registers); FT = 0 would take T at run time.
// `A` holds T activation rows `as` bytes apart; results go to y[t * ys].


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
    uint8_t sc_mn[16];  // the 8 group scales, then the 8 group mins
    unpack_scales_k4(blk + 4, sc_mn, sc_mn + 8);
    // scales and mins as int16 lanes; each group's scale is broadcast by a byte shuffle (one
    // uop) instead of a scalar load + broadcast, and the mins meet the activation's per-16
    // sums in one madd: the integer sums are the same as term by term
    const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)sc_mn));  // [sc 0..7 | mn 0..7]
    const __m256i scales = _mm256_permute2x128_si256(sc16, sc16, 0x00);  // sc 0..7 in both halves
    const __m128i mn8 = _mm_loadl_epi64((const __m128i*)(sc_mn + 8));
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8));  // mn[j] twice: pairs of bsums
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
      const __m256i sl = _mm256_shuffle_epi8(scales, _mm256_set1_epi16((int16_t)(0x0100 + 0x0202 * (2 * j))));
      const __m256i sh = _mm256_shuffle_epi8(scales, _mm256_set1_epi16((int16_t)(0x0100 + 0x0202 * (2 * j + 1))));
      ACC_TOKENS(ul, sl, 64 * j)
      ACC_TOKENS(uh, sh, 64 * j + 32)
    }
    for (int t = 0; t < T; ++t) {
      const act_q8_K& a = actK(A, as, t)[i];
      const int msum = hsum_i32_8(_mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i*)a.bsums)));
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
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)b[i].scales));  // 16 x int16
    const __m256i sc_lo = _mm256_permute2x128_si256(sc16, sc16, 0x00);  // scales 0..7, both lanes
    const __m256i sc_hi = _mm256_permute2x128_si256(sc16, sc16, 0x11);  // scales 8..15
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
      // this half's 8 scales in both 128-bit lanes; a byte shuffle puts scale 2k in the low
      // lane and 2k + 1 in the high one (instead of two scalar broadcasts per group pair)
      const __m256i sc_half = c ? sc_hi : sc_lo;
      for (int k = 0; k < 4; ++k) {
        const __m256i pick = _mm256_setr_m128i(_mm_set1_epi16((int16_t)(0x0100 + 0x0202 * (2 * k))),
                                               _mm_set1_epi16((int16_t)(0x0100 + 0x0202 * (2 * k + 1))));
        const __m256i scl = _mm256_shuffle_epi8(sc_half, pick);
        ACC_TOKENS(u[k], scl, 128 * c + 32 * k)
      }
    }
    const float dw = h2f(b[i].d);
    for (int t = 0; t < T; ++t) {
      const act_q8_K& a = actK(A, as, t)[i];
      // the -32 offset, through the per-16 sums of q8: sum_g sc[g] * bsums[g] in one madd
      const int off = hsum_i32_8(_mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i*)a.bsums)));
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

