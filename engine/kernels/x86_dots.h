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

// sumi[t] += madd(scales, maddubs(u, q8 of token t at byte offset `at` of the super-block))
#define ACC_TOKENS(u, scales, at)                                                            \
  for (int t = 0; t < T; ++t) {                                                              \
    const __m256i q8 = _mm256_loadu_si256((const __m256i*)(actK(A, as, t)[i].qs + (at)));    \
    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16((scales), _mm256_maddubs_epi16((u), q8))); \
  }

// The 12 packed scale bytes of a Q4_K / Q5_K super-block -> [sc 0..7 | mn 0..7] (6 bits each),
// as ggml's get_scale_min_k4 gives them, in one register: three byte shuffles instead of ~20
// scalar ops and a 16-byte reload of two 8-byte stores (a store-forwarding stall). Reads 16
// bytes at `scales`; the block goes on past the 12.
inline __m128i unpack_scales_k4_x(const uint8_t* scales) {
  const __m128i x = _mm_loadu_si128((const __m128i*)scales);
  // low bits: sc 0..3 = s[0..3] & 63, sc 4..7 = s[8..11] & 15, mn 0..3 = s[4..7] & 63
  const __m128i lo = _mm_and_si128(_mm_shuffle_epi8(x, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, -1, -1, -1, -1)),
                                   _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0));
  // mn 4..7 = s[8..11] >> 4
  const __m128i lo2 = _mm_shuffle_epi8(_mm_and_si128(_mm_srli_epi16(x, 4), _mm_set1_epi8(15)),
                                       _mm_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 8, 9, 10, 11));
  // high bits 4, 5: of sc 4..7 = s[0..3] >> 6, of mn 4..7 = s[4..7] >> 6
  const __m128i hi = _mm_and_si128(_mm_shuffle_epi8(_mm_srli_epi16(x, 2), _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7)),
                                   _mm_set1_epi8(0x30));
  return _mm_or_si128(_mm_or_si128(lo, lo2), hi);
}

template <int FT, bool FIVE>
void dot_q4_5_k(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const int bs = FIVE ? 176 : 144;
  const __m256i m4 = _mm256_set1_epi8(0xF), m5 = _mm256_set1_epi8(0x10);
  // the mins go into a vector accumulator of their own: no horizontal sum per super-block
  __m256 acc[kMaxT], acc_m[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps(), acc_m[t] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const uint8_t* blk = w + i * bs;
    int32_t dd32;
    std::memcpy(&dd32, blk, 4);
    const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128(dd32));  // [d, dmin, 0, 0]
    // scales and mins as int16 lanes; each group's scale is broadcast by a byte shuffle (one
    // uop) instead of a scalar load + broadcast, and the mins meet the activation's per-16
    // sums in one madd: the integer sums are the same as term by term
    // [sc 0..7 | mn 0..7] bytes in both halves; byte shuffles with a zero high byte
    // (index -1) read them out as int16 lanes
    const __m256i sc_mn = _mm256_broadcastsi128_si256(unpack_scales_k4_x(blk + 4));
    const __m256i mins = _mm256_shuffle_epi8(sc_mn, _mm256_setr_epi8(8, -1, 8, -1, 9, -1, 9, -1, 10, -1, 10, -1, 11, -1, 11, -1,
                                                                     12, -1, 12, -1, 13, -1, 13, -1, 14, -1, 14, -1, 15, -1, 15, -1));  // mn[j] twice: pairs of bsums
    const __m256i hbits = FIVE ? _mm256_loadu_si256((const __m256i*)(blk + 16)) : _mm256_setzero_si256();
    const uint8_t* q4 = blk + (FIVE ? 48 : 16);
    __m256i sumi[kMaxT];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      const __m256i bits = _mm256_loadu_si256((const __m256i*)(q4 + 32 * j));
      __m256i ul = _mm256_and_si256(bits, m4);
      __m256i uh = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
      if (FIVE) {  // 5th bit of group 2j is bit 2j of qh, of group 2j+1 bit 2j+1: shifted to bit 4
        const int shl_l = 4 - 2 * j, shl_h = 3 - 2 * j;  // left shifts; negative: right
        const __m256i bl = shl_l > 0 ? _mm256_slli_epi16(hbits, shl_l) : shl_l < 0 ? _mm256_srli_epi16(hbits, -shl_l) : hbits;
        const __m256i bh = shl_h > 0 ? _mm256_slli_epi16(hbits, shl_h) : _mm256_srli_epi16(hbits, -shl_h);
        ul = _mm256_or_si256(ul, _mm256_and_si256(bl, m5));
        uh = _mm256_or_si256(uh, _mm256_and_si256(bh, m5));
      }
      const __m256i sl = _mm256_shuffle_epi8(sc_mn, _mm256_set1_epi16((int16_t)(0xFF00 + 2 * j)));
      const __m256i sh = _mm256_shuffle_epi8(sc_mn, _mm256_set1_epi16((int16_t)(0xFF00 + 2 * j + 1)));
      ACC_TOKENS(ul, sl, 64 * j)
      ACC_TOKENS(uh, sh, 64 * j + 32)
    }
    for (int t = 0; t < T; ++t) {
      const act_q8_K& a = actK(A, as, t)[i];
      const __m128 ad = _mm_mul_ps(dd, _mm_set1_ps(a.d));  // [a.d * d, a.d * dmin]
      const __m256i msum = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i*)a.bsums));
      acc[t] = _mm256_fmadd_ps(_mm256_broadcastss_ps(ad), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
      acc_m[t] = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(ad)), _mm256_cvtepi32_ps(msum), acc_m[t]);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = hsum_float_8(_mm256_sub_ps(acc[t], acc_m[t]));
}

template <int FT> void dot_q4_k(DOT_ARGS) { dot_q4_5_k<FT, false>(w, A, as, T_, n, y, ys); }
template <int FT> void dot_q5_k(DOT_ARGS) { dot_q4_5_k<FT, true>(w, A, as, T_, n, y, ys); }

// The scale vector of group pair k (values 32k .. 32k+31 of a 128-value half) from that
// half's 8 int16 scales in both 128-bit lanes: a byte shuffle puts scale 2k in the low lane and
// 2k + 1 in the high one (instead of two scalar broadcasts per group pair).
#define SCALE_PAIR(sc_half, k)                                                                \
  _mm256_shuffle_epi8((sc_half), _mm256_setr_m128i(_mm_set1_epi16((int16_t)(0x0100 + 0x0202 * (2 * (k)))), \
                                                   _mm_set1_epi16((int16_t)(0x0100 + 0x0202 * (2 * (k) + 1)))))

// value = d * sc * (u - 32), u = 4 low bits | 2 high bits << 4
template <int FT>
void dot_q6_k(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const block_q6_K* b = (const block_q6_K*)w;
  __m256 acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const uint8_t* ql = b[i].ql;
    const uint8_t* qh = b[i].qh;
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)b[i].scales));  // 16 x int16
    const __m256i sc_lo = _mm256_permute2x128_si256(sc16, sc16, 0x00);  // scales 0..7, both lanes
    const __m256i sc_hi = _mm256_permute2x128_si256(sc16, sc16, 0x11);  // scales 8..15
    __m256i sumi[kMaxT];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    for (int c = 0; c < 2; ++c) {
      __m256i u[4];
      unpack_q6_k_half(ql, qh, c, u);
      const __m256i sc_half = c ? sc_hi : sc_lo;
      for (int k = 0; k < 4; ++k) ACC_TOKENS(u[k], SCALE_PAIR(sc_half, k), 128 * c + 32 * k)
    }
    const float dw = h2f(b[i].d);
    for (int t = 0; t < T; ++t) {
      const act_q8_K& a = actK(A, as, t)[i];
      // the -32 offset, through the per-16 sums of q8 (sum_g sc[g] * bsums[g] in one madd),
      // taken off lane by lane: the same integer total, and no horizontal sum per super-block
      const __m256i off = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i*)a.bsums));
      const __m256i tot = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(off, 5));
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(a.d * dw), _mm256_cvtepi32_ps(tot), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = hsum_float_8(acc[t]);
}

// The 12 packed scale bytes of a Q3_K super-block -> its 16 6-bit scales (still + 32), as
// ggml's unpack gives them, in one register: low nibbles of s[0..7] then their high nibbles,
// with bit pair q of s[8 + j % 4] (q = j / 4) as bits 4, 5 of scale j.
inline __m128i unpack_scales_q3_x(const uint8_t* scales) {
  int32_t s8;
  std::memcpy(&s8, scales + 8, 4);  // 12 bytes only: the block ends 2 bytes after them
  const __m128i x = _mm_loadl_epi64((const __m128i*)scales);
  const __m128i lo = _mm_and_si128(_mm_unpacklo_epi64(x, _mm_srli_epi16(x, 4)), _mm_set1_epi8(0xF));
  const __m128i t = _mm_set1_epi32(s8);  // s[8..11] in every 32-bit quarter
  const __m128i hi = _mm_blend_epi32(_mm_blend_epi32(_mm_slli_epi16(t, 4), _mm_slli_epi16(t, 2), 0x2),
                                     _mm_blend_epi32(t, _mm_srli_epi16(t, 2), 0x8), 0xC);
  return _mm_or_si128(lo, _mm_and_si128(hi, _mm_set1_epi8(0x30)));
}

// value = d * (s - 32) * (u - 4), u = 2 low bits | hmask bit << 2
template <int FT>
void dot_q3_k(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const block_q3_K* b = (const block_q3_K*)w;
  const __m256i m2 = _mm256_set1_epi8(3), bit2 = _mm256_set1_epi8(4);
  __m256 acc[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const __m256i sc16 = _mm256_sub_epi16(_mm256_cvtepi8_epi16(unpack_scales_q3_x(b[i].scales)), _mm256_set1_epi16(32));
    const __m256i hm = _mm256_loadu_si256((const __m256i*)b[i].hmask);
    __m256i sumi[kMaxT];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    for (int c = 0; c < 2; ++c) {
      const __m256i bits = _mm256_loadu_si256((const __m256i*)(b[i].qs + 32 * c));
      const __m256i sc_half = c ? _mm256_permute2x128_si256(sc16, sc16, 0x11) : _mm256_permute2x128_si256(sc16, sc16, 0x00);
      for (int j = 0; j < 4; ++j) {
        const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * j), m2);
        const int hs = 4 * c + j - 2;  // hmask bit 4c + j goes to bit 2
        const __m256i hsh = hs > 0 ? _mm256_srli_epi16(hm, hs) : hs < 0 ? _mm256_slli_epi16(hm, -hs) : hm;
        const __m256i u = _mm256_or_si256(lo, _mm256_and_si256(hsh, bit2));
        ACC_TOKENS(u, SCALE_PAIR(sc_half, j), 128 * c + 32 * j)
      }
    }
    const float dw = h2f(b[i].d);
    for (int t = 0; t < T; ++t) {
      const act_q8_K& a = actK(A, as, t)[i];
      // the -4 offset through the per-16 sums of q8, lane by lane (as in dot_q6_k)
      const __m256i off = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i*)a.bsums));
      const __m256i tot = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(off, 2));
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(a.d * dw), _mm256_cvtepi32_ps(tot), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = hsum_float_8(acc[t]);
}

// value = d * (sc & 15) * u - dmin * (sc >> 4), u = 2 bits
template <int FT>
void dot_q2_k(DOT_ARGS) {
  const int T = FT ? FT : T_;
  const block_q2_K* b = (const block_q2_K*)w;
  const __m256i m2 = _mm256_set1_epi8(3);
  __m256 acc[kMaxT], acc_m[kMaxT];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps(), acc_m[t] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / QK_K; ++i) {
    const __m128i sb = _mm_loadu_si128((const __m128i*)b[i].scales);
    const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sb, _mm_set1_epi8(0xF)));
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sb, 4), _mm_set1_epi8(0xF)));
    __m256i sumi[kMaxT];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    for (int c = 0; c < 2; ++c) {
      const __m256i bits = _mm256_loadu_si256((const __m256i*)(b[i].qs + 32 * c));
      const __m256i sc_half = c ? _mm256_permute2x128_si256(sc16, sc16, 0x11) : _mm256_permute2x128_si256(sc16, sc16, 0x00);
      for (int j = 0; j < 4; ++j) {
        const __m256i u = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * j), m2);
        ACC_TOKENS(u, SCALE_PAIR(sc_half, j), 128 * c + 32 * j)
      }
    }
    int32_t dd32;
    std::memcpy(&dd32, &b[i].d, 4);
    const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128(dd32));  // [d, dmin, 0, 0]
    for (int t = 0; t < T; ++t) {
      const act_q8_K& a = actK(A, as, t)[i];
      const __m128 ad = _mm_mul_ps(dd, _mm_set1_ps(a.d));  // [a.d * d, a.d * dmin]
      const __m256i msum = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i*)a.bsums));
      acc[t] = _mm256_fmadd_ps(_mm256_broadcastss_ps(ad), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
      acc_m[t] = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(ad)), _mm256_cvtepi32_ps(msum), acc_m[t]);
    }
  }
  for (int t = 0; t < T; ++t) y[t * ys] = hsum_float_8(_mm256_sub_ps(acc[t], acc_m[t]));
}

#undef SCALE_PAIR

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
