"""Two-photon sessions in NWB files (as DANDI and the Allen Brain Observatory store them) as
session Datasets (write them with ``write_session``).

What ``from_nwb`` reads, with pynwb:
- responses: one ``RoiResponseSeries`` (time, roi) of a processing module (``processing["ophys"]``,
  inside ``Fluorescence``, ``DfOverF`` or any other interface), in its units (data * conversion +
  offset), sampled at its ``timestamps`` or at ``starting_time`` + i / ``rate``;
- presentations: one ``TimeIntervals`` table (``nwb.intervals[...]`` or ``nwb.trials``) with
  ``start_time``, ``stop_time`` and an integer image index column (``frame``, ``image_index``,
  ``stimulus_index`` or ``image_id``); index -1 (the Allen Brain Observatory's blank screen) marks a
  presentation without an image, which is left out. Or one ``IndexSeries`` in ``nwb.stimulus``:
  image data[i] is shown from timestamp i to timestamp i + 1;
- templates: one ``nwb.stimulus_template`` entry (or the one the IndexSeries indexes), an
  ``ImageSeries`` (image, y, x) or (image, y, x, 3) or an ``Images`` container of
  ``GrayscaleImage`` (y, x) / ``RGBImage`` (y, x, 3) taken in its ``order_of_images``;
- unit ids: the ids of the series' ROIs in their ``PlaneSegmentation``; cell positions, when the
  imaging plane has a ``grid_spacing``: the centres of the ROIs' ``image_mask`` (roi, x, y) or
  ``pixel_mask`` (x, y, weight) in micrometres, z the plane's ``origin_coords`` z (else 0).

A trial is one presentation; its response is each ROI's mean over the samples t with
onset + START <= t < onset + END (``window``), or start_time <= t < stop_time without a window.
Behaviour series named by the caller (running speed, pupil area: TimeSeries of one number per
sample) are averaged over the same windows.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import xarray as xr

from twin.data.importers import (
    image_ids_from_pixels,
    range_attrs,
    read_tiers,
    split_tiers,
)
from twin.data.schema import fail, make_session

IMAGE_COLUMNS = ("frame", "image_index", "stimulus_index", "image_id")
BLANK = -1  # the Allen Brain Observatory's image index of a presentation of the grey screen
MICROMETRES = {"meters": 1e6, "m": 1e6, "millimeters": 1e3, "mm": 1e3, "micrometers": 1.0, "um": 1.0}
DAMAGED = "the file is damaged or truncated; download it again"
# What pynwb, hdmf and h5py raise for files they cannot parse (h5py: OSError, KeyError; hdmf:
# ConstructError, BuildError, IndexError on a damaged cached schema; docval: TypeError,
# ValueError on malformed attributes).
UNREADABLE = (OSError, KeyError, IndexError, ValueError, TypeError, RuntimeError, AttributeError)
MAX_REASON = 200


class Responses(NamedTuple):
    """The chosen RoiResponseSeries: its path, trace (time, roi) float64 in its units, sample
    times (time,) s, ROI ids (roi,), positions (roi, 3) micrometres or None, and how the
    positions were found (or why not)."""

    name: str
    trace: np.ndarray
    times: np.ndarray
    unit_id: np.ndarray
    cell_xyz: np.ndarray | None
    positions: str


class Presentations(NamedTuple):
    """The chosen stimulus table or IndexSeries: its name, its image index column ('data' for an
    IndexSeries), per row (presentation,) start and stop in seconds and the image index (int64),
    and the Images or ImageSeries an IndexSeries indexes (else None)."""

    name: str
    column: str
    start: np.ndarray
    stop: np.ndarray
    index: np.ndarray
    indexed: object = None


def library_errors() -> tuple[type[Exception], ...]:
    from hdmf.build.errors import BuildError, ConstructError

    return (*UNREADABLE, BuildError, ConstructError)


def reason(error: Exception) -> str:
    """What went wrong, in at most MAX_REASON characters: hdmf's "path: message" for an object it
    could not build (not the dump of its contents), else the first line of ``error``, or its
    type when it says nothing."""
    from hdmf.build.errors import ConstructError

    if isinstance(error, ConstructError) and len(error.args) == 2:
        text = f"{getattr(error.args[0], 'path', 'an object')}: {error.args[1]}"
    else:
        lines = str(error).strip().splitlines()
        text = lines[0] if lines else type(error).__name__
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def guarded(read, path: Path, problem: str, fix: str = DAMAGED):
    """``read()``; what pynwb, hdmf and h5py raise becomes a SessionError "problem (reason); fix"."""
    try:
        return read()
    except library_errors() as error:
        fail(path, f"{problem} ({reason(error)}); {fix}")
    except MemoryError:  # a real size beyond this machine, or a damaged size in the file
        fail(
            path,
            f"{problem} (larger than this machine's memory); check the file, or import on a larger machine",
        )


def read_array(data, path: Path, what: str, key=()) -> np.ndarray:
    """``data[key]`` of the HDF5 dataset (or array-like) ``data`` of the NWB object ``what``."""
    whole = key == () and not isinstance(data, h5py.Dataset)
    return guarded(lambda: np.asarray(data if whole else data[key]), path, f"{what} cannot be read")


@contextlib.contextmanager
def open_nwb(path: Path):
    """The NWBFile of ``path``, open for the duration of the block."""
    from pynwb import NWBHDF5IO

    if not path.is_file():
        fail(path, "is a folder; pass an .nwb file" if path.is_dir() else "no such file; pass an .nwb file")
    fix = "check the file, or download it again"
    if not guarded(lambda: h5py.is_hdf5(path), path, "cannot be opened", fix):
        fail(path, "is not an HDF5 file (NWB 2 files are HDF5); pass an .nwb file, or download it again")
    io = guarded(lambda: NWBHDF5IO(str(path), "r"), path, "cannot be opened as NWB", fix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pynwb's notes on cached namespaces
            nwb = guarded(io.read, path, "cannot be read as NWB", fix)
        yield nwb
    finally:
        io.close()


def choose(found: list[str], name: str | None, what: str, flag: str, path: Path) -> str:
    """The one of ``found`` (paths like 'ophys/DfOverF/RoiResponseSeries') that ``name`` (any of
    their trailing parts or the name of a folder in them) picks, or the only one without a name."""
    if name is None:
        if len(found) == 1:
            return found[0]
        fail(path, f"holds {len(found)} {what}: {', '.join(found)}; pick one with {flag} NAME")
    picked = [f for f in found if f"/{name}/" in f"/{f}/"]
    if len(picked) != 1:
        have = "none of them" if not picked else f"{len(picked)} of them"
        fail(path, f"{flag} {name!r} names {have}; the {what} are {', '.join(found)}")
    return picked[0]


# ---------------------------------------------------------------------------- responses


def response_series(nwb) -> dict:
    """'module/interface/series' (or 'module/series') -> every RoiResponseSeries of the file."""
    from pynwb.ophys import RoiResponseSeries

    found = {}
    for module_name, module in nwb.processing.items():
        for name, interface in module.data_interfaces.items():
            if isinstance(interface, RoiResponseSeries):
                found[f"{module_name}/{name}"] = interface
            for series_name, series in getattr(interface, "roi_response_series", {}).items():
                found[f"{module_name}/{name}/{series_name}"] = series
    return found


def sample_times(series, n: int, path: Path, name: str) -> np.ndarray:
    """(n,) seconds of the samples of ``series``: its timestamps, or starting_time + i / rate."""
    if series.timestamps is not None:
        linked = series.timestamps  # another TimeSeries when the file links its timestamps
        data = linked.timestamps if hasattr(linked, "timestamps") else linked
        times = read_array(data, path, f"{name}.timestamps")
        if times.shape != (n,) or times.dtype.kind not in "iuf":
            fail(
                path,
                f"{name}.timestamps holds {times.dtype} values of shape {times.shape} but the series has"
                f" {n} samples; give one timestamp in seconds per sample",
            )
        times = times.astype(np.float64)
    else:
        rate, start = series.rate, series.starting_time or 0.0
        if rate is None or not np.isfinite(rate) or rate <= 0:
            fail(path, f"{name} has neither timestamps nor a positive rate ({rate}); store its timestamps")
        times = start + np.arange(n) / rate
    if not np.isfinite(times).all():
        fail(path, f"{name}.timestamps holds NaN or inf; store the time of every sample")
    backwards = np.diff(times) <= 0
    if backwards.any():
        i = int(np.argmax(backwards)) + 1
        fail(
            path,
            f"{name}.timestamps are not increasing (sample {i} at {times[i]:g} s follows"
            f" {times[i - 1]:g} s); store the samples in time order",
        )
    return times


def to_micrometres(values, unit: str) -> np.ndarray | None:
    """``values`` in ``unit`` (an NWB length unit) as micrometres; None for an unknown unit."""
    scale, values = MICROMETRES.get(str(unit).lower()), np.asarray(values)
    return None if scale is None or values.dtype.kind not in "iuf" else values.astype(np.float64) * scale


def mask_centres(table, rows: np.ndarray, path: Path) -> np.ndarray | None:
    """(roi, 2) weighted x, y pixel centres of the ``rows`` of the PlaneSegmentation ``table``
    from its image_mask (roi, x, y) or pixel_mask (x, y, weight) column; None without masks."""
    if "pixel_mask" in table.colnames and "image_mask" not in table.colnames:
        ends = read_array(table["pixel_mask"].data, path, f"{table.name}.pixel_mask_index")
        if ends.ndim != 1 or ends.dtype.kind not in "iu" or len(ends) <= rows.max():
            return None
        starts = np.concatenate([[0], ends[:-1]])
    elif "image_mask" not in table.colnames:
        return None
    centres = []
    for row in rows.tolist():
        what = f"{table.name} row {row}"
        if "image_mask" in table.colnames:
            weights = read_array(table["image_mask"].data, path, f"{what} image_mask", row)
            if weights.ndim < 2:
                return None
            x, y = np.indices(weights.shape[:2])
            weights = weights.reshape(*weights.shape[:2], -1).sum(axis=-1)  # a 3-D mask's planes
        else:
            key = slice(int(starts[row]), int(ends[row]))
            pixels = read_array(table["pixel_mask"].target.data, path, f"{what} pixel_mask", key)
            if not {"x", "y", "weight"} <= set(pixels.dtype.names or ()):
                return None
            x, y, weights = pixels["x"], pixels["y"], pixels["weight"]
        if weights.dtype.kind not in "biuf":
            return None
        total = float(np.sum(weights))
        if not np.isfinite(total) or total <= 0:
            return None
        centres.append([float(np.sum(weights * x)) / total, float(np.sum(weights * y)) / total])
    return np.array(centres)


def roi_positions(table, rows: np.ndarray, path: Path) -> tuple[np.ndarray | None, str]:
    """(roi, 3) micrometre positions of the ``rows`` of the PlaneSegmentation ``table``: mask
    centres times the imaging plane's grid_spacing, z the plane's origin_coords z (else 0); and
    a sentence saying how, or why there are none."""
    plane = table.imaging_plane
    if plane.grid_spacing is None:
        return None, f"not stored: {plane.name} has no grid_spacing"
    spacing = read_array(plane.grid_spacing, path, f"{plane.name}.grid_spacing")
    spacing = to_micrometres(spacing, plane.grid_spacing_unit)
    if spacing is None or spacing.ndim != 1 or len(spacing) < 2 or not np.isfinite(spacing).all():
        return None, f"not stored: {plane.name}.grid_spacing is not a length per pixel in x and y"
    centres = mask_centres(table, rows, path)
    if centres is None:
        return None, f"not stored: {table.name} has no image_mask or pixel_mask with positive weights"
    z = 0.0
    if plane.origin_coords is not None:
        origin = read_array(plane.origin_coords, path, f"{plane.name}.origin_coords")
        origin = to_micrometres(origin, plane.origin_coords_unit)
        if origin is not None and origin.shape == (3,) and np.isfinite(origin[2]):
            z = float(origin[2])
    xyz = np.column_stack([centres * spacing[:2], np.full(len(centres), z)])
    return xyz, f"{table.name} mask centres x {plane.name}.grid_spacing"


def read_responses(nwb, name: str | None, path: Path) -> Responses:
    """The RoiResponseSeries ``name`` picks (see ``choose``), or the only one."""
    found = response_series(nwb)
    if not found:
        fail(
            path,
            "holds no RoiResponseSeries in nwb.processing (e.g. processing['ophys'] Fluorescence or"
            " DfOverF); store the ROI traces there",
        )
    chosen = choose(sorted(found), name, "RoiResponseSeries", "--responses", path)
    series = found[chosen]
    trace = read_array(series.data, path, chosen)
    if trace.dtype.kind not in "iuf" or trace.ndim not in (1, 2) or len(trace) < 2:
        fail(path, f"{chosen} holds {trace.dtype} values of shape {trace.shape}; store numbers (time, roi)")
    trace = trace.reshape(len(trace), -1).astype(np.float64) * series.conversion + (series.offset or 0.0)
    rois = read_array(series.rois.data, path, f"{chosen}.rois").astype(np.int64)
    table = series.rois.table
    ids = read_array(table.id.data, path, f"{table.name}.id")
    if len(rois) != trace.shape[1]:
        fail(path, f"{chosen} has shape {trace.shape} but names {len(rois)} ROIs; store data as (time, roi)")
    if ((rois < 0) | (rois >= len(ids))).any():
        fail(path, f"{chosen}.rois points outside {table.name} ({len(ids)} ROIs); store rows of that table")
    times = sample_times(series, len(trace), path, chosen)
    cell_xyz, positions = roi_positions(table, rois, path)
    return Responses(chosen, trace, times, ids[rois], cell_xyz, positions)


class Behavior(NamedTuple):
    """A behaviour series: its path, values (time,) float64 and sample times (time,) s."""

    name: str
    values: np.ndarray
    times: np.ndarray


def behavior_series(nwb) -> dict:
    """'acquisition/NAME', 'module/NAME' or 'module/interface/NAME' -> every TimeSeries of
    nwb.acquisition and nwb.processing that is neither ROI traces nor images (running speed,
    pupil area, ...), also inside BehavioralTimeSeries or PupilTracking."""
    from pynwb import TimeSeries
    from pynwb.image import ImageSeries
    from pynwb.ophys import RoiResponseSeries

    found = {}

    def add(name: str, item) -> None:
        if isinstance(item, TimeSeries) and not isinstance(item, (RoiResponseSeries, ImageSeries)):
            found[name] = item
        for child_name, child in getattr(item, "time_series", {}).items():
            add(f"{name}/{child_name}", child)

    for name, item in nwb.acquisition.items():
        add(f"acquisition/{name}", item)
    for module_name, module in nwb.processing.items():
        for name, item in module.data_interfaces.items():
            add(f"{module_name}/{name}", item)
    return found


def read_behavior(nwb, names: list[str], path: Path) -> list[Behavior]:
    """The behaviour series the ``names`` pick (see ``choose``), in their units."""
    found = behavior_series(nwb)
    chosen = []
    for name in names:
        if not found:
            fail(
                path,
                f"--behavior {name!r}: the file holds no TimeSeries besides ROI traces and images;"
                " leave out --behavior",
            )
        picked = choose(sorted(found), name, "TimeSeries", "--behavior", path)
        series = found[picked]
        values = read_array(series.data, path, picked)
        if values.dtype.kind not in "iuf" or values.ndim != 1 or len(values) < 2:
            fail(
                path,
                f"{picked} holds {values.dtype} values of shape {values.shape}; --behavior takes a series"
                " of one number per sample",
            )
        values = values.astype(np.float64) * series.conversion + (series.offset or 0.0)
        chosen.append(Behavior(picked, values, sample_times(series, len(values), path, picked)))
    return chosen


# ---------------------------------------------------------------------------- stimulus


def image_indices(values: np.ndarray, path: Path, what: str, fix: str) -> np.ndarray:
    """``values`` (presentation,) as int64 image indices; SessionError for anything else."""
    whole = values.dtype.kind in "iu" or (values.dtype.kind == "f" and np.isfinite(values).all())
    if values.ndim != 1 or not whole or (values % 1 != 0).any():
        fail(path, f"{what} holds values that are not image indices; give one integer per presentation{fix}")
    if len(values) == 0:
        fail(path, f"{what} has no presentations; pass the table of an image stimulus")
    return values.astype(np.int64)


def sequence_presentations(series, name: str, path: Path) -> Presentations:
    """The presentations of the IndexSeries ``series``: image i is shown from its timestamp to the
    next one (the last for the median interval)."""
    index = image_indices(read_array(series.data, path, name), path, name, "")
    start = sample_times(series, len(index), path, name)
    last = start[-1] + (float(np.median(np.diff(start))) if len(start) > 1 else 0.0)
    indexed = series.indexed_images if series.indexed_images is not None else series.indexed_timeseries
    return Presentations(name, "data", start, np.append(start[1:], last), index, indexed)


def read_presentations(nwb, name: str | None, column: str | None, path: Path) -> Presentations:
    """The stimulus table ``name`` picks, or the only one with an image index column (``column``,
    else one of IMAGE_COLUMNS) or IndexSeries in nwb.stimulus."""
    from pynwb.image import IndexSeries

    tables = dict(nwb.intervals.items())
    if nwb.trials is not None:
        tables["trials"] = nwb.trials
    sequences = {f"stimulus/{n}": s for n, s in nwb.stimulus.items() if isinstance(s, IndexSeries)}
    if name is None:
        wanted = [column] if column else IMAGE_COLUMNS
        with_images = {n: t for n, t in tables.items() if set(wanted) & set(t.colnames)}
        if not with_images and not sequences:
            fail(
                path,
                f"nwb.intervals and nwb.trials hold no table with a column {' or '.join(wanted)}"
                f" (tables: {', '.join(sorted(tables)) or 'none'}) and nwb.stimulus no IndexSeries;"
                " store the presentations as a TimeIntervals table, or pass --image-column",
            )
        tables = with_images
    chosen = choose(sorted(tables | sequences), name, "stimulus tables", "--stimulus-table", path)
    if chosen in sequences:
        return sequence_presentations(sequences[chosen], chosen, path)
    table = tables[chosen]
    what = f"stimulus table {chosen!r}"
    if column is None:
        candidates = [c for c in IMAGE_COLUMNS if c in table.colnames]
        if len(candidates) != 1:
            fail(
                path,
                f"{what} has {len(candidates)} image index columns; pass --image-column with one of"
                f" {', '.join(candidates or table.colnames)}",
            )
        column = candidates[0]
    if column not in table.colnames:
        listed = ", ".join(table.colnames)
        fail(path, f"{what} has no column {column!r}; pass --image-column with one of {listed}")
    values = {}
    for col in ("start_time", "stop_time", column):
        if hasattr(table[col], "target"):  # a ragged column: several values per presentation
            fail(path, f"{what} column {col!r} holds lists; give one value per presentation")
        values[col] = read_array(table[col].data, path, f"{what} column {col!r}")
    index = image_indices(values[column], path, f"{what} column {column!r}", ", or pass --image-column")
    for col in ("start_time", "stop_time"):
        if values[col].dtype.kind not in "iuf" or not np.isfinite(values[col]).all():
            fail(
                path,
                f"{what} column {col!r} holds NaN, inf or non-numbers; give each presentation its time"
                " in seconds",
            )
    start, stop = (values[col].astype(np.float64) for col in ("start_time", "stop_time"))
    return Presentations(chosen, column, start, stop, index)


def read_templates(nwb, name: str | None, shown: Presentations, path: Path) -> tuple[str, np.ndarray, list]:
    """The stimulus template entry ``name`` picks, or the one the IndexSeries ``shown`` indexes,
    or the only one, or the one named in the table's name: its name, its images (image, y, x) or
    (image, 3, y, x) and one label each."""
    from pynwb.base import Images
    from pynwb.image import ImageSeries

    entries = {n: t for n, t in nwb.stimulus_template.items() if isinstance(t, (Images, ImageSeries))}
    if name is None and isinstance(shown.indexed, (Images, ImageSeries)):
        entries = {shown.indexed.name: shown.indexed}
    if not entries:
        fail(path, "nwb.stimulus_template holds no Images or ImageSeries; store the images shown there")
    if name is None and len(entries) > 1:
        # Allen files name them after the stimulus: natural_scenes for natural_scenes_presentations
        matching = [n for n in entries if n in shown.name]
        name = matching[0] if len(matching) == 1 else None
    chosen = choose(sorted(entries), name, "stimulus templates", "--templates", path)
    entry = entries[chosen]
    what = f"nwb.stimulus_template[{chosen!r}]"
    if isinstance(entry, Images):
        order = entry.order_of_images
        if order is None and len(entry.images) > 1:
            fail(
                path,
                f"{what} has no order_of_images, so its image indices are undefined; store"
                " order_of_images, or store the images as an ImageSeries",
            )
        images = guarded(
            lambda: list(entry.images.values() if order is None else order.data),
            path, f"{what}.order_of_images cannot be read",
        )
        if not images:
            fail(path, f"{what} holds no images; store the images shown there")
        labels = [image.name for image in images]
        arrays = [read_array(image.data, path, f"{what}[{image.name!r}]") for image in images]
        shapes = sorted({a.shape for a in arrays})
        if len(shapes) > 1:
            fail(path, f"{what} holds images of shapes {shapes[0]} and {shapes[1]}; store images of one size")
        pictures = np.stack(arrays)
    else:
        if entry.external_file is not None:
            fail(path, f"{what} keeps its images in external files; store them inside the NWB file")
        pictures = read_array(entry.data, path, what)
        labels = [f"{chosen}[{i}]" for i in range(pictures.shape[0] if pictures.ndim else 0)]
    grey_or_rgb = pictures.ndim == 3 or (pictures.ndim == 4 and pictures.shape[-1] == 3)
    if pictures.dtype.kind not in "uif" or not grey_or_rgb:
        fail(
            path,
            f"{what} holds {pictures.dtype} values of shape {pictures.shape}; store grey (image, y, x)"
            " or RGB (image, y, x, 3) numbers",
        )
    return chosen, pictures if pictures.ndim == 3 else np.moveaxis(pictures, -1, 1), labels


# ---------------------------------------------------------------------------- trials


class Windows(NamedTuple):
    """The response window of each imported presentation: start and end (trial,) seconds, and its
    row in the stimulus table ``table`` (for messages)."""

    start: np.ndarray
    end: np.ndarray
    rows: np.ndarray
    table: str


def window_means(values, times, windows: Windows, path: Path, series: str) -> np.ndarray:
    """(trial, k) mean of ``values`` (time, k), sampled at ``times``, over the samples t with
    start <= t < end of each window."""
    start, end, rows, table = windows
    period = float(np.median(np.diff(times)))
    outside = (start < times[0]) | (end > times[-1] + period)
    if outside.any():
        i = int(np.argmax(outside))
        fail(
            path,
            f"stimulus table {table!r} presentation {rows[i]}'s window {start[i]:g}..{end[i]:g} s lies"
            f" outside {series} ({times[0]:g}..{times[-1] + period:g} s); pass a --window inside the"
            " recording",
        )
    first = np.searchsorted(times, start, "left")
    last = np.searchsorted(times, end, "left")
    empty = last <= first
    if empty.any():
        i = int(np.argmax(empty))
        fail(
            path,
            f"stimulus table {table!r} presentation {rows[i]}'s window {start[i]:g}..{end[i]:g} s holds"
            f" no sample of {series} (one every {period:g} s); pass a longer --window",
        )
    return np.stack([values[a:b].mean(axis=0) for a, b in zip(first, last)])


def trial_responses(recorded: Responses, windows: Windows, path: Path) -> np.ndarray:
    """(trial, roi) window means of the recorded trace; NaN or inf in a window is refused."""
    means = window_means(recorded.trace, recorded.times, windows, path, recorded.name)
    bad = ~np.isfinite(means)
    if bad.any():
        i, roi = np.argwhere(bad)[0]
        fail(
            path,
            f"{recorded.name} holds NaN or inf for ROI id {recorded.unit_id[roi]} during presentation"
            f" {windows.rows[i]} of {windows.table!r}; fill those samples, or pick another --responses",
        )
    return means


def trial_behavior(behavior: list[Behavior], windows: Windows, path: Path) -> np.ndarray | None:
    """(trial, k) window means of each behaviour series over its finite samples (pupil traces
    hold NaN during blinks); None without series."""
    if not behavior:
        return None
    columns = []
    for name, values, times in behavior:
        finite = np.isfinite(values)
        counts = window_means(finite[:, None].astype(np.float64), times, windows, path, name)[:, 0]
        if (counts == 0).any():
            i = int(np.argmax(counts == 0))
            fail(
                path,
                f"{name} has no finite value during presentation {windows.rows[i]} of"
                f" {windows.table!r}; fill those samples, or leave out --behavior {name}",
            )
        sums = window_means(np.where(finite, values, 0.0)[:, None], times, windows, path, name)[:, 0]
        columns.append(sums / counts)
    return np.column_stack(columns)


def shown_rows(shown: Presentations, n_templates: int, template: str, window, path: Path) -> np.ndarray:
    """(trial,) rows of the table ``shown`` that show an image (index != BLANK), checked against
    the ``n_templates`` templates of ``template``."""
    index, what = shown.index, f"stimulus table {shown.name!r}"
    bad = (index != BLANK) & ((index < 0) | (index >= n_templates))
    if bad.any():
        i = int(np.argmax(bad))
        fail(
            path,
            f"{what} column {shown.column!r} gives image {index[i]} to presentation {i} but"
            f" nwb.stimulus_template[{template!r}] holds {n_templates} images; give indices"
            f" 0..{n_templates - 1} ({BLANK} for a blank screen), or pass --templates",
        )
    rows = np.flatnonzero(index != BLANK)
    if not len(rows):
        fail(
            path,
            f"{what} column {shown.column!r} shows no image (every index is {BLANK}); pass the table"
            " of an image stimulus",
        )
    backwards = rows[shown.stop[rows] <= shown.start[rows]]
    if window is None and len(backwards):
        i = backwards[0]
        fail(
            path,
            f"{what} presentation {i} stops at {shown.stop[i]:g} s, not after its start"
            f" {shown.start[i]:g} s; fix stop_time, or pass --window START,END",
        )
    return rows


def template_ids(pictures: np.ndarray) -> np.ndarray:
    """(image,) id of each template: its index, or the first index of identical pixels."""
    pixel_id = image_ids_from_pixels(pictures)
    _, first = np.unique(pixel_id, return_index=True)
    return first[pixel_id].astype(np.int64)


def check_memory(n_trials: int, pictures: np.ndarray, path: Path, template: str) -> None:
    from twin.data.images import available_memory

    needed = n_trials * pictures[0].nbytes
    if needed > available_memory():
        fail(
            path,
            f"{n_trials} presentations of the {pictures.shape[-2]}x{pictures.shape[-1]} images of"
            f" nwb.stimulus_template[{template!r}] take {needed / 2**30:.1f} GiB, more than the free"
            " memory; pass --size HxW to shrink them",
        )


def from_nwb(
    path,
    responses: str | None = None,
    table: str | None = None,
    image_column: str | None = None,
    templates: str | None = None,
    window: tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
    tiers=None,
    behavior: list[str] | None = None,
    seed: int = 0,
    pixel_range=None,
) -> xr.Dataset:
    """Session from the NWB file ``path`` (see the module docstring for what is read).

    responses, table, templates: names picking one RoiResponseSeries, stimulus table and
    stimulus template entry when the file holds several (any trailing part of their path, e.g.
    'DfOverF'). image_column: the table's image index column. window: (start, end) seconds after
    each onset, else each presentation's start_time..stop_time. size: (height, width) to resample
    the templates to. tiers: optional .npy/.csv of one tier per imported presentation, else
    ``split_tiers(image ids, seed)``. behavior: names of TimeSeries with one value per sample
    (running speed, pupil area), each averaged over the finite samples of the same windows into
    ``behavior`` (trial, k). Image ids are the template indices (identical templates share
    the first one's); ``image_name`` (trial,) holds each template's name. attrs say which objects
    were read (source), the window, the cell positions and the presentations left out.
    """
    from twin.data.images import to_size

    path = Path(path)
    with open_nwb(path) as nwb:
        recorded = read_responses(nwb, responses, path)
        shown = read_presentations(nwb, table, image_column, path)
        template, pictures, labels = read_templates(nwb, templates, shown, path)
        moving = read_behavior(nwb, behavior or [], path)
    rows = shown_rows(shown, len(pictures), template, window, path)
    start, end = shown.start[rows], shown.stop[rows]
    if window is not None:
        start, end = start + window[0], start + window[1]
    windows = Windows(start, end, rows, shown.name)
    means = trial_responses(recorded, windows, path)
    behavior_values = trial_behavior(moving, windows, path)
    pictures = to_size(pictures, size)
    check_memory(len(rows), pictures, path, template)
    index = shown.index[rows]
    image_id = template_ids(pictures)[index]
    read = f"{recorded.name}, {shown.name}.{shown.column}, {template}"
    attrs = {
        "source": f"{path.name} (twin import nwb: {read}, seed {seed})",
        "response_window": "start_time..stop_time"
        if window is None
        else f"onset{window[0]:+g}..onset{window[1]:+g} s",
        "cell_positions": recorded.positions,
    }
    blank = len(shown.index) - len(rows)
    if blank:
        attrs["left_out"] = f"{blank} presentations with {shown.column} {BLANK} (blank screen)"
    if tiers is None:
        tier, attrs["tier_split"] = split_tiers(image_id, seed)
    else:
        tier = read_tiers(tiers, image_id)
    ds = make_session(
        path,
        images=pictures[index],
        responses=means,
        tier=tier,
        image_id=image_id,
        behavior=behavior_values,
        behavior_names=[name for name, _, _ in moving] or None,
        unit_id=recorded.unit_id,
        cell_xyz=recorded.cell_xyz,
        attrs=attrs | range_attrs(pixel_range, path),
        names={"unit_id": f"{recorded.name}.rois ids"},
    )
    return ds.assign(image_name=("trial", np.array(labels, dtype=object)[index]))
