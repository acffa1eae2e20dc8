"""Mixed precision: the one way a model computes in bfloat16 ([fit].precision, [mei].precision).

``set_precision(model, "bfloat16")`` sets the compute dtype of every convolution of the core (Conv,
DepthwiseConv in twin.models.cores, TemporalConv in twin.models.video): their inputs and float32
kernels are cast to bfloat16 at call time and the products are summed in float32, so each
convolution returns float32. Everything else
stays float32: the stored parameters and the optimizer state (gradients reach them through the
casts, in float32), BatchNorm and its statistics, the readout (its Gaussian grid positions and
bilinear sampling), shifter, output nonlinearity, loss and regularizers, and the MEI images with
their updates, normalization and blur.

Call it on a model merged inside a jitted function (``set_precision(nnx.merge(graphdef, state), p)``): the
dtype is a static attribute, so it changes the traced program, never the stored state or
checkpoints.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from twin.models.cores import Conv, DepthwiseConv
from twin.models.video import TemporalConv

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def set_precision(model: nnx.Module, precision: str) -> nnx.Module:
    """Set the compute dtype of ``model``'s convolutions to ``precision`` (a key of DTYPES), in
    place; returns ``model``."""
    dtype = DTYPES[precision]
    for _, module in nnx.iter_graph(model):
        if isinstance(module, (Conv, DepthwiseConv, TemporalConv)):
            module.dtype = dtype
    return model
