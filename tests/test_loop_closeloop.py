"""Closed-loop ingest: manifest <-> responses matching, statistics, summary.json and the report."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from twin.errors import StimulusError
from twin.loop.closeloop import closeloop, welch_greater
from twin.loop.export import CSV_FIELDS
from twin.loop.files import read_responses, write_responses
from twin.loop.monitor import Monitor

UNITS = [11, 12, 13, 14]
KINDS = ["mei", "natural", "natural_masked"]


def make_loop_files(tmp_path, repeats=8, seed=0):
    """A run (sessions.json, metrics.jsonl), an exported stimulus folder and rig responses where
    the MEIs of units 11 and 12 drive their neurons 3x and the others do nothing special."""
    run = tmp_path / "run"
    run.mkdir()
    record = {"name": "s", "path": "s.zarr", "unit_id": [10] + UNITS, "n_neurons": 1 + len(UNITS), "image_shape": [36, 64],
              "channels": 1, "n_behavior": 0, "has_positions": False}
    (run / "sessions.json").write_text(json.dumps([record]))
    (run / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"epoch": e, "train_loss": 1 / (e + 1), "validation_correlation": 0.1 * e, "lr": 0.009}) for e in range(5))
    )
    stimuli_dir = tmp_path / "stimuli"
    (stimuli_dir / "stimuli").mkdir(parents=True)
    stimuli = []
    for n, unit in enumerate(UNITS):
        for kind in KINDS:
            sid = len(stimuli)
            name = f"stimuli/{sid:04d}_{kind}_u{unit}.png"
            Image.fromarray(np.full((16, 32), 40 * (sid % 6), np.uint8)).save(stimuli_dir / name)
            stimuli.append(
                {"stimulus_id": sid, "file": name, "kind": kind, "unit_id": unit, "neuron_index": n + 1,
                 "seed": 0, "image_trial": None, "predicted_response": 3.0 if kind == "mei" else 1.0,
                 "mean_luminance": 10.0, "rms_contrast": 2.0}
            )
    rng = np.random.default_rng(seed)
    order = [int(i) for _ in range(repeats) for i in rng.permutation(len(stimuli))]
    manifest = {"meis": "meis.zarr", "run": str(run), "session": 0, "store": "s.zarr", "monitor": Monitor().to_dict(),
                "target": {"mean_luminance": 10.0, "rms_contrast": 2.0, "tolerance": 0.05, "matching": "channel"},
                "model_shape": [4, 8],
                "screen_shape": [16, 32], "repeats": repeats, "seed": seed, "stimuli": stimuli, "rejected": [],
                "order": order}
    (stimuli_dir / "manifest.json").write_text(json.dumps(manifest))
    with open(stimuli_dir / "manifest.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for trial, sid in enumerate(order):
            row = stimuli[sid] | {"trial": trial, "repeat": trial // len(stimuli)}
            writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_FIELDS})
    unit_id = np.array([10] + UNITS)
    responses = rng.gamma(4.0, 0.25, size=(len(order), len(unit_id)))  # mean 1
    for trial, sid in enumerate(order):
        s = stimuli[sid]
        if s["kind"] == "mei" and s["unit_id"] in (11, 12):
            responses[trial, unit_id == s["unit_id"]] *= 3.0
    path = tmp_path / "responses.npz"
    write_responses(path, responses, np.array(order), unit_id)
    return run, stimuli_dir, path, responses, np.array(order), unit_id


def test_welch_matches_textbook_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 12), rng.normal(0.0, 2.0, 9)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert welch_greater(a, b) == pytest.approx((t, stats.t.sf(t, dof)))
    assert np.isnan(welch_greater(a[:1], b)[1])


def test_closeloop_summary_and_report(tmp_path):
    run, stimuli, path, responses, order, unit_id = make_loop_files(tmp_path)
    summary = closeloop(run, stimuli, path, tmp_path / "report")
    written = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert written == summary
    assert list(summary) == [
        "n_neurons", "median_mei_over_best_natural", "fraction_mei_beats_controls_p05",
        "prediction_correlation", "units_without_responses", "neurons",
    ]
    assert summary["n_neurons"] == 4 and summary["units_without_responses"] == []
    by_unit = {n["unit_id"]: n for n in summary["neurons"]}
    assert by_unit[11]["mei_beats_controls"] and by_unit[12]["mei_beats_controls"]
    assert not by_unit[13]["mei_beats_controls"] and not by_unit[14]["mei_beats_controls"]
    assert summary["fraction_mei_beats_controls_p05"] == 0.5
    # per-neuron numbers are means of the right trials
    column = responses[:, list(unit_id).index(12)]
    mei_trials = column[order == 3]  # unit 12's MEI is stimulus 3
    natural_trials = column[order == 4]
    assert by_unit[12]["mei_response"] == pytest.approx(mei_trials.mean(), rel=1e-6)
    assert by_unit[12]["mei_over_best_natural"] == pytest.approx(mei_trials.mean() / natural_trials.mean(), rel=1e-5)
    ratios = [n["mei_over_best_natural"] for n in summary["neurons"]]
    assert summary["median_mei_over_best_natural"] == pytest.approx(np.median(ratios))
    pairs = np.array([(m["predicted"], m["measured"]) for n in summary["neurons"] for m in n["stimuli"]])
    assert summary["prediction_correlation"] == pytest.approx(np.corrcoef(pairs.T)[0, 1])
    for name in ["index.html", "fit_curves.png", "prediction_scatter.png", "mei_grid.png", "responses_bar.png"]:
        assert (tmp_path / "report" / name).stat().st_size > 1000
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "src=\"fit_curves" not in page


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r, s, u: (r, np.where(s == 5, 99, s), u), "stimulus_id 99 .*not in .*manifest.json"),
        (lambda r, s, u: (r[s != 7], s[s != 7], u), "no trials of stimulus_id 7 .*0007_natural_u13.png"),
        (lambda r, s, u: (r, s, np.where(u == 10, 777, u)), "unit_id 777 .*is not a neuron of session 0"),
        (lambda r, s, u: (r[:, u < 11], s, u[u < 11]), "none of the 4 units with stimuli in the manifest has responses"),
    ],
)
def test_mismatched_responses_raise_and_write_nothing(tmp_path, change, message):
    run, stimuli, path, responses, order, unit_id = make_loop_files(tmp_path)
    write_responses(path, *change(responses, order, unit_id), overwrite=True)
    with pytest.raises(StimulusError, match=message):
        closeloop(run, stimuli, path, tmp_path / "report")
    assert not (tmp_path / "report").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_read_responses_rejects_malformed_files(tmp_path):
    path = tmp_path / "r.npz"
    np.savez(path, responses=np.ones((3, 2)), stimulus_id=np.arange(4), unit_id=np.arange(2))
    with pytest.raises(StimulusError, match="one stimulus id per trial"):
        read_responses(path)
    np.savez(path, responses=np.ones((3, 2)), stimulus_id=np.arange(3))
    with pytest.raises(StimulusError, match="missing array 'unit_id'"):
        read_responses(path)
    with pytest.raises(StimulusError, match="nothing.npz: no such file"):
        read_responses(tmp_path / "nothing.npz")
