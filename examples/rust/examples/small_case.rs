//! The shared small case (examples/README.md) through the Rust crate:
//!
//!     BATCHNORM_LIB_DIR=../../build cargo run --example small_case
//!
//! One training step of a Keras-default layer (axis 1, momentum 0.9, epsilon 1e-3, float32)
//! on a 2x3x2x2 NCHW input; prints y and the moving statistics and checks all 30 values
//! against examples/expected_small_case.txt. Exit status 0 when every number matches.
#[path = "../tests/common/mod.rs"]
mod common;

use std::process::ExitCode;

fn main() -> ExitCode {
    let case = common::load_case();
    println!("libbatchnorm {}", batchnorm::version_string());
    let r = match common::run_case::<f32>(&case) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (n, row) in r.y.chunks(4).enumerate() {
        println!(
            "y[n={}, c={}] = {:?}",
            n / 3,
            n % 3,
            row.iter().map(|v| format!("{v:.6}")).collect::<Vec<_>>()
        );
    }
    println!("moving_mean     = {:?}", r.moving_mean);
    println!("moving_variance = {:?}", r.moving_variance);

    let tolerance = case["tolerance"][0];
    let mut ok = true;
    for (name, got) in [("y", &r.y), ("moving_mean", &r.moving_mean), ("moving_variance", &r.moving_variance)]
    {
        let err = common::max_error(got, &case[name]);
        let good = err <= tolerance;
        ok &= good;
        println!("{name:<16} max |error| = {err:.2e}  {}", if good { "ok" } else { "MISMATCH" });
    }
    println!("{}", if ok { "all values match examples/expected_small_case.txt" } else { "FAILED" });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
