//! Links the C library `libbatchnorm`. BATCHNORM_LIB_DIR names the directory that holds
//! libbatchnorm.so (a build tree or an install's lib directory); without it the linker's
//! default search path is used (an installed library known to ldconfig).
use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=BATCHNORM_LIB_DIR");
    if let Ok(dir) = env::var("BATCHNORM_LIB_DIR") {
        if !dir.is_empty() {
            println!("cargo:rustc-link-search=native={dir}");
            // An rpath (Linux linkers), so tests and examples find the library at run
            // time without LD_LIBRARY_PATH.
            if env::var("CARGO_CFG_TARGET_OS").map_or(false, |os| os == "linux") {
                println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
            }
        }
    }
    println!("cargo:rustc-link-lib=dylib=batchnorm");
}
