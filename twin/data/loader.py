"""Sessions in memory and their batches: numpy only, normalized with the stored statistics.

``load_session`` reads a whole store chunk by chunk into float32 arrays (images channels-last)
and normalizes them once, as neuralpredictors' NeuroNormalizer does: images (x - mean) / std
(global or per pixel), responses divided by their train std floored at
``DataConfig.response_std_floor`` times the mean std, behavior divided by its std, pupil center
standardized. ``batches`` then only indexes these arrays with a permutation per epoch.

Video sessions carry a frame axis after trial (images (trial, frame, y, x, channel)); their
batches hold clips of ``clip_frames`` frames or whole trials, padding masked.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from twin.config import DataConfig
from twin.data.schema import TIERS, is_video, pixel_range, responses_recorded, strings, unit_ids, validate
from twin.data.store import load_values, open_session
from twin.errors import ConfigError, SessionError
from twin.metrics import scored_frames


@dataclasses.dataclass
class SessionData:
    """One session in memory, normalized.

    images: (trial, y, x, channel) float32; responses: (trial, neuron) float32, divided by
    response_std (neuron,); tier, image_id: (trial,); behavior: (trial, k) | None;
    pupil_center: (trial, 2) | None; unit_id: (neuron,) int64 or str (``twin.data.schema.unit_ids``);
    cell_xyz: (neuron, 3) | None.
    image_mean, image_std: float32 arrays broadcasting against one image in the layout of
    ``normalize_images``: () or (y, x) for one channel; (channel,) or (y, x, channel) for several;
    in pixel levels 0..255 (the store's pixel_range mapped onto 0..255), the units of MEI recipes,
    masks and rig images. image_min, image_max: the range of the train images (pixel levels).
    response_offset: (neuron,) what ``--shift-responses`` subtracted at import, or None.
    Responses are NaN where not recorded: trials with no response at all (e.g. final_test) are
    left out of ``trials``, and so are the train trials ``set_aside`` (trial,) by
    ``DataConfig.train_fraction``; ``masked`` says some other trials miss some neurons, so batches carry
    a mask.
    A video session has a frame axis after trial: images (trial, frame, y, x, channel),
    responses (trial, frame, neuron) (NaN on padding frames), behavior (trial, frame, k),
    pupil_center (trial, frame, 2); frame_count (trial,) int64 recorded frames per trial and
    frame_rate (Hz); both None for an image session.
    """

    name: str
    path: str
    images: np.ndarray
    responses: np.ndarray
    response_std: np.ndarray
    tier: np.ndarray
    image_id: np.ndarray
    behavior: np.ndarray | None
    pupil_center: np.ndarray | None
    unit_id: np.ndarray
    cell_xyz: np.ndarray | None
    image_mean: np.ndarray
    image_std: np.ndarray
    image_min: float = 0.0
    image_max: float = 255.0
    behavior_names: tuple[str, ...] = ()
    response_offset: np.ndarray | None = None
    masked: bool = False
    set_aside: np.ndarray | None = None
    frame_count: np.ndarray | None = None
    frame_rate: float | None = None
    burn_in: int = 0

    @property
    def video(self) -> bool:
        return self.frame_count is not None

    def scored(self, trials: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
        """(ids (m,), *rows (m, n)): what is scored of ``values`` (k, n) for ``trials`` (k,) of an
        image session (rows = trials, ids = image_id), or of ``values`` (k, frame, n) of a video
        session: each trial's recorded frames from ``burn_in`` on (twin.metrics.scored_frames),
        ids the same for the same frame of the same video, so repeat metrics average frame by frame."""
        if not self.video:
            return (self.image_id[trials], *values)
        check_burn_in(self)
        frames = values[0].shape[1]
        trial, frame, ids = scored_frames(self.frame_count[trials], self.image_id[trials], frames, self.burn_in)
        return (ids, *(v[trial, frame] for v in values))

    @property
    def n_neurons(self) -> int:
        return self.responses.shape[-1]

    @property
    def image_shape(self) -> tuple[int, int]:
        """(y, x)."""
        return self.images.shape[-3:-1]

    @property
    def channels(self) -> int:
        return self.images.shape[-1]

    def normalize_images(self, pixels) -> np.ndarray:
        """Pixel units -> normalized: (..., y, x) for one channel, (..., y, x, channel) for several."""
        pixels = np.asarray(pixels, dtype=np.float32)
        return ((pixels - self.image_mean) / self.image_std).astype(np.float32)

    def denormalize_images(self, z) -> np.ndarray:
        """Normalized -> pixel units, the inverse of ``normalize_images`` (same layouts)."""
        return (np.asarray(z, dtype=np.float32) * self.image_std + self.image_mean).astype(np.float32)

    @property
    def pixel_range(self):
        """(lo, hi): the train images' pixel range in normalized units; floats for global
        normalization of one channel, else arrays shaped like image_mean."""
        lo, hi = self.normalize_images(self.image_min), self.normalize_images(self.image_max)
        return (float(lo), float(hi)) if lo.ndim == 0 else (lo, hi)

    @property
    def mean_response(self) -> np.ndarray:
        """(neuron,) mean over train trials (finite responses; recorded frames of videos), normalized units."""
        return np.nanmean(self.responses[self.trials("train")].reshape(-1, self.n_neurons), axis=0)

    def train_means(self) -> dict[str, np.ndarray | None]:
        """{"behavior": (k,), "pupil_center": (2,)}: each averaged over the train trials (and the
        recorded frames of a video session, not its padding), None where the session has none.
        Predictions and MEIs hold them there."""
        train = self.trials("train")
        shown = None
        if self.video:
            shown = np.arange(self.images.shape[1]) < self.frame_count[train, None]
        return {
            name: None if values is None else (values[train] if shown is None else values[train][shown]).mean(0)
            for name, values in (("behavior", self.behavior), ("pupil_center", self.pupil_center))
        }

    @functools.cached_property
    def recorded(self) -> np.ndarray:
        """(trial,) bool: the trial has responses (not all NaN); found once, not every epoch."""
        return responses_recorded(self.responses)

    def trials(self, tier: str) -> np.ndarray:
        """Indices (n,) of the trials of ``tier`` that have responses (not all NaN), without the
        train trials set aside by [data].train_fraction."""
        used = self.recorded if self.set_aside is None else self.recorded & ~self.set_aside
        return np.flatnonzero((self.tier == tier) & used)


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch from one session: images (b, y, x, c), responses (b, n), behavior (b, k) | None,
    pupil_center (b, 2) | None, trials (b,) indices into the session's trials; for a ``masked``
    session, mask (b, n) bool, False where a response is missing (its NaN there replaced by 0).
    From a video session every field but trials has a frame axis after b: images (b, t, y, x, c),
    responses (b, t, n), behavior (b, t, k), pupil_center (b, t, 2), and mask (b, t, n) is always
    given (False on padding frames too)."""

    session: int
    images: np.ndarray
    responses: np.ndarray
    behavior: np.ndarray | None
    pupil_center: np.ndarray | None
    trials: np.ndarray
    mask: np.ndarray | None = None


def load_session(path, config: DataConfig = DataConfig()) -> SessionData:
    """Read the session store ``path`` into memory, normalized as ``config`` says."""
    path = Path(path)
    ds = open_session(path)
    # One read per variable (chunk by chunk inside zarr), then checks on the values in memory.
    ds = validate(load_values(ds, path), path)
    dims = ds["images"].dims
    channels_last = "channel" in dims
    prefix = "stats_image" if config.image_normalization == "global" else "stats_image_pixel"
    mean = ds[f"{prefix}_mean"].values.astype(np.float32)
    std = ds[f"{prefix}_std"].values.astype(np.float32)
    if channels_last:
        mean, std = np.moveaxis(mean, 0, -1), np.moveaxis(std, 0, -1)
    std = np.where(std > 0, std, np.float32(1))
    images = ds["images"].values
    images = np.moveaxis(images, dims.index("channel"), -1) if channels_last else images[..., None]
    if channels_last and images.shape[-1] == 1:
        # One channel stored with a channel axis: keep the one-channel layouts () and (y, x).
        mean, std = mean[..., 0], std[..., 0]
        channels_last = False
    images = (images - (mean if channels_last else mean[..., None])) / (
        std if channels_last else std[..., None]
    )

    # Everything after loading speaks pixel levels 0..255: the store's pixel_range (e.g. 0..1)
    # maps onto them here; normalized images are the same whatever the store's range.
    lo, hi = pixel_range(ds, path)
    level = np.float32(255 / (hi - lo))

    response_std = ds["stats_response_std"].values.astype(np.float32)
    floor = np.float32(config.response_std_floor * response_std.mean())
    response_std = np.maximum(response_std, floor) if floor > 0 else np.ones_like(response_std)
    responses = ds["responses"].values / response_std
    recorded = responses_recorded(responses)

    behavior = pupil_center = None
    behavior_names = ()
    if "behavior" in ds:
        behavior_std = ds["stats_behavior_std"].values
        behavior = ds["behavior"].values / np.where(behavior_std > 0, behavior_std, 1)
        behavior_names = tuple(strings(ds["behavior_var"].values))
    if "pupil_center" in ds:
        eye_std = ds["stats_pupil_center_std"].values
        pupil_center = (ds["pupil_center"].values - ds["stats_pupil_center_mean"].values) / np.where(
            eye_std > 0, eye_std, 1
        )
    tier = strings(ds["tier"].values)
    image_id = ds["image_id"].values.astype(np.int64)
    video = is_video(ds)
    cell_xyz = None
    if all(f"cell_{a}" in ds for a in "xyz"):
        cell_xyz = np.stack([ds[f"cell_{a}"].values for a in "xyz"], axis=1).astype(np.float32)
    return SessionData(
        name=str(ds.attrs.get("session") or path.name.removesuffix(".zarr")),
        path=str(path),
        images=np.ascontiguousarray(images, dtype=np.float32),
        responses=np.ascontiguousarray(responses, dtype=np.float32),
        response_std=response_std,
        tier=tier,
        image_id=image_id,
        behavior=None if behavior is None else behavior.astype(np.float32),
        pupil_center=None if pupil_center is None else pupil_center.astype(np.float32),
        unit_id=unit_ids(ds["unit_id"].values),
        cell_xyz=cell_xyz,
        image_mean=((mean - lo) * level).astype(np.float32),
        image_std=(std * level).astype(np.float32),
        image_min=float((ds["stats_image_min"].values - lo) * level),
        image_max=float((ds["stats_image_max"].values - lo) * level),
        behavior_names=behavior_names,
        response_offset=ds["response_offset"].values.astype(np.float32) if "response_offset" in ds else None,
        masked=bool(np.isnan(responses[recorded]).any()),
        set_aside=train_set_aside(tier, image_id, config),
        frame_count=ds["frame_count"].values.astype(np.int64) if video else None,
        frame_rate=float(ds.attrs["frame_rate"]) if video else None,
        burn_in=config.burn_in_frames if video else 0,
    )


def check_burn_in(data: SessionData) -> None:
    """ConfigError when [data].burn_in_frames leaves no frame of the video session ``data`` to score."""
    longest = int(data.frame_count.max())
    if data.burn_in >= longest:
        raise ConfigError(
            f"{data.path}: [data].burn_in_frames = {data.burn_in} leaves no frame to score (its trials have"
            f" at most {longest} recorded frames); set it below {longest}"
        )


def train_set_aside(tier: np.ndarray, image_id: np.ndarray, config: DataConfig) -> np.ndarray | None:
    """(trial,) bool: the train trials whose image is outside the first ``config.train_fraction``
    of the train images in a permutation seeded by ``config.shuffle_seed`` (so smaller fractions
    are subsets of larger ones); None when the fraction is 1."""
    if config.train_fraction >= 1:
        return None
    train = tier == "train"
    images = np.unique(image_id[train])
    order = np.random.default_rng([config.shuffle_seed, len(images)]).permutation(images)
    kept = order[: max(1, round(config.train_fraction * len(images)))]
    return train & ~np.isin(image_id, kept)


def load_sessions(paths: Sequence, config: DataConfig = DataConfig()) -> list[SessionData]:
    """``load_session`` for each path; every session must have the same image shape (y, x, c),
    and all are videos or none (videos may differ in frames)."""
    sessions = [load_session(path, config) for path in paths]
    first, last = sessions[0], sessions[-1]
    if len({s.images.shape[-3:] for s in sessions}) > 1:
        raise SessionError(
            f"{last.path}: variable 'images' is {last.images.shape[-3:]} (y, x, c)"
            f" but {first.path} has {first.images.shape[-3:]}; fit sessions with one"
            " image shape together"
        )
    if len({s.video for s in sessions}) > 1:
        video = next(s for s in sessions if s.video)
        still = next(s for s in sessions if not s.video)
        raise SessionError(
            f"{still.path}: variable 'images' has no frame dim but {video.path} is a video session;"
            " fit image and video sessions separately"
        )
    return sessions


def batches(
    sessions: Sequence[SessionData],
    tier: str,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    clip_frames: int | None = None,
) -> Iterator[Batch]:
    """One epoch of batches of ``tier`` over all sessions.

    Each session's trials are split into batches (in a random order per ``seed`` when
    ``shuffle``); batches then alternate between sessions until all are used, so every trial
    appears exactly once. ``drop_last`` leaves out each session's final short batch.
    Video sessions give whole trials (all the session's frames, padding masked) when
    ``clip_frames`` is None, else per trial a clip of min(clip_frames, session frames) frames
    starting at a frame drawn from the epoch's ``seed`` in 0..frame_count - clip (0 for trials
    shorter than the clip, whose clip ends in masked padding). Image sessions ignore ``clip_frames``.
    """
    if tier not in TIERS:
        raise ConfigError(f"tier {tier!r}: use one of {', '.join(TIERS)}")
    if batch_size < 1:
        raise ConfigError(f"[data].batch_size = {batch_size}: use a positive number")
    if clip_frames is not None and clip_frames < 1:
        raise ConfigError(f"[data].clip_frames = {clip_frames}: use a positive number")
    rng = np.random.default_rng(seed)
    plans = []
    for session in sessions:
        trials = session.trials(tier)
        if shuffle:
            trials = rng.permutation(trials)
        frames = None
        if session.video and clip_frames is not None:
            clip = min(clip_frames, session.responses.shape[1])
            starts = rng.integers(0, np.maximum(session.frame_count[trials] - clip, 0) + 1)
            frames = starts[:, None] + np.arange(clip)
        stop = len(trials) - len(trials) % batch_size if drop_last else len(trials)
        parts = [slice(i, i + batch_size) for i in range(0, stop, batch_size)]
        plans.append((trials, frames, parts))
    for step in range(max((len(parts) for *_, parts in plans), default=0)):
        for index, (all_trials, all_frames, parts) in enumerate(plans):
            if step < len(parts):
                session, trials = sessions[index], all_trials[parts[step]]
                # Whole trials, or one clip (t,) of frames per trial.
                at = trials if all_frames is None else (trials[:, None], all_frames[parts[step]])
                responses, mask = session.responses[at], None
                if session.masked or session.video:
                    mask = np.isfinite(responses)
                    responses = np.where(mask, responses, np.float32(0))
                yield Batch(
                    session=index,
                    images=session.images[at],
                    responses=responses,
                    behavior=None if session.behavior is None else session.behavior[at],
                    pupil_center=None if session.pupil_center is None else session.pupil_center[at],
                    trials=trials,
                    mask=mask,
                )
