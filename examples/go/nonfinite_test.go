package batchnorm

import (
	"bytes"
	"math"
	"strings"
	"testing"
)

// 4x2, axis -1: feature 0 holds the bad value, feature 1 is clean (values 1 5 1 5: mean 3,
// biased variance 4; with gamma 1, beta 0, epsilon 0 its output is -1 1 -1 1).
var nfShape = []int{4, 2}

const sentinel = float32(12345)

func xWith(bad float32) []float32 { return []float32{0, 1, bad, 5, 2, 1, 2, 5} }

func nfLayer(t *testing.T, p NonfinitePolicy) *Layer {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Momentum, cfg.Epsilon, cfg.Nonfinite = 0.5, 0, p
	l := mustLayer(t, cfg, nfShape)
	if err := l.SetTraining(true); err != nil {
		t.Fatal(err)
	}
	return l
}

func filled(n int) []float32 {
	y := make([]float32, n)
	for i := range y {
		y[i] = sentinel
	}
	return y
}

func cleanFeature(t *testing.T, y []float32) {
	t.Helper()
	sameBits(t, "the clean feature's output", []float32{y[1], y[3], y[5], y[7]}, []float32{-1, 1, -1, 1})
}

func TestNonfiniteRefusedByDefault(t *testing.T) {
	if DefaultConfig().Nonfinite != NonfiniteRefuse {
		t.Fatal("DefaultConfig does not refuse non-finite batches")
	}
	inf := float32(math.Inf(1))
	for _, bad := range []float32{float32(math.NaN()), inf, -inf} {
		l := nfLayer(t, NonfiniteRefuse)
		before := mustSave(t, l)
		y := filled(8)
		e := asError(t, l.Forward(nfShape, xWith(bad), y))
		if e.Status != StatusNonfinite || !strings.Contains(e.Message, "bn_forward") ||
			!strings.Contains(e.Message, "feature 0") {
			t.Fatalf("%v: %+v, want StatusNonfinite from bn_forward naming feature 0", bad, e)
		}
		if e.Status.String() != "BN_ERR_NONFINITE" {
			t.Fatalf("status name %q", e.Status.String())
		}
		sameBits(t, "y of a refused forward", y, filled(8))
		if !bytes.Equal(mustSave(t, l), before) {
			t.Fatalf("%v: a refused forward changed the layer", bad)
		}
		if n, _ := l.StepCount(); n != 0 {
			t.Fatalf("StepCount %d after a refusal", n)
		}
		// In place: x is the output and stays as it was.
		xy := xWith(bad)
		if e := asError(t, l.Forward(nfShape, xy, xy)); e.Status != StatusNonfinite {
			t.Fatalf("in place: %+v", e)
		}
		sameBits(t, "x of a refused in-place forward", xy, xWith(bad))
	}
	// Inference never refuses: moving mean 0, variance 1, epsilon 0 give y = x.
	l := nfLayer(t, NonfiniteRefuse)
	if err := l.SetTraining(false); err != nil {
		t.Fatal(err)
	}
	y := filled(8)
	if err := l.Forward(nfShape, xWith(float32(math.NaN())), y); err != nil {
		t.Fatal(err)
	}
	if !math.IsNaN(float64(y[2])) || y[3] != 5 {
		t.Fatalf("inference y = %v", y)
	}
}

func TestNonfinitePropagate(t *testing.T) {
	// Set live, after a refusal under the default.
	l := nfLayer(t, NonfiniteRefuse)
	x, y := xWith(float32(math.NaN())), filled(8)
	if e := asError(t, l.Forward(nfShape, x, y)); e.Status != StatusNonfinite {
		t.Fatalf("%+v", e)
	}
	if err := l.SetNonfinitePolicy(NonfinitePropagate); err != nil {
		t.Fatal(err)
	}
	if err := l.Forward(nfShape, x, y); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 8; i += 2 {
		if !math.IsNaN(float64(y[i])) {
			t.Fatalf("y[%d] = %v, want NaN (feature 0)", i, y[i])
		}
	}
	cleanFeature(t, y)
	mean, _ := l.Param(MovingMean)
	variance, _ := l.Param(MovingVariance)
	if !math.IsNaN(float64(mean[0])) || !math.IsNaN(float64(variance[0])) || mean[1] != 1.5 || variance[1] != 2.5 {
		t.Fatalf("moving mean %v, variance %v; want NaN and 1.5, NaN and 2.5", mean, variance)
	}
	if n, _ := l.StepCount(); n != 1 {
		t.Fatalf("StepCount %d, want 1", n)
	}
}

func TestNonfiniteSkipUpdate(t *testing.T) {
	prop, skip := nfLayer(t, NonfinitePropagate), nfLayer(t, NonfiniteSkipUpdate)
	before := mustSave(t, skip)
	x := xWith(float32(math.Inf(1)))
	yp, ys := filled(8), filled(8)
	if err := prop.Forward(nfShape, x, yp); err != nil {
		t.Fatal(err)
	}
	if err := skip.Forward(nfShape, x, ys); err != nil {
		t.Fatal(err)
	}
	sameBits(t, "SkipUpdate y (Propagate's)", ys, yp)
	if !math.IsNaN(float64(ys[0])) && !math.IsInf(float64(ys[0]), 0) {
		t.Fatalf("y[0] = %v, want non-finite", ys[0])
	}
	cleanFeature(t, ys)
	// The moving statistics and the step counter as they were: the whole state is.
	if !bytes.Equal(mustSave(t, skip), before) {
		t.Fatal("SkipUpdate changed the saved state")
	}
	// The forward is kept: Backward works and equals Propagate's bitwise.
	dy := []float32{1, 0, 0, 1, 0, 1, 0, 0}
	dxp, dxs := make([]float32, 8), make([]float32, 8)
	dgp, dbp, err := prop.Backward(nfShape, x, dy, dxp)
	if err != nil {
		t.Fatal(err)
	}
	dgs, dbs, err := skip.Backward(nfShape, x, dy, dxs)
	if err != nil {
		t.Fatal(err)
	}
	sameBits(t, "dx", dxs, dxp)
	sameBits(t, "dgamma", dgs, dgp)
	sameBits(t, "dbeta", dbs, dbp)
	// Feature 1: dy 0 1 1 0, sigma 2, mean(dy*xhat) 0, so dx = (dy - 1/2)/2.
	sameBits(t, "dx of the clean feature", []float32{dxs[1], dxs[3], dxs[5], dxs[7]}, []float32{-0.25, 0.25, 0.25, -0.25})
	// A clean batch updates again: batch means 1 and 3, momentum 0.5.
	if err := skip.Forward(nfShape, xWith(0), make([]float32, 8)); err != nil {
		t.Fatal(err)
	}
	mean, _ := skip.Param(MovingMean)
	sameBits(t, "moving mean", mean, []float32{0.5, 1.5})
}

func TestNonfiniteUnknownPolicy(t *testing.T) {
	l := nfLayer(t, NonfiniteRefuse)
	if e := asError(t, l.SetNonfinitePolicy(3)); e.Status != StatusInvalidArgument ||
		!strings.Contains(e.Message, "bn_set_nonfinite_policy") {
		t.Fatalf("got %+v, want StatusInvalidArgument from bn_set_nonfinite_policy", e)
	}
	cfg := DefaultConfig()
	cfg.Nonfinite = -1
	_, err := NewLayer(cfg, nfShape)
	if e := asError(t, err); e.Status != StatusInvalidArgument || !strings.Contains(e.Message, "bn_config_set_nonfinite_policy") {
		t.Fatalf("got %+v, want StatusInvalidArgument from bn_config_set_nonfinite_policy", e)
	}
	// The layer still refuses.
	if e := asError(t, l.Forward(nfShape, xWith(float32(math.NaN())), make([]float32, 8))); e.Status != StatusNonfinite {
		t.Fatalf("%+v", e)
	}
}
