// Fused dequantize-and-multiply CPU kernels over GGUF's packed blocks: the torch bindings.
// blocks.h has the block layouts, scalar dequantizers and activation quantization (portable);
// x86_avx2.h the AVX2 + FMA + F16C kernels. One translation unit: the headers are included here.
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
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "blocks.h"
#if defined(__x86_64__) || defined(_M_X64)
#include "x86_avx2.h"
#elif defined(__aarch64__) || defined(_M_ARM64)
#include "aarch64_neon.h"
#else
#error "the fused kernels have no implementation for this CPU architecture yet"
#endif
#include "layer_ops.h"

namespace {

const TypeInfo& type_info(int64_t type) {
  const TypeInfo* t = find_type(type);
  TORCH_CHECK(t != nullptr, "qgemv: unsupported ggml type ", type);
  return *t;
}

void deq_row(int64_t type, const uint8_t* __restrict src, float* __restrict y, int64_t n) {
  if (deq_row_simd(type, src, y, n) || deq_row_portable(type, src, y, n)) return;
  TORCH_CHECK(false, "qgemv: no dequantizer for ggml type ", type);
}

inline void prefetch(const uint8_t* p) {
#if defined(_MSC_VER) && defined(_M_ARM64)
  __prefetch(p);
#elif defined(_MSC_VER)
  _mm_prefetch((const char*)p, _MM_HINT_T0);
#else
  __builtin_prefetch(p);
#endif
}

DotSet dot_set(int64_t type) {
  const DotSet d = dot_for(type);
  TORCH_CHECK(d.by_log2[0] != nullptr, "qgemv: unsupported ggml type ", type);
  return d;
}

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

constexpr int64_t kPrefetchBytes = 512;

int threads_for(int64_t nthreads, int64_t work_rows, int64_t min_rows) {
  const int64_t cap = std::max<int64_t>(1, work_rows / std::max<int64_t>(1, min_rows));
  return (int)std::max<int64_t>(1, std::min<int64_t>(nthreads, cap));
}

// The T activation rows of x [T, n] in the form the dot kernels of `ti` read (8-bit blocks, or
// f32 for float weights); `arb` gets the bytes per row.
std::vector<uint8_t> quantize_rows(const TypeInfo& ti, const float* X, int64_t T, int64_t n, int64_t& arb) {
  switch (ti.act) {
    case ACT_F32: arb = n * 4; break;
    case ACT_Q8_0: arb = n / QK * (int64_t)sizeof(act_q8_0); break;
    default: arb = n / QK_K * (int64_t)sizeof(act_q8_K); break;
  }
  std::vector<uint8_t> act((size_t)(T * arb));
  for (int64_t t = 0; t < T; ++t) {
    uint8_t* dst = act.data() + t * arb;
    if (ti.act == ACT_F32) std::memcpy(dst, X + t * n, n * 4);
    else if (ti.act == ACT_Q8_0) quantize_q8_0(X + t * n, (act_q8_0*)dst, n);
    else quantize_q8_K(X + t * n, (act_q8_K*)dst, n);
  }
  return act;
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
  const std::vector<uint8_t> act = quantize_rows(ti, x.data_ptr<float>(), T, n, arb);

  const DotSet dot = dot_set(type);
  const uint8_t* W = w.data_ptr<uint8_t>();
  const int64_t rb = w.size(1);
  float* Y = y.data_ptr<float>();
  const uint8_t* A = act.data();
  const int nth = threads_for(nthreads, rows, 16);
  // Software prefetch of the row ~512 B ahead: the hardware prefetcher alone leaves a
  // single core at ~60% of its streaming bandwidth on the 178 MB Q8_0 output head; 512 B
  // ahead reached 90-100% of a plain streaming sum there, 1 KiB ~80%, 4 KiB ~60%.
  const int64_t pf_rows = std::max<int64_t>(1, (kPrefetchBytes + rb - 1) / rb);
  const uint8_t* W_end = W + rows * rb;
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* wr = W + r * rb;
    const uint8_t* pf = wr + pf_rows * rb;
    if (pf + rb <= W_end)
      for (int64_t o = 0; o < rb; o += 64) prefetch(pf + o);
    for (int64_t t0 = 0; t0 < T;) {
      const int64_t left = T - t0;
      const int k = left >= 8 ? 3 : left >= 4 ? 2 : left >= 2 ? 1 : 0;
      dot.by_log2[k](wr, A + t0 * arb, arb, 1 << k, n, Y + t0 * rows + r, rows);
      t0 += 1 << k;
    }
  }
  return y;
}

// Tokens grouped by expert through their experts in one call (MoE decode and prefill): rows
// [o_s, o_s + counts[s]) of x go through expert experts[s] of the stacked matrices W
// [E, rows, row_bytes], y [N, rows]. One thread team over all (segment, row) pairs instead of a
// kernel call per expert and projection; a segment's tokens share each unpacked weight block.
torch::Tensor moe_gemm(torch::Tensor w, int64_t type, torch::Tensor experts, torch::Tensor counts,
                       torch::Tensor x, int64_t nthreads) {
  const TypeInfo& ti = type_info(type);
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == torch::kUInt8 && w.dim() == 3 && w.is_contiguous(),
              "qgemv: stacked experts must be a contiguous CPU uint8 tensor [E, rows, row_bytes]");
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2,
              "qgemv: x must be a CPU float32 [N, n] tensor");
  experts = experts.to(torch::kInt64).contiguous().view({-1});
  counts = counts.to(torch::kInt64).contiguous().view({-1});
  x = x.contiguous();
  const int64_t E = w.size(0), rows = w.size(1), rb = w.size(2), S = experts.size(0);
  const int64_t N = x.size(0), n = x.size(1);
  TORCH_CHECK(counts.size(0) == S, "qgemv: ", S, " experts but ", counts.size(0), " counts");
  TORCH_CHECK(rb == row_bytes(ti, n), "qgemv: experts have ", rb, " bytes per row, expected ", row_bytes(ti, n),
              " for ", n, " values");
  const int64_t* I = experts.data_ptr<int64_t>();
  const int64_t* C = counts.data_ptr<int64_t>();
  std::vector<int64_t> offset(S + 1, 0);
  for (int64_t s = 0; s < S; ++s) {
    TORCH_CHECK(I[s] >= 0 && I[s] < E, "qgemv: expert id ", I[s], " out of range [0, ", E, ")");
    TORCH_CHECK(C[s] >= 0, "qgemv: negative token count");
    offset[s + 1] = offset[s] + C[s];
  }
  TORCH_CHECK(offset[S] == N, "qgemv: counts add up to ", offset[S], " tokens, x has ", N);
  auto y = torch::empty({N, rows}, x.options());
  if (N == 0 || rows == 0) return y;
  int64_t arb;
  const std::vector<uint8_t> act = quantize_rows(ti, x.data_ptr<float>(), N, n, arb);
  const DotSet dot = dot_set(type);
  const uint8_t* W = w.data_ptr<uint8_t>();
  const uint8_t* A = act.data();
  float* Y = y.data_ptr<float>();
  const int nth = threads_for(nthreads, S * rows, 16);
  const int64_t pf_rows = std::max<int64_t>(1, (kPrefetchBytes + rb - 1) / rb);
  auto segment_row = [&](int64_t sr) {
    const int64_t s = sr / rows, r = sr % rows;
    const uint8_t* wr = W + (I[s] * rows + r) * rb;
    if (r + pf_rows < rows)  // the same expert's row ~512 B ahead (see gemv)
      for (int64_t o = 0; o < rb; o += 64) prefetch(wr + pf_rows * rb + o);
    for (int64_t t0 = offset[s]; t0 < offset[s + 1];) {
      const int64_t left = offset[s + 1] - t0;
      const int kk = left >= 8 ? 3 : left >= 4 ? 2 : left >= 2 ? 1 : 0;
      dot.by_log2[kk](wr, A + t0 * arb, arb, 1 << kk, n, Y + t0 * rows + r, rows);
      t0 += 1 << kk;
    }
  };
  bool equal = true;
  for (int64_t s = 1; s < S; ++s) equal = equal && C[s] == C[0];
  if (equal) {
    // Decode (one token per expert) and other equal segments: every row is the same work, so
    // each thread takes one contiguous run of rows and streams through whole experts; handing
    // out small chunks instead makes the threads jump around memory, past the prefetchers
    // (measured: 4 GB/s against 16 for one stream per thread).
#pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t sr = 0; sr < S * rows; ++sr) segment_row(sr);
  } else {
    // segments differ in token count, so equal row counts are not equal work
#pragma omp parallel for num_threads(nth) schedule(dynamic, 64)
    for (int64_t sr = 0; sr < S * rows; ++sr) segment_row(sr);
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

// y [T, n] = rms_norm(x [T, n]) * w [n], float32 (one call per norm of a decode step instead of
// the ~5 ops F.rms_norm dispatches on CPU).
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32, "rms_norm: x must be CPU float32");
  TORCH_CHECK(w.scalar_type() == torch::kFloat32 && w.dim() == 1 && w.is_contiguous(),
              "rms_norm: w must be a contiguous float32 vector");
  const int64_t n = w.size(0);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == n, "rms_norm: last dimension of x must be ", n);
  x = x.contiguous();
  auto y = torch::empty_like(x);
  const int64_t T = n ? x.numel() / n : 0;
  const float *X = x.data_ptr<float>(), *W = w.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) layer_ops::rms_norm_row(X + t * n, W, Y + t * n, n, (float)eps);
  return y;
}

// Rotary embedding in one call: x [H, T, D] float32 (any strides), c / s [T, r] float32 full-width
// cos and signed sin tables (engine.layers.RoPE.tables) -> out [H, T, D] contiguous with
// out[i] = x[i] * c[i] + x[partner(i)] * s[i] for i < r, partner = i + r/2 (mod r) in NEOX mode,
// i ^ 1 (adjacent pairs) otherwise; dims from r on are copied. The same two products and one
// sum per value as RoPE.rotate's addcmul, in a call instead of ~4 ops.
torch::Tensor rope(torch::Tensor x, torch::Tensor c, torch::Tensor s, bool neox) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 3,
              "rope: x must be CPU float32 [H, T, D]");
  TORCH_CHECK(c.scalar_type() == torch::kFloat32 && s.scalar_type() == torch::kFloat32 && c.dim() == 2 &&
              c.sizes() == s.sizes(), "rope: cos and sin must be float32 tables of one shape [T, r]");
  const int64_t H = x.size(0), T = x.size(1), D = x.size(2), r = c.size(1);
  TORCH_CHECK(c.size(0) == T && r <= D && r % 2 == 0, "rope: tables are ", c.size(0), " x ", r,
              " for ", T, " positions of ", D, " dims");
  c = c.contiguous();
  s = s.contiguous();
  auto out = torch::empty({H, T, D}, x.options());
  const float *C = c.data_ptr<float>(), *Sn = s.data_ptr<float>(), *X = x.data_ptr<float>();
  float* O = out.data_ptr<float>();
  const int64_t sh = x.stride(0), st = x.stride(1), sd = x.stride(2);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t t = 0; t < T; ++t)
      layer_ops::rope_row(X + h * sh + t * st, sd, C + t * r, Sn + t * r, r, D, neox, O + (h * T + t) * D);
  return out;
}

namespace {
layer_ops::CacheView cache_view(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 3 && t.stride(2) == 1,
              "attn_decode: ", what, " must be a CPU [heads, S, d] tensor with contiguous rows");
  TORCH_CHECK(t.scalar_type() == torch::kFloat16 || t.scalar_type() == torch::kFloat32,
              "attn_decode: ", what, " must be float16 or float32");
  return {(const uint8_t*)t.data_ptr(), t.scalar_type() == torch::kFloat16, t.stride(0), t.stride(1), t.size(2)};
}
}  // namespace

// One query position against every cached key (a decode step; all keys visible):
// q [Hq, D] f32, k [Hkv, S, D], v [Hkv, S, Dv] (f16 or f32, rows contiguous, any head/row
// stride) -> [Hq, Dv] f32. Query head i reads kv head i / (Hq / Hkv). Keys are split into
// chunks over the threads, each with its own softmax max and sum, merged at the end
// (flash-decoding), so one kv head (MQA, MLA) still uses every thread. With `probs` (a
// contiguous float32 [Hq, S]), the attention probabilities are written there as well: the
// chunks' weights rescaled by the merged max and sum, so recording them costs one pass over
// Hq * S floats instead of a second product with every key.
torch::Tensor attn_decode(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale, int64_t nthreads,
                          c10::optional<torch::Tensor> probs) {
  TORCH_CHECK(q.device().is_cpu() && q.scalar_type() == torch::kFloat32 && q.dim() == 2,
              "attn_decode: q must be CPU float32 [Hq, D]");
  q = q.contiguous();
  const layer_ops::CacheView K = cache_view(k, "k"), V = cache_view(v, "v");
  const int64_t Hq = q.size(0), D = q.size(1), Hkv = k.size(0), S = k.size(1), Dv = V.width;
  TORCH_CHECK(K.width == D, "attn_decode: keys have ", K.width, " values, queries ", D);
  TORCH_CHECK(v.size(0) == Hkv && v.size(1) == S, "attn_decode: k and v differ in heads or length");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "attn_decode: ", Hq, " query heads do not group over ", Hkv, " kv heads");
  TORCH_CHECK(S > 0, "attn_decode: no keys");
  const int64_t G = Hq / Hkv;
  float* P = nullptr;
  if (probs.has_value()) {
    TORCH_CHECK(probs->device().is_cpu() && probs->scalar_type() == torch::kFloat32 && probs->is_contiguous() &&
                    probs->dim() == 2 && probs->size(0) == Hq && probs->size(1) == S,
                "attn_decode: probs must be a contiguous CPU float32 [", Hq, ", ", S, "] tensor");
    P = probs->data_ptr<float>();
  }
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>((2 * nthreads + Hkv - 1) / Hkv, S / 64));
  const int64_t items = Hkv * chunks;
  std::vector<float> m(items * G), l(items * G), acc(items * G * Dv);
  const float* Q = q.data_ptr<float>();
  const int nth = threads_for(nthreads, items, 1);
#pragma omp parallel num_threads(nth)
  {
    std::vector<float> work;
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t h = it / chunks, c = it % chunks;
      layer_ops::attend_chunk(Q + h * G * D, G, D, K, V, h, S * c / chunks, S * (c + 1) / chunks,
                              (float)scale, m.data() + it * G, l.data() + it * G,
                              acc.data() + it * G * Dv, work, P ? P + h * G * S : nullptr, S);
    }
  }
  auto out = torch::zeros({Hq, Dv}, q.options());
  float* O = out.data_ptr<float>();
  for (int64_t h = 0; h < Hkv; ++h)
    for (int64_t g = 0; g < G; ++g) {
      float M = -INFINITY;
      for (int64_t c = 0; c < chunks; ++c) M = std::max(M, m[(h * chunks + c) * G + g]);
      float L = 0.f;
      float* o = O + (h * G + g) * Dv;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t at = (h * chunks + c) * G + g;
        const float f = std::exp(m[at] - M);
        L += f * l[at];
        layer_ops::axpy(f, acc.data() + at * Dv, o, Dv);
      }
      for (int64_t d = 0; d < Dv; ++d) o[d] /= L;
      if (P != nullptr) {
        float* p = P + (h * G + g) * S;
        for (int64_t c = 0; c < chunks; ++c) {
          const float f = std::exp(m[(h * chunks + c) * G + g] - M) / L;
          for (int64_t s = S * c / chunks; s < S * (c + 1) / chunks; ++s) p[s] *= f;
        }
      }
    }
  return out;
}

// Which instruction set the dot kernels use ("avx2", "avx512-vnni", "neon", ...).
std::string isa() { return isa_name(); }

// Force an instruction set (tests, benchmarks: the AVX2 path measured on an AVX-512 machine).
void use_isa(const std::string& name) {
  TORCH_CHECK(set_isa(name.c_str()), "qgemv: instruction set '", name, "' is not available on this CPU (",
              isa_choices(), ")");
}

std::string isa_options() { return isa_choices(); }

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
  m.def("moe_gemm", &moe_gemm, "y[seg s] = x[seg s] @ W[experts[s]]^T for stacked experts W [E, rows, row_bytes]",
        py::arg("w"), py::arg("type"), py::arg("experts"), py::arg("counts"), py::arg("x"), py::arg("nthreads"),
        py::call_guard<py::gil_scoped_release>());
  m.def("dequant_rows", &dequant_rows, "rows of W as float32", py::arg("w"), py::arg("type"),
        py::arg("n"), py::arg("start"), py::arg("count"), py::arg("nthreads"),
        py::arg("out") = py::none(), py::call_guard<py::gil_scoped_release>());
  m.def("get_rows", &get_rows, "selected rows of W as float32", py::arg("w"), py::arg("type"),
        py::arg("n"), py::arg("ids"), py::call_guard<py::gil_scoped_release>());
  m.def("quantize_activations", &quantize_activations, "activation rounding of the kernels (tests)",
        py::arg("x"), py::arg("type"));
  m.def("rms_norm", &rms_norm, "RMS norm of the rows of x times w (float32)", py::arg("x"), py::arg("w"),
        py::arg("eps"));
  m.def("rope", &rope, "rotary embedding of x [H, T, D] with full-width cos / signed sin tables",
        py::arg("x"), py::arg("c"), py::arg("s"), py::arg("neox"));
  m.def("attn_decode", &attn_decode, "one query position's attention over cached keys/values",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("scale"), py::arg("nthreads"),
        py::arg("probs") = py::none(), py::call_guard<py::gil_scoped_release>());
  m.def("supported_types", &supported_types);
  m.def("isa", &isa, "instruction set of the dot kernels in use");
  m.def("use_isa", &use_isa, "switch the dot kernels to another instruction set", py::arg("name"));
  m.def("isa_options", &isa_options, "instruction sets this CPU can use, comma-separated");
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
