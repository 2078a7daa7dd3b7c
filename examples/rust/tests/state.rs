//! State files: save/load/from_state and the file forms round-trip bitwise; a damaged blob is
//! refused with BN_ERR_CORRUPT_DATA and changes nothing; the step counter.
use std::path::PathBuf;

use batchnorm::{state_dtype, sys, Config, Dtype, Element, Layer, Mode, Param};

const SHAPE: [i64; 4] = [2, 3, 2, 2];

/// Deterministic data with a per-channel offset, different for every step.
fn data<T: From<f32>>(step: u32, n: usize) -> Vec<T> {
    (0..n).map(|i| T::from(((i as f32) * 0.37 + step as f32).sin() * 1.5 + (i % 3) as f32 * 0.25)).collect()
}

fn bits<T: Copy + Into<f64>>(v: &[T]) -> Vec<u64> {
    v.iter().map(|&x| x.into().to_bits()).collect()
}

/// Every parameter and statistic the layer has, bitwise.
fn snapshot<T: Element + Into<f64>>(layer: &Layer<T>, renorm: bool) -> Vec<Vec<u64>> {
    let mut params = vec![Param::Gamma, Param::Beta, Param::MovingMean, Param::MovingVariance];
    if renorm {
        params.extend([Param::RenormMean, Param::RenormStddev, Param::MovingStddev]);
    }
    params.into_iter().map(|p| bits(&layer.param(p).unwrap())).collect()
}

/// A layer after `steps` training steps (forward and backward), gamma and beta moved.
fn trained<T: Element + From<f32>>(config: &Config, steps: u32) -> Layer<T> {
    let mut layer: Layer<T> = Layer::new(config, &SHAPE).unwrap();
    layer.set_training(true).unwrap();
    let n = 24;
    let mut y = vec![T::default(); n];
    let mut dx = vec![T::default(); n];
    for step in 0..steps {
        let x = data::<T>(step, n);
        layer.forward(&x, &mut y).unwrap();
        layer.backward(&x, &data::<T>(step + 100, n), &mut dx).unwrap();
    }
    layer.set_gamma(&data::<T>(7, 3)).unwrap();
    layer.set_beta(&data::<T>(8, 3)).unwrap();
    layer
}

/// `a` and `b` compute bitwise alike: the same training step (outputs, gradients, moving
/// statistics), then the same inference.
fn same_from_now_on<T: Element + From<f32> + Into<f64>>(a: &mut Layer<T>, b: &mut Layer<T>, renorm: bool) {
    for step in 10..13 {
        let x = data::<T>(step, 24);
        let dy = data::<T>(step + 50, 24);
        let (mut ya, mut yb) = (vec![T::default(); 24], vec![T::default(); 24]);
        a.forward(&x, &mut ya).unwrap();
        b.forward(&x, &mut yb).unwrap();
        assert_eq!(bits(&ya), bits(&yb), "training y, step {step}");
        let (mut dxa, mut dxb) = (vec![T::default(); 24], vec![T::default(); 24]);
        let ga = a.backward(&x, &dy, &mut dxa).unwrap();
        let gb = b.backward(&x, &dy, &mut dxb).unwrap();
        assert_eq!(bits(&dxa), bits(&dxb), "dx, step {step}");
        assert_eq!(bits(&ga.dgamma), bits(&gb.dgamma), "dgamma, step {step}");
        assert_eq!(bits(&ga.dbeta), bits(&gb.dbeta), "dbeta, step {step}");
        assert_eq!(snapshot(a, renorm), snapshot(b, renorm), "statistics after step {step}");
    }
    a.set_training(false).unwrap();
    b.set_training(false).unwrap();
    let x = data::<T>(20, 24);
    let (mut ya, mut yb) = (vec![T::default(); 24], vec![T::default(); 24]);
    a.forward(&x, &mut ya).unwrap();
    b.forward(&x, &mut yb).unwrap();
    assert_eq!(bits(&ya), bits(&yb), "inference y");
}

fn round_trip<T: Element + From<f32> + Into<f64>>(config: &Config, renorm: bool) {
    let mut saved = trained::<T>(config, 3);
    let blob = saved.save().unwrap();
    assert_eq!(blob.len(), saved.state_size().unwrap());
    assert_eq!(&blob[..8], b"\x89BNS\r\n\x1a\n", "the magic");

    // from_state: the same parameters, statistics, flags and step count, bitwise.
    let mut restored = Layer::<T>::from_state(&blob).unwrap();
    assert_eq!(restored.shape(), &SHAPE);
    assert_eq!(restored.num_features(), 3);
    assert_eq!(restored.dtype().unwrap(), saved.dtype().unwrap());
    assert_eq!(snapshot(&restored, renorm), snapshot(&saved, renorm));
    assert_eq!(restored.step_count().unwrap(), 3);
    assert_eq!(restored.mode().unwrap(), saved.mode().unwrap());
    assert_eq!(restored.fused().unwrap(), saved.fused().unwrap());
    assert_eq!(restored.save().unwrap(), blob, "re-saved bytes");
    // No saved forward: a backward needs a forward first.
    let x = data::<T>(0, 24);
    let mut dx = vec![T::default(); 24];
    let err = restored.backward(&x, &x, &mut dx).err().expect("a backward with no forward");
    assert_eq!(err.status, sys::BN_ERR_STATE, "{err}");

    // load into a fresh layer built for another batch size: the saved layer, shape included.
    let mut loaded: Layer<T> = Layer::new(config, &[5, 3, 2, 2]).unwrap();
    loaded.load(&blob).unwrap();
    assert_eq!(loaded.shape(), &SHAPE);
    assert_eq!(loaded.save().unwrap(), blob);

    same_from_now_on(&mut saved, &mut restored, renorm);
    let mut again = Layer::<T>::from_state(&blob).unwrap();
    same_from_now_on(&mut loaded, &mut again, renorm);
}

#[test]
fn round_trip_is_bitwise_f32() {
    let config = Config::new().unwrap().axes(&[1]).unwrap().momentum(0.9).unwrap();
    round_trip::<f32>(&config, false);
}

#[test]
fn round_trip_is_bitwise_f64_renorm() {
    let config = Config::new().unwrap().axes(&[1]).unwrap().renorm(3.0, 0.5, 2.0, 0.9).unwrap();
    round_trip::<f64>(&config, true);
}

#[test]
fn save_into_a_short_buffer_is_refused() {
    let layer = trained::<f32>(&Config::new().unwrap().axes(&[1]).unwrap(), 1);
    let size = layer.state_size().unwrap();
    assert_eq!(size, 572 + 4 * 3 * 4, "docs/state_format.md: 572 + arrays x features x 4");
    let mut short = vec![0xAAu8; size - 1];
    let err = layer.save_into(&mut short).unwrap_err();
    assert_eq!(err.status, sys::BN_ERR_INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains("bn_save"), "{}", err.message);
    assert!(short.iter().all(|&b| b == 0xAA), "a refused save wrote into the buffer");
    let mut long = vec![0u8; size + 10];
    assert_eq!(layer.save_into(&mut long).unwrap(), size);
    assert_eq!(&long[..size], &layer.save().unwrap()[..]);
}

#[test]
fn a_damaged_blob_is_refused_and_changes_nothing() {
    let config = Config::new().unwrap().axes(&[1]).unwrap();
    let blob = trained::<f32>(&config, 2).save().unwrap();
    let mut layer = trained::<f32>(&config, 5);
    layer.set_training(false).unwrap();
    let before = layer.save().unwrap();
    let params_before = snapshot(&layer, false);

    // Every single-byte flip (the CRC-32C catches them all), truncation, a trailing byte.
    let mut damaged: Vec<Vec<u8>> = (0..blob.len())
        .map(|i| {
            let mut b = blob.clone();
            b[i] ^= 0x40;
            b
        })
        .collect();
    damaged.push(blob[..blob.len() - 1].to_vec());
    damaged.push(blob[..7].to_vec());
    damaged.push(Vec::new());
    damaged.push([&blob[..], &[0u8]].concat());
    for (i, bad) in damaged.iter().enumerate() {
        let err = layer.load(bad).unwrap_err();
        assert_eq!(err.status, sys::BN_ERR_CORRUPT_DATA, "case {i}: {err}");
        assert!(err.message.contains("bn_load"), "case {i}: {}", err.message);
        let err = Layer::<f32>::from_state(bad).err().expect("a damaged blob must be refused");
        assert_eq!(err.status, sys::BN_ERR_CORRUPT_DATA, "case {i}: {err}");
        assert_eq!(state_dtype(bad).unwrap_err().status, sys::BN_ERR_CORRUPT_DATA, "case {i}");
    }
    assert_eq!(layer.save().unwrap(), before, "a refused load changed the layer");
    assert_eq!(snapshot(&layer, false), params_before);
    assert_eq!(layer.step_count().unwrap(), 5);
    assert_eq!(layer.shape(), &SHAPE);
    // ... and the intact blob still loads.
    layer.load(&blob).unwrap();
    assert_eq!(layer.save().unwrap(), blob);
}

#[test]
fn a_blob_of_another_structure_is_refused() {
    let config = Config::new().unwrap().axes(&[1]).unwrap();
    let blob64 = trained::<f64>(&config, 1).save().unwrap();
    assert_eq!(state_dtype(&blob64).unwrap(), Dtype::F64);
    let mut layer = trained::<f32>(&config, 1);
    let before = layer.save().unwrap();
    assert_eq!(state_dtype(&before).unwrap(), Dtype::F32);

    // Another dtype: the library refuses the load; from_state is refused by the wrapper.
    let err = layer.load(&blob64).unwrap_err();
    assert_eq!(err.status, sys::BN_ERR_INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains("bn_load") && err.message.contains("dtype"), "{}", err.message);
    let err = Layer::<f32>::from_state(&blob64).err().expect("an f64 blob for Layer<f32>");
    assert_eq!(err.status, sys::BN_ERR_INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains("bn_create_from_state") && err.message.contains("F64"), "{}", err.message);

    // Other kept sizes (4 channels): BN_ERR_SHAPE.
    let wide: Layer<f32> = Layer::new(&config, &[2, 4, 2, 2]).unwrap();
    let err = layer.load(&wide.save().unwrap()).unwrap_err();
    assert_eq!(err.status, sys::BN_ERR_SHAPE, "{err}");
    assert_eq!(layer.save().unwrap(), before);
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("bn_rust_{}_{name}.bnstate", std::process::id()))
}

#[test]
fn state_files() {
    let config = Config::new().unwrap().axes(&[1]).unwrap().momentum(0.8).unwrap();
    let layer = trained::<f32>(&config, 2);
    let path = temp_path("files");
    layer.save_file(&path).unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk, layer.save().unwrap());

    let restored = Layer::<f32>::from_file(&path).unwrap();
    assert_eq!(restored.save().unwrap(), on_disk);
    assert_eq!(restored.shape(), &SHAPE);
    let mut other: Layer<f32> = Layer::new(&config, &[7, 3, 1, 1]).unwrap();
    other.load_file(path.as_path()).unwrap();
    assert_eq!(other.save().unwrap(), on_disk);
    assert_eq!(other.shape(), &SHAPE);

    // A damaged file: BN_ERR_CORRUPT_DATA naming the file, the layer unchanged.
    let mut bad = on_disk.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let mut fresh: Layer<f32> = Layer::new(&config, &SHAPE).unwrap();
    let before = fresh.save().unwrap();
    let err = fresh.load_file(&path).unwrap_err();
    assert_eq!(err.status, sys::BN_ERR_CORRUPT_DATA, "{err}");
    assert!(err.message.contains("bn_load_file"), "{}", err.message);
    assert_eq!(fresh.save().unwrap(), before);
    std::fs::remove_file(&path).unwrap();

    // A missing file: the system's reason; a NUL in the path: refused by the wrapper.
    let err = fresh.load_file(&path).unwrap_err();
    assert_eq!(err.status, sys::BN_ERR_INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains("bn_load_file"), "{}", err.message);
    let err = Layer::<f32>::from_file(&path).err().expect("a missing file");
    assert_eq!(err.status, sys::BN_ERR_INVALID_ARGUMENT, "{err}");
    let err = layer.save_file("bad\0name").unwrap_err();
    assert_eq!(err.status, sys::BN_ERR_INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains("NUL"), "{}", err.message);
    assert!(!std::path::Path::new("bad").exists());
}

#[test]
fn step_count() {
    let mut layer = trained::<f32>(&Config::new().unwrap().axes(&[1]).unwrap(), 3);
    assert_eq!(layer.step_count().unwrap(), 3);
    // An inference forward does not count; a mode that updates the statistics does.
    layer.set_training(false).unwrap();
    let x = data::<f32>(1, 24);
    let mut y = vec![0.0f32; 24];
    layer.forward(&x, &mut y).unwrap();
    assert_eq!(layer.step_count().unwrap(), 3);
    layer.set_mode(Mode::UPDATE_MOVING).unwrap();
    layer.forward(&x, &mut y).unwrap();
    assert_eq!(layer.step_count().unwrap(), 4);
    layer.set_step_count(1000).unwrap();
    assert_eq!(layer.step_count().unwrap(), 1000);
    let err = layer.set_step_count(-1).unwrap_err();
    assert_eq!(err.status, sys::BN_ERR_INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains("bn_set_step_count"), "{}", err.message);
    assert_eq!(layer.step_count().unwrap(), 1000);
    assert_eq!(Layer::<f32>::from_state(&layer.save().unwrap()).unwrap().step_count().unwrap(), 1000);
}

#[test]
fn step_count_weights_the_cumulative_average() {
    // PyTorch momentum=None: the next batch weighs 1/(count + 1). One feature, batch mean 4.
    let config = Config::new().unwrap().cumulative_average(true).unwrap();
    let mut layer: Layer<f64> = Layer::new(&config, &[4, 1]).unwrap();
    layer.set_training(true).unwrap();
    layer.set_step_count(3).unwrap();
    let mut y = [0.0; 4];
    layer.forward(&[1.0, 3.0, 5.0, 7.0], &mut y).unwrap();
    assert_eq!(layer.moving_mean().unwrap(), vec![1.0]); // 0*3/4 + 4/4
    assert_eq!(layer.step_count().unwrap(), 4);
}
