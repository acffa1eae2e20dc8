"""Shared inputs of the adversarial cases, built once per harness run with the CLI itself.

Every fixture is built on first use under one cache folder and copied into each case's own
folder, so a case may damage its copy freely. The fitted run, the MEI store, the stimuli and the
responses record absolute paths of the cached store and run; cases that need those paths inside
their own folder rewrite them (see ``Fixtures.own_run``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

# 20 repeated test images: the fewest that selection and the repeat metrics take.
SIMULATE = ["--neurons", "8", "--train-images", "60", "--test-images", "20", "--repeats", "2", "--size", "36x64"]
OTHER = ["--neurons", "5", "--train-images", "40", "--test-images", "4", "--repeats", "2", "--size", "36x64"]
# The smallest twin that fits in seconds: one 5x5 layer of 4 channels, two epochs.
TINY_FIT = {
    "model": {"core_layers": 1, "core_channels": 4, "input_kernel": 5},
    "data": {"batch_size": 32},
    "fit": {"max_epochs": 2},
}
TINY_MEI = {"mei": {"steps": 5, "seeds": 1}}
# The video animal at its smallest: 12 train and 4 repeated test videos of 30 frames at 12x16, and a
# one-layer factorized twin of 4 channels fit for one epoch on 20-frame clips; MEVs of 6 frames.
SIMULATE_VIDEO = ["--video", "--neurons", "6", "--train-images", "12", "--test-images", "4", "--repeats", "2", "--frames", "30",
                  "--size", "12x16"]
TINY_VIDEO_FIT = {
    "data": {"clip_frames": 20, "burn_in_frames": 10},
    "model": {"core": "factorized3d", "core_layers": 1, "core_channels": 4, "input_kernel": 5, "temporal_input_kernel": 5,
              "readout_init": "random"},
    "fit": {"max_epochs": 1},
}
TINY_VIDEO_MEI = {"mei": {"steps": 3, "seeds": 1, "frames": 6, "response_window": 2}}
TINY_LOOP = {
    "loop": {
        "simulated_neurons": 12,
        "train_images": 60,
        "test_images": 20,
        "repeats": 2,
        "size": [36, 64],
        "rig_repeats": 3,
        "min_distance": 1.0,
        "mei_seeds": 1,
    },
    **TINY_FIT,
    "mei": {"steps": 5},
}


def cli(argv: list[str], cwd: Path) -> None:
    """Run ``twin argv`` in-process in ``cwd``; raise when it does not exit 0."""
    from twin.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(old)
    if code != 0:
        raise RuntimeError(f"fixture `twin {' '.join(argv)}` exited {code}: {err.getvalue()[-2000:]}")


def toml_text(values: dict) -> str:
    import tomli_w

    return tomli_w.dumps(values)


def recording(n_images: int = 40, n_neurons: int = 6, repeated: int = 0, repeats: int = 3, seed: int = 0) -> dict:
    """Arrays of a valid `twin import arrays` file: images (trial, 36, 64) uint8, responses
    (trial, neuron) >= 0, tiers, image_ids; ``repeated`` extra images shown ``repeats`` times
    (without tiers: those must form the test tier)."""
    rng = np.random.default_rng(seed)
    pictures = rng.integers(0, 256, (n_images + repeated, 36, 64), dtype=np.uint8)
    shown = np.concatenate([np.arange(n_images), np.repeat(np.arange(n_images, n_images + repeated), repeats)])
    n = len(shown)
    tiers = np.array(["train"] * n, dtype="<U10")
    tiers[int(0.75 * n_images) : int(0.875 * n_images)] = "validation"
    tiers[int(0.875 * n_images) : n_images] = "test"
    tiers[n_images:] = "test"
    return {
        "images": pictures[shown],
        "responses": rng.gamma(1.0, 1.0, (n, n_neurons)).astype(np.float32),
        "tiers": tiers,
        "image_ids": shown.astype(np.int64),
    }


def write_sensorium(root: Path, n: int = 20, n_neurons: int = 6, seed: int = 0) -> Path:
    """A valid Sensorium 2022 tree (data/, meta/) of ``n`` trials under ``root``."""
    rng = np.random.default_rng(seed)
    for folder in ("data/images", "data/responses", "data/behavior", "data/pupil_center", "meta/trials", "meta/neurons"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(root / f"data/images/{i}.npy", rng.integers(0, 256, (1, 36, 64)).astype(np.float32))
        np.save(root / f"data/responses/{i}.npy", rng.gamma(1.0, 1.0, n_neurons).astype(np.float32))
        np.save(root / f"data/behavior/{i}.npy", rng.normal(size=3).astype(np.float32))
        np.save(root / f"data/pupil_center/{i}.npy", rng.normal(size=2).astype(np.float32))
    tiers = np.array(["train"] * (n - 6) + ["validation"] * 3 + ["test"] * 3)
    np.save(root / "meta/trials/tiers.npy", tiers)
    np.save(root / "meta/trials/frame_image_id.npy", np.arange(n))
    np.save(root / "meta/neurons/unit_ids.npy", np.arange(n_neurons) + 100)
    np.save(root / "meta/neurons/cell_motor_coordinates.npy", rng.normal(size=(n_neurons, 3)))
    return root


VIDEO_TIERS = ["train"] * 8 + ["oracle"] * 2 + ["live_test_main", "final_test_main"]


def write_sensorium_video(root: Path, n_neurons: int = 6, seed: int = 0) -> Path:
    """A valid Sensorium 2023 tree (data/, meta/) under ``root``: 12 trials (VIDEO_TIERS) of 18x32
    videos, 30-52 frames each with the frame axis last; even trials stored 60 frames long with NaN
    after their length (as the published tree pads); trials 8 and 9 show one video (oracle repeats)."""
    rng = np.random.default_rng(seed)
    for folder in ("data/videos", "data/responses", "data/behavior", "data/pupil_center", "meta/trials", "meta/neurons"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    lengths = [30 + 2 * i for i in range(len(VIDEO_TIERS))]
    lengths[9] = lengths[8]
    for i, length in enumerate(lengths):
        stored = 60 if i % 2 == 0 else length
        values = {
            "videos": rng.integers(0, 256, (18, 32, length)).astype(np.float32),
            "responses": rng.gamma(1.0, 1.0, (n_neurons, length)).astype(np.float32),
            "behavior": rng.normal(size=(2, length)).astype(np.float32),
            "pupil_center": rng.normal(size=(2, length)).astype(np.float32),
        }
        if i == 9:
            values["videos"] = np.load(root / "data/videos/8.npy")[..., :length]
        for folder, value in values.items():
            padded = np.full((*value.shape[:-1], stored), np.nan, np.float32)
            padded[..., :length] = value
            np.save(root / f"data/{folder}/{i}.npy", padded)
    np.save(root / "meta/trials/tiers.npy", np.array(VIDEO_TIERS))
    np.save(root / "meta/trials/condition_hash.npy", np.array([f"hash{i}" for i in range(8)] + ["hash8"] * 2 + ["hash10", "hash11"]))
    np.save(root / "meta/neurons/unit_ids.npy", np.arange(n_neurons) + 100)
    np.save(root / "meta/neurons/cell_motor_coordinates.npy", rng.normal(size=(n_neurons, 3)))
    return root


class Fixtures:
    """Lazily built shared inputs under ``root``; ``path(name)`` builds one on first use.

    Names: sim.zarr (8 neurons, simulated), day2.zarr (its day 2), other.zarr (5 neurons), fit.toml, mei.toml,
    loop.toml, data.npz (valid arrays), sensorium/ (valid tree), sensorium.zip, sensorium_video/ (valid
    Sensorium 2023 tree), video.zarr (simulated videos, 6 neurons), video.toml, video_mei.toml,
    video_run/ (a factorized3d twin of video.zarr, 1 epoch), run/ (fitted,
    2 epochs), transfer/ (day2.zarr's readouts on run's frozen core), meis.zarr (neurons 0..3, 1 seed, 5 steps), stimuli/ (exported), responses.npz.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.built: set[str] = set()

    def path(self, name: str) -> Path:
        target = self.root / name
        if name not in self.built:
            if not target.exists():
                getattr(self, "build_" + name.replace(".", "_").replace("/", "_"))(target)
            self.built.add(name)
        return target

    def copy(self, name: str, case_dir: Path, as_name: str | None = None) -> Path:
        """Copy fixture ``name`` into ``case_dir`` (as ``as_name``); returns the copy."""
        source = self.path(name)
        target = case_dir / (as_name or name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)
        return target

    def own_run(self, case_dir: Path, store: str = "sim.zarr", run: str = "run") -> Path:
        """Copies of the store and the run in ``case_dir``, the run's sessions.json pointing at
        the copy (so the case may move or change the store)."""
        self.copy("sim.zarr", case_dir, store)
        run_dir = self.copy("run", case_dir, run)
        records = json.loads((run_dir / "sessions.json").read_text())
        records[0]["path"] = str((case_dir / store).absolute())
        (run_dir / "sessions.json").write_text(json.dumps(records, indent=1))
        return run_dir

    # ------------------------------------------------------------------ builders

    def build_sim_zarr(self, target: Path) -> None:
        cli(["simulate", target.name, *SIMULATE], self.root)

    def build_other_zarr(self, target: Path) -> None:
        cli(["simulate", target.name, *OTHER, "--seed", "1"], self.root)

    def build_day2_zarr(self, target: Path) -> None:
        self.path("sim.zarr")
        cli(["simulate", target.name, "--day2-of", "sim.zarr"], self.root)

    def build_fit_toml(self, target: Path) -> None:
        target.write_text(toml_text(TINY_FIT))

    def build_mei_toml(self, target: Path) -> None:
        target.write_text(toml_text(TINY_MEI))

    def build_loop_toml(self, target: Path) -> None:
        target.write_text(toml_text(TINY_LOOP))

    def build_data_npz(self, target: Path) -> None:
        np.savez(target, **recording())

    def build_sensorium(self, target: Path) -> None:
        write_sensorium(target)

    def build_sensorium_zip(self, target: Path) -> None:
        tree = self.path("sensorium")
        shutil.make_archive(str(target.with_suffix("")), "zip", tree.parent, tree.name)

    def build_sensorium_video(self, target: Path) -> None:
        write_sensorium_video(target)

    def build_video_zarr(self, target: Path) -> None:
        cli(["simulate", target.name, *SIMULATE_VIDEO], self.root)

    def build_video_toml(self, target: Path) -> None:
        target.write_text(toml_text(TINY_VIDEO_FIT))

    def build_video_mei_toml(self, target: Path) -> None:
        target.write_text(toml_text(TINY_VIDEO_MEI))

    def build_video_run(self, target: Path) -> None:
        self.path("video.zarr"), self.path("video.toml")
        cli(["fit", "video.zarr", "--out", target.name, "--config", "video.toml"], self.root)

    def build_run(self, target: Path) -> None:
        self.path("sim.zarr"), self.path("fit.toml")
        cli(["fit", "sim.zarr", "--out", target.name, "--config", "fit.toml"], self.root)

    def build_transfer(self, target: Path) -> None:
        self.path("run"), self.path("day2.zarr")
        cli(["fit", "day2.zarr", "--out", target.name, "--core", "run", "--freeze-core", "--config", "fit.toml"], self.root)

    def build_meis_zarr(self, target: Path) -> None:
        self.path("run"), self.path("mei.toml")
        cli(["mei", "run", "--neurons", "0:4", "--config", "mei.toml", "--out", target.name, "--json"], self.root)

    def build_stimuli(self, target: Path) -> None:
        self.path("meis.zarr")
        cli(["export", "meis.zarr", "--out", target.name, "--repeats", "3"], self.root)

    def build_responses_npz(self, target: Path) -> None:
        self.path("stimuli")
        cli(["respond", "stimuli", "--animal", "sim.zarr", "--out", target.name], self.root)
