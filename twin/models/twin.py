"""Twin: one shared core, one readout (and optional shifter) per session, ELU + 1 output (or a
linear one, for signed responses fit with the gaussian loss).

Layout of a Twin's state (for converters from a neuralpredictors FiringRateEncoder):
``core`` (see twin.models.cores), ``readouts[i]`` (see twin.models.readouts) for session i,
``shifters[i].layers[j]`` (nnx.Linear, kernel = torch ``shifter.<key>.mlp[2 j].weight.T``).
Models are built in training mode (nnx convention); call ``.eval()`` for predictions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from twin.config import ModelConfig
from twin.errors import ConfigError
from twin.models.cores import Stacked2dCore, core_arguments
from twin.models.readouts import Constant, FactorizedReadout, GaussianReadout, bilinear_weights, grid_corners
from twin.models.video import video_core


def elu1(x: jax.Array) -> jax.Array:
    """ELU(x) + 1, written so it stays positive: compiled as exp(x) - 1 + 1 it can round to zero or
    below for very negative x, and the Poisson loss's log(prediction) then turns NaN."""
    return jnp.where(x > 0, x + 1, jnp.exp(jnp.minimum(x, 0)))


# Output nonlinearities: "elu1" keeps predictions positive (Poisson rates); "linear" leaves
# them signed (the gaussian loss, for dF/F).
OUTPUTS = {"elu1": elu1, "linear": lambda x: x}


@dataclasses.dataclass(frozen=True)
class ReadoutSpec:
    """What a session's readout needs: neuron count, mean responses (n,) for the bias,
    cortex positions (n, 2 or 3) in micrometres for the grid-mean predictor (or None), and the
    train mean of the normalized behavior (k,) for the behavior gain (None without behavior)."""

    n_neurons: int
    mean_response: np.ndarray
    positions: np.ndarray | None = None
    behavior_mean: np.ndarray | None = None


class BehaviorGain(nnx.Module):
    """Per-neuron multiplicative gain of the behavior: exp(weight . (behavior - center) + bias).

    ``weight`` (k, n) and ``bias`` (n,) start at 0 (gain 1); ``center`` (k,) is the session's train
    mean behavior, fixed, so the weights and the bias are not confounded by the behavior's offset.
    """

    def __init__(self, behavior_mean: np.ndarray, n_neurons: int):
        k = len(behavior_mean)
        self.center = Constant(jnp.asarray(behavior_mean, jnp.float32))
        self.weight = nnx.Param(jnp.zeros((k, n_neurons), jnp.float32))
        self.bias = nnx.Param(jnp.zeros(n_neurons, jnp.float32))

    def __call__(self, behavior: jax.Array, neurons: jax.Array | None = None) -> jax.Array:
        """behavior (..., k) -> gain (..., n), or (..., k') for ``neurons`` (k',) int indices."""
        weight, bias = self.weight[...], self.bias[...]
        if neurons is not None:
            weight, bias = weight[:, neurons], bias[neurons]
        return jnp.exp((behavior - self.center[...]) @ weight + bias)


class Shifter(nnx.Module):
    """Pupil centre -> readout grid shift: MLP 2 -> hidden -> hidden -> 2 with tanh after each layer
    (neuralpredictors MLPShifter, shift_layers=3)."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [nnx.Linear(2, hidden, rngs=rngs), nnx.Linear(hidden, hidden, rngs=rngs), nnx.Linear(hidden, 2, rngs=rngs)]
        )

    def __call__(self, pupil_center: jax.Array) -> jax.Array:
        """pupil_center: (b, 2) -> shift (b, 2) in grid units."""
        x = pupil_center
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


class Twin(nnx.Module):
    """Digital twin of several sessions: a core + per-session readouts -> ELU(x) + 1.

    in_channels: image channels; image_shape: (y, x); readouts: one ReadoutSpec per session;
    n_behavior: behavior variables, appended as constant image channels when
    ``config.use_behavior`` and setting a per-neuron gain (``BehaviorGain``) when
    ``config.behavior_gain``; output: a key of OUTPUTS ("linear" for signed responses).
    The core is ``config.core``: a ``Stacked2dCore`` for images, or a video core
    (twin.models.video; ``video`` is True), whose inputs and outputs gain a frame axis after the
    batch axis: images (b, t, y, x, c), behavior (b, t, k), pupil_center (b, t, 2) -> (b, t, n),
    every frame read out by the same readout.
    """

    def __init__(
        self,
        config: ModelConfig,
        in_channels: int,
        image_shape: tuple[int, int],
        readouts: list[ReadoutSpec],
        n_behavior: int = 0,
        *,
        output: str = "elu1",
        rngs: nnx.Rngs,
    ):
        self.output = output
        self.use_behavior = config.use_behavior and n_behavior > 0
        self.video = config.core != "stacked2d"
        core_channels = in_channels + (n_behavior if self.use_behavior else 0)
        if self.video:
            self.core = video_core(config, core_channels, rngs=rngs)
        else:
            self.core = Stacked2dCore(core_channels, **core_arguments(config), rngs=rngs)
        in_shape = self.core.output_shape(tuple(image_shape))
        modules = []
        for spec in readouts:
            if config.readout == "gaussian":
                positions = spec.positions if config.grid_mean_predictor else None
                if config.grid_mean_predictor and positions is None:
                    raise ConfigError(
                        "config [model].grid_mean_predictor = true needs neuron positions (cell_x/cell_y) in the"
                        " session store; set it to false or add the positions"
                    )
                modules.append(
                    GaussianReadout(
                        in_shape,
                        spec.mean_response,
                        gauss_type=config.gauss_type,
                        init_mu_range=config.init_mu_range,
                        init_sigma=config.init_sigma,
                        gamma_readout=config.gamma_readout,
                        positions=positions,
                        grid_hidden=config.grid_mean_hidden,
                        rngs=rngs,
                    )
                )
            else:
                modules.append(
                    FactorizedReadout(in_shape, spec.mean_response, gamma_readout=config.gamma_readout, rngs=rngs)
                )
        self.readouts = nnx.List(modules)
        self.shifters = (
            nnx.List([Shifter(config.shifter_hidden, rngs=rngs) for _ in readouts]) if config.shifter else None
        )
        self.gains = behavior_gains(config, readouts) if config.behavior_gain else None
        self.image_shape = tuple(image_shape)
        self.in_channels = in_channels
        self.n_behavior = n_behavior

    @property
    def n_neurons(self) -> list[int]:
        """Neurons per session."""
        return [readout.n_neurons for readout in self.readouts]

    def __call__(
        self,
        images: jax.Array,
        session: int = 0,
        *,
        behavior: jax.Array | None = None,
        pupil_center: jax.Array | None = None,
        neurons: jax.Array | None = None,
    ) -> jax.Array:
        """Predicted responses (b, n), or (b, k) for ``neurons`` (k,) int indices.

        images: (b, y, x, channel) normalized; behavior: (b, n_behavior), needed when the twin
        uses behavior; pupil_center: (b, 2), needed with a shifter; session: static int.
        A video twin: images (b, t, y, x, channel), behavior (b, t, n_behavior), pupil_center
        (b, t, 2) -> (b, t, n or k).
        """
        return self.readout(
            self.features(images, behavior), session, behavior=behavior, pupil_center=pupil_center, neurons=neurons
        )

    def features(self, images: jax.Array, behavior: jax.Array | None = None) -> jax.Array:
        """The core's feature map (b, [t,] y', x', c') of images (b, [t,] y, x, channel); behavior as
        __call__. A frozen core's eval-mode features of each trial can be computed once
        (twin.transfer)."""
        return self.core(self.core_input(images, behavior))

    def readout(
        self,
        fmap: jax.Array,
        session: int = 0,
        *,
        behavior: jax.Array | None = None,
        pupil_center: jax.Array | None = None,
        neurons: jax.Array | None = None,
    ) -> jax.Array:
        """Predicted responses (b, [t,] n or k) from the core's feature map (b, [t,] y', x', c'): the
        session's readout (shifted by its shifter) of every image or frame, then the output
        nonlinearity, times the behavior gain of ``behavior`` (b, [t,] n_behavior) when the twin has one."""
        shift = self.shift(session, pupil_center)
        # Frames are read out as a batch of images: (b, t, ...) -> (b * t, ...) and back.
        leading = fmap.shape[:-3]
        fmap = fmap.reshape((-1,) + fmap.shape[-3:])
        if shift is not None:
            shift = shift.reshape(-1, 2)
        responses = OUTPUTS[self.output](self.readouts[session](fmap, shift=shift, neurons=neurons))
        responses = responses.reshape(leading + responses.shape[-1:])
        if self.gains is None:
            return responses
        return responses * self.gain(session, behavior, neurons)

    def gain(self, session: int, behavior: jax.Array | None, neurons: jax.Array | None = None) -> jax.Array:
        """The session's behavior gain (b, [t,] n or k) of behavior (b, [t,] n_behavior); the twin
        has a BehaviorGain."""
        if behavior is None:
            raise ValueError("this twin has a behavior gain; pass behavior=(batch, [frame,] n_behavior)")
        return self.gains[session](behavior, neurons)

    def core_input(self, images: jax.Array, behavior: jax.Array | None) -> jax.Array:
        """images (b, [t,] y, x, channel) with the behavior variables (b, [t,] n_behavior) appended
        as constant channels (of each frame) when the twin uses them."""
        if not self.use_behavior:
            return images
        if behavior is None:
            raise ValueError("this twin uses behavior channels; pass behavior=(batch, [frame,] n_behavior)")
        channels = jnp.broadcast_to(behavior[..., None, None, :], images.shape[:-1] + behavior.shape[-1:])
        return jnp.concatenate([images, channels.astype(images.dtype)], axis=-1)

    def shift(self, session: int, pupil_center: jax.Array | None) -> jax.Array | None:
        """Readout grid shift (b, [t,] 2) from the session's shifter, or None without shifters."""
        if self.shifters is None:
            return None
        if pupil_center is None:
            raise ValueError("this twin has a shifter; pass pupil_center=(batch, [frame,] 2)")
        return self.shifters[session](pupil_center)

    def target_responses(
        self,
        images: jax.Array,
        session: int = 0,
        *,
        neurons: jax.Array,
        behavior: jax.Array | None = None,
        pupil_center: jax.Array | None = None,
    ) -> jax.Array:
        """(b,) response of neuron ``neurons[i]`` to image i: ``self(images)[i, neurons[i]]``; for a
        video twin (b, t): ``self(images)[i, :, neurons[i]]``, each video run through the whole core.

        images: (b, [t,] y, x, channel); neurons: (b,) int; behavior, pupil_center as __call__. In eval
        mode with a Gaussian readout, each neuron reads one bilinear (2, 2) patch, so the core runs
        on that patch's receptive field only (a 28 x 28 input window for the Sensorium core instead
        of the 36 x 64 image: ~9x fewer FLOPs, same values to float rounding). Otherwise each
        image runs the whole core and reads out its one neuron.
        """
        readout, core = self.readouts[session], self.core
        gaussian = isinstance(readout, GaussianReadout)
        if gaussian and not readout.deterministic:
            raise ValueError("target_responses reads fixed readout points: call model.eval() first")
        if self.video or not (gaussian and all(layer.norm.use_running_average for layer in core.layers)):

            def one(image, neuron, extra):
                extra = {k: v[None] for k, v in extra.items()}
                return self(image[None], session, neurons=neuron[None], **extra)[0, ..., 0]

            extra = {"behavior": behavior, "pupil_center": pupil_center}
            return jax.vmap(one)(images, neurons, {k: v for k, v in extra.items() if v is not None})

        x = self.core_input(images, behavior)
        map_h, map_w, _ = core.output_shape(x.shape[1:3])
        # The readout point as GaussianReadout computes it (eval mode: mu, then the shift).
        grid = readout.grid_means(neurons)
        shift = self.shift(session, pupil_center)
        if shift is not None:
            grid = grid + shift
        x0, y0, fx, fy = grid_corners(grid, map_h, map_w)

        # Input window of the map window rows y0 - halo .. y0 + 1 + halo (and columns likewise):
        # in the image padded by `lead`, it starts at (y0 + 1, x0 + 1) for any readout point
        # inside the map (y0, x0 >= -1). Points outside are clamped and then masked to zero.
        halo, kernel = core.halo, core.input_kernel
        lead = halo + 1 + (kernel // 2 if core.pad_input else 0)
        size = 2 + 2 * halo + kernel - 1
        padded = jnp.pad(x, ((0, 0), (lead, lead), (lead, lead), (0, 0)))
        windows = jax.vmap(
            lambda image, y, x: jax.lax.dynamic_slice(image, (y + 1, x + 1, 0), (size, size, image.shape[-1]))
        )(padded, y0, x0)
        offsets = jnp.arange(2 + 2 * halo) - halo
        rows = (y0[:, None] + offsets >= 0) & (y0[:, None] + offsets < map_h)
        cols = (x0[:, None] + offsets >= 0) & (x0[:, None] + offsets < map_w)
        inside = (rows[:, :, None] & cols[:, None, :]).astype(x.dtype)
        patch = core.window(windows, inside)  # (b, 2, 2, c)

        features = readout.features[...][neurons]
        value = jnp.einsum("bijc,bij,bc->b", patch, bilinear_weights(fx, fy), features)
        value = value + readout.bias[...][neurons]
        if self.gains is None:
            return OUTPUTS[self.output](value)
        gains = jax.vmap(lambda b, n: self.gain(session, b, n[None])[0])(behavior, neurons)  # image i, neuron i
        return OUTPUTS[self.output](value) * gains

    def regularizer(self, session: int = 0) -> jax.Array:
        """Laplace-L2 on the first layer (x gamma_input) + the session readout's L1 (x gamma_readout)."""
        return self.core.regularizer() + self.readouts[session].regularizer()


def behavior_gains(config: ModelConfig, readouts: list[ReadoutSpec]) -> nnx.List:
    """One BehaviorGain per session; ConfigError when a session has no behavior."""
    if any(spec.behavior_mean is None for spec in readouts):
        raise ConfigError(
            "config [model].behavior_gain = true needs behavior (a behavior variable) in every session"
            " store; set it to false or add the behavior"
        )
    return nnx.List([BehaviorGain(spec.behavior_mean, spec.n_neurons) for spec in readouts])


class Ensemble(nnx.Module):
    """Twins of different seeds held as one Twin whose variables carry a leading member axis.

    ``members``: a Twin with every array stacked along axis 0 (size ``size``). Calls run the
    members with nnx.vmap; ``__call__`` returns the member mean (b, n), ``member_outputs`` all of
    them (members, b, n).
    """

    def __init__(self, members: Twin, size: int):
        self.members = members
        self.size = size

    def member_outputs(
        self,
        images: jax.Array,
        session: int = 0,
        *,
        behavior: jax.Array | None = None,
        pupil_center: jax.Array | None = None,
        neurons: jax.Array | None = None,
    ) -> jax.Array:
        """(members, b, n or k): every member's prediction (same arguments as Twin.__call__)."""

        @nnx.vmap(in_axes=(0, None, None, None, None), out_axes=0)
        def run(model, images, behavior, pupil_center, neurons):
            return model(images, session, behavior=behavior, pupil_center=pupil_center, neurons=neurons)

        return run(self.members, images, behavior, pupil_center, neurons)

    def __call__(
        self,
        images: jax.Array,
        session: int = 0,
        *,
        behavior: jax.Array | None = None,
        pupil_center: jax.Array | None = None,
        neurons: jax.Array | None = None,
    ) -> jax.Array:
        """(b, n or k): the member mean of Twin.__call__."""
        outputs = self.member_outputs(
            images, session, behavior=behavior, pupil_center=pupil_center, neurons=neurons
        )
        return outputs.mean(axis=0)

    def regularizer(self, session: int = 0) -> jax.Array:
        """(members,): each member's Twin.regularizer(session)."""

        @nnx.vmap(in_axes=0, out_axes=0)
        def run(model):
            return model.regularizer(session)

        return run(self.members)

    def member(self, index: int) -> Twin:
        """A standalone copy of member ``index``."""
        graphdef, state = nnx.split(self.members)
        return nnx.merge(graphdef, jax.tree.map(lambda x: x[index], state))

    @property
    def n_neurons(self) -> list[int]:
        """Neurons per session."""
        return self.members.n_neurons


def stack_twins(models: list[Twin]) -> Ensemble:
    """An Ensemble from Twins of identical structure (e.g. trained separately)."""
    graphdef, _ = nnx.split(models[0])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(m) for m in models])
    return Ensemble(nnx.merge(graphdef, stacked), len(models))


def make_ensemble(
    config: ModelConfig,
    in_channels: int,
    image_shape: tuple[int, int],
    readouts: list[ReadoutSpec],
    n_behavior: int,
    seeds: list[int],
    output: str = "elu1",
) -> Ensemble:
    """One Twin per seed (each exactly ``Twin(..., output=output, rngs=nnx.Rngs(seed))``), stacked."""
    return stack_twins(
        [
            Twin(config, in_channels, image_shape, readouts, n_behavior, output=output, rngs=nnx.Rngs(seed))
            for seed in seeds
        ]
    )
