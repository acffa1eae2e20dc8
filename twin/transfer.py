"""Reuse the core of a fitted run: ``twin fit NEW.zarr ... --core RUN [--freeze-core | --core-learning-rate LR]``.

The new run gets fresh readouts (and shifters) for its sessions on the core of RUN's
checkpoints/best: its parameters and BatchNorm statistics. The core's hyperparameters
(``CORE_FIELDS`` of [model]) are RUN's; the images must have RUN's channel count (their size
may differ: the core is convolutional). An ensemble fit (``--seeds K``) starts every member from
a single twin's core, or member i from member i's core of an ensemble RUN of K members.

- ``--freeze-core``: the core runs in eval mode (its BatchNorm statistics stay fixed) and the
  optimizer leaves it alone (optax.multi_transform with set_to_zero), so the core in the new
  run's checkpoints are bit-identical to RUN's. When the core's input holds no behavior channels,
  the members share one core and the sessions hold images (a video clip's features depend on
  where the clip starts), its features of each train and validation trial are computed
  once and kept in host memory (when they fit ``cache_budget``) and each step runs the readouts
  only; otherwise each step runs the frozen core forward under stop_gradient.
- ``--core-learning-rate LR``: the core trains at LR times the plateau schedule's decays so far
  (Adam for all; the core's updates scaled by LR / [fit].learning_rate).
- neither: the core is fine-tuned like the rest of the model.

Provenance: the run directory's ``core.json`` records ``source`` (RUN's absolute path),
``checkpoint`` and ``source_epoch`` (the step read), ``sha256`` (``core_sha256`` of the core read:
parameters and BatchNorm statistics), ``source_members`` (1, or the size of an ensemble RUN),
``frozen`` and ``core_learning_rate`` (null when frozen, else the rate at the start).
``--resume`` reads core.json, so it needs neither --core nor the source run once an epoch is
saved; flags given with --resume must say what core.json says.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from twin import checkpoint, distributed
from twin.config import RunConfig, load_config, read_toml
from twin.errors import ConfigError, RunError

# [model] fields that define the core (its input channels include the behavior channels).
CORE_FIELDS = (
    "core",
    "core_layers",
    "core_channels",
    "input_kernel",
    "hidden_kernel",
    "depth_separable",
    "pad_input",
    "core_bias",
    "stack",
    "batch_norm_momentum",
    "batch_norm_eps",
    "gamma_input",
    "use_behavior",
    "temporal_input_kernel",
    "temporal_hidden_kernel",
    "gamma_temporal",
    "gru_channels",
    "gru_input_kernel",
    "gru_kernel",
)
PROVENANCE = "core.json"
# Cached core features are kept only when they take at most this many bytes and at most half
# the memory available (5,000 Sensorium trials at 36x64 take 2.0 GB).
FEATURE_CACHE_BYTES = 4 * 2**30


@dataclasses.dataclass(frozen=True)
class CoreTransfer:
    """How a fit reuses a core: ``source`` (absolute path of the run), ``frozen``, and
    ``learning_rate`` (the core's rate at the start; None when frozen)."""

    source: str
    frozen: bool
    learning_rate: float | None


def core_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 hex digest of a core's arrays, parameters and batch statistics, named as
    ``twin.checkpoint.tree_to_arrays(nnx.state(core))`` names them (e.g.
    ``layers.0.conv.kernel.value``; an ensemble's carry the member axis first): for each array in
    the order of its name, the name, dtype and shape as text, then its bytes in C order."""
    digest = hashlib.sha256()
    for name, array in sorted(arrays.items()):
        array = np.ascontiguousarray(array)
        digest.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def read_source(core: str) -> tuple[RunConfig, list[dict]]:
    """config.toml and sessions.json of the run ``core`` (RunError naming --core otherwise)."""
    path = Path(core)
    if not path.is_dir():
        raise RunError(f"--core {core}: no such run directory; pass a run directory written by twin fit")
    try:
        return checkpoint.read_run_files(path)
    except (RunError, ConfigError) as error:
        raise RunError(f"--core {error}") from None


def read_provenance(run_dir: Path) -> dict | None:
    """core.json of a run directory, or None for a run fit from scratch."""
    path = Path(run_dir) / PROVENANCE
    if not path.exists():
        return None
    try:
        provenance = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunError(f"{path}: not valid JSON ({error}); it is damaged: fit the run again") from None
    problem = provenance_problem(provenance)
    if problem:
        raise RunError(f"{path}: {problem}; it is damaged: fit the run again")
    return provenance


def provenance_problem(provenance) -> str | None:
    """What makes ``provenance`` (core.json's content) unusable, or None: ``source`` a path,
    ``frozen`` true or false, ``core_learning_rate`` null when frozen, else a number >= 0."""
    if not isinstance(provenance, dict):
        return f"holds a {type(provenance).__name__}, not an object"
    missing = [key for key in ("source", "frozen", "core_learning_rate") if key not in provenance]
    if missing:
        return f"has no {', '.join(missing)}"
    rate = provenance["core_learning_rate"]
    if not isinstance(provenance["source"], str) or not provenance["source"]:
        return f"source is {provenance['source']!r}, not the path of a run"
    if not isinstance(provenance["frozen"], bool):
        return f"frozen is {provenance['frozen']!r}, not true or false"
    if provenance["frozen"] != (rate is None):
        return f"frozen is {str(provenance['frozen']).lower()} but core_learning_rate is {rate!r}"
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 0):
        return f"core_learning_rate is {rate!r}, not a number >= 0"
    return None


def write_provenance(run_dir: Path, provenance: dict) -> None:
    tmp = Path(run_dir) / (PROVENANCE + ".tmp")
    tmp.write_text(json.dumps(provenance, indent=1))
    tmp.replace(Path(run_dir) / PROVENANCE)


def recorded(provenance: dict) -> CoreTransfer:
    """The CoreTransfer that core.json records."""
    return CoreTransfer(provenance["source"], provenance["frozen"], provenance["core_learning_rate"])


def setup(
    out: str,
    resume: bool,
    core: str | None,
    freeze_core: bool,
    core_learning_rate: float | None,
    config: RunConfig,
    config_path: str | None,
) -> tuple[CoreTransfer | None, RunConfig]:
    """`twin fit`'s core flags -> (the CoreTransfer or None, ``config`` with the core's fields).

    A new fit takes the core from ``core``; --resume from the run's core.json (flags given then
    must agree with it). ConfigError for flags that contradict each other or the run.
    """
    if freeze_core and core_learning_rate is not None:
        raise ConfigError("--freeze-core and --core-learning-rate: pass one (a frozen core has no learning rate)")
    provenance = read_provenance(Path(out)) if resume else None
    flags = freeze_core or core_learning_rate is not None
    if provenance is None:
        if resume and (core or flags):
            raise ConfigError(f"--core: {out} was not fit with --core; resume it without --core flags")
        if core is None:
            if flags:
                raise ConfigError(
                    f"--{'freeze-core' if freeze_core else 'core-learning-rate'}: needs --core RUN, the run whose core to reuse"
                )
            return None, config
        source_config, _ = read_source(core)
        rate = None if freeze_core else (config.fit.learning_rate if core_learning_rate is None else core_learning_rate)
        transfer = CoreTransfer(str(Path(core).absolute()), freeze_core, rate)
        return transfer, with_core_fields(config, source_config, config_path, f"--core {core}")
    transfer = recorded(provenance)
    wanted = transfer.learning_rate if core_learning_rate is None else core_learning_rate
    if (
        (core is not None and Path(core).resolve() != Path(transfer.source).resolve())
        or (flags and (freeze_core != transfer.frozen or wanted != transfer.learning_rate))
    ):
        state = "frozen" if transfer.frozen else f"core learning rate {transfer.learning_rate:g}"
        raise ConfigError(
            f"--core: {out} was transferred from {transfer.source} ({state}, {Path(out) / PROVENANCE});"
            " resume it without --core flags, or fit a new run"
        )
    return transfer, with_core_fields(config, load_config(Path(out) / "config.toml"), config_path, f"the run {out}")


def with_core_fields(config: RunConfig, source: RunConfig, config_path: str | None, core: str) -> RunConfig:
    """``config`` with the CORE_FIELDS of ``source`` (the config of the core ``core``, e.g.
    "--core RUN"); a field that the file ``config_path`` sets to another value is a ConfigError."""
    given = read_toml(config_path).get("model", {}) if config_path else {}
    for name in CORE_FIELDS:
        theirs, ours = getattr(source.model, name), getattr(config.model, name)
        if name in given and ours != theirs:
            raise ConfigError(
                f"{config_path}: [model].{name} = {ours!r} but the core of {core} has {theirs!r};"
                f" remove {name} from [model] (the core's hyperparameters come from {core})"
            )
    model = dataclasses.replace(config.model, **{name: getattr(source.model, name) for name in CORE_FIELDS})
    return dataclasses.replace(config, model=model)


def core_channels(model_config, records: list[dict]) -> tuple[int, int]:
    """(image channels, behavior channels) that a core of ``model_config`` takes for sessions
    ``records`` (as twin.checkpoint.make_model builds it)."""
    behavior = max(record["n_behavior"] for record in records)
    return records[0]["channels"], behavior if model_config.use_behavior and behavior else 0


def load_core(transfer: CoreTransfer, config: RunConfig, records: list[dict]) -> tuple[dict, dict]:
    """(the core's arrays {name: array}, provenance) from the source run's checkpoints/best,
    after checking that its core fits ``config`` and the sessions ``records``. Only the core is
    read: the source run's readouts and stores are not needed."""
    source_config, source_records = read_source(transfer.source)
    for name in CORE_FIELDS:
        if getattr(config.model, name) != getattr(source_config.model, name):
            raise ConfigError(
                f"--core {transfer.source}: [model].{name} is {getattr(source_config.model, name)!r} there but"
                f" {getattr(config.model, name)!r} in this fit; use the core's value (twin.transfer.with_core_fields)"
            )
    theirs, ours = core_channels(source_config.model, source_records), core_channels(config.model, records)
    if theirs[0] != ours[0]:
        raise ConfigError(
            f"{records[0]['path']}: images have {ours[0]} channel(s) but the core of --core {transfer.source}"
            f" was fit on {theirs[0]}; transfer a core fit on images of {ours[0]} channel(s)"
        )
    if theirs[1] != ours[1]:
        raise ConfigError(
            f"{records[0]['path']}: the core of --core {transfer.source} takes {theirs[1]} behavior channel(s)"
            f" but these sessions give {ours[1]}; use sessions with the same behavior variables"
        )
    best = Path(transfer.source) / "checkpoints" / "best"
    try:
        arrays, meta = checkpoint.read_step(best)
    except RunError as error:
        raise RunError(f"--core {error}") from None
    members = source_config.fit.ensemble_size
    prefix = "model.core." if members == 1 else "model.members.core."
    core = {name[len(prefix) :]: value for name, value in arrays.items() if name.startswith(prefix)}
    if not core:
        raise RunError(f"--core {best}: holds no arrays {prefix}*; it is damaged: fit the run again")
    provenance = {
        "source": transfer.source,
        "checkpoint": "checkpoints/best",
        "source_epoch": meta.get("epoch"),
        "sha256": core_sha256(core),
        "source_members": members,
        "frozen": transfer.frozen,
        "core_learning_rate": transfer.learning_rate,
    }
    return core, provenance


def place_core(target, arrays: dict, source_members: int, ensemble_size: int, source: str) -> None:
    """Put the source core's ``arrays`` into ``target`` (a Twin, or an Ensemble's stacked
    members): every member gets a single twin's core; member i gets member i of an ensemble of the
    same size."""
    if source_members == 1 and ensemble_size > 1:
        arrays = {name: np.broadcast_to(value, (ensemble_size,) + value.shape) for name, value in arrays.items()}
    elif source_members != ensemble_size:
        raise ConfigError(
            f"--core {source}: an ensemble of {source_members} members, but this fit has"
            f" {ensemble_size}; fit with --seeds {source_members} (member i takes member i's core)"
            " or transfer a single twin's core"
        )
    nnx.update(target.core, checkpoint.arrays_to_tree(arrays, nnx.state(target.core), f"--core {source}"))


def optimizer(params, transfer: CoreTransfer | None, learning_rate: float) -> optax.GradientTransformation:
    """Adam for ``params`` (the model's nnx.Param state); a frozen core gets no update, a core
    with its own rate gets Adam's update scaled by its rate over ``learning_rate`` (the
    schedule's rate, applied to every update, then carries the decays to both)."""
    if transfer is None or transfer.learning_rate == learning_rate:
        return optax.scale_by_adam()
    if transfer.frozen:
        core = optax.set_to_zero()
    else:
        core = optax.chain(optax.scale_by_adam(), optax.scale(transfer.learning_rate / learning_rate))
    labels = jax.tree_util.tree_map_with_path(lambda path, _: "core" if path[0].key == "core" else "rest", params)
    return optax.multi_transform({"core": core, "rest": optax.scale_by_adam()}, labels)


def cache_budget() -> int:
    """Bytes that cached core features may take: FEATURE_CACHE_BYTES, at most half the memory
    available."""
    from twin.data.images import available_memory

    return min(FEATURE_CACHE_BYTES, available_memory() // 2)


@dataclasses.dataclass
class FeatureCache:
    """A frozen core's eval-mode features of some trials of one session: ``features`` (k, y', x',
    c') float32 and ``rows`` (trial,), the row of each trial (-1: not cached)."""

    features: np.ndarray
    rows: np.ndarray

    def __getitem__(self, trials: np.ndarray) -> np.ndarray:
        return self.features[self.rows[trials]]


def feature_caches(graphdef, params, rest, model, sessions, batch_size: int, mesh, progress: bool):
    """A FeatureCache of the train and validation trials of each session, or None when they
    would take more than ``cache_budget()``. graphdef: the model in eval mode; params, rest: its
    state (an Ensemble's members share one core: member 0's is used)."""
    twin = model.members if hasattr(model, "members") else model
    shape = twin.core.output_shape(twin.image_shape)
    per_session = [np.concatenate([data.trials("train"), data.trials("validation")]) for data in sessions]
    needed = 4 * math.prod(shape) * sum(len(trials) for trials in per_session)
    if needed > cache_budget():
        return None
    if hasattr(model, "members"):
        params, rest = jax.tree.map(lambda x: x[0], (params, rest))
    features = jax.jit(lambda params, rest, images: nnx.merge(graphdef, params, rest).features(images))
    caches = []
    with tqdm(total=sum(map(len, per_session)), desc="core features", unit="trial", leave=False, disable=not progress) as bar:
        for data, trials in zip(sessions, per_session):
            cache = FeatureCache(np.empty((len(trials),) + shape, np.float32), np.full(len(data.tier), -1))
            cache.rows[trials] = np.arange(len(trials))
            for start in range(0, len(trials), batch_size):
                index = trials[start : start + batch_size]
                images = distributed.shard_batch(data.images[index], mesh)
                cache.features[start : start + len(index)] = distributed.gather(features(params, rest, images))
                bar.update(len(index))
            caches.append(cache)
    return caches


def resolve(workdir: Path, resume: bool, given: CoreTransfer | None) -> tuple[CoreTransfer | None, dict | None]:
    """(the core transfer of a fit into ``workdir``, its core.json or None): a resumed run's
    core.json decides (``given`` must be None or agree with it); otherwise ``given``."""
    provenance = read_provenance(workdir) if resume else None
    if provenance is None:
        if given is not None and resume and (workdir / "sessions.json").exists():
            raise RunError(f"{workdir}: was not fit with --core; resume it without a core to transfer")
        return given, None
    transfer = recorded(provenance)
    if given is not None and dataclasses.replace(given, source=str(Path(given.source).resolve())) != (
        dataclasses.replace(transfer, source=str(Path(transfer.source).resolve()))
    ):
        raise RunError(
            f"{workdir / PROVENANCE}: the run was transferred from {transfer.source} (frozen {transfer.frozen},"
            f" core learning rate {transfer.learning_rate}); resume it with the same core settings"
        )
    return transfer, provenance
