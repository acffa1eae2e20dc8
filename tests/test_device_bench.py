"""benchmarks/device.sh --quick: the GPU benchmark runs end to end on the CPU, tiny, and writes its
JSON and Markdown table (no speed checks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twin.bench import QUICK, peer_available

ROOT = Path(__file__).resolve().parent.parent


# ~45 s on an idle 2-core machine (two processes, a dozen compiles): outside CI's ~10 minutes.
@pytest.mark.slow
def test_device_quick_writes_json_and_table(tmp_path):
    env = os.environ | {"PYTHON": sys.executable}
    # A large budget: a loaded CI host must not stop a side (the default suits the GPU run).
    command = ["bash", str(ROOT / "benchmarks" / "device.sh"), "--quick", "--budget", "3600", "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "device.json").read_text())

    assert results["quick"] is True and results["status"]["twin"] == "done"
    assert results["shapes"]["mei_neurons"] == list(QUICK.mei_neurons)
    for dtype in ("float32", "bfloat16"):
        assert results["matmul_peak"][dtype]["gflop_s"] > 0
    for precision in ("float32", "bfloat16"):
        rows = results[precision]
        assert rows["forward"]["img_s"] > 0 and rows["train"]["img_s"] > 0
        assert sorted(rows["mei"], key=int) == [str(n) for n in QUICK.mei_neurons]
        assert all(row["image_step_s"] > 0 and row["flops_per_image_step"] > 0 for row in rows["mei"].values())
    workload = results["workload"]
    assert (workload["neurons"], workload["seeds"], workload["steps"]) == (QUICK.neurons, 1, 10)
    assert workload["image_steps"] == QUICK.neurons * 10 and workload["images_finite"] and workload["wall_s"] > 0

    table = (tmp_path / "device.md").read_text()
    assert "| row | twin f32 | twin bf16 | peer (fastest variant) |" in table
    for label in ["forward img/s", "train img/s"] + [f"mei {n} image-steps/s" for n in QUICK.mei_neurons]:
        assert f"| {label} |" in table
    assert "Workload: walker2019 MEIs of 24 neurons x 1 seed x 10 steps" in table
    assert table in done.stdout

    if peer_available() is None:
        assert set(results["peer"]) == {"default"} and results["peer"]["default"]["device"] == "cpu"
        assert set(results["ratios"]["float32"]) == {"forward", "train"} | {f"mei_{n}" for n in QUICK.mei_neurons}
        assert "Peer: torch" in table and "Peer variants" in table
    else:
        assert "skipped" in results["peer"] and "Peer skipped" in table
