"""The tables of experiments/real_v4.md from the outputs of experiments/real_v4.sh.

Usage: python experiments/real_v4_table.py OUT

Reads OUT/twin_<session>, OUT/ensemble_<session>, OUT/shared_<monkey> (twin runs, scored here
with ``twin.evaluate.evaluate_run``), OUT/peer_<session>/metrics.json (benchmarks/peer_fit_torch.py),
OUT/ridge_<session>/metrics.json (benchmarks/ridge_fit.py), OUT/times.txt (name, wall s, CPU s) and
the seed study (OUT/twin_<session>_seed<k>, OUT/peer_<session>_seed<k>/metrics.json); prints markdown
tables and writes OUT/per_neuron.png (test r per neuron, twin against the peer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

SESSIONS = {"190925": "WE", "190927": "WE", "210224": "PE", "210322": "PE"}
SHARED = {"WE": ["190925", "190927"], "PE": ["210224", "210322"]}


def twin_scores(run: Path) -> list[dict]:
    """Test scores of every session of a twin run (``evaluate_run``); [] when it has not finished."""
    from twin.evaluate import evaluate_run

    if not (run / "summary.json").exists():
        return []
    return evaluate_run(run)


def json_scores(path: Path, *keys) -> dict | None:
    """The dict at ``keys`` inside the JSON file ``path``; None when the file is missing."""
    if not path.exists():
        return None
    value = json.loads(path.read_text())
    for key in keys:
        value = value[key]
    return value


def read_times(out: Path) -> dict[str, tuple[float, float]]:
    """name -> (wall s, CPU s), summed over the lines of a name (a resumed fit has several)."""
    times = {}
    if (out / "times.txt").exists():
        for line in (out / "times.txt").read_text().splitlines():
            name, wall, cpu = line.split()
            before = times.get(name, (0.0, 0.0))
            times[name] = (before[0] + float(wall), before[1] + float(cpu))
    return times


def per_neuron(scores: dict | None) -> np.ndarray | None:
    return None if scores is None else np.asarray(scores["per_neuron"]["single_trial_correlation"], float)


def cell(values: np.ndarray | None) -> str:
    return "–" if values is None else f"{np.nanmean(values):.3f}"


def timing(times: dict, name: str) -> str:
    if name not in times:
        return "–"
    wall, cpu = times[name]
    return f"{wall / 60:.1f} / {cpu / 60:.1f}"


def collect(out: Path) -> dict[str, dict[str, np.ndarray | None]]:
    """model name -> session -> per-neuron test correlations (None where missing)."""
    rows = {name: {} for name in ("twin", "twin ensemble (3)", "twin shared core", "peer", "ridge pixels", "ridge Gabor")}
    for session, monkey in SESSIONS.items():
        twin = twin_scores(out / f"twin_{session}")
        ensemble = twin_scores(out / f"ensemble_{session}")
        shared = twin_scores(out / f"shared_{monkey}")
        rows["twin"][session] = per_neuron(twin[0]) if twin else None
        rows["twin ensemble (3)"][session] = per_neuron(ensemble[0]) if ensemble else None
        index = SHARED[monkey].index(session)
        rows["twin shared core"][session] = per_neuron(shared[index]) if shared else None
        rows["peer"][session] = per_neuron(json_scores(out / f"peer_{session}" / "metrics.json", "sessions", 0))
        rows["ridge pixels"][session] = per_neuron(json_scores(out / f"ridge_{session}" / "metrics.json", "pixels"))
        rows["ridge Gabor"][session] = per_neuron(json_scores(out / f"ridge_{session}" / "metrics.json", "gabor"))
    return rows


def time_names(model: str, session: str) -> str:
    return {
        "twin": f"twin_{session}",
        "twin ensemble (3)": f"ensemble_{session}",
        "twin shared core": f"shared_{SESSIONS[session]}",
        "peer": f"peer_{session}",
        "ridge pixels": f"ridge_{session}",
        "ridge Gabor": f"ridge_{session}",
    }[model]


def correlation_table(rows: dict) -> str:
    header = "| model | " + " | ".join(SESSIONS) + " |\n|---|" + "---|" * len(SESSIONS)
    lines = [f"| {model} | " + " | ".join(cell(by[s]) for s in SESSIONS) + " |" for model, by in rows.items()]
    return "\n".join([header, *lines])


def time_table(rows: dict, times: dict) -> str:
    header = "| model | " + " | ".join(SESSIONS) + " |\n|---|" + "---|" * len(SESSIONS)
    lines = [
        f"| {model} | " + " | ".join(timing(times, time_names(model, s)) for s in SESSIONS) + " |"
        for model in rows
    ]
    return "\n".join([header, *lines])


def neuron_table(rows: dict) -> str:
    """Per session: neurons where the twin beats the peer, and median per-neuron r of each."""
    lines = ["| session | neurons | twin > peer | median r twin | median r peer |", "|---|---|---|---|---|"]
    for s in SESSIONS:
        twin, peer = rows["twin"][s], rows["peer"][s]
        if twin is None or peer is None:
            continue
        keep = np.isfinite(twin) & np.isfinite(peer)
        lines.append(
            f"| {s} | {keep.sum()} | {np.sum(twin[keep] > peer[keep])} | {np.median(twin[keep]):.3f} |"
            f" {np.median(peer[keep]):.3f} |"
        )
    return "\n".join(lines)


def mei_table(out: Path) -> str:
    """Per session with MEIs: the MEI's activation over the best natural image's (the session's
    images, train to test), under the twin that made them and under the ensemble (a model the MEIs
    were not optimized on), and how alike the seeds' MEIs are (mean pairwise pixel correlation)."""
    import xarray as xr

    from twin.checkpoint import load_run
    from twin.evaluate import predict

    lines = [
        "| session | neurons | MEI / best natural, twin | MEI / best natural, ensemble | MEIs above it (ensemble) |"
        " seed consistency r |",
        "|---|---|---|---|---|---|",
    ]
    for s in SESSIONS:
        path = out / f"meis_{s}.zarr"
        if not path.exists():
            continue
        meis = xr.open_zarr(path, consolidated=False)
        index = meis["neuron_index"].values
        ensemble = load_run(out / f"ensemble_{s}")
        data = ensemble.sessions[0]
        natural = predict(ensemble.model, 0, data, np.arange(len(data.responses)))[:, index].max(axis=0)
        best = meis["best_seed"].values
        validator = meis["validator_activations"].values[np.arange(len(index)), best] / natural
        images = meis["images"].values.reshape(len(index), meis.sizes["seed"], -1)
        consistency = [np.corrcoef(seeds)[np.triu_indices(len(seeds), 1)].mean() for seeds in images]
        lines.append(
            f"| {s} | {len(index)} | {np.median(meis['ratio'].values):.2f} | {np.median(validator):.2f} |"
            f" {np.sum(validator > 1)} of {len(index)} | {np.mean(consistency):.3f} |"
        )
    return "\n".join(lines)


SEEDS = (0, 1, 2)


def seed_table(out: Path) -> str:
    """Per session: the mean test r of the twin and of the peer for each seed, their means over
    the seeds and the difference; sessions without all seeds are left out."""
    lines = [
        "| session | twin, seeds 0 / 1 / 2 | mean | peer, seeds 0 / 1 / 2 | mean | twin - peer |",
        "|---|---|---|---|---|---|",
    ]
    for s in SESSIONS:
        twin = [twin_scores(out / f"twin_{s}_seed{k}") for k in SEEDS]
        peer = [json_scores(out / f"peer_{s}_seed{k}" / "metrics.json", "sessions", 0) for k in SEEDS]
        if not all(twin) or None in peer:
            continue
        twin_r = [float(np.nanmean(per_neuron(t[0]))) for t in twin]
        peer_r = [float(np.nanmean(per_neuron(p))) for p in peer]
        difference = np.mean(twin_r) - np.mean(peer_r)
        lines.append(
            f"| {s} | {' / '.join(f'{r:.3f}' for r in twin_r)} | {np.mean(twin_r):.3f} |"
            f" {' / '.join(f'{r:.3f}' for r in peer_r)} | {np.mean(peer_r):.3f} | {difference:+.3f} |"
        )
    return "\n".join(lines)


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SESSIONS), figsize=(3 * len(SESSIONS), 3), sharex=True, sharey=True)
    for ax, s in zip(axes, SESSIONS):
        twin, peer = rows["twin"][s], rows["peer"][s]
        if twin is not None and peer is not None:
            ax.scatter(peer, twin, s=8)
        ax.plot([-0.2, 0.9], [-0.2, 0.9], "k--", lw=0.5)
        ax.set_title(s)
        ax.set_xlabel("peer test r")
    axes[0].set_ylabel("twin test r")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(out: str) -> None:
    out = Path(out)
    rows = collect(out)
    print("Mean test correlation (single-trial r over the test images; per neuron, then averaged)\n")
    print(correlation_table(rows))
    print("\nWall / CPU minutes\n")
    print(time_table(rows, read_times(out)))
    print("\nPer neuron, twin against the peer\n")
    print(neuron_table(rows))
    print("\nMEIs of the 8 best-predicted neurons (median over them; 3 seeds each)\n")
    print(mei_table(out))
    print("\nSeeds: mean test correlation of three fits of each model\n")
    print(seed_table(out))
    plot(rows, out / "per_neuron.png")


if __name__ == "__main__":
    main(sys.argv[1])
