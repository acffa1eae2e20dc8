"""`twin loop --video` end to end on a miniature video animal, and the direction convention the
loop's direction numbers rest on (simulator, gratings and twin.mei.motion agree)."""

import json

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from twin.data import simulate_video
from twin.data.simulate import ground_truth
from twin.mei.motion import motion_direction

DIRECTIONS = np.arange(0.0, 360.0, 15.0)


def angle(a, b):
    return np.abs((np.asarray(a) - np.asarray(b) + 180) % 360 - 180)


def test_gt_preferred_direction_is_the_best_grating_and_motion_direction_reads_it():
    # 0 = rightward, 90 = upward in the simulator, its gratings and motion_direction alike,
    # also on frames that are not square.
    ds = simulate_video.simulate(40, 4, 1, 1, 30, (18, 32), seed=1)
    gratings = simulate_video.drifting_gratings(DIRECTIONS, 30, (18, 32), wavelength=12.0, speed=48.0)
    responses = simulate_video.mean_response(ground_truth(ds), gratings)[:, -10:].mean(axis=1)
    selective = ds["gt_direction_selective"].values.astype(bool)
    assert selective.sum() >= 5
    best = DIRECTIONS[responses.argmax(axis=0)]
    # within the grid's step and the cells' spatial-frequency mismatch; a flipped axis would be ~90-180 off
    errors = angle(best[selective], ds["gt_preferred_direction"].values[selective])
    assert np.median(errors) < 10 and errors.max() < 25, np.round(errors)
    read = [motion_direction(clip) for clip in gratings]
    assert np.all(angle(read, DIRECTIONS) < 2), np.round(read, 1)


LOOP_TOML = """
[loop]
simulated_neurons = 12
train_images = 16
test_images = 20
repeats = 2
frames = 48
size = [16, 24]
rig_repeats = 3
mei_seeds = 1
min_distance = 0.0

[data]
burn_in_frames = 10
clip_frames = 32
batch_size = 8

[model]
core_channels = 4
input_kernel = 5
temporal_input_kernel = 5
temporal_hidden_kernel = 3

[fit]
max_epochs = 2

[mei]
frames = 20
response_window = 8
steps = 10
"""


def test_loop_video_leaves_clips_gifs_report_and_numbers(tmp_path):
    from twin.cli import main
    from twin.data.schema import strings
    from twin.data.store import open_session

    config = tmp_path / "loop.toml"
    config.write_text(LOOP_TOML)
    out = tmp_path / "loop"
    assert main(["loop", str(out), "--video", "--neurons", "4", "--config", str(config)]) == 0

    result = json.loads((out / "loop.json").read_text())
    assert result["video"] is True
    assert set(result["seconds"]) == {"simulate", "fit", "select", "mei", "export", "respond", "closeloop", "total"}
    for key in ("fraction_of_ceiling", "twin_median_mei_over_best_natural", "true_median_mei_over_best_natural",
                "median_mei_over_best_natural", "prediction_correlation"):
        assert np.isfinite(result[key]), key
    direction = result["direction"]
    assert direction["tolerance_degrees"] == 30.0
    assert 0 <= direction["within_tolerance"] <= direction["selective_selected"] == len(direction["neurons"])
    truth = open_session(out / "session.zarr")
    for neuron in direction["neurons"]:
        assert truth["gt_direction_selective"].values[neuron["unit_id"]]
        assert neuron["gt_preferred_direction"] == pytest.approx(truth["gt_preferred_direction"].values[neuron["unit_id"]], abs=0.05)

    # the preset's clip norm (SMALL_VIDEO_TWIN) holds, clipping and blur only taking some off
    clips = xr.open_zarr(out / "meis.zarr", consolidated=False)["images"].values
    norms = np.sqrt((clips.reshape(*clips.shape[:2], -1) ** 2).sum(-1))
    assert np.all(norms <= 30.0 * (1 + 1e-5)) and np.all(norms > 20.0), norms

    manifest = json.loads((out / "stimuli" / "manifest.json").read_text())
    assert (manifest["frames"], manifest["frame_rate"], manifest["response_window"]) == (20, 30.0, 8)
    kinds = [s["kind"] for s in manifest["stimuli"]]
    assert kinds.count("mei") == kinds.count("natural") == result["n_neurons"] >= 1
    screen = manifest["screen_shape"]
    for stimulus in manifest["stimuli"]:
        folder = out / "stimuli" / stimulus["file"]
        assert sorted(p.name for p in folder.iterdir()) == [f"frame_{i:04d}.png" for i in range(20)]
        assert Image.open(folder / "frame_0007.png").size == (screen[1], screen[0])
        assert Image.open(out / "stimuli" / stimulus["preview"]).n_frames == 20
    # the natural controls are the session's train clips the twin rates best
    tiers = strings(truth["tier"].values)
    assert all(tiers[s["image_trial"]] == "train" for s in manifest["stimuli"] if s["kind"] == "natural")

    responses = np.load(out / "responses.npz")
    trials = len(manifest["order"])
    assert responses["responses"].shape == (trials, 12) and responses["traces"].shape == (trials, 20, 12)
    np.testing.assert_allclose(responses["responses"], responses["traces"][:, -8:].mean(axis=1), rtol=1e-5)

    page = (out / "report" / "index.html").read_text()
    assert page.count("data:image/gif;base64,") == 2 * result["n_neurons"]
    slices = sorted((out / "report").glob("xt_*.png"))
    assert len(slices) == result["n_neurons"]
    assert Image.open(slices[0]).size == (screen[1], 20 * 4)
