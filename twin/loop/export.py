"""Rig export: MEIs and their natural-image controls as luminance-matched PNGs plus a manifest.

Per neuron of the MEI store the stimuli are its MEI (best seed), its DEIs when the store has them,
and two natural controls: the training image the twin rates best for that neuron, unmasked and
under the MEI's mask. Every stimulus is set to one target mean luminance and RMS contrast on the
monitor (see twin.loop.monitor), quantized to uint8 and upsampled to the screen. Stimuli that end
more than 5% off either target are rejected and listed, not written.

The output folder (written atomically) holds:
    stimuli/<id>_<kind>_u<unit>.png   one file per stimulus, screen size, 8-bit gray
    manifest.csv                      one row per presentation, in presentation order
    manifest.json                     monitor, targets, stimuli, rejected stimuli, the order
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from twin.loop.files import MANIFEST
from twin.loop.monitor import UPSAMPLE, Monitor, load_monitor, match_luminance, upsample

TOLERANCE = 0.05  # relative deviation from the luminance/contrast targets that rejects a stimulus
CONTROLS = ("natural", "natural_masked")
CSV_FIELDS = (
    "trial",
    "repeat",
    "stimulus_id",
    "file",
    "kind",
    "unit_id",
    "neuron_index",
    "seed",
    "image_trial",
    "predicted_response",
    "mean_luminance",
    "rms_contrast",
)


def gather_stimuli(meis, session) -> list[dict]:
    """Candidate stimuli in model space: dicts with kind, neuron, seed and pixels (y, x) 0..255.

    meis: the MEI store (xarray; image_mean/std in pixel levels 0..255); session: the session store
    it was made from (xarray; its images are mapped from its pixel_range to 0..255).
    """
    from twin.data.schema import pixel_range, to_levels
    from twin.mei.masks import walker_mask

    images = (meis["images"] * meis["image_std"] + meis["image_mean"]).values
    mean = float(meis["image_mean"].mean())
    best_seed = meis["best_seed"].values.astype(int)
    trials = meis["best_natural_trial"].values.astype(int)
    natural = to_levels(
        session["images"].isel(trial=trials).values, pixel_range(session, meis.attrs["store"])
    )
    if natural.ndim == 4:
        natural = natural[:, 0]
    deis = (meis["deis"] * meis["image_std"] + meis["image_mean"]).values if "deis" in meis else None
    stimuli = []
    for i, unit in enumerate(meis["unit_id"].values.astype(int)):
        neuron = {"unit_id": int(unit), "neuron_index": int(meis["neuron_index"].values[i])}
        mei = images[i, best_seed[i]]
        stimuli.append(neuron | {"kind": "mei", "seed": int(best_seed[i]), "pixels": mei})
        if deis is not None:
            for d, dei in enumerate(deis[i]):
                stimuli.append(neuron | {"kind": "dei", "seed": d, "pixels": dei})
        mask = walker_mask(mei, mean)
        stimuli.append(neuron | {"kind": "natural", "image_trial": int(trials[i]), "pixels": natural[i]})
        masked = mean + mask * (natural[i] - mean)
        stimuli.append(neuron | {"kind": "natural_masked", "image_trial": int(trials[i]), "pixels": masked})
    return stimuli


def targets(monitor: Monitor, train_images: np.ndarray) -> tuple[float, float]:
    """Target (mean luminance, RMS contrast) in cd/m²: the monitor's, else the training images'."""
    luminance = monitor.model_to_luminance(train_images)
    mean = monitor.mean_luminance or float(luminance.mean())
    contrast = monitor.rms_contrast or float(luminance.std())
    return mean, contrast


def render(pixels: np.ndarray, monitor: Monitor, mean: float, contrast: float) -> dict:
    """Match one model-space image (y, x) to the targets and quantize it for the screen.

    Returns screen (y, x) uint8 at model size; model (y, x) float64: the quantized image seen in
    model space; matched (y, x): the matched image before quantization, in model space; and the
    achieved mean luminance and RMS contrast (cd/m²).
    """
    matched = match_luminance(
        monitor.model_to_luminance(pixels), mean, contrast, monitor.black, monitor.white
    )
    screen = np.round(monitor.screen_pixels(matched)).astype(np.uint8)
    shown = monitor.luminance(screen)
    return {
        "screen": screen,
        "model": monitor.luminance_to_model(shown),
        "matched": monitor.luminance_to_model(matched),
        "mean_luminance": float(shown.mean()),
        "rms_contrast": float(shown.std()),
    }


def own_neuron_responses(run_path: str, session: int, neuron_index: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The twin's response (n,) of each stimulus' own neuron, in the recording's units.

    images: (n, y, x) model-space pixels; neuron_index: (n,) indices within the session.
    """
    from twin.checkpoint import load_run
    from twin.predict import twin_responses

    neurons = np.unique(neuron_index)
    responses = twin_responses(load_run(run_path), session, images, neurons)
    return responses[np.arange(len(images)), np.searchsorted(neurons, neuron_index)]


def export_stimuli(
    meis: str | Path,
    out: str | Path,
    monitor_path: str | Path | None = None,
    repeats: int = 10,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Write PNG stimuli and their manifest for the rig; returns the manifest (see module doc).

    ``out`` is checked before any work and an existing one replaced only with ``overwrite``.

    The presentation order shows every accepted stimulus once per repeat block, each block in its
    own seeded random order, so repeats are interleaved over the session.
    """
    from twin.data.schema import pixel_range, to_levels
    from twin.data.store import open_session
    from twin.errors import ConfigError, StimulusError
    from twin.mei.store import open_meis
    from twin.outputs import check_output, output

    if repeats < 1:
        raise ConfigError(f"--repeats {repeats}: show each stimulus at least once")
    store = open_meis(meis)
    inputs = [meis, store.attrs["store"], store.attrs["run"], *([monitor_path] if monitor_path else [])]
    check_output(out, overwrite, inputs=inputs)
    monitor = load_monitor(monitor_path)
    if "channel" in store["images"].dims:
        raise ConfigError(
            f"{meis}: images have {store.sizes['channel']} channels; twin export renders one-channel"
            " stimuli for a gray-scale monitor, so export one-channel MEIs"
        )
    session = open_session(store.attrs["store"])
    train = to_levels(
        session["images"].values[session["tier"].values == "train"],
        pixel_range(session, store.attrs["store"]),
    )
    mean, contrast = targets(monitor, train)
    model_shape = tuple(int(s) for s in store["images"].shape[-2:])
    screen_shape = monitor.screen or (UPSAMPLE * model_shape[0], UPSAMPLE * model_shape[1])

    accepted, rejected = [], []
    for stimulus in gather_stimuli(store, session):
        shown = render(stimulus.pop("pixels"), monitor, mean, contrast)
        record = {"seed": None, "image_trial": None} | stimulus
        record |= {"mean_luminance": shown["mean_luminance"], "rms_contrast": shown["rms_contrast"]}
        off = max(abs(shown["mean_luminance"] / mean - 1), abs(shown["rms_contrast"] / contrast - 1))
        if off > TOLERANCE:
            rejected.append(record | {"off_target": off})
        else:
            accepted.append((record, shown))

    if not accepted:
        raise StimulusError(
            f"{monitor_path or 'the default monitor'}: all {len(rejected)} stimuli of {meis} end more"
            f" than {TOLERANCE:.0%} off the target luminance/contrast; lower [target].rms_contrast"
        )
    neuron_index = np.array([record["neuron_index"] for record, _ in accepted], int)
    images = np.stack([shown["model"] for _, shown in accepted])
    predicted = own_neuron_responses(store.attrs["run"], int(store.attrs["session"]), neuron_index, images)

    stimuli = []
    with output(out, overwrite, inputs=inputs) as tmp:
        (tmp / "stimuli").mkdir()
        for stimulus_id, ((record, shown), response) in enumerate(zip(accepted, predicted)):
            name = f"stimuli/{stimulus_id:04d}_{record['kind']}_u{record['unit_id']}.png"
            Image.fromarray(upsample(shown["screen"], screen_shape).astype(np.uint8)).save(tmp / name)
            stimuli.append(
                {"stimulus_id": stimulus_id, "file": name}
                | record
                | {"predicted_response": float(response)}
            )
        rng = np.random.default_rng(seed)
        order = [int(i) for _ in range(repeats) for i in rng.permutation(len(stimuli))]
        manifest = {
            "meis": str(meis),
            "run": str(store.attrs["run"]),
            "session": int(store.attrs["session"]),
            "store": str(store.attrs["store"]),
            "monitor": monitor.to_dict(),
            "target": {"mean_luminance": mean, "rms_contrast": contrast, "tolerance": TOLERANCE},
            "model_shape": list(model_shape),
            "screen_shape": list(screen_shape),
            "repeats": repeats,
            "seed": seed,
            "stimuli": stimuli,
            "rejected": rejected,
            "order": order,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        with open(tmp / "manifest.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for trial, stimulus_id in enumerate(order):
                row = stimuli[stimulus_id] | {"trial": trial, "repeat": trial // len(stimuli)}
                writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_FIELDS})
    return manifest
