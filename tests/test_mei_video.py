"""Most exciting videos: the MEI engine on clips of a toy direction-tuned video model, the
space-time operations, and the motion direction measure."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.ndimage import gaussian_filter, gaussian_filter1d, shift

from twin.errors import ConfigError
from twin.mei import ops
from twin.mei.context import surround_inputs
from twin.mei.motion import drifting_grating, motion_direction
from twin.mei.optimize import evaluate_pairs, neuron_objective, optimize_meis
from twin.mei.params import Parametrization
from twin.mei.recipes import RECIPES

SHAPE = (16, 16)
FRAMES = 8
RANGE = (-2.0, 2.0)
DIRECTIONS = (0.0, 90.0, 200.0, 315.0)


class DirectionToy(nnx.Module):
    """A tiny video twin with the Twin call signature: neuron i is a causal linear space-time
    filter over the whole frame, tuned to a grating drifting towards ``directions[i]`` degrees
    (twin.mei.motion's convention), then elu + 1."""

    video = True

    def __init__(self, directions=DIRECTIONS, length: int = 4):
        envelope = np.exp(-0.5 * np.sum((np.indices(SHAPE) - 7.5) ** 2, axis=0) / 4.0**2)
        # Kernel tap s multiplies frame t - (length - 1) + s: the preferred snippet in forward time.
        snippets = np.stack([drifting_grating(length, SHAPE, d, period=8.0) * envelope for d in directions])
        self.kernel = nnx.Variable(jnp.asarray(snippets / np.sqrt(length), jnp.float32))
        self.length = length

    def __call__(self, images, session=0, *, behavior=None, pupil_center=None, neurons=None):
        """images (b, t, y, x, c) -> (b, t, n) or (b, t, k)."""
        kernel = self.kernel[...] if neurons is None else self.kernel[...][neurons]
        frames = images.shape[1]
        padded = jnp.pad(images.mean(-1), [(0, 0), (self.length - 1, 0), (0, 0), (0, 0)])
        drive = sum(
            jnp.einsum("btyx,nyx->btn", padded[:, s : s + frames], kernel[:, s]) for s in range(self.length)
        )
        return jax.nn.elu(drive) + 1


def config(**changes):
    values = dict(steps=40, seeds=2, chunk_size=4, frames=FRAMES, response_window=5) | changes
    return dataclasses.replace(RECIPES["walker2019"], **values)


def run(model, neurons, cfg, image_shape=SHAPE, **kwargs):
    return optimize_meis(model, 0, neurons, cfg, image_shape=image_shape, pixel_range=RANGE, progress=False, **kwargs)


@pytest.mark.parametrize("recipe, image_shape", [("walker2019", SHAPE), ("lucid", (2, *SHAPE))])
def test_mev_shapes_range_and_gain(recipe, image_shape):
    model = DirectionToy()
    cfg = dataclasses.replace(RECIPES[recipe], steps=20, seeds=2, chunk_size=4, frames=FRAMES, response_window=5)
    result = run(model, [0, 2], cfg, image_shape=image_shape)
    assert result.images.shape == (2, 2, FRAMES, *image_shape)
    assert result.activations.shape == result.steps.shape == (2, 2)
    assert np.all(result.images >= RANGE[0] - 1e-5) and np.all(result.images <= RANGE[1] + 1e-5)
    # The stored activation is the objective of the stored clip: the window's mean response.
    values = evaluate_pairs(model, neuron_objective(window=5), result.images.reshape(4, FRAMES, *image_shape),
                            {"neuron": np.array([0, 0, 2, 2], np.int32)})
    np.testing.assert_allclose(values.reshape(2, 2), result.activations, rtol=1e-5)
    clips = result.images[:, 0, ..., None] if len(image_shape) == 2 else np.moveaxis(result.images[:, 0], 2, -1)
    responses = model(jnp.asarray(clips), neurons=jnp.array([0, 2]))
    np.testing.assert_allclose(np.diagonal(np.asarray(responses[:, -5:]).mean(1)), result.activations[:, 0], rtol=1e-5)
    assert np.all(result.activations > 1.5)  # from about 1 (elu(0) + 1) at the mean gray


def test_mev_moves_in_the_neurons_preferred_direction():
    result = run(DirectionToy(), np.arange(len(DIRECTIONS)), config(steps=60, seeds=1))
    for clip, preferred in zip(result.best_images(), DIRECTIONS):
        error = (motion_direction(clip) - preferred + 180) % 360 - 180
        assert abs(error) < 10, (preferred, motion_direction(clip))


@pytest.mark.parametrize("recipe", ["walker2019", "lucid"])
def test_static_mev_repeats_one_image_on_every_frame(recipe):
    cfg = dataclasses.replace(RECIPES[recipe], steps=3, seeds=1, chunk_size=4, frames=FRAMES, response_window=5,
                              static=True, jitter=0, scale_jitter=0.0, rotate=0.0)
    clip = run(DirectionToy(), [0], cfg).images[0, 0]
    assert clip.shape == (FRAMES, *SHAPE) and np.ptp(clip) > 0
    np.testing.assert_array_equal(clip, np.broadcast_to(clip[:1], clip.shape))
    assert np.isnan(motion_direction(clip))


def test_surround_of_a_clip_keeps_the_centre_on_every_frame():
    centre = np.full((1, *SHAPE), 0.5, np.float32)
    mask = np.zeros((1, *SHAPE), np.float32)
    mask[:, 6:10, 6:10] = 1
    found = surround_inputs(
        DirectionToy(), 0, [0], config(steps=10, seeds=1), centre=centre, centre_mask=mask, direction="excite",
        image_shape=SHAPE, pixel_range=RANGE, progress=False,
    )
    clip = found.result.images[0, 0]
    assert clip.shape == (FRAMES, *SHAPE)
    np.testing.assert_allclose(clip[:, 6:10, 6:10], 0.5)
    assert np.all(found.surround[0, 0][:, 6:10, 6:10] == 0) and np.ptp(clip[:, :6]) > 0
    assert found.result.activations[0, 0] > found.centre_activation[0]


def test_transparent_clips_are_refused():
    with pytest.raises(ConfigError, match="^--transparency: transparent stimuli are made for image models"):
        run(DirectionToy(), [0], config(steps=2, seeds=1), backgrounds=np.zeros((1, *SHAPE), np.float32))


def test_response_window_cannot_exceed_the_clip():
    with pytest.raises(ConfigError, match=r"^\[mei\]\.response_window = 9 is above \[mei\]\.frames = 8"):
        config(response_window=9)


def test_rfft3_matches_numpy_and_the_clip_spectrum_round_trips():
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    real, imag = ops.rfft3(jnp.asarray(clips))
    expected = np.fft.rfftn(clips, axes=(-3, -2, -1), norm="ortho")
    np.testing.assert_allclose(real, expected.real, atol=1e-5)
    np.testing.assert_allclose(imag, expected.imag, atol=1e-5)
    np.testing.assert_allclose(ops.irfft3(real, imag, 7), clips, atol=1e-5)
    cfg = config(parametrization="fourier", clip_range=False)
    for shape in (SHAPE, (3, *SHAPE)):
        param = Parametrization(cfg, shape, RANGE, frames=FRAMES)
        clip = jnp.asarray(rng.normal(size=(2, FRAMES, *shape)), jnp.float32)
        np.testing.assert_allclose(param.image(param.from_image(clip)), clip, atol=1e-4)


def test_temporal_blur_matches_scipy():
    clips = np.random.default_rng(1).normal(size=(2, 9, 3, 4)).astype(np.float32)
    blurred = ops.temporal_blur(jnp.asarray(clips), 1.2, ops.blur_radius(1.2))
    np.testing.assert_allclose(blurred, gaussian_filter1d(clips, 1.2, axis=1, mode="reflect", truncate=4.0), atol=1e-5)


def test_jitter_moves_every_frame_of_a_clip_alike():
    clip = jnp.asarray(np.random.default_rng(2).normal(size=(1, 4, 2, 8, 8)), jnp.float32)
    moved = ops.transform(clip, jnp.array([[1.0, -2.0]]), jnp.ones(1))
    np.testing.assert_allclose(moved[0, :, :, 1:, :6], clip[0, :, :, :7, 2:], atol=1e-6)


@pytest.mark.parametrize("direction", np.arange(0, 360, 45))
def test_motion_direction_of_gratings_and_textures(direction):
    assert abs((motion_direction(drifting_grating(16, (24, 24), direction)) - direction + 180) % 360 - 180) < 10
    texture = gaussian_filter(np.random.default_rng(int(direction)).normal(size=(48, 48)), 2, mode="wrap")
    radians = np.radians(direction)
    clip = np.stack([
        shift(texture, (-np.sin(radians) * t, np.cos(radians) * t), mode="wrap", order=1)[12:36, 12:36]
        for t in range(16)
    ])
    assert abs((motion_direction(clip) - direction + 180) % 360 - 180) < 10
    # upward is decreasing row
    if direction == 90:
        assert np.allclose(clip[1, :-1], clip[0, 1:], atol=0.2)


def test_video_store_and_export_write_frames_gif_and_manifest(tmp_path, monkeypatch):
    import json

    from PIL import Image

    from twin.config import MEIConfig
    from twin.data.schema import make_session
    from twin.data.store import write_session
    from twin.loop import export
    from twin.mei.store import config_toml, meis_dataset, open_meis, write_meis

    rng = np.random.default_rng(3)
    session = make_session(
        "test", images=rng.integers(0, 256, (6, *SHAPE)).astype(np.uint8), responses=rng.random((6, 2)),
        tier=np.array(["train"] * 4 + ["validation", "test"]), image_id=np.arange(6),
    )
    write_session(session, tmp_path / "session.zarr")
    # Two neurons x two seeds of clips drifting right, in normalized units (pixels = 40 z + 128).
    clips = np.stack([drifting_grating(FRAMES, SHAPE, 0.0, phase=p) for p in range(4)]).reshape(2, 2, FRAMES, *SHAPE)
    attrs = {"run": str(tmp_path / "run"), "session": 0, "store": str(tmp_path / "session.zarr"),
             "mei_config": config_toml(MEIConfig(frames=FRAMES, response_window=3)), "frame_rate": 20.0}
    variables = {
        "images": clips.astype(np.float32), "activations": np.ones((2, 2), np.float32), "best_seed": np.array([1, 0]),
        "unit_id": np.array([5, 9]), "neuron_index": np.array([0, 1]),
        "image_mean": np.float32(128.0), "image_std": np.float32(40.0),
    }
    write_meis(meis_dataset(variables, attrs), tmp_path / "mevs.zarr")
    store = open_meis(tmp_path / "mevs.zarr")
    assert store["images"].dims == ("neuron", "seed", "frame", "y", "x")
    assert store.attrs["frame_rate"] == 20.0

    seen = {}

    def responses(run, session, neuron_index, images, window):
        seen.update(shape=images.shape, window=window)
        return np.arange(len(images), dtype=np.float32)

    # The video twin lives in its own module; the export path only needs its responses here.
    monkeypatch.setattr(export, "own_neuron_clip_responses", responses)
    manifest = export.export_stimuli(tmp_path / "mevs.zarr", tmp_path / "stimuli", repeats=2)
    assert seen == {"shape": (2, FRAMES, *SHAPE), "window": 3}
    assert manifest["frame_rate"] == 20.0 and manifest["frames"] == FRAMES
    assert [s["kind"] for s in manifest["stimuli"]] == ["mei", "mei"] and not manifest["rejected"]
    first = manifest["stimuli"][0]
    assert first["frames"] == FRAMES and first["seed"] == 1 and first["file"] == "stimuli/0000_mei_u5"
    folder = tmp_path / "stimuli" / first["file"]
    assert sorted(p.name for p in folder.iterdir()) == [f"frame_{i:04d}.png" for i in range(FRAMES)]
    gif = Image.open(tmp_path / "stimuli" / first["preview"])
    assert gif.n_frames == FRAMES and gif.info["duration"] == 50
    assert Image.open(folder / "frame_0000.png").size == (4 * SHAPE[1], 4 * SHAPE[0])
    # The whole clip meets the targets: its mean and contrast over all frames, not frame by frame.
    frames = np.stack([np.asarray(Image.open(folder / f"frame_{i:04d}.png"), float) for i in range(FRAMES)])
    target = manifest["target"]
    assert frames.mean() * 80 / 255 == pytest.approx(target["mean_luminance"], rel=0.02)
    assert frames.std() * 80 / 255 == pytest.approx(target["rms_contrast"], rel=0.05)
    assert first["mean_luminance"] == pytest.approx(target["mean_luminance"], rel=0.05)
    assert json.loads((tmp_path / "stimuli" / "manifest.json").read_text())["frames"] == FRAMES
    rows = (tmp_path / "stimuli" / "manifest.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 and "stimuli/0000_mei_u5" in rows[1] + rows[2]


def test_run_mevs_writes_the_clip_store_png_and_summary(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from twin.mei import run as mei_run
    from twin.mei.run import MeiJob, run_mevs
    from twin.mei.store import open_meis

    mean, std = np.float32(128.0), np.float32(40.0)
    # Natural trials: trial i a grating drifting towards DIRECTIONS[i], two clips long (the last
    # trial recorded for one clip only); a recorded session, so no ground truth.
    natural = np.stack([drifting_grating(2 * FRAMES, SHAPE, d) for d in DIRECTIONS])[..., None].astype(np.float32)
    data = SimpleNamespace(
        unit_id=np.array([10, 11, 12, 13]), frame_rate=30.0, images=natural, path="session.zarr",
        frame_count=np.array([2 * FRAMES] * 3 + [FRAMES]), trials=lambda tier: np.arange(4),
    )
    monkeypatch.setattr(mei_run, "simulated_truth", lambda data: None)
    job = MeiJob(
        run="run", model=DirectionToy(), session=0, data=data,
        index=np.array([1, 3]), centre_store=None, config=config(steps=40, seeds=2), config_sources=["test"],
        attrs={"run": "run", "session": 0, "frame_rate": 30.0}, image_mean=mean, image_std=std,
        out=tmp_path / "mevs.zarr",
        overwrite=False, primary=True,
        engine={"image_shape": SHAPE, "pixel_range": RANGE, "image_stats": (mean, std), "validator": None,
                "progress": False, "behavior": None, "pupil_center": None},
    )
    summary = run_mevs(job)
    store = open_meis(tmp_path / "mevs.zarr")
    assert store["images"].dims == ("neuron", "seed", "frame", "y", "x") and store.sizes["frame"] == FRAMES
    assert store.attrs["frame_rate"] == 30.0 and (tmp_path / "mevs.png").exists()
    assert [n["id"] for n in summary["neurons"]] == [11, 13] and summary["frames"] == FRAMES
    for neuron, preferred in zip(summary["neurons"], (DIRECTIONS[1], DIRECTIONS[3])):
        assert abs((neuron["direction"] - preferred + 180) % 360 - 180) < 10
    np.testing.assert_allclose(store["direction"].values, [n["direction"] for n in summary["neurons"]])
    # Each neuron's natural control is a clip of its own preferred grating (of the 3 x 2 + 1 clips),
    # scored like the MEVs.
    np.testing.assert_array_equal(store["best_natural_clip"].values, [2, 6])
    np.testing.assert_array_equal(store["best_natural_trial"].values, [1, 3])
    np.testing.assert_array_equal(store["best_natural_frame"].values, [0, 0])
    clips = natural[[1, 3], :FRAMES]
    expected = np.asarray(DirectionToy()(clips, neurons=np.array([1, 3])))[:, -5:].mean(axis=1).diagonal()
    np.testing.assert_allclose(store["best_natural_activation"].values, expected, rtol=1e-5)
    np.testing.assert_allclose(store["ratio"].values, store["activations"].values.max(axis=1) / expected, rtol=1e-5)
    assert summary["median_true_ratio"] is None and np.all(np.isnan(store["true_ratio"].values))


@pytest.mark.parametrize("pooled", [False, True])
def test_render_clip_matches_a_colour_clip_as_a_whole(pooled):
    from twin.loop.export import render_clip
    from twin.loop.monitor import Monitor

    monitor = Monitor().for_channels(3, "test")
    rng = np.random.default_rng(4)
    clip = np.clip(128 + 30 * drifting_grating(FRAMES, SHAPE, 45.0)[:, None] * rng.uniform(0.5, 1.5, (1, 3, 1, 1))
                   + np.linspace(-20, 20, FRAMES)[:, None, None, None], 0, 255)
    mean = np.array([20.0, 30.0, 25.0])[:, None, None]
    contrast = 12.0 if pooled else np.array([6.0, 8.0, 7.0])[:, None, None]
    shown = render_clip(clip, monitor, mean, contrast, pooled)
    assert shown["screen"].shape == shown["model"].shape == clip.shape and shown["screen"].dtype == np.uint8
    luminance = monitor.model_to_luminance(shown["model"])
    if pooled:
        assert luminance.sum(axis=1).std() == pytest.approx(12.0, rel=0.02)
    else:
        np.testing.assert_allclose(luminance.std(axis=(0, 2, 3)), [6.0, 8.0, 7.0], rtol=0.02)
        np.testing.assert_allclose(luminance.mean(axis=(0, 2, 3)), [20.0, 30.0, 25.0], rtol=0.02)
    # one gain for the whole clip: the frames keep their brightness ramp
    assert np.all(np.diff(luminance.mean(axis=(1, 2, 3))) > 0)


@pytest.mark.parametrize("core, members", [("factorized3d", 2), pytest.param("gru", 1, marks=pytest.mark.slow)])
def test_mevs_of_a_video_twin_and_ensemble_with_held_behavior(core, members):
    from twin.config import ModelConfig
    from twin.models.twin import ReadoutSpec, Twin, make_ensemble

    small = ModelConfig(core=core, core_channels=4, core_layers=1, input_kernel=3, temporal_input_kernel=3,
                        gru_channels=4, gru_input_kernel=3, gru_kernel=3, shifter=True, use_behavior=True)
    specs = [ReadoutSpec(3, np.ones(3, np.float32))]
    if members == 1:
        model = Twin(small, 1, (10, 12), specs, n_behavior=2, rngs=nnx.Rngs(0))
    else:
        model = make_ensemble(small, 1, (10, 12), specs, 2, seeds=[0, 1])
    model.eval()
    behavior, pupil = np.array([0.5, -1.0], np.float32), np.array([0.1, 0.2], np.float32)
    result = optimize_meis(model, 0, [2, 0], config(steps=5, seeds=2, frames=6, response_window=2),
                           image_shape=(10, 12), pixel_range=RANGE, behavior=behavior, pupil_center=pupil, progress=False)
    assert result.images.shape == (2, 2, 6, 10, 12)
    clips = jnp.asarray(result.images[:, 0, ..., None])
    held = {"behavior": jnp.broadcast_to(behavior, (2, 6, 2)), "pupil_center": jnp.broadcast_to(pupil, (2, 6, 2))}
    responses = np.asarray(model(clips, 0, **held))
    expected = responses[[0, 1], -2:, [2, 0]].mean(axis=1)
    np.testing.assert_allclose(result.activations[:, 0], expected, rtol=1e-4)


def test_mei_command_on_a_video_run_then_export(tmp_path, capsys):
    import json

    from twin import checkpoint
    from twin.cli import main
    from twin.config import DataConfig, ModelConfig, RunConfig
    from twin.data.loader import load_session
    from twin.data.schema import make_session
    from twin.data.store import write_session
    from twin.models.twin import ReadoutSpec

    rng = np.random.default_rng(5)
    write_session(make_session(
        "video.npz", images=rng.integers(0, 256, (6, 10, 8, 12), dtype=np.uint8),
        responses=rng.gamma(2.0, 1.0, (6, 10, 3)).astype(np.float32), tier=np.array(["train"] * 4 + ["test"] * 2),
        image_id=np.arange(6), behavior=rng.normal(size=(6, 10, 2)).astype(np.float32),
        frame_count=np.full(6, 10), attrs={"frame_rate": 30.0},
    ), tmp_path / "v.zarr")
    data = DataConfig(burn_in_frames=2)
    records = [checkpoint.session_record(load_session(tmp_path / "v.zarr", data))]
    run_config = RunConfig(
        data=data,
        model=ModelConfig(core="factorized3d", core_channels=4, core_layers=1, input_kernel=3, temporal_input_kernel=3,
                          use_behavior=True),
        mei=config(steps=5, seeds=2, frames=6, response_window=2),
    )
    model = checkpoint.make_model(run_config, records, [ReadoutSpec(3, np.full(3, 0.5, np.float32))])
    checkpoint.write_run_files(tmp_path / "run", run_config, records)
    checkpoint.save_step(tmp_path / "run" / "checkpoints" / "best", 0, {"model": nnx.state(model)}, {"epoch": 0})
    run_dir, mevs = str(tmp_path / "run"), str(tmp_path / "mevs.zarr")

    assert main(["mei", run_dir, "--out", str(tmp_path / "x.zarr"), "--deis", "2"]) == 2
    assert capsys.readouterr().err == f"twin mei: error: --deis: {run_dir} is a video run; twin mei makes most" \
        " exciting videos there, so drop --deis\n"
    (tmp_path / "long.toml").write_text("[mei]\nframes = 11\n")  # the trials have 10 frames
    assert main(["mei", run_dir, "--out", str(tmp_path / "x.zarr"), "--config", str(tmp_path / "long.toml")]) == 2
    assert "no train trial has [mei].frames = 11 recorded frames for a natural clip" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()
    assert main(["mei", run_dir, "--out", mevs, "--neurons", "0,2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["frames"], summary["frame_rate"], [n["id"] for n in summary["neurons"]]) == (6, 30.0, [0, 2])
    assert main(["export", mevs, "--out", str(tmp_path / "stimuli")]) == 0
    manifest = json.loads((tmp_path / "stimuli" / "manifest.json").read_text())
    assert (manifest["frames"], manifest["frame_rate"], manifest["response_window"]) == (6, 30.0, 2)
    # per neuron its MEV and its best natural clip (the train trials' first 6 frames)
    assert [s["kind"] for s in manifest["stimuli"]] == ["mei", "natural"] * 2
    assert all(s["image_trial"] in range(4) for s in manifest["stimuli"][1::2])
    assert all(np.isfinite(s["predicted_response"]) and s["preview"].endswith(".gif") for s in manifest["stimuli"])


def test_run_surround_around_centre_clips_of_a_recorded_session(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from twin.mei import masks
    from twin.mei import run as mei_run
    from twin.mei.run import MeiJob, run_surround
    from twin.mei.store import meis_dataset, open_meis

    mean, std = np.float32(128.0), np.float32(40.0)
    # Centre clips: each neuron's preferred grating inside a disc of radius 3, gray outside.
    disc = (np.sum((np.indices(SHAPE) - 7.5) ** 2, axis=0) <= 9).astype(np.float32)
    clips = np.stack([drifting_grating(FRAMES, SHAPE, d, period=8.0) * disc for d in (DIRECTIONS[1], DIRECTIONS[3])])
    clips = clips.astype(np.float32)
    attrs = {"run": str(tmp_path / "run"), "session": 0, "frame_rate": 30.0}
    centres = meis_dataset({
        "images": clips[:, None], "activations": np.ones((2, 1), np.float32),
        "best_seed": np.zeros(2, np.int64), "unit_id": np.array([11, 13]), "neuron_index": np.array([1, 3]),
        "image_mean": mean, "image_std": std,
    }, attrs)
    data = SimpleNamespace(unit_id=np.array([10, 11, 12, 13]), image_shape=SHAPE, channels=1, path="session.zarr")
    monkeypatch.setattr(mei_run, "simulated_truth", lambda data: None)  # a recorded session
    job = MeiJob(
        run=attrs["run"], model=DirectionToy(), session=0, data=data, index=None, centre_store=centres,
        config=config(steps=30, seeds=2), config_sources=["test"], attrs=attrs, image_mean=mean, image_std=std,
        out=tmp_path / "surround.zarr", overwrite=False, primary=True,
        engine={"image_shape": SHAPE, "pixel_range": RANGE, "image_stats": (mean, std), "validator": None,
                "progress": False, "behavior": None, "pupil_center": None},
    )
    # A tight mask over the whole frame leaves no surround: refused before any optimization.
    with monkeypatch.context() as patch:
        patch.setattr(masks, "tight_masks", lambda *args, **kwargs: np.ones((2, *SHAPE), np.float32))
        with pytest.raises(ConfigError, match="^--centre centres.zarr: the centre of unit 11 covers the whole frame"):
            run_surround(job, "excite", "centres.zarr")
    # A centre the twin barely sees (a corner far from every filter's envelope) has no tight mask.
    corner = np.zeros(SHAPE, np.float32)
    corner[:4, :4] = 1
    corner_clips = np.broadcast_to(drifting_grating(FRAMES, SHAPE, 0.0) * corner, clips.shape).astype(np.float32)
    faint = dataclasses.replace(job, centre_store=centres.assign(images=(centres["images"].dims, corner_clips[:, None])))
    with pytest.raises(ConfigError, match=r"the MEV of unit 1[13] has no centre \(the twin's response to it stays above 90%"):
        run_surround(faint, "excite", "centres.zarr")
    assert not (tmp_path / "surround.zarr").exists()

    summary = run_surround(job, "excite", "centres.zarr")
    store = open_meis(tmp_path / "surround.zarr")
    assert store["images"].shape == (2, 2, FRAMES, *SHAPE) and store["centre_mask"].shape == (2, *SHAPE)
    assert (summary["frames"], summary["frame_rate"], [n["id"] for n in summary["neurons"]]) == (FRAMES, 30.0, [11, 13])
    inside = np.broadcast_to((store["centre_mask"].values == 1)[:, None, None], store["images"].shape)
    assert inside.any() and not inside.all()
    np.testing.assert_array_equal(store["images"].values[inside], np.broadcast_to(clips[:, None], inside.shape)[inside])
    # A full-field filter: the surround drives it further, measured over the response window.
    window = np.asarray(DirectionToy()(store["images"].values[:, 0, ..., None], neurons=np.array([1, 3])))[:, -5:]
    np.testing.assert_allclose(store["activations"].values[:, 0], window.mean(axis=1).diagonal(), rtol=1e-5)
    assert np.all(store["surround_ratio"].values > 1.05)
    assert summary["median_true_surround_ratio"] is None and np.all(np.isnan(store["true_surround_ratio"].values))
    assert "spectral_kl" not in store and "spectral_kl" not in summary["neurons"][0]
    assert (tmp_path / "surround.png").stat().st_size > 0
