"""The numbers of experiments/video_loop.md from an OUT folder of experiments/video_loop.sh."""

import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr

out = Path(sys.argv[1])
scores = json.loads((out / "evaluate.json").read_text())
mevs = json.loads((out / "mevs.json").read_text())
truth = xr.open_zarr(out / "animal.zarr", consolidated=False)

ceiling = scores["ground_truth_ceiling"]
print(
    f"fit: test single-trial r {scores['single_trial_correlation']:.3f} (ceiling {ceiling['single_trial_correlation']:.3f}),"
    f" correlation to average {scores['correlation_to_average']:.3f} (ceiling {ceiling['correlation_to_average']:.3f}):"
    f" {scores['fraction_of_ceiling']:.3f} of the ground-truth ceiling"
)
ids = np.array([n["id"] for n in mevs["neurons"]])
true_ratio = np.array([n["true_ratio"] for n in mevs["neurons"]], float)
ratio = np.array([n["ratio"] for n in mevs["neurons"]], float)
print(
    f"MEVs of {len(ids)} direction-selective neurons ({mevs['frames']} frames): MEV / best natural clip"
    f" median {np.median(ratio):.2f} under the twin, {np.median(true_ratio):.2f} on the true neurons;"
    f" {int((true_ratio > 1).sum())} of {len(ids)} beat the true best natural clip"
)
measured = np.array([n["direction"] for n in mevs["neurons"]], float)
preferred = truth["gt_preferred_direction"].values[ids]
error = np.abs((measured - preferred + 180) % 360 - 180)
print(
    f"motion: MEV direction within 30 deg of the preferred direction for {int((error <= 30).sum())} of {len(ids)}"
    f" ({np.mean(error <= 30):.0%}); median error {np.median(error):.0f} deg; errors {np.round(error).astype(int).tolist()}"
)
