"""The tables and the data-efficiency curves of experiments/transfer.md from the outputs of
experiments/transfer.sh.

Usage: python experiments/transfer_table.py OUT

Reads OUT/<experiment>_<kind>_<fraction>/summary.json (experiment: sim, PE, WE; kind: scratch,
frozen, finetune; the test scores ``twin fit`` wrote for the best epoch) and OUT/times.txt; prints
one markdown table per experiment and writes OUT/transfer.png (test r against the fraction of
training trials, one panel per experiment).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

EXPERIMENTS = {"sim": "simulated animal (seed 0)", "PE": "V4 210322 (core: 210224)", "WE": "V4 190927 (core: 190925)"}
KINDS = {"scratch": "alone, from scratch", "frozen": "transferred core, frozen", "finetune": "transferred core, fine-tuned"}
FRACTIONS = ("0.1", "0.25", "0.5", "1")


def test_scores(run: Path) -> dict | None:
    """The test-tier means of the run's (only) session in summary.json; None when not finished."""
    path = run / "summary.json"
    return json.loads(path.read_text())["sessions"][0]["test"] if path.exists() else None


def read_times(out: Path) -> dict[str, float]:
    """name -> CPU seconds, summed over the lines of a name (a resumed fit has several)."""
    times: dict[str, float] = {}
    if (out / "times.txt").exists():
        for line in (out / "times.txt").read_text().splitlines():
            name, _, cpu = line.split()
            times[name] = times.get(name, 0.0) + float(cpu)
    return times


def table(out: Path, experiment: str, times: dict[str, float]) -> tuple[str, dict]:
    """A markdown table (rows: kinds; columns: fractions) and {kind: [test r per fraction]}."""
    simulated = experiment == "sim"
    header = "| " + " | ".join(["model"] + [f"{float(f):.0%} of train" for f in FRACTIONS]) + " |"
    lines = [f"**{EXPERIMENTS[experiment]}**: test single-trial r"
             + (" / fraction of the ground-truth ceiling (r to average)" if simulated else "")
             + " / CPU minutes", "", header, "|" + "---|" * (len(FRACTIONS) + 1)]
    curves = {}
    for kind, label in KINDS.items():
        cells, curve = [], []
        for fraction in FRACTIONS:
            name = f"{experiment}_{kind}_{fraction}"
            scores = test_scores(out / name)
            if scores is None:
                cells.append("—")
                curve.append(np.nan)
                continue
            r = scores["single_trial_correlation"]
            text = f"{r:.3f}"
            if simulated and scores.get("fraction_of_ceiling") is not None:
                text += f" / {scores['fraction_of_ceiling']:.3f}"
            if name in times:
                text += f" / {times[name] / 60:.1f}"
            cells.append(text)
            curve.append(r)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        curves[kind] = curve
    return "\n".join(lines), curves


def plot(out: Path, all_curves: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [float(f) for f in FRACTIONS]
    figure, axes = plt.subplots(1, len(all_curves), figsize=(4 * len(all_curves), 3.4), constrained_layout=True)
    for axis, (experiment, curves) in zip(np.atleast_1d(axes), all_curves.items()):
        for kind, curve in curves.items():
            axis.plot(x, curve, "o-", label=KINDS[kind])
        axis.set(xscale="log", xticks=x, xticklabels=[f"{v:.0%}" for v in x], title=EXPERIMENTS[experiment],
                 xlabel="training trials of the new animal / session", ylabel="test single-trial r")
        axis.minorticks_off()
    np.atleast_1d(axes)[0].legend(fontsize=8)
    figure.savefig(out / "transfer.png", dpi=110)
    plt.close(figure)


def main(out: str) -> None:
    out = Path(out)
    times = read_times(out)
    all_curves = {}
    for experiment in EXPERIMENTS:
        text, curves = table(out, experiment, times)
        print(text + "\n")
        all_curves[experiment] = curves
    plot(out, all_curves)
    print(f"wrote {out / 'transfer.png'}")


if __name__ == "__main__":
    main(sys.argv[1])
