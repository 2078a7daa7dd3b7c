//! A training step, its backward and an inference forward, checked against values derived
//! by hand (see the comments), in f32 and f64.
mod common;

use batchnorm::{Config, Layer, Param};
use common::FromF64;

// x is 4x2 (batch 4, 2 features, axis -1), row-major:
//   feature 0: 0 0 2 2 -> mean 1, biased var 1, xhat -1 -1 1 1
//   feature 1: 1 5 1 5 -> mean 3, biased var 4, xhat -1 1 -1 1
// epsilon 0 (rank 2: not the fused path, so epsilon is not clamped), momentum 0.5,
// gamma (1, 2), beta (0, 1).
const X: [f64; 8] = [0.0, 1.0, 0.0, 5.0, 2.0, 1.0, 2.0, 5.0];
const SHAPE: [i64; 2] = [4, 2];

fn layer<T: FromF64>() -> Layer<T> {
    let config = Config::new().unwrap().momentum(0.5).unwrap().epsilon(0.0).unwrap();
    let mut layer: Layer<T> = Layer::new(&config, &SHAPE).unwrap();
    layer.set_gamma(&[T::from_f64(1.0), T::from_f64(2.0)]).unwrap();
    layer.set_beta(&[T::from_f64(0.0), T::from_f64(1.0)]).unwrap();
    layer
}

fn conv<T: FromF64>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&a| T::from_f64(a)).collect()
}

fn assert_close<T: FromF64>(name: &str, got: &[T], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let g = g.to_f64();
        assert!((g - w).abs() <= tol, "{name}[{i}]: got {g}, want {w}");
    }
}

fn training_step<T: FromF64>(tol: f64) {
    let mut layer = layer::<T>();
    assert_eq!(layer.num_features(), 2);
    assert!(!layer.fused().unwrap());
    layer.set_training(true).unwrap();
    let x = conv::<T>(&X);
    let mut y = vec![T::default(); 8];
    layer.forward(&x, &mut y).unwrap();
    // y0 = xhat0; y1 = 2*xhat1 + 1.
    assert_close("y", &y, &[-1.0, -1.0, -1.0, 3.0, 1.0, -1.0, 1.0, 3.0], tol);
    // moving = 0.5*initial + 0.5*batch; the non-fused V1 path feeds the biased variance.
    assert_close("moving_mean", &layer.moving_mean().unwrap(), &[0.5, 1.5], tol);
    assert_close("moving_variance", &layer.moving_variance().unwrap(), &[1.0, 2.5], tol);
    assert_close("batch_mean", &layer.param(Param::BatchMean).unwrap(), &[1.0, 3.0], tol);
    assert_close("batch_variance", &layer.param(Param::BatchVariance).unwrap(), &[1.0, 4.0], tol);

    // dy: feature 0 (1 0 0 0), feature 1 (0 1 1 0).
    // dx = gamma/sigma * (dy - mean(dy) - xhat*mean(dy*xhat)):
    //   f0: factor 1, mean(dy) 1/4, mean(dy*xhat) -1/4 -> (0.5, -0.5, 0, 0)
    //   f1: factor 2/2, mean(dy) 1/2, mean(dy*xhat) 0   -> (-0.5, 0.5, 0.5, -0.5)
    // dgamma = sum dy*xhat = (-1, 0), dbeta = sum dy = (1, 2).
    let dy = conv::<T>(&[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
    let mut dx = vec![T::default(); 8];
    let grads = layer.backward(&x, &dy, &mut dx).unwrap();
    assert_close("dx", &dx, &[0.5, -0.5, -0.5, 0.5, 0.0, 0.5, 0.0, -0.5], tol);
    assert_close("dgamma", &grads.dgamma, &[-1.0, 0.0], tol);
    assert_close("dbeta", &grads.dbeta, &[1.0, 2.0], tol);

    // Inference: the moving statistics. f0: (x - 0.5)/1; f1: 2*(x - 1.5)/sqrt(2.5) + 1.
    layer.set_training(false).unwrap();
    layer.forward(&x, &mut y).unwrap();
    let f1 = |v: f64| 2.0 * (v - 1.5) / 2.5f64.sqrt() + 1.0;
    assert_close("y inference", &y, &[-0.5, f1(1.0), -0.5, f1(5.0), 1.5, f1(1.0), 1.5, f1(5.0)], tol);
    // ... and changes no statistic.
    assert_close("moving_mean after inference", &layer.moving_mean().unwrap(), &[0.5, 1.5], tol);
}

#[test]
fn training_step_f32() {
    training_step::<f32>(1e-6);
}

#[test]
fn training_step_f64() {
    training_step::<f64>(1e-12);
}

#[test]
fn other_batch_sizes_and_in_place() {
    // The batch size may change per call: batch 2, feature 0 values (0, 4) -> mean 2,
    // var 4, y = (-1, 1); feature 1 values (1, 3) -> mean 2, var 1, y = 2*(-1, 1) + 1.
    // Written over the input.
    let mut layer = layer::<f64>();
    layer.set_training(true).unwrap();
    let mut xy = vec![0.0, 1.0, 4.0, 3.0];
    layer.forward_in_place(&[2, 2], &mut xy).unwrap();
    assert_close("y", &xy, &[-1.0, -1.0, 1.0, 3.0], 1e-12);
}
