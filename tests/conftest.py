"""Under CI (CI set in the environment, as .ci/run's caller sets it) a skipped test fails the run: the MPI,
browser, ONNX and torch tests skip only where their packages are missing, and CI installs every one."""

from __future__ import annotations

import os
import sys

# Support code (torch twins, hostile-file makers, the CLI runner) lives apart from the tests, in tests/support/.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

_skipped: list[str] = []


def _note(report) -> None:
    if report.skipped:
        _skipped.append(report.nodeid or str(report.fspath))


pytest_runtest_logreport = _note
pytest_collectreport = _note


def pytest_sessionfinish(session, exitstatus) -> None:
    if os.environ.get("CI") and _skipped and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter) -> None:
    if os.environ.get("CI") and _skipped:
        terminalreporter.write_line(f"CI: {len(_skipped)} skipped tests fail the run (every test must run in CI): "
                                    + ", ".join(_skipped[:5]), red=True)
