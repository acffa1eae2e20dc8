"""The GPU benchmark in one run: twin and the PyTorch peer on this machine's accelerator.

    python benchmarks/device.py --out DIR [--quick] [--budget 450]

(``benchmarks/device.sh`` runs this after installing the carried wheels where imports are missing.)
One process per side, one after the other, so JAX and torch never share the GPU's memory:
- twin (``--side twin``, a child process): matmul peaks in float32 and bfloat16, then twin.bench's
  forward, train and MEI rows (GPU shapes: MEIs for 1 to 7,776 neurons at once) in float32, the
  full workload (MEIs of all 7,776 neurons, one seed, 1,000 walker2019 steps, through the MEI
  engine, wall time to images in memory, compilation included), then the rows in bfloat16;
- the peer (benchmarks/peer_torch.py on ``cuda``, default malloc only: the glibc tunables of
  ``twin bench`` concern host memory): eager and torch.compile forward, train, one-neuron and
  batched MEI loops.
DIR/device.json and DIR/device.md are rewritten after every part, so a run stopped early leaves
what it measured. A side still running at its share of ``--budget`` seconds is stopped.
``--quick``: tiny shapes, a 10-step workload and the peer on the CPU (checks the script runs).
``--video``: instead, ``twin bench --video`` (both video cores and benchmarks/peer_video_torch.py
at the Sensorium 2023 shapes) in this process, written to DIR/video.json and DIR/video.txt.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from twin.bench import (
    GPU,
    QUICK,
    bench_matmul,
    bench_workload,
    fastest_peer,
    format_video_results,
    peer_variants,
    ratios,
    run_peer,
    run_suite,
    run_video_suite,
)

PRECISIONS = ("float32", "bfloat16")
PARTS = ("forward", "train", "mei")
PEER_RESERVE_S = 180  # of the budget kept for the peer when the twin side runs long
START = time.time()


def log(message: str) -> None:
    """A progress line on stderr: UTC time, seconds since start, message."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
    print(f"[{now} +{time.time() - START:5.0f}s] {message}", file=sys.stderr, flush=True)


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` whole or not at all (a process stopped mid-write leaves the previous file)."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=2, allow_nan=False))
    partial.replace(path)


def twin_side(out: Path, quick: bool) -> None:
    """Every twin measurement, written to ``out``/twin.json after each."""
    path = out / "twin.json"
    results = {"quick": quick, "matmul_peak": {}, "float32": {}, "bfloat16": {}, "failed": {}}
    for dtype in PRECISIONS:
        log(f"twin: matmul peak {dtype}")
        results["matmul_peak"][dtype] = bench_matmul(quick, dtype)
    write_json(path, results)
    for precision in PRECISIONS:
        for part in PARTS:
            log(f"twin: {part} {precision}")
            try:
                suite = run_suite(quick, peer=False, parts=(part,), precision=precision)
            except Exception as error:  # one failing part must not cost the others their GPU time
                results["failed"][f"{part} {precision}"] = f"{type(error).__name__}: {error}"[:300]
                log(f"twin: {part} {precision} failed: {type(error).__name__}: {error}")
                continue
            results |= {"machine": suite["machine"], "shapes": suite["shapes"]}
            results[precision][part] = suite[part]
            write_json(path, results)
        if precision == "float32":
            # --quick: 10 steps, one chunk of all neurons (the engine's memory probe is one more compile).
            shapes, steps, chunk = (QUICK, 10, QUICK.neurons) if quick else (GPU, 1000, 0)
            log(f"twin: workload, {shapes.neurons} neurons x 1 seed x {steps} walker2019 steps")
            try:
                results["workload"] = bench_workload(shapes, steps, chunk)
                log(f"twin: workload took {results['workload']['wall_s']:.1f} s")
            except Exception as error:
                results["failed"]["workload"] = f"{type(error).__name__}: {error}"[:300]
                log(f"twin: workload failed: {type(error).__name__}: {error}")
            write_json(path, results)


def run_twin_side(out: Path, quick: bool, timeout: float) -> str:
    """The twin side in a child process; returns how it ended."""
    command = [sys.executable, __file__, "--side", "twin", "--started", str(START), "--out", str(out)]
    command += ["--quick"] * quick
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"} | os.environ  # JAX takes GPU memory as it needs it
    try:
        done = subprocess.run(command, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"stopped after {timeout:.0f} s"
    return "done" if done.returncode == 0 else f"failed (exit status {done.returncode}; see the log)"


def combine(twin: dict, peer: dict, status: dict) -> dict:
    """One JSON object: the twin side's results, the peer's, and twin / fastest peer per row."""
    mei_neurons = twin.get("shapes", {}).get("mei_neurons", [])
    variants = peer_variants(peer, mei_neurons) if peer else {}
    fastest = fastest_peer(variants)
    measured = [p for p in PRECISIONS if "skipped" not in twin.get(p, {})]
    rows = {p: ratios(twin.get(p, {}) | {"peer_fastest": fastest}) for p in measured}
    return twin | {
        "elapsed_s": time.time() - START,
        "status": status,
        "peer": peer or {"skipped": "not run yet"},
        "peer_variants": variants,
        "peer_fastest": fastest,
        "ratios": rows,
    }


def figure(value: float | None, pattern: str = "{:,.1f}") -> str:
    return "-" if value is None else pattern.format(value)


def format_markdown(results: dict) -> str:
    """The Markdown report of ``combine``'s results: one table, the workload, the peer's variants."""
    machine = results.get("machine", {})
    peaks = results.get("matmul_peak", {})
    peer, fastest = results["peer"], results["peer_fastest"]
    title = "twin device benchmark" + (" (--quick)" if results.get("quick") else "")
    lines = [f"## {title}, {machine.get('date', '')}", ""]
    if machine:
        versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
        lines.append(f"JAX on {machine['devices']} {machine['device']} ({machine['platform']}); {machine['cpu']};")
        lines.append(f"{versions}.")
    if "skipped" in peer:
        lines.append(f"Peer skipped: {peer['skipped']}.")
    else:
        first = next(iter(peer.values()))
        lines.append(
            f"Peer: torch {first['torch']} on {first['device']}, neuralpredictors {first['neuralpredictors']}"
            f" (TF32 matmul {first['tf32']['matmul']}, cuDNN {first['tf32']['cudnn']})."
        )
    peak_text = ", ".join(f"{k} {v['gflop_s']:,.0f} GFLOP/s" for k, v in peaks.items())
    lines += [f"Measured matmul peak ({next(iter(peaks.values()))['n']}^2): {peak_text}." if peaks else "", ""]
    lines.append(
        "| row | twin f32 | twin bf16 | peer (fastest variant) | f32 / peer | bf16 / peer"
        " | compile s f32 / bf16 | GFLOP per step | f32 of peak | bf16 of peak |"
    )
    lines.append("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    batch = results.get("shapes", {}).get("batch", 0)
    f32, bf16 = results.get("float32", {}), results.get("bfloat16", {})
    rows = [(f"{n} img/s", f32[n], bf16.get(n), n, "img", batch) for n in ("forward", "train") if n in f32]
    for n, one in f32.get("mei", {}).items():
        rows.append((f"mei {n} image-steps/s", one, bf16.get("mei", {}).get(n), f"mei_{n}", "image_step", int(n)))
    for label, one, other, key, unit, per_step in rows:
        rate, best = f"{unit}_s", fastest.get(key)
        cells = [
            label,
            figure(one[rate]),
            figure(other and other[rate]),
            f"{best['rate']:,.1f} ({best['variant']})" if best else "-",
            figure(best and one[rate] / best["rate"], "{:.2f}x"),
            figure(best and other and other[rate] / best["rate"], "{:.2f}x"),
            f"{one['compile_s']:.1f} / {figure(other and other['compile_s'])}",
            f"{one[f'flops_per_{unit}'] * per_step / 1e9:.4g}",
            figure(one["gflop_s"] / peaks["float32"]["gflop_s"], "{:.1%}"),
            figure(other and other["gflop_s"] / peaks["bfloat16"]["gflop_s"], "{:.1%}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if "skipped" in bf16:
        lines.append(f"\nbf16: {bf16['skipped']}.")
    for name, message in results.get("failed", {}).items():
        lines.append(f"\nFailed: {name}: {message}")
    workload = results.get("workload")
    if workload:
        lines.append(
            f"\nWorkload: {workload['recipe']} MEIs of {workload['neurons']:,} neurons x {workload['seeds']} seed x"
            f" {workload['steps']:,} steps through the MEI engine: **{workload['wall_s']:.1f} s** from the call to"
            f" the images in memory, compilation included ({workload['image_step_s']:,.0f} image-steps/s, float32)."
        )
    if results["peer_variants"]:
        lines.append("\nPeer variants (img/s; image-steps/s for mei; * the fastest):\n")
        for row, variants in results["peer_variants"].items():
            text = ", ".join(f"{v} {r:,.1f}{'*' if v == fastest[row]['variant'] else ''}" for v, r in variants.items())
            lines.append(f"- {row}: {text}")
        for setting, run in peer.items():
            compiled = run.get("compiled", {})
            times = compiled.get("compile_s")
            text = ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) if times else compiled.get("skipped", "")
            lines.append(f"- {setting} torch.compile first calls: {text}")
    status = ", ".join(f"{side} {state}" for side, state in results["status"].items())
    lines.append(f"\nStatus: {status}; {results['elapsed_s']:.0f} s in all.")
    return "\n".join(lines) + "\n"


def write_report(out: Path, results: dict) -> None:
    write_json(out / "device.json", results)
    (out / "device.md").write_text(format_markdown(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for device.json and device.md")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, the peer on the CPU")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for both sides together")
    parser.add_argument("--video", action="store_true", help="the video suite instead (twin bench --video)")
    parser.add_argument("--side", choices=["twin"], help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)  # the parent's clock, for log lines
    args = parser.parse_args(argv)
    if args.started:
        global START
        START = args.started
    args.out.mkdir(parents=True, exist_ok=True)
    if args.video:
        results = run_video_suite(args.quick)
        write_json(args.out / "video.json", results)
        (args.out / "video.txt").write_text(format_video_results(results) + "\n")
        print((args.out / "video.txt").read_text())
        return 0
    if args.side == "twin":
        twin_side(args.out, args.quick)
        return 0

    twin_path = args.out / "twin.json"
    twin_path.unlink(missing_ok=True)
    status = {"twin": "running", "peer": "waiting"}
    log("twin side: starting")
    status["twin"] = run_twin_side(args.out, args.quick, max(args.budget - PEER_RESERVE_S, 60))
    log(f"twin side: {status['twin']}")
    twin = json.loads(twin_path.read_text()) if twin_path.is_file() else {}
    write_report(args.out, combine(twin, {}, status))

    device = "cpu" if args.quick else "cuda"
    timeout = max(args.budget - (time.time() - START), 30)
    log(f"peer on {device}: starting (at most {timeout:.0f} s)")
    peer = run_peer(QUICK if args.quick else GPU, device, timeout, mallocs=("default",))
    status["peer"] = "skipped" if "skipped" in peer else "done"
    log(f"peer: {status['peer']}")
    results = combine(twin, peer, status)
    write_report(args.out, results)
    print((args.out / "device.md").read_text())
    return 0 if status["twin"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
