"""Two classical baselines on a session store: ridge regression on pixels and on a Gabor-energy
filter bank, on twin's split and scored with twin's metrics on the test tier.

    python benchmarks/ridge_fit.py SESSION.zarr --out DIR [--downsample K]

Data: twin's loader (``twin.data.loader.load_session``): the store's ``tier`` variable, images
normalized with the train mean/std, responses divided by their floored train std.
``--downsample K`` block-averages K x K pixels first (as benchmarks/peer_fit_torch.py does).

Features (numpy/scipy only):
- pixels: images block-averaged to about 28 pixels high (factor round(height / 28)), every
  channel kept, flattened: 3 x 28 x 28 = 2,352 features for 112 x 112 RGB.
- gabor: luminance (mean over channels) block-averaged to about 56 pixels high (factor
  round(height / 56)); quadrature pairs (cosine and sine phase) at 8 orientations (0, 22.5, ...
  157.5 degrees) and 3 wavelengths (4, 8, 16 pixels at that size, i.e. 14, 7 and 3.5 cycles per
  image at 56 pixels), Gaussian envelope sigma = 0.5 x wavelength, kernels zero-mean and unit
  norm, convolved over the whole image; energy sqrt(even^2 + odd^2) averaged over a grid of
  cells one wavelength wide (14 x 14, 7 x 7 and 4 x 4 positions at 56 x 56): 8 x (196 + 49 + 16)
  = 2,088 features.
Each feature is standardized with its train mean/std.

Ridge: fitted on the train tier (centred features and responses), solved for 25 penalties
alpha = s_max^2 x 10^k, k = -7 .. 1 (s_max the largest singular value of the train features),
through one SVD; each neuron keeps the penalty with the highest validation single-trial
correlation; that fit predicts the test tier. Scores: twin.evaluate.score_predictions (the keys
of ``twin evaluate --json``).

Writes DIR/metrics.json: {"pixels": ..., "gabor": ...} each with the test scores (per-neuron
correlations under "per_neuron"), "mean_test_correlation", "n_features", the penalties chosen,
"wall_s" and "cpu_s" (time.process_time) of that baseline; plus totals and versions.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from scipy.signal import fftconvolve

from downsample import block_average, downsample_sessions
from twin import metrics
from twin.data.loader import load_session

PIXEL_HEIGHT = 28
GABOR_HEIGHT = 56
ORIENTATIONS = 8
WAVELENGTHS = (4, 8, 16)
PENALTY_EXPONENTS = np.linspace(-7, 1, 25)


def pixel_features(images: np.ndarray) -> np.ndarray:
    """(n, y, x, c) -> (n, y' * x' * c), block-averaged to about PIXEL_HEIGHT rows."""
    factor = max(1, round(images.shape[1] / PIXEL_HEIGHT))
    return block_average(images, factor).reshape(len(images), -1)


def gabor_pair(wavelength: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Even and odd Gabor kernels (k, k): zero mean, unit L2 norm, sigma = wavelength / 2."""
    sigma = 0.5 * wavelength
    half = int(np.ceil(2.5 * sigma))
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    along = x * np.cos(theta) + y * np.sin(theta)
    envelope = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    kernels = []
    for carrier in (np.cos, np.sin):
        kernel = envelope * carrier(2 * np.pi * along / wavelength)
        kernel -= envelope * kernel.sum() / envelope.sum()
        kernels.append(kernel / np.linalg.norm(kernel))
    return kernels[0], kernels[1]


def cell_average(maps: np.ndarray, cells: tuple[int, int]) -> np.ndarray:
    """(n, y, x) -> (n, cy, cx): mean over a grid of nearly equal cells."""
    rows = np.linspace(0, maps.shape[1], cells[0] + 1).round().astype(int)
    cols = np.linspace(0, maps.shape[2], cells[1] + 1).round().astype(int)
    return np.stack(
        [
            np.stack([maps[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in zip(cols[:-1], cols[1:])], axis=1)
            for r0, r1 in zip(rows[:-1], rows[1:])
        ],
        axis=1,
    )


def gabor_features(images: np.ndarray) -> np.ndarray:
    """(n, y, x, c) -> (n, features): pooled quadrature energy of the luminance (module docstring)."""
    factor = max(1, round(images.shape[1] / GABOR_HEIGHT))
    luminance = block_average(images, factor).mean(axis=3, dtype=np.float64)
    height, width = luminance.shape[1:]
    features = []
    for wavelength in WAVELENGTHS:
        cells = (max(1, round(height / wavelength)), max(1, round(width / wavelength)))
        for k in range(ORIENTATIONS):
            even, odd = gabor_pair(wavelength, np.pi * k / ORIENTATIONS)
            energy = np.hypot(
                fftconvolve(luminance, even[None], mode="same", axes=(1, 2)),
                fftconvolve(luminance, odd[None], mode="same", axes=(1, 2)),
            )
            features.append(cell_average(energy, cells).reshape(len(images), -1))
    return np.concatenate(features, axis=1)


def ridge_predict(features: np.ndarray, responses: np.ndarray, data) -> tuple[np.ndarray, np.ndarray]:
    """Ridge on the train trials, penalty per neuron by validation correlation.

    features: (trial, p); responses: (trial, neuron); data: the SessionData whose ``trials``
    give each tier. Returns the test-tier predictions (k, neuron) and the penalties (neuron,)."""
    train, validation, test = (data.trials(name) for name in ("train", "validation", "test"))
    mean, std = features[train].mean(axis=0), features[train].std(axis=0)
    x = (features - mean) / np.where(std > 0, std, 1)
    y_mean = responses[train].mean(axis=0)
    u, s, vt = np.linalg.svd(x[train], full_matrices=False)
    uty = u.T @ (responses[train] - y_mean)
    penalties = s[0] ** 2 * 10.0**PENALTY_EXPONENTS
    x_val, x_test = x[validation] @ vt.T, x[test] @ vt.T
    scores = []
    for alpha in penalties:
        prediction = x_val @ ((s / (s**2 + alpha))[:, None] * uty) + y_mean
        scores.append(np.nan_to_num(metrics.single_trial_correlation(responses[validation], prediction)))
    best = np.argmax(np.stack(scores), axis=0)
    shrink = s[:, None] / (s[:, None] ** 2 + penalties[best][None, :])
    return x_test @ (shrink * uty) + y_mean, penalties[best]


def fit_baseline(name: str, data, extract) -> dict:
    """Features by ``extract``, ridge, and twin's test scores for SessionData ``data``."""
    from twin.evaluate import score_predictions

    wall0, cpu0 = time.perf_counter(), time.process_time()
    features = extract(data.images)
    predictions, penalties = ridge_predict(features, data.responses, data)
    result = score_predictions(data, "test", predictions.astype(np.float32))
    return {
        "model": name,
        "mean_test_correlation": result["single_trial_correlation"],
        "n_features": int(features.shape[1]),
        "penalties": [float(p) for p in penalties],
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
        **result,
    }


def write_json(path: Path, value: dict) -> None:
    """Write ``value`` to ``path`` through a temporary file, so a crash leaves no half file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="session store (.zarr)")
    parser.add_argument("--out", required=True, help="folder for metrics.json (created)")
    parser.add_argument("--downsample", type=int, default=1, help="block-average K x K pixels first (default 1)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    data = load_session(args.store)
    if args.downsample > 1:
        downsample_sessions([data], args.downsample)
    summary = {
        "store": str(args.store),
        "image_shape": list(data.images.shape[1:]),
        "downsample": args.downsample,
        "pixels": fit_baseline("ridge on pixels", data, pixel_features),
        "gabor": fit_baseline("ridge on Gabor energy", data, gabor_features),
    }
    summary["wall_s"] = time.perf_counter() - wall0
    summary["cpu_s"] = time.process_time() - cpu0
    summary["versions"] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "twin": importlib.metadata.version("twin"),
    }
    write_json(out / "metrics.json", summary)
    print(
        f"mean test single-trial r: pixels {summary['pixels']['mean_test_correlation']:.4f},"
        f" gabor {summary['gabor']['mean_test_correlation']:.4f}  wall {summary['wall_s']:.0f} s"
        f"  -> {out / 'metrics.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
