"""Run under `mpiexec -n K python tests/mpi_equivalence.py OUT.json` (tests/test_distributed.py does).

For each case, every rank trains float64 with its shard of each global batch (distributed.fit, so the
steps are distributed.step's); rank 0 also trains one process on the whole batches (train.train_step) and
writes, per case, the largest relative difference of every parameter and buffer from that single
process, and whether all ranks hold bitwise the same values.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from convprop import distributed, models, nn, optim
from convprop.data import DataLoader
from convprop.random import manual_seed
from convprop.train import evaluate, train_step

rank, world = distributed.init()
B_PER_RANK = 4
# 4 full global batches and a 5th, uneven one: (K·b·4 + K + 1) samples, so its shards differ in size
N = world * B_PER_RANK * 4 + world + 1
CASES = {
    "lenet5-sgd-momentum": (models.lenet5, lambda p: optim.SGD(p, lr=0.05, momentum=0.9)),
    "lenet5-adam": (models.lenet5, lambda p: optim.Adam(p, lr=1e-3)),
    "vgg_small-sgd-momentum": (lambda dtype: models.vgg_small(width=4, dtype=dtype),
                               lambda p: optim.SGD(p, lr=0.05, momentum=0.9)),
}
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (N, 28, 28), dtype=np.uint8)
labels = rng.integers(0, 10, N)
test_images, test_labels = images[:11], labels[:11]


def build(case):
    make, make_opt = CASES[case]
    manual_seed(0)
    model = make(dtype=np.float64)
    return model, make_opt(model.parameters())


def state(model):
    return [p.data for p in model.parameters()] + [b for _, b in model.named_buffers() if b is not None]


results = {}
for case in CASES:
    model, optimizer = build(case)
    loader = DataLoader(images, labels, world * B_PER_RANK, shuffle=True, seed=3, max_shift=2, dtype=np.float64,
                        num_replicas=world, rank=rank)
    test = DataLoader(test_images, test_labels, 4, dtype=np.float64)  # 4 + 4 + 3: uneven shards, some empty
    history = distributed.fit(model, nn.CrossEntropyLoss(), optimizer, loader, 1, test, progress=False, log=None)
    steps = len(loader)
    mine = np.concatenate([v.ravel() for v in state(model)])
    everyone = distributed._comm.allgather(mine.tobytes())
    if rank == 0:
        ref, ref_opt = build(case)
        ref_loader = DataLoader(images, labels, world * B_PER_RANK, shuffle=True, seed=3, max_shift=2,
                                dtype=np.float64)
        ref.train()
        seen, total, correct = 0, 0.0, 0
        for k, (x, y) in enumerate(ref_loader):
            if k == steps:  # (the remainder rule: none here, the last batch has more samples than ranks)
                break
            loss, right = train_step(ref, nn.CrossEntropyLoss(), ref_opt, x, y)
            seen, total, correct = seen + len(y), total + loss * len(y), correct + right
        test_loss, test_acc = evaluate(ref, test, nn.CrossEntropyLoss())
        rel = [float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)) for a, b in zip(state(model), state(ref))]
        results[case] = {
            "steps": steps, "ref_steps": len(ref_loader), "max_rel": max(rel),
            "same_on_every_rank": all(e == everyone[0] for e in everyone),
            "train_loss": [history[0]["train_loss"], total / seen],
            "train_acc": [history[0]["train_acc"], correct / seen],
            "test": [[history[0]["val_loss"], history[0]["val_acc"]], [test_loss, test_acc]],
            "buffers": len(state(model)) - len(list(model.parameters())),
        }
# the README's explicit loop with distributed.DistributedOptimizer: step(n) weights each rank by its shard
model, optimizer = build("lenet5-adam")
opt = distributed.DistributedOptimizer(optimizer)
loader = DataLoader(images, labels, world * B_PER_RANK, shuffle=True, seed=3, dtype=np.float64, num_replicas=world,
                    rank=rank)
for x, y in loader:
    opt.zero_grad()
    loss, dlogits = nn.CrossEntropyLoss()(model(x), y)
    model.backward(dlogits, input_grad=False)
    opt.step(len(y))
everyone = distributed._comm.allgather(np.concatenate([v.ravel() for v in state(model)]).tobytes())
if rank == 0:
    ref, ref_opt = build("lenet5-adam")
    for x, y in DataLoader(images, labels, world * B_PER_RANK, shuffle=True, seed=3, dtype=np.float64):
        train_step(ref, nn.CrossEntropyLoss(), ref_opt, x, y)
    rel = [float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(state(model), state(ref))]
    results["lenet5-adam-DistributedOptimizer"] = {
        "steps": len(loader), "ref_steps": len(loader), "max_rel": max(rel),
        "same_on_every_rank": all(e == everyone[0] for e in everyone), "buffers": 0}

if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump({"world": world, "cases": results}, f, indent=1)
