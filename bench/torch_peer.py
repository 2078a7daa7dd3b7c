#!/usr/bin/python3
"""PyTorch peer of bn_bench: times torch's CPU batch norm on every case of a shape list.

Run by bn_bench with /usr/bin/python3 (Debian's python3-torch), once per thread count, and a
second time with GLIBC_TUNABLES set so that glibc reuses the heap (PyTorch allocates its
outputs on every call). Output, one line each, machine-readable:
    version <torch version>
    result <case> <layout> <mode> <median seconds per call> <timed calls>
    failed <case> <layout> <mode> <reason>   (a mode torch does not serve, e.g. for a dtype)
or, when torch cannot be imported:
    absent <reason>

Modes: fwd-infer = F.batch_norm(training=False) with running statistics; fwd-train =
F.batch_norm(training=True) (updates the running statistics as the layer would);
backward = aten.native_batch_norm_backward of one training forward (the kernel that
autograd calls, without the autograd engine's bookkeeping). NHWC uses
memory_format=torch.channels_last; NLC (no channels-last format for 3-D tensors in torch)
is timed as the equivalent contiguous (N*L, C) matrix, as BatchNorm1d users do.
"""
import argparse
import sys
import time

EPS = 1e-3
MOMENTUM = 0.01  # Keras momentum 0.99


def read_cases(path):
    cases = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].split()
            if not line:
                continue
            name, layout, dims = line[:3]
            dtype = line[3] if len(line) > 3 else "f32"
            cases.append((name, layout, [int(d) for d in dims.split("x")], dtype))
    return cases


def make_input(torch, layout, dims, gen):
    """Returns a tensor laid out in memory as `layout` with `dims`, in torch's (N, C, ...) view."""
    if layout.endswith("C") and len(dims) == 4:  # NHWC -> (N, C, H, W) channels_last view
        n, h, w, c = dims
        t = torch.rand((n, c, h, w), generator=gen) * 2 - 1
        return t.contiguous(memory_format=torch.channels_last)
    if layout.endswith("C") and len(dims) > 2:  # NLC, NDHWC -> (N*spatial, C)
        c = dims[-1]
        rows = 1
        for d in dims[:-1]:
            rows *= d
        return torch.rand((rows, c), generator=gen) * 2 - 1
    return torch.rand(dims, generator=gen) * 2 - 1  # NCHW, NCL, NC: contiguous


def time_median(fn, target, min_samples, max_samples, min_sample_seconds=5e-4):
    """Same policy as bn_bench's timer: warm-up, batches of k calls, median per call."""
    warm_budget = min(0.05, target / 5)
    calls = 0
    t0 = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if calls >= 2 and elapsed >= warm_budget:
            break
    estimate = elapsed / calls
    batch = max(1, int(-(-min_sample_seconds // estimate)))
    samples = min(max(int(target / (batch * estimate)), min_samples), max_samples)
    per_call = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        per_call.append((time.perf_counter() - start) / batch)
    per_call.sort()
    return per_call[samples // 2], samples * batch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--target", type=float, default=0.25)
    ap.add_argument("--min-samples", type=int, default=3)
    ap.add_argument("--max-samples", type=int, default=101)
    args = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # noqa: BLE001 -- any import failure means "no peer"
        print(f"absent import torch failed: {e}".replace("\n", " "))
        return 0
    torch.set_num_threads(args.threads)
    print(f"version {torch.__version__} threads {torch.get_num_threads()}", flush=True)
    gen = torch.Generator().manual_seed(1)
    types = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
    for name, layout, dims, dtype in read_cases(args.cases):
        # 16-bit cases: x and dy of that type (the layout kept), float32 weight and statistics.
        label = layout if dtype == "f32" else f"{layout}/{dtype}"
        fmt = (torch.channels_last if len(dims) == 4 and layout.endswith("C")
               else torch.contiguous_format)
        x = make_input(torch, layout, dims, gen).to(types[dtype]).contiguous(memory_format=fmt)
        c = x.shape[1]
        dy = (torch.rand(x.shape, generator=gen) * 2 - 1).to(types[dtype]).contiguous(memory_format=fmt)
        weight = torch.rand(c, generator=gen) + 0.5
        bias = torch.rand(c, generator=gen) - 0.5
        running_mean = torch.zeros(c)
        running_var = torch.ones(c)
        with torch.no_grad():
            infer = lambda: F.batch_norm(x, running_mean, running_var, weight, bias,
                                         training=False, momentum=MOMENTUM, eps=EPS)
            train = lambda: F.batch_norm(x, running_mean, running_var, weight, bias,
                                         training=True, momentum=MOMENTUM, eps=EPS)
            try:
                _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(
                    x, weight, bias, running_mean, running_var, True, MOMENTUM, EPS)
                backward = lambda: torch.ops.aten.native_batch_norm_backward(
                    dy, x, weight, running_mean, running_var, save_mean, save_invstd, True, EPS,
                    [True, True, True])
            except RuntimeError as e:
                backward = lambda e=e: (_ for _ in ()).throw(e)  # reported as failed below
            for mode, fn in (("fwd-infer", infer), ("fwd-train", train), ("backward", backward)):
                try:
                    seconds, calls = time_median(fn, args.target, args.min_samples, args.max_samples)
                except RuntimeError as e:  # e.g. "... not implemented for 'Half'"
                    print(f"failed {name} {label} {mode} {e}".replace("\n", " "), flush=True)
                    continue
                print(f"result {name} {label} {mode} {seconds:.9g} {calls}", flush=True)
        del x, dy
    return 0


if __name__ == "__main__":
    sys.exit(main())
