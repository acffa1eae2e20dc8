"""Most discriminative stimuli (MDS; Burg et al. 2024): cluster neurons by the stimuli that tell
them apart.

Responses are normalized per neuron, z = (r - mean) / std with each neuron's mean and standard
deviation over the session's natural (train) images, so that a neuron's gain does not decide its
cluster. The stimulus x_k of cluster k maximizes the contrastive objective (Burg et al. Eq. 1)

    J_k(x) = m_k(x) / T - log sum_c exp(m_c(x) / T) + log K,

m_c(x) the mean of z over cluster c's neurons, T the temperature and K the number of clusters
(J is 0 for a stimulus that drives all clusters alike and at most log K). All clusters' stimuli
(x seeds) are optimized together in one compiled program by the MEI engine
(twin.mei.optimize.run_pairs), with the recipe's parametrization, constraints and schedule; the
seed with the highest J is the cluster's stimulus. Then every neuron moves to the cluster whose
stimulus drives it most (largest z) and clusters left empty are dropped. The two steps alternate
until no neuron moves or ``max_iter`` rounds (Burg et al.'s k-means-like loop).

Initialization: k-means (k-means++ seeding) of the neurons' z-scored predicted responses to the
natural train images.

Choosing K (``clusters="auto"``): start from a generous K (``AUTO_START``); after the loop
settles, the least discriminated pair of clusters, the pair (a, b) with the smallest
D_ab = 1 - (m_b(x_a) / m_b(x_b) + m_a(x_b) / m_a(x_a)) / 2 (``pair_discriminability``: 1 when
each stimulus leaves the other cluster at its natural mean, 0 when both stimuli drive both
clusters alike), is merged while D_ab < ``merge_threshold`` and the loop runs again from the
merged assignment. Burg et al. grow K instead, splitting a cluster when the mean objective
improves; merging from a generous start needs no sub-clustering and its threshold does not
depend on K (the objective's ceiling, log K, does).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from twin.config import MEIConfig
from twin.data.store import write_dataset
from twin.errors import ConfigError
from twin.mei.diverse import population_responses
from twin.mei.optimize import Objective, apply_model, pair_keys, run_pairs, split_model
from twin.mei.params import Parametrization

# Dimensions of the stored images (a cluster axis first) and of the session's normalization.
IMAGE_DIMS = {2: ("y", "x"), 3: ("channel", "y", "x")}
STAT_DIMS = {0: (), 1: ("channel",), 2: ("y", "x"), 3: ("channel", "y", "x")}
AUTO_START = 12  # clusters the automatic choice starts from (at most half the neurons)
# Merge pairs whose stimuli drive each other's cluster at more than 35% of its own drive, on average.
MERGE_THRESHOLD = 0.65
TEMPERATURE = 1.6  # as in Burg et al.'s example script
MAX_ITER = 10  # optimize-and-reassign rounds per clustering


@dataclasses.dataclass(frozen=True)
class MDSResult:
    """The clustering of ``n`` neurons into ``k`` clusters and the clusters' stimuli."""

    cluster: np.ndarray  # (n,) 0..k-1
    initial_cluster: np.ndarray  # (n,) the initialization's clusters
    images: np.ndarray  # (k, [channel,] y, x) each cluster's stimulus, normalized units
    objective: np.ndarray  # (k,) J_k of each stimulus
    responses: np.ndarray  # (k, n) normalized responses of the neurons to the stimuli
    iterations: int  # optimize-and-reassign rounds, over all merges
    merges: list  # [(a, b, D_ab)] merged pairs, in order (cluster numbers of that moment)


def cluster_weights(cluster: np.ndarray, k: int) -> np.ndarray:
    """(k, n) float32: row c averages over cluster c's neurons (zero rows for empty clusters)."""
    onehot = (cluster[None, :] == np.arange(k)[:, None]).astype(np.float32)
    return onehot / np.maximum(onehot.sum(axis=1, keepdims=True), 1.0)


def contrastive_values(z: jax.Array, weights: jax.Array, cluster: jax.Array, temperature: float) -> jax.Array:
    """J (p,) of Burg et al. Eq. 1 for p stimuli: z (p, n) normalized responses, weights (p, k, n)
    (``cluster_weights`` rows; all-zero rows are clusters left out), cluster (p,) each stimulus's
    own cluster."""
    means = jnp.einsum("pkn,pn->pk", weights, z) / temperature
    present = weights.sum(axis=-1) > 0
    logits = jnp.where(present, means, -jnp.inf)
    own = jnp.take_along_axis(means, cluster[:, None], axis=1)[:, 0]
    return own - jax.nn.logsumexp(logits, axis=1) + jnp.log(present.sum(axis=1))


def contrastive_objective(
    session: int, natural_mean, natural_std, temperature: float, behavior=None, pupil_center=None
) -> Objective:
    """Engine objective: J of image i for cluster ``targets["cluster"][i]`` given
    ``targets["weights"] (p, k, n)``; natural_mean, natural_std: (n,) of the session's neurons."""
    responses = population_responses(session, behavior, pupil_center)
    mean = jnp.asarray(natural_mean, jnp.float32)
    std = jnp.asarray(natural_std, jnp.float32)

    def objective(model, images, targets):
        z = (responses(model, images) - mean) / std
        return contrastive_values(z, targets["weights"], targets["cluster"], temperature)

    return objective


def reassign(z: np.ndarray) -> np.ndarray:
    """(n,) the cluster whose stimulus drives each neuron most, from z (k, n)."""
    return np.argmax(z, axis=0)


def drop_empty(cluster: np.ndarray) -> np.ndarray:
    """Cluster numbers made consecutive (empty clusters dropped), order kept."""
    return np.unique(cluster, return_inverse=True)[1].reshape(cluster.shape)


def pair_discriminability(z: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """(k, k) D_ab = 1 - (m_b(x_a) / m_b(x_b) + m_a(x_b) / m_a(x_a)) / 2, symmetric, +inf on the
    diagonal: 1 when each stimulus leaves the other cluster at its natural mean, 0 when the two
    stimuli drive both clusters alike. z (k, n) normalized responses to the k stimuli, cluster
    (n,) in 0..k-1."""
    k = len(z)
    means = z @ cluster_weights(cluster, k).T  # means[s, c] = m_c(x_s)
    # How much stimulus a drives cluster b, relative to b's own stimulus.
    confusion = means / np.maximum(np.diag(means), 1e-6)[None, :]
    d = 1.0 - (confusion + confusion.T) / 2
    np.fill_diagonal(d, np.inf)
    return d


def kmeans(features: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """(n,) labels 0..k-1 of Lloyd's k-means with k-means++ seeding on features (n, d)."""
    rng = np.random.default_rng(seed)
    n = len(features)
    centres = [features[rng.integers(n)]]
    for _ in range(1, k):
        distance = np.min([((features - c) ** 2).sum(1) for c in centres], axis=0)
        total = distance.sum()
        pick = rng.choice(n, p=distance / total) if total > 0 else rng.integers(n)
        centres.append(features[pick])
    centres = np.stack(centres)
    labels = np.full(n, -1)
    for _ in range(iterations):
        new = np.argmin(((features[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            if np.any(labels == c):
                centres[c] = features[labels == c].mean(0)
    return drop_empty(labels)


def initial_clusters(natural_responses: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(n,) k-means clusters of the neurons' z-scored responses natural_responses (images, n)."""
    z = (natural_responses - natural_responses.mean(0)) / np.maximum(natural_responses.std(0), 1e-6)
    return kmeans(z.T, k, seed)


def most_discriminative_stimuli(
    model,
    session: int,
    neurons: np.ndarray,
    config: MEIConfig,
    initial: np.ndarray,
    natural_mean: np.ndarray,
    natural_std: np.ndarray,
    *,
    image_shape: tuple[int, ...],
    pixel_range,
    image_stats=None,
    temperature: float = TEMPERATURE,
    max_iter: int = MAX_ITER,
    merge_threshold: float | None = None,
    seed: int = 0,
    behavior=None,
    pupil_center=None,
    progress: bool = True,
) -> MDSResult:
    """Burg et al.'s alternation for ``neurons (n,)`` of ``session`` from the clusters ``initial
    (n,)``; merges pairs with D_ab < ``merge_threshold`` when given (see the module doc).

    natural_mean, natural_std: (neurons of the session,) for the normalization; the recipe
    ``config`` sets the engine (``config.seeds`` stimuli per cluster, the best kept); other
    arguments as twin.mei.optimize.optimize_meis.
    """
    neurons = np.asarray(neurons, np.int64)
    n_all = len(natural_mean)
    objective = contrastive_objective(session, natural_mean, natural_std, temperature, behavior, pupil_center)
    param = Parametrization(config, image_shape, pixel_range, image_stats)
    seeds = config.seeds
    k_max = int(initial.max()) + 1
    # A fixed number of pairs (k_max x seeds; dropped clusters' pairs idle) keeps one compiled program.
    pair_cluster = np.repeat(np.arange(k_max), seeds).astype(np.int32)
    pair_seed = np.tile(np.arange(seeds), k_max)
    config = dataclasses.replace(config, chunk_size=config.chunk_size or len(pair_cluster))
    predict = responder(model, session, behavior, pupil_center)
    cluster = drop_empty(np.asarray(initial))
    mean, std = natural_mean[neurons], natural_std[neurons]
    iterations, merges = 0, []
    while True:
        for _ in range(max_iter):
            cluster = drop_empty(cluster)
            k = int(cluster.max()) + 1
            weights = np.zeros((k_max, n_all), np.float32)
            weights[:k, neurons] = cluster_weights(cluster, k)
            targets = {
                "cluster": np.where(pair_cluster < k, pair_cluster, 0).astype(np.int32),
                "weights": np.broadcast_to(weights, (len(pair_cluster), k_max, n_all)),
            }
            keys = pair_keys(seed + iterations, pair_cluster, pair_seed)
            images, values, _ = run_pairs(
                model, objective, targets, keys, config, param, progress=progress, desc="MDS"
            )
            iterations += 1
            values = values.reshape(k_max, seeds)[:k]
            best = np.argmax(values, axis=1)
            # All k_max rows are predicted (one compiled shape); the first k are the clusters'.
            stimuli = images.reshape(k_max, seeds, *image_shape)[np.arange(k_max), np.pad(best, (0, k_max - k))]
            z = (predict(stimuli)[:k, neurons] - mean) / std
            stimuli, objective_values = stimuli[:k], values[np.arange(k), best]
            moved = reassign(z)
            settled = np.array_equal(moved, cluster)
            cluster = moved
            if settled:
                break
        # Rows of z and stimuli are the clusters the stimuli were made for; drop those left empty.
        kept = np.unique(cluster)
        stimuli, objective_values, z = stimuli[kept], objective_values[kept], z[kept]
        cluster = drop_empty(cluster)
        k = len(kept)
        if merge_threshold is None or k < 2:
            break
        d = pair_discriminability(z, cluster)
        a, b = sorted(np.unravel_index(np.argmin(d), d.shape))
        if d[a, b] >= merge_threshold:
            break
        merges.append((int(a), int(b), float(d[a, b])))
        cluster = np.where(cluster == b, a, cluster)
    return MDSResult(
        cluster=cluster,
        initial_cluster=drop_empty(np.asarray(initial)),
        images=stimuli,
        objective=objective_values,
        responses=z,
        iterations=iterations,
        merges=merges,
    )


def responder(model, session: int, behavior=None, pupil_center=None, batch_size: int = 256):
    """``images (m, [channel,] y, x) -> (m, neurons)``: the session's predicted responses to
    engine images, the member mean for an Ensemble (as the engine sees them), compiled once for
    batches of ``min(m, batch_size)`` images."""
    graphdef, state, stacked = split_model(model)
    responses = population_responses(session, behavior, pupil_center)

    @jax.jit
    def run(state, images):
        return apply_model(graphdef, state, stacked, lambda m: responses(m, images))

    def predict(images: np.ndarray) -> np.ndarray:
        size = min(len(images), batch_size)
        out = []
        for first in range(0, len(images), size):
            index = np.minimum(np.arange(first, first + size), len(images) - 1)
            out.append(np.asarray(run(state, jnp.asarray(images[index]))))
        return np.concatenate(out)[: len(images)]

    return predict


def parse_clusters(spec: str) -> int | None:
    """`--clusters`: None for 'auto', else the number of clusters (>= 2)."""
    text = str(spec).strip().lower()
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 2:
        raise ConfigError(f"--clusters {spec!r}: give auto or a number of clusters of at least 2")
    return int(text)


def mds_command(
    run: str,
    clusters: str = "auto",
    neurons: str = "all",
    seeds: int | None = None,
    recipe: str | None = None,
    config_path: str | None = None,
    out: str = "mds.zarr",
    session: int = 0,
    temperature: float = TEMPERATURE,
    max_iter: int = MAX_ITER,
    merge_threshold: float = MERGE_THRESHOLD,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    stores: list[str] | None = None,
) -> dict:
    """Cluster ``neurons`` of ``session`` of the run ``run`` by their most discriminative stimuli.

    Writes the store ``out`` (variables in ``mds_dataset``), ``<out stem>.png`` (the clusters'
    stimuli) and ``<out stem>.json`` (the returned summary); existing ones only with
    ``overwrite``, all three checked before the work starts. clusters: 'auto' (start from
    AUTO_START, merge pairs discriminated by less than ``merge_threshold``) or K (no merging;
    clusters left empty are still dropped). recipe, config_path, seeds: the engine's recipe as for
    `twin mei` (twin.mei.recipes.recipe_config). On a simulated session the summary gives the
    adjusted Rand index against the true kinds (gt_kind) and, when simulated with types, the
    true types (gt_type).
    """
    from twin.checkpoint import load_run, read_run_files
    from twin.mei.recipes import recipe_config
    from twin.mei.run import broadcastable, engine_layout, parse_neurons, stats_channels_first
    from twin.mei.store import recipe_attrs
    from twin.outputs import check_output

    requested = parse_clusters(clusters)
    if not temperature > 0:
        raise ConfigError(f"--temperature {temperature}: give a positive temperature (e.g. {TEMPERATURE})")
    out = Path(out)
    if out.suffix != ".zarr":
        raise ConfigError(f"--out {out}: name the MDS store with a .zarr suffix")
    run_config, run_records = read_run_files(Path(run))
    config, config_sources = recipe_config(
        recipe, config_path, seeds, run_config.mei, str(Path(run) / "config.toml")
    )
    inputs = [run, *(stores or [r["path"] for r in run_records])]
    check_output(out, overwrite, "store", inputs=inputs)
    for suffix in (".png", ".json"):
        check_output(out.with_suffix(suffix), overwrite, "file", inputs=inputs)
    loaded = load_run(run, stores=stores)
    if not 0 <= session < len(loaded.sessions):
        raise ConfigError(f"--session {session}: run {run} has sessions 0..{len(loaded.sessions) - 1}")
    data = loaded.sessions[session]
    index = parse_neurons(neurons, data.unit_id)
    if requested is not None and requested > len(index):
        raise ConfigError(
            f"--clusters {requested}: only {len(index)} neurons are clustered; give at most {len(index)}"
        )
    if len(index) < 2:
        raise ConfigError(f"--neurons {neurons!r}: clustering needs at least 2 neurons")
    model = loaded.model
    fixed = data.train_means()
    image_shape = data.image_shape if data.channels == 1 else (data.channels, *data.image_shape)
    image_mean, image_std = stats_channels_first(data.image_mean), stats_channels_first(data.image_std)
    engine_mean, engine_std = broadcastable(image_mean), broadcastable(image_std)
    pixel_range = tuple(broadcastable(stats_channels_first(v)) for v in data.pixel_range)

    natural = responder(model, session, **fixed)(engine_layout(data.images[data.trials("train")]))
    natural_mean = natural.mean(0)
    # A neuron the twin predicts as constant would get unbounded z: floor its spread.
    natural_std = np.maximum(natural.std(0), 1e-3 * np.median(natural.std(0)) + 1e-12)
    start = requested or max(2, min(AUTO_START, len(index) // 2))
    initial = initial_clusters(natural[:, index], start, seed)
    result = most_discriminative_stimuli(
        model, session, index, config, initial, natural_mean, natural_std,
        image_shape=image_shape, pixel_range=pixel_range, image_stats=(engine_mean, engine_std),
        temperature=temperature, max_iter=max_iter,
        merge_threshold=merge_threshold if requested is None else None,
        seed=seed, progress=progress, **fixed,
    )

    truth = true_labels(data, index)
    found = mds_summary(result, data, index, truth, config_sources, engine_mean, engine_std)
    summary = {  # the settings after the cluster count, the neurons last
        "clusters": found.pop("clusters"),
        "clusters_requested": clusters,
        "initial_clusters": int(start),
        "temperature": temperature,
        "merge_threshold": merge_threshold if requested is None else None,
        "recipe": config.recipe,
        **found,
    }
    variables = {
        "images": (("cluster", *IMAGE_DIMS[len(image_shape)]), result.images),
        "objective": (("cluster",), result.objective),
        "responses": (("cluster", "neuron"), result.responses.astype(np.float32)),
        "cluster": (("neuron",), result.cluster),
        "initial_cluster": (("neuron",), result.initial_cluster),
        "unit_id": (("neuron",), data.unit_id[index]),
        "neuron_index": (("neuron",), index),
        "natural_mean": (("neuron",), natural_mean[index].astype(np.float32)),
        "natural_std": (("neuron",), natural_std[index].astype(np.float32)),
        "image_mean": (STAT_DIMS[image_mean.ndim], image_mean),
        "image_std": (STAT_DIMS[image_std.ndim], image_std),
        **{f"true_{name}": (("neuron",), labels) for name, labels in truth.items()},
    }
    attrs = recipe_attrs(run, session, data.path, config, config_sources) | {
        "summary": json.dumps({key: value for key, value in summary.items() if key != "neurons"}),
    }
    write_mds(xr.Dataset(variables, attrs=attrs), summary, result.images * engine_std + engine_mean, out, overwrite)
    return summary


def true_labels(data, index: np.ndarray) -> dict:
    """{"kind", and "type" when simulated with types: labels (k,) of neurons ``index``} of a
    simulated session; {} for a recorded one."""
    from twin.data.simulate import ground_truth
    from twin.data.store import open_session

    ds_session = open_session(data.path)
    if not ds_session.attrs.get("simulated"):
        return {}
    params = ground_truth(ds_session)
    return {name: np.asarray(params[name])[index] for name in ("kind", "type") if name in params}


def mds_summary(result, data, index: np.ndarray, truth: dict, config_sources, engine_mean, engine_std) -> dict:
    """The summary of an MDS ``result`` of neurons ``index``: clusters, merges, objective,
    naturalness of the stimuli, adjusted Rand indices against ``truth`` and each neuron's cluster."""
    from twin.mei.run import natural_pixels
    from twin.metrics import adjusted_rand_index
    from twin.naturalness import naturalness

    k = len(result.images)
    spectra = naturalness(result.images * engine_std + engine_mean, natural_pixels(data))
    return {
        "clusters": int(k),
        "iterations": result.iterations,
        "merges": [{"clusters": [a, b], "discriminability": d} for a, b, d in result.merges],
        "config_sources": config_sources,
        "cluster_sizes": np.bincount(result.cluster, minlength=k).tolist(),
        "objective": [float(v) for v in result.objective],
        "spectral_kl": [float(v) for v in spectra["spectral_kl"]],
        "natural_spectral_slope": spectra["natural_spectral_slope"],
        **{f"ari_true_{name}": adjusted_rand_index(result.cluster, labels) for name, labels in truth.items()},
        **{
            f"ari_initial_true_{name}": adjusted_rand_index(result.initial_cluster, labels)
            for name, labels in truth.items()
        },
        "neurons": [
            {"id": data.unit_id[neuron].item(), "cluster": int(c)} for neuron, c in zip(index, result.cluster)
        ],
    }


def write_mds(ds: xr.Dataset, summary: dict, pixels: np.ndarray, out: Path, overwrite: bool) -> None:
    """The MDS store ``out``, ``<out stem>.png`` (the stimuli ``pixels`` (k, [channel,] y, x) in
    pixel levels, titled with their cluster sizes) and ``<out stem>.json`` (``summary``)."""
    from twin.data.schema import plot_text
    from twin.mei.run import plot_grid
    from twin.outputs import output

    write_dataset(ds, out, overwrite=overwrite)
    with output(out.with_suffix(".png"), overwrite, "file") as grid:
        sizes = summary["cluster_sizes"]
        plot_grid(pixels, [f"cluster {c}: {n} neuron{'' if n == 1 else 's'}" for c, n in enumerate(sizes)], grid)
    with output(out.with_suffix(".json"), overwrite, "file") as path:
        path.write_text(json.dumps(summary, indent=2, allow_nan=False, default=plot_text) + "\n")
