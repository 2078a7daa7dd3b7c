// Package batchnorm is a Go binding of libbatchnorm: batch normalization with the exact
// semantics of the Keras BatchNormalization layer, through cgo over the library's C ABI.
//
// A Layer is built from a Config (DefaultConfig gives the Keras defaults) and the shape of
// its inputs; tensors are dense row-major []float32 slices with their shape passed
// alongside. Failing calls return a *Error carrying the library's status and message.
// A Layer must be released with Close (a finalizer releases a forgotten one, late); it is
// not safe for concurrent use, but different layers may be used from different goroutines.
//
// Linking: cgo needs -lbatchnorm and the library's directory, e.g.
//
//	CGO_LDFLAGS="-L/path/to/build -lbatchnorm" LD_LIBRARY_PATH=/path/to/build go test ./...
//
// (an installed libbatchnorm in the linker's default path needs only -lbatchnorm).
package batchnorm

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#include "bng.h"

// The options of Config, flat (no pointers: Go memory passed to C must not hold Go pointers).
typedef struct {
	double momentum, epsilon;
	int32_t center, scale, trainable, fused, rules, moving_variance, single_value;
	int32_t cumulative_average, relu, nonfinite;
	int64_t virtual_batch_size;
} bng_options;

// Builds the config, creates the layer and destroys the config, all in one call.
static bn_status bng_create(const bng_options* o, const int32_t* axes, int32_t naxes,
                            const int64_t* shape, int32_t ndim, bn_layer** out, char* err) {
	bn_config* cfg = NULL;
	bn_status s = bn_config_create(&cfg);
	if (s == BN_OK) s = bn_config_set_axes(cfg, axes, naxes);
	if (s == BN_OK) s = bn_config_set_momentum(cfg, o->momentum);
	if (s == BN_OK) s = bn_config_set_epsilon(cfg, o->epsilon);
	if (s == BN_OK) s = bn_config_set_center(cfg, o->center);
	if (s == BN_OK) s = bn_config_set_scale(cfg, o->scale);
	if (s == BN_OK) s = bn_config_set_trainable(cfg, o->trainable);
	if (s == BN_OK) s = bn_config_set_dtype(cfg, BN_F32);
	if (s == BN_OK) s = bn_config_set_fused(cfg, o->fused);
	if (s == BN_OK) s = bn_config_set_keras_rules(cfg, o->rules);
	if (s == BN_OK) s = bn_config_set_moving_variance(cfg, o->moving_variance);
	if (s == BN_OK) s = bn_config_set_single_value_policy(cfg, o->single_value);
	if (s == BN_OK) s = bn_config_set_cumulative_average(cfg, o->cumulative_average);
	if (s == BN_OK) s = bn_config_set_relu(cfg, o->relu);
	if (s == BN_OK) s = bn_config_set_nonfinite_policy(cfg, o->nonfinite);
	if (s == BN_OK) s = bn_config_set_virtual_batch_size(cfg, o->virtual_batch_size);
	if (s == BN_OK) s = bn_create(cfg, shape, ndim, out);
	s = bng_keep(s, err); // before bn_config_destroy, which cannot fail but keeps it simple
	bn_config_destroy(cfg);
	return s;
}

static bn_status bng_set_training(bn_layer* l, int32_t on, char* err) {
	return bng_keep(bn_set_training(l, on), err);
}
static bn_status bng_set_trainable(bn_layer* l, int32_t on, char* err) {
	return bng_keep(bn_set_trainable(l, on), err);
}
static bn_status bng_set_momentum(bn_layer* l, double m, char* err) {
	return bng_keep(bn_set_momentum(l, m), err);
}
static bn_status bng_set_nonfinite_policy(bn_layer* l, int32_t p, char* err) {
	return bng_keep(bn_set_nonfinite_policy(l, p), err);
}
static bn_status bng_set_num_threads(bn_layer* l, int32_t n, char* err) {
	return bng_keep(bn_set_num_threads(l, n), err);
}
static bn_status bng_get_fused(bn_layer* l, int* out, char* err) {
	return bng_keep(bn_get_fused(l, out), err);
}
static bn_status bng_forward(bn_layer* l, const int64_t* shape, int32_t ndim, const void* x,
                             void* y, char* err) {
	return bng_keep(bn_forward(l, shape, ndim, x, y), err);
}
static bn_status bng_forward_residual(bn_layer* l, const int64_t* shape, int32_t ndim,
                                      const void* x, const void* r, void* y, char* err) {
	return bng_keep(bn_forward_residual(l, shape, ndim, x, r, y), err);
}
static bn_status bng_backward(bn_layer* l, const int64_t* shape, int32_t ndim, const void* x,
                              const void* dy, void* dx, void* dgamma, void* dbeta, char* err) {
	return bng_keep(bn_backward(l, shape, ndim, x, dy, dx, dgamma, dbeta), err);
}
static bn_status bng_get_param(bn_layer* l, bn_param which, void* out, int64_t n, char* err) {
	return bng_keep(bn_get_param(l, which, out, n), err);
}
static bn_status bng_set_param(bn_layer* l, bn_param which, const void* v, int64_t n, char* err) {
	return bng_keep(bn_set_param(l, which, v, n), err);
}
static bn_status bng_fold(bn_layer* l, void* scale, void* shift, int64_t n, char* err) {
	return bng_keep(bn_fold(l, scale, shift, n), err);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"unsafe"
)

// Status is a libbatchnorm status code (bn_status); the values are pinned by the ABI.
type Status int32

const (
	StatusOK              Status = 0
	StatusInvalidArgument Status = 1 // NULL pointer, value out of range, unknown constant
	StatusShape           Status = 2 // shape does not fit the layer or the call
	StatusState           Status = 3 // not valid now, e.g. backward with no matching forward
	StatusOutOfMemory     Status = 4
	StatusUnsupported     Status = 5
	StatusCorruptData     Status = 6
	StatusCallback        Status = 7
	StatusNonfinite       Status = 8 // non-finite batch statistics refused
	StatusInternal        Status = 9
)

// String is the status' C name, e.g. "BN_ERR_SHAPE".
func (s Status) String() string { return C.GoString(C.bn_status_string(C.bn_status(s))) }

// Error is a failed call: the library's status and its message, which names the function,
// the argument, the value and what was expected. Checks this package makes before calling
// the library (slice lengths) report StatusInvalidArgument with a message of their own.
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string { return "batchnorm: " + e.Status.String() + ": " + e.Message }

// ErrClosed is returned by the methods of a Layer after Close.
var ErrClosed = errors.New("batchnorm: the layer is closed")

// Version is the loaded library's version, e.g. "1.1.0".
func Version() string { return C.GoString(C.bn_version_string()) }

// Fused is Keras' `fused` argument.
type Fused int32

const (
	FusedAuto Fused = 0 // Keras fused=None: the fused path where Keras takes it
	FusedOn   Fused = 1 // fused=True
	FusedOff  Fused = 2 // fused=False
)

// Rules selects which Keras class the layer follows.
type Rules int32

const (
	KerasV1 Rules = 0 // tf.compat.v1.keras.layers.BatchNormalization (default)
	KerasV2 Rules = 1 // TF2 tf.keras.layers.BatchNormalization
)

// VarianceEstimator is the estimator fed to the moving variance.
type VarianceEstimator int32

const (
	VarianceAuto     VarianceEstimator = 0 // as Fused decides (Keras)
	VarianceBiased   VarianceEstimator = 1 // population variance (ONNX)
	VarianceUnbiased VarianceEstimator = 2 // Bessel-corrected m/(m-1) (PyTorch)
)

// SingleValuePolicy is what a training forward with one value per feature does.
type SingleValuePolicy int32

const (
	SingleValueCompute SingleValuePolicy = 0 // Keras: variance 0, y = beta
	SingleValueReject  SingleValuePolicy = 1 // PyTorch: StatusShape
)

// NonfinitePolicy is what a training forward does when its batch statistics are not finite
// (NaN or infinity in x); since 1.1.0. Inference forwards never refuse.
type NonfinitePolicy int32

const (
	// NonfiniteRefuse (the default): StatusNonfinite; nothing changed, no output written.
	NonfiniteRefuse NonfinitePolicy = 0
	// NonfinitePropagate is Keras (and 1.0.0): NaN/inf flow into y and the moving statistics.
	NonfinitePropagate NonfinitePolicy = 1
	// NonfiniteSkipUpdate writes y (with its NaN/inf) and keeps the forward for Backward; the
	// moving and renorm statistics keep their values.
	NonfiniteSkipUpdate NonfinitePolicy = 2
)

// Param names a parameter or statistic for Layer.Param and Layer.SetParam.
type Param int32

const (
	Gamma          Param = 0
	Beta           Param = 1
	MovingMean     Param = 2
	MovingVariance Param = 3
	RenormMean     Param = 4
	RenormStddev   Param = 5
	BatchMean      Param = 6 // read-only: the last training forward's batch mean
	BatchVariance  Param = 7 // read-only: its biased batch variance
	MovingStddev   Param = 8 // renorm only
)

// Config holds the layer's options. Start from DefaultConfig (the Keras defaults) and
// change fields; the library validates them in NewLayer.
type Config struct {
	Axes              []int   // Keras `axis`: the kept (feature) axes, negative from the end
	Momentum          float64 // moving = moving*Momentum + batch*(1 - Momentum)
	Epsilon           float64 // added inside the square root
	Center            bool    // Keras `center`: false means no beta
	Scale             bool    // Keras `scale`: false means no gamma
	Trainable         bool    // Keras `trainable`
	Fused             Fused
	Rules             Rules
	MovingVariance    VarianceEstimator
	SingleValue       SingleValuePolicy
	CumulativeAverage bool // PyTorch momentum=None
	ReLU              bool // fused ReLU epilogue
	VirtualBatchSize  int  // ghost batch normalization; 0 = off
	// What training forwards do with NaN or infinity; the zero value refuses them.
	Nonfinite NonfinitePolicy
}

// DefaultConfig is Keras' BatchNormalization(): axis -1, momentum 0.99, epsilon 1e-3,
// center and scale on, trainable, fused auto, V1 rules; beyond Keras, training batches with
// NaN or infinity are refused (NonfiniteRefuse).
func DefaultConfig() Config {
	return Config{Axes: []int{-1}, Momentum: 0.99, Epsilon: 1e-3, Center: true, Scale: true,
		Trainable: true}
}

// Layer is a batch-normalization layer over float32 tensors.
type Layer struct {
	h        *C.bn_layer
	features int
}

// errBuf receives the message of a failing helper call (see the C preamble).
type errBuf [C.bng_err_len]C.char

func (b *errBuf) ptr() *C.char { return &b[0] }

// check turns a helper's status and message into an error.
func check(s C.bn_status, b *errBuf) error {
	if s == C.BN_OK {
		return nil
	}
	return &Error{Status: Status(s), Message: C.GoString(b.ptr())}
}

// do runs one helper call on the live layer: fn gets the handle and the message buffer, and
// the layer stays reachable (no finalizer) while the library runs on it.
func (l *Layer) do(fn func(h *C.bn_layer, msg *C.char) C.bn_status) error {
	h, err := l.handle()
	if err != nil {
		return err
	}
	var msg errBuf
	s := fn(h, msg.ptr())
	runtime.KeepAlive(l)
	return check(s, &msg)
}

func bool32(b bool) C.int32_t {
	if b {
		return 1
	}
	return 0
}

// cShape converts a shape and counts its elements; count is -1 when a size is negative
// (the library refuses the shape before touching any buffer).
func cShape(shape []int) (cs []C.int64_t, count int, err error) {
	cs = make([]C.int64_t, len(shape))
	count = 1
	for i, d := range shape {
		cs[i] = C.int64_t(d)
		switch {
		case d < 0:
			count = -1
		case count >= 0 && d > 0 && count > math.MaxInt/d:
			return nil, 0, &Error{StatusInvalidArgument, fmt.Sprintf("shape %v: too many elements", shape)}
		case count >= 0:
			count *= d
		}
	}
	return cs, count, nil
}

func shapePtr(cs []C.int64_t) *C.int64_t {
	if len(cs) == 0 {
		return nil // the library reports ndim 0
	}
	return &cs[0]
}

// floats points at a slice's data; an empty slice gets a dummy element, since the library
// refuses NULL for a required buffer even when it holds no element.
func floats(s []float32) unsafe.Pointer {
	if len(s) == 0 {
		return unsafe.Pointer(new(float32))
	}
	return unsafe.Pointer(&s[0])
}

// optional is floats, with nil (not an empty non-nil slice) meaning "skip" (NULL).
func optional(s []float32) unsafe.Pointer {
	if s == nil {
		return nil
	}
	return floats(s)
}

func lengthError(method, name string, got int, shape []int, want int) error {
	return &Error{StatusInvalidArgument,
		fmt.Sprintf("%s: len(%s) = %d, but the shape %v holds %d elements", method, name, got, shape, want)}
}

// tensorArgs checks that every named slice holds the shape's element count.
func tensorArgs(method string, shape []int, names []string, bufs ...[]float32) ([]C.int64_t, error) {
	cs, count, err := cShape(shape)
	if err != nil || count < 0 {
		return cs, err
	}
	for i, b := range bufs {
		if b != nil && len(b) != count {
			return nil, lengthError(method, names[i], len(b), shape, count)
		}
	}
	return cs, nil
}

// NewLayer builds a layer for inputs of the given shape: its rank and the sizes along the
// configured axes are fixed from then on, the other sizes (batch, spatial) may change
// from call to call. Parameters start at gamma 1, beta 0, moving mean 0, moving variance 1.
// A new layer is in inference mode.
func NewLayer(cfg Config, shape []int) (*Layer, error) {
	axes := make([]C.int32_t, len(cfg.Axes)+1) // +1: a valid pointer even with no axis
	for i, a := range cfg.Axes {
		if a < math.MinInt32 || a > math.MaxInt32 {
			return nil, &Error{StatusInvalidArgument, fmt.Sprintf("NewLayer: axis %d out of range", a)}
		}
		axes[i] = C.int32_t(a)
	}
	cs, _, err := cShape(shape)
	if err != nil {
		return nil, err
	}
	opts := C.bng_options{
		momentum: C.double(cfg.Momentum), epsilon: C.double(cfg.Epsilon),
		center: bool32(cfg.Center), scale: bool32(cfg.Scale), trainable: bool32(cfg.Trainable),
		fused: C.int32_t(cfg.Fused), rules: C.int32_t(cfg.Rules),
		moving_variance: C.int32_t(cfg.MovingVariance), single_value: C.int32_t(cfg.SingleValue),
		cumulative_average: bool32(cfg.CumulativeAverage), relu: bool32(cfg.ReLU),
		nonfinite:          C.int32_t(cfg.Nonfinite),
		virtual_batch_size: C.int64_t(cfg.VirtualBatchSize),
	}
	var h *C.bn_layer
	var msg errBuf
	s := C.bng_create(&opts, &axes[0], C.int32_t(len(cfg.Axes)), shapePtr(cs), C.int32_t(len(cs)), &h, msg.ptr())
	if err := check(s, &msg); err != nil {
		return nil, err
	}
	l := &Layer{h: h, features: int(C.bn_num_features(h))}
	runtime.SetFinalizer(l, (*Layer).Close) // a safety net only: call Close
	return l, nil
}

// Close releases the layer. Further calls return ErrClosed; closing again does nothing.
func (l *Layer) Close() error {
	if l.h != nil {
		C.bn_destroy(l.h)
		l.h = nil
		runtime.SetFinalizer(l, nil)
	}
	return nil
}

// handle is the live C layer, or ErrClosed.
func (l *Layer) handle() (*C.bn_layer, error) {
	if l == nil || l.h == nil {
		return nil, ErrClosed
	}
	return l.h, nil
}

// NumFeatures is the product of the kept axes' sizes: the length of every parameter.
func (l *Layer) NumFeatures() int { return l.features }

// SetTraining is Keras' training=true/false for the following forwards.
func (l *Layer) SetTraining(training bool) error {
	return l.do(func(h *C.bn_layer, m *C.char) C.bn_status {
		return C.bng_set_training(h, bool32(training), m)
	})
}

// SetTrainable changes Keras' `trainable` on the live layer.
func (l *Layer) SetTrainable(trainable bool) error {
	return l.do(func(h *C.bn_layer, m *C.char) C.bn_status {
		return C.bng_set_trainable(h, bool32(trainable), m)
	})
}

// SetMomentum changes the momentum (in [0, 1]) of the live layer.
func (l *Layer) SetMomentum(momentum float64) error {
	return l.do(func(h *C.bn_layer, m *C.char) C.bn_status {
		return C.bng_set_momentum(h, C.double(momentum), m)
	})
}

// SetNonfinitePolicy changes what the live layer's training forwards do with NaN or infinity
// (as Config.Nonfinite).
func (l *Layer) SetNonfinitePolicy(p NonfinitePolicy) error {
	return l.do(func(h *C.bn_layer, m *C.char) C.bn_status {
		return C.bng_set_nonfinite_policy(h, C.int32_t(p), m)
	})
}

// SetNumThreads bounds the threads the layer's calls use: 0 = the default pool, 1 = the
// calling thread only, n > 1 = at most n. Results are bitwise the same for every n.
func (l *Layer) SetNumThreads(n int) error {
	h, err := l.handle()
	if err != nil {
		return err
	}
	if n < 0 || n > math.MaxInt32 {
		n = -1 // the library names the refused value
	}
	var msg errBuf
	s := C.bng_set_num_threads(h, C.int32_t(n), msg.ptr())
	runtime.KeepAlive(l)
	return check(s, &msg)
}

// Fused reports whether the layer follows Keras' fused-path semantics (Bessel-corrected
// moving variance, epsilon clamped to >= 1.001e-5).
func (l *Layer) Fused() (bool, error) {
	h, err := l.handle()
	if err != nil {
		return false, err
	}
	var out C.int
	var msg errBuf
	s := C.bng_get_fused(h, &out, msg.ptr())
	runtime.KeepAlive(l)
	return out != 0, check(s, &msg)
}

// Forward normalizes x into y (both of shape's element count; y may be x). In training
// mode it uses the batch statistics, updates the moving ones and keeps the forward for
// Backward; in inference mode it uses the moving statistics and changes nothing.
func (l *Layer) Forward(shape []int, x, y []float32) error {
	h, err := l.handle()
	if err != nil {
		return err
	}
	cs, err := tensorArgs("Forward", shape, []string{"x", "y"}, x, y)
	if err != nil {
		return err
	}
	var msg errBuf
	s := C.bng_forward(h, shapePtr(cs), C.int32_t(len(cs)), floats(x), floats(y), msg.ptr())
	runtime.KeepAlive(l)
	return check(s, &msg)
}

// ForwardResidual is Forward with a residual (of x's shape) added after the normalization
// and before the ReLU, if configured: y = act(bn(x) + residual). residual may be y.
func (l *Layer) ForwardResidual(shape []int, x, residual, y []float32) error {
	h, err := l.handle()
	if err != nil {
		return err
	}
	cs, err := tensorArgs("ForwardResidual", shape, []string{"x", "residual", "y"}, x, residual, y)
	if err != nil {
		return err
	}
	var msg errBuf
	s := C.bng_forward_residual(h, shapePtr(cs), C.int32_t(len(cs)), floats(x), floats(residual),
		floats(y), msg.ptr())
	runtime.KeepAlive(l)
	return check(s, &msg)
}

// Backward is the gradient of the layer's most recent Forward, which must have had the same
// shape and x. dx (may be dy) receives the input gradient, or is skipped when nil; dgamma and
// dbeta (NumFeatures each) are returned.
func (l *Layer) Backward(shape []int, x, dy, dx []float32) (dgamma, dbeta []float32, err error) {
	h, err := l.handle()
	if err != nil {
		return nil, nil, err
	}
	cs, err := tensorArgs("Backward", shape, []string{"x", "dy", "dx"}, x, dy, dx)
	if err != nil {
		return nil, nil, err
	}
	dgamma = make([]float32, l.features)
	dbeta = make([]float32, l.features)
	var msg errBuf
	s := C.bng_backward(h, shapePtr(cs), C.int32_t(len(cs)), floats(x), floats(dy), optional(dx),
		floats(dgamma), floats(dbeta), msg.ptr())
	runtime.KeepAlive(l)
	if err := check(s, &msg); err != nil {
		return nil, nil, err
	}
	return dgamma, dbeta, nil
}

// Param copies a parameter or statistic out (NumFeatures values, row-major over the kept
// axes). A layer without gamma reads ones, without beta zeros.
func (l *Layer) Param(which Param) ([]float32, error) {
	h, err := l.handle()
	if err != nil {
		return nil, err
	}
	out := make([]float32, l.features)
	var msg errBuf
	s := C.bng_get_param(h, C.bn_param(which), floats(out), C.int64_t(len(out)), msg.ptr())
	runtime.KeepAlive(l)
	if err := check(s, &msg); err != nil {
		return nil, err
	}
	return out, nil
}

// SetParam sets a parameter or statistic (NumFeatures values; statistics finite, variances
// >= 0; the batch statistics are read-only). It invalidates the forward kept for Backward.
func (l *Layer) SetParam(which Param, values []float32) error {
	// The library is told len(values) and refuses a count other than NumFeatures itself.
	return l.do(func(h *C.bn_layer, m *C.char) C.bn_status {
		return C.bng_set_param(h, C.bn_param(which), floats(values), C.int64_t(len(values)), m)
	})
}

// Fold is the inference transform as y = x*scale + shift per feature.
func (l *Layer) Fold() (scale, shift []float32, err error) {
	h, err := l.handle()
	if err != nil {
		return nil, nil, err
	}
	scale = make([]float32, l.features)
	shift = make([]float32, l.features)
	var msg errBuf
	s := C.bng_fold(h, floats(scale), floats(shift), C.int64_t(l.features), msg.ptr())
	runtime.KeepAlive(l)
	if err := check(s, &msg); err != nil {
		return nil, nil, err
	}
	return scale, shift, nil
}
