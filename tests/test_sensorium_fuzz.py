"""The Sensorium importer on damaged trees: a valid session or one SessionError line, nothing else."""

import shutil

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_importers import recording, write_tree

from twin.data.importers import from_sensorium
from twin.data.schema import validate
from twin.errors import SessionError

FILES = [
    "meta/trials/tiers.npy",
    "meta/trials/frame_image_id.npy",
    "meta/neurons/unit_ids.npy",
    "meta/neurons/cell_motor_coordinates.npy",
    "data/images/0.npy",
    "data/images/5.npy",
    "data/responses/3.npy",
    "data/behavior/2.npy",
    "data/pupil_center/0.npy",
]

# Each damage turns a valid file into something a broken export or a hostile user could leave.
DAMAGES = {
    "delete": lambda path: path.unlink(),
    "empty file": lambda path: path.write_bytes(b""),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]),
    "garbage": lambda path: path.write_bytes(b"\x93NUMPY garbage \x00\xff" * 3),
    "folder": lambda path: (path.unlink(), path.mkdir()),
    "pickle": lambda path: np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True),
    "strings": lambda path: np.save(path, np.array(["x"] * len(np.load(path)))),
    "nan": lambda path: np.save(path, np.full(np.load(path).shape, np.nan)),
    "huge": lambda path: np.save(path, np.full(np.load(path).shape, 1e30)),
    "negative": lambda path: np.save(path, -np.abs(np.load(path).astype(np.float64)) - 1),
    "wrong length": lambda path: np.save(path, np.load(path)[:-1]),
    "scalar": lambda path: np.save(path, np.float32(1.0)),
    "bool": lambda path: np.save(path, np.load(path).astype(bool)),
    "complex": lambda path: np.save(path, np.load(path).astype(np.complex64)),
    "extra axis": lambda path: np.save(path, np.load(path)[None, None]),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    damages=st.lists(st.tuples(st.sampled_from(FILES), st.sampled_from(sorted(DAMAGES))), min_size=1, max_size=3),
    zipped=st.booleans(),
)
def test_damaged_trees_import_or_fail_in_one_line(tmp_path, damages, zipped):
    root = tmp_path / "case"
    shutil.rmtree(root, ignore_errors=True)
    write_tree(root / "mouse", recording())
    for name, damage in damages:
        path = root / "mouse" / name
        if path.is_file():
            try:
                DAMAGES[damage](path)
            except (ValueError, TypeError, EOFError, OSError, IndexError):  # this damage does not apply to that file
                pass
    source = root / "mouse"
    if zipped:
        source = shutil.make_archive(str(root / "mouse"), "zip", root / "mouse")
    try:
        ds = from_sensorium(source, size=(8, 12))
    except SessionError as error:
        message = str(error)
        assert "\n" not in message and str(source) in message, message
    else:
        validate(ds, source)
