package batchnorm

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var stateShape = []int{2, 3, 2, 2}

// data is deterministic, different for every step, with a per-channel offset.
func data(step, n int) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(math.Sin(float64(i)*0.37+float64(step))*1.5 + float64(i%3)*0.25)
	}
	return out
}

func bitsOf(v []float32) []uint32 {
	out := make([]uint32, len(v))
	for i, x := range v {
		out[i] = math.Float32bits(x)
	}
	return out
}

func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	g, w := bitsOf(got), bitsOf(want)
	if len(g) != len(w) {
		t.Fatalf("%s: %d values, want %d", what, len(g), len(w))
	}
	for i := range g {
		if g[i] != w[i] {
			t.Fatalf("%s[%d] = %v (%#x), want %v (%#x)", what, i, got[i], g[i], want[i], w[i])
		}
	}
}

// params is every parameter and statistic of a layer without renorm.
func params(t *testing.T, l *Layer) [][]float32 {
	t.Helper()
	var out [][]float32
	for _, p := range []Param{Gamma, Beta, MovingMean, MovingVariance} {
		v, err := l.Param(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

func mustSave(t *testing.T, l *Layer) []byte {
	t.Helper()
	blob, err := l.Save()
	if err != nil {
		t.Fatal(err)
	}
	return blob
}

func stateConfig() Config {
	cfg := DefaultConfig()
	cfg.Axes = []int{1}
	cfg.Momentum = 0.9
	return cfg
}

// trained is a layer after `steps` training steps (forward and backward), gamma and beta moved.
func trained(t *testing.T, steps int) *Layer {
	t.Helper()
	l := mustLayer(t, stateConfig(), stateShape)
	if err := l.SetTraining(true); err != nil {
		t.Fatal(err)
	}
	y, dx := make([]float32, 24), make([]float32, 24)
	for step := 0; step < steps; step++ {
		x := data(step, 24)
		if err := l.Forward(stateShape, x, y); err != nil {
			t.Fatal(err)
		}
		if _, _, err := l.Backward(stateShape, x, data(step+100, 24), dx); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.SetParam(Gamma, data(7, 3)); err != nil {
		t.Fatal(err)
	}
	if err := l.SetParam(Beta, data(8, 3)); err != nil {
		t.Fatal(err)
	}
	return l
}

// sameFromNowOn runs training steps and an inference on a and b: bitwise the same results.
func sameFromNowOn(t *testing.T, a, b *Layer) {
	t.Helper()
	for step := 10; step < 13; step++ {
		x, dy := data(step, 24), data(step+50, 24)
		ya, yb := make([]float32, 24), make([]float32, 24)
		if err := a.Forward(stateShape, x, ya); err != nil {
			t.Fatal(err)
		}
		if err := b.Forward(stateShape, x, yb); err != nil {
			t.Fatal(err)
		}
		sameBits(t, "training y", yb, ya)
		dxa, dxb := make([]float32, 24), make([]float32, 24)
		dga, dba, err := a.Backward(stateShape, x, dy, dxa)
		if err != nil {
			t.Fatal(err)
		}
		dgb, dbb, err := b.Backward(stateShape, x, dy, dxb)
		if err != nil {
			t.Fatal(err)
		}
		sameBits(t, "dx", dxb, dxa)
		sameBits(t, "dgamma", dgb, dga)
		sameBits(t, "dbeta", dbb, dba)
		pa, pb := params(t, a), params(t, b)
		for i := range pa {
			sameBits(t, "statistics", pb[i], pa[i])
		}
	}
	for _, l := range []*Layer{a, b} {
		if err := l.SetTraining(false); err != nil {
			t.Fatal(err)
		}
	}
	x := data(20, 24)
	ya, yb := make([]float32, 24), make([]float32, 24)
	if err := a.Forward(stateShape, x, ya); err != nil {
		t.Fatal(err)
	}
	if err := b.Forward(stateShape, x, yb); err != nil {
		t.Fatal(err)
	}
	sameBits(t, "inference y", yb, ya)
}

func TestStateRoundTrip(t *testing.T) {
	saved := trained(t, 3)
	blob := mustSave(t, saved)
	if len(blob) != 572+4*3*4 || !bytes.HasPrefix(blob, []byte("\x89BNS\r\n\x1a\n")) {
		t.Fatalf("blob of %d bytes starting % x; want 620 bytes and the state magic", len(blob), blob[:8])
	}

	restored, err := NewLayerFromState(blob)
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	if restored.NumFeatures() != 3 {
		t.Fatalf("NumFeatures = %d", restored.NumFeatures())
	}
	want, got := params(t, saved), params(t, restored)
	for i := range want {
		sameBits(t, "param", got[i], want[i])
	}
	if n, err := restored.StepCount(); err != nil || n != 3 {
		t.Fatalf("StepCount = %d, %v; want 3", n, err)
	}
	if again := mustSave(t, restored); !bytes.Equal(again, blob) {
		t.Fatal("the restored layer saves other bytes")
	}
	// No forward kept for Backward.
	x := data(0, 24)
	if _, _, err := restored.Backward(stateShape, x, x, nil); asError(t, err).Status != StatusState {
		t.Fatalf("Backward after NewLayerFromState: %v, want StatusState", err)
	}

	// Load into a layer built for another batch size.
	loaded := mustLayer(t, stateConfig(), []int{5, 3, 2, 2})
	if err := loaded.Load(blob); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mustSave(t, loaded), blob) {
		t.Fatal("the loaded layer saves other bytes")
	}

	sameFromNowOn(t, saved, restored)
	again, err := NewLayerFromState(blob)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	sameFromNowOn(t, loaded, again)
}

func TestStateDamagedBlobChangesNothing(t *testing.T) {
	blob := mustSave(t, trained(t, 2))
	l := trained(t, 5)
	before := mustSave(t, l)

	// Every single-byte flip (the CRC-32C catches them all), truncations, a trailing byte.
	var damaged [][]byte
	for i := range blob {
		b := append([]byte(nil), blob...)
		b[i] ^= 0x40
		damaged = append(damaged, b)
	}
	damaged = append(damaged, blob[:len(blob)-1], blob[:7], nil, append(append([]byte(nil), blob...), 0))
	for i, bad := range damaged {
		e := asError(t, l.Load(bad))
		if e.Status != StatusCorruptData || !strings.Contains(e.Message, "bn_load") {
			t.Fatalf("case %d: %+v, want StatusCorruptData from bn_load", i, e)
		}
		nl, err := NewLayerFromState(bad)
		if nl != nil || asError(t, err).Status != StatusCorruptData {
			t.Fatalf("case %d: NewLayerFromState = %v, %v; want StatusCorruptData", i, nl, err)
		}
	}
	if !bytes.Equal(mustSave(t, l), before) {
		t.Fatal("a refused Load changed the layer")
	}
	if n, _ := l.StepCount(); n != 5 {
		t.Fatalf("StepCount = %d after refused loads, want 5", n)
	}
	if err := l.Load(blob); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mustSave(t, l), blob) {
		t.Fatal("the intact blob did not load")
	}
}

func TestStateOfAnotherStructure(t *testing.T) {
	l := trained(t, 1)
	before := mustSave(t, l)
	// Other kept sizes (4 channels): StatusShape from bn_load.
	wide := mustLayer(t, stateConfig(), []int{2, 4, 2, 2})
	if e := asError(t, l.Load(mustSave(t, wide))); e.Status != StatusShape || !strings.Contains(e.Message, "bn_load") {
		t.Fatalf("got %+v, want StatusShape from bn_load", e)
	}
	// States of other dtypes (committed blobs of the library's own tests): bn_load refuses
	// them; NewLayerFromState accepts only float32.
	corpus := "../../tests/fuzz/corpus/load/"
	for _, c := range []struct{ file, dtype string }{
		{"valid_01_f64_NCHW_axis_1__momentum_0_9.bnstate", "float64"},
		{"valid_02_bf16_NHWC__fused_path.bnstate", "bfloat16"},
	} {
		blob, err := os.ReadFile(corpus + c.file)
		if err != nil {
			t.Fatal(err)
		}
		nl, err := NewLayerFromState(blob)
		e := asError(t, err)
		if nl != nil || e.Status != StatusInvalidArgument || !strings.Contains(e.Message, c.dtype) {
			t.Fatalf("%s: %+v, want StatusInvalidArgument naming %s", c.file, e, c.dtype)
		}
		if e := asError(t, l.Load(blob)); e.Status != StatusInvalidArgument && e.Status != StatusShape {
			t.Fatalf("%s: Load: %+v, want a refusal of another structure", c.file, e)
		}
	}
	if !bytes.Equal(mustSave(t, l), before) {
		t.Fatal("a refused Load changed the layer")
	}
	f32, err := os.ReadFile(corpus + "valid_00_f32_rank_2__the_defaults.bnstate")
	if err != nil {
		t.Fatal(err)
	}
	nl, err := NewLayerFromState(f32)
	if err != nil {
		t.Fatal(err)
	}
	nl.Close()
}

func TestStateFiles(t *testing.T) {
	l := trained(t, 2)
	path := filepath.Join(t.TempDir(), "layer.bnstate")
	if err := l.SaveFile(path); err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, mustSave(t, l)) {
		t.Fatal("SaveFile wrote other bytes than Save")
	}
	restored, err := NewLayerFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	if !bytes.Equal(mustSave(t, restored), onDisk) {
		t.Fatal("NewLayerFromFile: other state")
	}
	other := mustLayer(t, stateConfig(), []int{7, 3, 1, 1})
	if err := other.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mustSave(t, other), onDisk) {
		t.Fatal("LoadFile: other state")
	}

	// A damaged file: StatusCorruptData naming bn_load_file, the layer unchanged.
	bad := append([]byte(nil), onDisk...)
	bad[len(bad)-1] ^= 1
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	fresh := mustLayer(t, stateConfig(), stateShape)
	before := mustSave(t, fresh)
	if e := asError(t, fresh.LoadFile(path)); e.Status != StatusCorruptData || !strings.Contains(e.Message, "bn_load_file") {
		t.Fatalf("got %+v, want StatusCorruptData from bn_load_file", e)
	}
	if !bytes.Equal(mustSave(t, fresh), before) {
		t.Fatal("a refused LoadFile changed the layer")
	}
	// A missing file: the system's reason; a NUL in the path: refused here.
	missing := filepath.Join(t.TempDir(), "missing.bnstate")
	if e := asError(t, fresh.LoadFile(missing)); e.Status != StatusInvalidArgument || !strings.Contains(e.Message, "bn_load_file") {
		t.Fatalf("got %+v, want StatusInvalidArgument from bn_load_file", e)
	}
	if _, err := NewLayerFromFile(missing); asError(t, err).Status != StatusInvalidArgument {
		t.Fatalf("NewLayerFromFile(missing): %v", err)
	}
	if e := asError(t, l.SaveFile(path+"\x00.x")); e.Status != StatusInvalidArgument || !strings.Contains(e.Message, "NUL") {
		t.Fatalf("got %+v, want StatusInvalidArgument for a NUL in the path", e)
	}
}

func TestStepCount(t *testing.T) {
	l := trained(t, 3)
	if n, err := l.StepCount(); err != nil || n != 3 {
		t.Fatalf("StepCount = %d, %v; want 3", n, err)
	}
	if err := l.SetStepCount(1000); err != nil {
		t.Fatal(err)
	}
	e := asError(t, l.SetStepCount(-1))
	if e.Status != StatusInvalidArgument || !strings.Contains(e.Message, "bn_set_step_count") {
		t.Fatalf("got %+v, want StatusInvalidArgument from bn_set_step_count", e)
	}
	nl, err := NewLayerFromState(mustSave(t, l))
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	if n, _ := nl.StepCount(); n != 1000 {
		t.Fatalf("StepCount after a round trip = %d, want 1000", n)
	}

	// PyTorch momentum=None: the next batch weighs 1/(count + 1). Batch mean 4, count 3.
	cfg := DefaultConfig()
	cfg.CumulativeAverage = true
	c := mustLayer(t, cfg, []int{4, 1})
	if err := c.SetTraining(true); err != nil {
		t.Fatal(err)
	}
	if err := c.SetStepCount(3); err != nil {
		t.Fatal(err)
	}
	if err := c.Forward([]int{4, 1}, []float32{1, 3, 5, 7}, make([]float32, 4)); err != nil {
		t.Fatal(err)
	}
	if m, _ := c.Param(MovingMean); m[0] != 1 {
		t.Fatalf("moving mean %v, want 1 (0*3/4 + 4/4)", m)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Save(); err != ErrClosed {
		t.Fatalf("Save after Close: %v", err)
	}
}
