"""Physically wrong recordings are refused, and what import assumed is stated: signed responses,
pixel ranges, the test tier of repeated images, neurons without signal."""

import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from twin import metrics
from twin.checkpoint import readout_specs, save_run_model
from twin.cli import main
from twin.config import DataConfig, ModelConfig, RunConfig
from twin.data.importers import from_arrays
from twin.data.loader import load_session
from twin.data.schema import TIERS, pixel_range
from twin.data.simulate import simulate
from twin.data.store import open_session, session_info, write_session
from twin.errors import SessionError
from twin.mei.store import open_meis
from twin.models.twin import Twin


def run_cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def recording(path, n_once=30, n_repeated=6, repeats=3, k=4, images=None, responses=None, seed=0):
    """An .npz of ``n_once`` images shown once and ``n_repeated`` shown ``repeats`` times."""
    rng = np.random.default_rng(seed)
    shown = rng.permutation(np.r_[np.arange(n_once), np.repeat(np.arange(n_once, n_once + n_repeated), repeats)])
    pictures = rng.integers(0, 256, (n_once + n_repeated, 8, 10), dtype=np.uint8)
    arrays = {
        "images": pictures[shown] if images is None else images(pictures[shown]),
        "responses": rng.gamma(1.0, 1.0, (len(shown), k)).astype(np.float32),
    }
    if responses is not None:
        arrays["responses"] = responses(arrays["responses"])
    np.savez(path, **arrays)
    return arrays


# ---------------------------------------------------------------- responses


def test_signed_responses_import_and_info_says_so(tmp_path):
    arrays = recording(tmp_path / "r.npz", responses=lambda r: r - 1.5)
    code, out, _ = run_cli(["import", "arrays", tmp_path / "r.npz", tmp_path / "r.zarr"])
    lowest = float(arrays["responses"].min())
    assert code == 0 and out.splitlines()[-1] == (
        f"twin import: responses are signed (minimum {lowest:.4g}); fit with [fit] loss = \"gaussian\","
        " or for the poisson loss deconvolve or re-import with --shift-responses"
    )
    code, out, _ = run_cli(["info", tmp_path / "r.zarr"])
    assert code == 0 and '(signed: fit with [fit] loss = "gaussian", or for the poisson loss' in out
    info = json.loads(run_cli(["info", tmp_path / "r.zarr", "--json"])[1])
    assert info["responses_signed"] is True
    assert info["ranges"]["responses"][0] == pytest.approx(float(arrays["responses"].min()))


def test_poisson_fit_refuses_negative_responses_before_writing(tmp_path):
    arrays = recording(tmp_path / "r.npz", responses=lambda r: r - 1.5)
    store = tmp_path / "r.zarr"
    run_cli(["import", "arrays", tmp_path / "r.npz", store])
    code, out, err = run_cli(["fit", store, "--out", tmp_path / "run", "--max-epochs", "1"])
    lowest = float(arrays["responses"].min())
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{store}: variable 'responses' has minimum {lowest:.4g}" in err
    assert 'fit signed responses with [fit] loss = "gaussian", or deconvolve, or shift to non-negative' in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("how", ["neuron", "global"])
def test_shift_responses_is_explicit_and_recorded(tmp_path, how):
    from twin.data.loader import load_sessions
    from twin.fit import check_sessions

    arrays = recording(tmp_path / "r.npz", responses=lambda r: r - np.array([1.5, 0.2, 3.0, 0.0], np.float32))
    store = tmp_path / "r.zarr"
    assert run_cli(["import", "arrays", tmp_path / "r.npz", store, "--shift-responses", how])[0] == 0
    ds = open_session(store)
    assert ds.attrs["response_shift"] == how
    responses, offset = ds["responses"].values, ds["response_offset"].values
    np.testing.assert_allclose(responses + offset, arrays["responses"], rtol=1e-6, atol=1e-6)
    if how == "neuron":
        np.testing.assert_array_equal(responses.min(axis=0), 0)
    else:
        assert responses.min() == 0 and len(np.unique(offset)) == 1
    assert "shifted at import" in run_cli(["info", store])[1]
    check_sessions(load_sessions([store]), [store])  # the Poisson loss takes it


@pytest.mark.parametrize("dtype", ["bool", "complex64", "U3"])
def test_responses_that_are_not_real_numbers_are_refused(tmp_path, dtype):
    recording(tmp_path / "r.npz", responses=lambda r: (r > 1).astype(dtype))
    with pytest.raises(SessionError) as error:
        from_arrays(tmp_path / "r.npz")
    assert str(error.value) == (
        f"{tmp_path / 'r.npz'}: variable 'responses' has dtype {np.dtype(dtype)}; cast it to float32"
        " (np.asarray(values, dtype=np.float32))"
    )


# ---------------------------------------------------------------- pixel range


@pytest.mark.parametrize(
    "convert, expected",
    [
        (lambda p: p, [0.0, 255.0]),
        (lambda p: (p / 255.0).astype(np.float32), [0.0, 1.0]),
        (lambda p: p.astype(np.float64), [0.0, 255.0]),
        (lambda p: p.astype(np.int16), [0.0, 255.0]),
    ],
)
def test_pixel_range_inferred_at_import(tmp_path, convert, expected):
    recording(tmp_path / "r.npz", images=convert)
    ds = from_arrays(tmp_path / "r.npz")
    assert ds.attrs["pixel_range"] == expected
    assert ds.attrs["pixel_range_from"].startswith("inferred from")


def test_images_outside_known_ranges_need_a_stated_range(tmp_path):
    zscored = lambda p: ((p - 128.0) / 40.0).astype(np.float32)  # noqa: E731
    recording(tmp_path / "r.npz", images=zscored)
    code, _, err = run_cli(["import", "arrays", tmp_path / "r.npz", tmp_path / "r.zarr"])
    assert code == 2 and err.count("\n") == 1
    assert "variable 'images' has values -3.2..3.175, not the pixel range 0..255 or 0..1" in err
    assert "--pixel-range=LO,HI" in err and not (tmp_path / "r.zarr").exists()
    argv = ["import", "arrays", tmp_path / "r.npz", tmp_path / "r.zarr", "--pixel-range=-3.2,3.2"]
    assert run_cli(argv)[0] == 0
    ds = open_session(tmp_path / "r.zarr")
    assert ds.attrs["pixel_range"] == [-3.2, 3.2] and ds.attrs["pixel_range_from"] == "stated"
    assert "black..white -3.2..3.2 (stated)" in run_cli(["info", tmp_path / "r.zarr"])[1]
    argv[-2:] = [tmp_path / "narrow.zarr", "--pixel-range=-1,1"]
    code, _, err = run_cli(argv)
    assert code == 2 and "outside its pixel range -1..1" in err and not argv[-2].exists()


def test_stores_without_the_attribute_get_it_inferred(tmp_path):
    recording(tmp_path / "r.npz", images=lambda p: (p / 255.0).astype(np.float32))
    ds = from_arrays(tmp_path / "r.npz")
    del ds.attrs["pixel_range"]
    write_session(ds, tmp_path / "r.zarr")
    old = open_session(tmp_path / "r.zarr")
    assert "pixel_range" not in old.attrs
    assert pixel_range(old, "r.zarr") == (0.0, 1.0)
    assert session_info(old, "r.zarr")["pixel_range_from"] == "inferred when read"


def unit_range_copy(source: Path, target: Path) -> None:
    """The session at ``source`` with images divided by 255 (float32, pixel range 0..1)."""
    ds = open_session(source).load()
    ds = ds.drop_vars([n for n in ds.variables if str(n).startswith("stats_")])
    ds["images"] = ds["images"].astype(np.float32) / np.float32(255)
    ds.attrs["pixel_range"] = [0.0, 1.0]
    write_session(ds, target)


def test_unit_range_copy_gives_the_same_meis_and_stimuli(tmp_path):
    write_session(simulate(5, 40, 3, 2, size=(18, 32), seed=2), tmp_path / "a.zarr")
    unit_range_copy(tmp_path / "a.zarr", tmp_path / "b.zarr")
    config = RunConfig(model=ModelConfig(core_layers=2, core_channels=4, input_kernel=5, hidden_kernel=3))
    (tmp_path / "mei.toml").write_text("[mei]\nsteps = 5\nchunk_size = 4\n")
    results = {}
    for name in "ab":
        data = load_session(tmp_path / f"{name}.zarr", DataConfig())
        model = Twin(config.model, 1, (18, 32), readout_specs([data]), rngs=nnx.Rngs(0))
        model.eval()
        save_run_model(tmp_path / f"run_{name}", model, config, [data])
        meis, stimuli = tmp_path / f"meis_{name}.zarr", tmp_path / f"stimuli_{name}"
        argv = ["mei", tmp_path / f"run_{name}", "--seeds", "2", "--config", tmp_path / "mei.toml", "--out", meis]
        assert run_cli(argv)[0] == 0
        assert run_cli(["export", meis, "--out", stimuli, "--repeats", "1"])[0] == 0
        store = open_meis(meis)
        manifest = json.loads((stimuli / "manifest.json").read_text())
        pngs = [np.asarray(Image.open(stimuli / s["file"]), np.int16) for s in manifest["stimuli"]]
        results[name] = (store, manifest, pngs)
    (a, manifest_a, png_a), (b, manifest_b, png_b) = results["a"], results["b"]
    # Normalized MEIs agree; in pixel levels 0..255 the copy's MEIs are the original's.
    np.testing.assert_allclose(b["images"].values, a["images"].values, atol=1e-3)
    np.testing.assert_allclose(b["image_mean"].values, a["image_mean"].values, rtol=1e-5)
    np.testing.assert_allclose(b["image_std"].values, a["image_std"].values, rtol=1e-5)
    assert [s["kind"] for s in manifest_b["stimuli"]] == [s["kind"] for s in manifest_a["stimuli"]]
    assert manifest_b["target"]["mean_luminance"] == pytest.approx(manifest_a["target"]["mean_luminance"])
    for x, y in zip(png_a, png_b):
        assert np.abs(x - y).max() <= 1


# ---------------------------------------------------------------- tiers


def test_repeated_images_become_the_test_tier(tmp_path):
    recording(tmp_path / "r.npz", n_once=30, n_repeated=20, repeats=2)
    run_cli(["import", "arrays", tmp_path / "r.npz", tmp_path / "r.zarr"])
    info = json.loads(run_cli(["info", tmp_path / "r.zarr", "--json"])[1])
    assert info["trials"] == {"train": 27, "validation": 3, "test": 40}
    assert info["repeats_per_test_image"] == {"min": 2, "median": 2.0, "max": 2}
    assert info["test_repeats"] is True and "oracle_correlation" in info and info["repeat_metrics"] == ""
    assert "20 images shown more than once are the test tier" in info["tier_split"]


def test_no_repeats_is_stated_and_select_ranks_by_the_twin(tmp_path):
    recording(tmp_path / "r.npz", n_once=40, n_repeated=0)
    store = tmp_path / "r.zarr"
    run_cli(["import", "arrays", tmp_path / "r.npz", store])
    code, out, _ = run_cli(["info", store])
    assert "oracle and FEVE n/a: only 0 test images are repeated (at least 20 needed)" in out
    assert "no image repeats, so the test tier has no repeats" in out
    data = load_session(store)
    config = RunConfig(model=ModelConfig(core_layers=1, core_channels=4, input_kernel=3))
    model = Twin(config.model, 1, data.image_shape, readout_specs([data]), rngs=nnx.Rngs(0))
    save_run_model(tmp_path / "run", model, config, [data])
    code, out, err = run_cli(["select", tmp_path / "run", "--n", "3"])
    assert code == 0, err
    assert "reliability skipped: oracle n/a: only 0 test images are repeated (at least 20 needed)" in out
    assert "ranked by twin - LN single-trial correlation" in out and "twin test correlation >=" in out


# ---------------------------------------------------------------- quiet neurons


def quiet_responses(r):
    r = r.copy()
    r[:, 0] = 0  # all zero
    r[:, 1] = 2.5  # constant
    r[:, 2] = 0
    r[:4, 2] = 1.0  # non-zero on 4 trials only
    return r


def test_info_reports_quiet_neurons(tmp_path):
    recording(tmp_path / "r.npz", k=5, responses=quiet_responses)
    run_cli(["import", "arrays", tmp_path / "r.npz", tmp_path / "r.zarr"])
    info = json.loads(run_cli(["info", tmp_path / "r.zarr", "--json"])[1])
    assert info["quiet_neurons"]["all_zero"] == {"count": 1, "unit_ids": [0]}
    assert info["quiet_neurons"]["constant"] == {"count": 1, "unit_ids": [1]}
    ds = open_session(tmp_path / "r.zarr")
    train = ds["tier"].values == "train"
    sparse = 0 < np.count_nonzero(ds["responses"].values[train, 2]) < 10
    assert info["quiet_neurons"]["sparse"] == {"count": int(sparse), "unit_ids": [2] if sparse else []}
    text = run_cli(["info", tmp_path / "r.zarr"])[1]
    assert "neurons      5 (1 all-zero: unit_id 0; 1 constant: unit_id 1" in text


def test_scores_of_quiet_neurons_are_defined(tmp_path):
    from twin.evaluate import mean_scores

    arrays = recording(tmp_path / "r.npz", k=5, n_repeated=20, repeats=2, responses=quiet_responses)
    ds = from_arrays(tmp_path / "r.npz")
    test = ds["tier"].values == "test"
    responses = ds["responses"].values[test]
    predictions = np.random.default_rng(1).gamma(1.0, 1.0, responses.shape)
    predictions[:, 4] = 1.0  # a constant prediction
    with np.errstate(all="raise"):
        scores = metrics.score(responses, predictions, ds["image_id"].values[test])
    # Constant responses or predictions: r is exactly 0; FEVE is NaN (left out of the mean).
    for name in ("single_trial_correlation", "correlation_to_average", "oracle_correlation"):
        assert np.all(np.isfinite(scores[name])), name
        assert scores[name][1] == 0 and scores[name][0] == 0
    assert scores["single_trial_correlation"][4] == 0
    assert np.isnan(scores["feve"][:2]).all()
    assert all(np.isfinite(v) for v in mean_scores(scores).values() if v is not None)
    write_session(ds, tmp_path / "r.zarr")
    data = load_session(tmp_path / "r.zarr", DataConfig())
    assert np.all(np.isfinite(data.responses)) and np.all(data.response_std > 0)
    np.testing.assert_array_equal(data.responses[:, 0], 0)
    assert arrays["responses"].shape == data.responses.shape


# ---------------------------------------------------------------- any arrays


@st.composite
def any_recording(draw):
    n = draw(st.integers(1, 12))
    size = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    channels = draw(st.sampled_from([(), (1,), (2,)]))
    image_dtype = draw(st.sampled_from(["uint8", "int16", "float32", "float64", "bool"]))
    lo, hi = draw(st.sampled_from([(0, 1), (0, 255), (-3, 3), (0, 300), (0, 0)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    images = rng.uniform(lo, hi, (n, *channels, *size))
    if image_dtype in ("uint8", "int16", "bool"):
        images = np.clip(images, 0, 255)
    images = images.astype(image_dtype)
    ids = rng.integers(0, draw(st.integers(1, n)), n)
    # Identical ids show identical images, as in a real recording.
    images = images[ids] if draw(st.booleans()) else images
    k = draw(st.integers(0, 3))
    response_dtype = draw(st.sampled_from(["float32", "float64", "int32", "bool", "complex64"]))
    responses = rng.normal(draw(st.sampled_from([0.0, 2.0])), 1.0, (n, k)).astype(response_dtype)
    arrays = {"images": images, "responses": responses}
    if draw(st.booleans()):
        arrays["image_ids"] = ids
    stated = draw(st.sampled_from([None, (-5.0, 5.0), (0.0, 300.0)]))
    return arrays, stated


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_recording())
def test_from_arrays_gives_a_session_or_one_line(case):
    arrays, stated = case
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "r.npz"
        np.savez(npz, **arrays)
        try:
            ds = from_arrays(npz, pixel_range=stated)
        except SessionError as error:
            message = str(error)
            assert message.startswith(f"{npz}: ") and "\n" not in message and "; " in message
            return
    lo, hi = ds.attrs["pixel_range"]
    images = ds["images"].values
    assert lo <= images.min() and images.max() <= hi
    if stated is not None:
        assert (lo, hi) == stated
    elif images.dtype == np.uint8 or images.max() > 1:
        assert (lo, hi) == (0.0, 255.0)
    else:
        assert (lo, hi) == (0.0, 1.0)
    assert ds["responses"].dtype == np.float32 and arrays["responses"].dtype.kind in "iuf"
    tier = ds["tier"].values.astype(str)
    assert set(tier) <= set(TIERS) and "train" in tier and "test" in tier
    image_id = ds["image_id"].values
    for i in np.unique(image_id):
        assert len(set(tier[image_id == i])) == 1
    _, counts = np.unique(image_id, return_counts=True)
    if (counts > 1).any() and not (counts > 1).all():
        repeated = np.unique(image_id)[counts > 1]
        assert set(image_id[tier == "test"]) == set(repeated)


# ---------------------------------------------------------------- impossible recordings


def leak(arrays):
    """Image 0 shown in train and again in test."""
    arrays["images"] = np.concatenate([arrays["images"], arrays["images"][:1]])
    arrays["responses"] = np.concatenate([arrays["responses"], arrays["responses"][:1]])
    arrays["image_ids"] = np.arange(len(arrays["images"]))
    arrays["image_ids"][-1] = 0
    arrays["tiers"] = np.array(["train"] * (len(arrays["images"]) - 2) + ["test"] * 2)
    arrays["tiers"][0] = "train"
    return arrays


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a | {"images": np.repeat(a["images"][..., None], 3, -1)}, "'images' has shape (48, 8, 10, 3), channels last"),
        (lambda a: a | {"images": a["images"] * 1e300}, "'images' has values up to 2.55e+302, beyond float32"),
        (lambda a: a | {"responses": a["responses"].astype(np.float64) * 1e300}, "'responses' has values up to"),
        (lambda a: a | {"image_ids": np.zeros(len(a["images"]), int)}, "'image_ids' gives id 0 to trials whose images differ"),
        (leak, "'tiers' puts image 0 (1 images in all) in both a fitted tier"),
        (lambda a: {k: v[:0] for k, v in a.items()}, "'images' and 'responses' have 0 trials"),
        (lambda a: a | {"neuron_ids": np.array([1, 1, 2, 3])}, "'neuron_ids' has duplicate ids"),
    ],
)
def test_impossible_recordings_are_refused_in_one_line(tmp_path, change, message):
    np.savez(tmp_path / "bad.npz", **change(recording(tmp_path / "r.npz")))
    code, _, err = run_cli(["import", "arrays", tmp_path / "bad.npz", tmp_path / "out.zarr"])
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("keep", [0, 100, 400])
def test_damaged_npz_files_are_refused_in_one_line(tmp_path, keep):
    recording(tmp_path / "r.npz")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "r.npz").read_bytes()[:keep])
    code, _, err = run_cli(["import", "arrays", tmp_path / "cut.npz", tmp_path / "out.zarr"])
    assert code == 2 and err.count("\n") == 1 and f"{tmp_path / 'cut.npz'}: " in err, err
