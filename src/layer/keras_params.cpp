#include "layer/keras_params.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "layer/config.hpp"
#include "layer/error.hpp"
#include "layer/random.hpp"

namespace bn {
namespace {

std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

[[noreturn]] void invalid(const std::string& message) { fail(Status::invalid_argument, message); }

void require_finite(double v, const char* name, const char* role) {
  if (!std::isfinite(v)) invalid(std::string(name) + "=" + number(v) + " (" + role + ") but it must be finite");
}

bool is_norm(ConstraintKind kind) {
  return kind == ConstraintKind::unit_norm || kind == ConstraintKind::max_norm || kind == ConstraintKind::min_max_norm;
}

double to_storage(double v, bool f64) { return f64 ? v : static_cast<double>(static_cast<float>(v)); }

}  // namespace

const char* initializer_name(InitKind kind) {
  switch (kind) {
    case InitKind::zeros: return "ZEROS";
    case InitKind::ones: return "ONES";
    case InitKind::constant: return "CONSTANT";
    case InitKind::random_normal: return "RANDOM_NORMAL";
    case InitKind::random_uniform: return "RANDOM_UNIFORM";
    case InitKind::truncated_normal: return "TRUNCATED_NORMAL";
  }
  return "?";
}

const char* constraint_name(ConstraintKind kind) {
  switch (kind) {
    case ConstraintKind::none: return "NONE";
    case ConstraintKind::non_neg: return "NON_NEG";
    case ConstraintKind::unit_norm: return "UNIT_NORM";
    case ConstraintKind::max_norm: return "MAX_NORM";
    case ConstraintKind::min_max_norm: return "MIN_MAX_NORM";
  }
  return "?";
}

// ---------------------------------------------------------------------------
// Setter checks. Arguments a kind does not use are not read.
void check_initializer(const Initializer& init, bool variance) {
  const std::string kind = initializer_name(init.kind);
  const double a = init.a, b = init.b;
  switch (init.kind) {
    case InitKind::zeros:
    case InitKind::ones:
      return;
    case InitKind::constant:
      require_finite(a, "a", "the value of CONSTANT");
      if (variance && a < 0) invalid("a=" + number(a) + " (the value of CONSTANT) but a moving variance must be >= 0");
      return;
    case InitKind::random_uniform:
      require_finite(a, "a", "minval of RANDOM_UNIFORM");
      require_finite(b, "b", "maxval of RANDOM_UNIFORM");
      if (a > b) invalid("a=" + number(a) + " (minval of RANDOM_UNIFORM) but it must be <= b=" + number(b) + " (maxval)");
      if (!std::isfinite(b - a)) invalid("b - a = " + number(b - a) + " (the range of RANDOM_UNIFORM) overflows");
      if (variance && a < 0) {
        invalid("a=" + number(a) + " (minval of RANDOM_UNIFORM) but a moving variance must be >= 0, so minval must be >= 0");
      }
      return;
    case InitKind::random_normal:
    case InitKind::truncated_normal: {
      require_finite(a, "a", ("mean of " + kind).c_str());
      if (!(b > 0) || !std::isfinite(b)) invalid("b=" + number(b) + " (stddev of " + kind + ") but it must be finite and > 0");
      // The largest |z|: 2 for the truncated normal, < 8.58 for Box-Muller with 53-bit uniforms.
      const double reach = std::fabs(a) + (init.kind == InitKind::truncated_normal ? 2.0 : 9.0) * b;
      if (!std::isfinite(reach)) {
        invalid("a=" + number(a) + ", b=" + number(b) + " (mean, stddev of " + kind + ") can draw values beyond the double range");
      }
      if (variance && init.kind == InitKind::random_normal) {
        invalid("kind=RANDOM_NORMAL can draw negative values, which a moving variance cannot hold; use "
                "TRUNCATED_NORMAL with a >= 2*b, RANDOM_UNIFORM with a >= 0, or CONSTANT");
      }
      if (variance && a < 2.0 * b) {
        invalid("a=" + number(a) + ", b=" + number(b) + " (mean, stddev of TRUNCATED_NORMAL) can draw a - 2*b < 0, "
                "which a moving variance cannot hold; a must be >= 2*b");
      }
      return;
    }
  }
  invalid("kind=" + std::to_string(static_cast<int>(init.kind)) + " is not a known initializer");
}

void check_regularizer(const Regularizer& reg) {
  if (!std::isfinite(reg.l1) || reg.l1 < 0) invalid("l1=" + number(reg.l1) + " but it must be finite and >= 0");
  if (!std::isfinite(reg.l2) || reg.l2 < 0) invalid("l2=" + number(reg.l2) + " but it must be finite and >= 0");
}

void check_constraint(const Constraint& c) {
  if (c.kind == ConstraintKind::none || c.kind == ConstraintKind::non_neg) return;
  if (!is_norm(c.kind)) invalid("kind=" + std::to_string(static_cast<int>(c.kind)) + " is not a known constraint");
  const size_t n = c.axes.size();
  if (n < 1 || n > static_cast<size_t>(kMaxRank)) {
    invalid("axis_count=" + std::to_string(n) + " but " + constraint_name(c.kind) + " needs 1 to " +
            std::to_string(kMaxRank) + " axes");
  }
  for (size_t i = 0; i < n; ++i) {
    const int32_t a = c.axes[i];
    if (a < -kMaxRank || a >= kMaxRank) {
      invalid("axes[" + std::to_string(i) + "]=" + std::to_string(a) + " is out of range for any rank up to " +
              std::to_string(kMaxRank));
    }
    for (size_t j = 0; j < i; ++j) {
      if (c.axes[j] == a) invalid("axes[" + std::to_string(i) + "]=" + std::to_string(a) + " repeats axes[" + std::to_string(j) + "]");
    }
  }
  if (c.kind == ConstraintKind::max_norm) {
    if (!std::isfinite(c.max_value) || c.max_value < 0) {
      invalid("max_value=" + number(c.max_value) + " but it must be finite and >= 0");
    }
  } else if (c.kind == ConstraintKind::min_max_norm) {
    if (!std::isfinite(c.min_value) || c.min_value < 0) {
      invalid("min_value=" + number(c.min_value) + " but it must be finite and >= 0");
    }
    if (!std::isfinite(c.max_value) || c.max_value < c.min_value) {
      invalid("max_value=" + number(c.max_value) + " but it must be finite and >= min_value=" + number(c.min_value));
    }
    if (!(c.rate >= 0 && c.rate <= 1)) invalid("rate=" + number(c.rate) + " but it must be in [0, 1]");
  }
}

// ---------------------------------------------------------------------------
// Shapes
std::vector<int64_t> storage_shape(size_t axis_count, const AxisPlan& axes, bool ghost) {
  if (axis_count == 1 && !ghost) return {axes.features};
  std::vector<int64_t> shape(static_cast<size_t>(axes.rank));
  for (int32_t d = 0; d < axes.rank; ++d) shape[d] = axes.kept[d] ? axes.kept_sizes[d] : 1;
  if (ghost) shape.insert(shape.begin() + 1, 1);  // Keras' param_shape.insert(1, 1) for virtual batches
  return shape;
}

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// Per storage dim: whether the constraint's norm sums over it (axes resolved like Keras').
std::vector<bool> reduced_dims(const Constraint& c, const std::vector<int64_t>& storage, const char* param) {
  const auto rank = static_cast<int32_t>(storage.size());
  std::vector<bool> reduced(storage.size(), false);
  for (int32_t a : c.axes) {
    if (a < -rank || a >= rank) {
      invalid(std::string("the ") + constraint_name(c.kind) + " constraint of " + param + " has axis " +
              std::to_string(a) + ", out of range for the storage shape " + shape_text(storage) + " of rank " +
              std::to_string(rank) + " (expected -" + std::to_string(rank) + " to " + std::to_string(rank - 1) + ")");
    }
    const int32_t r = a < 0 ? a + rank : a;
    if (reduced[r]) {
      invalid(std::string("the ") + constraint_name(c.kind) + " constraint of " + param + " has axis " +
              std::to_string(a) + ", which repeats axis " + std::to_string(r) + " of the storage shape " +
              shape_text(storage));
    }
    reduced[r] = true;
  }
  return reduced;
}

}  // namespace

void check_constraint_axes(const Constraint& constraint, const std::vector<int64_t>& storage, const char* param) {
  if (is_norm(constraint.kind)) reduced_dims(constraint, storage, param);
}

// ---------------------------------------------------------------------------
// Initial values. One SplitMix64 stream per call, started at seed ^ mix(call) (= seed for
// call 0); values are drawn in the parameter's row-major order, each taking its words in
// turn: 1 word for RANDOM_UNIFORM, 2 per Box-Muller normal, and 2 per attempt for
// TRUNCATED_NORMAL, which redraws until |z| <= 2 (tf.random.truncated_normal's rule).
std::vector<double> initial_values(const Initializer& init, int64_t count, uint64_t call, bool f64,
                                   const char* param) {
  std::vector<double> values(static_cast<size_t>(count));
  SplitMix64 rng(init.seed ^ SplitMix64::mix(call));
  const double a = init.a, b = init.b;
  for (size_t i = 0; i < values.size(); ++i) {
    double v = 0.0;
    switch (init.kind) {
      case InitKind::zeros: v = 0.0; break;
      case InitKind::ones: v = 1.0; break;
      case InitKind::constant: v = a; break;
      case InitKind::random_uniform: v = a + (b - a) * unit_interval(rng.next()); break;
      case InitKind::random_normal: v = a + b * standard_normal(rng); break;
      case InitKind::truncated_normal: {
        double z = standard_normal(rng);
        while (std::fabs(z) > 2.0) z = standard_normal(rng);
        v = a + b * z;
        break;
      }
    }
    v = to_storage(v, f64);
    if (!std::isfinite(v)) {
      invalid(std::string("the ") + initializer_name(init.kind) + " initializer of " + param + " gives " + number(v) +
              " for value " + std::to_string(i) + " in " + (f64 ? "float64" : "float32") +
              " storage (a=" + number(a) + ", b=" + number(b) + ")");
    }
    values[i] = v;
  }
  return values;
}

// ---------------------------------------------------------------------------
// Regularizers (Keras L1L2: l1*reduce_sum(|w|) + 2*l2*l2_loss(w), l2_loss = sum(w^2)/2).
double regularizer_loss(const Regularizer& reg, const std::vector<double>& w) {
  double sum_abs = 0.0, sum_sq = 0.0;
  for (double x : w) {
    sum_abs += std::fabs(x);
    sum_sq += x * x;
  }
  double loss = 0.0;
  if (reg.l1 != 0.0) loss += reg.l1 * sum_abs;
  if (reg.l2 != 0.0) loss += reg.l2 * sum_sq;
  return loss;
}

void add_regularizer_gradient(const Regularizer& reg, const std::vector<double>& w, std::vector<double>& grad,
                              double divisor) {
  if (!reg.active()) return;
  for (size_t i = 0; i < w.size(); ++i) {
    const double sign = w[i] > 0 ? 1.0 : (w[i] < 0 ? -1.0 : 0.0);
    grad[i] += (reg.l1 * sign + 2.0 * reg.l2 * w[i]) / divisor;
  }
}

// ---------------------------------------------------------------------------
// Constraints (Keras 2 keras/constraints.py), e = 1e-7, norms = sqrt(sum(w^2, axes, keepdims)):
//   NonNeg      w * (w >= 0)
//   UnitNorm    w / (e + norms)
//   MaxNorm     w * (clip(norms, 0, max_value) / (e + norms))
//   MinMaxNorm  w * ((rate*clip(norms, min_value, max_value) + (1 - rate)*norms) / (e + norms))
// The norms are taken over `axes` of the storage shape: each element's group is its flat
// index with the coordinates on those axes set to 0, and the squares are summed in order.
std::vector<double> constrained(const Constraint& c, const std::vector<double>& w, const std::vector<int64_t>& storage,
                                bool f64, const char* param) {
  const size_t n = w.size();
  std::vector<double> out(n);
  if (c.kind == ConstraintKind::non_neg) {
    for (size_t i = 0; i < n; ++i) out[i] = w[i] * (w[i] >= 0.0 ? 1.0 : 0.0);  // -0.0 for w < 0, as K2
  } else if (is_norm(c.kind)) {
    const std::vector<bool> reduced = reduced_dims(c, storage, param);
    std::vector<size_t> stride(storage.size());
    size_t s = 1;
    for (size_t d = storage.size(); d-- > 0;) {
      stride[d] = s;
      s *= static_cast<size_t>(storage[d]);
    }
    std::vector<size_t> group(n);
    std::vector<double> sum_sq(n, 0.0);
    for (size_t i = 0; i < n; ++i) {
      size_t g = 0;
      for (size_t d = 0; d < storage.size(); ++d) {
        if (!reduced[d]) g += (i / stride[d]) % static_cast<size_t>(storage[d]) * stride[d];
      }
      group[i] = g;
      sum_sq[g] += w[i] * w[i];
    }
    const double e = kConstraintEpsilon;
    for (size_t i = 0; i < n; ++i) {
      const double norm = std::sqrt(sum_sq[group[i]]);
      switch (c.kind) {
        case ConstraintKind::unit_norm: out[i] = w[i] / (e + norm); break;
        case ConstraintKind::max_norm: out[i] = w[i] * (std::min(norm, c.max_value) / (e + norm)); break;
        default: {
          const double clipped = std::min(std::max(norm, c.min_value), c.max_value);
          out[i] = w[i] * ((c.rate * clipped + (1.0 - c.rate) * norm) / (e + norm));
          break;
        }
      }
    }
  } else {
    return w;
  }
  for (size_t i = 0; i < n; ++i) {
    out[i] = to_storage(out[i], f64);
    if (!std::isfinite(out[i])) {
      fail(Status::nonfinite, std::string("the ") + constraint_name(c.kind) + " constraint of " + param + " gives " +
                                  number(out[i]) + " at index " + std::to_string(i) + " (from " + number(w[i]) +
                                  "); nothing was changed");
    }
  }
  return out;
}

}  // namespace bn
