"""`twin bench --quick --json`: the suite runs end to end and reports every measurement (no speed checks)."""

import json

from twin.bench import QUICK, peer_available
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
