"""Rig export: MEIs and their natural-image controls as luminance-matched PNGs plus a manifest.

Per neuron of the MEI store the stimuli are its MEI (best seed), its DEIs when the store has them,
and two natural controls: the training image the twin rates best for that neuron, unmasked and
under the MEI's mask. Every stimulus is set to one target mean luminance and RMS contrast on the
monitor (see twin.loop.monitor), quantized to uint8 and upsampled to the screen. Stimuli that end
more than 5% off either target are rejected and listed, not written.

Colour (3-channel) MEIs become RGB stimuli, one channel per monitor primary, matched by
``matching``: "channel" (the default) sets each primary's mean and RMS contrast to its own target,
which stays defined for colour-opponent stimuli of almost no luminance contrast; "luminance" sets
the mean and RMS contrast of the luminance summed over the primaries with one gain for all of
them, keeping each stimulus' colours, and every stimulus' mean colour to the targets' (those of
the training images). Gray stimuli are the same either way. manifest.json's target says which.

The output folder (written atomically) holds:
    stimuli/<id>_<kind>_u<unit>.png   one file per stimulus, screen size, 8-bit gray or RGB (``file_label``)
    manifest.csv                      one row per presentation, in presentation order
    manifest.json                     monitor, targets, stimuli, rejected stimuli, the order

A video MEI store (most exciting videos, twin.mei.store) gives per neuron its MEV (kind mei)
and its natural control (kind natural): the session's clip of as many frames that the twin rates
best for that neuron, chosen by `twin mei` (twin.mei.run.natural_clip_checks). A clip is matched as a whole: one offset and
gain for all its frames set the mean and RMS contrast over every frame and pixel to the targets
(computed likewise over the frames of the training clips), so its changes in time keep their
size. Each clip is written as stimuli/<id>_<kind>_u<unit>/frame_0000.png ... and an animated
preview stimuli/<id>_<kind>_u<unit>.gif at the store's frame rate; the stimulus' file is the
folder, its preview the GIF, and the manifest states frame_rate, frames and response_window
(the last frames whose mean response the MEVs maximized: the rig's response to a clip).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from twin.errors import ConfigError
from twin.loop.files import MANIFEST
from twin.loop.monitor import UPSAMPLE, Monitor, load_monitor, match_luminance, measure, save_gif, save_png

TOLERANCE = 0.05  # relative deviation from the luminance/contrast targets that rejects a stimulus
MATCHING = ("channel", "luminance")  # how colour stimuli meet the targets (module doc); the first is the default
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
    """Candidate stimuli in model space: dicts with kind, neuron, seed and pixels (y, x), or
    (channel, y, x) for colour MEIs, 0..255.

    meis: the MEI store (xarray; image_mean/std in pixel levels 0..255); session: the session store
    it was made from (xarray; its images are mapped from its pixel_range to 0..255).
    """
    from twin.data.schema import pixel_range, to_levels, unit_ids
    from twin.mei.masks import walker_mask

    images = (meis["images"] * meis["image_std"] + meis["image_mean"]).values
    if "frame" in meis["images"].dims:
        return gather_clips(meis, images, session)
    # The mean gray level of each channel: a number, or (channel, 1, 1).
    mean = meis["image_mean"].mean([d for d in meis["image_mean"].dims if d != "channel"]).values
    mean = mean[:, None, None] if mean.ndim else float(mean)
    best_seed = meis["best_seed"].values.astype(int)
    trials = meis["best_natural_trial"].values.astype(int)
    natural = to_levels(
        session["images"].isel(trial=trials).values, pixel_range(session, meis.attrs["store"])
    )
    if natural.ndim == 4 and "channel" not in meis["images"].dims:
        natural = natural[:, 0]
    deis = (meis["deis"] * meis["image_std"] + meis["image_mean"]).values if "deis" in meis else None
    stimuli = []
    for i, unit in enumerate(unit_ids(meis["unit_id"].values).tolist()):
        neuron = {"unit_id": unit, "neuron_index": int(meis["neuron_index"].values[i])}
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


def gather_clips(meis, clips: np.ndarray, session) -> list[dict]:
    """The MEV of each neuron of the video MEI store ``meis`` and, when the store names it, its
    natural control: the session's clip of as many frames that the twin rates best for that neuron
    (best_natural_trial, best_natural_frame). Dicts with kind, neuron, seed or image_trial and
    pixels (frame, [channel,] y, x) 0..255; clips: the store's (neuron, seed, frame, [channel,] y, x)
    in pixel levels; session: the session store (xarray) the MEVs were made from."""
    from twin.data.schema import pixel_range, to_levels, unit_ids

    best_seed = meis["best_seed"].values.astype(int)
    frames = clips.shape[2]
    stimuli = []
    for i, unit in enumerate(unit_ids(meis["unit_id"].values).tolist()):
        neuron = {"unit_id": unit, "neuron_index": int(meis["neuron_index"].values[i])}
        stimuli.append(neuron | {"kind": "mei", "seed": int(best_seed[i]), "pixels": clips[i, best_seed[i]]})
        if "best_natural_trial" in meis:
            trial, start = int(meis["best_natural_trial"].values[i]), int(meis["best_natural_frame"].values[i])
            natural = session["images"].isel(trial=trial, frame=slice(start, start + frames)).values
            natural = to_levels(natural, pixel_range(session, meis.attrs["store"]))
            if natural.ndim == 4 and "channel" not in meis["images"].dims:
                natural = natural[:, 0]
            stimuli.append(neuron | {"kind": "natural", "image_trial": trial, "pixels": natural})
    return stimuli


def file_label(unit_id) -> str:
    """A unit id as part of a file name: characters other than ASCII letters, digits, '.', '-'
    and '_' become '_', at most 40 of them (the stimulus id before it keeps names unique; the
    manifest keeps the id itself)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(unit_id))[:40]


def targets(monitor: Monitor, train_images: np.ndarray, pooled: bool, source) -> tuple:
    """Targets in cd/m² from the monitor's [target], else the training images (n, [channel,]
    y, x): (mean, contrast) as ``match_luminance`` takes them: numbers on a gray monitor; per
    primary (primary, 1, 1) on a colour one, except the pooled contrast, a number (of the summed
    luminance). A target mean outside a primary's range is a ConfigError naming ``source``."""
    luminance = monitor.model_to_luminance(train_images)
    colour = monitor.primaries > 1
    if not colour and (isinstance(monitor.mean_luminance, tuple) or isinstance(monitor.rms_contrast, tuple)):
        raise ConfigError(f"{source}: [target] gives values per primary, but the stimuli are gray; give one number each")
    axes = (0, 2, 3) if colour else None
    means = luminance.mean(axis=axes)
    if pooled and colour:
        total = luminance.sum(axis=1)
        given = monitor.mean_luminance
        if isinstance(given, tuple) or isinstance(monitor.rms_contrast, tuple):
            raise ConfigError(
                f"{source}: [target] gives values per primary, but --matching luminance matches the"
                " summed luminance; give one number each or use --matching channel"
            )
        # the mean colour stays the training images', scaled to the target mean luminance
        mean = means * (given / total.mean() if given else 1.0)
        contrast = monitor.rms_contrast or float(total.std())
    else:
        mean = monitor.mean_luminance or means
        contrast = monitor.rms_contrast or luminance.std(axis=axes)
    if colour:
        mean = np.broadcast_to(np.asarray(mean, np.float64), (monitor.primaries,))[:, None, None]
        if not pooled:
            contrast = np.broadcast_to(np.asarray(contrast, np.float64), (monitor.primaries,))[:, None, None]
    else:
        mean, contrast = float(mean), float(contrast)
    if not (np.all(mean > monitor.black) and np.all(mean < monitor.white)):
        raise ConfigError(
            f"{source}: the target mean luminance {plain(mean)} cd/m² is outside the monitor's range"
            f" {plain(monitor.black)}..{plain(monitor.white)} cd/m²; lower [target].mean_luminance"
        )
    return mean, contrast


def plain(value):
    """A number, or an array of one per primary, for JSON and messages: a float or a list."""
    value = np.asarray(value, np.float64)
    return float(value) if value.size == 1 else value.ravel().tolist()


def render(pixels: np.ndarray, monitor: Monitor, mean, contrast, pooled: bool = False) -> dict:
    """Match one model-space image (y, x), or (primary, y, x), to the targets (see
    ``match_luminance``) and quantize it for the screen.

    Returns screen (y, x) or (primary, y, x) uint8 at model size; model: the quantized image seen
    in model space (float64); matched: the matched image before quantization, in model space; and
    the achieved mean luminance and RMS contrast (cd/m²; per primary, or of the summed luminance
    when ``pooled``).
    """
    matched = match_luminance(
        monitor.model_to_luminance(pixels), mean, contrast, monitor.black, monitor.white, pooled
    )
    screen = np.round(monitor.screen_pixels(matched)).astype(np.uint8)
    shown = monitor.luminance(screen)
    achieved_mean, achieved_contrast = measure(shown, pooled)
    return {
        "screen": screen,
        "model": monitor.luminance_to_model(shown),
        "matched": monitor.luminance_to_model(matched),
        "mean_luminance": achieved_mean,
        "rms_contrast": achieved_contrast,
    }


def render_clip(pixels: np.ndarray, monitor: Monitor, mean, contrast, pooled: bool = False) -> dict:
    """``render`` of a clip (frame, y, x) or (frame, primary, y, x) as a whole (its frames stacked
    into one tall image): the same keys, screen, model and matched being clips."""
    frames, height = pixels.shape[0], pixels.shape[-2]
    colour = pixels.ndim == 4
    tall = np.moveaxis(pixels, 0, 1) if colour else pixels
    shown = render(tall.reshape(*tall.shape[:-3], frames * height, tall.shape[-1]), monitor, mean, contrast, pooled)
    for key in ("screen", "model", "matched"):
        clip = shown[key].reshape(*tall.shape)
        shown[key] = np.moveaxis(clip, 1, 0) if colour else clip
    return shown


def csv_cell(value) -> str:
    """A manifest value as a manifest.csv cell: empty for None, per-primary lists space-separated."""
    if value is None:
        return ""
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def own_neuron_responses(run_path: str, session: int, neuron_index: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The twin's response (n,) of each stimulus' own neuron, in the recording's units.

    images: (n, [channel,] y, x) model-space pixels; neuron_index: (n,) indices within the session.
    """
    from twin.checkpoint import load_run
    from twin.predict import twin_responses

    neurons = np.unique(neuron_index)
    responses = twin_responses(load_run(run_path), session, images, neurons)
    return responses[np.arange(len(images)), np.searchsorted(neurons, neuron_index)]


def own_neuron_clip_responses(
    run_path: str, session: int, neuron_index: np.ndarray, clips: np.ndarray, window: int
) -> np.ndarray:
    """The video twin's response (n,) of each clip's own neuron, averaged over the last ``window``
    frames (the MEV objective), in the recording's units; behavior and pupil centre at their train
    means.

    clips: (n, frame, [channel,] y, x) model-space pixels; neuron_index: (n,) indices within the session.
    """
    from twin.checkpoint import load_run
    from twin.mei.optimize import evaluate_pairs, neuron_objective
    from twin.predict import recording_units

    run = load_run(run_path)
    data = run.sessions[session]
    held = data.train_means()
    levels = np.asarray(clips, np.float32)
    normalized = data.normalize_images(levels if levels.ndim == 4 else np.moveaxis(levels, 2, -1))
    engine = normalized if levels.ndim == 4 else np.moveaxis(normalized, -1, 2)
    objective = neuron_objective(session, held["behavior"], held["pupil_center"], window)
    values = evaluate_pairs(run.model, objective, engine, {"neuron": neuron_index.astype(np.int32)})
    return recording_units(values[None], data, neuron_index)[0][0]


def export_stimuli(
    meis: str | Path,
    out: str | Path,
    monitor_path: str | Path | None = None,
    repeats: int = 10,
    seed: int = 0,
    overwrite: bool = False,
    gamma=None,
    max_luminance=None,
    matching: str = MATCHING[0],
) -> dict:
    """Write PNG stimuli and their manifest for the rig; returns the manifest (see module doc).

    ``out`` is checked before any work and an existing one replaced only with ``overwrite``.
    gamma, max_luminance: the monitor model in place of the file's [calibration] (numbers or
    one per primary; twin.loop.monitor.load_monitor); matching: one of MATCHING.

    The presentation order shows every accepted stimulus once per repeat block, each block in its
    own seeded random order, so repeats are interleaved over the session.
    """
    from twin.data.schema import pixel_range, to_levels
    from twin.data.store import open_session
    from twin.errors import StimulusError
    from twin.mei.store import open_meis, stored_config
    from twin.naturalness import naturalness
    from twin.outputs import check_output, output

    if repeats < 1:
        raise ConfigError(f"--repeats {repeats}: show each stimulus at least once")
    if matching not in MATCHING:
        raise ConfigError(f"--matching {matching!r}: use one of {', '.join(MATCHING)}")
    store = open_meis(meis)
    if "surround" in store.attrs:
        raise ConfigError(
            f"{meis}: holds {store.attrs['surround']} surrounds, which need the centre alone as their"
            " control; twin export writes MEIs with natural controls, so export a store of plain or"
            " transparent MEIs"
        )
    inputs = [meis, store.attrs["store"], store.attrs["run"], *([monitor_path] if monitor_path else [])]
    check_output(out, overwrite, inputs=inputs)
    video = "frame" in store["images"].dims
    channels = store.sizes.get("channel", 1)
    if channels not in (1, 3):
        raise ConfigError(
            f"{meis}: images have {channels} channels; twin export renders gray (one-channel) or RGB"
            " (three-channel) stimuli, so export MEIs of 1 or 3 channels"
        )
    flags = gamma is not None or max_luminance is not None
    source = monitor_path or ("--gamma/--max-luminance" if flags else "the default monitor")
    monitor = load_monitor(monitor_path, gamma, max_luminance).for_channels(channels, source)
    pooled = matching == "luminance" and channels > 1
    session = open_session(store.attrs["store"])
    train = to_levels(
        session["images"].values[session["tier"].values == "train"],
        pixel_range(session, store.attrs["store"]),
    )
    if "frame" in session["images"].dims:  # the training clips' frames as images
        train = train.reshape(-1, *train.shape[2:])
    mean, contrast = targets(monitor, train, pooled, source)
    # What the manifest states and each stimulus is held to: the summed luminance when pooled.
    target_mean, target_contrast = (mean.sum(), contrast) if pooled else (mean, contrast)
    model_shape = tuple(int(s) for s in store["images"].shape[-2:])
    # Without a [screen] size: the size the session's images were shown at, else 4x the model's.
    shown_size = tuple(int(v) for v in session.attrs.get("shown_size", ()))
    screen_shape = monitor.screen or shown_size or (UPSAMPLE * model_shape[0], UPSAMPLE * model_shape[1])

    accepted, rejected = [], []
    for stimulus in gather_stimuli(store, session):
        shown = (render_clip if video else render)(stimulus.pop("pixels"), monitor, mean, contrast, pooled)
        record = {"seed": None, "image_trial": None} | stimulus
        record |= {"mean_luminance": shown["mean_luminance"], "rms_contrast": shown["rms_contrast"]}
        off = float(max(
            np.max(np.abs(np.ravel(shown["mean_luminance"]) / np.ravel(target_mean) - 1)),
            np.max(np.abs(np.ravel(shown["rms_contrast"]) / np.ravel(target_contrast) - 1)),
        ))
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
    if video:
        window = stored_config(store).response_window
        predicted = own_neuron_clip_responses(
            store.attrs["run"], int(store.attrs["session"]), neuron_index, images, window
        )
        frames = images.shape[1]
        images = images.reshape(-1, *images.shape[2:])  # spectra over frames, averaged per clip
    else:
        predicted = own_neuron_responses(store.attrs["run"], int(store.attrs["session"]), neuron_index, images)
    # A one-channel session keeps a channel axis of 1 beside the gray stimuli (y, x).
    spectra = naturalness(images, train[:, 0] if train.ndim == images.ndim + 1 else train)
    spectral_kl = spectra["spectral_kl"].reshape(len(accepted), -1).mean(axis=1)

    stimuli = []
    with output(out, overwrite, inputs=inputs) as tmp:
        (tmp / "stimuli").mkdir()
        for stimulus_id, ((record, shown), response, kl) in enumerate(zip(accepted, predicted, spectral_kl)):
            name = f"stimuli/{stimulus_id:04d}_{record['kind']}_u{file_label(record['unit_id'])}"
            if video:
                (tmp / name).mkdir()
                for frame, screen in enumerate(shown["screen"]):
                    save_png(screen, screen_shape, tmp / name / f"frame_{frame:04d}.png")
                save_gif(shown["screen"], screen_shape, tmp / f"{name}.gif", store.attrs["frame_rate"])
                files = {"file": name, "preview": f"{name}.gif", "frames": frames}
            else:
                name = f"{name}.png"
                save_png(shown["screen"], screen_shape, tmp / name)
                files = {"file": name}
            stimuli.append(
                {"stimulus_id": stimulus_id}
                | files
                | record
                | {"predicted_response": float(response), "spectral_kl": float(kl)}
            )
        rng = np.random.default_rng(seed)
        order = [int(i) for _ in range(repeats) for i in rng.permutation(len(stimuli))]
        manifest = {
            "meis": str(meis),
            "run": str(store.attrs["run"]),
            "session": int(store.attrs["session"]),
            "store": str(store.attrs["store"]),
            "monitor": monitor.to_dict(),
            "target": {
                "mean_luminance": plain(target_mean),
                "rms_contrast": plain(target_contrast),
                "tolerance": TOLERANCE,
                "matching": matching,
            },
            "natural_spectral_slope": spectra["natural_spectral_slope"],
            "model_shape": list(model_shape),
            "screen_shape": list(screen_shape),
            **(
                {"frame_rate": float(store.attrs["frame_rate"]), "frames": frames, "response_window": window}
                if video
                else {}
            ),
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
                writer.writerow({k: csv_cell(row[k]) for k in CSV_FIELDS})
    return manifest
