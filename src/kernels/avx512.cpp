// AVX-512 (F) instantiation of the SIMD kernels. Compiled with -mavx512f -mfma only for
// this file; dispatch.cpp calls it only where the CPU reports AVX-512F.
#include <immintrin.h>

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
  static F set1(float a) { return _mm512_set1_ps(a); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  // (x - m) on the first n lanes, 0 on the others.
  static F subn(const float* p, F m, int n) { return _mm512_maskz_sub_ps(mask(n), loadn(p, n), m); }
  static F max0(F v) { return _mm512_max_ps(v, _mm512_setzero_ps()); }
  // dy where z > 0, else 0.
  static F gate(F dy, F z) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GT_OQ), dy); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static D lo(F v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
  static D hi(F v) { return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))); }
  static D dload(const double* p) { return _mm512_loadu_pd(p); }
  static D dset1(double a) { return _mm512_set1_pd(a); }
  static D dsub(D a, D b) { return _mm512_sub_pd(a, b); }
  static D dmul(D a, D b) { return _mm512_mul_pd(a, b); }
  static D dfnma(D a, D b, D c) { return _mm512_fnmadd_pd(a, b, c); }  // c - a*b
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

}  // namespace bn::kernels
