"""Bad recordings, generated with hypothesis: each gives one SessionError line naming the file,
the variable and the fix; the CLI exits 2 and leaves nothing at the target."""

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.cli import main
from twin.data.importers import from_arrays
from twin.data.schema import TIERS, make_session, validate
from twin.errors import SessionError

N, K, Y, X = 12, 4, 6, 8


def good_arrays() -> dict:
    rng = np.random.default_rng(0)
    return {
        "images": rng.uniform(0, 255, (N, Y, X)).astype(np.float32),
        "responses": rng.random((N, K)).astype(np.float32),
        "tiers": np.array(["train"] * 8 + ["validation"] * 2 + ["test"] * 2),
        "image_ids": np.arange(N),
        "behavior": rng.normal(size=(N, 3)).astype(np.float32),
        "pupil_center": rng.normal(size=(N, 2)).astype(np.float32),
        "neuron_ids": np.arange(K),
        "cell_xyz": rng.normal(size=(K, 3)),
    }


@st.composite
def bad_recordings(draw):
    """(arrays, text the error must contain) for one kind of damage."""
    arrays = good_arrays()
    kind = draw(st.sampled_from([
        "non_finite", "length", "tier_label", "no_train", "no_test", "image_rank",
        "no_neurons", "dtype", "pixel_range", "duplicate_ids", "neuron_meta",
    ]))
    trial = draw(st.integers(0, N - 1))
    if kind == "non_finite":
        name = draw(st.sampled_from(["responses", "images", "behavior", "pupil_center"]))
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        if name == "responses" and np.isnan(value):  # one NaN is a missing value; a neuron never recorded is refused
            arrays[name][:, 0] = value
            return arrays, "'responses' has no finite train response for unit_id 0"
        arrays[name][(trial,) + (0,) * (arrays[name].ndim - 1)] = value
        return arrays, f"'{name}' contains " + ("inf" if name == "responses" else "NaN or inf")
    if kind == "length":
        key, name = draw(st.sampled_from([
            ("images", "images"), ("tiers", "tiers"), ("image_ids", "image_ids"),
            ("behavior", "behavior"), ("pupil_center", "pupil_center"),
        ]))
        cut = draw(st.integers(1, N - 1))
        arrays[key] = arrays[key][:cut] if draw(st.booleans()) else np.concatenate([arrays[key]] * 2)
        return arrays, f"'{name}' has"
    if kind == "tier_label":
        label = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
        if label in TIERS:
            label += "x"
        arrays["tiers"] = arrays["tiers"].astype(object)
        arrays["tiers"][trial] = label
        arrays["tiers"] = arrays["tiers"].astype(str)
        return arrays, "unknown label"
    if kind in ("no_train", "no_test"):
        missing = kind[3:]
        others = [t for t in TIERS if t != missing]
        arrays["tiers"] = np.array(draw(st.lists(st.sampled_from(others), min_size=N, max_size=N)))
        if missing == "test" and "train" not in arrays["tiers"]:
            return arrays, "no 'train' trials"
        return arrays, f"no '{missing}' trials"
    if kind == "image_rank":
        shape = draw(st.sampled_from([(N, Y * X), (N, 1, 1, Y, X), (N * Y * X,)]))
        arrays["images"] = arrays["images"].reshape(shape)
        return arrays, "'images' has shape"
    if kind == "no_neurons":
        arrays["responses"] = arrays["responses"][:, :0]
        arrays.pop("neuron_ids")
        arrays.pop("cell_xyz")
        return arrays, "0 neurons"
    if kind == "dtype":
        key, name, bad = draw(st.sampled_from([
            ("responses", "responses", "complex64"), ("responses", "responses", "U3"),
            ("images", "images", "complex64"), ("image_ids", "image_ids", "float64"),
            ("tiers", "tiers", "int64"), ("behavior", "behavior", "U3"),
        ]))
        arrays[key] = arrays[key].astype(bad) if bad != "int64" else np.arange(N)
        return arrays, f"'{name}' has dtype"
    if kind == "pixel_range":
        arrays["images"][trial, 0, 0] = draw(st.sampled_from([-1.0, 256.0, 1e6]))
        return arrays, "pixel range"
    if kind == "duplicate_ids":
        arrays["neuron_ids"] = np.zeros(K, dtype=np.int64)
        return arrays, "duplicate"
    if draw(st.booleans()):
        arrays["neuron_ids"] = np.arange(K + draw(st.sampled_from([-1, 1])))
        return arrays, f"key 'neuron_ids' has {len(arrays['neuron_ids'])} ids for {K} neurons"
    arrays["cell_xyz"] = np.zeros(draw(st.sampled_from([(K, 2), (K + 1, 3), (K,)])))
    return arrays, "'cell_xyz' has shape"


@settings(max_examples=80, deadline=None)
@given(bad_recordings())
def test_bad_npz_gives_one_line_naming_file_variable_and_fix(case):
    arrays, expected = case
    with tempfile.TemporaryDirectory() as tmp:
        npz, out = Path(tmp) / "rec.npz", Path(tmp) / "out.zarr"
        np.savez(npz, **arrays)
        with pytest.raises(SessionError) as error:
            from_arrays(npz)
        message = str(error.value)
        assert message.startswith(f"{npz}: ") and expected in message, message
        assert "\n" not in message and "; " in message
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            assert main(["import", "arrays", str(npz), str(out)]) == 2
        assert stderr.getvalue().count("\n") == 1 and "Traceback" not in stderr.getvalue()
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["rec.npz"]


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(["responses", "images", "image_id", "unit_id"]),
    dtype=st.sampled_from(["int32", "float64", "float16", "int16", "uint16"]),
)
def test_validate_rejects_wrong_dtypes_in_a_dataset(name, dtype):
    arrays = good_arrays()
    ds = make_session("rec.zarr", images=arrays["images"], responses=arrays["responses"],
                      tier=arrays["tiers"], image_id=arrays["image_ids"])
    ds[name] = ds[name].astype(dtype)
    with pytest.raises(SessionError, match=f"rec.zarr: variable '{name}' has dtype {dtype}; convert"):
        validate(ds, "rec.zarr")


def test_validate_rejects_wrong_dims_and_missing_variables():
    arrays = good_arrays()
    ds = make_session("rec.zarr", images=arrays["images"], responses=arrays["responses"],
                      tier=arrays["tiers"], image_id=arrays["image_ids"])
    with pytest.raises(SessionError, match="'responses' has dims \\('neuron', 'trial'\\)"):
        validate(ds.assign(responses=ds.responses.T), "rec.zarr")
    with pytest.raises(SessionError, match="'image_id' is missing; add it"):
        validate(ds.drop_vars("image_id"), "rec.zarr")
