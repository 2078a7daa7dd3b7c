// Keras' initializers, regularizers and constraints (SEMANTICS B.6, B.8): the checks of
// their arguments, the initial values, the regularization loss and gradient, and the
// constraints on the parameter's storage shape. Vectors of doubles in, vectors out; the
// layer owns the parameters and decides when each of these runs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layer/keras_options.hpp"
#include "layer/shape_plan.hpp"

namespace bn {

// Keras backend.epsilon(), used by the norm constraints.
constexpr double kConstraintEpsilon = 1e-7;

// Checks of the setters: their own arguments only (throw Error(invalid_argument) naming the
// C argument). `variance`: the initializer of the moving variance, which may not be able to
// produce a negative value.
void check_initializer(const Initializer& init, bool variance);
void check_regularizer(const Regularizer& reg);
void check_constraint(const Constraint& constraint);

// The shape Keras gives gamma and beta (B.6): (C,) for a single axis, otherwise the input's
// rank with the kept sizes and 1 on every reduced dim, and with ghost batches (B.3) the full
// rank with one more 1 inserted at index 1. Its row-major order is the layer's.
std::vector<int64_t> storage_shape(size_t axis_count, const AxisPlan& axes, bool ghost);

// Checks at bn_create: the constraint's axes against the storage rank (out of range or
// repeated after resolving negatives: Error(invalid_argument)). `param` names it in messages.
void check_constraint_axes(const Constraint& constraint, const std::vector<int64_t>& storage, const char* param);

// `count` initial values, rounded to the storage type (float unless `f64`). `call` numbers
// the calls of one initializer: 0 for the parameter itself; Keras calls the moving
// initializers again for the renorm variables, which are further, separate draws (call 1, 2).
// Throws Error(invalid_argument) when a value is not finite in the storage type.
std::vector<double> initial_values(const Initializer& init, int64_t count, uint64_t call, bool f64,
                                   const char* param);

// l1*sum|w| + l2*sum w^2, summed in order in double.
double regularizer_loss(const Regularizer& reg, const std::vector<double>& w);
// grad += (l1*sign(w) + 2*l2*w) / divisor (sign(0) = 0); the divisor is the replica count of a
// synchronized layer (1 otherwise, which is exact).
void add_regularizer_gradient(const Regularizer& reg, const std::vector<double>& w, std::vector<double>& grad,
                              double divisor = 1.0);

// The constrained parameter, rounded to the storage type; `storage` as storage_shape.
// Throws Error(nonfinite) when a result is not finite (e.g. sum w^2 overflows).
std::vector<double> constrained(const Constraint& constraint, const std::vector<double>& w,
                                const std::vector<int64_t>& storage, bool f64, const char* param);

// "RANDOM_NORMAL" etc., for messages.
const char* initializer_name(InitKind kind);
const char* constraint_name(ConstraintKind kind);

}  // namespace bn
