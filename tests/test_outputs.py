"""Output paths: no command destroys what a user has, and none leaves a half-written output."""

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from twin.cli import main
from twin.errors import OutputError
from twin.outputs import abandoned, check_output, output, output_in_place, staging_path


def snapshot(folder):
    """{relative path: bytes} of every file under ``folder``, to prove nothing changed."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_check_output_refusals(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = {
        tmp_path / "missing" / "out": "parent folder",
        tmp_path / "mine": "already exists; pass --overwrite",
        tmp_path / "file.txt": "is a file but a folder goes here",
    }
    for path, message in cases.items():
        with pytest.raises(OutputError, match=message):
            check_output(path)
    with pytest.raises(OutputError, match="was not written by twin as a folder"):
        check_output(tmp_path / "mine", overwrite=True)
    with pytest.raises(OutputError, match="is a folder but a file goes here"):
        check_output(tmp_path / "empty", overwrite=True, kind="file")
    assert check_output(tmp_path / "empty") == tmp_path / "empty"
    monkeypatch.chdir(tmp_path / "empty")
    for path in (".", "", "..", "/"):
        with pytest.raises(OutputError, match="is the current folder or holds it"):
            check_output(path, overwrite=True)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match="is not writable"):
        check_output(tmp_path / "new")
    assert snapshot(tmp_path / "mine") == {"thesis.tex": b"years of work"}


def test_output_replaces_only_on_success_and_keeps_the_umask(tmp_path):
    target = tmp_path / "out"
    old_umask = os.umask(0o027)
    try:
        with output(target) as staged:
            (staged / "a.txt").write_text("first")
    finally:
        os.umask(old_umask)
    assert (target / "a.txt").read_text() == "first"
    assert target.stat().st_mode & 0o777 == 0o750
    with pytest.raises(RuntimeError), output(target, overwrite=True) as staged:
        (staged / "a.txt").write_text("second")
        raise RuntimeError("the work failed")
    assert (target / "a.txt").read_text() == "first"
    with output(target, overwrite=True) as staged:
        (staged / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == [".twin", "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_in_place_restores_the_old_output_on_failure(tmp_path):
    target = tmp_path / "run"
    with output_in_place(target) as folder:
        (folder / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), output_in_place(target, overwrite=True) as folder:
        assert not (folder / "old.txt").exists()
        (folder / "new.txt").write_text("half")
        raise RuntimeError("the fit failed")
    assert snapshot(target) == {".twin": (target / ".twin").read_bytes(), "old.txt": b"old"}
    with pytest.raises(RuntimeError), output_in_place(tmp_path / "fresh") as folder:
        raise RuntimeError("rejected config")
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(RuntimeError), output_in_place(tmp_path / "kept", keep=lambda f: True) as folder:
        (folder / "checkpoint").write_text("epoch 3")
        raise RuntimeError("disk full")
    assert (tmp_path / "kept" / "checkpoint").read_text() == "epoch 3"


def test_file_system_errors_are_one_line_about_the_target(tmp_path, capsys):
    for writer in (output, output_in_place):
        with pytest.raises(OutputError, match="x: No space left on device while writing it"), writer(tmp_path / "x") as staged:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staged / "chunk"))
    long_name = tmp_path / ("a" * 250 + ".zarr")
    assert main(["simulate", str(long_name), "--neurons", "3"]) == 2
    assert capsys.readouterr().err == f"twin simulate: error: {long_name}: the name is too long; use at most 200 bytes for OUT\n"
    assert list(tmp_path.iterdir()) == []


def test_a_killed_overwrite_in_place_gets_the_previous_output_back(tmp_path, capsys):
    host = socket.gethostname()
    previous = tmp_path / f".run.previous-{host}-999999999"  # moved aside by a killed --overwrite
    previous.mkdir()
    (previous / "good.txt").write_text("the run that worked")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "half.txt").write_text("unfinished")
    odd = tmp_path / f".meis.old-recipe.zarr.partial-{host}-999999999"  # a partial, not an old output
    odd.mkdir()
    with output(tmp_path / "other", kind="file") as staged:
        staged.write_text("x")
    assert snapshot(tmp_path / "run") == {"good.txt": b"the run that worked"}
    assert not odd.exists() and not (tmp_path / "meis.old-recipe.zarr").exists()
    assert "restored" in capsys.readouterr().err


def test_an_output_that_appears_during_the_work_is_not_replaced(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(OutputError, match="appeared while this command ran"), output(target) as staged:
        (staged / "new.txt").write_text("new")
        target.mkdir()
        (target / "theirs.txt").write_text("someone else's")
    assert snapshot(target) == {"theirs.txt": b"someone else's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_only_twin_outputs_of_the_same_kind(loop_dir, tmp_path):
    store = tmp_path / "session.zarr"
    shutil.copytree(loop_dir / "session.zarr", store)
    with pytest.raises(OutputError, match="was not written by twin as a folder"):
        check_output(store, overwrite=True)  # a report or stimulus folder onto a session store
    assert check_output(store, overwrite=True, kind="store") == store
    (tmp_path / "foreign.zarr").mkdir()
    (tmp_path / "foreign.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    with pytest.raises(OutputError, match="was not written by twin as a zarr store"):
        check_output(tmp_path / "foreign.zarr", overwrite=True, kind="store")


def test_abandoned_staging_is_reported_and_cleaned(tmp_path, capsys):
    dead = tmp_path / f".x.zarr.partial-{socket.gethostname()}-999999999"
    dead.mkdir()
    old = tmp_path / f".y.old-{socket.gethostname()}-999999999"
    old.mkdir()
    (old / "kept.txt").write_text("moved aside by a killed --overwrite")
    alive = staging_path(tmp_path / "z")  # this process: still running
    alive.mkdir()
    assert abandoned(tmp_path) == [dead, old]
    with output(tmp_path / "other") as staged:
        (staged / "a").write_text("a")
    err = capsys.readouterr().err
    assert "removed" in err and "restored" in err
    assert not dead.exists() and alive.exists()
    assert (tmp_path / "y" / "kept.txt").exists()


@pytest.mark.parametrize("command", ["simulate", "import", "fit", "mei", "export", "respond", "closeloop", "loop", "match"])
def test_existing_outputs_are_never_touched(command, loop_dir, tmp_path, capsys):
    """Every command that writes refuses a user's folder or file at its output, and leaves it as it was."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    (tmp_path / "plain.txt").write_text("also mine")
    np.savez(tmp_path / "rec.npz", images=np.zeros((4, 8, 8), np.uint8), responses=np.ones((4, 2), np.float32))
    before = snapshot(tmp_path)
    inputs = {
        "simulate": ["simulate", "{out}", "--neurons", "3"],
        "import": ["import", "arrays", str(tmp_path / "rec.npz"), "{out}"],
        "fit": ["fit", str(loop_dir / "session.zarr"), "--out", "{out}"],
        "mei": ["mei", str(loop_dir / "run"), "--out", "{out}"],
        "export": ["export", str(loop_dir / "meis.zarr"), "--out", "{out}"],
        "respond": ["respond", str(loop_dir / "stimuli"), "--animal", str(loop_dir / "session.zarr"), "--out", "{out}"],
        "closeloop": ["closeloop", str(loop_dir / "run"), str(loop_dir / "stimuli"), str(loop_dir / "responses.npz"), "--out", "{out}"],
        "loop": ["loop", "{out}"],
        "match": ["match", str(loop_dir / "session.zarr"), str(loop_dir / "session.zarr"), "--out", "{out}"],
    }[command]
    targets = [user, tmp_path / "plain.txt"] if command != "mei" else [tmp_path / "m.zarr", tmp_path / "plain.zarr"]
    if command == "mei":
        (tmp_path / "m.zarr").mkdir()
        (tmp_path / "m.zarr" / "notes.txt").write_text("mine")
        (tmp_path / "plain.zarr").write_text("mine")
        before = snapshot(tmp_path)
    for target in targets:
        for overwrite in ([], ["--overwrite"]):
            argv = [str(target) if a == "{out}" else a for a in inputs] + overwrite
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and str(target) in err, err
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# Runs a twin command with the final rename held back, so the test can kill it at the last moment.
HELD = """
import sys, time
import twin.outputs
def held(*args):
    print("staged", flush=True)
    time.sleep(600)
twin.outputs.commit = held
from twin.cli import main
sys.exit(main(sys.argv[1:]))
"""


def kill_before_commit(argv, cwd):
    process = subprocess.Popen(
        [sys.executable, "-c", HELD, *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    for line in process.stdout:
        if line.strip() == "staged" or time.monotonic() > deadline:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read()


@pytest.mark.parametrize("command", ["simulate", "import", "mei", "export", "respond", "closeloop", "predict", "match"])
def test_kill_9_keeps_the_previous_output(command, loop_dir, tmp_path, capsys):
    """kill -9 of `--overwrite` just before the output lands: the previous output is intact, the
    staging folder is reported by `twin info` and removed by the next write in that folder."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rec.npz", images=rng.integers(0, 256, (20, 8, 8), np.uint8), responses=rng.random((20, 2), np.float32))
    shutil.copytree(loop_dir / "session.zarr", tmp_path / "session.zarr")
    argv, previous = {
        "simulate": (["simulate", "out", "--neurons", "4", "--train-images", "30", "--test-images", "2", "--repeats", "2"], "session.zarr"),
        "import": (["import", "arrays", "rec.npz", "out"], "session.zarr"),
        "mei": (["mei", str(loop_dir / "run"), "--neurons", "0", "--seeds", "1", "--out", "out.zarr"], "meis.zarr"),
        "export": (["export", str(loop_dir / "meis.zarr"), "--out", "out"], "stimuli"),
        "respond": (["respond", str(loop_dir / "stimuli"), "--animal", str(loop_dir / "session.zarr"), "--out", "out.npz"], "responses.npz"),
        "closeloop": (["closeloop", str(loop_dir / "run"), str(loop_dir / "stimuli"), str(loop_dir / "responses.npz"), "--out", "out"], "report"),
        "predict": (["predict", str(loop_dir / "run"), "session.zarr", "--out", "out.npy"], "responses.npz"),
        "match": (["match", "session.zarr", "session.zarr", "--out", "out.csv"], "selection.json"),
    }[command]
    out = tmp_path / {"mei": "out.zarr", "respond": "out.npz", "predict": "out.npy", "match": "out.csv"}.get(command, "out")
    copy = shutil.copytree if (loop_dir / previous).is_dir() else shutil.copyfile
    copy(loop_dir / previous, out)
    if out.is_dir() and not (out / "zarr.json").exists():
        (out / ".twin").write_text("written by twin")
    before = snapshot(out) if out.is_dir() else out.read_bytes()
    kill_before_commit([*argv, "--overwrite"], tmp_path)
    assert (snapshot(out) if out.is_dir() else out.read_bytes()) == before
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(left) == 1 and ".partial-" in left[0], left
    assert main(["info", str(tmp_path / "session.zarr")]) == 0
    assert left[0] in capsys.readouterr().out
    assert main(["simulate", str(tmp_path / "next.zarr"), "--neurons", "3", "--train-images", "20", "--test-images", "2", "--repeats", "2"]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def kill_when(argv, cwd, appears):
    """Run `twin ARGV` in ``cwd`` and kill -9 it as soon as the path ``appears`` exists."""
    process = subprocess.Popen(
        [sys.executable, "-m", "twin.cli", *argv], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not appears.exists():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_kill_9_during_fit_leaves_a_run_to_resume(loop_dir, tmp_path, capsys):
    """A killed fit keeps its run directory for --resume; a new `twin fit` there is refused."""
    (tmp_path / "tiny.toml").write_text("[model]\ncore_layers = 1\ncore_channels = 4\ninput_kernel = 5\n")
    argv = ["fit", str(loop_dir / "session.zarr"), "--out", "run", "--config", "tiny.toml", "--max-epochs", "50"]
    kill_when(argv, tmp_path, tmp_path / "run" / "sessions.json")
    assert main(["fit", str(loop_dir / "session.zarr"), "--out", str(tmp_path / "run")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.toml").exists()


def test_an_output_never_replaces_an_input(loop_dir, tmp_path, capsys):
    """--overwrite onto the command's own input (or a folder holding it) is refused."""
    shutil.copytree(loop_dir, tmp_path / "loop", symlinks=True)
    loop = tmp_path / "loop"
    before = snapshot(loop)
    cases = [
        ["export", str(loop / "meis.zarr"), "--out", str(loop / "meis.zarr")],
        ["export", str(loop / "meis.zarr"), "--out", str(loop)],
        ["closeloop", str(loop / "run"), str(loop / "stimuli"), str(loop / "responses.npz"), "--out", str(loop / "stimuli")],
        ["import", "arrays", str(loop / "responses.npz"), str(loop / "responses.npz")],
        ["fit", str(loop / "session.zarr"), "--out", str(loop)],
        ["mei", str(loop / "run"), "--out", str(loop / "session.zarr"), "--store", str(loop / "session.zarr")],
        ["loop", str(loop), "--session", str(loop / "session.zarr")],
    ]
    for argv in cases:
        assert main([*argv, "--overwrite"]) == 2, argv
        assert "which writing there would destroy" in capsys.readouterr().err, argv
    assert snapshot(loop) == before


def test_kill_9_during_loop_leaves_a_folder_that_is_refused_not_reused(loop_dir, tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text((loop_dir.parent / "tiny.toml").read_text())
    kill_when(["loop", "out", "--config", "tiny.toml"], tmp_path, tmp_path / "out" / "config.toml")
    assert main(["loop", str(tmp_path / "out"), "--config", str(tmp_path / "tiny.toml")]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_outputs_stay_out_of_stores_and_stores_are_what_they_say(loop_dir, tmp_path, capsys):
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "s.zarr" / "zarr.json").write_text("{}")
    with pytest.raises(OutputError, match="lies inside the zarr store"):
        check_output(tmp_path / "s.zarr" / "report", kind="folder")
    (tmp_path / "link.zarr").symlink_to(loop_dir / "session.zarr")
    assert main(["fit", str(loop_dir / "session.zarr"), str(tmp_path / "link.zarr"), "--out", str(tmp_path / "r")]) == 2
    assert "the same store as" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["fit", str(loop_dir / "meis.zarr"), "--out", str(tmp_path / "r")]) == 2
    assert "holds the output of twin mei, not a session" in capsys.readouterr().err
