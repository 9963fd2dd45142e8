"""Run many `convprop` command lines in one process, as the shell would run each, and record how each ended;
or, with --readers, many files through convprop's readers (safetensors, CIFAR-10, ONNX) by their API.

    python tests/fuzz_probe.py CASES.json RESULTS.json
    python tests/fuzz_probe.py --readers CASES.json RESULTS.json

CASES.json: a list of argv lists.  RESULTS.json: one {"rc", "stderr", "escaped"} per case, where rc is
what `convprop` would exit with and "escaped" is the traceback of any exception that got out of
`cli.main` — which the shell would have printed.  test_fuzz.py runs this under a 1 GiB address-space
cap.  matplotlib is hidden (pictures take a second each; `convprop` says it draws none without it).

--readers: CASES.json is a list of [reader, path] (READERS below); RESULTS.json one {"outcome", "message",
"escaped"} per case: outcome "ok" (it loaded), "error" (the reader's documented exception) or None with
"escaped" the traceback of any other exception (MemoryError under the cap included).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback

sys.modules["matplotlib"] = None  # import matplotlib -> ImportError: no pictures

from convprop import cli  # noqa: E402


def run(argv: list[str]) -> dict:
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse's usage errors, --help, --version
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 — exactly what the fuzzing looks for
            rc, escaped = None, traceback.format_exc()
    return {"rc": rc, "stderr": err.getvalue()[-2000:], "escaped": escaped}


def _weights(path: str, with_model: bool):
    from convprop import models
    from convprop.weights import load_weights

    return load_weights(path, models.lenet5() if with_model else None)


def _cifar(path: str, train: bool):
    from convprop.data import load_cifar10

    return load_cifar10(path, train)


def _onnx(path: str):
    import numpy as np

    from convprop.onnx import load

    model = load(path)
    try:  # a model that loads runs, or says in one line why not
        model.eval()(np.zeros((2, 1, 8, 8), model.dtype))
    except (ValueError, TypeError) as e:
        return e
    return model


def _errors(reader: str) -> tuple[type[BaseException], ...]:
    if reader.startswith("weights"):
        from convprop.weights import WeightsError

        return WeightsError, FileNotFoundError
    if reader.startswith("cifar"):
        from convprop.data import CIFARError

        return CIFARError, FileNotFoundError
    from convprop.onnx import OnnxError

    return OnnxError, FileNotFoundError


READERS = {"weights": lambda p: _weights(p, False), "weights-model": lambda p: _weights(p, True),
           "cifar-train": lambda p: _cifar(p, True), "cifar-test": lambda p: _cifar(p, False), "onnx": _onnx,
           "onnx-load": lambda p: __import__("convprop.onnx").onnx.load(p)}


def read(reader: str, path: str) -> dict:
    try:
        out = READERS[reader](path)
        if isinstance(out, Exception):  # a loaded ONNX model that would not run: one line too
            return {"outcome": "error", "message": str(out), "escaped": None}
        return {"outcome": "ok", "message": "", "escaped": None}
    except _errors(reader) as e:
        return {"outcome": "error", "message": str(e), "escaped": None}
    except BaseException:  # noqa: BLE001 — exactly what the fuzzing looks for
        return {"outcome": None, "message": "", "escaped": traceback.format_exc()[-3000:]}


def main() -> None:
    readers = sys.argv[1] == "--readers"
    cases_path, results_path = sys.argv[1 + readers:3 + readers]
    with open(cases_path) as f:
        cases = json.load(f)
    results = [read(*case) for case in cases] if readers else [run(argv) for argv in cases]
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
