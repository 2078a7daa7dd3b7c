//! The `sys` layer mirrors include/batchnorm/batchnorm.h one to one: every function and
//! constant the header declares is in src/sys.rs with the header's value, the version too.
use std::collections::BTreeMap;
use std::path::PathBuf;

fn read(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `#define BN_NAME <integer>` of the header.
fn header_constants(header: &str) -> BTreeMap<String, i64> {
    header
        .lines()
        .filter_map(|l| l.strip_prefix("#define BN_"))
        .filter_map(|rest| {
            let mut words = rest.split_whitespace();
            let name = format!("BN_{}", words.next()?);
            let value = words.next()?.parse::<i64>().ok()?;
            Some((name, value))
        })
        .collect()
}

/// The names of the `BN_API` functions of the header.
fn header_functions(header: &str) -> Vec<String> {
    header
        .split("BN_API ")
        .skip(1)
        .filter_map(|decl| {
            let name = decl.split('(').next()?.split([' ', '*']).next_back()?;
            name.starts_with("bn_").then(|| name.to_string())
        })
        .collect()
}

#[test]
fn every_header_function_is_declared() {
    let header = read("../../include/batchnorm/batchnorm.h");
    let sys = read("src/sys.rs");
    let functions = header_functions(&header);
    assert!(functions.len() >= 55, "found only {} BN_API functions", functions.len());
    let missing: Vec<_> = functions.iter().filter(|f| !sys.contains(&format!("pub fn {f}("))).collect();
    assert!(missing.is_empty(), "src/sys.rs lacks {missing:?}");
}

#[test]
fn every_header_constant_has_its_value() {
    let header = read("../../include/batchnorm/batchnorm.h");
    let constants = header_constants(&header);
    assert!(constants.contains_key("BN_VERSION_MINOR") && constants.len() >= 50, "{constants:?}");
    let sys = read("src/sys.rs");
    for (name, value) in &constants {
        let line = sys
            .lines()
            .find(|l| l.starts_with(&format!("pub const {name}:")))
            .unwrap_or_else(|| panic!("src/sys.rs lacks {name}"));
        let declared = line.rsplit('=').next().unwrap().trim().trim_end_matches(';');
        assert_eq!(declared.parse::<i64>().ok(), Some(*value), "{name}: {line}");
    }
    assert_eq!(
        batchnorm::sys::BN_VERSION_NUMBER as i64,
        constants["BN_VERSION_MAJOR"] * 10000
            + constants["BN_VERSION_MINOR"] * 100
            + constants["BN_VERSION_PATCH"]
    );
}
