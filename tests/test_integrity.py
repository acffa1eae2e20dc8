"""Store digests: damaged stores are named on open and on read, runs refuse stores that changed."""

import json
import shutil
import warnings

import numpy as np
import pytest
import xarray as xr

from twin import checkpoint
from twin.cli import main
from twin.config import ModelConfig, RunConfig
from twin.data import digest
from twin.data.loader import load_session
from twin.data.simulate import simulate
from twin.data.store import open_dataset, open_session, write_dataset, write_session
from twin.errors import RunError, SessionError, TwinWarning
from twin.fit import fit

CONFIG = RunConfig(model=ModelConfig(core_layers=2, core_channels=4, input_kernel=5, hidden_kernel=3))
FIX = "restore the store from its source or write it again (twin import, twin simulate or twin mei)"


@pytest.fixture(scope="module")
def session():
    return simulate(6, 40, 5, 3, size=(12, 16), seed=3)


@pytest.fixture
def store(session, tmp_path):
    path = tmp_path / "s.zarr"
    write_session(session, path)
    return path


def responses_chunk(store):
    return store / "responses" / "c" / "0" / "0"


def rewrite(ds, store):
    """Replace ``store`` with a store of ``ds`` of the same name (so the same session name)."""
    new = store.parent / "new" / store.name
    new.parent.mkdir()
    write_session(ds, new)
    shutil.rmtree(store)
    new.rename(store)
    new.parent.rmdir()


def test_an_unchanged_store_verifies(store, session, capsys):
    recorded = digest.read_digest(store)
    assert digest.compute_digest(store) == recorded
    assert digest.check_digest(store) == recorded
    assert set(recorded["arrays"]["responses"]) == {"c/0/0"}
    assert digest.verify_store(store)["problems"] == []
    # The same content written again has the same digest.
    rewrite(session, store)
    assert digest.content_digest(store) == recorded["content"]

    assert main(["info", str(store), "--check"]) == 0
    short = recorded["content"][:12]
    assert capsys.readouterr().out == (
        f"{store}: OK (45 arrays, 45 chunks, digest {short}, every chunk matches and decodes)\n"
    )
    assert main(["info", str(store)]) == 0
    assert f"digest       {short} (twin info --check" in capsys.readouterr().out


def test_a_deleted_chunk_is_named_on_open(store):
    responses_chunk(store).unlink()
    with pytest.raises(SessionError) as error:
        open_session(store)
    assert str(error.value) == f"{store}: array 'responses' chunk c/0/0 is missing; {FIX}"


def test_a_truncated_chunk_is_named_on_open(store):
    chunk = responses_chunk(store)
    size = chunk.stat().st_size
    chunk.write_bytes(chunk.read_bytes()[:-3])
    with pytest.raises(SessionError) as error:
        open_session(store)
    assert str(error.value) == (
        f"{store}: array 'responses' chunk c/0/0 has {size - 3} bytes but was written with {size}"
        f" (truncated or replaced); {FIX}"
    )


def test_flipped_bytes_fail_the_check_and_the_read(store, capsys):
    chunk = responses_chunk(store)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))

    assert main(["info", str(store), "--check"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{store}: DAMAGED (45 arrays, 45 chunks, digest ")
    assert lines[1:] == [
        "  array 'responses' chunk c/0/0 differs from its digest (damaged)",
        "  array 'responses' chunk c/0/0 fails its CRC32C checksum",
    ]
    message = f"{store}: array 'responses' chunk c/0/0 fails its CRC32C checksum; {FIX}"
    with pytest.raises(SessionError) as error:
        load_session(store)
    assert str(error.value) == message
    assert main(["info", str(store)]) == 2
    assert capsys.readouterr().err == f"twin info: error: {message}\n"


def test_changed_metadata_is_refused_on_open(store):
    root = store / "zarr.json"
    node = json.loads(root.read_text())
    node["attributes"]["session"] = "other"
    root.write_text(json.dumps(node))
    with pytest.raises(SessionError, match=r"zarr metadata \(zarr.json\) changed since the store was written"):
        open_session(store)


def test_a_store_without_digest_opens_quietly_and_check_says_so(store, capsys):
    shutil.rmtree(store / digest.DIGEST_GROUP)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_session(store)
        load_session(store)
    assert main(["info", str(store), "--check"]) == 0
    assert "no digest (written before twin kept digests)" in capsys.readouterr().out
    assert main(["info", str(store)]) == 0
    assert "digest       none" in capsys.readouterr().out


def test_any_dataset_store_gets_a_digest(tmp_path):
    path = tmp_path / "m.zarr"
    write_dataset(xr.Dataset({"a": ("x", np.arange(4.0))}), path)
    assert set(digest.read_digest(path)["arrays"]) == {"a"}
    (path / "a" / "c" / "0").unlink()
    with pytest.raises(SessionError, match="array 'a' chunk c/0 is missing"):
        open_dataset(path)


@pytest.fixture(scope="module")
def fitted(session, tmp_path_factory):
    """An (untrained) run on a store: (run directory, store), made once."""
    root = tmp_path_factory.mktemp("fitted")
    write_session(session, root / "s.zarr")
    data = load_session(root / "s.zarr")
    records = [checkpoint.session_record(data)]
    assert records[0]["digest"] == digest.content_digest(root / "s.zarr")
    model = checkpoint.make_model(CONFIG, records, checkpoint.readout_specs([data]))
    model.eval()
    checkpoint.save_run_model(root / "run", model, CONFIG, [data])
    return root / "run", root / "s.zarr"


@pytest.fixture
def run(fitted, store, tmp_path):
    """A copy of the fitted run whose sessions.json names ``store`` (a copy of its store)."""
    run_dir = tmp_path / "run"
    shutil.copytree(fitted[0], run_dir)
    records = json.loads((run_dir / "sessions.json").read_text())
    records[0]["path"] = str(store.absolute())
    (run_dir / "sessions.json").write_text(json.dumps(records))
    assert digest.content_digest(store) == records[0]["digest"]
    return run_dir


def rewrite_with_other_responses(store, session):
    """The same neurons (unit ids) and images with other responses; returns (old, new) digests."""
    old = digest.content_digest(store)
    other = session.copy()
    other["responses"] = session["responses"] * 2
    rewrite(other, store)
    return old, digest.content_digest(store)


def test_evaluate_refuses_a_changed_store_unless_it_is_passed(run, store, session, capsys):
    old, new = rewrite_with_other_responses(store, session)
    assert old != new
    path = store.absolute()
    assert main(["evaluate", str(run)]) == 2
    assert capsys.readouterr().err == (
        f"twin evaluate: error: {run / 'sessions.json'}: store {path} changed since the run was fit"
        f" (digest {old[:12]} now {new[:12]}); restore it, or pass --store {path} explicitly to use it"
        " anyway\n"
    )
    assert main(["evaluate", str(run), "--store", str(store), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        f"twin evaluate: warning: {run / 'sessions.json'}: store {store} differs from the store"
        f" session 's' was fit on (digest {old[:12]} now {new[:12]}); using it as --store asks\n"
    )
    assert json.loads(captured.out)["n_neurons"] == 6


def test_resume_refuses_a_changed_store(run, store, session):
    _, new = rewrite_with_other_responses(store, session)
    with pytest.raises(RunError, match=f"changed since the run was fit .* now {new[:12]}\\); resume with the"):
        fit(CONFIG, [str(store)], run, resume=True, progress=False)


def test_old_runs_are_not_checked_and_undigested_stores_warn(run, store, session):
    rewrite_with_other_responses(store, session)
    records = json.loads((run / "sessions.json").read_text())
    old_run = [{k: v for k, v in r.items() if k != "digest"} for r in records]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint.check_store_digests(run, old_run, [store])
    undigested = [{**r, "digest": None} for r in records]
    with pytest.warns(TwinWarning, match="had no digest when the run was fit"):
        checkpoint.check_store_digests(run, undigested, [store])


def test_a_damaged_mei_store_is_one_line(loop_dir, tmp_path, capsys):
    meis = tmp_path / "meis.zarr"
    shutil.copytree(loop_dir / "meis.zarr", meis)
    chunk = next(path for path in (meis / "images" / "c").rglob("*") if path.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    assert main(["export", str(meis), "--out", str(tmp_path / "stimuli")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"twin export: error: {meis}: array 'images' chunk ") and "CRC32C" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "stimuli").exists()
