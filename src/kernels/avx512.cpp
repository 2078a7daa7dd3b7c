// AVX-512 (F and BW) instantiation of the SIMD kernels (float, bf16, f16). Compiled with
// -mavx512f -mavx512bw -mfma only for this file; dispatch.cpp calls it only where the CPU
// reports AVX-512F and AVX-512BW (every AVX-512 CPU but the Xeon Phi, which gets the AVX2
// kernels).
//
// 16-bit elements: f16 converts with AVX-512F's vcvtph2ps / vcvtps2ph (round to nearest
// even); bf16 by integer shifts (see narrow_bf16; AVX512_BF16 is not required). Tails use
// AVX-512BW's 16-bit masked loads and stores on a 512-bit register of which the low half
// is used (masked-off lanes are never touched).
#include <immintrin.h>

#include <array>
#include <cmath>
#include <limits>

#include "kernels/kernels.hpp"

namespace bn::kernels {
namespace avx512 {
namespace {

struct V {
  static constexpr int W = 16;
  using F = __m512;
  using D = __m512d;
  static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void stream(float* p, F v) { _mm512_stream_ps(p, v); }
  static void storen(float* p, F v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static void fence() { _mm_sfence(); }
  // Lanes [0, n) of a, the others of b.
  static F first(int n, F a, F b) { return _mm512_mask_blend_ps(mask(n), b, a); }

  // --- 16-bit elements: 16 of them in an __m256i ---
  static __m256i load16(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static __m256i load16n(const void* p, int n) {
    return _mm512_castsi512_si256(_mm512_maskz_loadu_epi16(static_cast<__mmask32>(mask(n)), p));
  }
  static void store16(void* p, __m256i h) { _mm256_storeu_si256(static_cast<__m256i*>(p), h); }
  static void store16n(void* p, __m256i h, int n) {
    _mm512_mask_storeu_epi16(p, static_cast<__mmask32>(mask(n)), _mm512_castsi256_si512(h));
  }
  static F widen_f16(__m256i h) { return _mm512_cvtph_ps(h); }
  static __m256i narrow_f16(F v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT); }
  static F widen_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  // Round to nearest even on the low 16 bits (as half.hpp's to_bf16): add 0x7FFF plus the
  // kept part's lowest bit and keep the top half; NaN keeps its top half, made quiet.
  // The rounding works on whole 32-bit lanes; one word permutation (AVX-512BW) then gathers
  // their top halves.
  static __m256i narrow_bf16(F v) {
    const __m512i b = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), odd);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i r = _mm512_mask_or_epi32(rounded, nan, b, _mm512_set1_epi32(0x00400000));
    const __m512i top_halves = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 31, 29, 27, 25, 23, 21, 19,
                                                17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_castsi512_si256(_mm512_permutexvar_epi16(top_halves, r));
  }
  static F load(const f16* p) { return widen_f16(load16(p)); }
  static F loadn(const f16* p, int n) { return widen_f16(load16n(p, n)); }
  static void store(f16* p, F v) { store16(p, narrow_f16(v)); }
  static void storen(f16* p, F v, int n) { store16n(p, narrow_f16(v), n); }
  static F load(const bf16* p) { return widen_bf16(load16(p)); }
  static F loadn(const bf16* p, int n) { return widen_bf16(load16n(p, n)); }
  static void store(bf16* p, F v) { store16(p, narrow_bf16(v)); }
  static void storen(bf16* p, F v, int n) { store16n(p, narrow_bf16(v), n); }

  static F set1(float a) { return _mm512_set1_ps(a); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  // (x - m) on the first n lanes, 0 on the others.
  template <class P>
  static F subn(const P* p, F m, int n) { return _mm512_maskz_sub_ps(mask(n), loadn(p, n), m); }
  static F max0(F v) { return _mm512_max_ps(v, _mm512_setzero_ps()); }
  // dy where z > t, else 0.
  static F gate(F dy, F z, F t) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(z, t, _CMP_GT_OQ), dy); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static D lo(F v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
  static D hi(F v) { return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))); }
  static D dload(const double* p) { return _mm512_loadu_pd(p); }
  static D dset1(double a) { return _mm512_set1_pd(a); }
  static D dsub(D a, D b) { return _mm512_sub_pd(a, b); }
  static D dmul(D a, D b) { return _mm512_mul_pd(a, b); }
  static D dfnma(D a, D b, D c) { return _mm512_fnmadd_pd(a, b, c); }  // c - a*b
  static D ddiv(D a, D b) { return _mm512_div_pd(a, b); }
  static bool dall_le(D a, D b) { return _mm512_cmp_pd_mask(a, b, _CMP_LE_OQ) == 0xFF; }  // false for NaN lanes
  static F narrow(D lo, D hi) {
    const __m512d both = _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm512_cvtpd_ps(lo))),
                                            _mm256_castps_pd(_mm512_cvtpd_ps(hi)), 1);
    return _mm512_castpd_ps(both);
  }
  static D dzero() { return _mm512_setzero_pd(); }
  static D dadd(D a, D b) { return _mm512_add_pd(a, b); }
  static D dfma(D a, D b, D c) { return _mm512_fmadd_pd(a, b, c); }
  static void dstore(double* p, D v) { _mm512_storeu_pd(p, v); }
  static void dadd_to(double* p, D lo, D hi, int n) {
    const __mmask8 m0 = static_cast<__mmask8>(n >= 8 ? 0xFF : (1u << n) - 1u);
    const __mmask8 m1 = static_cast<__mmask8>(n <= 8 ? 0 : (1u << (n - 8)) - 1u);
    _mm512_mask_storeu_pd(p, m0, _mm512_add_pd(_mm512_maskz_loadu_pd(m0, p), lo));
    _mm512_mask_storeu_pd(p + 8, m1, _mm512_add_pd(_mm512_maskz_loadu_pd(m1, p + 8), hi));
  }
  static double dsum(D v) { return _mm512_reduce_add_pd(v); }
};

constexpr const char* kIsaName = "avx512";

}  // namespace
#include "kernels/simd_kernels.inl"
}  // namespace avx512

const KernelTable<float>* avx512_f32() { return &avx512::kTableF32; }
const KernelTable<bf16>* avx512_bf16() { return &avx512::kTableBF16; }
const KernelTable<f16>* avx512_f16() { return &avx512::kTableF16; }

}  // namespace bn::kernels
