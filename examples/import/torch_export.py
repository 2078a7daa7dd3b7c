"""Trains a torch.nn.BatchNorm2d for a few steps and exports what import_weights.c needs.

    python3 torch_export.py OUT_DIR [--cumulative]     export one case into OUT_DIR
    python3 torch_export.py --check IMPORTER            export both cases into a temporary
                                                        directory and run IMPORTER on each
                                                        (exit 77, "skipped", without torch)

The state dict goes out as raw little-endian arrays, one file per entry, as any program can
write them from `model.state_dict()`:
    weight.f32  bias.f32  running_mean.f32  running_var.f32    (C float32 values each)
    num_batches_tracked.i64                                     (one int64)
and, to check the import, meta.txt (N C H W eps momentum) and torch's own results:
    x_eval.f32 / y_eval.f32       an inference batch and its output (bn.eval())
    x_train.f32 / y_train.f32     one more training batch and its output (bn.train())
    running_mean_after.f32, running_var_after.f32, num_batches_tracked_after.i64
--cumulative exports a momentum=None layer (cumulative moving average).
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

N, C, H, W = 8, 4, 3, 3


def export(out_dir, cumulative):
    import torch

    torch.manual_seed(1234)
    momentum = None if cumulative else 0.1
    bn = torch.nn.BatchNorm2d(C, eps=1e-5, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    shift = torch.tensor([0.0, 2.0, -1.0, 5.0]).view(1, C, 1, 1)
    scale = torch.tensor([1.0, 0.5, 3.0, 2.0]).view(1, C, 1, 1)
    bn.train()
    for _ in range(5):  # a few training steps: the running statistics move
        bn(torch.randn(N, C, H, W) * scale + shift)

    def raw(name, tensor, dtype="<f4"):
        np.asarray(tensor.detach().numpy(), dtype=dtype).tofile(os.path.join(out_dir, name))

    state = bn.state_dict()
    raw("weight.f32", state["weight"])
    raw("bias.f32", state["bias"])
    raw("running_mean.f32", state["running_mean"])
    raw("running_var.f32", state["running_var"])
    raw("num_batches_tracked.i64", state["num_batches_tracked"].reshape(1), "<i8")

    x_eval = torch.randn(N, C, H, W) * scale + shift
    x_train = torch.randn(N, C, H, W) * scale + shift
    with torch.no_grad():
        bn.eval()
        y_eval = bn(x_eval)
        bn.train()
        y_train = bn(x_train)
    raw("x_eval.f32", x_eval)
    raw("y_eval.f32", y_eval)
    raw("x_train.f32", x_train)
    raw("y_train.f32", y_train)
    raw("running_mean_after.f32", bn.running_mean)
    raw("running_var_after.f32", bn.running_var)
    raw("num_batches_tracked_after.i64", bn.num_batches_tracked.reshape(1), "<i8")
    with open(os.path.join(out_dir, "meta.txt"), "w") as f:
        # momentum -1 stands for None
        f.write("%d %d %d %d %.17g %.17g\n" % (N, C, H, W, bn.eps, -1.0 if momentum is None else momentum))


def check(importer):
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch is not importable: skipped (Debian: python3-torch)")
        return 77
    for cumulative in (False, True):
        with tempfile.TemporaryDirectory() as d:
            export(d, cumulative)
            print("== momentum %s" % ("None (cumulative average)" if cumulative else "0.1"), flush=True)
            rc = subprocess.run([importer, "torch", d]).returncode
            if rc != 0:
                return rc
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "--check":
        return check(argv[2])
    if len(argv) in (2, 3) and not argv[1].startswith("-"):
        os.makedirs(argv[1], exist_ok=True)
        export(argv[1], len(argv) == 3 and argv[2] == "--cumulative")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
