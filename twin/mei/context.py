"""Images in context: surrounds around a fixed centre, and transparent MEIs over a background.

- Centre-surround (Fu et al. 2023): each neuron's centre stays fixed (its MEI inside the tight
  mask, or an image patch on the mean gray inside its Walker mask) and the surround alone is
  optimized to excite or to suppress the neuron. The surround's effect is the ratio of the
  response to centre and surround to the response to the centre alone on the mean gray.
- Transparency (sinzlab/mei): an image and its per-pixel opacity are optimized together over a
  background drawn each step from a bank (mean gray, noise or natural images), the loss being
  -activation + opacity_penalty x the mean opacity, so what the neuron needs stays opaque.

Both run in the MEI engine (``optimize_meis`` with ``centre`` or ``backgrounds``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from twin.config import MEIConfig
from twin.errors import ConfigError
from twin.mei.masks import THRESHOLD, walker_mask
from twin.mei.optimize import MEIResult, evaluate_pairs, is_video, neuron_objective, optimize_meis

DIRECTIONS = ("excite", "suppress")
GRAY = ("grey", "gray")  # --background names of the mean gray
BACKGROUNDS = 64  # images in a background bank; a seeded random subset of a larger set


@dataclasses.dataclass(frozen=True)
class SurroundResult:
    """Surrounds of ``n`` neurons x ``seeds``: ``result.images`` are centre and surround
    together, ``result.activations`` the responses to them (best_seed: the highest for excite,
    the lowest for suppress)."""

    result: MEIResult
    surround: np.ndarray  # (n, seeds, [frame,] [channel,] y, x) images - mask * centre: 0 where the mask is 1
    centre_mask: np.ndarray  # (n, y, x) in [0, 1], of a clip the same on every frame
    centre_alone: np.ndarray  # (n, [frame,] [channel,] y, x) mask * centre: the centre on the mean gray
    centre_activation: np.ndarray  # (n,) response to centre_alone

    @property
    def ratio(self) -> np.ndarray:
        """(n,) response to the chosen centre and surround / response to the centre alone."""
        return self.result.best_activations() / self.centre_activation


def per_pair_mask(masks: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Masks (n, y, x) shaped to multiply images (n, ..., [channel,] y, x)."""
    return masks.reshape(masks.shape[:1] + (1,) * (images.ndim - 3) + masks.shape[1:])


def surround_inputs(
    model, session: int, neurons, config: MEIConfig, *, centre: np.ndarray, centre_mask: np.ndarray,
    direction: str, behavior=None, pupil_center=None, devices=None, **kwargs,
) -> SurroundResult:
    """Surrounds that ``direction`` ("excite" or "suppress") ``neurons (n,)`` around their fixed
    ``centre (n, [channel,] y, x)`` (normalized units) inside ``centre_mask (n, y, x)``. Other
    keyword arguments as optimize_meis (image_shape, pixel_range, image_stats, validator, ...).
    For a video model the surround is a clip of ``config.frames`` frames around a centre clip
    (n, frame, [channel,] y, x), or around the centre image shown on every frame."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r}: use one of {DIRECTIONS}")
    neurons = np.asarray(neurons, np.int64).reshape(-1)
    centre = np.asarray(centre, np.float32)
    window = None
    if is_video(model):
        window = config.response_window
        if centre.ndim == len(kwargs["image_shape"]) + 1:
            centre = np.broadcast_to(centre[:, None], (len(centre), config.frames, *centre.shape[1:]))
    base = neuron_objective(session, behavior, pupil_center, window)
    objective = base
    if direction == "suppress":
        objective = lambda model, images, targets: -base(model, images, targets)  # noqa: E731
    result = optimize_meis(
        model, session, neurons, config, centre=(centre, centre_mask), objective=objective,
        behavior=behavior, pupil_center=pupil_center, devices=devices, **kwargs,
    )
    if direction == "suppress":
        validator = result.validator_activations
        result = dataclasses.replace(
            result,
            activations=-result.activations,
            validator_activations=None if validator is None else -validator,
        )
    alone = per_pair_mask(centre_mask, centre) * centre
    centre_activation = evaluate_pairs(
        model, base, alone.astype(np.float32), {"neuron": neurons.astype(np.int32)}, devices=devices
    )
    inside = per_pair_mask(centre_mask, result.images) * centre[:, None]
    return SurroundResult(result, result.images - inside, centre_mask, alone, centre_activation)


def check_centre_store(path, ds, run, session: int, unit_id: np.ndarray, image_shape, channels: int,
                       neurons: np.ndarray | None) -> np.ndarray:
    """Rows (k,) of the MEI store ``ds`` (read from ``path``) holding the centres of ``neurons``
    (k,) (None: all its neurons), after checking that it was made from this ``run`` and
    ``session`` (unit ids ``unit_id``, images (y, x) ``image_shape`` of ``channels``); one
    ConfigError line naming the store, the variable and the fix otherwise."""
    where = f"--centre {path}"
    if "surround" in ds.attrs or "opacity" in ds:
        raise ConfigError(f"{where}: holds surround or transparent images; pass a store of plain MEIs (twin mei)")
    made_by = ds.attrs.get("run")
    if made_by is None or Path(made_by).resolve() != Path(run).resolve():
        raise ConfigError(
            f"{where}: attribute run is {made_by!r}, not {run}; pass MEIs made by twin mei {run}"
        )
    if int(ds.attrs.get("session", -1)) != session:
        raise ConfigError(
            f"{where}: attribute session is {ds.attrs.get('session')!r}, not {session}; pass MEIs of"
            f" session {session} or --session {ds.attrs.get('session')}"
        )
    shape = tuple(int(s) for s in ds["images"].shape[-2:])
    store_channels = int(ds.sizes.get("channel", 1))
    if shape != tuple(image_shape) or store_channels != channels:
        raise ConfigError(
            f"{where}: variable images holds {store_channels}-channel {shape[0]}x{shape[1]} images but"
            f" the run's are {channels}-channel {image_shape[0]}x{image_shape[1]}; make the MEIs with this run"
        )
    index = ds["neuron_index"].values.astype(np.int64)
    if len(index) and (index.max() >= len(unit_id) or np.any(ds["unit_id"].values != unit_id[index])):
        raise ConfigError(
            f"{where}: variable unit_id does not match the neurons of session {session} of {run};"
            " make the MEIs with this run"
        )
    if neurons is None:
        return np.arange(len(index))
    rows = {int(n): r for r, n in enumerate(index)}
    missing = [int(n) for n in neurons if int(n) not in rows]
    if missing:
        raise ConfigError(
            f"{where}: variable neuron_index lacks neuron {missing[0]} of --neurons; leave --neurons out"
            " (the store's neurons) or make the MEIs of these neurons first"
        )
    return np.array([rows[int(n)] for n in neurons], np.int64)


def patch_masks(path, names: np.ndarray, pixels: np.ndarray, mean) -> np.ndarray:
    """Walker masks (n, y, x) of centre patches ``pixels (n, [channel,] y, x)`` on the mean gray
    ``mean`` (pixel levels; a number or broadcasting against one image); a ConfigError for a
    patch that leaves no surround or does not differ from the gray."""
    masks = np.stack([walker_mask(image, mean) for image in pixels]).astype(np.float32)
    for name, mask in zip(names, masks):
        if not mask.any():
            raise ConfigError(
                f"--centre {path}: image {name} nowhere differs from the mean gray by {THRESHOLD:g}"
                " levels; give an image patch on the mean gray"
            )
        if not (mask < 0.5).any():
            raise ConfigError(
                f"--centre {path}: image {name} differs from the mean gray everywhere and leaves no"
                " surround; give an image patch on the mean gray"
            )
    return masks


def background_bank(spec: str, open_images, prepare, image_shape, pixel_range, seed: int = 0) -> np.ndarray:
    """(k, *image_shape) backgrounds in normalized units for ``--background spec``: the mean gray
    (one image of 0), "noise" (BACKGROUNDS white-noise images with the training images' contrast,
    std 1 in normalized units, clipped to ``pixel_range``), or natural images: ``open_images(spec)``
    gives a source (len, block(start, stop) -> pixel-level images, twin.data.sources) of which a
    seeded random subset of BACKGROUNDS is read (all when fewer) and ``prepare(images)`` normalizes
    it to the engine layout."""
    rng = np.random.default_rng(seed)
    if spec in GRAY:
        return np.zeros((1, *image_shape), np.float32)
    if spec == "noise":
        noise = rng.normal(0.0, 1.0, (BACKGROUNDS, *image_shape))
        return np.clip(noise, *pixel_range).astype(np.float32)
    if not Path(spec).exists():
        raise ConfigError(
            f"--background {spec}: no such file or folder; give grey, noise, or natural images (.npy, a"
            " folder or .zip of image files, or a session store)"
        )
    source = open_images(spec)
    count = len(source)
    pick = np.sort(rng.choice(count, BACKGROUNDS, replace=False)) if count > BACKGROUNDS else range(count)
    return prepare([source.block(i, i + 1)[0] for i in pick]).astype(np.float32)
