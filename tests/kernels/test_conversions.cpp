// The 16-bit conversions: the scalar ones of src/kernels/half.hpp and the vector ones inside
// every bf16/f16 kernel table this CPU can run, against tests/support/half_ref.hpp (an
// independent model: ldexp and nearbyint in double, no bit tricks) and hand-derived bit
// patterns.
//  - widening: all 65536 patterns of each format, exactly (NaN stays NaN, made quiet);
//  - narrowing: round to nearest even at every tie position of both formats, overflow to
//    inf, subnormals, NaN; hand-picked cases spelled out as bits.
// The vector paths are reached through the normalize kernel: with center 0, scale 1 and
// shift -0 it stores its input unchanged (widen, then narrow), and with scale 0 it stores the
// shift, i.e. any float per feature, narrowed.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "half_ref.hpp"
#include "kernels/half.hpp"
#include "kernels/kernels.hpp"
#include "layer/shape_plan.hpp"

namespace bn_test {
namespace {

using bn::kernels::bf16;
using bn::kernels::f16;

float from_bits(uint32_t b) {
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}
uint32_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

template <class H>
const HalfFormat& format_of() {
  return std::is_same_v<H, bf16> ? kBfloat16 : kBinary16;
}
template <class H>
uint16_t quiet_bit() {
  return std::is_same_v<H, bf16> ? 0x0040 : 0x0200;
}
template <class H>
uint16_t narrow(float v) {
  if constexpr (std::is_same_v<H, bf16>) {
    return bn::kernels::to_bf16(v).bits;
  } else {
    return bn::kernels::to_f16(v).bits;
  }
}

// Narrowing agrees with the model: the same bits, or both NaN with v's sign.
template <class H>
bool narrows_like_model(float v, uint16_t got) {
  const HalfFormat& fmt = format_of<H>();
  const uint16_t want = half_encode(fmt, v);
  if (std::isnan(v)) return half_is_nan(fmt, got) && (got & 0x8000) == (want & 0x8000);
  return got == want;
}

TEMPLATE_TEST_CASE("scalar widening is exact for every pattern and narrowing gives it back", "[kernels][half]", bf16,
                   f16) {
  const HalfFormat& fmt = format_of<TestType>();
  int failures = 0;
  for (uint32_t b = 0; b < 65536; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    const float wide = bn::kernels::to_float(TestType{bits});
    const double want = half_decode(fmt, bits);
    const uint16_t back = narrow<TestType>(wide);
    bool ok;
    if (half_is_nan(fmt, bits)) {
      // NaN stays NaN with its sign and payload, made quiet (as the x86 instructions do).
      ok = std::isnan(wide) && std::signbit(wide) == ((bits & 0x8000) != 0) &&
           back == static_cast<uint16_t>(bits | quiet_bit<TestType>());
    } else {
      ok = static_cast<double>(wide) == want && std::signbit(wide) == std::signbit(want) && back == bits;
    }
    if (!ok && failures++ < 5) FAIL_CHECK("pattern 0x" << std::hex << b << ": widened " << wide << ", back 0x" << back);
  }
  CHECK(failures == 0);
}

TEST_CASE("scalar narrowing to f16: hand-derived cases", "[kernels][half]") {
  struct Case {
    float v;
    uint16_t bits;
  };
  const Case cases[] = {
      {1.0f, 0x3C00},
      {1.0f + 0x1p-11f, 0x3C00},             // tie between 1 and 1+2^-10: even (1)
      {1.0f + 0x1p-11f + 0x1p-23f, 0x3C01},  // just above the tie
      {1.0f + 3 * 0x1p-11f, 0x3C02},         // tie between 1+2^-10 (odd) and 1+2^-9: even
      {-2.5f, 0xC100},
      {65504.0f, 0x7BFF},                    // the largest finite f16
      {65519.996f, 0x7BFF},                  // below the tie with 2^16
      {65520.0f, 0x7C00},                    // the tie rounds to the even 2^16: inf
      {1e9f, 0x7C00},
      {-std::numeric_limits<float>::infinity(), 0xFC00},
      {0x1p-14f, 0x0400},                    // the smallest normal
      {0x1p-14f - 0x1p-25f, 0x0400},         // tie between 0x3FF (odd) and 0x400: even
      {0x1p-24f, 0x0001},                    // the smallest subnormal
      {0x1p-25f, 0x0000},                    // tie between 0 and 2^-24: even (0)
      {0x1p-25f + 0x1p-40f, 0x0001},
      {3 * 0x1p-25f, 0x0002},                // tie between 1 (odd) and 2 subnormal ulps
      {5 * 0x1p-25f, 0x0002},                // tie between 2 (even) and 3
      {-0x1p-26f, 0x8000},                   // underflows to -0
      {0x1p-149f, 0x0000},                   // a float subnormal
      {-0.0f, 0x8000},
      {0.0f, 0x0000},
  };
  for (const Case& c : cases) {
    CAPTURE(c.v);
    CHECK(bn::kernels::to_f16(c.v).bits == c.bits);
    CHECK(half_encode(kBinary16, c.v) == c.bits);  // the model agrees with the hand derivation
  }
  const uint16_t nan = bn::kernels::to_f16(std::numeric_limits<float>::quiet_NaN()).bits;
  CHECK((nan & 0x7C00) == 0x7C00);
  CHECK((nan & 0x03FF) != 0);
  // A signalling NaN whose payload lies only in the dropped bits must not become inf.
  const uint16_t snan = bn::kernels::to_f16(from_bits(0xFF800001u)).bits;
  CHECK(snan == 0xFE00);
}

TEST_CASE("scalar narrowing to bf16: hand-derived cases", "[kernels][half]") {
  struct Case {
    uint32_t v;
    uint16_t bits;
  };
  const Case cases[] = {
      {0x3F800000u, 0x3F80},  // 1
      {0x3F808000u, 0x3F80},  // tie, kept part even: down
      {0x3F818000u, 0x3F82},  // tie, kept part odd: up
      {0x3F808001u, 0x3F81},  // above the tie
      {0x3F807FFFu, 0x3F80},  // below the tie
      {0xBF80FFFFu, 0xBF81},  // negative, rounds away in magnitude
      {0x7F7F7FFFu, 0x7F7F},  // the largest finite bf16 stays
      {0x7F7F8000u, 0x7F80},  // tie with an odd kept part: carries to inf
      {0x7F7FFFFFu, 0x7F80},  // the largest float: inf
      {0x7F800000u, 0x7F80},  // inf
      {0xFF800000u, 0xFF80},  // -inf
      {0x00008000u, 0x0000},  // subnormal tie, even: 0
      {0x00018000u, 0x0002},  // subnormal tie, odd: up
      {0x00000001u, 0x0000},  // the smallest float
      {0x807FFFFFu, 0x8080},  // the largest negative float subnormal rounds to -2^-126
      {0x80000000u, 0x8000},  // -0
  };
  for (const Case& c : cases) {
    CAPTURE(c.v);
    CHECK(bn::kernels::to_bf16(from_bits(c.v)).bits == c.bits);
    CHECK(half_encode(kBfloat16, from_bits(c.v)) == c.bits);
  }
  // NaN stays NaN even when its payload lies only in the dropped bits (naive rounding gives inf).
  CHECK(bn::kernels::to_bf16(from_bits(0x7F800001u)).bits == 0x7FC0);
  CHECK(bn::kernels::to_bf16(from_bits(0xFFC00000u)).bits == 0xFFC0);
  CHECK(bn::kernels::to_bf16(from_bits(0x7FA12345u)).bits == 0x7FE1);
}

// Floats at every rounding position of H: for each value of the kept bits above the rounding
// point, the dropped part at 0, 1, half - 1, half, half + 1 and all ones; plus random floats.
template <class H>
std::vector<float> tie_sweep() {
  std::vector<float> v;
  auto add_around = [&](uint32_t kept, int dropped_bits) {
    const uint32_t half = 1u << (dropped_bits - 1), all = (1u << dropped_bits) - 1u;
    for (uint32_t rest : {0u, 1u, half - 1u, half, half + 1u, all}) {
      v.push_back(from_bits((kept << dropped_bits) | rest));
    }
  };
  if constexpr (std::is_same_v<H, bf16>) {
    for (uint32_t kept = 0; kept < 65536; ++kept) add_around(kept, 16);  // every float exponent
  } else {
    // Normal f16 range and beyond: 13 dropped bits, every sign/exponent/fraction above them.
    for (uint32_t kept = 0; kept < (1u << 19); ++kept) add_around(kept, 13);
    // The f16 subnormal range (float exponents 102..112): 126 - e dropped bits.
    for (uint32_t e = 100; e <= 113; ++e) {
      const int dropped = e <= 126 ? static_cast<int>(126 - e) : 1;
      if (dropped > 23) {
        for (uint32_t m = 0; m < (1u << 23); m += 4099) v.push_back(from_bits((e << 23) | m));
        continue;
      }
      for (uint32_t kept = 0; kept < (1u << (23 - dropped)); ++kept) {
        const uint32_t base = (e << 23) >> dropped;  // exponent bits expressed above the dropped part
        add_around(base | kept, dropped);
      }
    }
  }
  std::mt19937 gen(12345);
  for (int i = 0; i < 200000; ++i) v.push_back(from_bits(static_cast<uint32_t>(gen())));
  return v;
}

TEMPLATE_TEST_CASE("scalar narrowing rounds to nearest even at every rounding position", "[kernels][half]", bf16,
                   f16) {
  int failures = 0;
  for (float v : tie_sweep<TestType>()) {
    const uint16_t got = narrow<TestType>(v);
    if (!narrows_like_model<TestType>(v, got) && failures++ < 5) {
      FAIL_CHECK("float 0x" << std::hex << bits_of(v) << " narrowed to 0x" << got << ", model 0x"
                            << half_encode(format_of<TestType>(), v));
    }
  }
  CHECK(failures == 0);
}

TEMPLATE_TEST_CASE("the ReLU threshold is where the rounded output becomes positive", "[kernels][half]", bf16, f16) {
  const float t = bn::kernels::relu_threshold<TestType>();
  const HalfFormat& fmt = format_of<TestType>();
  CHECK(half_encode(fmt, t) == 0);  // t itself rounds to +0 (a tie, to even)
  CHECK(half_encode(fmt, std::nextafter(t, 1.0f)) == 1);  // anything above: the smallest subnormal
  CHECK(narrow<TestType>(t) == 0);
  CHECK(narrow<TestType>(std::nextafter(t, 1.0f)) == 1);
}

// --- the vector conversions, through the normalize kernel of every table ---------------------
struct Layout {
  std::vector<int64_t> shape;
  std::vector<int32_t> axes;
};

bn::ShapePlan plan_of(const Layout& l) {
  const auto ndim = static_cast<int32_t>(l.shape.size());
  const bn::AxisPlan axes = bn::resolve_axes(l.axes, l.shape.data(), ndim);
  return bn::plan_shape(axes, l.shape.data(), ndim);
}

template <class H>
void normalize_all(const bn::kernels::KernelTable<H>& k, const bn::ShapePlan& p, const H* x, H* y,
                   const std::vector<float>& center, const std::vector<float>& scale, const std::vector<float>& shift) {
  for (int64_t b = 0; b < p.grid.count(); ++b) {
    k.normalize({p.geometry, x, y, center.data(), scale.data(), shift.data()}, p.grid.block(p.geometry, b));
  }
}

TEMPLATE_TEST_CASE("every table widens and narrows every 16-bit pattern exactly", "[kernels][half]", bf16, f16) {
  // Planar rows (inner 4093: a masked tail for 8 and 16 lanes) and interleaved rows
  // (15 features: a tail), each holding every pattern at least once.
  const Layout layouts[] = {{{1, 17, 4093}, {1}}, {{5000, 15}, {-1}}, {{4096, 16}, {-1}}};
  for (const char* isa : {"ref", "avx2", "avx512"}) {
    const auto* k = bn::kernels::kernels_for_isa<TestType>(isa);
    if (!k) {
      WARN("this CPU cannot run the " << isa << " kernels: not tested here");
      continue;
    }
    for (const Layout& l : layouts) {
      const bn::ShapePlan p = plan_of(l);
      CAPTURE(isa, p.geometry.inner, p.geometry.features);
      const auto n = static_cast<size_t>(p.elements);
      const auto c = static_cast<size_t>(p.geometry.features);
      std::vector<TestType> x(n), y(n, TestType{0x1234});
      for (size_t e = 0; e < n; ++e) x[e].bits = static_cast<uint16_t>(e * 40503u);  // odd multiplier: a permutation
      // y = fma(x - 0, 1, -0) = x for every non-NaN x, -0 included.
      normalize_all(*k, p, x.data(), y.data(), std::vector<float>(c, 0.0f), std::vector<float>(c, 1.0f),
                    std::vector<float>(c, -0.0f));
      int failures = 0;
      for (size_t e = 0; e < n; ++e) {
        const uint16_t want = half_is_nan(format_of<TestType>(), x[e].bits)
                                  ? static_cast<uint16_t>(x[e].bits | quiet_bit<TestType>())
                                  : x[e].bits;
        if (y[e].bits != want && failures++ < 5) {
          FAIL_CHECK("pattern 0x" << std::hex << x[e].bits << " came back as 0x" << y[e].bits);
        }
      }
      CHECK(failures == 0);
    }
  }
}

TEMPLATE_TEST_CASE("every table narrows floats to nearest even", "[kernels][half]", bf16, f16) {
  // y = fma(1 - 0, 0, t) = t for each feature's shift t: the tie sweep, subsampled, plus
  // specials, pushed through the vector stores (interleaved: every lane and tail position).
  std::vector<float> values;
  const std::vector<float> sweep = tie_sweep<TestType>();
  for (size_t i = 0; i < sweep.size(); i += 97) {
    if (bits_of(sweep[i]) != 0x80000000u) values.push_back(sweep[i]);  // -0 + 0 would give +0
  }
  for (float s : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                  std::numeric_limits<float>::quiet_NaN(), from_bits(0x7F800001u), from_bits(0xFFA00000u), 65520.0f,
                  65519.996f, 0x1p-25f, 0x1p-149f, 3.0e38f, -0x1p-14f})
    values.push_back(s);
  const auto c = static_cast<int64_t>(values.size());
  for (const char* isa : {"ref", "avx2", "avx512"}) {
    const auto* k = bn::kernels::kernels_for_isa<TestType>(isa);
    if (!k) continue;
    for (int64_t rows : {int64_t{1}, int64_t{3}}) {
      const bn::ShapePlan p = plan_of({{rows, c}, {-1}});
      CAPTURE(isa, rows);
      const auto n = static_cast<size_t>(p.elements);
      std::vector<TestType> x(n), y(n, TestType{0x1234});
      for (auto& e : x) e = bn::kernels::from_compute<TestType>(1.0f);
      const auto cz = static_cast<size_t>(c);
      normalize_all(*k, p, x.data(), y.data(), std::vector<float>(cz, 0.0f), std::vector<float>(cz, 0.0f), values);
      int failures = 0;
      for (size_t e = 0; e < n; ++e) {
        const float v = values[e % cz];
        if (!narrows_like_model<TestType>(v, y[e].bits) && failures++ < 5) {
          FAIL_CHECK("float 0x" << std::hex << bits_of(v) << " stored as 0x" << y[e].bits << ", model 0x"
                                << half_encode(format_of<TestType>(), v));
        }
      }
      CHECK(failures == 0);
    }
  }
}

}  // namespace
}  // namespace bn_test
