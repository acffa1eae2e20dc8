"""Missing responses (NaN trials and NaN entries), the gaussian loss for signed responses, and the
minimum of repeated images for the repeat metrics."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from twin import checkpoint, metrics
from twin.cli import main
from twin.config import DataConfig, FitConfig, ModelConfig, RunConfig
from twin.data.loader import batches, load_session
from twin.data.schema import strings
from twin.data.simulate import simulate
from twin.data.store import open_session, session_info, write_session
from twin.errors import RunError, SessionError
from twin.evaluate import evaluate_run, format_results
from twin.fit import POISSON_EPS, batch_arrays, check_sessions, data_loss, fit

CONFIG = RunConfig(
    data=DataConfig(batch_size=32),
    model=ModelConfig(core_layers=1, core_channels=8, input_kernel=5, gamma_input=0.1),
    fit=FitConfig(max_epochs=4, learning_rate=0.01),
)
NOTE_3 = "n/a: only 3 test images are repeated (at least 20 needed)"


def write_sensorium(root, images, responses, tiers, image_ids):
    """A neuralpredictors file tree (images (n, y, x), responses (n, neurons)) under ``root``."""
    for kind, values in (("images", images[:, None]), ("responses", responses)):
        (root / "data" / kind).mkdir(parents=True)
        for i, value in enumerate(values):
            np.save(root / "data" / kind / f"{i}.npy", value)
    (root / "meta" / "trials").mkdir(parents=True)
    np.save(root / "meta" / "trials" / "tiers.npy", np.asarray(tiers))
    np.save(root / "meta" / "trials" / "frame_image_id.npy", np.asarray(image_ids))


@pytest.fixture(scope="module")
def gappy(tmp_path_factory):
    """A Sensorium tree of a simulated session (20 repeated test images) plus 10 final_test
    trials whose responses are all NaN, and 3% of the other responses NaN (dropped frames);
    imported with twin import. Returns (root, store, import stdout, responses with NaN)."""
    root = tmp_path_factory.mktemp("gappy")
    ds = simulate(10, 200, 20, 2, size=(12, 16), seed=4)
    rng = np.random.default_rng(0)
    images = ds["images"].values.astype(np.float32)
    responses = ds["responses"].values.copy()
    responses[rng.random(responses.shape) < 0.03] = np.nan
    final_images = rng.integers(0, 256, (5, 12, 16)).astype(np.float32)
    images = np.concatenate([images, np.repeat(final_images, 2, axis=0)])
    responses = np.concatenate([responses, np.full((10, 10), np.nan, np.float32)])
    tiers = np.concatenate([strings(ds["tier"].values), np.full(10, "final_test")])
    image_ids = np.concatenate([ds["image_id"].values, np.repeat(np.arange(5) + 10_000, 2)])
    write_sensorium(root / "mouse", images, responses, tiers, image_ids)
    store = root / "gappy.zarr"
    out = run_cli(["import", "sensorium", str(root / "mouse"), str(store)])
    return root, store, out, responses


def run_cli(argv):
    """stdout of a successful twin command."""
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([str(a) for a in argv]) == 0
    return stdout.getvalue()


def test_final_test_trials_are_kept_and_reported(gappy):
    _, store, out, responses = gappy
    assert out.splitlines()[1] == (
        "twin import: 10 trials have no responses (NaN for every neuron); kept with their images,"
        " left out of fitting and scoring"
    )
    ds = open_session(store)
    tier = strings(ds["tier"].values)
    assert np.sum(tier == "final_test") == 10 and np.isnan(ds["responses"].values[tier == "final_test"]).all()
    np.testing.assert_array_equal(ds["responses"].values, responses)
    # Statistics over each neuron's finite train responses only.
    train = responses[tier == "train"]
    np.testing.assert_allclose(ds["stats_response_mean"].values, np.nanmean(train, 0), rtol=1e-6)
    np.testing.assert_allclose(ds["stats_response_std"].values, np.nanstd(train, 0), rtol=1e-6)
    info = session_info(ds.load(), store)
    assert info["trials_without_responses"] == 10
    assert info["missing_responses"] == int(np.isnan(responses[tier != "final_test"]).sum())
    assert info["repeat_metrics"] == "" and np.isfinite(info["oracle_correlation"])
    text = run_cli(["info", store])
    assert "10 final_test; 10 without responses (NaN for every neuron: kept, left out of fitting and scoring)" in text
    data = load_session(store)
    assert data.masked and data.trials("final_test").size == 0
    assert data.trials("train").size == np.sum(tier == "train")


def test_partial_nan_is_masked_in_the_loss(gappy):
    data = load_session(gappy[1])
    rng = np.random.default_rng(1)
    for batch in batches([data], "train", 32, shuffle=True, seed=3):
        raw = data.responses[batch.trials]
        np.testing.assert_array_equal(batch.mask, np.isfinite(raw))
        assert np.isfinite(batch.responses).all()
        predictions = rng.gamma(2.0, 1.0, raw.shape).astype(np.float32)
        finite = np.isfinite(raw)
        p, r = predictions[finite].astype(np.float64), raw[finite].astype(np.float64)
        poisson = np.sum(p - r * np.log(p + POISSON_EPS))
        gaussian = np.sum((p - r) ** 2)
        arrays = batch_arrays(batch)
        assert float(data_loss(jnp.asarray(predictions), arrays, "poisson")) == pytest.approx(poisson, rel=1e-5)
        assert float(data_loss(jnp.asarray(predictions), arrays, "gaussian")) == pytest.approx(gaussian, rel=1e-5)


def test_sessions_without_gaps_have_no_mask(tmp_path):
    write_session(simulate(4, 40, 2, 2, size=(12, 16), seed=1), tmp_path / "s.zarr")
    data = load_session(tmp_path / "s.zarr")
    assert not data.masked
    assert all(b.mask is None and "mask" not in batch_arrays(b) for b in batches([data], "train", 8, shuffle=False))


def test_fit_and_evaluate_skip_missing_responses(gappy):
    root, store, _, _ = gappy
    fit(dataclasses.replace(CONFIG, fit=dataclasses.replace(CONFIG.fit, max_epochs=1)), [str(store)], root / "run", progress=False)
    line = json.loads((root / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(line["loss"]) and np.isfinite(line["validation_correlation"])
    (result,) = evaluate_run(root / "run")
    assert result["n_trials"] == 40 and result["repeat_metrics"] == ""
    assert all(np.isfinite(result[name]) for name in ("single_trial_correlation", "feve", "oracle_correlation"))
    with pytest.raises(RunError, match="the 'final_test' trials have no responses"):
        evaluate_run(root / "run", tier="final_test")


def test_metrics_use_each_neurons_finite_trials():
    rng = np.random.default_rng(2)
    image_id = np.repeat(np.arange(25), 3)
    signal = rng.normal(size=(25, 4))[image_id]
    responses = signal + rng.normal(size=signal.shape)
    predictions = signal + rng.normal(size=signal.shape)
    gappy = responses.copy()
    gappy[rng.random(gappy.shape) < 0.1] = np.nan
    gappy[:, 3] = responses[:, 3]  # one neuron without gaps
    scores = metrics.score(gappy, predictions, image_id)
    for n in range(4):
        keep = np.isfinite(gappy[:, n])
        r, p, ids = gappy[keep, n], predictions[keep, n], image_id[keep]
        images = np.unique(ids)
        averages = [np.array([v[ids == i].mean() for i in images]) for v in (r, p)]
        assert scores["single_trial_correlation"][n] == pytest.approx(np.corrcoef(r, p)[0, 1], abs=1e-7)
        assert scores["correlation_to_average"][n] == pytest.approx(np.corrcoef(*averages)[0, 1], abs=1e-7)
        # FEVE and the oracle of the finite trials alone (their definitions are checked by hand
        # in test_metrics.py).
        assert scores["feve"][n] == pytest.approx(metrics.feve(r[:, None], p[:, None], ids)[0], abs=1e-10)
        assert scores["oracle_correlation"][n] == pytest.approx(metrics.oracle_correlation(r[:, None], ids)[0], abs=1e-10)
    assert scores["single_trial_correlation"][3] == pytest.approx(metrics.correlation(responses, predictions)[3], abs=1e-12)


def test_a_neuron_that_missed_every_repeat_has_no_repeat_scores():
    rng = np.random.default_rng(3)
    image_id = np.repeat(np.arange(25), 2)
    responses, predictions = rng.normal(size=(2, 50, 2))
    responses[1::2, 0] = np.nan  # neuron 0 saw each image once
    with np.errstate(all="raise"):
        scores = metrics.score(responses, predictions, image_id)
    assert np.isnan(scores["oracle_correlation"][0]) and np.isnan(scores["feve"][0])
    assert np.isfinite(scores["oracle_correlation"][1]) and np.isfinite(scores["correlation_to_average"]).all()


def test_inf_and_neurons_without_train_responses_are_refused(tmp_path):
    from twin.data.importers import from_arrays

    ds = simulate(4, 40, 2, 2, size=(12, 16), seed=1)
    tier = strings(ds["tier"].values)
    responses = ds["responses"].values.copy()
    responses[tier == "train", 2] = np.nan
    arrays = {"images": ds["images"].values, "responses": responses, "tiers": tier, "image_ids": ds["image_id"].values}
    np.savez(tmp_path / "r.npz", **arrays)
    with pytest.raises(SessionError, match=r"variable 'responses' has no finite train response for unit_id 2 \(1 neurons in all\)"):
        from_arrays(tmp_path / "r.npz")
    responses[:, 2] = ds["responses"].values[:, 2]
    responses[0, 0] = np.inf
    np.savez(tmp_path / "r.npz", **(arrays | {"responses": responses}))
    with pytest.raises(SessionError, match="variable 'responses' contains inf"):
        from_arrays(tmp_path / "r.npz")


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """A simulated session with signed responses (each neuron's mean subtracted) and a twin fit
    to it with the gaussian loss: (root, store, run)."""
    root = tmp_path_factory.mktemp("signed")
    ds = simulate(10, 300, 20, 2, size=(12, 16), seed=5)
    ds["responses"] = ds["responses"] - ds["responses"].mean("trial")
    write_session(ds, root / "signed.zarr")
    config = dataclasses.replace(CONFIG, fit=dataclasses.replace(CONFIG.fit, loss="gaussian"))
    fit(config, [str(root / "signed.zarr")], root / "run", progress=False)
    return root, root / "signed.zarr", root / "run"


def test_gaussian_loss_fits_signed_responses(signed):
    root, store, run = signed
    data = load_session(store)
    with pytest.raises(SessionError, match='fit signed responses with \\[fit\\] loss = "gaussian"'):
        check_sessions([data], [store])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "gaussian" in lines[0] and "poisson" not in lines[0]
    (result,) = evaluate_run(run)
    assert result["single_trial_correlation"] > 0.1


def test_gaussian_run_reloads_with_its_linear_output(signed):
    _, store, run = signed
    loaded = checkpoint.load_run(run)
    assert loaded.config.fit.loss == "gaussian" and loaded.model.output == "linear"
    data = loaded.sessions[0]
    predictions = np.asarray(loaded.model(data.images[data.trials("test")], 0))
    assert predictions.min() < 0  # ELU + 1 could not
    # twin predict maps them back to recording units: times the loader's response std.
    run_cli(["predict", run, store, "--out", run.parent / "p.npy"])
    values = np.load(run.parent / "p.npy")[data.trials("test")]
    np.testing.assert_allclose(values, predictions * data.response_std, rtol=1e-4, atol=1e-5)


def test_mei_of_a_gaussian_twin_raises_its_prediction(signed):
    from twin.mei.optimize import optimize_meis
    from twin.mei.recipes import RECIPES

    loaded = checkpoint.load_run(signed[2])
    data = loaded.sessions[0]
    config = dataclasses.replace(RECIPES["walker2019"], steps=20, seeds=1, chunk_size=4)
    result = optimize_meis(
        loaded.model, 0, [0, 1, 2], config, image_shape=data.image_shape, pixel_range=data.pixel_range,
        image_stats=(data.image_mean, data.image_std), progress=False,
    )
    gray = np.full((1, *data.image_shape, 1), data.normalize_images(128.0), np.float32)
    start = np.asarray(loaded.model(gray, 0))[0, [0, 1, 2]]
    assert np.all(result.activations[:, 0] > start)


def test_repeat_metrics_need_enough_repeated_images(signed, tmp_path, capsys):
    root, store, run = signed
    few = tmp_path / "few.zarr"
    write_session(simulate(10, 300, 3, 2, size=(12, 16), seed=5), few)
    (result,) = evaluate_run(run, stores=[str(few)])
    assert result["repeat_metrics"] == NOTE_3
    assert all(result[name] is None for name in metrics.REPEAT_METRICS)
    assert np.isfinite(result["single_trial_correlation"])
    assert f"  feve                       {NOTE_3}" in format_results([result]).splitlines()
    assert main(["evaluate", str(run), "--store", str(few), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["repeat_metrics"] == NOTE_3
    assert f"oracle and FEVE {NOTE_3}" in run_cli(["info", few])
    assert main(["select", str(run), "--store", str(few), "--json"]) == 0
    selection = json.loads(capsys.readouterr().out)
    assert selection["reliability"] == f"skipped: oracle {NOTE_3}"
    assert selection["thresholds"]["oracle"] is None and selection["excluded"]["unreliable"] == 0
    twin_r = [n["twin_correlation"] for n in selection["neurons"]]
    assert twin_r and min(twin_r) >= selection["thresholds"]["twin_correlation"]
    (enough,) = evaluate_run(run)
    assert enough["repeat_metrics"] == "" and all(enough[name] is not None for name in metrics.REPEAT_METRICS)
