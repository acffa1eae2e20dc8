"""Output paths: the one way every command writes a file or a folder.

Rules, checked by ``check_output`` before any work starts:
- the parent folder must exist and be writable;
- an existing target is refused unless ``overwrite`` (``--overwrite``) is given, except an empty
  folder where a folder goes;
- a folder is never replaced by a file or a file by a folder;
- ``overwrite`` replaces only what ``twin`` wrote, of the same kind: a zarr store with twin's
  digest, or a folder holding the marker file ``.twin`` (written into every other output folder),
  so ``--out ~ --overwrite`` cannot delete a home folder, nor a report replace a session store.

Kinds of output: "store" (a zarr store folder), "folder" (any other folder) and "file".

``output`` then writes into a hidden staging path beside the target, ``.NAME.partial-HOST-PID``,
and renames it onto the target only when the work succeeded; on an error the staging path is
removed. ``output_in_place`` (fit, loop) writes into the target itself. A writer killed with
``kill -9`` leaves its staging paths behind: ``clean_abandoned`` (run by every later write into
the same folder) undoes what those whose process is gone left, putting a previous output back
where a replacement did not finish, and ``abandoned`` lists them (``twin info`` reports them).
Everything is created with the user's umask.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import NamedTuple

from twin.errors import OutputError

MARKER = ".twin"
MAX_NAME = 200  # bytes: file systems hold 255, and the staging name adds host and pid
# Hidden siblings of an output while it is written: "partial" (the new output being staged),
# "old" (the previous output during the final swap) and "previous" (the previous output moved
# aside while a job writes in place with --overwrite).
STAGING_KINDS = ("partial", "old", "previous")
STAGING_NAME = re.compile(r"\.(?P<target>.+)\.(?P<kind>partial|old|previous)-(?P<host>.+)-(?P<pid>\d+)")


class Staging(NamedTuple):
    """What the name of a staging path says: the output it belongs to, its kind, its writer."""

    target: Path
    kind: str
    host: str
    pid: int


def staging_path(target: Path, kind: str = "partial") -> Path:
    """The hidden sibling ``.NAME.KIND-HOST-PID`` of ``target`` that this process writes."""
    return target.with_name(f".{target.name}.{kind}-{socket.gethostname()}-{os.getpid()}")


def parse_staging(path: Path) -> Staging | None:
    """The Staging named by ``path``; None for any other name."""
    match = STAGING_NAME.fullmatch(path.name)
    if match is None:
        return None
    return Staging(path.with_name(match["target"]), match["kind"], match["host"], int(match["pid"]))


def is_running(host: str, pid: int) -> bool:
    """Whether process ``pid`` of ``host`` may still be running (other hosts: assume so)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def abandoned(folder: str | Path) -> list[Path]:
    """Staging paths in ``folder`` left by writers of this host that are gone (killed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob(".*")):
        staging = parse_staging(path)
        if staging is not None and not is_running(staging.host, staging.pid):
            found.append(path)
    return found


def remove(path: Path) -> None:
    if not os.path.lexists(path):  # also for names the file system cannot hold
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_settled(path: Path, seconds: float = 2.0) -> None:
    """``remove`` a staging path that background writers (zarr's I/O threads, when Ctrl-C
    interrupts a write) may still be adding files to: again until it stays gone."""
    deadline = time.monotonic() + seconds
    remove(path)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if not os.path.lexists(path):
            return
        remove(path)


def clean_abandoned(folder: str | Path) -> list[Path]:
    """Undo what killed writers left in ``folder``; one stderr line each.

    A staged new output is removed. A previous output is put back unless a complete new output
    replaced it: an "old" one (killed during the final swap) only when its target is missing, a
    "previous" one (killed while writing in place) always, replacing the unfinished new output.
    """
    found = abandoned(folder)
    for path in found:
        staging = parse_staging(path)
        target = staging.target
        if staging.kind == "partial" or (staging.kind == "old" and os.path.lexists(target)):
            remove(path)
            print(f"twin: removed {path}, left by a write that was killed", file=sys.stderr)
            continue
        if staging.kind == "previous" and os.path.lexists(target):
            remove(target)
        os.replace(path, target)
        print(f"twin: restored {target}: a write that replaced it was killed before it finished", file=sys.stderr)
    return found


def is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def written_by_twin(path: Path, kind: str) -> bool:
    """Whether the folder ``path`` is an output of ``kind`` that twin wrote: a "folder" holds the
    marker, a "store" is a zarr store with twin's digest or twin's name in created_by."""
    if kind == "folder":
        return (path / MARKER).is_file()
    if (path / "twin_digest" / "zarr.json").is_file():
        return True
    try:
        attributes = json.loads((path / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return str(attributes.get("created_by", "")).startswith("twin")


def check_output(
    path: str | Path, overwrite: bool = False, kind: str = "folder", flag: str = "--out", inputs=()
) -> Path:
    """Refuse an output target that cannot or must not be written; returns it as a Path.

    kind: "store", "folder" or "file" (see the module docstring). flag: how the user named the
    path, for the messages. inputs: paths the command reads; the output may not be one of them
    or a folder holding one, since replacing it would destroy the input.
    """
    path = Path(path)
    check_place(path, flag, inputs)
    check_parent(path, flag)
    if os.path.lexists(path):
        check_existing(path, overwrite, kind, flag)
    return path


def check_place(path: Path, flag: str, inputs) -> None:
    """Where ``path`` lies: not the current folder, not inside a zarr store, not over an input."""
    if path.name in ("", ".", "..") or path.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise OutputError(f"{path}: is the current folder or holds it; name a new {flag} instead")
    if len(os.fsencode(path.name)) > MAX_NAME:
        raise OutputError(f"{path}: the name is too long; use at most {MAX_NAME} bytes for {flag}")
    store = next((folder for folder in path.resolve().parents if (folder / "zarr.json").is_file()), None)
    if store is not None:
        raise OutputError(f"{path}: lies inside the zarr store {store}, which it would damage; choose another {flag}")
    for source in inputs:
        source = Path(source).resolve()
        if path.resolve() == source or path.resolve() in source.parents:
            raise OutputError(
                f"{path}: holds the input {source}, which writing there would destroy; choose another {flag}"
            )


def check_parent(path: Path, flag: str) -> None:
    """The folder that will hold ``path`` exists and is writable."""
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(
            f"{path}: the parent folder {parent} does not exist; create it first (mkdir -p {parent})"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: the folder {parent} is not writable; choose another {flag}")


def check_existing(path: Path, overwrite: bool, kind: str, flag: str) -> None:
    """An existing ``path`` may be replaced: an empty folder where a folder goes, or, with
    ``overwrite``, a file where a file goes or a twin output of ``kind``."""
    folder = kind != "file"
    if path.is_dir() != folder or path.is_symlink():
        found = "a link" if path.is_symlink() else ("a folder" if path.is_dir() else "a file")
        raise OutputError(
            f"{path}: is {found} but a {'folder' if folder else 'file'} goes here; choose another"
            f" {flag} (nothing was changed)"
        )
    if folder and is_empty_folder(path):
        return
    if not overwrite:
        raise OutputError(f"{path}: already exists; pass --overwrite to replace it, or choose another {flag}")
    if folder and not written_by_twin(path, kind):
        raise OutputError(
            f"{path}: was not written by twin as a {'zarr store' if kind == 'store' else 'folder'} of"
            f" this kind, so --overwrite does not replace it; remove it yourself or choose another {flag}"
        )


def make_folder(path: Path, kind: str = "folder") -> None:
    """mkdir with the user's umask; a "folder" also gets the marker that lets ``--overwrite``
    replace it later (a zarr store is recognized by its zarr.json)."""
    path.mkdir(exist_ok=True)
    if kind == "folder":
        (path / MARKER).write_text("written by twin; --overwrite may replace this folder\n")


def commit(staged: Path, target: Path, overwrite: bool) -> None:
    """Move the finished ``staged`` path onto ``target``. A previous output there is replaced only
    with ``overwrite``: something that appeared at the target while the work ran is refused."""
    if not os.path.lexists(target) or is_empty_folder(target):
        if target.is_dir():
            target.rmdir()
        os.replace(staged, target)
        return
    if not overwrite:
        raise OutputError(
            f"{target}: appeared while this command ran (another twin writing there?); nothing was"
            " replaced: pass --overwrite or choose another output"
        )
    old = staging_path(target, "old")
    os.replace(target, old)
    try:
        os.replace(staged, target)
    except OSError:
        os.replace(old, target)
        raise
    remove(old)


def write_failed(target: Path, staged: Path, error: OSError) -> OSError | OutputError:
    """An OSError about the staging path ``staged`` as one line about ``target`` (the staging name
    means nothing to the user); other OSErrors (e.g. reading an input) unchanged."""
    if isinstance(error, BrokenPipeError) or error.strerror is None:
        return error
    if error.filename is not None and not str(error.filename).startswith(str(staged)):
        return error
    return OutputError(
        f"{target}: {error.strerror} while writing it; check the path, its permissions and the free"
        " space (nothing was written)"
    )


@contextlib.contextmanager
def output(path: str | Path, overwrite: bool = False, kind: str = "folder", flag: str = "--out", inputs=()):
    """Yield a staging path for ``path``; on success it replaces ``path``, on error it vanishes.

    A folder output's staging folder exists (with its marker) when yielded; a file output's
    staging path does not yet. Writers fill the yielded path exactly as they would the target.
    """
    target = check_output(path, overwrite, kind, flag, inputs)
    clean_abandoned(target.parent)
    staged = staging_path(target)
    try:
        remove(staged)
        if kind != "file":
            make_folder(staged, kind)
        yield staged
        commit(staged, target, overwrite)
    except OSError as error:
        remove(staged)
        raise write_failed(target, staged, error) from None
    except BaseException:
        remove_settled(staged)
        raise


@contextlib.contextmanager
def output_in_place(path: str | Path, overwrite: bool = False, flag: str = "--out", keep=None, inputs=()):
    """Yield the folder ``path`` itself to write into, for long jobs that record their own path
    or can be resumed (fit, loop).

    A new output that fails is removed, unless ``keep(folder)`` says it holds work worth resuming
    (a checkpoint). With ``overwrite`` the previous output is first moved aside
    (``.NAME.previous-HOST-PID``) and removed only when the job succeeds: a job that fails, or is
    killed (see ``clean_abandoned``), leaves the previous output in place.
    """
    target = check_output(path, overwrite, "folder", flag, inputs)
    clean_abandoned(target.parent)
    previous = None
    was_empty_folder = is_empty_folder(target)
    if target.exists() and not was_empty_folder:
        previous = staging_path(target, "previous")
        os.replace(target, previous)
    try:
        make_folder(target)
        yield target
    except BaseException as error:
        if previous is not None or keep is None or not keep(target):
            remove(target)
            if previous is not None:
                os.replace(previous, target)
            elif was_empty_folder:
                target.mkdir()
        if isinstance(error, OSError):
            raise write_failed(target, target, error) from None
        raise
    if previous is not None:
        remove(previous)
