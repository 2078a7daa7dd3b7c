// AVX2 + FMA + F16C instantiation of the SIMD kernels (float, bf16, f16). Compiled with
// -mavx2 -mfma -mf16c only for this file; dispatch.cpp calls it only where the CPU reports
// all three.
//
// 16-bit elements: f16 converts with F16C (vcvtph2ps / vcvtps2ph, round to nearest even);
// bf16 by integer shifts (the top half of a float; see narrow_bf16). AVX2 has no 16-bit
// masked loads or stores, so a tail of n 16-bit elements moves as n/2 masked 32-bit pairs
// plus the odd last element on its own: never a byte outside [p, p + n).
#include <immintrin.h>

#include <array>
#include <cmath>
#include <limits>

#include "kernels/kernels.hpp"

namespace bn::kernels {
namespace avx2 {
namespace {

struct V {
  static constexpr int W = 8;
  using F = __m256;
  using D = __m256d;
  static __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F loadn(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void stream(float* p, F v) { _mm256_stream_ps(p, v); }
  static void storen(float* p, F v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static void fence() { _mm_sfence(); }
  // Lanes [0, n) of a, the others of b.
  static F first(int n, F a, F b) { return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(mask(n))); }

  // --- 16-bit elements: 8 of them in an __m128i ---
  static __m128i mask_pairs(int pairs) { return _mm_cmpgt_epi32(_mm_set1_epi32(pairs), _mm_setr_epi32(0, 1, 2, 3)); }
  static __m128i load16(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
  static __m128i load16n(const void* p, int n) {
    const __m128i pairs = _mm_maskload_epi32(static_cast<const int*>(p), mask_pairs(n / 2));
    if (!(n & 1)) return pairs;
    const auto last = static_cast<short>(static_cast<const uint16_t*>(p)[n - 1]);
    const __m128i lane = _mm_cmpeq_epi16(_mm_set1_epi16(static_cast<short>(n - 1)), _mm_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm_or_si128(pairs, _mm_and_si128(_mm_set1_epi16(last), lane));
  }
  static void store16(void* p, __m128i h) { _mm_storeu_si128(static_cast<__m128i*>(p), h); }
  static void store16n(void* p, __m128i h, int n) {
    _mm_maskstore_epi32(static_cast<int*>(p), mask_pairs(n / 2), h);
    if (n & 1) {
      alignas(16) uint16_t lanes[8];
      _mm_store_si128(reinterpret_cast<__m128i*>(lanes), h);
      static_cast<uint16_t*>(p)[n - 1] = lanes[n - 1];
    }
  }
  static F widen_f16(__m128i h) { return _mm256_cvtph_ps(h); }
  static __m128i narrow_f16(F v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT); }
  static F widen_bf16(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
  // Round to nearest even on the low 16 bits (as half.hpp's to_bf16): add 0x7FFF plus the
  // kept part's lowest bit and keep the top half; NaN keeps its top half, made quiet.
  static __m128i narrow_bf16(F v) {
    const __m256i b = _mm256_castps_si256(v);
    const __m256i top = _mm256_srli_epi32(b, 16);
    const __m256i odd = _mm256_and_si256(top, _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), odd), 16);
    const __m256i quiet_nan = _mm256_or_si256(top, _mm256_set1_epi32(0x40));
    const __m256i r =
        _mm256_blendv_epi8(rounded, quiet_nan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  }
  static F load(const f16* p) { return widen_f16(load16(p)); }
  static F loadn(const f16* p, int n) { return widen_f16(load16n(p, n)); }
  static void store(f16* p, F v) { store16(p, narrow_f16(v)); }
  static void storen(f16* p, F v, int n) { store16n(p, narrow_f16(v), n); }
  static F load(const bf16* p) { return widen_bf16(load16(p)); }
  static F loadn(const bf16* p, int n) { return widen_bf16(load16n(p, n)); }
  static void store(bf16* p, F v) { store16(p, narrow_bf16(v)); }
  static void storen(bf16* p, F v, int n) { store16n(p, narrow_bf16(v), n); }

  static F set1(float a) { return _mm256_set1_ps(a); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  // (x - m) on the first n lanes, 0 on the others.
  template <class P>
  static F subn(const P* p, F m, int n) {
    return _mm256_and_ps(_mm256_sub_ps(loadn(p, n), m), _mm256_castsi256_ps(mask(n)));
  }
  static F max0(F v) { return _mm256_max_ps(v, _mm256_setzero_ps()); }
  // dy where z > t, else 0.
  static F gate(F dy, F z, F t) { return _mm256_and_ps(dy, _mm256_cmp_ps(z, t, _CMP_GT_OQ)); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static D lo(F v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
  static D hi(F v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }
  static D dload(const double* p) { return _mm256_loadu_pd(p); }
  static D dset1(double a) { return _mm256_set1_pd(a); }
  static D dsub(D a, D b) { return _mm256_sub_pd(a, b); }
  static D dmul(D a, D b) { return _mm256_mul_pd(a, b); }
  static D dfnma(D a, D b, D c) { return _mm256_fnmadd_pd(a, b, c); }  // c - a*b
  static D ddiv(D a, D b) { return _mm256_div_pd(a, b); }
  static bool dall_le(D a, D b) { return _mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_LE_OQ)) == 0xF; }  // false for NaN lanes
  static F narrow(D lo, D hi) { return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1); }
  static D dzero() { return _mm256_setzero_pd(); }
  static D dadd(D a, D b) { return _mm256_add_pd(a, b); }
  static D dfma(D a, D b, D c) { return _mm256_fmadd_pd(a, b, c); }
  static void dstore(double* p, D v) { _mm256_storeu_pd(p, v); }
  static __m256i mask64(int n) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3)); }
  static void dadd_to(double* p, D lo, D hi, int n) {
    const __m256i m0 = mask64(n), m1 = mask64(n - 4);
    _mm256_maskstore_pd(p, m0, _mm256_add_pd(_mm256_maskload_pd(p, m0), lo));
    _mm256_maskstore_pd(p + 4, m1, _mm256_add_pd(_mm256_maskload_pd(p + 4, m1), hi));
  }
  static double dsum(D v) {
    alignas(32) double t[4];
    _mm256_store_pd(t, v);
    return (t[0] + t[1]) + (t[2] + t[3]);
  }
};

constexpr const char* kIsaName = "avx2";

}  // namespace
#include "kernels/simd_kernels.inl"
}  // namespace avx2

const KernelTable<float>* avx2_f32() { return &avx2::kTableF32; }
const KernelTable<bf16>* avx2_bf16() { return &avx2::kTableBF16; }
const KernelTable<f16>* avx2_f16() { return &avx2::kTableF16; }

}  // namespace bn::kernels
