"""The simulated animal's video mode: movies, spatio-temporal neurons, noise, ceiling, store."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twin import metrics
from twin.cli import main
from twin.data import simulate_video as sv
from twin.data.schema import is_video
from twin.data.simulate import ground_truth, ground_truth_ceiling, mean_response, respond
from twin.data.store import open_session
from twin.loop.respond import present

SIZE = (16, 24)


@pytest.fixture(scope="module")
def session():
    return sv.simulate(24, 30, 4, 3, frames=60, size=SIZE, seed=1)


@pytest.fixture(scope="module")
def params(session):
    return ground_truth(session)


def preferred_gratings(params, i, directions, frames=60, contrast=30.0):
    """Gratings (direction, frames, y, x) at neuron i's preferred wavelength and temporal frequency,
    ``directions`` relative to its preferred direction."""
    wavelength = float(params["wavelength"][i])
    speed = float(params["temporal_frequency"][i]) * wavelength
    directions = float(params["preferred_direction"][i]) + np.asarray(directions, np.float64)
    return sv.drifting_gratings(directions, frames, SIZE, wavelength, speed, contrast=contrast)


def test_session_layout(session):
    assert is_video(session)
    assert session["images"].dims == ("trial", "frame", "y", "x") and session["images"].dtype == np.uint8
    assert session.sizes["frame"] == 60 and session.attrs["frame_rate"] == 30.0
    assert session["responses"].shape == (42, 60, 24)
    assert session["behavior"].shape == (42, 60, 3) and session["pupil_center"].shape == (42, 60, 2)
    assert (session["frame_count"].values == 60).all()
    tier = session["tier"].values
    assert (tier == "train").sum() == 27 and (tier == "validation").sum() == 3 and (tier == "test").sum() == 12
    test_ids, counts = np.unique(session["image_id"].values[tier == "test"], return_counts=True)
    assert len(test_ids) == 4 and set(counts) == {3}
    repeats = session["images"].values[session["image_id"].values == test_ids[0]]
    assert (repeats == repeats[0]).all()
    assert set(session["gt_kind"].values) == set(sv.KINDS)
    selective = session["gt_direction_selective"].values
    assert selective.dtype == bool and (selective == np.char.startswith(session["gt_kind"].values.astype(str), "direction")).all()
    assert session["gt_temporal_even"].dims == ("neuron", "lag")
    assert (session["responses"].values >= 0).all()


def test_same_seed_same_session_other_seed_differs():
    a = sv.simulate(4, 4, 2, 2, frames=12, size=(8, 12), seed=5)
    b = sv.simulate(4, 4, 2, 2, frames=12, size=(8, 12), seed=5)
    c = sv.simulate(4, 4, 2, 2, frames=12, size=(8, 12), seed=6)
    assert a.identical(b)
    assert not np.array_equal(a["responses"].values, c["responses"].values)


def test_movies_are_natural_like_with_cuts():
    videos = sv.natural_videos(6, 150, (18, 32), np.random.default_rng(0)).astype(np.float64)
    assert 110 < videos.mean() < 145 and 15 < videos.std() < 50
    # Within a shot successive frames correlate; a cut (every 1-3 s at 30 Hz) starts a new texture.
    a, b = (v.reshape(6, 149, -1) - v.reshape(6, 149, -1).mean(-1, keepdims=True) for v in (videos[:, :-1], videos[:, 1:]))
    r = (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    assert np.median(r) > 0.8
    for video in r < 0.4:
        cuts = np.flatnonzero(video)
        assert 1 <= len(cuts) <= 5 and (np.diff(cuts) >= 29).all()


def test_respond_shapes_determinism_and_expectation(params):
    videos = sv.natural_videos(2, 30, SIZE, np.random.default_rng(2))
    mean, noisy = respond(params, videos, repeats=3, seed=4)
    assert mean.shape == (2, 30, 24) and noisy.shape == (3, 2, 30, 24)
    assert mean.dtype == noisy.dtype == np.float32
    again = respond(params, videos, repeats=3, seed=4)
    assert np.array_equal(mean, again[0]) and np.array_equal(noisy, again[1])
    assert not np.array_equal(noisy, respond(params, videos, repeats=3, seed=5)[1])
    np.testing.assert_allclose(mean, mean_response(params, videos), rtol=1e-5)
    # The noise-free response is the expectation of the recorded one.
    _, many = respond(params, videos[:1], repeats=3000, seed=0)
    average = many.mean(axis=0)[0, 10:]
    assert abs(average.mean() / mean[0, 10:].mean() - 1) < 0.03
    assert np.corrcoef(average.ravel(), mean[0, 10:].ravel())[0, 1] > 0.95


def test_respond_refuses_images(params):
    with pytest.raises(Exception, match=r"give \(n, frame, 16, 24\)"):
        respond(params, np.zeros((3, 16, 24)))


def test_direction_selective_cells_prefer_their_direction(params):
    for i in range(len(params["kind"])):
        rate = sv.rate(params, preferred_gratings(params, i, [0, 180]))[:, 20:, i].mean(axis=1) - params["baseline"][i]
        dsi = (rate[0] - rate[1]) / (rate[0] + rate[1])
        if params["direction_selective"][i]:
            assert dsi > 0.2, (i, params["kind"][i], dsi)
        else:
            assert abs(dsi) < 0.1, (i, params["kind"][i], dsi)


def test_adaptation_lowers_sustained_responses(params):
    no_adaptation = params | {"adaptation_strength": np.zeros_like(params["adaptation_strength"])}
    for i in range(4):
        gratings = preferred_gratings(params, i, [0], frames=90)
        adapted = sv.rate(params, gratings)[0, :, i]
        fresh = sv.rate(no_adaptation, gratings)[0, :, i]
        # Early frames barely adapted; after ~2 time constants the response is clearly lower.
        assert adapted[45:].mean() < 0.8 * fresh[45:].mean()
        assert adapted[45:].mean() / adapted[5:15].mean() < fresh[45:].mean() / fresh[5:15].mean()


def test_behavior_sets_the_gain(params):
    videos = sv.natural_videos(1, 20, SIZE, np.random.default_rng(3))
    at_mean = np.broadcast_to(sv.BEHAVIOR_MEAN, (1, 20, 3))
    np.testing.assert_allclose(mean_response(params, videos), sv.mean_response(params, videos, behavior=at_mean), rtol=1e-5)
    running = at_mean.copy()
    running[..., 2] += 2 * sv.RUNNING_SD
    ratio = sv.rate(params, videos, running) / sv.rate(params, videos, at_mean)
    np.testing.assert_allclose(ratio, np.broadcast_to(np.exp(2 * params["running_gain"]), ratio.shape), rtol=1e-4)
    mean, _ = sv.respond(params, videos, behavior=running)
    faster = params["running_gain"] > 0
    assert (mean[..., faster] > mean_response(params, videos)[..., faster]).all()


def test_ceiling_is_scored_per_frame_after_the_burn_in(session):
    ceiling = ground_truth_ceiling(session)
    assert set(ceiling) == {"single_trial_correlation", "correlation_to_average", "feve"}
    for name in ("single_trial_correlation", "correlation_to_average"):
        assert 0 < np.nanmean(ceiling[name]) < 1
    assert np.nanmean(ceiling["correlation_to_average"]) > np.nanmean(ceiling["single_trial_correlation"])


def test_scored_frames_drop_burn_in_and_padding():
    trial, frame, frame_id = metrics.scored_frames(np.array([4, 6, 6]), np.array([7, 8, 7]), 6, burn_in=3)
    assert trial.tolist() == [0, 1, 1, 1, 2, 2, 2]
    assert frame.tolist() == [3, 3, 4, 5, 3, 4, 5]
    # The same frame of the same video (trials 0 and 2 show video 7) has the same id.
    assert frame_id[0] == frame_id[4] and len(set(frame_id.tolist())) == 6


def test_mean_response_in_jax_matches_numpy_and_has_gradients(params):
    videos = sv.natural_videos(1, 12, SIZE, np.random.default_rng(4)).astype(np.float32)
    respond_jax = jax.jit(lambda v: mean_response(params, v, jnp))
    np.testing.assert_allclose(np.asarray(respond_jax(videos)), mean_response(params, videos), rtol=2e-4, atol=1e-6)
    gradient = jax.grad(lambda v: respond_jax(v)[:, -1, 0].sum())(videos)
    assert np.isfinite(gradient).all() and np.abs(gradient).max() > 0


def test_present_gives_a_response_per_frame(session):
    videos = sv.natural_videos(2, 10, SIZE, np.random.default_rng(5))
    responses = present(session, videos, np.array([1, 0, 1]), seed=2)
    assert responses.shape == (3, 10, 24)
    np.testing.assert_array_equal(responses, present(session, videos, np.array([1, 0, 1]), seed=2))


def test_cli_writes_a_video_store_and_refuses_video_flags_without_video(tmp_path, capsys):
    out = tmp_path / "video.zarr"
    sizes = ["--neurons", "4", "--train-images", "4", "--test-images", "2", "--repeats", "2", "--size", "8x12"]
    assert main(["simulate", str(out), "--video", "--frames", "9", *sizes]) == 0
    assert "8 trials x 9 frames x 4 neurons" in capsys.readouterr().out
    ds = open_session(out)
    assert is_video(ds) and ds.sizes["frame"] == 9 and ds.attrs["frame_rate"] == 30.0
    assert main(["simulate", str(tmp_path / "x.zarr"), "--frames", "9", *sizes]) == 2
    assert "--frames without --video" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "x.zarr"), "--video", "--channels", "3", *sizes]) == 2
    assert "--channels with --video" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "x.zarr"), "--day2-of", str(out)]) == 2
    assert "a video session; day 2" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--frames", "1"], ["--frames", "9", "--frame-rate", "5"]])
def test_videos_no_neuron_can_respond_to_are_one_line(tmp_path, capsys, flags):
    sizes = ["--neurons", "4", "--train-images", "4", "--test-images", "2", "--repeats", "2", "--size", "8x12"]
    assert main(["simulate", str(tmp_path / "v.zarr"), "--video", *flags, *sizes]) == 2
    err = capsys.readouterr().err
    assert "simulated neurons never respond to these videos" in err and f"{flags[0]} {flags[1]}" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "v.zarr").exists()


def test_evaluate_scores_the_ground_truth_as_the_ceiling(session, tmp_path):
    from twin.data.loader import load_session
    from twin.data.store import write_session
    from twin.evaluate import ground_truth_scores

    write_session(session, tmp_path / "video.zarr")
    data = load_session(tmp_path / "video.zarr")
    scores = ground_truth_scores(data, data.trials("test"))
    ceiling = ground_truth_ceiling(session)
    assert set(scores) == set(ceiling)
    for name in ceiling:
        np.testing.assert_allclose(scores[name], ceiling[name], rtol=1e-4)
