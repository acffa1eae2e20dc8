"""Image collections (a folder or a .zip of PNG, JPEG or TIFF files) and the small tables that
come with them (.npy or .csv), as numpy arrays.

Files are taken in natural order of their path inside the folder or zip (image2 before
image10); hidden files and ``__MACOSX`` folders are skipped, any other file must be an image.
Files are refused before they are read when one is above MAX_FILE_BYTES or all of them do not fit
in the free memory, and images above pillow's ``Image.MAX_IMAGE_PIXELS`` are refused.
Images are decoded with pillow into grey ``(y, x)`` or RGB ``(channel, y, x)`` uint8 arrays.
``ImageFiles`` lists a collection without reading it, for readers that stream it (twin.data.sources).
"""

from __future__ import annotations

import io
import os
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from twin.errors import SessionError

MODES = ("L", "RGB")
# Pillow modes of 8-bit grey images; every other 8-bit mode (P, RGBA, CMYK, ...) becomes RGB.
GREY_MODES = ("1", "L", "LA")
TABLE_SUFFIXES = (".npy", ".csv", ".txt")
# Largest image file read: a 16k x 16k RGB TIFF stored raw is 768 MiB, any stimulus is far
# smaller, and a larger zip entry is most likely a zip bomb (a few MB that unpack to GiBs).
MAX_FILE_BYTES = 512 << 20
# Default working resolution: the shorter side of the fitted images stays at least this long
# (Sensorium's 36x64). Fitting V4's 112x112 images at full size made a default fit take minutes an
# epoch here and did not predict better than at 28x28 (experiments/real_v4.md).
MIN_WORKING_SIDE = 28


def natural_key(name: str) -> list:
    """Sort key that orders the digit runs of ``name`` by value: image2 before image10."""
    parts = [part for part in re.split(r"(\d+)", name) if part]
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts]


def skipped(name: str) -> bool:
    """Whether the path ``name`` (posix, relative) is a hidden file or lies in a hidden or
    __MACOSX folder."""
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


def common_folder(names: list[str]) -> str:
    """'stim/' when every name lies in the folder stim/ (a zip of a folder), else ''."""
    folders = {name.split("/", 1)[0] + "/" for name in names}
    return folders.pop() if len(folders) == 1 and all("/" in name for name in names) else ""


def climbs_out(name: str) -> bool:
    """Whether the zip entry ``name`` is absolute (/x, C:x) or has a .. part: unpacked, it would
    land outside the archive's folder."""
    parts = name.replace("\\", "/").split("/")
    return parts[0] == "" or ".." in parts or re.match(r"[A-Za-z]:", name) is not None


def available_memory() -> int:
    """Bytes of memory free for new data (MemAvailable on Linux, else the free pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_file_size(path: Path, name: str, size: int) -> None:
    """SessionError naming the file ``name`` (``size`` bytes) of the folder or .zip ``path`` when
    it is above MAX_FILE_BYTES."""
    if size > MAX_FILE_BYTES:
        raise SessionError(
            f"{path}: file {name!r} takes {size / 2**20:.0f} MiB, more than the"
            f" {MAX_FILE_BYTES >> 20} MiB an image file may hold; remove it or shrink it"
        )


def check_sizes(path: Path, sizes: list[tuple[str, int]]) -> None:
    """SessionError naming the first file of ``sizes`` (name, bytes), about to be read from the
    folder or .zip ``path``, above MAX_FILE_BYTES or that brings the total above the free memory."""
    free, total = available_memory(), 0
    for name, size in sizes:
        total += size
        check_file_size(path, name, size)
        if total > free:
            raise SessionError(
                f"{path}: the files up to {name!r} take {total / 2**30:.1f} GiB, more than the"
                f" {free / 2**30:.1f} GiB of free memory; import fewer or smaller images"
            )


class ImageFiles:
    """The files of a folder or .zip ``path``, listed but not read: ``names`` (n,) in natural
    order (paths relative to the folder, or to the zip's one top folder if it has one, with /),
    ``sizes`` (n,) bytes, and ``read(i)`` the bytes of file i. Hidden files are left out; a zip
    entry that climbs out of the archive or two entries of one name are refused."""

    def __init__(self, path):
        self.path = Path(path)
        if self.path.is_dir():
            self.list_folder()
        elif self.path.is_file() and zipfile.is_zipfile(self.path):
            try:
                self.list_zip()
            except (OSError, ValueError, zipfile.BadZipFile) as error:
                raise SessionError(f"{self.path}: cannot be read as a .zip ({error}); zip the images again") from None
        else:
            raise SessionError(f"{self.path}: neither a folder nor a .zip; pass a folder or .zip of image files")
        if not self.names:
            raise SessionError(f"{self.path}: holds no image files; add PNG, JPEG or TIFF files")

    def list_folder(self) -> None:
        files = [
            (file.relative_to(self.path).as_posix(), file)
            for file in self.path.rglob("*")
            if file.is_file() and not skipped(file.relative_to(self.path).as_posix())
        ]
        files.sort(key=lambda item: natural_key(item[0]))
        self.names = [name for name, _ in files]
        self.sizes = [file.stat().st_size for _, file in files]
        self.files = [file for _, file in files]
        self.archive = None

    def list_zip(self) -> None:
        self.archive = zipfile.ZipFile(self.path)
        entries = [e for e in self.archive.infolist() if not e.is_dir()]
        for entry in entries:
            if climbs_out(entry.filename):
                raise SessionError(f"{self.path}: entry {entry.filename!r} climbs out of the archive; remove it")
        entries = [e for e in entries if not skipped(e.filename)]
        entries.sort(key=lambda e: natural_key(e.filename))
        top = len(common_folder([e.filename for e in entries]))
        self.names = [e.filename[top:] for e in entries]
        seen = set()
        for name in self.names:
            if name in seen:  # which of the two is which image (and response) is ambiguous
                raise SessionError(f"{self.path}: holds two entries named {name!r}; remove one of them")
            seen.add(name)
        self.sizes = [e.file_size for e in entries]
        self.files = entries

    def __len__(self) -> int:
        return len(self.names)

    def read(self, i: int) -> bytes:
        """The bytes of file i (a file above MAX_FILE_BYTES is a SessionError)."""
        check_file_size(self.path, self.names[i], self.sizes[i])
        if self.archive is None:
            return self.files[i].read_bytes()
        try:
            return self.archive.read(self.files[i])
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise SessionError(f"{self.path}: cannot be read as a .zip ({error}); zip the images again") from None


def image_files(path) -> list[tuple[str, bytes]]:
    """(name, file bytes) of every file in the folder or .zip ``path`` (see ``ImageFiles``),
    refused before any is read when they do not fit in the free memory."""
    files = ImageFiles(path)
    check_sizes(files.path, list(zip(files.names, files.sizes)))
    return [(name, files.read(i)) for i, name in enumerate(files.names)]


def decode(data: bytes, name: str, source: Path) -> Image.Image:
    """The image in the file bytes ``data`` in mode L (grey) or RGB; SessionError naming ``name``
    for anything that is not a single-frame 8-bit image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SessionError(
            f"{source}: file {name} has more than {Image.MAX_IMAGE_PIXELS} pixels, pillow's limit"
            " against decompression bombs; shrink it"
        ) from None
    except Exception as error:  # pillow raises many kinds for files that are not images
        raise SessionError(
            f"{source}: file {name} is not an image pillow can read ({type(error).__name__});"
            " remove it or convert it to PNG"
        ) from None
    if getattr(image, "n_frames", 1) > 1:
        raise SessionError(f"{source}: file {name} holds {image.n_frames} frames; save one image per file")
    if image.mode.startswith(("I", "F")):
        raise SessionError(
            f"{source}: file {name} is a {image.mode} image (16-bit or float); save 8-bit grey or RGB"
        )
    return image.convert("L" if image.mode in GREY_MODES else "RGB")


def as_array(image: Image.Image) -> np.ndarray:
    """(y, x) for grey, (channel, y, x) for RGB, uint8."""
    array = np.asarray(image, dtype=np.uint8)
    return array if array.ndim == 2 else np.moveaxis(array, -1, 0)


def resample(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """images (n, y, x) or (n, c, y, x), any numbers -> float32 (n, [c,] height, width), each
    channel resampled with pillow's Lanczos filter (which averages when shrinking)."""
    height, width = size
    flat = np.asarray(images, dtype=np.float32).reshape(-1, *images.shape[-2:])
    out = np.stack(
        [
            np.asarray(Image.fromarray(channel).resize((width, height), Image.Resampling.LANCZOS))
            for channel in flat
        ]
    )
    return out.reshape(*images.shape[:-2], height, width)


def working_size(height: int, width: int) -> tuple[int, int]:
    """The image size sessions are fitted at by default: (height, width) divided by the largest
    common integer factor that leaves the shorter side at least MIN_WORKING_SIDE pixels
    (144x256 -> 36x64, the Sensorium baseline's scale; 112x112 -> 28x28); sizes without such a
    factor stay as they are."""
    factor = 1
    for k in range(2, min(height, width) // MIN_WORKING_SIDE + 1):
        if height % k == 0 and width % k == 0:
            factor = k
    return height // factor, width // factor


def to_size(images: np.ndarray, size) -> np.ndarray:
    """images (n, [c,] y, x) at ``size``: (height, width), "auto" (``working_size``) or None (as
    they are). Integer factors block-average, as a coarser screen would show the image; other
    sizes resample with pillow's Lanczos filter. uint8 images stay uint8 (rounded)."""
    y, x = images.shape[-2:]
    height, width = working_size(y, x) if size == "auto" else size or (y, x)
    if (height, width) == (y, x):
        return images
    out = downscale(images, (height, width))
    if out.shape[-2:] != (height, width):
        out = resample(images, (height, width))
    return to_uint8(out) if images.dtype == np.uint8 else out


def downscale(images: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Block-average (n, [c,] y, x) down to ``size`` when y, x are integer multiples of it
    (144x256 -> 36x64, the Sensorium baseline's x0.25); otherwise unchanged."""
    if size is None:
        return images
    (height, width), (y, x) = size, images.shape[-2:]
    if (y, x) == (height, width) or y % height or x % width or y // height != x // width:
        return images
    k = y // height
    blocks = images.reshape(*images.shape[:-2], height, k, width, k).astype(np.float32)
    return blocks.mean(axis=(-3, -1))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Pixel levels (any float) rounded and clipped to uint8 0..255."""
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def decode_images(path, mode: str | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Every image of the folder or .zip ``path`` at its own size, as ``as_array`` gives it, and
    the names (n,) str. mode: "L" or "RGB" to convert every image to; None keeps grey when all
    are grey, else RGB."""
    path = Path(path)
    files = image_files(path)
    decoded = [decode(data, name, path) for name, data in files]
    if mode is None:
        mode = "RGB" if any(image.mode == "RGB" for image in decoded) else "L"
    return [as_array(image.convert(mode)) for image in decoded], np.array([name for name, _ in files])


def read_images(path, size: tuple[int, int] | None = None, mode: str | None = None):
    """The images of the folder or .zip ``path`` (see ``decode_images``) and their names.

    size: (height, width) to bring every image to (``to_size``); without it all images must share
    one size. Returns images uint8 (n, y, x) grey or (n, 3, y, x) RGB, and names (n,) str.
    """
    arrays, names = decode_images(path, mode)
    if size is None:
        first = arrays[0].shape[-2:]
        for name, array in zip(names, arrays):
            if array.shape[-2:] != first:
                raise SessionError(
                    f"{path}: file {name} is {array.shape[-2]}x{array.shape[-1]} but {names[0]} is"
                    f" {first[0]}x{first[1]}; pass --size HxW to resample every image to one size"
                )
        return np.stack(arrays), names
    return np.stack([to_size(a[None], size)[0] for a in arrays]), names


def read_table(path, flag: str, ndmin: int = 1) -> np.ndarray:
    """The array in the .npy file ``path`` (no pickles), or the values of the .csv / .txt file
    ``path`` (comma-separated, one row per line) as strings, with at least ``ndmin`` (1 or 2)
    dimensions: 2 keeps a single row (1, n) and a single column (n, 1) apart. ``flag`` names the
    input in messages."""
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise SessionError(f"{flag} {path}: give a .npy, .csv or .txt file")
    if not path.is_file():
        raise SessionError(f"{flag} {path}: no such file")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with warnings.catch_warnings():  # an empty file is reported by the caller's shape check
            warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
            return np.loadtxt(path, dtype=str, delimiter=",", ndmin=ndmin, encoding="utf-8")
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SessionError(
            f"{flag} {path}: cannot be read ({reason}); save it with np.save (no objects) or as"
            " comma-separated values"
        ) from None


def as_numbers(values: np.ndarray, dtype: str) -> np.ndarray | None:
    """``values`` as ``dtype`` ("float64" or "int64") numbers, also when read from text;
    None when they are not all numbers of that kind (booleans never are)."""
    values = np.asarray(values)
    kinds = "iu" if dtype == "int64" else "iuf"
    if values.dtype.kind in kinds:
        return values.astype(dtype)
    if values.dtype.kind not in "US":
        return None
    try:
        numbers = values.astype(np.float64)
    except ValueError:
        return None
    if dtype == "int64" and not np.all(numbers == np.round(numbers)):
        return None
    return numbers.astype(dtype)


def orient(matrix, n_trials: int, orientation: str | None, path, per: str) -> np.ndarray:
    """The response matrix ``matrix`` (2-D) as (trials, neurons): ``orientation`` is
    "trials-neurons" or "neurons-images" (one column per trial), or None to infer it when exactly
    one axis has ``n_trials`` entries. ``per`` names a trial in messages ("image" or "trial")."""
    rows, columns = matrix.shape
    fix = "pass --orientation trials-neurons or --orientation neurons-images"
    if orientation is None:
        if rows == n_trials and columns != n_trials:
            orientation = "trials-neurons"
        elif columns == n_trials and rows != n_trials:
            orientation = "neurons-images"
        elif rows == n_trials:
            raise SessionError(f"{path}: shape {matrix.shape} has one row and one column per {per}; {fix}")
        else:
            raise SessionError(
                f"{path}: shape {matrix.shape} has no axis of {n_trials} (one entry per {per});"
                f" give a (trials, neurons) or (neurons, images) matrix for the {n_trials} {per}s"
            )
    axis = {"trials-neurons": 0, "neurons-images": 1}[orientation]
    if matrix.shape[axis] != n_trials:
        what = "rows" if axis == 0 else "columns"
        raise SessionError(
            f"{path}: has {matrix.shape[axis]} {what} but there are {n_trials} {per}s; give one"
            f" {what[:-1]} per {per}, or check --orientation"
        )
    return matrix if axis == 0 else matrix.T


def trial_image_indices(values: np.ndarray, names: np.ndarray, path) -> np.ndarray:
    """(trial,) indices into ``names`` from ``values``: 0-based image indices in file order, or
    image file names."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise SessionError(f"--trial-images {path}: has shape {values.shape}; give one value per trial")
    indices = as_numbers(values, "int64")
    if indices is None:
        lookup = {name: i for i, name in enumerate(names.tolist())}
        missing = [v for v in values.astype(str).tolist() if v not in lookup]
        if missing:
            raise SessionError(
                f"--trial-images {path}: {missing[0]!r} is neither an image index nor the name of"
                f" an image file (names look like {names[0]!r})"
            )
        return np.array([lookup[v] for v in values.astype(str).tolist()], dtype=np.int64)
    bad = indices[(indices < 0) | (indices >= len(names))]
    if len(bad):
        raise SessionError(
            f"--trial-images {path}: index {bad[0]} is out of range; give 0-based indices 0..{len(names) - 1}"
            " in file-name order"
        )
    return indices
