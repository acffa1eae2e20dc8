"""The tables of experiments/precision.md from the outputs of experiments/precision.sh OUT."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
times = {}
for line in (out / "times.txt").read_text().splitlines():
    name, wall, cpu = line.split()
    times[name] = (float(wall), float(cpu))

print(
    "| [fit].precision | r to average (test) | fraction of ceiling | single-trial r | FEVE"
    " | fraction of ceiling, evaluated in float32 | best epoch, decays, epochs | CPU s, wall s |"
)
print("|---|---|---|---|---|---|---|---|")
for precision in ("float32", "bfloat16"):
    summary = json.loads((out / f"fit_{precision}" / "summary.json").read_text())
    test = summary["sessions"][0]["test"]
    wall, cpu = times.get(f"fit_{precision}", (float("nan"),) * 2)
    evaluated = out / f"evaluate_{precision}.json"
    in_float32 = json.loads(evaluated.read_text())["fraction_of_ceiling"] if evaluated.exists() else float("nan")
    print(
        f"| {precision} | {test['correlation_to_average']:.3f} | **{test['fraction_of_ceiling']:.3f}** |"
        f" {test['single_trial_correlation']:.3f} | {test['feve']:.3f} | {in_float32:.3f} |"
        f" {summary['best_epoch']}, {summary['learning_rate_decays']}, {summary['epochs']} | {cpu:.0f}, {wall:.0f} |"
    )

print()
print("| twin | [mei].precision | median activation (twin) | median ratio (twin) | median true_ratio | true_ratio > 1 | CPU s, wall s |")
print("|---|---|---|---|---|---|---|")
for fit in ("float32", "bfloat16"):
    for mei in ("float32", "bfloat16"):
        name = f"mei_{mei}_on_{fit}"
        if not (out / f"{name}.json").exists():
            continue
        report = json.loads((out / f"{name}.json").read_text())
        neurons = report["neurons"]
        activations = sorted(n["activation"] for n in neurons)
        above = sum(n["true_ratio"] > 1 for n in neurons)
        wall, cpu = times.get(name, (float("nan"),) * 2)
        print(
            f"| {fit} | {mei} | {activations[len(activations) // 2]:.3f} | {report['median_ratio']:.2f} |"
            f" {report['median_true_ratio']:.2f} | {above} of {len(neurons)} | {cpu:.0f}, {wall:.0f} |"
        )

print()
print("| precision | forward img/s | train img/s | matmul peak GFLOP/s (that precision's inputs) |")
print("|---|---|---|---|")
for precision in ("float32", "bfloat16"):
    path = out / f"bench_{precision}.json"
    if path.exists():
        bench = json.loads(path.read_text())
        print(
            f"| {precision} | {bench['forward']['img_s']:.1f} | {bench['train']['img_s']:.1f} |"
            f" {bench['matmul_peak']['gflop_s']:.0f} |"
        )
