"""Batched gradient ascent: every (neuron, seed) pair in one jitted program.

The eval-mode model is split with ``nnx.split`` and merged inside a pure function; the steps run in
``lax.while_loop`` (all pairs step together; the loop ends when every pair has stopped or after
``steps``). Each image is paired with its own target neuron and the model reads out that neuron
only, never all targets for every image; a Twin computes it from the neuron's receptive field
alone (Twin.target_responses). Pairs are sharded over all devices (of all hosts after
twin.distributed.initialize) and cut into chunks that fit device memory.

Video models (``video`` attribute True, ``is_video``) get most exciting videos: clips of
``config.frames`` frames, (p, frame, [channel,] y, x) in the engine, through the same program;
each pair's value is its neuron's response averaged over the last ``config.response_window``
frames.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from twin import distributed
from twin.config import MEIConfig
from twin.errors import ConfigError
from twin.mei import ops
from twin.mei.params import Parametrization
from twin.models.twin import Ensemble, Twin
from twin.precision import set_precision

# objective(model, images (p, [frame,] [channel,] y, x), targets {name: (p, ...)}) -> (p,) values to maximize.
Objective = Callable[[nnx.Module, jax.Array, dict], jax.Array]


@dataclasses.dataclass(frozen=True)
class MEIResult:
    """MEIs of ``n`` neurons x ``seeds`` initializations, in normalized image units (clips of a
    video model: images (n, seeds, frame, [channel,] y, x))."""

    images: np.ndarray  # (n, seeds, [frame,] [channel,] y, x)
    activations: np.ndarray  # (n, seeds) generator's response to the final image
    best_seed: np.ndarray  # (n,) by the validator if given, else by the generator
    steps: np.ndarray  # (n, seeds) steps each pair ran before stopping
    validator_activations: np.ndarray | None = None  # (n, seeds)
    # Transparent MEIs: images are the foreground under its opacity over the mean gray.
    foreground: np.ndarray | None = None  # (n, seeds, [channel,] y, x)
    opacity: np.ndarray | None = None  # (n, seeds, y, x) in (0, 1)

    def best_images(self) -> np.ndarray:
        """(n, [frame,] [channel,] y, x) the chosen seed's image per neuron."""
        return self.images[np.arange(len(self.best_seed)), self.best_seed]

    def best_activations(self) -> np.ndarray:
        """(n,) the generator's response to the chosen image."""
        return self.activations[np.arange(len(self.best_seed)), self.best_seed]


def fixed_inputs(behavior=None, pupil_center=None) -> dict:
    """Model keyword arguments for one image: behavior (1, k) and pupil_center (1, 2) held fixed
    (e.g. at their training means); empty when not given."""
    extra = {}
    if behavior is not None:
        extra["behavior"] = jnp.asarray(behavior, jnp.float32).reshape(1, -1)
    if pupil_center is not None:
        extra["pupil_center"] = jnp.asarray(pupil_center, jnp.float32).reshape(1, 2)
    return extra


def is_video(model: nnx.Module) -> bool:
    """Whether ``model`` (a Twin, an Ensemble of them, or anything with the Twin call signature)
    takes clips: its ``video`` attribute (an Ensemble's members'), False when it has none."""
    return bool(getattr(getattr(model, "members", model), "video", False))


def model_input(images: jax.Array, video: bool = False) -> jax.Array:
    """Engine images (p, y, x) or (p, channel, y, x) -> the model's (p, y, x, channel); with
    ``video``, clips (p, frame, y, x) or (p, frame, channel, y, x) -> (p, frame, y, x, channel)."""
    channel = 2 if video else 1
    return images[..., None] if images.ndim == channel + 2 else jnp.moveaxis(images, channel, -1)


def neuron_objective(session: int = 0, behavior=None, pupil_center=None, window: int | None = None) -> Objective:
    """Response of neuron ``targets["neuron"][i]`` to image i (one neuron read out per image).

    A Twin computes it on each neuron's receptive field only (Twin.target_responses); other
    models with the Twin call signature run each image on its own and read out its neuron.
    window: None for images; for clips (p, frame, [channel,] y, x) of a video model, the response
    (frame,) averaged over the last ``window`` frames, with behavior and pupil centre held on
    every frame.
    """
    extra = fixed_inputs(behavior, pupil_center)
    video = window is not None

    def objective(model, images, targets):
        neurons = targets["neuron"]
        if isinstance(model, Twin) and not video:
            batch = {k: jnp.broadcast_to(v, (len(images), v.shape[1])) for k, v in extra.items()}
            return model.target_responses(model_input(images), session, neurons=neurons, **batch)

        def one(image, neuron):
            if not video:
                return model(model_input(image[None]), session, neurons=neuron[None], **extra)[0, 0]
            frames = image.shape[0]
            held = {k: jnp.broadcast_to(v[:, None], (1, frames, v.shape[1])) for k, v in extra.items()}
            response = model(model_input(image[None], video=True), session, neurons=neuron[None], **held)
            return response[0, frames - window :, 0].mean()

        return jax.vmap(one)(images, neurons)

    return objective


def pair_keys(seed: int, neurons: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """(p, 2) uint32 key of each (neuron, seed index) pair: the same pair gets the same key
    however pairs are batched, chunked or sharded."""
    base = jax.random.PRNGKey(seed)
    keys = jax.vmap(lambda n, s: jax.random.fold_in(jax.random.fold_in(base, n), s))(
        jnp.asarray(neurons, jnp.uint32), jnp.asarray(seeds, jnp.uint32)
    )
    return np.asarray(keys)


def split_model(model: nnx.Module):
    """(graphdef, state, stacked) of an eval-mode copy of ``model`` (the caller's model is not
    touched). For an Ensemble it is the split of the stacked members (``stacked`` True): members
    are then vmapped with jax.vmap in ``apply_model``, since nnx.vmap cannot run inside the
    per-pair vmap."""
    copy = nnx.merge(*nnx.split(model))
    copy.eval()
    if isinstance(copy, Ensemble):
        return (*nnx.split(copy.members), True)
    return (*nnx.split(copy), False)


def apply_model(
    graphdef, state, stacked: bool, fn: Callable[[nnx.Module], jax.Array], precision: str = "float32"
):
    """``fn(model)`` of the merged model, or its mean over the members of a stacked ensemble; the
    model computes in ``precision`` (twin.precision)."""
    if not stacked:
        return fn(set_precision(nnx.merge(graphdef, state), precision))
    return jax.vmap(lambda member: fn(set_precision(nnx.merge(graphdef, member), precision)))(state).mean(axis=0)


def make_ascent(
    graphdef, stacked: bool, objective: Objective, config: MEIConfig, param: Parametrization
):
    """Pure function (state, keys (p, 2), targets, start | None) -> (images (p, *param.shape),
    values (p,), steps (p,)) running the whole recipe for a batch of pairs. For transparent
    images (``param.transparent``) images is a dict: "images" (over the mean gray), "foreground"
    (the image under the opacity) and "opacity" (p, y, x), and the loss adds
    ``config.opacity_penalty`` x the mean opacity. The ascent's objective and gradient run the
    model in ``config.precision``; the returned values are float32's."""
    pixel = not param.fourier
    blur_sigma = ops.schedule(config.blur_sigma, config.final_blur_sigma, config.steps, "linear")
    radius = ops.blur_radius(config.blur_sigma, config.final_blur_sigma)
    # Clips are also blurred along time, with the same target (image or gradient) as in space.
    temporal = param.temporal and config.temporal_blur_sigma > 0
    frame_radius = ops.blur_radius(config.temporal_blur_sigma)

    def blur(values, sigma):
        values = ops.gaussian_blur(values, sigma, radius)
        return ops.temporal_blur(values, config.temporal_blur_sigma, frame_radius) if temporal else values

    tx = ops.optimizer(config)
    if param.transparent:
        labels = {"image": "image", "opacity": "opacity"}
        tx = optax.multi_transform({"image": tx, "opacity": optax.adam(config.opacity_learning_rate)}, labels)
    stopping = config.tolerance > 0

    def image_of(params, targets, keys=None):
        images = param.to_image(params, keys)

        def per_pair(mask):  # one (y, x) mask per pair, shared by its frames and channels
            return jnp.expand_dims(mask, tuple(range(1, images.ndim - 2)))

        if "mask" in targets:
            images = images * per_pair(targets["mask"])
        if "centre" in targets:
            # Surround: the pair's fixed centre where its mask is 1, the optimized image outside.
            inside = per_pair(targets["centre_mask"])
            images = inside * targets["centre"] + (1 - inside) * images
        return images

    def constrain(params, sigma):
        # Walker 2019 order: step, clip to the pixel range, blur the image.
        if config.norm > 0:
            params = ops.set_norm(params, config.norm)
        if config.clip_range:
            params = jnp.clip(params, *param.pixel_range)
        if config.blur_target == "image":
            params = blur(params, sigma)
        return params

    def run(state, keys, targets, start):
        def evaluate(images, precision="float32"):
            return apply_model(graphdef, state, stacked, lambda m: objective(m, images, targets), precision)

        init_keys, loop_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
        params = jax.vmap(param.init)(init_keys) if start is None else start
        n = len(keys)

        def loss(params, step_keys):
            images = image_of(params, targets, step_keys)
            images = ops.random_transform(
                images, step_keys, config.jitter, config.scale_jitter, config.rotate
            )
            values = evaluate(images, config.precision)
            if param.transparent:
                values = values - config.opacity_penalty * param.opacity(params).mean(axis=(1, 2))
            return -values.sum(), values

        def body(carry):
            t, params, opt_state, active, history, steps = carry
            sigma = blur_sigma(t)
            step_keys = jax.vmap(jax.random.fold_in, (0, None))(loop_keys, t)
            gradient, values = jax.grad(loss, has_aux=True)(params, step_keys)
            gradient, opacity_gradient = param.split(gradient)
            ascent = -gradient
            if pixel and config.blur_target == "gradient":
                ascent = blur(ascent, sigma)
            if pixel and config.precondition > 0:
                ascent = ops.precondition(ascent, config.precondition)
            if config.normalize_gradient:
                ascent = ops.normalize_gradient(ascent, config.step_gain * param.pixel_unit)
            updates, new_state = tx.update(param.join(-ascent, opacity_gradient), opt_state, params)
            new_params = optax.apply_updates(params, updates)
            if pixel:
                image_params, opacity_params = param.split(new_params)
                new_params = param.join(constrain(image_params, sigma), opacity_params)

            # Stopped pairs keep their image and optimizer state (a masked update, no host sync).
            def keep(new, old):
                mask = active.reshape(active.shape + (1,) * (new.ndim - 1))
                return jnp.where(mask, new, old) if new.ndim and new.shape[0] == n else new

            params = jax.tree.map(keep, new_params, params)
            opt_state = jax.tree.map(keep, new_state, opt_state)
            steps = steps + active
            if stopping:
                slot = t % config.window
                previous = history[slot]
                gain = (values - previous) / (jnp.abs(previous) + 1e-8)
                active = active & ~((t >= config.window) & (gain < config.tolerance))
                history = history.at[slot].set(values)
            return t + 1, params, opt_state, active, history, steps

        def cond(carry):
            return (carry[0] < config.steps) & jnp.any(carry[3])

        history = jnp.zeros((config.window if stopping else 1, n), jnp.float32)
        carry = (
            jnp.int32(0),
            params,
            tx.init(params),
            jnp.ones(n, bool),
            history,
            jnp.zeros(n, jnp.int32),
        )
        _, params, _, _, _, steps = jax.lax.while_loop(cond, body, carry)
        images = image_of(params, targets)
        values = evaluate(images)
        if param.transparent:
            images = {"images": images, "foreground": param.image(params), "opacity": param.opacity(params)}
        return images, values, steps

    return run


@functools.lru_cache(maxsize=4)
def compiled_ascent(graphdef, stacked: bool, objective: Objective, config: MEIConfig, param: Parametrization):
    """The jitted ``make_ascent``, kept for callers that run the same program again with new
    targets (MDS rounds reuse one compiled program)."""
    return jax.jit(make_ascent(graphdef, stacked, objective, config, param))


def available_bytes(device) -> int:
    """Free memory of ``device``; CPU devices share the host's free RAM equally."""
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return free // len(jax.local_devices())


def auto_chunk_size(fn, args_for, unit: int, n_pairs: int, mesh: jax.sharding.Mesh) -> int:
    """Pairs per chunk that use at most half of every device's free memory, from XLA's memory
    analysis (per device) of the program compiled for a small probe batch; a multiple of
    ``unit``, the same in every process (the smallest any host can hold)."""
    probe = unit * 4
    analysis = jax.jit(fn).lower(*args_for(probe)).compile().memory_analysis()
    used = (
        analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
    ) if analysis is not None else 0
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    # `used` is one device's share of `probe` pairs, so the chunk scales with budget / used.
    budget = 0.5 * min(available_bytes(d) for d in local)
    size = max(unit, int(probe * budget / max(used, 1)) // unit * unit)
    return distributed.agreed_minimum(min(size, math.ceil(n_pairs / unit) * unit))


def run_pairs(
    model: nnx.Module,
    objective: Objective,
    targets: dict[str, np.ndarray],
    keys: np.ndarray,
    config: MEIConfig,
    param: Parametrization,
    *,
    start: np.ndarray | None = None,
    group: int = 1,
    devices=None,
    progress: bool = True,
    desc: str = "MEIs",
):
    """Run the recipe for ``p`` pairs, chunked and sharded.

    targets: per-pair arrays {name: (p, ...)}, e.g. "neuron" (p,), optional "mask" (p, y, x);
    images are (p, *param.shape);
    keys: (p, 2) uint32; start: optional initial parameters (p, ...); group: pairs whose objective
    is coupled (DEIs of one neuron) stay in one chunk; devices: default all devices of all
    processes (every process then makes the same call with the same arguments). Returns numpy
    images (p, *param.shape) (a dict of arrays for transparent images, see make_ascent), values
    (p,), steps (p,), in every process.
    """
    graphdef, state, stacked = split_model(model)
    mesh = distributed.data_mesh(devices)
    n_devices = mesh.devices.size
    unit = math.lcm(group, n_devices)
    n_pairs = len(keys)
    compiled = compiled_ascent(graphdef, stacked, objective, config, param)
    state = distributed.replicate(state, mesh)

    def rows(size: int, first: int):
        """Indices of one chunk; past the end, whole groups of the last pairs are repeated."""
        index = np.arange(first, first + size)
        beyond = index >= n_pairs
        index[beyond] = n_pairs - group + (index[beyond] - n_pairs) % group
        return index

    def chunk_args(index):
        args = [keys[index], {k: v[index] for k, v in targets.items()}]
        args.append(None if start is None else jax.tree.map(lambda a: a[index], start))
        return distributed.shard_batch(args, mesh)

    chunk = config.chunk_size
    if chunk <= 0:
        chunk = auto_chunk_size(
            compiled, lambda size: [state, *chunk_args(rows(size, 0))], unit, n_pairs, mesh
        )
    chunk = math.ceil(chunk / unit) * unit
    starts = range(0, n_pairs, chunk)
    outputs = []
    pending = None
    progress = progress and jax.process_index() == 0
    for first in tqdm(starts, desc=desc, unit="chunk", disable=not progress):
        # Dispatch this chunk before copying the previous one back, so the device never waits.
        dispatched = compiled(state, *chunk_args(rows(chunk, first)))
        if pending is not None:
            outputs.append(distributed.gather(pending))
        pending = dispatched
    outputs.append(distributed.gather(pending))
    return jax.tree.map(lambda *parts: np.concatenate(parts)[:n_pairs], *outputs)


def evaluate_pairs(
    model: nnx.Module,
    objective: Objective,
    images: np.ndarray,
    targets: dict[str, np.ndarray],
    *,
    batch_size: int = 256,
    devices=None,
) -> np.ndarray:
    """(p,) objective values of fixed ``images (p, [frame,] [channel,] y, x)`` (e.g. a validator
    scoring MEIs)."""
    graphdef, state, stacked = split_model(model)
    mesh = distributed.data_mesh(devices)
    state = distributed.replicate(state, mesh)
    batch = math.ceil(min(batch_size, len(images)) / mesh.devices.size) * mesh.devices.size

    @jax.jit
    def score(state, images, targets):
        return apply_model(graphdef, state, stacked, lambda m: objective(m, images, targets))

    out = []
    for first in range(0, len(images), batch):
        index = np.minimum(np.arange(first, first + batch), len(images) - 1)
        part = distributed.shard_batch([images[index], {k: v[index] for k, v in targets.items()}], mesh)
        out.append(distributed.gather(score(state, *part)))
    return np.concatenate(out)[: len(images)]


def optimize_meis(
    model: nnx.Module,
    session: int,
    neurons,
    config: MEIConfig,
    *,
    image_shape: tuple[int, ...],
    pixel_range: tuple[float, float],
    seed: int = 0,
    image_stats=None,
    validator: nnx.Module | None = None,
    mask: np.ndarray | None = None,
    centre: tuple[np.ndarray, np.ndarray] | None = None,
    backgrounds: np.ndarray | None = None,
    behavior=None,
    pupil_center=None,
    objective: Objective | None = None,
    devices=None,
    progress: bool = True,
) -> MEIResult:
    """MEIs of ``neurons (n,)`` of ``session``, ``config.seeds`` initializations each.

    model: anything with the Twin call signature (Twin, Ensemble: objective = member mean, or the
    ground-truth adapter). image_shape: (y, x), or (channel, y, x) for a model of several image
    channels. pixel_range: (lo, hi) valid normalized values; image_stats: (mean, std) in pixel
    levels 0..255 (see Parametrization; without it pixel_range is 0..255). mask: optional (y, x) or
    (n, y, x) multiplied into every image (every channel). centre: (images (n, *image_shape), masks
    (n, y, x) in [0, 1]): only the surround of each neuron's fixed centre is optimized, images
    being mask * centre + (1 - mask) * surround. backgrounds: (k, *image_shape) in normalized units
    for transparent MEIs (see Parametrization), and the result's images are then over the mean
    gray. validator: a distinct model that picks the best seed. objective: per-pair objective (default ``neuron_objective``; see twin.mei.diverse
    for population objectives). devices: defaults to all devices of all processes.

    A video model (``is_video``) gets clips (n, seeds, config.frames, *image_shape), one image
    repeated on every frame with ``config.static``; a centre is then a clip or one image (n,
    *image_shape) shown on every frame; transparent clips are refused.
    """
    frames = config.frames if is_video(model) else 0
    if frames and backgrounds is not None:
        raise ConfigError("--transparency: transparent stimuli are made for image models; drop it for a video model")
    neurons = np.asarray(neurons, np.int64).reshape(-1)
    seeds = config.seeds
    pair_neuron = np.repeat(neurons, seeds)
    pair_seed = np.tile(np.arange(seeds), len(neurons))
    targets = {"neuron": pair_neuron.astype(np.int32)}
    if mask is not None:
        mask = np.broadcast_to(np.asarray(mask, np.float32), (len(neurons), *image_shape[-2:]))
        targets["mask"] = np.repeat(mask, seeds, axis=0)
    if centre is not None:
        fixed = np.asarray(centre[0], np.float32)
        if frames and fixed.ndim == len(image_shape) + 1:
            fixed = np.broadcast_to(fixed[:, None], (len(fixed), frames, *image_shape))
        targets["centre"] = np.repeat(fixed, seeds, axis=0)
        targets["centre_mask"] = np.repeat(np.asarray(centre[1], np.float32), seeds, axis=0)
    param = Parametrization(config, image_shape, pixel_range, image_stats, backgrounds, frames)
    if objective is None:
        objective = neuron_objective(session, behavior, pupil_center, config.response_window if frames else None)
    images, values, steps = run_pairs(
        model, objective, targets, pair_keys(seed, pair_neuron, pair_seed), config, param,
        devices=devices, progress=progress,
    )
    shape = (len(neurons), seeds)
    layers = {}
    if param.transparent:
        layers = {
            "foreground": images["foreground"].reshape(*shape, *image_shape),
            "opacity": images["opacity"].reshape(*shape, *image_shape[-2:]),
        }
        images = images["images"]
    activations = values.reshape(shape)
    scores = activations
    validator_activations = None
    if validator is not None:
        validator_activations = evaluate_pairs(
            validator, objective, images, targets, devices=devices
        ).reshape(shape)
        scores = validator_activations
    return MEIResult(
        images=images.reshape(*shape, *param.shape),
        activations=activations,
        best_seed=np.argmax(scores, axis=1),
        steps=steps.reshape(shape),
        validator_activations=validator_activations,
        **layers,
    )
