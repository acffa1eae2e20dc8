"""Throughput suite behind ``twin bench``: twin (JAX) next to the PyTorch peer, same machine, same run.

Measured after compilation, medians over a few repeats after one warm-up call:
- loader: trials/s of ``twin.data.loader.batches`` over a whole training epoch in memory,
- forward: images/s of the eval-mode Twin (nnx.split/merge + jax.jit),
- train: images/s of one Adam step on the Poisson loss + regularizers (train mode),
- mei: image-steps/s of the MEI engine (``twin.mei.optimize.make_ascent``) running the peer's loop
  (SGD, fixed L2 norm each step, no blur) for 1, 16, 128 and 1,024 neurons at once (on a GPU also
  7,776),
each with its compile time, XLA's FLOP count per step (``compiled.cost_analysis()``), the
achieved FLOP/s and its share of the measured matmul peak. ``precision`` (twin.precision) sets the
model's compute precision in forward, train and mei, and the inputs of the peak's matmul; the
peer runs float32. Default shapes: the Sensorium 2022 baseline (7,776 neurons, 1x36x64, batch 128,
4 layers x 64 channels); ``quick``: tiny shapes that only check the suite runs.

The video suite (``twin bench --video``, ``run_video_suite``): forward and train frames/s and
MEV clip-steps/s of the "gru" and "factorized3d" twins next to the Sensorium 2023 baselines
(benchmarks/peer_video_torch.py), float32, at VIDEO_GPU shapes on a GPU, smaller ones on a CPU.

The peer (benchmarks/peer_torch.py, neuralpredictors 0.3.0) runs in child processes, on the CPU
once with the default glibc malloc and once with the tunables that stop it returning big buffers
to the OS on every free, on a GPU once on cuda. Each process times its variants: eager and ``torch.compile`` forward and train
steps; for MEI the one-neuron loop and the batched loop (one image per neuron, B images per
forward pass, at twin's neuron counts), eager and compiled. Ratios are against the fastest
variant of each row; every variant's figure is reported too.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from twin.config import ModelConfig
from twin.errors import ConfigError
from twin.models.twin import ReadoutSpec, Twin
from twin.precision import DTYPES, set_precision

PEER_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "peer_torch.py"
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
MALLOCS = ("default", "malloc_tuned")  # the peer's processes: glibc malloc as is, and with MALLOC_TUNABLES
MEI_NORM = 25.0


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Model and workload sizes of one suite run."""

    neurons: int
    height: int
    width: int
    batch: int
    channels: int
    layers: int
    n_train: int  # training trials: the loader's epoch and the loss scale sqrt(n_train / batch)
    mei_neurons: tuple[int, ...]
    # Image-steps per timed MEI call (steps = budget // neurons, at least 2, at most max_steps);
    # at most mei_chunk pairs per compiled call.
    mei_budget: int
    mei_max_steps: int
    mei_chunk: int
    repeats: int
    peer_mei_neurons: int  # neurons of the one-neuron loop per timed call
    peer_mei_steps: int  # its steps per neuron; also the most steps per image of the batched loop
    peer_compile: bool  # time the torch.compile variants (their compiles take tens of seconds)

    def peer_arguments(self) -> list[str]:
        shapes = {k: getattr(self, k) for k in ("neurons", "height", "width", "batch", "channels", "layers", "n_train")}
        arguments = [
            "--shapes", json.dumps(shapes),
            "--repeats", str(self.repeats),
            "--mei-neurons", str(self.peer_mei_neurons),
            "--mei-steps", str(self.peer_mei_steps),
            "--mei-counts", ",".join(map(str, self.mei_neurons)),
            "--mei-budget", str(self.mei_budget),
            "--mei-chunk", str(self.mei_chunk),
        ]  # fmt: skip
        if not self.peer_compile:
            arguments += ["--no-compile", "--quick: compile time would dominate"]
        return arguments


FULL = Shapes(7776, 36, 64, 128, 64, 4, 4500, (1, 16, 128, 1024), 512, 100, 128, 3, 3, 30, True)
# On a GPU: MEIs for up to all 7,776 neurons at once, in chunks of 7,776 / 3 (the peer's batched
# loop reads out a (chunk, chunk) matrix per step, so it cannot take all 7,776 in one pass).
GPU = Shapes(7776, 36, 64, 128, 64, 4, 4500, (1, 16, 128, 1024, 7776), 65536, 100, 2592, 3, 3, 30, True)
QUICK = Shapes(24, 20, 24, 4, 8, 2, 64, (1, 4), 8, 2, 2, 1, 2, 3, False)


def suite_shapes(quick: bool) -> Shapes:
    """QUICK, else GPU on a GPU, else FULL."""
    if quick:
        return QUICK
    return GPU if jax.default_backend() == "gpu" else FULL


def machine_info() -> dict:
    """Host, CPU model, accelerator, library versions and the date (UTC)."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("jax", "jaxlib", "flax", "optax", "numpy"):
        versions[package] = importlib.metadata.version(package)
    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": device.platform,
        "device": device.device_kind,
        "devices": jax.device_count(),
        "python": platform.python_version(),
        "versions": versions,
    }


def median_seconds(run, repeats: int) -> float:
    """Median wall time of ``run()`` (which must block until done) after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compile_with_cost(jitted, *args) -> tuple[object, float, float]:
    """(compiled, compile seconds, FLOPs of one call by XLA's cost analysis)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return compiled, seconds, float((cost or {}).get("flops", 0.0))


def throughput(work: float, seconds: float, compile_s: float, flops: float, unit: str) -> dict:
    """One result row: rate in ``unit`` per second, compile time, FLOPs per unit, FLOP/s."""
    return {
        f"{unit}_s": work / seconds,
        "compile_s": compile_s,
        f"flops_per_{unit}": flops / work,
        "gflop_s": flops / seconds / 1e9,
        "seconds": seconds,
    }


def bench_matmul(quick: bool, precision: str = "float32") -> dict:
    """Measured matmul peak of the default device (the yardstick for achieved FLOP/s): inputs in
    ``precision``, float32 sums; float32 runs at JAX's default matmul precision (TF32 on recent
    NVIDIA GPUs), as the model does."""
    n = 256 if quick else (2048 if jax.devices()[0].platform == "cpu" else 8192)
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(DTYPES[precision])
    matmul = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
    compiled = matmul.lower(a).compile()
    seconds = median_seconds(lambda: compiled(a).block_until_ready(), 10)
    return {"n": n, "dtype": precision, "gflop_s": 2 * n**3 / seconds / 1e9}


def build_twin(shapes: Shapes) -> Twin:
    """The Sensorium baseline twin at ``shapes`` (one session, random weights)."""
    config = ModelConfig(core_layers=shapes.layers, core_channels=shapes.channels)
    spec = ReadoutSpec(shapes.neurons, np.ones(shapes.neurons, np.float32))
    return Twin(config, 1, (shapes.height, shapes.width), [spec], rngs=nnx.Rngs(0))


def sample_batch(shapes: Shapes) -> tuple[jax.Array, jax.Array]:
    """Random images (b, y, x, 1) and Poisson responses (b, neurons)."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((shapes.batch, shapes.height, shapes.width, 1), np.float32)
    responses = rng.poisson(1.0, (shapes.batch, shapes.neurons)).astype(np.float32)
    return jnp.asarray(images), jnp.asarray(responses)


def bench_forward(shapes: Shapes, precision: str = "float32") -> dict:
    """Eval-mode predictions of a batch in ``precision``: images/s."""
    model = build_twin(shapes)
    model.eval()
    graphdef, state = nnx.split(model)
    images, _ = sample_batch(shapes)

    @jax.jit
    def forward(state, images):
        return set_precision(nnx.merge(graphdef, state), precision)(images)

    compiled, compile_s, flops = compile_with_cost(forward, state, images)
    seconds = median_seconds(lambda: compiled(state, images).block_until_ready(), shapes.repeats)
    return throughput(shapes.batch, seconds, compile_s, flops, "img")


def bench_train(shapes: Shapes, precision: str = "float32") -> dict:
    """One step of ``twin fit``'s train step (train mode, Adam, Poisson loss x sqrt(n_train / batch)
    + regularizers; the model in ``precision``): images/s."""
    from twin.fit import make_train_step
    from twin.transfer import optimizer

    model = build_twin(shapes)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optimizer(params, None, 0.009)
    opt_state = tx.init(params)
    images, responses = sample_batch(shapes)
    batches = ({"images": images, "responses": responses},)
    lr = jnp.float32(0.009)
    train_step = make_train_step(graphdef, tx, [shapes.n_train], scale_loss=True, ensemble=False, precision=precision)
    compiled, compile_s, flops = compile_with_cost(train_step, params, rest, opt_state, lr, batches, (0,))
    carry = [params, rest, opt_state]

    def step():
        *new, metrics = compiled(*carry, lr, batches)
        carry[:] = new
        metrics["loss"].block_until_ready()

    seconds = median_seconds(step, shapes.repeats)
    return throughput(shapes.batch, seconds, compile_s, flops, "img")


def bench_mei(shapes: Shapes, precision: str = "float32") -> dict:
    """The MEI engine on the peer's loop for each count of neurons at once, the model's
    objective and gradient in ``precision``: image-steps/s.

    Pairs beyond ``mei_chunk`` run as several calls of one compiled chunk, as the engine chunks
    to fit memory. FLOPs per image-step: XLA's count for the objective's gradient of one image
    (the image update adds little; XLA counts a while loop's body only once, so the loop itself
    cannot be counted).
    """
    from twin.mei.optimize import make_ascent, neuron_objective, split_model
    from twin.mei.params import Parametrization
    from twin.mei.recipes import RECIPES

    model = build_twin(shapes)
    graphdef, state, stacked = split_model(model)
    objective = neuron_objective(0)
    image_shape = (shapes.height, shapes.width)

    @jax.jit
    def gradient(state, images, targets):
        model = set_precision(nnx.merge(graphdef, state), precision)
        return jax.grad(lambda x: objective(model, x, targets).sum())(images)

    one = {"neuron": jnp.zeros(1, jnp.int32)}
    _, _, flops_per_image_step = compile_with_cost(gradient, state, jnp.zeros((1, *image_shape)), one)
    results = {}
    for n in shapes.mei_neurons:
        steps = max(2, min(shapes.mei_max_steps, shapes.mei_budget // n))
        chunk = min(n, shapes.mei_chunk)
        config = dataclasses.replace(
            RECIPES["sinz_ga"],
            steps=steps,
            blur_target="none",
            clip_range=False,
            norm=MEI_NORM,
            seeds=1,
            precision=precision,
        )
        param = Parametrization(config, image_shape, (-2.0, 2.0))
        run = jax.jit(make_ascent(graphdef, stacked, objective, config, param))
        chunks = []
        for first in range(0, n, chunk):
            index = jnp.arange(first, first + chunk)
            keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(index)
            chunks.append((keys, {"neuron": (index % shapes.neurons).astype(jnp.int32)}))
        compiled, compile_s, _ = compile_with_cost(run, state, *chunks[0], None)

        def all_chunks():
            jax.block_until_ready([compiled(state, keys, targets, None) for keys, targets in chunks])

        seconds = median_seconds(all_chunks, shapes.repeats)
        row = throughput(n * steps, seconds, compile_s, flops_per_image_step * n * steps, "image_step")
        results[str(n)] = {**row, "steps_timed": steps, "chunk": chunk}
    return results


def bench_workload(shapes: Shapes, steps: int, chunk_size: int = 0) -> dict:
    """MEIs of all ``shapes.neurons`` neurons, one seed each, ``steps`` steps of the walker2019
    recipe through the MEI engine (``optimize_meis`` on all devices; ``chunk_size`` 0: chunks sized
    from device memory, which costs one more compile).

    Wall time from the call to the images in host memory, compilation included.
    """
    from twin.mei.optimize import optimize_meis
    from twin.mei.recipes import RECIPES

    model = build_twin(shapes)
    config = dataclasses.replace(RECIPES["walker2019"], steps=steps, seeds=1, chunk_size=chunk_size)
    start = time.perf_counter()
    result = optimize_meis(
        model, 0, np.arange(shapes.neurons), config, image_shape=(shapes.height, shapes.width),
        pixel_range=(-2.0, 2.0), progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    image_steps = int(result.steps.sum())
    return {
        "recipe": "walker2019",
        "neurons": shapes.neurons,
        "seeds": 1,
        "steps": steps,
        "chunk_size": chunk_size,
        "wall_s": seconds,
        "image_steps": image_steps,
        "image_step_s": image_steps / seconds,
        "images_finite": bool(np.isfinite(result.images).all()),
    }


def bench_loader(shapes: Shapes) -> dict:
    """``batches`` over one shuffled training epoch of an in-memory session: trials/s."""
    from twin.data.loader import batches

    session = synthetic_session(shapes)

    def epoch():
        for _ in batches([session], "train", shapes.batch, shuffle=True, seed=0):
            pass

    seconds = median_seconds(epoch, shapes.repeats)
    return {"trials_s": shapes.n_train / seconds, "seconds": seconds, "trials": shapes.n_train}


def synthetic_session(shapes: Shapes):
    """A SessionData of ``n_train`` random training trials at ``shapes`` (normalized units)."""
    from twin.data.loader import SessionData

    rng = np.random.default_rng(0)
    n, neurons = shapes.n_train, shapes.neurons
    return SessionData(
        name="bench",
        path="",
        images=rng.standard_normal((n, shapes.height, shapes.width, 1), np.float32),
        responses=rng.random((n, neurons), np.float32),
        response_std=np.ones(neurons, np.float32),
        tier=np.full(n, "train", object),
        image_id=np.arange(n, dtype=np.int64),
        behavior=None,
        pupil_center=None,
        unit_id=np.arange(neurons, dtype=np.int64),
        cell_xyz=None,
        image_mean=np.zeros((), np.float32),
        image_std=np.ones((), np.float32),
    )


def peer_available() -> str | None:
    """None when the peer can run here, else why not."""
    if not PEER_SCRIPT.is_file():
        return f"{PEER_SCRIPT} not found (run from a source checkout)"
    for package in ("torch", "neuralpredictors"):
        if importlib.util.find_spec(package) is None:
            return f"{package} not installed (pip install 'twin[torch]')"
    return None


def run_peer(
    shapes, device: str = "cpu", timeout: float | None = None, mallocs: tuple[str, ...] = MALLOCS, script: Path = PEER_SCRIPT
) -> dict:
    """The peer ``script`` (run with ``shapes.peer_arguments()``) in child processes on torch
    ``device``, one per glibc malloc setting in ``mallocs``: {"default": {...}, "malloc_tuned":
    {...}} or {"skipped": why}. A process still running after ``timeout`` seconds is stopped and
    the figures of its last whole JSON line (printed before its later parts) kept."""
    reason = peer_available()
    if reason:
        return {"skipped": reason}
    results = {}
    for name in mallocs:
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        if name == "malloc_tuned":
            env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
        command = [sys.executable, str(script), *shapes.peer_arguments(), "--device", device]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            printed = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
            lines = [line for line in printed.splitlines() if line.endswith("}")]  # whole JSON lines
            if not lines:
                return {"skipped": f"peer ({name}) stopped after {timeout:.0f} s before its first figures"}
            results[name] = json.loads(lines[-1])
            continue
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            return {"skipped": f"peer failed ({name}): {tail[0]}"}
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


PARTS = {"loader": bench_loader, "forward": bench_forward, "train": bench_train, "mei": bench_mei}


def peer_variants(peer: dict, mei_neurons) -> dict:
    """Each row's peer figures by variant: {"forward": {"default eager": img/s, ...}, "train": ...,
    "mei_N": {"default one-neuron": image-steps/s, "default batched": ..., ...}}; {} when skipped."""
    if "skipped" in peer:
        return {}
    rows = {"forward": {}, "train": {}} | {f"mei_{n}": {} for n in mei_neurons}
    for setting, run in peer.items():
        compiled = run.get("compiled", {})
        for name in ("forward", "train"):
            rows[name][f"{setting} eager"] = run[f"{name}_img_s"]
            if f"{name}_img_s" in compiled:
                rows[name][f"{setting} compiled"] = compiled[f"{name}_img_s"]
        for n in mei_neurons:
            row = rows[f"mei_{n}"]
            row[f"{setting} one-neuron"] = run["mei_image_steps_s"]
            row[f"{setting} batched"] = run["mei_batched"][str(n)]
            if "mei_batched" in compiled:
                row[f"{setting} batched compiled"] = compiled["mei_batched"][str(n)]
    return rows


def fastest_peer(variants: dict) -> dict:
    """{row: {"variant": name, "rate": figure}} of the fastest peer variant of each row."""
    best = {}
    for row, figures in variants.items():
        name = max(figures, key=figures.get)
        best[row] = {"variant": name, "rate": figures[name]}
    return best


def ratios(results: dict) -> dict:
    """twin / peer for forward, train and each MEI neuron count, against the fastest peer variant."""
    best = results["peer_fastest"]
    out = {}
    for name in ("forward", "train"):
        if name in results and name in best:
            out[name] = results[name]["img_s"] / best[name]["rate"]
    for n, row in results.get("mei", {}).items():
        if f"mei_{n}" in best:
            out[f"mei_{n}"] = row["image_step_s"] / best[f"mei_{n}"]["rate"]
    return out


def run_suite(
    quick: bool = False, peer: bool = True, parts: tuple[str, ...] = tuple(PARTS), precision: str = "float32"
) -> dict:
    """The measurements named in ``parts`` (all by default), the peer's and the ratios, as one
    JSON-ready dict; twin's model runs in ``precision`` ("float32" or "bfloat16", twin.precision)."""
    if precision not in DTYPES:
        raise ConfigError(f"precision {precision!r} is not known; use one of {', '.join(map(repr, DTYPES))}")
    shapes = suite_shapes(quick)
    results = {
        "machine": machine_info(),
        "quick": quick,
        "precision": precision,
        "shapes": dataclasses.asdict(shapes),
    }
    results["matmul_peak"] = bench_matmul(quick, precision)
    for name in parts:
        print(f"twin bench: {name} ...", file=sys.stderr, flush=True)
        results[name] = PARTS[name](shapes) if name == "loader" else PARTS[name](shapes, precision)
    if peer:
        print("twin bench: PyTorch peer ...", file=sys.stderr, flush=True)
    # The peer on the same kind of device; the malloc tunables concern CPU runs only.
    device = "cuda" if results["machine"]["platform"] == "gpu" else "cpu"
    mallocs = MALLOCS if device == "cpu" else MALLOCS[:1]
    results["peer"] = run_peer(shapes, device, mallocs=mallocs) if peer else {"skipped": "--no-peer"}
    results["peer_variants"] = peer_variants(results["peer"], shapes.mei_neurons)
    results["peer_fastest"] = fastest_peer(results["peer_variants"])
    results["ratios"] = ratios(results)
    return results


def format_results(results: dict) -> str:
    """A plain-text table of ``run_suite``'s results."""
    machine = results["machine"]
    lines = [
        f"twin bench{' --quick' if results['quick'] else ''}  {machine['date']}  {machine['cpu']}"
        f" ({machine['cpu_count']} cores; JAX on {machine['devices']} {machine['device']} device(s))",
        f"  precision {results['precision']} (twin's model; the peer runs float32)",
        "  " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
    ]
    if "loader" in results:
        lines.append(f"  loader   {results['loader']['trials_s']:12,.0f} trials/s (batches over one training epoch)")
    peer = results["peer"]
    fastest = results["peer_fastest"]
    peak = results["matmul_peak"]["gflop_s"]
    lines.append(f"  matmul peak {peak:,.0f} GFLOP/s ({results['precision']}, {results['matmul_peak']['n']}^2)")
    header = f"  {'':24}{'twin':>10}{'peer':>10}{'ratio':>8}{'compile s':>11}{'GFLOP/step':>12}{'GFLOP/s':>9}{'of peak':>9}"
    lines.append(header)

    def row(label, value, peer_row, compile_s, gflop_step, gflop_s):
        peer_value = fastest.get(peer_row, {}).get("rate")
        peer_text = f"{peer_value:10,.1f}" if peer_value else f"{'-':>10}"
        ratio = f"{value / peer_value:7.2f}x" if peer_value else f"{'-':>8}"
        lines.append(
            f"  {label:24}{value:10,.1f}{peer_text}{ratio}{compile_s:11.1f}{gflop_step:12.3f}{gflop_s:9.1f}"
            f"{gflop_s / peak:9.0%}"
        )

    shapes = results["shapes"]
    for name in ("forward", "train"):
        if name in results:
            r = results[name]
            step_gflop = r["flops_per_img"] * shapes["batch"] / 1e9
            row(f"{name} img/s", r["img_s"], name, r["compile_s"], step_gflop, r["gflop_s"])
    for n, r in results.get("mei", {}).items():
        step_gflop = r["flops_per_image_step"] * int(n) / 1e9
        row(f"mei {n:>5} image-steps/s", r["image_step_s"], f"mei_{n}", r["compile_s"], step_gflop, r["gflop_s"])
    if "skipped" in peer:
        lines.append(f"  peer skipped: {peer['skipped']}")
    else:
        lines += format_peer(peer, results["peer_variants"], fastest)
    return "\n".join(lines)


def format_peer(peer: dict, variants: dict, fastest: dict) -> list[str]:
    """The peer's versions, compile times and every variant's figure per row (* marks the fastest)."""
    first = next(iter(peer.values()))
    lines = [f"  peer: torch {first['torch']}, neuralpredictors {first['neuralpredictors']}, {first['threads']} threads"]
    for setting, run in peer.items():
        compiled = run.get("compiled", {})
        if "skipped" in compiled:
            lines.append(f"    {setting}: torch.compile variants skipped: {compiled['skipped']}")
        else:
            times = ", ".join(f"{k} {v:.1f} s" for k, v in compiled["compile_s"].items())
            lines.append(f"    {setting}: torch.compile first calls: {times} (inductor's disk cache may hold earlier compiles)")
    lines.append("    peer variants (img/s; image-steps/s for mei):")
    for name, figures in variants.items():
        text = ", ".join(
            f"{variant} {rate:,.1f}{'*' if variant == fastest[name]['variant'] else ''}" for variant, rate in figures.items()
        )
        lines.append(f"    {name:9} {text}")
    return lines


PEER_VIDEO_SCRIPT = PEER_SCRIPT.parent / "peer_video_torch.py"
VIDEO_CORES = ("gru", "factorized3d")
MEV_NORM = 0.1  # the clip's L2 norm per pixel and frame, as the video peer's


@dataclasses.dataclass(frozen=True)
class VideoShapes:
    """Sizes of one video suite run (both cores): model, training batch of clips, MEV clips."""

    neurons: int
    height: int
    width: int
    channels: int  # of every core layer and of the ConvGRU state
    frames: int  # of each training clip
    batch: int
    n_train: int  # training trials: the loss scale sqrt(n_train / batch)
    mev_frames: int  # of each MEV clip
    window: int  # the MEV objective: the response averaged over the last ``window`` frames
    mev_neurons: tuple[int, ...]
    mev_budget: int  # clip-steps per timed MEV call: steps = budget // neurons, 1 to mev_max_steps
    mev_max_steps: int
    mev_chunk: int  # clips per compiled call (twin) or per forward pass (the peer), at most
    repeats: int
    peer_mev_neurons: int  # neurons of the peer's one-neuron loop per timed call

    def peer_arguments(self) -> list[str]:
        keys = ("neurons", "height", "width", "channels", "frames", "batch", "n_train", "mev_frames", "window")
        return [
            "--shapes", json.dumps({k: getattr(self, k) for k in keys}),
            "--repeats", str(self.repeats),
            "--mev-counts", ",".join(map(str, self.mev_neurons)),
            "--mev-budget", str(self.mev_budget),
            "--mev-max-steps", str(self.mev_max_steps),
            "--mev-chunk", str(self.mev_chunk),
            "--mev-neurons", str(self.peer_mev_neurons),
        ]  # fmt: skip


# Sensorium 2023: 36x64 clips of 80 frames, batch 8 (its baselines' training), 7,863 neurons.
VIDEO_GPU = VideoShapes(7863, 36, 64, 64, 80, 8, 600, 80, 10, (1, 16, 128), 128, 4, 16, 3, 2)
# A 2-core CPU: the same layers at 32 channels (a quarter of the FLOPs) on 24-frame clips (the
# peer's 3D core needs 23 for one output frame), batch 1, MEVs for 1 and 4 neurons, medians of 3
# timed calls, so that the suite ends in under 10 minutes.
VIDEO_CPU = VideoShapes(7863, 36, 64, 32, 24, 1, 600, 24, 2, (1, 4), 4, 1, 4, 3, 1)
VIDEO_QUICK = VideoShapes(16, 16, 20, 4, 24, 1, 8, 24, 2, (1, 2), 2, 1, 1, 1, 1)


def video_shapes(quick: bool) -> VideoShapes:
    """VIDEO_QUICK, else VIDEO_GPU on a GPU, else VIDEO_CPU."""
    if quick:
        return VIDEO_QUICK
    return VIDEO_GPU if jax.default_backend() == "gpu" else VIDEO_CPU


def build_video_twin(shapes: VideoShapes, core: str) -> Twin:
    """The Sensorium 2023 baseline with ``core`` ("gru" or "factorized3d") at ``shapes``, as the
    video peer builds it: full convs, behaviour channels, shifter, grid-mean predictor."""
    layers = dict(
        gru=dict(core_layers=4, input_kernel=9, pad_input=False, batch_norm_momentum=0.1),
        factorized3d=dict(core_layers=3, input_kernel=11, pad_input=True, batch_norm_momentum=0.3),
    )[core]
    config = ModelConfig(
        core=core,
        core_channels=shapes.channels,
        gru_channels=shapes.channels,
        hidden_kernel=7,
        depth_separable=False,
        core_bias=True,
        use_behavior=True,
        shifter=True,
        grid_mean_predictor=True,
        **layers,
    )
    rng = np.random.default_rng(0)
    positions = rng.uniform(-300, 300, (shapes.neurons, 2)).astype(np.float32)
    spec = ReadoutSpec(shapes.neurons, np.ones(shapes.neurons, np.float32), positions)
    return Twin(config, 1, (shapes.height, shapes.width), [spec], n_behavior=2, rngs=nnx.Rngs(0))


def video_inputs(shapes: VideoShapes, count: int, frames: int) -> dict:
    """Random clips (count, frames, y, x, 1) with constant behaviour (count, frames, 2) and random
    pupil centres (count, frames, 2), as model keyword arrays."""
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((count, frames, shapes.height, shapes.width, 1), np.float32)
    return {
        "images": jnp.asarray(clips),
        "behavior": jnp.ones((count, frames, 2), jnp.float32),
        "pupil_center": jnp.asarray(rng.standard_normal((count, frames, 2), np.float32)),
    }


def bench_video_forward(shapes: VideoShapes, model: Twin) -> dict:
    """Eval-mode predictions of a batch of clips: frames/s."""
    model.eval()
    graphdef, state = nnx.split(model)
    arrays = video_inputs(shapes, shapes.batch, shapes.frames)

    @jax.jit
    def forward(state, arrays):
        return nnx.merge(graphdef, state)(arrays["images"], 0, behavior=arrays["behavior"], pupil_center=arrays["pupil_center"])

    compiled, compile_s, flops = compile_with_cost(forward, state, arrays)
    seconds = median_seconds(lambda: compiled(state, arrays).block_until_ready(), shapes.repeats)
    return throughput(shapes.batch * shapes.frames, seconds, compile_s, flops, "frame")


def bench_video_train(shapes: VideoShapes, model: Twin) -> dict:
    """One step of ``twin fit``'s train step on a batch of clips (Poisson loss over every frame
    and neuron x sqrt(n_train / batch) + regularizers, Adam): frames/s."""
    from twin.fit import make_train_step
    from twin.transfer import optimizer

    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optimizer(params, None, 0.005)
    opt_state = tx.init(params)
    arrays = video_inputs(shapes, shapes.batch, shapes.frames)
    rng = np.random.default_rng(1)
    arrays["responses"] = jnp.asarray(rng.poisson(1.0, (shapes.batch, shapes.frames, shapes.neurons)).astype(np.float32))
    lr = jnp.float32(0.005)
    train_step = make_train_step(graphdef, tx, [shapes.n_train], scale_loss=True, ensemble=False)
    compiled, compile_s, flops = compile_with_cost(train_step, params, rest, opt_state, lr, (arrays,), (0,))
    carry = [params, rest, opt_state]

    def step():
        *new, metrics = compiled(*carry, lr, (arrays,))
        carry[:] = new
        metrics["loss"].block_until_ready()

    seconds = median_seconds(step, shapes.repeats)
    return throughput(shapes.batch * shapes.frames, seconds, compile_s, flops, "frame")


def rescale_clips(clips: jax.Array) -> jax.Array:
    """clips (B, t, y, x, 1) scaled to L2 norm MEV_NORM * sqrt(t * y * x) each."""
    norms = jnp.sqrt(jnp.sum(clips**2, axis=(1, 2, 3, 4), keepdims=True))
    return clips * (MEV_NORM * np.sqrt(np.prod(clips.shape[1:])) / norms)


def bench_video_mev(shapes: VideoShapes, model: Twin) -> dict:
    """Gradient ascent on clips, the video peer's loop in one compiled call per chunk: clip i for
    neuron i, objective its response averaged over the last ``window`` frames (Twin.target_responses:
    each clip reads out its own neuron only), SGD (lr 1), each clip rescaled to the norm after every
    step; behaviour and pupil centre fixed. Clip-steps/s for each count of neurons."""
    model.eval()
    graphdef, state = nnx.split(model)

    def ascent(state, clips, neurons, fixed, steps):
        model = nnx.merge(graphdef, state)

        def objective(clips):
            responses = model.target_responses(
                clips, 0, neurons=neurons, behavior=fixed["behavior"], pupil_center=fixed["pupil_center"]
            )  # (B, t)
            return responses[:, -shapes.window :].mean(axis=1).sum()

        # Unrolled, not a fori_loop: XLA on the CPU runs these convs ~20x slower inside a while loop
        # (measured here: one step 0.8 s plain, 16 s as fori_loop(0, 1, ...)).
        for _ in range(steps):
            clips = rescale_clips(clips + jax.grad(objective)(clips))
        return clips

    results, compiled = {}, {}
    for n in shapes.mev_neurons:
        steps = max(1, min(shapes.mev_max_steps, shapes.mev_budget // n))
        chunk = min(n, shapes.mev_chunk)
        fixed = video_inputs(shapes, chunk, shapes.mev_frames)
        starts = rescale_clips(fixed["images"])
        chunks = [jnp.arange(first, first + chunk) % shapes.neurons for first in range(0, n, chunk)]
        if (chunk, steps) not in compiled:  # one compile per chunk size and step count
            run = jax.jit(functools.partial(ascent, steps=steps))
            compiled[chunk, steps] = compile_with_cost(run, state, starts, chunks[0], fixed)
        program, compile_s, flops = compiled[chunk, steps]

        def all_chunks():
            jax.block_until_ready([program(state, starts, neurons, fixed) for neurons in chunks])

        seconds = median_seconds(all_chunks, shapes.repeats)
        row = throughput(n * steps, seconds, compile_s, flops * len(chunks), "clip_step")
        results[str(n)] = {**row, "steps_timed": steps, "chunk": chunk}
    return results


def video_peer_variants(peer: dict, mev_neurons) -> dict:
    """Each video row's peer figures by variant: {"gru forward": {"default eager": frames/s, ...},
    "gru mev_N": {"default one-neuron": clip-steps/s, "default batched": ...}, ...}; {} when skipped."""
    if "skipped" in peer:
        return {}
    rows = {}
    for setting, run in peer.items():
        for core in VIDEO_CORES:
            if core not in run:
                continue
            for name in ("forward", "train"):
                rows.setdefault(f"{core} {name}", {})[f"{setting} eager"] = run[core][f"{name}_frame_s"]
            for n in mev_neurons:
                row = rows.setdefault(f"{core} mev_{n}", {})
                row[f"{setting} one-neuron"] = run[core]["mev_one_neuron"]
                row[f"{setting} batched"] = run[core]["mev_batched"][str(n)]
    return rows


def run_video_suite(quick: bool = False, peer: bool = True) -> dict:
    """Forward, train and MEV rows of both video cores, the video peer's and the ratios (twin /
    fastest peer variant), as one JSON-ready dict."""
    shapes = video_shapes(quick)
    results = {"machine": machine_info(), "quick": quick, "video": True, "shapes": dataclasses.asdict(shapes)}
    for core in VIDEO_CORES:
        model = build_video_twin(shapes, core)  # one model per core: its eager init costs as much as a compile
        for name, part in (("forward", bench_video_forward), ("train", bench_video_train)):
            print(f"twin bench --video: {core} {name} ...", file=sys.stderr, flush=True)
            results[f"{core} {name}"] = part(shapes, model)
        print(f"twin bench --video: {core} mev ...", file=sys.stderr, flush=True)
        for n, row in bench_video_mev(shapes, model).items():
            results[f"{core} mev_{n}"] = row
    device = "cuda" if results["machine"]["platform"] == "gpu" else "cpu"
    if peer:
        print("twin bench --video: PyTorch peer ...", file=sys.stderr, flush=True)
        # On the CPU only with the malloc tunables: each peer process takes minutes here.
        mallocs = MALLOCS[1:] if device == "cpu" else MALLOCS[:1]
        results["peer"] = run_peer(shapes, device, mallocs=mallocs, script=PEER_VIDEO_SCRIPT)
    else:
        results["peer"] = {"skipped": "--no-peer"}
    return results | video_comparison(results, shapes.mev_neurons)


def video_comparison(results: dict, mev_neurons) -> dict:
    """peer_variants, peer_fastest and ratios (twin / fastest peer variant) of the video rows of
    ``results`` and its "peer"."""
    variants = video_peer_variants(results["peer"], mev_neurons)
    fastest = fastest_peer(variants)
    ratios = {
        row: results[row][rate] / best["rate"]
        for row, best in fastest.items()
        for rate in ("frame_s", "clip_step_s")
        if rate in results.get(row, {})
    }
    return {"peer_variants": variants, "peer_fastest": fastest, "ratios": ratios}


def format_video_results(results: dict) -> str:
    """A plain-text table of ``run_video_suite``'s results."""
    machine, shapes = results["machine"], results["shapes"]
    lines = [
        f"twin bench --video{' --quick' if results['quick'] else ''}  {machine['date']}  {machine['cpu']}"
        f" ({machine['cpu_count']} cores; JAX on {machine['devices']} {machine['device']} device(s))",
        "  " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        f"  {shapes['neurons']:,} neurons, {shapes['height']}x{shapes['width']}, {shapes['channels']} channels;"
        f" train/forward: batch {shapes['batch']} x {shapes['frames']} frames; MEV: {shapes['mev_frames']}-frame"
        f" clips, response over the last {shapes['window']} frames",
        f"  {'':30}{'twin':>10}{'peer':>10}{'ratio':>8}{'compile s':>11}",
    ]
    fastest = results["peer_fastest"]
    for row, r in results.items():
        if not (isinstance(r, dict) and ("frame_s" in r or "clip_step_s" in r)):
            continue
        unit = "frames/s" if "frame_s" in r else "clip-steps/s"
        value = r.get("frame_s", r.get("clip_step_s"))
        best = fastest.get(row, {}).get("rate")
        peer_text = f"{best:10,.2f}" if best else f"{'-':>10}"
        ratio = f"{value / best:7.2f}x" if best else f"{'-':>8}"
        lines.append(f"  {row + ' ' + unit:30}{value:10,.2f}{peer_text}{ratio}{r['compile_s']:11.1f}")
    peer = results["peer"]
    if "skipped" in peer:
        lines.append(f"  peer skipped: {peer['skipped']}")
    else:
        first = next(iter(peer.values()))
        lines.append(f"  peer: torch {first['torch']}, neuralpredictors {first['neuralpredictors']}, {first['threads']} threads")
        lines.append("    peer variants (frames/s; clip-steps/s for mev):")
        for name, figures in results["peer_variants"].items():
            text = ", ".join(f"{v} {rate:,.2f}{'*' if v == fastest[name]['variant'] else ''}" for v, rate in figures.items())
            lines.append(f"    {name:20} {text}")
    return "\n".join(lines)


def bench_command(
    quick: bool = False,
    as_json: bool = False,
    peer: bool = True,
    parts: tuple[str, ...] = tuple(PARTS),
    precision: str = "float32",
    video: bool = False,
) -> int:
    """``twin bench``: run the suite (or ``parts`` of it) in ``precision``, or with ``video`` the
    video suite (float32), print the table or JSON. Returns the exit status."""
    if video:
        if precision != "float32":
            raise ConfigError(f"--precision {precision} is not measured by --video; leave --precision out")
        results = run_video_suite(quick=quick, peer=peer)
    else:
        results = run_suite(quick=quick, peer=peer, parts=parts, precision=precision)
    if as_json:
        print(json.dumps(results, indent=2, allow_nan=False))
    else:
        print(format_video_results(results) if video else format_results(results))
    return 0
