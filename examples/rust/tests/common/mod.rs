//! The shared small case (examples/README.md): reads examples/expected_small_case.txt and
//! runs it through the safe API. Shared by the tests and the `small_case` example.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use batchnorm::{Config, Element, Layer};

/// examples/expected_small_case.txt, next to this crate's directory.
pub fn case_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("expected_small_case.txt")
}

/// name -> values; '#' lines are comments.
pub fn load_case() -> HashMap<String, Vec<f64>> {
    let path = case_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut items = HashMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap().to_string();
        let values = words.map(|w| w.parse::<f64>().unwrap_or_else(|e| panic!("{name}: {w}: {e}"))).collect();
        items.insert(name, values);
    }
    items
}

/// Converts the file's float64 values to the layer's element type.
pub trait FromF64: Element {
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}
impl FromF64 for f32 {
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl FromF64 for f64 {
    fn from_f64(v: f64) -> f64 {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

pub struct Results {
    pub y: Vec<f64>,
    pub moving_mean: Vec<f64>,
    pub moving_variance: Vec<f64>,
    pub fused: bool,
}

/// One training step of the small case in element type T.
pub fn run_case<T: FromF64>(case: &HashMap<String, Vec<f64>>) -> Result<Results, batchnorm::Error> {
    run_case_with::<T>(case, Ok)
}

/// run_case with a last change to the config (e.g. the moving-variance estimator).
pub fn run_case_with<T: FromF64>(
    case: &HashMap<String, Vec<f64>>,
    adjust: impl FnOnce(Config) -> Result<Config, batchnorm::Error>,
) -> Result<Results, batchnorm::Error> {
    let conv = |name: &str| case[name].iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>();
    let shape: Vec<i64> = case["shape"].iter().map(|&d| d as i64).collect();
    let config = Config::new()?
        .axes(&[case["axis"][0] as i32])?
        .momentum(case["momentum"][0])?
        .epsilon(case["epsilon"][0])?;
    let config = adjust(config)?;
    let mut layer: Layer<T> = Layer::new(&config, &shape)?;
    layer.set_gamma(&conv("gamma"))?;
    layer.set_beta(&conv("beta"))?;
    layer.set_training(true)?;
    let x = conv("x");
    let mut y = vec![T::default(); x.len()];
    layer.forward(&x, &mut y)?;
    let widen = |v: Vec<T>| v.into_iter().map(T::to_f64).collect::<Vec<f64>>();
    Ok(Results {
        y: widen(y),
        moving_mean: widen(layer.moving_mean()?),
        moving_variance: widen(layer.moving_variance()?),
        fused: layer.fused()?,
    })
}

/// max |got - want| over one item; panics on a length mismatch.
pub fn max_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length");
    got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max)
}
