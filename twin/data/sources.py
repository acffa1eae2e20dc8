"""Image collections of any size, read a block at a time (``twin screen``).

A source is a folder or .zip of image files (``twin.data.images.ImageFiles``: listed up front,
each file read and decoded when its block is read), an .npy array (n, y, x) or (n, channel, y, x)
(memory-mapped), a zarr array of that shape, or a session store (its images, lazily). Every source
has a length, ``block(start, stop)``: the images in pixel levels 0..255 as a list of (y, x) or
(channel, y, x) arrays, and ``name(i)``: the file name, the store's image_name, or the index.
Arrays that are not uint8 are mapped to pixel levels from their range (0..1 or 0..255), found in
one pass over the array before screening starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twin.data.images import ImageFiles, as_array, decode
from twin.data.schema import infer_pixel_range, pixel_range, strings, to_levels
from twin.errors import SessionError

RANGE_BLOCK = 4096  # images per read when finding an array's value range


class FileSource:
    """The image files of a folder or .zip, decoded to grey ("L") or RGB ``mode``."""

    def __init__(self, path: Path, mode: str):
        self.path = Path(path)
        self.files = ImageFiles(path)
        self.mode = mode

    def __len__(self) -> int:
        return len(self.files)

    def block(self, start: int, stop: int) -> list[np.ndarray]:
        return [
            as_array(decode(self.files.read(i), self.files.names[i], self.path).convert(self.mode))
            for i in range(start, stop)
        ]

    def name(self, i: int) -> str:
        return self.files.names[i]


class ArraySource:
    """An array (n, y, x) or (n, channel, y, x) read lazily (np.memmap, zarr array, xarray
    variable) with its pixel range (lo, hi); ``names`` (n,) or None for the indices."""

    def __init__(self, path: Path, array, lo_hi: tuple[float, float], names=None):
        self.path = Path(path)
        self.array = array
        self.lo_hi = lo_hi
        self.names = names

    def __len__(self) -> int:
        return int(self.array.shape[0])  # zarr arrays have no len()

    def block(self, start: int, stop: int) -> list[np.ndarray]:
        return list(to_levels(np.asarray(self.array[start:stop]), self.lo_hi))

    def name(self, i: int) -> str:
        return str(i) if self.names is None else str(self.names[i])


def array_range(array, path: Path) -> tuple[float, float]:
    """The pixel range of ``array`` (uint8: 0..255; else its values' range, read in blocks, as
    ``infer_pixel_range`` takes it); SessionError for NaN or values that are not pixels."""
    if array.dtype == np.uint8:
        return (0.0, 255.0)
    lo, hi = np.inf, -np.inf
    for start in range(0, array.shape[0], RANGE_BLOCK):
        values = np.asarray(array[start : start + RANGE_BLOCK])
        if not np.isfinite(values).all():
            raise SessionError(f"{path}: holds NaN or inf; give finite pixel values")
        lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    lo_hi = infer_pixel_range(np.array([lo, hi]))
    if lo_hi is None:
        raise SessionError(
            f"{path}: values {lo:g}..{hi:g} are not pixel values 0..255 or 0..1; save the images as"
            " uint8 0..255"
        )
    return lo_hi


def check_array(array, path: Path):
    """``array`` when it holds images (n, y, x) or (n, channel, y, x) of numbers, else SessionError."""
    if len(array.shape) not in (3, 4) or np.dtype(array.dtype).kind not in "uif" or array.shape[0] == 0:
        raise SessionError(
            f"{path}: holds a {array.dtype} array of shape {tuple(array.shape)}; give images (n, y, x)"
            " or (n, channel, y, x) as numbers"
        )
    return array


def zarr_source(path: Path) -> ArraySource:
    """A session store's images (and image_name), or a plain zarr array."""
    import json

    if json.loads((path / "zarr.json").read_text()).get("node_type") == "array":
        import zarr

        array = check_array(zarr.open_array(path, mode="r"), path)
        return ArraySource(path, array, array_range(array, path))
    from twin.data.store import open_session

    ds = open_session(path)
    names = strings(ds["image_name"].values) if "image_name" in ds else None
    return ArraySource(path, ds["images"].variable, pixel_range(ds, path), names)


def open_source(path, channels: int):
    """The source at ``path`` (see the module doc); channels: the run's, to decode image files
    to (1 grey, 3 RGB)."""
    path = Path(path)
    if (path / "zarr.json").is_file():
        return zarr_source(path)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise SessionError(f"{path}: no such file; pass folders, .zip, .npy or zarr arrays or stores")
        try:
            array = check_array(np.load(path, mmap_mode="r", allow_pickle=False), path)
        except (OSError, ValueError, EOFError) as error:
            raise SessionError(f"{path}: not a plain .npy array ({error}); save it with np.save") from None
        return ArraySource(path, array, array_range(array, path))
    if not (path.is_dir() or path.is_file()):
        raise SessionError(f"{path}: no such file or folder; pass folders, .zip, .npy or zarr arrays or stores")
    if channels not in (1, 3):
        raise SessionError(
            f"{path}: the run's images have {channels} channels; image files give 1 or 3, so pass an"
            f" .npy array (n, {channels}, y, x)"
        )
    return FileSource(path, "L" if channels == 1 else "RGB")
