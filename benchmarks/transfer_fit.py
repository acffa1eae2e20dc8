"""Readout-only fit on a frozen core: wall time of `twin fit NEW.zarr --core RUN --freeze-core`.

    python benchmarks/transfer_fit.py [--epochs 3] [--trials 5000] [--neurons 8000] [--json]

Builds (in a temp dir) a random 5,000-trial x 8,000-neuron session at 36x64 (benchmarks/loader.py's
``build_store``: 80/10/10 train/validation/test) and a source run holding an untrained twin
with the Sensorium 2022 default core (4 layers x 64 channels; only its arrays matter for the
time), then fits the readouts for ``--epochs`` epochs (no early stop that soon) twice:

- ``cached``: the default: the frozen core's features of every train and validation trial are
  computed once (twin.transfer.feature_caches) and each step runs the readout only;
- ``per_step``: the cache budget set to 0: each step runs the frozen core forward under
  stop_gradient (what a fit does when the features would not fit in memory).

For each: wall seconds of the whole ``twin.fit.fit`` call (store load, model, compilation,
feature cache, epochs, final scores), of building the feature cache, of the epochs alone and
per epoch (from metrics.jsonl; the first includes compiling the step). ``--fine-tune`` adds one epoch of fine-tuning the whole model as a reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from loader import build_store

from twin import checkpoint, transfer
from twin.bench import machine_info
from twin.config import FitConfig, RunConfig
from twin.data.loader import load_session
from twin.data.schema import make_session
from twin.data.store import write_session
from twin.fit import fit
from twin.transfer import CoreTransfer


def source_run(root: Path, config: RunConfig) -> Path:
    """A run directory with an untrained default twin on a tiny 36x64 session: the core to reuse."""
    import numpy as np

    rng = np.random.default_rng(1)
    ds = make_session(
        "source",
        images=rng.integers(0, 256, (20, 36, 64), dtype=np.uint8),
        responses=rng.gamma(0.5, 1.0, (20, 4)).astype(np.float32),
        tier=np.array(["train"] * 12 + ["validation"] * 4 + ["test"] * 4),
        image_id=np.arange(20),
    )
    write_session(ds, root / "source.zarr")
    data = load_session(root / "source.zarr")
    model = checkpoint.make_model(config, [checkpoint.session_record(data)], checkpoint.readout_specs([data]))
    model.eval()
    checkpoint.save_run_model(root / "source", model, config, [data])
    return root / "source"


def timed_fit(config: RunConfig, store: Path, out: Path, core: CoreTransfer | None) -> dict:
    cache_s = []
    build = transfer.feature_caches

    def timed_build(*args, **kwargs):
        start = time.perf_counter()
        caches = build(*args, **kwargs)
        cache_s.append(time.perf_counter() - start)
        return caches

    transfer.feature_caches = timed_build
    start = time.perf_counter()
    try:
        summary = fit(config, [str(store)], out, progress=False, core_transfer=core)
    finally:
        transfer.feature_caches = build
    wall = time.perf_counter() - start
    epochs = [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "wall_s": round(wall, 1),
        "cache_s": round(sum(cache_s), 1),
        "epochs_s": round(sum(epochs), 1),
        "per_epoch_s": [round(s, 2) for s in epochs],
        "core_features": summary["core_features"],
        "train_batch_size": summary["train_batch_size"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--neurons", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fine-tune", action="store_true", help="also time one epoch fine-tuning the core")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = RunConfig(fit=FitConfig(max_epochs=args.epochs))
    result = {"machine": machine_info(), "epochs": args.epochs, "shape": [args.trials, args.neurons, 36, 64]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_store(root / "new.zarr", args.trials, args.neurons, (36, 64))
        source = str(source_run(root, config))
        frozen = CoreTransfer(source, True, None)
        result["cached"] = timed_fit(config, root / "new.zarr", root / "cached", frozen)
        budget = transfer.FEATURE_CACHE_BYTES
        transfer.FEATURE_CACHE_BYTES = 0
        result["per_step"] = timed_fit(config, root / "new.zarr", root / "per_step", frozen)
        transfer.FEATURE_CACHE_BYTES = budget
        if args.fine_tune:
            one = dataclasses.replace(config, fit=dataclasses.replace(config.fit, max_epochs=1))
            tuned = CoreTransfer(source, False, config.fit.learning_rate)
            result["fine_tune"] = timed_fit(one, root / "new.zarr", root / "tuned", tuned)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    machine = result["machine"]
    print(f"transfer fit  {machine['date']}  {machine['cpu']} ({machine['cpu_count']} cores)")
    print("  " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()))
    print(f"  {args.trials:,} trials x {args.neurons:,} neurons at 36x64, Sensorium default core frozen, {args.epochs} epochs")
    for name in ("cached", "per_step", "fine_tune"):
        if name in result:
            r = result[name]
            print(
                f"  {name:9s} wall {r['wall_s']:7.1f} s  cache {r['cache_s']:5.1f} s  epochs {r['epochs_s']:7.1f} s"
                f"  per epoch {', '.join(f'{s:.1f}' for s in r['per_epoch_s'])} s  ({r['core_features']})"
            )


if __name__ == "__main__":
    main()
