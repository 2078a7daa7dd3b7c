// Chooses the kernels for this CPU once: the widest ISA the CPU supports, unless the
// environment variable BN_ISA names a narrower one (ref, avx2, avx512), which the tests
// use to run every table the machine can execute.
//
// An ISA level is usable when the CPU has everything its translation unit was compiled for:
// avx2 = AVX2 + FMA + F16C, avx512 = AVX-512F + AVX-512BW (+ the avx2 level). One level
// serves every element type, so float and 16-bit layers always run the same ISA.
#include <cpuid.h>

#include <cstdlib>
#include <cstring>

#include "kernels/kernels.hpp"

namespace bn::kernels {
namespace {

enum class Isa { ref, avx2, avx512 };

// F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports does not know "f16c".
bool has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}

Isa best_isa() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return Isa::avx512;
  if (avx2) return Isa::avx2;
  return Isa::ref;
}

Isa chosen_isa() {
  const Isa best = best_isa();
  const char* env = std::getenv("BN_ISA");
  if (!env) return best;
  if (std::strcmp(env, "ref") == 0) return Isa::ref;
  if (std::strcmp(env, "avx2") == 0 && best >= Isa::avx2) return Isa::avx2;
  return best;
}

}  // namespace

// Defined in avx2.cpp / avx512.cpp; call only where the CPU has the ISA.
const KernelTable<float>* avx2_f32();
const KernelTable<bf16>* avx2_bf16();
const KernelTable<f16>* avx2_f16();
const KernelTable<float>* avx512_f32();
const KernelTable<bf16>* avx512_bf16();
const KernelTable<f16>* avx512_f16();

namespace {

template <class T>
const KernelTable<T>* table_for(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      if constexpr (std::is_same_v<T, bf16>) return avx512_bf16();
      else if constexpr (std::is_same_v<T, f16>) return avx512_f16();
      else return avx512_f32();
    case Isa::avx2:
      if constexpr (std::is_same_v<T, bf16>) return avx2_bf16();
      else if constexpr (std::is_same_v<T, f16>) return avx2_f16();
      else return avx2_f32();
    case Isa::ref: break;
  }
  return &reference<T>();
}

}  // namespace

template <class T>
const KernelTable<T>* kernels_for_isa(const char* isa) {
  const Isa best = best_isa();
  if (std::strcmp(isa, "ref") == 0) return table_for<T>(Isa::ref);
  if (std::strcmp(isa, "avx2") == 0 && best >= Isa::avx2) return table_for<T>(Isa::avx2);
  if (std::strcmp(isa, "avx512") == 0 && best >= Isa::avx512) return table_for<T>(Isa::avx512);
  return nullptr;
}
template const KernelTable<float>* kernels_for_isa<float>(const char*);
template const KernelTable<bf16>* kernels_for_isa<bf16>(const char*);
template const KernelTable<f16>* kernels_for_isa<f16>(const char*);

template <class T>
const KernelTable<T>& selected() {
  static const KernelTable<T>& table = *table_for<T>(chosen_isa());
  return table;
}
template const KernelTable<float>& selected<float>();
template const KernelTable<bf16>& selected<bf16>();
template const KernelTable<f16>& selected<f16>();

template <>
const KernelTable<double>& selected<double>() {
  static const KernelTable<double>& table = reference_f64();
  return table;
}

}  // namespace bn::kernels
