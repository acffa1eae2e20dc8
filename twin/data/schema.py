"""The session schema: variable names, dims and dtypes, and ``validate``.

A session is an ``xarray.Dataset``:

| name | dims | dtype |
|---|---|---|
| images | (trial, y, x) or (trial, channel, y, x) | uint8 or float32, within attrs pixel_range |
| responses | (trial, neuron) | float32; NaN = not recorded (``responses_recorded``), never inf |
| tier | (trial,) | str: train / validation / test / final_test |
| image_id | (trial,) | int64, same id = same image |
| behavior | (trial, behavior_var) | float32, optional; coordinate behavior_var holds the names |
| pupil_center | (trial, xy) | float32, optional |
| unit_id | (neuron,) | int64 or str: unique; strings non-empty, printable, without commas or surrounding spaces |
| cell_x, cell_y, cell_z | (neuron,) | float32 micrometres, optional |

| response_offset | (neuron,) | float32, optional: what ``--shift-responses`` subtracted |

A video session (``is_video``) has a ``frame`` dim after ``trial``: images (trial, frame, y, x) or
(trial, frame, channel, y, x), responses (trial, frame, neuron), behavior (trial, frame,
behavior_var) and pupil_center (trial, frame, xy). It also needs ``frame_count`` (trial,) int64:
frames 0..frame_count-1 were shown and recorded; later frames pad trials to the longest one, with
NaN responses and behavior and pupil_center repeating the trial's last value. ``attrs["frame_rate"]``
(Hz > 0) is required. Statistics are computed on the recorded frames of train trials.

``attrs["pixel_range"] = [lo, hi]``: the image values shown as black and white (screen levels 0 and
255). Importers infer it (``infer_pixel_range``) or take it as stated; stores without it get it
inferred the same way when read (``pixel_range``). Responses may be signed (dF/F); the poisson
loss refuses them when fitting, the gaussian loss takes them.

Missing responses are NaN. A trial whose row is NaN for every neuron has no responses (e.g.
Sensorium's held-out ``final_test`` tier): it keeps its image and tier, and is left out of
fitting, validation, the normalization statistics and scoring. NaN on some neurons of a trial
(a dropped frame) masks those entries in the loss and in every metric. Every neuron needs at
least one finite train response.

Stores written by ``twin.data.store.write_session`` add normalization statistics (``stats_*``,
computed on train trials); simulated sessions add ground truth (``gt_*``) and
``attrs["simulated"] = True``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from twin.errors import SessionError

SCHEMA_VERSION = 1
TIERS = ("train", "validation", "test", "final_test")
BEHAVIOR_NAMES = ("pupil", "pupil_derivative", "running")

# name -> (allowed dims, allowed dtypes); optional variables may be absent.
REQUIRED = {
    "images": (
        (
            ("trial", "y", "x"),
            ("trial", "channel", "y", "x"),
            ("trial", "frame", "y", "x"),
            ("trial", "frame", "channel", "y", "x"),
        ),
        ("uint8", "float32"),
    ),
    "responses": ((("trial", "neuron"), ("trial", "frame", "neuron")), ("float32",)),
    "tier": ((("trial",),), ("str",)),
    "image_id": ((("trial",),), ("int64",)),
    "unit_id": ((("neuron",),), ("int64", "str")),
}
OPTIONAL = {
    "behavior": ((("trial", "behavior_var"), ("trial", "frame", "behavior_var")), ("float32",)),
    "pupil_center": ((("trial", "xy"), ("trial", "frame", "xy")), ("float32",)),
    "frame_count": ((("trial",),), ("int64",)),
    "cell_x": ((("neuron",),), ("float32",)),
    "cell_y": ((("neuron",),), ("float32",)),
    "cell_z": ((("neuron",),), ("float32",)),
    "response_offset": ((("neuron",),), ("float32",)),
}
# Variables whose values must be finite; responses may be NaN (not recorded) but not inf.
FINITE = ("images", "behavior", "pupil_center", "cell_x", "cell_y", "cell_z", "response_offset")
# Variables with a frame dim in video sessions and none in image sessions.
FRAMED = ("images", "responses", "behavior", "pupil_center")
PIXEL_RANGE_FIX = "state the values shown as black and white with `twin import ... --pixel-range=LO,HI`"


def dtype_name(array) -> str:
    """'str' for any string dtype (object, <U, StringDType), else the numpy dtype name."""
    kind = np.dtype(array.dtype).kind
    return "str" if kind in "OUT" else np.dtype(array.dtype).name


def strings(values) -> np.ndarray:
    """Any string array (object, <U, numpy StringDType) as a fixed-width <U array."""
    return np.asarray(values, dtype=object).astype(str)


def fail(source, message: str):
    raise SessionError(f"{source}: {message}")


def is_video(ds: xr.Dataset) -> bool:
    """True for a video session (``images`` has a ``frame`` dim)."""
    return "frame" in ds["images"].dims


def recorded_frames(frame_count: np.ndarray, n_frames: int) -> np.ndarray:
    """(trial, frame) bool: True on the frames 0..frame_count-1 of each trial."""
    return np.arange(n_frames) < np.asarray(frame_count)[:, None]


def check_frame_rate(value, source) -> float:
    """``attrs["frame_rate"]`` as a finite float > 0 (Hz), else SessionError."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = float("nan")
    if not (np.isfinite(rate) and rate > 0):
        fail(source, f"attribute 'frame_rate' is {value!r}; give the frames per second shown (e.g. 30.0)")
    return rate


def check_video(ds: xr.Dataset, source, values: bool) -> None:
    """SessionError when the frame dims of ``ds`` disagree (all framed variables or none), or
    when a video session lacks ``frame_count`` or ``attrs["frame_rate"]``; ``values`` also checks
    that frame_count lies in 1..frames and that padding frames hold no responses."""
    video = is_video(ds)
    for name in FRAMED[1:]:
        if name in ds.variables and ("frame" in ds[name].dims) != video:
            kind = "a video session (images with a frame dim)" if video else "an image session"
            fail(
                source,
                f"variable {name!r} has dims {ds[name].dims}; {kind} needs it with{'' if video else 'out'}"
                " a frame dim",
            )
    if not video:
        for name in ("frame_count", "frame_rate"):
            if name in ds.variables or name in ds.attrs:
                fail(source, f"{name!r} is given for an image session; drop it or give images a frame dim")
        return
    if "frame_count" not in ds.variables:
        fail(source, "variable 'frame_count' is missing; add it (trial,) int64: the recorded frames of each trial")
    if "frame_rate" not in ds.attrs:
        fail(source, "attribute 'frame_rate' is missing; give the frames per second shown (e.g. 30.0)")
    check_frame_rate(ds.attrs["frame_rate"], source)
    if ds.sizes["frame"] == 0:
        fail(source, "variable 'images' has 0 frames; give every trial at least one frame")
    if values:
        count = np.asarray(ds["frame_count"].values)
        bad = np.flatnonzero((count < 1) | (count > ds.sizes["frame"]))
        if len(bad):
            fail(
                source,
                f"variable 'frame_count' is {count[bad[0]]} on trial {bad[0]}; give 1..{ds.sizes['frame']}"
                " (the frames recorded)",
            )
        padded = ~recorded_frames(count, ds.sizes["frame"])
        late = np.isfinite(np.asarray(ds["responses"].values)).any(axis=2) & padded
        if late.any():
            trial = int(np.flatnonzero(late.any(axis=1))[0])
            fail(
                source,
                f"variable 'responses' has values past frame_count on trial {trial}; set frames"
                " frame_count.. to NaN (padding)",
            )


def unit_ids(values) -> np.ndarray:
    """(neuron,) unit ids in their one in-memory form: int64 for integer ids, fixed-width str
    (<U) for string ids (object, <U and StringDType arrays alike). ``.tolist()`` of the result
    is JSON-ready."""
    values = np.asarray(values)
    return strings(values) if values.dtype.kind in "OUT" else values.astype(np.int64)


def plot_text(value) -> str:
    """``value`` (e.g. a unit id) as literal matplotlib text: a "$" would start math mode."""
    return str(value).replace("$", r"\$")


def check_unit_ids(values, n_neurons: int, where: str) -> np.ndarray:
    """``values`` as ``unit_ids`` (neuron,), or SessionError starting with ``where`` (the file
    and key the ids came from, e.g. "neurons.npz: key 'neuron_ids'").

    Ids are integers or strings, one per neuron, unique; strings are non-empty, without
    surrounding spaces, commas or control characters: ids appear in one-line messages,
    comma-separated `--neurons` lists, CSV headers and file names.
    """
    values = np.asarray(values)
    if values.ndim != 1 or len(values) != n_neurons:
        count = f"{values.size} ids" + (f" in shape {values.shape}" if values.ndim != 1 else "")
        raise SessionError(f"{where} has {count} for {n_neurons} neurons; give one id per neuron")
    strings_given = values.dtype.kind in "UT" or (
        values.dtype.kind == "O" and all(isinstance(v, str) for v in values.tolist())
    )
    if values.dtype.kind not in "iu" and not strings_given:
        raise SessionError(f"{where} has dtype {values.dtype}; give integer or string ids")
    ids = unit_ids(values)
    if strings_given:
        for i, text in enumerate(ids.tolist()):
            if not text.strip():
                raise SessionError(f"{where} has an empty id (neuron {i}); give every neuron a non-empty id")
            if text != text.strip():
                raise SessionError(f"{where} has id {text!r} (neuron {i}) with spaces around it; strip them")
            if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):  # C0/C1 controls
                raise SessionError(f"{where} has id {text!r} (neuron {i}) with a control character; use printable ids")
            if "," in text:
                raise SessionError(
                    f"{where} has id {text!r} (neuron {i}) with a comma; `--neurons` lists ids separated"
                    " by commas, so use another character"
                )
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        twice = unique[counts > 1][0].item()
        raise SessionError(
            f"{where} has duplicate ids: {twice!r} is given to {counts.max()} neurons; give every"
            " neuron its own id"
        )
    return ids


def infer_pixel_range(images) -> tuple[float, float] | None:
    """The pixel range implied by ``images`` (any shape): uint8 -> (0, 255); floats within 0..1
    -> (0, 1); floats within 0..255 with a maximum above 1 -> (0, 255); anything else (negative
    values, values above 255, e.g. z-scored images) -> None (the user must state it)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return (0.0, 255.0)
    if images.size == 0:
        return None
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 255:
        return None
    return (0.0, 1.0) if hi <= 1 else (0.0, 255.0)


def stated_pixel_range(value, source) -> tuple[float, float]:
    """``value`` ([lo, hi] from attrs or --pixel-range) as two finite floats with lo < hi."""
    try:
        lo, hi = (float(v) for v in np.asarray(value, dtype=np.float64).reshape(2))
    except (TypeError, ValueError):
        fail(source, f"attribute 'pixel_range' is {value!r}, not two numbers; {PIXEL_RANGE_FIX}")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        fail(source, f"attribute 'pixel_range' is {lo:g},{hi:g}; give finite LO < HI ({PIXEL_RANGE_FIX})")
    return lo, hi


def pixel_range(ds: xr.Dataset, source) -> tuple[float, float]:
    """(lo, hi) image values shown as black and white: ``attrs["pixel_range"]``, else inferred
    as ``infer_pixel_range`` does (from the dtype, the stored train range ``stats_image_min/max``,
    or the images). SessionError when it cannot be inferred."""
    if "pixel_range" in ds.attrs:
        return stated_pixel_range(ds.attrs["pixel_range"], source)
    images = ds["images"]
    if images.dtype == np.uint8:  # known without reading the images
        return (0.0, 255.0)
    if "stats_image_min" in ds and "stats_image_max" in ds:
        values = np.array([ds["stats_image_min"].values, ds["stats_image_max"].values], np.float32)
    else:
        values = np.asarray(images.values)
    inferred = infer_pixel_range(values)
    if inferred is None:
        lo, hi = float(values.min()), float(values.max())
        fail(
            source,
            f"variable 'images' has values {lo:g}..{hi:g}, not the pixel range 0..255 or 0..1;"
            f" {PIXEL_RANGE_FIX}",
        )
    return inferred


def to_levels(values, pixel_range: tuple[float, float]) -> np.ndarray:
    """Image values in a store's pixel range -> screen levels 0..255 (float64, any shape)."""
    lo, hi = pixel_range
    return (np.asarray(values, np.float64) - lo) * (255.0 / (hi - lo))


def check_variable(ds: xr.Dataset, name: str, dims_options, dtypes, source) -> None:
    var = ds[name]
    if var.dims not in dims_options:
        wanted = " or ".join(str(d) for d in dims_options)
        fail(source, f"variable {name!r} has dims {var.dims}; it must have dims {wanted}")
    got = dtype_name(var)
    if got not in dtypes:
        fail(source, f"variable {name!r} has dtype {got}; convert it to {' or '.join(dtypes)}")


def validate(ds: xr.Dataset, source, *, values: bool = True) -> xr.Dataset:
    """Check ``ds`` against the session schema and return it unchanged.

    ``source`` names the file in error messages. ``values=False`` checks names, dims, dtypes
    and tiers only (cheap on a lazy store); ``values=True`` also reads the data to reject NaN/inf.
    Raises SessionError with one line naming the file, the variable and the fix.
    """
    if not isinstance(ds, xr.Dataset):
        fail(source, f"expected an xarray Dataset, got {type(ds).__name__}")
    for name, (dims, dtypes) in REQUIRED.items():
        if name not in ds.variables:
            fail(source, f"variable {name!r} is missing; add it ({dims[0]}, {dtypes[0]})")
        check_variable(ds, name, dims, dtypes, source)
    for name, (dims, dtypes) in OPTIONAL.items():
        if name in ds.variables:
            check_variable(ds, name, dims, dtypes, source)
    n_neurons = ds.sizes["neuron"]
    if n_neurons == 0:
        fail(source, "variable 'responses' has 0 neurons; record at least one neuron")
    if ds.sizes["trial"] == 0:
        fail(source, "variable 'responses' has 0 trials; record at least one train and one test trial")
    check_video(ds, source, values)
    if ds.sizes["y"] < 2 or ds.sizes["x"] < 2:
        fail(source, f"variable 'images' is {ds.sizes['y']}x{ds.sizes['x']} pixels; images must be 2-D")
    tier = strings(ds["tier"].values)
    check_tier_labels(tier, source)
    for needed in ("train", "test"):
        if not np.any(tier == needed):
            fail(source, f"variable 'tier' has no {needed!r} trials; assign some trials to {needed!r}")
    check_unit_ids(ds["unit_id"].values, n_neurons, f"{source}: variable 'unit_id'")
    if "pixel_range" in ds.attrs:
        stated_pixel_range(ds.attrs["pixel_range"], source)
    if values:
        for name in FINITE:
            if name in ds.variables and not np.isfinite(np.asarray(ds[name].values)).all():
                fail(source, f"variable {name!r} contains NaN or inf; remove or fill those values")
        check_responses(np.asarray(ds["responses"].values), tier, np.asarray(ds["unit_id"].values), source)
        lo, hi = pixel_range(ds, source)
        images = np.asarray(ds["images"].values)
        if images.min() < lo or images.max() > hi:
            fail(
                source,
                f"variable 'images' has values {float(images.min()):g}..{float(images.max()):g}"
                f" outside its pixel range {lo:g}..{hi:g}; {PIXEL_RANGE_FIX}",
            )
    return ds


def responses_recorded(responses: np.ndarray) -> np.ndarray:
    """(trial,) bool: the trials of ``responses`` (trial, neuron) or (trial, frame, neuron) with
    at least one finite value."""
    return ~np.isnan(responses).all(axis=tuple(range(1, responses.ndim)))


def check_responses(responses: np.ndarray, tier: np.ndarray, unit_id: np.ndarray, source) -> None:
    """SessionError for inf in ``responses`` (trial, [frame,] neuron), or a neuron without a
    finite response on any train trial (nothing to fit it to); NaN elsewhere marks missing values."""
    if np.isinf(responses).any():
        fail(source, "variable 'responses' contains inf; remove or fill those values (NaN marks a missing one)")
    train = responses[tier == "train"]
    unfit = ~np.isfinite(train.reshape(-1, train.shape[-1])).any(axis=0)
    if unfit.any():
        fail(
            source,
            f"variable 'responses' has no finite train response for unit_id {unit_id[unfit][0]}"
            f" ({int(unfit.sum())} neurons in all); drop those neurons or record them on train trials",
        )


def as_dtype(array, dtype: str, name: str, source) -> np.ndarray:
    """``array`` converted to ``dtype`` if it holds numbers of a compatible kind, else SessionError."""
    array = np.asarray(array)
    # Booleans are refused: True/False are not rates, pixels or positions.
    kinds = {"float32": "iuf", "int64": "iu", "uint8": "u"}[dtype]
    if array.dtype.kind not in kinds:
        fail(
            source,
            f"variable {name!r} has dtype {array.dtype}; cast it to {dtype}"
            f" (np.asarray(values, dtype=np.{dtype}))",
        )
    if dtype == "float32" and array.dtype.kind == "f" and array.size:
        largest = float(np.nanmax(np.abs(np.where(np.isinf(array), 0, array)), initial=0))
        if largest > float(np.finfo(np.float32).max):
            fail(source, f"variable {name!r} has values up to {largest:.3g}, beyond float32; rescale it")
    return array.astype(dtype, copy=False)


def check_tier_labels(tier: np.ndarray, source, name: str = "tier") -> None:
    """SessionError naming ``name`` when ``tier (trial,)`` holds a label outside TIERS."""
    unknown = sorted(set(strings(tier).tolist()) - set(TIERS))
    if unknown:
        fail(source, f"variable {name!r} has unknown label {unknown[0]!r}; use one of {', '.join(TIERS)}")


def check_tier_leaks(tier, image_id, source, name: str = "tier") -> None:
    """SessionError when an image shown in train or validation is also in test or final_test
    (its test score would measure memory). tier, image_id: (trial,)."""
    tier = strings(tier)
    image_id = np.asarray(image_id)
    held_out = np.isin(tier, ("test", "final_test"))
    fitted = np.isin(tier, ("train", "validation"))
    shared = np.intersect1d(image_id[held_out], image_id[fitted])
    if len(shared):
        fail(
            source,
            f"variable {name!r} puts image {shared[0]} ({len(shared)} images in all) in both a fitted"
            " tier (train/validation) and a test tier; give every repeat of an image one tier",
        )


def make_session(
    source,
    *,
    images,
    responses,
    tier,
    image_id,
    behavior=None,
    behavior_names=None,
    pupil_center=None,
    unit_id=None,
    cell_xyz=None,
    frame_count=None,
    attrs=None,
    names: dict | None = None,
) -> xr.Dataset:
    """Build a session Dataset from plain arrays, checking shapes before xarray sees them.

    images: (trial, y, x) or (trial, channel, y, x), uint8 kept, other numbers -> float32;
    responses: (trial, neuron); tier: (trial,) str; image_id: (trial,) int; behavior: (trial, k);
    pupil_center: (trial, 2); unit_id: (neuron,) integers or strings (default 0..n-1);
    cell_xyz: (neuron, 3).
    A video session (responses (trial, frame, neuron)) takes images (trial, frame, y, x) or
    (trial, frame, channel, y, x), behavior (trial, frame, k), pupil_center (trial, frame, 2),
    frame_count (trial,) (default: every frame recorded) and ``attrs["frame_rate"]``.
    ``attrs["pixel_range"]``, when given, states the images' range; otherwise it is inferred
    (``infer_pixel_range``) and added. names: the caller's names of variables for messages,
    e.g. {"unit_id": "neuron_ids"}. Returns a validated session (values checked).
    """
    names = names or {}

    def called(variable: str) -> str:
        return names.get(variable, variable)

    responses = as_dtype(responses, "float32", "responses", source)
    video = responses.ndim == 3
    lead, frame = (("trial", "frame"), "frame, ") if video else (("trial",), "")
    images = np.asarray(images)
    if video and images.ndim == 3:  # single images: the frame axis of the responses is a mistake
        fail(
            source,
            f"variable 'responses' has shape {responses.shape} but 'images' {images.shape} has no frame axis;"
            " give responses (trial, neuron), or videos (trial, frame, [channel,] y, x) with responses"
            " (trial, frame, neuron)",
        )
    if images.ndim - len(lead) not in (2, 3):
        fail(
            source,
            f"variable 'images' has shape {images.shape}; give (trial, {frame}y, x) or (trial, {frame}channel, y, x)",
        )
    if images.ndim == len(lead) + 3 and images.shape[-1] in (3, 4) and images.shape[len(lead)] > 4:
        fail(
            source,
            f"variable 'images' has shape {images.shape}, channels last; move them to axis {len(lead)}"
            f" (np.moveaxis(images, -1, {len(lead)})) for (trial, {frame}channel, y, x)",
        )
    images = images if images.dtype == np.uint8 else as_dtype(images, "float32", "images", source)
    if responses.ndim not in (2, 3):
        fail(
            source,
            f"variable 'responses' has shape {responses.shape}; give (trial, neuron) or (trial, frame, neuron)",
        )
    n_trials, n_neurons = responses.shape[0], responses.shape[-1]
    tier = np.asarray(tier)
    if tier.dtype.kind not in "OUT":
        fail(source, f"variable {called('tier')!r} has dtype {tier.dtype}; give strings like 'train', 'test'")
    image_id = np.asarray(image_id)
    # image_id first: without one id per trial the importers cannot make tiers either.
    for name, array in (("image_id", image_id), ("tier", tier)):
        if array.ndim != 1:
            fail(
                source,
                f"variable {called(name)!r} has shape {array.shape}; give one value per trial (trial,)",
            )
    per_trial = {"images": images, "tier": tier, "image_id": image_id}
    if behavior is not None:
        behavior = as_dtype(behavior, "float32", "behavior", source)
        behavior = behavior[..., None] if behavior.ndim == len(lead) else behavior
        per_trial["behavior"] = behavior
    if pupil_center is not None:
        pupil_center = as_dtype(pupil_center, "float32", "pupil_center", source)
        per_trial["pupil_center"] = pupil_center
    if video:
        frame_count = np.full(n_trials, responses.shape[1]) if frame_count is None else np.asarray(frame_count)
        if frame_count.ndim != 1:
            fail(source, f"variable 'frame_count' has shape {frame_count.shape}; give one value per trial (trial,)")
        per_trial["frame_count"] = frame_count
    elif frame_count is not None:
        fail(
            source,
            "variable 'frame_count' is given for responses (trial, neuron); give responses (trial, frame, neuron)",
        )
    for name, array in per_trial.items():
        if len(array) != n_trials:
            fail(
                source,
                f"variable {called(name)!r} has {len(array)} trials but 'responses' has {n_trials};"
                " give both the same length",
            )
        if video and name in FRAMED and array.ndim < 3:
            fail(
                source, f"variable {called(name)!r} has shape {array.shape}; give (trial, frame, ...) like 'responses'"
            )
        if video and name in FRAMED and array.shape[1] != responses.shape[1]:
            fail(
                source,
                f"variable {called(name)!r} has {array.shape[1]} frames but 'responses' has"
                f" {responses.shape[1]}; give both the same frames (pad trials to the longest)",
            )
    if n_trials == 0:
        fail(source, "variables 'images' and 'responses' have 0 trials; record at least one train and one test trial")
    check_tier_labels(tier, source, called("tier"))
    check_tier_leaks(tier, image_id, source, called("tier"))
    unit_id = np.arange(n_neurons) if unit_id is None else unit_id
    unit_id = check_unit_ids(unit_id, n_neurons, f"{source}: variable {called('unit_id')!r}")
    dims = (*lead, "y", "x") if images.ndim == len(lead) + 2 else (*lead, "channel", "y", "x")
    data = {
        "images": (dims, images),
        "responses": ((*lead, "neuron"), responses),
        "tier": ("trial", strings(tier).astype(object)),
        "image_id": ("trial", as_dtype(image_id, "int64", called("image_id"), source)),
        "unit_id": ("neuron", unit_id),
    }
    if video:
        data["frame_count"] = ("trial", as_dtype(frame_count, "int64", "frame_count", source))
    coords = {}
    if behavior is not None:
        if behavior.ndim != len(lead) + 1:
            fail(
                source, f"variable 'behavior' has shape {behavior.shape}; give (trial, {frame}behavior_var)"
            )
        k = behavior.shape[-1]
        if behavior_names is None:
            behavior_names = BEHAVIOR_NAMES if k == 3 else [f"behavior_{i}" for i in range(k)]
        if len(behavior_names) != k:
            fail(
                source,
                f"variable 'behavior_names' has {len(behavior_names)} names for {k} behavior"
                " variables; give one name each",
            )
        data["behavior"] = ((*lead, "behavior_var"), behavior)
        coords["behavior_var"] = strings(behavior_names).astype(object)
    if pupil_center is not None:
        if pupil_center.ndim != len(lead) + 1 or pupil_center.shape[-1] != 2:
            fail(source, f"variable 'pupil_center' has shape {pupil_center.shape}; give (trial, {frame}2)")
        data["pupil_center"] = ((*lead, "xy"), pupil_center)
        coords["xy"] = np.array(["x", "y"], dtype=object)
    if cell_xyz is not None:
        cell_xyz = as_dtype(cell_xyz, "float32", called("cell_xyz"), source)
        if cell_xyz.shape != (n_neurons, 3):
            fail(
                source,
                f"variable {called('cell_xyz')!r} has shape {cell_xyz.shape}; give ({n_neurons}, 3):"
                " one x, y, z per neuron",
            )
        for axis, name in enumerate(("cell_x", "cell_y", "cell_z")):
            data[name] = ("neuron", cell_xyz[:, axis])
    ds = xr.Dataset(data, coords=coords, attrs={"schema_version": SCHEMA_VERSION, **(attrs or {})})
    validate(ds, source)
    if "pixel_range" not in ds.attrs:
        ds.attrs["pixel_range"] = list(pixel_range(ds, source))
        ds.attrs["pixel_range_from"] = f"inferred from {images.dtype} images"
    return ds
