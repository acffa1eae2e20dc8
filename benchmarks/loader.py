"""Loader throughput: trials/s of `twin.data.loader.batches` after the store is in memory.

    python benchmarks/loader.py                 # builds a 5,000 x 8,000, 36x64 store in a temp dir
    python benchmarks/loader.py --store S.zarr  # or measures an existing store

Prints the import time (write_session of in-memory arrays), the load time (store -> memory,
normalized: the first epoch's cost) and trials/s over the following epochs (batch 128, shuffled).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from twin.config import DataConfig
from twin.data.loader import batches, load_session
from twin.data.schema import make_session
from twin.data.store import write_session


def build_store(path: Path, trials: int, neurons: int, size: tuple[int, int]) -> float:
    """Write a random session like a Sensorium mouse; returns seconds spent writing."""
    rng = np.random.default_rng(0)
    ds = make_session(
        "benchmark",
        images=rng.integers(0, 256, (trials, *size), dtype=np.uint8),
        responses=rng.gamma(0.5, 1.0, (trials, neurons)).astype(np.float32),
        tier=rng.choice(["train", "validation", "test"], trials, p=[0.8, 0.1, 0.1]),
        image_id=np.arange(trials),
        behavior=rng.normal(size=(trials, 3)),
        pupil_center=rng.normal(size=(trials, 2)),
    )
    start = time.perf_counter()
    write_session(ds, path)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="existing session store (default: build one)")
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--neurons", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {}
        store = args.store
        if store is None:
            store = Path(tmp) / "bench.zarr"
            result["write_s"] = build_store(store, args.trials, args.neurons, (36, 64))
        start = time.perf_counter()
        session = load_session(store, DataConfig())
        result["load_s"] = time.perf_counter() - start
        trials = 0
        start = time.perf_counter()
        for epoch in range(args.epochs):
            for batch in batches([session], "train", args.batch_size, shuffle=True, seed=epoch):
                trials += len(batch.trials)
        result["trials_per_s"] = trials / (time.perf_counter() - start)
        result["shape"] = {"trials": len(session.tier), "neurons": session.n_neurons,
                           "image": list(session.image_shape)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
