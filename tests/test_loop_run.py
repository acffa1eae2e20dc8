"""A miniature `twin loop` end to end, and the pieces checked on what it wrote."""

import csv
import json
import os

import numpy as np
import pytest

from twin.cli import main
from twin.data.store import open_session
from twin.loop.files import read_responses, write_responses
from twin.loop.monitor import Monitor, png_to_model
from twin.predict import twin_responses


def test_loop_writes_every_stage(loop_dir):
    for name in ["session.zarr", "run", "selection.json", "meis.zarr", "stimuli/manifest.csv", "responses.npz", "report/index.html"]:
        assert (loop_dir / name).exists(), name
    result = json.loads((loop_dir / "loop.json").read_text())
    summary = json.loads((loop_dir / "report" / "summary.json").read_text())
    assert list(summary) == [
        "n_neurons", "median_mei_over_best_natural", "fraction_mei_beats_controls_p05",
        "prediction_correlation", "units_without_responses", "neurons",
    ]
    assert result["n_neurons"] == summary["n_neurons"] >= 1
    assert set(result["seconds"]) == {"simulate", "fit", "select", "mei", "export", "respond", "closeloop", "total"}
    selection = json.loads((loop_dir / "selection.json").read_text())
    assert {n["unit_id"] for n in summary["neurons"]} <= set(selection["unit_id"])


def test_selection_rules(loop_dir):
    selection = json.loads((loop_dir / "selection.json").read_text())
    assert 1 <= len(selection["neuron_index"]) <= 3
    assert len(set(selection["neuron_index"])) == len(selection["neuron_index"])
    gains = [n["gain_over_ln"] for n in selection["neurons"]]
    assert gains == sorted(gains, reverse=True)
    for n in selection["neurons"]:
        assert n["oracle"] >= selection["thresholds"]["oracle"]
        assert n["fraction_of_oracle"] >= selection["thresholds"]["fraction_of_oracle"]
    xyz = np.array([n["position"] for n in selection["neurons"]])
    distances = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)[np.triu_indices(len(xyz), 1)]
    assert np.all(distances >= 5.0)


def test_export_manifest_on_target_and_interleaved(loop_dir):
    manifest = json.loads((loop_dir / "stimuli" / "manifest.json").read_text())
    target = manifest["target"]
    stimuli = manifest["stimuli"]
    assert {s["kind"] for s in stimuli} <= {"mei", "natural", "natural_masked"}
    for s in stimuli:
        assert abs(s["mean_luminance"] / target["mean_luminance"] - 1) <= 0.05
        assert abs(s["rms_contrast"] / target["rms_contrast"] - 1) <= 0.05
    for r in manifest["rejected"]:
        assert r["off_target"] > 0.05
    assert all(s["spectral_kl"] >= 0 for s in stimuli) and manifest["natural_spectral_slope"] < 0
    assert "MEI spectral KL" in (loop_dir / "report" / "index.html").read_text()
    n = len(stimuli)
    order = manifest["order"]
    assert len(order) == n * manifest["repeats"]
    for block in range(manifest["repeats"]):  # every repeat block shows each stimulus once
        assert sorted(order[block * n : (block + 1) * n]) == list(range(n))
    with open(loop_dir / "stimuli" / "manifest.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["stimulus_id"]) for r in rows] == order
    assert [r["file"] for r in rows] == [stimuli[i]["file"] for i in order]


def test_png_round_trip_and_twin_prediction(loop_dir):
    """PNG -> model space gives the exported stimulus, and the twin's response to it is the
    manifest's prediction."""
    from twin.checkpoint import load_run

    manifest = json.loads((loop_dir / "stimuli" / "manifest.json").read_text())
    monitor = Monitor.from_dict(manifest["monitor"])
    shape = tuple(manifest["model_shape"])
    images = np.stack([png_to_model(loop_dir / "stimuli" / s["file"], monitor, shape) for s in manifest["stimuli"]])
    # the default monitor is linear, so model space is the PNG's 8-bit grid
    np.testing.assert_allclose(images, np.round(images), atol=1e-3)
    assert abs(images.mean() - open_session(loop_dir / "session.zarr")["images"].values.mean()) < 5
    neurons = np.array([s["neuron_index"] for s in manifest["stimuli"]])
    responses = twin_responses(load_run(loop_dir / "run"), 0, images, np.unique(neurons))
    predicted = responses[np.arange(len(neurons)), np.searchsorted(np.unique(neurons), neurons)]
    np.testing.assert_allclose(predicted, [s["predicted_response"] for s in manifest["stimuli"]], rtol=1e-4, atol=1e-5)


def test_rig_responses_match_manifest(loop_dir):
    manifest = json.loads((loop_dir / "stimuli" / "manifest.json").read_text())
    data = read_responses(loop_dir / "responses.npz")
    assert data["stimulus_id"].tolist() == manifest["order"]
    session = open_session(loop_dir / "session.zarr")
    assert data["unit_id"].tolist() == session["unit_id"].values.tolist()


def test_closeloop_cli_reports_missing_stimulus(loop_dir, tmp_path, capsys):
    data = read_responses(loop_dir / "responses.npz")
    keep = data["stimulus_id"] != 0
    bad = tmp_path / "bad.npz"
    write_responses(bad, data["responses"][keep], data["stimulus_id"][keep], data["unit_id"])
    args = ["closeloop", str(loop_dir / "run"), str(loop_dir / "stimuli"), str(bad), "--out", str(tmp_path / "report")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "no trials of stimulus_id 0" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "report").exists()


def test_export_with_monitor_lists_rejected_stimuli(loop_dir, tmp_path, capsys):
    pixel = [0, 64, 128, 192, 255]
    luminance = [round(70 * (p / 255) ** 2.2 + 0.5, 3) for p in pixel]
    monitor = tmp_path / "monitor.toml"
    monitor.write_text(
        f"[calibration]\npixel = {pixel}\nluminance = {luminance}\n[screen]\nheight = 36\nwidth = 64\n"
        "[target]\nmean_luminance = 30.0\nrms_contrast = 36.0\n"  # too much contrast for masked stimuli
    )
    out = tmp_path / "stimuli"
    args = ["export", str(loop_dir / "meis.zarr"), "--out", str(out), "--monitor", str(monitor), "--repeats", "2"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rejected"] and all(r["off_target"] > 0.05 for r in manifest["rejected"])
    printed = capsys.readouterr().out
    assert printed.count("rejected natural_masked") + printed.count("rejected mei") == len(manifest["rejected"])
    assert manifest["monitor"]["gamma"] == pytest.approx(2.2, rel=0.02)
    pngs = sorted(p.name for p in (out / "stimuli").iterdir())
    assert pngs == sorted(s["file"].split("/")[1] for s in manifest["stimuli"])
    from PIL import Image

    assert Image.open(out / manifest["stimuli"][0]["file"]).size == (64, 36)
    assert len(manifest["order"]) == 2 * len(manifest["stimuli"])

    monitor.write_text(
        f"[calibration]\npixel = {pixel}\nluminance = {luminance}\n[target]\nrms_contrast = 60.0\n"
    )
    assert main(["export", str(loop_dir / "meis.zarr"), "--out", str(tmp_path / "none"), "--monitor", str(monitor)]) == 2
    assert "off the target luminance/contrast" in capsys.readouterr().err and not (tmp_path / "none").exists()

    monitor.write_text("[calibration]\npixel = [0, 255]\n")
    assert main(["export", str(loop_dir / "meis.zarr"), "--out", str(tmp_path / "again"), "--monitor", str(monitor)]) == 2
    assert "monitor.toml" in capsys.readouterr().err and not (tmp_path / "again").exists()


def test_loop_refuses_a_used_folder(loop_dir, capsys):
    assert main(["loop", str(loop_dir)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_deis_travel_through_export_rig_and_closeloop(loop_dir, tmp_path):
    from twin.data.store import write_dataset
    from twin.loop.closeloop import closeloop
    from twin.loop.export import export_stimuli
    from twin.loop.respond import respond_to_stimuli
    from twin.mei.store import open_meis

    meis = open_meis(loop_dir / "meis.zarr").load()
    first = meis["images"].values[:, :1]
    meis["deis"] = (("neuron", "dei", "y", "x"), np.concatenate([first, 0.5 * first], axis=1))
    write_dataset(meis, tmp_path / "deis.zarr")
    manifest = export_stimuli(tmp_path / "deis.zarr", tmp_path / "stimuli", repeats=3, seed=2)
    kinds = [s["kind"] for s in manifest["stimuli"] + manifest["rejected"]]
    assert kinds.count("dei") == 2 * meis.sizes["neuron"]
    respond_to_stimuli(tmp_path / "stimuli", loop_dir / "session.zarr", tmp_path / "r.npz", seed=3)
    summary = closeloop(loop_dir / "run", tmp_path / "stimuli", tmp_path / "r.npz", tmp_path / "report")
    shown = [s for s in manifest["stimuli"] if s["kind"] == "dei"]
    assert sum(len(n["dei_responses"]) for n in summary["neurons"]) == len(shown)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"data = 3\n", "data = 3 is not a table; write [data] and its keys"),
        (b"mei = [1]\n", "mei = [1] is not a table; write [mei] and its keys"),
        (b"[fit]\nnote = '\xff'\n", "not UTF-8 text; pass a config TOML file"),
        (None, "not a regular file (a pipe or device)"),
    ],
)
def test_loop_config_errors_are_one_line(tmp_path, capsys, content, message):
    config = tmp_path / "c.toml"
    if content is None:
        os.mkfifo(config)
    else:
        config.write_bytes(content)
    code = main(["loop", str(tmp_path / "out"), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_loop_recipe_comes_from_the_config_unless_given(tmp_path, capsys):
    from twin.cli import build_parser

    assert build_parser().parse_args(["loop", "x"]).recipe is None
    config = tmp_path / "c.toml"
    config.write_text('[mei]\nrecipe = "lucid"\n')
    code = main(["loop", str(tmp_path / "out"), "--recipe", "sinz_ga", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and "--recipe sinz_ga and" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
