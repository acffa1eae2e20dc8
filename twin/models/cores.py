"""Stacked2dCore: the convolutional core of the Sensorium baseline, in flax.nnx.

Images are channels last: ``(batch, y, x, channel)``. Parameter layout (for converters from
neuralpredictors' ``SE2dCore`` / ``Stacked2dCore`` state dicts, whose conv weights are OIHW):

- ``layers[0].conv.kernel``: ``(k, k, in, out)`` HWIO (torch ``features.layer0.conv.weight``
  transposed (2, 3, 1, 0)); ``layers[0].conv.bias`` ``(out,)`` only when ``bias`` and no BatchNorm.
- depth-separable hidden layers ``layers[l].conv`` (torch ``features.layer{l}.ds_conv``):
  ``in_conv.kernel`` ``(1, 1, C, C)`` HWIO (``in_depth_conv``), ``spatial.kernel`` ``(k, k, C)``
  (``spatial_conv.weight[:, 0]`` transposed (1, 2, 0)), ``out_conv.kernel`` ``(1, 1, C, C)``
  (``out_depth_conv``); each has ``.bias`` ``(C,)`` only when ``bias=True``.
- plain hidden layers: ``layers[l].conv.kernel`` ``(k, k, C, C)`` HWIO (torch ``layer{l}.conv``).
- ``layers[l].norm``: ``nnx.BatchNorm`` with ``scale``, ``bias`` (torch ``weight``, ``bias``) and
  batch statistics ``mean``, ``var`` (torch ``running_mean``, ``running_var``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from twin.config import ModelConfig

LAPLACE = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32)


def xavier_normal(shape: tuple[int, ...], fan_in: int, fan_out: int, key: jax.Array) -> jax.Array:
    """torch.nn.init.xavier_normal_: N(0, 2 / (fan_in + fan_out))."""
    return jax.random.normal(key, shape) * math.sqrt(2.0 / (fan_in + fan_out))


def shifted_sum(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Valid depthwise cross-correlation: x (b, Y, X, c), kernel (k, k, c) -> (b, Y-k+1, X-k+1, c)
float32, whatever the inputs' dtype."""
    k = kernel.shape[0]
    h = x.shape[1] - k + 1
    w = x.shape[2] - k + 1
    # float32 products and sums of (possibly bfloat16) inputs: the accumulation stays float32.
    x, kernel = x.astype(jnp.float32), kernel.astype(jnp.float32)
    out = x[:, :h, :w, :] * kernel[0, 0]
    for i in range(k):
        for j in range(k):
            if i or j:
                out = out + x[:, i : i + h, j : j + w, :] * kernel[i, j]
    return out


def pad_hw(x: jax.Array, padding: int) -> jax.Array:
    """Zero-pad the two spatial axes of (b, y, x, c) by ``padding`` on each side."""
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))) if padding else x


def kernel_gradient(xp: jax.Array, g: jax.Array, chunk: int = 8) -> jax.Array:
    """d/dkernel of shifted_sum: xp (b, Y, X, c) padded input, g (b, h, w, c) -> (k, k, c).

    For ``chunk`` images at a time, a scan over the w output columns adds h shifted products into
    a small (chunk, k, k, c) accumulator that stays in cache; k*k full-size reductions instead run
    ~50x slower on XLA CPU.
    """
    b, h, w, c = g.shape
    k = xp.shape[1] - h + 1
    extra = -b % chunk
    if extra:
        xp = jnp.pad(xp, ((0, extra), (0, 0), (0, 0), (0, 0)))
        g = jnp.pad(g, ((0, extra), (0, 0), (0, 0), (0, 0)))
    xp = xp.reshape((-1, chunk) + xp.shape[1:])
    g = g.reshape((-1, chunk) + g.shape[1:])

    def images(pair):
        xp, g = pair

        def column(acc, x):
            window = jax.lax.dynamic_slice_in_dim(xp, x, k, axis=2)  # (chunk, Y, k, c)
            grad = jax.lax.dynamic_index_in_dim(g, x, axis=2, keepdims=False)  # (chunk, h, c)
            for y in range(h):
                acc = acc + window[:, y : y + k] * grad[:, y, None, None, :]
            return acc, None

        acc, _ = jax.lax.scan(column, jnp.zeros((chunk, k, k, c), g.dtype), jnp.arange(w))
        return acc.sum(axis=0)

    return jax.lax.map(images, (xp, g)).sum(axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """Depthwise 2d cross-correlation as k*k shifted multiply-adds (XLA CPU runs grouped convs slowly).

    x: (b, y, x, c); kernel: (k, k, c); zero padding ``padding`` on each side; stride 1.
    Returns (b, y + 2 * padding - k + 1, x + 2 * padding - k + 1, c) float32 (bfloat16 x and
    kernel are multiplied and summed in float32). The gradient is hand-written: the input's is the
    same op with the flipped kernel, the kernel's a scan (kernel_gradient), each returned in its
    argument's dtype.
    """
    return shifted_sum(pad_hw(x, padding), kernel)


def depthwise_forward(x, kernel, padding):
    return depthwise_conv(x, kernel, padding), (x, kernel)


def depthwise_backward(padding, residuals, g):
    x, kernel = residuals
    k = kernel.shape[0]
    grad_x = shifted_sum(pad_hw(g, k - 1 - padding), kernel[::-1, ::-1])
    grad_kernel = kernel_gradient(pad_hw(x.astype(g.dtype), padding), g)
    return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype)


depthwise_conv.defvjp(depthwise_forward, depthwise_backward)


# Largest k * k * in of a conv whose kernel gradient is computed from its input patches (patch_conv).
PATCH_LIMIT = 256


def xla_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """jax.lax.conv_general_dilated, stride 1, products summed in float32: x (b, y, x, in), kernel
    (k, k, in, out) HWIO -> (b, y', x', out) float32."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.float32,
    )


def patches(x: jax.Array, k: int) -> jax.Array:
    """Valid k x k patches: x (b, Y, X, c) -> (b, Y-k+1, X-k+1, k*k*c), ordered (i, j, c) as an HWIO
    kernel reshaped to (k*k*c, out)."""
    h = x.shape[1] - k + 1
    w = x.shape[2] - k + 1
    return jnp.concatenate([x[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)], axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def patch_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """xla_conv with a hand-written kernel gradient, for convs with few input channels (the first
    layer's): XLA CPU's own kernel gradient of such a conv runs ~8x slower than the forward pass.

    x: (b, y, x, in); kernel: (k, k, in, out) HWIO with k * k * in <= PATCH_LIMIT. The kernel's
    gradient is (patches of x)^T @ g (patch_kernel_gradient); the input's is XLA's (dropped when x
    needs none, as images do).
    """
    return xla_conv(x, kernel, padding)


def patch_conv_forward(x, kernel, padding):
    return xla_conv(x, kernel, padding), (x, kernel)


def patch_conv_backward(padding, residuals, g):
    x, kernel = residuals
    grad_x = jax.vjp(lambda x: xla_conv(x, kernel, padding), x)[1](g)[0]
    grad_kernel = patch_kernel_gradient(pad_hw(x, padding), g)
    return grad_x, grad_kernel.reshape(kernel.shape).astype(kernel.dtype)


def patch_kernel_gradient(xp: jax.Array, g: jax.Array, chunk: int = 8) -> jax.Array:
    """d/dkernel of a valid conv: xp (b, Y, X, in) padded input, g (b, h, w, out) -> (k*k*in, out)
    float32.

    A scan over ``chunk`` images at a time, so each chunk's patches stay cache-sized (all of the
    batch's at once run ~1.5x slower); sums in float32 whatever the inputs' precision."""
    b, h, _, out = g.shape
    k = xp.shape[1] - h + 1
    extra = -b % chunk
    if extra:  # zero images add nothing
        xp = jnp.pad(xp, ((0, extra), (0, 0), (0, 0), (0, 0)))
        g = jnp.pad(g, ((0, extra), (0, 0), (0, 0), (0, 0)))

    def add(acc, pair):
        columns = patches(pair[0], k)
        product = jnp.matmul(
            columns.reshape(-1, columns.shape[-1]).T, pair[1].reshape(-1, out), preferred_element_type=jnp.float32
        )
        return acc + product, None

    pairs = (xp.reshape((-1, chunk) + xp.shape[1:]), g.reshape((-1, chunk) + g.shape[1:]))
    return jax.lax.scan(add, jnp.zeros((k * k * xp.shape[-1], out), jnp.float32), pairs)[0]


patch_conv.defvjp(patch_conv_forward, patch_conv_backward)


def conv(x: jax.Array, kernel: jax.Array, padding: int, dtype=jnp.float32) -> jax.Array:
    """Dense 2d cross-correlation. x: (b, y, x, in); kernel: (k, k, in, out) HWIO; both are cast
    to ``dtype`` and the products summed in float32. Returns (b, y', x', out) float32."""
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    k, _, channels, _ = kernel.shape
    if k == 1 and padding == 0:
        # A 2d matmul: its weight gradient then contracts one axis (a 4d x needs ~3x longer on XLA CPU).
        flat = jnp.matmul(x.reshape(-1, channels), kernel[0, 0], preferred_element_type=jnp.float32)
        return flat.reshape(x.shape[:-1] + kernel.shape[-1:])
    if k * k * channels <= PATCH_LIMIT:
        return patch_conv(x, kernel, padding)
    return xla_conv(x, kernel, padding)


def laplace_l2norm(kernel: jax.Array, padding: int = 1) -> jax.Array:
    """neuralpredictors' LaplaceL2norm (avg=False) of a conv kernel.

    kernel: (k, k, in, out) HWIO. Each (k, k) filter is cross-correlated with the 3x3 Laplace
    filter with zero padding ``padding``; returns sum(laplace ** 2) / sum(kernel ** 2).
    """
    k = kernel.shape[0]
    filters = kernel.reshape(k, k, -1)
    lap = depthwise_conv(filters[None], jnp.broadcast_to(LAPLACE[:, :, None], (3, 3) + filters.shape[2:]), padding)
    return jnp.sum(lap**2) / jnp.sum(kernel**2)


class Conv(nnx.Module):
    """Dense conv, kernel (k, k, in, out) HWIO, optional bias (out,), zero padding ``padding``.

    ``dtype``: the dtype its input and kernel are cast to for the products (float32 sums either
    way; set by twin.precision); the kernel is stored in float32.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, padding: int, bias: bool, *, rngs: nnx.Rngs):
        receptive = kernel * kernel
        self.kernel = nnx.Param(
            xavier_normal(
                (kernel, kernel, in_channels, out_channels),
                in_channels * receptive,
                out_channels * receptive,
                rngs.params(),
            )
        )
        self.bias = nnx.Param(jnp.zeros(out_channels)) if bias else None
        self.padding = padding
        self.dtype = jnp.float32

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (b, y, x, in) -> (b, y', x', out) float32."""
        y = conv(x, self.kernel[...], self.padding, self.dtype)
        return y if self.bias is None else y + self.bias[...]

    def window(self, x: jax.Array, inside: jax.Array | None) -> jax.Array:
        """Unpadded conv of windows cut from a larger map: x (b, y, x, in), zeroed where ``inside``
        (b, y, x) is 0 (outside the map, where __call__ would see its zero padding); no padding, so
        the output is (b, y - k + 1, x - k + 1, out)."""
        if inside is not None:
            x = x * inside[..., None]
        y = conv(x, self.kernel[...], 0, self.dtype)
        return y if self.bias is None else y + self.bias[...]


class DepthwiseConv(nnx.Module):
    """Depthwise conv, kernel (k, k, channels), optional bias (channels,), zero padding; ``dtype``
    as Conv's."""

    def __init__(self, channels: int, kernel: int, padding: int, bias: bool, *, rngs: nnx.Rngs):
        receptive = kernel * kernel
        self.kernel = nnx.Param(
            xavier_normal((kernel, kernel, channels), receptive, channels * receptive, rngs.params())
        )
        self.bias = nnx.Param(jnp.zeros(channels)) if bias else None
        self.padding = padding
        self.dtype = jnp.float32

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (b, y, x, c) -> (b, y', x', c) float32."""
        y = depthwise_conv(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.padding)
        return y if self.bias is None else y + self.bias[...]

    def window(self, x: jax.Array, inside: jax.Array) -> jax.Array:
        """As Conv.window: x (b, y, x, c) zeroed where ``inside`` (b, y, x) is 0, no padding."""
        x = (x * inside[..., None]).astype(self.dtype)
        y = depthwise_conv(x, self.kernel[...].astype(self.dtype), 0)
        return y if self.bias is None else y + self.bias[...]


class DepthSeparable(nnx.Module):
    """1x1 conv -> k x k depthwise conv -> 1x1 conv (neuralpredictors DepthSeparableConv2d)."""

    def __init__(self, channels: int, kernel: int, padding: int, bias: bool, *, rngs: nnx.Rngs):
        self.in_conv = Conv(channels, channels, 1, 0, bias, rngs=rngs)
        self.spatial = DepthwiseConv(channels, kernel, padding, bias, rngs=rngs)
        self.out_conv = Conv(channels, channels, 1, 0, bias, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (b, y, x, c) -> (b, y, x, c)."""
        return self.out_conv(self.spatial(self.in_conv(x)))

    def window(self, x: jax.Array, inside: jax.Array) -> jax.Array:
        """As Conv.window: (b, y, x, c) -> (b, y - k + 1, x - k + 1, c); the depthwise conv's input
        is zeroed where ``inside`` (b, y, x) is 0."""
        return self.out_conv(self.spatial.window(self.in_conv(x), inside))


class Layer(nnx.Module):
    """conv (dense or depth-separable) -> BatchNorm -> ELU."""

    def __init__(self, conv_module: nnx.Module, channels: int, momentum: float, eps: float, *, rngs: nnx.Rngs):
        self.conv = conv_module
        self.norm = nnx.BatchNorm(channels, momentum=momentum, epsilon=eps, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (b, y, x, in) -> (b, y', x', channels)."""
        return jax.nn.elu(self.norm(self.conv(x)))


def hidden_conv(channels: int, kernel: int, depth_separable: bool, bias: bool, rngs: nnx.Rngs):
    """A hidden layer's spatial conv, channels -> channels, padded to keep the map size (odd
    ``kernel``): depth-separable, or one full conv."""
    if depth_separable:
        return DepthSeparable(channels, kernel, kernel // 2, bias, rngs=rngs)
    return Conv(channels, channels, kernel, kernel // 2, bias, rngs=rngs)


class Stacked2dCore(nnx.Module):
    """Stacked conv layers (neuralpredictors SE2dCore without SE blocks, as in Sensorium 2022).

    Layer 0: ``input_kernel`` conv (padding k // 2 if ``pad_input`` else 0), BatchNorm, ELU.
    Layers 1..: ``hidden_kernel`` conv, depth-separable if ``depth_separable``, 'same' padding,
    BatchNorm, ELU. The conv bias is off when followed by BatchNorm (layer 0) and set by ``bias``
    in hidden layers (Sensorium: ``core_bias=False``). BatchNorm ``momentum`` is flax's
    (= 1 - PyTorch's). The outputs of the layers listed in ``stack`` are concatenated on channels.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        layers: int = 4,
        channels: int = 64,
        input_kernel: int = 9,
        hidden_kernel: int = 7,
        depth_separable: bool = True,
        pad_input: bool = False,
        stack: tuple[int, ...] = (-1,),
        bias: bool = False,
        momentum: float = 0.1,
        eps: float = 1e-5,
        gamma_input: float = 6.3831,
        rngs: nnx.Rngs,
    ):
        first = Conv(in_channels, channels, input_kernel, input_kernel // 2 if pad_input else 0, False, rngs=rngs)
        modules = [Layer(first, channels, momentum, eps, rngs=rngs)]
        for _ in range(1, layers):
            hidden = hidden_conv(channels, hidden_kernel, depth_separable, bias, rngs)
            modules.append(Layer(hidden, channels, momentum, eps, rngs=rngs))
        self.layers = nnx.List(modules)
        self.stack = tuple(range(layers)[i] for i in stack)
        self.input_kernel = input_kernel
        self.hidden_kernel = hidden_kernel
        self.pad_input = pad_input
        self.channels = channels
        self.gamma_input = gamma_input

    def output_shape(self, image_shape: tuple[int, int]) -> tuple[int, int, int]:
        """(y, x, channels) of the core output for images of ``image_shape`` (y, x): the first
        layer shrinks them unless padded; the stacked layers' channels are concatenated."""
        shrink = 0 if self.pad_input else self.input_kernel - 1
        return image_shape[0] - shrink, image_shape[1] - shrink, self.channels * len(self.stack)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (b, y, x, in) -> (b, y', x', channels * len(stack))."""
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        if len(self.stack) == 1:
            return outputs[self.stack[0]]
        return jnp.concatenate([outputs[i] for i in self.stack], axis=-1)

    @property
    def halo(self) -> int:
        """Output pixels on each side that one output pixel depends on through the hidden layers."""
        return (len(self.layers) - 1) * (self.hidden_kernel // 2)

    def window(self, x: jax.Array, inside: jax.Array) -> jax.Array:
        """The core's output on small windows of its output map, computed from the input those
        windows depend on only (e.g. one neuron's readout point: a fraction of the whole map).

        x: (b, h + 2 * halo + input_kernel - 1, w + 2 * halo + input_kernel - 1, in) input windows,
        zero where they lie outside the (zero-padded, with ``pad_input``) image; inside:
        (b, h + 2 * halo, w + 2 * halo), 1.0 where the first layer's output pixel lies inside the
        output map, else 0.0. Returns (b, h, w, channels * len(stack)): ``__call__``'s output at
        the windows' central h x w pixels, and 0 outside the map (as a readout's zero padding).
        """
        first = self.layers[0]
        x = jax.nn.elu(first.norm(first.conv.window(x, None)))
        outputs = [x]
        for layer in self.layers[1:]:
            margin = (inside.shape[1] - x.shape[1]) // 2
            mask = inside[:, margin : inside.shape[1] - margin, margin : inside.shape[2] - margin]
            x = jax.nn.elu(layer.norm(layer.conv.window(x, mask)))
            outputs.append(x)
        h, w = x.shape[1:3]
        margin = (inside.shape[1] - h) // 2
        mask = inside[:, margin : margin + h, margin : margin + w, None]

        def centre(y):
            top, left = (y.shape[1] - h) // 2, (y.shape[2] - w) // 2
            return y[:, top : top + h, left : left + w]

        return jnp.concatenate([centre(outputs[i]) for i in self.stack], axis=-1) * mask

    def laplace(self) -> jax.Array:
        """LaplaceL2norm of the first layer's kernels (Laplace padding 1, as SE2dCore)."""
        return laplace_l2norm(self.layers[0].conv.kernel[...])

    def regularizer(self) -> jax.Array:
        """gamma_input * LaplaceL2norm(first layer)."""
        return self.gamma_input * self.laplace()


def core_arguments(config: ModelConfig) -> dict:
    """Stacked2dCore's keyword arguments (but in_channels and rngs) from ``config``; the video
    cores' spatial convs take the same."""
    return dict(
        layers=config.core_layers,
        channels=config.core_channels,
        input_kernel=config.input_kernel,
        hidden_kernel=config.hidden_kernel,
        depth_separable=config.depth_separable,
        pad_input=config.pad_input,
        stack=config.stack,
        bias=config.core_bias,
        momentum=config.batch_norm_momentum,
        eps=config.batch_norm_eps,
        gamma_input=config.gamma_input,
    )
