"""Recordings from other formats as session Datasets (write them with ``write_session``).

- ``from_arrays``: one .npz file of arrays (no pickles).
- ``from_sensorium``: the Sensorium 2022 (images) or 2023 (videos) / neuralpredictors file tree,
  a folder or a .zip.
- ``shift_responses``: signed responses (dF/F) made non-negative by an explicit, recorded shift.

Both importers take ``pixel_range`` (lo, hi): the image values shown as black and white, for
images whose range cannot be inferred (see ``twin.data.schema.infer_pixel_range``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import xarray as xr

from twin.data.schema import (
    check_tier_labels,
    check_tier_leaks,
    check_unit_ids,
    fail,
    make_session,
    stated_pixel_range,
)
from twin.errors import SessionError

ARRAY_KEYS = (
    "images",
    "responses",
    "tiers",
    "image_ids",
    "behavior",
    "behavior_names",
    "pupil_center",
    "neuron_ids",
    "unit_ids",
    "cell_xyz",
)
ID_KEYS = ("neuron_ids", "unit_ids")  # either names the neurons' ids (integers or strings) in an .npz
# Sensorium 2023 tier names -> session tiers; "none" trials are left out. live_test_* and
# final_test_* (main and bonus tracks) hold the competition's withheld trials.
VIDEO_TIERS = {
    "train": "train", "validation": "validation", "oracle": "test", "test": "test", "final_test": "final_test"
}
VIDEO_TEST_PREFIXES = ("live_test", "final_test")
# Trial files that name each trial's video (same value = same video); the first one present is used.
VIDEO_ID_FILES = ("meta/trials/condition_hash.npy", "meta/trials/video_ids.npy", "meta/trials/frame_image_id.npy")
VIDEO_BEHAVIOR_NAMES = ("pupil", "running")
FRAME_RATE = 30.0  # Hz: Sensorium 2023 resampled every trial to 30 frames per second
# Fractions of distinct images per tier when a recording comes without tiers and no image repeats.
SPLIT = {"train": 0.8, "validation": 0.1, "test": 0.1}
SHIFTS = ("neuron", "global")


def image_ids_from_pixels(images: np.ndarray) -> np.ndarray:
    """(trial,) int64 ids, equal exactly for byte-identical images, numbered by first appearance."""
    digests = [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images]
    ids: dict[bytes, int] = {}
    return np.array([ids.setdefault(d, len(ids)) for d in digests], dtype=np.int64)


def check_image_ids(images: np.ndarray, image_id: np.ndarray, source, name: str) -> None:
    """SessionError when one id of ``image_id (trial,)`` is given to trials whose ``images`` differ
    (repeats, tiers and the oracle would mix different images)."""
    pixel_id = image_ids_from_pixels(images)
    pairs = np.unique(np.stack([np.asarray(image_id).astype(np.int64), pixel_id], 1), axis=0)
    ids, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        fail_id = ids[counts > 1][0]
        raise SessionError(
            f"{source}: variable {name!r} gives id {fail_id} to trials whose images differ; give"
            f" each distinct image its own id, or leave {name} out to derive ids from the pixels"
        )


def split_tiers(image_id: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(trial,) tiers and a sentence saying how they were chosen; all trials of an image share a
    tier.

    When some images are shown more than once (and others once), the repeated images are the
    test tier (the experiment's repeats give the oracle and FEVE) and the others are split
    seeded 8:1 into train/validation. Otherwise the distinct images are split seeded 80/10/10
    (at least one test image) and the test tier has no repeats.
    """
    unique, counts = np.unique(image_id, return_counts=True)
    repeated = counts > 1
    rng = np.random.default_rng(seed)
    if repeated.any() and not repeated.all():
        rest = rng.permutation(unique[~repeated])
        n_validation = round(SPLIT["validation"] / (1 - SPLIT["test"]) * len(rest))
        labels = ["test"] * int(repeated.sum()) + ["validation"] * n_validation
        labels += ["train"] * (len(rest) - n_validation)
        order = np.concatenate([unique[repeated], rest])
        note = (
            f"twin import: the {int(repeated.sum())} images shown more than once are the test tier;"
            f" the other images split train/validation by image (seed {seed})"
        )
    else:
        order = rng.permutation(unique)
        n_test = max(1, round(SPLIT["test"] * len(order)))
        n_validation = round(SPLIT["validation"] * len(order))
        labels = ["test"] * n_test + ["validation"] * n_validation
        labels += ["train"] * (len(order) - len(labels))
        note = f"twin import: seeded split by image (seed {seed}); " + (
            "every image repeats, so every tier holds repeats"
            if repeated.any()
            else "no image repeats, so the test tier has no repeats (oracle and FEVE are n/a)"
        )
    lookup = dict(zip(order.tolist(), labels))
    return np.array([lookup[i] for i in image_id.tolist()], dtype=object), note


def shift_responses(ds: xr.Dataset, how: str) -> xr.Dataset:
    """``ds`` with responses made non-negative by subtracting each neuron's minimum
    (``how="neuron"``) or the minimum over all neurons (``how="global"``).

    The subtracted values are kept as ``response_offset`` (neuron,) and ``attrs["response_shift"]``
    is ``how``, so the original values are responses + response_offset.
    """
    if how not in SHIFTS:
        raise SessionError(f"--shift-responses {how!r}: use neuron or global")
    responses = ds["responses"].values  # NaN (missing) stays NaN
    per_neuron = responses.reshape(-1, responses.shape[-1])  # (trial [x frame], neuron)
    offset = np.nanmin(per_neuron, axis=0) if how == "neuron" else np.full(responses.shape[-1], np.nanmin(responses))
    offset = offset.astype(np.float32)
    ds = ds.assign(
        responses=(ds["responses"].dims, responses - offset),
        response_offset=("neuron", offset),
    )
    ds.attrs = {**ds.attrs, "response_shift": how}
    return ds


def import_notes(ds: xr.Dataset) -> list[str]:
    """Lines `twin import` prints about a written session: trials without responses, and the
    loss to fit signed responses with."""
    from twin.data.schema import responses_recorded
    from twin.data.store import SIGNED_ADVICE

    responses = np.asarray(ds["responses"].values)
    notes = []
    unrecorded = int(np.sum(~responses_recorded(responses)))
    if unrecorded:
        notes.append(
            f"twin import: {unrecorded} trials have no responses (NaN for every neuron); kept with their"
            " images, left out of fitting and scoring"
        )
    lowest = float(np.nanmin(responses))
    if lowest < 0:
        notes.append(f"twin import: responses are signed (minimum {lowest:.4g}); {SIGNED_ADVICE.removeprefix('signed: ')}")
    return notes


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The named arrays of the .npz ``path`` (npz_arrays), checked against ARRAY_KEYS."""

    def check(keys: list[str]) -> None:
        unknown = sorted(set(keys) - set(ARRAY_KEYS))
        if unknown:
            raise SessionError(f"{path}: unknown key {unknown[0]!r}; use {', '.join(ARRAY_KEYS)}")
        for key in ("images", "responses"):
            if key not in keys:
                raise SessionError(f"{path}: variable {key!r} is missing; add it to the .npz")

    return npz_arrays(path, SessionError, check)


def npz_arrays(path: Path, error: type[Exception], check=None) -> dict[str, np.ndarray]:
    """Every named array of the .npz ``path``, read without unpickling (an object array could run
    code). ``check(keys)`` may refuse the file before any array is read. A file that is missing,
    damaged, one plain array, or holds an array that is pickled or larger than memory (or whose
    header says so) is one ``error`` line naming the file and the variable."""
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError)
    if not path.is_file():
        raise error(f"{path}: no such file; pass an .npz of named arrays (np.savez)")
    try:
        npz = np.load(path, allow_pickle=False)
    except unreadable as problem:
        reason = str(problem) or "empty or cut short"
        raise error(f"{path}: not a readable .npz file ({reason}); save it with np.savez") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise error(f"{path}: holds one array, not named arrays; save it with np.savez(path, name=array, ...)")
    with npz:
        if check is not None:
            check(npz.files)
        return {key: npz_member(npz, key, path, error) for key in npz.files}


def npz_member(npz, key: str, path: Path, error: type[Exception]) -> np.ndarray:
    """Array ``key`` of the open NpzFile ``npz`` of ``path`` (see npz_arrays)."""
    try:
        return npz[key]
    except ValueError as problem:
        if "allow_pickle" in str(problem):
            raise error(f"{path}: variable {key!r} is an object array; save numbers or fixed-width strings") from None
        raise error(f"{path}: variable {key!r} cannot be read ({problem}); save it again with np.savez") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as problem:
        raise error(f"{path}: variable {key!r} cannot be read ({problem}); save it again with np.savez") from None
    except MemoryError:
        raise error(
            f"{path}: variable {key!r} is larger than this machine's memory (or its header says so); save a"
            " smaller array, or check the file"
        ) from None


def range_attrs(pixel_range, source) -> dict:
    """{"pixel_range": [lo, hi]} for a stated range, {} to infer it."""
    if pixel_range is None:
        return {}
    return {"pixel_range": list(stated_pixel_range(pixel_range, source)), "pixel_range_from": "stated"}


def npz_unit_ids(arrays: dict, n_neurons: int, path: Path) -> np.ndarray | None:
    """The neurons' ids (neuron,) under key neuron_ids or unit_ids of an .npz (None when absent),
    checked so that messages name the key the file uses."""
    given = [key for key in ID_KEYS if key in arrays]
    if len(given) > 1:
        raise SessionError(f"{path}: keys 'neuron_ids' and 'unit_ids' both give ids; keep one of them")
    if not given:
        return None
    return check_unit_ids(arrays[given[0]], n_neurons, f"{path}: key {given[0]!r}")


def from_arrays(npz_path, seed: int = 0, pixel_range=None) -> xr.Dataset:
    """Session from an .npz with keys images (n, y, x) | (n, c, y, x), responses (n, neurons) and
    optional tiers (n,) str, image_ids (n,), behavior (n, k), behavior_names (k,), pupil_center
    (n, 2), neuron_ids or unit_ids (neurons,) integers or strings, cell_xyz (neurons, 3). Missing
    image_ids come from hashing the image bytes; missing tiers from ``split_tiers(image_ids, seed)``
    (attrs["tier_split"] says how). pixel_range: (lo, hi) stated image range, else inferred."""
    path = Path(npz_path)
    if not path.is_file():
        raise SessionError(f"{path}: no such file; pass an .npz file with images and responses")
    arrays = read_npz(path)
    images = arrays["images"]
    if images.ndim not in (3, 4):
        raise SessionError(
            f"{path}: variable 'images' has shape {images.shape}; give (trial, y, x) or"
            " (trial, channel, y, x)"
        )
    image_id = arrays.get("image_ids")
    if image_id is None:
        image_id = image_ids_from_pixels(images)
    elif np.ndim(image_id) == 1 and len(image_id) == len(images) and np.asarray(image_id).dtype.kind in "iu":
        check_image_ids(images, image_id, path, "image_ids")
    attrs = {"source": f"{path.name} (twin import arrays, seed {seed})"}
    tier = arrays.get("tiers")
    if tier is None and np.ndim(image_id) == 1:
        tier, attrs["tier_split"] = split_tiers(np.asarray(image_id), seed)
    responses = arrays["responses"]
    unit_id = npz_unit_ids(arrays, responses.shape[1], path) if responses.ndim == 2 else None
    return make_session(
        path,
        images=images,
        responses=responses,
        tier=tier,
        image_id=image_id,
        behavior=arrays.get("behavior"),
        behavior_names=arrays.get("behavior_names"),
        pupil_center=arrays.get("pupil_center"),
        unit_id=unit_id,
        cell_xyz=arrays.get("cell_xyz"),
        attrs=attrs | range_attrs(pixel_range, path),
        names={"tier": "tiers", "image_id": "image_ids"},
    )


class FileTree:
    """Read-only .npy files of a neuralpredictors tree inside a folder or a .zip."""

    MARKER = "meta/trials/tiers.npy"

    def __init__(self, path: Path):
        self.path = path
        self.zip = None
        if path.is_dir():
            roots = [path] + sorted(p for p in path.iterdir() if p.is_dir())
            found = [r for r in roots if (r / self.MARKER).is_file()]
            self.prefix = str(found[0]) + "/" if found else None
        elif zipfile.is_zipfile(path):
            self.zip = zipfile.ZipFile(path)
            names = [n for n in self.zip.namelist() if n.endswith(self.MARKER)]
            self.prefix = min(names, key=len)[: -len(self.MARKER)] if names else None
            self.names = set(self.zip.namelist())
        else:
            raise SessionError(
                f"{path}: neither a folder nor a .zip; pass a Sensorium data folder or its .zip"
            )
        if self.prefix is None:
            raise SessionError(
                f"{path}: no {self.MARKER} inside; pass the folder that holds data/ and meta/"
            )

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def exists(self, name: str) -> bool:
        if self.zip is not None:
            return self.prefix + name in self.names
        return Path(self.prefix + name).is_file()

    def has_folder(self, name: str) -> bool:
        return self.exists(f"{name}/0.npy")

    def is_folder(self, name: str) -> bool:
        """True when the folder ``name`` (e.g. "data/videos") holds anything."""
        if self.zip is not None:
            return any(n.startswith(f"{self.prefix}{name}/") for n in self.names)
        return Path(self.prefix + name).is_dir()

    def load(self, name: str) -> np.ndarray:
        if not self.exists(name):
            raise SessionError(f"{self.path}: file {name} is missing; every trial needs one")
        try:
            if self.zip is not None:
                return np.load(io.BytesIO(self.zip.read(self.prefix + name)), allow_pickle=False)
            return np.load(self.prefix + name, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise SessionError(
                f"{self.path}: file {name} is not a plain .npy array ({error}); save it with"
                " np.save (no pickles)"
            ) from None
        except MemoryError:
            raise SessionError(
                f"{self.path}: file {name} is larger than this machine's memory (or its header says so);"
                " check the file"
            ) from None

    def check_trials(self, folder: str, n: int) -> None:
        """SessionError when ``folder`` (e.g. "data/videos") holds a trial file past the ``n``
        trials that meta/trials/tiers.npy names: that trial would be left out silently."""
        if self.exists(f"{folder}/{n}.npy"):
            raise SessionError(
                f"{self.path}: file meta/trials/tiers.npy names {n} trials but {folder}/{n}.npy exists;"
                " give one tier per trial"
            )

    def stack(self, folder: str, n: int) -> np.ndarray:
        """data/<folder>/<i>.npy for i < n, stacked: (n, ...)."""
        first = self.load(f"{folder}/0.npy")
        out = np.empty((n, *first.shape), dtype=first.dtype)
        out[0] = first
        for i in range(1, n):
            item = self.load(f"{folder}/{i}.npy")
            numbers = "iuf"
            if item.dtype.kind != first.dtype.kind and not {item.dtype.kind, first.dtype.kind} <= set(numbers):
                raise SessionError(
                    f"{self.path}: file {folder}/{i}.npy holds {item.dtype} values but {folder}/0.npy holds"
                    f" {first.dtype}; save every trial as real numbers of one kind"
                )
            if item.shape != first.shape:
                raise SessionError(
                    f"{self.path}: file {folder}/{i}.npy has shape {item.shape} but {folder}/0.npy has"
                    f" {first.shape}; give every trial the same shape"
                )
            out[i] = item
        return out


def from_sensorium(path, size: tuple[int, int] | None = (36, 64), pixel_range=None) -> xr.Dataset:
    """Session from a Sensorium 2022 / neuralpredictors tree (folder or .zip): data/images/<i>.npy
    (c, y, x), data/responses/<i>.npy (neurons,), optional data/behavior, data/pupil_center,
    meta/trials/tiers.npy, optional meta/trials/frame_image_id.npy, meta/neurons/unit_ids.npy
    (integers or strings),
    meta/neurons/cell_motor_coordinates.npy. Images are block-averaged to ``size`` when they are
    an integer multiple of it; a single channel is dropped. pixel_range: (lo, hi) stated image
    range, else inferred. A tree with data/videos (Sensorium 2023) gives a video session
    (``session_from_video_tree``)."""
    path = Path(path)
    if not path.exists():
        raise SessionError(
            f"{path}: no such folder or .zip; pass the Sensorium data folder or its .zip"
        )
    tree = FileTree(path)
    try:
        if tree.is_folder("data/videos"):
            return session_from_video_tree(tree, path, size, pixel_range)
        return session_from_tree(tree, path, size, pixel_range)
    finally:
        tree.close()


def session_from_tree(tree: FileTree, path: Path, size, pixel_range=None) -> xr.Dataset:
    """The session held by ``tree`` (see ``from_sensorium``)."""
    from twin.data.images import downscale

    tier = tree.load("meta/trials/tiers.npy")
    if tier.ndim != 1 or len(tier) == 0:
        raise SessionError(
            f"{path}: variable 'meta/trials/tiers.npy' has shape {tier.shape}; give one tier per"
            " trial (trial,), e.g. 'train', 'test'"
        )
    n = len(tier)
    tree.check_trials("data/images", n)
    images = tree.stack("data/images", n)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    shown_size = {"shown_size": list(images.shape[-2:])}
    images = downscale(images, size)
    optional = {
        name: tree.stack(f"data/{name}", n) if tree.has_folder(f"data/{name}") else None
        for name in ("behavior", "pupil_center")
    }
    meta = {
        name: tree.load(f"meta/{name}.npy") if tree.exists(f"meta/{name}.npy") else None
        for name in ("trials/frame_image_id", "neurons/unit_ids", "neurons/cell_motor_coordinates")
    }
    image_id = meta["trials/frame_image_id"]
    responses = tree.stack("data/responses", n)
    unit_id = meta["neurons/unit_ids"]
    if unit_id is not None and responses.ndim == 2:
        unit_id = check_unit_ids(unit_id, responses.shape[1], f"{path}: file meta/neurons/unit_ids.npy")
    return make_session(
        path,
        images=images,
        responses=responses,
        tier=tier,
        image_id=image_ids_from_pixels(images) if image_id is None else image_id,
        behavior=optional["behavior"],
        pupil_center=optional["pupil_center"],
        unit_id=unit_id,
        cell_xyz=meta["neurons/cell_motor_coordinates"],
        attrs={"source": f"{path.name} (twin import sensorium)"} | shown_size | range_attrs(pixel_range, path),
        names={
            "tier": "meta/trials/tiers.npy",
            "image_id": "meta/trials/frame_image_id.npy",
            "cell_xyz": "meta/neurons/cell_motor_coordinates.npy",
        },
    )


def video_tiers(tier: np.ndarray, path: Path) -> np.ndarray:
    """Sensorium 2023 tier names (trial,) -> session tiers (trial,) str, "none" kept."""
    where = f"{path}: file meta/trials/tiers.npy"
    if tier.ndim != 1 or len(tier) == 0 or tier.dtype.kind not in "OUS":
        raise SessionError(f"{where} has shape {tier.shape} and dtype {tier.dtype}; give one tier name per trial")
    mapped = []
    for name in np.asarray(tier).astype(str).tolist():
        if name == "none":
            mapped.append(name)
        elif name in VIDEO_TIERS or name.startswith(VIDEO_TEST_PREFIXES):
            mapped.append(VIDEO_TIERS.get(name, "final_test"))
        else:
            raise SessionError(
                f"{where} has unknown tier {name!r}; use train, oracle, live_test_*, final_test_*"
                " (or train, validation, test, final_test; none leaves a trial out)"
            )
    return np.array(mapped)


def trial_file(tree: FileTree, path: Path, folder: str, trial: int, rows: int | None = None) -> np.ndarray:
    """data/<folder>/<trial>.npy as float32 with frames last: (y, x, frames) for videos (rows
    None), else (rows, frames); SessionError naming the file for other shapes or non-numbers."""
    name = f"data/{folder}/{trial}.npy"
    array = tree.load(name)
    wanted = "(y, x, frames)" if rows is None else f"({rows}, frames)" if rows > 0 else "(neurons, frames)"
    if array.dtype.kind not in "iuf":
        raise SessionError(f"{path}: file {name} holds {array.dtype} values; save real numbers {wanted}")
    if array.ndim != (3 if rows is None else 2) or (rows and array.shape[0] != rows) or 0 in array.shape:
        raise SessionError(f"{path}: file {name} has shape {array.shape}; give {wanted} with frames last")
    return array


def recorded_length(missing: np.ndarray) -> int:
    """Frames before the first True of ``missing`` (frames,) bool (the tree pads with NaN)."""
    return int(np.argmax(missing)) if missing.any() else len(missing)


def session_from_video_tree(tree: FileTree, path: Path, size, pixel_range=None) -> xr.Dataset:
    """The video session held by a Sensorium 2023 tree (folder or .zip).

    Per trial i: data/videos/<i>.npy (y, x, frames), data/responses/<i>.npy (neurons, frames);
    optional data/behavior/<i>.npy (2, frames: pupil, running) and data/pupil_center/<i>.npy
    (2, frames), every file of a trial with the same frames. meta/trials/tiers.npy names the
    tiers (``video_tiers``; "none" trials are left out); the first of VIDEO_ID_FILES present
    gives video ids, else every trial is its own video. A trial's frames end at the first NaN
    (the tree pads with NaN); trials are padded to the longest with NaN responses and the last
    frame repeated (frame_count says how many are real). final_test trials may lack response
    files (NaN). Frames are block-averaged to ``size`` like images; frame_rate is 30 Hz.
    """
    from twin.data.images import downscale

    tier = video_tiers(tree.load("meta/trials/tiers.npy"), path)
    tree.check_trials("data/videos", len(tier))
    kept = np.flatnonzero(tier != "none")
    if len(kept) == 0:
        raise SessionError(
            f"{path}: file meta/trials/tiers.npy names every trial 'none'; give some train and test trials"
        )
    videos, shown_size = [], None
    for trial in kept:
        video = trial_file(tree, path, "videos", trial)
        if shown_size is None:
            shown_size = list(video.shape[:2])
        elif list(video.shape[:2]) != shown_size:
            raise SessionError(
                f"{path}: file data/videos/{trial}.npy is {video.shape[0]}x{video.shape[1]} pixels but"
                f" data/videos/{kept[0]}.npy is {shown_size[0]}x{shown_size[1]}; give every video one size"
            )
        videos.append(video)
    frames = [v.shape[-1] for v in videos]
    length = [recorded_length(np.isnan(v).any(axis=(0, 1))) for v in videos]
    if 0 in length:
        raise SessionError(
            f"{path}: file data/videos/{kept[length.index(0)]}.npy has NaN from its first frame; give at least"
            " one recorded frame, or tier 'none' to leave the trial out"
        )
    optional = [name for name in ("behavior", "pupil_center") if tree.exists(f"data/{name}/{kept[0]}.npy")]
    extra = {name: [] for name in optional}
    responses = [None] * len(kept)
    for index, trial in enumerate(kept):
        for name in optional:
            rows = 2 if name == "pupil_center" else 0
            values = trial_file(tree, path, name, trial, rows)
            if name == "behavior" and index and values.shape[0] != extra[name][0].shape[0]:
                raise SessionError(
                    f"{path}: file data/behavior/{trial}.npy has {values.shape[0]} variables but"
                    f" data/behavior/{kept[0]}.npy has {extra[name][0].shape[0]}; give every trial the same"
                )
            extra[name].append(values)
        if tier[trial] == "final_test" and not tree.exists(f"data/responses/{trial}.npy"):
            continue  # withheld: NaN responses
        responses[index] = trial_file(tree, path, "responses", trial, 0)
    counts = {r.shape[0] for r in responses if r is not None}
    if not counts:
        raise SessionError(
            f"{path}: folder data/responses holds no file of a kept trial; give train and test responses"
        )
    if len(counts) > 1:
        first = next(i for i, r in enumerate(responses) if r is not None)
        other = next(i for i, r in enumerate(responses) if r is not None and r.shape[0] != responses[first].shape[0])
        raise SessionError(
            f"{path}: file data/responses/{kept[other]}.npy has {responses[other].shape[0]} neurons but"
            f" data/responses/{kept[first]}.npy has {responses[first].shape[0]}; give every trial the same neurons"
        )
    for index, trial in enumerate(kept):
        named = [("responses", responses[index])] + [(name, extra[name][index]) for name in optional]
        for name, values in named:
            if values is None:
                continue
            if values.shape[-1] != frames[index]:
                raise SessionError(
                    f"{path}: file data/{name}/{trial}.npy has {values.shape[-1]} frames but"
                    f" data/videos/{trial}.npy has {frames[index]}; give every file of a trial the same frames"
                )
            # Responses end where no neuron has one; behavior and pupil_center at any NaN.
            missing = np.isnan(values).all(axis=0) if name == "responses" else np.isnan(values).any(axis=0)
            if name == "responses" and missing.all():
                continue  # no responses on this trial (withheld)
            length[index] = min(length[index], recorded_length(missing))
            if length[index] == 0:
                raise SessionError(
                    f"{path}: file data/{name}/{trial}.npy has NaN from its first frame; give at least one"
                    " recorded frame, or tier 'none' to leave the trial out"
                )
    n, longest, n_neurons = len(kept), max(length), counts.pop()
    frame = downscale(np.moveaxis(videos[0][..., :1], -1, 0), size)  # (1, y, x) as stored
    images = np.empty((n, longest, *frame.shape[1:]), np.uint8 if frame.dtype == np.uint8 else np.float32)
    stacked = np.full((n, longest, n_neurons), np.nan, dtype=np.float32)
    per_frame = {name: np.empty((n, longest, extra[name][0].shape[0]), np.float32) for name in optional}
    for index in range(n):
        real = length[index]
        # Padding repeats the last recorded frame: finite, and never shown to a causal model
        # before the frames it pads.
        pad = np.r_[np.arange(real), np.full(longest - real, real - 1)]
        images[index] = downscale(np.moveaxis(videos[index], -1, 0)[pad], size)
        videos[index] = None  # free each trial's video once copied
        if responses[index] is not None:
            stacked[index, :real] = responses[index][:, :real].T
        for name in optional:
            per_frame[name][index] = extra[name][index].T[pad]
    behavior = per_frame.get("behavior")
    ids, id_file = None, next((name for name in VIDEO_ID_FILES if tree.exists(name)), None)
    if id_file is not None:
        given = tree.load(id_file)
        if given.ndim != 1 or len(given) != len(tier):
            raise SessionError(
                f"{path}: file {id_file} has shape {given.shape}; give one id per trial ({len(tier)})"
            )
        # Ids of any kind (hash strings, integers) -> int64 numbered by first appearance.
        _, first, inverse = np.unique(given[kept], return_index=True, return_inverse=True)
        ids = np.argsort(np.argsort(first))[inverse].astype(np.int64)
    unit_id = tree.load("meta/neurons/unit_ids.npy") if tree.exists("meta/neurons/unit_ids.npy") else None
    if unit_id is not None:
        unit_id = check_unit_ids(unit_id, n_neurons, f"{path}: file meta/neurons/unit_ids.npy")
    cell_xyz = None
    if tree.exists("meta/neurons/cell_motor_coordinates.npy"):
        cell_xyz = tree.load("meta/neurons/cell_motor_coordinates.npy")
    attrs = {
        "source": f"{path.name} (twin import sensorium, videos)",
        "shown_size": shown_size,
        "frame_rate": FRAME_RATE,
        "frame_rate_from": "Sensorium 2023 (30 Hz; the tree states no rate)",
        "video_ids_from": id_file or "none in the tree: every trial is its own video",
    }
    return make_session(
        path,
        images=images,
        responses=stacked,
        tier=tier[kept].astype(str),
        image_id=np.arange(n) if ids is None else ids,
        behavior=behavior,
        behavior_names=VIDEO_BEHAVIOR_NAMES if behavior is not None and behavior.shape[-1] == 2 else None,
        pupil_center=per_frame.get("pupil_center"),
        unit_id=unit_id,
        cell_xyz=cell_xyz,
        frame_count=np.array(length, np.int64),
        attrs=attrs | range_attrs(pixel_range, path),
        names={
            "tier": "meta/trials/tiers.npy",
            "image_id": id_file or "image_id",
            "cell_xyz": "meta/neurons/cell_motor_coordinates.npy",
        },
    )


def read_tiers(path, image_id: np.ndarray) -> np.ndarray:
    """The --tiers file ``path``: one tier label per trial of ``image_id`` (trial,), checked
    here so that messages name the file."""
    from twin.data.images import read_table

    tier = read_table(path, "--tiers")
    source = f"--tiers {path}"
    if tier.shape != image_id.shape:
        shape = f"holds {tier.size} values in shape {tier.shape}"
        fail(source, f"{shape}; give one tier per trial ({len(image_id)})")
    check_tier_labels(tier, source)
    check_tier_leaks(tier, image_id, source)
    return tier


def integer_ids(values: np.ndarray) -> np.ndarray | None:
    """String ids (k,) as int64 when every one is a whole number: digits, read exactly, or a float
    that is whole (np.savetxt writes 7 as 7.000000000000000000e+00) below 2**53; else None."""
    texts = [text.strip() for text in values.tolist()]
    if texts and all(re.fullmatch(r"[+-]?[0-9]+", text) for text in texts):
        numbers = [int(text) for text in texts]
        return np.array(numbers, np.int64) if all(-(2**63) <= n < 2**63 for n in numbers) else None
    try:
        floats = values.astype(np.float64)
    except ValueError:
        return None
    whole = np.isfinite(floats) & (floats == np.round(floats)) & (np.abs(floats) < 2**53)
    return floats.astype(np.int64) if len(floats) and whole.all() else None


def read_unit_ids(path, n_neurons: int) -> np.ndarray:
    """The --unit-ids file ``path``: one id per neuron, integers or strings, as a .npy array or as
    .csv / .txt text (one id per line, or comma-separated). String ids that are all integers
    (``integer_ids``; every id of a text file is a string) are integers. Checked here so that
    messages name the file."""
    from twin.data.images import read_table

    path = Path(path)
    if path.suffix.lower() in (".csv", ".txt") and path.is_file():
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: spreadsheets add a BOM
        except (OSError, UnicodeDecodeError) as error:
            raise SessionError(f"--unit-ids {path}: cannot be read ({error}); save it as UTF-8 text") from None
        values = np.array([cell for row in csv.reader(lines, skipinitialspace=True) for cell in row], dtype=str)
    else:
        values = read_table(path, "--unit-ids")  # a .npy, or the one line about the path
    numbers = integer_ids(values) if values.dtype.kind in "US" else None
    return check_unit_ids(values if numbers is None else numbers, n_neurons, f"--unit-ids {path}")


def from_images(
    images,
    responses,
    size="auto",
    orientation: str | None = None,
    trial_images=None,
    tiers=None,
    unit_ids=None,
    seed: int = 0,
) -> xr.Dataset:
    """Session from a folder or .zip of image files and a response matrix (.npy or .csv).

    images: read by ``twin.data.images.read_images`` in natural file-name order (grey (y, x) or
    RGB (channel, y, x) uint8; ``size``: (height, width), "auto" for ``working_size`` or None for
    the files' own size, see ``to_size``). responses: (trials, neurons)
    or (neurons, images), as ``orientation`` ("trials-neurons", "neurons-images") says or as
    inferred when only one axis has one entry per trial; one neuron may be a column, a row or a
    1-D .npy. trial_images: optional .npy/.csv of one
    image (0-based index in file order, or file name) per trial when images repeat; without it
    trial i shows image i. tiers: optional .npy/.csv of one tier per trial, else
    ``split_tiers(image ids, seed)``. unit_ids: optional .npy/.csv/.txt of one id per neuron
    (integers or strings, ``read_unit_ids``).
    Each trial's image file name is kept as ``image_name`` (trial,) str.
    """
    from twin.data.images import as_numbers, orient, read_images, read_table, to_size, trial_image_indices

    images, responses = Path(images), Path(responses)
    pictures, names = read_images(images, None if size == "auto" else size)
    ids = image_ids_from_pixels(pictures)  # at full size: images that differ only in fine detail differ
    attrs = {"source": f"{images.name} + {responses.name} (twin import images, seed {seed})"}
    if size in ("auto", None):
        attrs["shown_size"] = list(pictures.shape[-2:])
        pictures = to_size(pictures, size)
    shown = np.arange(len(names))
    if trial_images is not None:
        shown = trial_image_indices(read_table(trial_images, "--trial-images"), names, trial_images)
    matrix = as_numbers(read_table(responses, "RESPONSES", ndmin=2), "float64")
    if matrix is not None and matrix.ndim == 1:  # one neuron saved as a 1-D .npy
        matrix = matrix[None] if orientation == "neurons-images" else matrix[:, None]
    if matrix is None or matrix.ndim != 2:
        raise SessionError(
            f"{responses}: is not a 2-D matrix of numbers; give (trials, neurons) or (neurons, images)"
        )
    per = "image" if trial_images is None else "trial"
    matrix = orient(matrix, len(shown), orientation, responses, per)
    image_id = ids[shown]
    if tiers is None:
        tier, attrs["tier_split"] = split_tiers(image_id, seed)
    else:
        tier = read_tiers(tiers, image_id)
    ds = make_session(
        responses,
        images=pictures[shown],
        responses=matrix,
        tier=tier,
        image_id=image_id,
        unit_id=None if unit_ids is None else read_unit_ids(unit_ids, matrix.shape[1]),
        attrs=attrs,
    )
    return ds.assign(image_name=("trial", names[shown].astype(object)))
