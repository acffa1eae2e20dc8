"""`twin mei`: MEIs of a fitted run's neurons, validated, written as a store and a PNG grid; with
--surround, surrounds around fixed centres; with --transparency, transparent MEIs (twin.mei.context).
A video run (its model's ``video``) gets most exciting videos (run_mevs), and with --surround
surround clips around fixed centre clips."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from twin.errors import ConfigError
from twin.outputs import check_output, output

if TYPE_CHECKING:
    import xarray as xr

    from twin.config import MEIConfig
    from twin.data.loader import SessionData
    from twin.models.twin import Twin


def parse_neurons(spec: str, unit_id: np.ndarray) -> np.ndarray:
    """Indices (k,), in the order given, of the neurons ``spec`` names among a session's
    ``unit_id`` (neuron,): 'all', 'START:STOP' (positions, a Python slice, end exclusive) or a
    comma-separated list: of positions '3,7,9' when the ids are integers, of ids 'neu3,neu7' when
    they are strings."""
    text = str(spec).strip()
    n_neurons = len(unit_id)
    named = unit_id.dtype.kind in "UT"  # string ids are named; integer ids stay positions
    hint = "write all, START:STOP (e.g. 0:100) or a list like " + ("neu3,neu7" if named else "3,7,9")
    if text == "all":
        return np.arange(n_neurons)
    match = re.fullmatch(r"(\d*):(\d*)", text)
    if match:
        start = int(match[1]) if match[1] else 0
        stop = int(match[2]) if match[2] else n_neurons
        if not start < stop <= n_neurons:
            raise ConfigError(
                f"--neurons {spec!r}: the session has neurons 0..{n_neurons - 1}; give"
                f" 0 <= START < STOP <= {n_neurons}"
            )
        return np.arange(start, stop)
    if ":" in text and not named:
        raise ConfigError(f"--neurons {spec!r}: not a range; {hint}")
    parts = [part.strip() for part in text.split(",")]
    neurons = ids_to_indices(spec, parts, unit_id) if named else positions(spec, parts, n_neurons, hint)
    if len(np.unique(neurons)) != len(neurons):
        raise ConfigError(f"--neurons {spec!r}: a neuron is listed twice; list each once")
    return neurons


def positions(spec: str, parts: list[str], n_neurons: int, hint: str) -> np.ndarray:
    """The integer positions ``parts`` (k,) of a `--neurons` list; ConfigError outside 0..n-1."""
    try:
        neurons = np.array([int(part) for part in parts])
    except ValueError:
        raise ConfigError(f"--neurons {spec!r}: not a list of integers; {hint}") from None
    bad = neurons[(neurons < 0) | (neurons >= n_neurons)]
    if len(bad):
        raise ConfigError(
            f"--neurons {spec!r}: neuron {bad[0]} is out of range; the session has neurons"
            f" 0..{n_neurons - 1}"
        )
    return neurons


def ids_to_indices(spec: str, names: list[str], unit_id: np.ndarray) -> np.ndarray:
    """Indices (k,) of the string ids ``names`` in ``unit_id`` (neuron,); ConfigError naming the
    first id the session lacks and a few it has (the closest spellings first)."""
    ids = unit_id.tolist()
    where = {u: i for i, u in enumerate(ids)}
    for name in names:
        if name not in where:
            close = difflib.get_close_matches(name, ids, n=3) or ids[:3]
            more = ", ..." if len(ids) > len(close) else ""
            raise ConfigError(
                f"--neurons {spec!r}: unit id {name!r} is not in the session; its ids include"
                f" {', '.join(map(repr, close))}{more}"
            )
    return np.array([where[name] for name in names], np.int64)


def neurons_flag(neuron_index: list[int], unit_id: list) -> str:
    """The `--neurons` list naming these neurons (``parse_neurons``): their ids when the ids
    (same order as the positions ``neuron_index``) are strings, else their positions."""
    named = any(isinstance(u, str) for u in unit_id)
    return ",".join(str(u) for u in (unit_id if named else neuron_index))


def stats_channels_first(array) -> np.ndarray:
    """A normalization array of a session (``SessionData.image_mean`` layouts: () or (y, x) for
    one channel, (channel,) or (y, x, channel) for several) with the channel axis first."""
    array = np.asarray(array, np.float32)
    return np.moveaxis(array, -1, 0) if array.ndim == 3 else array


def broadcastable(array: np.ndarray) -> np.ndarray:
    """A channels-first normalization array that broadcasts against (channel, y, x) images:
    per-channel values (channel,) become (channel, 1, 1)."""
    return array[:, None, None] if array.ndim == 1 else array


def engine_layout(images: np.ndarray) -> np.ndarray:
    """Session images (n, y, x, channel) -> the engine's (n, y, x) for one channel, (n, channel,
    y, x) for several."""
    return images[..., 0] if images.shape[-1] == 1 else np.moveaxis(images, -1, 1)


def natural_pixels(data) -> np.ndarray:
    """The train images of SessionData ``data`` in pixel levels, in the engine's layout (n, y, x)
    or (n, channel, y, x): the natural reference of ``twin.naturalness``."""
    mean, std = (broadcastable(stats_channels_first(v)) for v in (data.image_mean, data.image_std))
    return engine_layout(data.images[data.trials("train")]) * std + mean


def plot_grid(images: np.ndarray, titles: list[str], path: Path, columns: int = 8) -> None:
    """PNG of images (n, y, x) in pixel units 0..255, gray scale, up to ``columns`` per row; images
    (n, 3, y, x) are shown as RGB, other channel counts (e.g. UV and green) side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if images.ndim == 4 and images.shape[1] == 3:
        images = np.clip(np.moveaxis(images, 1, -1) / 255.0, 0.0, 1.0)
    elif images.ndim == 4:
        gap = np.full((*images.shape[:1], images.shape[2], 1), 255.0, np.float32)
        parts = [part for channel in np.moveaxis(images, 1, 0) for part in (channel, gap)]
        images = np.concatenate(parts[:-1], axis=2)
    n = len(images)
    cols = min(n, columns)
    rows = -(-n // cols)
    height, width = images.shape[1:3]
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * 1.6 * width / max(height, width) + 0.2, rows * 1.3), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, **({"cmap": "gray", "vmin": 0, "vmax": 255} if image.ndim == 2 else {}))
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def checkerboard(shape: tuple[int, int], square: int = 4) -> np.ndarray:
    """(y, x) checkerboard of pixel levels 96 and 160 (what shows through transparent pixels)."""
    yy, xx = np.indices(shape)
    return np.where((yy // square + xx // square) % 2, 160.0, 96.0).astype(np.float32)


def finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def check_modes(surround, centre, transparency: bool, background, deis: int) -> None:
    """One ConfigError line for a --deis count other than 0 or at least 2, or --surround,
    --centre, --transparency, --background and --deis that do not go together."""
    from twin.mei.context import DIRECTIONS

    if deis == 1 or deis < 0:
        raise ConfigError(f"--deis {deis}: give 0 (none) or at least 2 images per neuron")
    if surround is not None and surround not in DIRECTIONS:
        raise ConfigError(f"--surround {surround}: use {' or '.join(DIRECTIONS)}")
    if surround is not None and centre is None:
        raise ConfigError(
            f"--surround {surround}: give --centre, an MEI store of this run or image files of the centre"
        )
    if centre is not None and surround is None:
        raise ConfigError(f"--centre {centre}: give --surround excite or --surround suppress with it")
    if transparency and surround is not None:
        raise ConfigError("--transparency with --surround: run them as two commands")
    if background is not None and not transparency:
        raise ConfigError(f"--background {background}: backgrounds are for --transparency; add it or drop --background")
    if deis and (transparency or surround is not None):
        raise ConfigError(f"--deis {deis}: DEIs are made for plain MEIs; drop --deis or --surround/--transparency")


def check_video_modes(run: str, transparency: bool, deis: int) -> None:
    """One ConfigError line for --transparency or --deis with the video run ``run``."""
    for flag, given in (("--transparency", transparency), ("--deis", deis > 0)):
        if given:
            raise ConfigError(
                f"{flag}: {run} is a video run; twin mei makes most exciting videos there, so drop {flag}"
            )


def is_store(path: str) -> bool:
    """Whether ``--centre path`` names an MEI store (a .zarr folder) rather than image files."""
    return Path(path).suffix == ".zarr"


def store_centres(job: MeiJob, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(neuron indices (n,), centres (n, [frame,] [channel,] y, x) normalized): the best-seed MEIs
    (of a video run: MEVs) of ``job.index`` (None: all of the store's) in the --centre store
    ``path``, checked to be of this run and session, with the session's normalization and, of a
    video run, clips of [mei].frames frames."""
    from twin.mei.context import check_centre_store

    ds, data = job.centre_store, job.data
    rows = check_centre_store(path, ds, job.run, job.session, data.unit_id, data.image_shape, data.channels, job.index)
    for name, value in (("image_mean", job.image_mean), ("image_std", job.image_std)):
        if not np.array_equal(ds[name].values, value):
            raise ConfigError(
                f"--centre {path}: variable {name} differs from the normalization of the session's store"
                f" {data.path}; make the MEIs with the same session store"
            )
    frames = int(ds.sizes.get("frame", 0))
    if frames and not job.video:
        raise ConfigError(
            f"--centre {path}: variable images holds clips but {job.run} is an image run; pass MEIs made by"
            f" twin mei {job.run}"
        )
    if job.video and frames != job.config.frames:
        raise ConfigError(
            f"--centre {path}: variable images holds {f'clips of {frames} frames' if frames else 'images'} but"
            f" [mei].frames is {job.config.frames}; give MEVs of {job.config.frames} frames made by twin mei"
            f" {job.run}, or set [mei].frames in --config to theirs"
        )
    chosen = ds["images"].values[rows, ds["best_seed"].values.astype(np.int64)[rows]]
    return ds["neuron_index"].values[rows].astype(np.int64), chosen.astype(np.float32)


def file_centres(path, data, n: int, engine_mean, engine_std):
    """(centres (n, [channel,] y, x) normalized, masks (n, y, x)) of the image patches in the
    files ``path``: one for every neuron, or one per neuron."""
    from twin.mei.context import patch_masks
    from twin.predict import prepare, read_inputs

    images, names = read_inputs(path, data.channels)
    centres = engine_layout(prepare(images, data, f"--centre {path}"))
    if len(centres) not in (1, n):
        raise ConfigError(
            f"--centre {path}: holds {len(centres)} images for {n} neurons; give one image patch, or one"
            " per neuron in the order of --neurons"
        )
    masks = patch_masks(path, names, centres * engine_std + engine_mean, engine_mean)
    repeat = n // len(centres)
    return np.repeat(centres, repeat, axis=0).astype(np.float32), np.repeat(masks, repeat, axis=0)


def per_image(masks: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Masks (n, y, x) shaped to multiply images (n, [channel,] y, x)."""
    return masks[:, None] if images.ndim == 4 else masks


@dataclass(frozen=True)
class MeiJob:
    """A checked `twin mei` job: the run, its session and what the MEI, surround and transparency
    paths share.

    run: the run folder as given; index: the neurons (n,) as positions in the session, None for
    the neurons of ``centre_store`` (the --centre MEI store, or None); engine: the keyword
    arguments of optimize_meis and surround_inputs (image_shape, pixel_range, image_stats,
    validator, progress, behavior, pupil_center); image_mean, image_std: the session's
    normalization channels first, as stored; attrs: the store attributes of every path (of a
    video run with frame_rate); primary: whether this process writes the outputs.
    """

    run: str
    model: Twin
    session: int
    data: SessionData
    index: np.ndarray | None
    centre_store: xr.Dataset | None
    config: MEIConfig
    config_sources: list[str]
    attrs: dict
    engine: dict
    image_mean: np.ndarray
    image_std: np.ndarray
    out: Path
    overwrite: bool
    primary: bool

    @property
    def fixed(self) -> dict:
        """Behavior and pupil centre, each at its train mean (None when the session has none)."""
        return {name: self.engine[name] for name in ("behavior", "pupil_center")}

    @property
    def video(self) -> bool:
        """Whether the run's model takes clips (the engine makes most exciting videos)."""
        from twin.mei.optimize import is_video

        return is_video(self.model)

    @property
    def objective(self):
        """Each image's response of its own neuron (twin.mei.optimize.neuron_objective), behavior
        and pupil centre held; of a clip, averaged over the last [mei].response_window frames."""
        from twin.mei.optimize import neuron_objective

        window = self.config.response_window if self.video else None
        return neuron_objective(self.session, **self.fixed, window=window)

    def pixels(self, images: np.ndarray) -> np.ndarray:
        """Normalized images (..., [channel,] y, x) in pixel levels."""
        mean, std = self.engine["image_stats"]
        return images * std + mean


def check_outputs(out: Path, overwrite: bool, run: str, validator, stores, run_records, centre, background) -> None:
    """ConfigError unless the store ``out`` and its PNG may be written (twin.outputs.check_output
    against the command's inputs). Every process checks (the same answer on a shared
    filesystem), so all stop together."""
    from twin.mei.context import GRAY

    inputs = [run, *([validator] if validator else []), *(stores or [r["path"] for r in run_records])]
    inputs += [path for path in (centre, background) if path and path not in ("noise", *GRAY)]
    check_output(out, overwrite, "store", inputs=inputs)
    check_output(out.with_suffix(".png"), overwrite, "file", inputs=inputs)


def load_validator(validator: str | None, session: int, data, run: str, video: bool):
    """The model of the run ``validator`` (None: none), checked to have ``data``'s neurons and to
    take clips when the run's model does (``video``)."""
    from twin.checkpoint import load_run
    from twin.mei.optimize import is_video

    if validator is None:
        return None
    model = load_run(validator, load_sessions=False).model
    if is_video(model) != video:
        kinds = ("an image run", "a video run")
        raise ConfigError(
            f"--validator {validator}: is {kinds[is_video(model)]} but {run} is {kinds[video]}; pass a run fit on"
            " the same session"
        )
    neurons = model.n_neurons[session] if session < len(model.n_neurons) else 0
    if neurons != data.n_neurons:
        raise ConfigError(
            f"--validator {validator}: session {session} has {neurons}"
            f" neurons there but {data.n_neurons} in {run}; pass a run fit on the same session"
        )
    return model


def engine_arguments(data, validator_model, progress: bool) -> dict:
    """The keyword arguments of optimize_meis for SessionData ``data``: images in the engine's
    layout, (y, x) or (channel, y, x) for several channels; behavior and pupil centre at their
    train means."""
    image_shape = data.image_shape if data.channels == 1 else (data.channels, *data.image_shape)
    mean, std = (broadcastable(stats_channels_first(v)) for v in (data.image_mean, data.image_std))
    return {
        "image_shape": image_shape,
        "pixel_range": tuple(broadcastable(stats_channels_first(v)) for v in data.pixel_range),
        "image_stats": (mean, std),
        "validator": validator_model,
        "progress": progress,
        **data.train_means(),
    }


def prepare_job(run: str, neurons, seeds, recipe, config_path, out, deis: int, session: int, validator,
                progress: bool, overwrite: bool, stores, surround, centre, transparency: bool, background) -> MeiJob:
    """Check mei_command's arguments and outputs, then load the run, its session ``session`` and
    the validator: one ConfigError line for the first problem, before any work."""
    import jax

    from twin.checkpoint import load_run, read_run_files
    from twin.mei.optimize import is_video
    from twin.mei.recipes import recipe_config
    from twin.mei.store import open_meis, recipe_attrs

    primary = jax.process_index() == 0
    run_config, run_records = read_run_files(Path(run))
    config, config_sources = recipe_config(
        recipe, config_path, seeds, run_config.mei, str(Path(run) / "config.toml")
    )
    check_modes(surround, centre, transparency, background, deis)
    out = Path(out)
    if out.suffix != ".zarr":
        raise ConfigError(f"--out {out}: name the MEI store with a .zarr suffix")
    check_outputs(out, overwrite, run, validator, stores, run_records, centre, background)
    loaded = load_run(run, stores=stores)
    video = is_video(loaded.model)
    if video:
        check_video_modes(run, transparency, deis)
    if not 0 <= session < len(loaded.sessions):
        raise ConfigError(
            f"--session {session}: run {run} has sessions 0..{len(loaded.sessions) - 1}"
        )
    data = loaded.sessions[session]
    if video and surround is None:
        check_clip_frames(data, config.frames)
    centre_store = open_meis(centre) if centre is not None and is_store(centre) else None
    if neurons is None and centre_store is not None:
        index = None  # the centre store's neurons
    else:
        index = parse_neurons("all" if neurons is None else neurons, data.unit_id)
    validator_model = load_validator(validator, session, data, run, video)
    attrs = recipe_attrs(run, session, data.path, config, config_sources)
    if video:
        attrs["frame_rate"] = float(data.frame_rate)  # makes the store a video store (twin.mei.store)
    return MeiJob(
        run=run, model=loaded.model, session=session, data=data, index=index, centre_store=centre_store,
        config=config, config_sources=config_sources, attrs=attrs,
        engine=engine_arguments(data, validator_model, progress and primary),
        image_mean=stats_channels_first(data.image_mean), image_std=stats_channels_first(data.image_std),
        out=out, overwrite=overwrite, primary=primary,
    )


def simulated_truth(data) -> dict | None:
    """The simulated animal behind SessionData ``data`` (twin.data.simulate.ground_truth), or
    None for a recorded session."""
    from twin.data.simulate import ground_truth
    from twin.data.store import open_session

    ds = open_session(data.path)
    return ground_truth(ds) if ds.attrs.get("simulated") else None


def naturalness_checks(job: MeiJob, images: np.ndarray, natural: np.ndarray) -> tuple[dict, dict]:
    """The naturalness (twin.naturalness) of normalized images (n, [channel,] y, x) against the
    session's train images ``natural`` (natural_pixels): (store variables spectral_kl and
    spectral_slope (n,), summary entries median_spectral_kl and natural_spectral_slope)."""
    from twin.naturalness import naturalness

    spectra = naturalness(job.pixels(images), natural)
    variables = {name: spectra[name] for name in ("spectral_kl", "spectral_slope")}
    summary = {
        "median_spectral_kl": finite(np.median(spectra["spectral_kl"])),
        "natural_spectral_slope": spectra["natural_spectral_slope"],
    }
    return variables, summary


def result_variables(job: MeiJob, result, index: np.ndarray) -> dict:
    """Store variables of an MEIResult ``result`` of neurons ``index`` (n,)."""
    return {
        "images": result.images,
        "activations": result.activations,
        "best_seed": result.best_seed,
        "steps": result.steps,
        "validator_activations": result.validator_activations,
        "unit_id": job.data.unit_id[index],
        "neuron_index": index,
    }


def write_outputs(job: MeiJob, variables: dict, attrs: dict, panels: np.ndarray, titles: list[str]) -> None:
    """On the primary process, write the MEI store of ``variables`` (twin.mei.store; the
    normalization added) with ``attrs``, and the PNG of ``panels`` (m, [channel,] y, x) in pixel
    levels titled ``titles`` (m,)."""
    from twin.mei.store import meis_dataset, write_meis

    if not job.primary:
        return
    variables = variables | {"image_mean": job.image_mean, "image_std": job.image_std}
    write_meis(meis_dataset(variables, attrs), job.out, job.overwrite)
    with output(job.out.with_suffix(".png"), job.overwrite, "file") as grid:
        plot_grid(panels, titles, grid)


def surround_centres(job: MeiJob, centre: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(neurons (n,), centres (n, [frame,] [channel,] y, x) normalized, centre masks (n, y, x)):
    the best-seed MEIs (or MEVs) of the --centre store inside their tight masks (of a clip: one
    mask for all its frames), or the image patches of the --centre files inside their Walker
    masks (on a video run, shown on every frame)."""
    from twin.mei.masks import tight_masks

    if job.centre_store is None:
        return job.index, *file_centres(centre, job.data, len(job.index), *job.engine["image_stats"])
    index, centres = store_centres(job, centre)
    masks = tight_masks(job.model, job.objective, centres, index, job.engine["image_stats"][1], solid=True)
    check_centre_masks(job, centre, index, centres, masks)
    return index, centres, masks


def check_centre_masks(job: MeiJob, centre: str, index: np.ndarray, centres: np.ndarray, masks: np.ndarray) -> None:
    """ConfigError naming the first of neurons ``index`` (n,) whose tight mask (n, y, x) of its
    centre (n, [frame,] [channel,] y, x) from the --centre store leaves no surround or no centre."""
    from twin.mei.masks import THRESHOLD, hull_region

    full = np.flatnonzero(~(masks < 0.5).any(axis=(1, 2)))
    if len(full):
        raise ConfigError(
            f"--centre {centre}: the centre of unit {job.data.unit_id[index[full[0]]]} covers the whole frame"
            " and leaves no surround; pass image patches on the mean gray as --centre instead"
        )
    empty = np.flatnonzero(~(masks == 1).any(axis=(1, 2)))
    if not len(empty):
        return
    kind, fix = ("MEI", "more steps")
    if job.video:
        kind, fix = ("MEV", "more steps, a higher [mei].learning_rate or [mei].norm")
    first = empty[0]
    if hull_region(centres[first] * job.engine["image_stats"][1], 0.0).any():
        why = "the twin's response to it stays above 90% as its mask is eroded away"
    else:
        why = f"it nowhere differs from the mean gray by {THRESHOLD:g} levels"
    raise ConfigError(
        f"--centre {centre}: the {kind} of unit {job.data.unit_id[index[first]]} has no centre ({why});"
        f" pass stronger {kind}s ({fix})"
    )


def surround_truth(job: MeiJob, index: np.ndarray, alone: np.ndarray, best: np.ndarray) -> tuple:
    """The simulated animal's responses (n,) of neurons ``index`` (n,) to the centres ``alone`` and
    to the best centres with surrounds ``best`` (n, [frame,] [channel,] y, x), normalized (of
    clips: over the response window); NaN for a recorded session."""
    from twin.mei import validate

    truth = simulated_truth(job.data)
    if truth is None:
        nan = np.full(len(index), np.nan, np.float32)
        return nan, nan
    if job.video:
        rows = np.arange(len(index))
        return tuple(true_clip_responses(job, truth, images)[rows, index] for images in (alone, best))
    return tuple(validate.true_responses(truth, job.pixels(images), index) for images in (alone, best))


def surround_summary(job: MeiJob, surround: str, variables: dict, activation: np.ndarray,
                     spectra_summary: dict) -> dict:
    """The surround summary of mei_command from the store ``variables`` and the best activations
    (n,); of a video run with the clips' frames and frame rate, without the spectra."""
    ratio, true_ratio = variables["surround_ratio"], variables["true_surround_ratio"]
    spectral_kl = variables.get("spectral_kl")
    clips = {"frames": job.config.frames, "frame_rate": job.attrs["frame_rate"]} if job.video else {}
    return {
        "recipe": job.config.recipe,
        "config_sources": job.config_sources,
        "surround": surround,
        **clips,
        "median_surround_ratio": finite(np.median(ratio)),
        "median_true_surround_ratio": finite(np.median(true_ratio)),
        **spectra_summary,
        "neurons": [
            {
                "id": job.data.unit_id[neuron].item(),
                "centre_activation": finite(variables["centre_activation"][i]),
                "activation": finite(activation[i]),
                "surround_ratio": finite(ratio[i]),
                "true_surround_ratio": finite(true_ratio[i]),
                **({} if spectral_kl is None else {"spectral_kl": finite(spectral_kl[i])}),
            }
            for i, neuron in enumerate(variables["neuron_index"])
        ],
    }


def surround_panels(job: MeiJob, found, index: np.ndarray, surround: str) -> tuple[np.ndarray, list[str]]:
    """(panels (m, [channel,] y, x) normalized, titles (m,)) of the PNG of a SurroundResult
    ``found`` of neurons ``index`` (n,): each neuron's centre alone, then with its best surround;
    of clips, the same (up to 4) frames of each, in one row per neuron."""
    from twin.data.schema import plot_text

    alone, best = found.centre_alone, found.result.best_images()
    units = job.data.unit_id[index]
    if not job.video:
        panels = np.stack([alone, best], axis=1).reshape(-1, *best.shape[1:])
        titles = [
            title for unit, ratio in zip(units, found.ratio)
            for title in (f"unit {plot_text(unit)}: centre", f"{surround} {ratio:.2f}x")
        ]
        return panels, titles
    shown = shown_frames(best.shape[1], 4)
    panels = np.stack([alone[:, shown], best[:, shown]], axis=1).reshape(-1, *best.shape[2:])
    titles = [
        title for unit, ratio in zip(units, found.ratio)
        for label in (f"unit {plot_text(unit)}: centre", f"{surround} {ratio:.2f}x")
        for title in (f"{label}, frame {f}" for f in shown)
    ]
    return panels, titles


def run_surround(job: MeiJob, surround: str, centre: str) -> dict:
    """Optimize, check and write the ``surround`` surrounds (excite or suppress) of the neurons'
    fixed centres from ``centre`` (of a video run: clips around a centre clip or image); returns
    the surround summary of mei_command."""
    from twin.mei.context import surround_inputs

    index, centres, masks = surround_centres(job, centre)
    found = surround_inputs(
        job.model, job.session, index, job.config, centre=centres, centre_mask=masks, direction=surround, **job.engine
    )
    best = found.result.best_images()
    true_centre, true_activation = surround_truth(job, index, found.centre_alone, best)
    attrs = job.attrs | {"surround": surround, "centre": str(Path(centre).absolute())}
    spectra, spectra_summary = {}, {}
    if not job.video:  # the spectra of twin.naturalness are of images
        spectra, spectra_summary = naturalness_checks(job, best, natural_pixels(job.data))
        attrs["natural_spectral_slope"] = spectra_summary["natural_spectral_slope"]
    variables = result_variables(job, found.result, index) | {
        "surround": found.surround,
        "centre_mask": found.centre_mask,
        "centre_activation": found.centre_activation,
        "surround_ratio": found.ratio,
        "true_centre_activation": true_centre,
        "true_activation": true_activation,
        "true_surround_ratio": true_activation / true_centre,
        **spectra,
    }
    panels, titles = surround_panels(job, found, index, surround)
    write_outputs(job, variables, attrs, job.pixels(panels), titles)
    return surround_summary(job, surround, variables, found.result.best_activations(), spectra_summary)


def transparency_backgrounds(job: MeiJob, background: str | None) -> tuple[np.ndarray, dict]:
    """(the backgrounds (b, [channel,] y, x) normalized that transparent MEIs are optimized over,
    the store attrs with background and opacity_penalty): ``background`` is gray (None), noise, or
    image files or a session store of natural images."""
    from twin.data.sources import open_source
    from twin.mei.context import GRAY, background_bank
    from twin.predict import prepare

    background = background or GRAY[0]
    backgrounds = background_bank(
        background,
        lambda path: open_source(path, job.data.channels),
        lambda images: engine_layout(prepare(images, job.data, f"--background {background}")),
        job.engine["image_shape"],
        job.engine["pixel_range"],
    )
    return backgrounds, job.attrs | {"background": background, "opacity_penalty": job.config.opacity_penalty}


def natural_checks(job: MeiJob, best: np.ndarray) -> dict:
    """The in-silico controls of the best MEIs (n, [channel,] y, x) as store variables: the best
    natural train image (best_natural_activation, best_natural_trial (n,)), contrast tuning
    (contrast_rms, contrast_activation (n, contrast)) and shift robustness (shift_offset (shift,
    yx), shift_activation (n, shift))."""
    from twin.mei import validate

    train = job.data.trials("train")
    activation, where = validate.best_natural(
        job.model, job.session, job.data.images[train], job.index, **job.fixed
    )
    objective = job.objective
    contrast_rms, contrast_activation = validate.contrast_tuning(
        job.model, objective, best, job.index, job.engine["pixel_range"]
    )
    return {
        "best_natural_activation": activation,
        "best_natural_trial": train[where],
        "contrast_rms": contrast_rms,
        "contrast_activation": contrast_activation,
        "shift_offset": validate.shift_offsets(),
        "shift_activation": validate.shift_robustness(job.model, objective, best, job.index),
    }


def ground_truth_checks(job: MeiJob, best: np.ndarray, natural: np.ndarray) -> dict:
    """The simulated animal's view of the best MEIs (n, [channel,] y, x) as store variables, all
    (n,): its responses (true_activation), its best train image among ``natural``
    (natural_pixels; true_best_natural, true_best_natural_trial), their ratio (true_ratio) and the
    correlation with its optimal stimulus (optimum_correlation); NaN and trial -1 for a recorded
    session."""
    from twin.mei import validate

    n = len(job.index)
    nan = np.full(n, np.nan, np.float32)
    truth = simulated_truth(job.data)
    if truth is None:
        return {
            "true_activation": nan,
            "true_best_natural": nan,
            "true_best_natural_trial": np.full(n, -1, np.int64),
            "true_ratio": nan,
            "optimum_correlation": nan,
        }
    pixels = job.pixels(best)
    true_activation = validate.true_responses(truth, pixels, job.index)
    true_natural, where = validate.true_best_natural(truth, natural, job.index)
    return {
        "true_activation": true_activation,
        "true_best_natural": true_natural,
        "true_best_natural_trial": job.data.trials("train")[where],
        "true_ratio": true_activation / true_natural,
        "optimum_correlation": validate.optimum_correlation(pixels, truth["optimal_stimulus"][job.index]),
    }


def diverse_step(job: MeiJob, result, deis: int, natural: np.ndarray) -> dict:
    """``deis`` diverse exciting images of each neuron from its best MEI (twin.mei.diverse) as
    store variables deis (n, deis, [channel,] y, x), dei_activations and dei_spectral_kl (n, deis)
    against the train images ``natural``; None (left out of the store) when ``deis`` is 0."""
    from twin.mei import diverse
    from twin.naturalness import naturalness

    if not deis:
        return {"deis": None, "dei_activations": None, "dei_spectral_kl": None}
    images, activations = diverse.diverse_images(
        job.model, job.session, job.index, result.best_images(), result.best_activations(), job.config, deis,
        pixel_range=job.engine["pixel_range"], progress=job.engine["progress"], **job.fixed,
    )
    pixels = job.pixels(images)
    spectral_kl = naturalness(pixels.reshape(-1, *pixels.shape[2:]), natural)["spectral_kl"]
    return {"deis": images, "dei_activations": activations, "dei_spectral_kl": spectral_kl.reshape(images.shape[:2])}


def transparency_panels(job: MeiJob, result, panels: np.ndarray, titles: list[str]) -> tuple:
    """(panels (2n, [channel,] y, x), titles (2n,), mean opacity (n,) of the best seeds): each of
    ``panels`` (n, [channel,] y, x), the MEIs over the mean gray in pixel levels, followed by its
    foreground under its opacity over a checkerboard (``result``: the transparent MEIResult)."""
    n = len(panels)
    chosen = (np.arange(n), result.best_seed)
    opacity = result.opacity[chosen]
    mean_opacity = opacity.mean(axis=(1, 2))
    seen = per_image(opacity, panels) * job.pixels(result.foreground[chosen])
    seen = seen + (1 - per_image(opacity, panels)) * checkerboard(opacity.shape[1:])
    panels = np.stack([panels, seen], axis=1).reshape(2 * n, *panels.shape[1:])
    titles = [t for title, m in zip(titles, mean_opacity) for t in (title, f"opacity {m:.2f}")]
    return panels, titles, mean_opacity


def mei_summary(job: MeiJob, variables: dict, activation: np.ndarray, spectra_summary: dict) -> dict:
    """The MEI summary of mei_command from the store ``variables`` and the best activations (n,)."""
    ratio, true_ratio, spectra = variables["ratio"], variables["true_ratio"], variables["spectral_kl"]
    mean_opacity = variables.get("mean_opacity")
    return {
        "recipe": job.config.recipe,
        "config_sources": job.config_sources,
        "median_ratio": finite(np.median(ratio)),
        "median_true_ratio": finite(np.median(true_ratio)),
        **spectra_summary,
        "neurons": [
            {
                "id": job.data.unit_id[neuron].item(),
                "activation": finite(activation[i]),
                "best_natural_activation": finite(variables["best_natural_activation"][i]),
                "ratio": finite(ratio[i]),
                "true_ratio": finite(true_ratio[i]),
                "optimum_correlation": finite(variables["optimum_correlation"][i]),
                "spectral_kl": finite(spectra[i]),
                "spectral_slope": finite(variables["spectral_slope"][i]),
                **({} if mean_opacity is None else {"mean_opacity": finite(mean_opacity[i])}),
            }
            for i, neuron in enumerate(job.index)
        ],
    }


def run_meis(job: MeiJob, deis: int, transparency: bool, background: str | None) -> dict:
    """Optimize, check and write the MEIs (with ``transparency``, transparent over ``background``)
    and ``deis`` DEIs of each; returns the MEI summary of mei_command."""
    from twin.data.schema import plot_text
    from twin.mei.optimize import optimize_meis

    backgrounds, attrs = transparency_backgrounds(job, background) if transparency else (None, job.attrs)
    result = optimize_meis(job.model, job.session, job.index, job.config, backgrounds=backgrounds, **job.engine)
    best, activation = result.best_images(), result.best_activations()
    natural = natural_pixels(job.data)
    checks = natural_checks(job, best)
    ratio = activation / checks["best_natural_activation"]
    spectra, spectra_summary = naturalness_checks(job, best, natural)
    variables = result_variables(job, result, job.index) | checks | {"ratio": ratio}
    variables |= ground_truth_checks(job, best, natural) | spectra | diverse_step(job, result, deis, natural)
    variables |= {"foreground": result.foreground, "opacity": result.opacity}
    attrs = attrs | {
        "true_ratio_control": "the ground truth's best train image",
        "natural_spectral_slope": spectra_summary["natural_spectral_slope"],
    }
    panels = job.pixels(best)
    titles = [f"unit {plot_text(u)}: {r:.2f}x" for u, r in zip(job.data.unit_id[job.index], ratio)]
    opacity_summary = {}
    if transparency:
        panels, titles, variables["mean_opacity"] = transparency_panels(job, result, panels, titles)
        opacity_summary = {"background": attrs["background"], "mean_opacity": finite(variables["mean_opacity"].mean())}
    write_outputs(job, variables, attrs, panels, titles)
    return opacity_summary | mei_summary(job, variables, activation, spectra_summary)


def run_mevs(job: MeiJob) -> dict:
    """Optimize and write the most exciting videos of a video run's neurons: the store (clips
    (neuron, seed, frame, [channel,] y, x), attr frame_rate, each best clip's motion direction)
    and a PNG of up to 8 frames of each neuron's best clip; returns the summary {"recipe",
    "config_sources", "frames", "frame_rate", "static", "neurons": [{"id", "activation",
    "direction"}]} (direction in degrees, twin.mei.motion; None for static clips)."""
    from twin.data.schema import plot_text
    from twin.mei.motion import motion_direction
    from twin.mei.optimize import optimize_meis

    result = optimize_meis(job.model, job.session, job.index, job.config, **job.engine)
    best, activation = result.best_images(), result.best_activations()
    direction = np.array([motion_direction(clip) for clip in best], np.float32)
    frames = best.shape[1]
    clips, starts = natural_clips(job.data, frames)
    checks = natural_clip_checks(job, best, clips)
    # where the best natural clip lies in the session, for the rig export of the control
    checks |= {"best_natural_trial": starts[checks["best_natural_clip"], 0],
               "best_natural_frame": starts[checks["best_natural_clip"], 1]}
    ratio, true_ratio = activation / checks["best_natural_activation"], checks["true_ratio"]
    shown = shown_frames(frames, 8)
    panels = job.pixels(best[:, shown]).reshape(-1, *best.shape[2:])
    titles = [f"unit {plot_text(u)}: frame {f}" for u in job.data.unit_id[job.index] for f in shown]
    variables = result_variables(job, result, job.index) | checks | {"direction": direction, "ratio": ratio}
    write_outputs(job, variables, job.attrs, panels, titles)
    return {
        "recipe": job.config.recipe,
        "config_sources": job.config_sources,
        "frames": frames,
        "frame_rate": job.attrs["frame_rate"],
        "static": job.config.static,
        "median_ratio": finite(np.median(ratio)),
        "median_true_ratio": finite(np.median(true_ratio)),
        "neurons": [
            {
                "id": job.data.unit_id[neuron].item(),
                "activation": finite(activation[i]),
                "best_natural_activation": finite(checks["best_natural_activation"][i]),
                "ratio": finite(ratio[i]),
                "true_ratio": finite(true_ratio[i]),
                "direction": finite(direction[i]),
            }
            for i, neuron in enumerate(job.index)
        ],
    }


def shown_frames(frames: int, count: int) -> np.ndarray:
    """Up to ``count`` frame indices spread evenly over a clip of ``frames`` frames (for PNGs)."""
    return np.unique(np.linspace(0, frames - 1, min(frames, count)).round().astype(int))


def check_clip_frames(data, frames: int) -> None:
    """ConfigError unless a train trial of the video SessionData ``data`` has ``frames`` recorded
    frames: the natural control of MEVs of that length (natural_clips), checked before optimizing."""
    train = data.trials("train")
    if not len(train) or int(data.frame_count[train].max()) < frames:
        raise ConfigError(
            f"{data.path}: no train trial has [mei].frames = {frames} recorded frames for a natural clip; lower"
            " [mei].frames"
        )


def natural_clips(data, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The train trials of the video SessionData ``data`` cut into consecutive clips of ``frames``
    recorded frames (check_clip_frames: at least one): (clips (clip, frames, y, x, channel)
    normalized, the natural control of MEVs; starts (clip, 2): the trial and first frame of each)."""
    starts = np.array(
        [
            (trial, start)
            for trial in data.trials("train")
            for start in range(0, int(data.frame_count[trial]) - frames + 1, frames)
        ],
        np.int64,
    ).reshape(-1, 2)
    return np.stack([data.images[trial, start : start + frames] for trial, start in starts]), starts


def natural_clip_checks(job: MeiJob, best: np.ndarray, clips: np.ndarray) -> dict:
    """The controls of the best MEVs (n, frame, [channel,] y, x) among natural ``clips``
    (natural_clips), each (n,): the twin's best natural clip (best_natural_activation,
    best_natural_clip), and on the simulated animal the MEV's response (true_activation), the
    truth's best natural clip (true_best_natural) and their ratio (true_ratio; NaN for a recorded
    session). Every activation is the response averaged over the last [mei].response_window frames."""
    from twin.mei import validate

    window = job.config.response_window
    activation, where = validate.best_natural(job.model, job.session, clips, job.index, window=window, **job.fixed)
    checks = {"best_natural_activation": activation, "best_natural_clip": where}
    truth = simulated_truth(job.data)
    n = len(job.index)
    if truth is None:
        missing = ("true_activation", "true_best_natural", "true_ratio")
        return checks | dict.fromkeys(missing, np.full(n, np.nan, np.float32))
    # The simulated video animal sees one channel (twin simulate --video has no colour).
    true_natural = true_clip_responses(job, truth, clips[..., 0])[:, job.index].max(axis=0)
    true_activation = true_clip_responses(job, truth, best)[np.arange(n), job.index]
    return checks | {
        "true_activation": true_activation,
        "true_best_natural": true_natural,
        "true_ratio": true_activation / true_natural,
    }


def true_clip_responses(job: MeiJob, truth: dict, clips: np.ndarray, batch: int = 64) -> np.ndarray:
    """(m, neuron) float32: the simulated video animal's (``truth``) noise-free responses to
    normalized one-channel clips (m, frame, y, x), averaged over the last [mei].response_window
    frames; ``batch`` clips at a time."""
    from twin.data import simulate_video

    window = job.config.response_window
    responses = [
        simulate_video.mean_response(truth, job.pixels(clips[first : first + batch]))[:, -window:].mean(axis=1)
        for first in range(0, len(clips), batch)
    ]
    return np.concatenate(responses).astype(np.float32)


def mei_command(
    run: str,
    neurons: str | None = None,
    seeds: int | None = None,
    recipe: str | None = None,
    config_path: str | None = None,
    out: str = "meis.zarr",
    deis: int = 0,
    session: int = 0,
    validator: str | None = None,
    progress: bool = True,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    overwrite: bool = False,
    stores: list[str] | None = None,
    surround: str | None = None,
    centre: str | None = None,
    transparency: bool = False,
    background: str | None = None,
) -> dict:
    """Optimize, validate and store the MEIs of ``neurons`` of ``session`` of the run ``run``.

    Writes the MEI store ``out`` and ``<out stem>.png`` beside it (existing ones only with
    ``overwrite``; both paths are checked before the work starts); returns the summary
    {"recipe", "config_sources", "median_ratio", "median_true_ratio", "median_spectral_kl",
    "natural_spectral_slope", "neurons": [{"id", "activation", "best_natural_activation", "ratio",
    "true_ratio", "optimum_correlation", "spectral_kl", "spectral_slope"}]}.
    recipe: a preset or custom recipe name; None uses the run's own [mei] recipe (see
    twin.mei.recipes.recipe_config for how the run's [mei], ``config_path`` and ``seeds`` apply).
    coordinator, num_processes, process_id: multi-host set-up (twin.distributed.initialize);
    every process runs the same command, the (neuron, seed) pairs are split over all their
    devices, and process 0 writes the outputs. stores: the run's sessions from these stores
    instead of the recorded ones (--store; twin.checkpoint.load_run). neurons: a --neurons spec
    (parse_neurons); None is all, or with a centre MEI store the store's neurons.

    surround ("excite" or "suppress") with centre: optimize only the surround of each neuron's
    fixed centre, from an MEI store of this run (each MEI inside its tight mask) or image files
    (.npy, folder or .zip: one patch on the mean gray, or one per neuron, inside its Walker mask);
    returns {"recipe", "config_sources", "surround", "median_surround_ratio",
    "median_true_surround_ratio", "median_spectral_kl", "natural_spectral_slope", "neurons":
    [{"id", "centre_activation", "activation", "surround_ratio", "true_surround_ratio",
    "spectral_kl"}]} (twin.mei.context). transparency: MEIs with a
    per-pixel opacity over ``background`` (grey, noise, or image files or a session store of
    natural images); the summary gains "background", "mean_opacity" and each neuron's
    "mean_opacity".

    A video run (its model's ``video``) gets most exciting videos instead, with the summary of
    run_mevs; its surrounds are clips around the centre MEVs of an MEV store or around the centre
    image patches on every frame, their summary has "frames" and "frame_rate" and no spectra;
    --transparency and --deis are refused there.
    """
    from twin import distributed
    from twin.mei.optimize import is_video

    distributed.initialize(coordinator, num_processes, process_id)
    job = prepare_job(
        run, neurons, seeds, recipe, config_path, out, deis, session, validator, progress, overwrite, stores,
        surround, centre, transparency, background,
    )
    if surround is not None:
        return run_surround(job, surround, centre)
    if is_video(job.model):
        return run_mevs(job)
    return run_meis(job, deis, transparency, background)
