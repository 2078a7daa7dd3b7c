package batchnorm

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// smallCase reads ../expected_small_case.txt (see examples/README.md): name, values.
func smallCase(t *testing.T) map[string][]float64 {
	t.Helper()
	f, err := os.Open("../expected_small_case.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	items := map[string][]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		for _, v := range fields[1:] {
			x, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", fields[0], err)
			}
			items[fields[0]] = append(items[fields[0]], x)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return items
}

func ints(v []float64) []int {
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}

func float32s(v []float64) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}

// near fails the test for every got[i] farther than tol from want[i].
func near(t *testing.T, what string, got []float32, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		if d := math.Abs(float64(got[i]) - want[i]); !(d <= tol) {
			t.Errorf("%s[%d] = %.9g, want %.9g (|diff| %.3g > %.3g)", what, i, got[i], want[i], d, tol)
		}
	}
}

func mustLayer(t *testing.T, cfg Config, shape []int) *Layer {
	t.Helper()
	l, err := NewLayer(cfg, shape)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// The shared small case: one training step of BatchNormalization(axis=1, momentum=0.9).
func TestSmallCase(t *testing.T) {
	c := smallCase(t)
	cfg := DefaultConfig()
	cfg.Axes = ints(c["axis"])
	cfg.Momentum = c["momentum"][0]
	cfg.Epsilon = c["epsilon"][0]
	shape := ints(c["shape"])
	l := mustLayer(t, cfg, shape)
	if l.NumFeatures() != 3 {
		t.Fatalf("NumFeatures = %d, want 3", l.NumFeatures())
	}
	if fused, err := l.Fused(); err != nil || !fused {
		t.Fatalf("Fused = %v, %v; want true (float32 rank-4, one channel axis)", fused, err)
	}
	for _, p := range []struct {
		which Param
		name  string
	}{{Gamma, "gamma"}, {Beta, "beta"}} {
		if err := l.SetParam(p.which, float32s(c[p.name])); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.SetTraining(true); err != nil {
		t.Fatal(err)
	}
	x := float32s(c["x"])
	y := make([]float32, len(x))
	if err := l.Forward(shape, x, y); err != nil {
		t.Fatal(err)
	}
	tol := c["tolerance"][0]
	checked := 0
	near(t, "y", y, c["y"], tol)
	checked += len(c["y"])
	for _, p := range []struct {
		which Param
		name  string
	}{{MovingMean, "moving_mean"}, {MovingVariance, "moving_variance"}} {
		got, err := l.Param(p.which)
		if err != nil {
			t.Fatal(err)
		}
		near(t, p.name, got, c[p.name], tol)
		checked += len(c[p.name])
	}
	if checked != 30 {
		t.Fatalf("checked %d results, the small case has 30", checked)
	}
}

// A training step, its backward and the inference that follows, against the Keras formulas
// worked out here in float64: one feature, x = 1 3 5 7 (mean 4, biased variance 5).
func TestTrainingStepByHand(t *testing.T) {
	cfg := DefaultConfig() // axis -1; rank 2, so the non-fused path (biased moving variance)
	cfg.Momentum = 0.5
	shape := []int{4, 1}
	l := mustLayer(t, cfg, shape)
	if fused, err := l.Fused(); err != nil || fused {
		t.Fatalf("Fused = %v, %v; want false", fused, err)
	}
	if err := l.SetParam(Gamma, []float32{2}); err != nil {
		t.Fatal(err)
	}
	if err := l.SetParam(Beta, []float32{1}); err != nil {
		t.Fatal(err)
	}
	if err := l.SetTraining(true); err != nil {
		t.Fatal(err)
	}
	x := []float32{1, 3, 5, 7}
	y := make([]float32, 4)
	if err := l.Forward(shape, x, y); err != nil {
		t.Fatal(err)
	}
	sigma := math.Sqrt(5 + 1e-3)
	xhat := []float64{-3 / sigma, -1 / sigma, 1 / sigma, 3 / sigma}
	want := make([]float64, 4)
	for i := range want {
		want[i] = 2*xhat[i] + 1
	}
	near(t, "y", y, want, 1e-6)
	for _, p := range []struct {
		which Param
		want  float64
	}{{BatchMean, 4}, {BatchVariance, 5}, {MovingMean, 0.5*0 + 0.5*4}, {MovingVariance, 0.5*1 + 0.5*5}} {
		got, err := l.Param(p.which)
		if err != nil {
			t.Fatal(err)
		}
		near(t, fmt.Sprint("param ", p.which), got, []float64{p.want}, 1e-6)
	}

	// dy = 1 0 0 0: dbeta = sum dy = 1, dgamma = sum dy*xhat = xhat0, and
	// dx_i = gamma/(m*sigma) * (m*dy_i - sum dy - xhat_i * sum dy*xhat).
	dy := []float32{1, 0, 0, 0}
	dx := make([]float32, 4)
	dgamma, dbeta, err := l.Backward(shape, x, dy, dx)
	if err != nil {
		t.Fatal(err)
	}
	near(t, "dbeta", dbeta, []float64{1}, 1e-6)
	near(t, "dgamma", dgamma, []float64{xhat[0]}, 1e-6)
	wantDx := make([]float64, 4)
	for i := range wantDx {
		wantDx[i] = 2 / (4 * sigma) * (4*float64(dy[i]) - 1 - xhat[i]*xhat[0])
	}
	near(t, "dx", dx, wantDx, 1e-6)

	// Inference: the moving statistics (mean 2, variance 3), in place (y may be x).
	if err := l.SetTraining(false); err != nil {
		t.Fatal(err)
	}
	xi := []float32{1, 3, 5, 7}
	if err := l.Forward(shape, xi, xi); err != nil {
		t.Fatal(err)
	}
	scale := 2 / math.Sqrt(3+1e-3)
	for i := range want {
		want[i] = scale*(float64(x[i])-2) + 1
	}
	near(t, "inference y", xi, want, 1e-6)
	fs, fsh, err := l.Fold()
	if err != nil {
		t.Fatal(err)
	}
	near(t, "fold scale", fs, []float64{scale}, 1e-6)
	near(t, "fold shift", fsh, []float64{1 - 2*scale}, 1e-6)
}

func asError(t *testing.T, err error) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want a *Error", err, err)
	}
	return e
}

func TestErrors(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Axes = []int{1}
	l := mustLayer(t, cfg, []int{2, 3, 2, 2})

	// A shape the layer was not built for: the library's status and message.
	x := make([]float32, 2*4*2*2)
	e := asError(t, l.Forward([]int{2, 4, 2, 2}, x, x))
	if int32(e.Status) != 2 || !strings.Contains(e.Message, "bn_forward") ||
		!strings.Contains(e.Message, "shape[1]=4") {
		t.Fatalf("got %+v, want status 2 (BN_ERR_SHAPE) and a bn_forward message naming shape[1]=4", e)
	}
	if got := e.Error(); !strings.HasPrefix(got, "batchnorm: BN_ERR_SHAPE: bn_forward") {
		t.Fatalf("Error() = %q", got)
	}

	// Slices that do not fit the shape never reach the library.
	e = asError(t, l.Forward([]int{2, 3, 2, 2}, make([]float32, 23), make([]float32, 24)))
	if e.Status != StatusInvalidArgument || !strings.Contains(e.Message, "len(x) = 23") {
		t.Fatalf("got %+v, want StatusInvalidArgument naming len(x) = 23", e)
	}

	// Backward with no forward to differentiate.
	x = make([]float32, 24)
	_, _, err := l.Backward([]int{2, 3, 2, 2}, x, x, nil)
	if e = asError(t, err); e.Status != StatusState || !strings.Contains(e.Message, "bn_backward") {
		t.Fatalf("got %+v, want BN_ERR_STATE from bn_backward", e)
	}

	// Config errors come from the config builder, inside NewLayer's one C call.
	bad := DefaultConfig()
	bad.Momentum = 1.5
	_, err = NewLayer(bad, []int{2, 3})
	if e = asError(t, err); e.Status != StatusInvalidArgument || !strings.Contains(e.Message, "bn_config_set_momentum") {
		t.Fatalf("got %+v, want BN_ERR_INVALID_ARGUMENT from bn_config_set_momentum", e)
	}
	bad = DefaultConfig()
	bad.Axes = []int{5}
	_, err = NewLayer(bad, []int{2, 3})
	if e = asError(t, err); !strings.Contains(e.Message, "bn_create") {
		t.Fatalf("got %+v, want a bn_create error for axis 5 of a rank-2 input", e)
	}

	// After Close: ErrClosed, and closing again is harmless.
	l2, err := NewLayer(cfg, []int{2, 3, 2, 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l2.SetTraining(true); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
	if _, err := l2.Param(Gamma); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
}

func TestParamsRoundTrip(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Axes = []int{1}
	l := mustLayer(t, cfg, []int{4, 3})
	fresh := map[Param][]float32{Gamma: {1, 1, 1}, Beta: {0, 0, 0}, MovingMean: {0, 0, 0},
		MovingVariance: {1, 1, 1}}
	set := map[Param][]float32{Gamma: {0.5, -2, 3.25}, Beta: {1, 0, -1.5},
		MovingMean: {-0.125, 7, 1e-3}, MovingVariance: {0, 2.5, 1e6}}
	for _, which := range []Param{Gamma, Beta, MovingMean, MovingVariance} {
		got, err := l.Param(which)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(fresh[which]) {
			t.Errorf("param %d of a new layer = %v, want %v", which, got, fresh[which])
		}
		if err := l.SetParam(which, set[which]); err != nil {
			t.Fatal(err)
		}
	}
	for which, want := range set {
		got, err := l.Param(which)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) { // float32 holds these exactly
			t.Errorf("param %d = %v, want %v", which, got, want)
		}
	}

	// Refused: a negative variance, a wrong count, a read-only statistic. Nothing changes.
	err := l.SetParam(MovingVariance, []float32{1, -1, 1})
	if e := asError(t, err); e.Status != StatusInvalidArgument || !strings.Contains(e.Message, "bn_set_param") {
		t.Fatalf("got %+v, want BN_ERR_INVALID_ARGUMENT from bn_set_param", e)
	}
	if e := asError(t, l.SetParam(Gamma, []float32{1, 2})); e.Status != StatusShape {
		t.Fatalf("got %+v, want BN_ERR_SHAPE for 2 values of 3 features", e)
	}
	if err := l.SetParam(BatchMean, []float32{0, 0, 0}); err == nil {
		t.Fatal("setting the read-only batch mean succeeded")
	}
	got, err := l.Param(MovingVariance)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(set[MovingVariance]) {
		t.Fatalf("a refused SetParam changed the moving variance: %v, want %v", got, set[MovingVariance])
	}
}

// Goroutines move between OS threads while bn_last_error() is per thread: each goroutine
// has its own layer (C_g channels) and alternates failing and good calls; every error must
// carry its own call's message, never another goroutine's.
func TestGoroutinesKeepTheirMessages(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	const goroutines, rounds = 16, 200
	var wg sync.WaitGroup
	failures := make(chan string, goroutines)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			c := g + 2
			cfg := DefaultConfig()
			l, err := NewLayer(cfg, []int{2, c})
			if err != nil {
				failures <- err.Error()
				return
			}
			defer l.Close()
			if err := l.SetTraining(true); err != nil {
				failures <- err.Error()
				return
			}
			// Row 0 zeros, row 1 ones: every channel has mean 0.5, biased variance 0.25.
			x := make([]float32, 2*c)
			for i := c; i < 2*c; i++ {
				x[i] = 1
			}
			y := make([]float32, 2*c)
			want := fmt.Sprintf("bn_forward: shape[1]=%d but the layer was built for %d", c+1, c)
			yOne := 0.5 / math.Sqrt(0.25+1e-3)
			bad := make([]float32, 2*(c+1))
			for r := 0; r < rounds; r++ {
				err := l.Forward([]int{2, c + 1}, bad, bad)
				var e *Error
				if !errors.As(err, &e) || e.Status != StatusShape || !strings.Contains(e.Message, want) {
					failures <- fmt.Sprintf("goroutine %d round %d: %v, want a message with %q", g, r, err, want)
					return
				}
				runtime.Gosched()
				if err := l.Forward([]int{2, c}, x, y); err != nil {
					failures <- fmt.Sprintf("goroutine %d round %d: %v", g, r, err)
					return
				}
				if math.Abs(float64(y[2*c-1])-yOne) > 1e-5 || math.Abs(float64(y[0])+yOne) > 1e-5 {
					failures <- fmt.Sprintf("goroutine %d round %d: y = %v, want -+%.6f", g, r, y, yOne)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
}

// A layer that is dropped without Close is released by its finalizer (no crash, no leak
// that outlives a GC); Close after the fact is the rule, this is the safety net.
func TestFinalizerReleases(t *testing.T) {
	for i := 0; i < 100; i++ {
		if _, err := NewLayer(DefaultConfig(), []int{8, 16}); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.GC()
}

func Example() {
	cfg := DefaultConfig()
	cfg.Axes = []int{1} // NCHW: channels
	cfg.Momentum = 0.9
	shape := []int{2, 1, 2, 2}
	l, err := NewLayer(cfg, shape)
	if err != nil {
		panic(err)
	}
	defer l.Close()
	if err := l.SetTraining(true); err != nil {
		panic(err)
	}
	x := []float32{0, 1, 2, 3, 4, 5, 6, 7}
	y := make([]float32, len(x))
	if err := l.Forward(shape, x, y); err != nil {
		panic(err)
	}
	mean, _ := l.Param(MovingMean)
	fmt.Printf("y[0] %.4f, moving mean %.2f\n", y[0], mean[0])
	err = l.Forward([]int{2, 3, 2, 2}, make([]float32, 24), make([]float32, 24))
	fmt.Println(err)
	// Output:
	// y[0] -1.5274, moving mean 0.35
	// batchnorm: BN_ERR_SHAPE: bn_forward: shape[1]=3 but the layer was built for 1 on this normalized axis
}
