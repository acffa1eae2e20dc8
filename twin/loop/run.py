"""`twin loop OUT/`: the whole inception loop on the simulated animal, one progress line per stage.

simulate -> fit -> select -> MEIs -> export -> respond -> closeloop (+ report). Everything lands
in OUT/: session.zarr, config.toml (what fit and MEIs used), run/, selection.json, meis.zarr,
stimuli/, responses.npz, report/ (index.html, summary.json) and loop.json (timings and numbers).

With ``days = 2`` (``--days 2``) the stimuli are shown on day 2, as in the lab: after the export,
day 2 of the same animal is simulated (day2.zarr: twin.data.simulate.day2, the field of view
shifted, cells lost and new, gains drifted), its units are matched to day 1's (matches.csv:
twin.loop.match), the animal of day 2 is shown the stimuli (responses_day2.npz, its own unit ids)
and the responses of the day-2 units matched to day-1 units are renamed to their day-1 ids
(responses.npz), so closeloop compares the day-1 twin with the neurons found again; loop.json and
the report state how many selected neurons were found again (``day2``).

The default sizes run in about a minute on an idle 2-core CPU. A ``--config`` TOML file may
override any [data], [model], [fit], [mei] value and, in a [loop] table, the LOOP values below.
With ``channels = 3`` (``--channels 3``) the animal sees colour and the rig is shown RGB stimuli
(see twin.data.simulate and twin.loop.export); the stages are the same.

With ``video = true`` (``--video``) the animal watches movies (twin.data.simulate_video: 200 + 20x10
videos of 120 frames at 18x32 unless [loop] says otherwise), the twin has a video core
(SMALL_VIDEO_TWIN), the MEI stage makes most exciting videos with the best natural clips as
controls, the rig is shown clips (PNG frames) and records the mean over each clip's last
[mei].response_window frames. loop.json adds the twin's fraction of the ground-truth ceiling
(test tier, frame by frame after the burn-in) and ``direction``: of the selected neurons that are
direction selective in truth (gt_direction_selective), how many MEVs move (twin.mei.motion)
within DIRECTION_TOLERANCE degrees of the neuron's gt_preferred_direction.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import ClassVar

import tomli_w

from twin.config import (
    Checked,
    Valid,
    config_from_dict,
    flag,
    integer,
    integers,
    number,
    read_toml,
    section_from_dict,
    shown,
)
from twin.errors import ConfigError
from twin.metrics import MIN_REPEATED_IMAGES


@dataclasses.dataclass(frozen=True)
class LoopConfig(Checked):
    """Sizes of the simulated experiment and the rig session ([loop] table)."""

    TABLE: ClassVar[str] = "loop"

    simulated_neurons: int = integer(100, 1)
    train_images: int = integer(2000, 2)  # 10% of them validate
    # Selection ranks neurons by their oracle, which needs this many repeated test images.
    test_images: int = integer(50, MIN_REPEATED_IMAGES)
    repeats: int = integer(10, 2)  # of each test image in the simulated recording
    size: tuple[int, int] = integers((36, 64), lo=8, length=2)  # (y, x) pixels
    rig_repeats: int = integer(10, 1)  # presentations of each exported stimulus
    min_distance: float = number(20.0, 0)  # µm between selected neurons
    mei_seeds: int = integer(4, 1)
    channels: int = dataclasses.field(  # 1: gray animal; 3: colour animal, RGB stimuli
        default=1, metadata={"valid": Valid(lambda value: value in (1, 3), "1 (gray) or 3 (RGB)", "is not 1 or 3")}
    )
    video: bool = flag(False)  # the video animal (module doc); the sizes above then count videos
    frames: int = integer(120, 1)  # per simulated video


# The video animal's sizes unless [loop] sets them: as `twin simulate --video`.
VIDEO_LOOP = {"train_images": 200, "test_images": 20, "size": [18, 32]}


# The small twin the loop fits by default (a preset over the Sensorium defaults in twin.config,
# like the MEI recipes). The grid-mean predictor places each readout from the cell's cortical
# position (retinotopy): on the simulated animal it reaches in 8 epochs the validation correlation
# that free positions need > 40 epochs for; the validation correlation levels off by epoch 15.
SMALL_TWIN = {
    "model": {"core_layers": 2, "core_channels": 16, "hidden_kernel": 5, "grid_mean_predictor": True},
    "data": {"batch_size": 32},
    "fit": {"max_epochs": 15, "patience": 3, "max_lr_decays": 2},
}


# The video twin (with --video): a factorized 3-D core of 3 layers of 24 channels, temporal kernels
# of 11 then 7 frames, a per-neuron behavior gain, batches of 4 80-frame clips, fit until its
# plateau with patience 10 (the validation correlation of 20 videos moves by ~0.01 an epoch; a
# 2 x 8 twin stopped after 15 epochs with patience 3 did not learn: validation r 0.00); MEVs of
# 30 frames whose last 10 are scored, at 10x walker2019's learning rate for 200 steps (at its own
# rate they stay below the best natural clip).
SMALL_VIDEO_TWIN = {  # the settings of experiments/video_loop.md
    "data": {"batch_size": 4},
    "model": {
        "core": "factorized3d", "core_layers": 3, "core_channels": 24, "input_kernel": 9, "hidden_kernel": 7,
        "temporal_input_kernel": 11, "temporal_hidden_kernel": 7, "behavior_gain": True,
    },
    "fit": {"max_epochs": 200, "patience": 10},
    # A fixed clip norm (a quarter of a natural clip's): without it the MEVs reach the pixel range and
    # leave the contrasts the twin was fit on, and their motion strays from the preferred direction.
    "mei": {
        "frames": 30, "response_window": 10, "steps": 200, "learning_rate": 30.0, "final_learning_rate": 3.0,
        "norm": 30.0,
    },
}
DIRECTION_TOLERANCE = 30.0  # degrees between an MEV's motion and the neuron's preferred direction


def loop_config(config_path: str | Path | None, video: bool | None = None) -> tuple[LoopConfig, dict]:
    """(LoopConfig, the set run-config values as a dict of sections): the loop preset (SMALL_TWIN,
    or SMALL_VIDEO_TWIN for the video animal: ``video``, else [loop].video) under the file's
    values. Only values set are kept, so a [mei] value changes the chosen recipe's field, not
    every field."""
    values = {} if config_path is None else read_toml(config_path)
    for name, table in values.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"{config_path}: {name} = {shown(table)} is not a table; write [{name}] and its keys"
            )
    loop_values = values.pop("loop", {})
    if video is not None:
        loop_values = loop_values | {"video": video}
    if loop_values.get("video") is True:
        loop_values = VIDEO_LOOP | loop_values
    loop = section_from_dict(LoopConfig, loop_values, str(config_path))
    preset = SMALL_VIDEO_TWIN if loop.video else SMALL_TWIN
    merged = {name: preset.get(name, {}) | values.get(name, {}) for name in set(preset) | set(values)}
    config_from_dict(merged, str(config_path or "twin loop"))  # check names and types now
    return loop, merged


class Stages:
    """Prints `[i/n] stage: message (seconds)` and keeps the timings."""

    def __init__(self, names: list[str]):
        self.names = names
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    def run(self, name: str, function, describe):
        index = self.names.index(name) + 1
        print(f"[{index}/{len(self.names)}] {name} ...", flush=True)
        began = time.perf_counter()
        result = function()
        self.seconds[name] = round(time.perf_counter() - began, 1)
        print(f"[{index}/{len(self.names)}] {name}: {describe(result)} ({self.seconds[name]:.0f} s)", flush=True)
        return result


def run_loop(
    out: str | Path,
    session: str | Path | None = None,
    neurons: int = 16,
    seeds: int | None = None,
    recipe: str | None = None,
    config_path: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    channels: int | None = None,
    days: int = 1,
    video: bool | None = None,
) -> dict:
    """Run the inception loop into ``out``; returns loop.json's content.

    ``out`` is checked before any work; an existing one is replaced only with ``overwrite``,
    when the new loop has finished, and a failed loop leaves nothing behind.

    session: start from this session store instead of simulating one (the rig stages run only
    when it is a simulated session); neurons: how many to select; seeds: MEI initializations per
    neuron (default [loop].mei_seeds); recipe: the MEI recipe (default: the config's [mei].recipe,
    else walker2019; see twin.mei.recipes.recipe_config); channels: 1 simulates a gray animal, 3 a
    colour one shown RGB stimuli (default [loop].channels); days: 1 shows the stimuli to the
    animal of day 1, 2 to day 2 of the same animal, its neurons matched to day 1's (module doc);
    video: True runs the loop on the video animal (default [loop].video; module doc).
    """
    from twin.data.store import open_session
    from twin.mei.recipes import recipe_config
    from twin.outputs import check_output, output_in_place

    out = check_output(out, overwrite, flag="OUT", inputs=[session] if session else [])
    loop, run_config = loop_config(config_path, video)
    if channels is not None and session is not None:
        raise ConfigError(f"--channels {channels}: the loop simulates an animal only without --session; drop one")
    if channels is not None:
        loop = dataclasses.replace(loop, channels=channels)
    # The recipe is checked before the fit, not when the MEI stage needs it.
    recipe_config(recipe, config_path if "mei" in run_config else None)
    store = out / "session.zarr" if session is None else Path(session)
    simulated = session is None or bool(open_session(store).attrs.get("simulated"))
    if days not in (1, 2):
        raise ConfigError(f"--days {days}: give 1 (stimuli shown on day 1) or 2 (on day 2)")
    if days == 2 and not simulated:
        raise ConfigError(f"--days 2: {store} is not a simulated session; day 2 is simulated from day 1's ground truth")
    check_video(loop, store if session else None, days)
    with output_in_place(out, overwrite, flag="OUT", inputs=[session] if session else []):
        return run_stages(out, loop, run_config, store, session, simulated, neurons, seeds, recipe, seed, days)


def run_stages(
    out: Path, loop, run_config: dict, store: Path, session, simulated: bool, neurons: int, seeds, recipe: str | None, seed: int,
    days: int = 1,
) -> dict:
    """The loop's stages into the folder ``out``, which exists (see ``run_loop``)."""
    from twin.loop.export import export_stimuli

    config_file = out / "config.toml"
    config_file.write_text(tomli_w.dumps(run_config))
    names = ["simulate"] * (session is None) + ["fit", "select", "mei", "export"] + ["day 2", "match"] * (days == 2)
    names += ["respond", "closeloop"] * simulated
    stages = Stages(names)
    if session is None:
        simulate_stage(stages, loop, store, seed)
    run = out / "run"
    selection, mei = twin_stages(stages, out, run, store, config_file, "mei" in run_config, loop, neurons, seeds, recipe)
    fit_summary = json.loads((run / "summary.json").read_text())
    fraction_of_ceiling = fit_summary["sessions"][0].get("test", {}).get("fraction_of_ceiling")
    manifest = stages.run(
        "export",
        lambda: export_stimuli(out / "meis.zarr", out / "stimuli", repeats=loop.rig_repeats, seed=seed),
        lambda m: f"{len(m['stimuli'])} stimuli x {m['repeats']} repeats, {len(m['rejected'])} rejected -> {out / 'stimuli'}",
    )
    result = {
        "out": str(out),
        "session": str(store),
        "neurons": selection["unit_id"],
        "twin_median_mei_over_best_natural": mei.get("median_ratio"),
        "true_median_mei_over_best_natural": mei.get("median_true_ratio"),
        "stimuli": len(manifest["stimuli"]),
        "rejected": len(manifest["rejected"]),
    }
    if loop.video:
        result |= {"video": True, "fraction_of_ceiling": fraction_of_ceiling}
        if simulated:
            result["direction"] = direction_numbers(out / "meis.zarr", store)
    if days == 2:
        return day2_stages(stages, out, store, selection, result, seed)
    if simulated:
        result |= rig_stages(stages, out, run, store, seed)
    return finish(stages, out, result, simulated)


def simulate_stage(stages: Stages, loop, store: Path, seed: int) -> None:
    """Simulate the loop's animal (images, colour or video; [loop] sizes) into ``store``."""
    from twin.data.simulate import simulate
    from twin.data.store import write_session

    if loop.video:
        from twin.data import simulate_video

        stages.run(
            "simulate",
            lambda: write_session(
                simulate_video.simulate(
                    loop.simulated_neurons, loop.train_images, loop.test_images, loop.repeats, loop.frames, loop.size,
                    seed,
                ),
                store,
            ),
            lambda _: f"{loop.simulated_neurons} neurons, {loop.train_images} + {loop.test_images}x{loop.repeats}"
            f" videos of {loop.frames} frames -> {store}",
        )
        return
    stages.run(
        "simulate",
        lambda: write_session(
            simulate(
                loop.simulated_neurons, loop.train_images, loop.test_images, loop.repeats, loop.size, seed, loop.channels,
            ),
            store,
        ),
        lambda _: f"{loop.simulated_neurons} {'colour ' * (loop.channels == 3)}neurons,"
        f" {loop.train_images} + {loop.test_images}x{loop.repeats} images -> {store}",
    )


def twin_stages(
    stages: Stages, out: Path, run: Path, store: Path, config_file: Path, has_mei: bool, loop, neurons: int, seeds,
    recipe: str | None,
) -> tuple[dict, dict]:
    """Fit the twin into ``run``, select ``neurons`` and optimize their MEIs into out/meis.zarr
    (the [mei] table of ``config_file`` when ``has_mei``); returns (selection, the MEI summary)."""
    from twin.fit import fit_command
    from twin.loop.select import select_neurons
    from twin.mei.run import mei_command, neurons_flag

    stages.run(
        "fit",
        lambda: fit_command(stores=[str(store)], out=str(run), config_path=str(config_file), seeds=None, resume=False, max_epochs=None),
        lambda _: f"twin in {run}",
    )
    selection = stages.run(
        "select",
        lambda: select_neurons(run, n=neurons, min_distance=loop.min_distance),
        lambda s: f"{len(s['neuron_index'])} neurons: " + ",".join(str(u) for u in s["unit_id"]),
    )
    (out / "selection.json").write_text(json.dumps(selection, indent=1))
    mei = stages.run(
        "mei",
        lambda: mei_command(
            run=str(run),
            neurons=neurons_flag(selection["neuron_index"], selection["unit_id"]),
            seeds=seeds or loop.mei_seeds,
            recipe=recipe,
            config_path=str(config_file) if has_mei else None,
            out=str(out / "meis.zarr"),
            deis=0,
            session=0,
            validator=None,
        ),
        lambda m: f"recipe {m['recipe']}, median MEI / best natural under the twin {m['median_ratio']:.2f}"
        + (f", on the animal {m['median_true_ratio']:.2f}" if m.get("median_true_ratio") is not None else ""),
    )
    return selection, mei


def rig_stages(stages: Stages, out: Path, run: Path, store: Path, seed: int) -> dict:
    """Show the stimuli to the simulated animal (responses.npz) and compare them (closeloop's
    report); returns closeloop's summary without its per-neuron rows."""
    from twin.loop.closeloop import closeloop
    from twin.loop.respond import respond_to_stimuli

    stages.run(
        "respond",
        lambda: respond_to_stimuli(out / "stimuli", animal=store, out=out / "responses.npz", seed=seed + 1),
        lambda r: f"{r['responses'].shape[0]} trials x {r['responses'].shape[1]} neurons -> {out / 'responses.npz'}",
    )
    summary = stages.run(
        "closeloop",
        lambda: closeloop(run, out / "stimuli", out / "responses.npz", out / "report"),
        lambda s: f"report in {out / 'report' / 'index.html'}",
    )
    return {k: v for k, v in summary.items() if k != "neurons"}


def check_video(loop: LoopConfig, session: Path | None, days: int) -> None:
    """ConfigError for what the video loop does not do: colour, day 2, an image --session (or a
    video one without --video)."""
    from twin.data.schema import is_video
    from twin.data.store import open_session

    if loop.video and loop.channels == 3:
        raise ConfigError("--video with --channels 3: the video animal is gray; drop one")
    if loop.video and days == 2:
        raise ConfigError("--video with --days 2: day 2 is simulated for image sessions only; drop one")
    if session is not None and is_video(open_session(session)) != loop.video:
        fix = "add --video (or [loop].video = true)" if not loop.video else "drop --video"
        raise ConfigError(f"--session {session}: {'a video' if not loop.video else 'an image'} session; {fix}")


def direction_numbers(meis: Path, store: Path) -> dict:
    """How well the MEVs of the store ``meis`` move in the preferred direction of their neurons
    that are direction selective in the simulated session ``store`` (module doc)."""
    import numpy as np

    from twin.data.schema import unit_ids
    from twin.data.store import open_session
    from twin.mei.store import open_meis

    mevs, truth = open_meis(meis), open_session(store)
    index = mevs["neuron_index"].values.astype(int)
    selective = truth["gt_direction_selective"].values.astype(bool)[index]
    preferred = truth["gt_preferred_direction"].values.astype(float)[index]
    moving = mevs["direction"].values.astype(float)
    error = np.abs((moving - preferred + 180) % 360 - 180)
    units = unit_ids(mevs["unit_id"].values).tolist()
    neurons = [
        {"unit_id": units[i], "mev_direction": round(float(moving[i]), 1), "gt_preferred_direction":
         round(float(preferred[i]), 1), "error": round(float(error[i]), 1) if np.isfinite(error[i]) else None}
        for i in np.flatnonzero(selective)
    ]
    within = int(np.sum(selective & (error <= DIRECTION_TOLERANCE)))  # NaN (no motion) is never within
    return {
        "tolerance_degrees": DIRECTION_TOLERANCE,
        "selective_selected": len(neurons),
        "within_tolerance": within,
        "share_within_tolerance": within / len(neurons) if neurons else None,
        "neurons": neurons,
    }


def finish(stages: Stages, out: Path, result: dict, simulated: bool) -> dict:
    """Add the timings to ``result``, write loop.json, print the summary; returns ``result``."""
    result["seconds"] = stages.seconds | {"total": round(time.perf_counter() - stages.start, 1)}
    (out / "loop.json").write_text(json.dumps(result, indent=1))
    print(format_result(result, simulated))
    return result


def day2_stages(stages: Stages, out: Path, store: Path, selection: dict, result: dict, seed: int) -> dict:
    """The loop's day 2 (see the module doc): day2.zarr, matches.csv, the responses of day 2
    under day-1 ids and the report; returns loop.json's content."""
    from twin.data.simulate import day2
    from twin.data.store import load_values, open_session, write_session
    from twin.loop.closeloop import closeloop
    from twin.loop.match import match_command

    day2_store = out / "day2.zarr"
    stages.run(
        "day 2",
        lambda: write_session(day2(load_values(open_session(store), store), seed=seed), day2_store),
        lambda _: f"the same field of view again: shifted, some cells lost, some new, gains drifted -> {day2_store}",
    )
    matched = stages.run(
        "match",
        lambda: match_command(store, day2_store, out / "matches.csv"),
        lambda m: f"{len(m['pairs']['day1_unit'])} of {m['n_day1']} day-1 units found again, field shifted by"
        f" {', '.join(f'{v:+.1f}' for v in m['shift_um'])} µm -> {out / 'matches.csv'}",
    )
    found = found_again(selection, matched, open_session(day2_store))
    stages.run(
        "respond",
        lambda: respond_on_day2(out, day2_store, matched["pairs"], seed + 1),
        lambda r: f"{r['responses'].shape[0]} trials x {r['responses'].shape[1]} matched neurons ->"
        f" {out / 'responses.npz'} (day-1 unit ids)",
    )
    result["day2"] = found
    if found["found_again"] == 0:
        print("no selected neuron was found again on day 2: nothing to compare", flush=True)
        empty = ["median_mei_over_best_natural", "fraction_mei_beats_controls_p05", "prediction_correlation"]
        result |= {"n_neurons": 0, "units_without_responses": selection["unit_id"]} | dict.fromkeys(empty)
        return finish(stages, out, result, True)
    summary = stages.run(
        "closeloop",
        lambda: closeloop(out / "run", out / "stimuli", out / "responses.npz", out / "report", day2=found),
        lambda s: f"{s['n_neurons']} neurons found again scored; report in {out / 'report' / 'index.html'}",
    )
    result |= {k: v for k, v in summary.items() if k not in ("neurons", "day2")}
    return finish(stages, out, result, True)


def respond_on_day2(out: Path, day2_store: Path, pairs: dict, seed: int) -> dict:
    """Show the stimuli to the animal of day 2 (responses_day2.npz, day-2 unit ids) and keep the
    units matched to day 1 under their day-1 ids (responses.npz, what closeloop reads)."""
    import numpy as np

    from twin.loop.files import write_responses
    from twin.loop.respond import respond_to_stimuli

    day2 = respond_to_stimuli(out / "stimuli", animal=day2_store, out=out / "responses_day2.npz", seed=seed)
    column = {unit: i for i, unit in enumerate(day2["unit_id"].tolist())}
    columns = np.array([column[unit] for unit in pairs["day2_unit"].tolist()], np.int64)
    arrays = {
        "responses": day2["responses"][:, columns],
        "stimulus_id": day2["stimulus_id"],
        "unit_id": pairs["day1_unit"],
    }
    write_responses(out / "responses.npz", **arrays)
    return arrays


def found_again(selection: dict, matched: dict, day2) -> dict:
    """How many selected day-1 neurons ``matched`` (match_sessions' result) found on ``day2`` (the
    simulated day-2 session), checked against its truth (gt_day1_unit)."""
    from twin.data.schema import unit_ids

    partner = dict(zip(matched["pairs"]["day1_unit"].tolist(), matched["pairs"]["day2_unit"].tolist()))
    confidence = dict(zip(matched["pairs"]["day1_unit"].tolist(), matched["pairs"]["confidence"].tolist()))
    truth = unit_ids(day2["gt_day1_unit"].values).tolist()
    true_partner = dict(zip(truth, unit_ids(day2["unit_id"].values).tolist()))
    units = [
        {
            "day1_unit": unit,
            "day2_unit": partner.get(unit),
            "true_day2_unit": true_partner.get(unit),
            "confidence": confidence.get(unit),
        }
        for unit in selection["unit_id"]
    ]
    scores = matched["truth"] or {}
    return {
        "selected": len(units),
        "found_again": sum(u["day2_unit"] is not None for u in units),
        "found_correctly": sum(u["day2_unit"] is not None and u["day2_unit"] == u["true_day2_unit"] for u in units),
        "still_imaged": sum(u["true_day2_unit"] is not None for u in units),
        "matched_units": len(partner),
        "match_precision": scores.get("precision"),
        "match_recall": scores.get("recall"),
        "shift_um": [round(float(v), 2) for v in matched["shift_um"]],
        "true_shift_um": [round(float(v), 2) for v in day2.attrs["gt_shift_um"]],
        "units": units,
    }


def format_result(result: dict, simulated: bool) -> str:
    """The final summary block."""
    from twin.evaluate import decimals

    def show(value):
        return decimals(value, 2)

    lines = [f"inception loop done in {result['seconds']['total']:.0f} s: {result['out']}"]
    if result.get("video"):
        lines.append(f"  video twin: {show(result['fraction_of_ceiling'])} of the ground-truth ceiling (test, per frame)")
        direction = result.get("direction")
        if direction is not None:
            lines.append(
                f"  direction-selective selected neurons whose MEV moves within {direction['tolerance_degrees']:g} deg"
                f" of their preferred direction: {direction['within_tolerance']} of {direction['selective_selected']}"
            )
    day2 = result.get("day2")
    if day2 is not None:
        lines += [
            f"  day 2: {day2['found_again']} of {day2['selected']} selected neurons found again"
            f" ({day2['found_correctly']} correctly, {day2['still_imaged']} still imaged, by the simulation's truth);"
            f" field shift {', '.join(f'{v:+.1f}' for v in day2['shift_um'])} µm"
            f" (true {', '.join(f'{v:+.1f}' for v in day2['true_shift_um'])})",
            f"  day-2 matching of all units: precision {show(day2['match_precision'])}, recall {show(day2['match_recall'])}",
        ]
    if simulated:
        lines += [
            f"  neurons: {result['n_neurons']}",
            f"  median MEI / best natural image, measured: {show(result['median_mei_over_best_natural'])}"
            f" (noise-free truth {show(result['true_median_mei_over_best_natural'])},"
            f" twin {show(result['twin_median_mei_over_best_natural'])})",
            f"  MEIs beating controls (p < 0.05): {show(result['fraction_mei_beats_controls_p05'])}",
            f"  prediction correlation, twin vs animal: {show(result['prediction_correlation'])}",
            f"  report: {Path(result['out']) / 'report' / 'index.html'}",
        ]
    else:
        lines += [
            f"  stimuli for the rig: {Path(result['out']) / 'stimuli'} (manifest.csv)",
            f"  then: twin closeloop {Path(result['out']) / 'run'} {Path(result['out']) / 'stimuli'}"
            f" RESPONSES.npz --out {Path(result['out']) / 'report'}",
        ]
    return "\n".join(lines)
