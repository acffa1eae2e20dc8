"""Two-photon sessions in NWB files (as DANDI and the Allen Brain Observatory store them) as
session Datasets (write them with ``write_session``).

What ``from_nwb`` reads, with pynwb:
- responses: one ``RoiResponseSeries`` (time, roi) of a processing module (``processing["ophys"]``,
  inside ``Fluorescence``, ``DfOverF`` or any other interface), in its units (data * conversion +
  offset), sampled at its ``timestamps`` or at ``starting_time`` + i / ``rate``;
- presentations: one ``TimeIntervals`` table (``nwb.intervals[...]`` or ``nwb.trials``) with
  ``start_time``, ``stop_time`` and an integer image index column (``frame``, ``image_index``,
  ``stimulus_index`` or ``image_id``); index -1 (the Allen Brain Observatory's blank screen) marks a
  presentation without an image, which is left out;
- templates: one ``nwb.stimulus_template`` entry, an ``ImageSeries`` (image, y, x) or (image, y, x, 3)
  or an ``Images`` container of ``GrayscaleImage`` (y, x) / ``RGBImage`` (y, x, 3) taken in its
  ``order_of_images``;
- unit ids: the ids of the series' ROIs in their ``PlaneSegmentation``.

A trial is one presentation; its response is each ROI's mean over the samples t with
onset + START <= t < onset + END (``window``), or start_time <= t < stop_time without a window.
Behaviour (running, pupil) and cell positions are not read.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from twin.data.importers import image_ids_from_pixels, range_attrs, read_tiers, split_tiers
from twin.data.schema import fail, make_session

IMAGE_COLUMNS = ("frame", "image_index", "stimulus_index", "image_id")
BLANK = -1  # the Allen Brain Observatory's index of a presentation of the grey screen
# What pynwb, hdmf and h5py raise for files they cannot parse (h5py: OSError, KeyError; hdmf:
# ConstructError, BuildError; docval: TypeError, ValueError on malformed attributes).
UNREADABLE = (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError)


def library_errors() -> tuple[type[Exception], ...]:
    from hdmf.build.errors import BuildError, ConstructError

    return (*UNREADABLE, BuildError, ConstructError)


def reason(error: Exception) -> str:
    """The first line of ``error``, or its type when it says nothing."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@contextlib.contextmanager
def open_nwb(path: Path):
    """The NWBFile of ``path``, open for the duration of the block."""
    from pynwb import NWBHDF5IO

    if not path.is_file():
        fail(path, "no such file; pass an .nwb file")
    if not h5py.is_hdf5(path):
        fail(path, "is not an HDF5 file (NWB 2 files are HDF5); pass an .nwb file, or download it again")
    try:
        io = NWBHDF5IO(str(path), "r")
    except library_errors() as error:
        fail(path, f"cannot be opened as NWB ({reason(error)}); check the file, or download it again")
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pynwb's notes on cached namespaces
                nwb = io.read()
        except library_errors() as error:
            fail(path, f"cannot be read as NWB ({reason(error)}); check the file, or download it again")
        yield nwb
    finally:
        io.close()


def read_array(data, path: Path, what: str) -> np.ndarray:
    """The values of the HDF5 dataset (or list) ``data`` of the NWB object ``what``."""
    try:
        return np.asarray(data[()] if isinstance(data, h5py.Dataset) else data)
    except library_errors() as error:
        fail(path, f"{what} cannot be read ({reason(error)}); the file is damaged or truncated, download it again")


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
        timestamps = series.timestamps
        data = timestamps.timestamps if hasattr(timestamps, "timestamps") else timestamps
        times = read_array(data, path, f"{name}.timestamps").astype(np.float64)
        if times.shape != (n,):
            fail(path, f"{name}.timestamps has shape {times.shape} but the series has {n} samples; give one timestamp per sample")
    else:
        rate, start = series.rate, series.starting_time or 0.0
        if rate is None or not np.isfinite(rate) or rate <= 0:
            fail(path, f"{name} has neither timestamps nor a positive rate ({rate}); store its timestamps")
        times = start + np.arange(n) / rate
    if not np.isfinite(times).all():
        fail(path, f"{name}.timestamps holds NaN or inf; store the time of every sample")
    if (np.diff(times) <= 0).any():
        i = int(np.argmax(np.diff(times) <= 0))
        fail(path, f"{name}.timestamps are not increasing (sample {i + 1} at {times[i + 1]:g} s follows {times[i]:g} s); store them in time order")
    return times


def read_responses(nwb, name: str | None, path: Path) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """The chosen RoiResponseSeries: its path, trace (time, roi) float64 in its units, sample
    times (time,) s and ROI ids (roi,)."""
    found = response_series(nwb)
    if not found:
        fail(path, "holds no RoiResponseSeries in nwb.processing (e.g. processing['ophys'] Fluorescence or DfOverF); store the ROI traces there")
    chosen = choose(sorted(found), name, "RoiResponseSeries", "--responses", path)
    series = found[chosen]
    trace = read_array(series.data, path, chosen)
    if trace.dtype.kind not in "iuf" or trace.ndim not in (1, 2) or trace.size == 0:
        fail(path, f"{chosen} holds {trace.dtype} values of shape {trace.shape}; store numbers (time, roi)")
    trace = trace.reshape(len(trace), -1).astype(np.float64) * series.conversion + (series.offset or 0.0)
    rois = read_array(series.rois.data, path, f"{chosen}.rois").astype(np.int64)
    table = series.rois.table
    ids = read_array(table.id.data, path, f"{table.name}.id")
    if len(rois) != trace.shape[1]:
        fail(path, f"{chosen} has shape {trace.shape} but names {len(rois)} ROIs; store data as (time, roi)")
    if ((rois < 0) | (rois >= len(ids))).any():
        fail(path, f"{chosen}.rois points outside {table.name} ({len(ids)} ROIs); store rows of that table")
    if len(trace) < 2:
        fail(path, f"{chosen} holds {len(trace)} sample; record at least two")
    return chosen, trace, sample_times(series, len(trace), path, chosen), ids[rois]


def read_presentations(nwb, name, column, path: Path) -> tuple[str, str, np.ndarray, np.ndarray, np.ndarray]:
    """The chosen stimulus table: its name, its image column, start_time (n,), stop_time (n,)
    and image index (n,) int64."""
    tables = dict(nwb.intervals.items())
    if nwb.trials is not None:
        tables["trials"] = nwb.trials
    if name is None:
        wanted = [column] if column else IMAGE_COLUMNS
        with_images = [n for n, t in tables.items() if set(wanted) & set(t.colnames)]
        if not with_images:
            listed = ", ".join(sorted(tables)) or "no tables"
            fail(path, f"nwb.intervals/nwb.trials ({listed}) hold no stimulus table with a column {' or '.join(wanted)}; store the presentations there, or pass --image-column")
        tables = {n: tables[n] for n in with_images}
    chosen = choose(sorted(tables), name, "stimulus tables", "--stimulus-table", path)
    table = tables[chosen]
    if column is None:
        candidates = [c for c in IMAGE_COLUMNS if c in table.colnames]
        if len(candidates) != 1:
            listed = ", ".join(candidates or table.colnames)
            fail(path, f"stimulus table {chosen!r} has {len(candidates)} image index columns; pass --image-column with one of {listed}")
        column = candidates[0]
    if column not in table.colnames:
        fail(path, f"stimulus table {chosen!r} has no column {column!r}; pass --image-column with one of {', '.join(table.colnames)}")
    values = {}
    for col in ("start_time", "stop_time", column):
        vector = table[col]
        if hasattr(vector, "target"):  # a ragged column: several values per presentation
            fail(path, f"stimulus table {chosen!r} column {col!r} holds lists; give one value per presentation")
        values[col] = read_array(vector.data, path, f"stimulus table {chosen!r} column {col!r}")
    index = values[column]
    numbers = index.dtype.kind in "iu" or (index.dtype.kind == "f" and np.all(np.isfinite(index) & (index == np.round(index))))
    if index.ndim != 1 or not numbers:
        fail(path, f"stimulus table {chosen!r} column {column!r} holds values that are not image indices; give one integer per presentation, or pass --image-column")
    for col in ("start_time", "stop_time"):
        if values[col].dtype.kind not in "iuf" or not np.isfinite(values[col]).all():
            fail(path, f"stimulus table {chosen!r} column {col!r} holds NaN, inf or non-numbers; give every presentation its time in seconds")
    return chosen, column, values["start_time"].astype(np.float64), values["stop_time"].astype(np.float64), index.astype(np.int64)


def template_entries(nwb) -> dict:
    """name -> every Images or ImageSeries in nwb.stimulus_template."""
    from pynwb.base import Images
    from pynwb.image import ImageSeries

    return {n: t for n, t in nwb.stimulus_template.items() if isinstance(t, (Images, ImageSeries))}


def read_templates(nwb, name: str | None, table: str, path: Path) -> tuple[str, np.ndarray, list[str]]:
    """The chosen templates: their name, images (image, y, x) or (image, 3, y, x) and one label each."""
    entries = template_entries(nwb)
    if not entries:
        fail(path, "nwb.stimulus_template holds no Images or ImageSeries; store the images shown there")
    if name is None and len(entries) > 1:
        # Allen files name them after the stimulus: natural_scenes for natural_scenes_presentations
        matching = [n for n in entries if n in table]
        name = matching[0] if len(matching) == 1 else None
    chosen = choose(sorted(entries), name, "stimulus templates", "--templates", path)
    entry = entries[chosen]
    what = f"nwb.stimulus_template[{chosen!r}]"
    if hasattr(entry, "images"):  # an Images container
        order = entry.order_of_images
        if order is None and len(entry.images) > 1:
            fail(path, f"{what} has no order_of_images, so its image indices are undefined; store order_of_images, or store the images as an ImageSeries")
        images = list(order.data) if order is not None else list(entry.images.values())
        labels = [image.name for image in images]
        arrays = [read_array(image.data, path, f"{what}[{image.name!r}]") for image in images]
        if len({a.shape for a in arrays}) > 1:
            fail(path, f"{what} holds images of shapes {arrays[0].shape} and {next(a.shape for a in arrays if a.shape != arrays[0].shape)}; store images of one size")
        pictures = np.stack(arrays)
    else:
        if entry.external_file is not None:
            fail(path, f"{what} keeps its images in external files ({', '.join(entry.external_file[:1])}); store them inside the file")
        pictures = read_array(entry.data, path, what)
        labels = [f"{chosen}[{i}]" for i in range(len(pictures))]
    if pictures.dtype.kind not in "uif" or not (pictures.ndim == 3 or (pictures.ndim == 4 and pictures.shape[-1] == 3)):
        fail(path, f"{what} holds {pictures.dtype} values of shape {pictures.shape}; store grey (image, y, x) or RGB (image, y, x, 3) numbers")
    if pictures.ndim == 4:
        pictures = np.moveaxis(pictures, -1, 1)
    return chosen, pictures, labels


def window_bounds(onsets, stops, window) -> tuple[np.ndarray, np.ndarray]:
    """(n,) start and end seconds of each presentation's response window."""
    if window is None:
        return onsets, stops
    return onsets + window[0], onsets + window[1]


def window_means(trace, times, starts, ends, rows, path: Path, series: str, table: str) -> np.ndarray:
    """(presentation, roi) mean of ``trace`` (time, roi) over the samples starts <= t < ends;
    rows: (presentation,) their rows in the stimulus table ``table``, for messages."""
    period = float(np.median(np.diff(times)))
    outside = (starts < times[0]) | (ends > times[-1] + period)
    if outside.any():
        i = int(np.argmax(outside))
        fail(path, f"stimulus table {table!r} presentation {rows[i]}'s window {starts[i]:g}..{ends[i]:g} s lies outside {series} ({times[0]:g}..{times[-1] + period:g} s); pass a --window inside the recording")
    first = np.searchsorted(times, starts, "left")
    last = np.searchsorted(times, ends, "left")
    empty = last <= first
    if empty.any():
        i = int(np.argmax(empty))
        fail(path, f"stimulus table {table!r} presentation {rows[i]}'s window {starts[i]:g}..{ends[i]:g} s holds no sample of {series} (one every {period:g} s); pass a longer --window")
    means = np.stack([trace[a:b].mean(axis=0) for a, b in zip(first, last)])
    bad = ~np.isfinite(means)
    if bad.any():
        i, roi = np.argwhere(bad)[0]
        fail(path, f"{series} holds NaN or inf in ROI {roi} during presentation {rows[i]} of {table!r}; fill those samples, or pick another --responses")
    return means


def check_memory(n_trials: int, pictures: np.ndarray, path: Path, what: str) -> None:
    from twin.data.images import available_memory

    needed = n_trials * pictures[0].nbytes
    if needed > available_memory():
        fail(path, f"{n_trials} presentations of the {pictures.shape[-2]}x{pictures.shape[-1]} {what} take {needed / 2**30:.1f} GiB, more than the free memory; pass --size HxW to shrink them")


def from_nwb(
    path,
    responses: str | None = None,
    table: str | None = None,
    image_column: str | None = None,
    templates: str | None = None,
    window: tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
    tiers=None,
    seed: int = 0,
    pixel_range=None,
) -> xr.Dataset:
    """Session from the NWB file ``path`` (see the module docstring for what is read).

    responses, table, templates: names picking one RoiResponseSeries, stimulus table and
    stimulus template entry when the file holds several (any trailing part of their path, e.g.
    'DfOverF'). image_column: the table's image index column. window: (start, end) seconds after
    each onset, else each presentation's start_time..stop_time. size: (height, width) to resample
    the templates to. tiers: optional .npy/.csv of one tier per imported presentation, else
    ``split_tiers(image ids, seed)``. Image ids are the template indices (identical templates share
    the first one's); ``image_name`` (trial,) holds each template's name.
    """
    from twin.data.images import resample, to_uint8

    path = Path(path)
    with open_nwb(path) as nwb:
        series, trace, times, unit_id = read_responses(nwb, responses, path)
        table_name, column, onsets, stops, index = read_presentations(nwb, table, image_column, path)
        template_name, pictures, labels = read_templates(nwb, templates, table_name, path)
    shown = index != BLANK
    out_of_range = shown & ((index < 0) | (index >= len(pictures)))
    if out_of_range.any():
        i = int(np.argmax(out_of_range))
        fail(path, f"stimulus table {table_name!r} column {column!r} gives image {index[i]} to presentation {i} but nwb.stimulus_template[{template_name!r}] holds {len(pictures)} images; give indices 0..{len(pictures) - 1} (-1 for a blank screen), or pass --templates")
    if not shown.any():
        fail(path, f"stimulus table {table_name!r} column {column!r} shows no image (every index is {BLANK}); pass the table of an image stimulus")
    if window is None and (stops[shown] <= onsets[shown]).any():
        i = int(np.argmax(shown & (stops <= onsets)))
        fail(path, f"stimulus table {table_name!r} presentation {i} stops at {stops[i]:g} s, not after its start {onsets[i]:g} s; fix stop_time, or pass --window START,END")
    starts, ends = window_bounds(onsets[shown], stops[shown], window)
    means = window_means(trace, times, starts, ends, np.flatnonzero(shown), path, series, table_name)
    if size is not None and pictures.shape[-2:] != tuple(size):
        resampled = resample(pictures, size)
        pictures = to_uint8(resampled) if pictures.dtype == np.uint8 else resampled
    check_memory(int(shown.sum()), pictures, path, f"nwb.stimulus_template[{template_name!r}] images")
    pixel_id = image_ids_from_pixels(pictures)
    _, first = np.unique(pixel_id, return_index=True)
    image_id = first[pixel_id][index[shown]].astype(np.int64)
    attrs = {
        "source": f"{path.name} (twin import nwb: {series}, {table_name}.{column}, {template_name}, seed {seed})",
        "response_window": "start_time..stop_time" if window is None else f"onset{window[0]:+g}..onset{window[1]:+g} s",
    }
    if not shown.all():
        attrs["left_out"] = f"{int((~shown).sum())} presentations with {column} {BLANK} (blank screen)"
    if tiers is None:
        tier, attrs["tier_split"] = split_tiers(image_id, seed)
    else:
        tier = read_tiers(tiers, image_id)
    ds = make_session(
        path,
        images=pictures[index[shown]],
        responses=means,
        tier=tier,
        image_id=image_id,
        unit_id=unit_id,
        attrs=attrs | range_attrs(pixel_range, path),
        names={"unit_id": f"{series}.rois ids"},
    )
    return ds.assign(image_name=("trial", np.array(labels, dtype=object)[index[shown]]))
