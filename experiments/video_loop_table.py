"""The numbers of experiments/video_loop.md from an OUT folder of experiments/video_loop.sh (OUT/loop
is the `twin loop --video` folder; OUT/run and OUT/animal.zarr link to its twin and animal)."""

import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from twin.mei.motion import motion_direction

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
loop = json.loads((out / "loop" / "loop.json").read_text())
direction = loop["direction"]
print(
    f"twin loop --video ({loop['seconds']['total'] / 60:.0f} min): {loop['n_neurons']} neurons selected; on the animal,"
    f" MEV / best natural clip median {loop['median_mei_over_best_natural']:.2f}, MEV beats every control (p < 0.05)"
    f" for {loop['fraction_mei_beats_controls_p05']:.0%}, predicted vs measured r {loop['prediction_correlation']:.2f};"
    f" MEV motion within {direction['tolerance_degrees']:g} deg of the preferred direction for"
    f" {direction['within_tolerance']} of the {direction['selective_selected']} direction-selective ones"
)
ids = np.array([n["id"] for n in mevs["neurons"]])
true_ratio = np.array([n["true_ratio"] for n in mevs["neurons"]], float)
ratio = np.array([n["ratio"] for n in mevs["neurons"]], float)
print(
    f"MEVs of {len(ids)} direction-selective neurons ({mevs['frames']} frames): MEV / best natural clip"
    f" median {np.median(ratio):.2f} under the twin, {np.median(true_ratio):.2f} on the true neurons;"
    f" {int((true_ratio > 1).sum())} of {len(ids)} beat the true best natural clip"
)
# Measured again from the stored clips, so the table follows twin.mei.motion as it is now.
store = xr.open_zarr(out / "mevs.zarr", consolidated=False)
best = store["images"].values[np.arange(len(ids)), store["best_seed"].values]
measured = np.array([motion_direction(clip) for clip in best])
preferred = truth["gt_preferred_direction"].values[ids]
error = np.abs((measured - preferred + 180) % 360 - 180)
print(
    f"motion: MEV direction within 30 deg of the preferred direction for {int((error <= 30).sum())} of {len(ids)}"
    f" ({np.mean(error <= 30):.0%}); median error {np.median(error):.0f} deg; errors {np.round(error).astype(int).tolist()}"
)


def truth_mevs(out: Path, neurons: np.ndarray, store: xr.Dataset) -> np.ndarray:
    """(n, frame, y, x) MEVs of the true ``neurons`` themselves: the engine and recipe of the
    store's MEVs, on the simulated animal's noise-free responses (the best the twin could do)."""
    import jax.numpy as jnp
    from flax import nnx

    from twin import checkpoint
    from twin.data import simulate_video
    from twin.data.simulate import ground_truth
    from twin.mei.optimize import optimize_meis
    from twin.mei.run import engine_arguments
    from twin.mei.store import stored_config

    data = checkpoint.load_run(out / "run").sessions[0]
    params = ground_truth(truth)

    class Truth(nnx.Module):  # the Twin call signature; every neuron is computed, then the targets are read
        video = True

        def __call__(self, clips, session=0, *, neurons=None, behavior=None, pupil_center=None):
            pixels = clips[..., 0] * data.image_std + data.image_mean
            responses = simulate_video.mean_response(params, pixels, xp=jnp)
            return responses if neurons is None else jnp.take(responses, neurons, axis=-1)

    config = stored_config(store)
    arguments = engine_arguments(data, None, progress=False) | {"validator": None}
    return optimize_meis(Truth(), 0, neurons, config, **arguments).best_images()


truth_clips = truth_mevs(out, ids, store)
truth_error = np.abs((np.array([motion_direction(clip) for clip in truth_clips]) - preferred + 180) % 360 - 180)
print(
    f"the true neurons' own MEVs (same engine and recipe): within 30 deg for {int((truth_error <= 30).sum())} of"
    f" {len(ids)}; median error {np.median(truth_error):.0f} deg; errors {np.round(truth_error).astype(int).tolist()}"
)


def grating_tuning(out: Path, neurons: np.ndarray, frames: int = 60, directions=np.arange(0, 360, 45)):
    """(twin, truth): responses (neuron, direction) of ``neurons`` to full-field gratings at each
    neuron's true wavelength and temporal frequency, averaged after the first half of the clip."""
    import jax.numpy as jnp

    from twin import checkpoint
    from twin.data import simulate_video
    from twin.data.simulate import ground_truth

    run = checkpoint.load_run(out / "run")
    data, model = run.sessions[0], run.model
    held = {
        name: jnp.broadcast_to(mean, (len(directions), frames, len(mean)))
        for name, mean in data.train_means().items()
        if mean is not None
    }
    params = ground_truth(truth)
    twin_tuning, true_tuning = [], []
    for n in neurons:
        wavelength = float(truth["gt_wavelength"].values[n])
        speed = wavelength * float(truth["gt_temporal_frequency"].values[n])
        gratings = simulate_video.drifting_gratings(directions, frames, data.image_shape, wavelength, speed)
        true_tuning.append(simulate_video.mean_response(params, gratings)[:, frames // 2 :, n].mean(1))
        shown = jnp.asarray(data.normalize_images(gratings)[..., None])
        twin_tuning.append(np.asarray(model(shown, 0, **held))[:, frames // 2 :, n].mean(1))
    return np.array(twin_tuning), np.array(true_tuning)


directions = np.arange(0, 360, 45)
twin_tuning, true_tuning = grating_tuning(out, ids, directions=directions)


def selectivity(tuning):  # (preferred - opposite) / (preferred + opposite) at the preferred direction
    best = tuning.argmax(1)
    preferred, opposite = tuning[np.arange(len(tuning)), best], tuning[np.arange(len(tuning)), (best + 4) % 8]
    return (preferred - opposite) / (preferred + opposite), directions[best]


twin_dsi, twin_preferred = selectivity(twin_tuning)
true_dsi, true_preferred = selectivity(true_tuning)
agree = np.abs((twin_preferred - true_preferred + 180) % 360 - 180) <= 45
print(
    f"gratings (8 directions): direction selectivity index median {np.median(twin_dsi):.2f} in the twin vs"
    f" {np.median(true_dsi):.2f} in the truth; the twin's preferred grating direction is the truth's (or a"
    f" neighbour) for {int(agree.sum())} of {len(ids)}"
)

for surround in ("excite", "suppress"):
    if not (out / f"surround_{surround}.json").exists():
        continue
    found = json.loads((out / f"surround_{surround}.json").read_text())
    ratio = np.array([n["surround_ratio"] for n in found["neurons"]], float)
    true_ratio = np.array([n["true_surround_ratio"] for n in found["neurons"]], float)
    clips = xr.open_zarr(out / f"surround_{surround}.zarr", consolidated=False)
    alone = clips["surround"].values[np.arange(len(ratio)), clips["best_seed"].values]
    motion = np.array([motion_direction(clip) for clip in alone])
    off = np.abs((motion - preferred + 180) % 360 - 180)
    raised = int((true_ratio > 1).sum())
    print(
        f"{surround} surrounds around the MEVs: response with the surround / the MEV's centre alone median"
        f" {np.median(ratio):.2f} under the twin, {np.median(true_ratio):.2f} on the true neurons (above 1 for"
        f" {raised} of {len(ratio)}); the surround moves within 30 deg of the preferred direction for"
        f" {int((off <= 30).sum())} of {len(ratio)}, median {np.nanmedian(off):.0f} deg off"
    )
