"""Run many `convprop` command lines in one process, as the shell would run each, and record how each ended.

    python tests/fuzz_probe.py CASES.json RESULTS.json

CASES.json: a list of argv lists.  RESULTS.json: one {"rc", "stderr", "escaped"} per case, where rc is
what `convprop` would exit with and "escaped" is the traceback of any exception that got out of
`cli.main` — which the shell would have printed.  test_fuzz.py runs this under a 1 GiB address-space
cap.  matplotlib is hidden (pictures take a second each; `convprop` says it draws none without it).
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


def main() -> None:
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    results = [run(argv) for argv in cases]
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
