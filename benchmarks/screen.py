"""Natural-image screening throughput: `twin screen`'s engine vs a batched PyTorch loop, same run.

    python benchmarks/screen.py [--images 2048] [--neurons 1,8000] [--batch 128] [--top 16] [--quick] [--json]

Both screen the same uint8 .npy collection of natural-like images at the Sensorium input size
(1x36x64; twin.data.simulate.natural_images) through the Sensorium 2022 baseline (4 layers x 64
channels, full Gaussian readout, random weights) and keep, per neuron, the top and bottom
``--top`` images and a histogram of its responses:

- twin: ``twin.screen.screen`` reading the .npy memory-mapped (twin.data.sources), a background
  thread preparing batches, one jitted step per batch (responses, lax.top_k merges, histogram);
  crops/s counted after the first batch, which compiles;
- peer: neuralpredictors 0.3.0 (benchmarks/peer_torch.py build_model), eval mode, no_grad, a
  loop over batches of the memory-mapped array normalized with numpy, the readout's ``out_idx``
  set to the screened neurons, torch.topk merges of the kept top / bottom with the batch and a
  bucketize + scatter_add histogram; images/s after one warm-up batch. It runs in two child
  processes, with the default glibc malloc and with the tunables of twin.bench.MALLOC_TUNABLES.

Rates are images/s and images x neurons/s; the ratio is against the faster peer process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MEAN, STD = 128.0, 40.0  # normalization of the benchmark's session (pixel levels)
HEIGHT, WIDTH = 36, 64


def collection(n: int, folder: Path) -> Path:
    """An .npy of ``n`` natural-like uint8 images (n, 36, 64)."""
    from twin.data.simulate import natural_images

    path = folder / "images.npy"
    np.save(path, natural_images(n, (HEIGHT, WIDTH), np.random.default_rng(0)))
    return path


def twin_rate(path: Path, neurons: int, batch: int, top: int, quick: bool) -> dict:
    """twin's screen of the collection at ``path`` for the first ``neurons`` neurons."""
    from twin.bench import FULL, build_twin, synthetic_session
    from twin.data.sources import open_source
    from twin.screen import screen

    shapes = dataclasses.replace(FULL, neurons=neurons, n_train=16, **(dict(channels=8, layers=2) if quick else {}))
    model = build_twin(shapes)
    model.eval()
    data = dataclasses.replace(synthetic_session(shapes), image_mean=np.float32(MEAN), image_std=np.float32(STD))
    index = np.arange(neurons)
    found = screen(model, 0, data, [open_source(path, 1)], index, top=top, batch=batch)
    images = found.n_crops - found.batch
    return rates(images, found.seconds - found.first_seconds, neurons) | {"compile_s": found.first_seconds}


def rates(images: int, seconds: float, neurons: int) -> dict:
    return {"images_s": images / seconds, "image_neurons_s": images * neurons / seconds, "seconds": seconds}


def peer_rate(path: Path, neurons: int, batch: int, top: int, quick: bool, total_neurons: int) -> dict:
    """The PyTorch loop on the collection at ``path`` (see the module doc)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from peer_torch import build_model

    channels, layers = (8, 2) if quick else (64, 4)
    model = build_model(total_neurons, (HEIGHT, WIDTH), channels, layers)
    model.eval()
    images = np.load(path, mmap_mode="r")
    out_idx = np.arange(neurons)
    edges = torch.from_numpy(np.geomspace(1e-2, 1e2, 257).astype(np.float32))
    state = {
        "top": torch.full((neurons, top), -torch.inf), "top_id": torch.full((neurons, top), -1),
        "low": torch.full((neurons, top), -torch.inf), "low_id": torch.full((neurons, top), -1),
        "counts": torch.zeros((neurons, 256), dtype=torch.int64),
    }  # fmt: skip

    def merge(values, ids, new, new_ids):
        joined = torch.cat([values, new], 1)
        kept, where = joined.topk(top, dim=1)
        return kept, torch.cat([ids, new_ids.expand(len(new), -1)], 1).gather(1, where)

    def run(start: int) -> None:
        chunk = (np.asarray(images[start : start + batch], np.float32) - MEAN) / STD
        with torch.no_grad():
            responses = model(torch.from_numpy(chunk[:, None]), data_key="session", out_idx=out_idx).T
        ids = torch.arange(start, start + len(chunk))[None]
        state["top"], state["top_id"] = merge(state["top"], state["top_id"], responses, ids)
        state["low"], state["low_id"] = merge(state["low"], state["low_id"], -responses, ids)
        bins = (torch.bucketize(responses, edges, right=True) - 1).clamp(0, 255)
        state["counts"].scatter_add_(1, bins, torch.ones_like(bins))

    run(0)  # warm-up
    start = time.perf_counter()
    for first in range(batch, len(images), batch):
        run(first)
    seconds = time.perf_counter() - start
    return rates(len(images) - batch, seconds, neurons) | {
        "threads": torch.get_num_threads(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")
    }


def peer_processes(path: Path, args) -> dict:
    """peer_rate for every neuron count in two child processes: {"default": ..., "malloc_tuned": ...}."""
    from twin.bench import MALLOC_TUNABLES

    results = {}
    for name, tunables in (("default", None), ("malloc_tuned", MALLOC_TUNABLES)):
        env = dict(os.environ) | ({"GLIBC_TUNABLES": tunables} if tunables else {})
        command = [sys.executable, __file__, "--peer-of", str(path), "--neurons", args.neurons, "--batch", str(args.batch),
                   "--top", str(args.top)] + (["--quick"] if args.quick else [])  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            results[name] = {"skipped": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
        else:
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def format_results(results: dict) -> str:
    lines = [f"twin screen benchmark  {results['date']}  {results['images']} images 1x{HEIGHT}x{WIDTH}, batch {results['batch']},"
             f" top {results['top']}; JAX on {results['devices']} {results['platform']} device(s)"]  # fmt: skip
    lines.append(f"{'neurons':>8} {'twin img/s':>12} {'peer img/s':>12} {'ratio':>7} {'twin img x neurons/s':>22}  peer variants")
    for neurons, row in results["rows"].items():
        peers = {name: p[neurons]["images_s"] for name, p in results["peer"].items() if neurons in p}
        best = max(peers.values()) if peers else float("nan")
        variants = ", ".join(f"{name} {value:,.1f}" for name, value in peers.items())
        lines.append(
            f"{neurons:>8} {row['images_s']:>12,.1f} {best:>12,.1f} {row['images_s'] / best:>6.2f}x"
            f" {row['image_neurons_s']:>22,.0f}  {variants} (twin compile {row['compile_s']:.1f} s)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--neurons", default="1,8000", help="comma-separated neuron counts")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--top", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="tiny model (checks the script runs)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--peer-of", help=argparse.SUPPRESS)  # the child process: the peer on this .npy
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.neurons.split(",")]
    if args.peer_of:
        rows = {n: peer_rate(Path(args.peer_of), n, args.batch, args.top, args.quick, max(counts)) for n in counts}
        print(json.dumps(rows))
        return 0
    import datetime

    import jax

    with tempfile.TemporaryDirectory() as folder:
        path = collection(args.images, Path(folder))
        rows = {n: twin_rate(path, n, args.batch, args.top, args.quick) for n in counts}
        peer = {name: {int(k): v for k, v in p.items()} if "skipped" not in p else {} for name, p in peer_processes(path, args).items()}
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "images": args.images, "batch": args.batch, "top": args.top,
        "devices": jax.device_count(), "platform": jax.devices()[0].platform,
        "rows": rows, "peer": peer,
    }  # fmt: skip
    print(json.dumps(results, indent=2) if args.json else format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
