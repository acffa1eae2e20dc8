"""The loop's files: atomic output folders, the stimulus manifest, and the rig's responses.npz.

responses.npz (what a rig writes; `twin respond` writes the same):
    responses (trial, neuron) float32 — one row per presentation, in any order
    stimulus_id (trial,) int64 — the manifest's stimulus id shown on that trial
    unit_id (neuron,) int64 — the recorded neurons' ids (those of the run's session)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from twin.errors import StimulusError

MANIFEST = "manifest.json"


@contextlib.contextmanager
def staging_dir(out: str | Path):
    """Yield an empty folder beside ``out``; on success it replaces ``out``, on error it vanishes."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(stimuli: str | Path) -> dict:
    """The manifest.json of an exported stimulus folder."""
    path = Path(stimuli) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StimulusError(
            f"{path}: no manifest; pass the folder written by `twin export`"
        ) from None
    except json.JSONDecodeError as error:
        raise StimulusError(f"{path}: not valid JSON ({error}); export the stimuli again") from None


def write_responses(
    path: str | Path, responses: np.ndarray, stimulus_id: np.ndarray, unit_id: np.ndarray
) -> None:
    """Write responses.npz atomically: responses (trial, neuron), stimulus_id (trial,), unit_id (neuron,)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as file:
        np.savez(
            file,
            responses=np.asarray(responses, np.float32),
            stimulus_id=np.asarray(stimulus_id, np.int64),
            unit_id=np.asarray(unit_id, np.int64),
        )
    os.replace(tmp, path)


def read_responses(path: str | Path) -> dict[str, np.ndarray]:
    """Read and check a rig's responses.npz (see the module docstring)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as file:
            arrays = {key: file[key] for key in file.files}
    except FileNotFoundError:
        raise StimulusError(f"{path}: responses file not found; pass the rig's .npz") from None
    except (ValueError, OSError) as error:
        raise StimulusError(f"{path}: not a readable .npz ({error}); write it with numpy.savez") from None
    for key in ("responses", "stimulus_id", "unit_id"):
        if key not in arrays:
            raise StimulusError(
                f"{path}: missing array {key!r}; a rig file holds responses, stimulus_id, unit_id"
            )
    responses, stimulus_id, unit_id = arrays["responses"], arrays["stimulus_id"], arrays["unit_id"]
    if responses.ndim != 2:
        raise StimulusError(f"{path}: responses has shape {responses.shape}; write (trial, neuron)")
    if stimulus_id.shape != (responses.shape[0],):
        raise StimulusError(
            f"{path}: stimulus_id has shape {stimulus_id.shape} but responses has"
            f" {responses.shape[0]} trials; write one stimulus id per trial"
        )
    if unit_id.shape != (responses.shape[1],):
        raise StimulusError(
            f"{path}: unit_id has shape {unit_id.shape} but responses has"
            f" {responses.shape[1]} neurons; write one unit id per column"
        )
    if not np.issubdtype(stimulus_id.dtype, np.integer) or not np.issubdtype(unit_id.dtype, np.integer):
        raise StimulusError(f"{path}: stimulus_id and unit_id must be integer arrays")
    if not np.all(np.isfinite(responses)):
        raise StimulusError(f"{path}: responses contain NaN or inf; drop or fix those trials")
    if len(np.unique(unit_id)) != len(unit_id):
        raise StimulusError(f"{path}: unit_id has duplicates; each column is one neuron")
    return {
        "responses": responses.astype(np.float64),
        "stimulus_id": stimulus_id.astype(np.int64),
        "unit_id": unit_id.astype(np.int64),
    }
