//! Parameters round trip, folding against formulas computed here, and the config setters.
use batchnorm::{Config, Initializer, Layer, Mode, Param};

#[test]
fn params_round_trip_f32_and_f64() {
    let config = Config::new().unwrap().axes(&[1]).unwrap();
    let mut layer: Layer<f32> = Layer::new(&config, &[2, 3, 4]).unwrap();
    assert_eq!(layer.shape(), &[2, 3, 4]);
    // Defaults.
    assert_eq!(layer.gamma().unwrap(), vec![1.0; 3]);
    assert_eq!(layer.beta().unwrap(), vec![0.0; 3]);
    let values: [(Param, [f32; 3]); 4] = [
        (Param::Gamma, [0.25, -1.5, 3.0]),
        (Param::Beta, [1.0, 0.0, -2.5]),
        (Param::MovingMean, [0.125, 7.0, -3.0]),
        (Param::MovingVariance, [2.0, 0.5, 0.0]),
    ];
    for (which, v) in &values {
        layer.set_param(*which, v).unwrap();
    }
    for (which, v) in &values {
        assert_eq!(layer.param(*which).unwrap(), v.to_vec(), "{which:?}");
    }
    let mut out = [0.0f32; 3];
    layer.param_into(Param::Beta, &mut out).unwrap();
    assert_eq!(out, values[1].1);

    let mut d: Layer<f64> = Layer::new(&config, &[2, 3, 4]).unwrap();
    let g = [0.1, 0.2, 0.3]; // not exact in f32: a double layer keeps them bit for bit
    d.set_gamma(&g).unwrap();
    assert_eq!(d.gamma().unwrap(), g.to_vec());
}

#[test]
fn fold_matches_the_inference_formula() {
    // Non-fused (rank 3), so epsilon is used as given.
    let eps = 0.01;
    let config = Config::new().unwrap().axes(&[1]).unwrap().epsilon(eps).unwrap();
    let mut layer: Layer<f64> = Layer::new(&config, &[2, 3, 4]).unwrap();
    let gamma = [2.0, -1.0, 0.5];
    let beta = [0.5, 1.0, -1.0];
    let mm = [1.0, -2.0, 0.25];
    let mv = [3.99, 0.24, 0.0];
    layer.set_gamma(&gamma).unwrap();
    layer.set_beta(&beta).unwrap();
    layer.set_param(Param::MovingMean, &mm).unwrap();
    layer.set_param(Param::MovingVariance, &mv).unwrap();
    let (scale, shift) = layer.fold().unwrap();
    // sqrt(mv + eps) = 2, 0.5, 0.1.
    let want_scale = [1.0, -2.0, 5.0];
    let want_shift = [0.5 - 1.0 * 1.0, 1.0 - (-2.0) * -2.0, -1.0 - 0.25 * 5.0];
    for i in 0..3 {
        assert!((scale[i] - want_scale[i]).abs() < 1e-12, "scale {scale:?}");
        assert!((shift[i] - want_shift[i]).abs() < 1e-12, "shift {shift:?}");
    }
    // fold_into: a dense layer with 2 inputs per output feature.
    let mut w = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let bias_out = layer.fold_into(&mut w, Some(&[1.0, 1.0, 1.0])).unwrap();
    let want_w = [1.0, 2.0, -6.0, -8.0, 25.0, 30.0];
    for i in 0..6 {
        assert!((w[i] - want_w[i]).abs() < 1e-12, "w {w:?}");
    }
    for i in 0..3 {
        assert!((bias_out[i] - (want_scale[i] + want_shift[i])).abs() < 1e-12, "bias {bias_out:?}");
    }
}

#[test]
fn config_setters_reach_the_layer() {
    let config = Config::new()
        .unwrap()
        .axes(&[-1])
        .unwrap()
        .center(false)
        .unwrap()
        .initializer(Param::Gamma, Initializer::Constant(3.0))
        .unwrap()
        .regularizer(Param::Gamma, 0.5, 0.25)
        .unwrap();
    let mut layer: Layer<f32> = Layer::new(&config, &[5, 2]).unwrap();
    assert_eq!(layer.gamma().unwrap(), vec![3.0, 3.0]);
    // No beta: reads zeros.
    assert_eq!(layer.beta().unwrap(), vec![0.0, 0.0]);
    // l1*sum|w| + l2*sum w^2 = 0.5*6 + 0.25*18.
    assert!((layer.regularization_loss().unwrap() - 7.5).abs() < 1e-9);
    // Presets: inference is no flag; training turns on batch statistics and updates.
    assert_eq!(layer.mode().unwrap(), Mode::PARAM_GRADIENTS);
    layer.set_training(true).unwrap();
    let m = layer.mode().unwrap();
    assert!(m.contains(Mode::BATCH_STATISTICS | Mode::UPDATE_MOVING), "{m:?}");
    layer.set_mode(Mode::UPDATE_MOVING).unwrap();
    assert_eq!(layer.mode().unwrap(), Mode::UPDATE_MOVING);
    layer.set_num_threads(1).unwrap();
}
