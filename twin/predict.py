"""`twin predict`: responses of a run's neurons to any images.

Images come from a folder or .zip of image files, an .npy array (n, y, x) or (n, c, y, x), a zarr
array, or a session store (its trials), read ``BLOCK`` images at a time (``twin.data.sources``, the
readers ``twin screen`` uses), so collections larger than memory stream through. They are
prepared as in training: converted to the run's channels (grey or RGB), resampled with pillow to the run's image size when only the size differs (not
the aspect ratio), mapped from their pixel range to pixel levels 0..255 and normalized with the
run session's statistics (``SessionData.normalize_images``); behavior and pupil center are held
at their train means. Predictions go through ``twin.evaluate.predict``, the path that scores runs,
and are written in the recording's response units: the model's normalized outputs times the
session's response std (the divisor of the loader), plus the offset ``--shift-responses``
subtracted at import, if any.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from twin.data.images import to_size
from twin.data.sources import open_source
from twin.errors import ConfigError, SessionError

SUFFIXES = (".npy", ".csv", ".zarr")
# Images read and predicted at a time by `twin predict`.
BLOCK = 1024
# Largest relative change of the aspect ratio (height / width) that resampling may make.
ASPECT_TOLERANCE = 0.02


def read_inputs(path, channels: int) -> tuple[list[np.ndarray], np.ndarray]:
    """All images of a source (``twin.data.sources.open_source``) as a list of (y, x) or (c, y, x)
    arrays in pixel levels, and their names (n,) str; for inputs small enough to hold at once."""
    source = open_source(path, channels)
    return source.block(0, len(source)), np.array([source.name(i) for i in range(len(source))])


def run_size(images: list[np.ndarray], data, source) -> tuple[np.ndarray, int]:
    """Images (each (y, x) or (c, y, x), pixel levels) -> pixel levels at the run's size (n, y, x)
    or (n, y, x, c) float32 for SessionData ``data``, and how many were resampled: images of
    another size with the same aspect ratio are brought to the run's size as ``twin import`` does
    (``to_size``)."""
    height, width = data.image_shape
    resampled = 0
    pixels = []
    for image in images:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 3 and image.shape[0] == 1:
            image = image[0]
        image_channels = 1 if image.ndim == 2 else image.shape[0]
        if image_channels != data.channels:
            wanted = "grey" if data.channels == 1 else f"{data.channels}-channel"
            raise SessionError(
                f"{source}: images have {image_channels} channels but the run's have"
                f" {data.channels}; give {wanted} images"
            )
        y, x = image.shape[-2:]
        if (y, x) != (height, width):
            if abs((y / x) / (height / width) - 1) > ASPECT_TOLERANCE:
                raise SessionError(
                    f"{source}: an image is {y}x{x} but the run's images are {height}x{width};"
                    f" crop the images to the aspect ratio {height}:{width} first"
                )
            image = to_size(image[None], (height, width))[0]
            resampled += 1
        pixels.append(image if image.ndim == 2 else np.moveaxis(image, 0, -1))
    return np.stack(pixels), resampled


def resampled_note(command: str, resampled: int, total: int, data) -> None:
    """One stderr line saying how many of ``total`` images ``run_size`` resampled (none: silent)."""
    if resampled:
        height, width = data.image_shape
        print(
            f"{command}: resampled {resampled} of {total} images to the run's size {height}x{width}"
            " (as twin import does: block averages for whole factors, else pillow Lanczos)",
            file=sys.stderr,
        )


def normalize(pixels: np.ndarray, data) -> np.ndarray:
    """Pixel levels at the run's size ((n, y, x) or (n, y, x, c), ``run_size``) -> normalized
    model input (n, y, x, c) for SessionData ``data``."""
    normalized = data.normalize_images(pixels)
    return normalized if data.channels > 1 else normalized[..., None]


def prepare(images: list[np.ndarray], data, source) -> np.ndarray:
    """Images (each (y, x) or (c, y, x), pixel levels) -> normalized model input (n, y, x, c)
    for SessionData ``data`` (``run_size``, then ``normalize``; one stderr line says how many
    were resampled)."""
    pixels, resampled = run_size(images, data, source)
    resampled_note("twin predict", resampled, len(images), data)
    return normalize(pixels, data)


def predict_images(model, session: int, data, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Predictions (n, neurons) of ``model`` (eval mode), readout ``session`` with SessionData
    ``data``, for normalized images (n, y, x, c); behavior and pupil center at their train means.
    The images take the place of the session's trials in ``twin.evaluate.predict``."""
    from twin.evaluate import predict

    n = len(images)
    held = {k: None if v is None else np.broadcast_to(v, (n, len(v))) for k, v in data.train_means().items()}

    shown = dataclasses.replace(
        data,
        images=images,
        responses=np.zeros((n, data.n_neurons), np.float32),
        tier=np.full(n, "test"),
        image_id=np.arange(n),
        **held,
    )
    return predict(model, session, shown, np.arange(n), batch_size)


def predict_source(model, session: int, data, source, index: np.ndarray, batch_size: int):
    """Normalized predictions (n, k) of neurons ``index`` (k,) for every image of ``source``
    (``twin.data.sources``), and the images' names (n,) str. The images are read, prepared and
    predicted ``BLOCK`` at a time, so a collection larger than memory streams through."""
    blocks, names, resampled = [], [], 0
    for start in range(0, len(source), BLOCK):
        stop = min(start + BLOCK, len(source))
        pixels, count = run_size(source.block(start, stop), data, source.path)
        resampled += count
        blocks.append(predict_images(model, session, data, normalize(pixels, data), batch_size)[:, index])
        names.extend(source.name(i) for i in range(start, stop))
    resampled_note("twin predict", resampled, len(source), data)
    return np.concatenate(blocks), np.array(names, dtype=str)


def recording_units(predictions: np.ndarray, data, index: np.ndarray) -> tuple[np.ndarray, str]:
    """Normalized predictions (n, k) of neurons ``index`` (k,) of SessionData ``data`` -> the
    recording's response units (n, k) float32, and a line naming those units."""
    values = predictions * data.response_std[index]
    if data.response_offset is None:
        return values.astype(np.float32), "the session store's response units"
    values = values + data.response_offset[index]
    units = "the recording's response units (the --shift-responses offset added back)"
    return values.astype(np.float32), units


def twin_responses(run, session: int, levels: np.ndarray, neurons: np.ndarray) -> np.ndarray:
    """The twin's responses (n, k) in the recording's units to images (n, y, x), or (n, channel,
    y, x) for a run of several channels, in pixel levels 0..255 (MEIs and rig stimuli in model
    space); run: a loaded twin.checkpoint.Run; neurons: (k,) indices within the session."""
    data = run.sessions[session]
    levels = np.asarray(levels, np.float32)
    if data.channels == 1:
        images = data.normalize_images(levels)[..., None]
    else:
        images = data.normalize_images(np.moveaxis(levels, 1, -1))
    predictions = predict_images(run.model, session, data, images, run.config.data.batch_size)
    return recording_units(predictions[:, neurons], data, neurons)[0]


def write_predictions(path: Path, predictions, unit_id, names, attrs: dict, overwrite: bool) -> None:
    """predictions (images, neurons) float32 to .npy, .csv (header: image_name and the unit ids;
    one row per image) or .zarr (predictions (image, neuron), unit_id, image_name, attrs)."""
    from twin.data.store import write_dataset
    from twin.outputs import output

    if path.suffix == ".zarr":
        ds = xr.Dataset(
            {
                "predictions": (("image", "neuron"), predictions),
                "unit_id": ("neuron", unit_id),
                "image_name": ("image", names.astype(object)),
            },
            attrs=attrs,
        )
        write_dataset(ds, path, overwrite=overwrite)
        return
    with output(path, overwrite, "file") as staged:
        if path.suffix == ".npy":
            with open(staged, "wb") as file:
                np.save(file, predictions)
        else:
            with open(staged, "w", newline="") as file:
                writer = csv.writer(file)
                writer.writerow(["image_name", *unit_id.tolist()])
                for name, row in zip(names.tolist(), predictions):
                    writer.writerow([name, *(f"{v:.7g}" for v in row)])


def predict_command(
    run,
    images,
    out,
    neurons: str = "all",
    session: int = 0,
    batch_size: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the predictions of ``neurons`` of readout ``session`` of ``run`` for ``images`` to
    ``out`` (.npy, .csv or .zarr), in the recording's response units (see ``recording_units``).
    Returns {"out", "images", "neurons", "session"}."""
    from twin.checkpoint import load_run, read_run_files
    from twin.mei.run import parse_neurons
    from twin.outputs import check_output

    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise ConfigError(f"--out {out}: name the predictions .npy, .csv or .zarr")
    stores = [record["path"] for record in read_run_files(Path(run))[1]]
    check_output(out, overwrite, "store" if out.suffix == ".zarr" else "file", inputs=[run, images, *stores])
    loaded = load_run(run)
    if not 0 <= session < len(loaded.sessions):
        raise ConfigError(f"--session {session}: run {run} has sessions 0..{len(loaded.sessions) - 1}")
    data = loaded.sessions[session]
    index = parse_neurons(neurons, data.unit_id)
    predictions, names = predict_source(
        loaded.model, session, data, open_source(images, data.channels), index,
        batch_size or loaded.config.data.batch_size,
    )
    predictions, units = recording_units(predictions, data, index)
    attrs = {
        "run": str(run), "session": data.name, "session_index": session, "images": str(images), "units": units
    }
    write_predictions(out, predictions, data.unit_id[index], names, attrs, overwrite)
    return {"out": str(out), "images": len(names), "neurons": len(index), "session": data.name}
