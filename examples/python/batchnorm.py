"""libbatchnorm from Python: a ctypes binding over the installed shared library.

Pure Python + ctypes + numpy; nothing to compile. The library is found, in order, at
$BATCHNORM_LIBRARY (a path), through ctypes.util.find_library("batchnorm"), then by the
dynamic loader's default search for "libbatchnorm.so.1".

    import numpy as np
    import batchnorm as bn

    with bn.Layer(bn.Config(axes=1, momentum=0.9), (2, 3, 2, 2)) as layer:   # NCHW
        layer.training = True                      # Keras training=True
        y = layer.forward(x)                       # batch statistics; moving statistics updated
        dx, dgamma, dbeta = layer.backward(x, dy)
        layer.training = False
        y = layer.forward(x)                       # moving statistics

State files: layer.save() gives the layer's state as bytes, bn.Layer.from_state(blob) and
layer.load(blob) take it back (bitwise); layer.save_file(path), layer.load_file(path) and
bn.Layer.from_file(path) do the same with files (docs/state_format.md).

Arrays go in and come out as numpy arrays of the layer's dtype (float32 by default).
Inputs of another dtype are refused (TypeError) rather than silently converted; inputs that
are not C-contiguous are copied; output buffers (`out=`, `dx=`) must be C-contiguous,
writeable and of the right dtype and shape (checked before the library is called).
Parameters and statistics are float64 for float64 layers and float32 otherwise.
Every failing library call raises BatchNormError(status, message) with the library's own
message (bn_last_error), which names the function, the argument and what was expected; a
failed call changes nothing.
"""

import ctypes
import ctypes.util
import os
import threading

import numpy as np

__all__ = ["BatchNormError", "Config", "Layer", "library", "version", "version_string",
           "status_string", "last_error"]

# --------------------------------------------------------------------------------------
# Constants of include/batchnorm/batchnorm.h (pinned values; every enumeration is int32_t).
BN_VERSION_MAJOR = 1

BN_OK = 0
BN_ERR_INVALID_ARGUMENT = 1
BN_ERR_SHAPE = 2
BN_ERR_STATE = 3
BN_ERR_OUT_OF_MEMORY = 4
BN_ERR_UNSUPPORTED = 5
BN_ERR_CORRUPT_DATA = 6
BN_ERR_CALLBACK = 7
BN_ERR_NONFINITE = 8
BN_ERR_INTERNAL = 9

BN_F32, BN_F64, BN_BF16, BN_F16 = 0, 1, 2, 3
BN_FUSED_AUTO, BN_FUSED_ON, BN_FUSED_OFF = 0, 1, 2
BN_KERAS_V1, BN_KERAS_V2 = 0, 1
BN_MOVING_VARIANCE_AUTO, BN_MOVING_VARIANCE_BIASED, BN_MOVING_VARIANCE_UNBIASED = 0, 1, 2
BN_SINGLE_VALUE_COMPUTE, BN_SINGLE_VALUE_REJECT = 0, 1
BN_NONFINITE_REFUSE, BN_NONFINITE_PROPAGATE, BN_NONFINITE_SKIP_UPDATE = 0, 1, 2

BN_PARAM_GAMMA = 0
BN_PARAM_BETA = 1
BN_PARAM_MOVING_MEAN = 2
BN_PARAM_MOVING_VARIANCE = 3
BN_PARAM_RENORM_MEAN = 4
BN_PARAM_RENORM_STDDEV = 5
BN_PARAM_BATCH_MEAN = 6
BN_PARAM_BATCH_VARIANCE = 7
BN_PARAM_MOVING_STDDEV = 8

BN_INITIALIZER_ZEROS = 0
BN_INITIALIZER_ONES = 1
BN_INITIALIZER_CONSTANT = 2
BN_INITIALIZER_RANDOM_NORMAL = 3
BN_INITIALIZER_RANDOM_UNIFORM = 4
BN_INITIALIZER_TRUNCATED_NORMAL = 5

BN_CONSTRAINT_NONE = 0
BN_CONSTRAINT_NON_NEG = 1
BN_CONSTRAINT_UNIT_NORM = 2
BN_CONSTRAINT_MAX_NORM = 3
BN_CONSTRAINT_MIN_MAX_NORM = 4

# Python spellings of the enumerations (Keras' names where Keras has one).
_FUSED = {"auto": BN_FUSED_AUTO, "on": BN_FUSED_ON, "off": BN_FUSED_OFF}
_FUSED_KERAS = {None: BN_FUSED_AUTO, True: BN_FUSED_ON, False: BN_FUSED_OFF}  # Keras fused=None/True/False
_RULES = {"v1": BN_KERAS_V1, "v2": BN_KERAS_V2}
_MOVING_VARIANCE = {"auto": BN_MOVING_VARIANCE_AUTO, "biased": BN_MOVING_VARIANCE_BIASED,
                    "unbiased": BN_MOVING_VARIANCE_UNBIASED}
_SINGLE_VALUE = {"compute": BN_SINGLE_VALUE_COMPUTE, "reject": BN_SINGLE_VALUE_REJECT}
_NONFINITE = {"refuse": BN_NONFINITE_REFUSE, "propagate": BN_NONFINITE_PROPAGATE,
              "skip_update": BN_NONFINITE_SKIP_UPDATE}
_PARAMS = {"gamma": BN_PARAM_GAMMA, "beta": BN_PARAM_BETA, "moving_mean": BN_PARAM_MOVING_MEAN,
           "moving_variance": BN_PARAM_MOVING_VARIANCE, "renorm_mean": BN_PARAM_RENORM_MEAN,
           "renorm_stddev": BN_PARAM_RENORM_STDDEV, "batch_mean": BN_PARAM_BATCH_MEAN,
           "batch_variance": BN_PARAM_BATCH_VARIANCE, "moving_stddev": BN_PARAM_MOVING_STDDEV}
_INITIALIZERS = {"zeros": BN_INITIALIZER_ZEROS, "ones": BN_INITIALIZER_ONES,
                 "constant": BN_INITIALIZER_CONSTANT, "random_normal": BN_INITIALIZER_RANDOM_NORMAL,
                 "random_uniform": BN_INITIALIZER_RANDOM_UNIFORM,
                 "truncated_normal": BN_INITIALIZER_TRUNCATED_NORMAL}
_CONSTRAINTS = {"none": BN_CONSTRAINT_NONE, "non_neg": BN_CONSTRAINT_NON_NEG,
                "unit_norm": BN_CONSTRAINT_UNIT_NORM, "max_norm": BN_CONSTRAINT_MAX_NORM,
                "min_max_norm": BN_CONSTRAINT_MIN_MAX_NORM}

# Activation dtypes: (bn_dtype, numpy storage dtype). numpy has no bfloat16, so bfloat16
# tensors are passed as their uint16 bit patterns.
_DTYPES = {np.dtype(np.float32): (BN_F32, np.dtype(np.float32)),
           np.dtype(np.float64): (BN_F64, np.dtype(np.float64)),
           np.dtype(np.float16): (BN_F16, np.dtype(np.float16)),
           "bfloat16": (BN_BF16, np.dtype(np.uint16))}

# --------------------------------------------------------------------------------------
# Loading and prototypes

c_int, c_int32, c_int64, c_double = ctypes.c_int, ctypes.c_int32, ctypes.c_int64, ctypes.c_double
c_void_p, c_char_p = ctypes.c_void_p, ctypes.c_char_p
_P_I64 = ctypes.POINTER(c_int64)
_P_I32 = ctypes.POINTER(c_int32)
_P_DBL = ctypes.POINTER(c_double)

# bn_status (*)(void* user_data, const int64_t* shape, int32_t ndim, double* scale,
#               double* bias, int64_t num_features)
ADJUSTMENT_FN = ctypes.CFUNCTYPE(c_int32, c_void_p, _P_I64, c_int32, _P_DBL, _P_DBL, c_int64)
# bn_status (*)(void* user_data, double* buffer, int64_t count)
ALLREDUCE_FN = ctypes.CFUNCTYPE(c_int32, c_void_p, _P_DBL, c_int64)

_S = c_int32  # bn_status
_PROTOTYPES = {
    "bn_version": (ctypes.c_uint32, []),
    "bn_version_string": (c_char_p, []),
    "bn_status_string": (c_char_p, [_S]),
    "bn_last_error": (c_char_p, []),
    "bn_config_create": (_S, [ctypes.POINTER(c_void_p)]),
    "bn_config_destroy": (None, [c_void_p]),
    "bn_config_set_axes": (_S, [c_void_p, _P_I32, c_int32]),
    "bn_config_set_momentum": (_S, [c_void_p, c_double]),
    "bn_config_set_epsilon": (_S, [c_void_p, c_double]),
    "bn_config_set_center": (_S, [c_void_p, c_int]),
    "bn_config_set_scale": (_S, [c_void_p, c_int]),
    "bn_config_set_dtype": (_S, [c_void_p, c_int32]),
    "bn_config_set_trainable": (_S, [c_void_p, c_int]),
    "bn_config_set_fused": (_S, [c_void_p, c_int32]),
    "bn_config_set_keras_rules": (_S, [c_void_p, c_int32]),
    "bn_config_set_renorm": (_S, [c_void_p, c_int, c_double, c_double, c_double, c_double]),
    "bn_config_set_virtual_batch_size": (_S, [c_void_p, c_int64]),
    "bn_config_set_adjustment": (_S, [c_void_p, ADJUSTMENT_FN, c_void_p]),
    "bn_config_set_moving_variance": (_S, [c_void_p, c_int32]),
    "bn_config_set_cumulative_average": (_S, [c_void_p, c_int]),
    "bn_config_set_single_value_policy": (_S, [c_void_p, c_int32]),
    "bn_config_set_nonfinite_policy": (_S, [c_void_p, c_int32]),
    "bn_config_set_relu": (_S, [c_void_p, c_int]),
    "bn_config_set_allreduce": (_S, [c_void_p, ALLREDUCE_FN, c_void_p]),
    "bn_config_set_initializer": (_S, [c_void_p, c_int32, c_int32, c_double, c_double, ctypes.c_uint64]),
    "bn_config_set_regularizer": (_S, [c_void_p, c_int32, c_double, c_double]),
    "bn_config_set_constraint": (_S, [c_void_p, c_int32, c_int32, c_double, c_double, c_double,
                                      _P_I32, c_int32]),
    "bn_create": (_S, [c_void_p, _P_I64, c_int32, ctypes.POINTER(c_void_p)]),
    "bn_destroy": (None, [c_void_p]),
    "bn_num_features": (c_int64, [c_void_p]),
    "bn_set_training": (_S, [c_void_p, c_int]),
    "bn_set_trainable": (_S, [c_void_p, c_int]),
    "bn_set_momentum": (_S, [c_void_p, c_double]),
    "bn_set_num_threads": (_S, [c_void_p, c_int32]),
    "bn_get_fused": (_S, [c_void_p, ctypes.POINTER(c_int)]),
    "bn_forward": (_S, [c_void_p, _P_I64, c_int32, c_void_p, c_void_p]),
    "bn_backward": (_S, [c_void_p, _P_I64, c_int32, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p]),
    "bn_forward_residual": (_S, [c_void_p, _P_I64, c_int32, c_void_p, c_void_p, c_void_p]),
    "bn_backward_residual": (_S, [c_void_p, _P_I64, c_int32, c_void_p, c_void_p, c_void_p, c_void_p,
                                  c_void_p, c_void_p, c_void_p]),
    "bn_get_param": (_S, [c_void_p, c_int32, c_void_p, c_int64]),
    "bn_set_param": (_S, [c_void_p, c_int32, c_void_p, c_int64]),
    "bn_fold": (_S, [c_void_p, c_void_p, c_void_p, c_int64]),
    "bn_fold_into": (_S, [c_void_p, c_void_p, c_int64, c_void_p, c_void_p, c_int64]),
    "bn_regularization_loss": (_S, [c_void_p, _P_DBL]),
    "bn_apply_constraints": (_S, [c_void_p]),
    # State files (1.1.0)
    "bn_save": (_S, [c_void_p, c_void_p, c_int64, _P_I64]),
    "bn_load": (_S, [c_void_p, c_void_p, c_int64]),
    "bn_create_from_state": (_S, [c_void_p, c_int64, ctypes.POINTER(c_void_p)]),
    "bn_save_file": (_S, [c_void_p, c_char_p]),
    "bn_load_file": (_S, [c_void_p, c_char_p]),
    "bn_create_from_file": (_S, [c_char_p, ctypes.POINTER(c_void_p)]),
    "bn_get_dtype": (_S, [c_void_p, _P_I32]),
    "bn_get_step_count": (_S, [c_void_p, _P_I64]),
    "bn_set_step_count": (_S, [c_void_p, c_int64]),
}

_lib = None
_lib_lock = threading.Lock()


def _candidates():
    """Where to look for the library, in order (see the module docstring)."""
    explicit = os.environ.get("BATCHNORM_LIBRARY")
    if explicit:
        return [explicit], True
    found = ctypes.util.find_library("batchnorm")
    return ([found] if found else []) + ["libbatchnorm.so.1"], False


def library():
    """The loaded libbatchnorm (a ctypes.CDLL with every prototype declared); loads it once."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        names, explicit = _candidates()
        errors = []
        lib = None
        for name in names:
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError as e:
                errors.append("%s: %s" % (name, e))
                if explicit:  # an explicit path that fails is an error, not a hint
                    break
        if lib is None:
            raise OSError("libbatchnorm not found (set BATCHNORM_LIBRARY to its path): " + "; ".join(errors))
        for fname, (restype, argtypes) in _PROTOTYPES.items():
            fn = getattr(lib, fname)
            fn.restype = restype
            fn.argtypes = argtypes
        major = lib.bn_version() // 10000
        if major != BN_VERSION_MAJOR:
            raise OSError("libbatchnorm %s is loaded but this binding needs major version %d"
                          % (lib.bn_version_string().decode(), BN_VERSION_MAJOR))
        _lib = lib
        return lib


def version():
    """MAJOR*10000 + MINOR*100 + PATCH of the loaded library."""
    return int(library().bn_version())


def version_string():
    return library().bn_version_string().decode()


def status_string(status):
    """The name of a status, e.g. "BN_ERR_SHAPE"."""
    return library().bn_status_string(status).decode()


def last_error():
    """The library's message for the last failed call on this thread ("" if none)."""
    return library().bn_last_error().decode("utf-8", "replace")


class BatchNormError(RuntimeError):
    """A library call failed: .status (an int, e.g. BN_ERR_SHAPE), .status_name, .message."""

    def __init__(self, status, message):
        self.status = int(status)
        self.status_name = status_string(self.status)
        self.message = message
        super().__init__("%s: %s" % (self.status_name, message))


def _check(status):
    # bn_last_error is thread-local and ctypes runs the call on this thread, so reading it
    # right after the call gives that call's message.
    if status != BN_OK:
        raise BatchNormError(status, last_error())


def _lookup(table, value, what):
    """A string name from `table`, or the C constant itself (an int that is one of its values)."""
    if isinstance(value, str) and value.lower() in table:
        return table[value.lower()]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) in table.values():
        return int(value)
    raise ValueError("%s=%r is not one of %s" % (what, value, ", ".join(sorted(table))))


def _shape_arg(shape):
    return (c_int64 * len(shape))(*shape), len(shape)


def _axes_arg(axes):
    axes = [int(axes)] if np.ndim(axes) == 0 else [int(a) for a in axes]
    return (c_int32 * len(axes))(*axes), len(axes)


def _ptr(a):
    return None if a is None else a.ctypes.data


# --------------------------------------------------------------------------------------
# Configuration


class Config:
    """The layer's options, with the Keras defaults (validated by the library at once).

    axes: int or sequence (Keras `axis`, negative counts from the end); momentum, epsilon,
    center, scale, trainable as in Keras; dtype: np.float32, np.float64, np.float16 or
    "bfloat16" (uint16 arrays holding the bits; parameters are float32); fused: "auto"/None, "on"/True, "off"/False;
    rules: "v1" (tf.compat.v1.keras, default) or "v2" (TF2 tf.keras); moving_variance:
    "auto", "biased" (ONNX) or "unbiased" (PyTorch); cumulative_average: PyTorch
    momentum=None; single_value: "compute" (Keras) or "reject" (PyTorch); nonfinite: what a
    training batch with NaN or infinity does, "refuse" (BN_ERR_NONFINITE, the default),
    "propagate" (Keras) or "skip_update" (output written, moving statistics kept); relu: fused ReLU
    epilogue. renorm (with renorm_clipping {rmax, rmin, dmax} and renorm_momentum),
    virtual_batch_size and adjustment as Keras; allreduce: cross-replica (synchronized)
    statistics, see bn_config_set_allreduce.

    adjustment(shape, scale, bias) fills the float64 arrays scale and bias in place;
    allreduce(buffer) sums the float64 array in place across replicas. A Python exception
    in either becomes BN_ERR_CALLBACK (the exception is chained to the BatchNormError).
    """

    def __init__(self, axes=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 dtype=np.float32, trainable=True, fused="auto", rules="v1",
                 moving_variance="auto", cumulative_average=False, single_value="compute",
                 nonfinite="refuse", relu=False, renorm=False, renorm_clipping=None, renorm_momentum=0.99,
                 virtual_batch_size=None, adjustment=None, allreduce=None):
        lib = library()
        key = "bfloat16" if isinstance(dtype, str) and dtype.lower() == "bfloat16" else np.dtype(dtype)
        if key not in _DTYPES:
            raise TypeError("dtype=%r: expected np.float32, np.float64, np.float16 or 'bfloat16'" % (dtype,))
        self._bn_dtype, self.dtype = _DTYPES[key]
        self.param_dtype = np.dtype(np.float64 if self._bn_dtype == BN_F64 else np.float32)
        self.trainable = bool(trainable)
        self._callbacks = []          # CFUNCTYPE objects the library may call: keep them alive
        self._callback_errors = []    # the Python exception of a failed callback
        handle = c_void_p()
        _check(lib.bn_config_create(ctypes.byref(handle)))
        self._handle = handle
        self._destroy = lib.bn_config_destroy
        try:
            h = handle
            _check(lib.bn_config_set_axes(h, *_axes_arg(axes)))
            _check(lib.bn_config_set_momentum(h, float(momentum)))
            _check(lib.bn_config_set_epsilon(h, float(epsilon)))
            _check(lib.bn_config_set_center(h, int(bool(center))))
            _check(lib.bn_config_set_scale(h, int(bool(scale))))
            _check(lib.bn_config_set_dtype(h, self._bn_dtype))
            _check(lib.bn_config_set_trainable(h, int(self.trainable)))
            _check(lib.bn_config_set_fused(h, _FUSED_KERAS[fused] if fused is None or isinstance(fused, bool)
                                            else _lookup(_FUSED, fused, "fused")))
            _check(lib.bn_config_set_keras_rules(h, _lookup(_RULES, rules, "rules")))
            _check(lib.bn_config_set_moving_variance(h, _lookup(_MOVING_VARIANCE, moving_variance,
                                                                "moving_variance")))
            _check(lib.bn_config_set_cumulative_average(h, int(bool(cumulative_average))))
            _check(lib.bn_config_set_single_value_policy(h, _lookup(_SINGLE_VALUE, single_value,
                                                                    "single_value")))
            _check(lib.bn_config_set_nonfinite_policy(h, _lookup(_NONFINITE, nonfinite, "nonfinite")))
            _check(lib.bn_config_set_relu(h, int(bool(relu))))
            clip = dict(renorm_clipping or {})
            unknown = set(clip) - {"rmax", "rmin", "dmax"}
            if unknown:
                raise ValueError("renorm_clipping: unknown keys %s (expected rmax, rmin, dmax)"
                                 % sorted(unknown))
            _check(lib.bn_config_set_renorm(h, int(bool(renorm)), float(clip.get("rmax", np.inf)),
                                            float(clip.get("rmin", 0.0)), float(clip.get("dmax", np.inf)),
                                            float(renorm_momentum)))
            _check(lib.bn_config_set_virtual_batch_size(h, int(virtual_batch_size or 0)))
            if adjustment is not None:
                fn = self._keep(_adjustment_trampoline(adjustment, self._callback_errors))
                _check(lib.bn_config_set_adjustment(h, fn, None))
            if allreduce is not None:
                fn = self._keep(_allreduce_trampoline(allreduce, self._callback_errors))
                _check(lib.bn_config_set_allreduce(h, fn, None))
        except BaseException:
            self.close()
            raise

    def _keep(self, cfunc):
        self._callbacks.append(cfunc)
        return cfunc

    def _h(self):
        if self._handle is None:
            raise ValueError("the Config is closed")
        return self._handle

    def set_initializer(self, which, kind, a=0.0, b=0.0, seed=0):
        """Keras *_initializer of "gamma", "beta", "moving_mean" or "moving_variance":
        kind "zeros", "ones", "constant" (a = value), "random_normal" / "truncated_normal"
        (a = mean, b = stddev), "random_uniform" (a = minval, b = maxval). Returns self."""
        _check(library().bn_config_set_initializer(self._h(), _lookup(_PARAMS, which, "which"),
                                                   _lookup(_INITIALIZERS, kind, "kind"), float(a), float(b),
                                                   int(seed)))
        return self

    def set_regularizer(self, which, l1=0.0, l2=0.0):
        """Keras L1L2 on "gamma" or "beta": penalty l1*sum|w| + l2*sum w^2. Returns self."""
        _check(library().bn_config_set_regularizer(self._h(), _lookup(_PARAMS, which, "which"),
                                                   float(l1), float(l2)))
        return self

    def set_constraint(self, which, kind, min_value=0.0, max_value=2.0, rate=1.0, axes=0):
        """Keras constraint on "gamma" or "beta": "non_neg", "unit_norm", "max_norm",
        "min_max_norm" or None; applied by Layer.apply_constraints(). Returns self."""
        arr, n = _axes_arg(axes)
        code = BN_CONSTRAINT_NONE if kind is None else _lookup(_CONSTRAINTS, kind, "kind")
        _check(library().bn_config_set_constraint(self._h(), _lookup(_PARAMS, which, "which"), code,
                                                  float(min_value), float(max_value), float(rate), arr, n))
        return self

    def close(self):
        """Releases the C config (layers made from it keep their own copy)."""
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None:
            self._destroy(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


def _adjustment_trampoline(fn, errors):
    def call(_user_data, shape, ndim, scale, bias, num_features):
        try:
            dims = tuple(shape[i] for i in range(ndim))
            n = int(num_features)
            s = np.ctypeslib.as_array(scale, shape=(n,)) if n else np.zeros(0)
            b = np.ctypeslib.as_array(bias, shape=(n,)) if n else np.zeros(0)
            fn(dims, s, b)
            return BN_OK
        except BaseException as e:  # must not unwind into C
            errors.append(e)
            return BN_ERR_CALLBACK
    return ADJUSTMENT_FN(call)


def _allreduce_trampoline(fn, errors):
    def call(_user_data, buffer, count):
        try:
            n = int(count)
            fn(np.ctypeslib.as_array(buffer, shape=(n,)) if n else np.zeros(0))
            return BN_OK
        except BaseException as e:
            errors.append(e)
            return BN_ERR_CALLBACK
    return ALLREDUCE_FN(call)


# --------------------------------------------------------------------------------------
# The layer


def _param_property(which, doc, writable=True):
    def get(self):
        return self.get_param(which)

    def put(self, values):
        self.set_param(which, values)
    return property(get, put if writable else None, doc=doc)


class Layer:
    """A batch-normalization layer built for inputs like `input_shape` (Keras builds on its
    first input): the rank and the sizes of the normalized axes are fixed, the other sizes
    may change from call to call. A new layer is in inference mode (training = False)."""

    def __init__(self, config=None, input_shape=None, num_threads=None):
        if input_shape is None:
            raise TypeError("Layer(config, input_shape): input_shape is required")
        config = config if config is not None else Config()
        lib = library()
        self._lib = lib
        self._handle = None
        self._destroy = lib.bn_destroy
        self.dtype = config.dtype
        self.param_dtype = config.param_dtype
        self._callbacks = list(config._callbacks)      # the layer copies the function pointers
        self._callback_errors = config._callback_errors
        shape = tuple(int(d) for d in input_shape)
        handle = c_void_p()
        self._call(lib.bn_create(config._h(), *_shape_arg(shape), ctypes.byref(handle)))
        self._handle = handle
        self.input_shape = shape
        self.num_features = int(lib.bn_num_features(handle))
        self._training = False
        self._trainable = config.trainable
        if num_threads is not None:
            self.num_threads = num_threads

    # -- plumbing ----------------------------------------------------------------------
    def _call(self, status):
        if status != BN_OK:
            message = last_error()
            errors = self._callback_errors
            cause = errors.pop() if (status == BN_ERR_CALLBACK and errors) else None
            self._callback_errors.clear()
            raise BatchNormError(status, message) from cause

    def _h(self):
        if self._handle is None:
            raise ValueError("the Layer is closed")
        return self._handle

    def _input(self, a, name, dtype=None):
        """A C-contiguous array of the layer's dtype: lists are converted, arrays of another
        dtype refused, non-contiguous arrays copied."""
        dtype = self.dtype if dtype is None else dtype
        if not isinstance(a, np.ndarray):
            a = np.asarray(a, dtype=dtype)
        elif a.dtype != dtype:
            raise TypeError("%s has dtype %s but the layer expects %s" % (name, a.dtype, dtype))
        return np.ascontiguousarray(a)

    def _output(self, out, shape, name, dtype=None):
        """A caller's output buffer, checked; or a new array when out is None."""
        dtype = self.dtype if dtype is None else dtype
        if out is None:
            return np.empty(shape, dtype=dtype)
        if not isinstance(out, np.ndarray):
            raise TypeError("%s must be a numpy array, not %s" % (name, type(out).__name__))
        if out.dtype != dtype:
            raise TypeError("%s has dtype %s but the layer expects %s" % (name, out.dtype, dtype))
        if out.shape != tuple(shape):
            raise ValueError("%s has shape %s but it must be %s" % (name, out.shape, tuple(shape)))
        if not out.flags.c_contiguous:
            raise ValueError("%s must be C-contiguous (the library writes a dense row-major buffer)" % name)
        if not out.flags.writeable:
            raise ValueError("%s is read-only" % name)
        return out

    @staticmethod
    def _same_shape(a, ref, name):
        if a.shape != ref.shape:
            raise ValueError("%s has shape %s but x has shape %s" % (name, a.shape, ref.shape))

    @staticmethod
    def _no_overlap(out, out_name, inputs, may_equal=()):
        """The library allows only the documented aliases (same buffer); refuse partial overlaps."""
        for name, a in inputs:
            if a is None or not np.may_share_memory(out, a):
                continue
            if name in may_equal and out.ctypes.data == a.ctypes.data and out.shape == a.shape:
                continue
            hint = " (only the very same buffer is allowed)" if name in may_equal else ""
            raise ValueError("%s overlaps %s%s" % (out_name, name, hint))

    def _params_out(self):
        return np.empty(self.num_features, dtype=self.param_dtype)

    # -- modes and options -------------------------------------------------------------
    @property
    def training(self):
        """Keras training=True/False for the following forwards (a new layer: False)."""
        return self._training

    @training.setter
    def training(self, value):
        self._call(self._lib.bn_set_training(self._h(), int(bool(value))))
        self._training = bool(value)

    @property
    def trainable(self):
        """Keras layer.trainable (False freezes gamma and beta; under "v2" rules also inference)."""
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._call(self._lib.bn_set_trainable(self._h(), int(bool(value))))
        self._trainable = bool(value)

    def set_momentum(self, momentum):
        """Scheduled momentum, in [0, 1]."""
        self._call(self._lib.bn_set_momentum(self._h(), float(momentum)))

    momentum = property(None, set_momentum, doc="write-only: the Keras momentum from now on")

    def set_num_threads(self, n):
        """0 = the caller's oneTBB arena, 1 = the calling thread only, n = at most n threads."""
        self._call(self._lib.bn_set_num_threads(self._h(), int(n)))

    num_threads = property(None, set_num_threads, doc="write-only: see set_num_threads")

    @property
    def fused(self):
        """True if the layer follows Keras' fused-path semantics (Bessel-corrected moving
        variance, epsilon clamped to >= 1.001e-5)."""
        out = c_int()
        self._call(self._lib.bn_get_fused(self._h(), ctypes.byref(out)))
        return bool(out.value)

    # -- forward and backward ----------------------------------------------------------
    def forward(self, x, out=None):
        """y = bn(x) (with the ReLU when configured). out may be x itself (in place)."""
        x = self._input(x, "x")
        y = self._output(out, x.shape, "out")
        self._no_overlap(y, "out", [("x", x)], may_equal=("x",))
        self._call(self._lib.bn_forward(self._h(), *_shape_arg(x.shape), _ptr(x), _ptr(y)))
        return y

    def forward_residual(self, x, residual, out=None):
        """y = act(bn(x) + residual) in one pass; out may be residual itself."""
        x = self._input(x, "x")
        r = self._input(residual, "residual")
        self._same_shape(r, x, "residual")
        y = self._output(out, x.shape, "out")
        self._no_overlap(y, "out", [("x", x), ("residual", r)], may_equal=("residual",))
        self._call(self._lib.bn_forward_residual(self._h(), *_shape_arg(x.shape), _ptr(x), _ptr(r),
                                                 _ptr(y)))
        return y

    def backward(self, x, dy, dx=None):
        """Gradient of the most recent forward (same x): returns (dx, dgamma, dbeta).
        dx may be dy itself (in place). dgamma/dbeta are overwritten, not accumulated."""
        x = self._input(x, "x")
        dy = self._input(dy, "dy")
        self._same_shape(dy, x, "dy")
        dx = self._output(dx, x.shape, "dx")
        self._no_overlap(dx, "dx", [("x", x), ("dy", dy)], may_equal=("dy",))
        dgamma, dbeta = self._params_out(), self._params_out()
        self._call(self._lib.bn_backward(self._h(), *_shape_arg(x.shape), _ptr(x), _ptr(dy), _ptr(dx),
                                         _ptr(dgamma), _ptr(dbeta)))
        return dx, dgamma, dbeta

    def backward_residual(self, x, y, dy, dx=None):
        """Backward of the most recent forward given its output y (the ReLU mask is y > 0):
        returns (dx, dresidual, dgamma, dbeta)."""
        x = self._input(x, "x")
        y = self._input(y, "y")
        dy = self._input(dy, "dy")
        self._same_shape(y, x, "y")
        self._same_shape(dy, x, "dy")
        dx = self._output(dx, x.shape, "dx")
        self._no_overlap(dx, "dx", [("x", x), ("y", y), ("dy", dy)], may_equal=("dy",))
        dres = np.empty(x.shape, dtype=self.dtype)
        dgamma, dbeta = self._params_out(), self._params_out()
        self._call(self._lib.bn_backward_residual(self._h(), *_shape_arg(x.shape), _ptr(x), _ptr(y), _ptr(dy),
                                                  _ptr(dx), _ptr(dres), _ptr(dgamma), _ptr(dbeta)))
        return dx, dres, dgamma, dbeta

    __call__ = forward

    # -- parameters and statistics -----------------------------------------------------
    def get_param(self, which):
        """A copy of a parameter or statistic ("gamma", ..., or a BN_PARAM_* value)."""
        out = self._params_out()
        self._call(self._lib.bn_get_param(self._h(), _lookup(_PARAMS, which, "which"), _ptr(out),
                                          out.size))
        return out

    def set_param(self, which, values):
        """Sets a parameter or statistic; the library checks the count and the values."""
        v = self._input(values, "values", self.param_dtype)
        if v.ndim != 1:
            raise ValueError("values must be one-dimensional (row-major over the kept axes), "
                             "not shape %s" % (v.shape,))
        self._call(self._lib.bn_set_param(self._h(), _lookup(_PARAMS, which, "which"), _ptr(v), v.size))

    gamma = _param_property("gamma", "gamma (ones for a layer without scale)")
    beta = _param_property("beta", "beta (zeros for a layer without center)")
    moving_mean = _param_property("moving_mean", "Keras moving_mean")
    moving_variance = _param_property("moving_variance", "Keras moving_variance")
    batch_mean = _param_property("batch_mean", "the last training forward's batch mean", writable=False)
    batch_variance = _param_property("batch_variance", "its biased batch variance", writable=False)

    # -- inference folding -------------------------------------------------------------
    def fold(self):
        """(scale, shift) with inference y = x*scale + shift per feature."""
        scale, shift = self._params_out(), self._params_out()
        self._call(self._lib.bn_fold(self._h(), _ptr(scale), _ptr(shift), scale.size))
        return scale, shift

    def fold_into(self, weights, bias=None):
        """Folds the inference transform into the preceding dense/convolution layer whose
        output channel o is feature o: weights are output-major (num_features, ...). Returns
        new (weights, bias); the arguments are not modified."""
        w = self._input(weights, "weights", self.param_dtype)
        if w.ndim < 1 or w.shape[0] != self.num_features:
            raise ValueError("weights has shape %s but its first dimension must be num_features=%d"
                             % (w.shape, self.num_features))
        w = w.copy()  # scaled in place by the library
        per_feature = w.size // self.num_features if self.num_features else 0
        b = None
        if bias is not None:
            b = self._input(bias, "bias", self.param_dtype)
            if b.shape != (self.num_features,):
                raise ValueError("bias has shape %s but it must be (%d,)" % (b.shape, self.num_features))
        b_out = self._params_out()
        self._call(self._lib.bn_fold_into(self._h(), _ptr(w), per_feature, _ptr(b), _ptr(b_out),
                                          self.num_features))
        return w, b_out

    # -- regularizers and constraints --------------------------------------------------
    def regularization_loss(self):
        out = c_double()
        self._call(self._lib.bn_regularization_loss(self._h(), ctypes.byref(out)))
        return out.value

    def apply_constraints(self):
        """Applies the configured constraints to gamma and beta (after an optimizer update)."""
        self._call(self._lib.bn_apply_constraints(self._h()))

    # -- state files (docs/state_format.md) --------------------------------------------
    def save(self):
        """The layer's state as bytes: configuration, parameters, statistics, modes and the
        step counter, in the library's versioned format (bn_save)."""
        size = c_int64()
        self._call(self._lib.bn_save(self._h(), None, 0, ctypes.byref(size)))
        buf = ctypes.create_string_buffer(size.value)
        self._call(self._lib.bn_save(self._h(), buf, size, ctypes.byref(size)))
        return buf.raw[:size.value]

    def load(self, blob):
        """Makes this layer the saved one (bn_load): the blob must be of a layer of the same
        structure; a damaged or foreign one raises BN_ERR_CORRUPT_DATA and changes nothing.
        The layer keeps its adjustment and allreduce callbacks and thread bound."""
        blob = bytes(blob)
        self._call(self._lib.bn_load(self._h(), blob, len(blob)))
        self._mirror(blob)

    def save_file(self, path):
        """save() into a file, replaced atomically (bn_save_file)."""
        self._call(self._lib.bn_save_file(self._h(), os.fsencode(path)))

    def load_file(self, path):
        """load() from a file (bn_load_file)."""
        self._call(self._lib.bn_load_file(self._h(), os.fsencode(path)))
        self._mirror(self.save())

    @classmethod
    def from_state(cls, blob):
        """A new layer from a save() blob, configuration included (bn_create_from_state)."""
        blob = bytes(blob)
        handle = c_void_p()
        _check(library().bn_create_from_state(blob, len(blob), ctypes.byref(handle)))
        return cls._adopt(handle, blob)

    @classmethod
    def from_file(cls, path):
        """A new layer from a state file (bn_create_from_file)."""
        handle = c_void_p()
        _check(library().bn_create_from_file(os.fsencode(path), ctypes.byref(handle)))
        layer = cls._adopt(handle, None)
        layer._mirror(layer.save())
        return layer

    @property
    def step_count(self):
        """Forwards that updated the moving statistics so far (PyTorch's num_batches_tracked);
        settable, e.g. when importing a momentum=None PyTorch layer."""
        out = c_int64()
        self._call(self._lib.bn_get_step_count(self._h(), ctypes.byref(out)))
        return out.value

    @step_count.setter
    def step_count(self, count):
        self._call(self._lib.bn_set_step_count(self._h(), int(count)))

    @classmethod
    def _adopt(cls, handle, blob):
        lib = library()
        self = cls.__new__(cls)
        self._lib, self._handle, self._destroy = lib, handle, lib.bn_destroy
        self._callbacks, self._callback_errors = [], []
        dtype = c_int32()
        self._call(lib.bn_get_dtype(handle, ctypes.byref(dtype)))
        self.dtype = next(v[1] for v in _DTYPES.values() if v[0] == dtype.value)
        self.param_dtype = np.dtype(np.float64 if dtype.value == BN_F64 else np.float32)
        self.num_features = int(lib.bn_num_features(handle))
        if blob is not None:
            self._mirror(blob)
        return self

    def _mirror(self, blob):
        # The Python-side copies of what the blob set: the training and trainable flags and
        # the input shape, at their documented offsets (the library has validated the blob).
        ndim = int.from_bytes(blob[36:40], "little")
        self.input_shape = tuple(int.from_bytes(blob[40 + 8 * d:48 + 8 * d], "little", signed=True)
                                 for d in range(ndim))
        self._trainable = blob[168] == 1
        self._training = blob[172] == 1

    # -- lifetime ----------------------------------------------------------------------
    def close(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None:
            self._destroy(handle)

    @property
    def closed(self):
        return self._handle is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def __repr__(self):
        if self._handle is None:
            return "<batchnorm.Layer closed>"
        return "<batchnorm.Layer input_shape=%s features=%d dtype=%s training=%s>" % (
            self.input_shape, self.num_features, self.dtype, self._training)
