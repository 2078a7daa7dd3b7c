//! Error paths: status and message from bn_last_error, and nothing changed on failure.
use batchnorm::{sys, Config, Layer, Param};

fn small_layer() -> Layer<f32> {
    let config = Config::new().unwrap().axes(&[1]).unwrap();
    Layer::new(&config, &[2, 3, 2, 2]).unwrap()
}

#[test]
fn bad_shape_is_a_shape_error_from_bn_forward() {
    let mut layer = small_layer();
    layer.set_training(true).unwrap();
    // 4 channels for a 3-channel layer: the buffers fit the shape, the library refuses it.
    let x = vec![1.0f32; 32];
    let mut y = vec![7.0f32; 32];
    let err = layer.forward_shape(&[2, 4, 2, 2], &x, &mut y).unwrap_err();
    assert_eq!(err.status, sys::BN_ERR_SHAPE, "{err}");
    assert_eq!(err.status, 2);
    assert!(err.message.contains("bn_forward"), "message: {}", err.message);
    assert_eq!(err.status_name(), "BN_ERR_SHAPE");
    assert!(err.to_string().starts_with("BN_ERR_SHAPE: "), "{err}");
    // Strong guarantee: no output, no statistic written.
    assert!(y.iter().all(|&v| v == 7.0));
    assert_eq!(layer.moving_mean().unwrap(), vec![0.0; 3]);
    assert_eq!(layer.moving_variance().unwrap(), vec![1.0; 3]);
    // Wrong rank too.
    let err = layer.forward_shape(&[2, 3, 4], &x[..24], &mut y[..24]).unwrap_err();
    assert_eq!(err.status, sys::BN_ERR_SHAPE);
    assert!(err.message.contains("bn_forward"), "message: {}", err.message);
}

#[test]
fn slice_length_mismatch_is_caught_before_the_call() {
    let mut layer = small_layer();
    let x = vec![0.0f32; 23];
    let mut y = vec![0.0f32; 24];
    let err = layer.forward(&x, &mut y).unwrap_err();
    assert_eq!(err.status, sys::BN_ERR_SHAPE);
    assert!(err.message.contains("bn_forward") && err.message.contains("23"), "{}", err.message);
    let err = layer.set_param(Param::Gamma, &[1.0, 2.0]).unwrap_err();
    assert_eq!(err.status, sys::BN_ERR_SHAPE);
    assert!(err.message.contains("bn_set_param"), "{}", err.message);
}

#[test]
fn bad_config_values_fail_at_the_setter() {
    let err = Config::new().unwrap().momentum(1.5).err().expect("momentum 1.5 must fail");
    assert_eq!(err.status, sys::BN_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("bn_config_set_momentum"), "{}", err.message);
    let err = Config::new().unwrap().epsilon(-1.0).err().expect("epsilon -1 must fail");
    assert_eq!(err.status, sys::BN_ERR_INVALID_ARGUMENT);
    // An axis out of range for the rank is found at creation.
    let config = Config::new().unwrap().axes(&[5]).unwrap();
    let err = Layer::<f32>::new(&config, &[2, 3]).err().expect("axis 5 of a rank-2 input");
    assert!(err.message.contains("bn_create"), "{}", err.message);
}

#[test]
fn backward_without_forward_is_a_state_error() {
    let mut layer = small_layer();
    layer.set_training(true).unwrap();
    let x = vec![0.5f32; 24];
    let mut dx = vec![0.0f32; 24];
    let err = layer.backward(&x, &x, &mut dx).unwrap_err();
    assert_eq!(err.status, sys::BN_ERR_STATE, "{err}");
    assert!(err.message.contains("bn_backward"), "{}", err.message);
}

#[test]
fn negative_variance_is_refused_and_nothing_changes() {
    let mut layer = small_layer();
    let err = layer.set_param(Param::MovingVariance, &[1.0, -1.0, 1.0]).unwrap_err();
    assert_eq!(err.status, sys::BN_ERR_INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains("bn_set_param"), "{}", err.message);
    assert_eq!(layer.moving_variance().unwrap(), vec![1.0; 3]);
}

#[test]
fn an_error_message_belongs_to_its_thread() {
    // bn_last_error is thread-local: an error on another thread leaves this one's intact.
    let mut layer = small_layer();
    let err = layer.set_momentum(2.0).unwrap_err();
    std::thread::spawn(|| {
        let e = Config::new().unwrap().epsilon(f64::NAN).err().unwrap();
        assert!(e.message.contains("bn_config_set_epsilon"), "{}", e.message);
    })
    .join()
    .unwrap();
    assert!(err.message.contains("bn_set_momentum"), "{}", err.message);
    // A layer moves to another thread (Send).
    let handle = std::thread::spawn(move || layer.moving_mean().unwrap());
    assert_eq!(handle.join().unwrap(), vec![0.0; 3]);
}
