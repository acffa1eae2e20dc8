"""twin fit --core: a fitted core reused for new sessions, frozen or fine-tuned, with provenance."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
from flax import nnx
from test_fit import CONFIG, assert_same_numbers, read_metrics

from twin import checkpoint, transfer
from twin.cli import main
from twin.config import DataConfig, FitConfig, ModelConfig, RunConfig, load_config, save_config
from twin.data.simulate import simulate
from twin.data.store import write_session
from twin.fit import fit
from twin.transfer import CoreTransfer

# Few epochs: what matters here is where the core comes from, not how good the fit is.
TWO = dataclasses.replace(CONFIG, fit=dataclasses.replace(CONFIG.fit, max_epochs=2))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Stores of three simulated animals (a: 12x16; b, c: 14x18, another image size than a),
    a source run fit on a, and the config file of the transfer fits."""
    root = tmp_path_factory.mktemp("transfer")
    write_session(simulate(8, 80, 4, 2, size=(12, 16), seed=2), root / "a.zarr")
    write_session(simulate(6, 72, 4, 2, size=(14, 18), seed=5), root / "b.zarr")
    write_session(simulate(5, 72, 4, 2, size=(14, 18), seed=6), root / "c.zarr")
    fit(TWO, [str(root / "a.zarr")], root / "source", progress=False)
    save_config(TWO, root / "two.toml")
    return root


@pytest.fixture(scope="module")
def frozen(root):
    """A frozen-core transfer to b through the CLI (b's images are larger than the core's source)."""
    out = root / "frozen"
    assert twin("fit", root / "b.zarr", "--out", out, "--config", root / "two.toml",
                "--core", root / "source", "--freeze-core") == 0
    return out


def twin(*argv):
    return main([str(a) for a in argv])


def core_arrays(run_dir, member=None):
    """{name: array} of the core (parameters and BatchNorm statistics) in a run's checkpoints/best."""
    model = checkpoint.load_run(run_dir, load_sessions=False).model
    if member is not None:
        model = model.member(member)
    return checkpoint.tree_to_arrays(nnx.state(model.core))


def assert_same_core(ours: dict, theirs: dict):
    assert ours.keys() == theirs.keys() and any(".mean." in name for name in ours)
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype
        assert ours[name].tobytes() == theirs[name].tobytes(), name


def test_frozen_core_is_bit_identical_and_recorded(root, frozen):
    out = frozen
    assert_same_core(core_arrays(out), core_arrays(root / "source"))
    provenance = json.loads((out / "core.json").read_text())
    source = checkpoint.load_run(root / "source", load_sessions=False).model
    assert provenance == {
        "source": str((root / "source").absolute()),
        "checkpoint": "checkpoints/best",
        "source_epoch": checkpoint.latest_step(root / "source" / "checkpoints" / "best"),
        "sha256": transfer.core_sha256(checkpoint.tree_to_arrays(nnx.state(source.core))),
        "source_members": 1,
        "frozen": True,
        "core_learning_rate": None,
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["core_features"] == "cached" and summary["core"] == provenance
    # The readouts did learn: the new run is not the untrained model.
    lines = read_metrics(out)
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert load_config(out / "config.toml").model == TWO.model


def test_cached_features_give_the_numbers_of_the_per_step_core(root, frozen, monkeypatch):
    monkeypatch.setattr(transfer, "FEATURE_CACHE_BYTES", 0)
    core = CoreTransfer(str(root / "source"), True, None)
    summary = fit(TWO, [str(root / "b.zarr")], root / "per_step", progress=False, core_transfer=core)
    assert summary["core_features"] == "frozen, per step"
    assert_same_core(core_arrays(root / "per_step"), core_arrays(root / "source"))
    assert_same_numbers(read_metrics(root / "per_step"), read_metrics(frozen), rtol=1e-4)


def test_fine_tuned_core_changes_at_its_own_rate(root):
    out = root / "tuned"
    assert twin("fit", root / "b.zarr", "--out", out, "--config", root / "two.toml",
                "--core", root / "source", "--core-learning-rate", "0.002") == 0
    provenance = json.loads((out / "core.json").read_text())
    assert provenance["frozen"] is False and provenance["core_learning_rate"] == 0.002
    source, tuned = core_arrays(root / "source"), core_arrays(out)
    kernel = "layers.0.conv.kernel.value"
    change = np.abs(tuned[kernel] - source[kernel]).max()
    assert change > 0
    # Adam moves each weight by at most about its learning rate per step: 2 epochs of 3 steps.
    assert change < 6 * 0.002 * 1.5
    assert not np.array_equal(tuned["layers.0.norm.mean.value"], source["layers.0.norm.mean.value"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["core_features"] == "trained"


def test_resume_of_a_transferred_run_repeats_the_uninterrupted_numbers(root, frozen, capsys):
    one = dataclasses.replace(TWO, fit=dataclasses.replace(TWO.fit, max_epochs=1))
    run = root / "resumed"
    fit(one, [str(root / "b.zarr")], run, progress=False, core_transfer=CoreTransfer(str(root / "source"), True, None))
    # --resume needs no --core: the run's core.json says where its core came from.
    assert twin("fit", root / "b.zarr", "--out", run, "--resume", "--max-epochs", 2) == 0
    assert_same_numbers(read_metrics(run), read_metrics(frozen), rtol=1e-5)
    assert_same_core(core_arrays(run), core_arrays(root / "source"))
    # Core flags given with --resume must be what core.json says.
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert twin("fit", root / "b.zarr", "--out", run, "--resume", "--core-learning-rate", "0.01") == 2
    assert "was transferred from" in capsys.readouterr().err
    assert twin("fit", root / "b.zarr", "--out", run, "--resume", "--max-epochs", 2, "--core", root / "source", "--freeze-core") == 0
    assert (run / "metrics.jsonl").read_text() == before  # at max_epochs already: nothing to do


@pytest.fixture(scope="module")
def multi(root):
    """An ensemble of 2 on two new sessions (b, c) from the single twin's frozen core."""
    out = root / "multi"
    assert twin("fit", root / "b.zarr", root / "c.zarr", "--out", out, "--config", root / "two.toml",
                "--core", root / "source", "--freeze-core", "--seeds", 2) == 0
    return out


def test_multi_session_ensemble_starts_every_member_from_the_core(root, multi):
    run = checkpoint.load_run(multi)
    assert [data.n_neurons for data in run.sessions] == [6, 5] and run.model.size == 2
    for member in range(2):
        assert_same_core(core_arrays(multi, member), core_arrays(root / "source"))
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["core_features"] == "cached" and len(summary["sessions"]) == 2
    assert summary["core"]["source_members"] == 1


def test_evaluate_and_predict_work_on_a_transferred_run(root, frozen, capsys):
    capsys.readouterr()
    assert twin("evaluate", frozen, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((frozen / "summary.json").read_text())
    assert result["single_trial_correlation"] == pytest.approx(
        summary["sessions"][0]["test"]["single_trial_correlation"], abs=1e-5
    )
    assert twin("predict", frozen, root / "b.zarr", "--out", root / "predicted.npy") == 0
    predicted = np.load(root / "predicted.npy")
    run = checkpoint.load_run(frozen)
    data = run.sessions[0]
    expected = np.asarray(run.model(data.images, 0)) * data.response_std
    assert predicted.shape == (80, 6)
    np.testing.assert_allclose(predicted, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--core", "{root}/nowhere"], "--core {root}/nowhere: no such run directory"),
        (["--core", "{root}/a.zarr"], "no config.toml; pass a run directory written by twin fit"),
        (["--core", "{root}/source", "--freeze-core", "--core-learning-rate", "0.1"], "pass one"),
        (["--freeze-core"], "needs --core RUN"),
        (["--core", "{root}/source", "--config", "{root}/wide.toml"], "[model].core_channels = 8 but the core"),
        (["--core", "{root}/multi", "--config", "{root}/two.toml"], "an ensemble of 2 members, but this fit has 1"),
        (["--core", "{root}/damaged", "--config", "{root}/two.toml"], "cannot be read"),
        (["--core", "{root}/source", "--config", "{root}/two.toml", "rgb"], "images have 3 channel(s) but the core"),
    ],
)
def test_bad_cores_are_one_line_and_write_nothing(root, multi, capsys, extra, message):
    prepare_bad_inputs(root)
    stores = [root / "b.zarr"]
    if "rgb" in extra:
        extra = [e for e in extra if e != "rgb"]
        stores = [root / "rgb.zarr"]
    out = root / "bad"
    argv = ["fit", *stores, "--out", out, *[e.format(root=root) for e in extra]]
    assert twin(*argv) == 2
    err = capsys.readouterr().err
    assert message.format(root=root) in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def prepare_bad_inputs(root):
    """A config that widens the core, an RGB store and a run whose best checkpoint is damaged."""
    if (root / "damaged").exists():
        return
    (root / "wide.toml").write_text((root / "two.toml").read_text().replace("core_channels = 4", "core_channels = 8"))
    write_session(simulate(4, 40, 2, 2, size=(12, 16), seed=3, channels=3), root / "rgb.zarr")
    shutil.copytree(root / "source", root / "damaged")
    for path in (root / "damaged" / "checkpoints" / "best").rglob("*"):
        if path.is_file() and "arrays" in path.parts:
            path.write_bytes(b"")


def test_transferred_twin_beats_scratch_on_few_trials(tmp_path):
    """A core fit on one simulated animal with many trials, frozen, against fitting another
    animal's 60 trials from scratch: the transferred twin predicts its test trials better."""
    config = RunConfig(
        data=DataConfig(batch_size=32),
        model=ModelConfig(core_layers=2, core_channels=8, input_kernel=9, hidden_kernel=5),
        fit=FitConfig(max_epochs=6, learning_rate=0.01),
    )
    write_session(simulate(40, 300, 20, 4, size=(18, 32), seed=1), tmp_path / "many.zarr")
    write_session(simulate(40, 60, 20, 4, size=(18, 32), seed=8), tmp_path / "few.zarr")
    fit(config, [str(tmp_path / "many.zarr")], tmp_path / "source", progress=False)
    scratch = fit(config, [str(tmp_path / "few.zarr")], tmp_path / "scratch", progress=False)
    frozen = fit(
        config, [str(tmp_path / "few.zarr")], tmp_path / "transferred", progress=False,
        core_transfer=CoreTransfer(str(tmp_path / "source"), True, None),
    )
    r_scratch = scratch["sessions"][0]["test"]["single_trial_correlation"]
    r_frozen = frozen["sessions"][0]["test"]["single_trial_correlation"]
    assert r_frozen > r_scratch + 0.03, (r_frozen, r_scratch)
