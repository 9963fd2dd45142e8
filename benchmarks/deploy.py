"""What deployment buys: LeNet-5 exported to ONNX and run by ONNX Runtime, against convprop's own
predict (convprop.train.predict: forward in eval mode + softmax), images per second, same process.

    python -m benchmarks.deploy [--threads 1|2] [--rounds 9] [--smoke]

Both get the same float32 batch of normalised MNIST test images and the same thread count (ONNX
Runtime's intra-op threads; convprop's own threads, with OpenBLAS on one); ONNX Runtime's output
is checked against convprop's (1e-5) before any timing.  Rounds are interleaved (A B A B …) and
the median per-batch time is reported, with the CPU model.  Target: ONNX Runtime ≥ 2× convprop's
images/s for LeNet-5.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

TARGET = 2.0


def run(threads: int, rounds: int, smoke: bool) -> list[dict]:
    import numpy as np
    import onnxruntime as ort

    import convprop
    import convprop.random
    from convprop import models
    from convprop import onnx as conv_onnx
    from convprop.data import load_mnist, normalize
    from convprop.train import predict

    from .timing import interleaved

    convprop.set_num_threads(threads)
    convprop.random.manual_seed(0)
    model = models.lenet5().eval()
    images = normalize(load_mnist(train=False)[0][:256 if smoke else 1000])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no spinning into convprop's turn
    with tempfile.TemporaryDirectory() as d:
        path = conv_onnx.export(model, os.path.join(d, "lenet5.onnx"), (1, 1, 28, 28))
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def ort_predict(x):
        logits = session.run(None, {"input": x})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))  # the same softmax as predict's
        return e / e.sum(axis=1, keepdims=True)

    rows = []
    for batch in (1, 64, len(images)):
        x = images[:batch]
        ref = predict(model, x)
        assert np.abs(ort_predict(x) - ref).max() < 1e-5, "ONNX Runtime and convprop disagree"
        t = interleaved({"convprop": lambda x=x: predict(model, x), "onnxruntime": lambda x=x: ort_predict(x)},
                        rounds=3 if smoke else rounds)
        rows.append({"batch": batch, "convprop_img_s": batch / t["convprop"], "ort_img_s": batch / t["onnxruntime"],
                     "ratio": t["convprop"] / t["onnxruntime"]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.deploy", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, choices=[1, 2], default=1, help="threads for both (default 1)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds; the median is reported")
    p.add_argument("--smoke", action="store_true", help="fewer images and 3 rounds: checks that it runs (CI)")
    args = p.parse_args(argv)
    from .timing import cpu_name

    rows = run(args.threads, args.rounds, args.smoke)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores seen; {args.threads} thread(s)"
          + (" (smoke)" if args.smoke else ""))
    print("| LeNet-5 predict, batch | convprop img/s | ONNX Runtime img/s | ONNX Runtime / convprop |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['convprop_img_s']:,.0f} | {r['ort_img_s']:,.0f} | {r['ratio']:.1f}× |")
    met = all(r["ratio"] >= TARGET for r in rows)
    print(f"target ONNX Runtime ≥ {TARGET:g}× convprop's images/s at every batch: {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
