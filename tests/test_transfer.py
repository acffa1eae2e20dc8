"""twin fit --core: a fitted core reused for new sessions, frozen or fine-tuned, with provenance."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_fit import CONFIG, assert_same_numbers, read_metrics

from twin import checkpoint, transfer
from twin.cli import main
from twin.config import DataConfig, FitConfig, ModelConfig, RunConfig, load_config, save_config
from twin.data.simulate import simulate
from twin.data.store import write_session
from twin.errors import RunError
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
    # A config without [model]: the core's hyperparameters come from the source run.
    (root / "fit_only.toml").write_text("[data]\nbatch_size = 24\n[fit]\nmax_epochs = 2\nlearning_rate = 0.01\n")
    out = root / "tuned"
    assert twin("fit", root / "b.zarr", "--out", out, "--config", root / "fit_only.toml",
                "--core", root / "source", "--core-learning-rate", "0.002") == 0
    assert load_config(out / "config.toml").model == TWO.model != ModelConfig()
    provenance = json.loads((out / "core.json").read_text())
    assert provenance["frozen"] is False and provenance["core_learning_rate"] == 0.002
    source, tuned = core_arrays(root / "source"), core_arrays(out)
    kernel = "layers.0.conv.kernel.value"
    change = np.abs(tuned[kernel] - source[kernel]).max()
    # 2 epochs of 9 steps (65 train trials in batches of 8), Adam: about the rate per step at most.
    assert 0 < change < 18 * 0.002
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


def test_an_ensemble_core_gives_member_i_its_member_i(root, multi):
    out = root / "from_ensemble"
    assert twin("fit", root / "a.zarr", "--out", out, "--config", root / "two.toml",
                "--core", multi, "--freeze-core", "--seeds", 2) == 0
    for member in range(2):
        assert_same_core(core_arrays(out, member), core_arrays(multi, member))
    summary = json.loads((out / "summary.json").read_text())
    # Each member has its own frozen core: it runs every step (a cache would be one per member).
    assert summary["core_features"] == "frozen, per step" and summary["core"]["source_members"] == 2


def test_optimizer_scales_the_core_and_freezes_it(root):
    model = checkpoint.load_run(root / "source", load_sessions=False).model
    params = nnx.state(model, nnx.Param)
    grads = jax.tree.map(jnp.ones_like, params)

    def first_update(core):
        tx = transfer.optimizer(params, core, 0.01)
        updates, _ = tx.update(grads, tx.init(params), params)
        return {name: np.asarray(value) for name, value in checkpoint.tree_to_arrays(updates).items()}

    plain = first_update(None)  # Adam's first step: g / |g| = 1 everywhere
    scaled = first_update(CoreTransfer("x", False, 0.002))
    frozen = first_update(CoreTransfer("x", True, None))
    for name in plain:
        core = name.startswith("core.")
        np.testing.assert_allclose(scaled[name], plain[name] * (0.2 if core else 1), rtol=1e-6)
        np.testing.assert_array_equal(frozen[name], 0 * plain[name] if core else plain[name])
    # The core at the rate of the rest: plain Adam, as a fit from scratch.
    same = transfer.optimizer(params, CoreTransfer("x", False, 0.01), 0.01)
    assert isinstance(same.init(params), optax.ScaleByAdamState)


def test_evaluate_predict_and_mei_work_on_a_transferred_run(root, frozen, capsys):
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
    (root / "mei.toml").write_text("[mei]\nsteps = 4\nchunk_size = 2\n")
    out = root / "meis.zarr"
    assert twin("mei", frozen, "--neurons", "0,3", "--seeds", 1, "--config", root / "mei.toml", "--out", out) == 0
    assert out.exists()


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


def test_an_image_core_on_a_video_store_is_one_line(root, capsys):
    from twin.data import simulate_video

    write_session(simulate_video.simulate(4, 20, 2, 2, frames=10, size=(12, 16)), root / "v.zarr")
    (root / "video.toml").write_text('[data]\nburn_in_frames = 2\n[model]\ncore = "factorized3d"\n')
    (root / "burn_in.toml").write_text("[data]\nburn_in_frames = 2\n")
    out = root / "bad_video"
    assert twin("fit", root / "v.zarr", "--out", out, "--core", root / "source", "--config", root / "video.toml") == 2
    assert f"[model].core = 'factorized3d' but the core of --core {root / 'source'} has 'stacked2d'" in capsys.readouterr().err
    assert twin("fit", root / "v.zarr", "--out", out, "--core", root / "source", "--config", root / "burn_in.toml") == 2
    err = capsys.readouterr().err
    assert "[model].core = 'stacked2d' reads single images but" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow  # ~50 s on 2 loaded cores: two video fits
def test_a_frozen_video_core_transfers_bit_identical(tmp_path):
    from twin.data import simulate_video

    for name, seed in (("a", 0), ("b", 1)):
        write_session(simulate_video.simulate(4, 20, 2, 2, frames=10, size=(12, 16), seed=seed), tmp_path / f"{name}.zarr")
    config = RunConfig(
        data=DataConfig(clip_frames=8, burn_in_frames=2),
        model=ModelConfig(core="factorized3d", core_layers=1, core_channels=4, input_kernel=5, temporal_input_kernel=3,
                          readout_init="random"),
        fit=FitConfig(max_epochs=1),
    )
    fit(config, [str(tmp_path / "a.zarr")], tmp_path / "source", progress=False)
    save_config(config, tmp_path / "video.toml")
    out = tmp_path / "frozen"
    assert twin("fit", tmp_path / "b.zarr", "--out", out, "--config", tmp_path / "video.toml",
                "--core", tmp_path / "source", "--freeze-core") == 0
    assert_same_core(core_arrays(out), core_arrays(tmp_path / "source"))


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


# A core that has seen many trials of one simulated animal (300 images, 40 neurons), and other
# animals (other seeds: other receptive fields, the same kinds of cells) with 60 trials each.
SMALL_CORE = RunConfig(
    data=DataConfig(batch_size=32),
    model=ModelConfig(core_layers=2, core_channels=8, input_kernel=9, hidden_kernel=5),
    fit=FitConfig(max_epochs=6, learning_rate=0.01),
)


def transfer_against_scratch(root, seeds) -> list[tuple[float, float]]:
    """(test r of the frozen-core transfer, test r from scratch) on 60 trials of each animal."""
    write_session(simulate(40, 300, 20, 4, size=(18, 32), seed=1), root / "many.zarr")
    fit(SMALL_CORE, [str(root / "many.zarr")], root / "source", progress=False)
    results = []
    for seed in seeds:
        store = str(root / f"few{seed}.zarr")
        write_session(simulate(40, 60, 20, 4, size=(18, 32), seed=seed), store)
        scratch = fit(SMALL_CORE, [store], root / f"scratch{seed}", progress=False)
        frozen = fit(
            SMALL_CORE, [store], root / f"transferred{seed}", progress=False,
            core_transfer=CoreTransfer(str(root / "source"), True, None),
        )
        results.append(tuple(s["sessions"][0]["test"]["single_trial_correlation"] for s in (frozen, scratch)))
    return results


@pytest.mark.slow  # ~40 s; experiments/transfer.md records the same comparison at full length
def test_transferred_twin_beats_scratch_on_few_trials(tmp_path):
    # One animal; the margin was 0.06 (0.05 to 0.07 over animals 7, 8, 9).
    ((transferred, scratch),) = transfer_against_scratch(tmp_path, [8])
    assert transferred > scratch + 0.03, (transferred, scratch)


@pytest.mark.slow
def test_transferred_twin_beats_scratch_on_every_animal(tmp_path):
    for transferred, scratch in transfer_against_scratch(tmp_path, [7, 9, 10, 11]):
        assert transferred > scratch + 0.02, (transferred, scratch)


@pytest.mark.parametrize("text, message", [
    ("[]", "holds a list, not an object"),
    ("{}", "has no source, frozen, core_learning_rate"),
    ('{"source": 3, "frozen": true, "core_learning_rate": null}', "source is 3"),
    ('{"source": "/r", "frozen": "yes", "core_learning_rate": null}', "frozen is 'yes'"),
    ('{"source": "/r", "frozen": true, "core_learning_rate": 0.01}', "frozen is true but core_learning_rate is 0.01"),
    ('{"source": "/r", "frozen": false, "core_learning_rate": -1}', "core_learning_rate is -1, not a number >= 0"),
])
def test_a_damaged_core_json_is_one_line(tmp_path, text, message):
    (tmp_path / "core.json").write_text(text)
    with pytest.raises(RunError, match=f"core.json: {message}.*it is damaged"):
        transfer.read_provenance(tmp_path)
