"""`twin bench --quick --json`: the suite runs end to end and reports every measurement (no speed checks)."""

import json

import pytest

from twin.bench import QUICK, VIDEO_QUICK, peer_available, video_comparison
from twin.cli import main


def test_quick_json_has_every_measurement(capsys):
    assert main(["bench", "--quick", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)

    assert results["quick"] is True and results["precision"] == "float32"
    assert results["shapes"]["neurons"] == QUICK.neurons
    assert results["matmul_peak"]["gflop_s"] > 0
    for key in ("date", "cpu", "platform", "versions"):
        assert results["machine"][key]
    assert results["loader"]["trials_s"] > 0
    for name in ("forward", "train"):
        row = results[name]
        assert row["img_s"] > 0 and row["compile_s"] > 0
        assert row["flops_per_img"] > 0 and row["gflop_s"] > 0
    assert sorted(results["mei"], key=int) == [str(n) for n in QUICK.mei_neurons]
    for row in results["mei"].values():
        assert row["image_step_s"] > 0 and row["flops_per_image_step"] > 0 and row["steps_timed"] >= 2
        assert row["chunk"] <= QUICK.mei_chunk
    # Training costs more than predicting: about 3x the forward FLOPs per image.
    assert 2 < results["train"]["flops_per_img"] / results["forward"]["flops_per_img"] < 5

    if peer_available() is None:
        assert set(results["peer"]) == {"default", "malloc_tuned"}
        assert "glibc.malloc" in results["peer"]["malloc_tuned"]["glibc_tunables"]
        rows = {"forward", "train"} | {f"mei_{n}" for n in QUICK.mei_neurons}
        assert set(results["ratios"]) == set(results["peer_variants"]) == rows
        for setting in ("default", "malloc_tuned"):
            run = results["peer"][setting]
            assert "--quick" in run["compiled"]["skipped"]
            assert sorted(run["mei_batched"], key=int) == [str(n) for n in QUICK.mei_neurons]
            assert set(results["peer_variants"][f"mei_{QUICK.mei_neurons[-1]}"]) >= {
                f"{setting} one-neuron",
                f"{setting} batched",
            }
        # Ratios are against the fastest variant of each row.
        for row, figures in results["peer_variants"].items():
            assert results["peer_fastest"][row]["rate"] == max(figures.values()) > 0
        assert results["ratios"]["train"] == results["train"]["img_s"] / max(results["peer_variants"]["train"].values())
    else:
        assert "skipped" in results["peer"] and results["ratios"] == {} and results["peer_fastest"] == {}



@pytest.mark.slow  # ~100 s on a loaded 2-core host: eight compiles and the peer's process
def test_video_quick_json_has_every_row(capsys):
    assert main(["bench", "--video", "--quick", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)

    assert results["video"] is True and results["shapes"]["frames"] == VIDEO_QUICK.frames
    mev_rows = {f"mev_{n}" for n in VIDEO_QUICK.mev_neurons}
    rows = {f"{core} {name}" for core in ("gru", "factorized3d") for name in {"forward", "train"} | mev_rows}
    for row in rows:
        rate = results[row].get("frame_s", results[row].get("clip_step_s"))
        assert rate > 0 and results[row]["compile_s"] > 0
    assert results["gru mev_2"]["chunk"] == 1 and results["gru mev_2"]["steps_timed"] == 1
    # A train step costs more than a forward pass of the same frames.
    assert results["gru train"]["flops_per_frame"] > 2 * results["gru forward"]["flops_per_frame"]

    if peer_available() is None:
        assert set(results["peer"]) == {"malloc_tuned"}  # the CPU runs the peer once, malloc tuned
        run = results["peer"]["malloc_tuned"]
        assert run["gru"]["output_frames"] == VIDEO_QUICK.frames
        assert run["factorized3d"]["output_frames"] == VIDEO_QUICK.frames - 22  # no temporal padding
        assert set(results["ratios"]) == set(results["peer_variants"]) == rows
        for row, figures in results["peer_variants"].items():
            assert results["peer_fastest"][row]["rate"] == max(figures.values()) > 0
        assert results["ratios"]["gru train"] == results["gru train"]["frame_s"] / run["gru"]["train_frame_s"]
    else:
        assert "skipped" in results["peer"] and results["ratios"] == {}


def test_video_ratios_against_the_fastest_peer_variant():
    core = {"forward_frame_s": 10.0, "train_frame_s": 2.0, "mev_one_neuron": 1.0, "mev_batched": {"1": 0.5, "4": 3.0}}
    results = {
        "gru forward": {"frame_s": 30.0, "compile_s": 1.0},
        "gru train": {"frame_s": 1.0, "compile_s": 1.0},
        "gru mev_1": {"clip_step_s": 2.0, "compile_s": 1.0},
        "gru mev_4": {"clip_step_s": 6.0, "compile_s": 1.0},
        "peer": {"malloc_tuned": {"gru": core}},
    }
    comparison = video_comparison(results, (1, 4))
    assert comparison["peer_fastest"]["gru mev_1"] == {"variant": "malloc_tuned one-neuron", "rate": 1.0}
    assert comparison["peer_fastest"]["gru mev_4"] == {"variant": "malloc_tuned batched", "rate": 3.0}
    assert comparison["ratios"] == {"gru forward": 3.0, "gru train": 0.5, "gru mev_1": 2.0, "gru mev_4": 2.0}
    assert video_comparison(results | {"peer": {"skipped": "--no-peer"}}, (1, 4))["ratios"] == {}


def test_video_refuses_bfloat16(capsys):
    assert main(["bench", "--video", "--quick", "--precision", "bfloat16"]) == 2
    assert "--precision bfloat16 is not measured by --video" in capsys.readouterr().err
