"""Bad inputs for every `twin` command, grouped by class, and what must hold for each.

A case builds its inputs in a fresh folder (``setup``), runs ``twin ARGV`` there and passes when:
the exit status is one of ``expect`` (2 for every refused input; 0 where the right behaviour is to
succeed, said in ``note``); stderr holds no traceback; a refusal is one error line
(``twin CMD: error: ...``; argparse's usage lines may precede it) naming every string in
``mentions`` (the file, the flag or the variable); no path that existed before changed or
vanished unless it matches ``allow_changed``; and no new path is left unless it matches
``allow_new`` (hidden ``.*partial*`` / ``.*tmp*`` paths never are).

Modes: ``inprocess`` (twin.cli.main in this process), ``subprocess`` (a fresh interpreter, with an
address-space limit for cases that would allocate too much), ``pipe`` (stdout's reader closed
before the command writes) and ``kill9`` (SIGKILL mid-write, then ``then`` must clean up).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shlex
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from fixtures import TINY_FIT, TINY_LOOP, TINY_MEI, TINY_VIDEO_FIT, TINY_VIDEO_MEI, Fixtures, cli, recording, toml_text

Setup = Callable[[Path, Fixtures], None]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    cls: str
    argv: tuple[str, ...]
    setup: Setup
    expect: tuple[int, ...] = (2,)
    mentions: tuple[str, ...] = ()
    allow_new: tuple[str, ...] = ()
    allow_changed: tuple[str, ...] = ()
    check: Callable[[Path], str | None] | None = None
    mode: str = "inprocess"
    fast: bool = False
    note: str = ""
    # kill9: the path whose appearance triggers SIGKILL, then the command that must clean up.
    kill_when: str = ""
    then: tuple[str, ...] = ()
    killed_leaves: tuple[str, ...] = ()  # kill9: paths the killed command may leave (besides hidden partials)
    memory_limit: int = 0  # bytes of address space in subprocess mode; 0: none
    # On success: None (stderr not judged), or the strings the stderr's warning lines must hold
    # (every stderr line then a `twin CMD: warning:` line; () for none at all).
    warns: tuple[str, ...] | None = None
    timeout: float = 120.0


CASES: list[Case] = []


def case(name: str, cls: str, argv, *steps: Setup, expect=2, **options) -> None:
    """Register a case; ``argv`` is a list or a shell-quoted string, ``steps`` run in order."""
    argv = tuple(shlex.split(argv) if isinstance(argv, str) else argv)
    expect = (expect,) if isinstance(expect, int) else tuple(expect)
    if any(c.name == name for c in CASES):
        raise ValueError(f"duplicate case name {name}")

    def setup(d: Path, fx: Fixtures) -> None:
        for step in steps:
            step(d, fx)

    options["then"] = tuple(shlex.split(options["then"])) if isinstance(options.get("then"), str) else options.get("then", ())
    if options.get("warns") is not None:
        options["warns"] = tuple(options["warns"])
    for key in ("mentions", "allow_new", "allow_changed", "killed_leaves"):
        options[key] = tuple(options.get(key, ()))
    CASES.append(Case(name, cls, argv, setup, expect, **options))


# ---------------------------------------------------------------------------- set-up steps


def copy(*names: str) -> Setup:
    return lambda d, fx: [fx.copy(n, d) for n in names]


def copy_as(name: str, as_name: str) -> Setup:
    return lambda d, fx: fx.copy(name, d, as_name)


def own_run(d: Path, fx: Fixtures) -> None:
    fx.own_run(d)


def write(name: str, content: str | bytes = "") -> Setup:
    def step(d: Path, fx: Fixtures) -> None:
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return step


def mkdir(name: str) -> Setup:
    return lambda d, fx: (d / name).mkdir(parents=True, exist_ok=True)


def remove(name: str) -> Setup:
    def step(d: Path, fx: Fixtures) -> None:
        path = d / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return step


def truncate(name: str, keep: float = 0.5) -> Setup:
    def step(d: Path, fx: Fixtures) -> None:
        path = first_file(d / name)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return step


def flip_bytes(name: str) -> Setup:
    """Invert 64 bytes in the middle of the file (or the first file under the folder) ``name``."""

    def step(d: Path, fx: Fixtures) -> None:
        path = first_file(d / name)
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
        path.write_bytes(bytes(data))

    return step


def first_file(path: Path) -> Path:
    """``path`` itself, or the first chunk file below it (zarr: VAR/c/0/0)."""
    if path.is_file():
        return path
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name != "zarr.json")[0]


def edit_json(name: str, change: Callable) -> Setup:
    """Edit the JSON document in ``name`` in place with ``change(document)`` (its result, e.g.
    what ``pop`` returns, is ignored)."""

    def step(d: Path, fx: Fixtures) -> None:
        path = d / name
        document = json.loads(path.read_text())
        change(document)
        path.write_text(json.dumps(document))

    return step


def npz(name: str = "data.npz", base: Callable[[], dict] = recording, pickle: bool = False, **changes) -> Setup:
    """An .npz of ``base()`` arrays with ``changes``: a value, a function of the old value, or
    None to drop the key."""

    def step(d: Path, fx: Fixtures) -> None:
        arrays = base()
        for key, value in changes.items():
            if value is None:
                arrays.pop(key, None)
            elif callable(value):
                arrays[key] = value(arrays.get(key))
            else:
                arrays[key] = value
        with open(d / name, "wb") as file:
            np.savez(file, **arrays) if not pickle else np.savez(file, allow_pickle=True, **arrays)

    return step


def edit_npz(name: str, **changes) -> Setup:
    """Change the arrays of the copied .npz ``name`` (see ``npz``)."""

    def step(d: Path, fx: Fixtures) -> None:
        with np.load(d / name) as file:
            arrays = {k: file[k] for k in file.files}
        npz(name, lambda: arrays, **changes)(d, fx)

    return step


def merged(base: dict, section: str, key: str, value) -> dict:
    values = {name: dict(table) for name, table in base.items()}
    values.setdefault(section, {})[key] = value
    return values


def toml(name: str, values: dict | str) -> Setup:
    return write(name, values if isinstance(values, str) else toml_text(values))


def save_npy(name: str, array, allow_pickle: bool = False) -> Setup:
    def step(d: Path, fx: Fixtures) -> None:
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:
            np.save(file, array, allow_pickle=allow_pickle)

    return step


def rewrite_store(name: str, change: Callable) -> Setup:
    """Rewrite the session store ``name`` through twin's own writer with ``change(ds)``."""

    def step(d: Path, fx: Fixtures) -> None:
        from twin.data.store import open_session, write_session

        ds = open_session(d / name).load()
        write_session(change(ds), d / (name + ".new"))
        shutil.rmtree(d / name)
        (d / (name + ".new")).rename(d / name)

    return step


def zarr_edit(store: str, variable: str, change: Callable) -> Setup:
    """Overwrite one array of a zarr store in place (valid encoding, different values)."""

    def step(d: Path, fx: Fixtures) -> None:
        import zarr

        array = zarr.open_array(str(d / store / variable), mode="r+")
        array[...] = change(array[...])

    return step


def readonly_parent() -> str:
    """An existing folder nobody may write in: sysfs as root (chmod does not stop root)."""
    return "/sys" if os.geteuid() == 0 else "locked"


def lock(name: str) -> Setup:
    def step(d: Path, fx: Fixtures) -> None:
        if os.geteuid() != 0:
            (d / name).mkdir(exist_ok=True)
            (d / name).chmod(0o555)

    return step


def torch_save(name: str, make: Callable) -> Setup:
    """A .pth file of ``make(torch)``; garbage bytes when torch is not installed."""

    def step(d: Path, fx: Fixtures) -> None:
        try:
            import torch
        except ImportError:
            (d / name).write_bytes(b"not a checkpoint")
            return
        torch.save(make(torch), d / name)

    return step


# ---------------------------------------------------------------------------- checks after success


def store_check(name: str, predicate: Callable, what: str) -> Callable[[Path], str | None]:
    def check(d: Path) -> str | None:
        from twin.data.store import open_session

        try:
            ds = open_session(d / name)
            return None if predicate(ds) else what
        except Exception as error:  # noqa: BLE001 - reported as the case's failure
            return f"{name}: check failed ({error})"

    return check


def repeats_are_test(ds) -> bool:
    from twin.data.schema import strings

    ids, tier = ds["image_id"].values, strings(ds["tier"].values)
    _, index, counts = np.unique(ids, return_inverse=True, return_counts=True)
    repeated = counts[index] > 1
    return bool(np.all(tier[repeated] == "test") and np.all(tier[~repeated] != "test"))


def no_injection(d: Path) -> str | None:
    page = d / "rep" / "index.html"
    if page.exists() and "<img src=x" in page.read_text():
        return "rep/index.html holds the manifest's raw HTML"
    return None


# ============================================================================ the cases

MISSING, KIND, ARRAYS, SENSORIUM, TOML, CLI = "missing-file", "wrong-kind", "npz-arrays", "sensorium", "toml", "cli-value"
EXISTING, DAMAGED, RUN, STIMULI, PIPE, CRASH, PATHS = "existing-output", "damaged-store", "run-dir", "stimuli", "pipe", "crash", "odd-path"

MEI = "mei run --neurons 0:2 --config mei.toml --out m.zarr"
CLOSELOOP = "closeloop run stimuli responses.npz --out rep"
RESPOND = "respond stimuli --animal sim.zarr --out r.npz"

# ---------------------------------------------------------------------------- missing files
case("info-missing-store", MISSING, "info nope.zarr", mentions=["nope.zarr"])
case("import-arrays-missing", MISSING, "import arrays nope.npz out.zarr", mentions=["nope.npz"])
case("import-sensorium-missing", MISSING, "import sensorium nope out.zarr", mentions=["nope"])
case("fit-missing-store", MISSING, "fit nope.zarr --out run --config fit.toml", copy("fit.toml"), mentions=["nope.zarr"])
case("fit-missing-second-store", MISSING, "fit sim.zarr nope.zarr --out run --config fit.toml", copy("sim.zarr", "fit.toml"), mentions=["nope.zarr"])
case("fit-missing-config", MISSING, "fit sim.zarr --out run --config nope.toml", copy("sim.zarr"), mentions=["nope.toml"])
case("evaluate-missing-run", MISSING, "evaluate nope", mentions=["nope"])
case("evaluate-missing-store", MISSING, "evaluate run --store nope.zarr", own_run, mentions=["nope.zarr"])
case("mei-missing-run", MISSING, "mei nope --out m.zarr", mentions=["nope"])
case("mei-missing-config", MISSING, "mei run --out m.zarr --config nope.toml", copy("run"), mentions=["nope.toml"])
case("mei-missing-validator", MISSING, MEI + " --validator nope", copy("run", "mei.toml"), mentions=["nope"])
case("select-missing-run", MISSING, "select nope", mentions=["nope"])
case("export-missing-meis", MISSING, "export nope.zarr --out stim", mentions=["nope.zarr"])
case("export-missing-monitor", MISSING, "export meis.zarr --out stim --monitor nope.toml", copy("meis.zarr"), mentions=["nope.toml"])
case("respond-missing-stimuli", MISSING, "respond nope --animal sim.zarr --out r.npz", copy("sim.zarr"), mentions=["nope"])
case("respond-missing-animal", MISSING, "respond stimuli --animal nope.zarr --out r.npz", copy("stimuli"), mentions=["nope.zarr"])
case("closeloop-missing-run", MISSING, "closeloop nope stimuli responses.npz --out rep", copy("stimuli", "responses.npz"), mentions=["nope"])
case("closeloop-missing-stimuli", MISSING, "closeloop run nope responses.npz --out rep", copy("run", "responses.npz"), mentions=["nope"])
case("closeloop-missing-responses", MISSING, "closeloop run stimuli nope.npz --out rep", copy("run", "stimuli"), mentions=["nope.npz"])
case("loop-missing-config", MISSING, "loop out --config nope.toml", mentions=["nope.toml"])
case("loop-missing-session", MISSING, "loop out --session nope.zarr --config loop.toml", copy("loop.toml"), mentions=["nope.zarr"])
case("convert-missing-checkpoint", MISSING, "convert neuralpredictors nope.pth --out r --store sim.zarr", copy("sim.zarr"), mentions=["nope.pth"])

# ---------------------------------------------------------------------------- wrong file kinds
case("info-empty-folder", KIND, "info empty.zarr", mkdir("empty.zarr"), mentions=["empty.zarr"])
case("info-plain-file", KIND, "info sim.zarr", write("sim.zarr", "hello"), mentions=["sim.zarr"])
case("info-empty-file", KIND, "info e.zarr", write("e.zarr"), mentions=["e.zarr"])
case("info-npz-file", KIND, "info data.npz", copy("data.npz"), mentions=["data.npz"])
case("info-folder-of-notes", KIND, "info notes", write("notes/a.txt", "x"), mentions=["notes"])
case("info-mei-store", KIND, "info meis.zarr", copy("meis.zarr"), mentions=["meis.zarr"])
case("info-run-dir", KIND, "info run", copy("run"), mentions=["run"])
case("import-arrays-folder", KIND, "import arrays data.npz out.zarr", mkdir("data.npz"), mentions=["data.npz"])
case("import-arrays-empty-file", KIND, "import arrays data.npz out.zarr", write("data.npz"), mentions=["data.npz"])
case("import-arrays-text-file", KIND, "import arrays data.npz out.zarr", write("data.npz", "images,responses\n1,2\n"), mentions=["data.npz"])
case("import-arrays-npy", KIND, "import arrays data.npy out.zarr", save_npy("data.npy", np.zeros((4, 8, 8))), mentions=["data.npy"])
case("import-arrays-zip-of-text", KIND, "import arrays data.npz out.zarr",
     lambda d, fx: zipfile.ZipFile(d / "data.npz", "w").writestr("readme.txt", "hi"), mentions=["data.npz"])
case("import-arrays-truncated", KIND, "import arrays data.npz out.zarr", copy("data.npz"), truncate("data.npz"), mentions=["data.npz"])
case("import-sensorium-plain-file", KIND, "import sensorium tree.txt out.zarr", write("tree.txt", "x"), mentions=["tree.txt"])
case("import-sensorium-empty-folder", KIND, "import sensorium tree out.zarr", mkdir("tree"), mentions=["tree"])
case("import-sensorium-npz", KIND, "import sensorium data.npz out.zarr", copy("data.npz"), mentions=["data.npz"])
case("fit-mei-store-as-session", KIND, "fit meis.zarr --out r2 --config fit.toml", copy("meis.zarr", "fit.toml"), mentions=["meis.zarr"])
case("fit-run-as-session", KIND, "fit run --out r2 --config fit.toml", copy("run", "fit.toml"), mentions=["run"])
case("fit-config-is-folder", KIND, "fit sim.zarr --out run --config cfg.toml", copy("sim.zarr"), mkdir("cfg.toml"), mentions=["cfg.toml"])
case("fit-config-binary", KIND, "fit sim.zarr --out run --config cfg.toml", copy("sim.zarr"), write("cfg.toml", b"\xff\xfe\x00\x81garbage"), mentions=["cfg.toml"])
case("evaluate-store-as-run", KIND, "evaluate sim.zarr", copy("sim.zarr"), mentions=["sim.zarr"])
case("evaluate-file-as-run", KIND, "evaluate run", write("run", "x"), mentions=["run"])
case("mei-store-as-run", KIND, "mei sim.zarr --out m.zarr", copy("sim.zarr"), mentions=["sim.zarr"])
case("mei-validator-is-store", KIND, MEI + " --validator sim.zarr", copy("run", "mei.toml", "sim.zarr"), mentions=["sim.zarr"])
case("select-file-as-run", KIND, "select run", write("run", "x"), mentions=["run"])
case("export-session-store", KIND, "export sim.zarr --out stim", copy("sim.zarr"), mentions=["sim.zarr"])
case("export-run-dir", KIND, "export run --out stim", copy("run"), mentions=["run"])
case("export-monitor-is-folder", KIND, "export meis.zarr --out stim --monitor mon.toml", copy("meis.zarr"), mkdir("mon.toml"), mentions=["mon.toml"])
case("respond-stimuli-is-file", KIND, "respond stim --animal sim.zarr --out r.npz", copy("sim.zarr"), write("stim", "x"), mentions=["stim"])
case("respond-animal-is-mei-store", KIND, "respond stimuli --animal meis.zarr --out r.npz", copy("stimuli", "meis.zarr"), mentions=["meis.zarr"])
case("respond-animal-recorded", KIND, "respond stimuli --animal rec.zarr --out r.npz", copy("stimuli", "data.npz"),
     lambda d, fx: cli(["import", "arrays", "data.npz", "rec.zarr"], d), mentions=["rec.zarr"])
case("closeloop-responses-folder", KIND, CLOSELOOP, copy("run", "stimuli"), mkdir("responses.npz"), mentions=["responses.npz"])
case("closeloop-responses-empty", KIND, CLOSELOOP, copy("run", "stimuli"), write("responses.npz"), mentions=["responses.npz"])
case("closeloop-responses-text", KIND, CLOSELOOP, copy("run", "stimuli"), write("responses.npz", "1,2,3\n"), mentions=["responses.npz"])
case("closeloop-responses-npy", KIND, CLOSELOOP, copy("run", "stimuli"), save_npy("responses.npz", np.zeros((3, 3))), mentions=["responses.npz"])
case("closeloop-stimuli-is-mei-store", KIND, "closeloop run meis.zarr responses.npz --out rep", copy("run", "meis.zarr", "responses.npz"), mentions=["meis.zarr"])
case("convert-checkpoint-folder", KIND, "convert neuralpredictors m.pth --out r --store sim.zarr", copy("sim.zarr"), mkdir("m.pth"), mentions=["m.pth"])
case("convert-checkpoint-empty", KIND, "convert neuralpredictors m.pth --out r --store sim.zarr", copy("sim.zarr"), write("m.pth"), mentions=["m.pth"])
case("convert-not-neuralpredictors", KIND, "convert neuralpredictors m.pth --out r --store sim.zarr", copy("sim.zarr"),
     torch_save("m.pth", lambda torch: {"a.weight": torch.zeros(2)}), mentions=["m.pth"])
def lying_npz(d: Path, fx: Fixtures) -> None:
    """data.npz whose images.npy header claims (10**9, 36, 64) uint8 but holds 16 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 36, 64)})
    responses = io.BytesIO()
    np.save(responses, np.ones((4, 2), np.float32))
    with zipfile.ZipFile(d / "data.npz", "w") as archive:
        archive.writestr("images.npy", header.getvalue() + bytes(16))
        archive.writestr("responses.npy", responses.getvalue())


case("info-symlink-loop", KIND, "info loop.zarr", lambda d, fx: os.symlink("loop.zarr", d / "loop.zarr"), mentions=["loop.zarr"])
case("fit-config-fifo", KIND, "fit sim.zarr --out run --config cfg.toml", copy("sim.zarr"), lambda d, fx: os.mkfifo(d / "cfg.toml"),
     mentions=["cfg.toml"], mode="subprocess", timeout=30, note="a named pipe nobody writes to must not hang the command")
case("fit-config-dev-zero", KIND, "fit sim.zarr --out run --config /dev/zero", copy("sim.zarr"), mentions=["/dev/zero"],
     mode="subprocess", memory_limit=3 << 30, timeout=120, note="an endless file is refused, not read into memory (3 GiB limit)")
case("import-npz-lying-header", KIND, "import arrays data.npz out.zarr", lying_npz, mentions=["data.npz", "images"], mode="subprocess", memory_limit=3 << 30,
     timeout=120, note="the header claims 2.3 TB of images")


def lying_responses(d: Path, fx: Fixtures) -> None:
    """responses.npz whose responses.npy header claims (10**9, 3000) float32 but holds 16 bytes."""
    with np.load(d / "responses.npz") as file:
        arrays = dict(file)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 3000)})
    with zipfile.ZipFile(d / "responses.npz", "w") as archive:
        archive.writestr("responses.npy", header.getvalue() + bytes(16))
        for key in ("stimulus_id", "unit_id"):
            member = io.BytesIO()
            np.save(member, arrays[key])
            archive.writestr(f"{key}.npy", member.getvalue())


case("closeloop-responses-lying-header", KIND, CLOSELOOP, copy("run", "stimuli", "responses.npz"), lying_responses,
     mentions=["responses.npz", "responses"], mode="subprocess", memory_limit=3 << 30, timeout=120,
     note="the header claims 12 TB of responses")

case("loop-session-is-mei-store", KIND, "loop out --session meis.zarr --config loop.toml", copy("meis.zarr", "loop.toml"), mentions=["meis.zarr"])
case("loop-config-is-folder", KIND, "loop out --config c.toml", mkdir("c.toml"), mentions=["c.toml"])

# ---------------------------------------------------------------------------- import arrays: bad arrays
IMPORT = "import arrays data.npz out.zarr"


def bad_array(name: str, variable: str, note: str = "", expect=2, extra: str = "", allow_new=(), check=None, **changes) -> None:
    case(f"import-{name}", ARRAYS, IMPORT + extra, npz(**changes), expect=expect, note=note, allow_new=allow_new, check=check,
         mentions=["data.npz", variable] if expect == 2 else [])


n = len(recording()["images"])
bad_array("images-1d", "images", images=lambda a: a.reshape(-1))
bad_array("images-2d", "images", images=lambda a: a.reshape(len(a), -1))
bad_array("images-5d", "images", images=lambda a: a[:, None, None])
bad_array("images-bool", "images", images=lambda a: a > 128, note="0/1 images are not pixel units")
bad_array("images-complex", "images", images=lambda a: a.astype(np.complex64))
bad_array("images-strings", "images", images=lambda a: a.astype(str))
bad_array("images-nan", "images", images=lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.nan, a).astype(np.float32))
bad_array("images-inf", "images", images=lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.inf, a).astype(np.float32))
bad_array("images-minus1to1", "images", images=lambda a: (a / 127.5 - 1).astype(np.float32))
bad_array("images-huge", "images", images=lambda a: a.astype(np.float64) * 1e300)
bad_array("images-16bit", "images", images=lambda a: a.astype(np.uint16) * 250)
bad_array("images-channel-last", "images", images=lambda a: np.repeat(a[..., None], 3, axis=-1), note="(trial, y, x, 3) RGB read as 36 channels of 64x3")
bad_array("images-1x1", "images", images=lambda a: a[:, :1, :1])
bad_array("responses-1d", "responses", responses=lambda a: a[:, 0])
bad_array("responses-3d", "responses", responses=lambda a: a[:, :, None])
bad_array("responses-complex", "responses", responses=lambda a: a.astype(np.complex64))
bad_array("responses-strings", "responses", responses=lambda a: a.astype(str))
case("import-responses-nan", ARRAYS, IMPORT, npz(responses=lambda a: np.where(a > 2.5, np.nan, a)), expect=0, allow_new=["out.zarr"],
     check=store_check("out.zarr", lambda ds: bool(np.isnan(ds["responses"].values).any()), "missing responses (NaN) were not kept"),
     note="success: NaN marks a missing response; fitting and scoring skip it")
bad_array("responses-nan-neuron", "responses", responses=lambda a: np.where(np.arange(a.shape[1]) == 1, np.nan, a),
          note="a neuron without any finite train response has nothing to fit")
bad_array("responses-inf", "responses", responses=lambda a: np.where(a > 2.5, np.inf, a))
bad_array("responses-huge", "responses", responses=lambda a: a.astype(np.float64) * 1e300)
bad_array("lengths-mismatch", "responses", responses=lambda a: np.concatenate([a, a[:3]]))
bad_array("tiers-length", "tier", tiers=lambda a: a[:-2])
bad_array("image-ids-length", "image_id", image_ids=lambda a: a[:-2])
bad_array("tiers-unknown", "tier", tiers=lambda a: np.where(a == "train", "training", a))
bad_array("tiers-numbers", "tier", tiers=lambda a: np.arange(len(a)))
bad_array("tiers-no-test", "tier", tiers=lambda a: np.where(a == "test", "train", a))
bad_array("tiers-no-train", "tier", tiers=lambda a: np.where(a == "train", "validation", a))
bad_array("empty", "responses", images=lambda a: a[:0], responses=lambda a: a[:0], tiers=lambda a: a[:0], image_ids=lambda a: a[:0])
bad_array("zero-neurons", "responses", responses=lambda a: a[:, :0])
bad_array("neuron-ids-duplicate", "neuron_ids", neuron_ids=np.array([1, 1, 2, 3, 4, 5]))
bad_array("neuron-ids-length", "neuron_ids", neuron_ids=np.arange(4))
STRING_IDS = ["neu75", "<script>", "a$b", "é/🙂", "x y", "neu3"]
case("import-neuron-ids-strings", ARRAYS, IMPORT, npz(neuron_ids=np.array(STRING_IDS)), expect=0, allow_new=["out.zarr"],
     check=store_check("out.zarr", lambda ds: ds["unit_id"].values.tolist() == STRING_IDS, "string unit ids were not kept as given"),
     note="success: unit ids may be strings (markup, $, non-ASCII, a slash), kept as labels")
bad_array("neuron-ids-strings-duplicate", "neuron_ids", neuron_ids=np.array(["a", "b", "c", "a", "d", "e"]))
bad_array("neuron-ids-empty-string", "neuron_ids", neuron_ids=np.array(["a", "b", "", "c", "d", "e"]))
bad_array("neuron-ids-comma", "neuron_ids", neuron_ids=np.array(["a", "b", "c,d", "e", "f", "g"]),
          note="--neurons lists are comma-separated, so an id with a comma could never be named")
bad_array("unit-ids-and-neuron-ids", "unit_ids", unit_ids=np.arange(6), neuron_ids=np.arange(6))
bad_array("image-ids-float", "image_id", image_ids=lambda a: a + 0.5)
bad_array("cell-xyz-shape", "cell_xyz", cell_xyz=np.zeros((6, 2)))
bad_array("behavior-length", "behavior", behavior=np.zeros((n - 1, 3), np.float32))
bad_array("behavior-names-count", "behavior_names", behavior=np.zeros((n, 3), np.float32), behavior_names=np.array(["pupil", "running"]))
bad_array("behavior-3d", "behavior", behavior=np.zeros((n, 3, 2), np.float32))
bad_array("pupil-center-3-columns", "pupil_center", pupil_center=np.zeros((n, 3), np.float32))
bad_array("unknown-key", "spikes", spikes=np.zeros(3))
bad_array("missing-responses", "responses", responses=None)
bad_array("missing-images", "images", images=None)
bad_array("same-id-different-pixels", "image_id", image_ids=lambda a: a // 2, note="one id for two different images corrupts repeats and the oracle")
bad_array("repeat-across-tiers", "tier", images=lambda a: np.concatenate([a, a[:1]]), responses=lambda a: np.concatenate([a, a[:1]]),
          tiers=lambda a: np.concatenate([a, ["test"]]), image_ids=lambda a: np.concatenate([a, a[:1]]),
          note="image 0 in train and test leaks the test set")
case("import-object-array", ARRAYS, IMPORT, npz(pickle=True, images=lambda a: np.array([None] * len(a), dtype=object)), mentions=["data.npz", "images"])
case("import-repeats-form-test", ARRAYS, IMPORT, npz(base=lambda: recording(n_images=30, repeated=5), tiers=None, image_ids=None),
     expect=0, allow_new=["out.zarr"], check=store_check("out.zarr", repeats_are_test, "repeated images are not exactly the test tier"),
     note="success: without tiers the repeated images form the test tier")
case("import-shift-responses", ARRAYS, IMPORT + " --shift-responses neuron", npz(responses=lambda a: a - 1), expect=0, allow_new=["out.zarr"],
     check=store_check("out.zarr", lambda ds: float(ds["responses"].min()) >= 0, "responses still negative"),
     note="success: --shift-responses makes negative responses >= 0")
case("import-images-0to1", ARRAYS, IMPORT, npz(images=lambda a: (a / 255).astype(np.float32)), expect=0, allow_new=["out.zarr"],
     check=store_check("out.zarr", lambda ds: list(ds.attrs.get("pixel_range", [])) == [0, 1], "pixel_range is not recorded as 0..1"),
     note="success: 0..1 floats are recognised and recorded as the pixel range")
case("import-pixel-range", ARRAYS, IMPORT + " --pixel-range=-1,1", npz(images=lambda a: (a / 127.5 - 1).astype(np.float32)), expect=0,
     allow_new=["out.zarr"], check=store_check("out.zarr", lambda ds: list(ds.attrs.get("pixel_range", [])) == [-1, 1], "pixel_range not recorded"),
     note="success: --pixel-range states the range of -1..1 images")
case("import-responses-negative", ARRAYS, IMPORT, npz(responses=lambda a: a - 1), expect=0, allow_new=["out.zarr"],
     note="success: signed responses (dF/F) are stored; twin fit refuses them (fit-negative-responses)")
case("import-pixel-range-bad", ARRAYS, IMPORT + " --pixel-range 1,0", copy("data.npz"), mentions=["--pixel-range"])
case("import-pixel-range-text", ARRAYS, IMPORT + " --pixel-range black,white", copy("data.npz"), mentions=["--pixel-range"])
case("import-shift-responses-unknown", ARRAYS, IMPORT + " --shift-responses median", npz(responses=lambda a: a - 1), mentions=["--shift-responses"])
case("import-images-outside-stated-range", ARRAYS, IMPORT + " --pixel-range 0,1", copy("data.npz"), mentions=["images", "--pixel-range"],
     note="uint8 images up to 255 do not lie in the stated 0..1")

# ---------------------------------------------------------------------------- Sensorium trees and zips
SENS = "import sensorium sensorium out.zarr"


def bad_tree(name: str, mentions: list[str], *steps: Setup) -> None:
    case(f"sensorium-{name}", SENSORIUM, SENS, copy("sensorium"), *steps, mentions=mentions)


bad_tree("no-tiers", ["tiers"], remove("sensorium/meta/trials/tiers.npy"))
bad_tree("missing-response-file", ["responses/3.npy"], remove("sensorium/data/responses/3.npy"))
bad_tree("missing-image-file", ["images/7.npy"], remove("sensorium/data/images/7.npy"))
bad_tree("pickled-image", ["images/2.npy"], save_npy("sensorium/data/images/2.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True))
bad_tree("image-shape-mismatch", ["images/5.npy"], save_npy("sensorium/data/images/5.npy", np.zeros((1, 18, 32), np.float32)))
bad_tree("tiers-numbers", ["tier"], save_npy("sensorium/meta/trials/tiers.npy", np.arange(20)))
bad_tree("tiers-empty", ["tier"], save_npy("sensorium/meta/trials/tiers.npy", np.array([], dtype="<U5")))
bad_tree("tiers-unknown", ["tier"], save_npy("sensorium/meta/trials/tiers.npy", np.array(["training"] * 14 + ["validation"] * 3 + ["test"] * 3)))
bad_tree("tiers-2d", ["tier"], save_npy("sensorium/meta/trials/tiers.npy", np.array([["train"]] * 14 + [["validation"]] * 3 + [["test"]] * 3)))
bad_tree("responses-neuron-mismatch", ["responses/4.npy"], save_npy("sensorium/data/responses/4.npy", np.ones(7, np.float32)))
bad_tree("unit-ids-length", ["unit_ids"], save_npy("sensorium/meta/neurons/unit_ids.npy", np.arange(5)))
bad_tree("corrupt-npy", ["images/1.npy"], write("sensorium/data/images/1.npy", b"\x93NUMPY garbage" * 20))
bad_tree("images-nan", ["images"], save_npy("sensorium/data/images/0.npy", np.full((1, 36, 64), np.nan, np.float32)))
bad_tree("coordinates-shape", ["cell_motor_coordinates"], save_npy("sensorium/meta/neurons/cell_motor_coordinates.npy", np.zeros((6, 2))))
bad_tree("frame-image-id-length", ["frame_image_id"], save_npy("sensorium/meta/trials/frame_image_id.npy", np.arange(3)))
bad_tree("tiers-short", ["tiers.npy"], remove("sensorium/meta/trials/frame_image_id.npy"),
         save_npy("sensorium/meta/trials/tiers.npy", np.array(["train"] * 14 + ["validation"] * 3 + ["test"] * 2)))
bad_tree("behavior-shape-mismatch", ["behavior/3.npy"], save_npy("sensorium/data/behavior/3.npy", np.zeros(4, np.float32)))
case("sensorium-zip-truncated", SENSORIUM, "import sensorium sensorium.zip out.zarr", copy("sensorium.zip"), truncate("sensorium.zip", 0.6),
     mentions=["sensorium.zip"])
case("sensorium-zip-no-marker", SENSORIUM, "import sensorium s.zip out.zarr",
     lambda d, fx: zipfile.ZipFile(d / "s.zip", "w").writestr("data/images/0.npy", b""), mentions=["s.zip"])

# Sensorium 2023 video trees: data/videos/<i>.npy (y, x, frames), the other trial files (rows, frames).
SENS_VIDEO = "import sensorium sensorium_video out.zarr"
SENS_VIDEO_ZIP = "import sensorium sensorium_video.zip out.zarr"
VIDEO_FILE = "sensorium_video/data/{}/{}.npy"


def bad_video_tree(name: str, mentions: list[str], *steps: Setup, argv: str = SENS_VIDEO, **options) -> None:
    case(f"sensorium-video-{name}", SENSORIUM, argv, copy("sensorium_video"), *steps, mentions=mentions, **options)


def video_file(folder: str, trial: int, change: Callable) -> Setup:
    """Replace data/<folder>/<trial>.npy of the copied video tree by ``change(its array)``."""

    def step(d: Path, fx: Fixtures) -> None:
        path = d / VIDEO_FILE.format(folder, trial)
        np.save(path, change(np.load(path)))

    return step


def frames_first(d: Path, fx: Fixtures) -> None:
    """Every video saved (frames, y, x), the layout of twin's own stores, not the tree's."""
    for path in (d / "sensorium_video/data/videos").glob("*.npy"):
        np.save(path, np.moveaxis(np.load(path), -1, 0))


def zipped(name: str) -> Setup:
    """Replace the folder ``name`` of the case by ``name``.zip holding it."""

    def step(d: Path, fx: Fixtures) -> None:
        shutil.make_archive(str(d / name), "zip", d, name)
        shutil.rmtree(d / name)

    return step


def lying_video(d: Path, fx: Fixtures) -> None:
    """videos/3.npy whose header claims (18, 32, 10**9) float32 but holds 16 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (18, 32, 10**9)})
    (d / VIDEO_FILE.format("videos", 3)).write_bytes(header.getvalue() + bytes(16))


case("sensorium-video-valid", SENSORIUM, SENS_VIDEO, copy("sensorium_video"), expect=0, allow_new=["out.zarr"],
     check=store_check("out.zarr", lambda ds: ds.sizes["frame"] == 52 and ds.sizes["trial"] == 12, "out.zarr is not the 12 trials of up to 52 frames"),
     note="success: the valid tree the cases below damage")
bad_video_tree("2d-video", ["videos/3.npy"], video_file("videos", 3, lambda v: v[..., 0]))
bad_video_tree("4d-video", ["videos/3.npy"], video_file("videos", 3, lambda v: v[None]))
bad_video_tree("frames-first", ["videos/"], frames_first, note="every video saved (frames, y, x): refused, not read as videos of 32 frames")
bad_video_tree("responses-frames-mismatch", ["responses/1.npy"], video_file("responses", 1, lambda r: r[:, :-1]))
bad_video_tree("responses-transposed", ["responses/1.npy"], video_file("responses", 1, lambda r: r.T))
bad_video_tree("behavior-frames-mismatch", ["behavior/2.npy"], video_file("behavior", 2, lambda b: b[:, :-5]))
bad_video_tree("pupil-frames-mismatch", ["pupil_center/5.npy"], video_file("pupil_center", 5, lambda p: np.pad(p, ((0, 0), (0, 3)))))
bad_video_tree("pupil-3-rows", ["pupil_center/0.npy"], video_file("pupil_center", 0, lambda p: np.concatenate([p, p[:1]])))
bad_video_tree("behavior-variables-differ", ["behavior/4.npy"], video_file("behavior", 4, lambda b: b[:1]))
bad_video_tree("responses-neuron-mismatch", ["responses/4.npy"], video_file("responses", 4, lambda r: r[:5]))
bad_video_tree("pickled-video", ["videos/4.npy"], save_npy(VIDEO_FILE.format("videos", 4), np.array([{"a": 1}], dtype=object), allow_pickle=True))
bad_video_tree("corrupt-video", ["videos/1.npy"], write(VIDEO_FILE.format("videos", 1), b"\x93NUMPY garbage" * 20))
bad_video_tree("truncated-responses", ["responses/5.npy"], truncate(VIDEO_FILE.format("responses", 5)))
bad_video_tree("strings-behavior", ["behavior/6.npy"], save_npy(VIDEO_FILE.format("behavior", 6), np.array([["a"] * 40] * 2)))
bad_video_tree("missing-video", ["videos/7.npy"], remove(VIDEO_FILE.format("videos", 7)))
bad_video_tree("missing-responses", ["responses/2.npy"], remove(VIDEO_FILE.format("responses", 2)))
bad_video_tree("video-nan-from-start", ["videos/0.npy"], video_file("videos", 0, lambda v: np.full_like(v, np.nan)))
bad_video_tree("video-inf", ["images"], video_file("videos", 2, lambda v: np.where(np.arange(v.shape[-1]) == 3, np.inf, v)))
bad_video_tree("tiers-unknown", ["tiers.npy", "training"],
               save_npy("sensorium_video/meta/trials/tiers.npy", np.array(["training"] * 8 + ["oracle"] * 2 + ["live_test_main", "final_test_main"])))
bad_video_tree("tiers-all-none", ["tiers.npy"], save_npy("sensorium_video/meta/trials/tiers.npy", np.array(["none"] * 12)))
bad_video_tree("tiers-short", ["tiers.npy"], save_npy("sensorium_video/meta/trials/tiers.npy", np.array(["train"] * 8 + ["oracle"] * 2 + ["live_test_main"])),
               note="12 trials of files but 11 tiers: the last trial must not vanish silently")
bad_video_tree("tiers-short-no-ids", ["tiers.npy"], remove("sensorium_video/meta/trials/condition_hash.npy"),
               save_npy("sensorium_video/meta/trials/tiers.npy", np.array(["train"] * 8 + ["oracle"] * 2 + ["live_test_main"])),
               note="as tiers-short without the video ids that would also disagree")
bad_video_tree("tiers-long", ["videos/12.npy"], save_npy("sensorium_video/meta/trials/tiers.npy", np.array(["train"] * 9 + ["oracle"] * 2 + ["live_test_main", "final_test_main"])))
case("sensorium-video-train-responses-nan", SENSORIUM, SENS_VIDEO, copy("sensorium_video"), video_file("responses", 3, lambda r: np.full_like(r, np.nan)),
     expect=0, allow_new=["out.zarr"], check=store_check("out.zarr", lambda ds: bool(np.isnan(ds["responses"].values[3]).all()), "trial 3 has responses"),
     note="success: a train trial without responses is kept with its video and left out of fitting, said in the output")
bad_video_tree("condition-hash-length", ["condition_hash.npy"], save_npy("sensorium_video/meta/trials/condition_hash.npy", np.array(["a", "b"])))
bad_video_tree("unit-ids-length", ["unit_ids"], save_npy("sensorium_video/meta/neurons/unit_ids.npy", np.arange(5)))
bad_video_tree("lying-header", ["videos/3.npy"], lying_video, mode="subprocess", memory_limit=3 << 30, timeout=120,
               note="the header claims 2.3 TB of frames")
bad_video_tree("zip-responses-frames-mismatch", ["sensorium_video.zip", "responses/1.npy"], video_file("responses", 1, lambda r: r[:, :-1]),
               zipped("sensorium_video"), argv=SENS_VIDEO_ZIP)
bad_video_tree("zip-truncated", ["sensorium_video.zip"], zipped("sensorium_video"), truncate("sensorium_video.zip", 0.6), argv=SENS_VIDEO_ZIP)

# ---------------------------------------------------------------------------- bad TOML
FIT = "fit sim.zarr --out run --config bad.toml --max-epochs 1"


def bad_fit(name: str, section: str, key: str, value, mentions=None, argv: str = FIT) -> None:
    case(f"toml-fit-{name}", TOML, argv, copy("sim.zarr"), toml("bad.toml", merged(TINY_FIT, section, key, value)),
         mentions=mentions or ["bad.toml", key])


case("toml-fit-syntax", TOML, FIT, copy("sim.zarr"), toml("bad.toml", "[fit\nmax_epochs = 2\n"), mentions=["bad.toml"])
case("toml-fit-unknown-table", TOML, FIT, copy("sim.zarr"), toml("bad.toml", "[trainer]\nepochs = 2\n"), mentions=["bad.toml", "trainer"])
case("toml-fit-unknown-key", TOML, FIT, copy("sim.zarr"), toml("bad.toml", "[fit]\nepochs = 2\n"), mentions=["bad.toml", "epochs"])
case("toml-fit-wrong-type", TOML, FIT, copy("sim.zarr"), toml("bad.toml", '[fit]\nmax_epochs = "2"\n'), mentions=["bad.toml", "max_epochs"])
case("toml-fit-duplicate-key", TOML, FIT, copy("sim.zarr"), toml("bad.toml", "[fit]\nmax_epochs = 2\nmax_epochs = 3\n"), mentions=["bad.toml"])
case("toml-fit-table-as-value", TOML, FIT, copy("sim.zarr"), toml("bad.toml", "fit = 3\n"), mentions=["bad.toml", "fit"])
bad_fit("stack-string", "model", "stack", "a")
bad_fit("stack-floats", "model", "stack", [1.5])
bad_fit("stack-out-of-range", "model", "stack", [7])
bad_fit("batch-size-0", "data", "batch_size", 0)
bad_fit("batch-size-negative", "data", "batch_size", -32)
bad_fit("normalization-unknown", "data", "image_normalization", "zscore")
bad_fit("std-floor-negative", "data", "response_std_floor", -1.0)
bad_fit("shuffle-seed-negative", "data", "shuffle_seed", -1)
bad_fit("core-layers-0", "model", "core_layers", 0)
bad_fit("core-channels-0", "model", "core_channels", 0)
bad_fit("input-kernel-0", "model", "input_kernel", 0)
bad_fit("input-kernel-larger-than-image", "model", "input_kernel", 99)
bad_fit("hidden-kernel-negative", "model", "hidden_kernel", -3)
bad_fit("readout-unknown", "model", "readout", "linear")
bad_fit("gauss-type-unknown", "model", "gauss_type", "diagonal")
bad_fit("momentum-above-1", "model", "batch_norm_momentum", 1.5)
bad_fit("eps-negative", "model", "batch_norm_eps", -1e-5)
bad_fit("init-sigma-negative", "model", "init_sigma", -0.1)
bad_fit("gamma-input-negative", "model", "gamma_input", -1.0)
bad_fit("learning-rate-0", "fit", "learning_rate", 0.0)
bad_fit("learning-rate-negative", "fit", "learning_rate", -0.01)
bad_fit("learning-rate-nan", "fit", "learning_rate", float("nan"))
bad_fit("learning-rate-inf", "fit", "learning_rate", float("inf"))
bad_fit("max-epochs-0", "fit", "max_epochs", 0, argv="fit sim.zarr --out run --config bad.toml")
bad_fit("decay-factor-0", "fit", "lr_decay_factor", 0.0)
bad_fit("decay-factor-above-1", "fit", "lr_decay_factor", 2.0)
bad_fit("patience-negative", "fit", "patience", -1)
bad_fit("max-decays-negative", "fit", "max_lr_decays", -1)
bad_fit("min-lr-negative", "fit", "min_learning_rate", -1.0)
bad_fit("ensemble-size-0", "fit", "ensemble_size", 0)
bad_fit("tolerance-nan", "fit", "tolerance", float("nan"))

MEI_BAD = "mei run --neurons 0:2 --out m.zarr --config bad.toml"


def bad_mei(name: str, key: str, value, extra: str = "") -> None:
    case(f"toml-mei-{name}", TOML, MEI_BAD + extra, copy("run"), toml("bad.toml", merged(TINY_MEI, "mei", key, value)),
         mentions=["bad.toml", key])


bad_mei("steps-0", "steps", 0)
bad_mei("steps-negative", "steps", -5)
bad_mei("optimizer-unknown", "optimizer", "lbfgs")
bad_mei("schedule-unknown", "schedule", "exponential")
bad_mei("parametrization-unknown", "parametrization", "wavelet")
bad_mei("blur-target-unknown", "blur_target", "both")
bad_mei("blur-sigma-negative", "blur_sigma", -1.0)
bad_mei("seeds-0", "seeds", 0)
bad_mei("chunk-size-negative", "chunk_size", -1)
bad_mei("jitter-negative", "jitter", -2)
bad_mei("dei-fraction-above-1", "dei_fraction", 1.5, extra=" --deis 2")
bad_mei("dei-diversity-unknown", "dei_diversity", "cosine", extra=" --deis 2")
bad_mei("learning-rate-nan", "learning_rate", float("nan"))
bad_mei("final-lr-negative", "final_learning_rate", -1.0)
bad_mei("init-std-negative", "init_std", -8.0)
bad_mei("norm-negative", "norm", -1.0)
bad_mei("scale-jitter-above-1", "scale_jitter", 2.0)
case("toml-mei-window-0", TOML, MEI_BAD, copy("run"), toml("bad.toml", {"mei": {**TINY_MEI["mei"], "tolerance": 0.01, "window": 0}}), mentions=["bad.toml", "window"])
case("toml-mei-no-table", TOML, MEI_BAD, copy("run"), toml("bad.toml", "[fit]\nmax_epochs = 2\n"), mentions=["bad.toml", "mei"])
case("toml-mei-unknown-key", TOML, MEI_BAD, copy("run"), toml("bad.toml", "[mei]\nstepz = 5\n"), mentions=["bad.toml", "stepz"])

LOOP_BAD = "loop out --config bad.toml"


def bad_loop(name: str, section: str, key: str, value) -> None:
    case(f"toml-loop-{name}", TOML, LOOP_BAD, toml("bad.toml", merged(TINY_LOOP, section, key, value)), mentions=["bad.toml", key])


bad_loop("size-tiny", "loop", "size", [2, 2])
bad_loop("size-string", "loop", "size", "36x64")
bad_loop("neurons-0", "loop", "simulated_neurons", 0)
bad_loop("train-images-negative", "loop", "train_images", -5)
bad_loop("rig-repeats-0", "loop", "rig_repeats", 0)
bad_loop("mei-seeds-0", "loop", "mei_seeds", 0)
bad_loop("unknown-key", "loop", "neuronz", 3)
bad_loop("core-layers-0", "model", "core_layers", 0)

MONITOR = "export meis.zarr --out stim --monitor mon.toml"
GOOD_MONITOR = "[calibration]\npixel = [0, 128, 255]\nluminance = [1.0, 20.0, 80.0]\n"
case("toml-monitor-syntax", TOML, MONITOR, copy("meis.zarr"), toml("mon.toml", "[calibration\n"), mentions=["mon.toml"])
case("toml-monitor-luminance-decreasing", TOML, MONITOR, copy("meis.zarr"),
     toml("mon.toml", "[calibration]\npixel = [0, 128, 255]\nluminance = [80.0, 20.0, 1.0]\n"), mentions=["mon.toml", "luminance"])
case("toml-monitor-screen-0", TOML, MONITOR, copy("meis.zarr"), toml("mon.toml", GOOD_MONITOR + "[screen]\nheight = 0\nwidth = 0\n"), mentions=["mon.toml", "screen"])
case("toml-monitor-strings", TOML, MONITOR, copy("meis.zarr"), toml("mon.toml", '[calibration]\npixel = ["a", "b", "c"]\nluminance = [1, 2, 3]\n'), mentions=["mon.toml", "pixel"])
case("toml-monitor-target-negative", TOML, MONITOR, copy("meis.zarr"), toml("mon.toml", GOOD_MONITOR + "[target]\nrms_contrast = -2.0\n"), mentions=["mon.toml", "rms_contrast"])
case("toml-monitor-typo-table", TOML, MONITOR, copy("meis.zarr"), toml("mon.toml", GOOD_MONITOR + "[targets]\nrms_contrast = 2.0\n"), mentions=["mon.toml", "targets"],
     note="a misspelt table must not be ignored silently")

# ---------------------------------------------------------------------------- bad command-line values
SIM = "simulate s.zarr --neurons 4 --train-images 20 --test-images 2 --repeats 2"
for flag, value in [("--neurons", "0"), ("--neurons", "-5"), ("--train-images", "0"), ("--test-images", "0"), ("--repeats", "0"),
                    ("--repeats", "-1"), ("--size", "4x4"), ("--size", "abc"), ("--size", "36x"), ("--size", "0x64"), ("--size", "36x64x3"),
                    ("--size", "-36x64"), ("--seed", "-1"), ("--neurons", "abc")]:
    case(f"simulate{flag}-{value}", CLI, f"{SIM} {flag} {value}", mentions=[flag])
case("simulate-size-huge", CLI, SIM + " --size 20000x20000", mentions=["--size"], mode="subprocess", memory_limit=4 << 30, timeout=180,
     note="refused before allocating (run with a 4 GiB address-space limit)")
case("simulate-neurons-huge", CLI, "simulate s.zarr --neurons 100000000 --train-images 20 --test-images 2 --repeats 2", mentions=["--neurons"],
     mode="subprocess", memory_limit=2 << 30, timeout=180, note="refused before allocating (2 GiB limit)")
case("import-seed-negative", CLI, IMPORT + " --seed -1", npz(tiers=None), mentions=["--seed"])
FIT_OK = "fit sim.zarr --out run --config fit.toml"
case("fit-seeds-0", CLI, FIT_OK + " --seeds 0", copy("sim.zarr", "fit.toml"), mentions=["--seeds"])
case("fit-max-epochs-0", CLI, FIT_OK + " --max-epochs 0", copy("sim.zarr", "fit.toml"), mentions=["--max-epochs"])
case("fit-max-epochs-abc", CLI, FIT_OK + " --max-epochs abc", copy("sim.zarr", "fit.toml"), mentions=["--max-epochs"])
case("fit-process-id-out-of-range", CLI, FIT_OK + " --coordinator localhost:1 --num-processes 2 --process-id 5", copy("sim.zarr", "fit.toml"),
     mentions=["--process-id"], mode="subprocess", timeout=90)
case("fit-num-processes-0", CLI, FIT_OK + " --coordinator localhost:1 --num-processes 0 --process-id 0", copy("sim.zarr", "fit.toml"),
     mentions=["--num-processes"], mode="subprocess", timeout=90)
case("fit-coordinator-no-port", CLI, FIT_OK + " --coordinator localhost --num-processes 1 --process-id 0", copy("sim.zarr", "fit.toml"),
     mentions=["--coordinator"], mode="subprocess", timeout=90)
case("evaluate-tier-unknown", CLI, "evaluate run --tier bogus", copy("run"), mentions=["bogus"])
case("evaluate-tier-absent", CLI, "evaluate run --tier final_test", copy("run"), mentions=["final_test"])
MEI_OK = "mei run --config mei.toml --out m.zarr"
for flag, value in [("--neurons", "5:2"), ("--neurons", "abc"), ("--neurons", "999999"), ("--neurons", "-1"), ("--neurons", "1,1"),
                    ("--neurons", ""), ("--neurons", "0:0"), ("--neurons", "3:999"), ("--seeds", "0"), ("--seeds", "-3"), ("--deis", "1"),
                    ("--deis", "-2"), ("--session", "1"), ("--session", "-1")]:
    case(f"mei{flag}-{value or 'empty'}", CLI, shlex.split(MEI_OK) + [flag, value], copy("run", "mei.toml"), mentions=[flag])
case("mei--recipe-bogus-no-config", CLI, "mei run --out m.zarr --recipe bogus", copy("run"), mentions=["--recipe"],
     note="an unknown recipe needs a --config with a [mei] table")
case("mei-out-without-zarr", CLI, "mei run --config mei.toml --out meis", copy("run", "mei.toml"), mentions=["--out"])
for flag, value in [("--n", "0"), ("--n", "-3"), ("--min-distance", "-5"), ("--min-distance", "nan")]:
    case(f"select{flag}-{value}", CLI, f"select run {flag} {value}", copy("run"), mentions=[flag])
for flag, value in [("--repeats", "0"), ("--repeats", "-1"), ("--seed", "-1")]:
    case(f"export{flag}-{value}", CLI, f"export meis.zarr --out stim {flag} {value}", copy("meis.zarr"), mentions=[flag])
case("respond-seed-negative", CLI, RESPOND + " --seed -1", copy("stimuli", "sim.zarr"), mentions=["--seed"])
for flag, value in [("--neurons", "0"), ("--seeds", "0"), ("--seed", "-1")]:
    case(f"loop{flag}-{value}", CLI, f"loop out --config loop.toml {flag} {value}", copy("loop.toml"), mentions=[flag])
case("no-command", CLI, "", mentions=["COMMAND"])
case("unknown-command", CLI, "fly", mentions=["fly"])
case("bench-unknown-flag", CLI, "bench --fast", mentions=["--fast"])

# ---------------------------------------------------------------------------- existing outputs
USER = write("out.zarr/notes.txt", "my notes")
case("simulate-into-folder-with-file", EXISTING, SIM.replace("s.zarr", "out.zarr"), USER, mentions=["out.zarr"])
case("simulate-onto-plain-file", EXISTING, SIM.replace("s.zarr", "out.zarr"), write("out.zarr", "mine"), mentions=["out.zarr"])
case("simulate-missing-parent", EXISTING, SIM.replace("s.zarr", "nope/deeper/s.zarr"), mentions=["nope"],
     note="the parent folder must exist; nothing is created")
case("simulate-parent-is-file", EXISTING, SIM.replace("s.zarr", "f.txt/s.zarr"), write("f.txt", "mine"), mentions=["f.txt"])
case("simulate-readonly-parent", EXISTING, SIM.replace("s.zarr", readonly_parent() + "/twin-adversarial.zarr"), lock("locked"),
     mentions=[readonly_parent()])
case("simulate-over-store", EXISTING, SIM.replace("s.zarr", "sim.zarr"), copy("sim.zarr"), mentions=["sim.zarr", "--overwrite"],
     note="an existing store is kept unless --overwrite")
case("simulate-overwrite", EXISTING, SIM.replace("s.zarr", "sim.zarr") + " --overwrite", copy("sim.zarr"), expect=0, allow_changed=["sim.zarr"],
     check=store_check("sim.zarr", lambda ds: ds.sizes["neuron"] == 4, "sim.zarr was not replaced"), note="success: --overwrite replaces the store")
case("simulate-into-empty-folder", EXISTING, SIM.replace("s.zarr", "empty.zarr"), mkdir("empty.zarr"), expect=0, allow_new=["empty.zarr"],
     allow_changed=["empty.zarr"], check=store_check("empty.zarr", lambda ds: True, ""), note="success: an empty folder is not a user's data")
case("simulate-name-too-long", EXISTING, SIM.replace("s.zarr", "a" * 300 + ".zarr"), mentions=["aaaa"])
case("import-over-store", EXISTING, "import arrays data.npz sim.zarr", copy("data.npz", "sim.zarr"), mentions=["sim.zarr"])
case("import-onto-its-input", EXISTING, "import arrays data.npz data.npz", copy("data.npz"), mentions=["data.npz"])
case("import-sensorium-into-folder-with-file", EXISTING, "import sensorium sensorium out.zarr", copy("sensorium"), USER, mentions=["out.zarr"])
case("import-missing-parent", EXISTING, "import arrays data.npz nope/out.zarr", copy("data.npz"), mentions=["nope"])
case("fit-into-folder-with-config", EXISTING, "fit sim.zarr --out mine --config fit.toml", copy("sim.zarr", "fit.toml"),
     write("mine/config.toml", "# my own notes\n"), mentions=["mine"], note="a user's config.toml is never replaced")
case("fit-onto-plain-file", EXISTING, "fit sim.zarr --out mine --config fit.toml", copy("sim.zarr", "fit.toml"), write("mine", "x"), mentions=["mine"])
case("fit-missing-parent", EXISTING, "fit sim.zarr --out nope/run --config fit.toml", copy("sim.zarr", "fit.toml"), mentions=["nope"])
case("fit-readonly-parent", EXISTING, f"fit sim.zarr --out {readonly_parent()}/twin-adversarial-run --config fit.toml", copy("sim.zarr", "fit.toml"),
     lock("locked"), mentions=[readonly_parent()])
case("fit-into-its-store", EXISTING, "fit sim.zarr --out sim.zarr --config fit.toml", copy("sim.zarr", "fit.toml"), mentions=["sim.zarr"])
case("fit-over-fitted-run", EXISTING, "fit sim.zarr --out run --config fit.toml", copy("sim.zarr", "fit.toml", "run"), mentions=["run"])
case("mei-over-store", EXISTING, MEI.replace("m.zarr", "meis.zarr"), copy("run", "mei.toml", "meis.zarr"), mentions=["meis.zarr"])
case("mei-into-folder-with-file", EXISTING, MEI.replace("m.zarr", "out.zarr"), copy("run", "mei.toml"), USER, mentions=["out.zarr"])
case("mei-grid-png-exists", EXISTING, MEI, copy("run", "mei.toml"), write("m.png", "my picture"), mentions=["m.png"],
     note="the grid m.png beside m.zarr is an output too")
case("mei-missing-parent", EXISTING, MEI.replace("m.zarr", "nope/m.zarr"), copy("run", "mei.toml"), mentions=["nope"])
case("mei-into-session-store", EXISTING, MEI.replace("m.zarr", "sim.zarr"), own_run, copy("mei.toml"), mentions=["sim.zarr"])
EXPORT = "export meis.zarr --out stim"
case("export-into-folder-with-file", EXISTING, EXPORT, copy("meis.zarr"), write("stim/notes.txt", "mine"), mentions=["stim"])
case("export-onto-plain-file", EXISTING, EXPORT, copy("meis.zarr"), write("stim", "mine"), mentions=["stim"])
case("export-missing-parent", EXISTING, EXPORT.replace("stim", "nope/stim"), copy("meis.zarr"), mentions=["nope"])
case("export-onto-its-input", EXISTING, "export meis.zarr --out meis.zarr", copy("meis.zarr"), mentions=["meis.zarr"])
case("export-onto-its-input-overwrite", EXISTING, "export meis.zarr --out meis.zarr --overwrite", copy("meis.zarr"), mentions=["meis.zarr"],
     note="--overwrite never replaces the command's own input")
case("export-overwrite", EXISTING, "export meis.zarr --out stimuli --overwrite --repeats 3", copy("meis.zarr", "stimuli"), expect=0,
     allow_changed=["stimuli"], allow_new=["stimuli"], note="success: --overwrite replaces the folder")
case("respond-over-npz", EXISTING, RESPOND.replace("r.npz", "responses.npz"), copy("stimuli", "sim.zarr", "responses.npz"), mentions=["responses.npz"])
case("respond-onto-folder", EXISTING, RESPOND, copy("stimuli", "sim.zarr"), mkdir("r.npz"), mentions=["r.npz"])
case("respond-missing-parent", EXISTING, RESPOND.replace("r.npz", "nope/r.npz"), copy("stimuli", "sim.zarr"), mentions=["nope"])
case("respond-onto-manifest", EXISTING, RESPOND.replace("r.npz", "stimuli/manifest.json"), copy("stimuli", "sim.zarr"), mentions=["manifest.json"])
case("respond-overwrite", EXISTING, RESPOND.replace("r.npz", "responses.npz") + " --overwrite", copy("stimuli", "sim.zarr", "responses.npz"),
     expect=0, allow_changed=["responses.npz"], note="success: --overwrite replaces the file")
case("closeloop-into-folder-with-file", EXISTING, CLOSELOOP, copy("run", "stimuli", "responses.npz"), write("rep/notes.txt", "mine"), mentions=["rep"])
case("closeloop-onto-plain-file", EXISTING, CLOSELOOP, copy("run", "stimuli", "responses.npz"), write("rep", "mine"), mentions=["rep"])
case("closeloop-onto-stimuli", EXISTING, "closeloop run stimuli responses.npz --out stimuli", copy("run", "stimuli", "responses.npz"), mentions=["stimuli"])
case("closeloop-onto-run", EXISTING, "closeloop run stimuli responses.npz --out run", copy("run", "stimuli", "responses.npz"), mentions=["run"])
case("closeloop-missing-parent", EXISTING, CLOSELOOP.replace("rep", "nope/rep"), copy("run", "stimuli", "responses.npz"), mentions=["nope"])
case("loop-into-folder-with-config", EXISTING, "loop out --config loop.toml", copy("loop.toml"), write("out/config.toml", "# mine\n"), mentions=["out"])
case("loop-onto-plain-file", EXISTING, "loop out --config loop.toml", copy("loop.toml"), write("out", "mine"), mentions=["out"])
case("loop-missing-parent", EXISTING, "loop nope/out --config loop.toml", copy("loop.toml"), mentions=["nope"])
CONVERT = "convert neuralpredictors m.pth --store sim.zarr --out"
case("convert-into-existing-folder", EXISTING, CONVERT + " mine", copy("sim.zarr"), write("m.pth", "x"), write("mine/notes.txt", "x"), mentions=["mine"])
case("convert-missing-parent", EXISTING, CONVERT + " nope/r", copy("sim.zarr"), torch_save("m.pth", lambda torch: {"a": torch.zeros(1)}), mentions=["nope"],
     note="outputs are checked before the checkpoint is read")

# ---------------------------------------------------------------------------- damaged stores
CHECK = "info sim.zarr --check"
case("store-deleted-chunk", DAMAGED, CHECK, copy("sim.zarr"), remove("sim.zarr/responses/c/0/0"), mentions=["sim.zarr", "responses"])
case("store-truncated-chunk", DAMAGED, CHECK, copy("sim.zarr"), truncate("sim.zarr/images/c"), mentions=["sim.zarr", "images"])
case("store-corrupted-chunk", DAMAGED, CHECK, copy("sim.zarr"), flip_bytes("sim.zarr/images/c"), mentions=["sim.zarr", "images"])
case("store-edited-array", DAMAGED, CHECK, copy("sim.zarr"), zarr_edit("sim.zarr", "responses", lambda a: a * 0 + 1), mentions=["sim.zarr", "responses"])
case("store-chunk-is-folder", DAMAGED, CHECK, copy("sim.zarr"), remove("sim.zarr/responses/c/0/0"), mkdir("sim.zarr/responses/c/0/0"), mentions=["sim.zarr"])
case("store-no-root-json", DAMAGED, "info sim.zarr", copy("sim.zarr"), remove("sim.zarr/zarr.json"), mentions=["sim.zarr"])
case("store-no-array-json", DAMAGED, "info sim.zarr", copy("sim.zarr"), remove("sim.zarr/responses/zarr.json"), mentions=["sim.zarr", "responses"])
case("store-garbage-json", DAMAGED, "info sim.zarr", copy("sim.zarr"), write("sim.zarr/images/zarr.json", "{not json"), mentions=["sim.zarr"])
case("store-truncated-chunk-plain-info", DAMAGED, "info sim.zarr", copy("sim.zarr"), truncate("sim.zarr/images/c"), mentions=["sim.zarr", "images"])
case("store-future-schema", DAMAGED, "info sim.zarr", copy("sim.zarr"),
     edit_json("sim.zarr/zarr.json", lambda j: j["attributes"].update(schema_version=99)), mentions=["sim.zarr"],
     note="a store from a newer twin is refused, not misread")
case("store-no-stats", DAMAGED, "info sim.zarr", copy("sim.zarr"), remove("sim.zarr/stats_response_std"), mentions=["sim.zarr", "stats_response_std"])
case("fit-store-deleted-chunk", DAMAGED, FIT_OK + " --max-epochs 1", copy("sim.zarr", "fit.toml"), remove("sim.zarr/responses/c/0/0"),
     mentions=["sim.zarr", "responses"], note="a missing chunk reads as NaN fill values; fitting them is refused")
case("evaluate-store-truncated", DAMAGED, "evaluate run", own_run, truncate("sim.zarr/images/c"), mentions=["sim.zarr", "images"])
case("export-meis-deleted-chunk", DAMAGED, EXPORT, copy("meis.zarr"), remove("meis.zarr/images/c/0/0/0/0"), mentions=["meis.zarr", "images"])
case("export-meis-run-gone", DAMAGED, "export mine.zarr --out stim", own_run, copy("mei.toml"),
     lambda d, fx: cli(["mei", "run", "--neurons", "0:2", "--config", "mei.toml", "--out", "mine.zarr", "--json"], d), remove("run"),
     mentions=["run"], note="the MEI store's run was deleted")
case("fit-negative-responses", DAMAGED, FIT_OK + " --max-epochs 1", copy("sim.zarr", "fit.toml"),
     rewrite_store("sim.zarr", lambda ds: ds.assign(responses=ds["responses"] - 1)), mentions=["sim.zarr", "responses"],
     note="the Poisson loss is undefined for negative responses")
case("fit-no-validation-tier", DAMAGED, FIT_OK, copy("sim.zarr", "fit.toml"),
     rewrite_store("sim.zarr", lambda ds: ds.assign(tier=ds["tier"].where(ds["tier"] != "validation", "train"))), mentions=["sim.zarr", "validation"])
case("fit-images-smaller-than-kernel", DAMAGED, "fit small.zarr --out run --config k9.toml --max-epochs 1",
     lambda d, fx: cli(["simulate", "small.zarr", "--neurons", "3", "--train-images", "30", "--test-images", "2",
                                                "--repeats", "2", "--size", "8x8"], d),
     toml("k9.toml", merged(TINY_FIT, "model", "input_kernel", 9)), mentions=["input_kernel"])

# ---------------------------------------------------------------------------- run directories
case("evaluate-run-no-config", RUN, "evaluate run", copy("run"), remove("run/config.toml"), mentions=["run", "config.toml"])
case("evaluate-run-no-sessions", RUN, "evaluate run", copy("run"), remove("run/sessions.json"), mentions=["run", "sessions.json"])
case("evaluate-run-no-checkpoints", RUN, "evaluate run", copy("run"), remove("run/checkpoints"), mentions=["run", "checkpoint"])
case("mei-run-no-checkpoints", RUN, MEI, copy("run", "mei.toml"), remove("run/checkpoints"), mentions=["run", "checkpoint"])
case("select-run-no-checkpoints", RUN, "select run", copy("run"), remove("run/checkpoints"), mentions=["run", "checkpoint"])
case("evaluate-run-broken-config", RUN, "evaluate run", copy("run"), write("run/config.toml", "[model\n"), mentions=["config.toml"])
case("evaluate-run-changed-config", RUN, "evaluate run", copy("run"),
     lambda d, fx: (d / "run/config.toml").write_text((d / "run/config.toml").read_text().replace("core_channels = 4", "core_channels = 8")),
     mentions=["run"], note="the checkpoint no longer fits the config")
case("evaluate-run-sessions-garbage", RUN, "evaluate run", copy("run"), write("run/sessions.json", "{nope"), mentions=["sessions.json"])
case("evaluate-run-sessions-dict", RUN, "evaluate run", copy("run"), write("run/sessions.json", "{}"), mentions=["sessions.json"])
case("evaluate-run-truncated-checkpoint", RUN, "evaluate run", copy("run"),
     lambda d, fx: [p.write_bytes(b"") for p in (d / "run/checkpoints/best").rglob("*") if p.is_file() and "arrays" in p.parts],
     mentions=["run"])
case("evaluate-store-moved", RUN, "evaluate run", own_run, lambda d, fx: (d / "sim.zarr").rename(d / "moved.zarr"), mentions=["sim.zarr"])
case("mei-store-moved", RUN, MEI, own_run, copy("mei.toml"), lambda d, fx: (d / "sim.zarr").rename(d / "moved.zarr"), mentions=["sim.zarr"])
case("select-store-moved", RUN, "select run", own_run, lambda d, fx: (d / "sim.zarr").rename(d / "moved.zarr"), mentions=["sim.zarr"])
STORE_CHANGED = (own_run, remove("sim.zarr"), copy_as("other.zarr", "sim.zarr"))
case("evaluate-store-changed", RUN, "evaluate run", *STORE_CHANGED, mentions=["sim.zarr"], note="the store at the run's path now holds 5 other neurons")
case("mei-store-changed", RUN, MEI, *STORE_CHANGED, copy("mei.toml"), mentions=["sim.zarr"])
case("select-store-changed", RUN, "select run", *STORE_CHANGED, mentions=["sim.zarr"])
case("evaluate-other-store", RUN, "evaluate run --store other.zarr", copy("run", "other.zarr"), mentions=["other.zarr"])
case("fit-resume-other-store", RUN, "fit other.zarr --out run --config fit.toml --resume", copy("run", "other.zarr", "fit.toml"), mentions=["run"])
case("fit-resume-other-config", RUN, "fit sim.zarr --out run --config bad.toml --resume", copy("run", "sim.zarr"),
     toml("bad.toml", merged(TINY_FIT, "model", "core_channels", 8)), mentions=["config"])
case("closeloop-run-no-sessions", RUN, CLOSELOOP, copy("run", "stimuli", "responses.npz"), remove("run/sessions.json"), mentions=["sessions.json"])
case("closeloop-run-other-units", RUN, CLOSELOOP, copy("run", "stimuli", "responses.npz"),
     edit_json("run/sessions.json", lambda j: j[0].update(unit_id=[u + 1000 for u in j[0]["unit_id"]])), mentions=["unit_id"])
case("mei-validator-no-checkpoints", RUN, MEI + " --validator v", copy("run", "mei.toml"), copy_as("run", "v"), remove("v/checkpoints"), mentions=["v"])

# ---------------------------------------------------------------------------- stimulus folders
MANIFEST = "stimuli/manifest.json"


def first_stimulus(key: str, value) -> Callable:
    return lambda m: m["stimuli"][0].update({key: value})


def bad_stimuli(name: str, argv: str, mentions: list[str], *steps: Setup, **options) -> None:
    base = copy("stimuli", "sim.zarr") if argv == RESPOND else copy("run", "stimuli", "responses.npz")
    case(name, STIMULI, argv, base, *steps, mentions=mentions, **options)


bad_stimuli("respond-no-manifest", RESPOND, ["manifest.json"], remove(MANIFEST))
bad_stimuli("respond-manifest-garbage", RESPOND, ["manifest.json"], write(MANIFEST, "{oops"))
bad_stimuli("respond-manifest-list", RESPOND, ["manifest.json"], write(MANIFEST, "[]"))
bad_stimuli("respond-manifest-no-stimuli", RESPOND, ["manifest.json", "stimuli"], edit_json(MANIFEST, lambda m: m.pop("stimuli")))
bad_stimuli("respond-path-traversal", RESPOND, ["manifest.json"], edit_json(MANIFEST, first_stimulus("file", "../../../../../../etc/passwd")),
            note="manifest paths stay inside the stimulus folder")
bad_stimuli("respond-absolute-path", RESPOND, ["manifest.json"], edit_json(MANIFEST, first_stimulus("file", "/etc/passwd")))
bad_stimuli("respond-path-outside-existing-png", RESPOND, ["manifest.json"],
            lambda d, fx: shutil.copy(next((d / "stimuli/stimuli").glob("*.png")), d / "outside.png"),
            edit_json(MANIFEST, first_stimulus("file", "../outside.png")), note="even a real PNG outside the folder is refused")
def retarget(file: str) -> Setup:
    """Point stimulus 0 at ``file`` in manifest.json and manifest.csv alike (a consistent forgery)."""

    def step(d: Path, fx: Fixtures) -> None:
        edit_json(MANIFEST, first_stimulus("file", file))(d, fx)
        path = d / "stimuli/manifest.csv"
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            if row["stimulus_id"] == "0":
                row["file"] = file
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    return step


bad_stimuli("respond-path-traversal-consistent", RESPOND, ["manifest"], retarget("../../../../../../etc/passwd"),
            note="json and csv agree on the traversal; it is still refused")
bad_stimuli("respond-absolute-path-consistent", RESPOND, ["manifest"], retarget("/etc/passwd"))
bad_stimuli("respond-outside-png-consistent", RESPOND, ["manifest"],
            lambda d, fx: shutil.copy(next((d / "stimuli/stimuli").glob("*.png")), d / "outside.png"), retarget("../outside.png"))

bad_stimuli("respond-no-file-key", RESPOND, ["manifest.json", "file"], edit_json(MANIFEST, lambda m: m["stimuli"][0].pop("file")))
bad_stimuli("respond-order-out-of-range", RESPOND, ["manifest.json", "order"], edit_json(MANIFEST, lambda m: m["order"].append(9999)))
bad_stimuli("respond-order-negative", RESPOND, ["manifest.json", "order"], edit_json(MANIFEST, lambda m: m["order"].append(-1)),
            note="-1 would silently wrap to the last stimulus")
bad_stimuli("respond-png-truncated", RESPOND, ["0000_mei_u0.png"], truncate("stimuli/stimuli/0000_mei_u0.png", 0.3))
bad_stimuli("respond-png-is-text", RESPOND, ["0000_mei_u0.png"], write("stimuli/stimuli/0000_mei_u0.png", "not a png"))
bad_stimuli("respond-png-deleted", RESPOND, ["0000_mei_u0.png"], remove("stimuli/stimuli/0000_mei_u0.png"))
bad_stimuli("respond-png-rgb", RESPOND, ["0000_mei_u0.png"],
            lambda d, fx: Image.open(d / "stimuli/stimuli/0000_mei_u0.png").convert("RGB").save(d / "stimuli/stimuli/0000_mei_u0.png"))
bad_stimuli("respond-png-wrong-size", RESPOND, ["0000_mei_u0.png"],
            lambda d, fx: Image.new("L", (10, 10)).save(d / "stimuli/stimuli/0000_mei_u0.png"))
bad_stimuli("respond-monitor-gamma-0", RESPOND, ["manifest.json", "gamma"], edit_json(MANIFEST, lambda m: m["monitor"].update(gamma=0.0)))
bad_stimuli("closeloop-kind-unknown", CLOSELOOP, ["manifest.json", "kind"], edit_json(MANIFEST, first_stimulus("kind", "banana")))
bad_stimuli("closeloop-kind-script", CLOSELOOP, ["manifest.json", "kind"], edit_json(MANIFEST, first_stimulus("kind", "<script>alert(1)</script>")))
bad_stimuli("closeloop-html-injection", CLOSELOOP, [], edit_json(MANIFEST, lambda m: m.update(repeats="<img src=x onerror=alert(1)>")),
            expect=(0, 2), allow_new=["rep"], check=no_injection, note="refused, or the report escapes it")
bad_stimuli("closeloop-duplicate-stimulus-id", CLOSELOOP, ["manifest.json", "stimulus_id"], edit_json(MANIFEST, first_stimulus("stimulus_id", 1)))
bad_stimuli("closeloop-session-5", CLOSELOOP, ["session"], edit_json(MANIFEST, lambda m: m.update(session=5)))
bad_stimuli("closeloop-no-target", CLOSELOOP, ["manifest.json", "target"], edit_json(MANIFEST, lambda m: m.pop("target")))
bad_stimuli("closeloop-no-stimuli", CLOSELOOP, ["manifest.json"], edit_json(MANIFEST, lambda m: m.update(stimuli=[], order=[])))
bad_stimuli("closeloop-responses-truncated", CLOSELOOP, ["responses.npz"], truncate("responses.npz"))
bad_stimuli("closeloop-foreign-units", CLOSELOOP, ["responses.npz", "unit_id"], edit_npz("responses.npz", unit_id=lambda a: a + 1000))
bad_stimuli("closeloop-missing-key", CLOSELOOP, ["responses.npz", "stimulus_id"], edit_npz("responses.npz", stimulus_id=None))
bad_stimuli("closeloop-responses-nan", CLOSELOOP, ["responses.npz"], edit_npz("responses.npz", responses=lambda a: a * np.nan))
bad_stimuli("closeloop-unknown-stimulus-id", CLOSELOOP, ["responses.npz", "stimulus_id"], edit_npz("responses.npz", stimulus_id=lambda a: a + 500))
bad_stimuli("closeloop-stimulus-missing", CLOSELOOP, ["responses.npz", "stimulus_id"], edit_npz("responses.npz", stimulus_id=lambda a: np.where(a == 0, 1, a)))
bad_stimuli("closeloop-stimulus-id-float", CLOSELOOP, ["responses.npz", "stimulus_id"], edit_npz("responses.npz", stimulus_id=lambda a: a + 0.5))
bad_stimuli("closeloop-unit-id-duplicate", CLOSELOOP, ["responses.npz", "unit_id"], edit_npz("responses.npz", unit_id=lambda a: a * 0))
bad_stimuli("closeloop-unit-id-strings", CLOSELOOP, ["responses.npz", "unit_id"], edit_npz("responses.npz", unit_id=lambda a: a.astype(str)),
            note="the run's ids are integers: '3' is not 3")
bad_stimuli("closeloop-responses-1d", CLOSELOOP, ["responses.npz", "responses"], edit_npz("responses.npz", responses=lambda a: a[:, 0]))
bad_stimuli("closeloop-responses-pickled", CLOSELOOP, ["responses.npz"],
            npz("responses.npz", base=lambda: {"responses": np.array([None], dtype=object), "stimulus_id": np.zeros(1, int), "unit_id": np.zeros(1, int)}, pickle=True))
bad_stimuli("closeloop-zero-trials", CLOSELOOP, ["responses.npz"],
            edit_npz("responses.npz", responses=lambda a: a[:0], stimulus_id=lambda a: a[:0]))

# ---------------------------------------------------------------------------- a closed stdout
QUIET = (0, 1, 141, -13)
case("pipe-info", PIPE, "info sim.zarr", copy("sim.zarr"), expect=QUIET, mode="pipe", note="exits quietly when the reader is gone")
case("pipe-info-json", PIPE, "info sim.zarr --json", copy("sim.zarr"), expect=QUIET, mode="pipe")
case("pipe-help", PIPE, "--help", expect=QUIET, mode="pipe")
case("pipe-simulate", PIPE, SIM, expect=QUIET, mode="pipe", allow_new=["s.zarr"])
case("pipe-evaluate-json", PIPE, "evaluate run --json", copy("run"), expect=QUIET, mode="pipe")
case("pipe-select-json", PIPE, "select run --json", copy("run"), expect=QUIET, mode="pipe")
case("pipe-closeloop", PIPE, CLOSELOOP, copy("run", "stimuli", "responses.npz"), expect=QUIET, mode="pipe", allow_new=["rep"])

# ---------------------------------------------------------------------------- killed mid-write
case("kill-simulate", CRASH, "simulate big.zarr --neurons 8 --train-images 6000 --test-images 10 --repeats 2", expect=0, mode="kill9",
     kill_when=".big.zarr.partial-*", then="simulate big.zarr --neurons 4 --train-images 20 --test-images 2 --repeats 2",
     allow_new=["big.zarr"], timeout=300, note="SIGKILL mid-write leaves no store; the next write removes the partial one")
case("kill-fit-then-resume", CRASH, "fit sim.zarr --out run --config fit.toml --max-epochs 30", copy("sim.zarr", "fit.toml"), expect=0,
     mode="kill9", kill_when="run/checkpoints/latest/2", then="fit sim.zarr --out run --config fit.toml --max-epochs 3 --resume",
     allow_new=["run"], killed_leaves=["run"], timeout=300, note="SIGKILL after epoch 2; --resume finishes the run")

# ---------------------------------------------------------------------------- odd paths
case("path-newline-missing", PATHS, ["info", "a\nb.zarr"], mentions=["b.zarr"], note="the error stays one line")
case("path-newline-bad-npz", PATHS, ["import", "arrays", "bad\nname.npz", "out.zarr"], write("bad\nname.npz", "text"), mentions=["name.npz"])
case("path-unicode-space", PATHS, ["simulate", "my sim é.zarr", "--neurons", "3", "--train-images", "20", "--test-images", "2", "--repeats", "2"],
     expect=0, allow_new=["my sim é.zarr"], note="success: spaces and accents are ordinary names")
case("path-dash-name", PATHS, ["info", "--", "-x.zarr"], mentions=["-x.zarr"])

# ---------------------------------------------------------------------------- images, predictions, same paths, interruptions
IMAGES, PREDICT, CONCURRENT = "import-images", "predict", "concurrent"
IMPORT_IMAGES = "import images imgs resp.npy o.zarr"


def png_bytes(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def pictures(n: int = 30, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (36, 64), dtype=np.uint8) for _ in range(n)]


def image_folder(name: str = "imgs", n: int = 30) -> Setup:
    """``n`` grey 36x64 PNGs im0.png ... in ``name``."""

    def step(d: Path, fx: Fixtures) -> None:
        (d / name).mkdir(parents=True, exist_ok=True)
        for i, pixels in enumerate(pictures(n)):
            Image.fromarray(pixels).save(d / name / f"im{i}.png")

    return step


def image_zip(name: str, entries: Callable[[list], list]) -> Setup:
    """A zip ``name`` of (entry name, bytes) from ``entries(pngs)``, pngs: 30 (name, bytes) pairs."""

    def step(d: Path, fx: Fixtures) -> None:
        pngs = [(f"im{i:02d}.png", png_bytes(p)) for i, p in enumerate(pictures())]
        with zipfile.ZipFile(d / name, "w", zipfile.ZIP_DEFLATED) as archive:
            for entry, data in entries(pngs):
                archive.writestr(entry, data)

    return step


def bomb_zip(name: str, gib: int = 3) -> Setup:
    """30 valid PNGs and one entry of ``gib`` GiB of zeros (a few MB compressed), written in pieces."""

    def step(d: Path, fx: Fixtures) -> None:
        with zipfile.ZipFile(d / name, "w", zipfile.ZIP_DEFLATED) as archive:
            for i, pixels in enumerate(pictures()):
                archive.writestr(f"im{i:02d}.png", png_bytes(pixels))
            with archive.open("zz_padding.png", "w", force_zip64=True) as entry:
                block = bytes(64 << 20)
                for _ in range(gib * 16):
                    entry.write(block)

    return step


def image_file(name: str, make: Callable[[], Image.Image], **save) -> Setup:
    def step(d: Path, fx: Fixtures) -> None:
        make().save(d / name, **save)

    return step


def responses_npy(name: str = "resp.npy", n: int = 30, change: Callable = lambda a: a) -> Setup:
    return save_npy(name, change(np.random.default_rng(0).gamma(1.0, 1.0, (n, 5)).astype(np.float32)))


def responses_csv(name: str = "resp.csv", header: str = "", change: Callable = lambda rows: rows) -> Setup:
    rows = [",".join(f"{v:.3f}" for v in row) for row in np.random.default_rng(0).gamma(1.0, 1.0, (30, 5))]
    return write(name, header + "\n".join(change(rows)) + "\n")


def gif_frames(d: Path, fx: Fixtures) -> None:
    frames = [Image.fromarray(p) for p in pictures(3, seed=1)]
    frames[0].save(d / "imgs/im5.gif", save_all=True, append_images=frames[1:])
    (d / "imgs/im5.png").unlink()


def predictions(name: str = "pred.zarr") -> Setup:
    return lambda d, fx: cli(["predict", "run", "sim.zarr", "--out", name], d)


def link(target: str, name: str) -> Setup:
    return lambda d, fx: os.symlink(target, d / name)


def default_sigint() -> None:
    """In the child: Ctrl-C's default action, even when the harness was started in the background
    (`cmd &` in a script ignores SIGINT, and an ignored signal stays ignored across exec)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def twin_process(argv: list[str], cwd: Path):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "twin.cli", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=default_sigint)


def writers_log(d: Path, runs: list[tuple[int, str]], listing: list[str] | None = None) -> None:
    """writers.json: each process's exit status and stderr (and the folder's listing after them)."""
    (d / "writers.json").write_text(json.dumps({"runs": runs, "listing": listing}))


def concurrently(*argvs: str) -> Setup:
    """Start every ``twin ARGV`` at once and wait for all of them; see ``writers_behaved``."""

    def step(d: Path, fx: Fixtures) -> None:
        processes = [twin_process(shlex.split(argv), d) for argv in argvs]
        runs = [(p.wait(timeout=300), p.stderr.read().decode(errors="replace")) for p in processes]
        writers_log(d, runs)

    return step


def interrupted(argv: str, when: str, delay: float = 0.05) -> Setup:
    """Run ``twin ARGV``, send SIGINT once a path matching ``when`` exists (hidden ones too), wait."""

    def step(d: Path, fx: Fixtures) -> None:
        import signal
        import time

        before = set(os.listdir(d))
        process = twin_process(shlex.split(argv), d)
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None and not list(d.glob(when)):
            time.sleep(0.002)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        runs = [(process.wait(timeout=120), process.stderr.read().decode(errors="replace"))]
        writers_log(d, runs, sorted(set(os.listdir(d)) - before))

    return step


def one_error_line(stderr: str) -> bool:
    lines = [line.rsplit("\r", 1)[-1].strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    return len(lines) == 1 and lines[0].startswith("twin") and "Traceback" not in stderr


def writers_behaved(store: str) -> Callable[[Path], str | None]:
    """Each concurrent writer succeeded or was refused with one line, at least one succeeded, and
    ``store`` is whole."""

    def check(d: Path) -> str | None:
        runs = json.loads((d / "writers.json").read_text())["runs"]
        if not any(code == 0 for code, _ in runs):
            return f"no writer succeeded: {[code for code, _ in runs]}"
        for code, stderr in runs:
            if "Traceback" in stderr or code not in (0, 2) or (code == 2 and not one_error_line(stderr)):
                return f"a writer exited {code}: {stderr.strip().splitlines()[-1:] or ''}"
        return store_check(store, lambda ds: True, "")(d)

    return check


def interrupt_behaved(d: Path) -> str | None:
    """The interrupted command exited 130 or 2 with its one line last and no traceback or asyncio
    noise, and left nothing new, not even a hidden partial."""
    log = json.loads((d / "writers.json").read_text())
    (code, stderr), = log["runs"]
    lines = [line.rsplit("\r", 1)[-1].strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    if code not in (130, 2) or not lines or not lines[-1].startswith("twin"):
        return f"interrupted command exited {code}: {lines[-1:]}"
    noise = [line for line in lines if any(w in line for w in ("Traceback", "Exception ignored", "Task was destroyed", "Error"))]
    if noise:
        return f"the interrupted command printed {len(noise)} more stderr lines: {noise[0][:120]}"
    if log["listing"]:
        return "the interrupted command left " + ", ".join(log["listing"])
    return None


# import images: responses files
case("images-responses-csv-empty", IMAGES, IMPORT_IMAGES.replace("resp.npy", "resp.csv"), image_folder(), write("resp.csv"),
     mentions=["resp.csv"], note="an empty .csv: one line, no numpy warning")
case("images-responses-csv-header", IMAGES, IMPORT_IMAGES.replace("resp.npy", "resp.csv"), image_folder(), responses_csv(header="a,b,c,d,e\n"),
     mentions=["resp.csv"], note="a header row of column names")
case("images-responses-csv-nan-text", IMAGES, IMPORT_IMAGES.replace("resp.npy", "resp.csv"), image_folder(),
     responses_csv(change=lambda rows: ["NaN" + r[r.index(","):] if i == 2 else r for i, r in enumerate(rows)]), expect=0,
     allow_new=["o.zarr"], note="success: a NaN cell marks a missing response")
case("images-responses-inf", IMAGES, IMPORT_IMAGES, image_folder(), responses_npy(change=lambda a: np.where(a > 2, np.inf, a)), mentions=["resp.npy", "responses"])
case("images-responses-npy-empty-file", IMAGES, IMPORT_IMAGES, image_folder(), write("resp.npy"), mentions=["resp.npy"])
# import images: image files
case("images-one-1x1", IMAGES, IMPORT_IMAGES, image_folder(), responses_npy(), image_file("imgs/im5.png", lambda: Image.new("L", (1, 1))),
     mentions=["imgs", "im5.png"])
case("images-16bit-png", IMAGES, IMPORT_IMAGES, image_folder(), responses_npy(),
     image_file("imgs/im5.png", lambda: Image.fromarray(np.arange(36 * 64, dtype=np.uint16).reshape(36, 64) * 16)), mentions=["imgs", "im5.png"])
case("images-cmyk-jpeg", IMAGES, IMPORT_IMAGES, image_folder(), responses_npy(), remove("imgs/im5.png"),
     image_file("imgs/im5.jpg", lambda: Image.new("CMYK", (64, 36), (10, 20, 30, 40))), expect=0, allow_new=["o.zarr"],
     note="success: a CMYK JPEG is converted like RGB")
case("images-animated-gif", IMAGES, IMPORT_IMAGES, image_folder(), responses_npy(), gif_frames, mentions=["imgs", "im5.gif"])
case("images-png-decompression-bomb", IMAGES, IMPORT_IMAGES + " --size 36x64", image_folder(), responses_npy(),
     image_file("imgs/im5.png", lambda: Image.new("L", (15000, 13000))), mentions=["imgs", "im5.png"])
case("images-zip-traversal-entry", IMAGES, "import images imgs.zip resp.npy o.zarr", responses_npy(),
     image_zip("imgs.zip", lambda pngs: [("../../evil.png", pngs[0][1])] + pngs[1:]), mentions=["imgs.zip", "evil.png"],
     note="a ../ entry is refused by name, not silently skipped (the error then blames resp.npy for 29 images)")
case("images-zip-duplicate-names", IMAGES, "import images imgs.zip resp.npy o.zarr", responses_npy(),
     image_zip("imgs.zip", lambda pngs: pngs[:29] + [("im00.png", pngs[29][1])]), mentions=["imgs.zip", "im00.png"],
     note="two entries named im00.png: which response row is which image is ambiguous")
case("images-zip-bomb", IMAGES, "import images bomb.zip resp.npy o.zarr", responses_npy(n=31), bomb_zip("bomb.zip"),
     mentions=["bomb.zip", "zz_padding.png"], mode="subprocess", memory_limit=3 << 30, timeout=180,
     note="3 GiB of zeros in a 3 MB zip (3 GiB address-space limit): the entry is refused by name")
case("images-zip-empty-file", IMAGES, "import images imgs.zip resp.npy o.zarr", responses_npy(), write("imgs.zip"), mentions=["imgs.zip"])
case("images-output-inside-store", IMAGES, "import images imgs resp.npy sim.zarr/o.zarr", image_folder(), responses_npy(), copy("sim.zarr"),
     mentions=["sim.zarr"], note="a store written inside another store makes the outer one unreadable")

# predict
PREDICT_OK = "predict run sim.zarr --out p.csv"
for flag, value in [("--neurons", "-1"), ("--neurons", "3,3,3"), ("--neurons", "1e3"), ("--neurons", "0:0"), ("--neurons", "0:99999999999999999999"),
                    ("--session", "-1"), ("--session", "3"), ("--batch-size", "0")]:
    case(f"predict{flag}-{value}", PREDICT, shlex.split(PREDICT_OK) + [flag, value], copy("run", "sim.zarr"), mentions=[flag])
case("predict-mei-store-as-images", PREDICT, "predict run meis.zarr --out p.npy", copy("run", "meis.zarr"), mentions=["meis.zarr"])
case("predict-predictions-as-images", PREDICT, "predict run pred.zarr --out p.npy", copy("run", "sim.zarr"), predictions(), mentions=["pred.zarr"])
case("predict-run-as-images", PREDICT, "predict run run --out p.npy", copy("run"), mentions=["run"])
case("predict-mei-store-as-run", PREDICT, "predict meis.zarr sim.zarr --out p.npy", copy("meis.zarr", "sim.zarr"), mentions=["meis.zarr"])
case("predict-empty-npy", PREDICT, "predict run e.npy --out p.npy", copy("run"), write("e.npy"), mentions=["e.npy"])
case("predict-zero-images-npy", PREDICT, "predict run e.npy --out p.npy", copy("run"), save_npy("e.npy", np.zeros((0, 36, 64), np.uint8)), mentions=["e.npy"])
case("predict-onto-user-csv", PREDICT, PREDICT_OK.replace("p.csv", "notes.csv"), copy("run", "sim.zarr"), write("notes.csv", "my,notes\n"),
     mentions=["notes.csv", "--overwrite"])
case("predict-overwrite-user-csv", PREDICT, PREDICT_OK.replace("p.csv", "notes.csv") + " --overwrite", copy("run", "sim.zarr"),
     write("notes.csv", "my,notes\n"), expect=0, allow_changed=["notes.csv"],
     note="success: --overwrite names a file to replace; a file carries no mark of who wrote it (folders and stores do)")
case("predict-into-its-store", PREDICT, "predict run sim.zarr --out sim.zarr/p.npy", copy("run", "sim.zarr"), mentions=["sim.zarr"],
     note="a file inside a store makes every later read of it warn (ZarrUserWarning)")
case("predict-dash-out", PREDICT, "predict run sim.zarr --out=-p.npy", copy("run", "sim.zarr"), expect=0, allow_new=["-p.npy"],
     note="success: a dash-leading name given as --out=NAME")

# stores and runs where another kind goes
case("info-predictions-store", KIND, "info pred.zarr", copy("run", "sim.zarr"), predictions(), mentions=["pred.zarr", "predict"],
     note="the fix is not 'add images': say it holds twin predict's output")
case("fit-predictions-store", KIND, "fit pred.zarr --out r2 --config fit.toml", copy("run", "sim.zarr", "fit.toml"), predictions(), mentions=["pred.zarr"])
case("respond-animal-run-dir", KIND, "respond stimuli --animal run --out r.npz", copy("run", "stimuli"), mentions=["run"])
case("respond-animal-predictions", KIND, "respond stimuli --animal pred.zarr --out r.npz", copy("run", "sim.zarr", "stimuli"), predictions(),
     mentions=["pred.zarr"])

# the same store twice, outputs inside inputs, links
case("fit-same-store-twice", EXISTING, "fit sim.zarr sim.zarr --out r --config fit.toml --max-epochs 1", copy("sim.zarr", "fit.toml"),
     mentions=["sim.zarr"], note="one recording given twice would be fit as two sessions")
case("fit-same-store-other-spelling", EXISTING, "fit sim.zarr ./sim.zarr/ --out r --config fit.toml --max-epochs 1", copy("sim.zarr", "fit.toml"),
     mentions=["sim.zarr"])
case("fit-same-store-via-link", EXISTING, "fit sim.zarr link.zarr --out r --config fit.toml --max-epochs 1", copy("sim.zarr", "fit.toml"),
     link("sim.zarr", "link.zarr"), mentions=["link.zarr"])
case("simulate-inside-store", EXISTING, SIM.replace("s.zarr", "sim.zarr/inner.zarr"), copy("sim.zarr"), mentions=["sim.zarr"],
     note="afterwards `twin info sim.zarr` says its metadata changed: the user's store is lost")
case("import-inside-store", EXISTING, "import arrays data.npz sim.zarr/o.zarr", copy("data.npz", "sim.zarr"), mentions=["sim.zarr"])
case("export-inside-mei-store", EXISTING, "export meis.zarr --out meis.zarr/stim", copy("meis.zarr"), mentions=["meis.zarr"])
case("respond-inside-store", EXISTING, "respond stimuli --animal sim.zarr --out sim.zarr/r.npz", copy("stimuli", "sim.zarr"), mentions=["sim.zarr"])
case("simulate-overwrite-through-link", EXISTING, SIM.replace("s.zarr", "link.zarr") + " --overwrite", copy("sim.zarr"), link("sim.zarr", "link.zarr"),
     mentions=["link.zarr"], note="--overwrite must not replace the store a link points to")
case("simulate-dangling-link", EXISTING, SIM.replace("s.zarr", "o.zarr"), link("missing.zarr", "o.zarr"), mentions=["o.zarr"])

# TOML edge cases
case("toml-fit-bom", TOML, FIT, copy("sim.zarr"), write("bad.toml", b"\xef\xbb\xbf" + toml_text(TINY_FIT).encode()), expect=(0, 2),
     allow_new=["run"], mentions=["bad.toml", "BOM"], note="a UTF-8 byte-order mark (Windows editors) is read, or the error says BOM: it is invisible")
case("toml-fit-table-twice", TOML, FIT, copy("sim.zarr"), toml("bad.toml", toml_text(TINY_FIT) + "\n[fit]\nmax_epochs = 1\n"), mentions=["bad.toml", "fit"])
case("toml-fit-core-channels-huge", TOML, FIT, copy("sim.zarr"), toml("bad.toml", merged(TINY_FIT, "model", "core_channels", 10**8)),
     mentions=["bad.toml", "core_channels"], mode="subprocess", memory_limit=4 << 30, timeout=180,
     note="refused before allocating a 10 GB kernel (4 GiB limit); without a limit the kernel OOM-kills the process")
case("toml-fit-batch-size-beyond-int64", TOML, FIT, copy("sim.zarr"), toml("bad.toml", merged(TINY_FIT, "data", "batch_size", 10**20)),
     expect=(0, 2), allow_new=["run"], mentions=["bad.toml", "batch_size"], note="accepted (clipped to the data) or refused by name")

# odd names
case("path-format-characters", PATHS, ["import", "arrays", "%s {0} 100%.npz", "out.zarr"], write("%s {0} 100%.npz", "text"), mentions=["%s {0} 100%.npz"])
case("path-emoji-store", PATHS, ["simulate", "🐭 mouse.zarr", "--neurons", "3", "--train-images", "20", "--test-images", "2", "--repeats", "2"],
     expect=0, allow_new=["🐭 mouse.zarr"], note="success")

# concurrent writers and SIGINT
case("concurrent-simulate-same-out", CONCURRENT, "info o.zarr --check",
     concurrently(*[SIM.replace("s.zarr", "o.zarr") + f" --train-images 300 --seed {i}" for i in range(3)]), expect=0,
     check=writers_behaved("o.zarr"), note="three writers at once: one wins, the others are refused with one line, the store is whole")
case("concurrent-predict-overwrite", CONCURRENT, "info sim.zarr", copy("run", "sim.zarr"), write("p.csv", "old"),
     concurrently(*["predict run sim.zarr --out p.csv --overwrite"] * 3), expect=0,
     check=lambda d: writers_behaved("sim.zarr")(d) or (None if (d / "p.csv").read_text().startswith("image_name") else "p.csv is not whole"))
case("sigint-mei", CRASH, MEI, copy("run", "mei.toml"), interrupted(MEI, ".m.zarr.partial*"), expect=0, allow_new=["m.zarr", "m.png"],
     check=interrupt_behaved, note="Ctrl-C mid-write: exit 130, nothing left; the same command then succeeds")
case("sigint-simulate", CRASH, "simulate big.zarr --neurons 4 --train-images 20 --test-images 2 --repeats 2",
     interrupted("simulate big.zarr --neurons 8 --train-images 30000 --test-images 10 --repeats 2", ".big.zarr.partial*", 0.05), expect=0,
     allow_new=["big.zarr"], check=interrupt_behaved, note="Ctrl-C mid-write: exit 130, no store and no partial one")

# ---------------------------------------------------------------------------- several animals, day 2, matching
DAYS, MATCH = "days", "match"
SMALL = "--neurons 4 --train-images 20 --test-images 2 --repeats 2"
ANIMALS = f"simulate out {SMALL} --animals 2"


def string_ids(store: str) -> Setup:
    return rewrite_store(store, lambda ds: ds.assign(unit_id=("neuron", np.array([f"cell-{i}" for i in range(ds.sizes["neuron"])], dtype=object))))


def colour_store(name: str) -> Setup:
    return lambda d, fx: cli(["simulate", name, "--neurons", "6", "--train-images", "40", "--test-images", "12", "--repeats", "2",
                              "--channels", "3"], d)


def day2_of(day1: str, name: str) -> Setup:
    return lambda d, fx: cli(["simulate", name, "--day2-of", day1], d)


def csv_rows(name: str) -> Callable[[Path], list[dict]]:
    return lambda d: list(csv.DictReader((d / name).open()))


def pairs_check(name: str, predicate: Callable[[list[dict]], bool], what: str) -> Callable[[Path], str | None]:
    def check(d: Path) -> str | None:
        try:
            return None if predicate(csv_rows(name)(d)) else what
        except Exception as error:  # noqa: BLE001 - reported as the case's failure
            return f"{name}: check failed ({error})"

    return check


def animals_check(k: int) -> Callable[[Path], str | None]:
    def check(d: Path) -> str | None:
        stores = sorted(p.name for p in (d / "out").glob("animal_*.zarr"))
        return None if stores == [f"animal_{i}.zarr" for i in range(1, k + 1)] else f"out holds {stores}"

    return check


# simulate --animals
for value in ("0", "-1", "abc", "1.5"):
    case(f"animals-{value}", DAYS, f"simulate out {SMALL} --animals {value}", mentions=["--animals"])
case("animals-huge", DAYS, f"simulate out {SMALL} --animals 100000000", mentions=["--animals"], timeout=60,
     note="refused before writing: 10^8 stores do not fit on the disk (it used to write until the disk was full)")
case("animals-into-folder-with-file", DAYS, ANIMALS, write("out/notes.txt", "mine"), mentions=["out"])
case("animals-onto-plain-file", DAYS, ANIMALS, write("out", "mine"), mentions=["out"])
case("animals-over-animals", DAYS, ANIMALS, lambda d, fx: cli(shlex.split(ANIMALS), d), mentions=["out", "--overwrite"])
case("animals-overwrite-animals", DAYS, ANIMALS.replace("--animals 2", "--animals 3") + " --overwrite", lambda d, fx: cli(shlex.split(ANIMALS), d),
     expect=0, allow_changed=["out"], allow_new=["out"], check=animals_check(3), note="success: --overwrite replaces twin's folder of animals")
case("animals-overwrite-store", DAYS, ANIMALS.replace("out", "sim.zarr") + " --overwrite", copy("sim.zarr"), mentions=["sim.zarr"],
     note="--overwrite never turns a session store into a folder of animals")
case("animals-inside-store", DAYS, ANIMALS.replace("out", "sim.zarr/out"), copy("sim.zarr"), mentions=["sim.zarr"])
case("animals-with-day2-of", DAYS, "simulate out --animals 2 --day2-of sim.zarr", copy("sim.zarr"), mentions=["--animals"])
case("animals-one", DAYS, ANIMALS.replace("--animals 2", "--animals 1"), expect=0, allow_new=["out"], check=animals_check(1),
     warns=(), note="success: one animal in OUT/animal_1.zarr")
case("kill-animals", CRASH, f"simulate out {SMALL} --animals 40", expect=0, mode="kill9", kill_when=".out.partial-*/animal_2.zarr",
     then=ANIMALS, allow_new=["out"], timeout=300, check=animals_check(2),
     note="SIGKILL after the first animal: no OUT; the next write removes the staged folder")

# simulate --day2-of
DAY2 = "simulate d2.zarr --day2-of sim.zarr"
case("day2-of-missing", DAYS, "simulate d2.zarr --day2-of nope.zarr", mentions=["nope.zarr"])
case("day2-of-recorded", DAYS, "simulate d2.zarr --day2-of rec.zarr", copy("data.npz"), lambda d, fx: cli(["import", "arrays", "data.npz", "rec.zarr"], d),
     mentions=["rec.zarr"], note="day 2 is drawn from day 1's ground truth")
case("day2-of-mei-store", DAYS, "simulate d2.zarr --day2-of meis.zarr", copy("meis.zarr"), mentions=["meis.zarr"])
case("day2-of-run", DAYS, "simulate d2.zarr --day2-of run", copy("run"), mentions=["run"])
case("day2-of-deleted-chunk", DAYS, DAY2, copy("sim.zarr"), remove("sim.zarr/images/c/0/0/0"), mentions=["sim.zarr", "images"])
case("day2-of-corrupted-truth", DAYS, DAY2, copy("sim.zarr"), flip_bytes("sim.zarr/gt_filter_even/c"), mentions=["sim.zarr", "gt_filter_even"])
case("day2-of-nan-position", DAYS, DAY2, copy("sim.zarr"), zarr_edit("sim.zarr", "cell_x", lambda a: np.where(np.arange(len(a)) == 2, np.nan, a)),
     mentions=["sim.zarr", "cell_x"], note="names the store given, not its session attribute")
case("day2-of-no-truth", DAYS, DAY2, copy("sim.zarr"),
     rewrite_store("sim.zarr", lambda ds: ds.drop_vars([v for v in ds.variables if str(v).startswith("gt_")])),
     mentions=["sim.zarr", "gt_"], note="marked simulated but without its ground truth")
case("day2-of-itself", DAYS, "simulate sim.zarr --day2-of sim.zarr", copy("sim.zarr"), mentions=["sim.zarr"])
case("day2-of-itself-overwrite", DAYS, "simulate sim.zarr --day2-of sim.zarr --overwrite", copy("sim.zarr"), mentions=["sim.zarr"])
case("day2-of-itself-other-spelling", DAYS, "simulate ./sim.zarr/ --day2-of sim.zarr --overwrite", copy("sim.zarr"), mentions=["sim.zarr"])
case("day2-of-inside-day1", DAYS, "simulate sim.zarr/d2.zarr --day2-of sim.zarr", copy("sim.zarr"), mentions=["sim.zarr"])
case("day2-of-over-store", DAYS, "simulate day2.zarr --day2-of sim.zarr", copy("sim.zarr", "day2.zarr"), mentions=["day2.zarr", "--overwrite"])
case("day2-of-with-neurons", DAYS, DAY2 + " --neurons 5", copy("sim.zarr"), mentions=["--neurons"])
case("day2-of-with-channels", DAYS, DAY2 + " --channels 3", copy("sim.zarr"), mentions=["--channels"])
case("day2-of-colour", DAYS, "simulate d2.zarr --day2-of col.zarr", colour_store("col.zarr"), expect=0, allow_new=["d2.zarr"], warns=(),
     check=store_check("d2.zarr", lambda ds: ds["images"].ndim == 4 and "gt_day1_unit" in ds, "day 2 of a colour store is not a colour store"),
     note="success: day 2 of a colour animal shows colour images")
case("day2-of-string-ids", DAYS, DAY2, copy("sim.zarr"), string_ids("sim.zarr"), expect=0, allow_new=["d2.zarr"], warns=(),
     check=store_check("d2.zarr", lambda ds: {str(u) for u in ds["gt_day1_unit"].values} <= {f"cell-{i}" for i in range(8)} | {""},
                       "gt_day1_unit does not hold day 1's string ids"), note="success: the truth keeps day 1's string ids")
case("day2-of-day2", DAYS, "simulate d3.zarr --day2-of day2.zarr", copy("day2.zarr"), expect=0, allow_new=["d3.zarr"], warns=(),
     note="success: day 3 is day 2 of day 2")
case("day2-of-one-cell", DAYS, DAY2, copy("sim.zarr"), rewrite_store("sim.zarr", lambda ds: ds.isel(neuron=[0])), expect=0,
     allow_new=["d2.zarr"], warns=(), note="success: one cell, none lost or new")


def big_day1(d: Path, fx: Fixtures) -> None:
    cli(["simulate", "big.zarr", "--neurons", "8", "--train-images", "4000", "--test-images", "10", "--repeats", "2"], d)


case("kill-day2-of", CRASH, "simulate d2.zarr --day2-of big.zarr", big_day1, expect=0, mode="kill9", kill_when=".d2.zarr.partial-*",
     then="simulate d2.zarr --day2-of big.zarr", allow_new=["d2.zarr"], timeout=300,
     note="SIGKILL mid-write: no store; the same command then succeeds and removes the partial one")

# match
MATCHES = "match sim.zarr day2.zarr --out m.csv"
for flag, value in [("--tolerance", "0"), ("--tolerance", "-1"), ("--tolerance", "nan"), ("--tolerance", "inf"), ("--tolerance", "abc"),
                    ("--tolerance", "1e400")]:
    case(f"match{flag}={value}", MATCH, MATCHES + f" {flag}={value}", copy("sim.zarr", "day2.zarr"), mentions=[flag])
case("match-missing-day1", MISSING, "match nope.zarr day2.zarr --out m.csv", copy("day2.zarr"), mentions=["nope.zarr"])
case("match-missing-day2", MISSING, "match sim.zarr nope.zarr --out m.csv", copy("sim.zarr"), mentions=["nope.zarr"])
case("match-no-positions", MATCH, "match rec.zarr day2.zarr --out m.csv", copy("data.npz", "day2.zarr"),
     lambda d, fx: cli(["import", "arrays", "data.npz", "rec.zarr"], d), mentions=["rec.zarr", "cell_x"])
case("match-nan-position", MATCH, MATCHES, copy("sim.zarr", "day2.zarr"),
     zarr_edit("sim.zarr", "cell_x", lambda a: np.where(np.arange(len(a)) == 2, np.nan, a)), mentions=["sim.zarr", "cell_x"],
     note="it used to end in a traceback from the displacement histogram")
case("match-inf-depth", MATCH, MATCHES, copy("sim.zarr", "day2.zarr"),
     zarr_edit("day2.zarr", "cell_z", lambda a: np.where(np.arange(len(a)) == 0, np.inf, a)), mentions=["day2.zarr", "cell_z"])
case("match-all-nan-positions", MATCH, MATCHES, copy("sim.zarr", "day2.zarr"), zarr_edit("day2.zarr", "cell_y", lambda a: a * np.nan),
     mentions=["day2.zarr", "cell_y"])
case("match-one-cell", MATCH, "match one.zarr day2.zarr --out m.csv", copy("sim.zarr", "day2.zarr"),
     lambda d, fx: shutil.copytree(d / "sim.zarr", d / "one.zarr"), rewrite_store("one.zarr", lambda ds: ds.isel(neuron=[0])),
     mentions=["one.zarr", "day2.zarr"], note="one cell agrees with any shift: its pair (distance 0, confidence 1) used to be written as found")
case("match-other-animal", MATCH, "match sim.zarr col.zarr --out m.csv", copy("sim.zarr"), colour_store("col.zarr"),
     mentions=["sim.zarr", "col.zarr"], note="no shift rests on more than one pair of cells: refused rather than one pair at distance 0")
case("match-tolerance-far-below-jitter", MATCH, MATCHES + " --tolerance 0.5", copy("sim.zarr", "day2.zarr"), mentions=["--tolerance"],
     note="cells move ~3 µm between days: no shift is found at 0.5 µm")
case("match-tolerance-below-jitter", MATCH, MATCHES + " --tolerance 3", copy("sim.zarr", "day2.zarr"), expect=0, allow_new=["m.csv"],
     warns=["--tolerance", "noise"], note="success, with a warning line that the tolerance is within the position noise")
case("match-tolerance-huge", MATCH, MATCHES + " --tolerance 1e300", copy("sim.zarr", "day2.zarr"), expect=0, allow_new=["m.csv"],
     warns=["--tolerance", "neighbouring cells"], note="success, with a warning that neighbouring cells become candidates")
case("match-positions-all-zero", MATCH, MATCHES, copy("sim.zarr", "day2.zarr"),
     rewrite_store("sim.zarr", lambda ds: ds.assign(cell_x=ds["cell_x"] * 0, cell_y=ds["cell_y"] * 0, cell_z=ds["cell_z"] * 0)),
     mentions=["sim.zarr", "one position"], note="positions that were never recorded (all 0)")
case("match-default", MATCH, MATCHES, copy("sim.zarr", "day2.zarr"), expect=0, allow_new=["m.csv"], warns=(),
     check=pairs_check("m.csv", lambda rows: len(rows) == 7, "not the 7 cells kept on day 2"), note="success: no warning")
case("match-identical-stores", MATCH, "match sim.zarr copy.zarr --out m.csv", copy("sim.zarr"), copy_as("sim.zarr", "copy.zarr"), expect=0,
     allow_new=["m.csv"], warns=(), check=pairs_check("m.csv", lambda rows: [(r["day1_unit"], r["day2_unit"]) for r in rows] == [(str(i), str(i)) for i in range(8)],
                                                   "a store matched with its copy does not pair each unit with itself"))
case("match-same-store-twice", MATCH, "match sim.zarr sim.zarr --out m.csv", copy("sim.zarr"), expect=0, allow_new=["m.csv"], warns=(),
     check=pairs_check("m.csv", lambda rows: len(rows) == 8, "not every unit paired with itself"))
case("match-days-swapped", MATCH, "match day2.zarr sim.zarr --out m.csv", copy("sim.zarr", "day2.zarr"), expect=0, allow_new=["m.csv"], warns=(),
     check=pairs_check("m.csv", lambda rows: len(rows) == 7, "swapped days do not find the same 7 pairs"))
case("match-string-and-integer-ids", MATCH, "match sim.zarr day2.zarr --out m.csv", copy("sim.zarr", "day2.zarr"), string_ids("sim.zarr"), expect=0,
     allow_new=["m.csv"], warns=(), check=pairs_check("m.csv", lambda rows: len(rows) == 7 and all(r["day1_unit"].startswith("cell-") for r in rows),
                                                      "day-1 string ids not written"))
case("match-other-image-size", MATCH, "match sim.zarr small.zarr --out m.csv", copy("sim.zarr", "day2.zarr"),
     lambda d, fx: shutil.copytree(d / "day2.zarr", d / "small.zarr"),
     rewrite_store("small.zarr", lambda ds: ds.isel(y=slice(0, 18), x=slice(0, 32))), expect=0, allow_new=["m.csv"], warns=(),
     check=pairs_check("m.csv", lambda rows: len(rows) == 7 and all(r["response_correlation"] == "" for r in rows),
                       "day 2 of other image sizes: not 7 pairs from positions alone"),
     note="success: no image is shared, pairs from positions alone")
def unrecorded_on_test(unit: int) -> Callable:
    def change(ds):
        test = (ds["tier"] == "test").values[:, None] & (np.arange(ds.sizes["neuron"]) == unit)[None]
        return ds.assign(responses=ds["responses"].where(~test))

    return change


case("match-unit-unrecorded-on-shared-images", MATCH, MATCHES, copy("sim.zarr", "day2.zarr"), rewrite_store("day2.zarr", unrecorded_on_test(3)),
     expect=0, allow_new=["m.csv"], warns=(), check=pairs_check("m.csv", lambda rows: len(rows) == 7, "not 7 pairs"),
     note="success: a day-2 unit without responses to the shared images is matched by position, without numpy warnings")
case("match-colour-days", MATCH, "match col.zarr col2.zarr --out m.csv", colour_store("col.zarr"), day2_of("col.zarr", "col2.zarr"), expect=0,
     allow_new=["m.csv"], warns=(), note="success")
case("match-out-missing-folder", MATCH, "match sim.zarr day2.zarr --out nope/m.csv", copy("sim.zarr", "day2.zarr"), mentions=["nope"])
case("match-out-directory", MATCH, MATCHES, copy("sim.zarr", "day2.zarr"), mkdir("m.csv"), mentions=["m.csv"])
case("match-out-is-input", MATCH, "match sim.zarr day2.zarr --out day2.zarr", copy("sim.zarr", "day2.zarr"), mentions=["day2.zarr"])
case("match-out-is-input-overwrite", MATCH, "match sim.zarr day2.zarr --out day2.zarr --overwrite", copy("sim.zarr", "day2.zarr"), mentions=["day2.zarr"])
case("match-out-inside-input", MATCH, "match sim.zarr day2.zarr --out sim.zarr/m.csv", copy("sim.zarr", "day2.zarr"), mentions=["sim.zarr"])
case("match-out-not-csv", MATCH, "match sim.zarr day2.zarr --out m.txt", copy("sim.zarr", "day2.zarr"), mentions=["m.txt", ".csv"])
case("match-onto-user-csv", MATCH, MATCHES, copy("sim.zarr", "day2.zarr"), write("m.csv", "mine\n"), mentions=["m.csv", "--overwrite"])
case("match-overwrite-csv", MATCH, MATCHES + " --overwrite", copy("sim.zarr", "day2.zarr"), write("m.csv", "mine\n"), expect=0,
     allow_changed=["m.csv"], warns=(), note="success: --overwrite replaces the file")
case("match-onto-link", MATCH, MATCHES.replace("m.csv", "link.csv") + " --overwrite", copy("sim.zarr", "day2.zarr"), write("mine.csv", "mine\n"),
     link("mine.csv", "link.csv"), mentions=["link.csv"], note="--overwrite does not write through a link")
case("match-run-as-day1", MATCH, "match run day2.zarr --out m.csv", copy("run", "day2.zarr"), mentions=["run"])
case("match-mei-store", MATCH, "match meis.zarr day2.zarr --out m.csv", copy("meis.zarr", "day2.zarr"), mentions=["meis.zarr"])
case("match-damaged-day2", MATCH, MATCHES, copy("sim.zarr", "day2.zarr"), truncate("day2.zarr/responses/c"), mentions=["day2.zarr", "responses"])

# loop --days
for value in ("0", "3", "two"):
    case(f"loop-days-{value}", DAYS, f"loop out --config loop.toml --days {value}", copy("loop.toml"), mentions=["--days"])
case("loop-days2-recorded-session", DAYS, "loop out --config loop.toml --days 2 --session rec.zarr", copy("loop.toml", "data.npz"),
     lambda d, fx: cli(["import", "arrays", "data.npz", "rec.zarr"], d), mentions=["rec.zarr", "--days"])
case("loop-days2-mei-store", DAYS, "loop out --config loop.toml --days 2 --session meis.zarr", copy("loop.toml", "meis.zarr"), mentions=["meis.zarr"])
case("loop-days2-missing-session", DAYS, "loop out --config loop.toml --days 2 --session nope.zarr", copy("loop.toml"), mentions=["nope.zarr"])
case("loop-days2-into-folder-with-file", DAYS, "loop out --config loop.toml --days 2", copy("loop.toml"), write("out/notes.txt", "mine"), mentions=["out"])
case("loop-days2-out-is-session", DAYS, "loop sim.zarr --config loop.toml --days 2 --session sim.zarr --overwrite", copy("loop.toml", "sim.zarr"),
     mentions=["sim.zarr"])
case("loop-days2-nan-position", DAYS, "loop out --config loop.toml --days 2 --session sim.zarr", copy("loop.toml", "sim.zarr"),
     zarr_edit("sim.zarr", "cell_x", lambda a: np.where(np.arange(len(a)) == 2, np.nan, a)), mentions=["sim.zarr", "cell_x"], timeout=300,
     note="found before the fit, not after it")
case("loop-days2", DAYS, "loop out --config loop.toml --days 2", copy("loop.toml"), expect=0, allow_new=["out"], timeout=600,
     check=lambda d: None if "day2" in json.loads((d / "out/loop.json").read_text()) else "loop.json says nothing of day 2",
     note="success: the miniature two-day loop")

# ---------------------------------------------------------------------------- fit --core
TRANSFER = "transfer"
CORE = "fit day2.zarr --out r2 --config fit.toml --max-epochs 1 --core"
RESUME = "fit day2.zarr --out transfer --config fit.toml --max-epochs 3 --resume"
case("fit-core-missing", TRANSFER, CORE + " nope", copy("day2.zarr", "fit.toml"), mentions=["--core", "nope"])
case("fit-core-is-store", TRANSFER, CORE + " sim.zarr", copy("day2.zarr", "fit.toml", "sim.zarr"), mentions=["--core", "sim.zarr"])
case("fit-core-is-file", TRANSFER, CORE + " core", copy("day2.zarr", "fit.toml"), write("core", "x"), mentions=["--core", "core"])
case("fit-core-is-mei-store", TRANSFER, CORE + " meis.zarr", copy("day2.zarr", "fit.toml", "meis.zarr"), mentions=["--core", "meis.zarr"])
case("fit-core-is-empty-folder", TRANSFER, CORE + " empty", copy("day2.zarr", "fit.toml"), mkdir("empty"), mentions=["--core", "empty"])
case("fit-core-other-channels", TRANSFER, "fit col.zarr --out r2 --config fit.toml --max-epochs 1 --core run", copy("run", "fit.toml"),
     colour_store("col.zarr"), mentions=["col.zarr", "channel"], note="a gray core on colour images")
case("fit-core-no-checkpoints", TRANSFER, CORE + " run", copy("run", "day2.zarr", "fit.toml"), remove("run/checkpoints"), mentions=["run", "checkpoint"])
case("fit-core-truncated-checkpoint", TRANSFER, CORE + " run", copy("run", "day2.zarr", "fit.toml"),
     lambda d, fx: [p.write_bytes(b"") for p in (d / "run/checkpoints/best").rglob("*") if p.is_file() and "arrays" in p.parts],
     mentions=["run"])
case("fit-core-config-edited", TRANSFER, "fit day2.zarr --out r2 --max-epochs 1 --core run", copy("run", "day2.zarr"),
     lambda d, fx: (d / "run/config.toml").write_text((d / "run/config.toml").read_text().replace("core_channels = 4", "core_channels = 8")),
     mentions=["run"], note="the source run's config no longer fits its checkpoint")
case("fit-core-config-conflict", TRANSFER, "fit day2.zarr --out r2 --config c8.toml --max-epochs 1 --core run", copy("run", "day2.zarr"),
     toml("c8.toml", {"model": {"core_channels": 8}}), mentions=["c8.toml", "core_channels"])
case("fit-core-sessions-garbage", TRANSFER, CORE + " run", copy("run", "day2.zarr", "fit.toml"), write("run/sessions.json", "{nope"),
     mentions=["sessions.json"])
case("fit-core-is-out", TRANSFER, "fit day2.zarr --out run --config fit.toml --max-epochs 1 --core run", copy("run", "day2.zarr", "fit.toml"),
     mentions=["run"])
case("fit-core-is-out-overwrite", TRANSFER, "fit day2.zarr --out run --config fit.toml --max-epochs 1 --core run --overwrite",
     copy("run", "day2.zarr", "fit.toml"), mentions=["run"], note="--overwrite never replaces the core it reads")
case("fit-core-inside-out-overwrite", TRANSFER, "fit day2.zarr --out runs --config fit.toml --max-epochs 1 --core runs/run --overwrite",
     copy("day2.zarr", "fit.toml"), copy_as("run", "runs/run"), write("runs/.twin", "written by twin\n"), mentions=["runs"],
     note="a folder holding the core is not replaced either")
case("fit-core-both-freeze-flags", TRANSFER, CORE + " run --freeze-core --core-learning-rate 0.001", copy("run", "day2.zarr", "fit.toml"),
     mentions=["--freeze-core", "--core-learning-rate"])
for value in ("-0.001", "nan", "inf", "abc"):
    case(f"fit-core-learning-rate={value}", TRANSFER, CORE + f" run --core-learning-rate={value}", copy("run", "day2.zarr", "fit.toml"),
         mentions=["--core-learning-rate"])
case("fit-freeze-without-core", TRANSFER, "fit day2.zarr --out r2 --config fit.toml --freeze-core", copy("day2.zarr", "fit.toml"),
     mentions=["--freeze-core", "--core"])
case("fit-core-learning-rate-without-core", TRANSFER, "fit day2.zarr --out r2 --config fit.toml --core-learning-rate 0.01",
     copy("day2.zarr", "fit.toml"), mentions=["--core-learning-rate", "--core"])
case("fit-core-ensemble-size", TRANSFER, CORE + " ens --seeds 3", copy("sim.zarr", "day2.zarr", "fit.toml"),
     lambda d, fx: cli(["fit", "sim.zarr", "--out", "ens", "--config", "fit.toml", "--max-epochs", "1", "--seeds", "2"], d),
     mentions=["--seeds"], timeout=300, note="an ensemble of 2 cores for 3 members")
case("fit-core-resume-other-core", TRANSFER, RESUME + " --core run2", copy("transfer", "day2.zarr", "fit.toml"), copy_as("run", "run2"),
     mentions=["--core", "transfer"])
case("fit-core-resume-unfreeze", TRANSFER, RESUME + " --core-learning-rate 0.01", copy("transfer", "day2.zarr", "fit.toml"),
     mentions=["--core", "transfer"])
case("fit-core-resume-scratch-run", TRANSFER, "fit sim.zarr --out run --config fit.toml --max-epochs 3 --resume --core run2",
     copy("run", "sim.zarr", "fit.toml"), copy_as("run", "run2"), mentions=["--core", "run"])
for name, text in [("garbage", "{nope"), ("list", "[]"), ("no-keys", "{}"),
                   ("wrong-types", json.dumps({"source": 3, "frozen": "yes", "core_learning_rate": "fast"})),
                   ("negative-rate", json.dumps({"source": "/x", "frozen": False, "core_learning_rate": -1.0}))]:
    case(f"fit-core-resume-core-json-{name}", TRANSFER, RESUME, copy("transfer", "day2.zarr", "fit.toml"), write("transfer/core.json", text),
         mentions=["core.json"], note="a damaged provenance file")
case("fit-core-frozen", TRANSFER, CORE + " run --freeze-core", copy("run", "day2.zarr", "fit.toml"), expect=0, allow_new=["r2"],
     check=lambda d: None if json.loads((d / "r2/core.json").read_text())["frozen"] is True else "core.json does not say frozen",
     note="success: readouts on a frozen core, its provenance in core.json")
case("kill-fit-core-then-resume", CRASH, "fit day2.zarr --out r2 --config fit.toml --max-epochs 30 --core run --freeze-core",
     copy("run", "day2.zarr", "fit.toml"), expect=0, mode="kill9", kill_when="r2/checkpoints/latest/2",
     then="fit day2.zarr --out r2 --config fit.toml --max-epochs 3 --resume", allow_new=["r2"], killed_leaves=["r2"], timeout=300,
     note="SIGKILL after epoch 2; --resume without the core flags reads core.json and finishes")

# ---------------------------------------------------------------------------- screen, mds, centre-surround, transparency, precision
SCREEN, MDS, CONTEXT, PRECISION = "screen", "mds", "mei-context", "precision"
SCR = "screen run imgs.npy --out s.zarr"


def images_npy(name: str = "imgs.npy", n: int = 6, shape=(36, 64), dtype=np.uint8, fill=None) -> Setup:
    """An .npy of ``n`` random images ``shape`` ((y, x) or (channel, y, x)); ``fill`` replaces every value."""

    def step(d: Path, fx: Fixtures) -> None:
        values = np.random.default_rng(0).integers(0, 256, (n, *shape)).astype(dtype)
        if fill is not None:
            values[...] = fill
        save_npy(name, values)(d, fx)

    return step


def png_folder(name: str = "imgs", n: int = 3, size=(64, 36), mode: str = "L") -> Setup:
    def step(d: Path, fx: Fixtures) -> None:
        (d / name).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(n):
            channels = {"L": (), "LA": (2,), "RGB": (3,), "RGBA": (4,)}[mode]
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], *channels)).astype(np.uint8), mode).save(d / name / f"im{i}.png")

    return step


def zarr_array(name: str, shape, dtype="uint8") -> Setup:
    def step(d: Path, fx: Fixtures) -> None:
        import zarr

        array = zarr.create_array(str(d / name), shape=shape, dtype=dtype)
        array[...] = np.ones(shape, dtype)

    return step


def rewrite_meis(name: str, change: Callable) -> Setup:
    """Rewrite the MEI store ``name`` through twin's own writer with ``change(ds, case folder)``."""

    def step(d: Path, fx: Fixtures) -> None:
        from twin.mei.store import open_meis, write_meis

        ds = change(open_meis(d / name).load(), d)
        write_meis(ds, d / (name + ".new"))
        shutil.rmtree(d / name)
        (d / (name + ".new")).rename(d / name)

    return step


def meis_attrs(**changes) -> Setup:
    """meis.zarr made by the case's own run (its attribute run points there), with ``changes``."""
    return rewrite_meis("meis.zarr", lambda ds, d: ds.assign_attrs(run=str(d / "run"), **changes))


def screen_check(d: Path) -> str | None:
    from twin.screen import summarize

    try:
        summary = summarize(d / "s.zarr")
    except Exception as error:  # noqa: BLE001 - reported as the case's failure
        return f"s.zarr: check failed ({error})"
    return None if summary["neurons"] > 0 and (d / "s.png").is_file() else "s.zarr or s.png incomplete"


# screen: inputs
case("screen-images-missing", SCREEN, SCR, own_run, mentions=["imgs.npy"])
case("screen-folder-missing", SCREEN, "screen run imgs --out s.zarr", own_run, mentions=["imgs"])
case("screen-truncated-npy", SCREEN, SCR, own_run, images_npy(), truncate("imgs.npy"), mentions=["imgs.npy"])
case("screen-npy-garbage", SCREEN, SCR, own_run, write("imgs.npy", b"\x93NUMPY garbage"), mentions=["imgs.npy"])
case("screen-npy-pickled", SCREEN, SCR, own_run, save_npy("imgs.npy", np.array([{"a": 1}], object), allow_pickle=True), mentions=["imgs.npy"])
case("screen-npy-2d", SCREEN, SCR, own_run, save_npy("imgs.npy", np.zeros((36, 64), np.uint8)), mentions=["imgs.npy"])
case("screen-npy-no-images", SCREEN, SCR, own_run, save_npy("imgs.npy", np.zeros((0, 36, 64), np.uint8)), mentions=["imgs.npy"])
case("screen-npy-nan", SCREEN, SCR, own_run, images_npy(dtype=np.float32, fill=np.nan), mentions=["imgs.npy"])
case("screen-npy-inf", SCREEN, SCR, own_run, images_npy(dtype=np.float32, fill=np.inf), mentions=["imgs.npy"])
case("screen-npy-not-pixels", SCREEN, SCR, own_run, images_npy(dtype=np.float32, fill=1000.0), mentions=["imgs.npy"])
case("screen-npy-bool", SCREEN, SCR, own_run, images_npy(dtype=bool), mentions=["imgs.npy"])
case("screen-npy-2-channels", SCREEN, SCR, own_run, images_npy(shape=(2, 36, 64)), mentions=["imgs.npy"])
case("screen-npy-4-channels", SCREEN, SCR, own_run, images_npy(shape=(4, 36, 64)), mentions=["imgs.npy"])
case("screen-npy-1x1", SCREEN, SCR, own_run, images_npy(shape=(1, 1)), mentions=["imgs.npy"])
case("screen-npy-other-aspect", SCREEN, SCR, own_run, images_npy(shape=(64, 64)), mentions=["imgs.npy"])
case("screen-zip-of-text", SCREEN, "screen run imgs.zip --out s.zarr", own_run,
     lambda d, fx: zipfile.ZipFile(d / "imgs.zip", "w").writestr("readme.txt", "hi"), mentions=["imgs.zip"])
case("screen-zip-truncated", SCREEN, "screen run imgs.zip --out s.zarr", own_run, png_folder(),
     lambda d, fx: shutil.make_archive(str(d / "imgs"), "zip", d, "imgs"), remove("imgs"), truncate("imgs.zip"), mentions=["imgs.zip"])
case("screen-empty-folder", SCREEN, "screen run imgs --out s.zarr", own_run, mkdir("imgs"), mentions=["imgs"])
case("screen-folder-of-notes", SCREEN, "screen run imgs --out s.zarr", own_run, write("imgs/a.txt", "x"), mentions=["imgs"])
case("screen-corrupt-png", SCREEN, "screen run imgs --out s.zarr", own_run, png_folder(), write("imgs/im1.png", b"\x89PNG\r\n\x1a\n broken"),
     mentions=["im1.png"])
case("screen-rgba-png-grey-run", SCREEN, "screen run imgs --out s.zarr --top 2", own_run, png_folder(mode="RGBA"), expect=0,
     allow_new=["s.zarr", "s.png"], check=screen_check, note="image files are decoded to the run's grey")
case("screen-1x1-png", SCREEN, "screen run imgs --out s.zarr", own_run, png_folder(size=(1, 1)), mentions=["imgs"])
case("screen-zarr-array-2d", SCREEN, "screen run a.zarr --out s.zarr", own_run, zarr_array("a.zarr", (36, 64)), mentions=["a.zarr"])
case("screen-zarr-array-5d", SCREEN, "screen run a.zarr --out s.zarr", own_run, zarr_array("a.zarr", (2, 1, 1, 36, 64)), mentions=["a.zarr"])
case("screen-zarr-array-bool", SCREEN, "screen run a.zarr --out s.zarr", own_run, zarr_array("a.zarr", (3, 36, 64), "bool"), mentions=["a.zarr"])
case("screen-zarr-array-nan", SCREEN, "screen run a.zarr --out s.zarr", own_run, zarr_array("a.zarr", (3, 36, 64), "float32"),
     zarr_edit("a.zarr", "", lambda a: a * np.nan), mentions=["a.zarr"])
case("screen-zarr-empty-group", SCREEN, "screen run a.zarr --out s.zarr", own_run,
     lambda d, fx: __import__("zarr").open_group(str(d / "a.zarr"), mode="w"), mentions=["a.zarr"])
case("screen-mei-store-as-images", SCREEN, "screen run meis.zarr --out s.zarr", own_run, copy("meis.zarr"), mentions=["meis.zarr"])
case("screen-run-as-images", SCREEN, "screen run run --out s.zarr", own_run, mentions=["run"])
case("screen-store-as-images", SCREEN, "screen run sim.zarr --out s.zarr --top 3", own_run, expect=0, allow_new=["s.zarr", "s.png"],
     check=screen_check, note="a session store's images are a valid source")
# screen: values
case("screen-top-huge", SCREEN, SCR + " --top 2000000000", own_run, images_npy(), mentions=["--top"], mode="subprocess",
     memory_limit=3 << 30, timeout=120, note="kept values for 8 neurons x 2e9 ranks do not fit; refused before allocating")
case("screen-top-more-than-images", SCREEN, SCR + " --top 50", own_run, images_npy(), expect=0, allow_new=["s.zarr", "s.png"],
     check=screen_check, note="keeps every image when there are fewer than --top")
for value in ("0", "-1", "abc"):
    case(f"screen-top-{value}", SCREEN, SCR + f" --top {value}", own_run, images_npy(), mentions=["--top"])
    case(f"screen-stride-{value}", SCREEN, SCR + f" --crops 18x32 --stride {value}", own_run, images_npy(), mentions=["--stride"])
case("screen-stride-without-crops", SCREEN, SCR + " --stride 4", own_run, images_npy(), mentions=["--stride"])
case("screen-crops-bigger-than-images", SCREEN, SCR + " --crops 72x128", own_run, images_npy(), mentions=["--crops"])
case("screen-crops-other-aspect", SCREEN, SCR + " --crops 30x30", own_run, images_npy(), mentions=["--crops"])
case("screen-crops-garbage", SCREEN, SCR + " --crops big", own_run, images_npy(), mentions=["--crops"])
case("screen-crops-zero", SCREEN, SCR + " --crops 0x0", own_run, images_npy(), mentions=["--crops"])
case("screen-crops-huge-stride", SCREEN, SCR + " --crops 18x32 --stride 100000", own_run, images_npy(), expect=0,
     allow_new=["s.zarr", "s.png"], check=screen_check, note="one window per image")
case("screen-neurons-out-of-range", SCREEN, SCR + " --neurons 99", own_run, images_npy(), mentions=["--neurons"])
case("screen-neurons-unknown-id", SCREEN, SCR + " --neurons id:nope", own_run, images_npy(), mentions=["--neurons"])
case("screen-neurons-empty", SCREEN, SCR + " --neurons=", own_run, images_npy(), mentions=["--neurons"])
case("screen-neurons-empty-range", SCREEN, SCR + " --neurons 5:2", own_run, images_npy(), mentions=["--neurons"])
case("screen-session-out-of-range", SCREEN, SCR + " --session 3", own_run, images_npy(), mentions=["--session"])
case("screen-masked-without-meis", SCREEN, SCR + " --masked", own_run, images_npy(), mentions=["--masked", "--meis"])
case("screen-meis-missing", SCREEN, SCR + " --meis nope.zarr", own_run, images_npy(), mentions=["nope.zarr"])
case("screen-meis-is-session-store", SCREEN, SCR + " --meis sim.zarr", own_run, images_npy(), mentions=["sim.zarr"])
case("screen-meis-other-neurons", SCREEN, SCR + " --meis meis.zarr --neurons 5:7", own_run, images_npy(), copy("meis.zarr"), meis_attrs(),
     mentions=["meis.zarr"])
case("screen-meis-other-session", SCREEN, SCR + " --meis meis.zarr", own_run, images_npy(), copy("meis.zarr"),
     meis_attrs(session=1), mentions=["meis.zarr"])
case("screen-meis-other-units", SCREEN, SCR + " --meis meis.zarr", own_run, images_npy(), copy("meis.zarr"), meis_attrs(),
     rewrite_meis("meis.zarr", lambda ds, d: ds.assign(unit_id=ds["unit_id"] + 1000)), mentions=["meis.zarr"],
     note="MEIs of other units (another run's)")
case("screen-meis-other-run-attr", SCREEN, SCR + " --meis meis.zarr", own_run, images_npy(), copy("meis.zarr"), mentions=["meis.zarr", "run"],
     note="meis.zarr was made by another copy of the run")
case("screen-meis-own-run", SCREEN, SCR + " --meis meis.zarr --masked --top 2", own_run, images_npy(), copy("meis.zarr"), meis_attrs(),
     expect=0, allow_new=["s.zarr", "s.png"], check=screen_check)
case("screen-meis-other-size", SCREEN, SCR + " --meis meis.zarr", own_run, images_npy(), copy("meis.zarr"), meis_attrs(),
     rewrite_meis("meis.zarr", lambda ds, d: ds.isel(y=slice(0, 18), x=slice(0, 32))), mentions=["meis.zarr"])
# screen: outputs
case("screen-out-without-zarr", SCREEN, "screen run imgs.npy --out s", own_run, images_npy(), mentions=["--out"])
case("screen-over-store", SCREEN, SCR, own_run, images_npy(), write("s.zarr/keep.txt", "mine"), mentions=["s.zarr"])
case("screen-over-png", SCREEN, SCR, own_run, images_npy(), write("s.png", "mine"), mentions=["s.png"])
case("screen-onto-its-images", SCREEN, "screen run a.zarr --out a.zarr --overwrite", own_run, zarr_array("a.zarr", (3, 36, 64)),
     mentions=["a.zarr"])
case("screen-inside-its-images", SCREEN, "screen run imgs --out imgs/s.zarr --top 2", own_run, png_folder(), expect=0,
     allow_new=["imgs/s.zarr", "imgs/s.png"], check=lambda d: screen_check(d / "imgs"),
     note="as every command: an output may lie in an input folder, not over or inside an input store")
case("screen-inside-run-store", SCREEN, "screen run imgs.npy --out sim.zarr/s.zarr", own_run, images_npy(), mentions=["sim.zarr"])
case("screen-inside-run", SCREEN, "screen run imgs.npy --out run/s.zarr --top 2", own_run, images_npy(), expect=0,
     allow_new=["run/s.zarr", "run/s.png"], check=lambda d: screen_check(d / "run"), note="as twin mei --out run/m.zarr")
case("screen-readonly-parent", SCREEN, f"screen run imgs.npy --out {readonly_parent()}/twin-adversarial.zarr", own_run, images_npy(),
     lock("locked"), mentions=["twin-adversarial"])
case("screen-missing-parent", SCREEN, "screen run imgs.npy --out nope/s.zarr", own_run, images_npy(), mentions=["nope"])
case("screen-summary-session-store", SCREEN, "screen --summary sim.zarr", copy("sim.zarr"), mentions=["sim.zarr"])
case("screen-summary-mei-store", SCREEN, "screen --summary meis.zarr", copy("meis.zarr"), mentions=["meis.zarr"])
case("screen-summary-missing", SCREEN, "screen --summary nope.zarr", mentions=["nope.zarr"])
case("screen-summary-file", SCREEN, "screen --summary s.zarr", write("s.zarr", "x"), mentions=["s.zarr"])
case("screen-summary-with-run", SCREEN, "screen run --summary sim.zarr", own_run, mentions=["--summary"])
case("screen-batch-size-huge", SCREEN, SCR + " --batch-size 1000000000", own_run, images_npy(), mentions=["--batch-size"],
     mode="subprocess", memory_limit=3 << 30, timeout=120, note="a batch of 10^9 crops does not fit; refused, not allocated")
case("screen-overwrite-user-folder", SCREEN, SCR + " --overwrite", own_run, images_npy(), write("s.zarr/keep.txt", "mine"),
     mentions=["s.zarr"], note="--overwrite replaces only a store twin wrote")
case("screen-overwrite-screen", SCREEN, SCR + " --overwrite --top 2", own_run, images_npy(),
     lambda d, fx: cli(["screen", "run", "imgs.npy", "--out", "s.zarr", "--top", "3"], d), expect=0,
     allow_changed=["s.zarr", "s.png"], allow_new=["s.zarr"], check=screen_check)
case("screen-screen-store-as-images", SCREEN, "screen run s.zarr --out t.zarr", own_run, images_npy(),
     lambda d, fx: cli(["screen", "run", "imgs.npy", "--out", "s.zarr", "--top", "2"], d), mentions=["s.zarr", "twin screen"])
case("fit-screen-store", SCREEN, "fit s.zarr --out r --config fit.toml", own_run, images_npy(), copy("fit.toml"),
     lambda d, fx: cli(["screen", "run", "imgs.npy", "--out", "s.zarr", "--top", "2"], d), mentions=["s.zarr", "twin screen"])
case("screen-summary-deleted-chunk", SCREEN, "screen --summary s.zarr", own_run, images_npy(),
     lambda d, fx: cli(["screen", "run", "imgs.npy", "--out", "s.zarr", "--top", "2"], d),
     lambda d, fx: first_file(d / "s.zarr/top_response").unlink(), mentions=["s.zarr"])
case("screen-no-arguments", SCREEN, "screen", mentions=["RUN"])
case("screen-no-out", SCREEN, "screen run imgs.npy", own_run, images_npy(), mentions=["--out"])

# mds
MDS_RUN = "mds run --config mei.toml --max-iter 1 --out c.zarr"
for value in ("0", "1", "-1", "autox", "2.5", "100"):
    case(f"mds-clusters-{value}", MDS, MDS_RUN + f" --clusters={value}", own_run, copy("mei.toml"), mentions=["--clusters"])
case("mds-one-neuron", MDS, MDS_RUN + " --neurons 0", own_run, copy("mei.toml"), mentions=["--neurons"])
case("mds-clusters-more-than-neurons", MDS, MDS_RUN + " --neurons 0:3 --clusters 4", own_run, copy("mei.toml"), mentions=["--clusters"])
for value in ("0", "-1", "nan", "inf"):
    case(f"mds-temperature-{value}", MDS, MDS_RUN + f" --temperature={value}", own_run, copy("mei.toml"), mentions=["--temperature"])
case("mds-merge-threshold-nan", MDS, MDS_RUN + " --merge-threshold nan", own_run, copy("mei.toml"), mentions=["--merge-threshold"])
case("mds-out-without-zarr", MDS, "mds run --config mei.toml --out c", own_run, copy("mei.toml"), mentions=["--out"])
case("mds-over-store", MDS, MDS_RUN, own_run, copy("mei.toml"), write("c.zarr/keep.txt", "mine"), mentions=["c.zarr"])
case("mds-over-png", MDS, MDS_RUN, own_run, copy("mei.toml"), write("c.png", "mine"), mentions=["c.png"])
case("mds-over-json", MDS, MDS_RUN, own_run, copy("mei.toml"), write("c.json", "mine"), mentions=["c.json"])
case("mds-inside-run-store", MDS, "mds run --config mei.toml --out sim.zarr/c.zarr", own_run, copy("mei.toml"), mentions=["sim.zarr"])
case("mds-readonly-parent", MDS, f"mds run --config mei.toml --max-iter 1 --json --out {readonly_parent()}/twin-adversarial.zarr", own_run,
     copy("mei.toml"), lock("locked"), mentions=["twin-adversarial"],
     note="--json: no progress bar; as root /sys is found unwritable only when writing, after the work")
case("mds-store-as-run", MDS, "mds sim.zarr --out c.zarr", copy("sim.zarr"), mentions=["sim.zarr"])
case("mds-neurons-out-of-range", MDS, MDS_RUN + " --neurons 0:99", own_run, copy("mei.toml"), mentions=["--neurons"])
case("mds-two-clusters", MDS, MDS_RUN + " --clusters 2", own_run, copy("mei.toml"), expect=0, allow_new=["c.zarr", "c.png", "c.json"],
     note="the smallest valid clustering")
for span in ("0:2", "0:3", "0,0,1"):
    case(f"mds-auto-neurons-{span}", MDS, MDS_RUN + f" --neurons {span}", own_run, copy("mei.toml"), expect=(0, 2), mentions=["--neurons"],
         allow_new=["c.zarr", "c.png", "c.json"], note="automatic K on 2 or 3 neurons: clustered, or refused in one line")
case("mds-store-as-images", MDS, "screen run c.zarr --out s.zarr", own_run, copy("mei.toml"),
     lambda d, fx: cli(MDS_RUN.split() + ["--clusters", "2", "--json"], d), mentions=["c.zarr", "twin mds"])

# mei --surround / --transparency
SURROUND = "mei run --neurons 0:2 --config mei.toml --out s.zarr --surround excite"
case("surround-without-centre", CONTEXT, SURROUND, own_run, copy("mei.toml"), mentions=["--centre"])
case("centre-without-surround", CONTEXT, "mei run --neurons 0:2 --config mei.toml --out s.zarr --centre meis.zarr", own_run,
     copy("mei.toml", "meis.zarr"), meis_attrs(), mentions=["--centre"])
case("surround-centre-missing", CONTEXT, SURROUND + " --centre nope.zarr", own_run, copy("mei.toml"), mentions=["nope.zarr"])
case("surround-bogus", CONTEXT, SURROUND.replace("excite", "inhibit") + " --centre meis.zarr", own_run, copy("mei.toml", "meis.zarr"), meis_attrs(),
     mentions=["--surround"])
case("surround-centre-other-neurons", CONTEXT, SURROUND.replace("0:2", "5:7") + " --centre meis.zarr", own_run,
     copy("mei.toml", "meis.zarr"), meis_attrs(), mentions=["meis.zarr", "neuron"])
case("surround-centre-other-run", CONTEXT, SURROUND + " --centre meis.zarr", own_run, copy("mei.toml", "meis.zarr"),
     mentions=["meis.zarr", "run"], note="meis.zarr was made by another copy of the run")
case("surround-centre-other-session", CONTEXT, SURROUND + " --centre meis.zarr", own_run, copy("mei.toml", "meis.zarr"), meis_attrs(),
     meis_attrs(session=1), mentions=["meis.zarr", "session"])
case("surround-centre-other-units", CONTEXT, SURROUND + " --centre meis.zarr", own_run, copy("mei.toml", "meis.zarr"), meis_attrs(),
     rewrite_meis("meis.zarr", lambda ds, d: ds.assign(unit_id=ds["unit_id"] + 1000)), mentions=["meis.zarr", "unit_id"])
case("surround-centre-other-size", CONTEXT, SURROUND + " --centre meis.zarr", own_run, copy("mei.toml", "meis.zarr"), meis_attrs(),
     rewrite_meis("meis.zarr", lambda ds, d: ds.isel(y=slice(0, 18), x=slice(0, 32))), mentions=["meis.zarr"])
case("surround-centre-of-own-run", CONTEXT, SURROUND + " --centre meis.zarr", own_run, copy("mei.toml", "meis.zarr"), meis_attrs(),
     expect=0, allow_new=["s.zarr", "s.png"], note="the valid counterpart of the centre cases")
case("surround-centre-session-store", CONTEXT, SURROUND + " --centre sim.zarr", own_run, copy("mei.toml"), mentions=["sim.zarr"])
case("surround-centre-npy-other-aspect", CONTEXT, SURROUND + " --centre c.npy", own_run, copy("mei.toml"), images_npy("c.npy", 2, (20, 20)),
     mentions=["c.npy"])
case("surround-centre-npy-grey", CONTEXT, SURROUND + " --centre c.npy", own_run, copy("mei.toml"), images_npy("c.npy", 1, fill=128),
     mentions=["c.npy"])
case("surround-centre-npy-nan", CONTEXT, SURROUND + " --centre c.npy", own_run, copy("mei.toml"),
     images_npy("c.npy", 1, dtype=np.float32, fill=np.nan), mentions=["c.npy"])
case("surround-centre-npy-count", CONTEXT, SURROUND + " --centre c.npy", own_run, copy("mei.toml"), images_npy("c.npy", 3),
     mentions=["c.npy"], note="three patches for two neurons")
case("surround-centre-truncated", CONTEXT, SURROUND + " --centre c.npy", own_run, copy("mei.toml"), images_npy("c.npy", 1),
     truncate("c.npy"), mentions=["c.npy"])
case("surround-with-deis", CONTEXT, SURROUND + " --centre meis.zarr --deis 2", own_run, copy("mei.toml", "meis.zarr"), meis_attrs(),
     mentions=["--deis"])
case("surround-with-transparency", CONTEXT, SURROUND + " --centre meis.zarr --transparency", own_run, copy("mei.toml", "meis.zarr"), meis_attrs(),
     mentions=["--transparency"])
case("surround-centre-is-out", CONTEXT, SURROUND.replace("s.zarr", "meis.zarr") + " --centre meis.zarr --overwrite", own_run,
     copy("mei.toml", "meis.zarr"), meis_attrs(), mentions=["meis.zarr"])
TRANSPARENT = "mei run --neurons 0:2 --config mei.toml --out t.zarr --transparency"
case("screen-meis-surround-store", SCREEN, SCR + " --meis sur.zarr --masked", own_run, images_npy(), copy("mei.toml", "meis.zarr"), meis_attrs(),
     lambda d, fx: cli(SURROUND.replace("s.zarr", "sur.zarr").split() + ["--centre", "meis.zarr", "--json"], d), mentions=["sur.zarr"],
     note="surround images are not MEIs: their masks and activations mean something else")
case("screen-meis-transparent-store", SCREEN, SCR + " --meis t.zarr --masked", own_run, images_npy(), copy("mei.toml"),
     lambda d, fx: cli(TRANSPARENT.split() + ["--json"], d), mentions=["t.zarr"])
case("transparency-background-missing", CONTEXT, TRANSPARENT + " --background nope.npy", own_run, copy("mei.toml"), mentions=["nope.npy"])
case("transparency-background-word", CONTEXT, TRANSPARENT + " --background pink", own_run, copy("mei.toml"), mentions=["pink"])
case("transparency-background-3-channels", CONTEXT, TRANSPARENT + " --background b.npy", own_run, copy("mei.toml"),
     images_npy("b.npy", 4, (3, 36, 64)), mentions=["b.npy"])
case("transparency-background-2-channels", CONTEXT, TRANSPARENT + " --background b.npy", own_run, copy("mei.toml"),
     images_npy("b.npy", 4, (2, 36, 64)), mentions=["b.npy"])
case("transparency-background-nan", CONTEXT, TRANSPARENT + " --background b.npy", own_run, copy("mei.toml"),
     images_npy("b.npy", 4, dtype=np.float32, fill=np.nan), mentions=["b.npy"])
case("transparency-background-empty-folder", CONTEXT, TRANSPARENT + " --background b", own_run, copy("mei.toml"), mkdir("b"),
     mentions=["b"])
case("transparency-background-mei-store", CONTEXT, TRANSPARENT + " --background meis.zarr", own_run, copy("mei.toml", "meis.zarr"), meis_attrs(),
     mentions=["meis.zarr"])
case("transparency-background-session-store", CONTEXT, TRANSPARENT + " --background sim.zarr", own_run, copy("mei.toml"), expect=0,
     allow_new=["t.zarr", "t.png"], note="a session store's images as backgrounds")
case("background-without-transparency", CONTEXT, "mei run --neurons 0:2 --config mei.toml --out t.zarr --background noise", own_run,
     copy("mei.toml"), mentions=["--background"])
case("transparency-with-deis", CONTEXT, TRANSPARENT + " --deis 2", own_run, copy("mei.toml"), mentions=["--deis"])

# [fit] / [mei] precision
for value in ('"float16"', '"bf16"', "1", '"BFLOAT16"', "true"):
    label = value.strip('"').lower()
    case(f"precision-fit-{label}", PRECISION, "fit sim.zarr --out r --config p.toml", copy("sim.zarr"),
         toml("p.toml", f"[fit]\nprecision = {value}\n"), mentions=["p.toml", "precision"])
    case(f"precision-mei-{label}", PRECISION, "mei run --neurons 0:2 --out m.zarr --config p.toml", own_run,
         toml("p.toml", f"[mei]\nprecision = {value}\n"), mentions=["p.toml", "precision"])

# simulate --types
TYPES = "simulate t.zarr --neurons 8 --train-images 20 --test-images 2 --repeats 2"
for value in ("-1", "abc", "1.5"):
    case(f"simulate-types-{value}", "cli-value", TYPES + f" --types {value}", mentions=["--types"])
case("simulate-types-more-than-neurons", "cli-value", TYPES + " --types 20", mentions=["--types"])
case("simulate-types-huge", "cli-value", TYPES + " --types 10000000000", mentions=["--types"])
case("simulate-types-with-day2-of", "cli-value", "simulate t.zarr --day2-of sim.zarr --types 2", copy("sim.zarr"), mentions=["--types"])
case("simulate-types-one", "cli-value", TYPES + " --types 1", expect=0, allow_new=["t.zarr"], note="all neurons of one type")


# select on a recording without repeats
def no_repeats_run(d: Path, fx: Fixtures) -> None:
    fx.copy("data.npz", d)
    fx.copy("fit.toml", d)
    cli(["import", "arrays", "data.npz", "rec.zarr"], d)
    cli(["fit", "rec.zarr", "--out", "run", "--config", "fit.toml"], d)


case("select-no-repeats", RUN, "select run --min-distance 0", no_repeats_run, expect=0,
     note="no oracle: every neuron counts as reliable, said in the output")
case("select-no-repeats-json", RUN, "select run --min-distance 0 --json", no_repeats_run, expect=0)

# naturalness fields of the export manifest
bad_stimuli("closeloop-spectral-kl-text", CLOSELOOP, ["manifest.json", "spectral_kl"], edit_json(MANIFEST, first_stimulus("spectral_kl", "low")))
bad_stimuli("closeloop-spectral-kl-nan", CLOSELOOP, ["manifest.json", "spectral_kl"], edit_json(MANIFEST, first_stimulus("spectral_kl", float("nan"))))
bad_stimuli("closeloop-spectral-slope-list", CLOSELOOP, ["manifest.json", "natural_spectral_slope"],
            edit_json(MANIFEST, lambda m: m.update(natural_spectral_slope=[1, 2]) if "natural_spectral_slope" in m
                      else first_stimulus("natural_spectral_slope", [1, 2])(m)))
bad_stimuli("closeloop-spectral-kl-absent", CLOSELOOP, [], edit_json(MANIFEST, lambda m: [s.pop("spectral_kl", None) for s in m["stimuli"]]),
            expect=0, allow_new=["rep"], note="stimuli exported before the naturalness fields existed")
bad_stimuli("respond-spectral-kl-text", RESPOND, ["manifest.json", "spectral_kl"], edit_json(MANIFEST, first_stimulus("spectral_kl", "low")))


# ---------------------------------------------------------------------------- video sessions, twins and MEVs
VSIM = "simulate s.zarr --video --neurons 4 --train-images 4 --test-images 2 --repeats 2 --frames 10 --size 12x16"
for flag, value in [("--frames", "0"), ("--frames", "-5"), ("--frames", "abc"), ("--frames", "1.5"), ("--frame-rate", "0"),
                    ("--frame-rate", "-30"), ("--frame-rate", "nan"), ("--frame-rate", "inf"), ("--frame-rate", "abc"),
                    ("--size", "4x4"), ("--channels", "3"), ("--types", "2")]:
    case(f"video-simulate{flag}-{value}", CLI, f"{VSIM} {flag} {value}", mentions=[flag])
case("video-simulate-frames-without-video", CLI, "simulate s.zarr --neurons 4 --train-images 4 --test-images 2 --frames 10", mentions=["--frames"])
case("video-simulate-frame-rate-without-video", CLI, "simulate s.zarr --neurons 4 --train-images 4 --test-images 2 --frame-rate 60",
     mentions=["--frame-rate"])
case("video-simulate-with-day2-of", CLI, "simulate t.zarr --day2-of sim.zarr --video", copy("sim.zarr"), mentions=["--video"])
case("video-simulate-day2-of-video", CLI, "simulate t.zarr --day2-of video.zarr", copy("video.zarr"), mentions=["video.zarr"])
case("video-simulate-frames-huge", CLI, VSIM + " --frames 100000000", mentions=["frames"], mode="subprocess", memory_limit=4 << 30, timeout=180,
     note="refused before allocating (4 GiB address-space limit)")
case("video-simulate-one-frame", CLI, VSIM + " --frames 1", mentions=["--frames"], note="no simulated neuron responds on a video's first frame")
for rate in ("2", "5", "12"):
    case(f"video-simulate-frame-rate-{rate}", CLI, f"{VSIM} --frame-rate {rate}", mentions=["--frame-rate"],
         note="the temporal kernels are not sampled below ~15 Hz")

VFIT = "fit video.zarr --out run --config bad.toml"


def bad_video_fit(name: str, section: str, key: str, value, mentions=None, argv: str = VFIT) -> None:
    case(f"video-fit-{name}", TOML, argv, copy("video.zarr", "sim.zarr"), toml("bad.toml", merged(TINY_VIDEO_FIT, section, key, value)),
         mentions=mentions or ["bad.toml", key])


bad_video_fit("core-stacked2d", "model", "core", "stacked2d", mentions=["bad.toml", "core", "video.zarr"])
bad_video_fit("factorized3d-on-images", "model", "core", "factorized3d", argv="fit sim.zarr --out run --config bad.toml",
              mentions=["bad.toml", "core", "sim.zarr"])
bad_video_fit("gru-on-images", "model", "core", "gru", argv="fit sim.zarr --out run --config bad.toml", mentions=["bad.toml", "core", "sim.zarr"])
bad_video_fit("core-unknown", "model", "core", "conv3d")


def video_sized_images(d: Path, fx: Fixtures) -> None:
    """img.zarr: an image session of video.zarr's 12x16 pixels, so only the frame axis differs."""
    cli(["simulate", "img.zarr", "--neurons", "4", "--train-images", "20", "--test-images", "2", "--repeats", "2", "--size", "12x16"], d)


for first, second, core in (("video.zarr", "img.zarr", "factorized3d"), ("img.zarr", "video.zarr", "stacked2d")):
    case(f"video-fit-{first.split('.')[0]}-and-{second.split('.')[0]}-stores", TOML, f"fit {first} {second} --out run --config bad.toml",
         copy("video.zarr"), video_sized_images, toml("bad.toml", merged(TINY_VIDEO_FIT, "model", "core", core)), mentions=["img.zarr", "video"])
bad_video_fit("burn-in-all-frames", "data", "burn_in_frames", 30, mentions=["video.zarr", "burn_in_frames"])
bad_video_fit("burn-in-beyond-frames", "data", "burn_in_frames", 1000, mentions=["video.zarr", "burn_in_frames"])
bad_video_fit("burn-in-negative", "data", "burn_in_frames", -1)
bad_video_fit("clip-frames-0", "data", "clip_frames", 0)
bad_video_fit("clip-frames-float", "data", "clip_frames", 20.5)
bad_video_fit("temporal-input-kernel-0", "model", "temporal_input_kernel", 0)
bad_video_fit("temporal-hidden-kernel-negative", "model", "temporal_hidden_kernel", -7)
bad_video_fit("gamma-temporal-negative", "model", "gamma_temporal", -0.01)
bad_video_fit("gru-kernel-even", "model", "gru_kernel", 4)
bad_video_fit("gru-channels-0", "model", "gru_channels", 0)
bad_video_fit("input-kernel-larger-than-frame", "model", "input_kernel", 13, mentions=["bad.toml", "input_kernel", "video.zarr"])
bad_video_fit("behavior-gain-not-a-flag", "model", "behavior_gain", "yes")
case("fit-behavior-gain-without-behavior", TOML, "fit sim.zarr --out run --config bad.toml",
     copy("sim.zarr"), rewrite_store("sim.zarr", lambda ds: ds.drop_vars([v for v in ds.variables if "behavior" in str(v)])),
     toml("bad.toml", merged(TINY_FIT, "model", "behavior_gain", True)), mentions=["sim.zarr", "behavior_gain"])
case("video-fit-behavior-gain", TOML, VFIT, copy("video.zarr"), toml("bad.toml", merged(TINY_VIDEO_FIT, "model", "behavior_gain", True)),
     expect=0, allow_new=["run"], note="success: the simulated video animal records behavior")
case("video-fit-clip-frames-beyond-trials", TOML, VFIT, copy("video.zarr"), toml("bad.toml", merged(TINY_VIDEO_FIT, "data", "clip_frames", 1000)),
     expect=0, allow_new=["run"], note="success: clips are capped at the session's frames ([data].clip_frames)")
case("video-fit-core-of-image-run", RUN, "fit video.zarr --out r2 --core run --config video.toml", copy("video.zarr", "video.toml", "run"),
     mentions=["video.toml", "core", "stacked2d"])
case("video-fit-core-of-image-run-config-without-core", RUN, "fit video.zarr --out r2 --core run --config b.toml", copy("video.zarr", "run"),
     toml("b.toml", "[data]\nburn_in_frames = 10\n"), mentions=["b.toml", "stacked2d", "video.zarr"])
case("video-fit-image-store-on-video-core", RUN, "fit sim.zarr --out r2 --core video_run --config fit.toml", copy("sim.zarr", "fit.toml", "video_run"),
     mentions=["core", "sim.zarr"])
case("video-fit-frozen-video-core", RUN, "fit video.zarr --out r2 --core video_run --freeze-core --config video.toml",
     copy("video.zarr", "video.toml", "video_run"), expect=0, allow_new=["r2"], note="success: a video core transferred frozen")
case("video-evaluate-image-store", RUN, "evaluate video_run --store sim.zarr", copy("video_run", "sim.zarr"), mentions=["sim.zarr"])

VMEI = "mei video_run --neurons 0:2 --out m.zarr --config bad.toml"


def bad_video_mei(name: str, key: str, value, mentions=None, changes: dict | None = None, **options) -> None:
    values = merged(TINY_VIDEO_MEI, "mei", key, value)
    values["mei"].update(changes or {})
    case(f"video-mei-{name}", TOML, VMEI, copy("video_run"), toml("bad.toml", values), mentions=mentions or ["bad.toml", key], **options)


bad_video_mei("frames-0", "frames", 0)
bad_video_mei("frames-negative", "frames", -6)
bad_video_mei("frames-float", "frames", 6.5)
bad_video_mei("frames-beyond-trials", "frames", 40, mentions=["video.zarr", "frames"], changes={"response_window": 2},
              note="refused before optimizing: no natural clip of 40 frames to compare with")
bad_video_mei("frames-huge", "frames", 10**9, mentions=["video.zarr", "frames"], mode="subprocess", memory_limit=4 << 30, timeout=120,
              note="refused before allocating clips of 10**9 frames (4 GiB limit)")
bad_video_mei("response-window-0", "response_window", 0)
bad_video_mei("response-window-beyond-frames", "response_window", 7)
bad_video_mei("temporal-blur-negative", "temporal_blur_sigma", -1.0)
bad_video_mei("temporal-blur-nan", "temporal_blur_sigma", float("nan"))
bad_video_mei("static-string", "static", "yes")
case("video-mei-static", TOML, VMEI, copy("video_run"), toml("bad.toml", merged(TINY_VIDEO_MEI, "mei", "static", True)), expect=0,
     allow_new=["m.zarr", "m.png"], note="success: one image shown on every frame")
bad_video_mei("static-window-beyond-frames", "static", True, mentions=["bad.toml", "response_window"], changes={"response_window": 9})


for flag in ("--deis 2", "--transparency"):
    case(f"video-mei-{flag.split()[0].strip('-')}", CLI, "mei video_run --neurons 0:2 --out m.zarr --config video_mei.toml " + flag,
         copy("video_run", "video_mei.toml"), mentions=[flag.split()[0], "video run"])


def centre_png(fill=None) -> Setup:
    """centre/centre.png (12 x 16, the video run's frames): a grating patch on gray 128, or ``fill`` everywhere."""

    def step(d: Path, fx: Fixtures) -> None:
        yy, xx = np.indices((12, 16))
        patch = 128 + 100 * np.exp(-((yy - 6) ** 2 + (xx - 8) ** 2) / 18.0) * np.cos(xx / 1.2)
        (d / "centre").mkdir()
        Image.fromarray(np.full((12, 16), fill, np.uint8) if fill is not None else patch.astype(np.uint8)).save(d / "centre/centre.png")

    return step


def video_mevs(steps: int) -> Setup:
    """mevs.zarr: MEVs of neurons 0 and 1 of the case's video_run, 6 frames, ``steps`` steps at the
    learning rate of twin loop --video's twin (30)."""

    def step(d: Path, fx: Fixtures) -> None:
        values = merged(merged(TINY_VIDEO_MEI, "mei", "steps", steps), "mei", "learning_rate", 30.0)
        (d / "mevs.toml").write_text(toml_text(values))
        cli(["mei", "video_run", "--neurons", "0:2", "--config", "mevs.toml", "--out", "mevs.zarr", "--json"], d)

    return step


case("video-mei-image-validator", CLI, "mei video_run --neurons 0:2 --out m.zarr --config video_mei.toml --validator run",
     copy("video_run", "video_mei.toml", "run"), mentions=["--validator", "image run"])
case("mei-video-validator", CLI, "mei run --neurons 0:2 --out m.zarr --config mei.toml --validator video_run",
     copy("run", "mei.toml", "video_run"), mentions=["--validator", "video run"])

VSURROUND = "mei video_run --neurons 0:2 --config video_mei.toml --out s.zarr --surround suppress --centre "
case("video-surround-patch", CLI, VSURROUND + "centre", copy("video_run", "video_mei.toml"), centre_png(), expect=0,
     allow_new=["s.zarr", "s.png"], note="success: surround clips around an image patch shown on every frame")
case("video-surround-grey-patch", CLI, VSURROUND + "centre", copy("video_run", "video_mei.toml"), centre_png(128),
     mentions=["centre.png", "mean gray"])
case("video-surround-mevs", CLI, VSURROUND + "mevs.zarr", copy("video_run", "video_mei.toml"), video_mevs(40), expect=0,
     allow_new=["s.zarr", "s.png"], note="success: surround clips around each MEV inside its tight mask")
case("video-surround-faint-mevs", CLI, VSURROUND + "mevs.zarr", copy("video_run", "video_mei.toml"), video_mevs(3),
     mentions=["mevs.zarr", "mean gray"], note="MEVs of 3 steps, too faint for a centre")
case("video-surround-mevs-other-frames", CLI, VSURROUND.replace("video_mei.toml", "bad.toml") + "mevs.zarr",
     copy("video_run", "video_mei.toml"), video_mevs(3), toml("bad.toml", merged(TINY_VIDEO_MEI, "mei", "frames", 5)),
     mentions=["mevs.zarr", "frames"])
case("video-surround-image-meis", CLI, VSURROUND + "meis.zarr", copy("video_run", "video_mei.toml", "meis.zarr"),
     mentions=["meis.zarr", "run"], note="MEIs of an image run as the centres of a video run")

# ---------------------------------------------------------------------------- the fast subset
# One or more cases of each class that need no fitted run: tests/test_adversarial.py runs them in CI.
FAST = {
    "info-missing-store", "import-arrays-missing", "fit-missing-config", "evaluate-missing-run", "mei-missing-run",
    "respond-missing-stimuli", "loop-missing-session", "info-empty-folder", "info-npz-file", "import-arrays-empty-file",
    "fit-config-is-folder", "fit-config-binary", "evaluate-store-as-run", "import-images-1d", "import-images-nan",
    "import-lengths-mismatch", "import-tiers-unknown", "import-repeats-form-test", "import-responses-negative",
    "sensorium-no-tiers", "sensorium-tiers-empty", "sensorium-zip-truncated", "toml-fit-syntax", "toml-fit-unknown-key",
    "toml-loop-size-tiny", "simulate--neurons-0", "simulate--seed--1", "fit-seeds-0", "unknown-command",
    "simulate-into-folder-with-file", "simulate-over-store", "simulate-missing-parent", "fit-into-its-store",
    "loop-into-folder-with-config", "store-deleted-chunk", "store-no-root-json", "pipe-info", "path-newline-missing",
    "animals-huge", "day2-of-nan-position", "match-nan-position", "match-one-cell", "match-tolerance-below-jitter", "loop-days-3",
    "fit-freeze-without-core", "screen-summary-missing", "precision-fit-float16", "simulate-types-more-than-neurons",
    "simulate-types-with-day2-of", "sensorium-video-responses-frames-mismatch", "sensorium-video-tiers-short-no-ids",
    "video-simulate-one-frame", "video-simulate--frame-rate-nan",
}
unknown = FAST - {c.name for c in CASES}
if unknown:
    raise ValueError(f"FAST names unknown cases: {sorted(unknown)}")
CASES[:] = [dataclasses.replace(c, fast=c.name in FAST) for c in CASES]
