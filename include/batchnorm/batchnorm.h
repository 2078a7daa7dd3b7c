/**
 * \file
 * libbatchnorm — batch normalization with the exact semantics of the Keras
 * BatchNormalization layer, behind a stable C ABI.
 *
 * This header is the whole ABI. It is plain C99, self-contained, and usable from
 * C++ and through any FFI (Rust extern "C", Go cgo, Python ctypes).
 *
 * Conventions that hold for every function:
 *  - Every function that can fail returns bn_status; BN_OK is 0.
 *  - On failure bn_last_error() names the function, the argument, the value and
 *    what was expected. The message is thread-local and stays until the next
 *    failing call on the same thread.
 *  - A failed call changes nothing (strong guarantee): no parameter, moving
 *    statistic or saved forward state is modified.
 *  - No C++ exception, abort or exit crosses this boundary.
 *  - Caller buffers are borrowed for the duration of the call only; the library
 *    never keeps a pointer to them.
 *  - Counts are in elements, not bytes. Tensors are dense and row-major (C order).
 *  - Every enumeration is an int32_t with pinned values that never change.
 *  - Every function and constant here appeared in version 1.0.0 unless its comment names a
 *    later version.
 *
 * Semantics: see README.md ("Semantics") and the SEMANTICS specification.
 */
#ifndef BATCHNORM_BATCHNORM_H
#define BATCHNORM_BATCHNORM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define BN_API /**< Marks the exported functions. */
#elif defined(__GNUC__) || defined(__clang__)
#define BN_API __attribute__((visibility("default"))) /**< Marks the exported functions. */
#else
#define BN_API /**< Marks the exported functions. */
#endif

/* ------------------------------------------------------------------------ */
/* Versions                                                                  */
/* ------------------------------------------------------------------------ */
#define BN_VERSION_MAJOR 1 /**< Major version of this header (the SONAME). */
#define BN_VERSION_MINOR 1 /**< Minor version of this header. */
#define BN_VERSION_PATCH 0 /**< Patch version of this header. */
/** This header's version as bn_version() reports the library's. */
#define BN_VERSION_NUMBER (BN_VERSION_MAJOR * 10000 + BN_VERSION_MINOR * 100 + BN_VERSION_PATCH)

/** MAJOR*10000 + MINOR*100 + PATCH of the loaded library (compare with BN_VERSION_NUMBER). */
BN_API uint32_t bn_version(void);
/** "MAJOR.MINOR.PATCH" of the loaded library, e.g. "1.1.0"; static string, never NULL. */
BN_API const char* bn_version_string(void);

/* ------------------------------------------------------------------------ */
/* Status codes                                                              */
/* ------------------------------------------------------------------------ */
/** Result of every function that can fail: BN_OK or one of BN_ERR_*. */
typedef int32_t bn_status;
#define BN_OK 0 /**< Success. */
#define BN_ERR_INVALID_ARGUMENT 1 /**< NULL pointer, value out of range, unknown constant */
#define BN_ERR_SHAPE 2            /**< shape does not fit the layer or the call */
#define BN_ERR_STATE 3            /**< not valid now, e.g. backward with no matching forward */
#define BN_ERR_OUT_OF_MEMORY 4 /**< an allocation failed */
#define BN_ERR_UNSUPPORTED 5      /**< a valid request this build cannot serve (yet) */
#define BN_ERR_CORRUPT_DATA 6     /**< loading a damaged or foreign state blob */
#define BN_ERR_CALLBACK 7         /**< a user callback reported failure */
#define BN_ERR_NONFINITE 8        /**< non-finite batch statistics refused */
#define BN_ERR_INTERNAL 9 /**< a bug in the library (please report it) */

/** Name of a status, e.g. "BN_ERR_SHAPE"; "BN_UNKNOWN_STATUS" for other values. Never NULL. */
BN_API const char* bn_status_string(bn_status status);
/** Message of the last failed call on this thread; "" if none. Never NULL. */
BN_API const char* bn_last_error(void);

/* ------------------------------------------------------------------------ */
/* Enumerations                                                              */
/* ------------------------------------------------------------------------ */
/** Element types. x, y, dy, dx (and residual, dresidual) are of the layer's dtype. Parameters,
 * statistics and parameter gradients are double for BN_F64 layers and float for every other
 * dtype, BN_BF16 and BN_F16 included (16-bit activations, 32-bit statistics, as Keras' mixed
 * precision). 16-bit tensors are arrays of uint16_t holding the raw bits: IEEE 754 binary16
 * for BN_F16, bfloat16 (the top 16 bits of an IEEE binary32) for BN_BF16. Such a layer widens
 * its inputs to float, computes in float (statistics accumulated in double) and rounds each
 * output once to the 16-bit type, to nearest even; out-of-range results become inf, NaN stays NaN. */
typedef int32_t bn_dtype;
#define BN_F32 0 /**< float tensors and parameters */
#define BN_F64 1 /**< double tensors and parameters */
#define BN_BF16 2 /**< bfloat16 tensors (uint16_t bits), float parameters */
#define BN_F16 3  /**< IEEE half tensors (uint16_t bits), float parameters */

/** Keras' `fused` argument: selects the fused path's observable semantics
 * (Bessel-corrected moving variance, epsilon clamped to >= 1.001e-5). */
typedef int32_t bn_fused;
#define BN_FUSED_AUTO 0 /**< Keras fused=None */
#define BN_FUSED_ON 1   /**< Keras fused=True */
#define BN_FUSED_OFF 2  /**< Keras fused=False */

/** Which Keras class the layer follows. */
typedef int32_t bn_keras_rules;
#define BN_KERAS_V1 0 /**< tf.compat.v1.keras.layers.BatchNormalization (default) */
#define BN_KERAS_V2 1 /**< TF2 tf.keras.layers.BatchNormalization */

/** Estimator that feeds the moving variance. */
typedef int32_t bn_moving_variance;
#define BN_MOVING_VARIANCE_AUTO 0     /**< as `fused` decides (Keras) */
#define BN_MOVING_VARIANCE_BIASED 1   /**< population variance (ONNX) */
#define BN_MOVING_VARIANCE_UNBIASED 2 /**< Bessel-corrected m/(m-1) (PyTorch) */

/** Training with one value per feature (m == 1). */
typedef int32_t bn_single_value_policy;
#define BN_SINGLE_VALUE_COMPUTE 0 /**< Keras: variance 0, y = beta */
#define BN_SINGLE_VALUE_REJECT 1  /**< PyTorch: BN_ERR_SHAPE, nothing changed */

/** What a training forward does when its batch statistics are not finite: NaN or infinity in
 * x (or a variance beyond the double range), found from the statistics themselves at no
 * measurable cost (since 1.1.0; 1.0.0 always propagated). With an allreduce callback the
 * global statistics decide, so every replica decides alike. Applies to forwards that compute
 * batch statistics (training, BN_MODE_UPDATE_MOVING), ghost batches and renorm included;
 * inference forwards never refuse. */
typedef int32_t bn_nonfinite_policy;
#define BN_NONFINITE_REFUSE 0      /**< BN_ERR_NONFINITE; nothing changed, no output written (default) */
#define BN_NONFINITE_PROPAGATE 1   /**< Keras: NaN/inf flow into y and the moving statistics */
#define BN_NONFINITE_SKIP_UPDATE 2 /**< y written (with its NaN/inf) and the forward saved for the
                                        backward; the moving and renorm statistics keep their values */

/** Mode flags (bn_set_mode), orthogonal switches beyond Keras' training/trainable presets. */
typedef int32_t bn_mode;
#define BN_MODE_BATCH_STATISTICS 1 /**< normalize with the batch statistics (else the moving ones) */
#define BN_MODE_UPDATE_MOVING 2    /**< a forward updates the moving (and renorm) statistics */
#define BN_MODE_PARAM_GRADIENTS 4  /**< bn_backward reports dgamma/dbeta (else zeros) */

/** Parameters and statistics, for bn_get_param / bn_set_param. */
typedef int32_t bn_param;
#define BN_PARAM_GAMMA 0 /**< gamma, the scale */
#define BN_PARAM_BETA 1 /**< beta, the offset */
#define BN_PARAM_MOVING_MEAN 2 /**< the moving mean */
#define BN_PARAM_MOVING_VARIANCE 3 /**< the moving variance */
#define BN_PARAM_RENORM_MEAN 4 /**< renorm only: Keras' renorm_mean variable */
#define BN_PARAM_RENORM_STDDEV 5 /**< renorm only: Keras' renorm_stddev variable */
#define BN_PARAM_BATCH_MEAN 6     /**< read-only: the last training forward's batch mean */
#define BN_PARAM_BATCH_VARIANCE 7 /**< read-only: its biased batch variance */
#define BN_PARAM_MOVING_STDDEV 8  /**< renorm only: Keras' moving_stddev variable */

/** Initializers (Keras *_initializer), for bn_config_set_initializer. The arguments a and b
 * are given per kind; Keras' defaults are noted. */
typedef int32_t bn_initializer;
#define BN_INITIALIZER_ZEROS 0            /**< Keras zeros */
#define BN_INITIALIZER_ONES 1             /**< Keras ones */
#define BN_INITIALIZER_CONSTANT 2         /**< a = value (Keras Constant(0)) */
#define BN_INITIALIZER_RANDOM_NORMAL 3    /**< a = mean, b = stddev > 0 (Keras 0, 0.05) */
#define BN_INITIALIZER_RANDOM_UNIFORM 4   /**< a = minval <= b = maxval (Keras -0.05, 0.05) */
#define BN_INITIALIZER_TRUNCATED_NORMAL 5 /**< a = mean, b = stddev > 0 (Keras 0, 0.05); draws
                                             beyond 2 stddev are redrawn */

/** Constraints (Keras *_constraint), for bn_config_set_constraint. */
typedef int32_t bn_constraint;
#define BN_CONSTRAINT_NONE 0         /**< no constraint (default) */
#define BN_CONSTRAINT_NON_NEG 1      /**< w * (w >= 0) (Keras 2 NonNeg) */
#define BN_CONSTRAINT_UNIT_NORM 2    /**< w / (e + norms) */
#define BN_CONSTRAINT_MAX_NORM 3     /**< w * (min(norms, max_value) / (e + norms)) */
#define BN_CONSTRAINT_MIN_MAX_NORM 4 /**< w * ((rate*clip(norms, min_value, max_value)
                                        + (1 - rate)*norms) / (e + norms)) */

/* ------------------------------------------------------------------------ */
/* Callbacks                                                                 */
/* ------------------------------------------------------------------------ */
/** Keras `adjustment`: called once per training-mode forward with the input shape;
 * scale and bias arrive filled with 1 and 0 (num_features each). A non-BN_OK return
 * fails the forward with BN_ERR_CALLBACK and changes nothing. Must not unwind. */
typedef bn_status (*bn_adjustment_fn)(void* user_data, const int64_t* shape, int32_t ndim,
                                      double* scale, double* bias, int64_t num_features);

/** Cross-replica statistics: sums the `count` doubles of `buffer` in place across all replicas
 * and leaves the same sums, bitwise, on every replica (as MPI_Allreduce with MPI_SUM does when
 * every rank sums in one order). A collective: every replica's layer calls it the same number
 * of times with the same counts, in the same order (bn_config_set_allreduce says when). Called
 * on the thread that called the layer. A non-BN_OK return fails that call with BN_ERR_CALLBACK
 * and changes nothing on that replica. Must not unwind. */
typedef bn_status (*bn_allreduce_fn)(void* user_data, double* buffer, int64_t count);

/* ------------------------------------------------------------------------ */
/* Configuration: an opaque builder                                          */
/* ------------------------------------------------------------------------ */
/** Opaque configuration builder (bn_config_create, bn_create). */
typedef struct bn_config bn_config;

/** Creates a config with the defaults of the Keras layer: axis -1, momentum 0.99,
 *  epsilon 1e-3, center 1, scale 1, BN_F32, trainable 1, fused auto, V1 rules,
 *  no renorm, no virtual batch, no adjustment; beyond Keras, training batches with NaN or
 *  infinity are refused (BN_NONFINITE_REFUSE). The caller owns *out
 *  (release with bn_config_destroy). */
BN_API bn_status bn_config_create(bn_config** out);
/** Releases a config; NULL does nothing. Layers created from it are unaffected. */
BN_API void bn_config_destroy(bn_config* cfg);

/** Axes to normalize over (Keras `axis`): `count` >= 1 distinct axes, negative
 *  values count from the end. Range and duplicates are checked against the rank at
 *  bn_create; duplicates among non-negative (or among negative) values are refused at once. */
BN_API bn_status bn_config_set_axes(bn_config* cfg, const int32_t* axes, int32_t count);
/** Keras momentum in [0, 1]: moving = moving*momentum + batch*(1 - momentum). */
BN_API bn_status bn_config_set_momentum(bn_config* cfg, double momentum);
/** Finite, >= 0. Added inside the square root: 1/sqrt(var + epsilon). */
BN_API bn_status bn_config_set_epsilon(bn_config* cfg, double epsilon);
/** Keras `center`: 0 means no beta (offset 0). */
BN_API bn_status bn_config_set_center(bn_config* cfg, int enabled);
/** Keras `scale`: 0 means no gamma (scale 1). */
BN_API bn_status bn_config_set_scale(bn_config* cfg, int enabled);
/** BN_F32, BN_F64, BN_BF16 or BN_F16 (see "Element types"). */
BN_API bn_status bn_config_set_dtype(bn_config* cfg, bn_dtype dtype);
/** Keras `trainable`: under V2 rules 0 means inference even in training mode; under
 *  V1 rules it only freezes gamma and beta. A frozen layer reports zero dgamma/dbeta. */
BN_API bn_status bn_config_set_trainable(bn_config* cfg, int trainable);
/** BN_FUSED_AUTO, BN_FUSED_ON or BN_FUSED_OFF (Keras None/True/False). */
BN_API bn_status bn_config_set_fused(bn_config* cfg, bn_fused fused);
/** BN_KERAS_V1 (default) or BN_KERAS_V2. */
BN_API bn_status bn_config_set_keras_rules(bn_config* cfg, bn_keras_rules rules);
/** Batch renormalization (Keras renorm, renorm_clipping, renorm_momentum). rmax/dmax = +inf
 *  and rmin = 0 is "unclipped". Checked as Keras 3 does: rmin finite >= 0, rmax >= rmin,
 *  dmax >= 0, renorm_momentum in [0, 1]. enabled 0 turns it off (the other arguments are
 *  then ignored). */
BN_API bn_status bn_config_set_renorm(bn_config* cfg, int enabled, double rmax, double rmin,
                                      double dmax, double renorm_momentum);
/** Ghost batch normalization; 0 = off. */
BN_API bn_status bn_config_set_virtual_batch_size(bn_config* cfg, int64_t size);
/** Keras `adjustment`; fn NULL = off. */
BN_API bn_status bn_config_set_adjustment(bn_config* cfg, bn_adjustment_fn fn, void* user_data);
/** Overrides the estimator fed to the moving variance (default: as `fused` decides). */
BN_API bn_status bn_config_set_moving_variance(bn_config* cfg, bn_moving_variance convention);
/** PyTorch momentum=None: moving statistics = mean over all batches seen so far. */
BN_API bn_status bn_config_set_cumulative_average(bn_config* cfg, int enabled);
/** What a training forward with one value per feature does (default: compute, as Keras). */
BN_API bn_status bn_config_set_single_value_policy(bn_config* cfg, bn_single_value_policy policy);
/** BN_NONFINITE_REFUSE (default), BN_NONFINITE_PROPAGATE or BN_NONFINITE_SKIP_UPDATE: what a
 *  training forward does with non-finite batch statistics (see bn_nonfinite_policy). Since 1.1.0. */
BN_API bn_status bn_config_set_nonfinite_policy(bn_config* cfg, bn_nonfinite_policy policy);
/** Fused epilogue: a ReLU after the normalization (and after the residual of
 *  bn_forward_residual): y = max(bn(x) [+ residual], 0). Default 0. */
BN_API bn_status bn_config_set_relu(bn_config* cfg, int enabled);
/** Synchronized batch normalization across replicas (Keras synchronized=True), working since
 *  1.1.0 (1.0.0 refused a callback with BN_ERR_UNSUPPORTED); fn NULL = off. With a callback,
 *  training-mode forwards compute their statistics, and bn_backward its reductions, over the
 *  global batch: the concatenation of every replica's batch. Replicas may hold different batch
 *  sizes, empty ones included (an empty replica still takes part and updates its moving
 *  statistics like the others). The collectives, F = bn_num_features (G*bn_num_features with
 *  ghost batches, G = batch/virtual_batch_size):
 *   - a forward that computes batch statistics (training, or BN_MODE_UPDATE_MOVING): one of
 *     2 + 2*F doubles, and a second one of at most F doubles only for features whose global mean
 *     lies more than 64 standard deviations from the previous synchronized forward's (the
 *     first step, or a jump of the data), which keeps the variance exact (no E[x^2]-E[x]^2);
 *   - bn_backward* of a forward that normalized with the batch statistics: one of 2*F doubles,
 *     whichever outputs are requested;
 *   - inference forwards and the other backwards: none.
 *  Every decision is taken from the sums, so all replicas take it alike, and the moving and
 *  renorm statistics of replicas that start alike (the same initializers and seeds, or the same
 *  bn_set_param values) stay bitwise identical. The single-value policy, Bessel's factor, renorm
 *  and the moving statistics use the global batch. dgamma and dbeta are the replica's share:
 *  summed over the replicas (as data-parallel training sums parameter gradients) they are the
 *  global batch's gradient, with a configured regularizer's gradient counted once (each replica
 *  adds 1/R of it, R the replica count of its latest forward collective, 1 before the first).
 *  fused AUTO then means OFF (Keras: synchronized forces the non-fused path); ON is honoured,
 *  with the global count in Bessel's factor (as PyTorch's SyncBatchNorm). Ghost batches follow
 *  Keras' SyncBatchNormalization: ghost j is the union of every replica's ghost j, which needs
 *  the same batch size on every replica (different sizes make counts differ: a broken contract).
 *  A call that fails before its collective (bad arguments, shape, a failing adjustment) does
 *  not take part in it: the caller's collective must cope (e.g. abort). user_data is borrowed:
 *  it must outlive every layer created from this config. */
BN_API bn_status bn_config_set_allreduce(bn_config* cfg, bn_allreduce_fn fn, void* user_data);

/* ------------------------------------------------------------------------ */
/* Initializers, regularizers and constraints (Keras)                        */
/* ------------------------------------------------------------------------ */
/* Settings for a parameter the layer does not have (GAMMA with scale 0, BETA with center 0)
 * are ignored at bn_create, as Keras ignores them. Setting a kind again replaces it. */
/** Initializer of `which` (BN_PARAM_GAMMA, _BETA, _MOVING_MEAN or _MOVING_VARIANCE), applied
 *  at bn_create; unset parameters keep gamma 1, beta 0, moving mean 0, moving variance 1.
 *  a and b: see `BN_INITIALIZER_*`; arguments a kind does not use are not read, nor is the
 *  seed of ZEROS, ONES and CONSTANT. For the moving variance only kinds that cannot draw a
 *  negative value are accepted: ZEROS, ONES, CONSTANT with a >= 0, RANDOM_UNIFORM with
 *  a >= 0, TRUNCATED_NORMAL with a >= 2*b (RANDOM_NORMAL is refused).
 *  Random values are bitwise the same on every platform: a SplitMix64 stream whose state
 *  starts at `seed` gives 64-bit words w, u = (w >> 11) * 2^-53; values are drawn in the
 *  order of bn_get_param (row-major over the kept axes), each taking the next words:
 *  RANDOM_UNIFORM one (a + (b - a)*u), RANDOM_NORMAL two (a + b*z with Box-Muller
 *  z = sqrt(-2 ln u1) cos(2 pi u2), u1 = ((w1 >> 11) + 1) * 2^-53, u2 from w2; ln and cos
 *  are the library's own), TRUNCATED_NORMAL two per attempt until |z| <= 2. Values are
 *  computed in double and rounded to float for non-BN_F64 layers. The values depend on
 *  (kind, a, b, seed) only, not on `which`: two parameters given the same initializer and
 *  seed start equal, as two Keras initializers with one seed do. A value that is not finite
 *  in the layer's storage type fails bn_create (BN_ERR_INVALID_ARGUMENT). */
BN_API bn_status bn_config_set_initializer(bn_config* cfg, bn_param which, bn_initializer kind, double a,
                                           double b, uint64_t seed);
/** Regularizer of `which` (BN_PARAM_GAMMA or BN_PARAM_BETA): Keras L1L2, a penalty
 *  l1*sum|w| + l2*sum w^2 (no 1/2). l1, l2 finite and >= 0; 0, 0 = none; Keras L1(l) is
 *  (l, 0), L2(l) is (0, l). Its gradient is added to dgamma/dbeta by bn_backward. */
BN_API bn_status bn_config_set_regularizer(bn_config* cfg, bn_param which, double l1, double l2);
/** Constraint of `which` (BN_PARAM_GAMMA or BN_PARAM_BETA), applied by bn_apply_constraints.
 *  e = 1e-7 (Keras backend.epsilon()); norms = sqrt(sum of w^2 over `axes`) of Keras'
 *  storage shape of the parameter: (C,) when the layer has one axis (so axis 0 or -1 is
 *  all features), else the input's rank with the kept sizes and 1 on the other dims (so an
 *  axis that is not kept has size 1 and its norms are |w|). The norm kinds (UNIT_NORM,
 *  MAX_NORM, MIN_MAX_NORM) need 1 to 8 distinct axes (Keras `axis`, default 0), checked
 *  against the storage rank at bn_create; MAX_NORM needs max_value >= 0 (Keras default 2);
 *  MIN_MAX_NORM 0 <= min_value <= max_value (Keras defaults 0, 1) and rate in [0, 1]
 *  (Keras default 1).
 *  Arguments a kind does not use are not read (axes may then be NULL). */
BN_API bn_status bn_config_set_constraint(bn_config* cfg, bn_param which, bn_constraint kind, double min_value,
                                          double max_value, double rate, const int32_t* axes,
                                          int32_t axis_count);

/* ------------------------------------------------------------------------ */
/* The layer                                                                 */
/* ------------------------------------------------------------------------ */
/** Opaque layer: parameters, statistics and the saved forward (bn_create). */
typedef struct bn_layer bn_layer;

/** Builds a layer for inputs like `input_shape` (1 <= ndim <= 8, sizes >= 0; the sizes
 *  along the configured axes must be >= 1). ndim and the kept sizes are fixed from then
 *  on; the other sizes (batch, spatial) may change from call to call. The config is
 *  copied. Parameters start at gamma 1, beta 0, moving mean 0, moving variance 1, or as
 *  the configured initializers give them.
 *  A new layer is in inference mode. The caller owns *out (release with bn_destroy). */
BN_API bn_status bn_create(const bn_config* cfg, const int64_t* input_shape, int32_t ndim,
                           bn_layer** out);
/** Releases a layer; NULL does nothing. */
BN_API void bn_destroy(bn_layer* layer);
/** Product of the kept axes' sizes; -1 for NULL. */
BN_API int64_t bn_num_features(const bn_layer* layer);

/** Keras training=True/False for the following forwards. */
BN_API bn_status bn_set_training(bn_layer* layer, int training);
/** Changes `trainable` on a live layer (Keras layer.trainable = ...). */
BN_API bn_status bn_set_trainable(bn_layer* layer, int trainable);
/** Changes the momentum on a live layer (scheduled momentum), in [0, 1]. */
BN_API bn_status bn_set_momentum(bn_layer* layer, double momentum);
/** Changes the renorm clipping of a live renorm layer (the paper relaxes rmax and dmax on a
 *  schedule); same checks as bn_config_set_renorm. BN_ERR_STATE without renorm. */
BN_API bn_status bn_set_renorm_clipping(bn_layer* layer, double rmax, double rmin, double dmax);
/** Changes renorm_momentum of a live renorm layer, in [0, 1]. */
BN_API bn_status bn_set_renorm_momentum(bn_layer* layer, double renorm_momentum);
/** Changes the non-finite policy of a live layer (as bn_config_set_nonfinite_policy). Since 1.1.0. */
BN_API bn_status bn_set_nonfinite_policy(bn_layer* layer, bn_nonfinite_policy policy);
/** Sets the mode flags (BN_MODE_*), overriding the Keras presets until the next
 *  bn_set_training or bn_set_trainable: those set BATCH_STATISTICS|UPDATE_MOVING in training
 *  (not under V2 rules when frozen) and PARAM_GRADIENTS when trainable. Renorm and adjustment
 *  apply only with BATCH_STATISTICS. UPDATE_MOVING alone normalizes with the moving statistics
 *  as they were and then updates them. */
BN_API bn_status bn_set_mode(bn_layer* layer, bn_mode flags);
/** The current mode flags. */
BN_API bn_status bn_get_mode(const bn_layer* layer, bn_mode* flags);
/** Bounds the threads this layer's calls use: 0 = the caller's oneTBB arena (default),
 *  1 = the calling thread only (never spawns a thread), n > 1 = at most n threads.
 *  Results are bitwise identical for every setting. */
BN_API bn_status bn_set_num_threads(bn_layer* layer, int32_t max_threads);
/** 1 if the layer follows Keras' fused-path semantics (decided at bn_create), else 0. */
BN_API bn_status bn_get_fused(const bn_layer* layer, int* fused_out);

/** Normalizes x into y (y may equal x). Training mode: batch statistics, moving
 *  statistics updated, the forward saved for bn_backward. Inference mode: moving
 *  statistics, no state changed. shape/ndim: ndim and kept sizes as at bn_create.
 *  A training batch holding NaN or infinity is refused (BN_ERR_NONFINITE, y not written)
 *  unless the non-finite policy says otherwise (bn_config_set_nonfinite_policy). */
BN_API bn_status bn_forward(bn_layer* layer, const int64_t* shape, int32_t ndim, const void* x,
                            void* y);
/** Gradient of the most recent bn_forward of this layer, which must have had the same
 *  shape and the same x (BN_ERR_STATE otherwise, or if a parameter was set since).
 *  dx may equal dy. dx, dgamma, dbeta may each be NULL to skip it; dgamma and dbeta
 *  (num_features each) are overwritten, not accumulated, and include the gradient of any
 *  configured regularizer (a frozen layer reports zeros). */
BN_API bn_status bn_backward(bn_layer* layer, const int64_t* shape, int32_t ndim, const void* x,
                             const void* dy, void* dx, void* dgamma, void* dbeta);

/** bn_forward with a residual added after the normalization and before the ReLU (if
 *  configured): y = act(bn(x) + residual), in one pass. residual has x's shape and dtype and
 *  may equal y. */
BN_API bn_status bn_forward_residual(bn_layer* layer, const int64_t* shape, int32_t ndim, const void* x,
                                     const void* residual, void* y);
/** Backward of the most recent forward (bn_forward or bn_forward_residual), given that
 *  forward's output y: with a ReLU, the gradient passes where y > 0 (no mask is stored).
 *  dresidual (may be NULL) receives the residual's gradient, dy masked by the ReLU; it must
 *  not be dx. Otherwise as bn_backward, which recomputes the mask from x when the forward
 *  had no residual. */
BN_API bn_status bn_backward_residual(bn_layer* layer, const int64_t* shape, int32_t ndim, const void* x,
                                      const void* y, const void* dy, void* dx, void* dresidual,
                                      void* dgamma, void* dbeta);

/* ------------------------------------------------------------------------ */
/* Parameters and statistics                                                 */
/* ------------------------------------------------------------------------ */
/** Copies `count` (== bn_num_features) values out: double for BN_F64 layers, else float.
 *  With several axes, values are row-major over the kept axes in input order. A layer
 *  without gamma (scale 0) reads ones, without beta (center 0) zeros. */
BN_API bn_status bn_get_param(const bn_layer* layer, bn_param which, void* out, int64_t count);
/** Sets `count` (== bn_num_features) values. Statistics must be finite, variances >= 0.
 *  The batch statistics are read-only. Invalidates the saved forward. */
BN_API bn_status bn_set_param(bn_layer* layer, bn_param which, const void* values,
                              int64_t count);

/* ------------------------------------------------------------------------ */
/* Inference folding (for inference engines)                                 */
/* ------------------------------------------------------------------------ */
/** The inference transform as y = x*scale + shift per feature: scale = gamma/sqrt(mv + eps),
 *  shift = beta - mm*scale (eps as the layer uses it: clamped on the fused path). `count`
 *  (== bn_num_features) values each, double for BN_F64 layers, else float. */
BN_API bn_status bn_fold(const bn_layer* layer, void* scale, void* shift, int64_t count);
/** Folds the inference transform into the preceding dense or convolution layer, whose
 *  output channel o is feature o: weights are output-major (`count` rows of
 *  `weights_per_feature` values; a dense layer's W[out][in], a convolution's W[O][I][kh][kw])
 *  and are scaled in place; bias_out[o] = bias[o]*scale[o] + shift[o], with bias NULL meaning
 *  no bias (0). bias_out may equal bias. Element type as for bn_fold. */
BN_API bn_status bn_fold_into(const bn_layer* layer, void* weights, int64_t weights_per_feature,
                              const void* bias, void* bias_out, int64_t count);

/* ------------------------------------------------------------------------ */
/* Regularizers and constraints (Keras *_regularizer, *_constraint)          */
/* ------------------------------------------------------------------------ */
/** The configured regularizers' penalty on the current gamma and beta, in double: the sum
 *  over regularized parameters of l1*sum|w| + l2*sum w^2 (0 with none). Counted for a frozen
 *  layer too, as Keras 2 does; a parameter the layer does not have adds nothing. */
BN_API bn_status bn_regularization_loss(const bn_layer* layer, double* loss_out);
/** Applies the configured constraints to gamma and beta, as Keras does after each optimizer
 *  update: call it after writing the updated parameters with bn_set_param. Computed in
 *  double, rounded to the parameter type. When a constraint is configured it invalidates the
 *  saved forward, like bn_set_param; with none, or on a frozen layer (trainable 0, whose
 *  gamma and beta Keras' optimizer does not touch), it does nothing. A result that is not finite
 *  (sum w^2 overflowing a double) fails with BN_ERR_NONFINITE and changes nothing. */
BN_API bn_status bn_apply_constraints(bn_layer* layer);

/* ------------------------------------------------------------------------ */
/* State files (since 1.1.0)                                                 */
/* ------------------------------------------------------------------------ */
/* A state blob holds everything a layer is, in the versioned little-endian format of
 * docs/state_format.md, with a CRC-32C over all of it: the configuration (as last set, so
 * bn_set_momentum, bn_set_renorm_*, bn_set_trainable and bn_set_nonfinite_policy count), the
 * input shape it was built for and its fused-path decision (with which callbacks took part
 * in it), every parameter and statistic (gamma, beta, moving mean and variance, the renorm
 * variables) bitwise in the parameter type, the training flag and mode flags, and the step
 * counter (bn_get_step_count). Not in it: the callbacks themselves (adjustment, allreduce),
 * the thread bound (bn_set_num_threads), the saved forward and the last batch statistics.
 * So a loaded layer has no saved forward (bn_backward needs a forward first) and BATCH_MEAN /
 * BATCH_VARIANCE are unreadable until a training forward, as for a new layer; from there
 * on it computes bitwise what the saved layer would have.
 * A blob that is truncated, has trailing bytes, fails its checksum, is of another format
 * version, is not a state at all, or passes its checksum but holds a value the library
 * would not accept (an unknown constant, a non-finite or negative variance, a configuration
 * bn_create refuses) is refused with BN_ERR_CORRUPT_DATA and a message saying which. */

/** Writes the layer's state into `buffer` (`capacity` bytes) and its size in bytes to
 *  *size_out. Size query: buffer NULL and capacity 0 writes only *size_out. A capacity below
 *  the size is BN_ERR_INVALID_ARGUMENT (the message names the size; nothing is written, not
 *  even *size_out). May run concurrently with inference-mode bn_forward and reads. Since 1.1.0. */
BN_API bn_status bn_save(const bn_layer* layer, void* buffer, int64_t capacity, int64_t* size_out);
/** Replaces the layer's configuration (non-finite policy included), parameters, statistics,
 *  training and mode flags and step counter with those of a state blob of `size` bytes. The
 *  layer keeps its adjustment and allreduce callbacks (a synchronized layer goes on
 *  synchronizing) and its thread bound; its saved forward and batch statistics are dropped.
 *  It takes the blob's fused decision whatever its own callbacks: a blob of a synchronized
 *  layer (fused AUTO resolved to non-fused) loads into a layer without an allreduce callback
 *  and stays non-fused, and a fused blob loaded by a synchronized layer stays fused (as
 *  fused ON with a callback). The blob
 *  must be of a layer of the same structure: BN_ERR_INVALID_ARGUMENT for another dtype,
 *  center, scale, renorm or ghost batches on/off (or a fused decision or ghost batches this
 *  layer's adjustment callback rules out); BN_ERR_SHAPE for another rank, other kept axes or
 *  kept sizes. BN_ERR_CORRUPT_DATA for a damaged or foreign blob. The whole blob is checked
 *  before anything changes: on failure the layer is as it was. Since 1.1.0. */
BN_API bn_status bn_load(bn_layer* layer, const void* data, int64_t size);
/** A new layer from a state blob (no configuration needed): as bn_create with the saved
 *  configuration and input shape, then bn_load. It has no callbacks (neither adjustment nor
 *  allreduce: it does not synchronize; the fused decision stays the one the saved layer took,
 *  its callbacks included) and no thread bound.
 *  The caller owns *out (release with bn_destroy); on failure *out is not written. Since 1.1.0. */
BN_API bn_status bn_create_from_state(const void* data, int64_t size, bn_layer** out);
/** bn_save into the file at `path`, replaced atomically: the blob goes to a new temporary
 *  file in the same directory ("<path>.tmp.<pid>.<n>"), which is fsync'ed and renamed over
 *  `path`, then the directory is fsync'ed. A failure (or a crash) at any point leaves `path`
 *  as it was, or complete; a failure removes the temporary file (a crash may leave it). The
 *  new file has the permissions of any new file (0666 minus the umask); a symbolic link at
 *  `path` is replaced, not followed. A file-system error is BN_ERR_INVALID_ARGUMENT with the
 *  operating system's reason in the message. POSIX only. Since 1.1.0. */
BN_API bn_status bn_save_file(const bn_layer* layer, const char* path);
/** bn_load from the file at `path`. A file that cannot be opened or read (missing,
 *  a directory, no permission) is BN_ERR_INVALID_ARGUMENT with the operating system's
 *  reason; a file that is not a valid state is BN_ERR_CORRUPT_DATA (a foreign file is refused
 *  from its first 32 bytes, without reading the rest). Since 1.1.0. */
BN_API bn_status bn_load_file(bn_layer* layer, const char* path);
/** bn_create_from_state from the file at `path`; errors as bn_load_file. Since 1.1.0. */
BN_API bn_status bn_create_from_file(const char* path, bn_layer** out);
/** The layer's dtype (BN_F32, BN_F64, BN_BF16 or BN_F16), e.g. of a layer made by
 *  bn_create_from_state. Since 1.1.0. */
BN_API bn_status bn_get_dtype(const bn_layer* layer, bn_dtype* dtype_out);
/** The step counter: how many forwards have updated the moving statistics (PyTorch's
 *  num_batches_tracked). The cumulative average (bn_config_set_cumulative_average) weights
 *  the next batch 1/(count + 1). Since 1.1.0. */
BN_API bn_status bn_get_step_count(const bn_layer* layer, int64_t* count_out);
/** Sets the step counter (>= 0), e.g. to PyTorch's num_batches_tracked when importing a
 *  momentum=None layer, so that the cumulative average continues where it was. Changes
 *  nothing else. Since 1.1.0. */
BN_API bn_status bn_set_step_count(bn_layer* layer, int64_t count);

#ifdef __cplusplus
}
#endif

#endif /* BATCHNORM_BATCHNORM_H */
