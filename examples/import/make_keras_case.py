"""Writes the Keras import case: keras_bn_weights.bin and keras_case.txt (numpy only).

keras_bn_weights.bin is what a Keras BatchNormalization(axis=-1) layer with C=3 channels
gives as
    np.concatenate(layer.get_weights()).astype("<f4").tofile("keras_bn_weights.bin")
i.e. gamma, beta, moving_mean, moving_variance, C float32 values each, in that order (the
order of layer.get_weights() / layer.weights when center and scale are on). The values here
are drawn with a fixed seed rather than taken from a trained Keras model (no TensorFlow is
needed); keras_case.txt holds an NHWC input and the inference output of such a layer
(epsilon 1e-3, Keras' default), computed in float64 from the float32 values:
    y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta
"""

import numpy as np

C = 3
SHAPE = (2, 2, 2, C)  # NHWC
EPSILON = 1e-3

rng = np.random.default_rng(42)
gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
beta = rng.uniform(-0.5, 0.5, C).astype(np.float32)
moving_mean = rng.normal(0.0, 1.0, C).astype(np.float32)
moving_variance = rng.uniform(0.25, 4.0, C).astype(np.float32)
np.concatenate([gamma, beta, moving_mean, moving_variance]).astype("<f4").tofile("keras_bn_weights.bin")

x = rng.normal(0.0, 2.0, SHAPE).astype(np.float32)
g, b, m, v = (a.astype(np.float64) for a in (gamma, beta, moving_mean, moving_variance))
y = g * (x.astype(np.float64) - m) / np.sqrt(v + EPSILON) + b

with open("keras_case.txt", "w") as f:
    f.write("# Keras BatchNormalization(axis=-1, epsilon=1e-3) in inference, made by make_keras_case.py\n")
    f.write("shape %s\n" % " ".join(str(d) for d in SHAPE))
    f.write("epsilon %.17g\n" % EPSILON)
    f.write("x %s\n" % " ".join("%.9g" % v for v in x.ravel()))
    f.write("y %s\n" % " ".join("%.17g" % v for v in y.ravel()))
