"""Tests of the Python binding (unittest; no pytest needed).

    cd examples/python && BATCHNORM_LIBRARY=../../build/libbatchnorm.so.1 python3 -m unittest -v test_batchnorm

Every check compares the library, through the binding, with an independent expectation: a
numpy float64 implementation of the Keras formulas written here, PyTorch's
torch.nn.functional.batch_norm and its autograd (skipped when torch is not installed), the
numbers of examples/expected_small_case.txt, or hand-derived values.
"""

import os
import subprocess
import sys
import threading
import unittest

import numpy as np

import batchnorm as bn
import small_case

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # python3-torch is optional
    torch = None

HERE = os.path.dirname(os.path.abspath(__file__))
NO_TORCH = ("PyTorch (python3-torch) is not installed: "
            "the comparison with torch.nn.functional.batch_norm is skipped")

# --------------------------------------------------------------------------------------
# The independent reference: numpy float64, the Keras formulas on a (m, F) matrix whose
# columns are the features (kept axes moved last, row-major over them).


def to_rows(x, kept):
    perm = [i for i in range(x.ndim) if i not in kept] + list(kept)
    xt = np.transpose(x, perm)
    features = int(np.prod([x.shape[i] for i in kept]))
    return xt.reshape(-1, features).astype(np.float64), (perm, xt.shape)


def from_rows(rows, layout):
    perm, tshape = layout
    return np.transpose(rows.reshape(tshape), np.argsort(perm))


def ref_train_forward(X, gamma, beta, eps):
    """Batch statistics (biased variance) and y = gamma*(x - mean)/sqrt(var + eps) + beta."""
    mean = X.mean(axis=0)
    var = ((X - mean) ** 2).mean(axis=0)
    xhat = (X - mean) / np.sqrt(var + eps)
    return gamma * xhat + beta, mean, var


def ref_train_backward(X, dY, gamma, eps):
    """d/dx of the training forward, through the batch mean and variance:
    dx = gamma/sqrt(var+eps)/m * (m*dy - sum(dy) - xhat*sum(dy*xhat))."""
    m = X.shape[0]
    mean = X.mean(axis=0)
    inv = 1.0 / np.sqrt(((X - mean) ** 2).mean(axis=0) + eps)
    xhat = (X - mean) * inv
    dbeta = dY.sum(axis=0)
    dgamma = (dY * xhat).sum(axis=0)
    dx = gamma * inv / m * (m * dY - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


def ref_moving(moving_mean, moving_var, mean, var, m, momentum, bessel):
    """Keras: v <- v*momentum + batch*(1 - momentum); the fused path feeds var*m/(m-1)."""
    fed = var * m / max(m - 1, 1) if bessel else var
    return (moving_mean * momentum + mean * (1 - momentum),
            moving_var * momentum + fed * (1 - momentum))


def ref_inference(X, dY, gamma, beta, moving_mean, moving_var, eps):
    inv = 1.0 / np.sqrt(moving_var + eps)
    xhat = (X - moving_mean) * inv
    return gamma * xhat + beta, dY * gamma * inv, (dY * xhat).sum(axis=0), dY.sum(axis=0)


def tolerance(dtype):
    return 5e-6 if np.dtype(dtype) == np.float32 else 1e-11


class Checks(unittest.TestCase):
    def close(self, got, want, tol, what=""):
        """max|got - want| <= tol * max(1, max|want|)."""
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        self.assertEqual(got.shape, want.shape, what)
        scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
        err = float(np.max(np.abs(got - want))) if want.size else 0.0
        self.assertLessEqual(err, tol * scale, "%s: max |error| %.3g > %.3g" % (what, err, tol * scale))


LAYOUTS = {"NCHW": (1, (1,)), "NHWC": (-1, (3,))}  # Config axes, kept axes of a rank-4 input


def data(rng, shape, dtype, loc=0.0, scale=1.0):
    return rng.normal(loc, scale, size=shape).astype(dtype)


# --------------------------------------------------------------------------------------
class ReferenceTests(Checks):
    """Training steps, moving statistics, inference and backward against the numpy reference."""

    def run_case(self, layout, dtype, fused, eps=1e-3, momentum=0.9, steps=3, loc=3.0, scale=2.0):
        axes, kept = LAYOUTS[layout]
        C = 5
        base = (4, C, 3, 2) if layout == "NCHW" else (4, 3, 2, C)
        rng = np.random.default_rng(11)
        config = bn.Config(axes=axes, momentum=momentum, epsilon=eps, dtype=dtype, fused=fused)
        layer = bn.Layer(config, base)
        pdt = layer.param_dtype
        # Keras' fused path: float32, rank 4, one axis 1 or 3, fused not "off" (V1 rules).
        fused_path = fused != "off" and np.dtype(dtype) == np.float32
        self.assertEqual(layer.fused, fused_path)
        eps_n = max(eps, 1.001e-5) if fused_path else eps
        gamma = rng.uniform(0.5, 1.5, C).astype(pdt)
        beta = rng.uniform(-1, 1, C).astype(pdt)
        layer.gamma, layer.beta = gamma, beta
        g, b = gamma.astype(np.float64), beta.astype(np.float64)
        mm, mv = np.zeros(C), np.ones(C)
        tol = tolerance(dtype)
        layer.training = True
        for step in range(steps):
            shape = list(base)
            shape[0] = 2 + step  # the batch size may change from call to call
            x = data(rng, shape, dtype, loc=loc, scale=scale)
            dy = data(rng, shape, dtype)
            X, lay = to_rows(x, kept)
            dY, _ = to_rows(dy, kept)
            y_ref, mean, var = ref_train_forward(X, g, b, eps_n)
            mm, mv = ref_moving(mm, mv, mean, var, X.shape[0], momentum, fused_path)
            y = layer.forward(x)
            self.assertEqual((y.dtype, y.shape), (np.dtype(dtype), x.shape))
            self.close(y, from_rows(y_ref, lay), tol, "y step %d" % step)
            self.close(layer.batch_mean, mean, tol, "batch mean")
            self.close(layer.batch_variance, var, tol, "batch variance")
            self.close(layer.moving_mean, mm, tol, "moving mean step %d" % step)
            self.close(layer.moving_variance, mv, tol, "moving variance step %d" % step)
            dx, dgamma, dbeta = layer.backward(x, dy)
            dx_ref, dg_ref, db_ref = ref_train_backward(X, dY, g, eps_n)
            self.close(dx, from_rows(dx_ref, lay), 4 * tol, "dx step %d" % step)
            self.close(dgamma, dg_ref, 4 * tol, "dgamma")
            self.close(dbeta, db_ref, 4 * tol, "dbeta")
            self.assertEqual((dgamma.dtype, dgamma.shape), (pdt, (C,)))

        layer.training = False
        self.assertFalse(layer.training)
        x = data(rng, base, dtype, loc=loc, scale=scale)
        dy = data(rng, base, dtype)
        X, lay = to_rows(x, kept)
        dY, _ = to_rows(dy, kept)
        before = (layer.moving_mean, layer.moving_variance)
        y_ref, dx_ref, dg_ref, db_ref = ref_inference(X, dY, g, b, layer.moving_mean.astype(np.float64),
                                                      layer.moving_variance.astype(np.float64), eps_n)
        self.close(layer.forward(x), from_rows(y_ref, lay), tol, "inference y")
        dx, dgamma, dbeta = layer.backward(x, dy)
        self.close(dx, from_rows(dx_ref, lay), tol, "inference dx")
        self.close(dgamma, dg_ref, 4 * tol, "inference dgamma")
        self.close(dbeta, db_ref, 4 * tol, "inference dbeta")
        # inference changes no state
        np.testing.assert_array_equal(layer.moving_mean, before[0])
        np.testing.assert_array_equal(layer.moving_variance, before[1])
        layer.close()

    def test_layouts_dtypes_fused(self):
        for layout in ("NCHW", "NHWC"):
            for dtype in (np.float32, np.float64):
                for fused in ("auto", "off"):
                    with self.subTest(layout=layout, dtype=np.dtype(dtype).name, fused=fused):
                        self.run_case(layout, dtype, fused)

    def test_fused_epsilon_clamp(self):
        # epsilon 1e-6 is clamped to 1.001e-5 on the fused path only; with a batch variance
        # near 1e-4 the clamp moves y by about 5%
        for fused in ("auto", "off"):
            with self.subTest(fused=fused):
                self.run_case("NHWC", np.float32, fused, eps=1e-6, steps=1, loc=0.0, scale=0.01)

    def test_two_axes_rank3(self):
        """Several kept axes: parameters are row-major over them (the reference's columns)."""
        rng = np.random.default_rng(5)
        shape, kept = (6, 3, 4), (1, 2)
        layer = bn.Layer(bn.Config(axes=(1, 2), momentum=0.5, dtype=np.float64), shape)
        self.assertEqual(layer.num_features, 12)
        self.assertFalse(layer.fused)
        gamma = rng.uniform(0.5, 2, 12)
        layer.gamma = gamma
        layer.training = True
        x = data(rng, shape, np.float64)
        X, lay = to_rows(x, kept)
        y_ref, mean, var = ref_train_forward(X, gamma, 0.0, 1e-3)
        self.close(layer.forward(x), from_rows(y_ref, lay), 1e-12, "y")
        mm, mv = ref_moving(np.zeros(12), np.ones(12), mean, var, 6, 0.5, False)
        self.close(layer.moving_mean, mm, 1e-12, "moving mean")
        self.close(layer.moving_variance, mv, 1e-12, "moving variance")


# --------------------------------------------------------------------------------------
@unittest.skipIf(torch is None, NO_TORCH)
class TorchTests(Checks):
    """torch.nn.functional.batch_norm + autograd. PyTorch's conventions: momentum_torch =
    1 - momentum_keras; running_var is fed the unbiased batch variance (so the layer uses
    moving_variance="unbiased" with fused="off", which leaves epsilon unclamped)."""

    def step_pair(self, layout, dtype, momentum=0.9, eps=1e-3):
        rng = np.random.default_rng(21)
        C = 4
        tdt = torch.float32 if np.dtype(dtype) == np.float32 else torch.float64
        axes, _ = LAYOUTS[layout]
        base = (3, C, 5, 2) if layout == "NCHW" else (3, 5, 2, C)
        to_nchw = (lambda a: a) if layout == "NCHW" else (lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
        from_nchw = (lambda a: a) if layout == "NCHW" else (lambda a: a.transpose(0, 2, 3, 1))
        layer = bn.Layer(bn.Config(axes=axes, momentum=momentum, epsilon=eps, dtype=dtype, fused="off",
                                   moving_variance="unbiased"), base)
        gamma = rng.uniform(0.5, 1.5, C).astype(layer.param_dtype)
        beta = rng.uniform(-1, 1, C).astype(layer.param_dtype)
        layer.gamma, layer.beta = gamma, beta
        running_mean = torch.zeros(C, dtype=tdt)
        running_var = torch.ones(C, dtype=tdt)
        tol = tolerance(dtype)
        for training, batch in ((True, 3), (True, 5), (False, 4)):
            layer.training = training
            shape = (batch,) + base[1:]
            x = data(rng, shape, dtype, loc=-1.0, scale=3.0)
            dy = data(rng, shape, dtype)
            xt = torch.tensor(to_nchw(x), requires_grad=True)
            w = torch.tensor(gamma, dtype=tdt, requires_grad=True)
            b = torch.tensor(beta, dtype=tdt, requires_grad=True)
            yt = F.batch_norm(xt, running_mean, running_var, w, b, training=training,
                              momentum=1 - momentum, eps=eps)
            yt.backward(torch.tensor(to_nchw(dy)))
            what = "%s training=%s batch=%d" % (layout, training, batch)
            y = layer.forward(x)
            dx, dgamma, dbeta = layer.backward(x, dy)
            self.close(y, from_nchw(yt.detach().numpy()), tol, "y " + what)
            self.close(dx, from_nchw(xt.grad.numpy()), 4 * tol, "dx " + what)
            self.close(dgamma, w.grad.numpy(), 4 * tol, "dgamma " + what)
            self.close(dbeta, b.grad.numpy(), 4 * tol, "dbeta " + what)
            self.close(layer.moving_mean, running_mean.numpy(), tol, "moving mean " + what)
            self.close(layer.moving_variance, running_var.numpy(), tol, "moving variance " + what)

    def test_batch_norm_and_autograd(self):
        for layout in ("NCHW", "NHWC"):
            for dtype in (np.float32, np.float64):
                with self.subTest(layout=layout, dtype=np.dtype(dtype).name):
                    self.step_pair(layout, dtype)

    def test_residual_relu_epilogue(self):
        """y = relu(bn(x) + r) and its gradients (dx, dr, dgamma, dbeta) against autograd."""
        rng = np.random.default_rng(8)
        shape, C = (4, 3, 3, 3), 3
        layer = bn.Layer(bn.Config(axes=1, dtype=np.float64, fused="off", relu=True), shape)
        gamma, beta = rng.uniform(0.5, 1.5, C), rng.uniform(-0.5, 0.5, C)
        layer.gamma, layer.beta = gamma, beta
        layer.training = True
        x, r, dy = data(rng, shape, np.float64), data(rng, shape, np.float64), data(rng, shape, np.float64)
        xt = torch.tensor(x, requires_grad=True)
        rt = torch.tensor(r, requires_grad=True)
        w = torch.tensor(gamma, requires_grad=True)
        b = torch.tensor(beta, requires_grad=True)
        yt = F.relu(F.batch_norm(xt, None, None, w, b, training=True, eps=1e-3) + rt)
        yt.backward(torch.tensor(dy))
        y = layer.forward_residual(x, r)
        self.close(y, yt.detach().numpy(), 1e-12, "y")
        self.assertTrue((y == 0).any() and (y > 0).any())  # the ReLU is exercised
        dx, dr, dgamma, dbeta = layer.backward_residual(x, y, dy)
        self.close(dx, xt.grad.numpy(), 1e-11, "dx")
        self.close(dr, rt.grad.numpy(), 1e-12, "dresidual")
        self.close(dgamma, w.grad.numpy(), 1e-11, "dgamma")
        self.close(dbeta, b.grad.numpy(), 1e-11, "dbeta")


# --------------------------------------------------------------------------------------
class SmallCaseTests(Checks):
    """The shared case of the language examples (examples/README.md)."""

    def test_file_matches_independent_computation(self):
        case = small_case.load()
        shape = tuple(int(d) for d in case["shape"])
        self.assertEqual(shape, (2, 3, 2, 2))
        # recomputed two ways: the generator's per-channel loop and this file's reference
        y, mm, mv = small_case.compute(shape, case["x"], case["gamma"], case["beta"], case["epsilon"][0],
                                       case["momentum"][0])
        X, lay = to_rows(case["x"].reshape(shape), (1,))
        y2, mean, var = ref_train_forward(X, case["gamma"], case["beta"], case["epsilon"][0])
        mm2, mv2 = ref_moving(np.zeros(3), np.ones(3), mean, var, 8, case["momentum"][0], True)
        for name, a, b2 in (("y", y, from_rows(y2, lay).ravel()), ("moving_mean", mm, mm2),
                            ("moving_variance", mv, mv2)):
            self.close(case[name], a, 1e-11, name)
            self.close(case[name], b2, 1e-11, name)
        # hand values of channel 0: x = .5 1.5 -1 2 1 -.5 2.5 0, mean .75, sum of squares 10.5
        self.assertAlmostEqual(case["moving_mean"][0], 0.075, places=12)
        self.assertAlmostEqual(case["moving_variance"][0], 0.9 + 0.1 * 10.5 / 7, places=12)
        self.assertAlmostEqual(case["y"][0], -0.25 / np.sqrt(10.5 / 8 + 1e-3), places=11)

    def test_library_matches_expected(self):
        import example
        case = small_case.load()
        y, mm, mv = example.run(case)
        tol = case["tolerance"][0]
        self.assertLessEqual(np.max(np.abs(y.ravel() - case["y"])), tol)
        self.assertLessEqual(np.max(np.abs(mm - case["moving_mean"])), tol)
        self.assertLessEqual(np.max(np.abs(mv - case["moving_variance"])), tol)


# --------------------------------------------------------------------------------------
class ErrorTests(Checks):
    def setUp(self):
        self.layer = bn.Layer(bn.Config(axes=1), (2, 3, 2, 2))
        self.layer.training = True

    def tearDown(self):
        self.layer.close()

    def test_bad_shape(self):
        before = self.layer.moving_mean
        with self.assertRaises(bn.BatchNormError) as cm:
            self.layer.forward(np.zeros((2, 4, 2, 2), np.float32))
        e = cm.exception
        self.assertEqual(e.status, bn.BN_ERR_SHAPE)
        self.assertEqual(e.status_name, "BN_ERR_SHAPE")
        self.assertTrue(e.message.startswith("bn_forward:"), e.message)
        self.assertIn("BN_ERR_SHAPE", str(e))
        np.testing.assert_array_equal(self.layer.moving_mean, before)  # nothing changed
        with self.assertRaises(bn.BatchNormError) as cm:
            self.layer.forward(np.zeros((2, 3, 2), np.float32))  # rank
        self.assertEqual(cm.exception.status, bn.BN_ERR_SHAPE)

    def test_wrong_dtype_refused_before_the_library(self):
        # A known failure sets the thread's last error; a call that reached the library with
        # this wrong shape would replace it with a bn_forward message.
        with self.assertRaises(bn.BatchNormError):
            self.layer.set_momentum(2.0)
        marker = bn.last_error()
        self.assertTrue(marker.startswith("bn_set_momentum:"), marker)
        before = self.layer.moving_mean
        with self.assertRaises(TypeError):
            self.layer.forward(np.zeros((2, 4, 2, 2), np.float64))
        with self.assertRaises(TypeError):
            self.layer.forward(np.zeros((2, 4, 2, 2), np.float32), out=np.zeros((2, 4, 2, 2), np.float64))
        with self.assertRaises(TypeError):
            self.layer.set_param("gamma", np.ones(4, np.float64))  # float32 layer: float32 parameters
        with self.assertRaises(TypeError):
            self.layer.forward(np.zeros((2, 3, 2, 2), ">f4"))     # byte order is part of the dtype
        self.assertEqual(bn.last_error(), marker)
        np.testing.assert_array_equal(self.layer.moving_mean, before)

    def test_buffers_checked(self):
        x = np.ones((2, 3, 2, 2), np.float32)
        with self.assertRaises(ValueError):
            self.layer.forward(x, out=np.zeros((2, 3, 2, 1), np.float32))          # shape
        with self.assertRaises(ValueError):
            self.layer.forward(x, out=np.zeros((2, 3, 2, 4), np.float32)[..., ::2])  # not contiguous
        ro = np.zeros_like(x)
        ro.flags.writeable = False
        with self.assertRaises(ValueError):
            self.layer.forward(x, out=ro)
        with self.assertRaises(ValueError):
            self.layer.backward(x, np.ones((2, 3, 2, 1), np.float32))               # dy shape
        big = np.zeros(2 * x.size + 1, np.float32)
        with self.assertRaises(ValueError):  # out partially overlapping x
            self.layer.forward(big[:x.size].reshape(x.shape), out=big[1:x.size + 1].reshape(x.shape))
        with self.assertRaises(ValueError):
            self.layer.fold_into(np.ones((4, 2), np.float32))                       # rows != features

    def test_state_and_parameter_errors(self):
        with self.assertRaises(bn.BatchNormError) as cm:
            self.layer.backward(np.ones((2, 3, 2, 2), np.float32), np.ones((2, 3, 2, 2), np.float32))
        self.assertEqual(cm.exception.status, bn.BN_ERR_STATE)
        self.assertTrue(cm.exception.message.startswith("bn_backward:"), cm.exception.message)
        with self.assertRaises(bn.BatchNormError) as cm:
            self.layer.gamma = np.ones(4, np.float32)
        self.assertEqual(cm.exception.status, bn.BN_ERR_SHAPE)
        self.assertTrue(cm.exception.message.startswith("bn_set_param:"), cm.exception.message)
        with self.assertRaises(bn.BatchNormError) as cm:
            self.layer.moving_variance = np.array([1, -1, 1], np.float32)
        self.assertEqual(cm.exception.status, bn.BN_ERR_INVALID_ARGUMENT)
        with self.assertRaises(AttributeError):
            self.layer.batch_mean = np.zeros(3, np.float32)  # read-only
        with self.assertRaises(ValueError):
            self.layer.get_param("nonsense")

    def test_config_errors(self):
        with self.assertRaises(bn.BatchNormError) as cm:
            bn.Config(momentum=1.5)
        self.assertEqual(cm.exception.status, bn.BN_ERR_INVALID_ARGUMENT)
        self.assertTrue(cm.exception.message.startswith("bn_config_set_momentum:"), cm.exception.message)
        with self.assertRaises(bn.BatchNormError) as cm:
            bn.Layer(bn.Config(axes=5), (2, 3))
        self.assertTrue(cm.exception.message.startswith("bn_create:"), cm.exception.message)
        with self.assertRaises(ValueError):
            bn.Config(fused="sometimes")
        with self.assertRaises(TypeError):
            bn.Config(dtype=np.int32)
        self.assertEqual(bn.Config(dtype="float64").param_dtype, np.float64)  # numpy spellings

    def test_allreduce(self):
        """Cross-replica statistics without a second process: a callback that doubles the sums is
        two replicas holding the same batch, so the layer must act as one layer on the batch
        stacked twice (dgamma/dbeta are its share: half). A raising callback is BN_ERR_CALLBACK."""
        rng = np.random.default_rng(8)
        x = rng.normal(3.0, 2.0, (5, 4))
        dy = rng.normal(0.0, 1.0, (5, 4))
        counts = []
        def twice(buf):
            counts.append(buf.size)
            buf *= 2.0
        synced = bn.Layer(bn.Config(dtype=np.float64, allreduce=twice), (5, 4))
        single = bn.Layer(bn.Config(dtype=np.float64), (10, 4))
        synced.training = single.training = True
        y = synced.forward(x)
        y2 = single.forward(np.concatenate([x, x]))
        np.testing.assert_allclose(y, y2[:5], rtol=1e-12, atol=1e-12)
        dx, dg, db = synced.backward(x, dy)
        dx2, dg2, db2 = single.backward(np.concatenate([x, x]), np.concatenate([dy, dy]))
        np.testing.assert_allclose(dx, dx2[:5], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dg, dg2 / 2, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(db, db2 / 2, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(synced.moving_variance, single.moving_variance, rtol=1e-12)
        self.assertEqual(counts, [2 + 2 * 4, 2 * 4])  # one collective per forward and backward
        def broken(buf):
            raise RuntimeError("the network is down")
        layer = bn.Layer(bn.Config(allreduce=broken), (4, 3))
        layer.training = True
        with self.assertRaises(bn.BatchNormError) as cm:
            layer.forward(np.ones((4, 3), np.float32))
        self.assertEqual(cm.exception.status, bn.BN_ERR_CALLBACK)
        self.assertIsInstance(cm.exception.__cause__, RuntimeError)

    def test_nonfinite_batches(self):
        """A NaN in a training batch: refused by default (nothing changed, out untouched), Keras'
        propagation on request, or the output without the moving-statistics update."""
        x = np.arange(12, dtype=np.float64).reshape(4, 3)
        x[2, 1] = np.nan
        layer = bn.Layer(bn.Config(dtype=np.float64), (4, 3))
        layer.training = True
        out = np.full((4, 3), 7.0)
        with self.assertRaises(bn.BatchNormError) as cm:
            layer.forward(x, out=out)
        self.assertEqual(cm.exception.status, bn.BN_ERR_NONFINITE)
        self.assertIn("feature 1", cm.exception.message)
        np.testing.assert_array_equal(out, 7.0)
        np.testing.assert_array_equal(layer.moving_mean, 0.0)
        keras = bn.Layer(bn.Config(dtype=np.float64, nonfinite="propagate"), (4, 3))
        keras.training = True
        y = keras.forward(x)
        self.assertTrue(np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all())
        self.assertTrue(np.isnan(keras.moving_mean[1]))
        skip = bn.Layer(bn.Config(dtype=np.float64, nonfinite="skip_update"), (4, 3))
        skip.training = True
        np.testing.assert_array_equal(skip.forward(x), y)
        np.testing.assert_array_equal(skip.moving_mean, 0.0)
        np.testing.assert_array_equal(skip.moving_variance, 1.0)
        with self.assertRaises(ValueError):
            bn.Config(nonfinite="ignore")

    def test_float16_and_bfloat16_layers(self):
        """16-bit activations (float32 parameters): within one 16-bit rounding of the float32
        layer fed the same values."""
        rng = np.random.default_rng(11)
        x16 = rng.normal(1.0, 2.0, (6, 5)).astype(np.float16)
        ref = bn.Layer(bn.Config(), (6, 5))
        half = bn.Layer(bn.Config(dtype=np.float16), (6, 5))
        for layer in (ref, half):
            layer.training = True
        y32 = ref.forward(x16.astype(np.float32))
        y16 = half.forward(x16)
        self.assertEqual(y16.dtype, np.float16)
        np.testing.assert_allclose(y16.astype(np.float32), y32, rtol=2 ** -10, atol=2 ** -14)
        np.testing.assert_array_equal(half.moving_mean, ref.moving_mean)
        # bfloat16 travels as its uint16 bits: the top half of a float32.
        xb = (x16.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        bfl = bn.Layer(bn.Config(dtype="bfloat16"), (6, 5))
        bfl.training = True
        yb = bfl.forward(xb)
        self.assertEqual(yb.dtype, np.uint16)
        yb32 = (yb.astype(np.uint32) << 16).view(np.float32)
        refb = bn.Layer(bn.Config(), (6, 5))
        refb.training = True
        want = refb.forward((xb.astype(np.uint32) << 16).view(np.float32))
        np.testing.assert_allclose(yb32, want, rtol=2 ** -7, atol=2 ** -10)

    def test_adjustment_failure_is_a_callback_error(self):
        def broken(shape, scale, bias):
            raise RuntimeError("no adjustment today")
        layer = bn.Layer(bn.Config(adjustment=broken), (4, 3))
        layer.training = True
        with self.assertRaises(bn.BatchNormError) as cm:
            layer.forward(np.ones((4, 3), np.float32))
        self.assertEqual(cm.exception.status, bn.BN_ERR_CALLBACK)
        self.assertIsInstance(cm.exception.__cause__, RuntimeError)

    def test_closed(self):
        layer = bn.Layer(bn.Config(), (2, 3))
        with layer:
            layer.forward(np.ones((2, 3), np.float32))
        self.assertTrue(layer.closed)
        with self.assertRaises(ValueError):
            layer.forward(np.ones((2, 3), np.float32))
        layer.close()  # twice is fine

    def test_errors_per_thread(self):
        """Each thread gets its own failing call's message."""
        results = {}

        def fail(name, momentum):
            try:
                bn.Config(momentum=momentum)
            except bn.BatchNormError as e:
                results[name] = e.message
        threads = [threading.Thread(target=fail, args=("t%d" % i, 2.0 + i)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(4):
            self.assertIn("momentum=%d" % (2 + i), results["t%d" % i])

    def test_explicit_library_path_must_load(self):
        env = dict(os.environ, BATCHNORM_LIBRARY=os.path.join(HERE, "no-such-libbatchnorm.so"))
        proc = subprocess.run([sys.executable, "-c", "import batchnorm; batchnorm.version()"], cwd=HERE, env=env,
                              capture_output=True, text=True, timeout=60)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("BATCHNORM_LIBRARY", proc.stderr)


# --------------------------------------------------------------------------------------
class ApiTests(Checks):
    def test_version(self):
        self.assertEqual(bn.version() // 10000, 1)
        self.assertEqual(bn.version_string(), "%d.%d.%d" % (bn.version() // 10000, bn.version() // 100 % 100,
                                                            bn.version() % 100))
        self.assertEqual(bn.status_string(bn.BN_ERR_SHAPE), "BN_ERR_SHAPE")

    def test_defaults_are_keras(self):
        """Config() is Keras' BatchNormalization(): axis -1, momentum 0.99, epsilon 1e-3."""
        rng = np.random.default_rng(3)
        x = data(rng, (5, 4), np.float32, loc=1.0)
        with bn.Layer(bn.Config(), x.shape) as layer:
            self.assertEqual(layer.num_features, 4)
            self.assertFalse(layer.training)   # a new layer is in inference mode
            np.testing.assert_array_equal(layer.gamma, np.ones(4, np.float32))
            np.testing.assert_array_equal(layer.moving_variance, np.ones(4, np.float32))
            self.close(layer(x), x / np.sqrt(1 + 1e-3), 1e-6, "inference with initial statistics")
            layer.training = True
            layer.forward(x)
            X = x.astype(np.float64)
            self.close(layer.moving_mean, 0.01 * X.mean(axis=0), 1e-6, "moving mean")
            self.close(layer.moving_variance, 0.99 + 0.01 * X.var(axis=0), 1e-6, "moving variance (biased, 2-D)")

    def test_inputs_lists_noncontiguous_and_in_place(self):
        rng = np.random.default_rng(4)
        base = data(rng, (3, 8, 4), np.float64)
        x = base[:, ::2, :]  # not contiguous
        self.assertFalse(x.flags.c_contiguous)
        with bn.Layer(bn.Config(axes=1, dtype=np.float64), x.shape) as layer:
            layer.training = True
            want = layer.forward(np.ascontiguousarray(x))
            np.testing.assert_array_equal(layer.forward(x), want)
            np.testing.assert_array_equal(layer.forward(x.tolist()), want)  # lists are converted
            buf = np.ascontiguousarray(x)
            out = layer.forward(buf, out=buf)  # in place
            self.assertIs(out, buf)
            np.testing.assert_array_equal(buf, want)
            dy = data(rng, x.shape, np.float64)
            want_dx = layer.backward(x, dy)[0]
            layer.forward(x)
            dx = layer.backward(x, dy, dx=dy)[0]  # dx may be dy
            self.assertIs(dx, dy)
            np.testing.assert_array_equal(dx, want_dx)

    def test_empty_batch(self):
        """A zero-sized batch in training: nothing to normalize, statistics unchanged (Keras)."""
        with bn.Layer(bn.Config(), (4, 3)) as layer:
            layer.training = True
            y = layer.forward(np.zeros((0, 3), np.float32))
            self.assertEqual(y.shape, (0, 3))
            np.testing.assert_array_equal(layer.moving_mean, np.zeros(3, np.float32))
            np.testing.assert_array_equal(layer.moving_variance, np.ones(3, np.float32))
            dx, dgamma, dbeta = layer.backward(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
            self.assertEqual(dx.shape, (0, 3))
            np.testing.assert_array_equal(dgamma, np.zeros(3, np.float32))

    def test_fold(self):
        rng = np.random.default_rng(6)
        C = 3
        with bn.Layer(bn.Config(axes=1, dtype=np.float64, epsilon=0.01), (2, C, 4)) as layer:
            g, b = rng.uniform(0.5, 2, C), rng.uniform(-1, 1, C)
            mm, mv = rng.normal(size=C), rng.uniform(0.5, 2, C)
            layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance = g, b, mm, mv
            scale, shift = layer.fold()
            self.close(scale, g / np.sqrt(mv + 0.01), 1e-14, "scale")
            self.close(shift, b - mm * g / np.sqrt(mv + 0.01), 1e-14, "shift")
            W, bias = rng.normal(size=(C, 5)), rng.normal(size=C)
            W0 = W.copy()
            W2, bias2 = layer.fold_into(W, bias)
            np.testing.assert_array_equal(W, W0)  # arguments untouched
            self.close(W2, W * scale[:, None], 1e-14, "weights")
            self.close(bias2, bias * scale + shift, 1e-14, "bias")
            # dense(v) then bn in inference == folded dense(v)
            v = rng.normal(size=(7, 5))
            h = (v @ W.T + bias)[:, :, None]
            self.close(layer.forward(np.ascontiguousarray(h))[:, :, 0], v @ W2.T + bias2, 1e-12, "folded layer")
            _, no_bias = layer.fold_into(W)
            self.close(no_bias, shift, 1e-14, "no bias")

    def test_keras_options(self):
        cfg = bn.Config(axes=-1, dtype=np.float64)
        cfg.set_initializer("gamma", "constant", 0.5).set_regularizer("gamma", l1=0.0, l2=0.1)
        cfg.set_constraint("beta", "non_neg")
        with bn.Layer(cfg, (4, 3)) as layer:
            np.testing.assert_array_equal(layer.gamma, [0.5, 0.5, 0.5])
            self.assertAlmostEqual(layer.regularization_loss(), 0.1 * 3 * 0.25, places=15)
            layer.training = True
            x = np.arange(12.0).reshape(4, 3)
            layer.forward(x)
            dy = np.zeros_like(x)
            _, dgamma, dbeta = layer.backward(x, dy)
            self.close(dgamma, 2 * 0.1 * 0.5 * np.ones(3), 1e-15, "dgamma = d(l2*sum g^2)/dg")
            np.testing.assert_array_equal(dbeta, np.zeros(3))
            layer.beta = np.array([-1.0, 0.5, -0.25])
            layer.apply_constraints()
            np.testing.assert_array_equal(layer.beta, [0.0, 0.5, 0.0])

    def test_renorm_ghost_batches_adjustment(self):
        """Keras' renorm at its first step (r = 1, d = 0 when the renorm statistics equal the
        batch's), ghost batches equal to per-ghost normalization, and adjustment inside gamma/beta,
        each against numpy."""
        rng = np.random.default_rng(5)
        x = rng.normal(2.0, 3.0, (8, 4)).astype(np.float64)
        eps = 1e-3
        # Adjustment: y = g*(a_s*xhat + a_b) + b with g = 1, b = 0.
        def adjust(shape, scale, bias):
            self.assertEqual(shape, (8, 4))
            scale[:] = [1.0, 2.0, 0.5, 1.0]
            bias[:] = [0.0, 1.0, -1.0, 0.25]
        layer = bn.Layer(bn.Config(dtype=np.float64, epsilon=eps, adjustment=adjust), (8, 4))
        layer.training = True
        xhat = (x - x.mean(0)) / np.sqrt(x.var(0) + eps)
        np.testing.assert_allclose(layer.forward(x), xhat * [1.0, 2.0, 0.5, 1.0] + [0.0, 1.0, -1.0, 0.25],
                                   rtol=1e-12, atol=1e-12)
        # Ghost batches of 2: ghost j holds samples j, j + 4 (strided, as Keras reshapes).
        layer = bn.Layer(bn.Config(dtype=np.float64, epsilon=eps, virtual_batch_size=2), (8, 4))
        layer.training = True
        y = layer.forward(x)
        ghosts = x.reshape(2, 4, 4)
        want = ((ghosts - ghosts.mean(0)) / np.sqrt(ghosts.var(0) + eps)).reshape(8, 4)
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
        # Renorm: unclipped, r and d come from the renorm statistics (initially mean 0,
        # stddev 1), so y = r*xhat + d.
        layer = bn.Layer(bn.Config(dtype=np.float64, epsilon=eps, renorm=True), (8, 4))
        layer.training = True
        r = np.sqrt(x.var(0) + eps) / 1.0
        d = x.mean(0) / 1.0
        np.testing.assert_allclose(layer.forward(x), r * xhat + d, rtol=1e-12, atol=1e-12)

    def test_trainable_and_momentum(self):
        x = np.array([[0.0, 2.0], [2.0, 6.0]], np.float64)  # batch means 1, 4; variances 1, 4
        with bn.Layer(bn.Config(dtype=np.float64, momentum=0.5), x.shape) as layer:
            layer.training = True
            layer.momentum = 0.0        # scheduled momentum: moving = batch
            layer.forward(x)
            np.testing.assert_array_equal(layer.moving_mean, [1.0, 4.0])
            np.testing.assert_array_equal(layer.moving_variance, [1.0, 4.0])
            layer.trainable = False     # V1 rules: gamma/beta frozen, still training
            self.assertFalse(layer.trainable)
            layer.forward(x)
            _, dgamma, dbeta = layer.backward(x, np.ones_like(x))
            np.testing.assert_array_equal(dgamma, [0.0, 0.0])
            np.testing.assert_array_equal(dbeta, [0.0, 0.0])

    def test_thread_count_is_bitwise_irrelevant(self):
        rng = np.random.default_rng(9)
        x = data(rng, (64, 16, 8, 8), np.float32)
        outs = []
        for threads in (1, 2):
            with bn.Layer(bn.Config(axes=1), x.shape, num_threads=threads) as layer:
                layer.training = True
                outs.append((layer.forward(x), layer.moving_variance))
        np.testing.assert_array_equal(outs[0][0], outs[1][0])
        np.testing.assert_array_equal(outs[0][1], outs[1][1])


class TestStateFiles(unittest.TestCase):
    """save/load/from_state/files through the binding: bytes round-trip, the loaded layer
    computes bitwise as the original, refusals raise and change nothing."""

    def test_round_trip_and_continued_training(self):
        rng = np.random.default_rng(5)
        cfg = bn.Config(axes=1, momentum=0.8, dtype=np.float64, cumulative_average=True)
        a = bn.Layer(cfg, (4, 3, 2))
        a.training = True
        for _ in range(3):
            a.forward(data(rng, (4, 3, 2), np.float64))
        blob = a.save()
        self.assertEqual(blob[:4], b"\x89BNS")
        b = bn.Layer.from_state(blob)
        self.assertEqual(b.save(), blob)
        self.assertEqual((b.dtype, b.input_shape, b.training, b.step_count), (np.dtype(np.float64), (4, 3, 2), True, 3))
        x = data(rng, (4, 3, 2), np.float64)
        np.testing.assert_array_equal(a.forward(x), b.forward(x))
        self.assertEqual(a.save(), b.save())
        c = bn.Layer(bn.Config(axes=1, dtype=np.float64), (4, 3, 2))
        c.load(blob)
        self.assertTrue(c.training)
        self.assertEqual(c.step_count, 3)
        c.step_count = 0
        self.assertEqual(c.step_count, 0)

    def test_refusals_change_nothing(self):
        layer = bn.Layer(bn.Config(), (4, 3))
        before = layer.save()
        with self.assertRaises(bn.BatchNormError) as ctx:
            layer.load(before[:-1])
        self.assertEqual(ctx.exception.status, bn.BN_ERR_CORRUPT_DATA)
        other = bn.Layer(bn.Config(dtype=np.float64), (4, 3)).save()
        with self.assertRaises(bn.BatchNormError) as ctx:
            layer.load(other)
        self.assertEqual(ctx.exception.status, bn.BN_ERR_INVALID_ARGUMENT)
        with self.assertRaises(bn.BatchNormError):
            bn.Layer.from_state(b"not a state")
        self.assertEqual(layer.save(), before)

    def test_files(self):
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "layer.bnstate")
            a = bn.Layer(bn.Config(dtype="bfloat16", relu=True), (2, 2, 2, 4))
            a.training = True
            a.save_file(path)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), a.save())
            b = bn.Layer.from_file(path)
            self.assertEqual((b.dtype, b.training, b.num_features), (np.dtype(np.uint16), True, 4))
            c = bn.Layer(bn.Config(dtype="bfloat16", relu=True), (1, 2, 2, 4))
            c.load_file(path)
            self.assertEqual((c.save(), c.training, c.input_shape), (a.save(), True, (2, 2, 2, 4)))
            with self.assertRaises(bn.BatchNormError) as ctx:
                c.load_file(os.path.join(d, "missing"))
            self.assertEqual(ctx.exception.status, bn.BN_ERR_INVALID_ARGUMENT)


if __name__ == "__main__":
    unittest.main()
