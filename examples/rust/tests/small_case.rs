//! The shared small case against examples/expected_small_case.txt (30 values).
mod common;

use batchnorm::MovingVariance;
use common::{load_case, max_error, run_case, run_case_with};

#[test]
fn small_case_f32_matches_the_file() {
    let case = load_case();
    let tolerance = case["tolerance"][0];
    let r = run_case::<f32>(&case).expect("small case");
    assert_eq!(r.y.len() + r.moving_mean.len() + r.moving_variance.len(), 30);
    for (name, got) in [("y", &r.y), ("moving_mean", &r.moving_mean), ("moving_variance", &r.moving_variance)]
    {
        let err = max_error(got, &case[name]);
        assert!(
            err <= tolerance,
            "{name}: max |error| {err:e} > {tolerance:e}\n got {got:?}\nwant {:?}",
            case[name]
        );
    }
    // The case relies on the fused path (Bessel-corrected moving variance).
    assert!(r.fused);
}

#[test]
fn small_case_f64_with_the_unbiased_estimator_matches_the_file_closely() {
    // A float64 layer never takes Keras' fused path, so its moving variance is fed the
    // biased batch variance; with the Bessel-corrected estimator chosen explicitly it
    // computes the file's case, and in double it agrees far below the float32 tolerance
    // (the file prints 12 significant digits).
    let case = load_case();
    let r = run_case_with::<f64>(&case, |c| c.moving_variance(MovingVariance::Unbiased)).expect("small case");
    assert!(!r.fused);
    for (name, got) in [("y", &r.y), ("moving_mean", &r.moving_mean), ("moving_variance", &r.moving_variance)]
    {
        let err = max_error(got, &case[name]);
        assert!(err <= 1e-9, "{name}: max |error| {err:e}\n got {got:?}\nwant {:?}", case[name]);
    }
}

#[test]
fn small_case_f64_default_is_not_fused() {
    // Default f64 layer: same y and moving mean, moving variance fed the biased variance:
    // 0.9 + 0.1*var = 0.9 + (file value - 0.9)*7/8.
    let case = load_case();
    let r = run_case::<f64>(&case).expect("small case");
    assert!(!r.fused);
    assert!(max_error(&r.y, &case["y"]) <= 1e-9);
    assert!(max_error(&r.moving_mean, &case["moving_mean"]) <= 1e-12);
    let want: Vec<f64> = case["moving_variance"].iter().map(|v| 0.9 + (v - 0.9) * 7.0 / 8.0).collect();
    assert!(max_error(&r.moving_variance, &want) <= 1e-12, "{:?} vs {want:?}", r.moving_variance);
}

#[test]
fn channel_zero_by_hand() {
    // examples/README.md: mean 0.75, sum of squared deviations 10.5 over m = 8.
    let case = load_case();
    let r = run_case::<f32>(&case).unwrap();
    let y0 = (0.5 - 0.75) / (10.5f64 / 8.0 + 1e-3).sqrt();
    assert!((r.y[0] - y0).abs() < 1e-6, "{} vs {y0}", r.y[0]);
    assert!((r.moving_mean[0] - 0.075).abs() < 1e-7);
    assert!((r.moving_variance[0] - (0.9 + 0.1 * 10.5 / 7.0)).abs() < 1e-6);
}
