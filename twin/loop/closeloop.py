"""Ingest the rig's responses to the exported stimuli and score the MEIs against their controls.

Per neuron of the manifest: trials of its MEI vs trials of its strongest natural control
(one-sided Welch t-test, MEI > control), the measured MEI / best-natural-image ratio, and the
twin's predicted response next to the measured mean for each of its stimuli. Everything is
measured on the ingested responses (the animal's), never on the twin's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

from twin.data.schema import unit_ids
from twin.errors import RunError, StimulusError, TwinWarning
from twin.loop.export import CONTROLS
from twin.loop.files import MANIFEST, is_integer, read_manifest, read_responses

P_VALUE = 0.05


def run_unit_ids(run: str | Path, session: int) -> np.ndarray:
    """The unit ids (neuron,) int64 or str of one session of a run, from its sessions.json."""
    from twin.checkpoint import read_session_records

    sessions = read_session_records(Path(run))
    if not 0 <= session < len(sessions):
        raise RunError(
            f"{Path(run) / 'sessions.json'}: the stimuli were made for session {session} but the run has"
            f" {len(sessions)}; pass the run the MEIs came from"
        )
    ids = sessions[session]["unit_id"]
    if not isinstance(ids, list) or not ids or not (all(map(is_integer, ids)) or all(isinstance(u, str) for u in ids)):
        raise RunError(
            f"{Path(run) / 'sessions.json'}: session {session} has no list of integer or string unit_id; fit the"
            " run again"
        )
    return unit_ids(ids)


def kind_of_ids(ids: np.ndarray) -> str:
    """'strings' or 'integers': what unit ids (neuron,) (``unit_ids``' forms) hold."""
    return "strings" if ids.dtype.kind == "U" else "integers"


def match_trials(manifest: dict, data: dict, responses_path, stimuli_path) -> dict[int, np.ndarray]:
    """Trial indices per manifest stimulus id; unknown or unshown stimulus ids raise StimulusError."""
    known = {s["stimulus_id"] for s in manifest["stimuli"]}
    shown = set(np.unique(data["stimulus_id"]).tolist())
    extra = sorted(shown - known)
    if extra:
        raise StimulusError(
            f"{responses_path}: stimulus_id {extra[0]} ({len(extra)} unknown ids in all) is not in"
            f" {Path(stimuli_path) / MANIFEST}; pass the responses recorded for these stimuli"
        )
    missing = sorted(known - shown)
    if missing:
        files = {s["stimulus_id"]: s["file"] for s in manifest["stimuli"]}
        raise StimulusError(
            f"{responses_path}: no trials of stimulus_id {missing[0]} ({files[missing[0]]};"
            f" {len(missing)} missing in all); record every stimulus in the manifest"
        )
    return {i: np.flatnonzero(data["stimulus_id"] == i) for i in sorted(known)}


def check_neurons(manifest: dict, data: dict, run_ids: np.ndarray, responses_path, run, stimuli_path: Path) -> list:
    """Recorded unit ids must be of the kind of the run's ids ``run_ids`` (neuron,), belong to its
    session and include some stimulus' neuron; the manifest's ids must be of that kind too.

    Returns the stimuli's unit ids without responses (neurons lost on the rig), sorted.
    """
    wanted = np.unique(unit_ids([s["unit_id"] for s in manifest["stimuli"]]))
    for ids, where in ((data["unit_id"], responses_path), (wanted, stimuli_path / MANIFEST)):
        if kind_of_ids(ids) != kind_of_ids(run_ids):
            raise StimulusError(
                f"{where}: unit_id holds {kind_of_ids(ids)} but the run's session has"
                f" {kind_of_ids(run_ids)[:-1]} ids like {run_ids[0].item()!r}; write the run's unit ids"
            )
    foreign = np.setdiff1d(data["unit_id"], run_ids)
    if len(foreign):
        raise StimulusError(
            f"{responses_path}: unit_id {foreign[0].item()!r} ({len(foreign)} in all) is not a neuron of"
            f" session {manifest['session']} of {run}; match the rig's cells to the run's unit ids"
        )
    absent = np.setdiff1d(wanted, data["unit_id"])
    if len(absent) == len(wanted):
        raise StimulusError(
            f"{responses_path}: none of the {len(wanted)} units with stimuli in the manifest has"
            " responses; record those neurons and match the rig's cells to the run's unit ids"
        )
    return absent.tolist()


def finite(value) -> float | None:
    """JSON-safe float: NaN and inf become null."""
    value = float(value)
    return value if np.isfinite(value) else None


def welch_greater(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """One-sided Welch t-test of mean(a) > mean(b): (t, p). NaN when either has < 2 trials."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    if np.var(a) == 0 and np.var(b) == 0:
        return float("nan"), 0.0 if a.mean() > b.mean() else 1.0
    result = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    return float(result.statistic), float(result.pvalue)


def neuron_statistics(unit: int | str, stimuli: list[dict], trials: dict, column: np.ndarray) -> dict:
    """Statistics of one neuron; stimuli are its manifest entries, column its responses (trial,)."""
    by_kind: dict[str, list[np.ndarray]] = {}
    measured = []
    for stimulus in stimuli:
        values = column[trials[stimulus["stimulus_id"]]]
        by_kind.setdefault(stimulus["kind"], []).append(values)
        measured.append(
            {
                "stimulus_id": stimulus["stimulus_id"],
                "kind": stimulus["kind"],
                "predicted": stimulus["predicted_response"],
                "measured": float(values.mean()),
                "sem": finite(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None,
                "trials": len(values),
            }
        )
    mei = by_kind["mei"][0]
    controls = {kind: by_kind[kind][0] for kind in CONTROLS if kind in by_kind}
    strongest = max(controls, key=lambda kind: controls[kind].mean())
    t, p = welch_greater(mei, controls[strongest])
    natural = controls.get("natural")
    ratio = mei.mean() / natural.mean() if natural is not None and natural.mean() > 0 else np.nan
    return {
        "unit_id": unit,
        "neuron_index": stimuli[0]["neuron_index"],
        "mei_response": float(mei.mean()),
        "control_responses": {kind: float(values.mean()) for kind, values in controls.items()},
        "dei_responses": [float(v.mean()) for v in by_kind.get("dei", [])],
        "p_by_control": {kind: finite(welch_greater(mei, values)[1]) for kind, values in controls.items()},
        "strongest_control": strongest,
        "t": finite(t),
        "p": finite(p),
        "mei_beats_controls": bool(p < P_VALUE) if np.isfinite(p) else False,
        "mei_over_best_natural": finite(ratio),
        "predicted_mei": stimuli[[s["kind"] for s in stimuli].index("mei")]["predicted_response"],
        "stimuli": measured,
    }


def summarize(manifest: dict, data: dict, trials: dict) -> dict:
    """summary.json: population numbers and one entry per neuron with an MEI and a control shown
    (a neuron whose MEI or both controls were rejected at export is left out, and so is a neuron
    without responses, listed in units_without_responses)."""
    per_unit: dict[int | str, list[dict]] = {}
    for stimulus in manifest["stimuli"]:
        per_unit.setdefault(stimulus["unit_id"], []).append(stimulus)
    recorded = set(data["unit_id"].tolist())
    neurons = []
    for unit, stimuli in per_unit.items():
        kinds = {s["kind"] for s in stimuli}
        if unit not in recorded or "mei" not in kinds or not kinds & set(CONTROLS):
            continue
        column = data["responses"][:, int(np.flatnonzero(data["unit_id"] == unit)[0])]
        neurons.append(neuron_statistics(unit, stimuli, trials, column))
    pairs = np.array([(m["predicted"], m["measured"]) for n in neurons for m in n["stimuli"]])
    correlation = np.corrcoef(pairs.T)[0, 1] if len(pairs) > 2 and np.all(pairs.std(0) > 0) else np.nan
    ratios = np.array([n["mei_over_best_natural"] for n in neurons if n["mei_over_best_natural"] is not None])
    return {
        "n_neurons": len(neurons),
        "median_mei_over_best_natural": finite(np.median(ratios)) if len(ratios) else None,
        "fraction_mei_beats_controls_p05": (
            finite(np.mean([n["mei_beats_controls"] for n in neurons])) if neurons else None
        ),
        "prediction_correlation": finite(correlation),
        "units_without_responses": sorted(set(per_unit) - recorded),
        "neurons": neurons,
    }


def closeloop(
    run: str | Path,
    stimuli: str | Path,
    responses: str | Path,
    out: str | Path,
    overwrite: bool = False,
    day2: dict | None = None,
) -> dict:
    """Match responses.npz to the manifest of ``stimuli``, score every neuron, write the report.

    Writes ``out/summary.json``, ``out/index.html`` and the report's PNGs (atomically) and returns
    the summary dict. ``day2``: when the responses were recorded on day 2 (``twin loop --days
    2``), how many selected neurons were found again (twin.loop.run.found_again), kept in the
    summary and the report.
    """
    from twin.loop.report import write_report
    from twin.outputs import check_output, output

    check_output(out, overwrite, inputs=[run, stimuli, responses])
    manifest = read_manifest(stimuli)
    data = read_responses(responses)
    lost = check_neurons(manifest, data, run_unit_ids(run, manifest["session"]), responses, run, Path(stimuli))
    if lost:
        # a neuron lost on the rig is normal: the others are scored, the report lists the lost ones
        warnings.warn(
            f"{responses}: {len(lost)} units with stimuli have no responses and are left out:"
            f" unit_id {', '.join(map(str, lost))}",
            TwinWarning,
            stacklevel=2,
        )
    trials = match_trials(manifest, data, responses, stimuli)
    summary = summarize(manifest, data, trials)
    if day2 is not None:
        summary["day2"] = day2
    with output(out, overwrite) as tmp:
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
        write_report(tmp, summary, manifest, Path(stimuli), Path(run))
    return summary
