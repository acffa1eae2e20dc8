"""The simulated rig: show exported PNGs to the simulated animal, write what a rig would record.

Each PNG is read as the screen shows it (the export's monitor model gives its luminance),
averaged down to the animal's image size and mapped back to model space; the presentations follow
the manifest's order, one noisy response of every neuron per presentation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twin.errors import SessionError, StimulusError
from twin.loop.files import MANIFEST, read_manifest, write_responses
from twin.loop.monitor import Monitor, png_to_model


def load_shown_images(stimuli: str | Path, manifest: dict, shape: tuple[int, int]) -> np.ndarray:
    """Every manifest stimulus as the eye sees it: (stimuli, y, x) model space 0..255."""
    monitor = Monitor.from_dict(manifest["monitor"])
    images = []
    for stimulus in manifest["stimuli"]:
        path = Path(stimuli) / stimulus["file"]
        if not path.exists():
            raise StimulusError(
                f"{path}: listed in {Path(stimuli) / MANIFEST} but missing; export the stimuli again"
            )
        images.append(png_to_model(path, monitor, shape))
    return np.stack(images) if images else np.zeros((0, *shape))


def respond_to_stimuli(stimuli: str | Path, animal: str | Path, out: str | Path, seed: int = 0) -> dict:
    """Present the manifest's stimuli in its order to the simulated animal in store ``animal``.

    Writes ``out`` (.npz: responses (trial, neuron), stimulus_id (trial,), unit_id (neuron,)) and
    returns those arrays.
    """
    from twin.data.simulate import respond
    from twin.data.store import open_session

    manifest = read_manifest(stimuli)
    session = open_session(animal)
    if not session.attrs.get("simulated"):
        raise SessionError(
            f"{animal}: not a simulated session (attrs['simulated'] is not set); pass the store"
            " written by `twin simulate`"
        )
    shape = tuple(int(n) for n in session["images"].shape[-2:])
    shown = load_shown_images(stimuli, manifest, shape)
    order = np.asarray(manifest["order"], np.int64)
    ids = np.array([s["stimulus_id"] for s in manifest["stimuli"]], np.int64)
    _, noisy = respond(session, shown[order], repeats=1, seed=seed)
    arrays = {
        "responses": np.asarray(noisy[0], np.float32),
        "stimulus_id": ids[order],
        "unit_id": session["unit_id"].values.astype(np.int64),
    }
    write_responses(out, **arrays)
    return arrays
