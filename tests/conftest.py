"""Test set-up: 4 host CPU devices so sharding code runs as on a multi-device machine, and the
miniature loop that several modules read (``loop_dir``)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

import pytest  # noqa: E402

from twin.cli import main  # noqa: E402

# A miniature inception loop: simulated session, run, MEIs, stimuli, rig responses, report.
TINY_LOOP = """
[loop]
simulated_neurons = 24
train_images = 240
test_images = 20
repeats = 2
size = [18, 32]
rig_repeats = 4
min_distance = 5.0
mei_seeds = 1
[model]
core_layers = 1
core_channels = 8
input_kernel = 5
[data]
batch_size = 32
[fit]
max_epochs = 1
[mei]
steps = 10
"""


@pytest.fixture(scope="session")
def loop_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    (root / "tiny.toml").write_text(TINY_LOOP)
    assert main(["loop", str(root / "out"), "--neurons", "3", "--config", str(root / "tiny.toml")]) == 0
    return root / "out"
