// Standalone test of the ARM64 NEON kernels (engine/kernels/aarch64_neon.h) and of the portable
// dequantizers (blocks.h), without torch: built with a plain C++ compiler (a cross compiler,
// run under qemu-user, in tests/test_neon_emulated.py) and run on a reference file written by
// tests/kernels/make_reference.py from the x86 kernels.
//
//   neon_selftest REF.bin
//
// Checks, per ggml type: deq_row_portable and deq_row_simd bit-exact against the reference
// rows; the activation rounding (quantize_q8_0 / quantize_q8_K) bit-exact; every compiled build
// of the dot kernels the CPU can run (neon_base, neon_dotprod) and the dispatching dot_for(),
// whose set_isa() must take exactly the choices isa_choices() lists;
// for 1, 2, 4 and 8 tokens, within 1e-5 * sum |W x_q| of the reference products (the exact
// integer sums leave only f32 rounding of the scale products). Exit status 0 when all pass.

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "blocks.h"
#include "aarch64_neon.h"

namespace {

constexpr float kRtol = 1e-5f;  // as make_reference.py and tests/test_kernels.py

struct Case {
  int32_t type, n, rows, T, row_bytes;
  std::vector<uint8_t> w;
  std::vector<float> x, xq, deq, y, scale;
};

template <class V>
bool read_into(FILE* f, V& v, size_t count) {
  v.resize(count);
  return std::fread(v.data(), sizeof(v[0]), count, f) == count;
}

bool read_cases(const char* path, std::vector<Case>& cases) {
  FILE* f = std::fopen(path, "rb");
  if (!f) return false;
  char magic[8];
  int32_t count = 0;
  bool ok = std::fread(magic, 1, 8, f) == 8 && std::memcmp(magic, "LLNEONR1", 8) == 0 &&
            std::fread(&count, 4, 1, f) == 1 && count > 0;
  for (int32_t c = 0; ok && c < count; ++c) {
    Case k;
    int32_t hdr[5];
    ok = std::fread(hdr, 4, 5, f) == 5;
    if (!ok) break;
    k.type = hdr[0], k.n = hdr[1], k.rows = hdr[2], k.T = hdr[3], k.row_bytes = hdr[4];
    const size_t tn = (size_t)k.T * k.n, rn = (size_t)k.rows * k.n, tr = (size_t)k.T * k.rows;
    ok = read_into(f, k.w, (size_t)k.rows * k.row_bytes) && read_into(f, k.x, tn) &&
         read_into(f, k.xq, tn) && read_into(f, k.deq, rn) && read_into(f, k.y, tr) &&
         read_into(f, k.scale, tr);
    if (ok) cases.push_back(std::move(k));
  }
  std::fclose(f);
  return ok;
}

int failures = 0;

void fail(const Case& k, const std::string& what) {
  if (++failures <= 40) std::printf("FAIL type %d: %s\n", (int)k.type, what.c_str());
}

bool same_bits(const float* a, const float* b, int64_t n, int64_t* at) {
  for (int64_t i = 0; i < n; ++i)
    if (std::memcmp(a + i, b + i, 4) != 0) return *at = i, false;
  return true;
}

void check_dequant(const Case& k) {
  std::vector<float> row(k.n);
  for (int r = 0; r < k.rows; ++r) {
    const uint8_t* src = k.w.data() + (size_t)r * k.row_bytes;
    const float* ref = k.deq.data() + (size_t)r * k.n;
    int64_t at = 0;
    if (!deq_row_portable(k.type, src, row.data(), k.n)) fail(k, "deq_row_portable: type not handled");
    else if (!same_bits(row.data(), ref, k.n, &at))
      fail(k, "deq_row_portable row " + std::to_string(r) + " value " + std::to_string(at) + ": " +
              std::to_string(row[at]) + " != " + std::to_string(ref[at]));
    std::fill(row.begin(), row.end(), NAN);
    if (deq_row_simd(k.type, src, row.data(), k.n) && !same_bits(row.data(), ref, k.n, &at))
      fail(k, "deq_row_simd row " + std::to_string(r) + " value " + std::to_string(at) + ": " +
              std::to_string(row[at]) + " != " + std::to_string(ref[at]));
  }
}

// The activations of all T tokens as the kernels take them (what gemv in qgemv.cpp builds);
// also checks the rounding against the reference x_q. Returns the bytes per token row.
int64_t build_activations(const Case& k, std::vector<uint8_t>& act) {
  const TypeInfo* ti = find_type(k.type);
  int64_t arb = ti->act == ACT_F32    ? (int64_t)k.n * 4
                : ti->act == ACT_Q8_0 ? k.n / QK * (int64_t)sizeof(act_q8_0)
                                      : k.n / QK_K * (int64_t)sizeof(act_q8_K);
  act.assign((size_t)(k.T * arb), 0);
  std::vector<float> back(k.n);
  for (int t = 0; t < k.T; ++t) {
    const float* x = k.x.data() + (size_t)t * k.n;
    uint8_t* dst = act.data() + t * arb;
    if (ti->act == ACT_F32) {
      std::memcpy(dst, x, (size_t)k.n * 4);
      std::memcpy(back.data(), x, (size_t)k.n * 4);
    } else if (ti->act == ACT_Q8_0) {
      act_q8_0* a = (act_q8_0*)dst;
      quantize_q8_0(x, a, k.n);
      for (int i = 0; i < k.n; ++i) back[i] = a[i / QK].qs[i % QK] * a[i / QK].d;
    } else {
      act_q8_K* a = (act_q8_K*)dst;
      quantize_q8_K(x, a, k.n);
      for (int i = 0; i < k.n; ++i) back[i] = a[i / QK_K].qs[i % QK_K] * a[i / QK_K].d;
    }
    int64_t at = 0;
    if (!same_bits(back.data(), k.xq.data() + (size_t)t * k.n, k.n, &at))
      fail(k, "activation rounding, token " + std::to_string(t) + " value " + std::to_string(at));
  }
  return arb;
}

// Every row against the first T tokens, as gemv calls the kernels: y[t * rows + r].
void check_dots(const Case& k, const DotSet& set, const char* name, const std::vector<uint8_t>& act, int64_t arb) {
  if (set.by_log2[0] == nullptr) return fail(k, std::string(name) + ": no dot kernel");
  for (int lg = 0; lg < 4; ++lg) {
    const int T = 1 << lg;
    if (T > k.T) break;
    std::vector<float> y((size_t)T * k.rows, NAN);
    for (int r = 0; r < k.rows; ++r)
      set.by_log2[lg](k.w.data() + (size_t)r * k.row_bytes, act.data(), arb, T, k.n, y.data() + r, k.rows);
    for (int t = 0; t < T; ++t)
      for (int r = 0; r < k.rows; ++r) {
        const size_t i = (size_t)t * k.rows + r;
        const float err = std::fabs(y[i] - k.y[i]);
        if (!(err <= kRtol * k.scale[i]))  // also catches NaN
          fail(k, std::string(name) + " T=" + std::to_string(T) + " token " + std::to_string(t) +
                  " row " + std::to_string(r) + ": " + std::to_string(y[i]) + " vs " +
                  std::to_string(k.y[i]) + " (tolerance " + std::to_string(kRtol * k.scale[i]) + ")");
      }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s REF.bin (from python -m tests.kernels.make_reference)\n", argv[0]);
    return 2;
  }
  std::vector<Case> cases;
  if (!read_cases(argv[1], cases)) {
    std::fprintf(stderr, "cannot read reference file %s\n", argv[1]);
    return 2;
  }
  struct Build {
    std::string name;
    DotSet (*dot_for)(int64_t);
  };
  // every build compiled in that this CPU can run, called directly
  std::vector<Build> builds;
#if LLMLENS_NEON_HAVE_BASE
  builds.push_back({"neon_base", &neon_base::dot_for});
#endif
#if LLMLENS_NEON_HAVE_DOTPROD
  if (cpu_has_dotprod()) builds.push_back({"neon_dotprod", &neon_dotprod::dot_for});
#endif
  std::printf("isa: %s (choices: %s); builds:", isa_name(), isa_choices());
  for (const auto& b : builds) std::printf(" %s", b.name.c_str());
  std::printf("\n");
  const std::string default_isa = isa_name();
  // set_isa takes exactly the choices it lists
  const std::string choices = isa_choices();
  for (const char* name : {"neon", "neon-dotprod", "avx2", ""}) {
    const bool listed = *name && (choices == name || choices.find(std::string(name) + ",") == 0 ||
                                  choices.find(", " + std::string(name)) != std::string::npos);
    if (set_isa(name) != listed) ++failures, std::printf("FAIL set_isa(\"%s\") disagrees with isa_choices\n", name);
    else if (listed && isa_name() != std::string(name)) ++failures, std::printf("FAIL isa_name after set_isa(\"%s\")\n", name);
  }
  set_isa(default_isa.c_str());

  int types = 0;
  for (const Case& k : cases) {
    if (find_type(k.type) == nullptr) {
      fail(k, "not in kTypes");
      continue;
    }
    check_dequant(k);
    std::vector<uint8_t> act;
    const int64_t arb = build_activations(k, act);
    for (const auto& b : builds) check_dots(k, b.dot_for(k.type), b.name.c_str(), act, arb);
    check_dots(k, dot_for(k.type), "dot_for", act, arb);  // through the dispatch
    ++types;
  }
  // unknown types: no kernels, no dequantizer
  float dummy[32];
  builds.push_back({"dot_for", &dot_for});
  for (const auto& b : builds)
    if (b.dot_for(99).by_log2[0] != nullptr) ++failures, std::printf("FAIL %s hands out a kernel for type 99\n", b.name.c_str());
  if (deq_row_simd(99, nullptr, dummy, 32) || deq_row_portable(99, nullptr, dummy, 32))
    ++failures, std::printf("FAIL a dequantizer claims type 99\n");

  std::printf("%d types, %d failures\n", types, failures);
  return failures == 0 ? 0 : 1;
}
