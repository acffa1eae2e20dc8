"""`twin mei`: MEIs of a fitted run's neurons, validated, written as a store and a PNG grid; with
--surround, surrounds around fixed centres; with --transparency, transparent MEIs (twin.mei.context)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import numpy as np

from twin.errors import ConfigError
from twin.outputs import check_output, output


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
    """One ConfigError line for --surround, --centre, --transparency, --background and --deis
    that do not go together."""
    from twin.mei.context import DIRECTIONS

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


def is_store(path: str) -> bool:
    """Whether ``--centre path`` names an MEI store (a .zarr folder) rather than image files."""
    return Path(path).suffix == ".zarr"


def store_centres(path, ds, run, session, data, index, image_mean, image_std):
    """(neuron indices (n,), centres (n, [channel,] y, x) normalized): the best-seed MEIs of
    ``index (n,)`` (None: all of the store's) from the MEI store ``ds`` read from ``path``, whose
    normalization must be the session's ``image_mean``, ``image_std`` (channels first)."""
    from twin.mei.context import check_centre_store

    rows = check_centre_store(path, ds, run, session, data.unit_id, data.image_shape, data.channels, index)
    for name, value in (("image_mean", image_mean), ("image_std", image_std)):
        if not np.array_equal(ds[name].values, value):
            raise ConfigError(
                f"--centre {path}: variable {name} differs from the normalization of the session's store"
                f" {data.path}; make the MEIs with the same session store"
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


def write_surrounds(found, centres, data, index, image_mean, image_std, attrs, config_sources, out,
                    overwrite, primary) -> dict:
    """Write the surround store and PNG (see twin.mei.store) of ``found`` (SurroundResult) around
    ``centres (n, [channel,] y, x)`` of neurons ``index (n,)``; returns the summary."""
    from twin.data.schema import plot_text
    from twin.data.simulate import ground_truth
    from twin.data.store import open_session
    from twin.mei import validate
    from twin.mei.store import meis_dataset, write_meis
    from twin.naturalness import naturalness

    result = found.result
    engine_mean, engine_std = broadcastable(image_mean), broadcastable(image_std)
    best = result.best_images()
    alone = per_image(found.centre_mask, centres) * centres
    n = len(index)
    true_centre = true_activation = np.full(n, np.nan, np.float32)
    ds_session = open_session(data.path)
    if ds_session.attrs.get("simulated"):
        params = ground_truth(ds_session)
        true_centre = validate.true_responses(params, alone * engine_std + engine_mean, index)
        true_activation = validate.true_responses(params, best * engine_std + engine_mean, index)
    true_ratio = true_activation / true_centre
    spectra = naturalness(best * engine_std + engine_mean, natural_pixels(data))
    attrs = attrs | {"natural_spectral_slope": spectra["natural_spectral_slope"]}
    variables = {
        "images": result.images,
        "activations": result.activations,
        "best_seed": result.best_seed,
        "steps": result.steps,
        "validator_activations": result.validator_activations,
        "unit_id": data.unit_id[index],
        "neuron_index": index,
        "surround": found.surround,
        "centre_mask": found.centre_mask,
        "centre_activation": found.centre_activation,
        "surround_ratio": found.ratio,
        "true_centre_activation": true_centre,
        "true_activation": true_activation,
        "true_surround_ratio": true_ratio,
        "spectral_kl": spectra["spectral_kl"],
        "spectral_slope": spectra["spectral_slope"],
        "image_mean": image_mean,
        "image_std": image_std,
    }
    if primary:
        write_meis(meis_dataset(variables, attrs), out, overwrite)
        with output(out.with_suffix(".png"), overwrite, "file") as grid:
            panels = np.stack([alone, best], axis=1).reshape(2 * n, *best.shape[1:])
            titles = [
                title
                for unit, ratio in zip(data.unit_id[index], found.ratio)
                for title in (f"unit {plot_text(unit)}: centre", f"{attrs['surround']} {ratio:.2f}x")
            ]
            plot_grid(panels * engine_std + engine_mean, titles, grid)
    activation = result.best_activations()
    return {
        "recipe": attrs["recipe"],
        "config_sources": config_sources,
        "surround": attrs["surround"],
        "median_surround_ratio": finite(np.median(found.ratio)),
        "median_true_surround_ratio": finite(np.median(true_ratio)) if np.isfinite(true_ratio).any() else None,
        "median_spectral_kl": finite(np.median(spectra["spectral_kl"])),
        "natural_spectral_slope": spectra["natural_spectral_slope"],
        "neurons": [
            {
                "id": data.unit_id[neuron].item(),
                "centre_activation": finite(found.centre_activation[i]),
                "activation": finite(activation[i]),
                "surround_ratio": finite(found.ratio[i]),
                "true_surround_ratio": finite(true_ratio[i]),
                "spectral_kl": finite(spectra["spectral_kl"][i]),
            }
            for i, neuron in enumerate(index)
        ],
    }


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
    {"recipe", "config_sources", "median_ratio", "median_true_ratio", "neurons": [{"id",
    "activation", "best_natural_activation", "ratio", "true_ratio", "optimum_correlation"}]}.
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
    "median_true_surround_ratio", "neurons": [{"id", "centre_activation", "activation",
    "surround_ratio", "true_surround_ratio"}]} (twin.mei.context). transparency: MEIs with a
    per-pixel opacity over ``background`` (grey, noise, or image files or a session store of
    natural images); the summary gains "background", "mean_opacity" and each neuron's
    "mean_opacity".
    """
    import jax

    from twin import distributed
    from twin.checkpoint import load_run, read_run_files
    from twin.data.schema import plot_text
    from twin.data.simulate import ground_truth
    from twin.data.store import open_session
    from twin.mei import diverse, validate
    from twin.mei.context import GRAY, background_bank, surround_inputs
    from twin.mei.masks import THRESHOLD, tight_masks
    from twin.mei.optimize import neuron_objective, optimize_meis
    from twin.mei.recipes import recipe_config
    from twin.mei.store import config_toml, meis_dataset, open_meis, write_meis
    from twin.naturalness import naturalness
    from twin.predict import prepare, read_inputs

    distributed.initialize(coordinator, num_processes, process_id)
    primary = jax.process_index() == 0
    progress = progress and primary
    run_config, run_records = read_run_files(Path(run))
    config, config_sources = recipe_config(
        recipe, config_path, seeds, run_config.mei, str(Path(run) / "config.toml")
    )
    if deis == 1 or deis < 0:
        raise ConfigError(f"--deis {deis}: give 0 (none) or at least 2 images per neuron")
    check_modes(surround, centre, transparency, background, deis)
    out = Path(out)
    if out.suffix != ".zarr":
        raise ConfigError(f"--out {out}: name the MEI store with a .zarr suffix")
    # Every process checks (the same answer on a shared filesystem), so all stop together.
    inputs = [run, *([validator] if validator else []), *(stores or [r["path"] for r in run_records])]
    inputs += [path for path in (centre, background) if path and path not in ("noise", *GRAY)]
    check_output(out, overwrite, "store", inputs=inputs)
    check_output(out.with_suffix(".png"), overwrite, "file", inputs=inputs)
    loaded = load_run(run, stores=stores)
    if not 0 <= session < len(loaded.sessions):
        raise ConfigError(
            f"--session {session}: run {run} has sessions 0..{len(loaded.sessions) - 1}"
        )
    data = loaded.sessions[session]
    centre_store = None
    if centre is not None and is_store(centre):
        centre_store = open_meis(centre)
    index = None if neurons is None and centre_store is not None else parse_neurons(neurons or "all", data.unit_id)
    validator_model = None
    if validator is not None:
        validator_model = load_run(validator, load_sessions=False).model
        if validator_model.n_neurons[session] != data.n_neurons:
            raise ConfigError(
                f"--validator {validator}: session {session} has {validator_model.n_neurons[session]}"
                f" neurons there but {data.n_neurons} in {run}; pass a run fit on the same session"
            )
    model = loaded.model
    train = data.trials("train")
    fixed = {
        "behavior": None if data.behavior is None else data.behavior[train].mean(0),
        "pupil_center": None if data.pupil_center is None else data.pupil_center[train].mean(0),
    }
    # The engine's layout: (y, x) images, or (channel, y, x) for several channels.
    image_shape = data.image_shape if data.channels == 1 else (data.channels, *data.image_shape)
    image_mean, image_std = stats_channels_first(data.image_mean), stats_channels_first(data.image_std)
    engine_mean, engine_std = broadcastable(image_mean), broadcastable(image_std)
    pixel_range = tuple(broadcastable(stats_channels_first(v)) for v in data.pixel_range)
    attrs = {
        "run": str(Path(run).absolute()),
        "session": session,
        "store": str(Path(data.path).absolute()),
        "recipe": config.recipe,
        "mei_config": config_toml(config),
        "config_sources": config_sources,
    }
    engine = {
        "image_shape": image_shape, "pixel_range": pixel_range, "image_stats": (engine_mean, engine_std),
        "validator": validator_model, "progress": progress, **fixed,
    }
    if surround is not None:
        if centre_store is not None:
            index, centre_images = store_centres(centre, centre_store, run, session, data, index, image_mean, image_std)
            masks = tight_masks(model, neuron_objective(session, **fixed), centre_images, index, engine_std, solid=True)
            empty = np.flatnonzero(~(masks == 1).any(axis=(1, 2)))
            if len(empty):
                raise ConfigError(
                    f"--centre {centre}: the MEI of unit {data.unit_id[index[empty[0]]]} nowhere differs from"
                    f" the mean gray by {THRESHOLD:g} levels, so it has no centre; pass stronger MEIs (more steps)"
                )
        else:
            centre_images, masks = file_centres(centre, data, len(index), engine_mean, engine_std)
        found = surround_inputs(
            model, session, index, config, centre=centre_images, centre_mask=masks, direction=surround, **engine
        )
        attrs |= {"surround": surround, "centre": str(Path(centre).absolute())}
        return write_surrounds(
            found, centre_images, data, index, image_mean, image_std, attrs, config_sources, out, overwrite, primary
        )
    backgrounds = None
    if transparency:
        def read(path):
            images, _ = read_inputs(path, data.channels)
            return engine_layout(prepare(images, data, f"--background {path}"))

        backgrounds = background_bank(background or GRAY[0], read, image_shape, pixel_range)
        attrs |= {"background": background or GRAY[0], "opacity_penalty": config.opacity_penalty}
    result = optimize_meis(model, session, index, config, backgrounds=backgrounds, **engine)
    best = result.best_images()
    activation = result.best_activations()
    natural_activation, natural_index = validate.best_natural(
        model, session, data.images[train], index, **fixed
    )
    objective = neuron_objective(session, **fixed)
    contrast_rms, contrast_activation = validate.contrast_tuning(
        model, objective, best, index, pixel_range
    )
    shift_activation = validate.shift_robustness(model, objective, best, index)

    pixels = best * engine_std + engine_mean
    train_pixels = natural_pixels(data)
    spectra = naturalness(pixels, train_pixels)

    n = len(index)
    nan = np.full(n, np.nan, np.float32)
    true_activation = true_natural = true_ratio = correlation = nan
    true_trial = np.full(n, -1, np.int64)
    ds_session = open_session(data.path)
    if ds_session.attrs.get("simulated"):
        params = ground_truth(ds_session)
        true_activation = validate.true_responses(params, pixels, index)
        true_natural, true_where = validate.true_best_natural(params, train_pixels, index)
        true_trial = train[true_where]
        true_ratio = true_activation / true_natural
        correlation = validate.optimum_correlation(pixels, params["optimal_stimulus"][index])

    dei_images = dei_activations = dei_spectral_kl = None
    if deis:
        dei_images, dei_activations = diverse.diverse_images(
            model, session, index, best, activation, config, deis,
            pixel_range=pixel_range, progress=progress, **fixed,
        )
        dei_pixels = dei_images * engine_std + engine_mean
        flat = dei_pixels.reshape(-1, *dei_pixels.shape[2:])
        dei_spectral_kl = naturalness(flat, train_pixels)["spectral_kl"].reshape(dei_images.shape[:2])

    variables = {
        "images": result.images,
        "activations": result.activations,
        "best_seed": result.best_seed,
        "steps": result.steps,
        "validator_activations": result.validator_activations,
        "unit_id": data.unit_id[index],
        "neuron_index": index,
        "best_natural_activation": natural_activation,
        "best_natural_trial": train[natural_index],
        "ratio": activation / natural_activation,
        "true_activation": true_activation,
        "true_best_natural": true_natural,
        "true_best_natural_trial": true_trial,
        "true_ratio": true_ratio,
        "optimum_correlation": correlation,
        "contrast_rms": contrast_rms,
        "contrast_activation": contrast_activation,
        "shift_offset": validate.shift_offsets(),
        "shift_activation": shift_activation,
        "spectral_kl": spectra["spectral_kl"],
        "spectral_slope": spectra["spectral_slope"],
        "deis": dei_images,
        "dei_activations": dei_activations,
        "dei_spectral_kl": dei_spectral_kl,
        "foreground": result.foreground,
        "opacity": result.opacity,
        "image_mean": image_mean,
        "image_std": image_std,
    }
    attrs["true_ratio_control"] = "the ground truth's best train image"
    attrs["natural_spectral_slope"] = spectra["natural_spectral_slope"]
    titles = [f"unit {plot_text(u)}: {r:.2f}x" for u, r in zip(data.unit_id[index], variables["ratio"])]
    panels = best * engine_std + engine_mean
    mean_opacity = None
    if transparency:
        chosen = (np.arange(n), result.best_seed)
        opacity = result.opacity[chosen]
        mean_opacity = variables["mean_opacity"] = opacity.mean(axis=(1, 2))
        # Each MEI over the mean gray, then its foreground with the opacity over a checkerboard.
        seen = per_image(opacity, panels) * (result.foreground[chosen] * engine_std + engine_mean)
        seen = seen + (1 - per_image(opacity, panels)) * checkerboard(opacity.shape[1:])
        panels = np.stack([panels, seen], axis=1).reshape(2 * n, *panels.shape[1:])
        titles = [t for title, m in zip(titles, mean_opacity) for t in (title, f"opacity {m:.2f}")]
    if primary:
        write_meis(meis_dataset(variables, attrs), out, overwrite)
        with output(out.with_suffix(".png"), overwrite, "file") as grid:
            plot_grid(panels, titles, grid)
    ratios = variables["ratio"]
    opacity_summary = {}
    if transparency:
        opacity_summary = {"background": attrs["background"], "mean_opacity": finite(mean_opacity.mean())}
    return opacity_summary | {
        "recipe": config.recipe,
        "config_sources": config_sources,
        "median_ratio": finite(np.median(ratios)),
        "median_true_ratio": finite(np.median(true_ratio)) if np.isfinite(true_ratio).any() else None,
        "median_spectral_kl": finite(np.median(spectra["spectral_kl"])),
        "natural_spectral_slope": spectra["natural_spectral_slope"],
        "neurons": [
            {
                "id": data.unit_id[neuron].item(),
                "activation": finite(activation[i]),
                "best_natural_activation": finite(natural_activation[i]),
                "ratio": finite(ratios[i]),
                "true_ratio": finite(true_ratio[i]),
                "optimum_correlation": finite(correlation[i]),
                "spectral_kl": finite(spectra["spectral_kl"][i]),
                "spectral_slope": finite(spectra["spectral_slope"][i]),
                **({} if mean_opacity is None else {"mean_opacity": finite(mean_opacity[i])}),
            }
            for i, neuron in enumerate(index)
        ],
    }
