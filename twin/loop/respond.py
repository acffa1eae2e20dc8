"""The simulated rig: show exported PNGs to the simulated animal, write what a rig would record.

Each PNG (each frame of an exported clip) is read as the screen shows it (the export's monitor model gives its luminance),
averaged down to the animal's image size and mapped back to model space; the presentations follow
the manifest's order, one noisy response of every neuron per presentation. ``present`` shows
stimuli held in memory: images or, to a video animal, videos (stimulus, frame, y, x), with one
response per frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twin.errors import ConfigError, SessionError
from twin.loop.files import clip_paths, is_clip_manifest, read_manifest, stimulus_mode, stimulus_path, write_responses
from twin.loop.monitor import Monitor, png_to_model


def load_shown_images(stimuli: str | Path, manifest: dict, shape: tuple[int, int]) -> np.ndarray:
    """Every manifest stimulus as the eye sees it: (stimuli, y, x), or (stimuli, 3, y, x) for RGB
    stimuli, model space 0..255."""
    monitor = Monitor.from_dict(manifest["monitor"])
    screen, mode = manifest["screen_shape"], stimulus_mode(manifest)
    return np.stack(
        [png_to_model(stimulus_path(stimuli, s, screen, mode), monitor, shape) for s in manifest["stimuli"]]
    )


def load_shown_clips(stimuli: str | Path, manifest: dict, shape: tuple[int, int]) -> np.ndarray:
    """Every clip of a video manifest as the eye sees it, frame by frame: (stimuli, frame, y, x),
    model space 0..255."""
    monitor = Monitor.from_dict(manifest["monitor"])
    screen, mode, frames = manifest["screen_shape"], stimulus_mode(manifest), manifest["frames"]
    return np.stack(
        [
            np.stack([png_to_model(path, monitor, shape) for path in clip_paths(stimuli, s, screen, frames, mode)])
            for s in manifest["stimuli"]
        ]
    )


def present(animal, shown: np.ndarray, order: np.ndarray, seed: int = 0) -> np.ndarray:
    """Responses of the simulated animal (session Dataset or ``ground_truth(ds)``) to the stimuli
    ``shown`` (stimuli, [channel,] y, x), or videos (stimuli, frame, y, x) for a video animal, in
    model space 0..255, presented in ``order`` (trial,) of stimulus indices: (trial, neuron), or
    (trial, frame, neuron) for videos; one noisy response per presentation, drawn with ``seed``."""
    from twin.data.simulate import respond

    _, noisy = respond(animal, np.asarray(shown)[np.asarray(order, np.int64)], repeats=1, seed=seed)
    return np.asarray(noisy[0], np.float32)


def respond_to_stimuli(
    stimuli: str | Path, animal: str | Path, out: str | Path, seed: int = 0, overwrite: bool = False
) -> dict:
    """Present the manifest's stimuli in its order to the simulated animal in store ``animal``.

    Writes ``out`` (.npz: responses (trial, neuron), stimulus_id (trial,), unit_id (neuron,)) and
    returns those arrays. Clips (a video export, shown to a video animal) are shown frame by
    frame from the animal's resting state; a trial's response is the mean over the clip's last
    manifest ``response_window`` frames, and ``traces`` (trial, frame, neuron) keeps every frame.
    """
    from twin.data.schema import is_video, unit_ids
    from twin.data.store import open_session
    from twin.outputs import check_output

    if Path(out).suffix != ".npz":
        raise ConfigError(f"--out {out}: name the responses file with a .npz suffix")
    check_output(out, overwrite, "file", inputs=[stimuli, animal])
    manifest = read_manifest(stimuli)
    session = open_session(animal)
    if not session.attrs.get("simulated"):
        raise SessionError(
            f"{animal}: not a simulated session (attrs['simulated'] is not set); pass the store"
            " written by `twin simulate`"
        )
    clips = is_clip_manifest(manifest)
    if is_video(session) and not clips:
        raise SessionError(
            f"{animal}: a video animal, but {stimuli} holds exported images; pass an image animal (a store"
            " written by twin simulate without --video)"
        )
    if clips and not is_video(session):
        raise SessionError(
            f"{animal}: an image animal, but {stimuli} holds exported clips; pass a video animal (a store"
            " written by twin simulate --video)"
        )
    shape = tuple(int(n) for n in session["images"].shape[-2:])
    shown = (load_shown_clips if clips else load_shown_images)(stimuli, manifest, shape)
    order = np.asarray(manifest["order"], np.int64)
    ids = np.array([s["stimulus_id"] for s in manifest["stimuli"]], np.int64)
    responses = present(session, shown, order, seed)
    arrays = {"stimulus_id": ids[order], "unit_id": unit_ids(session["unit_id"].values)}
    if clips:
        arrays |= {"responses": responses[:, -manifest["response_window"] :].mean(axis=1), "traces": responses}
    else:
        arrays["responses"] = responses
    write_responses(out, **arrays, overwrite=overwrite)
    return arrays
