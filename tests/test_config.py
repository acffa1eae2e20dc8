"""Configs: TOML round trip of every value, partial files, unknown keys and wrong types."""

import dataclasses

import pytest

from twin.config import (
    FitConfig,
    ModelConfig,
    RunConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from twin.errors import ConfigError


def test_round_trip_keeps_every_value(tmp_path):
    config = RunConfig(
        model=ModelConfig(core_layers=3, stack=(0, -1), gauss_type="isotropic"),
        fit=FitConfig(learning_rate=0.003, patience=7, ensemble_size=5, restore_best=False),
    )
    save_config(config, tmp_path / "config.toml")
    assert load_config(tmp_path / "config.toml") == config
    assert config_from_dict(config_to_dict(config)) == config


def test_partial_file_keeps_defaults(tmp_path):
    (tmp_path / "c.toml").write_text("[fit]\nmax_epochs = 3\nlearning_rate = 1\n")
    config = load_config(tmp_path / "c.toml")
    assert config.fit == dataclasses.replace(FitConfig(), max_epochs=3, learning_rate=1.0)
    assert config.model == ModelConfig()


def test_sensorium_fit_defaults():
    fit = FitConfig()
    assert (fit.learning_rate, fit.lr_decay_factor, fit.patience, fit.tolerance) == (0.009, 0.3, 5, 1e-6)
    assert (fit.max_lr_decays, fit.min_learning_rate, fit.max_epochs) == (4, 1e-4, 200)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[fit]\npatiense = 3\n", r"unknown key \[fit\]\.patiense"),
        ("[fitt]\npatience = 3\n", r"unknown section \[fitt\]"),
        ("[fit]\npatience = 'five'\n", r"\[fit\]\.patience = 'five' must be an integer"),
        ("[fit]\nrestore_best = 1\n", r"\[fit\]\.restore_best = 1 must be true or false"),
        ("[fit\n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
