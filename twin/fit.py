"""Fit a twin (or an ensemble) to session stores: the Sensorium 2022 training protocol in JAX.

Loss (``[fit].loss``): Poisson NLL, or the squared error for signed responses ("gaussian"),
summed over batch and neurons (missing responses masked out), times sqrt(n_train / batch)
(``scale_loss``), plus ``model.regularizer(session)``. Adam. With several sessions one optimizer step sums the
gradients of one batch of each session. After each epoch the single-trial correlation on the
validation tier drives a plateau schedule: no improvement above ``tolerance`` for ``patience``
epochs multiplies the learning rate by ``lr_decay_factor`` (at most ``max_lr_decays`` times, not
below ``min_learning_rate``) and restores the best weights; the next plateau stops the run.

Ensembles train all members at once: the pure train step of one Twin is vmapped over the members'
stacked state; the schedule follows the members' mean validation correlation.

metrics.jsonl holds one line per epoch: the loss terms, the validation correlation, the learning
rate, the schedule's event, the epoch's wall seconds (``seconds`` = ``train_seconds`` +
``validation_seconds`` + ``checkpoint_seconds``), and the wall and CPU seconds (this process, all
threads) since fit() was called (``elapsed_seconds``, ``cpu_seconds``; a resumed run counts on
from its last kept epoch).

Crash safety: each epoch ends with an atomic orbax checkpoint (``checkpoints/latest``) holding
the model, optimizer and schedule state and the best weights. The data order of an epoch is a
function of (data.shuffle_seed, epoch) and the readout's sampling rng lives in the model state,
so a resumed run repeats the numbers of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from twin import checkpoint, distributed, metrics, transfer
from twin.config import DataConfig, RunConfig, check_core, check_image_size, load_config
from twin.errors import ConfigError, RunError, SessionError, TwinError
from twin.models import placement
from twin.models.twin import Ensemble
from twin.outputs import check_output, output_in_place
from twin.precision import set_precision

# Added to predictions inside the log (neuralpredictors' PoissonLoss bias).
POISSON_EPS = 1e-8
# Smallest train batch chosen for small recordings (batch-norm statistics need a few trials).
MIN_TRAIN_BATCH = 8


@dataclasses.dataclass
class Schedule:
    """Plateau schedule state (JSON-serializable, stored in every checkpoint)."""

    learning_rate: float
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    decays: int = 0


def plateau_step(schedule: Schedule, score: float, epoch: int, fit) -> str:
    """Update ``schedule`` with the validation ``score`` of ``epoch`` (in place).

    Returns "improved", "wait", "decay" (learning rate lowered: restore the best weights when
    fit.restore_best) or "stop".
    """
    if score > schedule.best_score + fit.tolerance:
        schedule.best_score = score
        schedule.best_epoch = epoch
        schedule.bad_epochs = 0
        return "improved"
    schedule.bad_epochs += 1
    if schedule.bad_epochs < fit.patience:
        return "wait"
    if schedule.decays >= fit.max_lr_decays or schedule.learning_rate <= fit.min_learning_rate:
        return "stop"
    schedule.learning_rate = max(schedule.learning_rate * fit.lr_decay_factor, fit.min_learning_rate)
    schedule.decays += 1
    schedule.bad_epochs = 0
    return "decay"


def train_batch_size(data: DataConfig, n_train: list[int]) -> int:
    """[data].batch_size, or a smaller multiple of MIN_TRAIN_BATCH (so that it still splits over
    devices) with which one epoch over the train trials of all sessions (``n_train``, one count per
    session) takes at least [data].min_steps_per_epoch steps."""
    fitting = sum(n_train) // data.min_steps_per_epoch // MIN_TRAIN_BATCH * MIN_TRAIN_BATCH
    return min(data.batch_size, max(MIN_TRAIN_BATCH, fitting))


def epoch_seed(config: RunConfig, epoch: int) -> int:
    """Shuffling seed of one epoch: a function of (data.shuffle_seed, epoch) only."""
    return int(np.random.SeedSequence([config.data.shuffle_seed, epoch]).generate_state(1)[0])


def batch_arrays(batch, caches=None) -> dict[str, np.ndarray]:
    """A loader Batch as a dict of arrays (optional inputs left out when None); with ``caches``
    (a twin.transfer.FeatureCache per session) the cached core features replace the images."""
    if caches is None:
        arrays = {"images": batch.images, "responses": batch.responses}
    else:
        arrays = {"features": caches[batch.session][batch.trials], "responses": batch.responses}
    if batch.mask is not None:
        arrays["mask"] = batch.mask
    if batch.behavior is not None:
        arrays["behavior"] = batch.behavior
    if batch.pupil_center is not None:
        arrays["pupil_center"] = batch.pupil_center
    return arrays


def forward(model, arrays: dict, session: int) -> jax.Array:
    """model(images, session, behavior=..., pupil_center=...) from a dict of batch arrays, or
    the readout of ``arrays["features"]`` (core features computed before) when present."""
    if "features" in arrays:
        return model.readout(
            arrays["features"], session, behavior=arrays.get("behavior"), pupil_center=arrays.get("pupil_center")
        )
    return model(
        arrays["images"],
        session,
        behavior=arrays.get("behavior"),
        pupil_center=arrays.get("pupil_center"),
    )


def data_loss(predictions: jax.Array, arrays: dict, loss: str) -> jax.Array:
    """The data term summed over the batch (b, n): "poisson": Poisson NLL; "gaussian": squared
    error, i.e. twice the Gaussian NLL with unit variance (in normalized response units) up to a
    constant. Entries where ``arrays["mask"]`` (b, n) is False (missing responses) add nothing."""
    responses = arrays["responses"]
    if loss == "poisson":
        terms = predictions - responses * jnp.log(predictions + POISSON_EPS)
    else:
        terms = (predictions - responses) ** 2
    if "mask" in arrays:
        terms = jnp.where(arrays["mask"], terms, 0.0)
    return jnp.sum(terms)


def make_train_step(
    graphdef,
    tx,
    n_train: list[int],
    scale_loss: bool,
    ensemble: bool,
    loss: str = "poisson",
    frozen_core: bool = False,
    precision: str = "float32",
):
    """Jitted step(params, rest, opt_state, lr, batches, sessions) -> (params, rest, opt_state,
    metrics). ``batches``: tuple of batch dicts, one per entry of the static tuple ``sessions``;
    their gradients are summed into one Adam step. Metrics: loss, the data term named ``loss``
    ("poisson" or "gaussian", see ``data_loss``), regularizer (summed over the batches; per
    member for ensembles). ``frozen_core``: no gradient flows into the core (its features are
    computed under stop_gradient, or come precomputed as ``features``). ``precision``: the
    model's compute precision (twin.precision); params and optimizer state stay float32."""

    def loss_fn(params, rest, arrays, session):
        # copy: fresh Variables at this trace level, so BatchNorm may update its statistics.
        model = set_precision(nnx.merge(graphdef, params, rest, copy=True), precision)
        if frozen_core and "features" not in arrays:
            features = model.features(arrays["images"], arrays.get("behavior"))
            arrays = {**arrays, "features": jax.lax.stop_gradient(features)}
        predictions = forward(model, arrays, session)
        data = data_loss(predictions, arrays, loss)
        scale = math.sqrt(n_train[session] / arrays["responses"].shape[0]) if scale_loss else 1.0
        regularizer = model.regularizer(session)
        total = scale * data + regularizer
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return total, (rest, {"loss": total, loss: data, "regularizer": regularizer})

    def member_step(params, rest, opt_state, lr, batches, sessions):
        grads = jax.tree.map(jnp.zeros_like, params)
        totals = {"loss": 0.0, loss: 0.0, "regularizer": 0.0}
        for arrays, session in zip(batches, sessions):
            (_, (rest, values)), g = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, arrays, session)
            grads = jax.tree.map(jnp.add, grads, g)
            totals = {k: totals[k] + values[k] for k in totals}
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, jax.tree.map(lambda u: -lr * u, updates))
        return params, rest, opt_state, totals

    def step(params, rest, opt_state, lr, batches, sessions):
        if ensemble:
            return jax.vmap(member_step, in_axes=(0, 0, 0, None, None, None))(
                params, rest, opt_state, lr, batches, sessions
            )
        return member_step(params, rest, opt_state, lr, batches, sessions)

    return jax.jit(step, static_argnames="sessions")


def make_predict(graphdef, ensemble: bool, precision: str = "float32"):
    """Jitted predict(params, rest, arrays, session) -> (b, n), or (members, b, n) for ensembles;
    ``graphdef`` must be in eval mode; ``precision`` as make_train_step's."""

    def member_predict(params, rest, arrays, session):
        return forward(set_precision(nnx.merge(graphdef, params, rest), precision), arrays, session)

    def predict(params, rest, arrays, session):
        if ensemble:
            return jax.vmap(member_predict, in_axes=(0, 0, None, None))(params, rest, arrays, session)
        return member_predict(params, rest, arrays, session)

    return jax.jit(predict, static_argnames="session")


def predict_trials(apply, data, trials: np.ndarray, batch_size: int, mesh=None, cache=None) -> np.ndarray:
    """Predictions for ``trials`` (k,) of SessionData ``data``, in that order.

    apply(arrays) -> (..., b, n), or (..., b, frame, n) for a video session, for a dict of batch
    arrays (images, optional behavior and pupil_center). Returns (..., k, n) or (..., k, frame, n)
    numpy: whole video trials, padding frames included. ``cache``:
    a twin.transfer.FeatureCache of ``data`` whose core features replace the images.
    """
    outputs = []
    for start in range(0, len(trials), batch_size):
        index = trials[start : start + batch_size]
        arrays = {"images": data.images[index]} if cache is None else {"features": cache[index]}
        if data.behavior is not None:
            arrays["behavior"] = data.behavior[index]
        if data.pupil_center is not None:
            arrays["pupil_center"] = data.pupil_center[index]
        if mesh is not None:
            arrays = distributed.shard_batch(arrays, mesh)
        outputs.append(np.asarray(apply(arrays)))
    return np.concatenate(outputs, axis=-3 if data.video else -2)


def validation_scores(predict, params, rest, sessions, batch_size, mesh, caches=None) -> np.ndarray:
    """(members,) mean single-trial correlation on the validation tier over all neurons of all
    sessions, per ensemble member ((1,) for a single twin); ``caches``: as batch_arrays."""
    scores = []
    for index, data in enumerate(sessions):
        trials = data.trials("validation")
        cache = None if caches is None else caches[index]
        predictions = predict_trials(
            lambda arrays: predict(params, rest, arrays, index), data, trials, batch_size, mesh, cache
        )
        predictions = predictions.reshape((-1, len(trials)) + data.responses.shape[1:])
        scored = [data.scored(trials, data.responses[trials], p)[1:] for p in predictions]
        scores.append(np.stack([metrics.single_trial_correlation(r, p) for r, p in scored]))
    return np.concatenate(scores, axis=1).mean(axis=1)


def train_groups(batches, n_sessions: int):
    """Group consecutive loader batches into optimizer steps: one batch per session each."""
    group = []
    for batch in batches:
        if any(b.session == batch.session for b in group):
            yield group
            group = []
        group.append(batch)
        if len(group) == n_sessions:
            yield group
            group = []
    if group:
        yield group


def plot_curves(history: list[dict], path: Path) -> None:
    """fit_curves.png: train loss, validation correlation and learning rate per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.2), constrained_layout=True)
    axes[0].plot(epochs, [h["loss"] for h in history])
    axes[0].set(xlabel="epoch", ylabel="train loss (per step)")
    axes[1].plot(epochs, [h["validation_correlation"] for h in history])
    best = max(history, key=lambda h: h["validation_correlation"])
    axes[1].plot(best["epoch"], best["validation_correlation"], "o", color="C3")
    axes[1].set(xlabel="epoch", ylabel="validation single-trial r")
    axes[2].semilogy(epochs, [h["learning_rate"] for h in history])
    axes[2].set(xlabel="epoch", ylabel="learning rate")
    tmp = path.with_name(path.stem + ".tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    tmp.replace(path)


def read_history(path: Path, last_epoch: int) -> list[dict]:
    """metrics.jsonl lines up to ``last_epoch`` (later ones belong to an epoch that was lost)."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if line["epoch"] <= last_epoch]


def write_lines(path: Path, lines: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tmp.replace(path)


def check_distinct(paths) -> None:
    """ConfigError when one store is given twice (under any spelling or through a link): it would
    be fit as two sessions of the same neurons."""
    seen = {}
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise ConfigError(f"{path}: the same store as {seen[resolved]}; pass each store once")
        seen[resolved] = path


def check_sessions(sessions, paths, loss: str = "poisson") -> None:
    """RunError/SessionError/ConfigError for sessions the fit cannot use: a tier missing (or without
    responses), a burn-in that leaves no video frame to score, or signed responses for the poisson
    ``loss`` (it needs non-negative rates)."""
    from twin.data.loader import check_burn_in

    for data, path in zip(sessions, paths):
        if data.video:
            check_burn_in(data)
        for tier in ("train", "validation"):
            if not data.trials(tier).size:
                raise RunError(f"{path}: no {tier} trials with responses; fitting needs train and validation tiers")
        lowest = float(np.nanmin(data.responses * data.response_std))
        if loss == "poisson" and lowest < 0:
            raise SessionError(
                f"{path}: variable 'responses' has minimum {lowest:.4g} but the poisson loss needs"
                ' non-negative rates; fit signed responses with [fit] loss = "gaussian", or deconvolve,'
                " or shift to non-negative with `twin import ... --shift-responses neuron`"
            )


@dataclasses.dataclass
class Training:
    """What one epoch hands to the next, and each checkpoint holds: the trained state (params,
    rest), the optimizer state, the best epoch's state, the plateau schedule, the last epoch done
    and why the fit stopped ("max_epochs" or "plateau")."""

    params: dict
    rest: dict
    opt_state: dict
    best_params: dict
    best_rest: dict
    schedule: Schedule
    epoch: int = 0
    stopped: str = "max_epochs"

    def trees(self) -> dict:
        """The arrays a checkpoint saves."""
        return {
            "params": self.params,
            "rest": self.rest,
            "opt": self.opt_state,
            "best_params": self.best_params,
            "best_rest": self.best_rest,
        }

    def meta(self) -> dict:
        """The JSON a checkpoint saves beside the arrays."""
        return {"epoch": self.epoch, "schedule": dataclasses.asdict(self.schedule), "stopped": self.stopped}


def fit(
    config: RunConfig,
    store_paths: list[str],
    workdir: str | Path,
    resume: bool = False,
    *,
    devices: list | None = None,
    progress: bool = True,
    config_source: str | None = None,
    core_transfer: transfer.CoreTransfer | None = None,
) -> dict:
    """Fit ``config`` to the session stores and write the run directory ``workdir``.

    resume: continue from checkpoints/latest (the config and stores must be the run's own).
    devices: devices of the data mesh (default: all). config_source: the file ``config`` came
    from, named by errors about its values. core_transfer: start from another run's core
    (twin.transfer; a resumed run's core.json decides). Returns the summary (also summary.json).
    """
    from twin.data.loader import load_sessions

    called, called_cpu = time.time(), time.process_time()
    workdir = Path(workdir)
    latest_dir = workdir / "checkpoints" / "latest"
    resuming = resume and checkpoint.latest_step(latest_dir) is not None
    if not resume and checkpoint.latest_step(latest_dir) is not None:
        raise RunError(f"{workdir}: already holds a fitted run; pass --resume to continue it or choose another --out")
    check_distinct(store_paths)
    sessions = load_sessions(store_paths, config.data)
    records = checked_records(config, sessions, store_paths, config_source)
    if resume and (workdir / "sessions.json").exists():
        check_resumed_run(workdir, config, records, store_paths)
    core_transfer, provenance = transfer.resolve(workdir, resume, core_transfer)
    # Several hosts share the run directory: process 0 writes the plain files, every process
    # takes part in the orbax checkpoints.
    primary = jax.process_index() == 0
    progress = progress and primary
    if primary:
        checkpoint.write_run_files(workdir, config, records)

    model, provenance = initial_model(config, sessions, records, core_transfer, provenance, resuming, workdir, primary)
    ensemble = isinstance(model, Ensemble)
    target = model.members if ensemble else model
    frozen = core_transfer is not None and core_transfer.frozen
    graphdef, params, rest = nnx.split(target, nnx.Param, ...)
    target.eval()
    eval_graphdef = nnx.split(target, nnx.Param, ...)[0]
    target.train()

    tx = transfer.optimizer(params, core_transfer, config.fit.learning_rate)
    opt_state = jax.vmap(tx.init)(params) if ensemble else tx.init(params)
    training = Training(params, rest, opt_state, params, rest, Schedule(learning_rate=config.fit.learning_rate))
    if resuming:
        training = restored_training(workdir, training, model, target)
    history = read_history(workdir / "metrics.jsonl", training.epoch)
    if primary:
        write_lines(workdir / "metrics.jsonl", history)
    # A resumed run counts on from the time its last kept epoch had taken.
    called -= history[-1].get("elapsed_seconds", 0.0) if history else 0.0
    called_cpu -= history[-1].get("cpu_seconds", 0.0) if history else 0.0

    mesh = distributed.data_mesh(devices)
    training.params, training.rest, training.opt_state = distributed.replicate(
        (training.params, training.rest, training.opt_state), mesh
    )
    n_train = [len(s.trials("train")) for s in sessions]
    train_step = make_train_step(
        graphdef, tx, n_train, config.fit.scale_loss, ensemble, config.fit.loss, frozen, config.fit.precision
    )
    predict = make_predict(eval_graphdef, ensemble, config.fit.precision)
    caches = None
    # A frozen core shared by all members and blind to behavior: its features once per trial.
    # Not for videos: a clip's features depend on where the clip starts (the core is causal).
    if frozen and not target.use_behavior and provenance["source_members"] == 1 and not sessions[0].video:
        caches = transfer.feature_caches(
            eval_graphdef, training.params, training.rest, model, sessions, config.data.batch_size, mesh, progress
        )
    epochs = Epochs(config, sessions, train_step, predict, mesh, caches, ensemble, progress)

    started = time.time()
    # A run that stopped on its plateau stays stopped when resumed.
    last_epoch = training.epoch if training.stopped == "plateau" else config.fit.max_epochs
    for epoch in range(training.epoch + 1, last_epoch + 1):
        line = epochs.run(epoch, training, workdir, model, target)
        line["elapsed_seconds"] = time.time() - called
        line["cpu_seconds"] = time.process_time() - called_cpu
        history.append(line)
        if primary:
            write_lines(workdir / "metrics.jsonl", history)
        if progress:
            tqdm.write(
                f"epoch {epoch:3d}  loss {line['loss']:.4g}  validation r {line['validation_correlation']:.4f}"
                f"  lr {line['learning_rate']:.2g}" + ("" if line["event"] == "wait" else f"  {line['event']}")
            )
        if line["event"] == "stop":
            break

    nnx.update(target, training.best_params, training.best_rest)
    model.eval()
    summary = {
        "epochs": training.epoch,
        "stopped": training.stopped,
        "best_epoch": training.schedule.best_epoch,
        "best_validation_correlation": training.schedule.best_score,
        "learning_rate_decays": training.schedule.decays,
        "seconds": time.time() - started,
        "ensemble_size": config.fit.ensemble_size,
        "train_batch_size": epochs.train_batch,
        "n_parameters": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))),
        "core": provenance,
        "core_features": "cached" if caches else "frozen, per step" if frozen else "trained",
        "sessions": [
            {"name": data.name, "path": record["path"], **epochs.tier_means(training, index)}
            for index, (data, record) in enumerate(zip(sessions, records))
        ],
    }
    if primary:
        write_summary(workdir, summary, history)
    return summary


def initial_model(config: RunConfig, sessions, records, core_transfer, provenance, resuming: bool, workdir, primary):
    """(model, provenance): the Twin or Ensemble to train, in train mode. A new fit places its
    readouts from the data (``readout_init = "data"``) and puts in the transferred core (then
    provenance is the core.json written); a frozen core stays in eval mode, so that its BatchNorm
    statistics stay the source's. A resumed fit gets its state from the checkpoint instead."""
    model = checkpoint.make_model(config, records, checkpoint.readout_specs(sessions))
    if config.model.readout_init == "data" and not resuming:  # from scratch and on a transferred core alike
        placement.place_readouts(model, sessions)
    target = model.members if isinstance(model, Ensemble) else model
    if core_transfer is not None and not resuming:
        provenance = start_from_core(core_transfer, provenance, config, records, target, workdir, primary)
    if core_transfer is not None and core_transfer.frozen:
        target.core.eval()
    return model, provenance


def checked_records(config: RunConfig, sessions, store_paths, config_source: str | None) -> list[dict]:
    """The sessions' records (checkpoint.session_record) after checking that they can be fit with
    ``config``: responses for the loss, the core for image or video sessions, the image size,
    behavior for a behavior gain."""
    check_sessions(sessions, store_paths, config.fit.loss)
    records = [checkpoint.session_record(s) for s in sessions]
    check_core(config.model, sessions[0].video, str(store_paths[0]), config_source)
    for record in records:
        check_image_size(config.model, record["image_shape"], record["path"], config_source)
        if config.model.behavior_gain and not record["n_behavior"]:
            raise ConfigError(
                f"{record['path']}: has no behavior variable for [model].behavior_gain = true"
                f"{' in ' + config_source if config_source else ''}; set it to false or add behavior to the store"
            )
    return records


def check_resumed_run(workdir: Path, config: RunConfig, records: list[dict], store_paths) -> None:
    """RunError unless ``config`` (max_epochs aside) and the stores are the run's own."""
    saved_config, saved_records = checkpoint.read_run_files(workdir)
    if dataclasses.replace(saved_config, fit=dataclasses.replace(saved_config.fit, max_epochs=1)) != (
        dataclasses.replace(config, fit=dataclasses.replace(config.fit, max_epochs=1))
    ):
        raise RunError(f"{workdir / 'config.toml'}: differs from the config given; resume with the run's own config")
    if [r["unit_id"] for r in saved_records] != [r["unit_id"] for r in records]:
        raise RunError(f"{workdir / 'sessions.json'}: the stores given are not the run's; resume with the same stores")
    checkpoint.check_store_digests(
        workdir, saved_records, store_paths, fix="resume with the stores the run was fit on, or fit a new run on it"
    )


def restored_training(workdir: Path, training: Training, model, target) -> Training:
    """The Training of checkpoints/latest (``training`` gives the trees' structure); rewrites
    checkpoints/best when a kill came between the two saves of an improved epoch."""
    trees, meta = checkpoint.restore_step(workdir / "checkpoints" / "latest", training.trees())
    restored = Training(
        trees["params"], trees["rest"], trees["opt"], trees["best_params"], trees["best_rest"],
        Schedule(**meta["schedule"]), meta["epoch"], meta["stopped"],
    )
    best_dir = workdir / "checkpoints" / "best"
    best_epoch = restored.schedule.best_epoch
    if best_epoch and checkpoint.latest_step(best_dir) != best_epoch:
        save_best(model, target, restored.best_params, restored.best_rest, best_dir, restored.schedule)
    return restored


class Epochs:
    """The epochs of one fit: train on the train tier, score the validation tier, step the
    plateau schedule, checkpoint. Holds what every epoch uses alike."""

    def __init__(self, config: RunConfig, sessions, train_step, predict, mesh, caches, ensemble: bool, progress: bool):
        self.config = config
        self.ensemble = ensemble
        self.sessions = sessions
        self.train_step = train_step
        self.predict = predict
        self.mesh = mesh
        self.caches = caches
        self.progress = progress
        n_train = [len(s.trials("train")) for s in sessions]
        self.train_batch = train_batch_size(config.data, n_train)
        self.n_steps = sum(math.ceil(n / self.train_batch) for n in n_train)

    def run(self, epoch: int, training: Training, workdir: Path, model, target) -> dict:
        """Epoch ``epoch``: updates ``training`` and the checkpoints in ``workdir``; returns its
        metrics.jsonl line without the seconds since the fit began."""
        epoch_start = time.time()
        losses, member_loss = self.train(epoch, training)
        if not all(math.isfinite(v) for v in losses.values()):
            raise TwinError(
                f"{workdir}: the training loss is not finite ({losses['loss']}) in epoch {epoch}; stopped, the last"
                f" good checkpoint (epoch {training.epoch}) is kept; lower [fit].learning_rate or check the store's"
                " responses"
            )
        validation_start = time.time()
        member_scores = validation_scores(
            self.predict, training.params, training.rest, self.sessions, self.config.data.batch_size, self.mesh,
            self.caches,
        )
        score = float(member_scores.mean())
        checkpoint_start = time.time()
        line = {"epoch": epoch, **losses, "validation_correlation": score}
        line["learning_rate"] = training.schedule.learning_rate
        line["event"] = self.step_schedule(epoch, score, training, workdir, model, target)
        if self.ensemble:
            line["member_loss"] = member_loss.tolist()
            line["member_validation_correlation"] = member_scores.tolist()
        training.epoch = epoch
        checkpoint.save_step(workdir / "checkpoints" / "latest", epoch, training.trees(), training.meta())
        now = time.time()
        line["seconds"] = now - epoch_start
        line["train_seconds"] = validation_start - epoch_start
        line["validation_seconds"] = checkpoint_start - validation_start
        line["checkpoint_seconds"] = now - checkpoint_start
        return line

    def train(self, epoch: int, training: Training) -> tuple[dict, np.ndarray]:
        """One pass over the train tier: the loss terms per step (member mean) and each member's
        loss per step (members,)."""
        from twin.data.loader import batches

        loss_name = self.config.fit.loss
        totals = {"loss": 0.0, loss_name: 0.0, "regularizer": 0.0}
        n_done = 0
        lr = jnp.float32(training.schedule.learning_rate)
        loader = batches(
            self.sessions, "train", self.train_batch, shuffle=True, seed=epoch_seed(self.config, epoch),
            clip_frames=self.config.data.clip_frames,
        )
        bar = tqdm(total=self.n_steps, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not self.progress)
        with bar:
            for group in train_groups(loader, len(self.sessions)):
                arrays = distributed.shard_batch(tuple(batch_arrays(b, self.caches) for b in group), self.mesh)
                sessions_in_step = tuple(int(b.session) for b in group)
                training.params, training.rest, training.opt_state, values = self.train_step(
                    training.params, training.rest, training.opt_state, lr, arrays, sessions_in_step
                )
                totals = {k: totals[k] + values[k] for k in totals}
                n_done += 1
                bar.update(len(group))
        member_loss = np.atleast_1d(np.asarray(totals["loss"])) / n_done
        return {k: float(jnp.mean(v)) / n_done for k, v in totals.items()}, member_loss

    def step_schedule(self, epoch: int, score: float, training: Training, workdir: Path, model, target) -> str:
        """The plateau schedule's event for ``score``: an improvement saves checkpoints/best, a
        decay restores the best weights (``restore_best``), "stop" ends the fit."""
        action = plateau_step(training.schedule, score, epoch, self.config.fit)
        if action == "improved":
            training.best_params, training.best_rest = training.params, training.rest
            save_best(model, target, training.best_params, training.best_rest, workdir / "checkpoints" / "best",
                      training.schedule)
        elif action == "decay" and self.config.fit.restore_best:
            training.params, training.rest = training.best_params, training.best_rest
        if action == "stop":
            training.stopped = "plateau"
        return action

    def tier_means(self, training: Training, index: int) -> dict:
        """tier_means of session ``index`` with the best weights."""
        return tier_means(
            self.predict, training.best_params, training.best_rest, index, self.sessions[index],
            self.config.data.batch_size, self.mesh,
        )


def write_summary(workdir: Path, summary: dict, history: list[dict]) -> None:
    """fit_curves.png of ``history`` and summary.json (atomically)."""
    if history:
        plot_curves(history, workdir / "fit_curves.png")
    tmp = workdir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(workdir / "summary.json")


def start_from_core(core_transfer, provenance, config, records, target, workdir: Path, primary: bool) -> dict:
    """Put the core of ``core_transfer``'s source run into ``target`` (the Twin or the stacked
    members) and write core.json; returns its content. ``provenance``: what a resumed run's
    core.json recorded (the source core must not have changed since)."""
    state, found = transfer.load_core(core_transfer, config, records)
    if provenance is not None and provenance["sha256"] != found["sha256"]:
        raise RunError(
            f"--core {core_transfer.source}: its core changed since {workdir} started from it (sha256"
            f" {found['sha256'][:12]}, recorded {provenance['sha256'][:12]}); fit a new run"
        )
    transfer.place_core(target, state, found["source_members"], config.fit.ensemble_size, core_transfer.source)
    if primary:
        transfer.write_provenance(workdir, found)
    return found


def save_best(model, target, params, rest, best_dir: Path, schedule: Schedule) -> None:
    """checkpoints/best: the full model state (Twin or Ensemble) with the best weights."""
    nnx.update(target, params, rest)
    checkpoint.save_step(
        best_dir,
        schedule.best_epoch,
        {"model": nnx.state(model)},
        {"epoch": schedule.best_epoch, "validation_correlation": schedule.best_score},
    )


def tier_means(predict, params, rest, index: int, data, batch_size: int, mesh) -> dict:
    """Mean scores (twin.evaluate.score_predictions without per_neuron) of session ``index`` per
    tier present (validation, test); ensembles are scored by their member mean."""
    from twin.evaluate import score_predictions

    means = {}
    for tier in ("validation", "test"):
        trials = data.trials(tier)
        if trials.size:
            predictions = predict_trials(
                lambda arrays: predict(params, rest, arrays, index), data, trials, batch_size, mesh
            )
            predictions = predictions.reshape((-1, trials.size) + data.responses.shape[1:]).mean(axis=0)
            scores = score_predictions(data, tier, predictions)
            means[tier] = {k: v for k, v in scores.items() if k != "per_neuron"}
    return means


def format_summary(summary: dict, workdir) -> str:
    """One screen: epochs, best validation score, per-session test scores, where things are."""
    from twin.evaluate import decimals

    lines = [
        f"fit {workdir}: {summary['epochs']} epochs ({summary['stopped']}), {summary['seconds']:.0f} s,"
        f" {summary['n_parameters']:,} parameters, ensemble of {summary['ensemble_size']}",
        f"best validation single-trial r {summary['best_validation_correlation']:.4f} at epoch"
        f" {summary['best_epoch']} ({summary['learning_rate_decays']} learning-rate decays)",
    ]
    for session in summary["sessions"]:
        for tier in ("validation", "test"):
            if tier in session:
                s = session[tier]
                text = f"  {session['name']} {tier}: r {s['single_trial_correlation']:.4f}"
                if not s["repeat_metrics"]:
                    text += (
                        f", r to average {decimals(s['correlation_to_average'])}, FEVE {decimals(s['feve'])},"
                        f" oracle r {decimals(s['oracle_correlation'])}"
                    )
                elif tier == "test":  # validation images are not repeated by design
                    text += f", r to average, FEVE and oracle r {s['repeat_metrics']}"
                if s.get("fraction_of_ceiling") is not None:
                    text += f", {s['fraction_of_ceiling']:.0%} of the ground-truth ceiling"
                lines.append(text)
    lines.append(f"  run: {workdir}/ (config.toml, metrics.jsonl, checkpoints/, fit_curves.png, summary.json)")
    return "\n".join(lines)


def fit_command(
    stores: list[str],
    out: str,
    config_path: str | None = None,
    seeds: int | None = None,
    resume: bool = False,
    max_epochs: int | None = None,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    overwrite: bool = False,
    core: str | None = None,
    freeze_core: bool = False,
    core_learning_rate: float | None = None,
) -> int:
    """`twin fit`: config from --config (or, with --resume, the run's config.toml), overrides
    from --seeds / --max-epochs, then fit and print the summary. coordinator, num_processes,
    process_id: multi-host set-up (twin.distributed.initialize). core, freeze_core,
    core_learning_rate: reuse the core of the run ``core`` (twin.transfer.setup).

    A new run directory is written in place, so a killed fit can be resumed; a fit that fails
    before its first checkpoint leaves nothing. ``overwrite`` replaces an existing run only when
    the new fit succeeds (twin.outputs.output_in_place).
    """
    distributed.initialize(coordinator, num_processes, process_id)
    primary = jax.process_index() == 0
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: pass one; --resume continues the run in --out")
    if resume:
        checkpoint.read_run_files(Path(out))
    else:  # every process: the same answer on a shared filesystem, so all stop together
        check_output(out, overwrite, inputs=stores + ([core] if core else []))
        distributed.sync("twin fit: output checked")
    config = fit_config_from(out, config_path, resume, seeds, max_epochs)
    core_transfer, config = transfer.setup(out, resume, core, freeze_core, core_learning_rate, config, config_path)
    # Process 0 prepares the run directory; the others wait for it before fitting into it.
    if resume or not primary:
        run_directory = contextlib.nullcontext()
    else:
        run_directory = output_in_place(out, overwrite, keep=has_checkpoint, inputs=stores)
    with run_directory:
        distributed.sync("twin fit: run directory ready")
        summary = fit(config, stores, out, resume=resume, config_source=config_path, core_transfer=core_transfer)
    print(format_summary(summary, out))
    return 0


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a (killed or failed) fit in ``run_dir`` saved an epoch that --resume can continue."""
    return checkpoint.latest_step(Path(run_dir) / "checkpoints" / "latest") is not None


def fit_config_from(
    out: str, config_path: str | None, resume: bool, seeds: int | None, max_epochs: int | None
) -> RunConfig:
    """The config of `twin fit`: --config, else the run's own with --resume, else the defaults;
    then --seeds and --max-epochs."""
    run_config = Path(out) / "config.toml"
    if config_path is not None:
        config = load_config(config_path)
    elif resume and run_config.exists():
        config = load_config(run_config)
    else:
        config = RunConfig()
    overrides = {}
    if seeds is not None:
        overrides["ensemble_size"] = seeds
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    return dataclasses.replace(config, fit=dataclasses.replace(config.fit, **overrides))
