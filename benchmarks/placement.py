"""Readout placement at Sensorium scale: seconds of twin.models.placement's contrast-energy map.

    python benchmarks/placement.py [--neurons 8000] [--trials 2000]

Random responses (gamma, 5% missing) of ``--neurons`` neurons on ``--trials`` 36x64 one-channel
images.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from twin.models import placement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=8000)
    parser.add_argument("--trials", type=int, default=placement.MAX_TRIALS)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    responses = rng.gamma(1.0, size=(args.trials, args.neurons)).astype(np.float32)
    responses[rng.random(responses.shape) < 0.05] = np.nan
    images = rng.normal(size=(args.trials, 36, 64, 1)).astype(np.float32)
    start = time.perf_counter()
    placement.energy_positions(images, responses)
    energy = time.perf_counter() - start
    print(json.dumps({**vars(args), "energy_seconds": round(energy, 1)}))


if __name__ == "__main__":
    main()
