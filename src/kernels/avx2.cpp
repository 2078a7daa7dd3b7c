// AVX2 + FMA instantiation of the SIMD kernels. Compiled with -mavx2 -mfma only for this
// file; dispatch.cpp calls it only where the CPU reports AVX2 and FMA.
#include <immintrin.h>

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
  static F set1(float a) { return _mm256_set1_ps(a); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  // (x - m) on the first n lanes, 0 on the others.
  static F subn(const float* p, F m, int n) {
    const __m256i k = mask(n);
    return _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(p, k), m), _mm256_castsi256_ps(k));
  }
  static F max0(F v) { return _mm256_max_ps(v, _mm256_setzero_ps()); }
  // dy where z > 0, else 0.
  static F gate(F dy, F z) { return _mm256_and_ps(dy, _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_GT_OQ)); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static D lo(F v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
  static D hi(F v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }
  static D dload(const double* p) { return _mm256_loadu_pd(p); }
  static D dset1(double a) { return _mm256_set1_pd(a); }
  static D dsub(D a, D b) { return _mm256_sub_pd(a, b); }
  static D dmul(D a, D b) { return _mm256_mul_pd(a, b); }
  static D dfnma(D a, D b, D c) { return _mm256_fnmadd_pd(a, b, c); }  // c - a*b
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

}  // namespace bn::kernels
