//! Non-finite training batches: refused by default (BN_ERR_NONFINITE, nothing changed, no
//! output written), or propagated (Keras), or normalized without the statistics' update.
use batchnorm::{sys, Config, Layer, NonfinitePolicy, Param};

// 4x2, axis -1: feature 0 holds a NaN (or inf), feature 1 is clean (mean 3, variance 4).
const SHAPE: [i64; 2] = [4, 2];
const SENTINEL: f32 = 12345.0;

fn x_with(bad: f32) -> Vec<f32> {
    vec![0.0, 1.0, bad, 5.0, 2.0, 1.0, 2.0, 5.0]
}

fn layer(policy: Option<NonfinitePolicy>) -> Layer<f32> {
    let mut config = Config::new().unwrap().momentum(0.5).unwrap().epsilon(0.0).unwrap();
    if let Some(p) = policy {
        config = config.nonfinite_policy(p).unwrap();
    }
    let mut layer: Layer<f32> = Layer::new(&config, &SHAPE).unwrap();
    layer.set_training(true).unwrap();
    layer
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Feature 1 of the output (values 1 5 1 5, gamma 1, beta 0, epsilon 0): xhat = -1 1 -1 1.
fn assert_clean_feature(y: &[f32]) {
    let f1: Vec<f32> = y.iter().skip(1).step_by(2).copied().collect();
    assert_eq!(f1, vec![-1.0, 1.0, -1.0, 1.0], "the clean feature's output");
}

#[test]
fn refused_by_default_and_nothing_changes() {
    assert_eq!(NonfinitePolicy::default(), NonfinitePolicy::Refuse);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut layer = layer(None);
        let before = layer.save().unwrap();
        let x = x_with(bad);
        let mut y = vec![SENTINEL; 8];
        let err = layer.forward(&x, &mut y).unwrap_err();
        assert_eq!(err.status, sys::BN_ERR_NONFINITE, "{bad}: {err}");
        assert_eq!(err.status_name(), "BN_ERR_NONFINITE");
        assert!(err.message.contains("bn_forward") && err.message.contains("feature 0"), "{}", err.message);
        assert!(y.iter().all(|&v| v == SENTINEL), "{bad}: a refused forward wrote y: {y:?}");
        assert_eq!(layer.save().unwrap(), before, "{bad}: a refused forward changed the layer");
        assert_eq!(layer.step_count().unwrap(), 0);
        assert_eq!(layer.param(Param::BatchMean).unwrap_err().status, sys::BN_ERR_STATE);
        // In place too: x is the output buffer and stays as it was.
        let mut xy = x.clone();
        assert_eq!(layer.forward_in_place(&SHAPE, &mut xy).unwrap_err().status, sys::BN_ERR_NONFINITE);
        assert_eq!(bits(&xy), bits(&x));
    }
}

#[test]
fn inference_never_refuses() {
    let mut layer = layer(None);
    layer.set_training(false).unwrap();
    let mut y = vec![SENTINEL; 8];
    layer.forward(&x_with(f32::NAN), &mut y).unwrap();
    assert!(y[2].is_nan());
    assert_eq!(y[3], 5.0 / (1.0f32 + 0.0).sqrt()); // moving mean 0, variance 1, epsilon 0
}

#[test]
fn propagate_is_keras() {
    // Set live on a layer created with the default policy, after a refusal.
    let mut layer = layer(None);
    let x = x_with(f32::NAN);
    let mut y = vec![SENTINEL; 8];
    assert_eq!(layer.forward(&x, &mut y).unwrap_err().status, sys::BN_ERR_NONFINITE);
    layer.set_nonfinite_policy(NonfinitePolicy::Propagate).unwrap();
    layer.forward(&x, &mut y).unwrap();
    assert!(y.iter().step_by(2).all(|v| v.is_nan()), "feature 0 is NaN throughout: {y:?}");
    assert_clean_feature(&y);
    let mean = layer.moving_mean().unwrap();
    let var = layer.moving_variance().unwrap();
    assert!(mean[0].is_nan() && var[0].is_nan(), "{mean:?} {var:?}");
    assert_eq!((mean[1], var[1]), (1.5, 2.5)); // 0.5*(0, 1) + 0.5*(3, 4)
    assert_eq!(layer.step_count().unwrap(), 1);
}

#[test]
fn skip_update_writes_y_and_keeps_the_statistics() {
    let mut propagate = layer(Some(NonfinitePolicy::Propagate));
    let mut skip = layer(Some(NonfinitePolicy::SkipUpdate));
    let before = skip.save().unwrap();
    let x = x_with(f32::INFINITY);
    let (mut yp, mut ys) = (vec![SENTINEL; 8], vec![SENTINEL; 8]);
    propagate.forward(&x, &mut yp).unwrap();
    skip.forward(&x, &mut ys).unwrap();
    assert_eq!(bits(&ys), bits(&yp), "SKIP_UPDATE writes the PROPAGATE output");
    assert!(!ys[0].is_finite());
    assert_clean_feature(&ys);
    // The moving statistics and the step counter as they were (the whole state: the blob).
    assert_eq!(skip.moving_mean().unwrap(), vec![0.0, 0.0]);
    assert_eq!(skip.moving_variance().unwrap(), vec![1.0, 1.0]);
    assert_eq!(skip.step_count().unwrap(), 0);
    assert_eq!(skip.save().unwrap(), before);
    // The forward is saved for the backward, which gives PROPAGATE's gradient bitwise.
    let dy = [1.0f32, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
    let (mut dxp, mut dxs) = (vec![0.0f32; 8], vec![0.0f32; 8]);
    let gp = propagate.backward(&x, &dy, &mut dxp).unwrap();
    let gs = skip.backward(&x, &dy, &mut dxs).unwrap();
    assert_eq!(bits(&dxs), bits(&dxp));
    assert_eq!(bits(&gs.dgamma), bits(&gp.dgamma));
    assert_eq!(bits(&gs.dbeta), bits(&gp.dbeta));
    assert_eq!(dxs.iter().skip(1).step_by(2).copied().collect::<Vec<_>>(), vec![-0.25, 0.25, 0.25, -0.25]);
    // (feature 1: dy 0 1 1 0, sigma 2, mean(dy*xhat) 0: dx = (dy - 1/2)/2)
    // A clean batch updates the statistics again.
    let mut y = vec![0.0f32; 8];
    skip.forward(&x_with(0.0), &mut y).unwrap();
    assert_eq!(skip.step_count().unwrap(), 1);
    assert_eq!(skip.moving_mean().unwrap(), vec![0.5, 1.5]); // batch means 1 and 3, momentum 0.5
}

#[test]
fn unknown_policies_are_refused_by_the_library() {
    let mut layer = layer(None);
    let status = unsafe { sys::bn_set_nonfinite_policy(layer.as_ptr(), 3) };
    assert_eq!(status, sys::BN_ERR_INVALID_ARGUMENT);
    let config = Config::new().unwrap();
    assert_eq!(
        unsafe { sys::bn_config_set_nonfinite_policy(config.as_ptr(), -1) },
        sys::BN_ERR_INVALID_ARGUMENT
    );
    // The layer still refuses.
    let mut y = vec![0.0f32; 8];
    assert_eq!(layer.forward(&x_with(f32::NAN), &mut y).unwrap_err().status, sys::BN_ERR_NONFINITE);
}
