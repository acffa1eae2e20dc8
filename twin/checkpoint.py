"""Run directories and orbax checkpoints.

A run directory holds::

    config.toml          every value the run used (twin.config.save_config)
    sessions.json        [{name, path, unit_id, n_neurons, image_shape, channels, n_behavior,
                           has_positions}] one per session, in readout order
    metrics.jsonl        one line per epoch (written by twin.fit)
    checkpoints/latest/  orbax: everything needed to resume (written each epoch)
    checkpoints/best/    orbax: the model state with the best validation score
    fit_curves.png, summary.json

A checkpoint step holds ``arrays`` (a flat dict name -> array; names join the pytree path with
dots, random keys are stored as their raw key data) and ``meta`` (JSON). Orbax writes each step
to a temporary folder and renames it when complete, so a killed process leaves the previous step.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from twin.config import RunConfig, load_config, save_config
from twin.errors import RunError, TwinWarning
from twin.models.twin import Ensemble, ReadoutSpec, Twin, make_ensemble


def key_name(entry) -> str:
    """One pytree path entry as a plain name (dict key, attribute or index)."""
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def tree_to_arrays(tree: Any) -> dict[str, np.ndarray]:
    """Flat {dotted path: numpy array} of a pytree's leaves; typed random keys become key data."""
    arrays = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        arrays[".".join(key_name(entry) for entry in path)] = np.asarray(leaf)
    return arrays


def arrays_to_tree(arrays: dict[str, np.ndarray], template: Any, source: str) -> Any:
    """Inverse of tree_to_arrays: fill ``template``'s structure (arrays or ShapeDtypeStructs)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, leaf in flat:
        name = ".".join(key_name(entry) for entry in path)
        if name not in arrays:
            raise RunError(f"{source}: checkpoint has no array {name}; the run's config does not match it")
        value = arrays[name]
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaves.append(jax.random.wrap_key_data(jnp.asarray(value)))
            continue
        if tuple(value.shape) != tuple(leaf.shape):
            raise RunError(
                f"{source}: {name} has shape {value.shape} in the checkpoint but {leaf.shape} in the"
                " model; the run's config or sessions do not match the checkpoint"
            )
        leaves.append(jnp.asarray(value, dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def manager(path: str | Path) -> ocp.CheckpointManager:
    """Synchronous orbax manager keeping only the newest step under ``path``."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(Path(path).absolute(), options=options)


def save_step(path: str | Path, step: int, trees: dict[str, Any], meta: dict) -> None:
    """Write checkpoint ``step`` under ``path``: each pytree in ``trees`` flattened under its
    name, and ``meta`` as JSON. Steps >= ``step`` are removed first (a best checkpoint may move
    back after a resume); older ones go once the new step is complete."""
    arrays = {
        f"{name}.{key}": value for name, tree in trees.items() for key, value in tree_to_arrays(tree).items()
    }
    with manager(path) as checkpoints:
        for old in checkpoints.all_steps():
            if old >= step:
                checkpoints.delete(old)
        checkpoints.save(
            step,
            args=ocp.args.Composite(arrays=ocp.args.PyTreeSave(arrays), meta=ocp.args.JsonSave(meta)),
        )


def restore_step(path: str | Path, templates: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """(trees shaped like ``templates``, meta) of the newest step under ``path``; a missing or
    damaged checkpoint is a RunError (reading never creates folders)."""
    arrays, meta = read_step(path)
    trees = {}
    for name, template in templates.items():
        prefix = name + "."
        own = {key[len(prefix) :]: value for key, value in arrays.items() if key.startswith(prefix)}
        trees[name] = arrays_to_tree(own, template, str(path))
    return trees, meta


def read_step(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(flat {name: array}, meta) of the newest step under ``path``, as save_step wrote them; a
    missing or damaged checkpoint is a RunError."""
    step = latest_step(path)
    if step is None:
        raise RunError(f"{path}: no checkpoint found; fit the run first (twin fit ... --out RUN)")
    try:
        with manager(path) as checkpoints:
            restored = checkpoints.restore(
                step, args=ocp.args.Composite(arrays=ocp.args.PyTreeRestore(), meta=ocp.args.JsonRestore())
            )
    except Exception as error:  # orbax and tensorstore raise many kinds for damaged files
        raise RunError(
            f"{path}: checkpoint {step} cannot be read ({type(error).__name__}); it is damaged: fit"
            " the run again, or continue it with twin fit --resume if checkpoints/latest is intact"
        ) from None
    return restored["arrays"], restored["meta"]


def latest_step(path: str | Path) -> int | None:
    """Newest complete step under ``path``, or None."""
    if not Path(path).exists():
        return None
    with manager(path) as checkpoints:
        return checkpoints.latest_step()


# ---------------------------------------------------------------------------- models


def session_record(data) -> dict:
    """What sessions.json keeps of a SessionData: enough to rebuild the model without the store,
    and the store's content digest (None for a store written before digests)."""
    from twin.data.digest import content_digest

    # images (trial, [frame,] y, x, channel), responses (trial, [frame,] neuron): the last axes.
    return {
        "name": data.name,
        "path": str(Path(data.path).absolute()),
        "unit_id": data.unit_id.tolist(),
        "n_neurons": int(data.responses.shape[-1]),
        "image_shape": [int(s) for s in data.images.shape[-3:-1]],
        "channels": int(data.images.shape[-1]),
        "n_behavior": 0 if data.behavior is None else int(data.behavior.shape[-1]),
        "has_positions": data.cell_xyz is not None,
        "digest": content_digest(data.path),
    }


def readout_specs(sessions) -> list[ReadoutSpec]:
    """One ReadoutSpec per SessionData (train mean responses, cortex positions, train mean
    behavior over trials and frames)."""
    return [ReadoutSpec(s.responses.shape[-1], s.mean_response, s.cell_xyz, s.train_means()["behavior"]) for s in sessions]


def make_model(config: RunConfig, records: list[dict], specs: list[ReadoutSpec]) -> Twin | Ensemble:
    """A Twin (fit.ensemble_size 1, seed fit.seed) or an Ensemble of seeds fit.seed + i; the
    output is linear for the gaussian loss (signed responses), else ELU + 1."""
    first = records[0]
    for record in records[1:]:
        if record["image_shape"] != first["image_shape"] or record["channels"] != first["channels"]:
            raise RunError(
                f"{record['path']}: images are {record['image_shape']} x {record['channels']} channels but"
                f" {first['path']} has {first['image_shape']} x {first['channels']}; fit sessions of one"
                " image size together"
            )
    n_behavior = max(record["n_behavior"] for record in records)
    args = (config.model, first["channels"], tuple(first["image_shape"]), specs, n_behavior)
    seeds = [config.fit.seed + i for i in range(config.fit.ensemble_size)]
    output = "linear" if config.fit.loss == "gaussian" else "elu1"

    # One compiled initializer instead of one eager compilation per initializer op.
    @nnx.jit
    def create():
        if config.fit.ensemble_size == 1:
            return Twin(*args, output=output, rngs=nnx.Rngs(config.fit.seed))
        return make_ensemble(*args, seeds, output)

    return create()


def abstract_model(config: RunConfig, records: list[dict]) -> Twin | Ensemble:
    """The run's model with placeholder values (shapes from sessions.json), to restore into."""
    specs = [
        ReadoutSpec(
            r["n_neurons"],
            np.zeros(r["n_neurons"], np.float32),
            np.zeros((r["n_neurons"], 3), np.float32) if r["has_positions"] else None,
            np.zeros(r["n_behavior"], np.float32) if r["n_behavior"] else None,
        )
        for r in records
    ]
    return make_model(config, records, specs)


@dataclasses.dataclass
class Run:
    """A fitted run: its config, model (eval mode), sessions (SessionData, or [] when not
    loaded), the sessions.json records and the run directory."""

    config: RunConfig
    model: Twin | Ensemble
    sessions: list
    records: list[dict]
    path: Path


def write_run_files(run_dir: Path, config: RunConfig, records: list[dict]) -> None:
    """config.toml and sessions.json (each written atomically)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.toml")
    tmp = run_dir / "sessions.json.tmp"
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(run_dir / "sessions.json")


def save_run_model(run_dir: str | Path, model: Twin | Ensemble, config: RunConfig, sessions) -> None:
    """Write a complete run directory (config, sessions.json, best checkpoint) for ``model``
    fitted on ``sessions`` (list of SessionData)."""
    run_dir = Path(run_dir)
    write_run_files(run_dir, config, [session_record(s) for s in sessions])
    save_step(run_dir / "checkpoints" / "best", 0, {"model": nnx.state(model)}, {"epoch": 0})


# What every sessions.json record holds (older runs lack the digest: their stores are not checked).
RECORD_KEYS = {"name", "path", "unit_id", "n_neurons", "image_shape", "channels", "n_behavior", "has_positions"}


def read_run_files(run_dir: Path) -> tuple[RunConfig, list[dict]]:
    """config.toml and sessions.json of a run directory (RunError when missing)."""
    if not (run_dir / "config.toml").exists():
        raise RunError(f"{run_dir}: no config.toml; pass a run directory written by twin fit")
    records = read_session_records(run_dir)
    return load_config(run_dir / "config.toml"), records


def read_session_records(run_dir: Path) -> list[dict]:
    """The session records of a run directory's sessions.json, checked to hold RECORD_KEYS
    (RunError when missing or damaged)."""
    path = run_dir / "sessions.json"
    if not path.exists():
        raise RunError(f"{run_dir}: no sessions.json; pass a run directory written by twin fit")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunError(f"{path}: not valid JSON ({error}); it is damaged: fit the run again") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and RECORD_KEYS <= set(r) for r in records):
        raise RunError(
            f"{path}: not a list of session records with {', '.join(sorted(RECORD_KEYS))}; it is damaged: fit"
            " the run again"
        )
    return records


def check_store_digests(
    run_dir: Path, records: list[dict], paths: list, explicit: bool = False, fix: str | None = None
) -> None:
    """Compare the content digest of each store in ``paths`` with the one sessions.json recorded
    for that session (``records``, same order).

    A store that differs is refused (RunError ending in ``fix``), or only warned about when the
    user named it (``explicit``, --store). A session whose store had no digest when the run was fit
    is warned about; runs written before digests (records without "digest") are not checked.
    """
    from twin.data.digest import content_digest, short

    where = run_dir / "sessions.json"
    for record, path in zip(records, paths):
        if "digest" not in record:
            continue
        if record["digest"] is None:
            warnings.warn(
                f"{where}: store {path} had no digest when the run was fit (written before twin kept"
                " store digests); its content is not checked",
                TwinWarning,
                stacklevel=3,
            )
            continue
        now = content_digest(path)
        if now == record["digest"]:
            continue
        digests = f"digest {short(record['digest'])} now {short(now)}"
        if explicit:
            warnings.warn(
                f"{where}: store {path} differs from the store session {record['name']!r} was fit on"
                f" ({digests}); using it as --store asks",
                TwinWarning,
                stacklevel=3,
            )
        else:
            fix = fix or f"restore it, or pass --store {path} explicitly to use it anyway"
            raise RunError(f"{where}: store {path} changed since the run was fit ({digests}); {fix}")


def check_neurons(data, record: dict, store: str) -> None:
    """RunError unless the store's neurons and images are the ones the run's session was fit on."""
    unit_id = data.unit_id.tolist()
    if unit_id != record["unit_id"]:
        raise RunError(
            f"{store}: unit_id has {len(unit_id)} neurons that differ from the {len(record['unit_id'])}"
            f" of the run's session {record['name']!r}; pass the store the run was fitted on"
        )
    if list(data.images.shape[-3:-1]) != record["image_shape"]:
        raise RunError(
            f"{store}: images are {list(data.images.shape[-3:-1])} but the run was fitted on"
            f" {record['image_shape']}; pass a store with the run's image size"
        )


def load_run(run_dir: str | Path, load_sessions: bool = True, stores: list | None = None) -> Run:
    """The run's best model in eval mode, with its sessions loaded from the recorded stores, or
    from ``stores`` (one per session, in the run's order: --store) when given
    (``load_sessions=False`` skips them, e.g. for a validator model). A recorded store whose
    content changed since the run was fit is refused; a store passed in ``stores`` that differs
    from the recorded one is only warned about (its neurons and image size must be the run's)."""
    run_dir = Path(run_dir)
    config, records = read_run_files(run_dir)
    model = nnx.eval_shape(lambda: abstract_model(config, records))
    graphdef, abstract = nnx.split(model)
    trees, _ = restore_step(run_dir / "checkpoints" / "best", {"model": abstract})
    model = nnx.merge(graphdef, trees["model"])
    model.eval()
    if stores is None and not load_sessions:
        return Run(config=config, model=model, sessions=[], records=records, path=run_dir)
    from twin.data.loader import load_sessions as load

    explicit = stores is not None
    if not explicit:
        stores = [record["path"] for record in records]
        for store in stores:
            if not Path(store).exists():
                raise RunError(
                    f"{run_dir / 'sessions.json'}: store {store} not found; restore it or"
                    " pass the stores explicitly (--store)"
                )
        check_store_digests(run_dir, records, stores)
    elif len(stores) != len(records):
        raise RunError(
            f"--store: {len(stores)} stores given but the run has {len(records)} sessions;"
            " pass one store per session, in the run's order"
        )
    sessions = load(stores, config.data)
    for data, record, store in zip(sessions, records, stores):
        check_neurons(data, record, store)
    if explicit:  # warned about only once the stores are known to fit the run
        check_store_digests(run_dir, records, stores, explicit=True)
    return Run(config=config, model=model, sessions=sessions, records=records, path=run_dir)
