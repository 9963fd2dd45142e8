"""The README's test command on a newcomer's machine, which has no chromium: outside CI the browser tests skip
with a one-line reason and nothing errors; in CI (CI set) the same missing browser fails the run."""

from __future__ import annotations

import os
import subprocess
import sys

from runner import ROOT


def _pytest_without_chromium(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"  # a PATH with this Python and the shell's basics, but no chromium
    bin_dir.mkdir()
    for name in ("sh", "bash", "env"):
        for d in ("/usr/bin", "/bin"):
            if os.path.exists(os.path.join(d, name)) and not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(os.path.join(d, name))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{bin_dir}"
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider",
                           os.path.join("tests", "serve", "test_serve_browser.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_browser_tests_skip_with_one_reason_outside_ci(tmp_path):
    r = _pytest_without_chromium(tmp_path, ci=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "error" not in r.stdout.lower().split("short test summary")[-1], r.stdout[-3000:]
    reasons = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    assert reasons and all("no chromium on PATH" in line for line in reasons), r.stdout[-3000:]


def test_a_missing_browser_fails_under_ci(tmp_path):
    r = _pytest_without_chromium(tmp_path, ci=True)
    assert r.returncode != 0, r.stdout[-3000:]
    assert "no chromium on PATH" in r.stdout
