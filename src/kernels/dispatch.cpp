// Chooses the kernels for this CPU once: the widest ISA the CPU supports, unless the
// environment variable BN_ISA names a narrower one (ref, avx2, avx512), which the tests
// use to run every table the machine can execute.
#include <cstdlib>
#include <cstring>

#include "kernels/kernels.hpp"

namespace bn::kernels {
namespace {

enum class Isa { ref, avx2, avx512 };

Isa best_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
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
const KernelTable<float>* avx512_f32();

const KernelTable<float>* kernels_for_isa_f32(const char* isa) {
  const Isa best = best_isa();
  if (std::strcmp(isa, "ref") == 0) return &reference_f32();
  if (std::strcmp(isa, "avx2") == 0 && best >= Isa::avx2) return avx2_f32();
  if (std::strcmp(isa, "avx512") == 0 && best >= Isa::avx512) return avx512_f32();
  return nullptr;
}

template <>
const KernelTable<float>& selected<float>() {
  static const KernelTable<float>& table = [] () -> const KernelTable<float>& {
    switch (chosen_isa()) {
      case Isa::avx512: return *avx512_f32();
      case Isa::avx2: return *avx2_f32();
      case Isa::ref: break;
    }
    return reference_f32();
  }();
  return table;
}

template <>
const KernelTable<double>& selected<double>() {
  static const KernelTable<double>& table = reference_f64();
  return table;
}

}  // namespace bn::kernels
