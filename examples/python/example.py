"""The shared small case (examples/README.md) through the Python binding.

    BATCHNORM_LIBRARY=build/libbatchnorm.so.1 python3 examples/python/example.py

One training step of a Keras-default layer (axis 1, momentum 0.9, epsilon 1e-3, float32) on
a 2x3x2x2 NCHW input; prints y and the moving statistics and checks them against
examples/expected_small_case.txt. Exit status 0 when every number matches.
"""

import sys

import numpy as np

import batchnorm as bn
import small_case


def run(case):
    """y, moving_mean, moving_variance after one training step, as the library computes them."""
    shape = tuple(int(d) for d in case["shape"])
    config = bn.Config(axes=int(case["axis"][0]), momentum=case["momentum"][0], epsilon=case["epsilon"][0])
    with bn.Layer(config, shape) as layer:
        layer.gamma = case["gamma"].astype(np.float32)
        layer.beta = case["beta"].astype(np.float32)
        layer.training = True
        y = layer.forward(case["x"].astype(np.float32).reshape(shape))
        return y, layer.moving_mean, layer.moving_variance


def main():
    case = small_case.load()
    print("libbatchnorm", bn.version_string())
    y, moving_mean, moving_variance = run(case)
    np.set_printoptions(precision=6, suppress=True)
    print("y =\n", y)
    print("moving_mean     =", moving_mean)
    print("moving_variance =", moving_variance)

    tolerance = case["tolerance"][0]
    ok = True
    for name, got in (("y", y.ravel()), ("moving_mean", moving_mean), ("moving_variance", moving_variance)):
        error = float(np.max(np.abs(got.astype(np.float64) - case[name])))
        good = error <= tolerance
        ok = ok and good
        print("%-16s max |error| = %.2e  %s" % (name, error, "ok" if good else "MISMATCH"))
    print("all values match examples/expected_small_case.txt" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
