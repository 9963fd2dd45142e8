"""The benchmark suite runs at smoke size and reports numbers (no timing is asserted: machines are noisy)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from runner import ROOT


@pytest.mark.parametrize("threads", [1, 2])  # on 2, convprop's LeNet-5 steps run in two processes
def test_benchmark_suite_runs_at_smoke_size(tmp_path, threads):
    import os

    before = sorted(os.listdir(ROOT / "benchmarks" / "results"))
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # a smoke run writes under the temporary directory
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--threads", str(threads)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    assert sorted(os.listdir(ROOT / "benchmarks" / "results")) == before  # nothing left in the repository
    tmp_path = tmp_path / "convprop-bench-smoke"
    result = json.loads((tmp_path / f"bench-{threads}t-smoke.json").read_text())
    assert result["machine"]["sgemm_peak_gflops"] > 0
    names = {row["case"] for row in result["ops"]}
    assert any("LeNet-5 training step" in n for n in names) and any("max_pool2d" in n for n in names)
    assert all(" N4 " in n for n in names if "LeNet-5" not in n and "ResNet" not in n), names  # the size that ran
    assert "one epoch of 256 images" in r.stdout and "default recipe" not in r.stdout
    for row in result["ops"]:
        assert row["convprop_ms"] > 0 and (row["torch_ms"] is None or row["torch_ms"] > 0)
    assert {r["framework"] for r in result["runs"]} == {"convprop", "torch"}
    alone = result["alone"]  # every op and the LeNet-5 steps again, each framework alone in a fresh process
    assert [r["case"] for r in alone] == ["LeNet-5 training step, batch 8"] + [
        f"{r['case']}, forward+backward" for r in result["ops"]
        if r["phase"] == "forward+backward" and "LeNet-5" not in r["case"] and "ResNet" not in r["case"]]
    assert all(r["convprop_ms"] > 0 and r["torch_ms"] > 0 and r["ratio"] > 0 for r in alone)
    assert any(n.startswith("ResNet-20 training step, batch 8") for n in names)
    assert any(n.startswith("ResNet-20's 21 convolutions alone") for n in names)  # what bounds the step's ratio
    memory = {r["model"]: r for r in result["memory"]}  # peak RSS of short training runs, both frameworks
    assert set(memory) == {"resnet20", "vgg_small"}
    assert all(r["convprop_peak_mb"] > 0 and r["torch_peak_mb"] > 0 and r["ratio"] > 0 for r in memory.values())
    assert (tmp_path / f"bench-{threads}t-smoke.md").read_text().count("|") > 50


def test_thread_probe_runs_at_smoke_size():
    r = subprocess.run([sys.executable, "-m", "benchmarks.threads", "--smoke"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    lines = r.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == [f"wake-up after {ms} ms idle" for ms in (0, 1, 5)]
    assert "np.maximum over" in lines[3] and "sgemms" in lines[4]


def test_distributed_benchmark_runs_at_smoke_size(tmp_path):
    out = tmp_path / "distributed.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.distributed", "--smoke", "--ranks", "1,2", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    result = json.loads(out.read_text())
    assert {(row["model"], row["ranks"]) for row in result["rows"]} == {
        (m, k) for m in ("lenet5", "vgg_small") for k in (1, 2)}
    assert all(row["step_ms"] > 0 for row in result["rows"])
    assert all(row["allreduce_ms"] > 0 for row in result["rows"] if row["ranks"] == 2)
    # each 2-rank row: the slower rank's compute before the gradients' Allreduce, within its step
    assert all(0 < row["compute_ms"] <= row["step_ms"] and row["compute_bound"] > 0
               for row in result["rows"] if row["ranks"] == 2)
    assert {row["nodes"] for row in result["cost_model"]} == {1, 2, 4, 8, 16, 32, 64}
    assert "check, 2 local ranks: predicted" in r.stdout
    # the machine's ceiling: 2 independent processes on the 8-image shards, no communication
    assert [(row["model"], row["processes"]) for row in result["independent"]] == [("lenet5", 2), ("vgg_small", 2)]
    assert all(row["step_ms"] > 0 and row["paired_speedup"] > 0 for row in result["independent"])


def test_link_benchmark_runs_on_two_hosts(tmp_path):
    import os

    from twohosts import unavailable

    reason = unavailable()
    if reason and not os.environ.get("CI"):
        pytest.skip(reason)
    out = tmp_path / "link.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.link", "--rounds", "1", "--steps", "3", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    result = json.loads(out.read_text())
    assert len(result["allreduce"]) == 6
    assert all(v["shared_memory_s"] > 0 and v["two_hosts_s"] > 0 for v in result["allreduce"].values())
    assert sorted(result["lenet5_step"]) == ["step 1 host × 2 ranks", "step 1 rank", "step 2 hosts × 1 rank"]
    assert "| 246,840 B |" in r.stdout  # (LeNet-5's gradients)


def test_deploy_benchmark_runs_at_smoke_size():
    pytest.importorskip("onnxruntime")
    r = subprocess.run([sys.executable, "-m", "benchmarks.deploy", "--smoke"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ONNX Runtime img/s" in r.stdout and r.stdout.count("×") >= 3 and "CPU:" in r.stdout, r.stdout


def test_convolution_floors_run_at_smoke_size():
    """benchmarks.models --floors: a table per model, a row per distinct convolution and one for all of
    them, each with torch's time, convprop's, the GEMMs' rate and the floor against torch."""
    r = subprocess.run([sys.executable, "-m", "benchmarks.models", "--floors", "--smoke"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("| all, weighted by count |") == 2, r.stdout  # ResNet-20 and LeNet-5
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "k" in line.split("|")[1]]
    assert len(rows) >= 10 and all(line.count("×)") == 2 for line in rows), r.stdout  # 8 ResNet-20 shapes, 2 LeNet-5


def test_accuracy_benchmark_runs_at_smoke_size(tmp_path):
    out = tmp_path / "accuracy.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.accuracy", "--smoke", "--model", "resnet8", "--workers", "1",
                        "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    row = json.loads(out.read_text())[0]
    assert row["model"] == "resnet8" and 0 <= row["test_accuracy"] <= 1 and row["seconds"] > 0 and row["cpu"]
    assert row["args"]["batch_size"] == 64 and row["args"]["lr"] == 0.02  # resnet8's own recipe
    assert "| resnet8 | 1 ep, batch 64, adam lr 0.02 |" in r.stdout
