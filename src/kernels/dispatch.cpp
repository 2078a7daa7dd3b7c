// Chooses the kernels for this CPU once. Today every ISA uses the scalar reference
// kernels; SIMD variants (one ISA per translation unit) register here.
#include "kernels/kernels.hpp"

namespace bn::kernels {

template <>
const KernelTable<float>& selected<float>() {
  static const KernelTable<float>& table = reference_f32();
  return table;
}

template <>
const KernelTable<double>& selected<double>() {
  static const KernelTable<double>& table = reference_f64();
  return table;
}

}  // namespace bn::kernels
