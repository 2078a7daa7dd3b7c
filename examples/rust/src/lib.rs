//! Safe Rust bindings to libbatchnorm: batch normalization with the exact semantics of the
//! Keras `BatchNormalization` layer, behind the library's C ABI.
//!
//! ```no_run
//! use batchnorm::{Config, Layer};
//!
//! # fn main() -> Result<(), batchnorm::Error> {
//! // Keras BatchNormalization(axis=1, momentum=0.9) on 2x3x2x2 NCHW float32 inputs.
//! let config = Config::new()?.axes(&[1])?.momentum(0.9)?;
//! let mut layer: Layer<f32> = Layer::new(&config, &[2, 3, 2, 2])?;
//! layer.set_training(true)?;
//! let x = vec![0.5f32; 24];
//! let mut y = vec![0.0f32; 24];
//! layer.forward(&x, &mut y)?;
//! let moving_mean = layer.moving_mean()?;
//! # let _ = moving_mean;
//! # Ok(())
//! # }
//! ```
//!
//! State files (since 1.1.0): [`Layer::save`] gives the layer's whole state as bytes,
//! [`Layer::load`] and [`Layer::from_state`] take it back, bitwise, and [`Layer::save_file`],
//! [`Layer::load_file`], [`Layer::from_file`] do the same with a file (replaced atomically).
//!
//! Errors carry the library's status and the message of `bn_last_error()`, read on the
//! calling thread right after the failing call. Buffer lengths are checked on the Rust side
//! before any call (the C library cannot see a slice's length); such errors are reported
//! with the status the library would give (`BN_ERR_SHAPE`) and a message that names the C
//! function.

mod state;
pub mod sys;

pub use state::state_dtype;

use std::ffi::CStr;
use std::fmt;
use std::marker::PhantomData;
use std::os::raw::{c_int, c_void};
use std::ptr::{self, NonNull};

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// A failed call: the library's status (`sys::BN_ERR_*`) and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub status: i32,
    pub message: String,
}

impl Error {
    /// The error of the call that just failed with `status` on this thread.
    fn last(status: i32) -> Error {
        // SAFETY: bn_last_error never returns NULL; the string is thread-local and valid
        // until the next failing call on this thread, and we copy it at once.
        let message = unsafe { CStr::from_ptr(sys::bn_last_error()) }.to_string_lossy().into_owned();
        Error { status, message }
    }

    /// An error found by the wrapper before calling the library.
    fn wrapper(status: i32, message: String) -> Error {
        Error { status, message }
    }

    /// The status' name, e.g. "BN_ERR_SHAPE".
    pub fn status_name(&self) -> &'static str {
        status_string(self.status)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status_name(), self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn check(status: sys::bn_status) -> Result<()> {
    if status == sys::BN_OK {
        Ok(())
    } else {
        Err(Error::last(status))
    }
}

/// Name of a status, e.g. "BN_ERR_SHAPE" ("BN_UNKNOWN_STATUS" for other values).
pub fn status_string(status: i32) -> &'static str {
    // SAFETY: a static, NUL-terminated ASCII string, never NULL.
    unsafe { CStr::from_ptr(sys::bn_status_string(status)) }.to_str().unwrap_or("BN_UNKNOWN_STATUS")
}

/// MAJOR*10000 + MINOR*100 + PATCH of the loaded library.
pub fn version() -> u32 {
    unsafe { sys::bn_version() }
}

/// "MAJOR.MINOR.PATCH" of the loaded library, e.g. "1.1.0".
pub fn version_string() -> String {
    unsafe { CStr::from_ptr(sys::bn_version_string()) }.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------------------

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The element types a layer computes in: `f32` (BN_F32, float parameters) and `f64`
/// (BN_F64, double parameters). Sealed: the library's dtype must match the Rust type.
pub trait Element: sealed::Sealed + Copy + Default + 'static {
    const DTYPE: i32;
}
impl Element for f32 {
    const DTYPE: i32 = sys::BN_F32;
}
impl Element for f64 {
    const DTYPE: i32 = sys::BN_F64;
}

/// The library's element types (`bn_dtype`). A [`Layer`] computes in `f32` or `f64`; a state
/// blob may also be of a 16-bit layer, which this crate does not compute with
/// ([`state_dtype`] tells which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// float32 tensors and parameters.
    F32 = sys::BN_F32 as isize,
    /// float64 tensors and parameters.
    F64 = sys::BN_F64 as isize,
    /// bfloat16 tensors, float32 parameters.
    BF16 = sys::BN_BF16 as isize,
    /// IEEE half tensors, float32 parameters.
    F16 = sys::BN_F16 as isize,
}

impl Dtype {
    /// The dtype of a `bn_dtype` value, None for a value the header does not define.
    pub fn from_raw(raw: i32) -> Option<Dtype> {
        match raw {
            sys::BN_F32 => Some(Dtype::F32),
            sys::BN_F64 => Some(Dtype::F64),
            sys::BN_BF16 => Some(Dtype::BF16),
            sys::BN_F16 => Some(Dtype::F16),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Enumerations
// ---------------------------------------------------------------------------------------

/// Keras' `fused` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fused {
    /// Keras fused=None (default).
    Auto = sys::BN_FUSED_AUTO as isize,
    On = sys::BN_FUSED_ON as isize,
    Off = sys::BN_FUSED_OFF as isize,
}

/// Which Keras class the layer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KerasRules {
    /// tf.compat.v1.keras.layers.BatchNormalization (default).
    V1 = sys::BN_KERAS_V1 as isize,
    /// TF2 tf.keras.layers.BatchNormalization.
    V2 = sys::BN_KERAS_V2 as isize,
}

/// Estimator that feeds the moving variance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MovingVariance {
    /// As `fused` decides (Keras, default).
    Auto = sys::BN_MOVING_VARIANCE_AUTO as isize,
    /// Population variance (ONNX).
    Biased = sys::BN_MOVING_VARIANCE_BIASED as isize,
    /// Bessel-corrected m/(m-1) (PyTorch).
    Unbiased = sys::BN_MOVING_VARIANCE_UNBIASED as isize,
}

/// Training with one value per feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SingleValuePolicy {
    /// Keras: variance 0, y = beta (default).
    Compute = sys::BN_SINGLE_VALUE_COMPUTE as isize,
    /// PyTorch: BN_ERR_SHAPE.
    Reject = sys::BN_SINGLE_VALUE_REJECT as isize,
}

/// What a training forward does when its batch statistics are not finite (NaN or infinity
/// in x), since 1.1.0. Inference forwards never refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NonfinitePolicy {
    /// `BN_ERR_NONFINITE`; nothing changed, no output written (the default).
    #[default]
    Refuse = sys::BN_NONFINITE_REFUSE as isize,
    /// Keras (and 1.0.0): NaN/inf flow into y and the moving statistics.
    Propagate = sys::BN_NONFINITE_PROPAGATE as isize,
    /// y written (with its NaN/inf) and the forward saved for the backward; the moving and
    /// renorm statistics keep their values.
    SkipUpdate = sys::BN_NONFINITE_SKIP_UPDATE as isize,
}

/// Parameters and statistics, for [`Layer::param`] and [`Layer::set_param`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    Gamma = sys::BN_PARAM_GAMMA as isize,
    Beta = sys::BN_PARAM_BETA as isize,
    MovingMean = sys::BN_PARAM_MOVING_MEAN as isize,
    MovingVariance = sys::BN_PARAM_MOVING_VARIANCE as isize,
    RenormMean = sys::BN_PARAM_RENORM_MEAN as isize,
    RenormStddev = sys::BN_PARAM_RENORM_STDDEV as isize,
    /// Read-only: the last training forward's batch mean.
    BatchMean = sys::BN_PARAM_BATCH_MEAN as isize,
    /// Read-only: its biased batch variance.
    BatchVariance = sys::BN_PARAM_BATCH_VARIANCE as isize,
    /// Renorm only: Keras' moving_stddev variable.
    MovingStddev = sys::BN_PARAM_MOVING_STDDEV as isize,
}

/// Keras initializers (see `bn_config_set_initializer` for the exact random streams).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Initializer {
    Zeros,
    Ones,
    Constant(f64),
    RandomNormal { mean: f64, stddev: f64, seed: u64 },
    RandomUniform { min: f64, max: f64, seed: u64 },
    TruncatedNormal { mean: f64, stddev: f64, seed: u64 },
}

impl Initializer {
    fn raw(self) -> (sys::bn_initializer, f64, f64, u64) {
        match self {
            Initializer::Zeros => (sys::BN_INITIALIZER_ZEROS, 0.0, 0.0, 0),
            Initializer::Ones => (sys::BN_INITIALIZER_ONES, 0.0, 0.0, 0),
            Initializer::Constant(v) => (sys::BN_INITIALIZER_CONSTANT, v, 0.0, 0),
            Initializer::RandomNormal { mean, stddev, seed } => {
                (sys::BN_INITIALIZER_RANDOM_NORMAL, mean, stddev, seed)
            }
            Initializer::RandomUniform { min, max, seed } => {
                (sys::BN_INITIALIZER_RANDOM_UNIFORM, min, max, seed)
            }
            Initializer::TruncatedNormal { mean, stddev, seed } => {
                (sys::BN_INITIALIZER_TRUNCATED_NORMAL, mean, stddev, seed)
            }
        }
    }
}

/// Keras constraints on gamma or beta, applied by [`Layer::apply_constraints`].
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    None,
    NonNeg,
    UnitNorm { axes: Vec<i32> },
    MaxNorm { max_value: f64, axes: Vec<i32> },
    MinMaxNorm { min_value: f64, max_value: f64, rate: f64, axes: Vec<i32> },
}

/// Mode flags (`bn_set_mode`), combined with `|`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Mode(pub i32);

impl Mode {
    pub const NONE: Mode = Mode(0);
    /// Normalize with the batch statistics (else the moving ones).
    pub const BATCH_STATISTICS: Mode = Mode(sys::BN_MODE_BATCH_STATISTICS);
    /// A forward updates the moving (and renorm) statistics.
    pub const UPDATE_MOVING: Mode = Mode(sys::BN_MODE_UPDATE_MOVING);
    /// bn_backward reports dgamma/dbeta (else zeros).
    pub const PARAM_GRADIENTS: Mode = Mode(sys::BN_MODE_PARAM_GRADIENTS);

    pub fn contains(self, other: Mode) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Mode {
    type Output = Mode;
    fn bitor(self, rhs: Mode) -> Mode {
        Mode(self.0 | rhs.0)
    }
}

// ---------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------

/// The layer configuration, a builder over `bn_config` with the Keras defaults (axis -1,
/// momentum 0.99, epsilon 1e-3, center and scale on, trainable, fused auto, V1 rules).
/// Each setter consumes and returns the config, failing at once on a bad value:
///
/// ```no_run
/// # fn main() -> Result<(), batchnorm::Error> {
/// let config = batchnorm::Config::new()?.axes(&[1])?.momentum(0.9)?.epsilon(1e-5)?;
/// # let _ = config; Ok(()) }
/// ```
///
/// The element type is not set here: it is the `T` of [`Layer::<T>::new`].
pub struct Config {
    raw: NonNull<sys::bn_config>,
}

// SAFETY: a bn_config is plain data owned by this value (the wrapper registers no callback
// with user data), so it may move to another thread. Not Sync: Layer::new writes its dtype.
unsafe impl Send for Config {}

fn flag(b: bool) -> c_int {
    b as c_int
}

impl Config {
    pub fn new() -> Result<Config> {
        let mut raw = ptr::null_mut();
        check(unsafe { sys::bn_config_create(&mut raw) })?;
        NonNull::new(raw)
            .map(|raw| Config { raw })
            .ok_or_else(|| Error::wrapper(sys::BN_ERR_INTERNAL, "bn_config_create: returned NULL".into()))
    }

    fn set(self, status: sys::bn_status) -> Result<Config> {
        check(status).map(|()| self)
    }

    /// Keras `axis`: the axes kept (one statistic per position along them); negative
    /// values count from the end.
    pub fn axes(self, axes: &[i32]) -> Result<Config> {
        let count = i32::try_from(axes.len()).map_err(|_| {
            Error::wrapper(sys::BN_ERR_INVALID_ARGUMENT, "bn_config_set_axes: too many axes".into())
        })?;
        let s = unsafe { sys::bn_config_set_axes(self.raw.as_ptr(), axes.as_ptr(), count) };
        self.set(s)
    }
    /// moving = moving*momentum + batch*(1 - momentum), in [0, 1].
    pub fn momentum(self, momentum: f64) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_momentum(self.raw.as_ptr(), momentum) };
        self.set(s)
    }
    pub fn epsilon(self, epsilon: f64) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_epsilon(self.raw.as_ptr(), epsilon) };
        self.set(s)
    }
    /// Keras `center`: false means no beta.
    pub fn center(self, enabled: bool) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_center(self.raw.as_ptr(), flag(enabled)) };
        self.set(s)
    }
    /// Keras `scale`: false means no gamma.
    pub fn scale(self, enabled: bool) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_scale(self.raw.as_ptr(), flag(enabled)) };
        self.set(s)
    }
    pub fn trainable(self, trainable: bool) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_trainable(self.raw.as_ptr(), flag(trainable)) };
        self.set(s)
    }
    pub fn fused(self, fused: Fused) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_fused(self.raw.as_ptr(), fused as i32) };
        self.set(s)
    }
    pub fn keras_rules(self, rules: KerasRules) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_keras_rules(self.raw.as_ptr(), rules as i32) };
        self.set(s)
    }
    /// Batch renormalization; `f64::INFINITY` for rmax/dmax and 0 for rmin is unclipped.
    pub fn renorm(self, rmax: f64, rmin: f64, dmax: f64, renorm_momentum: f64) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_renorm(self.raw.as_ptr(), 1, rmax, rmin, dmax, renorm_momentum) };
        self.set(s)
    }
    /// Ghost batch normalization; 0 = off.
    pub fn virtual_batch_size(self, size: i64) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_virtual_batch_size(self.raw.as_ptr(), size) };
        self.set(s)
    }
    pub fn moving_variance(self, convention: MovingVariance) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_moving_variance(self.raw.as_ptr(), convention as i32) };
        self.set(s)
    }
    /// PyTorch momentum=None: moving statistics = mean over all batches so far.
    pub fn cumulative_average(self, enabled: bool) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_cumulative_average(self.raw.as_ptr(), flag(enabled)) };
        self.set(s)
    }
    pub fn single_value_policy(self, policy: SingleValuePolicy) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_single_value_policy(self.raw.as_ptr(), policy as i32) };
        self.set(s)
    }
    /// What training forwards do with NaN or infinity in their batch (default: refuse).
    pub fn nonfinite_policy(self, policy: NonfinitePolicy) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_nonfinite_policy(self.raw.as_ptr(), policy as i32) };
        self.set(s)
    }
    /// A fused ReLU after the normalization.
    pub fn relu(self, enabled: bool) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_relu(self.raw.as_ptr(), flag(enabled)) };
        self.set(s)
    }
    pub fn initializer(self, which: Param, init: Initializer) -> Result<Config> {
        let (kind, a, b, seed) = init.raw();
        let s = unsafe { sys::bn_config_set_initializer(self.raw.as_ptr(), which as i32, kind, a, b, seed) };
        self.set(s)
    }
    /// Keras L1L2 on gamma or beta: l1*sum|w| + l2*sum w^2.
    pub fn regularizer(self, which: Param, l1: f64, l2: f64) -> Result<Config> {
        let s = unsafe { sys::bn_config_set_regularizer(self.raw.as_ptr(), which as i32, l1, l2) };
        self.set(s)
    }
    pub fn constraint(self, which: Param, constraint: &Constraint) -> Result<Config> {
        let (kind, lo, hi, rate, axes): (i32, f64, f64, f64, &[i32]) = match constraint {
            Constraint::None => (sys::BN_CONSTRAINT_NONE, 0.0, 0.0, 0.0, &[]),
            Constraint::NonNeg => (sys::BN_CONSTRAINT_NON_NEG, 0.0, 0.0, 0.0, &[]),
            Constraint::UnitNorm { axes } => (sys::BN_CONSTRAINT_UNIT_NORM, 0.0, 0.0, 0.0, axes),
            Constraint::MaxNorm { max_value, axes } => {
                (sys::BN_CONSTRAINT_MAX_NORM, 0.0, *max_value, 0.0, axes)
            }
            Constraint::MinMaxNorm { min_value, max_value, rate, axes } => {
                (sys::BN_CONSTRAINT_MIN_MAX_NORM, *min_value, *max_value, *rate, axes)
            }
        };
        let count = i32::try_from(axes.len()).map_err(|_| {
            Error::wrapper(sys::BN_ERR_INVALID_ARGUMENT, "bn_config_set_constraint: too many axes".into())
        })?;
        let axes_ptr = if axes.is_empty() { ptr::null() } else { axes.as_ptr() };
        let s = unsafe {
            sys::bn_config_set_constraint(
                self.raw.as_ptr(),
                which as i32,
                kind,
                lo,
                hi,
                rate,
                axes_ptr,
                count,
            )
        };
        self.set(s)
    }

    /// The raw handle, for calls the safe API does not cover. Stays owned by `self`.
    pub fn as_ptr(&self) -> *mut sys::bn_config {
        self.raw.as_ptr()
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        unsafe { sys::bn_config_destroy(self.raw.as_ptr()) }
    }
}

// ---------------------------------------------------------------------------------------
// Layer
// ---------------------------------------------------------------------------------------

/// Parameter gradients of [`Layer::backward`], `num_features` values each.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGradients<T> {
    pub dgamma: Vec<T>,
    pub dbeta: Vec<T>,
}

/// A batch-normalization layer computing in `T` (`f32` or `f64`).
///
/// Send, not Sync: the library lets a layer move between threads, but every call on one
/// layer except inference-mode forwards needs exclusive access (header, "Threads"), which
/// `&mut self` gives; even the read-only getters are not documented as safe to run
/// concurrently, so `&Layer` is not shared across threads.
pub struct Layer<T: Element = f32> {
    raw: NonNull<sys::bn_layer>,
    shape: Vec<i64>,
    features: usize,
    _element: PhantomData<T>,
}

// SAFETY: the layer has no thread affinity (header, "Threads"), and the wrapper registers no
// callback whose user data could be tied to a thread.
unsafe impl<T: Element> Send for Layer<T> {}

/// Number of elements of a tensor of `shape`, or an error naming `function`.
fn element_count(function: &str, shape: &[i64]) -> Result<usize> {
    let mut count: usize = 1;
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| {
            Error::wrapper(sys::BN_ERR_SHAPE, format!("{function}: shape {shape:?} has a negative size"))
        })?;
        count = count.checked_mul(d).ok_or_else(|| {
            Error::wrapper(sys::BN_ERR_SHAPE, format!("{function}: shape {shape:?} overflows usize"))
        })?;
    }
    Ok(count)
}

fn check_len(function: &str, name: &str, len: usize, expected: usize, what: &str) -> Result<()> {
    if len == expected {
        Ok(())
    } else {
        Err(Error::wrapper(
            sys::BN_ERR_SHAPE,
            format!("{function}: {name} has {len} elements, expected {expected} ({what}; checked by the Rust wrapper)"),
        ))
    }
}

fn ndim(function: &str, shape: &[i64]) -> Result<i32> {
    i32::try_from(shape.len())
        .map_err(|_| Error::wrapper(sys::BN_ERR_SHAPE, format!("{function}: too many dimensions")))
}

impl<T: Element> Layer<T> {
    /// Builds a layer for inputs shaped like `shape` (row-major). The sizes along the
    /// configured axes are fixed from then on; the others (batch, spatial) may change per
    /// call (see [`Layer::forward_shape`]). Sets the config's dtype to `T`'s (the config is
    /// otherwise unchanged; the layer copies it). A new layer is in inference mode.
    pub fn new(config: &Config, shape: &[i64]) -> Result<Layer<T>> {
        let nd = ndim("bn_create", shape)?;
        // SAFETY: Config is !Sync, so no other thread can use this bn_config meanwhile.
        check(unsafe { sys::bn_config_set_dtype(config.raw.as_ptr(), T::DTYPE) })?;
        let mut raw = ptr::null_mut();
        check(unsafe { sys::bn_create(config.raw.as_ptr(), shape.as_ptr(), nd, &mut raw) })?;
        Layer::adopt("bn_create", raw, shape.to_vec())
    }

    /// Takes ownership of a layer `function` just created (destroyed again on any error).
    fn adopt(function: &str, raw: *mut sys::bn_layer, shape: Vec<i64>) -> Result<Layer<T>> {
        let raw = NonNull::new(raw)
            .ok_or_else(|| Error::wrapper(sys::BN_ERR_INTERNAL, format!("{function}: returned NULL")))?;
        let features = unsafe { sys::bn_num_features(raw.as_ptr()) };
        let layer = Layer { raw, shape, features: features.max(0) as usize, _element: PhantomData };
        if features < 0 {
            return Err(Error::wrapper(sys::BN_ERR_INTERNAL, "bn_num_features: negative".into()));
        }
        Ok(layer)
    }

    /// The input shape the layer was built for: the one given to [`Layer::new`], or the saved
    /// layer's after [`Layer::from_state`] or [`Layer::load`]. Used by [`Layer::forward`] and
    /// [`Layer::backward`].
    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    /// Product of the kept axes' sizes: the length of every parameter.
    pub fn num_features(&self) -> usize {
        self.features
    }

    /// Keras training=True/False for the following forwards.
    pub fn set_training(&mut self, training: bool) -> Result<()> {
        check(unsafe { sys::bn_set_training(self.raw.as_ptr(), flag(training)) })
    }
    pub fn set_trainable(&mut self, trainable: bool) -> Result<()> {
        check(unsafe { sys::bn_set_trainable(self.raw.as_ptr(), flag(trainable)) })
    }
    pub fn set_momentum(&mut self, momentum: f64) -> Result<()> {
        check(unsafe { sys::bn_set_momentum(self.raw.as_ptr(), momentum) })
    }
    pub fn set_renorm_clipping(&mut self, rmax: f64, rmin: f64, dmax: f64) -> Result<()> {
        check(unsafe { sys::bn_set_renorm_clipping(self.raw.as_ptr(), rmax, rmin, dmax) })
    }
    pub fn set_renorm_momentum(&mut self, renorm_momentum: f64) -> Result<()> {
        check(unsafe { sys::bn_set_renorm_momentum(self.raw.as_ptr(), renorm_momentum) })
    }
    /// Changes the non-finite policy of the live layer (as [`Config::nonfinite_policy`]).
    pub fn set_nonfinite_policy(&mut self, policy: NonfinitePolicy) -> Result<()> {
        check(unsafe { sys::bn_set_nonfinite_policy(self.raw.as_ptr(), policy as i32) })
    }
    pub fn set_mode(&mut self, mode: Mode) -> Result<()> {
        check(unsafe { sys::bn_set_mode(self.raw.as_ptr(), mode.0) })
    }
    pub fn mode(&self) -> Result<Mode> {
        let mut flags = 0;
        check(unsafe { sys::bn_get_mode(self.raw.as_ptr(), &mut flags) })?;
        Ok(Mode(flags))
    }
    /// 0 = the caller's oneTBB arena, 1 = the calling thread only, n = at most n threads.
    pub fn set_num_threads(&mut self, max_threads: i32) -> Result<()> {
        check(unsafe { sys::bn_set_num_threads(self.raw.as_ptr(), max_threads) })
    }
    /// The layer's dtype as the library reports it (always `T`'s).
    pub fn dtype(&self) -> Result<Dtype> {
        let mut raw = 0;
        check(unsafe { sys::bn_get_dtype(self.raw.as_ptr(), &mut raw) })?;
        Dtype::from_raw(raw)
            .ok_or_else(|| Error::wrapper(sys::BN_ERR_INTERNAL, format!("bn_get_dtype: unknown dtype {raw}")))
    }
    /// Whether the layer follows Keras' fused-path semantics.
    pub fn fused(&self) -> Result<bool> {
        let mut fused: c_int = 0;
        check(unsafe { sys::bn_get_fused(self.raw.as_ptr(), &mut fused) })?;
        Ok(fused != 0)
    }

    /// Normalizes `x` into `y`, both shaped like [`Layer::shape`].
    pub fn forward(&mut self, x: &[T], y: &mut [T]) -> Result<()> {
        let shape = std::mem::take(&mut self.shape);
        let result = self.forward_shape(&shape, x, y);
        self.shape = shape;
        result
    }

    /// Normalizes `x` of `shape` into `y` (the kept sizes as at creation; batch and spatial
    /// sizes may differ). Training mode: batch statistics, moving statistics updated, the
    /// forward saved for [`Layer::backward`]. Inference mode: moving statistics.
    pub fn forward_shape(&mut self, shape: &[i64], x: &[T], y: &mut [T]) -> Result<()> {
        const F: &str = "bn_forward";
        let n = element_count(F, shape)?;
        check_len(F, "x", x.len(), n, "the product of the shape")?;
        check_len(F, "y", y.len(), n, "the product of the shape")?;
        let nd = ndim(F, shape)?;
        check(unsafe {
            sys::bn_forward(self.raw.as_ptr(), shape.as_ptr(), nd, x.as_ptr().cast(), y.as_mut_ptr().cast())
        })
    }

    /// [`Layer::forward_shape`] writing the result over its input.
    pub fn forward_in_place(&mut self, shape: &[i64], xy: &mut [T]) -> Result<()> {
        const F: &str = "bn_forward";
        let n = element_count(F, shape)?;
        check_len(F, "x", xy.len(), n, "the product of the shape")?;
        let nd = ndim(F, shape)?;
        let p: *mut c_void = xy.as_mut_ptr().cast();
        check(unsafe { sys::bn_forward(self.raw.as_ptr(), shape.as_ptr(), nd, p, p) })
    }

    /// Gradient of the most recent forward, which must have had this shape and this `x`:
    /// fills `dx` and returns dgamma and dbeta (overwritten, not accumulated).
    pub fn backward(&mut self, x: &[T], dy: &[T], dx: &mut [T]) -> Result<ParamGradients<T>> {
        let shape = std::mem::take(&mut self.shape);
        let result = self.backward_shape(&shape, x, dy, dx);
        self.shape = shape;
        result
    }

    /// [`Layer::backward`] for a forward of `shape`.
    pub fn backward_shape(
        &mut self,
        shape: &[i64],
        x: &[T],
        dy: &[T],
        dx: &mut [T],
    ) -> Result<ParamGradients<T>> {
        const F: &str = "bn_backward";
        let n = element_count(F, shape)?;
        check_len(F, "x", x.len(), n, "the product of the shape")?;
        check_len(F, "dy", dy.len(), n, "the product of the shape")?;
        check_len(F, "dx", dx.len(), n, "the product of the shape")?;
        let nd = ndim(F, shape)?;
        let mut grads = ParamGradients {
            dgamma: vec![T::default(); self.features],
            dbeta: vec![T::default(); self.features],
        };
        check(unsafe {
            sys::bn_backward(
                self.raw.as_ptr(),
                shape.as_ptr(),
                nd,
                x.as_ptr().cast(),
                dy.as_ptr().cast(),
                dx.as_mut_ptr().cast(),
                grads.dgamma.as_mut_ptr().cast(),
                grads.dbeta.as_mut_ptr().cast(),
            )
        })?;
        Ok(grads)
    }

    /// A copy of a parameter or statistic (`num_features` values, row-major over the kept
    /// axes).
    pub fn param(&self, which: Param) -> Result<Vec<T>> {
        let mut out = vec![T::default(); self.features];
        self.param_into(which, &mut out)?;
        Ok(out)
    }

    /// [`Layer::param`] into a caller's buffer of `num_features` values.
    pub fn param_into(&self, which: Param, out: &mut [T]) -> Result<()> {
        check_len("bn_get_param", "out", out.len(), self.features, "num_features")?;
        check(unsafe {
            sys::bn_get_param(self.raw.as_ptr(), which as i32, out.as_mut_ptr().cast(), out.len() as i64)
        })
    }

    /// Sets a parameter or statistic (`num_features` values). Invalidates the saved forward.
    pub fn set_param(&mut self, which: Param, values: &[T]) -> Result<()> {
        check_len("bn_set_param", "values", values.len(), self.features, "num_features")?;
        check(unsafe {
            sys::bn_set_param(self.raw.as_ptr(), which as i32, values.as_ptr().cast(), values.len() as i64)
        })
    }

    pub fn gamma(&self) -> Result<Vec<T>> {
        self.param(Param::Gamma)
    }
    pub fn beta(&self) -> Result<Vec<T>> {
        self.param(Param::Beta)
    }
    pub fn moving_mean(&self) -> Result<Vec<T>> {
        self.param(Param::MovingMean)
    }
    pub fn moving_variance(&self) -> Result<Vec<T>> {
        self.param(Param::MovingVariance)
    }
    pub fn set_gamma(&mut self, values: &[T]) -> Result<()> {
        self.set_param(Param::Gamma, values)
    }
    pub fn set_beta(&mut self, values: &[T]) -> Result<()> {
        self.set_param(Param::Beta, values)
    }

    /// The inference transform y = x*scale + shift per feature: (scale, shift).
    pub fn fold(&self) -> Result<(Vec<T>, Vec<T>)> {
        let mut scale = vec![T::default(); self.features];
        let mut shift = vec![T::default(); self.features];
        check(unsafe {
            sys::bn_fold(
                self.raw.as_ptr(),
                scale.as_mut_ptr().cast(),
                shift.as_mut_ptr().cast(),
                self.features as i64,
            )
        })?;
        Ok((scale, shift))
    }

    /// Folds the inference transform into the preceding dense/convolution layer whose output
    /// channel o is feature o: `weights` (output-major, `num_features` rows of equal length)
    /// are scaled in place; returns the folded bias (`bias` None means no bias).
    pub fn fold_into(&self, weights: &mut [T], bias: Option<&[T]>) -> Result<Vec<T>> {
        const F: &str = "bn_fold_into";
        if self.features == 0 || weights.len() % self.features != 0 {
            return Err(Error::wrapper(
                sys::BN_ERR_SHAPE,
                format!(
                    "{F}: weights has {} elements, not a multiple of num_features {} (checked by the Rust wrapper)",
                    weights.len(),
                    self.features
                ),
            ));
        }
        if let Some(b) = bias {
            check_len(F, "bias", b.len(), self.features, "num_features")?;
        }
        let per_feature = (weights.len() / self.features) as i64;
        let mut bias_out = vec![T::default(); self.features];
        let bias_ptr: *const c_void = bias.map_or(ptr::null(), |b| b.as_ptr().cast());
        check(unsafe {
            sys::bn_fold_into(
                self.raw.as_ptr(),
                weights.as_mut_ptr().cast(),
                per_feature,
                bias_ptr,
                bias_out.as_mut_ptr().cast(),
                self.features as i64,
            )
        })?;
        Ok(bias_out)
    }

    /// The configured regularizers' penalty on the current gamma and beta.
    pub fn regularization_loss(&self) -> Result<f64> {
        let mut loss = 0.0;
        check(unsafe { sys::bn_regularization_loss(self.raw.as_ptr(), &mut loss) })?;
        Ok(loss)
    }

    /// Applies the configured constraints to gamma and beta (after an optimizer update).
    pub fn apply_constraints(&mut self) -> Result<()> {
        check(unsafe { sys::bn_apply_constraints(self.raw.as_ptr()) })
    }

    /// The raw handle, for calls the safe API does not cover. Stays owned by `self`.
    pub fn as_ptr(&self) -> *mut sys::bn_layer {
        self.raw.as_ptr()
    }
}

impl<T: Element> Drop for Layer<T> {
    fn drop(&mut self) {
        unsafe { sys::bn_destroy(self.raw.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_count_rejects_negative_sizes() {
        let e = element_count("bn_forward", &[2, -1]).unwrap_err();
        assert_eq!(e.status, sys::BN_ERR_SHAPE);
        assert!(e.message.contains("bn_forward"));
        assert_eq!(element_count("f", &[2, 3, 4]).unwrap(), 24);
        assert_eq!(element_count("f", &[]).unwrap(), 1);
    }

    #[test]
    fn version_matches_the_header() {
        assert_eq!(version() / 10000, sys::BN_VERSION_MAJOR);
        assert_eq!(version_string().split('.').next().unwrap(), sys::BN_VERSION_MAJOR.to_string());
    }

    #[test]
    fn layer_is_send() {
        fn send<X: Send>() {}
        send::<Layer<f32>>();
        send::<Layer<f64>>();
        send::<Config>();
    }
}
