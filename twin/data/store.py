"""Session stores on disk: zarr v3 through xarray, written atomically, read lazily.

``write_dataset`` builds a store beside the target and renames it into place at the end, so an
interrupted write (even ``kill -9``) never leaves a readable store at the target path.
``write_session`` validates a session, adds its normalization statistics (``stats_*``, computed
on train trials) and writes it; ``open_session`` opens and checks one without reading the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from zarr.codecs import Crc32cCodec, ZstdCodec

import twin
from twin import metrics
from twin.config import DataConfig
from twin.data.digest import FIX, check_digest, damaged_chunk, write_digest
from twin.data.schema import (
    SCHEMA_VERSION,
    TIERS,
    is_video,
    pixel_range,
    recorded_frames,
    responses_recorded,
    strings,
    validate,
)
from twin.errors import SessionError
from twin.outputs import output

# Trial chunks of about this many bytes: large enough to read fast, small enough to stream.
CHUNK_BYTES = 8 * 2**20
# `twin info` calls a neuron sparse when fewer train trials than this count or fraction are non-zero.
SPARSE_TRIALS = 10
SPARSE_FRACTION = 0.01
SHOW_UNITS = 5  # unit ids listed per kind of quiet neuron
SIGNED_ADVICE = (
    'signed: fit with [fit] loss = "gaussian", or for the poisson loss deconvolve or re-import with'
    " --shift-responses"
)


def write_dataset(ds: xr.Dataset, path, encoding: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``ds`` to the zarr v3 store ``path`` atomically and return the path.

    The store is written to a hidden sibling folder and renamed onto ``path`` only when complete
    (twin.outputs.output): an existing ``path`` is refused unless ``overwrite``. Encodings carried
    over from an opened store are dropped; pass ``encoding`` ({name: {"chunks": ...}}) to set chunks.
    Every variable is compressed with zstd and checksummed with CRC32C, so a chunk damaged on disk
    fails when read instead of decoding to wrong values. String variables (unit ids, names) are
    written as variable-length strings and read back as numpy strings.
    """
    ds = ds.copy(deep=False)
    for variable in ds.variables.values():
        variable.encoding = {}
    # Fixed-width strings (<U) have no zarr v3 specification; variable-length ones (object) do.
    ds = ds.assign({name: var.astype(object) for name, var in ds.data_vars.items() if var.dtype.kind == "U"})
    encoding = {
        name: {"compressors": [ZstdCodec(), Crc32cCodec()]} | (encoding or {}).get(name, {})
        for name in ds.variables
    }
    with output(path, overwrite, "store") as partial:
        ds.to_zarr(partial, mode="a", consolidated=False, zarr_format=3, encoding=encoding)
        write_digest(partial)
    return Path(path)


def trial_chunks(ds: xr.Dataset) -> dict:
    """Encoding that chunks every per-trial variable along trial only (~CHUNK_BYTES a chunk)."""
    encoding = {}
    for name, var in ds.variables.items():
        if var.dims and var.dims[0] == "trial":
            row_bytes = max(1, var.dtype.itemsize * int(np.prod(var.shape[1:])))
            rows = int(np.clip(CHUNK_BYTES // row_bytes, 1, var.shape[0]))
            encoding[name] = {"chunks": (rows, *var.shape[1:])}
    return encoding


def mean_std(values: np.ndarray, axis, skip_nan: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 along ``axis``; ``skip_nan`` leaves NaN (missing responses) out."""
    values = np.asarray(values, dtype=np.float64)
    mean, std = (np.nanmean, np.nanstd) if skip_nan else (np.mean, np.std)
    return mean(values, axis=axis).astype(np.float32), std(values, axis=axis).astype(np.float32)


def streamed_mean_std(parts: list[np.ndarray], axis) -> tuple[np.ndarray, np.ndarray]:
    """``mean_std`` of ``parts`` (each (samples, ...)) joined along samples, NaN left out, one
    part at a time in float64 (two passes: the mean, then squared deviations from it)."""
    count = sum(np.sum(~np.isnan(part), axis=axis, keepdims=True) for part in parts)
    mean = sum(np.nansum(part, axis=axis, keepdims=True, dtype=np.float64) for part in parts) / count
    variance = sum(np.nansum((part - mean) ** 2, axis=axis, keepdims=True) for part in parts) / count
    return (
        np.squeeze(mean, axis=axis).astype(np.float32),
        np.squeeze(np.sqrt(variance), axis=axis).astype(np.float32),
    )


def statistics(ds: xr.Dataset) -> xr.Dataset:
    """Normalization statistics over the train trials of session ``ds``, as ``stats_*`` variables.

    stats_image_mean/std: () or (channel,), over all train pixels; stats_image_pixel_mean/std:
    (y, x) or (channel, y, x); stats_image_min/max: () pixel range of train images;
    stats_response_mean/std: (neuron,), over each neuron's finite responses;
    stats_behavior_mean/std: (behavior_var,); stats_pupil_center_mean/std: (xy,). Train trials
    without responses (all NaN) are left out of every statistic. In a video session every
    recorded frame (before frame_count) of a train trial counts as one sample; padding frames
    are left out.
    """
    recorded = responses_recorded(np.asarray(ds["responses"].values))
    rows = np.flatnonzero((strings(ds["tier"].values) == "train") & recorded)
    video = is_video(ds)
    frame_count = np.asarray(ds["frame_count"].values) if video else None

    def moments(name: str, axis, skip_nan: bool = False) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(ds[name].values)
        if video:  # one trial's recorded frames at a time: a float64 copy of all would be large
            return streamed_mean_std([values[i, : frame_count[i]] for i in rows], axis)
        return mean_std(values[rows], axis, skip_nan=skip_nan)

    images = np.asarray(ds["images"].values)
    pixel_dims = tuple(d for d in ds["images"].dims if d not in ("trial", "frame"))
    global_dims = tuple(d for d in pixel_dims if d == "channel")
    global_axes = (0, len(pixel_dims) - 1, len(pixel_dims))  # samples, y, x
    stats = {}
    stats["stats_image_mean"], stats["stats_image_std"] = (
        (global_dims, a) for a in moments("images", global_axes)
    )
    stats["stats_image_pixel_mean"], stats["stats_image_pixel_std"] = (
        (pixel_dims, a) for a in moments("images", 0)
    )
    shown = [images[i, : frame_count[i]] for i in rows] if video else [images[rows]]
    stats["stats_image_min"] = ((), np.float32(min(part.min() for part in shown)))
    stats["stats_image_max"] = ((), np.float32(max(part.max() for part in shown)))
    for name, dim in (("responses", "neuron"), ("behavior", "behavior_var"), ("pupil_center", "xy")):
        if name in ds:
            key = "response" if name == "responses" else name
            stats[f"stats_{key}_mean"], stats[f"stats_{key}_std"] = (
                ((dim,), a) for a in moments(name, 0, skip_nan=name == "responses")
            )
    return xr.Dataset(stats)


def write_session(ds: xr.Dataset, path, overwrite: bool = False) -> Path:
    """Validate session ``ds``, add its train-trial statistics and write it atomically to ``path``
    (an existing store is replaced only with ``overwrite``)."""
    path = Path(path)
    validate(ds, path)
    ds = ds.drop_vars([name for name in ds.variables if str(name).startswith("stats_")])
    ds = xr.merge([ds, statistics(ds)], combine_attrs="override")
    ds.attrs = {
        **ds.attrs,
        "schema_version": SCHEMA_VERSION,
        "session": ds.attrs.get("session") or path.name.removesuffix(".zarr"),
        "created_by": f"twin {twin.__version__}",
    }
    return write_dataset(ds, path, encoding=trial_chunks(ds), overwrite=overwrite)


def open_dataset(path) -> xr.Dataset:
    """Open any zarr store written by ``write_dataset`` lazily (no data read, no dask); a store
    with a digest is checked against it first (twin.data.digest.check_digest: a stat per chunk)."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise SessionError(
            f"{path}: no zarr store here; check the path (stores are written by twin simulate,"
            " twin import or twin mei)"
        )
    check_digest(path)
    try:
        return xr.open_dataset(path, engine="zarr", consolidated=False, chunks=None)
    except Exception as error:  # zarr raises many kinds for damaged stores
        raise SessionError(f"{path}: cannot be read as a zarr store ({error}); rewrite it") from None


def load_values(ds: xr.Dataset, path) -> xr.Dataset:
    """``ds.load()`` for a dataset opened from the store ``path``; a chunk that fails its
    checksum or cannot be decoded becomes one SessionError line naming the array and chunk."""
    try:
        return ds.load()
    except Exception:  # codecs raise ValueError, RuntimeError, ...
        damaged = damaged_chunk(path)
        if damaged is None:
            raise
        raise SessionError(f"{path}: {damaged}; {FIX}") from None


def open_session(path) -> xr.Dataset:
    """Open the session store ``path`` lazily and check its schema (names, dims, dtypes, tiers)."""
    path = Path(path)
    ds = open_dataset(path)
    outputs = (
        ("predictions", "twin predict"), ("activations", "twin mei"), ("histogram_counts", "twin screen"),
        ("initial_cluster", "twin mds"),
    )
    for name, writer in outputs:
        # Every session store holds stats_response_std (write_session).
        if name in ds and "stats_response_std" not in ds:
            raise SessionError(f"{path}: holds the output of {writer}, not a session; pass a session store (twin import or twin simulate)")
    validate(ds, path, values=False)
    if "stats_response_std" not in ds:
        raise SessionError(
            f"{path}: variable 'stats_response_std' is missing; write the store with"
            " twin.data.store.write_session (twin import / twin simulate)"
        )
    return ds


def value_range(values) -> list[float]:
    """[lo, hi] of ``values``, NaN (missing responses) left out."""
    values = np.asarray(values)
    return [float(np.nanmin(values)), float(np.nanmax(values))]


def few_units(mask: np.ndarray, unit_id: np.ndarray) -> dict:
    """{"count", "unit_ids"}: how many neurons ``mask`` (neuron,) marks and up to SHOW_UNITS ids
    (unit_id (neuron,) int64 or str: JSON ints or strings)."""
    return {"count": int(mask.sum()), "unit_ids": unit_id[mask][:SHOW_UNITS].tolist()}


def quiet_neurons(train_responses: np.ndarray, unit_id: np.ndarray) -> dict:
    """Neurons whose train responses (trial, neuron) carry (almost) no signal, each as
    ``few_units``: all_zero (every response 0), constant (one non-zero value throughout) and
    sparse (non-zero on fewer than max(10, 1%) of the train trials). Their correlations are 0
    (twin.metrics.correlation) and FEVE NaN, which pull scores down or leave them out. Missing
    responses (NaN) are left out."""
    lo, hi = np.nanmin(train_responses, axis=0), np.nanmax(train_responses, axis=0)
    nonzero = np.count_nonzero(np.nan_to_num(train_responses), axis=0)
    all_zero = (lo == 0) & (hi == 0)
    constant = (lo == hi) & ~all_zero
    sparse = (nonzero < max(SPARSE_TRIALS, SPARSE_FRACTION * len(train_responses))) & (lo != hi)
    return {
        "all_zero": few_units(all_zero, unit_id),
        "constant": few_units(constant, unit_id),
        "sparse": few_units(sparse, unit_id),
    }


def session_info(ds: xr.Dataset, path) -> dict:
    """Summary of the session ``ds`` read from the store ``path`` for people and scripts (JSON-ready).

    Keys: session, source, trials {tier: n}, tier_split (how twin import chose tiers, or ""),
    neurons, quiet_neurons (see ``quiet_neurons``), image_shape, image_dtype, pixel_range [lo, hi]
    (values shown as black and white) and pixel_range_from, repeats_per_test_image {min, median,
    max} over test trials with responses, test_repeats (bool: some test image repeats),
    repeat_metrics ("" when oracle and FEVE can be scored, else twin.metrics.repeats_note),
    trials_without_responses (all NaN, e.g. final_test), missing_responses (NaN values on trials
    with responses), responses_signed (bool), response_shift ("" or what twin import
    subtracted), behavior (names), pupil_center (bool), ranges {images, responses, behavior
    {name: [lo, hi]}, pupil_center}, simulated, oracle_correlation (mean over neurons, test tier,
    when enough images repeat) and for simulated sessions ground_truth_ceiling (mean scores of
    the noise-free responses on the test tier).
    Video sessions add frames {min, median, max} (recorded frames per trial), frame_rate (Hz)
    and clip_frames (frames per training clip: [data].clip_frames's default, at most the
    session's frames); their per-neuron summaries use the recorded frames, and the oracle, as
    evaluate scores it, correlates each frame after the default burn-in ([data].burn_in_frames)
    of a repeated video with the same frame of its other repeats.
    """
    tier = strings(ds["tier"].values)
    image_id = np.asarray(ds["image_id"].values)
    responses = np.asarray(ds["responses"].values)
    recorded = responses_recorded(responses)
    test = (tier == "test") & recorded
    video = is_video(ds)
    if video:
        frame_count = np.asarray(ds["frame_count"].values)
        shown = recorded_frames(frame_count, ds.sizes["frame"])

    def samples(trials: np.ndarray) -> np.ndarray:
        """(sample, neuron): the responses of ``trials`` (trial,) bool, recorded frames only."""
        return responses[trials][shown[trials]] if video else responses[trials]

    # The repeat metrics' samples and ids, as evaluate scores them: test trials, or the frames of
    # test videos after the default burn-in with id (video, frame).
    test_responses, test_ids = responses[test], image_id[test]
    if video:
        trial, frame, test_ids = metrics.scored_frames(frame_count[test], test_ids, ds.sizes["frame"])
        test_responses = test_responses[trial, frame]

    _, repeats = np.unique(image_id[test], return_counts=True)
    repeats = repeats if repeats.size else np.zeros(1, int)
    behavior = [str(n) for n in ds["behavior_var"].values] if "behavior" in ds else []
    unit_id = np.asarray(ds["unit_id"].values)
    info = {
        "session": str(ds.attrs.get("session", "")),
        "source": str(ds.attrs.get("source", "")),
        "trials": {name: int(np.sum(tier == name)) for name in TIERS if np.any(tier == name)},
        "tier_split": str(ds.attrs.get("tier_split", "")),
        "neurons": int(ds.sizes["neuron"]),
        "quiet_neurons": quiet_neurons(samples((tier == "train") & recorded), unit_id),
        "image_shape": [int(ds.sizes[d]) for d in ds["images"].dims if d not in ("trial", "frame")],
        "image_dtype": str(ds["images"].dtype),
        "shown_size": [int(v) for v in ds.attrs.get("shown_size", [])],
        "pixel_range": list(pixel_range(ds, path)),
        "pixel_range_from": (
            str(ds.attrs.get("pixel_range_from", "stated"))
            if "pixel_range" in ds.attrs
            else "inferred when read"
        ),
        "repeats_per_test_image": {
            "min": int(repeats.min()),
            "median": float(np.median(repeats)),
            "max": int(repeats.max()),
        },
        "test_repeats": bool(repeats.max() > 1),
        "repeat_metrics": metrics.repeats_note(test_ids, unit="frames" if video else "images") or "",
        "trials_without_responses": int(np.sum(~recorded)),
        "missing_responses": int(np.isnan(samples(recorded)).sum()),
        "responses_signed": bool(np.nanmin(responses) < 0),
        "response_shift": str(ds.attrs.get("response_shift", "")),
        "behavior": behavior,
        "pupil_center": "pupil_center" in ds,
        "ranges": {
            "images": value_range(ds["images"].values),
            "responses": value_range(responses[recorded]),
        },
        "simulated": bool(ds.attrs.get("simulated", False)),
    }
    if video:
        frames = int(ds.sizes["frame"])
        info["frames"] = {
            "min": int(frame_count.min()),
            "median": float(np.median(frame_count)),
            "max": int(frame_count.max()),
        }
        info["frame_rate"] = float(ds.attrs["frame_rate"])
        info["clip_frames"] = min(DataConfig().clip_frames, frames)
    if not info["repeat_metrics"]:
        info["oracle_correlation"] = float(np.nanmean(metrics.oracle_correlation(test_responses, test_ids)))
    if behavior:
        values = np.asarray(ds["behavior"].values)
        info["ranges"]["behavior"] = {n: value_range(values[..., i]) for i, n in enumerate(behavior)}
    if "pupil_center" in ds:
        info["ranges"]["pupil_center"] = value_range(ds["pupil_center"].values)
    if info["simulated"]:
        from twin.data.simulate import ground_truth_ceiling

        info["ground_truth_ceiling"] = {
            name: float(np.nanmean(scores)) for name, scores in ground_truth_ceiling(ds).items()
        }
    return info


def format_quiet(quiet: dict) -> str:
    """``quiet_neurons`` as one phrase, e.g. '2 all-zero (units 3, 4), 1 sparse (unit 9)'."""
    names = {
        "all_zero": "all-zero",
        "constant": "constant",
        "sparse": f"sparse (< max({SPARSE_TRIALS}, {SPARSE_FRACTION:.0%}) non-zero train trials)",
    }
    parts = []
    for key, name in names.items():
        count, ids = quiet[key]["count"], quiet[key]["unit_ids"]
        if count:
            more = ", ..." if count > len(ids) else ""
            parts.append(f"{count} {name}: unit_id {', '.join(map(str, ids))}{more}")
    return "; ".join(parts)


def format_info(info: dict) -> str:
    """``session_info`` as aligned text lines."""
    ranges = info["ranges"]
    quiet = format_quiet(info["quiet_neurons"])
    lo, hi = info["pixel_range"]
    repeats = "test repeats {min}..{max} per image (median {median:g})".format(
        **info["repeats_per_test_image"]
    )
    if info["repeat_metrics"]:
        repeats += f"; oracle and FEVE {info['repeat_metrics']}"
    responses = f"responses    {ranges['responses'][0]:.4g}..{ranges['responses'][1]:.4g}"
    if info["missing_responses"]:
        responses += f" ({info['missing_responses']} missing values (NaN), masked in the loss and scores)"
    if info["responses_signed"]:
        responses += f" ({SIGNED_ADVICE})"
    if info["response_shift"]:
        responses += f" (shifted at import: {info['response_shift']} minimum subtracted)"
    lines = [
        f"session      {info['session']}  ({info['source'] or 'unknown source'})",
        "trials       "
        + ", ".join(f"{n} {tier}" for tier, n in info["trials"].items())
        + (
            f"; {info['trials_without_responses']} without responses (NaN for every neuron: kept,"
            " left out of fitting and scoring)"
            if info["trials_without_responses"]
            else ""
        ),
        *([f"tiers        {info['tier_split']}"] if info["tier_split"] else []),
        f"neurons      {info['neurons']}" + (f" ({quiet})" if quiet else ""),
        f"images       {' x '.join(map(str, info['image_shape']))} {info['image_dtype']},"
        + (f" shown at {'x'.join(map(str, info['shown_size']))}," if info["shown_size"] else "")
        + f" pixel values {ranges['images'][0]:g}..{ranges['images'][1]:g},"
        f" black..white {lo:g}..{hi:g} ({info['pixel_range_from']})",
        *(
            [
                "frames       {min}..{max} per trial (median {median:g}) at {rate:g} Hz; training clips of"
                " {clip} frames ([data].clip_frames)".format(
                    **info["frames"], rate=info["frame_rate"], clip=info["clip_frames"]
                )
            ]
            if "frames" in info
            else []
        ),
        repeats,
        responses,
        "behavior     "
        + (
            ", ".join(f"{n} {lo:.3g}..{hi:.3g}" for n, (lo, hi) in ranges["behavior"].items())
            if info["behavior"]
            else "none"
        ),
        "pupil center "
        + ("{:.3g}..{:.3g}".format(*ranges["pupil_center"]) if info["pupil_center"] else "none"),
    ]
    if "oracle_correlation" in info:
        lines.append(f"oracle r     {info['oracle_correlation']:.3f} (test tier, mean over neurons)")
    if "ground_truth_ceiling" in info:
        lines.append(
            "ground truth ceiling on test (noise-free responses): "
            + ", ".join(f"{k} {v:.3f}" for k, v in info["ground_truth_ceiling"].items())
        )
    return "\n".join(lines)
