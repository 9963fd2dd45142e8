"""Whole models against torch: the ResNet-20 training step (and its convolutions alone), and the peak
memory of training runs.

    python -m benchmarks.models [--threads 1] [--rounds 7] [--smoke]

The step: convprop's train_step (one process: BatchNorm) and torch's, on the same weights, batch 128,
interleaved in one process, medians; then the step's 21 convolutions alone (forward and backward of each
Conv2d on the input it gets in the step), which bound what the whole step's ratio can be, and its
BatchNorm2d layers alone, each with a ReLU. Memory: each
framework trains `steps` batches and then evaluates 2,000 test images in a fresh process (as `convprop
train` does, in eval mode without caches), alternating; the peak RSS (VmHWM) of the process, and what
the training and evaluation added to it (the peak minus the peak once the framework was imported and the
model built). benchmarks.suite runs both; this module runs them alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_model(torch, name: str, ours):
    """torch.nn twin of convprop model `name` (same state_dict keys), weights copied from `ours`."""
    tnn = torch.nn
    from collections import OrderedDict

    class Block(tnn.Module):  # torchvision's BasicBlock
        def __init__(self, b):
            super().__init__()
            cin, cout, s = b.conv1.in_channels, b.conv1.out_channels, b.stride
            self.conv1, self.bn1 = tnn.Conv2d(cin, cout, 3, s, 1, bias=False), tnn.BatchNorm2d(cout)
            self.conv2, self.bn2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False), tnn.BatchNorm2d(cout)
            self.relu = tnn.ReLU()
            self.downsample = None if b.downsample is None else tnn.Sequential(
                tnn.Conv2d(cin, cout, 1, s, bias=False), tnn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    def twin(m):
        kind = type(m).__name__
        if kind == "Sequential":
            return tnn.Sequential(OrderedDict((k, twin(c)) for k, c in m._modules.items()))
        if kind == "BasicBlock":
            return Block(m)
        if kind == "Conv2d":
            return tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                              bias=m.bias is not None)
        if kind == "BatchNorm2d":
            return tnn.BatchNorm2d(m.num_features)
        if kind == "Linear":
            return tnn.Linear(m.in_features, m.out_features)
        if kind == "MaxPool2d":
            return tnn.MaxPool2d(m.kernel_size, m.stride)
        if kind == "AdaptiveAvgPool2d":
            return tnn.AdaptiveAvgPool2d(m.output_size)
        return getattr(tnn, kind)()

    model = twin(ours)
    model.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    return model


def step_cases(np, torch, smoke: bool) -> list[tuple]:
    """ResNet-20's training step at batch 128 (CIFAR-sized 32×32×3 images), both frameworks on the
    same weights and data; Adam.  In the suite's case format."""
    import convprop.random as R
    from convprop import models, nn, optim
    from convprop.train import train_step

    batch = 8 if smoke else 128
    R.manual_seed(0)
    model = models.resnet20(in_channels=3)
    opt, loss_fn = optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def ours():
        train_step(model, loss_fn, opt, x, y)

    theirs = None
    if torch:
        tm = torch_model(torch, "resnet20", model).train()
        topt = torch.optim.Adam(tm.parameters(), lr=1e-3)
        xt, yt = torch.tensor(x), torch.tensor(y)

        def theirs():
            topt.zero_grad()
            torch.nn.functional.cross_entropy(tm(xt), yt).backward()
            topt.step()

    layers = traced_layers(model, batch, 32)
    flops = 3 * sum(2 * np.prod(shape) * per_output for _, _, shape, per_output in layers)
    cases = [(f"ResNet-20 training step, batch {batch}, 32×32×3", None, flops, None, None, ours, theirs)]
    return cases + [convolutions_alone(np, torch, layers, batch), batch_norms_alone(np, torch, model, batch)]


def convolutions_alone(np, torch, layers: list, batch: int) -> tuple:
    """The step's convolutions alone: forward and backward (∂W, and ∂x but for the first layer) of every
    Conv2d of the model on its own input, in sequence, both frameworks — how much of the step's ratio the
    convolutions leave to everything else."""
    import convprop.functional as F
    from convprop import nn

    convs = [(m, x) for m, x, _, _ in layers if isinstance(m, nn.Conv2d)]
    args = [(m.weight.data, m.stride, m.padding) for m, _ in convs]
    # ∂Z in the memory layout the step's ∂Z has: that of the forward's output (channels-last)
    douts = [np.ones_like(F.conv2d(x, w, None, s, p)[0]) for (_, x), (w, s, p) in zip(convs, args)]

    def ours():
        for i, ((_, x), (w, s, p), dz) in enumerate(zip(convs, args, douts)):
            F.conv2d_backward(dz, F.conv2d(x, w, None, s, p)[1], input_grad=i > 0)

    theirs = None
    if torch:
        tx = [torch.tensor(x, requires_grad=i > 0) for i, (_, x) in enumerate(convs)]
        tw = [torch.tensor(w, requires_grad=True) for w, _, _ in args]
        tdz = [torch.tensor(dz) for dz in douts]

        def theirs():
            for x, w, (_, s, p), dz in zip(tx, tw, args, tdz):
                torch.nn.functional.conv2d(x, w, None, s, p).backward(dz)

    flops = 3 * sum(2 * np.prod(shape) * per_output for m, _, shape, per_output in layers if isinstance(m, nn.Conv2d))
    return (f"ResNet-20's {len(convs)} convolutions alone (forward+backward), batch {batch}", None, flops, None, None,
            ours, theirs)


def conv_floors(np, torch, layers: list, rounds: int) -> list[dict]:
    """Per distinct convolution of the step: torch's forward+backward, convprop's, and the floor of any
    im2col engine in NumPy — its GEMMs (Z = patches @ K, ∂K = patchesᵀ @ ∂Z, and ∂A's GEMM but for the
    first layer) at OpenBLAS's rate on operands already in cache, plus one copy of the patches (every
    im2col engine copies them at least once).  floor / torch above 1.2 for the shapes that carry the time
    means the ≤ 1.2× target is out of reach without fused kernels (docs/performance.md)."""
    from convprop import nn

    shapes: dict = {}
    for i, (m, x, out_shape, _) in enumerate(e for e in layers if isinstance(e[0], nn.Conv2d)):
        key = (x.shape, m.weight.data.shape, m.stride, m.padding, i > 0)
        shapes.setdefault(key, [m, x, out_shape, 0])[3] += 1
    rows = [_floor_row(np, torch, m, x, out_shape, count, input_grad, rounds)
            for (*_, input_grad), (m, x, out_shape, count) in shapes.items()]
    keys = ("ours_ms", "gemms_ms", "im2col_ms", "floor_ms") + (("torch_ms",) if torch else ())
    total = {k: sum(r[k] * r["count"] for r in rows) for k in keys}
    gflop = sum(r["gflop"] * r["count"] for r in rows)
    return rows + [dict(shape="all, weighted by count", count=sum(r["count"] for r in rows), gflop=gflop,
                        gemm_gflops=gflop / total["gemms_ms"] * 1e3, **total)]


def _floor_row(np, torch, m, x, out_shape, count: int, input_grad: bool, rounds: int) -> dict:
    import convprop.functional as F
    from benchmarks.timing import interleaved
    from convprop.functional import _checks as chk
    from convprop.functional import _schedule as S
    from convprop.functional._windows import pad, windows

    w, stride, padding = m.weight.data, chk.pair(m.stride, "stride", 1), chk.pair(m.padding, "padding", 0)
    dz = np.ones_like(F.conv2d(x, w, None, stride, padding)[0])
    n, oh, ow = out_shape[0], out_shape[2], out_shape[3]
    cols, cout = w[0].size, w.shape[0]
    positions = n * oh * ow
    tile = max(1, min(positions, S.TILE_BYTES // (cols * x.itemsize)))  # positions in 2 MiB of patches
    a = np.random.default_rng(0).standard_normal((tile, cols)).astype(x.dtype)  # one tile's operands,
    k, g = np.ones((cols, cout), x.dtype), np.ones((tile, cout), x.dtype)     # reused: from cache
    reps = -(-positions // tile)

    def gemms():
        for _ in range(reps):
            a @ k  # Z = patches @ K
            a.T @ g  # ∂K = patchesᵀ @ ∂Z
            if input_grad:
                g @ k.T  # ∂patches = ∂Z @ Kᵀ (the 'same' route: the same flops)

    win = windows(pad(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), padding), w.shape[2:], stride, (1, 1),
                  (oh, ow))
    per = max(1, tile // (oh * ow))

    def im2col():  # every patch copied once, a tile at a time, as the engine does
        for n0 in range(0, n, per):
            S.patches(win, S.Tile(slice(n0, min(n, n0 + per)), slice(0, oh)), 1)

    def ours():
        F.conv2d_backward(dz, F.conv2d(x, w, None, stride, padding)[1], input_grad=input_grad)

    fns = {"ours": ours, "gemms": gemms, "im2col": im2col}
    if torch:
        tx, tw, tdz = torch.tensor(x, requires_grad=input_grad), torch.tensor(w, requires_grad=True), torch.tensor(dz)
        fns["torch"] = lambda: torch.nn.functional.conv2d(tx, tw, None, stride, padding).backward(tdz)
    t = interleaved(fns, rounds)
    flops = 2 * positions * cols * cout * (3 if input_grad else 2)
    return dict(shape=f"{x.shape[1]}→{cout} {x.shape[2]}² k{w.shape[2]} s{stride[0]}", count=count, gflop=flops / 1e9,
                gemm_gflops=flops / t["gemms"] / 1e9, floor_ms=(t["gemms"] + t["im2col"]) * 1e3,
                **{f"{name}_ms": v * 1e3 for name, v in t.items()})


def floor_table(rows: list[dict]) -> str:
    """conv_floors' rows as a Markdown table."""
    out = ["| convolution | × | GFLOP | torch ms | convprop ms (× torch) | GEMMs ms "
           "(GFLOP/s) | one im2col ms | floor ms (× torch) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        torch_ms = r.get("torch_ms")
        ours, floor = ((f" ({r[k] / torch_ms:.2f}×)" if torch_ms else "") for k in ("ours_ms", "floor_ms"))
        out.append(f"| {r['shape']} | {r['count']} | {r['gflop']:.2f} | {torch_ms or 0:.1f} | {r['ours_ms']:.1f}"
                   f"{ours} | {r['gemms_ms']:.1f} ({r['gemm_gflops']:.0f}) | {r['im2col_ms']:.1f} | "
                   f"{r['floor_ms']:.1f}{floor} |")
    return "\n".join(out)


def batch_norms_alone(np, torch, model, batch: int) -> tuple:
    """The step's BatchNorm2d layers alone, each followed by a ReLU: forward (training: batch statistics)
    and backward of both on the input the layer gets in the step, both frameworks."""
    import convprop.functional as F
    from convprop import nn

    bns = [(m, x) for m, x, _, _ in traced_layers(model, batch, 32, nn.BatchNorm2d)]
    douts = [np.ones_like(x) for _, x in bns]  # in x's memory layout, as in the step

    def ours():
        for (m, x), dy in zip(bns, douts):
            y, cache = F.batch_norm(x, m.running_mean.copy(), m.running_var.copy(), m.weight.data, m.bias.data, True)
            a, relu_cache = F.relu(y)
            F.batch_norm_backward(F.relu_backward(dy, relu_cache), cache)

    theirs = None
    if torch:
        tx = [torch.tensor(x, requires_grad=True) for _, x in bns]
        tp = [(torch.tensor(m.weight.data, requires_grad=True), torch.tensor(m.bias.data, requires_grad=True),
               torch.tensor(m.running_mean), torch.tensor(m.running_var)) for m, _ in bns]
        tdy = [torch.tensor(dy) for dy in douts]

        def theirs():
            for x, (g, b, rm, rv), dy in zip(tx, tp, tdy):
                torch.relu(torch.nn.functional.batch_norm(x, rm.clone(), rv.clone(), g, b, True)).backward(dy)

    return (f"ResNet-20's {len(bns)} BatchNorm2d + ReLU alone (forward+backward), batch {batch}", None, None,
            None, None, ours, theirs)


def traced_layers(model, n: int, hw: int, kinds=None, in_channels: int | None = None) -> list[tuple]:
    """(module, its input, its output's shape, multiply-adds per output value) of every layer of `kinds`
    (default: convolutions and linear layers), from one forward of n random images of hw × hw."""
    import numpy as np

    from convprop import nn

    seen = []
    layers = [m for m in model.modules() if isinstance(m, kinds or (nn.Conv2d, nn.Linear))]
    for m in layers:
        def traced(x, m=m, forward=m.forward):
            out = forward(x)
            per_output = (m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                          if isinstance(m, nn.Conv2d) else getattr(m, "in_features", 0))
            seen.append((m, x.copy(order="K"), out.shape, per_output))  # in the layout the step gives it
            return out
        m.forward = traced
    try:
        with nn.no_grad():
            c = in_channels or model.conv1.in_channels
            model.eval()(np.random.default_rng(1).standard_normal((n, c, hw, hw))
                         .astype(model.dtype))
    finally:
        for m in layers:
            del m.forward
        model.train()
    return seen


RUN_SCRIPT = r"""
import sys, time
framework, name, steps, batch, evaluate_n, threads, root = sys.argv[1:8]
steps, batch, evaluate_n, threads = int(steps), int(batch), int(evaluate_n), int(threads)
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
import numpy as np
from convprop.data import DataLoader, load_mnist
x, y = load_mnist()
tx, ty = load_mnist(train=False)
loader = DataLoader(x, y, batch, shuffle=True, seed=0, max_shift=2)
test = DataLoader(tx[:evaluate_n], ty[:evaluate_n], 1000)
import convprop.random as R
from convprop import models
R.manual_seed(0)
ours = models.build(name)
t = time.perf_counter()
if framework == "convprop":
    from convprop.allocator import keep_freed_memory
    keep_freed_memory()  # as `convprop train` does
    from convprop import nn, optim, set_num_threads
    from convprop.train import evaluate, train_step
    set_num_threads(threads)
    opt, loss_fn = optim.Adam(ours.parameters(), lr=1e-3), nn.CrossEntropyLoss()
    ready = hwm()
    for k, (xb, yb) in enumerate(loader):
        if k == steps:
            break
        train_step(ours, loss_fn, opt, xb, yb)
    evaluate(ours, test, loss_fn)
else:
    import torch
    torch.set_num_threads(threads)
    sys.path.insert(0, root)
    from benchmarks.models import torch_model
    model = torch_model(torch, name, ours).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ready = hwm()
    for k, (xb, yb) in enumerate(loader):
        if k == steps:
            break
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        for xb, yb in test:
            model(torch.from_numpy(xb))
print(time.perf_counter() - t, hwm(), hwm() - ready)
"""

MEMORY_RUNS = (("resnet20", 128), ("vgg_small", 64))


def memory_runs(torch_ok: bool, threads: int, smoke: bool, rounds: int) -> list[dict]:
    """Peak RSS of `steps` training steps and an evaluation, per model and framework, each in a fresh
    process (alternating); the largest of the repeats."""
    steps, evaluate_n = (2, 100) if smoke else (20, 2000)
    frameworks = ["convprop"] + (["torch"] if torch_ok else [])
    res: dict = {}
    for _ in range(1 if smoke else max(2, rounds // 3)):
        for name, batch in MEMORY_RUNS:
            batch = 8 if smoke else batch
            for f in frameworks:
                out = subprocess.run([sys.executable, "-c", RUN_SCRIPT, f, name, str(steps), str(batch),
                                      str(evaluate_n), str(threads), ROOT],
                                     capture_output=True, text=True, cwd=ROOT, check=True)
                seconds, peak, run = (float(v) for v in out.stdout.split())
                res.setdefault((name, batch), {}).setdefault(f, []).append((seconds, peak, run))
    rows = []
    for (name, batch), by in res.items():
        row = {"model": name, "batch": batch, "steps": steps, "evaluated": evaluate_n}
        for f, vals in by.items():
            row[f"{f}_peak_mb"] = max(p for _, p, _ in vals)
            row[f"{f}_run_mb"] = max(r for _, _, r in vals)
            row[f"{f}_s"] = statistics.median(s for s, _, _ in vals)
        if "torch_peak_mb" in row:
            row["ratio"] = row["convprop_peak_mb"] / row["torch_peak_mb"]
            row["run_ratio"] = row["convprop_run_mb"] / max(row["torch_run_mb"], 1.0)
        rows.append(row)
    return rows


def memory_line(r: dict) -> str:
    theirs = (f"torch {r['torch_peak_mb']:.0f} MB (+{r['torch_run_mb']:.0f})  ratio {r['ratio']:.2f} "
              f"(of the training's own: {r['run_ratio']:.2f})"
              if "torch_peak_mb" in r else "torch —")
    return (f"{r['model']} peak RSS, {r['steps']} steps at batch {r['batch']} + evaluating {r['evaluated']}: "
            f"convprop {r['convprop_peak_mb']:.0f} MB (+{r['convprop_run_mb']:.0f} training)  {theirs}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, choices=[1, 2], default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--floors", action="store_true",
                   help="only the per-convolution floors of ResNet-20 and LeNet-5 (GEMMs + one im2col) "
                        "against torch")
    args = p.parse_args(argv)
    want = str(args.threads)
    if os.environ.get("OMP_NUM_THREADS") != want and "numpy" not in sys.modules:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": want, "OMP_NUM_THREADS": want, "MKL_NUM_THREADS": want}
        return subprocess.call([sys.executable, "-m", "benchmarks.models", *(sys.argv[1:] if argv is None else argv)],
                               env=env, cwd=ROOT)
    import numpy as np

    from benchmarks.timing import cpu_name, interleaved
    from convprop import set_num_threads

    set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    rounds = 3 if args.smoke else args.rounds
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; {args.threads} thread(s); load average "
          f"{os.getloadavg()[0]:.1f}")
    if args.floors:
        from convprop import models

        for name, model, batches, hw, c in (("ResNet-20", models.resnet20(in_channels=3), (128,), 32, 3),
                                            ("LeNet-5", models.lenet5(), (64, 256), 28, 1)):
            for batch in (8,) if args.smoke else batches:
                print(f"\n{name}, batch {batch}:\n")
                print(floor_table(conv_floors(np, torch, traced_layers(model, batch, hw, in_channels=c), rounds)))
        return 0
    for name, _, flops, _, _, ours, theirs in step_cases(np, torch, args.smoke):
        t = interleaved({"convprop": ours, **({"torch": theirs} if theirs else {})}, rounds)
        ratio = f"  ratio {t['convprop'] / t['torch']:.2f}" if "torch" in t else ""
        rate = f" ({flops / t['convprop'] / 1e9:.1f} GFLOP/s)" if flops else ""
        print(f"{name}: convprop {t['convprop'] * 1e3:.1f} ms{rate}"
              + (f"  torch {t['torch'] * 1e3:.1f} ms" if "torch" in t else "") + ratio, flush=True)
    for r in memory_runs(torch is not None, args.threads, args.smoke, rounds):
        print(memory_line(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
