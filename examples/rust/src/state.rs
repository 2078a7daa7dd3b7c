//! State files (since 1.1.0): a layer's whole state as one self-checking byte string, in the
//! library's versioned format (docs/state_format.md), and the file forms.
//!
//! A blob holds the configuration, the input shape, every parameter and statistic bitwise,
//! the training and mode flags and the step counter; not the saved forward (a loaded layer
//! needs a forward before a backward) and not the thread bound. A damaged or foreign blob is
//! refused with `BN_ERR_CORRUPT_DATA` and changes nothing.

use std::ffi::CString;
use std::path::Path;
use std::ptr;

use super::{check, sys, Dtype, Element, Error, Layer, Result};

/// Offsets of the header fields this module reads (docs/state_format.md, "Layout").
const NDIM_OFFSET: usize = 36;
const SHAPE_OFFSET: usize = 40;

/// The `bn_dtype` of a state blob, checked by the library as [`Layer::from_state`] checks it
/// (so `BN_ERR_CORRUPT_DATA` for a damaged blob): tells which `Layer<T>` can take it.
pub fn state_dtype(blob: &[u8]) -> Result<Dtype> {
    let size = blob_size("bn_create_from_state", blob)?;
    let mut raw = ptr::null_mut();
    check(unsafe { sys::bn_create_from_state(blob.as_ptr().cast(), size, &mut raw) })?;
    let mut dtype = 0;
    let status = unsafe { sys::bn_get_dtype(raw, &mut dtype) };
    let result = check(status);
    unsafe { sys::bn_destroy(raw) };
    result?;
    Dtype::from_raw(dtype)
        .ok_or_else(|| Error::wrapper(sys::BN_ERR_INTERNAL, format!("bn_get_dtype: unknown dtype {dtype}")))
}

fn blob_size(function: &str, blob: &[u8]) -> Result<i64> {
    i64::try_from(blob.len()).map_err(|_| {
        Error::wrapper(sys::BN_ERR_INVALID_ARGUMENT, format!("{function}: a blob of {} bytes", blob.len()))
    })
}

/// The input shape recorded in a blob the library has accepted (so well-formed).
fn input_shape(blob: &[u8]) -> Vec<i64> {
    let word = |at: usize, n: usize| blob[at..at + n].iter().rev().fold(0u64, |v, &b| v << 8 | u64::from(b));
    let ndim = word(NDIM_OFFSET, 4) as usize;
    (0..ndim).map(|d| word(SHAPE_OFFSET + 8 * d, 8) as i64).collect()
}

/// A path as the C library takes it: bytes without NUL.
fn c_path(function: &str, path: &Path) -> Result<CString> {
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    };
    #[cfg(not(unix))]
    let bytes = path
        .to_str()
        .ok_or_else(|| {
            Error::wrapper(
                sys::BN_ERR_INVALID_ARGUMENT,
                format!("{function}: path {} is not valid Unicode", path.display()),
            )
        })?
        .as_bytes()
        .to_vec();
    CString::new(bytes).map_err(|_| {
        Error::wrapper(
            sys::BN_ERR_INVALID_ARGUMENT,
            format!("{function}: path {:?} contains a NUL byte (checked by the Rust wrapper)", path),
        )
    })
}

impl<T: Element> Layer<T> {
    /// The layer's state as bytes (`bn_save`): configuration, input shape, parameters and
    /// statistics bitwise, training and mode flags, step counter.
    pub fn save(&self) -> Result<Vec<u8>> {
        let mut buffer = vec![0u8; self.state_size()?];
        let written = self.save_into(&mut buffer)?;
        buffer.truncate(written);
        Ok(buffer)
    }

    /// The size in bytes of [`Layer::save`]'s blob (`bn_save`'s size query). It depends on the
    /// layer's structure only.
    pub fn state_size(&self) -> Result<usize> {
        let mut size = 0i64;
        check(unsafe { sys::bn_save(self.raw.as_ptr(), ptr::null_mut(), 0, &mut size) })?;
        Ok(size as usize)
    }

    /// [`Layer::save`] into a caller's buffer, with no allocation; returns the bytes written.
    /// A buffer shorter than [`Layer::state_size`] is `BN_ERR_INVALID_ARGUMENT` and is left
    /// as it was.
    pub fn save_into(&self, buffer: &mut [u8]) -> Result<usize> {
        let capacity = blob_size("bn_save", buffer)?;
        let mut size = 0i64;
        check(unsafe { sys::bn_save(self.raw.as_ptr(), buffer.as_mut_ptr().cast(), capacity, &mut size) })?;
        Ok(size as usize)
    }

    /// Makes this layer the saved one (`bn_load`). The blob must be of a layer of the same
    /// structure: same dtype, center, scale, renorm and ghost batches on/off
    /// (`BN_ERR_INVALID_ARGUMENT` otherwise), same rank and kept sizes (`BN_ERR_SHAPE`). A
    /// damaged or foreign blob is `BN_ERR_CORRUPT_DATA`. On any failure the layer is as it
    /// was. The layer keeps its thread bound; its saved forward is dropped.
    pub fn load(&mut self, blob: &[u8]) -> Result<()> {
        let size = blob_size("bn_load", blob)?;
        check(unsafe { sys::bn_load(self.raw.as_ptr(), blob.as_ptr().cast(), size) })?;
        self.shape = input_shape(blob);
        Ok(())
    }

    /// A new layer from a blob of [`Layer::save`], configuration included
    /// (`bn_create_from_state`). A blob of a layer of another dtype than `T` is
    /// `BN_ERR_INVALID_ARGUMENT` (checked after the library has accepted the blob; see
    /// [`state_dtype`]).
    pub fn from_state(blob: &[u8]) -> Result<Layer<T>> {
        const F: &str = "bn_create_from_state";
        let size = blob_size(F, blob)?;
        let mut raw = ptr::null_mut();
        check(unsafe { sys::bn_create_from_state(blob.as_ptr().cast(), size, &mut raw) })?;
        let layer = Layer::<T>::adopt(F, raw, input_shape(blob))?;
        layer.require_own_dtype(F)?;
        Ok(layer)
    }

    /// Writes [`Layer::save`]'s blob to the file at `path`, replaced atomically
    /// (`bn_save_file`: a temporary file in the same directory, fsync'ed and renamed). A
    /// file-system error is `BN_ERR_INVALID_ARGUMENT` with the system's reason.
    pub fn save_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = c_path("bn_save_file", path.as_ref())?;
        check(unsafe { sys::bn_save_file(self.raw.as_ptr(), path.as_ptr()) })
    }

    /// [`Layer::load`] from the file at `path` (`bn_load_file`). A file that cannot be read is
    /// `BN_ERR_INVALID_ARGUMENT`, one that is not a valid state `BN_ERR_CORRUPT_DATA`.
    pub fn load_file(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = c_path("bn_load_file", path.as_ref())?;
        check(unsafe { sys::bn_load_file(self.raw.as_ptr(), path.as_ptr()) })?;
        // The loaded input shape, from the layer's own blob. Saving can only fail for want of
        // memory; the kept sizes are the same either way, so the old shape stays usable.
        if let Ok(blob) = self.save() {
            self.shape = input_shape(&blob);
        }
        Ok(())
    }

    /// [`Layer::from_state`] from the file at `path` (`bn_create_from_file`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Layer<T>> {
        const F: &str = "bn_create_from_file";
        let path = c_path(F, path.as_ref())?;
        let mut raw = ptr::null_mut();
        check(unsafe { sys::bn_create_from_file(path.as_ptr(), &mut raw) })?;
        let mut layer = Layer::<T>::adopt(F, raw, Vec::new())?;
        layer.require_own_dtype(F)?;
        layer.shape = input_shape(&layer.save()?);
        Ok(layer)
    }

    /// How many forwards have updated the moving statistics (PyTorch's num_batches_tracked).
    pub fn step_count(&self) -> Result<i64> {
        let mut count = 0i64;
        check(unsafe { sys::bn_get_step_count(self.raw.as_ptr(), &mut count) })?;
        Ok(count)
    }

    /// Sets the step counter (>= 0), e.g. to PyTorch's num_batches_tracked, so that a
    /// cumulative average continues where it was. Changes nothing else.
    pub fn set_step_count(&mut self, count: i64) -> Result<()> {
        check(unsafe { sys::bn_set_step_count(self.raw.as_ptr(), count) })
    }

    /// An error naming `function` unless the library's layer is of `T`'s dtype.
    fn require_own_dtype(&self, function: &str) -> Result<()> {
        let dtype = self.dtype()?;
        if dtype as i32 == T::DTYPE {
            return Ok(());
        }
        let want = Dtype::from_raw(T::DTYPE).map_or_else(|| T::DTYPE.to_string(), |d| format!("{d:?}"));
        Err(Error::wrapper(
            sys::BN_ERR_INVALID_ARGUMENT,
            format!(
                "{function}: the state is of a {dtype:?} layer but this Layer computes in {want} \
                 (checked by the Rust wrapper; state_dtype tells a blob's dtype)"
            ),
        ))
    }
}
