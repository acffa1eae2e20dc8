"""The MEI store: an xarray Dataset written atomically as zarr v3 (twin.data.store.write_dataset).

Variables (images in normalized units; pixels = images * image_std + image_mean):
images (neuron, seed, y, x), activations (neuron, seed), best_seed (neuron,), steps
(neuron, seed), unit_id, neuron_index (neuron,), best_natural_activation, best_natural_trial,
ratio (neuron,), true_ratio, optimum_correlation, true_activation, true_best_natural,
true_best_natural_trial (neuron,; NaN / -1 for recorded sessions), contrast_rms,
contrast_activation (neuron, contrast), shift_offset (shift, yx), shift_activation (neuron, shift),
optional validator_activations (neuron, seed), deis (neuron, dei, y, x), dei_activations
(neuron, dei). attrs: run, session, store, recipe, mei_config (TOML), image_mean, image_std.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tomli_w
import xarray as xr

from twin.config import MEIConfig
from twin.data.store import open_dataset, write_dataset
from twin.errors import SessionError

DIMS = {
    "images": ("neuron", "seed", "y", "x"),
    "activations": ("neuron", "seed"),
    "steps": ("neuron", "seed"),
    "validator_activations": ("neuron", "seed"),
    "contrast_rms": ("neuron", "contrast"),
    "contrast_activation": ("neuron", "contrast"),
    "shift_offset": ("shift", "yx"),
    "shift_activation": ("neuron", "shift"),
    "deis": ("neuron", "dei", "y", "x"),
    "dei_activations": ("neuron", "dei"),
}
REQUIRED = ("images", "activations", "best_seed", "unit_id", "neuron_index")


def config_toml(config: MEIConfig) -> str:
    """The recipe as a TOML [mei] table."""
    return tomli_w.dumps({"mei": dataclasses.asdict(config)})


def meis_dataset(variables: dict[str, np.ndarray], attrs: dict) -> xr.Dataset:
    """Dataset from arrays named as in the module doc (None values are left out)."""
    data = {
        name: (DIMS.get(name, ("neuron",)), np.asarray(value))
        for name, value in variables.items()
        if value is not None
    }
    return xr.Dataset(data, attrs=attrs)


def write_meis(ds: xr.Dataset, path) -> Path:
    """Write the MEI store atomically."""
    return write_dataset(ds, path)


def open_meis(path) -> xr.Dataset:
    """Open an MEI store lazily and check it has the MEI variables."""
    ds = open_dataset(path)
    missing = [name for name in REQUIRED if name not in ds]
    if missing:
        raise SessionError(
            f"{path}: variable {missing[0]!r} is missing; this is not an MEI store (write one with"
            " twin mei)"
        )
    return ds
