"""Colour end to end: the colour animal, per-primary monitors, RGB export and a tiny colour loop."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from twin.cli import main
from twin.data.simulate import COLOURS, ground_truth, mean_response, respond, simulate
from twin.errors import ConfigError, SessionError
from twin.loop.export import render
from twin.loop.monitor import Monitor, load_monitor, png_to_model, save_png

SIZE = (18, 32)


@pytest.fixture(scope="module")
def colour_session():
    return simulate(30, 200, 5, 2, size=SIZE, seed=1, channels=3)


def test_gray_animal_is_drawn_as_before_colour_existed():
    """The digest of a gray session recorded before the colour option was added: the same seed
    still gives the same store (images, trials, responses, receptive fields)."""
    ds = simulate(30, 60, 5, 3, size=SIZE, seed=3)
    digest = hashlib.sha256()
    for name in ("images", "tier", "image_id", "gt_kind"):
        digest.update(np.asarray(ds[name].values).astype(str).tobytes())
    for name in ("responses", "gt_c50", "gt_filter_even"):
        digest.update(np.round(np.asarray(ds[name].values, np.float64), 3).tobytes())
    assert digest.hexdigest() == "01af2719333f8dfeb433e9c06f6bcd1c5e19f1a841f071889b8f9031a3f58522"
    assert "gt_colour" not in ds and ds["images"].dims == ("trial", "y", "x")


def test_colour_session_layout(colour_session):
    ds = colour_session
    assert ds["images"].dims == ("trial", "channel", "y", "x") and ds["images"].shape[1:] == (3, *SIZE)
    assert ds["gt_filter_even"].dims == ("neuron", "channel", "y", "x")
    assert ds["gt_colour_weights"].dims == ("neuron", "channel")
    colours = ds["gt_colour"].values.astype(str)
    assert {str(c) for c in colours} == set(COLOURS)
    assert (colours == "luminance").sum() == 16 and (colours == "red_green").sum() == 7  # 50%, 25%, 25%
    means = ds["images"].values.mean(axis=(0, 2, 3))
    assert np.all(np.abs(means - 128) < 6)
    # colour varies between channels: R - G is not constant over pixels
    images = ds["images"].values.astype(float)
    assert (images[:, 0] - images[:, 1]).std() > 5
    with pytest.raises(ConfigError, match="--channels 2: give 1 \\(gray\\) or 3 \\(RGB\\)"):
        simulate(5, 10, 2, 2, size=SIZE, channels=2)


def test_opponent_neurons_see_colour_not_luminance(colour_session):
    """The same natural images in gray (R = G = B at the mean of R, G, B) drive luminance neurons
    as much as in colour, and opponent neurons (almost) not at all."""
    params = ground_truth(colour_session)
    images = colour_session["images"].values.astype(np.float32)[:100]
    gray = np.repeat(images.mean(axis=1, keepdims=True), 3, axis=1)
    drive_colour = mean_response(params, images) - params["baseline"]
    drive_gray = mean_response(params, gray) - params["baseline"]
    colour = params["colour"].astype(str)
    luminance = colour == "luminance"
    assert drive_gray[:, luminance].mean() > 0.7 * drive_colour[:, luminance].mean()
    assert drive_gray[:, ~luminance].mean() < 0.05 * drive_colour[:, ~luminance].mean()
    # the stored optimum of a red-green simple cell is a red-green Gabor: R and G opposite
    simple = (colour == "red_green") & (params["kind"].astype(str) == "simple")
    optimum = params["optimal_stimulus"][np.flatnonzero(simple)[0]] - 128
    assert np.corrcoef(optimum[0].ravel(), optimum[1].ravel())[0, 1] < -0.99
    assert np.abs(optimum[2]).max() < 1e-3


def test_respond_takes_rgb_images_only(colour_session):
    images = colour_session["images"].values[:4]
    mean, noisy = respond(colour_session, images, repeats=2)
    assert mean.shape == (4, 30) and noisy.shape == (2, 4, 30)
    with pytest.raises(SessionError, match=r"give \(n, 3, 18, 32\)"):
        respond(colour_session, images[:, 0])


def test_ascent_on_the_true_colour_neurons_finds_their_colour_gabors(colour_session):
    """The MEI engine on (channel, y, x) images, run on the animal's own red-green and
    blue-yellow simple cells, recovers their colour-opponent Gabors and beats every natural image."""
    from twin.config import MEIConfig
    from twin.mei.optimize import optimize_meis
    from twin.mei.validate import GroundTruth, optimum_correlation, true_best_natural, true_responses

    params = ground_truth(colour_session)
    colour, kind = params["colour"].astype(str), params["kind"].astype(str)
    neurons = [np.flatnonzero((colour == c) & (kind == "simple"))[0] for c in ("red_green", "blue_yellow")]
    mean, std = 128.0, 40.0
    config = MEIConfig(
        steps=300, seeds=8, optimizer="sgd", learning_rate=2.0, final_learning_rate=2.0,
        schedule="constant", step_gain=1.0, precondition=0.0, blur_target="none",
        norm=float(params["optimal_norm"][neurons].mean()) / std, chunk_size=16,
    )
    result = optimize_meis(
        GroundTruth(params, mean, std), 0, neurons, config, image_shape=(3, *SIZE),
        pixel_range=(-mean / std, 127 / std), image_stats=(mean, std), progress=False,
    )
    pixels = result.best_images() * std + mean
    assert np.all(optimum_correlation(pixels, params["optimal_stimulus"][neurons]) > 0.9)
    natural, _ = true_best_natural(params, colour_session["images"].values.astype(np.float32), neurons)
    assert np.all(true_responses(params, pixels, neurons) > 1.5 * natural)


def smooth_rgb(seed, contrast=(40.0, 25.0, 10.0)):
    rng = np.random.default_rng(seed)
    image = np.stack([rng.normal(size=SIZE) for _ in contrast])
    image = np.fft.ifft2(np.fft.fft2(image) * np.exp(-np.hypot(*np.meshgrid(
        np.fft.fftfreq(SIZE[1]), np.fft.fftfreq(SIZE[0]))) * 8)).real
    image /= image.std(axis=(1, 2), keepdims=True)
    return np.clip(128 + np.asarray(contrast)[:, None, None] * image, 0, 255)


def test_monitor_per_primary_from_table_from_model_and_from_flags(tmp_path):
    pixel = [0, 32, 64, 128, 192, 255]
    gammas, whites = (1.8, 2.2, 2.6), (20.0, 60.0, 8.0)
    rows = [[round(w * (p / 255) ** g + 0.2, 4) for p in pixel] for g, w in zip(gammas, whites)]
    path = tmp_path / "rgb.toml"
    path.write_text(f"[calibration]\npixel = {pixel}\nluminance = {rows}\n")
    monitor = load_monitor(path)
    assert monitor.primaries == 3
    np.testing.assert_allclose(monitor.gamma, gammas, rtol=1e-3)
    np.testing.assert_allclose(np.ravel(monitor.white), np.add(whites, 0.2), rtol=1e-3)

    path.write_text("[calibration]\ngamma = [1.8, 2.2, 2.6]\nmax_luminance = [20, 60, 8]\n")
    assert load_monitor(path) == Monitor(a=whites, gamma=gammas, c=(0.0, 0.0, 0.0))
    assert load_monitor(None, gamma=[1.8, 2.2, 2.6], max_luminance=[20, 60, 8]) == load_monitor(path)
    # one value: a gray monitor, which also drives each of three primaries alike
    gray = load_monitor(None, gamma=2.2, max_luminance=50)
    assert gray == Monitor(a=50.0, gamma=2.2) and gray.primaries == 1
    assert gray.for_channels(3, "m").gamma == (2.2, 2.2, 2.2)
    with pytest.raises(ConfigError, match="has a \\[calibration\\] table and --gamma/--max-luminance"):
        load_monitor(path, gamma=2.0)
    with pytest.raises(ConfigError, match="--gamma = \\[1.0, 2.0\\]: give a number > 0 or one per primary"):
        load_monitor(None, gamma=[1.0, 2.0])
    with pytest.raises(ConfigError, match="the monitor has 3 primaries but the images 1 channel"):
        load_monitor(path).for_channels(1, path)


def test_targets_per_primary_or_on_luminance():
    from twin.loop.export import targets

    train = np.stack([np.full((4, 4), 64.0), np.full((4, 4), 128.0), np.full((4, 4), 192.0)])[None]
    train = train + np.array([-10.0, 10.0])[:, None, None, None]  # two images, contrast 10 levels
    rgb = Monitor().for_channels(3, "m.toml")
    mean, contrast = targets(rgb, train, False, "m.toml")
    np.testing.assert_allclose(mean.ravel(), np.array([64, 128, 192]) * 80 / 255)
    np.testing.assert_allclose(contrast.ravel(), [10 * 80 / 255] * 3)
    mean, contrast = targets(rgb, train, True, "m.toml")  # one contrast, of the summed luminance
    np.testing.assert_allclose(mean.ravel(), np.array([64, 128, 192]) * 80 / 255)
    assert contrast == pytest.approx(30 * 80 / 255)
    with pytest.raises(ConfigError, match="m.toml: \\[target\\] gives values per primary, but the stimuli are gray"):
        targets(Monitor(mean_luminance=(10.0, 20.0, 5.0)), train[:, 0], False, "m.toml")
    with pytest.raises(ConfigError, match="but --matching luminance matches the summed luminance"):
        targets(Monitor(rms_contrast=(1.0, 2.0, 3.0)).for_channels(3, "m.toml"), train, True, "m.toml")
    with pytest.raises(ConfigError, match="m.toml: the target mean luminance .* is outside the monitor's range"):
        targets(Monitor(mean_luminance=(10.0, 90.0, 5.0)).for_channels(3, "m.toml"), train, False, "m.toml")


@pytest.mark.parametrize("pooled", [False, True], ids=["channel", "luminance"])
def test_rgb_render_on_target_and_png_round_trip(tmp_path, pooled):
    monitor = Monitor(a=(20.0, 60.0, 8.0), gamma=(1.8, 2.2, 2.6), c=(0.2, 0.2, 0.2))
    pixels = smooth_rgb(0)
    if pooled:
        mean, contrast = np.array([8.0, 25.0, 3.0])[:, None, None], 6.0
    else:
        mean, contrast = np.array([8.0, 25.0, 3.0])[:, None, None], np.array([2.0, 6.0, 0.8])[:, None, None]
    shown = render(pixels, monitor, mean, contrast, pooled)
    if pooled:  # the summed luminance is on target, and the colours kept: one gain for all
        assert shown["mean_luminance"] == pytest.approx(36.0, rel=0.01)
        assert shown["rms_contrast"] == pytest.approx(6.0, rel=0.02)
    else:
        np.testing.assert_allclose(shown["mean_luminance"], [8.0, 25.0, 3.0], rtol=0.01)
        np.testing.assert_allclose(shown["rms_contrast"], [2.0, 6.0, 0.8], rtol=0.03)
    path = tmp_path / "stimulus.png"
    save_png(shown["screen"], (36, 64), path)
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (64, 36)
    np.testing.assert_allclose(png_to_model(path, monitor, SIZE), shown["model"], atol=1e-3)


TINY_COLOUR_LOOP = """
[loop]
channels = 3
simulated_neurons = 20
train_images = 200
test_images = 20
repeats = 2
size = [18, 32]
rig_repeats = 3
min_distance = 5.0
mei_seeds = 1
[model]
core_layers = 1
core_channels = 8
input_kernel = 5
[data]
batch_size = 32
[fit]
max_epochs = 1
[mei]
steps = 10
"""


@pytest.fixture(scope="module")
def colour_loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour_loop")
    (root / "tiny.toml").write_text(TINY_COLOUR_LOOP)
    assert main(["loop", str(root / "out"), "--neurons", "2", "--config", str(root / "tiny.toml")]) == 0
    return root / "out"


def test_colour_loop_writes_rgb_stimuli_manifest_and_report(colour_loop):
    manifest = json.loads((colour_loop / "stimuli" / "manifest.json").read_text())
    assert manifest["target"]["matching"] == "channel"
    assert len(manifest["target"]["mean_luminance"]) == 3 and len(manifest["target"]["rms_contrast"]) == 3
    assert manifest["monitor"]["gamma"] == [1.0, 1.0, 1.0] and manifest["monitor"]["a"] == [80.0] * 3
    height, width = manifest["screen_shape"]
    for stimulus in manifest["stimuli"]:
        assert len(stimulus["mean_luminance"]) == 3
        with Image.open(colour_loop / "stimuli" / stimulus["file"]) as image:
            assert image.mode == "RGB" and image.size == (width, height)
    kinds = {s["kind"] for s in manifest["stimuli"]}
    assert {"mei", "natural", "natural_masked"} <= kinds
    csv_line = (colour_loop / "stimuli" / "manifest.csv").read_text().splitlines()[1]
    assert len(csv_line.split(",")[-1].split()) == 3  # rms_contrast per primary, space-separated
    # the MEI grid and the report show colour
    for grid in (colour_loop / "meis.png", colour_loop / "report" / "mei_grid.png"):
        with Image.open(grid) as image:
            pixels = np.asarray(image.convert("RGB")).astype(int)
        assert np.abs(pixels[..., 0] - pixels[..., 1]).max() > 10  # not a gray picture
    page = (colour_loop / "report" / "index.html").read_text()
    assert "matched per primary" in page and "R " in page and ", B " in page
    loop = json.loads((colour_loop / "loop.json").read_text())
    assert loop["n_neurons"] >= 1 and set(loop["seconds"]) >= {"simulate", "export", "respond", "closeloop"}


def test_export_on_luminance_with_three_gammas_then_respond(colour_loop, tmp_path, capsys):
    out = tmp_path / "stimuli"
    args = ["export", str(colour_loop / "meis.zarr"), "--out", str(out), "--repeats", "2",
            "--gamma", "2.0,2.2,2.4", "--max-luminance", "20,60,10", "--matching", "luminance"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["monitor"]["gamma"] == [2.0, 2.2, 2.4]
    assert manifest["target"]["matching"] == "luminance"
    target = manifest["target"]["mean_luminance"]
    assert isinstance(target, float) and 0 < target < 90
    for stimulus in manifest["stimuli"]:
        assert abs(stimulus["mean_luminance"] / target - 1) <= 0.05
    responses = tmp_path / "responses.npz"
    assert main(["respond", str(out), "--animal", str(colour_loop / "session.zarr"), "--out", str(responses)]) == 0
    assert np.load(responses)["responses"].shape[0] == 2 * len(manifest["stimuli"])
    capsys.readouterr()

    assert main(args[:4] + ["--out", str(tmp_path / "bad"), "--gamma", "1,2"]) == 2
    error = capsys.readouterr().err
    assert "--gamma = [1.0, 2.0]: give a number > 0 or one per primary" in error
    assert len(error.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_colour_loop_at_default_size_meis_beat_natural_images_on_the_true_neurons(tmp_path):
    """`twin loop --channels 3` with the default sizes (about 2 min of CPU; see
    experiments/inception_loop_colour.md): the median selected neuron's noise-free response to its
    MEI beats its best natural training image, and the measured responses agree."""
    assert main(["loop", str(tmp_path / "out"), "--channels", "3"]) == 0
    loop = json.loads((tmp_path / "out" / "loop.json").read_text())
    assert loop["true_median_mei_over_best_natural"] > 1.5
    assert loop["median_mei_over_best_natural"] > 1.5
    assert loop["fraction_mei_beats_controls_p05"] >= 0.5
