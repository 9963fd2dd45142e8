"""Time convprop against PyTorch (CPU) in one process, interleaved A B A B, medians of >= 7 rounds.

    python -m benchmarks [--threads 1|2] [--rounds 7] [--smoke] [--out DIR]

Reports time, GFLOP/s, % of the sgemm peak measured here, and the ratio to torch; writes
DIR/bench-<threads>t.json and DIR/bench-<threads>t.md.  Thread counts are fixed before NumPy loads
(the command re-executes itself with OPENBLAS/OMP/MKL_NUM_THREADS set) and torch.set_num_threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

from .timing import cpu_name, interleaved

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, choices=[1, 2], default=2, help="BLAS and torch threads (default 2)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case; the median is reported")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and 3 rounds: checks that it runs (CI)")
    p.add_argument("--out", default=None, help="directory for the JSON and markdown results (default: "
                   "benchmarks/results; with --smoke, a directory under the system's temporary one, so that a "
                   "check leaves no files in the repository)")
    p.add_argument("--only", default="", help="comma-separated substrings: run only matching cases")
    p.add_argument("--no-train", action="store_true", help="skip the epoch and peak-RSS measurements")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(tempfile.gettempdir(), "convprop-bench-smoke") if args.smoke else "benchmarks/results"
    return args


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    want = str(args.threads)
    if any(os.environ.get(v) != want for v in THREAD_VARS) and "numpy" not in sys.modules:
        env = {**os.environ, **{v: want for v in THREAD_VARS}}
        return subprocess.call([sys.executable, "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)],
                               env=env)
    return run(args)


# --------------------------------------------------------------------------- timing
def sgemm_peak(np) -> float:
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    t = interleaved({"mm": lambda: a @ a}, 5)["mm"]
    return 2 * 1024**3 / t / 1e9


# --------------------------------------------------------------------------- cases
def conv_cases(smoke):
    """name, N, Cin, Cout, H, k, stride, padding, input_grad — the name says the N it runs (4 at smoke size)."""
    a, b = (4, 4) if smoke else (64, 32)
    return [
        (f"conv2d LeNet conv1 N{a} 1→6 28² k5 p2", a, 1, 6, 28, 5, 1, 2, False),
        (f"conv2d LeNet conv2 N{a} 6→16 14² k5", a, 6, 16, 14, 5, 1, 0, True),
        (f"conv2d N{b} 64→64 32² k3 p1", b, 64, 64, 32, 3, 1, 1, True),
        (f"conv2d N{b} 3→32 32² k3 p1", b, 3, 32, 32, 3, 1, 1, True),
        (f"conv2d stride 2 N{b} 32→64 32² k3 s2 p1", b, 32, 64, 32, 3, 2, 1, True),
    ]


def build_cases(np, torch, F, smoke):
    """Each case: (name, flops of forward+backward or None, ours(), theirs() or None, forward-only pair)."""
    TF = torch.nn.functional if torch else None
    rng = np.random.default_rng(0)
    cases = []

    def t(a, grad=False):
        return torch.tensor(a, requires_grad=grad) if torch else None

    for name, n, cin, cout, h, k, s, p, input_grad in conv_cases(smoke):
        x = rng.standard_normal((n, cin, h, h)).astype(np.float32)
        w = (rng.standard_normal((cout, cin, k, k)) * 0.1).astype(np.float32)
        b = np.zeros(cout, np.float32)
        out, _ = F.conv2d(x, w, b, stride=s, padding=p)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        fwd_flops = 2 * out.size * cin * k * k
        flops = fwd_flops * (3 if input_grad else 2)

        def ours(x=x, w=w, b=b, s=s, p=p, dout=dout, ig=input_grad):
            _, cache = F.conv2d(x, w, b, stride=s, padding=p)
            F.conv2d_backward(dout, cache, input_grad=ig)

        def ours_f(x=x, w=w, b=b, s=s, p=p):
            F.conv2d(x, w, b, stride=s, padding=p)

        theirs = theirs_f = None
        if torch:
            xt, wt, bt, dt = t(x, input_grad), t(w, True), t(b, True), t(dout)

            def theirs(xt=xt, wt=wt, bt=bt, s=s, p=p, dt=dt):
                wt.grad = bt.grad = xt.grad = None
                TF.conv2d(xt, wt, bt, stride=s, padding=p).backward(dt)

            def theirs_f(xt=xt, wt=wt, bt=bt, s=s, p=p):
                with torch.no_grad():
                    TF.conv2d(xt, wt, bt, stride=s, padding=p)

        cases.append((name, fwd_flops, flops, ours_f, theirs_f, ours, theirs))

    # conv_transpose2d ×2 upsampling
    n = 4 if smoke else 32
    x = rng.standard_normal((n, 32, 16, 16)).astype(np.float32)
    w = (rng.standard_normal((32, 16, 4, 4)) * 0.1).astype(np.float32)
    out, _ = F.conv_transpose2d(x, w, stride=2, padding=1)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    fwd_flops = 2 * x.size * 16 * 16

    def ours_t(x=x, w=w, dout=dout):
        _, c = F.conv_transpose2d(x, w, stride=2, padding=1)
        F.conv_transpose2d_backward(dout, c)

    def ours_tf(x=x, w=w):
        F.conv_transpose2d(x, w, stride=2, padding=1)

    theirs_t = theirs_tf = None
    if torch:
        xt, wt, dt = t(x, True), t(w, True), t(dout)

        def theirs_t(xt=xt, wt=wt, dt=dt):
            xt.grad = wt.grad = None
            TF.conv_transpose2d(xt, wt, stride=2, padding=1).backward(dt)

        def theirs_tf(xt=xt, wt=wt):
            with torch.no_grad():
                TF.conv_transpose2d(xt, wt, stride=2, padding=1)

    cases.append((f"conv_transpose2d ×2 N{n} 32→16 16²→32² k4 s2 p1", fwd_flops, 3 * fwd_flops,
                  ours_tf, theirs_tf, ours_t, theirs_t))

    # pooling
    n = 4 if smoke else 64
    x = rng.standard_normal((n, 16, 32, 32)).astype(np.float32)
    pools = (("max_pool2d 2×2/2", "max_pool2d", 2, 2), ("max_pool2d 3×3/2 overlapping", "max_pool2d", 3, 2),
             ("avg_pool2d 3×3/2", "avg_pool2d", 3, 2))
    for label, op, k, s in pools:
        out, _ = getattr(F, op)(x, k, stride=s)
        dout = rng.standard_normal(out.shape).astype(np.float32)

        def ours_p(op=op, k=k, s=s, dout=dout):
            _, c = getattr(F, op)(x, k, stride=s)
            getattr(F, op + "_backward")(dout, c)

        def ours_pf(op=op, k=k, s=s):
            getattr(F, op)(x, k, stride=s)

        theirs_p = theirs_pf = None
        if torch:
            xt, dt = t(x, True), t(dout)

            def theirs_p(op=op, k=k, s=s, xt=xt, dt=dt):
                xt.grad = None
                getattr(TF, op)(xt, k, stride=s).backward(dt)

            def theirs_pf(op=op, k=k, s=s, xt=xt):
                with torch.no_grad():
                    getattr(TF, op)(xt, k, stride=s)

        cases.append((f"{label} N{n} 16×32²", None, None, ours_pf, theirs_pf, ours_p, theirs_p))
    return cases


def lenet_step_cases(np, torch, smoke):
    """The LeNet-5 training steps, in this process on convprop's threads.  (`convprop train` on more
    than one core runs data-parallel over MPI ranks: the whole runs below, and benchmarks.distributed.)"""
    import convprop.random as R
    from convprop import models, nn, optim
    from convprop.train import train_step

    cases = []
    for batch in ((8,) if smoke else (64, 256)):
        R.manual_seed(0)
        model = models.lenet5()
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        rng = np.random.default_rng(batch)
        x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, batch)

        def ours(model=model, loss_fn=loss_fn, opt=opt, x=x, y=y):
            train_step(model, loss_fn, opt, x, y)  # zero_grad, forward, loss, backward, SGD step

        theirs = None
        if torch:
            tm = torch_lenet(torch)
            tm.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
            topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
            xt, yt = torch.tensor(x), torch.tensor(y)

            def theirs(tm=tm, topt=topt, xt=xt, yt=yt):
                topt.zero_grad()
                torch.nn.functional.cross_entropy(tm(xt), yt).backward()
                topt.step()

        flops = 3 * lenet_forward_flops(batch)  # forward + backward ≈ 3× forward
        cases.append((f"LeNet-5 training step, batch {batch}", None, flops, None, None, ours, theirs))
    return cases


def lenet_forward_flops(n):
    conv1 = 2 * n * 6 * 28 * 28 * 25
    conv2 = 2 * n * 16 * 10 * 10 * 150
    fc = 2 * n * (400 * 120 + 120 * 84 + 84 * 10)
    return conv1 + conv2 + fc


def torch_lenet(torch):
    tnn = torch.nn
    return tnn.Sequential(tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(6, 16, 5),
                          tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(400, 120), tnn.ReLU(),
                          tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10))


# --------------------------------------------------------------------------- whole runs
EPOCH_SCRIPT = r"""
import sys, time, numpy as np
framework, epochs, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
from convprop.data import DataLoader, load_mnist
x, y = load_mnist()
x, y = x[:limit], y[:limit]
rank, world = 0, 1
if framework == "convprop":  # as `convprop train` on that many cores: that many MPI ranks (see whole_runs)
    from convprop import distributed, set_num_threads
    rank, world = distributed.init()
    if world > 1:
        set_num_threads(1)
loader = DataLoader(x, y, 64, shuffle=True, seed=0, max_shift=2, num_replicas=world, rank=rank)
steps = epochs * len(loader)
if framework == "convprop":
    from convprop.allocator import keep_freed_memory
    keep_freed_memory()  # as `convprop train` does
    import convprop.random as R
    from convprop import models, nn, optim
    from convprop.train import train_step
    R.manual_seed(0)
    model = models.lenet5(); opt = optim.Adam(model.parameters(), lr=5e-3)
    sched = optim.OneCycleLR(opt, max_lr=5e-3, total_steps=steps); loss_fn = nn.CrossEntropyLoss()
    one = distributed.step if world > 1 else train_step
    def step(xb, yb):
        one(model, loss_fn, opt, xb, yb); sched.step()
else:
    import torch
    torch.set_num_threads(int(sys.argv[4])); torch.manual_seed(0)
    sys.path.insert(0, sys.argv[5])
    from benchmarks.suite import torch_lenet
    model = torch_lenet(torch); opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    def step(xb, yb):
        opt.zero_grad(); torch.nn.functional.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
        opt.step(); sched.step()
t = time.perf_counter()
for _ in range(epochs):
    for xb, yb in loader:
        step(xb, yb)
elapsed = time.perf_counter() - t
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would count the parent's memory; with MPI
# ranks, every rank's (an overcount: the pages they share count twice)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
if world > 1:
    hwm = int(distributed.allreduce(np.array([hwm]))[0])
if rank == 0:
    print(elapsed, hwm)
"""


ALONE_SCRIPT = r"""
import sys
framework, rounds, smoke, root = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
sys.path.insert(0, root)
import numpy as np
import convprop.functional as F
from benchmarks.suite import build_cases, lenet_step_cases
from benchmarks.timing import interleaved
torch = None
if framework == "convprop":
    from convprop.allocator import keep_freed_memory
    keep_freed_memory()  # as `convprop train` does
else:
    import os, torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# the steps first, as in a training run: their worker processes fork from a heap the ops have not grown
cases = [(name, ours, theirs) for name, *_, ours, theirs in lenet_step_cases(np, torch, smoke)]
cases += [(f"{name}, forward+backward", ours, theirs) for name, *_, ours, theirs in build_cases(np, torch, F, smoke)]
for name, ours, theirs in cases:
    print(name, "\t", interleaved({"x": ours if framework == "convprop" else theirs}, rounds)["x"])
"""


def fresh_processes(torch_ok: bool, smoke: bool, rounds: int) -> list[dict]:
    """Every op's forward+backward and the LeNet-5 training steps again, each framework alone in its
    own fresh process (no threads, spinning workers or allocator state shared with the other),
    processes alternating; medians over the processes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frameworks = ["convprop"] + (["torch"] if torch_ok else [])
    times: dict = {}
    for _ in range(1 if smoke else max(3, rounds // 2)):
        for f in frameworks:
            out = subprocess.run([sys.executable, "-c", ALONE_SCRIPT, f, str(rounds), "1" if smoke else "0", root],
                                 capture_output=True, text=True, cwd=root, check=True)
            for line in out.stdout.splitlines():
                name, seconds = line.split("\t")
                times.setdefault(name.strip(), {}).setdefault(f, []).append(float(seconds))
    rows = []
    for name, by in times.items():
        ours, theirs = (statistics.median(by[f]) * 1e3 if f in by else None for f in ("convprop", "torch"))
        rows.append({"case": name, "convprop_ms": ours, "torch_ms": theirs, "ratio": theirs and ours / theirs,
                     "processes": len(by["convprop"])})
    return rows


def whole_runs(torch_ok: bool, threads: int, smoke: bool, rounds: int) -> list[dict]:
    """One epoch of the default recipe (5,000 images, shifts, Adam one-cycle), each framework in a
    fresh process, alternating; and the peak RSS of each whole run."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    limit = 256 if smoke else 5000
    frameworks = ["convprop"] + (["torch"] if torch_ok else [])
    res = {f: [] for f in frameworks}
    for _ in range(1 if smoke else max(3, rounds // 2)):
        for f in frameworks:
            ranks = ([os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(threads)]
                     if f == "convprop" and threads > 1 else [])
            out = subprocess.run([*ranks, sys.executable, "-c", EPOCH_SCRIPT, f, "1", str(limit), str(threads), root],
                                 capture_output=True, text=True, cwd=root, check=True)
            seconds, rss_kb = out.stdout.split()
            res[f].append((float(seconds), int(rss_kb)))
    rows = []
    for f in frameworks:
        rows.append({"framework": f, "images": limit, "epoch_s": statistics.median(s for s, _ in res[f]),
                     "peak_rss_mb": max(r for _, r in res[f]) / 1024})
    return rows


# --------------------------------------------------------------------------- report
def run(args) -> int:
    import numpy as np

    import convprop.functional as F

    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    rounds = 3 if args.smoke else max(7, args.rounds)
    peak = sgemm_peak(np)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
               "python": platform.python_version(), "numpy": np.__version__,
               "torch": torch.__version__ if torch else None,
               "sgemm_peak_gflops": round(peak, 1), "rounds": rounds, "smoke": args.smoke}
    print(f"machine: {machine['cpu']}, {machine['cores']} cores; {args.threads} thread(s); "
          f"sgemm peak {peak:.1f} GFLOP/s; numpy {np.__version__}; torch {machine['torch']}")
    results = []
    from benchmarks import models as model_bench  # ResNet-20's step; peak RSS of resnet20 and vgg_small runs

    cases = build_cases(np, torch, F, args.smoke) + lenet_step_cases(np, torch, args.smoke)
    cases += model_bench.step_cases(np, torch, args.smoke)
    only = [s for s in args.only.split(",") if s]
    for name, fwd_flops, flops, ours_f, theirs_f, ours, theirs in cases:
        if only and not any(s in name for s in only):
            continue
        for phase, a, b, fl in (("forward", ours_f, theirs_f, fwd_flops), ("forward+backward", ours, theirs, flops)):
            if a is None:
                continue
            fns = {"convprop": a, **({"torch": b} if b else {})}
            t = interleaved(fns, rounds)
            row = {"case": name, "phase": phase, "convprop_ms": t["convprop"] * 1e3,
                   "torch_ms": t["torch"] * 1e3 if "torch" in t else None}
            row["ratio"] = row["convprop_ms"] / row["torch_ms"] if row["torch_ms"] else None
            if fl:
                row["gflops"] = fl / t["convprop"] / 1e9
                row["pct_peak"] = 100 * row["gflops"] / peak
            results.append(row)
            print(_line(row), flush=True)
    alone = [] if args.no_train else fresh_processes(torch is not None, args.smoke, rounds)
    for r in alone:
        print(_line({**r, "phase": "alone"}), flush=True)
    runs = [] if args.no_train else whole_runs(torch is not None, args.threads, args.smoke, rounds)
    memory = [] if args.no_train else model_bench.memory_runs(torch is not None, args.threads, args.smoke, rounds)
    for r in memory:
        print(model_bench.memory_line(r), flush=True)
    for r in runs:
        what = "one epoch of the default recipe" if r["images"] == 5000 else f"one epoch of {r['images']} images"
        print(f"{what:<48} {r['framework']:>9}: {r['epoch_s']:.2f} s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"bench-{args.threads}t{'-smoke' if args.smoke else ''}")
    with open(stem + ".json", "w") as f:
        json.dump({"machine": machine, "ops": results, "alone": alone, "runs": runs, "memory": memory}, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(markdown(machine, results, alone, runs) + "".join(f"\n{model_bench.memory_line(r)}\n" for r in memory))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


def _line(r):
    torch_part = f"torch {r['torch_ms']:8.3f} ms  ratio {r['ratio']:5.2f}" if r["torch_ms"] else "torch —"
    gf = f"  {r['gflops']:6.1f} GFLOP/s ({r['pct_peak']:3.0f}% peak)" if "gflops" in r else ""
    return f"{r['case'][:48]:<48} {r['phase']:>16}: convprop {r['convprop_ms']:8.3f} ms  {torch_part}{gf}"


def markdown(machine, results, alone, runs) -> str:
    lines = [f"Machine: {machine['cpu']}, {machine['cores']} cores, **{machine['threads']} thread(s)**; "
             f"NumPy {machine['numpy']}, torch {machine['torch']}; sgemm peak {machine['sgemm_peak_gflops']} "
             f"GFLOP/s; medians of {machine['rounds']} interleaved rounds.", "",
             "| case | phase | convprop ms | torch ms | ratio | GFLOP/s | % sgemm peak |",
             "|---|---|---:|---:|---:|---:|---:|"]
    def num(v, fmt, suffix=""):
        return "" if v is None else format(v, fmt) + suffix

    for r in results:
        lines.append(f"| {r['case']} | {r['phase']} | {r['convprop_ms']:.3f} | {num(r['torch_ms'], '.3f')} | "
                     f"{num(r['ratio'], '.2f', '×')} | {num(r.get('gflops'), '.1f')} | "
                     f"{num(r.get('pct_peak'), '.0f', '%')} |")
    if alone:
        lines += ["", f"| each framework alone in a fresh process (median of {alone[0]['processes']} each) | "
                  "convprop ms | torch ms | ratio |", "|---|---:|---:|---:|"]
        lines += [f"| {r['case']} | {r['convprop_ms']:.3f} | {num(r['torch_ms'], '.3f')} | "
                  f"{num(r['ratio'], '.2f', '×')} |" for r in alone]
    if runs:
        lines += ["", f"| whole run (fresh process, {runs[0]['images']:,} images) | one epoch, s | peak RSS, MB |",
                  "|---|---:|---:|"]
        lines += [f"| {r['framework']} | {r['epoch_s']:.2f} | {r['peak_rss_mb']:.0f} |" for r in runs]
    return "\n".join(lines) + "\n"


