"""Time to a fitted twin: twin's `fit` against the neuralpredictors peer, to the same validation score.

    python benchmarks/fit_time.py --out DIR [--store S.zarr] [--side both|twin|peer|none]
        [--max-epochs 12] [--train-images 5000] [--neurons 8000] [--seed 0] [--quick]

Session: ``--store``, or a simulated animal written to DIR/session.zarr (kept and reused by
later runs): ``--train-images`` images shown once (90% train, 10% validation), 100 test images
x 10 repeats, ``--neurons`` neurons, 36x64 pixels. The defaults give Sensorium 2022's scale:
4,500 train trials x 8,000 neurons.

Each side runs in its own process, one after the other, with the same protocol (the Sensorium
2022 trainer: Poisson loss, Adam at 0.009, batch 128, plateau schedule on the validation
single-trial correlation with patience 5, up to 4 learning-rate decays restoring the best
weights, early stop) and the same cap ``--max-epochs``:

- twin: ``twin.fit.fit`` with the default config (its [fit] seed and [data] shuffle_seed =
  ``--seed``), run directory DIR/twin_run; it checkpoints every epoch, as `twin fit` does;
- peer: benchmarks/peer_fit_torch.py's model and trainer (neuralpredictors 0.3.0, torch
  threads: torch's default) with glibc's malloc tunables that make torch train ~2x faster here.

Each side writes DIR/<side>.json: per epoch the validation correlation, the wall and CPU
seconds (the process, all threads) from the launch of its process (imports, store loading and
compilation included) to the moment that score was known, and the epoch's train, validation and
checkpoint seconds; the final test single-trial correlation (mean over neurons, of the best
weights); the machine, versions and load average at launch. ``--side twin`` re-measures one side
and keeps the other's file.

Combined (DIR/fit_time.json and the Markdown table DIR/fit_time.md, also printed): target = the
lower of the two sides' best validation correlations; for each side the first epoch at or above
it and the wall and CPU seconds to it; ratio = peer seconds / twin seconds (> 1: twin is faster).
``--quick``: a tiny session, a core of 2 layers x 8 channels and 2 epochs, to check that it all runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("twin", "peer")
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
TEST_IMAGES, REPEATS, SIZE = 100, 10, "36x64"
# --quick: a tiny session, and a core of 2 layers x 8 channels on both sides.
QUICK = {"neurons": 16, "train_images": 60, "test_images": 4, "repeats": 2, "max_epochs": 2, "layers": 2, "channels": 8}


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return int(text)


def write_json(path: Path, value: dict) -> None:
    """Write ``value`` to ``path`` through a temporary file, so a crash leaves no half file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def run_twin(store: str, out: Path, max_epochs: int, seed: int, launched: float, quick: bool) -> dict:
    """twin.fit.fit on ``store`` in this process; history times counted from ``launched``."""
    from twin.bench import machine_info
    from twin.config import DataConfig, FitConfig, ModelConfig, RunConfig
    from twin.fit import fit

    model = ModelConfig(core_layers=QUICK["layers"], core_channels=QUICK["channels"]) if quick else ModelConfig()
    config = RunConfig(data=DataConfig(shuffle_seed=seed), model=model, fit=FitConfig(max_epochs=max_epochs, seed=seed))
    run = out / "twin_run"
    called, called_cpu = time.time() - launched, time.process_time()
    summary = fit(config, [store], run, progress=False)
    wall, cpu = time.time() - launched, time.process_time()
    history = []
    for line in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        history.append(
            {
                "epoch": line["epoch"],
                "validation_correlation": line["validation_correlation"],
                "wall_s": called + line["elapsed_seconds"],
                "cpu_s": called_cpu + line["cpu_seconds"],
                "train_s": line["train_seconds"],
                "validation_s": line["validation_seconds"],
                "checkpoint_s": line["checkpoint_seconds"],
            }
        )
    machine = machine_info()
    return {
        "epochs": summary["epochs"],
        "stopped": summary["stopped"],
        "best_validation_correlation": summary["best_validation_correlation"],
        "test_correlation": summary["sessions"][0]["test"]["single_trial_correlation"],
        "wall_s": wall,
        "cpu_s": cpu,
        "history": history,
        "versions": {"python": machine["python"], **machine["versions"]},
        "device": f"{machine['platform']} x {machine['devices']}",
    }


def run_peer(store: str, out: Path, max_epochs: int, seed: int, launched: float, quick: bool) -> dict:
    """benchmarks/peer_fit_torch.py's fit on ``store`` in this process; times from ``launched``."""
    import numpy as np
    import peer_fit_torch as peer
    import torch

    from twin.data.loader import load_sessions
    from twin.evaluate import score_predictions

    sessions = load_sessions([store])
    core = peer.CORE | (dict(layers=QUICK["layers"], hidden_channels=QUICK["channels"]) if quick else {})
    model = peer.build_model(sessions, seed, core)
    trained_at, trained_cpu = time.time() - launched, time.process_time()

    def log(line, seconds):
        print(
            f"peer epoch {line['epoch']:3d}  validation r {line['validation_correlation']:.4f}  {seconds:.1f} s"
            f"  wall {trained_at + line['elapsed_seconds']:.0f} s  CPU {trained_cpu + line['cpu_seconds']:.0f} s",
            flush=True,
        )

    batch_size = peer.TRAINER["batch_size"]
    trained = peer.train(model, sessions, max_epochs, seed, batch_size, log)
    data = sessions[0]
    test = data.trials("test")
    scores = score_predictions(data, "test", peer.predict(model, data, "0", test, batch_size))
    wall, cpu = time.time() - launched, time.process_time()
    history = [
        {
            "epoch": line["epoch"],
            "validation_correlation": line["validation_correlation"],
            "wall_s": trained_at + line["elapsed_seconds"],
            "cpu_s": trained_cpu + line["cpu_seconds"],
            "train_s": line["train_seconds"],
            "validation_s": line["validation_seconds"],
            "checkpoint_s": 0.0,
        }
        for line in trained["history"]
    ]
    return {
        "epochs": trained["epochs"],
        "stopped": "max_epochs" if trained["epochs"] == max_epochs else "plateau",
        "best_validation_correlation": trained["best_validation_correlation"],
        "test_correlation": float(scores["single_trial_correlation"]),
        "wall_s": wall,
        "cpu_s": cpu,
        "history": history,
        "versions": {**peer.versions(), "numpy": np.__version__},
        "threads": torch.get_num_threads(),
    }


def child(side: str, store: str, out: Path, max_epochs: int, seed: int, launched: float, quick: bool) -> None:
    """The body of one side's process: fit, then write DIR/<side>.json."""
    run = run_twin if side == "twin" else run_peer
    result = run(store, out, max_epochs, seed, launched, quick)
    result |= {
        "side": side,
        "store": store,
        "max_epochs": max_epochs,
        "seed": seed,
        "quick": quick,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "load_average_at_launch": float(os.environ["FIT_TIME_LOAD"]),
    }
    write_json(out / f"{side}.json", result)


def launch(side: str, store: str, out: Path, max_epochs: int, seed: int, quick: bool) -> None:
    """Run one side in a fresh process (env: this one's, plus the peer's malloc tunables)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env["FIT_TIME_LOAD"] = str(os.getloadavg()[0])
    if side == "peer":
        env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} UTC  {side}: fitting {store}", flush=True)
    args = [sys.executable, __file__, "--child", side, "--store", store, "--out", str(out)]
    args += ["--max-epochs", str(max_epochs), "--seed", str(seed), "--launched", repr(time.time())]
    args += ["--quick"] if quick else []
    done = subprocess.run(args, env=env)
    if done.returncode != 0:
        raise SystemExit(f"fit_time: the {side} fit failed (exit {done.returncode}); see its output above")


def first_reaching(history: list[dict], target: float) -> dict | None:
    """The first history line whose validation correlation is at least ``target``."""
    return next((line for line in history if line["validation_correlation"] >= target), None)


def median(history: list[dict], key: str, skip_first: bool) -> float:
    """Median of ``key`` over the epochs (without the first, which compiles, when ``skip_first``)."""
    values = [line[key] for line in history[1:] if skip_first] or [line[key] for line in history]
    return statistics.median(values)


def combine(results: dict[str, dict]) -> dict:
    """Target (the lower best validation correlation of the history of each side), each side's
    first epoch at or above it with its wall and CPU seconds, and peer / twin ratios."""
    best = {side: max(line["validation_correlation"] for line in r["history"]) for side, r in results.items()}
    target = min(best.values())
    combined = {"target_validation_correlation": target, "sides": {}}
    for side, r in results.items():
        hit = first_reaching(r["history"], target)
        first = r["history"][0]
        combined["sides"][side] = {
            "epochs": r["epochs"],
            "max_epochs": r["max_epochs"],
            "stopped": r["stopped"],
            "best_validation_correlation": best[side],
            "epoch_to_target": hit["epoch"],
            "wall_s_to_target": hit["wall_s"],
            "cpu_s_to_target": hit["cpu_s"],
            "wall_s": r["wall_s"],
            "cpu_s": r["cpu_s"],
            "test_correlation": r["test_correlation"],
            "startup_s": first["wall_s"] - first["train_s"] - first["validation_s"] - first["checkpoint_s"],
            "first_epoch_train_s": first["train_s"],
            "epoch_train_s": median(r["history"], "train_s", True),
            "epoch_validation_s": median(r["history"], "validation_s", True),
            "epoch_checkpoint_s": median(r["history"], "checkpoint_s", True),
        }
    if set(results) == set(SIDES):
        twin, peer = combined["sides"]["twin"], combined["sides"]["peer"]
        combined["wall_ratio"] = peer["wall_s_to_target"] / twin["wall_s_to_target"]
        combined["cpu_ratio"] = peer["cpu_s_to_target"] / twin["cpu_s_to_target"]
    return combined


ROWS = (
    ("epochs run", "epochs", "{:d}"),
    ("best validation r", "best_validation_correlation", "{:.4f}"),
    ("first epoch at the target", "epoch_to_target", "{:d}"),
    ("**wall s to the target**", "wall_s_to_target", "**{:.0f}**"),
    ("CPU s to the target", "cpu_s_to_target", "{:.0f}"),
    ("wall s, whole process", "wall_s", "{:.0f}"),
    ("CPU s, whole process", "cpu_s", "{:.0f}"),
    ("test single-trial r", "test_correlation", "{:.4f}"),
    ("startup s (imports, store, model)", "startup_s", "{:.1f}"),
    ("epoch 1 train s (twin: compiles)", "first_epoch_train_s", "{:.1f}"),
    ("train s / epoch (median)", "epoch_train_s", "{:.1f}"),
    ("validation s / epoch (median)", "epoch_validation_s", "{:.1f}"),
    ("checkpoint s / epoch (median)", "epoch_checkpoint_s", "{:.1f}"),
)


def markdown(combined: dict) -> str:
    """The combined results as a Markdown table (one column per side, and peer / twin)."""
    sides = combined["sides"]
    names = [s for s in SIDES if s in sides]
    header = "| | " + " | ".join(names) + (" | peer / twin |" if len(names) == 2 else " |")
    lines = [f"Target validation r: {combined['target_validation_correlation']:.4f} (the lower best).", "", header]
    lines.append("|---" * (len(names) + 1 + (len(names) == 2)) + "|")
    for label, key, form in ROWS:
        cells = [form.format(sides[s][key]) for s in names]
        if len(names) == 2 and key in ("wall_s_to_target", "cpu_s_to_target"):
            cells.append(f"{sides['peer'][key] / sides['twin'][key]:.2f}x")
        elif len(names) == 2:
            cells.append("")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def simulate(store: Path, args) -> None:
    """Write the simulated session with `twin simulate` (in a child process)."""
    sizes = QUICK if args.quick else {"neurons": args.neurons, "train_images": args.train_images,
                                      "test_images": TEST_IMAGES, "repeats": REPEATS}
    command = [sys.executable, "-m", "twin.cli", "simulate", str(store), "--size", SIZE, "--seed", str(args.seed)]
    for name in ("neurons", "train_images", "test_images", "repeats"):
        command += [f"--{name.replace('_', '-')}", str(sizes[name])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if subprocess.run(command, env=env).returncode != 0:
        raise SystemExit(f"fit_time: twin simulate {store} failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the results (created)")
    parser.add_argument("--store", help="session store to fit (default: simulate DIR/session.zarr)")
    parser.add_argument("--side", choices=("both", *SIDES, "none"), default="both",
                        help="which side to (re)fit; none: only combine the results in --out")
    parser.add_argument("--max-epochs", type=positive, default=12, help="epoch cap of both sides (default 12)")
    parser.add_argument("--train-images", type=positive, default=5000, help="simulated train + validation images")
    parser.add_argument("--neurons", type=positive, default=8000, help="simulated neurons")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a tiny session and 2 epochs")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.child:
        child(args.child, args.store, out, args.max_epochs, args.seed, args.launched, args.quick)
        return 0
    if args.store is not None and not Path(args.store).exists():
        print(f"fit_time: --store {args.store}: no such store; pass a session store (.zarr) or leave it out", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    max_epochs = QUICK["max_epochs"] if args.quick else args.max_epochs
    store = args.store
    if store is None and args.side != "none":
        store = out / "session.zarr"
        if not store.exists():
            simulate(store, args)
        store = str(store)
    for side in SIDES if args.side == "both" else (args.side,) if args.side in SIDES else ():
        if side == "twin" and (out / "twin_run").exists():
            shutil.rmtree(out / "twin_run")
        launch(side, store, out, max_epochs, args.seed, args.quick)
    results = {side: json.loads((out / f"{side}.json").read_text()) for side in SIDES if (out / f"{side}.json").exists()}
    if not results:
        print(f"fit_time: {out}: holds no twin.json or peer.json; run a side first", file=sys.stderr)
        return 2
    combined = combine(results) | {"host": platform.node()}
    write_json(out / "fit_time.json", combined)
    table = markdown(combined)
    (out / "fit_time.md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
