"""`twin import images` on hostile folders and matrices: a valid session or one SessionError line."""

import io
import shutil

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from twin.data.importers import from_images
from twin.data.schema import validate
from twin.errors import SessionError

MODES = ["L", "RGB", "RGBA", "P", "I;16", "F", "CMYK", "1"]
FORMATS = ["PNG", "JPEG", "TIFF", "GIF", "BMP"]


def image_bytes(mode: str, size: tuple[int, int], fmt: str, seed: int) -> bytes | None:
    """One image file's bytes, or None when pillow cannot write that mode in that format."""
    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    try:
        picture.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return None
    return buffer.getvalue()


EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif", "GIF": "gif", "BMP": "bmp"}
valid = st.tuples(st.sampled_from(["L", "RGB"]), st.just((8, 8)), st.sampled_from(["PNG", "TIFF"]))
odd = st.tuples(st.sampled_from(MODES), st.sampled_from([(8, 8), (1, 1), (9, 7)]), st.sampled_from(FORMATS))
garbage = st.sampled_from([b"", b"not an image", b"\x89PNG\r\n\x1a\n cut"])
# Mostly valid images, so that the accepting path is exercised too.
files = st.lists(st.one_of(valid, valid, valid, odd, garbage), min_size=0, max_size=6)
matrices = st.tuples(
    st.sampled_from(["npy", "csv"]),
    st.sampled_from(["rows", "rows", "columns", "columns", "vector", "empty", "nan", "negative", "strings", "3d"]),
)


def responses_file(folder, kind: str, shape_kind: str, n_images: int, seed: int):
    rng = np.random.default_rng(seed)
    values = {
        "rows": rng.poisson(2.0, (n_images, 3)).astype(float),
        "columns": rng.poisson(2.0, (3, n_images)).astype(float),
        "vector": rng.poisson(2.0, n_images).astype(float),
        "empty": np.zeros((0, 3)),
        "nan": np.full((n_images, 3), np.nan),
        "negative": -rng.random((n_images, 3)),
        "strings": np.array([["a"] * 3] * max(n_images, 1)),
        "3d": np.zeros((n_images, 3, 2)),
    }[shape_kind]
    path = folder / f"r.{kind}"
    if kind == "npy":
        np.save(path, values)
    else:
        try:
            np.savetxt(path, values.reshape(len(values), -1) if values.ndim > 2 else values, delimiter=",", fmt="%s")
        except ValueError:
            path.write_text("1,2\n3\n")
    return path


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=files, matrix=matrices, zipped=st.booleans(), seed=st.integers(0, 100))
def test_hostile_inputs_import_or_fail_in_one_line(tmp_path, files, matrix, zipped, seed):
    root = tmp_path / "case"
    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    for i, item in enumerate(files):
        data = item if isinstance(item, bytes) else image_bytes(*item, seed=seed + i)
        extension = "png" if isinstance(item, bytes) else EXTENSIONS[item[2]]
        if data is not None:
            (root / "images" / f"image{i}.{extension}").write_bytes(data)
    source = root / "images"
    if zipped:
        source = shutil.make_archive(str(root / "images"), "zip", root / "images")
    responses = responses_file(root, *matrix, n_images=len(files), seed=seed)
    try:
        ds = from_images(source, responses, seed=seed)
    except SessionError as error:
        assert "\n" not in str(error), str(error)
    else:
        validate(ds, source)
