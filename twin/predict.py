"""`twin predict`: responses of a run's neurons to any images.

Images come from a folder or .zip of image files, an .npy array (n, y, x) or (n, c, y, x), or a
session store (its trials). They are prepared as in training: converted to the run's channels
(grey or RGB), resampled with pillow to the run's image size when only the size differs (not
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

from twin.data.images import decode_images, to_size
from twin.data.schema import infer_pixel_range, pixel_range, strings, to_levels
from twin.errors import ConfigError, SessionError

SUFFIXES = (".npy", ".csv", ".zarr")
# Largest relative change of the aspect ratio (height / width) that resampling may make.
ASPECT_TOLERANCE = 0.02


def read_array(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, y, x) or (n, c, y, x) in pixel levels 0..255 from an .npy file, and names
    (their indices as strings)."""
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise SessionError(f"{path}: not a plain .npy array ({error}); save it with np.save") from None
    if images.ndim not in (3, 4) or images.dtype.kind not in "uif" or len(images) == 0:
        raise SessionError(
            f"{path}: holds a {images.dtype} array of shape {images.shape}; give images (n, y, x) or"
            " (n, channel, y, x) as numbers"
        )
    if not np.isfinite(images).all():
        raise SessionError(f"{path}: holds NaN or inf; give finite pixel values")
    lo_hi = infer_pixel_range(images)
    if lo_hi is None:
        raise SessionError(
            f"{path}: values {float(images.min()):g}..{float(images.max()):g} are not pixel values"
            " 0..255 or 0..1; save the images as uint8 0..255"
        )
    return to_levels(images, lo_hi), np.arange(len(images)).astype(str)


def read_store(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The images of every trial of a session store in pixel levels 0..255, and names (its
    image_name, else the trial indices as strings)."""
    from twin.data.store import load_values, open_session

    ds = open_session(path)
    images = np.asarray(load_values(ds[["images"]], path)["images"].values)
    if "image_name" in ds:
        names = strings(ds["image_name"].values)
    else:
        names = np.arange(len(images)).astype(str)
    return to_levels(images, pixel_range(ds, path)), names


def read_inputs(path, channels: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Images of any accepted source as a list of (y, x) or (c, y, x) arrays in pixel levels,
    and their names (n,) str. channels: the run's, to convert image files to (1 grey, 3 RGB)."""
    path = Path(path)
    if (path / "zarr.json").is_file():
        images, names = read_store(path)
    elif path.suffix.lower() == ".npy":
        if not path.is_file():
            raise SessionError(f"{path}: no such file; pass a folder, .zip, .npy or session store")
        images, names = read_array(path)
    elif path.is_dir() or path.is_file():
        if channels not in (1, 3):
            raise SessionError(
                f"{path}: the run's images have {channels} channels; image files give 1 or 3, so"
                f" pass an .npy array (n, {channels}, y, x)"
            )
        return decode_images(path, "L" if channels == 1 else "RGB")
    else:
        raise SessionError(f"{path}: no such file or folder; pass a folder, .zip, .npy or session store")
    return list(images), names


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
    train = data.trials("train")

    def at_train_mean(values):
        return None if values is None else np.broadcast_to(values[train].mean(0), (n, values.shape[1]))

    shown = dataclasses.replace(
        data,
        images=images,
        responses=np.zeros((n, data.n_neurons), np.float32),
        tier=np.full(n, "test"),
        image_id=np.arange(n),
        behavior=at_train_mean(data.behavior),
        pupil_center=at_train_mean(data.pupil_center),
    )
    return predict(model, session, shown, np.arange(n), batch_size)


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
    pictures, names = read_inputs(images, data.channels)
    model_input = prepare(pictures, data, images)
    predictions = predict_images(
        loaded.model, session, data, model_input, batch_size or loaded.config.data.batch_size
    )
    predictions, units = recording_units(predictions[:, index], data, index)
    attrs = {
        "run": str(run), "session": data.name, "session_index": session, "images": str(images), "units": units
    }
    write_predictions(out, predictions, data.unit_id[index], names, attrs, overwrite)
    return {"out": str(out), "images": len(names), "neurons": len(index), "session": data.name}
