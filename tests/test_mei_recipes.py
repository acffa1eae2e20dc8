"""Recipe presets carry the published values; custom recipes load from TOML; bad specs fail."""

import dataclasses

import numpy as np
import pytest

from twin.config import MEIConfig
from twin.errors import ConfigError
from twin.mei.recipes import RECIPES, recipe_config
from twin.mei.run import parse_neurons


def test_presets_match_the_reference():
    walker = RECIPES["walker2019"]
    assert (walker.steps, walker.optimizer, walker.schedule) == (1000, "sgd", "linear")
    assert (walker.learning_rate, walker.final_learning_rate) == (3.0, 0.125)
    assert walker.normalize_gradient and walker.step_gain == 0.1
    assert (walker.init_mean, walker.init_std, walker.precondition) == (128.0, 8.0, 0.1)
    assert (walker.blur_target, walker.blur_sigma, walker.final_blur_sigma) == ("image", 1.5, 0.01)
    sinz = RECIPES["sinz_ga"]
    assert (sinz.optimizer, sinz.learning_rate, sinz.schedule, sinz.steps) == ("sgd", 1.0, "constant", 1000)
    assert (sinz.blur_target, sinz.blur_sigma, sinz.final_blur_sigma) == ("gradient", 1.0, 1.0)
    assert 7.5 <= sinz.norm <= 25 and sinz.clip_range and not sinz.normalize_gradient
    lucid = RECIPES["lucid"]
    assert (lucid.parametrization, lucid.optimizer, lucid.learning_rate, lucid.steps) == (
        "fourier", "adam", 0.05, 512
    )
    assert lucid.fourier_init_std == 0.01 and lucid.jitter > 0 and lucid.scale_jitter > 0 and lucid.rotate == 10.0
    assert all(config.recipe == name for name, config in RECIPES.items())


def test_toml_overrides_a_preset_and_defines_custom_recipes(tmp_path):
    path = tmp_path / "mei.toml"
    path.write_text('[mei]\nsteps = 200\nnorm = 10\nrecipe = "mine"\n[fit]\nmax_epochs = 3\n')
    config, sources = recipe_config("sinz_ga", path, seeds=3)
    assert config == dataclasses.replace(RECIPES["sinz_ga"], steps=200, norm=10.0, recipe="mine", seeds=3)
    assert sources == ["recipe sinz_ga", f"--config {path}", "--seeds 3"]
    custom, _ = recipe_config("fancy", path)
    assert custom == dataclasses.replace(MEIConfig(), steps=200, norm=10.0, recipe="mine")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[mei]\nstepz = 3\n", "unknown key \\[mei\\].stepz"),
        ("[mei]\nsteps = 'many'\n", "\\[mei\\].steps"),
        ("[fit]\nmax_epochs = 3\n", "no \\[mei\\] table"),
        ("[mei\n", "not valid TOML"),
    ],
)
def test_bad_recipe_files(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        recipe_config("walker2019", path)


def test_unknown_recipe_and_bad_seeds():
    with pytest.raises(ConfigError, match="unknown recipe"):
        recipe_config("walker2020")
    with pytest.raises(ConfigError, match=r"\[mei\]\.seeds = 0 is out of range; use an integer >= 1"):
        recipe_config("lucid", seeds=0)
    with pytest.raises(ConfigError, match="config file not found"):
        recipe_config("lucid", "/nonexistent/mei.toml")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"blur_target": "mask"}, "blur_target = 'mask'"),
        ({"dei_diversity": "cosine"}, "dei_diversity = 'cosine' is not a known value; use one of 'pixel', 'population'"),
        ({"optimizer": "lbfgs"}, "optimizer = 'lbfgs'"),
        ({"seeds": 0}, "seeds = 0 is out of range"),
    ],
)
def test_configs_refuse_values_the_engine_cannot_run(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(RECIPES["walker2019"], **changes)


IDS = np.arange(5) + 100  # integer ids: --neurons lists positions


def test_neuron_specs():
    np.testing.assert_array_equal(parse_neurons("all", IDS), np.arange(5))
    np.testing.assert_array_equal(parse_neurons("1:4", IDS), [1, 2, 3])
    np.testing.assert_array_equal(parse_neurons(":2", IDS), [0, 1])
    np.testing.assert_array_equal(parse_neurons("3:", IDS), [3, 4])
    np.testing.assert_array_equal(parse_neurons("3,0,4", IDS), [3, 0, 4])
    np.testing.assert_array_equal(parse_neurons(" 2 ", IDS), [2])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0:9", "0 <= START < STOP <= 5"),
        ("3:3", "0 <= START < STOP <= 5"),
        ("a:b", "not a range"),
        ("1:2:3", "not a range"),
        ("1,x", "not a list of integers"),
        ("", "not a list of integers"),
        ("7", "neuron 7 is out of range"),
        ("-1", "neuron -1 is out of range"),
        ("1,1", "listed twice"),
    ],
)
def test_bad_neuron_specs(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_neurons(spec, IDS)


def test_a_preset_named_in_the_file_is_the_start(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[mei]\nrecipe = "lucid"\nsteps = 9\n')
    lucid = dataclasses.replace(RECIPES["lucid"], steps=9)
    assert recipe_config(None, path) == (lucid, ["recipe lucid", f"--config {path}"])
    assert recipe_config("lucid", path)[0] == lucid
    config, sources = recipe_config(None, path, run_mei=MEIConfig(steps=20), run_source="r")
    assert config == lucid and sources[1] == "r [mei] skipped (the run's recipe is walker2019)"
    with pytest.raises(ConfigError) as error:
        recipe_config("sinz_ga", path)
    assert str(error.value) == (
        f"--recipe sinz_ga and {path}: [mei].recipe = 'lucid' name different recipes;"
        " drop --recipe or the file's recipe line"
    )
