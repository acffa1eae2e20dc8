"""Score a fitted run on a tier of its sessions (or of other stores with the same neurons).

Per session: single-trial correlation, correlation to average, FEVE (neurons with FEV >= 0.15),
oracle correlation and fraction of oracle (twin.metrics, Sensorium definitions), as means and
per neuron, on the tier's trials that have responses (missing values left out per neuron). The
repeat metrics are n/a (None, with the reason in "repeat_metrics") when fewer than
twin.metrics.MIN_REPEATED_IMAGES images of the tier repeat. Simulated sessions also get the
ground-truth ceiling: the simulator's noise-free responses scored the same way, and the twin's
fraction of it (correlation to average).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from twin import metrics
from twin.checkpoint import load_run
from twin.errors import RunError
from twin.fit import forward, predict_trials


@functools.partial(jax.jit, static_argnums=(0, 3))
def apply_model(graphdef, state, arrays: dict, session: int) -> jax.Array:
    """A split model's prediction (b, n) for a dict of batch arrays."""
    return forward(nnx.merge(graphdef, state), arrays, session)


def predict(model, session: int, data, trials: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Predictions (k, n) of ``model`` (Twin or Ensemble, as it is: use eval mode) for
    ``trials`` (k,) of SessionData ``data``, which is readout ``session`` of the model."""
    graphdef, state = nnx.split(model)
    return predict_trials(lambda arrays: apply_model(graphdef, state, arrays, session), data, trials, batch_size)


def finite_or_none(values: np.ndarray) -> list:
    """Per-neuron values as a JSON list (NaN, e.g. FEVE of filtered neurons, as null)."""
    return [float(v) if np.isfinite(v) else None for v in values]


def mean_scores(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Neuron means of per-neuron scores (FEVE over the neurons that pass the FEV filter)."""
    means = {}
    for name, values in scores.items():
        finite = values[np.isfinite(values)]
        means[name] = float(finite.mean()) if finite.size else None
    return means


def ground_truth_scores(data, trials: np.ndarray) -> dict[str, np.ndarray]:
    """Per-neuron scores of the simulator's noise-free responses for ``trials`` of a simulated
    session (in the session's normalized response units). Video sessions are scored per frame
    after the burn-in (twin.metrics.scored_frames), the noise-free responses given each trial's
    behavior (as twin.data.simulate.ground_truth_ceiling)."""
    from twin.data.simulate import ground_truth, mean_response
    from twin.data.store import open_session

    ds = open_session(data.path)
    images = np.asarray(ds["images"].isel(trial=trials).values, dtype=np.float32)
    if data.video:
        from twin.data import simulate_video

        behavior = np.asarray(ds["behavior"].isel(trial=trials).values) if "behavior" in ds else None
        truth = simulate_video.mean_response(ground_truth(ds), images, behavior=behavior)
    else:
        truth = mean_response(ground_truth(ds), images)
    ids, responses, truth = data.scored(trials, data.responses[trials], truth / data.response_std)
    scores = metrics.score(responses, truth, ids)
    scores.pop("oracle_correlation", None)
    return scores


def is_simulated(data) -> bool:
    from twin.data.store import open_session

    return bool(open_session(data.path).attrs.get("simulated", False))


def score_session(model, session: int, data, tier: str = "test", batch_size: int = 128) -> dict:
    """Scores of ``model`` (eval mode) on one tier of SessionData ``data`` (readout ``session``);
    see score_predictions."""
    trials = tier_trials(data, tier)
    return score_predictions(data, tier, predict(model, session, data, trials, batch_size))


def tier_trials(data, tier: str) -> np.ndarray:
    """Trial indices (k,) of ``tier`` in ``data`` that have responses; RunError when there are none."""
    trials = data.trials(tier)
    if trials.size == 0:
        tiers = ", ".join(sorted(set(np.asarray(data.tier).tolist())))
        if np.any(data.tier == tier):
            raise RunError(
                f"{data.path}: the {tier!r} trials have no responses (NaN for every neuron); score another"
                f" tier with --tier (the store has {tiers}), or predict them with twin predict"
            )
        raise RunError(f"{data.path}: no {tier!r} trials; pass --tier with one of {tiers}")
    return trials


def score_predictions(data, tier: str, predictions: np.ndarray) -> dict:
    """Scores of ``predictions`` (k, n), or (k, frame, n) for a video session, for the trials of
    ``tier`` of SessionData ``data``: {"tier", "session", "store", "single_trial_correlation",
    "correlation_to_average", "feve", "oracle_correlation", "fraction_of_oracle", "n_neurons",
    "n_trials", "per_neuron": {name: [...]}, "repeat_metrics"} plus "ground_truth_ceiling" and
    "fraction_of_ceiling" for simulated sessions. The repeat metrics (twin.metrics.REPEAT_METRICS)
    are None when too few images of the tier repeat; "repeat_metrics" then says why
    (twin.metrics.repeats_note), else it is ""."""
    trials = tier_trials(data, tier)
    # Video trials are scored frame by frame: a repeated frame counts as a repeated image.
    image_id, responses, predicted = data.scored(trials, data.responses[trials], predictions)
    scores = metrics.score(responses, predicted, image_id)
    result = {
        "tier": tier,
        "session": data.name,
        "store": str(data.path),
        **dict.fromkeys(("single_trial_correlation", *metrics.REPEAT_METRICS)),
        **mean_scores(scores),
        "repeat_metrics": metrics.repeats_note(image_id, tier, "frames" if data.video else "images") or "",
        "n_neurons": int(data.responses.shape[1]),
        "n_trials": int(trials.size),
    }
    if "oracle_correlation" in scores:
        result["fraction_of_oracle"] = metrics.fraction_of_oracle(
            scores["single_trial_correlation"], scores["oracle_correlation"]
        )
    if is_simulated(data):
        ceiling = mean_scores(ground_truth_scores(data, trials))
        result["ground_truth_ceiling"] = ceiling
        result["fraction_of_ceiling"] = (
            result["correlation_to_average"] / ceiling["correlation_to_average"]
            if "correlation_to_average" in ceiling
            else None
        )
    result["per_neuron"] = {
        "unit_id": data.unit_id.tolist(),
        **{name: finite_or_none(values) for name, values in scores.items()},
    }
    return result


def evaluate_run(run_dir: str | Path, stores: list[str] | None = None, tier: str = "test") -> list[dict]:
    """score_session for every session of the run (one dict each), on the run's own stores or on
    ``stores`` (one per session, in the run's order, with the same neurons)."""
    run = load_run(run_dir, stores=stores)
    batch_size = run.config.data.batch_size
    return [score_session(run.model, index, data, tier, batch_size) for index, data in enumerate(run.sessions)]


def decimals(value: float | None, places: int = 4) -> str:
    """A number as printed: ``places`` decimals, or n/a for None (absent or not finite)."""
    return "n/a" if value is None else f"{value:.{places}f}"


def format_results(results: list[dict]) -> str:
    """A few lines per session: the mean scores (and the ground-truth ceiling when simulated);
    repeat metrics that are not scored say why."""
    lines = []
    for r in results:
        lines.append(f"{r['session']} ({r['tier']}, {r['n_neurons']} neurons, {r['n_trials']} trials)")
        for name in ("single_trial_correlation", *metrics.REPEAT_METRICS):
            value = r["repeat_metrics"] if r[name] is None and r["repeat_metrics"] else decimals(r[name])
            lines.append(f"  {name:26s} {value}")
        if r.get("fraction_of_ceiling") is not None:
            ceiling = r["ground_truth_ceiling"]
            lines.append(
                f"  ground-truth ceiling: r to average {decimals(ceiling['correlation_to_average'])},"
                f" twin reaches {r['fraction_of_ceiling']:.1%} of it"
            )
    return "\n".join(lines)
