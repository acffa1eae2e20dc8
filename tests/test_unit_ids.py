"""Unit ids that are strings: imported from every format, kept as labels, shown and parsed by
every command (info, fit, evaluate, select, mei, predict, export, closeloop), refused when
ambiguous (duplicates, empty, too few), and escaped in the report."""

import contextlib
import csv
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_importers import recording, write_tree
from twin.cli import main
from twin.data.importers import from_arrays, from_images, from_sensorium
from twin.data.loader import load_session
from twin.data.simulate import simulate
from twin.data.store import open_dataset, open_session, write_session
from twin.errors import SessionError

# The ids of the six neurons: markup, a matplotlib math sign, non-ASCII, a path separator.
IDS = ["neu75", "neu3", "<script>", "a$b", "é/🙂", "neu9"]
TINY = """
[model]
core_layers = 1
core_channels = 4
input_kernel = 5
[data]
batch_size = 32
[fit]
max_epochs = 1
[mei]
steps = 4
"""


def twin(argv, capsys):
    """(exit status, stdout, stderr) of `twin ARGV`."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def session_arrays(ids=IDS) -> dict:
    """.npz arrays of a small simulated session whose neurons carry ``ids``; '<script>' never
    answers, so `twin info` lists it as all-zero."""
    ds = simulate(len(ids), 60, 20, 2, size=(12, 16), seed=5)
    responses = ds["responses"].values.copy()
    responses[:, ids.index("<script>")] = 0
    return {
        "images": ds["images"].values,
        "responses": responses,
        "tiers": ds["tier"].values.astype(str),
        "image_ids": ds["image_id"].values,
        "neuron_ids": np.array(ids),
    }


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """An imported session with string ids and a one-epoch run on it: (folder, store, run)."""
    root = tmp_path_factory.mktemp("unit_ids")
    np.savez(root / "rec.npz", **session_arrays())
    (root / "tiny.toml").write_text(TINY)
    assert main(["import", "arrays", str(root / "rec.npz"), str(root / "rec.zarr")]) == 0
    assert main(["fit", str(root / "rec.zarr"), "--out", str(root / "run"), "--config", str(root / "tiny.toml")]) == 0
    return root, root / "rec.zarr", root / "run"


def test_the_store_keeps_the_strings_and_info_shows_them(loop, capsys):
    _, store, run = loop
    assert open_session(store)["unit_id"].values.tolist() == IDS
    assert load_session(store).unit_id.tolist() == IDS
    assert json.loads((run / "sessions.json").read_text())[0]["unit_id"] == IDS
    code, out, _ = twin(["info", store], capsys)
    assert code == 0 and "neurons      6 (1 all-zero: unit_id <script>)" in out
    code, out, _ = twin(["info", store, "--json"], capsys)
    assert json.loads(out)["quiet_neurons"]["all_zero"]["unit_ids"] == ["<script>"]


def test_evaluate_and_select_show_the_strings(loop, capsys):
    _, _, run = loop
    code, out, _ = twin(["evaluate", run, "--json"], capsys)
    assert code == 0 and json.loads(out)["per_neuron"]["unit_id"] == IDS
    code, out, _ = twin(["select", run, "--n", "3", "--json"], capsys)
    selection = json.loads(out)
    assert code == 0 and selection["unit_id"] == [IDS[i] for i in selection["neuron_index"]]
    code, out, _ = twin(["select", run, "--n", "3"], capsys)
    if selection["unit_id"]:  # the mei list names the chosen ids, as --neurons reads them
        assert out.splitlines()[-1] == "neurons for `twin mei --neurons`: " + ",".join(selection["unit_id"])


@pytest.fixture(scope="module")
def exported(loop):
    """MEIs of two neurons named by id, exported for the rig: (MEI summary, MEI store, stimuli)."""
    root, _, run = loop
    argv = ["mei", run, "--neurons", "a$b, <script>", "--seeds", "1", "--out", root / "meis.zarr", "--json"]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main([str(a) for a in argv]) == 0
    assert main(["export", str(root / "meis.zarr"), "--out", str(root / "stimuli"), "--repeats", "3"]) == 0
    return json.loads(out.getvalue()), root / "meis.zarr", root / "stimuli"


def test_mei_and_export_name_the_neurons_by_id(loop, exported):
    summary, meis, stimuli = exported
    assert [n["id"] for n in summary["neurons"]] == ["a$b", "<script>"]
    stored = open_dataset(meis)
    assert stored["unit_id"].values.tolist() == ["a$b", "<script>"] and stored["neuron_index"].values.tolist() == [3, 2]
    assert meis.with_suffix(".png").stat().st_size > 0  # "$" is text in the grid's titles, not math
    manifest = json.loads((stimuli / "manifest.json").read_text())
    assert {s["unit_id"] for s in manifest["stimuli"]} == {"a$b", "<script>"}
    # file names keep only safe characters; the manifest keeps the ids
    assert {Path(s["file"]).name.split("_u")[1] for s in manifest["stimuli"]} == {"a_b.png", "_script_.png"}


def test_predict_names_the_columns_by_id(loop, capsys):
    root, store, run = loop
    code, _, _ = twin(["predict", run, store, "--neurons", "é/🙂,<script>", "--out", root / "p.csv"], capsys)
    with open(root / "p.csv", newline="", encoding="utf-8") as file:
        assert next(csv.reader(file)) == ["image_name", "é/🙂", "<script>"]
    assert code == 0 and twin(["predict", run, store, "--neurons", "neu9", "--out", root / "p.zarr"], capsys)[0] == 0
    assert open_dataset(root / "p.zarr")["unit_id"].values.tolist() == ["neu9"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("neu7", "--neurons 'neu7': unit id 'neu7' is not in the session; its ids include 'neu75', 'neu9', 'neu3', ..."),
        ("neu3,zzz", "--neurons 'neu3,zzz': unit id 'zzz' is not in the session; its ids include 'neu75', 'neu3', '<script>', ..."),
        ("neu3,neu3", "--neurons 'neu3,neu3': a neuron is listed twice; list each once"),
        ("0:9", "--neurons '0:9': the session has neurons 0..5; give 0 <= START < STOP <= 6"),
    ],
)
def test_a_wrong_neuron_list_is_one_line_naming_the_id(loop, capsys, spec, message):
    root, store, run = loop
    code, _, err = twin(["predict", run, store, "--neurons", spec, "--out", root / "wrong.npy"], capsys)
    assert code == 2 and err == f"twin predict: error: {message}\n" and not (root / "wrong.npy").exists()


def test_positions_still_select_neurons_of_a_string_session(loop, capsys):
    root, store, run = loop
    assert twin(["predict", run, store, "--neurons", "1:3", "--out", root / "range.csv"], capsys)[0] == 0
    assert (root / "range.csv").read_text(encoding="utf-8").splitlines()[0] == "image_name,neu3,<script>"


def test_closeloop_matches_string_ids_and_the_report_escapes_them(loop, exported, capsys):
    root, _, run = loop
    stimuli = exported[2]
    manifest = json.loads((stimuli / "manifest.json").read_text())
    order = np.array(manifest["order"])
    rng = np.random.default_rng(0)
    responses = rng.gamma(4.0, 0.25, (len(order), len(IDS))).astype(np.float32)
    np.savez(root / "rig.npz", responses=responses, stimulus_id=order, unit_id=np.array(IDS))
    code, _, err = twin(["closeloop", run, stimuli, root / "rig.npz", "--out", root / "report"], capsys)
    assert code == 0, err
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert [n["unit_id"] for n in summary["neurons"]] == ["a$b", "<script>"]
    page = (root / "report" / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<td>&lt;script&gt;</td>" in page and "<td>a$b</td>" in page

    np.savez(root / "ints.npz", responses=responses, stimulus_id=order, unit_id=np.arange(len(IDS)))
    code, _, err = twin(["closeloop", run, stimuli, root / "ints.npz", "--out", root / "r2"], capsys)
    assert code == 2 and "ints.npz: unit_id holds integers but the run's session has string ids like 'neu75'" in err
    assert not (root / "r2").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"neuron_ids": np.array(["a", "b", "c"])}, "key 'neuron_ids' has 3 ids for 6 neurons; give one id per neuron"),
        ({"unit_ids": np.array(["a", "b", "c"]), "neuron_ids": None},
         "key 'unit_ids' has 3 ids for 6 neurons; give one id per neuron"),
        ({"neuron_ids": np.array(["a", "b", "a", "c", "d", "e"])},
         "key 'neuron_ids' has duplicate ids: 'a' is given to 2 neurons; give every neuron its own id"),
        ({"neuron_ids": np.array(["a", "", "b", "c", "d", "e"])},
         "key 'neuron_ids' has an empty id (neuron 1); give every neuron a non-empty id"),
        ({"neuron_ids": np.array(["a", " b", "c", "d", "e", "f"])}, "key 'neuron_ids' has id ' b' (neuron 1) with spaces"),
        ({"neuron_ids": np.array(["a", "b,c", "d", "e", "f", "g"])}, "key 'neuron_ids' has id 'b,c' (neuron 1) with a comma"),
        ({"neuron_ids": np.array(["a", "b\nc", "d", "e", "f", "g"])}, "has id 'b\\nc' (neuron 1) with a control character"),
        ({"neuron_ids": np.arange(6.0)}, "key 'neuron_ids' has dtype float64; give integer or string ids"),
        ({"unit_ids": np.arange(6)}, "keys 'neuron_ids' and 'unit_ids' both give ids; keep one of them"),
    ],
)
def test_bad_ids_name_the_key_of_the_file(tmp_path, capsys, change, message):
    arrays = {k: v for k, v in (session_arrays() | change).items() if v is not None}
    np.savez(tmp_path / "neurons.npz", **arrays)
    code, _, err = twin(["import", "arrays", tmp_path / "neurons.npz", tmp_path / "out.zarr"], capsys)
    assert code == 2 and err.startswith(f"twin import: error: {tmp_path / 'neurons.npz'}: ") and message in err
    assert err.count("\n") == 1 and not (tmp_path / "out.zarr").exists()


def test_integer_ids_stay_integers(tmp_path):
    np.savez(tmp_path / "ints.npz", **session_arrays() | {"neuron_ids": np.arange(6) + 100})
    write_session(from_arrays(tmp_path / "ints.npz"), tmp_path / "ints.zarr")
    assert open_session(tmp_path / "ints.zarr")["unit_id"].dtype == np.int64
    assert load_session(tmp_path / "ints.zarr").unit_id.tolist() == list(range(100, 106))


def test_sensorium_unit_ids_may_be_strings_or_integers(tmp_path):
    arrays = recording()
    ids = np.array([f"cell{i}" for i in range(len(arrays["neuron_ids"]))])
    write_tree(tmp_path / "strings", arrays | {"neuron_ids": ids})
    assert from_sensorium(tmp_path / "strings", size=(8, 12))["unit_id"].values.tolist() == ids.tolist()
    write_tree(tmp_path / "short", arrays | {"neuron_ids": ids[:2]})
    with pytest.raises(SessionError, match=f"file meta/neurons/unit_ids.npy has 2 ids for {len(ids)} neurons"):
        from_sensorium(tmp_path / "short", size=(8, 12))


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("ids.txt", "neu1\nneu2\n", ["neu1", "neu2"]),
        ("ids.csv", '\ufeffneu1,"x y"\n', ["neu1", "x y"]),  # a spreadsheet's BOM, a quoted cell
        ("ids.csv", "7\n9\n", [7, 9]),  # all integers: integer ids
        ("ids.txt", "9007199254740993\n1\n", [9007199254740993, 1]),  # exactly, beyond float64's 2**53
        ("ids.csv", "7.000000000000000000e+00\n9.000000000000000000e+00\n", [7, 9]),  # np.savetxt's default
        ("ids.txt", "#1\n#2\n", ["#1", "#2"]),  # no comment syntax
        ("ids.npy", np.array(["a", "b"]), ["a", "b"]),
    ],
)
def test_image_importer_reads_id_files(tmp_path, name, content, expected):
    from PIL import Image

    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (10, 14), np.uint8)).save(tmp_path / "images" / f"im{i}.png")
    np.save(tmp_path / "r.npy", rng.poisson(2.0, (12, 2)).astype(np.float64))
    if isinstance(content, str):
        (tmp_path / name).write_text(content, encoding="utf-8")
    else:
        np.save(tmp_path / name, content)
    ds = from_images(tmp_path / "images", tmp_path / "r.npy", unit_ids=tmp_path / name)
    assert ds["unit_id"].values.tolist() == expected


TEXT_IDS = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=8).filter(
    lambda text: text == text.strip() and "," not in text
)


@settings(max_examples=20, deadline=None)
@given(ids=st.lists(TEXT_IDS, min_size=3, max_size=3, unique=True))
def test_any_printable_ids_round_trip_through_import_store_and_open(ids):
    with tempfile.TemporaryDirectory() as tmp:
        npz, store = Path(tmp) / "rec.npz", Path(tmp) / "rec.zarr"
        np.savez(npz, **recording(k=3) | {"neuron_ids": np.array(ids)})
        write_session(from_arrays(npz), store)
        assert open_session(store)["unit_id"].values.tolist() == ids
        assert load_session(store).unit_id.tolist() == ids
