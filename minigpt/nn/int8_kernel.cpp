// minigpt::int8_linear on x86: float32 rows times an int8 weight with one scale per output feature.
//
//     y[m, o] = x_scale[m] * w_scale[o] * sum_i x_int8[m, i] * w_int8[o, i]  (+ bias[o])
//
// Each call first rounds every row to int8 with its own scale (x_scale = max |x| / 127), as llama.cpp's q8_0
// rounds its activations, then sums products of 8-bit integers, 32 at a time: one instruction on CPUs with
// VNNI (AVX-512 VNNI or AVX-VNNI), three on AVX2. The integer sums are exact, so both give the same numbers.
// A decode step is then bound by reading the weights, at a quarter of float32's bytes.
//
// Built by int8_native.py for the CPU it runs on (-march=native) and loaded into PyTorch's dispatcher, so a
// compiled step calls it from its own C++, with no Python between layers.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kWidth = 32;  // int8 values in one 256-bit vector; in_features must be a multiple of it

#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
constexpr bool kVnni = true;
// sum += the 32 products a[j] * b[j] of unsigned a and signed b, added in fours into 8 int32 lanes
inline __m256i multiply_add(__m256i sum, __m256i a, __m256i b) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(sum, a, b);
#else
  return _mm256_dpbusd_avx_epi32(sum, a, b);
#endif
}
#else
constexpr bool kVnni = false;
inline __m256i multiply_add(__m256i sum, __m256i a, __m256i b) {
  // pairs into 16 bits first, which saturate: a and b within 127 keep each pair under 2 x 127 x 127 < 32767
  return _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)));
}
#endif

inline __m256i load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

inline int32_t total(__m256i v) {
  __m128i half = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  half = _mm_add_epi32(half, _mm_shuffle_epi32(half, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtsi128_si32(_mm_add_epi32(half, _mm_shuffle_epi32(half, _MM_SHUFFLE(2, 3, 0, 1))));
}

// The rows rounded to int8, q = round(x / scale), laid out for the multiply, whose first operand is unsigned:
// - with VNNI, q + 128 (0..255): sum (q + 128) w = sum q w + 128 sum w, and sum w costs one multiply-add per
//   weight vector, shared by all rows, where the alternative below costs one more instruction per row;
// - on AVX2, |q| and q itself, whose sign goes onto the weight (llama.cpp's trick): q + 128 would overflow
//   AVX2's 16-bit pair sums, |q| cannot.
struct RoundedRows {
  std::vector<uint8_t> unsigned_q;  // q + 128 with VNNI, |q| on AVX2
  std::vector<int8_t> q;            // AVX2 only
  std::vector<float> scale;
};

RoundedRows round_rows(const float* x, int64_t n_rows, int64_t in_features) {
  RoundedRows rounded{std::vector<uint8_t>(n_rows * in_features),
                      std::vector<int8_t>(kVnni ? 0 : n_rows * in_features), std::vector<float>(n_rows)};
  at::parallel_for(0, n_rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const float* row = x + m * in_features;
      float largest = 0.0f;
      for (int64_t i = 0; i < in_features; ++i) largest = std::max(largest, std::abs(row[i]));
      const float scale = largest > 0.0f ? largest / 127.0f : 1.0f;
      rounded.scale[m] = scale;
      for (int64_t i = 0; i < in_features; ++i) {
        const auto q = static_cast<int32_t>(std::nearbyint(row[i] / scale));
        rounded.unsigned_q[m * in_features + i] = static_cast<uint8_t>(kVnni ? q + 128 : std::abs(q));
        if (!kVnni) rounded.q[m * in_features + i] = static_cast<int8_t>(q);
      }
    }
  });
  return rounded;
}

// The weight arrives packed by int8_native.pack: output features in groups of kOutputs, and within a group
// its rows' first 32 values side by side, then their next 32, and so on. A group is one run of memory, read
// front to back once (hardware prefetchers follow one stream best; four rows 768 bytes apart read the head of
// GPT-2 at half the speed).
constexpr int64_t kOutputs = 4;
#if defined(__AVX512F__)
constexpr int64_t kRowGroup = 4;  // 16 sums in registers: AVX-512 has 32 of them
#else
constexpr int64_t kRowGroup = 2;  // AVX2 has 16
#endif

// The integer sums q . w of one group of kOutputs output features by kRows rows. Each vector of weights is
// loaded once and multiplied with every row, and the group's weights (at most 4 x 3072 bytes) stay in the
// first-level cache while all rows pass, so memory is read once whatever the number of rows. The kRows x
// kOutputs sums are independent, so the multiply-adds do not wait on each other.
template <int64_t kRows>
void group(const RoundedRows& x, int64_t first_row, int64_t in_features, const int8_t* weight,
           int32_t (&dots)[kRowGroup][kOutputs]) {
  __m256i sums[kRows][kOutputs], weight_sums[kOutputs];
  for (int64_t o = 0; o < kOutputs; ++o) {
    weight_sums[o] = _mm256_setzero_si256();
    for (int64_t r = 0; r < kRows; ++r) sums[r][o] = _mm256_setzero_si256();
  }
  const uint8_t* unsigned_q = x.unsigned_q.data() + first_row * in_features;
  const int8_t* q = kVnni ? nullptr : x.q.data() + first_row * in_features;
  const __m256i ones = _mm256_set1_epi8(1);
  for (int64_t i = 0; i < in_features; i += kWidth, weight += kOutputs * kWidth) {
    __m256i weights[kOutputs];
    for (int64_t o = 0; o < kOutputs; ++o) {
      weights[o] = load(weight + o * kWidth);
      if (kVnni) weight_sums[o] = multiply_add(weight_sums[o], ones, weights[o]);
    }
    for (int64_t r = 0; r < kRows; ++r) {
      const __m256i a = load(unsigned_q + r * in_features + i);
      if (kVnni) {
        for (int64_t o = 0; o < kOutputs; ++o) sums[r][o] = multiply_add(sums[r][o], a, weights[o]);
      } else {
        const __m256i sign = load(q + r * in_features + i);
        for (int64_t o = 0; o < kOutputs; ++o)
          sums[r][o] = multiply_add(sums[r][o], a, _mm256_sign_epi8(weights[o], sign));
      }
    }
  }
  for (int64_t o = 0; o < kOutputs; ++o) {
    const int32_t offset = kVnni ? 128 * total(weight_sums[o]) : 0;
    for (int64_t r = 0; r < kRows; ++r) dots[r][o] = total(sums[r][o]) - offset;
  }
}

// group<n> for n = rows (at most kRowGroup): each count of rows gets its own unrolled loop
template <int64_t kRows = kRowGroup>
void group_of(int64_t rows, const RoundedRows& x, int64_t first_row, int64_t in_features, const int8_t* weight,
              int32_t (&dots)[kRowGroup][kOutputs]) {
  if constexpr (kRows > 1) {
    if (rows < kRows) return group_of<kRows - 1>(rows, x, first_row, in_features, weight, dots);
  }
  group<kRows>(x, first_row, in_features, weight, dots);
}

at::Tensor int8_linear(const at::Tensor& rows, const at::Tensor& weight, const at::Tensor& scale,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(rows.dim() == 2 && rows.scalar_type() == at::kFloat, "int8_linear: rows must be (n, in) float32");
  const int64_t n_rows = rows.size(0), in_features = rows.size(1), out_features = scale.size(0);
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.is_contiguous() && weight.dim() == 4 &&
                  weight.size(0) == (out_features + kOutputs - 1) / kOutputs && weight.size(1) * kWidth == in_features &&
                  weight.size(2) == kOutputs && weight.size(3) == kWidth,
              "int8_linear: the weight must be int8, packed by int8_native.pack for these widths");
  const at::Tensor x = rows.contiguous();
  const RoundedRows rounded = round_rows(x.data_ptr<float>(), n_rows, in_features);
  at::Tensor out = at::empty({n_rows, out_features}, rows.options());
  const int8_t* w = weight.data_ptr<int8_t>();
  const float* w_scale = scale.data_ptr<float>();
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* y = out.data_ptr<float>();
  // the groups split across threads, at least 64 KB of weight a task
  const int64_t grain = std::max<int64_t>(1, 65536 / (kOutputs * in_features));
  at::parallel_for(0, weight.size(0), grain, [&](int64_t begin, int64_t end) {
    int32_t dots[kRowGroup][kOutputs];
    for (int64_t g = begin; g < end; ++g) {
      const int8_t* group_weight = w + g * kOutputs * in_features;
      const int64_t first = g * kOutputs, outputs = std::min(kOutputs, out_features - first);  // the last may be short
      for (int64_t m = 0; m < n_rows;) {
        const int64_t n = std::min(kRowGroup, n_rows - m);
        group_of(n, rounded, m, in_features, group_weight, dots);
        for (int64_t r = 0; r < n; ++r)
          for (int64_t o = 0; o < outputs; ++o)
            y[(m + r) * out_features + first + o] = static_cast<float>(dots[r][o]) * rounded.scale[m + r] *
                                                       w_scale[first + o] + (b ? b[first + o] : 0.0f);
        m += n;
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(minigpt, CPU, m) { m.impl("int8_linear", int8_linear); }
