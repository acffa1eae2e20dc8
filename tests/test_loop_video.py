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


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """The folder of a miniature `twin loop --video`."""
    from twin.cli import main

    config = tmp_path_factory.mktemp("config") / "loop.toml"
    config.write_text(LOOP_TOML)
    out = tmp_path_factory.mktemp("video") / "loop"
    assert main(["loop", str(out), "--video", "--neurons", "4", "--config", str(config)]) == 0
    return out


@pytest.mark.xdist_group("video_loop")  # one worker builds the loop fixture
def test_loop_video_leaves_clips_gifs_report_and_numbers(loop):
    from twin.data.schema import strings
    from twin.data.store import open_session

    out = loop
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


@pytest.mark.xdist_group("video_loop")  # one worker builds the loop fixture
def test_surround_clips_around_the_loops_mevs(loop, capsys):
    """`twin mei --surround` on a video run: surround clips around each MEV inside its tight mask
    (one mask for every frame), the centre kept on every frame, scored by the twin and by the
    simulated animal over the response window; export refuses the store."""
    from twin.cli import main
    from twin.data.simulate import ground_truth
    from twin.data.store import open_session
    from twin.mei.store import open_meis

    run, mevs, out = loop / "run", loop / "meis.zarr", loop / "surround.zarr"
    (loop / "quick.toml").write_text("[mei]\nsteps = 5\nseeds = 2\n")
    (loop / "long.toml").write_text("[mei]\nframes = 12\nresponse_window = 4\n")
    argv = ["mei", str(run), "--surround", "excite", "--centre", str(mevs)]
    capsys.readouterr()
    assert main([*argv, "--config", str(loop / "quick.toml"), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    centres = open_meis(mevs)
    store = open_meis(out)
    n = centres.sizes["neuron"]
    assert (summary["surround"], summary["frames"], summary["frame_rate"]) == ("excite", 20, 30.0)
    assert [u["id"] for u in summary["neurons"]] == centres["unit_id"].values.tolist()
    assert store["images"].dims == ("neuron", "seed", "frame", "y", "x") and store["images"].shape == (n, 2, 20, 16, 24)
    assert store["surround"].shape == store["images"].shape and store["centre_mask"].shape == (n, 16, 24)
    assert store.attrs["surround"] == "excite" and store.attrs["frame_rate"] == 30.0

    # Where the mask is 1 the clip is the centre MEV on every frame and the surround is 0.
    mask = store["centre_mask"].values
    inside = np.broadcast_to((mask == 1)[:, None, None], store["images"].shape)
    assert inside.any() and (mask < 1).any()
    mev = centres["images"].values[np.arange(n), centres["best_seed"].values]
    np.testing.assert_array_equal(store["images"].values[inside], np.broadcast_to(mev[:, None], inside.shape)[inside])
    assert np.all(store["surround"].values[inside] == 0)
    best = store["activations"].values.max(axis=1)
    np.testing.assert_allclose(store["surround_ratio"].values, best / store["centre_activation"].values, rtol=1e-5)

    # The simulated animal's response to the centre alone, over the last 8 frames.
    truth = ground_truth(open_session(loop / "session.zarr"))
    alone = mask[:, None] * mev * store["image_std"].values + store["image_mean"].values
    expected = simulate_video.mean_response(truth, alone)[:, -8:].mean(axis=1)
    index = store["neuron_index"].values
    np.testing.assert_allclose(store["true_centre_activation"].values, expected[np.arange(n), index], rtol=1e-4)
    assert np.all(np.isfinite(store["true_surround_ratio"].values)) and (loop / "surround.png").stat().st_size > 0

    # A centre of other clip lengths, and the rig export, are refused in one line each.
    assert main([*argv, "--config", str(loop / "long.toml"), "--out", str(loop / "x.zarr")]) == 2
    error = capsys.readouterr().err
    assert f"--centre {mevs}: variable images holds clips of 20 frames but [mei].frames is 12" in error
    assert len(error.strip().splitlines()) == 1 and not (loop / "x.zarr").exists()
    assert main(["export", str(out), "--out", str(loop / "surround_stimuli")]) == 2
    assert "surround.zarr: holds excite surrounds" in capsys.readouterr().err


@pytest.mark.xdist_group("video_loop")  # one worker builds the loop fixture
def test_surround_clips_around_an_image_patch_on_every_frame(loop, capsys):
    from twin.cli import main
    from twin.mei.store import open_meis

    mean = float(open_meis(loop / "meis.zarr")["image_mean"].values.mean())
    yy, xx = np.indices((16, 24))
    patch = mean + 80 * np.exp(-((yy - 8) ** 2 + (xx - 12) ** 2) / 32.0) * np.cos(xx / 1.5)
    np.save(loop / "patch.npy", patch[None].astype(np.float32))
    (loop / "one_step.toml").write_text("[mei]\nsteps = 3\nseeds = 1\n")
    out = loop / "patch_surround.zarr"
    argv = ["mei", str(loop / "run"), "--surround", "suppress", "--centre", str(loop / "patch.npy"), "--neurons", "0,5",
            "--config", str(loop / "one_step.toml"), "--out", str(out)]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    assert f"wrote {out}: suppress surround clips of 20 frames of 2 neurons" in capsys.readouterr().out
    store = open_meis(out)
    assert store["images"].shape == (2, 1, 20, 16, 24) and store["neuron_index"].values.tolist() == [0, 5]
    # images = mask * patch + surround on every frame (the patch's Walker mask, blurred at its edge)
    mask = store["centre_mask"].values
    assert mask.max() > 0.9 and (mask < 0.1).any()
    normalized = (patch - store["image_mean"].values) / store["image_std"].values
    centre = np.broadcast_to((mask * normalized)[:, None, None], store["images"].shape)
    np.testing.assert_allclose(store["images"].values - store["surround"].values, centre, atol=1e-5)
    solid = np.broadcast_to((mask > 0.99)[:, None, None], centre.shape)
    assert solid.any()
    np.testing.assert_allclose(store["images"].values[solid], np.broadcast_to(normalized, centre.shape)[solid], atol=0.05)
