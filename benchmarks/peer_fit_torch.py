"""Fit the PyTorch peer (Sensorium 2022 baseline, neuralpredictors 0.3.0) on session stores and
score it on the test tier with twin's own metrics, so both toolkits are judged on the same trials.

    python benchmarks/peer_fit_torch.py SESSION.zarr [MORE.zarr ...] --out DIR
        [--epochs 200] [--seed 0] [--threads T] [--downsample K] [--batch-size 128]

Data: twin's loader (``twin.data.loader.load_sessions``) reads the stores, so splits (the
``tier`` variable) and normalization are twin's: images (x - train mean) / train std (global,
per channel), responses divided by their train std floored at 0.01 x the mean std. Batches are
twin's ``batches`` with twin's per-epoch shuffling seed (``twin.fit.epoch_seed``), grouped per
session and cycled with neuralpredictors' ``LongCycler`` as sensorium's trainer does.
``--downsample K`` block-averages K x K pixels of the normalized images and standardizes them
again with the train mean/std (per channel) of the block-averaged train images, i.e. the same
as computing the stored statistics on K x K block-averaged pixels.

Model (sinzlab/sensorium ``stacked_core_full_gauss_readout`` with the published model_config of
its notebooks): ``SE2dCore`` without SE blocks (= Stacked2dCore) with input_channels = the
store's channels, hidden_channels 64, input_kern 9, hidden_kern 7, layers 4, gamma_input 6.3831,
skip 0, final_nonlinearity True, bias (core_bias) False, momentum 0.9, pad_input False,
batch_norm True, hidden_dilation 1, laplace_padding None, input_regularizer LaplaceL2norm,
stack -1, depth_separable True, use_avg_reg False; one ``FullGaussian2d`` readout per session
(MultiReadoutSharedParametersBase, nothing shared) with init_mu_range 0.3, init_sigma 0.1,
gauss_type full, bias True initialized to the train mean response, feature_reg_weight
(gamma_readout) 0.0076; ``FiringRateEncoder`` output elu(x + 0) + 1; no shifter. The published
config adds a cortex grid-mean predictor, left out here because the stores need cell positions
for it (twin's ModelConfig default is without it as well).

Training (sensorium ``standard_trainer`` with the notebooks' trainer_config {max_iter 200,
lr_decay_steps 4, avg_loss False, lr_init 0.009}): PoissonLoss summed over batch and neurons,
times sqrt(n_train of that session / batch size), plus core and readout regularizers; gradients
of one batch per session accumulated before each Adam step (lr 0.009); ReduceLROnPlateau on the
validation single-trial correlation (mean over all neurons of all sessions, NaN -> 0), mode max,
factor 0.3, patience 5, threshold 1e-6 (abs), min_lr 1e-4; neuralpredictors' ``early_stopping``
(interval 1, patience 5, tolerance 1e-6, lr_decay_steps 4, restore_best True: back to the best
weights after each decay and at the end). ``--epochs`` caps max_iter.

Writes DIR/metrics.json: per session twin.evaluate.score_predictions's dict on the test tier
(the keys of ``twin evaluate --json``), the mean test single-trial correlation over all neurons,
epochs, best validation correlation, wall and CPU time (time.process_time, all threads) of the
fit and of the whole run, versions, threads and GLIBC_TUNABLES (set it before the process starts:
torch trains ~2x faster with glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184).
"""

from __future__ import annotations

import argparse
import collections
import collections.abc
import importlib.metadata
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

# neuralpredictors 0.3.0 on Python 3.11: its core module imports collections.Iterable and
# torchvision (unused for these layers; the PyPI torchvision build does not load here).
collections.Iterable = collections.abc.Iterable
sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from downsample import downsample_sessions  # noqa: E402
from neuralpredictors.layers.cores import SE2dCore  # noqa: E402
from neuralpredictors.layers.encoders import FiringRateEncoder  # noqa: E402
from neuralpredictors.layers.readouts import FullGaussian2d, MultiReadoutSharedParametersBase  # noqa: E402
from neuralpredictors.measures.modules import PoissonLoss  # noqa: E402
from neuralpredictors.training import LongCycler, early_stopping  # noqa: E402
from peer_torch import SENSORIUM_CORE  # noqa: E402

from twin import metrics  # noqa: E402
from twin.config import DataConfig, RunConfig  # noqa: E402
from twin.data.loader import batches, load_sessions  # noqa: E402
from twin.fit import epoch_seed  # noqa: E402

CORE = SENSORIUM_CORE  # benchmarks/peer_torch.py, beside this script
READOUT = dict(init_mu_range=0.3, init_sigma=0.1, bias=True, feature_reg_weight=0.0076, gauss_type="full")
TRAINER = dict(
    lr_init=0.009,
    max_iter=200,
    lr_decay_steps=4,
    lr_decay_factor=0.3,
    patience=5,
    tolerance=1e-6,
    min_lr=1e-4,
    restore_best=True,
    scale_loss=True,
    avg_loss=False,
    batch_size=128,
)


def build_model(sessions, seed: int, core_config: dict = CORE) -> FiringRateEncoder:
    """Shared SE2dCore (``core_config``: SE2dCore's keywords) + one FullGaussian2d readout per
    session (keyed by session index)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    height, width = sessions[0].image_shape
    core = SE2dCore(input_channels=sessions[0].channels, **core_config)
    # Without input padding the 9x9 layer drops 8 rows and columns; the hidden layers keep size.
    channels, kernel = core_config["hidden_channels"], core_config["input_kern"]
    out_shape = (channels, height - kernel + 1, width - kernel + 1)
    keys = [str(i) for i in range(len(sessions))]
    readout = MultiReadoutSharedParametersBase(
        in_shape_dict={k: out_shape for k in keys},
        n_neurons_dict={k: s.n_neurons for k, s in zip(keys, sessions)},
        base_readout=FullGaussian2d,
        mean_activity_dict={k: torch.from_numpy(s.mean_response) for k, s in zip(keys, sessions)},
        **READOUT,
    )
    return FiringRateEncoder(core=core, readout=readout, shifter=None, elu_offset=0.0)


def to_torch(images: np.ndarray) -> torch.Tensor:
    """(b, y, x, c) numpy -> (b, c, y, x) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def predict(model, data, key: str, trials: np.ndarray, batch_size: int) -> np.ndarray:
    """Eval-mode predictions (k, n) for ``trials`` (k,) of one session."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(trials), batch_size):
            chunk = trials[start : start + batch_size]
            out.append(model(to_torch(data.images[chunk]), data_key=key).numpy())
    return np.concatenate(out).astype(np.float32)


def validation_correlation(model, sessions, batch_size: int) -> float:
    """Mean single-trial correlation on the validation tier over all neurons of all sessions."""
    per_neuron = []
    for index, data in enumerate(sessions):
        trials = data.trials("validation")
        r = metrics.single_trial_correlation(data.responses[trials], predict(model, data, str(index), trials, batch_size))
        per_neuron.append(np.nan_to_num(r))
    return float(np.mean(np.concatenate(per_neuron)))


def train(model, sessions, max_epochs: int, seed: int, batch_size: int, log) -> dict:
    """sensorium standard_trainer on twin's batches; returns {"epochs", "best_validation_correlation",
    "history"}. Each history line holds the epoch's validation correlation, its train and validation
    wall seconds, and the wall and CPU seconds (this process, all threads) since train() was called
    when that score was known."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    np.random.seed(seed)
    model.train()
    criterion = PoissonLoss(avg=TRAINER["avg_loss"])
    optimizer = torch.optim.Adam(model.parameters(), lr=TRAINER["lr_init"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="max",
        factor=TRAINER["lr_decay_factor"],
        patience=TRAINER["patience"],
        threshold=TRAINER["tolerance"],
        min_lr=TRAINER["min_lr"],
        threshold_mode="abs",
    )
    n_train = [len(data.trials("train")) for data in sessions]
    config = RunConfig(data=DataConfig(batch_size=batch_size, shuffle_seed=seed))
    history = []
    # Every validation run as (epochs trained, score, seconds, wall, cpu); early_stopping also
    # scores before training and around each restore of the best weights.
    scores = []

    def objective(m):
        start = time.perf_counter()
        score = validation_correlation(m, sessions, batch_size)
        now = time.perf_counter()
        scores.append((len(history), score, now - start, now - wall0, time.process_time() - cpu0))
        return score

    def finish(line):
        """Fill ``line`` (the last epoch) from the first validation run after it."""
        _, score, seconds, wall, cpu = next(s for s in scores if s[0] == line["epoch"])
        line.update(validation_correlation=score, validation_seconds=seconds, elapsed_seconds=wall, cpu_seconds=cpu)
        log(line, line["train_seconds"] + seconds)

    for epoch, _ in early_stopping(
        model,
        objective,
        interval=1,
        patience=TRAINER["patience"],
        max_iter=max_epochs,
        maximize=True,
        tolerance=TRAINER["tolerance"],
        restore_best=TRAINER["restore_best"],
        scheduler=scheduler,
        lr_decay_steps=TRAINER["lr_decay_steps"],
    ):
        if history:
            finish(history[-1])
        epoch_start = time.perf_counter()
        grouped = {str(i): [] for i in range(len(sessions))}
        for batch in batches(sessions, "train", batch_size, shuffle=True, seed=epoch_seed(config, epoch)):
            grouped[str(batch.session)].append(batch)
        total, optimizer_every = 0.0, len(sessions)
        optimizer.zero_grad()
        for batch_no, (key, batch) in enumerate(LongCycler(grouped)):
            images, responses = to_torch(batch.images), torch.from_numpy(batch.responses)
            scale = np.sqrt(n_train[int(key)] / images.shape[0]) if TRAINER["scale_loss"] else 1.0
            loss = scale * criterion(model(images, data_key=key), responses)
            loss = loss + model.core.regularizer() + model.readout.regularizer(key)
            loss.backward()
            total += float(loss.detach())
            if (batch_no + 1) % optimizer_every == 0:
                optimizer.step()
                optimizer.zero_grad()
        line = {"epoch": epoch, "loss": total, "lr": optimizer.param_groups[0]["lr"]}
        history.append(line | {"train_seconds": time.perf_counter() - epoch_start})
    if history:
        finish(history[-1])
    model.eval()
    best = validation_correlation(model, sessions, batch_size)
    return {"epochs": len(history), "best_validation_correlation": best, "history": history}


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "neuralpredictors": importlib.metadata.version("neuralpredictors"),
        "numpy": np.__version__,
        "twin": importlib.metadata.version("twin"),
    }


def write_json(path: Path, value: dict) -> None:
    """Write ``value`` to ``path`` through a temporary file, so a crash leaves no half file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+", help="session stores (.zarr); one readout each, shared core")
    parser.add_argument("--out", required=True, help="folder for metrics.json (created)")
    parser.add_argument("--epochs", type=int, default=TRAINER["max_iter"], help="max epochs (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--downsample", type=int, default=1, help="block-average K x K pixels (default 1)")
    parser.add_argument("--batch-size", type=int, default=TRAINER["batch_size"])
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()

    sessions = load_sessions(args.stores)
    if args.downsample > 1:
        downsample_sessions(sessions, args.downsample)
    model = build_model(sessions, args.seed)

    def log(line, seconds):
        print(
            f"epoch {line['epoch']:3d}  loss {line['loss']:.4g}  validation r"
            f" {line['validation_correlation']:.4f}  lr {line['lr']:.2g}  {seconds:.1f} s",
            flush=True,
        )

    fit_wall0, fit_cpu0 = time.perf_counter(), time.process_time()
    trained = train(model, sessions, args.epochs, args.seed, args.batch_size, log)
    fit_wall, fit_cpu = time.perf_counter() - fit_wall0, time.process_time() - fit_cpu0

    from twin.evaluate import score_predictions

    results = []
    for index, data in enumerate(sessions):
        trials = data.trials("test")
        results.append(score_predictions(data, "test", predict(model, data, str(index), trials, args.batch_size)))
    per_neuron = np.concatenate([r["per_neuron"]["single_trial_correlation"] for r in results])
    summary = {
        "model": "Sensorium 2022 baseline (neuralpredictors SE2dCore + FullGaussian2d), PyTorch",
        "stores": [str(s) for s in args.stores],
        "image_shape": list(sessions[0].images.shape[1:]),
        "downsample": args.downsample,
        "seed": args.seed,
        "max_epochs": args.epochs,
        "epochs": trained["epochs"],
        "best_validation_correlation": trained["best_validation_correlation"],
        "mean_test_correlation": float(np.mean(per_neuron)),
        "fit_wall_s": fit_wall,
        "fit_cpu_s": fit_cpu,
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
        "threads": torch.get_num_threads(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "versions": versions(),
        "hyperparameters": {"core": CORE, "readout": READOUT, "trainer": {**TRAINER, "max_iter": args.epochs, "batch_size": args.batch_size}},
        "sessions": results,
        "history": trained["history"],
    }
    write_json(out / "metrics.json", summary)
    print(
        f"mean test single-trial r {summary['mean_test_correlation']:.4f}  epochs {summary['epochs']}"
        f"  wall {summary['wall_s']:.0f} s  cpu {summary['cpu_s']:.0f} s  -> {out / 'metrics.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
