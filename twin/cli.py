"""The `twin` command line: parse arguments and dispatch to the library, nothing else.

Every user error is a TwinError: printed as one line on stderr, exit status 2, no traceback.
Heavy modules (JAX) are imported inside the handlers so `twin info` starts fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

from twin.config import SEED_LIMIT
from twin.errors import ConfigError, TwinError, TwinWarning


def print_json(value) -> None:
    print(json.dumps(value, indent=2, allow_nan=False, default=float))


def at_least(low: float, kind: type = int, below: float | None = None):
    """argparse ``type=``: a finite ``kind`` (int or float) >= ``low`` (and < ``below`` when given);
    argparse prints anything else as one usage error and exits 2."""
    what = "an integer" if kind is int else "a number"
    allowed = f"{what} >= {low}" if below is None else f"{what} in [{low}, {below})"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (math.isfinite(value) and value >= low and (below is None or value < below)):
            raise argparse.ArgumentTypeError(f"{text} is out of range; use {allowed}")
        return value

    return parse


def per_primary(text: str) -> float | list[float]:
    """argparse ``type=``: '2.2' -> 2.2, '2.2,2.1,2.4' -> [2.2, 2.1, 2.4] (red, green, blue);
    twin.loop.monitor checks the count and the range."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or three numbers R,G,B") from None
    return values[0] if len(values) == 1 else values


def parse_import_size(text: str):
    """'auto' -> 'auto' (the working size), 'native' -> None (the files' size), else ``parse_size``."""
    keyword = text.lower()
    if keyword in ("auto", "native"):
        return "auto" if keyword == "auto" else None
    return parse_size(text)


def parse_size(text: str, flag: str = "--size") -> tuple[int, int]:
    """'36x64' -> (36, 64); ``flag`` names the option in messages."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: write HEIGHTxWIDTH, e.g. 36x64") from None
    if height < 8 or width < 8:
        raise ConfigError(f"{flag} {text!r}: both sides must be at least 8 pixels")
    return height, width


# ---------------------------------------------------------------------------- data


def check_simulation_memory(args, size: tuple[int, int]) -> None:
    """Refuse sizes whose float64 images, responses and receptive fields (with working copies)
    cannot fit in the free memory, before any of them is allocated."""
    from twin.data.images import available_memory

    trials = args.train_images + args.test_images * args.repeats
    frames = args.frames if args.video else 1
    pixels = size[0] * size[1] * args.channels
    needed = 3 * 8 * (trials * frames * (pixels + args.neurons) + args.neurons * pixels)
    available = available_memory()
    of_frames = f" of {frames} frames" if args.video else ""
    if needed > available:
        raise ConfigError(
            f"--neurons {args.neurons} --size {args.size} with {trials} trials{of_frames} needs about"
            f" {needed / 2**30:.0f} GiB, more than the {available / 2**30:.0f} GiB of free memory; use"
            f" fewer neurons, images{', frames' if args.video else ''} or pixels"
        )


def check_simulation_disk(args, size: tuple[int, int]) -> None:
    """Refuse --animals K whose K stores (images in uint8, responses and the float32 ground truth
    of each neuron's filters, without compression) cannot fit on the disk that will hold them."""
    trials = args.train_images + args.test_images * args.repeats
    frames = args.frames if args.video else 1
    pixels = size[0] * size[1] * args.channels
    per_animal = trials * frames * (pixels + 8 * args.neurons) + 16 * args.neurons * pixels
    free = shutil.disk_usage(Path(args.out).absolute().parent).free
    if args.animals * per_animal > free:
        raise ConfigError(
            f"--animals {args.animals}: {args.animals} stores of about {per_animal / 2**20:.1f} MiB each need"
            f" {args.animals * per_animal / 2**30:.0f} GiB, more than the {free / 2**30:.0f} GiB free under"
            f" {Path(args.out).absolute().parent}; simulate fewer animals or smaller ones"
        )


def cmd_simulate(args) -> int:
    from twin.data.simulate import simulate
    from twin.data.store import write_session
    from twin.outputs import check_output, output

    if args.day2_of is not None:
        return simulate_day2(args)
    check_video_flags(args)
    check_output(args.out, args.overwrite, "store" if args.animals is None else "folder", flag="OUT")
    size = parse_size(args.size)
    check_simulation_memory(args, size)
    if args.animals is not None:
        check_simulation_disk(args, size)

    def animal(index: int):
        if args.video:
            from twin.data.simulate_video import simulate as simulate_video

            return simulate_video(
                n_neurons=args.neurons,
                n_train_videos=args.train_images,
                n_test_videos=args.test_images,
                repeats=args.repeats,
                frames=args.frames,
                size=size,
                seed=args.seed,
                frame_rate=args.frame_rate,
                animal=index,
            )
        return simulate(
            n_neurons=args.neurons,
            n_train_images=args.train_images,
            n_test_images=args.test_images,
            repeats=args.repeats,
            size=size,
            seed=args.seed,
            channels=args.channels,
            animal=index,
            types=args.types,
        )

    if args.animals is None:
        ds = animal(1)
        write_session(ds, args.out, overwrite=args.overwrite)
        frames = f" x {ds.sizes['frame']} frames" if args.video else ""
        print(f"wrote {args.out}: {ds.sizes['trial']} trials{frames} x {ds.sizes['neuron']} neurons")
        return 0
    with output(args.out, args.overwrite, "folder", flag="OUT") as folder:
        for index in range(1, args.animals + 1):
            write_session(animal(index), folder / f"animal_{index}.zarr")
            print(f"animal {index} of {args.animals} simulated", flush=True)
    first = Path(args.out) / "animal_1.zarr"
    stores = f"stores {first} .. animal_{args.animals}.zarr" if args.animals > 1 else f"store {first}"
    print(
        f"wrote {args.animals} {stores}:"
        f" {args.train_images} + {args.test_images}x{args.repeats} {'videos' if args.video else 'images'}"
        f" x {args.neurons} neurons each"
    )
    return 0


# Defaults of `twin simulate`'s sizes; --day2-of takes the sizes from day 1 and refuses others.
SIMULATE_SIZES = {
    "neurons": 100, "train_images": 2000, "test_images": 50, "repeats": 10, "size": "36x64", "channels": 1, "types": 0,
}
# With --video: 200 train videos of 120 frames (4 s at 30 Hz: 50 burn-in frames and 70 scored) at
# 18x32 (half the Sensorium 2023 resolution in each direction), so that fitting a video twin on 2
# CPU cores takes minutes; 20 test videos, the fewest repeated stimuli the repeat metrics score
# (twin.metrics.MIN_REPEATED_IMAGES); videos are gray.
VIDEO_SIZES = {"train_images": 200, "test_images": 20, "size": "18x32", "frames": 120, "frame_rate": 30.0}


def check_video_flags(args) -> None:
    """Fill the sizes whose defaults depend on --video; refuse flags the mode does not take."""
    defaults = {**SIMULATE_SIZES, **VIDEO_SIZES} if args.video else SIMULATE_SIZES
    for name, default in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.video:
        for flag, given in (("--channels", args.channels != 1), ("--types", args.types != 0)):
            if given:
                raise ConfigError(f"{flag} with --video: the video animal is gray and has no functional types; drop {flag}")
        return
    for name in ("frames", "frame_rate"):
        if getattr(args, name) is not None:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} without --video: add --video to simulate videos, or drop {flag}")


def simulate_day2(args) -> int:
    """`twin simulate OUT --day2-of DAY1`: day 2 of the same field of view (twin.data.simulate.day2)."""
    from twin.data.schema import is_video
    from twin.data.simulate import day2
    from twin.data.store import load_values, open_session, write_session
    from twin.outputs import check_output

    given = [name for name, default in SIMULATE_SIZES.items() if getattr(args, name) not in (None, default)]
    given += [name for name in ("video", "frames", "frame_rate") if getattr(args, name)]
    if given or args.animals is not None:
        flag = "--" + (given[0].replace("_", "-") if given else "animals")
        raise ConfigError(f"{flag} with --day2-of: day 2 takes its sizes from {args.day2_of}; drop {flag}")
    check_output(args.out, args.overwrite, "store", flag="OUT", inputs=[args.day2_of])
    day1 = open_session(args.day2_of)
    if not day1.attrs.get("simulated"):
        raise ConfigError(f"--day2-of {args.day2_of}: not a simulated session; pass a store written by twin simulate")
    if is_video(day1):
        raise ConfigError(f"--day2-of {args.day2_of}: a video session; day 2 is simulated for image sessions only")
    ds = day2(load_values(day1, args.day2_of), seed=args.seed, source=args.day2_of)
    write_session(ds, args.out, overwrite=args.overwrite)
    print(
        f"wrote {args.out}: day 2 of {args.day2_of}, {ds.sizes['trial']} trials x {ds.sizes['neuron']} neurons"
        " (the day-1 unit of each is in gt_day1_unit)"
    )
    return 0


def parse_pixel_range(text: str | None) -> tuple[float, float] | None:
    """'0,1' -> (0.0, 1.0); None stays None (the importer infers the range)."""
    if text is None:
        return None
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--pixel-range {text!r}: write LO,HI, e.g. 0,1 or -2.5,2.5") from None
    if not lo < hi:
        raise ConfigError(f"--pixel-range {text!r}: LO must be below HI")
    return lo, hi


def cmd_import(args) -> int:
    from twin.data.importers import from_arrays, from_sensorium, import_notes, shift_responses
    from twin.data.store import write_session
    from twin.outputs import check_output

    check_output(args.out, args.overwrite, "store", flag="OUT", inputs=[args.path])
    pixel_range = parse_pixel_range(args.pixel_range)
    if args.format == "arrays":
        ds = from_arrays(args.path, seed=args.seed, pixel_range=pixel_range)
    else:
        ds = from_sensorium(args.path, pixel_range=pixel_range)
    if args.shift_responses:
        ds = shift_responses(ds, args.shift_responses)
    write_session(ds, args.out, overwrite=args.overwrite)
    frames = f" x {ds.sizes['frame']} frames" if "frame" in ds.dims else ""
    print(f"wrote {args.out}: {ds.sizes['trial']} trials x {ds.sizes['neuron']} neurons{frames}")
    for note in import_notes(ds):
        print(note)
    return 0


def cmd_import_images(args) -> int:
    from twin.data.importers import from_images, import_notes, shift_responses
    from twin.data.store import write_session
    from twin.outputs import check_output

    tables = (args.trial_images, args.tiers, args.unit_ids)
    inputs = [args.images, args.responses, *(path for path in tables if path)]
    check_output(args.out, args.overwrite, "store", flag="OUT", inputs=inputs)
    ds = from_images(
        args.images,
        args.responses,
        size=parse_import_size(args.size),
        orientation=args.orientation,
        trial_images=args.trial_images,
        tiers=args.tiers,
        unit_ids=args.unit_ids,
        seed=args.seed,
    )
    if args.shift_responses:
        ds = shift_responses(ds, args.shift_responses)
    write_session(ds, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {ds.sizes['trial']} trials x {ds.sizes['neuron']} neurons")
    for note in import_notes(ds):
        print(note)
    return 0


def parse_window(text: str | None) -> tuple[float, float] | None:
    """'0.05,0.55' -> (0.05, 0.55) seconds after onset; None stays None (each presentation)."""
    if text is None:
        return None
    try:
        start, end = (float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--window {text!r}: write START,END in seconds after onset, e.g. 0.05,0.55") from None
    if not (math.isfinite(start) and math.isfinite(end) and start < end):
        raise ConfigError(f"--window {text!r}: give finite START below END, e.g. 0.05,0.55")
    return start, end


def cmd_import_nwb(args) -> int:
    from twin.data.importers import import_notes, shift_responses
    from twin.data.nwb import from_nwb
    from twin.data.store import write_session
    from twin.outputs import check_output

    inputs = [args.path, *([args.tiers] if args.tiers else [])]
    check_output(args.out, args.overwrite, "store", flag="OUT", inputs=inputs)
    ds = from_nwb(
        args.path,
        responses=args.responses,
        table=args.stimulus_table,
        image_column=args.image_column,
        templates=args.templates,
        window=parse_window(args.window),
        size=parse_size(args.size) if args.size else None,
        tiers=args.tiers,
        behavior=args.behavior,
        seed=args.seed,
        pixel_range=parse_pixel_range(args.pixel_range),
    )
    if args.shift_responses:
        ds = shift_responses(ds, args.shift_responses)
    write_session(ds, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {ds.sizes['trial']} trials x {ds.sizes['neuron']} neurons")
    for note in import_notes(ds):
        print(note)
    return 0


def cmd_info(args) -> int:
    from twin.data.digest import FIX, content_digest, format_check, format_digest, verify_store
    from twin.data.store import format_info, load_values, open_session, session_info
    from twin.errors import SessionError
    from twin.outputs import abandoned

    if args.check:
        report = verify_store(args.store)
        if args.json:
            print_json(report)
        else:
            print(format_check(report))
        if report["problems"]:
            more = len(report["problems"]) - 1
            raise SessionError(
                f"{args.store}: {report['problems'][0]}" + (f" (and {more} more)" if more else "") + f"; {FIX}"
            )
        return 0
    info = session_info(load_values(open_session(args.store), args.store), args.store)
    info["digest"] = content_digest(args.store)
    info["abandoned_writes"] = [str(path) for path in abandoned(Path(args.store).absolute().parent)]
    if args.json:
        print_json(info)
    else:
        print(format_info(info))
        print(format_digest(info["digest"]))
        for path in info["abandoned_writes"]:
            print(f"abandoned    {path}: left by a killed write; the next write in that folder removes it")
    return 0


# ---------------------------------------------------------------------------- twin


def cmd_fit(args) -> int:
    from twin.fit import fit_command

    return fit_command(
        stores=args.stores,
        out=args.out,
        config_path=args.config,
        seeds=args.seeds,
        resume=args.resume,
        max_epochs=args.max_epochs,
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        overwrite=args.overwrite,
        core=args.core,
        freeze_core=args.freeze_core,
        core_learning_rate=args.core_learning_rate,
    )


def cmd_evaluate(args) -> int:
    from twin.evaluate import evaluate_run

    results = evaluate_run(args.run, stores=args.store, tier=args.tier)
    if args.json:
        print_json(results[0] if len(results) == 1 else results)
    else:
        from twin.evaluate import format_results

        print(format_results(results))
    return 0


# ---------------------------------------------------------------------------- MEIs


def cmd_mei(args) -> int:
    from twin.mei.run import mei_command

    summary = mei_command(
        run=args.run,
        neurons=args.neurons,
        seeds=args.seeds,
        recipe=args.recipe,
        config_path=args.config,
        out=args.out,
        deis=args.deis,
        session=args.session,
        validator=args.validator,
        progress=not args.json,
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        overwrite=args.overwrite,
        stores=args.store,
        surround=args.surround,
        centre=args.centre,
        transparency=args.transparency,
        background=args.background,
    )
    import jax

    from twin.evaluate import decimals

    if jax.process_index() != 0:
        return 0  # process 0 reports for all hosts
    if args.json:
        print_json(summary)
    elif args.surround:
        true_ratio = summary["median_true_surround_ratio"]
        surrounds = f"surround clips of {summary['frames']} frames" if "frames" in summary else "surrounds"
        print(
            f"wrote {args.out}: {args.surround} {surrounds} of {len(summary['neurons'])} neurons, recipe"
            f" {summary['recipe']} ({'; '.join(summary['config_sources'])}), median response with the"
            f" surround / centre alone {decimals(summary['median_surround_ratio'], 2)} under the twin"
            + (f", {true_ratio:.2f} on the simulated animal" if true_ratio is not None else "")
        )
    elif "frames" in summary:
        true_ratio = summary["median_true_ratio"]
        print(
            f"wrote {args.out}: clips of {summary['frames']} frames for {len(summary['neurons'])} neurons, recipe"
            f" {summary['recipe']} ({'; '.join(summary['config_sources'])}), median MEV / best natural clip"
            f" {decimals(summary['median_ratio'], 2)} under the twin"
            + (f", {true_ratio:.2f} on the simulated animal" if true_ratio is not None else "")
        )
    else:
        true_ratio = summary["median_true_ratio"]
        print(
            f"wrote {args.out}: {len(summary['neurons'])} neurons, recipe {summary['recipe']}"
            f" ({'; '.join(summary['config_sources'])}),"
            f" median MEI / best natural image {decimals(summary['median_ratio'], 2)} under the twin"
            + (f", {true_ratio:.2f} on the simulated animal" if true_ratio is not None else "")
            + f"; median spectral KL from the natural images {decimals(summary['median_spectral_kl'], 2)}"
            f" (spectral slope: natural {summary['natural_spectral_slope']:.2f})"
            + (f"; mean opacity {decimals(summary['mean_opacity'], 2)}" if args.transparency else "")
        )
    return 0


def cmd_mds(args) -> int:
    from twin.mei.mds import mds_command

    summary = mds_command(
        run=args.run,
        clusters=args.clusters,
        neurons=args.neurons,
        seeds=args.seeds,
        recipe=args.recipe,
        config_path=args.config,
        out=args.out,
        session=args.session,
        seed=args.seed,
        progress=not args.json,
        overwrite=args.overwrite,
        stores=args.store,
        # Unset options keep mds_command's defaults.
        **{
            name: getattr(args, name)
            for name in ("temperature", "max_iter", "merge_threshold")
            if getattr(args, name) is not None
        },
    )
    if args.json:
        print_json(summary)
    else:
        aris = ", ".join(
            f"ARI {summary[key]:.3f} against the true {key.removeprefix('ari_true_')}s"
            for key in summary if key.startswith("ari_true_")
        )
        print(
            f"wrote {args.out}: {len(summary['neurons'])} neurons in {summary['clusters']} clusters"
            f" (sizes {summary['cluster_sizes']}) after {summary['iterations']} rounds"
            + (f"; {aris}" if aris else "")
        )
    return 0


def cmd_predict(args) -> int:
    from twin.predict import predict_command

    summary = predict_command(
        run=args.run,
        images=args.images,
        out=args.out,
        neurons=args.neurons,
        session=args.session,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {summary['out']}: {summary['images']} images x {summary['neurons']} neurons"
        f" of session {summary['session']}"
    )
    return 0


def cmd_screen(args) -> int:
    from twin.screen import format_summary, screen_command, summarize

    if args.summary is not None:
        if args.run is not None or args.out is not None:
            raise ConfigError(f"--summary {args.summary}: reads a screen store; leave out RUN, IMAGES and --out")
        summary = summarize(args.summary)
    else:
        if args.run is None or not args.images or args.out is None:
            raise ConfigError(
                "RUN, IMAGES and --out are needed: give RUN IMAGES --out STORE.zarr, or --summary STORE.zarr"
            )
        summary = screen_command(
            run=args.run,
            images=args.images,
            out=args.out,
            neurons=args.neurons,
            top=args.top,
            crops=None if args.crops is None else parse_size(args.crops, "--crops"),
            stride=args.stride,
            masked=args.masked,
            meis=args.meis,
            session=args.session,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
        )
    if args.json:
        print_json(summary)
    else:
        print(format_summary(summary))
    return 0


# ---------------------------------------------------------------------------- closed loop


def cmd_select(args) -> int:
    from twin.loop.select import format_selection, select_neurons

    selection = select_neurons(args.run, n=args.n, min_distance=args.min_distance, stores=args.store)
    if args.json:
        print_json(selection)
    else:
        print(format_selection(selection))
    return 0


def cmd_export(args) -> int:
    from twin.loop.export import export_stimuli

    manifest = export_stimuli(
        args.meis,
        args.out,
        monitor_path=args.monitor,
        repeats=args.repeats,
        seed=args.seed,
        overwrite=args.overwrite,
        gamma=args.gamma,
        max_luminance=args.max_luminance,
        matching=args.matching,
    )
    print(
        f"wrote {args.out}: {len(manifest['stimuli'])} stimuli x {manifest['repeats']} repeats ="
        f" {len(manifest['order'])} presentations (manifest.csv);"
        f" {len(manifest['rejected'])} rejected as off target"
        + "".join(
            f"\n  rejected {r['kind']} of unit {r['unit_id']}: {100 * r['off_target']:.0f}% off target"
            for r in manifest["rejected"]
        )
    )
    return 0


def cmd_respond(args) -> int:
    from twin.loop.respond import respond_to_stimuli

    respond_to_stimuli(
        args.stimuli, animal=args.animal, out=args.out, seed=args.seed, overwrite=args.overwrite
    )
    print(f"wrote {args.out}")
    return 0


def cmd_closeloop(args) -> int:
    from twin.loop.closeloop import closeloop

    summary = closeloop(args.run, args.stimuli, args.responses, args.out, overwrite=args.overwrite)
    print_json({k: v for k, v in summary.items() if k != "neurons"})
    return 0


def cmd_match(args) -> int:
    from twin.loop.match import format_match, match_command

    result = match_command(args.day1, args.day2, args.out, tolerance=args.tolerance, overwrite=args.overwrite)
    print(format_match(result, args.day1, args.day2, args.out))
    return 0


def cmd_loop(args) -> int:
    from twin.loop.run import run_loop

    run_loop(
        args.out,
        session=args.session,
        neurons=args.neurons,
        seeds=args.seeds,
        recipe=args.recipe,
        config_path=args.config,
        seed=args.seed,
        overwrite=args.overwrite,
        channels=args.channels,
        days=args.days,
        video=args.video or None,
    )
    return 0


# ---------------------------------------------------------------------------- tools


def cmd_bench(args) -> int:
    from twin.bench import bench_command

    return bench_command(
        quick=args.quick, as_json=args.json, peer=not args.no_peer, precision=args.precision, video=args.video
    )


def cmd_convert(args) -> int:
    from twin.convert import convert_neuralpredictors

    convert_neuralpredictors(args.checkpoint, out=args.out, stores=args.store, overwrite=args.overwrite)
    print(f"wrote {args.out}")
    return 0


NEURONS_HELP = (
    "all, START:STOP (positions, end excluded) or a list: positions 3,7,9 when the session's unit ids"
    " are integers, unit ids neu3,neu7 when they are strings"
)


def add_multihost_flags(p: argparse.ArgumentParser) -> None:
    """--coordinator, --num-processes, --process-id: passed to jax.distributed.initialize."""
    p.add_argument("--coordinator", help="multi-host: HOST:PORT of process 0 (jax.distributed)")
    p.add_argument("--num-processes", type=at_least(1), help="multi-host: number of processes")
    p.add_argument("--process-id", type=at_least(0), help="multi-host: this process, 0 .. N-1")


def add_overwrite_flag(p: argparse.ArgumentParser) -> None:
    """--overwrite: every command that writes refuses an existing output without it."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output written by twin (atomically, at the end of the work)",
    )


def add_seed_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seed", type=at_least(0, below=SEED_LIMIT), default=0,
        help="seed of the tier split when none is given (images shown more than once become the"
        " test tier; the rest is split train/validation by image)",
    )


def add_pixel_range_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pixel-range", metavar="LO,HI",
        help="image values shown as black and white; needed when the images are not uint8, 0..1"
        " or 0..255 floats (e.g. z-scored: --pixel-range=-2.5,2.5)",
    )


def add_shift_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shift-responses", choices=["neuron", "global"],
        help="subtract each neuron's minimum (neuron) or the overall minimum (global) from the"
        " responses, e.g. dF/F for the Poisson loss; the store keeps the offsets (response_offset)."
        ' Signed responses can instead be fit as they are with [fit] loss = "gaussian"',
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twin", description="Digital twins and most exciting inputs: the inception loop."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("simulate", help="write a session store of the simulated animal")
    p.add_argument("out", help="store to write (.zarr)")
    p.add_argument("--neurons", type=at_least(1), default=SIMULATE_SIZES["neurons"])
    p.add_argument(
        "--train-images", type=at_least(2), help="shown once each (default 2000; with --video: videos, 200)"
    )
    p.add_argument(
        "--test-images", type=at_least(1), help="shown --repeats times each (default 50; with --video: videos, 20)"
    )
    p.add_argument("--repeats", type=at_least(1), default=SIMULATE_SIZES["repeats"])
    p.add_argument("--size", help="HEIGHTxWIDTH (default 36x64; with --video 18x32)")
    p.add_argument(
        "--video", action="store_true",
        help="a video session: natural-like movies, spatio-temporal and direction-selective neurons, adaptation,"
        " behavior per frame",
    )
    p.add_argument("--frames", type=at_least(1), help="frames per video with --video (default 120)")
    p.add_argument("--frame-rate", type=at_least(1, float), help="Hz, with --video (default 30)")
    p.add_argument(
        "--channels", type=int, choices=[1, 3], default=SIMULATE_SIZES["channels"],
        help="1: gray images (default); 3: RGB images and luminance and colour-opponent neurons",
    )
    p.add_argument("--seed", type=at_least(0, below=SEED_LIMIT), default=0)
    p.add_argument(
        "--types", type=at_least(0), default=0, metavar="K",
        help="K functional types (kind, orientation, phase, size and colour shared up to a small jitter,"
        " receptive fields in one region; true type in gt_type) instead of independent neurons (default 0)",
    )
    p.add_argument(
        "--animals", type=at_least(1), metavar="K",
        help="write K animals, OUT/animal_1.zarr .. animal_K.zarr, each with its own neurons, images and"
        " noise from the same statistics (animal 1 is the store written without --animals)",
    )
    p.add_argument(
        "--day2-of", metavar="DAY1.zarr",
        help="write day 2 of this simulated session: the field of view shifted, some cells lost and some"
        " new, gains drifted, new train images and day 1's test images again (truth in gt_day1_unit)",
    )
    add_overwrite_flag(p)
    p.set_defaults(handler=cmd_simulate)

    p = commands.add_parser("import", help="import a recording into a session store")
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    readers = (("arrays", "an .npz file of arrays"), ("sensorium", "a Sensorium data folder or its .zip"))
    descriptions = {
        "arrays": "Reads an .npz (np.savez, no pickles) with images (trial, y, x) or (trial, channel,"
        " y, x) and responses (trial, neuron); optional: tiers (trial,) train/validation/test/"
        "final_test, image_ids (trial,) int (same id = same image), behavior (trial, k),"
        " behavior_names (k,), pupil_center (trial, 2), neuron_ids or unit_ids (neuron,) integers or"
        " strings, cell_xyz (neuron, 3).",
        "sensorium": "Reads a Sensorium 2022 / neuralpredictors tree (folder or .zip): data/images/<i>.npy"
        " (channel, y, x), data/responses/<i>.npy (neuron,), meta/trials/tiers.npy; optional:"
        " data/behavior/<i>.npy, data/pupil_center/<i>.npy, meta/trials/frame_image_id.npy,"
        " meta/neurons/unit_ids.npy (integers or strings), meta/neurons/cell_motor_coordinates.npy. Images are"
        " block-averaged to 36x64 when they are a whole multiple of it. A Sensorium 2023 tree (data/videos/<i>.npy"
        " (y, x, frames), data/responses/<i>.npy (neuron, frames), optional data/behavior/<i>.npy (2, frames),"
        " data/pupil_center/<i>.npy (2, frames)) gives a video session: each trial ends at its first NaN frame"
        " and is padded to the longest (frame_count); tiers oracle -> test, live_test_*/final_test_* ->"
        " final_test, none left out; video ids from meta/trials/condition_hash.npy or video_ids.npy, else"
        " one per trial; 30 Hz.",
    }
    for name, reads in readers:
        f = formats.add_parser(name, help=f"import {reads}", description=descriptions[name])
        f.add_argument("path", help=reads)
        f.add_argument("out", help="store to write (.zarr)")
        add_seed_flag(f)
        add_pixel_range_flag(f)
        add_shift_flag(f)
        add_overwrite_flag(f)
        f.set_defaults(handler=cmd_import)
    f = formats.add_parser(
        "images", help="import a folder or .zip of image files and a response matrix",
        description="Reads IMAGES (PNG, JPEG or TIFF files, grey or RGB, in natural file-name order:"
        " image2 before image10; hidden files and __MACOSX skipped) and RESPONSES (a .npy or .csv"
        " matrix, (trials, neurons) or (neurons, images)); everything else is optional.",
    )
    f.add_argument("images", metavar="IMAGES", help="folder or .zip of image files")
    f.add_argument(
        "responses", metavar="RESPONSES",
        help=".npy or .csv matrix: (trials, neurons) or (neurons, images); one neuron may be a column,"
        " a row or a 1-D .npy",
    )
    f.add_argument("out", metavar="OUT", help="store to write (.zarr)")
    f.add_argument(
        "--size", metavar="HxW", default="auto",
        help="image size to store: HEIGHTxWIDTH (integer factors block-average, others resample with"
        " pillow Lanczos), 'native', or 'auto' (default: the files' common size divided by the largest"
        " integer factor that keeps the shorter side at least 28 pixels, 112x112 -> 28x28, 144x256 ->"
        " 36x64; the size shown is kept for export)",
    )
    f.add_argument(
        "--orientation", choices=["trials-neurons", "neurons-images"],
        help="optional: how RESPONSES is laid out; inferred when only one axis has one entry per"
        " image (or trial)",
    )
    f.add_argument(
        "--trial-images", metavar="FILE",
        help="optional .npy/.csv: one image per trial (0-based index in file-name order, or file name)"
        " when images repeat; RESPONSES then has one row per trial",
    )
    f.add_argument(
        "--tiers", metavar="FILE",
        help="optional .npy/.csv: one tier per trial (train, validation, test, final_test)",
    )
    f.add_argument(
        "--unit-ids", metavar="FILE",
        help="optional .npy/.csv/.txt: one id per neuron, integers or strings, e.g. one per line (default 0..n-1)"
    )
    add_seed_flag(f)
    add_shift_flag(f)
    add_overwrite_flag(f)
    f.set_defaults(handler=cmd_import_images)
    f = formats.add_parser(
        "nwb", help="import a two-photon session from an NWB file (DANDI, Allen Brain Observatory)",
        description="Reads, with pynwb: RESPONSES, one RoiResponseSeries (time, roi) in a processing"
        " module (processing['ophys'] Fluorescence, DfOverF or another interface) with timestamps or"
        " starting_time + rate; PRESENTATIONS, one TimeIntervals table (nwb.intervals[NAME] or"
        " nwb.trials) with start_time, stop_time and an integer image index column (frame,"
        " image_index, stimulus_index or image_id; -1 = blank screen, left out), or an IndexSeries in"
        " nwb.stimulus; TEMPLATES, one nwb.stimulus_template entry (or the IndexSeries' indexed"
        " images), an ImageSeries (image, y, x) or (image, y, x, 3) or an Images"
        " container of GrayscaleImage/RGBImage in its order_of_images. Unit ids are the ROI ids of"
        " the PlaneSegmentation. A trial is a presentation; its response is each ROI's mean over the"
        " --window; optional --behavior series are averaged over the same windows. Cell positions"
        " come from the ROI masks when the imaging plane has a grid_spacing.",
    )
    f.add_argument("path", metavar="FILE", help=".nwb file (HDF5)")
    f.add_argument("out", metavar="OUT", help="store to write (.zarr)")
    f.add_argument(
        "--responses", metavar="NAME",
        help="the RoiResponseSeries to read when there are several: its name, its interface's name"
        " (e.g. DfOverF) or its path (ophys/DfOverF/RoiResponseSeries)",
    )
    f.add_argument(
        "--stimulus-table", metavar="NAME",
        help="the presentation table when several have an image index column (e.g."
        " natural_scenes_presentations, trials), or an IndexSeries of nwb.stimulus",
    )
    f.add_argument("--image-column", metavar="NAME", help="the table's image index column (default: the one found)")
    f.add_argument(
        "--templates", metavar="NAME",
        help="the nwb.stimulus_template entry when there are several (default: the one whose name"
        " is part of the table's, e.g. natural_scenes for natural_scenes_presentations)",
    )
    f.add_argument(
        "--window", metavar="START,END",
        help="seconds after each onset to average, e.g. 0.05,0.55 for calcium indicator delays"
        " (default: each presentation's start_time..stop_time; before onset: --window=-0.1,0.4)",
    )
    f.add_argument("--size", metavar="HxW", help="optional: bring the templates to HEIGHTxWIDTH (whole factors block-average, others resample with pillow Lanczos)")
    f.add_argument(
        "--tiers", metavar="FILE",
        help="optional .npy/.csv: one tier per imported presentation (blank ones left out), in table"
        " order",
    )
    f.add_argument(
        "--behavior", metavar="NAME", action="append",
        help="optional, repeatable: a TimeSeries of one number per sample (e.g. running speed, pupil"
        " area; in nwb.acquisition or a processing module) averaged over each window's finite"
        " samples into the store's behavior",
    )
    add_seed_flag(f)
    add_pixel_range_flag(f)
    add_shift_flag(f)
    add_overwrite_flag(f)
    f.set_defaults(handler=cmd_import_nwb)

    p = commands.add_parser("info", help="summarize a session store")
    p.add_argument("store")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--check",
        action="store_true",
        help="verify every chunk against the store's digest and decode it (exit 2 when damaged)",
    )
    p.set_defaults(handler=cmd_info)

    p = commands.add_parser("fit", help="fit a digital twin to one or more session stores")
    p.add_argument("stores", nargs="+")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", help="TOML file overriding defaults")
    p.add_argument("--seeds", type=at_least(1), help="ensemble members (overrides [fit].ensemble_size)")
    p.add_argument("--max-epochs", type=at_least(1), help="overrides [fit].max_epochs")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--core", metavar="RUN", help="start from the core of this run (new readouts for the stores)")
    p.add_argument("--freeze-core", action="store_true", help="keep the --core fixed: fit the readouts only")
    p.add_argument(
        "--core-learning-rate", type=at_least(0.0, float), metavar="LR",
        help="fine-tune the --core at this learning rate (default: [fit].learning_rate)",
    )
    add_multihost_flags(p)
    add_overwrite_flag(p)
    p.set_defaults(handler=cmd_fit)

    p = commands.add_parser("evaluate", help="score a run on a tier")
    p.add_argument("run")
    p.add_argument("--store", nargs="+", help="stores to score on (default: the run's own)")
    p.add_argument("--tier", default="test")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_evaluate)

    p = commands.add_parser("mei", help="most exciting inputs for many neurons and seeds at once")
    p.add_argument("run")
    p.add_argument("--neurons", help=NEURONS_HELP + " (default: all; with a --centre MEI store, its neurons)")
    p.add_argument("--seeds", type=at_least(1), help="initializations per neuron")
    p.add_argument("--recipe", help="walker2019, sinz_ga or lucid (default: the run's [mei].recipe)")
    p.add_argument("--config", help="TOML file with a [mei] table")
    p.add_argument("--out", required=True, help="MEI store to write (.zarr)")
    p.add_argument("--deis", type=at_least(0), default=0, help="diverse exciting inputs per neuron")
    p.add_argument("--session", type=at_least(0), default=0, help="session index within the run")
    p.add_argument("--validator", help="a second run whose model picks the best seed")
    p.add_argument("--store", nargs="+", help="session stores to use instead of the run's own")
    p.add_argument(
        "--surround", choices=["excite", "suppress"],
        help="optimize only the surround of each neuron's fixed --centre, to excite or suppress it"
        " (of a video run: surround clips)",
    )
    p.add_argument(
        "--centre", metavar="MEIS.zarr|IMAGES",
        help="the centres for --surround: an MEI store of this run (each MEI or MEV inside its tight mask)"
        " or image patches on the mean gray (.npy, folder or .zip; one, or one per neuron; on every frame"
        " of a clip)",
    )
    p.add_argument(
        "--transparency", action="store_true",
        help="optimize each MEI with a per-pixel opacity over --background ([mei].opacity_penalty,"
        " opacity_learning_rate)",
    )
    p.add_argument(
        "--background", metavar="grey|noise|IMAGES",
        help="what shows through transparent pixels, drawn anew each step: grey (default), noise, or"
        " natural images (.npy, folder, .zip or a session store)",
    )
    p.add_argument("--json", action="store_true")
    add_multihost_flags(p)
    add_overwrite_flag(p)
    p.set_defaults(handler=cmd_mei)

    p = commands.add_parser(
        "mds", help="cluster neurons by their most discriminative stimuli (Burg et al. 2024)",
        description="Alternates optimizing one stimulus per cluster (a contrastive objective over the"
        " clusters' mean normalized responses) with moving each neuron to the cluster whose stimulus"
        " drives it most. Writes OUT (.zarr), the stimuli as OUT's .png and a summary as OUT's .json.",
    )
    p.add_argument("run")
    p.add_argument(
        "--clusters", default="auto",
        help="auto (start from 12 and merge clusters discriminated by less than --merge-threshold) or K",
    )
    p.add_argument("--neurons", default="all", help=NEURONS_HELP)
    p.add_argument("--seeds", type=at_least(1), help="initializations per cluster stimulus")
    p.add_argument("--recipe", help="walker2019, sinz_ga or lucid (default: the run's [mei].recipe)")
    p.add_argument("--config", help="TOML file with a [mei] table")
    p.add_argument("--out", required=True, help="MDS store to write (.zarr)")
    p.add_argument("--session", type=at_least(0), default=0, help="session index within the run")
    p.add_argument("--temperature", type=at_least(1e-3, float), help="softmax temperature (default 1.6)")
    p.add_argument("--max-iter", type=at_least(1), help="optimize-and-reassign rounds per clustering, again after each merge (default 10)")
    p.add_argument(
        "--merge-threshold", type=at_least(0, float),
        help="with --clusters auto, merge pairs of clusters whose discriminability is below this: 1 - the mean"
        " over the pair of how much one cluster's stimulus drives the other cluster relative to its own"
        " stimulus (default 0.65)",
    )
    p.add_argument("--seed", type=at_least(0, below=SEED_LIMIT), default=0)
    p.add_argument("--store", nargs="+", help="session stores to use instead of the run's own")
    p.add_argument("--json", action="store_true")
    add_overwrite_flag(p)
    p.set_defaults(handler=cmd_mds)

    p = commands.add_parser(
        "predict", help="responses of a run's neurons to any images",
        description="Reads IMAGES: a folder or .zip of image files, an .npy array (n, y, x) or"
        " (n, channel, y, x), or a session store (its trials). Images are prepared as in training"
        " (resampled to the run's size when only the size differs); behavior and pupil center are"
        " held at their train means. Predictions are in the recording's response units: the"
        " session store's, plus the offset of --shift-responses when the store was imported with it.",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument("images", metavar="IMAGES", help="folder, .zip, .npy or session store (.zarr)")
    p.add_argument(
        "--out", required=True,
        help="predictions to write: .npy (images, neurons) float32, .csv (a row per image, a column"
        " per unit id) or .zarr",
    )
    p.add_argument("--neurons", default="all", help=NEURONS_HELP)
    p.add_argument("--session", type=at_least(0), default=0, help="session index within the run")
    p.add_argument("--batch-size", type=at_least(1), help="images per batch (default: the run's)")
    add_overwrite_flag(p)
    p.set_defaults(handler=cmd_predict)

    p = commands.add_parser(
        "screen", help="top and bottom natural images (or crops) of every neuron, streamed from any collection",
        description="Streams IMAGES (folders or .zip of image files, .npy arrays, zarr arrays or session"
        " stores, never all in memory) through the run's twin and keeps, per neuron, the --top best and"
        " worst images or crops with their responses (in the recording's units), their pixels and"
        " sources, and a histogram of all responses. Images are prepared as twin predict prepares them."
        " With --meis the store also holds each neuron's MEI activation, so the share of crops reaching"
        " a fraction of it can be read (--summary); --masked shows each neuron every crop through the"
        " Walker mask of its MEI.",
    )
    p.add_argument("run", metavar="RUN", nargs="?")
    p.add_argument("images", metavar="IMAGES", nargs="*", help="folders, .zip, .npy, zarr arrays or session stores")
    p.add_argument("--out", help="screen store to write (.zarr)")
    p.add_argument("--summary", metavar="STORE", help="print what a screen store holds instead of screening")
    p.add_argument("--neurons", help=NEURONS_HELP + " (default: all, or the neurons of --meis)")
    p.add_argument("--top", type=at_least(1), help="images kept per neuron at each end (default 16)")
    p.add_argument("--crops", metavar="HxW", help="cut every image into windows of HxW source pixels")
    p.add_argument("--stride", type=at_least(1), help="pixels between windows (default: a quarter of the height)")
    p.add_argument("--meis", metavar="MEIS", help="MEI store of the run (twin mei): MEI activations, and masks")
    p.add_argument("--masked", action="store_true", help="show each neuron every crop through its MEI's mask")
    p.add_argument("--session", type=at_least(0), default=0, help="session index within the run")
    p.add_argument("--batch-size", type=at_least(1), help="crops per batch (default: the run's)")
    p.add_argument("--json", action="store_true")
    add_overwrite_flag(p)
    p.set_defaults(handler=cmd_screen)

    p = commands.add_parser("select", help="choose neurons for a closed loop")
    p.add_argument("run")
    p.add_argument("--n", type=at_least(1), default=50)
    p.add_argument("--min-distance", type=at_least(0, float), default=20.0, help="micrometres")
    p.add_argument("--store", nargs="+", help="session stores to use instead of the run's own")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_select)

    p = commands.add_parser("export", help="MEIs and controls as PNG stimuli for the rig")
    p.add_argument("meis")
    p.add_argument("--out", required=True)
    p.add_argument("--monitor", help="monitor calibration TOML")
    p.add_argument(
        "--gamma", type=per_primary, metavar="G[,G,G]",
        help="monitor gamma instead of the file's [calibration]: one value, or red,green,blue (default 1)",
    )
    p.add_argument(
        "--max-luminance", type=per_primary, metavar="L[,L,L]",
        help="cd/m² at pixel 255 instead of the file's [calibration]: one value (each primary), or"
        " red,green,blue (default 80)",
    )
    p.add_argument(
        "--matching", choices=["channel", "luminance"], default="channel",
        help="colour stimuli: match mean and RMS contrast per primary (default) or on the luminance"
        " summed over primaries (one gain, colours kept); gray stimuli are the same either way",
    )
    p.add_argument("--repeats", type=at_least(1), default=10)
    p.add_argument("--seed", type=at_least(0, below=SEED_LIMIT), default=0)
    add_overwrite_flag(p)
    p.set_defaults(handler=cmd_export)

    p = commands.add_parser("respond", help="show exported stimuli to the simulated animal")
    p.add_argument("stimuli")
    p.add_argument("--animal", required=True, help="simulated session store")
    p.add_argument("--out", required=True, help="responses .npz")
    p.add_argument("--seed", type=at_least(0, below=SEED_LIMIT), default=0)
    add_overwrite_flag(p)
    p.set_defaults(handler=cmd_respond)

    p = commands.add_parser("closeloop", help="compare the rig's responses with the twin")
    p.add_argument("run")
    p.add_argument("stimuli")
    p.add_argument("responses")
    p.add_argument("--out", required=True, help="report directory")
    add_overwrite_flag(p)
    p.set_defaults(handler=cmd_closeloop)

    p = commands.add_parser("match", help="pair the units of two sessions of one field of view (day 1, day 2)")
    p.add_argument("day1", help="session store of day 1")
    p.add_argument("day2", help="session store of day 2")
    p.add_argument(
        "--out", required=True,
        help="pairs .csv: day1_unit, day2_unit, distance_um, response_correlation, confidence (0..1)",
    )
    p.add_argument(
        "--tolerance", type=at_least(0.1, float), default=10.0, metavar="UM",
        help="largest distance in µm between the two positions of a cell once the field's shift is removed (default 10)",
    )
    add_overwrite_flag(p)
    p.set_defaults(handler=cmd_match)

    p = commands.add_parser("loop", help="the whole inception loop, on the simulated animal")
    p.add_argument("out")
    p.add_argument("--session", help="start from this store instead of simulating")
    p.add_argument("--neurons", type=at_least(1), default=16, help="neurons to select")
    p.add_argument("--seeds", type=at_least(1), help="MEI seeds per neuron")
    p.add_argument(
        "--recipe", help="walker2019, sinz_ga or lucid (default: the --config [mei].recipe, else walker2019)"
    )
    p.add_argument("--config", help="TOML file overriding defaults")
    p.add_argument(
        "--channels", type=int, choices=[1, 3],
        help="simulate a gray (1) or colour (3: RGB stimuli) animal (default: [loop].channels, 1)",
    )
    p.add_argument(
        "--days", type=int, choices=[1, 2], default=1,
        help="1: show the stimuli to the animal of day 1 (default); 2: to day 2 of the same animal, its"
        " neurons found again by twin match (day2.zarr, matches.csv)",
    )
    p.add_argument(
        "--video", action="store_true",
        help="the video animal: a video twin, most exciting videos, clips on the rig (default: [loop].video)",
    )
    p.add_argument("--seed", type=at_least(0, below=SEED_LIMIT), default=0)
    add_overwrite_flag(p)
    p.set_defaults(handler=cmd_loop)

    p = commands.add_parser("bench", help="throughput suite, with the PyTorch peer if installed")
    p.add_argument("--quick", action="store_true", help="small shapes (CI)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-peer", action="store_true", help="skip the PyTorch peer")
    p.add_argument(
        "--video", action="store_true", help="the video cores (gru, factorized3d) against the Sensorium 2023 baselines"
    )
    p.add_argument(
        "--precision", choices=["float32", "bfloat16"], default="float32", help="twin's compute precision (the peer: float32)"
    )
    p.set_defaults(handler=cmd_bench)

    p = commands.add_parser("convert", help="import a checkpoint from another toolkit")
    p.add_argument("source", choices=["neuralpredictors"])
    p.add_argument("checkpoint", help="state dict (.pth)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--store", nargs="+", help="session stores the model was trained on")
    add_overwrite_flag(p)
    p.set_defaults(handler=cmd_convert)
    return parser


def one_line(message) -> str:
    """A message as one line: newlines (e.g. inside a file name) written as \\n."""
    return str(message).replace("\r", "\\r").replace("\n", "\\n")


def one_line_warnings(command: str):
    """A warnings.showwarning that prints a TwinWarning as one stderr line, others as usual."""
    show = warnings.showwarning

    def show_warning(message, category, *args, **kwargs):
        if issubclass(category, TwinWarning):
            print(f"twin {command}: warning: {one_line(message)}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)

    return show_warning


def dispatch(argv: list[str] | None) -> int:
    """Parse and run one command: its exit status, 2 on a user error, 130 when interrupted."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", TwinWarning)
            warnings.showwarning = one_line_warnings(args.command)
            return args.handler(args)
    except TwinError as error:
        print(f"twin {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            f"twin {args.command}: error: not enough memory for these sizes; use smaller ones"
            " (fewer neurons, images or pixels, or a smaller --batch-size / [data].batch_size)",
            file=sys.stderr,
        )
        return 2
    except BrokenPipeError:
        raise
    except OSError as error:
        if error.filename is None:  # not about a file the user named: a bug, keep its traceback
            raise
        print(
            f"twin {args.command}: error: {one_line(error.filename)}: {error.strerror}; check the path, its"
            " permissions and the free space (nothing was left half-written)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        # zarr's I/O tasks cut short would each log "Task was destroyed" or warn "never awaited"
        # at exit: the one line is enough.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        warnings.simplefilter("ignore", RuntimeWarning)
        print(f"twin {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """The `twin` command; exit status 141 when the reader of its output went away (`| head`)."""
    try:
        try:
            return dispatch(argv)
        finally:
            sys.stdout.flush()  # output buffered for a closed pipe fails here, --help's too
    except BrokenPipeError:
        # Python's recipe (signal module docs): send the rest to devnull so the flush at exit
        # does not fail again, and end as a process killed by SIGPIPE would, without a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
