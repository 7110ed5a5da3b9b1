// Fused CPU kernels for the decoder's small ops and for paged decode attention.
//
// On a CPU at small batch the decoder's elementwise ops (RMSNorm, RoPE, SiLU*mul) cost more in
// dispatch and memory passes than in arithmetic, and decode attention through gathered pages copies
// every K/V row twice per layer. Each kernel here makes one pass over its data, computes in float
// and rounds once per stored value, and reads K/V pages where they lie.
//
// Built at run time by worker/kernels/__init__.py (torch.utils.cpp_extension, -O3 -march=native).
// Every op takes its outputs preallocated and returns nothing. Inner loops run over 16-float lanes
// so the compiler vectorises them without -ffast-math.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kLanes = 16;

// Loads widen to float and stores round to nearest even. The bf16 pair works on the bits (plain
// integer ops that vectorise); c10's own conversions branch on NaN and keep loops scalar.
template <typename T>
inline float to_float(T x) {
  return static_cast<float>(x);
}

template <>
inline float to_float(at::BFloat16 x) {
  return __builtin_bit_cast(float, static_cast<uint32_t>(x.x) << 16);
}

template <typename T>
inline T from_float(float f) {
  return static_cast<T>(f);
}

template <>
inline at::BFloat16 from_float(float f) {
  uint32_t bits = __builtin_bit_cast(uint32_t, f);
  bits = f != f ? 0x7FC00000u : bits + 0x7FFFu + ((bits >> 16) & 1u);
  return at::BFloat16(static_cast<uint16_t>(bits >> 16), at::BFloat16::from_bits());
}

// exp(x) to ~2e-7 relative error, written so that loops of it vectorise (libm's exp does not):
// x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its degree-6 Taylor polynomial, 2^n by the exponent
// bits. x is clamped to [-87, 88], where 2^n stays a normal float.
inline float fast_exp(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  // round to nearest by the 1.5 * 2^23 shift: std::floor would keep the loop scalar
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;  // ln2, hi + lo
  const float p =
      1.f + r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 + r * (1.f / 720))))));
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
}

// The sum of a 16-float partial, by halves so that each level is one vector add.
inline float fold_lanes(float* part) {
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
    for (int64_t j = 0; j < width; ++j) part[j] += part[j + width];
  }
  return part[0];
}

// sum_d a[d] * b[d], a in float, b in T
template <typename T>
inline float dot(const float* a, const T* b, int64_t n) {
  float part[kLanes] = {0.f};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) part[j] += a[d + j] * to_float(b[d + j]);
  }
  float sum = fold_lanes(part);
  for (; d < n; ++d) sum += a[d] * to_float(b[d]);
  return sum;
}

inline float lane_sum(const float* a, int64_t n) {
  float part[kLanes] = {0.f};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) part[j] += a[i + j];
  }
  float sum = fold_lanes(part);
  for (; i < n; ++i) sum += a[i];
  return sum;
}

inline float lane_sum_squares(const float* a, int64_t n) {
  float part[kLanes] = {0.f};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) part[j] += a[i + j] * a[i + j];
  }
  float sum = fold_lanes(part);
  for (; i < n; ++i) sum += a[i] * a[i];
  return sum;
}

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.stride(-1) == 1, name, " must be contiguous in its last dimension");
}

// out = rms_norm(x [+ residual]) * weight; sum_out = x + residual when residual is given.
template <typename T>
void add_rms_norm_rows(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight,
                       double eps, at::Tensor& out, at::Tensor* sum_out) {
  const int64_t rows = x.size(0), n = x.size(1);
  const T* xp = x.data_ptr<T>();
  const T* rp = residual ? residual->data_ptr<T>() : nullptr;
  const T* wp = weight.data_ptr<T>();
  T* op = out.data_ptr<T>();
  T* sp = sum_out ? sum_out->data_ptr<T>() : nullptr;
  const int64_t xs = x.stride(0), rs = residual ? residual->stride(0) : 0, os = out.stride(0);
  const int64_t ss = sum_out ? sum_out->stride(0) : 0;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(n);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = xp + r * xs;
      float* rowp = row.data();
      if (rp) {
        const T* rr = rp + r * rs;
        // Rounded to T first, as the eager add stores it: the norm reads the stored residual.
        for (int64_t i = 0; i < n; ++i) rowp[i] = to_float(from_float<T>(to_float(xr[i]) + to_float(rr[i])));
      } else {
        for (int64_t i = 0; i < n; ++i) rowp[i] = to_float(xr[i]);
      }
      const float squares = lane_sum_squares(row.data(), n);
      if (sp) {
        for (int64_t i = 0; i < n; ++i) sp[r * ss + i] = from_float<T>(row[i]);
      }
      const float inv = 1.f / std::sqrt(squares / static_cast<float>(n) + static_cast<float>(eps));
      for (int64_t i = 0; i < n; ++i) {
        op[r * os + i] = from_float<T>(to_float(wp[i]) * to_float(from_float<T>(row[i] * inv)));
      }
    }
  });
}

void add_rms_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double eps,
                  at::Tensor& out, at::Tensor& sum_out) {
  check_rows(x, "x");
  check_rows(residual, "residual");
  TORCH_CHECK(x.dim() == 2 && residual.sizes() == x.sizes() && out.sizes() == x.sizes() &&
                  sum_out.sizes() == x.sizes(), "add_rms_norm: x, residual, out, sum_out must be [rows, n]");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_rms_norm", [&] {
    add_rms_norm_rows<scalar_t>(x, &residual, weight.contiguous(), eps, out, &sum_out);
  });
}

void rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor& out) {
  check_rows(x, "x");
  TORCH_CHECK(x.dim() == 2 && out.sizes() == x.sizes(), "rms_norm: x and out must be [rows, n]");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    add_rms_norm_rows<scalar_t>(x, nullptr, weight.contiguous(), eps, out, nullptr);
  });
}

// x [tokens, heads, head_dim] rotated in place (NeoX halves); cos, sin [tokens, ..., head_dim / 2].
template <typename T>
void rotate_rows(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t tokens = x.size(0), heads = x.size(1), half = x.size(2) / 2;
  T* xp = x.data_ptr<T>();
  const T* cp = cos.data_ptr<T>();
  const T* snp = sin.data_ptr<T>();
  const int64_t ts = x.stride(0), hs = x.stride(1), cs = cos.stride(0), ss = sin.stride(0);
  at::parallel_for(0, tokens * heads, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = i / heads, h = i % heads;
      T* a = xp + t * ts + h * hs;
      T* b = a + half;
      const T* c = cp + t * cs;
      const T* s = snp + t * ss;
      for (int64_t d = 0; d < half; ++d) {
        const float x1 = to_float(a[d]), x2 = to_float(b[d]), cv = to_float(c[d]), sv = to_float(s[d]);
        a[d] = from_float<T>(x1 * cv - x2 * sv);
        b[d] = from_float<T>(x2 * cv + x1 * sv);
      }
    }
  });
}

void rotary(at::Tensor& q, at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin) {
  for (at::Tensor* x : {&q, &k}) {
    check_rows(*x, "q/k");
    TORCH_CHECK(x->dim() == 3 && x->size(2) % 2 == 0 && x->size(0) == cos.size(0),
                "rotary: q and k must be [tokens, heads, head_dim] with an even head_dim");
    TORCH_CHECK(cos.scalar_type() == x->scalar_type() && sin.scalar_type() == x->scalar_type(),
                "rotary: cos and sin must have q's dtype");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x->scalar_type(), "rotary", [&] {
      rotate_rows<scalar_t>(*x, cos.contiguous(), sin.contiguous());
    });
  }
}

// out [tokens, inter] = silu(x[:, :inter]) * x[:, inter:], x [tokens, 2 * inter].
template <typename T>
void silu_mul_rows(const at::Tensor& x, at::Tensor& out) {
  const int64_t tokens = x.size(0), inter = out.size(1);
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t xs = x.stride(0), os = out.stride(0);
  at::parallel_for(0, tokens, 4, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const T* g = xp + t * xs;
      const T* u = g + inter;
      for (int64_t i = 0; i < inter; ++i) {
        const float gv = to_float(g[i]);
        // silu rounded to T, then the product, as the two eager ops store them
        op[t * os + i] = from_float<T>(to_float(from_float<T>(gv / (1.f + fast_exp(-gv)))) * to_float(u[i]));
      }
    }
  });
}

void silu_and_mul(const at::Tensor& x, at::Tensor& out) {
  check_rows(x, "x");
  TORCH_CHECK(x.dim() == 2 && out.dim() == 2 && x.size(0) == out.size(0) && x.size(1) == 2 * out.size(1),
              "silu_and_mul: x must be [tokens, 2 * n] and out [tokens, n]");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "silu_and_mul",
                                  [&] { silu_mul_rows<scalar_t>(x, out); });
}

// sc[0, len) -> exp(sc - max), in place; returns 1 / their sum (0 for an empty row), the softmax's
// normaliser, applied to the outputs once instead of to every score.
inline float softmax_numerators(float* sc, int64_t len) {
  const float top = len ? *std::max_element(sc, sc + len) : 0.f;
  for (int64_t t = 0; t < len; ++t) sc[t] = fast_exp(sc[t] - top);
  const float sum = lane_sum(sc, len);
  return sum > 0.f ? 1.f / sum : 0.f;
}

// One query per sequence against its K/V pages, read in place. q [seqs, heads, dim];
// k_cache, v_cache [pages, page_size, kv_heads, dim]; page_table [seqs, max_pages] int64;
// kv_lens [seqs] int64; out [seqs, heads, dim]. The query heads of one KV head are done together,
// so each K and V row is read once.
template <typename T, int64_t kDim>
void decode_rows(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                 const at::Tensor& page_table, const at::Tensor& kv_lens, double scale, at::Tensor& out) {
  const int64_t seqs = q.size(0), heads = q.size(1), dim = kDim ? kDim : q.size(2);
  const int64_t page_size = k_cache.size(1), kv_heads = k_cache.size(2);
  const int64_t group = heads / kv_heads, max_pages = page_table.size(1);
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  const int64_t* pt = page_table.data_ptr<int64_t>();
  const int64_t* lens = kv_lens.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), os0 = out.stride(0), os1 = out.stride(1);
  const int64_t row = kv_heads * dim;  // one token's K (or V) across KV heads
  at::parallel_for(0, seqs * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(group * dim), acc(group * dim), row_f(dim), scores, inv_sum(group);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / kv_heads, h = task % kv_heads, len = lens[s];
      const int64_t* pages = pt + s * max_pages;
      for (int64_t g = 0; g < group; ++g) {
        const T* qr = qp + s * qs0 + (h * group + g) * qs1;
        for (int64_t d = 0; d < dim; ++d) qf[g * dim + d] = to_float(qr[d]) * static_cast<float>(scale);
      }
      scores.resize(group * len);
      // scores[g, t] = q_g . k_t, the pages walked in order; each K row widened once for the group
      for (int64_t start = 0; start < len; start += page_size) {
        const T* page_k = kp + pages[start / page_size] * page_size * row + h * dim;
        for (int64_t t = start; t < std::min(len, start + page_size); ++t) {
          const T* kr = page_k + (t - start) * row;
          for (int64_t d = 0; d < dim; ++d) row_f[d] = to_float(kr[d]);
          for (int64_t g = 0; g < group; ++g) scores[g * len + t] = dot(&qf[g * dim], row_f.data(), dim);
        }
      }
      for (int64_t g = 0; g < group; ++g) inv_sum[g] = softmax_numerators(&scores[g * len], len);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t start = 0; start < len; start += page_size) {
        const T* page_v = vp + pages[start / page_size] * page_size * row + h * dim;
        for (int64_t t = start; t < std::min(len, start + page_size); ++t) {
          const T* vr = page_v + (t - start) * row;
          for (int64_t d = 0; d < dim; ++d) row_f[d] = to_float(vr[d]);
          for (int64_t g = 0; g < group; ++g) {
            const float p = scores[g * len + t];
            float* a = &acc[g * dim];
            for (int64_t d = 0; d < dim; ++d) a[d] += p * row_f[d];
          }
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        T* orow = op + s * os0 + (h * group + g) * os1;
        for (int64_t d = 0; d < dim; ++d) orow[d] = from_float<T>(acc[g * dim + d] * inv_sum[g]);
      }
    }
  });
}

#if defined(__AVX512BF16__)
// decode_rows for bf16 on CPUs with AVX512-BF16, a task per (sequence, KV head) as above, with the
// group's accumulators in registers: each q.k is VDPBF16PS over the row (bf16 products are exact in
// float, summed in float), each V row is widened once and added into all kGroup outputs. The scale
// is applied to the float scores, so q is used as stored.
template <int64_t kDim, int64_t kGroup>
void decode_rows_bf16(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                      const at::Tensor& page_table, const at::Tensor& kv_lens, double scale, at::Tensor& out) {
  static_assert(kDim % 32 == 0, "rows are read 32 bf16 at a time");
  constexpr int64_t kPairs = kDim / 32, kVecs = kDim / 16;
  const int64_t seqs = q.size(0), page_size = k_cache.size(1), kv_heads = k_cache.size(2);
  const int64_t max_pages = page_table.size(1), row = kv_heads * kDim;
  const auto* qp = reinterpret_cast<const uint16_t*>(q.data_ptr<at::BFloat16>());
  const auto* kp = reinterpret_cast<const uint16_t*>(k_cache.data_ptr<at::BFloat16>());
  const auto* vp = reinterpret_cast<const uint16_t*>(v_cache.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t* pt = page_table.data_ptr<int64_t>();
  const int64_t* lens = kv_lens.data_ptr<int64_t>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), os0 = out.stride(0), os1 = out.stride(1);
  const float fscale = static_cast<float>(scale);
  at::parallel_for(0, seqs * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / kv_heads, h = task % kv_heads, len = lens[s];
      const int64_t* pages = pt + s * max_pages;
      __m512bh qv[kGroup][kPairs];
      for (int64_t g = 0; g < kGroup; ++g) {
        const uint16_t* qr = qp + s * qs0 + (h * kGroup + g) * qs1;
        for (int64_t c = 0; c < kPairs; ++c) qv[g][c] = (__m512bh)_mm512_loadu_si512(qr + 32 * c);
      }
      scores.resize(kGroup * len);
      for (int64_t start = 0; start < len; start += page_size) {
        const uint16_t* page_k = kp + pages[start / page_size] * page_size * row + h * kDim;
        for (int64_t t = start; t < std::min(len, start + page_size); ++t) {
          const uint16_t* kr = page_k + (t - start) * row;
          __m512bh kv[kPairs];
          for (int64_t c = 0; c < kPairs; ++c) kv[c] = (__m512bh)_mm512_loadu_si512(kr + 32 * c);
          for (int64_t g = 0; g < kGroup; ++g) {
            __m512 acc = _mm512_setzero_ps();
            for (int64_t c = 0; c < kPairs; ++c) acc = _mm512_dpbf16_ps(acc, qv[g][c], kv[c]);
            scores[g * len + t] = _mm512_reduce_add_ps(acc) * fscale;
          }
        }
      }
      float inv_sum[kGroup];
      for (int64_t g = 0; g < kGroup; ++g) inv_sum[g] = softmax_numerators(&scores[g * len], len);
      __m512 acc[kGroup][kVecs];
      for (int64_t g = 0; g < kGroup; ++g)
        for (int64_t c = 0; c < kVecs; ++c) acc[g][c] = _mm512_setzero_ps();
      for (int64_t start = 0; start < len; start += page_size) {
        const uint16_t* page_v = vp + pages[start / page_size] * page_size * row + h * kDim;
        for (int64_t t = start; t < std::min(len, start + page_size); ++t) {
          const uint16_t* vr = page_v + (t - start) * row;
          __m512 vf[kVecs];
          for (int64_t c = 0; c < kVecs; ++c) {
            const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vr + 16 * c));
            vf[c] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
          }
          for (int64_t g = 0; g < kGroup; ++g) {
            const __m512 p = _mm512_set1_ps(scores[g * len + t]);
            for (int64_t c = 0; c < kVecs; ++c) acc[g][c] = _mm512_fmadd_ps(p, vf[c], acc[g][c]);
          }
        }
      }
      for (int64_t g = 0; g < kGroup; ++g) {
        uint16_t* orow = op + s * os0 + (h * kGroup + g) * os1;
        float tmp[kDim];
        for (int64_t c = 0; c < kVecs; ++c)
          _mm512_storeu_ps(tmp + 16 * c, _mm512_mul_ps(acc[g][c], _mm512_set1_ps(inv_sum[g])));
        for (int64_t d = 0; d < kDim; ++d) orow[d] = from_float<at::BFloat16>(tmp[d]).x;
      }
    }
  });
}

// The unrolled bf16 kernel for this head size and group, when there is one.
template <int64_t kDim>
bool decode_bf16_unrolled(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& page_table, const at::Tensor& kv_lens, double scale,
                          at::Tensor& out) {
  switch (q.size(1) / k_cache.size(2)) {
#define BUSSTOP_GROUP(G) \
  case G:                \
    decode_rows_bf16<kDim, G>(q, k_cache, v_cache, page_table, kv_lens, scale, out); \
    return true;
    BUSSTOP_GROUP(1) BUSSTOP_GROUP(2) BUSSTOP_GROUP(3) BUSSTOP_GROUP(4)
    BUSSTOP_GROUP(5) BUSSTOP_GROUP(6) BUSSTOP_GROUP(7) BUSSTOP_GROUP(8)
#undef BUSSTOP_GROUP
    default:
      return false;
  }
}
#endif

// This step's keys and values into their cache slots (slot = page * page_size + offset), both caches in
// one call: two index_copy_ a layer, with their views, cost more than the copies at decode batch sizes.
void write_kv(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache, at::Tensor& v_cache,
              const at::Tensor& slots) {
  TORCH_CHECK(k.dim() == 3 && v.sizes() == k.sizes() && k_cache.dim() == 4 &&
                  v_cache.sizes() == k_cache.sizes() && k.size(1) == k_cache.size(2) &&
                  k.size(2) == k_cache.size(3) && k.stride(2) == 1 && v.stride(2) == 1 &&
                  k_cache.is_contiguous() && v_cache.is_contiguous(),
              "write_kv: k, v [tokens, kv_heads, dim] (rows contiguous), "
              "caches [pages, page_size, kv_heads, dim]");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == k_cache.scalar_type() &&
                  v_cache.scalar_type() == k_cache.scalar_type() && k.device().is_cpu() &&
                  v.device().is_cpu() && k_cache.device().is_cpu() && v_cache.device().is_cpu(),
              "write_kv: k, v and the caches share a dtype, on the CPU");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.numel() == k.size(0),
              "write_kv: slots [tokens], contiguous int64");
  const int64_t heads = k.size(1), row = k.size(2) * k.element_size();
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  const auto* slot = slots.data_ptr<int64_t>();
  auto* kc = static_cast<char*>(k_cache.data_ptr());
  auto* vc = static_cast<char*>(v_cache.data_ptr());
  const auto* kp = static_cast<const char*>(k.data_ptr());
  const auto* vp = static_cast<const char*>(v.data_ptr());
  const int64_t es = k.element_size();
  for (int64_t t = 0; t < k.size(0); ++t) {
    TORCH_CHECK(slot[t] >= 0 && slot[t] < num_slots, "write_kv: slot ", slot[t], " outside the cache");
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t dst = (slot[t] * heads + h) * row;
      std::memcpy(kc + dst, kp + (t * k.stride(0) + h * k.stride(1)) * es, row);
      std::memcpy(vc + dst, vp + (t * v.stride(0) + h * v.stride(1)) * es, row);
    }
  }
}

void paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& page_table, const at::Tensor& kv_lens, double scale,
                            at::Tensor& out) {
  check_rows(q, "q");
  check_rows(out, "out");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "the K/V caches must be contiguous");
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && q.size(2) == k_cache.size(3) &&
                  q.size(1) % k_cache.size(2) == 0 && out.sizes() == q.sizes(),
              "paged_decode_attention: q [seqs, heads, dim], caches [pages, page_size, kv_heads, dim]");
  TORCH_CHECK(page_table.scalar_type() == at::kLong && kv_lens.scalar_type() == at::kLong &&
                  page_table.is_contiguous() && kv_lens.is_contiguous() && page_table.size(0) == q.size(0) &&
                  kv_lens.size(0) == q.size(0),
              "paged_decode_attention: page_table [seqs, max_pages] and kv_lens [seqs], contiguous int64");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "paged_decode_attention: q and the caches must share a dtype");
#if defined(__AVX512BF16__)
  if (q.scalar_type() == at::kBFloat16 && q.stride(2) == 1 && out.stride(2) == 1 &&
      ((q.size(2) == 64 && decode_bf16_unrolled<64>(q, k_cache, v_cache, page_table, kv_lens, scale, out)) ||
       (q.size(2) == 128 && decode_bf16_unrolled<128>(q, k_cache, v_cache, page_table, kv_lens, scale, out)))) {
    return;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode_attention", [&] {
    // the common head sizes get loops of a known length, which the compiler unrolls
    if (q.size(2) == 64) {
      decode_rows<scalar_t, 64>(q, k_cache, v_cache, page_table, kv_lens, scale, out);
    } else if (q.size(2) == 128) {
      decode_rows<scalar_t, 128>(q, k_cache, v_cache, page_table, kv_lens, scale, out);
    } else {
      decode_rows<scalar_t, 0>(q, k_cache, v_cache, page_table, kv_lens, scale, out);
    }
  });
}

#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline __m512 load16(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
#endif

// The index of the largest of xr[0, n): the first of equal ones, and the first NaN where there is
// one, as torch.argmax. Two passes: the maximum (NaN noted aside), then the first place it occurs.
template <typename T>
int64_t argmax_row(const T* xr, int64_t n) {
  float top = -INFINITY;
  bool nan = false;
  int64_t i = 0;
#if defined(__AVX512F__)
  if constexpr (!std::is_same_v<T, double>) {
    __m512 best = _mm512_set1_ps(-INFINITY);
    __mmask16 unordered = 0;
    for (; i + kLanes <= n; i += kLanes) {
      const __m512 v = load16(xr + i);
      best = _mm512_max_ps(best, v);
      unordered |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    }
    top = _mm512_reduce_max_ps(best);
    nan = unordered != 0;
  }
#endif
  for (int64_t t = i; t < n; ++t) {
    const float v = to_float(xr[t]);
    top = v > top ? v : top;
    nan |= v != v;
  }
  int64_t at = 0;
  if (nan) {
    while (to_float(xr[at]) == to_float(xr[at])) ++at;
    return at;
  }
#if defined(__AVX512F__)
  if constexpr (!std::is_same_v<T, double>) {
    const __m512 wanted = _mm512_set1_ps(top);
    for (; at + kLanes <= n; at += kLanes) {
      const __mmask16 hit = _mm512_cmp_ps_mask(load16(xr + at), wanted, _CMP_EQ_OQ);
      if (hit) return at + __builtin_ctz(hit);
    }
  }
#endif
  for (; at < n; ++at) {
    if (to_float(xr[at]) == top) return at;
  }
  return 0;  // an empty row
}

template <typename T>
void argmax_rows(const at::Tensor& x, at::Tensor& out) {
  const int64_t rows = x.size(0), n = x.size(1), xs = x.stride(0);
  const T* xp = x.data_ptr<T>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) op[r] = argmax_row(xp + r * xs, n);
  });
}

void argmax(const at::Tensor& x, at::Tensor& out) {
  check_rows(x, "x");
  TORCH_CHECK(x.dim() == 2 && out.dim() == 1 && out.size(0) == x.size(0) && out.scalar_type() == at::kLong &&
                  out.is_contiguous() && x.size(1) < (int64_t(1) << 31),
              "argmax: x [rows, n] and out [rows] int64");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "argmax",
                                  [&] { argmax_rows<scalar_t>(x, out); });
}

#if defined(__AVX512BF16__)
// out [m, n] = x [m, k] @ w [n, k]^T (+ bias), x bf16, out bf16 or float, with w packed once as panels
// of 16 output columns, [ceil(n / 16), k / 2, 16, 2] (worker/kernels/linear.py): each VDPBF16PS takes
// one pair of x broadcast against a panel's 16 columns, products exact in float and summed in float.
// A tile of kRows rows by kPanels panels keeps its sums in registers (no horizontal sums), loads
// each weight vector once for all its rows and each x pair once for all its panels, so decode at a
// few rows streams the weights at memory speed and larger batches stay in L1 per panel group.
template <int64_t kRows, int64_t kPanels, typename OutT>
inline void panel_tile(const uint16_t* xp, int64_t xs, const uint16_t* panels, int64_t k, const uint16_t* bias,
                       OutT* op, int64_t os, int64_t cols) {
  __m512 acc[kRows][kPanels];
  for (int64_t r = 0; r < kRows; ++r)
    for (int64_t c = 0; c < kPanels; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t p = 0; p < k / 2; ++p) {
    __m512bh wv[kPanels];
    for (int64_t c = 0; c < kPanels; ++c) wv[c] = (__m512bh)_mm512_loadu_si512(panels + c * 16 * k + 32 * p);
    for (int64_t r = 0; r < kRows; ++r) {
      uint32_t pair;
      std::memcpy(&pair, xp + r * xs + 2 * p, sizeof(pair));
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(pair));
      for (int64_t c = 0; c < kPanels; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], xv, wv[c]);
    }
  }
  for (int64_t c = 0; c < kPanels; ++c) {
    const int64_t left = cols - 16 * c;
    const __mmask16 mask = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
    const __m512 b = bias ? _mm512_castsi512_ps(_mm512_slli_epi32(  // bf16 bias, widened
                                _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, bias + 16 * c)), 16))
                          : _mm512_setzero_ps();
    for (int64_t r = 0; r < kRows; ++r) {
      const __m512 v = _mm512_add_ps(acc[r][c], b);
      if constexpr (std::is_same_v<OutT, float>) {
        _mm512_mask_storeu_ps(op + r * os + 16 * c, mask, v);
      } else {  // round to nearest even, as from_float
        _mm256_mask_storeu_epi16(op + r * os + 16 * c, mask, (__m256i)_mm512_cvtneps_pbh(v));
      }
    }
  }
}

// Every row of x against kPanels panels: tiles of 6 rows, then the rest.
template <int64_t kPanels, typename OutT>
inline void panel_rows(const uint16_t* xp, int64_t m, int64_t xs, const uint16_t* panels, int64_t k,
                       const uint16_t* bias, OutT* o, int64_t os, int64_t cols) {
  constexpr int64_t kRows = 6;
  int64_t r = 0;
  for (; r + kRows <= m; r += kRows) {
    panel_tile<kRows, kPanels>(xp + r * xs, xs, panels, k, bias, o + r * os, os, cols);
  }
  switch (m - r) {
    case 5: panel_tile<5, kPanels>(xp + r * xs, xs, panels, k, bias, o + r * os, os, cols); break;
    case 4: panel_tile<4, kPanels>(xp + r * xs, xs, panels, k, bias, o + r * os, os, cols); break;
    case 3: panel_tile<3, kPanels>(xp + r * xs, xs, panels, k, bias, o + r * os, os, cols); break;
    case 2: panel_tile<2, kPanels>(xp + r * xs, xs, panels, k, bias, o + r * os, os, cols); break;
    case 1: panel_tile<1, kPanels>(xp + r * xs, xs, panels, k, bias, o + r * os, os, cols); break;
    default: break;
  }
}

template <typename OutT>
void panel_linear(const at::Tensor& x, const at::Tensor& packed, const uint16_t* bias, at::Tensor& out) {
  constexpr int64_t kPanels = 4;
  const int64_t m = x.size(0), k = x.size(1), n = out.size(1), xs = x.stride(0), os = out.stride(0);
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>());
  OutT* op = out.data_ptr<OutT>();
  const int64_t num_panels = (n + 15) / 16;
  at::parallel_for(0, (num_panels + kPanels - 1) / kPanels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t first = g * kPanels, count = std::min(kPanels, num_panels - first);
      const uint16_t* panels = wp + first * 16 * k;
      const uint16_t* b = bias ? bias + 16 * first : nullptr;
      OutT* o = op + 16 * first;
      const int64_t cols = n - 16 * first;
      if (count == kPanels) {
        panel_rows<kPanels>(xp, m, xs, panels, k, b, o, os, cols);
      } else {
        for (int64_t c = 0; c < count; ++c) {
          panel_rows<1>(xp, m, xs, panels + c * 16 * k, k, b ? b + 16 * c : nullptr, o + 16 * c, os,
                        cols - 16 * c);
        }
      }
    }
  });
}
#endif

// Whether this build has the panel kernel (a CPU with AVX512-BF16).
bool has_bf16_panels() {
#if defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

void bf16_panel_linear(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias,
                       at::Tensor& out) {
  TORCH_CHECK(has_bf16_panels(), "bf16_panel_linear: needs a CPU with AVX512-BF16");
  check_rows(x, "x");
  check_rows(out, "out");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && packed.dim() == 4 &&
                  packed.scalar_type() == at::kBFloat16 && packed.is_contiguous() && packed.size(2) == 16 &&
                  packed.size(3) == 2 && x.size(1) == 2 * packed.size(1),
              "bf16_panel_linear: bf16 x [m, k] and packed [panels, k / 2, 16, 2]");
  TORCH_CHECK(out.dim() == 2 && out.size(0) == x.size(0) && out.size(1) <= 16 * packed.size(0) &&
                  out.size(1) > 16 * (packed.size(0) - 1) &&
                  (out.scalar_type() == at::kBFloat16 || out.scalar_type() == at::kFloat),
              "bf16_panel_linear: out [m, n] bf16 or float, n within the last panel");
  TORCH_CHECK(!bias || (bias->scalar_type() == at::kBFloat16 && bias->is_contiguous() &&
                        bias->numel() == out.size(1)), "bf16_panel_linear: bias must be bf16 [n]");
#if defined(__AVX512BF16__)
  const auto* b = bias ? reinterpret_cast<const uint16_t*>(bias->data_ptr<at::BFloat16>()) : nullptr;
  if (out.scalar_type() == at::kFloat) {
    panel_linear<float>(x, packed, b, out);
  } else {
    panel_linear<at::BFloat16>(x, packed, b, out);
  }
#endif
}

}  // namespace

TORCH_LIBRARY(busstop_cpu, m) {
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps, Tensor(a!) out, "
        "Tensor(b!) sum_out) -> ()", &add_rms_norm);
  m.def("rms_norm(Tensor x, Tensor weight, float eps, Tensor(a!) out) -> ()", &rms_norm);
  m.def("rotary(Tensor(a!) q, Tensor(b!) k, Tensor cos, Tensor sin) -> ()", &rotary);
  m.def("silu_and_mul(Tensor x, Tensor(a!) out) -> ()", &silu_and_mul);
  m.def("paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor page_table, "
        "Tensor kv_lens, float scale, Tensor(a!) out) -> ()", &paged_decode_attention);
  m.def("write_kv(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots) -> ()", &write_kv);
  m.def("argmax(Tensor x, Tensor(a!) out) -> ()", &argmax);
  m.def("has_bf16_panels() -> bool", &has_bf16_panels);
  m.def("bf16_panel_linear(Tensor x, Tensor packed, Tensor? bias, Tensor(a!) out) -> ()", &bf16_panel_linear);
}
