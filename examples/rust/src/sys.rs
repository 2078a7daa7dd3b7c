//! Raw declarations of the C ABI in `include/batchnorm/batchnorm.h` (the "-sys" layer).
//!
//! Everything here is `unsafe` to call and mirrors the header one to one: opaque handle
//! types, `int32_t` enumerations as `pub const`, status codes as `bn_status` (`i32`).
//! The safe API is in the crate root.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

/// Opaque `bn_config` (only ever behind a pointer).
#[repr(C)]
pub struct bn_config {
    _private: [u8; 0],
    // Not Send/Sync/Unpin by itself: the safe wrappers decide.
    _marker: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

/// Opaque `bn_layer` (only ever behind a pointer).
#[repr(C)]
pub struct bn_layer {
    _private: [u8; 0],
    _marker: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

pub type bn_status = i32;
pub type bn_dtype = i32;
pub type bn_fused = i32;
pub type bn_keras_rules = i32;
pub type bn_moving_variance = i32;
pub type bn_single_value_policy = i32;
pub type bn_mode = i32;
pub type bn_param = i32;
pub type bn_initializer = i32;
pub type bn_constraint = i32;
pub type bn_nonfinite_policy = i32;

pub const BN_VERSION_MAJOR: u32 = 1;
pub const BN_VERSION_MINOR: u32 = 1;
pub const BN_VERSION_PATCH: u32 = 0;
pub const BN_VERSION_NUMBER: u32 = BN_VERSION_MAJOR * 10000 + BN_VERSION_MINOR * 100 + BN_VERSION_PATCH;

pub const BN_OK: bn_status = 0;
pub const BN_ERR_INVALID_ARGUMENT: bn_status = 1;
pub const BN_ERR_SHAPE: bn_status = 2;
pub const BN_ERR_STATE: bn_status = 3;
pub const BN_ERR_OUT_OF_MEMORY: bn_status = 4;
pub const BN_ERR_UNSUPPORTED: bn_status = 5;
pub const BN_ERR_CORRUPT_DATA: bn_status = 6;
pub const BN_ERR_CALLBACK: bn_status = 7;
pub const BN_ERR_NONFINITE: bn_status = 8;
pub const BN_ERR_INTERNAL: bn_status = 9;

pub const BN_F32: bn_dtype = 0;
pub const BN_F64: bn_dtype = 1;
pub const BN_BF16: bn_dtype = 2;
pub const BN_F16: bn_dtype = 3;

pub const BN_FUSED_AUTO: bn_fused = 0;
pub const BN_FUSED_ON: bn_fused = 1;
pub const BN_FUSED_OFF: bn_fused = 2;

pub const BN_KERAS_V1: bn_keras_rules = 0;
pub const BN_KERAS_V2: bn_keras_rules = 1;

pub const BN_MOVING_VARIANCE_AUTO: bn_moving_variance = 0;
pub const BN_MOVING_VARIANCE_BIASED: bn_moving_variance = 1;
pub const BN_MOVING_VARIANCE_UNBIASED: bn_moving_variance = 2;

pub const BN_SINGLE_VALUE_COMPUTE: bn_single_value_policy = 0;
pub const BN_SINGLE_VALUE_REJECT: bn_single_value_policy = 1;

/// Since 1.1.0.
pub const BN_NONFINITE_REFUSE: bn_nonfinite_policy = 0;
pub const BN_NONFINITE_PROPAGATE: bn_nonfinite_policy = 1;
pub const BN_NONFINITE_SKIP_UPDATE: bn_nonfinite_policy = 2;

pub const BN_MODE_BATCH_STATISTICS: bn_mode = 1;
pub const BN_MODE_UPDATE_MOVING: bn_mode = 2;
pub const BN_MODE_PARAM_GRADIENTS: bn_mode = 4;

pub const BN_PARAM_GAMMA: bn_param = 0;
pub const BN_PARAM_BETA: bn_param = 1;
pub const BN_PARAM_MOVING_MEAN: bn_param = 2;
pub const BN_PARAM_MOVING_VARIANCE: bn_param = 3;
pub const BN_PARAM_RENORM_MEAN: bn_param = 4;
pub const BN_PARAM_RENORM_STDDEV: bn_param = 5;
pub const BN_PARAM_BATCH_MEAN: bn_param = 6;
pub const BN_PARAM_BATCH_VARIANCE: bn_param = 7;
pub const BN_PARAM_MOVING_STDDEV: bn_param = 8;

pub const BN_INITIALIZER_ZEROS: bn_initializer = 0;
pub const BN_INITIALIZER_ONES: bn_initializer = 1;
pub const BN_INITIALIZER_CONSTANT: bn_initializer = 2;
pub const BN_INITIALIZER_RANDOM_NORMAL: bn_initializer = 3;
pub const BN_INITIALIZER_RANDOM_UNIFORM: bn_initializer = 4;
pub const BN_INITIALIZER_TRUNCATED_NORMAL: bn_initializer = 5;

pub const BN_CONSTRAINT_NONE: bn_constraint = 0;
pub const BN_CONSTRAINT_NON_NEG: bn_constraint = 1;
pub const BN_CONSTRAINT_UNIT_NORM: bn_constraint = 2;
pub const BN_CONSTRAINT_MAX_NORM: bn_constraint = 3;
pub const BN_CONSTRAINT_MIN_MAX_NORM: bn_constraint = 4;

/// Keras `adjustment` callback. Must not unwind (catch panics before returning).
pub type bn_adjustment_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        shape: *const i64,
        ndim: i32,
        scale: *mut f64,
        bias: *mut f64,
        num_features: i64,
    ) -> bn_status,
>;
/// Cross-replica sum callback. Must not unwind.
pub type bn_allreduce_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, buffer: *mut f64, count: i64) -> bn_status>;

extern "C" {
    pub fn bn_version() -> u32;
    pub fn bn_version_string() -> *const c_char;
    pub fn bn_status_string(status: bn_status) -> *const c_char;
    pub fn bn_last_error() -> *const c_char;

    pub fn bn_config_create(out: *mut *mut bn_config) -> bn_status;
    pub fn bn_config_destroy(cfg: *mut bn_config);
    pub fn bn_config_set_axes(cfg: *mut bn_config, axes: *const i32, count: i32) -> bn_status;
    pub fn bn_config_set_momentum(cfg: *mut bn_config, momentum: f64) -> bn_status;
    pub fn bn_config_set_epsilon(cfg: *mut bn_config, epsilon: f64) -> bn_status;
    pub fn bn_config_set_center(cfg: *mut bn_config, enabled: c_int) -> bn_status;
    pub fn bn_config_set_scale(cfg: *mut bn_config, enabled: c_int) -> bn_status;
    pub fn bn_config_set_dtype(cfg: *mut bn_config, dtype: bn_dtype) -> bn_status;
    pub fn bn_config_set_trainable(cfg: *mut bn_config, trainable: c_int) -> bn_status;
    pub fn bn_config_set_fused(cfg: *mut bn_config, fused: bn_fused) -> bn_status;
    pub fn bn_config_set_keras_rules(cfg: *mut bn_config, rules: bn_keras_rules) -> bn_status;
    pub fn bn_config_set_renorm(
        cfg: *mut bn_config,
        enabled: c_int,
        rmax: f64,
        rmin: f64,
        dmax: f64,
        renorm_momentum: f64,
    ) -> bn_status;
    pub fn bn_config_set_virtual_batch_size(cfg: *mut bn_config, size: i64) -> bn_status;
    pub fn bn_config_set_adjustment(
        cfg: *mut bn_config,
        f: bn_adjustment_fn,
        user_data: *mut c_void,
    ) -> bn_status;
    pub fn bn_config_set_moving_variance(cfg: *mut bn_config, convention: bn_moving_variance) -> bn_status;
    pub fn bn_config_set_cumulative_average(cfg: *mut bn_config, enabled: c_int) -> bn_status;
    pub fn bn_config_set_single_value_policy(
        cfg: *mut bn_config,
        policy: bn_single_value_policy,
    ) -> bn_status;
    /// Since 1.1.0.
    pub fn bn_config_set_nonfinite_policy(cfg: *mut bn_config, policy: bn_nonfinite_policy) -> bn_status;
    pub fn bn_config_set_relu(cfg: *mut bn_config, enabled: c_int) -> bn_status;
    pub fn bn_config_set_allreduce(
        cfg: *mut bn_config,
        f: bn_allreduce_fn,
        user_data: *mut c_void,
    ) -> bn_status;
    pub fn bn_config_set_initializer(
        cfg: *mut bn_config,
        which: bn_param,
        kind: bn_initializer,
        a: f64,
        b: f64,
        seed: u64,
    ) -> bn_status;
    pub fn bn_config_set_regularizer(cfg: *mut bn_config, which: bn_param, l1: f64, l2: f64) -> bn_status;
    pub fn bn_config_set_constraint(
        cfg: *mut bn_config,
        which: bn_param,
        kind: bn_constraint,
        min_value: f64,
        max_value: f64,
        rate: f64,
        axes: *const i32,
        axis_count: i32,
    ) -> bn_status;

    pub fn bn_create(
        cfg: *const bn_config,
        input_shape: *const i64,
        ndim: i32,
        out: *mut *mut bn_layer,
    ) -> bn_status;
    pub fn bn_destroy(layer: *mut bn_layer);
    pub fn bn_num_features(layer: *const bn_layer) -> i64;
    pub fn bn_set_training(layer: *mut bn_layer, training: c_int) -> bn_status;
    pub fn bn_set_trainable(layer: *mut bn_layer, trainable: c_int) -> bn_status;
    pub fn bn_set_momentum(layer: *mut bn_layer, momentum: f64) -> bn_status;
    pub fn bn_set_renorm_clipping(layer: *mut bn_layer, rmax: f64, rmin: f64, dmax: f64) -> bn_status;
    pub fn bn_set_renorm_momentum(layer: *mut bn_layer, renorm_momentum: f64) -> bn_status;
    /// Since 1.1.0.
    pub fn bn_set_nonfinite_policy(layer: *mut bn_layer, policy: bn_nonfinite_policy) -> bn_status;
    pub fn bn_set_mode(layer: *mut bn_layer, flags: bn_mode) -> bn_status;
    pub fn bn_get_mode(layer: *const bn_layer, flags: *mut bn_mode) -> bn_status;
    pub fn bn_set_num_threads(layer: *mut bn_layer, max_threads: i32) -> bn_status;
    pub fn bn_get_fused(layer: *const bn_layer, fused_out: *mut c_int) -> bn_status;

    pub fn bn_forward(
        layer: *mut bn_layer,
        shape: *const i64,
        ndim: i32,
        x: *const c_void,
        y: *mut c_void,
    ) -> bn_status;
    pub fn bn_backward(
        layer: *mut bn_layer,
        shape: *const i64,
        ndim: i32,
        x: *const c_void,
        dy: *const c_void,
        dx: *mut c_void,
        dgamma: *mut c_void,
        dbeta: *mut c_void,
    ) -> bn_status;
    pub fn bn_forward_residual(
        layer: *mut bn_layer,
        shape: *const i64,
        ndim: i32,
        x: *const c_void,
        residual: *const c_void,
        y: *mut c_void,
    ) -> bn_status;
    pub fn bn_backward_residual(
        layer: *mut bn_layer,
        shape: *const i64,
        ndim: i32,
        x: *const c_void,
        y: *const c_void,
        dy: *const c_void,
        dx: *mut c_void,
        dresidual: *mut c_void,
        dgamma: *mut c_void,
        dbeta: *mut c_void,
    ) -> bn_status;

    pub fn bn_get_param(layer: *const bn_layer, which: bn_param, out: *mut c_void, count: i64) -> bn_status;
    pub fn bn_set_param(
        layer: *mut bn_layer,
        which: bn_param,
        values: *const c_void,
        count: i64,
    ) -> bn_status;

    pub fn bn_fold(layer: *const bn_layer, scale: *mut c_void, shift: *mut c_void, count: i64) -> bn_status;
    pub fn bn_fold_into(
        layer: *const bn_layer,
        weights: *mut c_void,
        weights_per_feature: i64,
        bias: *const c_void,
        bias_out: *mut c_void,
        count: i64,
    ) -> bn_status;

    pub fn bn_regularization_loss(layer: *const bn_layer, loss_out: *mut f64) -> bn_status;
    pub fn bn_apply_constraints(layer: *mut bn_layer) -> bn_status;

    // State files (since 1.1.0; docs/state_format.md).
    pub fn bn_save(
        layer: *const bn_layer,
        buffer: *mut c_void,
        capacity: i64,
        size_out: *mut i64,
    ) -> bn_status;
    pub fn bn_load(layer: *mut bn_layer, data: *const c_void, size: i64) -> bn_status;
    pub fn bn_create_from_state(data: *const c_void, size: i64, out: *mut *mut bn_layer) -> bn_status;
    pub fn bn_save_file(layer: *const bn_layer, path: *const c_char) -> bn_status;
    pub fn bn_load_file(layer: *mut bn_layer, path: *const c_char) -> bn_status;
    pub fn bn_create_from_file(path: *const c_char, out: *mut *mut bn_layer) -> bn_status;
    pub fn bn_get_dtype(layer: *const bn_layer, dtype_out: *mut bn_dtype) -> bn_status;
    pub fn bn_get_step_count(layer: *const bn_layer, count_out: *mut i64) -> bn_status;
    pub fn bn_set_step_count(layer: *mut bn_layer, count: i64) -> bn_status;
}
