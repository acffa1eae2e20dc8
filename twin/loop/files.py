"""The loop's files: the stimulus manifest and the rig's responses.npz.

Files that come back from the rig are untrusted: manifest.json is checked field by field against
what `twin export` writes, stimulus file names must stay inside the stimulus folder, and
responses.npz is read without pickles; every problem is one StimulusError line.

responses.npz (what a rig writes; `twin respond` writes the same):
    responses (trial, neuron) float32 — one row per presentation, in any order
    stimulus_id (trial,) int64 — the manifest's stimulus id shown on that trial
    unit_id (neuron,) int64 or str — the recorded neurons' ids (those of the run's session, of the
        same kind: integers for integer ids, strings for string ids)
For clips (a video export) each row of responses is the mean over the clip's last
``response_window`` frames (manifest.json), the frames whose response the MEVs maximized;
`twin respond` adds traces (trial, frame, neuron), the responses frame by frame.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from twin.errors import StimulusError

MANIFEST = "manifest.json"
KINDS = ("mei", "dei", "natural", "natural_masked")  # stimulus kinds `twin export` writes
FLOAT32_MAX = float(np.finfo(np.float32).max)


def shown(value) -> str:
    """A user's value for a one-line message: its repr (control characters escaped), cut short."""
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def is_integer(value) -> bool:
    """A JSON integer that fits int64; booleans are not integers here."""
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def is_number(value) -> bool:
    """A JSON number within float32's range (NaN and Infinity are refused): what export writes,
    and small enough that sums and squares of many of them stay finite."""
    return (is_integer(value) or isinstance(value, float)) and abs(value) <= FLOAT32_MAX


def is_shape(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(is_integer(n) and n >= 1 for n in value)


# Field rules: (what the field must be, in error messages; the test of a value).
STRING = ("a string", lambda v: isinstance(v, str))
INTEGER = ("an integer", is_integer)
UNIT_ID = ("an integer or a non-empty string", lambda v: is_integer(v) or isinstance(v, str) and v != "")
INDEX = ("an integer >= 0", lambda v: is_integer(v) and v >= 0)
INDEX_OR_NULL = ("an integer >= 0 or null", lambda v: v is None or is_integer(v) and v >= 0)
COUNT = ("an integer >= 1", lambda v: is_integer(v) and v >= 1)
NUMBER = ("a finite number within float32 range", is_number)
POSITIVE = ("a number > 0", lambda v: is_number(v) and v > 0)
POSITIVE_OR_NULL = ("a number > 0 or null", lambda v: v is None or is_number(v) and v > 0)
SHAPE = ("[height, width] in pixels", is_shape)
SHAPE_OR_NULL = ("[height, width] in pixels or null", lambda v: v is None or is_shape(v))
OBJECT = ("an object", lambda v: isinstance(v, dict))
LIST = ("a list", lambda v: isinstance(v, list))
KIND = (f"one of {', '.join(KINDS)}", lambda v: isinstance(v, str) and v in KINDS)
MATCHING = ("one of channel, luminance", lambda v: v in ("channel", "luminance"))


def per_primary(rule: tuple) -> tuple:
    """A field rule that also takes a list of 3 values (red, green, blue), each following ``rule``."""
    description, test = rule
    return (
        f"{description}, or a list of 3 of them (red, green, blue)",
        lambda v: test(v) or isinstance(v, list) and len(v) == 3 and all(is_number(x) and test(x) for x in v),
    )


# What `twin export` writes (see twin.loop.export); anything else is refused, so that a hand edit
# the loop would not read (a misspelt field) cannot pass unnoticed.
MANIFEST_FIELDS = {
    "meis": STRING,
    "run": STRING,
    "session": INDEX,
    "store": STRING,
    "monitor": OBJECT,
    "target": OBJECT,
    "model_shape": SHAPE,
    "screen_shape": SHAPE,
    "repeats": COUNT,
    "seed": INTEGER,
    "stimuli": LIST,
    "rejected": LIST,
    "order": LIST,
    "natural_spectral_slope": NUMBER,
    "frame_rate": POSITIVE,
    "frames": COUNT,
    "response_window": COUNT,
}
MONITOR_FIELDS = {
    "a": per_primary(POSITIVE),
    "gamma": per_primary(POSITIVE),
    "c": per_primary(NUMBER),
    "screen": SHAPE_OR_NULL,
    "mean_luminance": per_primary(POSITIVE_OR_NULL),
    "rms_contrast": per_primary(POSITIVE_OR_NULL),
}
TARGET_FIELDS = {
    "mean_luminance": per_primary(POSITIVE),
    "rms_contrast": per_primary(POSITIVE),
    "tolerance": POSITIVE,
    "matching": MATCHING,
}
STIMULUS_FIELDS = {
    "stimulus_id": INDEX,
    "file": STRING,
    "kind": KIND,
    "unit_id": UNIT_ID,
    "neuron_index": INDEX,
    "seed": INDEX_OR_NULL,
    "image_trial": INDEX_OR_NULL,
    "predicted_response": NUMBER,
    "mean_luminance": per_primary(NUMBER),
    "rms_contrast": per_primary(NUMBER),
    "spectral_kl": NUMBER,
    "preview": STRING,
    "frames": COUNT,
}
# Fields added after the first manifests were written: older exports lack them and stay readable.
OPTIONAL_FIELDS = ("natural_spectral_slope", "spectral_kl")
# The fields of video exports (clips), which image exports lack.
VIDEO_FIELDS = ("frame_rate", "frames", "response_window", "preview")
CSV_CHECKED = ("file", "kind", "unit_id")  # manifest.csv columns that must agree with manifest.json


def check_fields(path: Path, where: str, values: dict, fields: dict) -> None:
    """Refuse unknown, missing (unless in OPTIONAL_FIELDS) and mistyped fields of one JSON object;
    ``where`` prefixes messages."""
    for name in values:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            fix = f"rename it to {close[0]!r}" if close else "remove it"
            raise StimulusError(f"{path}: {where}unknown field {shown(name)}; {fix}")
    for name, (description, test) in fields.items():
        if name not in values and name in OPTIONAL_FIELDS + VIDEO_FIELDS:
            continue
        if name not in values:
            raise StimulusError(f"{path}: {where}field {name!r} is missing; export the stimuli again")
        if not test(values[name]):
            raise StimulusError(
                f"{path}: {where}field {name!r} is {shown(values[name])}, not {description};"
                " export the stimuli again"
            )


def check_stimuli(path: Path, manifest: dict) -> None:
    """Each stimulus follows STIMULUS_FIELDS, ids are 0, 1, 2, ... in order, one MEI and one of
    each control per unit, and the presentation order names only listed stimuli."""
    stimuli = manifest["stimuli"]
    if not stimuli:
        raise StimulusError(f"{path}: field 'stimuli' is empty; export the stimuli again")
    first = {}
    for i, stimulus in enumerate(stimuli):
        if not isinstance(stimulus, dict):
            raise StimulusError(f"{path}: stimulus {i} is {shown(stimulus)}, not an object; export the stimuli again")
        check_fields(path, f"stimulus {i}: ", stimulus, STIMULUS_FIELDS)
        if stimulus["stimulus_id"] != i:
            raise StimulusError(
                f"{path}: stimulus {i}: field 'stimulus_id' is {stimulus['stimulus_id']}; ids number"
                " the stimuli 0, 1, 2, ... in the order listed: export the stimuli again"
            )
        key = (stimulus["unit_id"], stimulus["kind"])
        if stimulus["kind"] != "dei" and key in first:
            raise StimulusError(
                f"{path}: stimulus {i}: unit {key[0]} already has a {key[1]!r} stimulus"
                f" (stimulus {first[key]}); keep one per unit"
            )
        first.setdefault(key, i)
    if len({isinstance(stimulus["unit_id"], str) for stimulus in stimuli}) > 1:
        raise StimulusError(
            f"{path}: field 'unit_id' holds integers for some stimuli and strings for others; export the"
            " stimuli again"
        )
    if not manifest["order"]:
        raise StimulusError(f"{path}: field 'order' is empty; export the stimuli again")
    for entry in manifest["order"]:
        if not (is_integer(entry) and 0 <= entry < len(stimuli)):
            raise StimulusError(
                f"{path}: field 'order' holds {shown(entry)}, not a stimulus id 0..{len(stimuli) - 1};"
                " export the stimuli again"
            )


def read_text(path: Path) -> str:
    """A UTF-8 text file; unreadable files raise StimulusError."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise StimulusError(f"{path}: not UTF-8 text (byte {error.start}); export the stimuli again") from None
    except OSError as error:
        raise StimulusError(f"{path}: cannot be read ({error.strerror}); export the stimuli again") from None


def unique_keys(pairs: list[tuple]) -> dict:
    """json object hook: a key given twice is refused (readers disagree on which one counts)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"key {shown(key)} appears twice")
        seen.add(key)
    return dict(pairs)


def check_csv(folder: Path, manifest: dict) -> None:
    """manifest.csv, when present, names for each presentation the file, kind and unit that
    manifest.json gives its stimulus id: the rig shows the csv, the loop reads the json."""
    path = folder / "manifest.csv"
    if not path.exists():
        return
    stimuli = {str(s["stimulus_id"]): s for s in manifest["stimuli"]}
    try:
        rows = list(csv.DictReader(io.StringIO(read_text(path))))
    except csv.Error as error:
        raise StimulusError(f"{path}: not a readable CSV file ({error}); export the stimuli again") from None
    for line, row in enumerate(rows, start=2):
        stimulus = stimuli.get(row.get("stimulus_id"))
        if stimulus is None:
            raise StimulusError(
                f"{path}: line {line}: stimulus_id {shown(row.get('stimulus_id'))} is not a stimulus"
                f" of {MANIFEST}; undo the edit or export the stimuli again"
            )
        for field in CSV_CHECKED:
            if row.get(field) != str(stimulus[field]):
                raise StimulusError(
                    f"{path}: line {line}: {field} {shown(row.get(field))} disagrees with {MANIFEST}"
                    f" ({shown(stimulus[field])} for stimulus {stimulus['stimulus_id']}); the rig shows"
                    " manifest.csv and the loop reads manifest.json: undo the edit or export the stimuli again"
                )


def read_manifest(stimuli: str | Path) -> dict:
    """The checked manifest.json of an exported stimulus folder (fields as `twin export` writes them).

    manifest.csv, when present, must agree with it, and every stimulus file must lie inside the
    folder and decode (see ``stimulus_path``); anything else raises StimulusError in one line.
    """
    folder = Path(stimuli)
    path = folder / MANIFEST
    if not path.exists():
        raise StimulusError(f"{path}: no manifest; pass the folder written by `twin export`")
    try:
        manifest = json.loads(read_text(path), object_pairs_hook=unique_keys)
    except (ValueError, RecursionError) as error:
        raise StimulusError(f"{path}: not valid JSON ({error}); export the stimuli again") from None
    if not isinstance(manifest, dict):
        raise StimulusError(f"{path}: holds {shown(manifest)}, not a JSON object; export the stimuli again")
    check_fields(path, "", manifest, MANIFEST_FIELDS)
    check_fields(path, "monitor: ", manifest["monitor"], MONITOR_FIELDS)
    check_fields(path, "target: ", manifest["target"], TARGET_FIELDS)
    check_stimuli(path, manifest)
    check_video(path, manifest)
    check_csv(folder, manifest)
    for stimulus in manifest["stimuli"]:
        if is_clip_manifest(manifest):
            clip_paths(folder, stimulus, manifest["screen_shape"], manifest["frames"], stimulus_mode(manifest))
            preview_path(folder, stimulus)
        else:
            stimulus_path(folder, stimulus, manifest["screen_shape"], stimulus_mode(manifest))
    return manifest


def is_clip_manifest(manifest: dict) -> bool:
    """Whether a manifest lists clips (a video export: it states frames) rather than images."""
    return "frames" in manifest


def check_video(path: Path, manifest: dict) -> None:
    """A video manifest states frame_rate, frames and response_window (at most frames) together,
    and each of its stimuli its frames (the manifest's) and preview; an image manifest none of them."""
    given = [name for name in ("frame_rate", "frames", "response_window") if name in manifest]
    if given and len(given) < 3:
        missing = next(name for name in ("frame_rate", "frames", "response_window") if name not in manifest)
        raise StimulusError(f"{path}: field {given[0]!r} is given but {missing!r} is missing; export the stimuli again")
    for stimulus in manifest["stimuli"]:
        for name in ("frames", "preview"):
            if given and name not in stimulus:
                raise StimulusError(
                    f"{path}: stimulus {stimulus['stimulus_id']}: field {name!r} is missing; export the stimuli again"
                )
            if not given and name in stimulus:
                raise StimulusError(
                    f"{path}: stimulus {stimulus['stimulus_id']}: field {name!r} belongs to clips but the manifest"
                    " states no frames; export the stimuli again"
                )
        if given and stimulus["frames"] != manifest["frames"]:
            raise StimulusError(
                f"{path}: stimulus {stimulus['stimulus_id']}: field 'frames' is {stimulus['frames']}, not the"
                f" manifest's {manifest['frames']}; export the stimuli again"
            )
    if given and manifest["response_window"] > manifest["frames"]:
        raise StimulusError(
            f"{path}: field 'response_window' is {manifest['response_window']}, above frames ="
            f" {manifest['frames']}; export the stimuli again"
        )


def stimulus_mode(manifest: dict) -> str:
    """The image mode of a manifest's stimuli: "L" (8-bit gray) for a gray monitor, "RGB" for a
    colour one (monitor values given per primary)."""
    from twin.loop.monitor import Monitor, image_mode

    return image_mode(Monitor.from_dict(manifest["monitor"]).primaries)


def inside(stimuli: str | Path, stimulus: dict, name: str) -> tuple[Path, str]:
    """(the resolved path of ``name`` inside the folder ``stimuli``, the prefix of messages about
    it). Names that leave the folder (absolute paths, ``..``, symbolic links pointing outside)
    are refused, so a manifest cannot make the loop read, or the report embed, any other file."""
    folder = Path(stimuli).resolve()
    where = f"{Path(stimuli) / MANIFEST}: stimulus {stimulus['stimulus_id']}: file {shown(name)}"
    try:
        path = (folder / name).resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symbolic-link loop
        path = None
    if path is None or not path.is_relative_to(folder):
        raise StimulusError(f"{where} lies outside {folder}; name an image inside the stimulus folder, relative to it")
    return path, where


def checked_image(path: Path, where: str, screen_shape: list[int], mode: str) -> Path:
    """``path`` when it is an 8-bit image of ``mode`` and ``screen_shape`` (height, width)."""
    if not path.is_file():
        raise StimulusError(f"{where} is missing or not a file; export the stimuli again")
    try:
        with Image.open(path) as image:
            image.load()
            image_mode, shape = image.mode, [image.height, image.width]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise StimulusError(f"{where} is not a readable image ({error}); export the stimuli again") from None
    if image_mode != mode or shape != list(screen_shape):
        kind = "8-bit gray" if mode == "L" else "8-bit colour"
        raise StimulusError(
            f"{where} is a {shape[0]}x{shape[1]} image of mode {image_mode}, not {screen_shape[0]}x{screen_shape[1]}"
            f" {kind} (mode {mode}); export the stimuli again"
        )
    return path


def stimulus_path(stimuli: str | Path, stimulus: dict, screen_shape: list[int], mode: str = "L") -> Path:
    """The image file of one manifest stimulus: inside the folder ``stimuli`` (``inside``), an
    8-bit image of ``mode`` (L gray or RGB, ``stimulus_mode``) and of the manifest's screen_shape
    (height, width), as `twin export` writes it. ``stimulus["file"]`` is relative to the folder.
    Every reader of a stimulus file goes through here, or through ``clip_paths`` for clips."""
    return checked_image(*inside(stimuli, stimulus, stimulus["file"]), screen_shape, mode)


def clip_paths(stimuli: str | Path, stimulus: dict, screen_shape: list[int], frames: int, mode: str = "L") -> list[Path]:
    """The frame files (frames,) of one clip of a video manifest: ``stimulus["file"]`` is a folder
    inside ``stimuli`` holding frame_0000.png ... one per frame, each checked as ``stimulus_path``
    checks an image."""
    name = stimulus["file"]
    return [
        checked_image(*inside(stimuli, stimulus, f"{name}/frame_{frame:04d}.png"), screen_shape, mode)
        for frame in range(frames)
    ]


def preview_path(stimuli: str | Path, stimulus: dict) -> Path:
    """The animated GIF preview of one clip of a video manifest, inside the folder ``stimuli``."""
    path, where = inside(stimuli, stimulus, stimulus["preview"])
    where = where.replace(": file ", ": preview ")
    if not path.is_file():
        raise StimulusError(f"{where} is missing or not a file; export the stimuli again")
    try:
        with Image.open(path) as image:
            image_format = image.format
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise StimulusError(f"{where} is not a readable image ({error}); export the stimuli again") from None
    if image_format != "GIF":
        raise StimulusError(f"{where} is a {image_format} image, not a GIF; export the stimuli again")
    return path


def write_responses(
    path: str | Path,
    responses: np.ndarray,
    stimulus_id: np.ndarray,
    unit_id: np.ndarray,
    overwrite: bool = False,
    traces: np.ndarray | None = None,
) -> None:
    """Write responses.npz atomically: responses (trial, neuron), stimulus_id (trial,), unit_id
    (neuron,) integers or strings, and for clips optionally traces (trial, frame, neuron); an
    existing file is replaced only with ``overwrite``."""
    from twin.data.schema import unit_ids
    from twin.outputs import output

    extra = {} if traces is None else {"traces": np.asarray(traces, np.float32)}
    with output(path, overwrite, "file") as staged, open(staged, "wb") as file:
        np.savez(
            file,
            responses=np.asarray(responses, np.float32),
            stimulus_id=np.asarray(stimulus_id, np.int64),
            unit_id=unit_ids(unit_id),
            **extra,
        )


def read_responses(path: str | Path) -> dict[str, np.ndarray]:
    """Read and check a rig's responses.npz (see the module docstring)."""
    from twin.data.importers import npz_arrays
    from twin.data.schema import unit_ids

    path = Path(path)

    def check(keys: list[str]) -> None:
        for key in ("responses", "stimulus_id", "unit_id"):
            if key not in keys:
                raise StimulusError(
                    f"{path}: missing array {key!r}; a rig file holds responses, stimulus_id, unit_id"
                )

    arrays = npz_arrays(path, StimulusError, check)
    responses, stimulus_id, unit_id = arrays["responses"], arrays["stimulus_id"], arrays["unit_id"]
    if responses.ndim != 2:
        raise StimulusError(f"{path}: responses has shape {responses.shape}; write (trial, neuron)")
    if stimulus_id.shape != (responses.shape[0],):
        raise StimulusError(
            f"{path}: stimulus_id has shape {stimulus_id.shape} but responses has"
            f" {responses.shape[0]} trials; write one stimulus id per trial"
        )
    if unit_id.shape != (responses.shape[1],):
        raise StimulusError(
            f"{path}: unit_id has shape {unit_id.shape} but responses has"
            f" {responses.shape[1]} neurons; write one unit id per column"
        )
    if not np.issubdtype(stimulus_id.dtype, np.integer):
        raise StimulusError(f"{path}: stimulus_id must be an integer array")
    if unit_id.dtype.kind not in "iuU":
        raise StimulusError(f"{path}: unit_id has dtype {unit_id.dtype}; write integer or string unit ids")
    if responses.dtype.kind not in "iuf":
        raise StimulusError(f"{path}: responses has dtype {responses.dtype}; write real numbers (float32)")
    if responses.shape[0] == 0 or responses.shape[1] == 0:
        raise StimulusError(
            f"{path}: responses has shape {responses.shape}, no trials or no neurons; pass the rig's recording"
        )
    if not np.all(np.isfinite(responses)):
        raise StimulusError(f"{path}: responses contain NaN or inf; drop or fix those trials")
    if np.abs(responses).max() > FLOAT32_MAX:
        raise StimulusError(
            f"{path}: responses reach {np.abs(responses).max():.3g}, beyond float32; write them in their"
            " recorded units as float32"
        )
    if len(np.unique(unit_id)) != len(unit_id):
        raise StimulusError(f"{path}: unit_id has duplicates; each column is one neuron")
    return {
        "responses": responses.astype(np.float64),
        "stimulus_id": stimulus_id.astype(np.int64),
        "unit_id": unit_ids(unit_id),
    }
