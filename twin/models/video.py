"""Video cores: ``(batch, frame, y, x, channel) -> (batch, frame, y', x', channel')``, causal in time.

Output frame t depends on input frames 0..t only (temporal convolutions are padded on the left
with the first frame, the recurrent state runs forward), so a core returns as many frames as it
is given. Both follow the Sensorium 2023 baselines (ecker-lab/sensorium_2023 with
neuralpredictors):

- ``Factorized3dCore`` (neuralpredictors Factorized3dCore): per layer a k x k spatial conv of
  every frame, then a kt temporal conv of every pixel, BatchNorm, ELU.
- ``GruCore``: a ``Stacked2dCore`` on every frame, then a ``ConvGRU`` over the frames
  (neuralpredictors GRU_Module / ConvGRUCell).

Parameter layout (torch shapes in brackets): ``layers[l].spatial`` as a Stacked2dCore layer's
``conv``; ``layers[l].temporal.kernel`` (kt, in, out) [``conv_temporal.weight`` (out, in, kt, 1, 1)
transposed (2, 1, 0)]; ``gru.<gate>_input.kernel`` / ``gru.<gate>_hidden.kernel`` (k, k, in, out)
HWIO [``gru.<gate>_gate_input.weight`` ...] for gate in update, reset, out; the input convs hold the
gates' biases (a hidden conv's bias adds to its input conv's: it is left out).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from twin.config import ModelConfig
from twin.models.cores import (
    Conv,
    Stacked2dCore,
    conv,
    core_arguments,
    hidden_conv,
    laplace_l2norm,
    xavier_normal,
)

LAPLACE_1D = np.array([-1, 4, -1], np.float32)


def per_frame(module: nnx.Module, x: jax.Array) -> jax.Array:
    """A 2d module applied to every frame: x (b, t, y, x, c) -> (b, t, y', x', c')."""
    b, t = x.shape[:2]
    y = module(x.reshape((b * t,) + x.shape[2:]))
    return y.reshape((b, t) + y.shape[1:])


def temporal_laplace(kernel: jax.Array) -> jax.Array:
    """neuralpredictors' DepthLaplaceL21d of a temporal kernel (kt, in, out): every (kt,) filter
    cross-correlated with [-1, 4, -1] (zero padding 1); sum(laplace ** 2) / sum(kernel ** 2)."""
    padded = jnp.pad(kernel, ((1, 1), (0, 0), (0, 0)))
    lap = LAPLACE_1D[0] * padded[:-2] + LAPLACE_1D[1] * padded[1:-1] + LAPLACE_1D[2] * padded[2:]
    return jnp.sum(lap**2) / jnp.sum(kernel**2)


def xla_temporal_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Valid conv over frames: x (b, t + kt - 1, p, in) with p pixels, kernel (kt, in, out) ->
    (b, t, p, out), products summed in float32; output frame i weights input frame i + j by
    kernel[j]."""
    return jax.lax.conv_general_dilated(
        x,
        kernel[:, None],
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.float32,
    )


@jax.custom_vjp
def temporal_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """xla_temporal_conv with a hand-written kernel gradient, for CPUs: XLA CPU's own runs ~6x
    slower than the forward pass (measured at 32 channels, 11 frames, 80-frame clips)."""
    return xla_temporal_conv(x, kernel)


def temporal_conv_forward(x, kernel):
    return xla_temporal_conv(x, kernel), (x, kernel)


def temporal_conv_backward(residuals, g):
    x, kernel = residuals
    grad_x = jax.vjp(lambda x: xla_temporal_conv(x, kernel), x)[1](g)[0]
    return grad_x, frame_kernel_gradient(x, g).astype(kernel.dtype)


temporal_conv.defvjp(temporal_conv_forward, temporal_conv_backward)


def frame_kernel_gradient(x: jax.Array, g: jax.Array) -> jax.Array:
    """d/dkernel of temporal_conv: x (b, t + kt - 1, p, in), g (b, t, p, out) -> (kt, in, out)
    float32.

    Each clip's frame patches (t * p, kt * in), transposed, times its g (t * p, out); a scan over
    the clips keeps one clip's patches in memory.
    """
    t, channels, out = g.shape[1], x.shape[-1], g.shape[-1]
    frames = x.shape[1] - t + 1

    def add(total, pair):
        clip, grad = pair
        columns = jnp.concatenate([clip[i : i + t] for i in range(frames)], axis=-1)
        product = jnp.matmul(
            columns.reshape(-1, frames * channels).T, grad.reshape(-1, out), preferred_element_type=jnp.float32
        )
        return total + product, None

    total = jax.lax.scan(add, jnp.zeros((frames * channels, out), jnp.float32), (x.astype(g.dtype), g))[0]
    return total.reshape(frames, channels, out)


class TemporalConv(nnx.Module):
    """Causal conv over frames, kernel (kt, in, out) (index kt - 1 weights the current frame),
    no bias; ``dtype`` as Conv's. Frames before the first are taken to be the first (edge
    padding): a clip starts as if its first frame had been there all along, so a constant input
    (a behavior channel's offset, a feature's mean) gives a constant output instead of an onset
    transient."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, rngs: nnx.Rngs):
        shape = (kernel, in_channels, out_channels)
        self.kernel = nnx.Param(xavier_normal(shape, in_channels * kernel, out_channels * kernel, rngs.params()))
        self.dtype = jnp.float32

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (b, t, y, x, in) -> (b, t, y, x, out) float32."""
        b, t, h, w, c = x.shape
        kernel = self.kernel[...]
        x = jnp.pad(x.reshape(b, t, h * w, c), ((0, 0), (kernel.shape[0] - 1, 0), (0, 0), (0, 0)), mode="edge")
        # The hand-written kernel gradient is measured faster on CPU only; elsewhere XLA's own.
        conv = temporal_conv if jax.default_backend() == "cpu" else xla_temporal_conv
        y = conv(x.astype(self.dtype), kernel.astype(self.dtype))
        return y.reshape(b, t, h, w, -1)


class FactorizedLayer(nnx.Module):
    """Spatial conv of every frame -> causal temporal conv -> BatchNorm -> ELU."""

    def __init__(self, spatial: nnx.Module, channels: int, kernel: int, momentum: float, eps: float, *, rngs):
        self.spatial = spatial
        self.temporal = TemporalConv(channels, channels, kernel, rngs=rngs)
        self.norm = nnx.BatchNorm(channels, momentum=momentum, epsilon=eps, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (b, t, y, x, in) -> (b, t, y', x', channels)."""
        return jax.nn.elu(self.norm(self.temporal(per_frame(self.spatial, x))))


class Factorized3dCore(nnx.Module):
    """Factorized 3d conv layers (neuralpredictors Factorized3dCore), causal in time; the
    arguments as ModelConfig's fields of the same meaning.

    Spatial convs as Stacked2dCore's (layer 0 dense ``input_kernel``, padded only with
    ``pad_input``; hidden layers ``hidden_kernel``, 'same', depth-separable if ``depth_separable``),
    each followed by a temporal conv (``temporal_input_kernel`` in layer 0, ``temporal_hidden_kernel``
    after), BatchNorm and ELU. Regularizer: gamma_input x LaplaceL2norm of the first spatial kernel
    + gamma_temporal x DepthLaplaceL21d of the first temporal kernel (as the baseline).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        layers: int,
        channels: int,
        input_kernel: int,
        hidden_kernel: int,
        temporal_input_kernel: int,
        temporal_hidden_kernel: int,
        depth_separable: bool,
        pad_input: bool,
        stack: tuple[int, ...],
        bias: bool,
        momentum: float,
        eps: float,
        gamma_input: float,
        gamma_temporal: float,
        rngs: nnx.Rngs,
    ):
        first = Conv(in_channels, channels, input_kernel, input_kernel // 2 if pad_input else 0, False, rngs=rngs)
        modules = [FactorizedLayer(first, channels, temporal_input_kernel, momentum, eps, rngs=rngs)]
        for _ in range(1, layers):
            spatial = hidden_conv(channels, hidden_kernel, depth_separable, bias, rngs)
            modules.append(FactorizedLayer(spatial, channels, temporal_hidden_kernel, momentum, eps, rngs=rngs))
        self.layers = nnx.List(modules)
        self.stack = tuple(range(layers)[i] for i in stack)
        self.input_kernel = input_kernel
        self.pad_input = pad_input
        self.channels = channels
        self.gamma_input = gamma_input
        self.gamma_temporal = gamma_temporal

    # (y, x, channels) of each output frame for frames of ``image_shape`` (y, x): as the 2D core's.
    output_shape = Stacked2dCore.output_shape

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (b, t, y, x, in) -> (b, t, y', x', channels * len(stack))."""
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        return jnp.concatenate([outputs[i] for i in self.stack], axis=-1)

    def regularizer(self) -> jax.Array:
        """gamma_input x LaplaceL2norm(first spatial kernel) + gamma_temporal x
        DepthLaplaceL21d(first temporal kernel)."""
        first = self.layers[0]
        return self.gamma_input * laplace_l2norm(first.spatial.kernel[...]) + self.gamma_temporal * temporal_laplace(
            first.temporal.kernel[...]
        )


class ConvGRU(nnx.Module):
    """Convolutional GRU over frames (neuralpredictors ConvGRUCell, state 0 before the first frame):

    u = sigmoid(W_u * x + U_u * h), r = sigmoid(W_r * x + U_r * h),
    h' = (1 - u) h + u tanh(W_o * x + U_o * (r h)),

    with W ``input_kernel`` and U ``kernel`` 'same'-padded convs; the output of frame t is h after it.
    """

    def __init__(self, in_channels: int, channels: int, input_kernel: int, kernel: int, *, rngs: nnx.Rngs):
        def gate(inputs, size, bias):
            return Conv(inputs, channels, size, size // 2, bias, rngs=rngs)

        self.update_input, self.reset_input, self.out_input = (gate(in_channels, input_kernel, True) for _ in range(3))
        self.update_hidden, self.reset_hidden, self.out_hidden = (gate(channels, kernel, False) for _ in range(3))
        self.channels = channels

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (b, t, y, x, in) -> states (b, t, y, x, channels)."""
        gates = (self.update_input, self.reset_input, self.out_input)
        # The input terms of all frames and gates at once; only the hidden terms run frame by frame.
        kernel = jnp.concatenate([g.kernel[...] for g in gates], axis=-1)
        bias = jnp.concatenate([g.bias[...] for g in gates])
        inputs = per_frame(lambda f: conv(f, kernel, self.update_input.padding, self.update_input.dtype) + bias, x)
        hidden_kernel = jnp.concatenate([self.update_hidden.kernel[...], self.reset_hidden.kernel[...]], axis=-1)
        out_kernel = self.out_hidden.kernel[...]
        padding, dtype, c = self.out_hidden.padding, self.out_hidden.dtype, self.channels

        def step(h, frame):
            update, reset = jnp.split(frame[..., : 2 * c] + conv(h, hidden_kernel, padding, dtype), 2, axis=-1)
            update, reset = jax.nn.sigmoid(update), jax.nn.sigmoid(reset)
            candidate = jnp.tanh(frame[..., 2 * c :] + conv(h * reset, out_kernel, padding, dtype))
            h = h * (1 - update) + candidate * update
            return h, h

        start = jnp.zeros(inputs.shape[:1] + inputs.shape[2:4] + (c,), jnp.float32)
        # Unrolled: XLA on CPU runs convolutions inside a loop body several times slower, above
        # all in the backward pass (benchmarks/RESULTS.md: weight gradient 19.4 s looped, 1.9 s unrolled).
        _, states = jax.lax.scan(step, start, jnp.moveaxis(inputs, 1, 0), unroll=True)
        return jnp.moveaxis(states, 0, 1)


class GruCore(nnx.Module):
    """``frames``: a Stacked2dCore applied to every frame, then ``gru``: a ConvGRU over frames."""

    def __init__(self, frames: Stacked2dCore, gru: ConvGRU):
        self.frames = frames
        self.gru = gru

    def output_shape(self, image_shape: tuple[int, int]) -> tuple[int, int, int]:
        """(y, x, gru channels) of each output frame for frames of ``image_shape`` (y, x)."""
        h, w, _ = self.frames.output_shape(image_shape)
        return h, w, self.gru.channels

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (b, t, y, x, in) -> (b, t, y', x', gru channels)."""
        return self.gru(per_frame(self.frames, x))

    def regularizer(self) -> jax.Array:
        """The 2d core's: gamma_input x LaplaceL2norm(first layer)."""
        return self.frames.regularizer()


def video_core(config: ModelConfig, in_channels: int, *, rngs: nnx.Rngs) -> Factorized3dCore | GruCore:
    """The video core ``config.core`` ("factorized3d" or "gru") for frames of ``in_channels``."""
    shared = core_arguments(config)
    if config.core == "factorized3d":
        return Factorized3dCore(
            in_channels,
            temporal_input_kernel=config.temporal_input_kernel,
            temporal_hidden_kernel=config.temporal_hidden_kernel,
            gamma_temporal=config.gamma_temporal,
            **shared,
            rngs=rngs,
        )
    frames = Stacked2dCore(in_channels, **shared, rngs=rngs)
    channels = frames.channels * len(frames.stack)
    gru = ConvGRU(channels, config.gru_channels, config.gru_input_kernel, config.gru_kernel, rngs=rngs)
    return GruCore(frames, gru)
