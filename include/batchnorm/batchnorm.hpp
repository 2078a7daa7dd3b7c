/*
 * libbatchnorm — header-only C++17 wrapper over the C API in <batchnorm/batchnorm.h>.
 *
 * Everything here is inline and calls only the C functions, so a C++ program depends on the
 * library's C ABI alone, never on a C++ ABI: any compiler and standard library can use it.
 * Link the shared library as for C (CMake: batchnorm::batchnorm; pkg-config: batchnorm).
 *
 * Mapping. Every C function has one counterpart, named after it:
 *   bn_config_<name>(cfg, ...)  ->  batchnorm::Config::<name>(...)   (chainable setters)
 *   bn_<name>(layer, ...)       ->  batchnorm::Layer::<name>(...)
 *   bn_create / bn_destroy      ->  Layer::create or Layer's constructor / its destructor
 *   bn_create_from_state/_file  ->  Layer::create_from_state / create_from_file (or from_state,
 *                                   from_file), with the dtype bn_get_dtype reports
 * Arguments, units, defaults and semantics are those of the C function: read its comment in
 * batchnorm.h. The constants (BN_F64, BN_PARAM_GAMMA, BN_FUSED_ON, ...) are the C ones.
 *
 * Ownership. Config and Layer own their C handle: move-only, the destructor calls
 * bn_config_destroy / bn_destroy. A moved-from object holds no handle; every call on it fails
 * with the C API's "NULL" error (BN_ERR_INVALID_ARGUMENT). get() lends the handle for raw C
 * calls, release() gives it up. Caller buffers are borrowed for the duration of a call only.
 *
 * Errors: two modes, chosen per translation unit, from one set of functions.
 *   - Exceptions (the default when the compiler has them): a failing call throws
 *     batchnorm::Error, which carries the bn_status and the message bn_last_error() gave at
 *     the failing call, e.g. "bn_forward: shape[1]=63 but the layer was built for 64 features".
 *     Functions documented as returning `Result` return void.
 *   - Statuses (when __cpp_exceptions is not defined, e.g. -fno-exceptions, or when
 *     BATCHNORM_NO_EXCEPTIONS is defined before the include): nothing throws; every
 *     `Result` is a batchnorm::Status ([[nodiscard]], true on success) with the same status
 *     and message. Object creation goes through Layer::create; Config's setters keep the
 *     first failure (later setters are skipped) and Config::status() reports it, as does
 *     Layer::create when given that config. The value-returning conveniences (Layer(config,
 *     shape), fused(), get_param<T>(which), regularization_loss()) exist in exception mode
 *     only; their out-parameter forms exist in both.
 *   The pattern for code that must build both ways:
 *       batchnorm::Layer layer;
 *       auto st = batchnorm::Layer::create(cfg, {32, 64}, layer);   // void or Status
 *   and in status mode: if (!st) { log(st.message()); return st.status(); }
 *   BATCHNORM_EXCEPTIONS is 1 or 0 accordingly. Both modes may be linked into one program:
 *   each lives in its own inline namespace (batchnorm::throwing / batchnorm::returning).
 *   Wrapper-side checks (element type vs the layer's dtype, views of different shapes, a
 *   span of the wrong length) fail the same way, with a message naming the wrapper function,
 *   before any C call: nothing is changed.
 *
 * Element types. The layer's dtype is the one of the Config it was created from, or for a layer
 * made from a state blob the one bn_get_dtype reports; the wrapper remembers it. Tensors (x, y, dy, dx, residual) and
 * parameters are float for BN_F32 layers and double for BN_F64 layers; every data function
 * has a float and a double overload, and calling the one that does not match the layer fails
 * with BN_ERR_INVALID_ARGUMENT. (BN_BF16/BN_F16 are refused by bn_config_set_dtype in 1.0.)
 *
 * Threads: as the C API. Different objects may be used from different threads at once. On
 * one Layer, concurrent inference-mode forward() and get_param() calls are safe; anything
 * else needs exclusive access (accidental concurrent use fails with BN_ERR_STATE rather than
 * racing). The wrapper adds no shared state; an error message is captured on the calling
 * thread right after the failing call (bn_last_error() is thread-local).
 */
#ifndef BATCHNORM_BATCHNORM_HPP
#define BATCHNORM_BATCHNORM_HPP

#include <batchnorm/batchnorm.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if !defined(BATCHNORM_NO_EXCEPTIONS) && !defined(__cpp_exceptions)
#define BATCHNORM_NO_EXCEPTIONS
#endif
#ifdef BATCHNORM_NO_EXCEPTIONS
#define BATCHNORM_EXCEPTIONS 0
#else
#define BATCHNORM_EXCEPTIONS 1
#include <stdexcept>
#endif

// Propagates a failure out of the enclosing function: a no-op in exception mode (the callee
// threw already), an early return of the failed Status in status mode. Internal; undefined
// at the end of this header.
#if BATCHNORM_EXCEPTIONS
#define BATCHNORM_DETAIL_TRY(expr) expr
#else
#define BATCHNORM_DETAIL_TRY(expr)                                \
  do {                                                            \
    ::batchnorm::Status batchnorm_detail_status = (expr);         \
    if (!batchnorm_detail_status) return batchnorm_detail_status; \
  } while (0)
#endif

namespace batchnorm {
#if BATCHNORM_EXCEPTIONS
inline namespace throwing {
#else
inline namespace returning {
#endif

/// The runtime version of the loaded library: MAJOR*10000 + MINOR*100 + PATCH (bn_version).
inline uint32_t version() noexcept {
  return bn_version();
}
/// "MAJOR.MINOR.PATCH" of the loaded library, e.g. "1.1.0" (bn_version_string). Static string.
inline const char* version_string() noexcept {
  return bn_version_string();
}
/// "BN_ERR_SHAPE" etc. (bn_status_string). Static string, never NULL.
inline const char* status_string(bn_status status) noexcept {
  return bn_status_string(status);
}

/// The outcome of a call in status mode (and of Config::status() in both modes): a bn_status
/// with the message of the failing call. True when the call succeeded.
class [[nodiscard]] Status {
 public:
  /// Success (BN_OK, empty message).
  Status() = default;
  /// A status and its message (the wrapper builds these from the failing C call).
  Status(bn_status status, std::string message) : status_(status), message_(std::move(message)) {}

  /// The bn_status (BN_OK on success).
  bn_status status() const noexcept { return status_; }
  /// The message of the failing call ("" on success), e.g. "bn_forward: ndim=3 but ...".
  const std::string& message() const noexcept { return message_; }
  /// The status' name, e.g. "BN_ERR_SHAPE".
  const char* name() const noexcept { return bn_status_string(status_); }
  /// True for BN_OK; `if (!st)` tests for failure.
  bool ok() const noexcept { return status_ == BN_OK; }
  /// True on success.
  explicit operator bool() const noexcept { return ok(); }

 private:
  bn_status status_ = BN_OK;
  std::string message_;
};

#if BATCHNORM_EXCEPTIONS
/// Thrown by every failing call in exception mode. what() is the message of the failing call
/// (bn_last_error() at that moment, or the wrapper's own message for its checks).
class Error : public std::runtime_error {
 public:
  /// An error with its status and message (normally thrown by the wrapper, not built by callers).
  Error(bn_status status, const std::string& message)
      : std::runtime_error(message.empty() ? std::string(bn_status_string(status)) : message), status_(status) {}
  /// The C status, never BN_OK.
  bn_status status() const noexcept { return status_; }
  /// The status' name, e.g. "BN_ERR_SHAPE".
  const char* name() const noexcept { return bn_status_string(status_); }

 private:
  bn_status status_;
};

/// What a call that can fail returns: void here (failures throw Error); Status in status mode.
using Result = void;
#else
using Result = Status;
#endif

namespace detail {

// Fails the enclosing call: throws in exception mode, returns the Status otherwise.
#if BATCHNORM_EXCEPTIONS
[[noreturn]] inline void fail(bn_status status, const std::string& message) {
  throw Error(status, message);
}
#else
inline Status fail(bn_status status, std::string message) {
  return Status(status, std::move(message));
}
#endif

// Maps a C status to a Result, capturing bn_last_error() at once (it is thread-local and
// overwritten by the next failing call).
inline Result check(bn_status status) {
  if (status != BN_OK) return fail(status, bn_last_error());
  return Result();
}

}  // namespace detail

/// A non-owning view of `size()` contiguous elements (a C++17 stand-in for std::span).
/// Built from a pointer and a count, or from any container with data() and size() whose
/// elements convert (std::vector, std::array; a const container gives a Span<const T>).
/// The viewed memory must outlive the call it is passed to; a default Span is empty.
template <class T>
class Span {
 public:
  /// Empty (null data): "none" where a call accepts it.
  Span() noexcept = default;
  /// `size` elements from `data`.
  Span(T* data, std::size_t size) noexcept : data_(data), size_(size) {}
  template <class C, class D = decltype(std::declval<C&>().data()),
            class = std::enable_if_t<std::is_convertible<D, T*>::value &&
                                     !std::is_same<std::remove_cv_t<std::remove_reference_t<C>>, Span>::value>>
  /// The elements of a container (data(), size()), e.g. a std::vector; not a copy.
  Span(C&& container) noexcept : data_(container.data()), size_(container.size()) {}

  /// Element access; no bounds check, as std::span.
  T* data() const noexcept { return data_; }
  /// Number of elements.
  std::size_t size() const noexcept { return size_; }
  /// True when there are no elements.
  bool empty() const noexcept { return size_ == 0; }
  /// Element i (unchecked).
  T& operator[](std::size_t i) const noexcept { return data_[i]; }
  /// First element.
  T* begin() const noexcept { return data_; }
  /// Past the last element.
  T* end() const noexcept { return data_ + size_; }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};
/// Span(vector) deduces the element type: batchnorm::Span(v) is a Span<float> for a
/// std::vector<float> v, a Span<const float> for a const one.
template <class C>
Span(C&&) -> Span<std::remove_pointer_t<decltype(std::declval<C&>().data())>>;

/// A tensor shape held by value (at most max_rank = 8 sizes, the C API's limit), so a Shape
/// or a TensorView may be stored without dangling. Built from a braced list ({32, 64}), a
/// std::vector<int64_t>, a std::array<int64_t, N> or a pointer and a count. A longer shape
/// keeps its ndim() and is refused (BN_ERR_SHAPE) by every call it is passed to.
class Shape {
 public:
  /// The largest rank the library accepts.
  static constexpr int32_t max_rank = 8;

  /// Rank 0 (refused by every call).
  Shape() noexcept = default;
  /// The sizes copied from a list, a pointer and a count, or a container of int64_t.
  Shape(std::initializer_list<int64_t> dims) noexcept : Shape(dims.begin(), dims.size()) {}
  /// A shape from ndim sizes at dims (at most max_rank).
  Shape(const int64_t* dims, std::size_t ndim) noexcept
      : ndim_(ndim > static_cast<std::size_t>(max_rank) ? max_rank + 1 : static_cast<int32_t>(ndim)) {
    for (std::size_t i = 0; i < ndim && i < static_cast<std::size_t>(max_rank); ++i) dims_[i] = dims[i];
  }
  template <class C, class = std::enable_if_t<
                         std::is_convertible<decltype(std::declval<const C&>().data()), const int64_t*>::value>>
  /// A shape from any container of sizes (std::vector<int64_t>, std::array, ...).
  Shape(const C& dims) noexcept : Shape(dims.data(), dims.size()) {}

  /// The sizes, ndim() of them (max_rank + 1 for a shape that was too long, of which only
  /// the first max_rank are kept).
  const int64_t* data() const noexcept { return dims_; }
  /// The number of dimensions.
  int32_t ndim() const noexcept { return ndim_; }
  /// Size i, for i < min(ndim(), max_rank).
  int64_t operator[](std::size_t i) const noexcept { return dims_[i]; }
  /// The number of elements: the product of the sizes (1 for ndim 0).
  int64_t elements() const noexcept {
    int64_t n = 1;
    for (int32_t i = 0; i < ndim_ && i < max_rank; ++i) n *= dims_[i];
    return n;
  }
  /// "[4, 3, 8]", for messages.
  std::string to_string() const {
    std::string s = "[";
    for (int32_t i = 0; i < ndim_ && i < max_rank; ++i) s += (i ? ", " : "") + std::to_string(dims_[i]);
    return s + (ndim_ > max_rank ? ", ...]" : "]");
  }
  /// Same rank and sizes.
  friend bool operator==(const Shape& a, const Shape& b) noexcept {
    if (a.ndim_ != b.ndim_) return false;
    for (int32_t i = 0; i < a.ndim_ && i < max_rank; ++i) {
      if (a.dims_[i] != b.dims_[i]) return false;
    }
    return true;
  }
  /// Shapes differ in rank or in a size.
  friend bool operator!=(const Shape& a, const Shape& b) noexcept { return !(a == b); }

 private:
  int64_t dims_[max_rank] = {};
  int32_t ndim_ = 0;
};

/// A dense row-major tensor the caller owns: a pointer to shape.elements() elements and the
/// shape, by value. A TensorView<T> converts to a TensorView<const T>. A view with a null
/// data pointer stands for "skip this output" where the C API accepts NULL.
template <class T>
struct TensorView {
  /// First element of the tensor.
  T* data = nullptr;
  /// Its shape (row-major).
  Shape shape;

  /// Null data: "skip" for an output.
  TensorView() noexcept = default;
  /// A tensor of shape `dims` at `elements`: layer.forward({x, {4, 3}}, {y, {4, 3}}).
  TensorView(T* elements, Shape dims) noexcept : data(elements), shape(dims) {}
  template <class U, class = std::enable_if_t<std::is_convertible<U*, T*>::value>>
  /// TensorView<T> to TensorView<const T>.
  TensorView(const TensorView<U>& other) noexcept : data(other.data), shape(other.shape) {}
};

/// An owned bn_config: the builder of a layer's options. Move-only.
/// Every setter mirrors bn_config_set_<name> (same arguments, ints as bool where the C
/// function takes a flag) and returns *this for chaining:
///     batchnorm::Config cfg;
///     cfg.set_axes({1}).set_momentum(0.9).set_epsilon(1e-5).set_relu(true);
/// Exception mode: a failing setter throws and leaves the config unchanged. Status mode: the
/// first failure is kept in status(), the setters after it do nothing, and Layer::create
/// returns that failure. Not thread-safe: one thread at a time per Config.
class Config {
 public:
  /// bn_config_create: the Keras defaults (axis -1, momentum 0.99, epsilon 1e-3, BN_F32, ...).
  /// Fails only when out of memory.
  Config() {
    bn_config* handle = nullptr;
    record(bn_config_create(&handle));
    handle_ = handle;
  }
  /// bn_config_destroy. Layers created from this config are unaffected.
  ~Config() { bn_config_destroy(handle_); }
  /// Moves take the handle, the dtype and the status; the source is left empty.
  Config(Config&& other) noexcept
      : handle_(std::exchange(other.handle_, nullptr)), dtype_(other.dtype_), status_(std::move(other.status_)) {
    other.status_ = Status();
  }
  /// Move assignment: releases this config, takes the other's handle.
  Config& operator=(Config&& other) noexcept {
    if (this != &other) {
      bn_config_destroy(handle_);
      handle_ = std::exchange(other.handle_, nullptr);
      dtype_ = other.dtype_;
      status_ = std::move(other.status_);
      other.status_ = Status();
    }
    return *this;
  }
  Config(const Config&) = delete;
  Config& operator=(const Config&) = delete;

  /// The handle for raw C calls (still owned by this Config); NULL after a move.
  bn_config* get() noexcept { return handle_; }
  /// The C handle (still owned by this object).
  const bn_config* get() const noexcept { return handle_; }
  /// Gives up ownership: the caller must bn_config_destroy the result.
  bn_config* release() noexcept { return std::exchange(handle_, nullptr); }
  /// The element type set with set_dtype (BN_F32 by default); layers created from this
  /// config take it.
  bn_dtype dtype() const noexcept { return dtype_; }
  /// The first failure of the constructor or a setter in status mode; always success in
  /// exception mode (failures threw).
  const Status& status() const noexcept { return status_; }

  /// bn_config_set_axes: the normalized (kept) axes, negative from the end.
  Config& set_axes(Span<const int32_t> axes) {
    if (!live()) return *this;
    return record(bn_config_set_axes(handle_, axes.data(), count(axes.size())));
  }
  /// bn_config_set_axes from a brace list, e.g. `set_axes({1, 3})`.
  Config& set_axes(std::initializer_list<int32_t> axes) {
    return set_axes(Span<const int32_t>(axes.begin(), axes.size()));
  }
  /// bn_config_set_momentum: in [0, 1].
  Config& set_momentum(double momentum) { return live() ? record(bn_config_set_momentum(handle_, momentum)) : *this; }
  /// bn_config_set_epsilon: finite, >= 0.
  Config& set_epsilon(double epsilon) { return live() ? record(bn_config_set_epsilon(handle_, epsilon)) : *this; }
  /// bn_config_set_center: false means no beta.
  Config& set_center(bool enabled) { return live() ? record(bn_config_set_center(handle_, enabled ? 1 : 0)) : *this; }
  /// bn_config_set_scale: false means no gamma.
  Config& set_scale(bool enabled) { return live() ? record(bn_config_set_scale(handle_, enabled ? 1 : 0)) : *this; }
  /// bn_config_set_dtype: BN_F32 or BN_F64; remembered for the layers' element type.
  Config& set_dtype(bn_dtype dtype) {
    if (!live()) return *this;
    const bn_status status = bn_config_set_dtype(handle_, dtype);
    if (status == BN_OK) dtype_ = dtype;
    return record(status);
  }
  /// bn_config_set_trainable (Keras trainable; V1 vs V2 meaning as in the C header).
  Config& set_trainable(bool trainable) {
    return live() ? record(bn_config_set_trainable(handle_, trainable ? 1 : 0)) : *this;
  }
  /// bn_config_set_fused: BN_FUSED_AUTO, BN_FUSED_ON or BN_FUSED_OFF.
  Config& set_fused(bn_fused fused) { return live() ? record(bn_config_set_fused(handle_, fused)) : *this; }
  /// bn_config_set_keras_rules: BN_KERAS_V1 or BN_KERAS_V2.
  Config& set_keras_rules(bn_keras_rules rules) {
    return live() ? record(bn_config_set_keras_rules(handle_, rules)) : *this;
  }
  /// bn_config_set_renorm: batch renormalization; enabled false turns it off.
  Config& set_renorm(bool enabled, double rmax, double rmin, double dmax, double renorm_momentum) {
    return live() ? record(bn_config_set_renorm(handle_, enabled ? 1 : 0, rmax, rmin, dmax, renorm_momentum)) : *this;
  }
  /// bn_config_set_virtual_batch_size: ghost batch normalization; 0 = off.
  Config& set_virtual_batch_size(int64_t size) {
    return live() ? record(bn_config_set_virtual_batch_size(handle_, size)) : *this;
  }
  /// bn_config_set_adjustment: fn NULL = off. fn must not throw (it is called from C).
  Config& set_adjustment(bn_adjustment_fn fn, void* user_data) {
    return live() ? record(bn_config_set_adjustment(handle_, fn, user_data)) : *this;
  }
  /// bn_config_set_moving_variance: BN_MOVING_VARIANCE_AUTO, _BIASED or _UNBIASED.
  Config& set_moving_variance(bn_moving_variance convention) {
    return live() ? record(bn_config_set_moving_variance(handle_, convention)) : *this;
  }
  /// bn_config_set_cumulative_average (PyTorch momentum=None).
  Config& set_cumulative_average(bool enabled) {
    return live() ? record(bn_config_set_cumulative_average(handle_, enabled ? 1 : 0)) : *this;
  }
  /// bn_config_set_single_value_policy: BN_SINGLE_VALUE_COMPUTE or BN_SINGLE_VALUE_REJECT.
  Config& set_single_value_policy(bn_single_value_policy policy) {
    return live() ? record(bn_config_set_single_value_policy(handle_, policy)) : *this;
  }
  /// bn_config_set_nonfinite_policy: BN_NONFINITE_REFUSE (default), _PROPAGATE or _SKIP_UPDATE
  /// for training batches with NaN or infinity (since 1.1.0).
  Config& set_nonfinite_policy(bn_nonfinite_policy policy) {
    return live() ? record(bn_config_set_nonfinite_policy(handle_, policy)) : *this;
  }
  /// bn_config_set_relu: a fused ReLU after the normalization (and the residual).
  Config& set_relu(bool enabled) { return live() ? record(bn_config_set_relu(handle_, enabled ? 1 : 0)) : *this; }
  /// bn_config_set_allreduce: cross-replica (synchronized) statistics; fn NULL = off. fn must
  /// not throw (it is called from C); user_data must outlive the layers made from this config.
  Config& set_allreduce(bn_allreduce_fn fn, void* user_data) {
    return live() ? record(bn_config_set_allreduce(handle_, fn, user_data)) : *this;
  }
  /// bn_config_set_initializer: `which` is GAMMA, BETA, MOVING_MEAN or MOVING_VARIANCE; a, b
  /// and seed as the kind reads them (the defaults are placeholders for kinds that do not
  /// read them, not Keras' defaults).
  Config& set_initializer(bn_param which, bn_initializer kind, double a = 0.0, double b = 0.0, uint64_t seed = 0) {
    return live() ? record(bn_config_set_initializer(handle_, which, kind, a, b, seed)) : *this;
  }
  /// bn_config_set_regularizer: Keras L1L2 on GAMMA or BETA; (0, 0) = none.
  Config& set_regularizer(bn_param which, double l1, double l2) {
    return live() ? record(bn_config_set_regularizer(handle_, which, l1, l2)) : *this;
  }
  /// bn_config_set_constraint on GAMMA or BETA. The values and axes are read only by the kinds
  /// that use them (the defaults are placeholders, not Keras' defaults).
  Config& set_constraint(bn_param which, bn_constraint kind, double min_value = 0.0, double max_value = 0.0,
                         double rate = 0.0, Span<const int32_t> axes = {}) {
    if (!live()) return *this;
    return record(
        bn_config_set_constraint(handle_, which, kind, min_value, max_value, rate, axes.data(), count(axes.size())));
  }
  /// bn_config_set_constraint with the axes as a brace list.
  Config& set_constraint(bn_param which, bn_constraint kind, double min_value, double max_value, double rate,
                         std::initializer_list<int32_t> axes) {
    return set_constraint(which, kind, min_value, max_value, rate, Span<const int32_t>(axes.begin(), axes.size()));
  }

 private:
  // Status mode skips the setters after a failure, so the first message survives.
  bool live() const noexcept { return status_.ok(); }
  Config& record(bn_status status) {
#if BATCHNORM_EXCEPTIONS
    detail::check(status);
#else
    status_ = detail::check(status);
#endif
    return *this;
  }
  // A count the C API will refuse rather than a silently truncated one.
  static int32_t count(std::size_t n) noexcept {
    return n > 0x7fffffff ? -1 : static_cast<int32_t>(n);
  }

  bn_config* handle_ = nullptr;
  bn_dtype dtype_ = BN_F32;
  Status status_;
};

/// An owned bn_layer and its element type. Move-only; the destructor calls bn_destroy.
/// A default-constructed Layer is empty (no handle) until assigned, e.g. by Layer::create.
class Layer {
 public:
  Layer() noexcept = default;
  /// Adopts a handle made by bn_create from a config of element type `dtype` (which the C
  /// API does not report). The Layer destroys it.
  Layer(bn_layer* handle, bn_dtype dtype) noexcept : handle_(handle), dtype_(dtype) {}
#if BATCHNORM_EXCEPTIONS
  /// bn_create: a layer for inputs like `input_shape` (rank and kept sizes fixed from now on),
  /// in inference mode. The config is copied and may be destroyed or changed afterwards.
  Layer(const Config& config, const Shape& input_shape) {
    create(config, input_shape, *this);
  }
#endif
  /// bn_create into `out` (which is left unchanged on failure). A config holding a failure
  /// (status mode) fails with that failure.
  static Result create(const Config& config, const Shape& input_shape, Layer& out) {
    if (!config.status()) return detail::fail(config.status().status(), config.status().message());
    BATCHNORM_DETAIL_TRY(check_rank(input_shape, "create"));
    bn_layer* handle = nullptr;
    BATCHNORM_DETAIL_TRY(detail::check(bn_create(config.get(), input_shape.data(), input_shape.ndim(), &handle)));
    out = Layer(handle, config.dtype());
    return Result();
  }
  /// bn_create_from_state into `out` (left unchanged on failure): a layer rebuilt from a
  /// blob of save(), configuration and dtype included. Since 1.1.0.
  static Result create_from_state(Span<const uint8_t> blob, Layer& out) {
    bn_layer* handle = nullptr;
    BATCHNORM_DETAIL_TRY(
        detail::check(bn_create_from_state(blob.data(), static_cast<int64_t>(blob.size()), &handle)));
    return adopt(handle, out);
  }
  /// bn_create_from_file into `out` (left unchanged on failure). Since 1.1.0.
  static Result create_from_file(const std::string& path, Layer& out) {
    bn_layer* handle = nullptr;
    BATCHNORM_DETAIL_TRY(detail::check(bn_create_from_file(path.c_str(), &handle)));
    return adopt(handle, out);
  }
#if BATCHNORM_EXCEPTIONS
  /// create_from_state, returning the layer. Since 1.1.0.
  static Layer from_state(Span<const uint8_t> blob) {
    Layer layer;
    create_from_state(blob, layer);
    return layer;
  }
  /// create_from_file, returning the layer. Since 1.1.0.
  static Layer from_file(const std::string& path) {
    Layer layer;
    create_from_file(path, layer);
    return layer;
  }
#endif
  /// bn_destroy (nothing when empty).
  ~Layer() {
    bn_destroy(handle_);
  }
  /// Moves take the handle and the dtype; the source is left empty. Assigning destroys the
  /// layer held before.
  Layer(Layer&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)), dtype_(other.dtype_) {}
  /// Move assignment: releases this layer, takes the other's handle.
  Layer& operator=(Layer&& other) noexcept {
    if (this != &other) {
      bn_destroy(handle_);
      handle_ = std::exchange(other.handle_, nullptr);
      dtype_ = other.dtype_;
    }
    return *this;
  }
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  /// The handle for raw C calls (still owned by this Layer); NULL when empty.
  bn_layer* get() noexcept {
    return handle_;
  }
  /// The C handle (still owned by this object).
  const bn_layer* get() const noexcept {
    return handle_;
  }
  /// Gives up ownership: the caller must bn_destroy the result.
  bn_layer* release() noexcept {
    return std::exchange(handle_, nullptr);
  }
  /// True when the Layer holds a handle.
  explicit operator bool() const noexcept {
    return handle_ != nullptr;
  }
  /// BN_F32 or BN_F64: the element type of tensors and parameters.
  bn_dtype dtype() const noexcept {
    return dtype_;
  }
  /// bn_num_features: the product of the kept sizes; -1 when empty (bn_last_error() then
  /// says the layer is NULL). Never fails otherwise.
  int64_t num_features() const noexcept {
    return bn_num_features(handle_);
  }

  /// bn_set_training: Keras training=True/False for the following forwards.
  Result set_training(bool training) {
    return detail::check(bn_set_training(handle_, training ? 1 : 0));
  }
  /// bn_set_trainable: Keras layer.trainable = ... on a live layer.
  Result set_trainable(bool trainable) {
    return detail::check(bn_set_trainable(handle_, trainable ? 1 : 0));
  }
  /// bn_set_momentum: in [0, 1] (scheduled momentum).
  Result set_momentum(double momentum) {
    return detail::check(bn_set_momentum(handle_, momentum));
  }
  /// bn_set_num_threads: 0 = the caller's oneTBB arena, 1 = this thread only, n = at most n.
  /// Results are bitwise the same for every setting.
  Result set_num_threads(int32_t max_threads) {
    return detail::check(bn_set_num_threads(handle_, max_threads));
  }
  /// bn_set_renorm_clipping: new rmax, rmin, dmax for a renorm layer (BN_ERR_STATE without renorm).
  Result set_renorm_clipping(double rmax, double rmin, double dmax) {
    return detail::check(bn_set_renorm_clipping(handle_, rmax, rmin, dmax));
  }
  /// bn_set_renorm_momentum: in [0, 1].
  Result set_renorm_momentum(double renorm_momentum) {
    return detail::check(bn_set_renorm_momentum(handle_, renorm_momentum));
  }
  /// bn_set_nonfinite_policy: BN_NONFINITE_REFUSE, _PROPAGATE or _SKIP_UPDATE (since 1.1.0).
  Result set_nonfinite_policy(bn_nonfinite_policy policy) {
    return detail::check(bn_set_nonfinite_policy(handle_, policy));
  }
  /// bn_set_mode: BN_MODE_* flags, overriding the Keras presets until the next
  /// set_training/set_trainable.
  Result set_mode(bn_mode flags) { return detail::check(bn_set_mode(handle_, flags)); }
  /// bn_get_mode: the current BN_MODE_* flags.
  Result get_mode(bn_mode& flags_out) const { return detail::check(bn_get_mode(handle_, &flags_out)); }
  /// bn_get_fused: whether the layer follows Keras' fused-path semantics.
  Result get_fused(bool& fused_out) const {
    int fused = 0;
    BATCHNORM_DETAIL_TRY(detail::check(bn_get_fused(handle_, &fused)));
    fused_out = fused != 0;
    return Result();
  }
#if BATCHNORM_EXCEPTIONS
  /// get_fused, returning the value.
  bool fused() const {
    bool f = false;
    get_fused(f);
    return f;
  }
#endif

  /// bn_forward: y = bn(x) for a tensor of `shape` (y may equal x). Training mode uses and
  /// updates the batch statistics and saves the forward for backward().
  Result forward(const Shape& shape, const float* x, float* y) {
    return forward_impl<float>("forward", shape, x, y);
  }
  /// As above, for float64 layers.
  Result forward(const Shape& shape, const double* x, double* y) {
    return forward_impl<double>("forward", shape, x, y);
  }
  /// bn_forward on views; y must have x's shape (else BN_ERR_SHAPE).
  Result forward(TensorView<const float> x, TensorView<float> y) {
    return forward_view<float>(x, y);
  }
  /// As above, for float64 layers (views).
  Result forward(TensorView<const double> x, TensorView<double> y) {
    return forward_view<double>(x, y);
  }

  /// bn_backward: the gradient of the latest forward, which had this shape and this x.
  /// dx may equal dy; dx, dgamma, dbeta may be nullptr to skip. dgamma and dbeta receive
  /// num_features() values each (overwritten, regularizer gradients included).
  Result backward(const Shape& shape, const float* x, const float* dy, float* dx, float* dgamma = nullptr,
                  float* dbeta = nullptr) {
    return backward_impl<float>("backward", shape, x, dy, dx, dgamma, dbeta);
  }
  /// As above, for float64 layers.
  Result backward(const Shape& shape, const double* x, const double* dy, double* dx, double* dgamma = nullptr,
                  double* dbeta = nullptr) {
    return backward_impl<double>("backward", shape, x, dy, dx, dgamma, dbeta);
  }
  /// bn_backward on views: dy and dx of x's shape, dgamma and dbeta of num_features() values
  /// (checked, BN_ERR_SHAPE); an output with a null data pointer is skipped.
  Result backward(TensorView<const float> x, TensorView<const float> dy, TensorView<float> dx, Span<float> dgamma = {},
                  Span<float> dbeta = {}) {
    return backward_view<float>(x, dy, dx, dgamma, dbeta);
  }
  /// As above, for float64 layers (views).
  Result backward(TensorView<const double> x, TensorView<const double> dy, TensorView<double> dx,
                  Span<double> dgamma = {}, Span<double> dbeta = {}) {
    return backward_view<double>(x, dy, dx, dgamma, dbeta);
  }

  /// bn_forward_residual: y = act(bn(x) + residual) in one pass; residual may equal y.
  Result forward_residual(const Shape& shape, const float* x, const float* residual, float* y) {
    return residual_impl<float>(shape, x, residual, y);
  }
  /// As above, for float64 layers.
  Result forward_residual(const Shape& shape, const double* x, const double* residual, double* y) {
    return residual_impl<double>(shape, x, residual, y);
  }
  /// bn_forward_residual on views of one shape.
  Result forward_residual(TensorView<const float> x, TensorView<const float> residual, TensorView<float> y) {
    return residual_view<float>(x, residual, y);
  }
  /// As above, for float64 layers (views).
  Result forward_residual(TensorView<const double> x, TensorView<const double> residual, TensorView<double> y) {
    return residual_view<double>(x, residual, y);
  }

  /// bn_backward_residual: the backward of the latest forward given its output y (the ReLU
  /// mask is y > 0). dresidual (not dx), dx, dgamma, dbeta may be nullptr to skip.
  Result backward_residual(const Shape& shape, const float* x, const float* y, const float* dy, float* dx,
                           float* dresidual = nullptr, float* dgamma = nullptr, float* dbeta = nullptr) {
    return backward_residual_impl<float>("backward_residual", shape, x, y, dy, dx, dresidual, dgamma, dbeta);
  }
  /// As above, for float64 layers.
  Result backward_residual(const Shape& shape, const double* x, const double* y, const double* dy, double* dx,
                           double* dresidual = nullptr, double* dgamma = nullptr, double* dbeta = nullptr) {
    return backward_residual_impl<double>("backward_residual", shape, x, y, dy, dx, dresidual, dgamma, dbeta);
  }
  /// bn_backward_residual on views: y, dy, dx, dresidual of x's shape; dgamma, dbeta of
  /// num_features() values (checked); an output with a null data pointer is skipped.
  Result backward_residual(TensorView<const float> x, TensorView<const float> y, TensorView<const float> dy,
                           TensorView<float> dx, TensorView<float> dresidual = {}, Span<float> dgamma = {},
                           Span<float> dbeta = {}) {
    return backward_residual_view<float>(x, y, dy, dx, dresidual, dgamma, dbeta);
  }
  /// As above, for float64 layers (views).
  Result backward_residual(TensorView<const double> x, TensorView<const double> y, TensorView<const double> dy,
                           TensorView<double> dx, TensorView<double> dresidual = {}, Span<double> dgamma = {},
                           Span<double> dbeta = {}) {
    return backward_residual_view<double>(x, y, dy, dx, dresidual, dgamma, dbeta);
  }

  /// bn_get_param into `out`, whose size must be num_features() (BN_ERR_SHAPE otherwise).
  Result get_param(bn_param which, Span<float> out) const {
    return get_param_impl<float>(which, out);
  }
  /// As above, for float64 layers.
  Result get_param(bn_param which, Span<double> out) const {
    return get_param_impl<double>(which, out);
  }
  /// bn_get_param into a vector, resized to num_features().
  Result get_param(bn_param which, std::vector<float>& out) const {
    return get_param_vector<float>(which, out);
  }
  /// As above, for float64 layers.
  Result get_param(bn_param which, std::vector<double>& out) const {
    return get_param_vector<double>(which, out);
  }
#if BATCHNORM_EXCEPTIONS
  /// bn_get_param, returning a new vector: layer.get_param<float>(BN_PARAM_GAMMA).
  template <class T>
  std::vector<T> get_param(bn_param which) const {
    std::vector<T> out;
    get_param_vector<T>(which, out);
    return out;
  }
#endif
  /// bn_set_param from num_features() values (a std::vector converts). Invalidates the saved
  /// forward.
  Result set_param(bn_param which, Span<const float> values) {
    return set_param_impl<float>(which, values);
  }
  /// As above, for float64 layers.
  Result set_param(bn_param which, Span<const double> values) {
    return set_param_impl<double>(which, values);
  }

  /// bn_fold: the inference transform y = x*scale + shift; both spans of num_features().
  Result fold(Span<float> scale, Span<float> shift) const {
    return fold_impl<float>(scale, shift);
  }
  /// As above, for float64 layers.
  Result fold(Span<double> scale, Span<double> shift) const {
    return fold_impl<double>(scale, shift);
  }
  /// bn_fold into vectors, resized to num_features().
  Result fold(std::vector<float>& scale, std::vector<float>& shift) const {
    return fold_vector<float>(scale, shift);
  }
  /// As above, for float64 layers.
  Result fold(std::vector<double>& scale, std::vector<double>& shift) const {
    return fold_vector<double>(scale, shift);
  }
  /// bn_fold_into: scales the preceding layer's output-major weights in place (num_features()
  /// rows of weights_per_feature values: weights.size() must be their product) and writes
  /// bias_out (num_features() values); bias may be empty (no bias) and may alias bias_out.
  Result fold_into(Span<float> weights, int64_t weights_per_feature, Span<const float> bias,
                   Span<float> bias_out) const {
    return fold_into_impl<float>(weights, weights_per_feature, bias, bias_out);
  }
  /// As above, for float64 layers.
  Result fold_into(Span<double> weights, int64_t weights_per_feature, Span<const double> bias,
                   Span<double> bias_out) const {
    return fold_into_impl<double>(weights, weights_per_feature, bias, bias_out);
  }

  /// bn_regularization_loss: the configured regularizers' penalty on gamma and beta.
  Result regularization_loss(double& loss_out) const {
    return detail::check(bn_regularization_loss(handle_, &loss_out));
  }
#if BATCHNORM_EXCEPTIONS
  /// regularization_loss, returning the value.
  double regularization_loss() const {
    double loss = 0.0;
    regularization_loss(loss);
    return loss;
  }
#endif
  /// bn_apply_constraints: the configured constraints on gamma and beta (after an update).
  Result apply_constraints() {
    return detail::check(bn_apply_constraints(handle_));
  }

  /// bn_save into `out`, resized to the blob's size (its previous contents are replaced
  /// only on success). The blob holds the configuration, parameters, statistics, modes and
  /// step counter (docs/state_format.md). Since 1.1.0.
  Result save(std::vector<uint8_t>& out) const {
    int64_t size = 0;
    BATCHNORM_DETAIL_TRY(detail::check(bn_save(handle_, nullptr, 0, &size)));
    std::vector<uint8_t> blob(static_cast<std::size_t>(size));
    BATCHNORM_DETAIL_TRY(detail::check(bn_save(handle_, blob.data(), size, &size)));
    out = std::move(blob);
    return Result();
  }
#if BATCHNORM_EXCEPTIONS
  /// save, returning the blob. Since 1.1.0.
  std::vector<uint8_t> save() const {
    std::vector<uint8_t> blob;
    save(blob);
    return blob;
  }
#endif
  /// bn_load: this layer becomes the saved one (it keeps its adjustment and allreduce callbacks
  /// and thread bound); a blob of another structure or a damaged one changes nothing. Since 1.1.0.
  Result load(Span<const uint8_t> blob) {
    return detail::check(bn_load(handle_, blob.data(), static_cast<int64_t>(blob.size())));
  }
  /// bn_save_file: the state into the file at `path`, replaced atomically. Since 1.1.0.
  Result save_file(const std::string& path) const {
    return detail::check(bn_save_file(handle_, path.c_str()));
  }
  /// bn_load_file: load() from the file at `path`. Since 1.1.0.
  Result load_file(const std::string& path) {
    return detail::check(bn_load_file(handle_, path.c_str()));
  }
  /// bn_get_step_count: forwards that updated the moving statistics so far. Since 1.1.0.
  Result get_step_count(int64_t& count_out) const {
    return detail::check(bn_get_step_count(handle_, &count_out));
  }
#if BATCHNORM_EXCEPTIONS
  /// get_step_count, returning the value. Since 1.1.0.
  int64_t step_count() const {
    int64_t count = 0;
    get_step_count(count);
    return count;
  }
#endif
  /// bn_set_step_count (>= 0), e.g. PyTorch's num_batches_tracked. Since 1.1.0.
  Result set_step_count(int64_t count) {
    return detail::check(bn_set_step_count(handle_, count));
  }

 private:
  // Takes a handle the library just created, with the dtype it reports.
  static Result adopt(bn_layer* handle, Layer& out) {
    bn_dtype dtype = BN_F32;
    const bn_status status = bn_get_dtype(handle, &dtype);
    if (status != BN_OK) {
      bn_destroy(handle);
      return detail::check(status);
    }
    out = Layer(handle, dtype);
    return Result();
  }

  // --- wrapper-side checks: fail before any C call, so nothing changes -------------------
  static std::string where(const char* fn) {
    return std::string("batchnorm::Layer::") + fn + ": ";
  }

  static Result check_rank(const Shape& shape, const char* fn) {
    if (shape.ndim() > Shape::max_rank) {
      return detail::fail(BN_ERR_SHAPE, where(fn) + "ndim=" + std::to_string(shape.ndim()) +
                                            " but the rank must be 1 to " + std::to_string(Shape::max_rank));
    }
    return Result();
  }

  // T is float for BN_F32 layers and double for BN_F64 layers. An empty layer is left to the
  // C API, which names the NULL argument.
  template <class T>
  Result check_type(const char* fn) const {
    static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "float or double");
    const bn_dtype expected = std::is_same<T, double>::value ? BN_F64 : BN_F32;
    if (handle_ && dtype_ != expected) {
      return detail::fail(BN_ERR_INVALID_ARGUMENT, where(fn) + (expected == BN_F64 ? "double" : "float") +
                                                       " elements but the layer's dtype is " + dtype_name(dtype_) +
                                                       " (" + (dtype_ == BN_F64 ? "double" : "float") + " elements)");
    }
    return Result();
  }

  static const char* dtype_name(bn_dtype dtype) noexcept {
    switch (dtype) {
      case BN_F32: return "BN_F32";
      case BN_F64: return "BN_F64";
      case BN_BF16: return "BN_BF16";
      case BN_F16: return "BN_F16";
      default: return "an unknown dtype";
    }
  }

  static Result check_same(const Shape& expected, const Shape& got, const char* name, const char* fn) {
    if (got != expected) {
      return detail::fail(BN_ERR_SHAPE,
                          where(fn) + name + " has shape " + got.to_string() + " but x has " + expected.to_string());
    }
    return Result();
  }

  // A per-feature output the C function writes without a count: the span must hold exactly
  // num_features() values, or be skipped (null data).
  Result check_features(std::size_t size, const void* data, const char* name, const char* fn) const {
    if (data && handle_ && static_cast<int64_t>(size) != num_features()) {
      return detail::fail(BN_ERR_SHAPE, where(fn) + name + " has " + std::to_string(size) +
                                            " values but the layer has " + std::to_string(num_features()) +
                                            " features");
    }
    return Result();
  }

  // --- the calls, once per element type ----------------------------------------------------
  template <class T>
  Result forward_impl(const char* fn, const Shape& shape, const T* x, T* y) {
    BATCHNORM_DETAIL_TRY(check_type<T>(fn));
    BATCHNORM_DETAIL_TRY(check_rank(shape, fn));
    return detail::check(bn_forward(handle_, shape.data(), shape.ndim(), x, y));
  }
  template <class T>
  Result forward_view(const TensorView<const T>& x, const TensorView<T>& y) {
    BATCHNORM_DETAIL_TRY(check_same(x.shape, y.shape, "y", "forward"));
    return forward_impl<T>("forward", x.shape, x.data, y.data);
  }

  template <class T>
  Result backward_impl(const char* fn, const Shape& shape, const T* x, const T* dy, T* dx, T* dgamma, T* dbeta) {
    BATCHNORM_DETAIL_TRY(check_type<T>(fn));
    BATCHNORM_DETAIL_TRY(check_rank(shape, fn));
    return detail::check(bn_backward(handle_, shape.data(), shape.ndim(), x, dy, dx, dgamma, dbeta));
  }
  template <class T>
  Result backward_view(const TensorView<const T>& x, const TensorView<const T>& dy, const TensorView<T>& dx,
                       Span<T> dgamma, Span<T> dbeta) {
    const char* fn = "backward";
    BATCHNORM_DETAIL_TRY(check_same(x.shape, dy.shape, "dy", fn));
    if (dx.data) BATCHNORM_DETAIL_TRY(check_same(x.shape, dx.shape, "dx", fn));
    BATCHNORM_DETAIL_TRY(check_type<T>(fn));
    BATCHNORM_DETAIL_TRY(check_features(dgamma.size(), dgamma.data(), "dgamma", fn));
    BATCHNORM_DETAIL_TRY(check_features(dbeta.size(), dbeta.data(), "dbeta", fn));
    return backward_impl<T>(fn, x.shape, x.data, dy.data, dx.data, dgamma.data(), dbeta.data());
  }

  template <class T>
  Result residual_impl(const Shape& shape, const T* x, const T* residual, T* y) {
    BATCHNORM_DETAIL_TRY(check_type<T>("forward_residual"));
    BATCHNORM_DETAIL_TRY(check_rank(shape, "forward_residual"));
    return detail::check(bn_forward_residual(handle_, shape.data(), shape.ndim(), x, residual, y));
  }
  template <class T>
  Result residual_view(const TensorView<const T>& x, const TensorView<const T>& residual, const TensorView<T>& y) {
    BATCHNORM_DETAIL_TRY(check_same(x.shape, residual.shape, "residual", "forward_residual"));
    BATCHNORM_DETAIL_TRY(check_same(x.shape, y.shape, "y", "forward_residual"));
    return residual_impl<T>(x.shape, x.data, residual.data, y.data);
  }

  template <class T>
  Result backward_residual_impl(const char* fn, const Shape& shape, const T* x, const T* y, const T* dy, T* dx,
                                T* dresidual, T* dgamma, T* dbeta) {
    BATCHNORM_DETAIL_TRY(check_type<T>(fn));
    BATCHNORM_DETAIL_TRY(check_rank(shape, fn));
    return detail::check(
        bn_backward_residual(handle_, shape.data(), shape.ndim(), x, y, dy, dx, dresidual, dgamma, dbeta));
  }
  template <class T>
  Result backward_residual_view(const TensorView<const T>& x, const TensorView<const T>& y,
                                const TensorView<const T>& dy, const TensorView<T>& dx, const TensorView<T>& dresidual,
                                Span<T> dgamma, Span<T> dbeta) {
    const char* fn = "backward_residual";
    BATCHNORM_DETAIL_TRY(check_same(x.shape, y.shape, "y", fn));
    BATCHNORM_DETAIL_TRY(check_same(x.shape, dy.shape, "dy", fn));
    if (dx.data) BATCHNORM_DETAIL_TRY(check_same(x.shape, dx.shape, "dx", fn));
    if (dresidual.data) BATCHNORM_DETAIL_TRY(check_same(x.shape, dresidual.shape, "dresidual", fn));
    BATCHNORM_DETAIL_TRY(check_type<T>(fn));
    BATCHNORM_DETAIL_TRY(check_features(dgamma.size(), dgamma.data(), "dgamma", fn));
    BATCHNORM_DETAIL_TRY(check_features(dbeta.size(), dbeta.data(), "dbeta", fn));
    return backward_residual_impl<T>(fn, x.shape, x.data, y.data, dy.data, dx.data, dresidual.data, dgamma.data(),
                                     dbeta.data());
  }

  template <class T>
  Result get_param_impl(bn_param which, Span<T> out) const {
    BATCHNORM_DETAIL_TRY(check_type<T>("get_param"));
    return detail::check(bn_get_param(handle_, which, out.data(), static_cast<int64_t>(out.size())));
  }
  template <class T>
  Result get_param_vector(bn_param which, std::vector<T>& out) const {
    BATCHNORM_DETAIL_TRY(check_type<T>("get_param"));
    std::vector<T> values(feature_count());
    BATCHNORM_DETAIL_TRY(get_param_impl<T>(which, Span<T>(values)));
    out = std::move(values);
    return Result();
  }
  template <class T>
  Result set_param_impl(bn_param which, Span<const T> values) {
    BATCHNORM_DETAIL_TRY(check_type<T>("set_param"));
    return detail::check(bn_set_param(handle_, which, values.data(), static_cast<int64_t>(values.size())));
  }

  template <class T>
  Result fold_impl(Span<T> scale, Span<T> shift) const {
    BATCHNORM_DETAIL_TRY(check_type<T>("fold"));
    if (shift.size() != scale.size()) {
      return detail::fail(BN_ERR_SHAPE, where("fold") + "shift has " + std::to_string(shift.size()) +
                                            " values but scale has " + std::to_string(scale.size()));
    }
    return detail::check(bn_fold(handle_, scale.data(), shift.data(), static_cast<int64_t>(scale.size())));
  }
  template <class T>
  Result fold_vector(std::vector<T>& scale, std::vector<T>& shift) const {
    BATCHNORM_DETAIL_TRY(check_type<T>("fold"));
    std::vector<T> a(feature_count()), b(feature_count());
    BATCHNORM_DETAIL_TRY(fold_impl<T>(Span<T>(a), Span<T>(b)));
    scale = std::move(a);
    shift = std::move(b);
    return Result();
  }
  template <class T>
  Result fold_into_impl(Span<T> weights, int64_t per_feature, Span<const T> bias, Span<T> bias_out) const {
    const char* fn = "fold_into";
    BATCHNORM_DETAIL_TRY(check_type<T>(fn));
    const int64_t count = static_cast<int64_t>(bias_out.size());
    if (per_feature >= 0 && static_cast<int64_t>(weights.size()) != count * per_feature) {
      return detail::fail(BN_ERR_SHAPE, where(fn) + "weights has " + std::to_string(weights.size()) +
                                            " values but bias_out.size() * weights_per_feature is " +
                                            std::to_string(count * per_feature));
    }
    if (bias.data() && bias.size() != bias_out.size()) {
      return detail::fail(BN_ERR_SHAPE, where(fn) + "bias has " + std::to_string(bias.size()) +
                                            " values but bias_out has " + std::to_string(bias_out.size()));
    }
    return detail::check(bn_fold_into(handle_, weights.data(), per_feature, bias.data(), bias_out.data(), count));
  }

  std::size_t feature_count() const noexcept {
    const int64_t n = num_features();
    return n > 0 ? static_cast<std::size_t>(n) : 0;
  }

  bn_layer* handle_ = nullptr;
  bn_dtype dtype_ = BN_F32;
};

}  // inline namespace
}  // namespace batchnorm

#undef BATCHNORM_DETAIL_TRY

#endif  // BATCHNORM_BATCHNORM_HPP
