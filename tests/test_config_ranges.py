"""Config ranges: every field of every table accepts its declared values and refuses the rest in
one line naming [table].key; bad configs and flags stop `twin fit` / `twin mei` (exit 2) before
anything is written; `twin mei RUN` applies the run's own [mei] table."""

import dataclasses
import json
import math
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# A tiny saved run and its session: test_mei_run's module fixture.
from test_mei_run import run_dir  # noqa: F401

from twin.cli import main
from twin.config import (
    MAX_LAYERS,
    MAX_WIDTH,
    SEED_LIMIT,
    DataConfig,
    FitConfig,
    MEIConfig,
    ModelConfig,
    check_image_size,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
    section_from_dict,
)
from twin.data.simulate import simulate
from twin.data.store import write_session
from twin.errors import ConfigError
from twin.loop.run import LoopConfig
from twin.mei.recipes import RECIPES, recipe_config
from twin.mei.store import open_meis

BIG = 10**6


def ints(lo, hi=None, odd=False):
    """(valid, invalid) strategies of an int field in [lo, hi] (hi None: no upper end)."""
    valid = st.integers(lo, BIG if hi is None else hi)
    if odd:
        valid = valid.filter(lambda v: v % 2)
    invalid = st.integers(max_value=lo - 1)
    if hi is not None:
        invalid = invalid | st.integers(min_value=hi + 1)
    if odd:
        invalid = invalid | st.integers(lo, 99).filter(lambda v: v % 2 == 0)
    return valid, invalid


def floats(lo, hi=1e6, lo_open=False, hi_open=False):
    """(valid, invalid) strategies of a finite float field between lo and hi."""
    valid = st.floats(lo, hi, exclude_min=lo_open, exclude_max=hi_open)
    below = st.floats(max_value=lo, exclude_max=not lo_open, allow_infinity=False)
    invalid = below | st.sampled_from([math.nan, math.inf, -math.inf])
    if hi < 1e6:
        invalid = invalid | st.floats(min_value=hi, exclude_min=not hi_open, allow_infinity=False)
    return valid, invalid


def choices(*options):
    return st.sampled_from(options), st.text(max_size=8).filter(lambda s: s not in options)


FLAG = (st.booleans(), None)

FIELDS = {
    DataConfig: {
        "batch_size": ints(1),
        "min_steps_per_epoch": ints(1),
        "image_normalization": choices("global", "per_pixel"),
        "response_std_floor": floats(0),
        "shuffle_seed": ints(0, SEED_LIMIT - 1),
        "train_fraction": floats(0, 1, lo_open=True),
        "clip_frames": ints(1),
        "burn_in_frames": ints(0),
    },
    ModelConfig: {
        "core": choices("stacked2d", "factorized3d", "gru"),
        "core_layers": (st.integers(1, 6), ints(1, MAX_LAYERS)[1]),  # few layers: stacks drawn from them
        "core_channels": ints(1, MAX_WIDTH),
        "input_kernel": ints(1),
        "hidden_kernel": ints(1, odd=True),
        "depth_separable": FLAG,
        "pad_input": FLAG,
        "core_bias": FLAG,
        "stack": (st.just((-1,)), st.just(())),
        "batch_norm_momentum": floats(0, 1, hi_open=True),
        "batch_norm_eps": floats(0, lo_open=True),
        "gamma_input": floats(0),
        "temporal_input_kernel": ints(1),
        "temporal_hidden_kernel": ints(1),
        "gamma_temporal": floats(0),
        "gru_channels": ints(1, MAX_WIDTH),
        "gru_input_kernel": ints(1, odd=True),
        "gru_kernel": ints(1, odd=True),
        "readout": choices("gaussian", "factorized"),
        "gauss_type": choices("full", "isotropic"),
        "init_mu_range": floats(0),
        "readout_init": choices("data", "random"),
        "init_sigma": floats(0),
        "gamma_readout": floats(0),
        "grid_mean_predictor": FLAG,
        "grid_mean_hidden": ints(1, MAX_WIDTH),
        "shifter": FLAG,
        "shifter_hidden": ints(1, MAX_WIDTH),
        "use_behavior": FLAG,
        "behavior_gain": FLAG,
    },
    FitConfig: {
        "learning_rate": floats(0, lo_open=True),
        "max_epochs": ints(1),
        "lr_decay_factor": floats(0, 1, lo_open=True, hi_open=True),
        "patience": ints(1),
        "tolerance": floats(0),
        "max_lr_decays": ints(0),
        "min_learning_rate": floats(0),
        "restore_best": FLAG,
        "scale_loss": FLAG,
        "seed": ints(0, SEED_LIMIT - 1),
        "ensemble_size": ints(1),
        "loss": choices("poisson", "gaussian"),
        "precision": choices("float32", "bfloat16"),
    },
    MEIConfig: {
        "recipe": (st.text(min_size=1, max_size=8).filter(str.strip), st.sampled_from(["", "  "])),
        "steps": ints(1),
        "optimizer": choices("sgd", "adam", "adamw"),
        "learning_rate": floats(0, lo_open=True),
        "final_learning_rate": floats(0),
        "schedule": choices("constant", "linear", "cosine"),
        "normalize_gradient": FLAG,
        "step_gain": floats(0, lo_open=True),
        "weight_decay": floats(0),
        "parametrization": choices("pixel", "fourier"),
        "fourier_decay": floats(0),
        "fourier_init_std": floats(0),
        "init_mean": floats(0, 255),
        "init_std": floats(0),
        "precondition": floats(0),
        "blur_target": choices("image", "gradient", "none"),
        "blur_sigma": floats(0),
        "final_blur_sigma": floats(0),
        "norm": floats(0),
        "clip_range": FLAG,
        "jitter": ints(0),
        "scale_jitter": floats(0, 1, hi_open=True),
        "rotate": floats(0, 180),
        "tolerance": floats(0),
        "window": ints(1),
        "seeds": ints(1),
        "chunk_size": ints(0),
        "dei_fraction": floats(0, 1, lo_open=True),
        "dei_steps": ints(1),
        "dei_learning_rate": floats(0, lo_open=True),
        "dei_penalty": floats(0),
        "dei_diversity": choices("pixel", "population"),
        "opacity_penalty": floats(0),
        "opacity_learning_rate": floats(0, lo_open=True),
        "precision": choices("float32", "bfloat16"),
        "frames": ints(1),
        "response_window": ints(1),
        "temporal_blur_sigma": floats(0),
        "static": FLAG,
    },
    LoopConfig: {
        "simulated_neurons": ints(1),
        "train_images": ints(2),
        "test_images": ints(20),
        "repeats": ints(2),
        "size": (st.tuples(st.integers(8, 999), st.integers(8, 999)), st.just((7, 64))),
        "rig_repeats": ints(1),
        "min_distance": floats(0),
        "mei_seeds": ints(1),
        "channels": (st.sampled_from([1, 3]), st.sampled_from([0, 2, 4])),
        "video": FLAG,
        "frames": ints(1),
    },
}


def test_every_field_of_every_table_is_declared():
    for cls, fields in FIELDS.items():
        assert set(fields) == {f.name for f in dataclasses.fields(cls)}, cls.TABLE
        assert all("valid" in f.metadata for f in dataclasses.fields(cls))


@st.composite
def valid_table(draw, cls):
    """A dict of valid values for some of ``cls``'s fields, consistent with its rules."""
    keys = draw(st.sets(st.sampled_from(sorted(FIELDS[cls]))))
    values = {key: draw(FIELDS[cls][key][0]) for key in keys}
    if cls is ModelConfig:
        layers = values.get("core_layers", ModelConfig().core_layers)
        values["stack"] = tuple(draw(st.lists(st.integers(-layers, layers - 1), min_size=1, max_size=3)))
        if values.get("pad_input"):
            values["input_kernel"] = values.get("input_kernel", 9) | 1
        if values.get("readout") == "factorized":
            values["shifter"] = values["grid_mean_predictor"] = False
    if cls is FitConfig:
        rate = values.get("learning_rate", FitConfig().learning_rate)
        values["min_learning_rate"] = min(values.get("min_learning_rate", 0.0), rate)
    if cls is MEIConfig:
        frames = values.get("frames", MEIConfig().frames)
        values["response_window"] = min(values.get("response_window", MEIConfig().response_window), frames)
    return values


@pytest.mark.parametrize("cls", list(FIELDS), ids=lambda cls: cls.TABLE)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_random_valid_tables_build_and_round_trip(cls, data):
    values = data.draw(valid_table(cls))
    config = section_from_dict(cls, values, "c.toml")
    assert all(getattr(config, key) == value for key, value in values.items())
    if cls is not LoopConfig:
        run = config_from_dict({cls.TABLE: values})
        assert config_from_dict(config_to_dict(run)) == run


@pytest.mark.parametrize("cls", list(FIELDS), ids=lambda cls: cls.TABLE)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_out_of_range_value_names_table_and_key(cls, data):
    key = data.draw(st.sampled_from(sorted(k for k, (_, bad) in FIELDS[cls].items() if bad is not None)))
    value = data.draw(FIELDS[cls][key][1])
    with pytest.raises(ConfigError) as error:
        section_from_dict(cls, {key: value}, "c.toml")
    message = str(error.value)
    assert message.startswith(f"c.toml: [{cls.TABLE}].{key} = ") and "; use " in message
    assert "\n" not in message


@pytest.mark.parametrize("digits", ["1" + "0" * 400, "-1" + "0" * 400])
def test_an_integer_beyond_any_float_is_out_of_range(tmp_path, digits):
    (tmp_path / "c.toml").write_text(f"[fit]\nlearning_rate = {digits}\n")
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "c.toml")
    value = "-inf" if digits.startswith("-") else "inf"
    says = f"[fit].learning_rate = {value} is out of range; use a number > 0"
    assert str(error.value) == f"{tmp_path / 'c.toml'}: {says}"


def test_seeds_stay_below_2_to_the_32():
    assert FitConfig(seed=2**32 - 1).seed == 2**32 - 1
    for table, key in (("fit", "seed"), ("data", "shuffle_seed")):
        with pytest.raises(ConfigError) as error:
            config_from_dict({table: {key: 2**32}})
        says = "= 4294967296 is out of range; use an integer in [0, 4294967296)"
        assert str(error.value).endswith(f"[{table}].{key} {says}")


def test_python_construction_is_checked_too():
    with pytest.raises(ConfigError, match=r"^\[data\]\.batch_size = 0 is out of range; use an integer >= 1$"):
        DataConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"^\[mei\]\.chunk_size = -1 is out of range; use an integer >= 0$"):
        dataclasses.replace(MEIConfig(), chunk_size=-1)
    assert ModelConfig(stack=[0, -1]).stack == (0, -1) and FitConfig(learning_rate=1).learning_rate == 1.0


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"core_layers": 2, "stack": (0, 2)}, "[model].stack = [0, 2] is out of range; use layer indices from -2 to 1"),
        ({"pad_input": True, "input_kernel": 8}, "[model].input_kernel = 8 is even; with pad_input = true use an odd"),
        ({"hidden_kernel": 4}, "[model].hidden_kernel = 4 is out of range; use an odd integer >= 1"),
        ({"readout": "factorized", "shifter": True}, "[model].readout = 'factorized' has no grid; set shifter"),
    ],
)
def test_rules_between_model_fields(changes, message):
    with pytest.raises(ConfigError) as error:
        ModelConfig(**changes)
    assert str(error.value).startswith(message)


def test_min_learning_rate_stays_below_the_learning_rate(tmp_path):
    path = tmp_path / "fit.toml"
    path.write_text("[fit]\nlearning_rate = 0.001\nmin_learning_rate = 0.01\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (
        f"{path}: [fit].min_learning_rate = 0.01 is above [fit].learning_rate = 0.001; use at most that"
    )


def test_kernel_larger_than_the_image():
    model = ModelConfig(input_kernel=41)
    with pytest.raises(ConfigError) as error:
        check_image_size(model, (36, 64), "s.zarr")
    assert str(error.value) == (
        "[model].input_kernel = 41 does not fit the 36x64 images of s.zarr (the first layer's output"
        " would be 0x24); use at most 36 or set pad_input = true"
    )
    check_image_size(ModelConfig(input_kernel=36), (36, 64), "s.zarr")
    check_image_size(ModelConfig(input_kernel=41, pad_input=True), (36, 64), "s.zarr")


# ---------------------------------------------------------------------------- the CLI

BAD = [
    ("data", "batch_size", "0", "0 is out of range; use an integer >= 1"),
    ("fit", "ensemble_size", "0", "0 is out of range; use an integer >= 1"),
    ("model", "core_layers", "0", "0 is out of range; use an integer in [1, 65)"),
    ("model", "core_channels", "-1", "-1 is out of range; use an integer in [1, 4097)"),
    ("model", "core_channels", "100000000", "100000000 is out of range; use an integer in [1, 4097)"),
    ("fit", "learning_rate", "-1", "-1.0 is out of range; use a number > 0"),
    ("fit", "patience", "-1", "-1 is out of range; use an integer >= 1"),
    ("fit", "max_epochs", "0", "0 is out of range; use an integer >= 1"),
    ("mei", "chunk_size", "-1", "-1 is out of range; use an integer >= 0"),
    ("mei", "blur_sigma", "-2", "-2.0 is out of range; use a number >= 0"),
    ("model", "readout", "'pooled'", "'pooled' is not a known value; use one of 'gaussian', 'factorized'"),
    ("data", "image_normalization", "'pixel'", "'pixel' is not a known value; use one of 'global', 'per_pixel'"),
    ("mei", "optimizer", "'lbfgs'", "'lbfgs' is not a known value; use one of 'sgd', 'adam', 'adamw'"),
    ("fit", "precision", "'float16'", "'float16' is not a known value; use one of 'float32', 'bfloat16'"),
    ("mei", "precision", "'bf16'", "'bf16' is not a known value; use one of 'float32', 'bfloat16'"),
]


@pytest.mark.parametrize("table, key, value, says", BAD, ids=[f"{t}.{k}" for t, k, _, _ in BAD])
def test_fit_refuses_bad_configs_before_writing(tmp_path, capsys, table, key, value, says):
    path = tmp_path / "bad.toml"
    path.write_text(f"[{table}]\n{key} = {value}\n")
    run = tmp_path / "run"
    assert main(["fit", str(tmp_path / "missing.zarr"), "--out", str(run), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"twin fit: error: {path}: [{table}].{key} = {says}\n"
    assert not run.exists()


@pytest.mark.parametrize("table, key, value, says", [b for b in BAD if b[0] == "mei"], ids=lambda v: str(v)[:12])
def test_mei_refuses_bad_configs_before_writing(run_dir, tmp_path, capsys, table, key, value, says):  # noqa: F811
    path = tmp_path / "bad.toml"
    path.write_text(f"[mei]\n{key} = {value}\n")
    out = tmp_path / "meis.zarr"
    assert main(["mei", str(run_dir / "run"), "--out", str(out), "--config", str(path)]) == 2
    assert capsys.readouterr().err == f"twin mei: error: {path}: [mei].{key} = {says}\n"
    assert not out.exists() and not (tmp_path / "meis.png").exists()


def test_fit_refuses_a_kernel_larger_than_the_images(tmp_path, capsys):
    write_session(simulate(3, 10, 2, 2, size=(12, 16), seed=0), tmp_path / "s.zarr")
    path = tmp_path / "big.toml"
    path.write_text("[model]\ninput_kernel = 13\n")
    run = tmp_path / "run"
    assert main(["fit", str(tmp_path / "s.zarr"), "--out", str(run), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"twin fit: error: {path}: [model].input_kernel = 13 does not fit the 12x16 images of {tmp_path / 's.zarr'}"
        " (the first layer's output would be 0x4); use at most 12 or set pad_input = true\n"
    )
    assert not run.exists()


@pytest.mark.parametrize(
    "argv, says",
    [
        (["fit", "s.zarr", "--out", "r", "--max-epochs", "0"], "--max-epochs: 0 is out of range; use an integer >= 1"),
        (["fit", "s.zarr", "--out", "r", "--seeds", "-2"], "--seeds: -2 is out of range; use an integer >= 1"),
        (["fit", "s.zarr", "--out", "r", "--seeds", "two"], "--seeds: 'two' is not an integer"),
        (["mei", "r", "--out", "m.zarr", "--seeds", "0"], "--seeds: 0 is out of range; use an integer >= 1"),
        (["mei", "r", "--out", "m.zarr", "--deis", "-1"], "--deis: -1 is out of range; use an integer >= 0"),
        (["mei", "r", "--out", "m.zarr", "--session", "-1"], "--session: -1 is out of range; use an integer >= 0"),
        (["simulate", "s.zarr", "--neurons", "0"], "--neurons: 0 is out of range; use an integer >= 1"),
        (["simulate", "s.zarr", "--train-images", "1"], "--train-images: 1 is out of range; use an integer >= 2"),
        (["simulate", "s.zarr", "--test-images", "0"], "--test-images: 0 is out of range; use an integer >= 1"),
        (["simulate", "s.zarr", "--repeats", "0"], "--repeats: 0 is out of range; use an integer >= 1"),
        (["simulate", "s.zarr", "--seed", "-1"], "--seed: -1 is out of range; use an integer in [0, 4294967296)"),
        (["loop", "x", "--seed", str(2**32)], "--seed: 4294967296 is out of range; use an integer in [0, 4294967296)"),
        (["select", "r", "--n", "0"], "--n: 0 is out of range; use an integer >= 1"),
        (["select", "r", "--min-distance", "-5"], "--min-distance: -5 is out of range; use a number >= 0"),
        (["select", "r", "--min-distance", "nan"], "--min-distance: nan is out of range; use a number >= 0"),
        (["export", "m.zarr", "--out", "x", "--repeats", "0"], "--repeats: 0 is out of range; use an integer >= 1"),
        (["loop", "x", "--neurons", "0"], "--neurons: 0 is out of range; use an integer >= 1"),
    ],
)
def test_numeric_flags_refuse_bad_values(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"twin {argv[0]}: error: argument {says}"
    assert err.splitlines()[0].startswith("usage: twin") and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- twin mei precedence


def test_recipe_precedence():
    run_mei = MEIConfig(steps=20, norm=5.0, chunk_size=4)
    config, sources = recipe_config(None, run_mei=run_mei, run_source="r/config.toml")
    assert config == dataclasses.replace(RECIPES["walker2019"], steps=20, norm=5.0, chunk_size=4)
    assert sources == ["recipe walker2019", "r/config.toml [mei]"]

    config, sources = recipe_config("lucid", seeds=2, run_mei=run_mei, run_source="r/config.toml")
    assert config == dataclasses.replace(RECIPES["lucid"], seeds=2)
    assert sources == ["recipe lucid", "r/config.toml [mei] skipped (the run's recipe is walker2019)", "--seeds 2"]

    # The run's recipe is a preset whose other fields are the defaults: the preset's values hold.
    config, sources = recipe_config(None, run_mei=MEIConfig(recipe="lucid"), run_source="r/config.toml")
    assert config == RECIPES["lucid"] and sources == ["recipe lucid"]

    # A run's custom recipe needs no config file.
    config, _ = recipe_config(None, run_mei=MEIConfig(recipe="mine", steps=9), run_source="r")
    assert config == MEIConfig(recipe="mine", steps=9)


def test_config_file_overrides_the_runs_table(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("[mei]\nsteps = 7\n")
    config, sources = recipe_config(None, path, 3, MEIConfig(steps=20, norm=5.0), "r/config.toml")
    assert (config.steps, config.norm, config.seeds) == (7, 5.0, 3)
    assert sources == ["recipe walker2019", "r/config.toml [mei]", f"--config {path}", "--seeds 3"]


def test_mei_uses_the_runs_own_mei_table(run_dir, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(run_dir / "run", run)
    config = load_config(run / "config.toml")
    mei = dataclasses.replace(config.mei, steps=3, chunk_size=2)
    save_config(dataclasses.replace(config, mei=mei), run / "config.toml")
    out = tmp_path / "meis.zarr"
    assert main(["mei", str(run), "--neurons", "0,1", "--seeds", "1", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config_sources"] == ["recipe walker2019", f"{run / 'config.toml'} [mei]", "--seeds 1"]
    ds = open_meis(out)
    assert int(ds["steps"].values.max()) == 3 and "steps = 3" in ds.attrs["mei_config"]
    assert ds.attrs["config_sources"] == summary["config_sources"]
