package batchnorm

// State files (since 1.1.0): a layer's whole state as one self-checking byte string, in the
// library's versioned format (docs/state_format.md): the configuration, the input shape, every
// parameter and statistic bitwise, the training and mode flags and the step counter; not the
// forward kept for Backward, nor the thread bound.

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#include <stdlib.h>
#include "bng.h"

static bn_status bng_save(bn_layer* l, void* buf, int64_t capacity, int64_t* size, char* err) {
	return bng_keep(bn_save(l, buf, capacity, size), err);
}
static bn_status bng_load(bn_layer* l, const void* data, int64_t size, char* err) {
	return bng_keep(bn_load(l, data, size), err);
}
static bn_status bng_save_file(bn_layer* l, const char* path, char* err) {
	return bng_keep(bn_save_file(l, path), err);
}
static bn_status bng_load_file(bn_layer* l, const char* path, char* err) {
	return bng_keep(bn_load_file(l, path), err);
}
// A layer from a blob (path NULL) or a file, and its dtype; the layer is destroyed again when
// the dtype cannot be read.
static bn_status bng_create_from(const void* data, int64_t size, const char* path, bn_layer** out,
                                 bn_dtype* dtype, char* err) {
	bn_layer* l = NULL;
	bn_status s = path ? bn_create_from_file(path, &l) : bn_create_from_state(data, size, &l);
	if (s == BN_OK) {
		s = bn_get_dtype(l, dtype);
		if (s != BN_OK) {
			bng_keep(s, err);
			bn_destroy(l);
			return s;
		}
		*out = l;
	}
	return bng_keep(s, err);
}
static bn_status bng_get_step_count(bn_layer* l, int64_t* count, char* err) {
	return bng_keep(bn_get_step_count(l, count), err);
}
static bn_status bng_set_step_count(bn_layer* l, int64_t count, char* err) {
	return bng_keep(bn_set_step_count(l, count), err);
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"strings"
	"unsafe"
)

// dtypeNames names the library's dtypes for messages.
var dtypeNames = map[C.bn_dtype]string{C.BN_F32: "float32", C.BN_F64: "float64",
	C.BN_BF16: "bfloat16", C.BN_F16: "float16"}

// bytesPtr points at a blob's data; an empty blob gets a dummy byte, so that the library sees
// a blob of size 0 (refused as truncated) rather than a NULL pointer.
func bytesPtr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return unsafe.Pointer(new(byte))
	}
	return unsafe.Pointer(&b[0])
}

// cPath is path as a C string (free it with C.free), or an error for a path holding a NUL
// byte, which C would cut short.
func cPath(method, path string) (*C.char, error) {
	if strings.IndexByte(path, 0) >= 0 {
		return nil, &Error{StatusInvalidArgument, fmt.Sprintf("%s: path %q contains a NUL byte", method, path)}
	}
	return C.CString(path), nil
}

// Save is the layer's state as bytes (bn_save): its configuration, input shape, parameters
// and statistics bitwise, training and mode flags and step counter.
func (l *Layer) Save() ([]byte, error) {
	h, err := l.handle()
	if err != nil {
		return nil, err
	}
	var size C.int64_t
	var msg errBuf
	s := C.bng_save(h, nil, 0, &size, msg.ptr())
	if err := check(s, &msg); err != nil {
		runtime.KeepAlive(l)
		return nil, err
	}
	blob := make([]byte, int(size))
	s = C.bng_save(h, bytesPtr(blob), size, &size, msg.ptr())
	runtime.KeepAlive(l)
	if err := check(s, &msg); err != nil {
		return nil, err
	}
	return blob[:int(size)], nil
}

// Load makes the layer the saved one (bn_load). The blob must be of a layer of the same
// structure: same dtype, center, scale, renorm and ghost batches on/off (StatusInvalidArgument
// otherwise), same rank and kept sizes (StatusShape); a damaged or foreign blob is
// StatusCorruptData. On any failure the layer is as it was. The loaded layer has no forward
// kept for Backward; it keeps its thread bound.
func (l *Layer) Load(blob []byte) error {
	return l.do(func(h *C.bn_layer, m *C.char) C.bn_status {
		return C.bng_load(h, bytesPtr(blob), C.int64_t(len(blob)), m)
	})
}

// doPath is do for a call taking a file path: a closed layer's error first, then a path the
// library cannot take (an embedded NUL), then the call with the path as a C string.
func (l *Layer) doPath(method, path string, fn func(h *C.bn_layer, p, msg *C.char) C.bn_status) error {
	if _, err := l.handle(); err != nil {
		return err
	}
	cp, err := cPath(method, path)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(cp))
	return l.do(func(h *C.bn_layer, m *C.char) C.bn_status { return fn(h, cp, m) })
}

// SaveFile writes Save's blob to the file at path, replaced atomically (bn_save_file: a
// temporary file in the same directory, fsync'ed and renamed). A file-system error is
// StatusInvalidArgument with the system's reason.
func (l *Layer) SaveFile(path string) error {
	return l.doPath("SaveFile", path, func(h *C.bn_layer, p, m *C.char) C.bn_status { return C.bng_save_file(h, p, m) })
}

// LoadFile is Load from the file at path (bn_load_file). A file that cannot be read is
// StatusInvalidArgument, one that is not a valid state StatusCorruptData.
func (l *Layer) LoadFile(path string) error {
	return l.doPath("LoadFile", path, func(h *C.bn_layer, p, m *C.char) C.bn_status { return C.bng_load_file(h, p, m) })
}

// newLayerFrom builds a layer from a blob or, with path non-nil, a file; only float32 states,
// the type this package computes in.
func newLayerFrom(method string, blob []byte, path *C.char) (*Layer, error) {
	var h *C.bn_layer
	var dtype C.bn_dtype
	var msg errBuf
	s := C.bng_create_from(bytesPtr(blob), C.int64_t(len(blob)), path, &h, &dtype, msg.ptr())
	if err := check(s, &msg); err != nil {
		return nil, err
	}
	if dtype != C.BN_F32 {
		C.bn_destroy(h)
		return nil, &Error{StatusInvalidArgument, fmt.Sprintf(
			"%s: the state is of a %s layer but this package computes in float32 only", method, dtypeNames[dtype])}
	}
	l := &Layer{h: h, features: int(C.bn_num_features(h))}
	runtime.SetFinalizer(l, (*Layer).Close)
	return l, nil
}

// NewLayerFromState is a new layer from a Save blob, configuration included
// (bn_create_from_state). A valid state of a layer of another dtype than float32 is
// StatusInvalidArgument.
func NewLayerFromState(blob []byte) (*Layer, error) {
	return newLayerFrom("NewLayerFromState", blob, nil)
}

// NewLayerFromFile is NewLayerFromState from the file at path (bn_create_from_file).
func NewLayerFromFile(path string) (*Layer, error) {
	cp, err := cPath("NewLayerFromFile", path)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cp))
	return newLayerFrom("NewLayerFromFile", nil, cp)
}

// StepCount is how many forwards have updated the moving statistics (PyTorch's
// num_batches_tracked).
func (l *Layer) StepCount() (int64, error) {
	h, err := l.handle()
	if err != nil {
		return 0, err
	}
	var count C.int64_t
	var msg errBuf
	s := C.bng_get_step_count(h, &count, msg.ptr())
	runtime.KeepAlive(l)
	return int64(count), check(s, &msg)
}

// SetStepCount sets the step counter (>= 0), e.g. to PyTorch's num_batches_tracked, so that a
// cumulative average continues where it was. It changes nothing else.
func (l *Layer) SetStepCount(count int64) error {
	return l.do(func(h *C.bn_layer, m *C.char) C.bn_status {
		return C.bng_set_step_count(h, C.int64_t(count), m)
	})
}
