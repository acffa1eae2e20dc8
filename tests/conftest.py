"""Test set-up: 4 host CPU devices so sharding code runs as on a multi-device machine."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
