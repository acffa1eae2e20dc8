"""Choose neurons for a closed loop the way the inception-loop studies do (Walker et al. 2019).

1. reliable: oracle correlation on the test repeats in the top half of the session;
2. well predicted: the twin's fraction of oracle (single-trial test correlation / oracle, both
   single-trial measures) in the top half of the reliable neurons;
   a recording with too few repeated test images (responses averaged over repeats, say) has no
   oracle: then rule 1 is skipped and rule 2 keeps the top half by the twin's test correlation;
3. ranked by the twin's gain over a linear-nonlinear (LN) model fit to the same trials (ridge
   regression on pixels + a binned output nonlinearity), when ``ln`` is on;
4. taken in rank order, skipping neurons within ``edge`` µm of the imaging field's border and
   neurons closer than ``min_distance`` µm to one already chosen (when the session has positions).

Video sessions are scored frame by frame after the burn-in (SessionData.scored: the oracle over
repeats of the same frame of the same video) and ranked without the LN model, whose pixel
regression has no time axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twin.metrics import correlation, oracle_correlation, repeats_note, single_trial_correlation

RIDGE_PENALTIES = np.logspace(-3, 3, 13)  # times the mean eigenvalue of the Gram matrix
NONLINEARITY_BINS = 20


def nonlinearity(drive: np.ndarray, responses: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per neuron, the LN output nonlinearity as (bin centres, mean response) over quantile bins.

    drive, responses: (trials, neurons).
    """
    edges = np.linspace(0, 1, NONLINEARITY_BINS + 1)
    curves = []
    for n in range(drive.shape[1]):
        bins = np.quantile(drive[:, n], edges)
        which = np.clip(np.searchsorted(bins, drive[:, n], side="right") - 1, 0, NONLINEARITY_BINS - 1)
        counts = np.bincount(which, minlength=NONLINEARITY_BINS)
        keep = counts > 0
        centre = np.bincount(which, drive[:, n], NONLINEARITY_BINS)[keep] / counts[keep]
        mean = np.bincount(which, responses[:, n], NONLINEARITY_BINS)[keep] / counts[keep]
        curves.append((centre, mean))
    return curves


def fit_ln(train_x, train_y, val_x, val_y):
    """Ridge-regression LN model, penalty chosen per neuron on the validation trials.

    x: (trials, pixels), y: (trials, neurons). Returns predict(x) -> (trials, neurons).
    """
    mean_x, mean_y = train_x.mean(0), train_y.mean(0)
    centred = train_x - mean_x
    # One eigendecomposition of the (pixels, pixels) Gram matrix serves every penalty.
    eigenvalues, vectors = np.linalg.eigh(centred.T @ centred)
    projected = vectors.T @ (centred.T @ (train_y - mean_y))
    best_score = np.full(train_y.shape[1], -np.inf)
    weights = np.zeros((train_x.shape[1], train_y.shape[1]))
    for penalty in RIDGE_PENALTIES * np.mean(eigenvalues):
        w = vectors @ (projected / (eigenvalues + penalty)[:, None])
        score = correlation(val_y, (val_x - mean_x) @ w)
        better = score > best_score
        weights[:, better], best_score[better] = w[:, better], score[better]
    curves = nonlinearity(centred @ weights, train_y)

    def predict(x):
        drive = (x - mean_x) @ weights
        return np.stack([np.interp(drive[:, n], *curves[n]) for n in range(drive.shape[1])], axis=1)

    return predict


def pooled(images: np.ndarray) -> np.ndarray:
    """(trials, y, x, channel) -> (trials, features): 2x2 average pooling when the image is larger
    than 16x16, so the LN model has a few hundred weights per neuron, not thousands."""
    n, y, x, c = images.shape
    if min(y, x) > 16:
        images = images[:, : y // 2 * 2, : x // 2 * 2].reshape(n, y // 2, 2, x // 2, 2, c).mean((2, 4))
    return images.reshape(n, -1).astype(np.float64)


def ln_correlations(data) -> np.ndarray:
    """Single-trial correlation (neuron,) on the test tier of an LN model fit to the train trials.

    data: SessionData. Validation trials pick the ridge penalty (the last tenth of the train
    trials when the session has none). Missing responses are filled with the neuron's train mean
    for the ridge fit and left out of the test correlation.
    """
    images = pooled(data.images)
    train = data.trials("train")
    validation = data.trials("validation")
    if len(validation) == 0:
        train, validation = train[: len(train) * 9 // 10], train[len(train) * 9 // 10 :]
    filled = np.where(np.isnan(data.responses), np.nanmean(data.responses[train], axis=0), data.responses)
    predict = fit_ln(images[train], filled[train], images[validation], filled[validation])
    test = data.trials("test")
    return single_trial_correlation(data.responses[test], predict(images[test]))


def spaced(order: np.ndarray, xyz: np.ndarray | None, n: int, min_distance: float, edge: float):
    """Greedy pick in rank order: (chosen indices, n skipped at the edge, n skipped as too close)."""
    chosen, at_edge, too_close = [], 0, 0
    if xyz is not None:
        lo, hi = xyz[:, :2].min(0), xyz[:, :2].max(0)
    for i in order:
        if len(chosen) == n:
            break
        if xyz is not None:
            if np.any(xyz[i, :2] - lo < edge) or np.any(hi - xyz[i, :2] < edge):
                at_edge += 1
                continue
            if chosen and np.min(np.linalg.norm(xyz[chosen] - xyz[i], axis=1)) < min_distance:
                too_close += 1
                continue
        chosen.append(int(i))
    return chosen, at_edge, too_close


def top_half(values: np.ndarray, among: np.ndarray) -> tuple[np.ndarray, float]:
    """(values >= their median over ``among`` (bool), that median); NaN counts as below."""
    threshold = float(np.nanmedian(values[among]))
    return among & (np.nan_to_num(values, nan=-np.inf) >= threshold), threshold


def well_predicted(responses: np.ndarray, ids: np.ndarray, twin_r: np.ndarray, note: str) -> tuple:
    """Rules 1 and 2: (oracle (neuron,), reliable, well predicted (neuron,) bool, thresholds).

    responses: the scored test rows (m, neuron) (SessionData.scored), ids (m,) their stimulus
    ids; note: ``repeats_note`` of the test tier; when set there is no oracle (NaN) and every
    neuron counts as reliable."""
    everyone = np.ones(len(twin_r), bool)
    if note:
        good, threshold = top_half(twin_r, everyone)
        oracle = np.full(len(twin_r), np.nan)
        return oracle, everyone, good, {"oracle": None, "fraction_of_oracle": None, "twin_correlation": threshold}
    oracle = oracle_correlation(responses, ids)
    reliable, oracle_threshold = top_half(oracle, everyone)
    with np.errstate(invalid="ignore", divide="ignore"):
        good, fraction_threshold = top_half(twin_r / oracle, reliable)
    thresholds = {"oracle": oracle_threshold, "fraction_of_oracle": fraction_threshold, "twin_correlation": None}
    return oracle, reliable, good, thresholds


def select_neurons(
    run: str | Path,
    n: int = 50,
    min_distance: float = 20.0,
    edge: float | None = None,
    session: int = 0,
    ln: bool = True,
    stores: list[str] | None = None,
) -> dict:
    """Pick up to ``n`` neurons of one session of a run for a closed loop (see the module doc).

    edge: margin (µm) from the imaging field's border; default ``min_distance``. Returns a dict
    with ``neuron_index`` and ``unit_id`` (lists, in rank order), ``neurons`` (per neuron: its
    scores and position), the thresholds used and how many neurons each rule excluded.
    stores: the run's sessions from these stores instead of the recorded ones (--store).
    """
    from twin.checkpoint import load_run
    from twin.errors import ConfigError
    from twin.evaluate import predict

    if n < 1:
        raise ConfigError(f"--n {n}: select at least one neuron")
    loaded = load_run(run, stores=stores)
    if not 0 <= session < len(loaded.sessions):
        raise ConfigError(f"{run}: session {session} does not exist; the run has {len(loaded.sessions)}")
    data = loaded.sessions[session]
    edge = min_distance if edge is None else edge
    ln = ln and not data.video
    test = data.trials("test")
    ids, responses, predicted = data.scored(test, data.responses[test], predict(loaded.model, session, data, test))
    twin_r = single_trial_correlation(responses, predicted)
    note = repeats_note(ids, unit="frames" if data.video else "images")
    oracle, reliable, good, thresholds = well_predicted(responses, ids, twin_r, note)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = twin_r / oracle
    ln_r = ln_correlations(data) if ln else np.full(len(oracle), np.nan)
    rank_by = twin_r - ln_r if ln else (twin_r if note else fraction)
    rank_by = np.nan_to_num(rank_by, nan=-np.inf)
    candidates = np.flatnonzero(good)
    order = candidates[np.argsort(-rank_by[candidates], kind="stable")]
    chosen, at_edge, too_close = spaced(order, data.cell_xyz, n, min_distance, edge)

    def value(x):
        return None if not np.isfinite(x) else float(x)

    neurons = [
        {
            "neuron_index": i,
            "unit_id": data.unit_id[i].item(),
            "oracle": value(oracle[i]),
            "twin_correlation": value(twin_r[i]),
            "fraction_of_oracle": value(fraction[i]),
            "ln_correlation": value(ln_r[i]),
            "gain_over_ln": value(twin_r[i] - ln_r[i]),
            "position": None if data.cell_xyz is None else [float(v) for v in data.cell_xyz[i]],
        }
        for i in chosen
    ]
    return {
        "run": str(run),
        "session": session,
        "requested": n,
        "neuron_index": chosen,
        "unit_id": [data.unit_id[i].item() for i in chosen],
        "ranked_by": "twin - LN single-trial correlation" if ln else ("twin single-trial correlation" if note else "twin fraction of oracle"),
        "reliability": f"skipped: oracle {note}" if note else "oracle correlation on the test repeats",
        "thresholds": {
            **thresholds,
            "min_distance_um": min_distance if data.cell_xyz is not None else None,
            "edge_um": edge if data.cell_xyz is not None else None,
        },
        "excluded": {
            "unreliable": int(np.sum(~reliable)),
            "poorly_predicted": int(np.sum(reliable & ~good)),
            "field_edge": at_edge,
            "too_close": too_close,
        },
        "neurons": neurons,
    }


def kept_text(selection: dict) -> str:
    """The reliability and prediction rules as applied, for ``format_selection``."""
    t = selection["thresholds"]
    if t["oracle"] is None:
        return (
            f"reliability {selection['reliability']}; kept: twin test correlation >= {t['twin_correlation']:.3f}"
            " (top half)"
        )
    return f"kept: oracle >= {t['oracle']:.3f} (top half), fraction of oracle >= {t['fraction_of_oracle']:.3f}"


def format_selection(selection: dict) -> str:
    """A readable table of the selection and why."""
    from twin.mei.run import neurons_flag

    t, ex = selection["thresholds"], selection["excluded"]
    lines = [
        f"{len(selection['neurons'])} of {selection['requested']} requested neurons from {selection['run']}"
        f" (session {selection['session']}), ranked by {selection['ranked_by']}",
        kept_text(selection)
        + (
            f", >= {t['edge_um']:g} um from the field edge, >= {t['min_distance_um']:g} um apart"
            if t["min_distance_um"] is not None
            else " (no cell positions: no spacing rule)"
        ),
        f"excluded: {ex['unreliable']} unreliable, {ex['poorly_predicted']} poorly predicted,"
        f" {ex['field_edge']} at the field edge, {ex['too_close']} too close",
        f"{'index':>6} {'unit':>8} {'oracle':>7} {'twin r':>7} {'frac':>6} {'LN r':>7} {'gain':>7}",
    ]

    def show(x):
        return "   nan" if x is None else f"{x:6.3f}"

    for n in selection["neurons"]:
        lines.append(
            f"{n['neuron_index']:>6} {n['unit_id']:>8} {show(n['oracle']):>7} {show(n['twin_correlation']):>7}"
            f" {show(n['fraction_of_oracle']):>6} {show(n['ln_correlation']):>7} {show(n['gain_over_ln']):>7}"
        )
    lines.append("neurons for `twin mei --neurons`: " + neurons_flag(selection["neuron_index"], selection["unit_id"]))
    return "\n".join(lines)
