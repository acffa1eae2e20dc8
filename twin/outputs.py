"""Output paths: the one way every command writes a file or a folder.

Rules, checked by ``check_output`` before any work starts:
- the parent folder must exist and be writable;
- an existing target is refused unless ``overwrite`` (``--overwrite``) is given, except an empty
  folder where a folder goes;
- a folder is never replaced by a file or a file by a folder;
- ``overwrite`` replaces only what ``twin`` wrote: a zarr store, or a folder holding the marker
  file ``.twin`` (written into every other output folder), so ``--out ~ --overwrite`` cannot
  delete a home folder.

Kinds of output: "store" (a zarr store folder), "folder" (any other folder) and "file".

``output`` then writes into a hidden staging path beside the target, ``.NAME.partial-HOST-PID``,
and renames it onto the target only when the work succeeded; on an error the staging path is
removed. A writer killed with ``kill -9`` leaves its staging path behind: ``clean_abandoned``
(run by every later write into the same folder) removes those whose process is gone and says so,
and ``abandoned`` lists them (``twin info`` reports them). Everything is created with the user's
umask.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from pathlib import Path

from twin.errors import OutputError

MARKER = ".twin"
MAX_NAME = 200  # bytes: file systems hold 255, and the staging name adds host and pid
STAGING_KINDS = ("partial", "old")


def staging_path(target: Path, kind: str = "partial") -> Path:
    """The hidden sibling ``.NAME.KIND-HOST-PID`` of ``target`` that this process writes."""
    return target.with_name(f".{target.name}.{kind}-{socket.gethostname()}-{os.getpid()}")


def owner(path: Path) -> tuple[str, int] | None:
    """(host, pid) of the process that made the staging path ``path``; None for other names."""
    for kind in STAGING_KINDS:
        marker = f".{kind}-"
        if path.name.startswith(".") and marker in path.name:
            host, _, pid = path.name.rsplit(marker, 1)[1].rpartition("-")
            if host and pid.isdigit():
                return host, int(pid)
    return None


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
        made_by = owner(path)
        if made_by is not None and not is_running(*made_by):
            found.append(path)
    return found


def remove(path: Path) -> None:
    if not os.path.lexists(path):  # also for names the file system cannot hold
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def target_of(staged: Path) -> Path:
    """The output that the staging path ``staged`` was written for."""
    for kind in STAGING_KINDS:
        name, marker, _ = staged.name[1:].rpartition(f".{kind}-")
        if marker:
            return staged.with_name(name)
    raise ValueError(f"{staged} is not a staging path")


def clean_abandoned(folder: str | Path) -> list[Path]:
    """Remove the staging paths that killed writers left in ``folder``; one stderr line each.

    A previous output moved aside by a killed ``--overwrite`` is put back when nothing replaced it.
    """
    found = abandoned(folder)
    for path in found:
        target = target_of(path)
        if owner(path) and ".old-" in path.name and not target.exists():
            os.replace(path, target)
            print(f"twin: restored {target} from {path.name}, left by a write that was killed", file=sys.stderr)
        else:
            remove(path)
            print(f"twin: removed {path}, left by a write that was killed", file=sys.stderr)
    return found


def is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def written_by_twin(path: Path) -> bool:
    return (path / MARKER).is_file() or (path / "zarr.json").is_file()


def check_output(
    path: str | Path, overwrite: bool = False, kind: str = "folder", flag: str = "--out", inputs=()
) -> Path:
    """Refuse an output target that cannot or must not be written; returns it as a Path.

    kind: "store", "folder" or "file" (see the module docstring). flag: how the user named the
    path, for the messages. inputs: paths the command reads; the output may not be one of them
    or a folder holding one, since replacing it would destroy the input.
    """
    path = Path(path)
    if path.name in ("", ".", "..") or path.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise OutputError(f"{path}: is the current folder or holds it; name a new {flag} instead")
    if len(os.fsencode(path.name)) > MAX_NAME:
        raise OutputError(f"{path}: the name is too long; use at most {MAX_NAME} bytes for {flag}")
    for source in inputs:
        source = Path(source).resolve()
        if path.resolve() == source or path.resolve() in source.parents:
            raise OutputError(
                f"{path}: holds the input {source}, which writing there would destroy; choose another {flag}"
            )
    parent = path.parent
    folder = kind != "file"
    what = "folder" if folder else "file"
    if not parent.is_dir():
        raise OutputError(
            f"{path}: the parent folder {parent} does not exist; create it first (mkdir -p {parent})"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: the folder {parent} is not writable; choose another {flag}")
    if not path.exists() and not path.is_symlink():
        return path
    if path.is_dir() != folder or path.is_symlink():
        kind = "a link" if path.is_symlink() else ("a folder" if path.is_dir() else "a file")
        raise OutputError(
            f"{path}: is {kind} but a {what} goes here; choose another {flag} (nothing was changed)"
        )
    if folder and is_empty_folder(path):
        return path
    if not overwrite:
        raise OutputError(
            f"{path}: already exists; pass --overwrite to replace it, or choose another {flag}"
        )
    if folder and not written_by_twin(path):
        raise OutputError(
            f"{path}: was not written by twin, so --overwrite does not replace it; remove it"
            f" yourself or choose another {flag}"
        )
    return path


def make_folder(path: Path, kind: str = "folder") -> None:
    """mkdir with the user's umask; a "folder" also gets the marker that lets ``--overwrite``
    replace it later (a zarr store is recognized by its zarr.json)."""
    path.mkdir(exist_ok=True)
    if kind == "folder":
        (path / MARKER).write_text("written by twin; --overwrite may replace this folder\n")


def commit(staged: Path, target: Path) -> None:
    """Move the finished ``staged`` path onto ``target``, replacing a previous output."""
    if target.exists() and not is_empty_folder(target):
        old = staging_path(target, "old")
        os.replace(target, old)
        os.replace(staged, target)
        remove(old)
    else:
        if target.is_dir():
            target.rmdir()
        os.replace(staged, target)


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
        commit(staged, target)
    except OSError as error:
        remove(staged)
        raise write_failed(target, error) from None
    except BaseException:
        remove(staged)
        raise


def write_failed(target: Path, error: OSError) -> OSError | OutputError:
    """An OSError while writing ``target`` as one line about ``target`` (the staging path it
    names means nothing to the user); other OSErrors unchanged."""
    if isinstance(error, BrokenPipeError) or error.strerror is None:
        return error
    return OutputError(
        f"{target}: {error.strerror} while writing it; check the path, its permissions and the free"
        " space (nothing was written)"
    )


@contextlib.contextmanager
def output_in_place(path: str | Path, overwrite: bool = False, flag: str = "--out", keep=None, inputs=()):
    """Yield the folder ``path`` itself to write into, for long jobs that record their own path
    or can be resumed (fit, loop).

    With ``overwrite`` the previous output is first moved aside (``.NAME.old-HOST-PID``) and
    removed only when the job succeeds; on an error the new folder is removed and the old one put
    back, unless ``keep(folder)`` says the new folder holds work worth resuming (a checkpoint).
    """
    target = check_output(path, overwrite, "folder", flag, inputs)
    clean_abandoned(target.parent)
    old = None
    was_empty_folder = is_empty_folder(target)
    if target.exists() and not was_empty_folder:
        old = staging_path(target, "old")
        os.replace(target, old)
    try:
        make_folder(target)
        yield target
    except BaseException as error:
        if keep is None or not keep(target):
            remove(target)
            if old is not None:
                os.replace(old, target)
            elif was_empty_folder:
                target.mkdir()
        if isinstance(error, OSError):
            raise write_failed(target, error) from None
        raise
    if old is not None:
        remove(old)
