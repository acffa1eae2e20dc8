"""Several hosts, played by processes on this machine: jax.distributed over loopback with one CPU
device each. `twin fit` and `twin mei` give the numbers of one process; process 0 alone reports."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from test_fit import assert_same_numbers, read_metrics, reference, store  # noqa: F401
from test_mei_run import run_dir  # noqa: F401

from twin.cli import main
from twin.mei.store import open_meis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_hosts(argv: list[str], n: int = 2) -> list[str]:
    """Run `twin ARGV` as ``n`` processes of one jax.distributed job; their stdout, by rank."""
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "twin.cli", *argv, "--coordinator", address,
             "--num-processes", str(n), "--process-id", str(rank)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        for rank in range(n)
    ]
    results = [process.communicate(timeout=600) for process in processes]
    errors = "\n".join(err[-2000:] for _, err in results)
    assert [process.returncode for process in processes] == [0] * n, errors
    return [out for out, _ in results]


def test_fit_on_two_hosts_matches_one(store, reference, tmp_path):  # noqa: F811
    run, expected = reference
    run_hosts(["fit", store, "--out", str(tmp_path / "run"), "--config", str(run / "config.toml")])
    lines = read_metrics(tmp_path / "run")
    assert_same_numbers(lines[:2], expected[:2], rtol=1e-5)  # as test_fit's one-device check
    assert_same_numbers(lines, expected, rtol=1e-3, keys=("loss", "poisson", "regularizer"))


def test_mei_on_two_hosts_matches_one(run_dir, capsys):  # noqa: F811
    common = ["mei", str(run_dir / "run"), "--neurons", "0:5", "--seeds", "2", "--deis", "2",
              "--config", str(run_dir / "mei.toml"), "--json"]  # fmt: skip
    assert main([*common, "--out", str(run_dir / "one.zarr")]) == 0
    single = json.loads(capsys.readouterr().out)
    out = run_dir / "two.zarr"
    stdout = run_hosts([*common, "--out", str(out)])
    # Gloo (the CPU collectives) prints its connection lines on stdout.
    assert "{" not in stdout[1]
    summary = json.loads(stdout[0][stdout[0].index("{") :])
    assert [n["id"] for n in summary["neurons"]] == [n["id"] for n in single["neurons"]]
    one, two = open_meis(run_dir / "one.zarr"), open_meis(out)
    for name in ("images", "activations", "best_seed", "deis", "contrast_activation", "shift_activation"):
        np.testing.assert_allclose(two[name].values, one[name].values, rtol=1e-4, atol=1e-5, err_msg=name)
