"""The PyTorch video peer: the two Sensorium 2023 baselines (ecker-lab/sensorium_2023), timed here.

Run as its own process (``twin bench --video`` starts it once: on the CPU with the glibc malloc
tunables, on a GPU on cuda) and prints a JSON line after each core, the last holding them all::

    python benchmarks/peer_video_torch.py [--shapes JSON] [--repeats 3] [--mev-counts 1,16,128]
        [--mev-budget 16] [--mev-max-steps 2] [--mev-chunk 16] [--mev-neurons 1] [--device cpu|cuda]

Models, as sensorium_2023's make_video_model builds them (one session, random weights); the
input is (batch, 3, frames, y, x): the video and the two behaviour variables (pupil size,
running speed) as constant channels per frame; the pupil centre (batch, 2, frames) drives the
MLP shifter:
- "gru": Stacked2dCore (neuralpredictors 0.3.0; models_demo.ipynb's config: 4 layers x 64
  channels, 9x9 input kernel, full 7x7 hidden convs) on every frame, then a ConvGRU (7x7 input and
  recurrent kernels, 64 channels), full Gaussian readout with the cortex grid-mean predictor,
  MLP shifter, ELU + 1,
- "factorized3d": Factorized3dCore (models_demo.ipynb's config: 3 layers x 64 channels, 11x11
  then 11 frames in the first layer, 7x7 then 7 frames after, spatial padding; no temporal
  padding, so the output has 22 frames fewer than the input), the same readout and shifter.
sensorium_2023 pins neuralpredictors at 43faede (May 2023), whose Factorized3dCore,
ConvGRUCell and its VideoFiringRateEncoder are not in neuralpredictors 0.3.0 (installed here):
they are re-implemented below from that source, the 3D core with the later fix (b779fde,
2da2835) without which a list of per-layer channel counts does not build.

Measures, after one warm-up call, medians over ``--repeats`` timed calls, in frames/s (clip
frames of the input) and clip-steps/s:
- forward (eval mode, no grad, batch x frames),
- train (train mode, AdamW, Poisson loss on the output frames x sqrt(n_train / batch) + the
  regularizers, as sensorium_2023's video training loop),
- MEV: gradient ascent on a clip of ``mev_frames`` frames (the video channel; behaviour and pupil
  centre fixed) for the target neuron's response averaged over the last ``window`` output frames;
  SGD (lr 1), the clip rescaled to L2 norm MEV_NORM x sqrt(its size) each step. One neuron at a
  time (batch 1, read out that neuron only) and batched (B clips in one pass, the readout's
  ``out_idx`` set to the B targets, clip i read out for its own target), for each count of neurons in
  ``--mev-counts``, in chunks of at most ``--mev-chunk`` clips.
No torch.compile variants (their compiles of these models outlast a CPU run).
"""

from __future__ import annotations

import argparse
import collections
import collections.abc
import importlib.metadata
import json
import os
import sys
import types
from collections import OrderedDict

# neuralpredictors 0.3.0 on Python 3.11: its core module imports collections.Iterable and
# torchvision (unused for these layers; the PyPI torchvision build does not load here).
collections.Iterable = collections.abc.Iterable
sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from neuralpredictors import regularizers  # noqa: E402
from neuralpredictors.layers.cores import Stacked2dCore  # noqa: E402
from neuralpredictors.layers.readouts import FullGaussian2d, MultiReadoutSharedParametersBase  # noqa: E402
from neuralpredictors.layers.shifters import MLPShifter  # noqa: E402
from peer_torch import median_rate  # noqa: E402 (the image peer beside this file; the same timing)
from torch import nn  # noqa: E402

# Sensorium 2023: 36x64 videos, 80-frame training clips, batch 8 (benchmarks_training.ipynb),
# ~8,000 neurons per mouse (7,863 in the first); n_train only scales the loss.
SENSORIUM_2023 = dict(
    neurons=7863, height=36, width=64, channels=64, frames=80, batch=8, n_train=600, mev_frames=80, window=10
)
MEV_NORM = 0.1  # L2 norm of the clip per frame and pixel: sqrt(frames * y * x) * MEV_NORM overall
DATA_KEY = "session"

STACKED2D_CORE = dict(  # models_demo.ipynb (final_batchnorm_scale=True is 0.3.0's behaviour already)
    input_channels=3,
    hidden_channels=64,
    input_kern=9,
    hidden_kern=7,
    layers=4,
    gamma_input=500,
    skip=0,
    pad_input=False,
    final_nonlinearity=False,
    bias=True,
    momentum=0.9,
    batch_norm=True,
    hidden_dilation=1,
    laplace_padding=None,
    input_regularizer="LaplaceL2norm",
    stack=-1,
    depth_separable=False,
    linear=False,
    attention_conv=False,
    hidden_padding=None,
    use_avg_reg=False,
    gamma_hidden=500_000,
)
GRU = dict(input_channels=64, rec_channels=64, input_kern=7, rec_kern=7)  # models_demo.ipynb
FACTORIZED3D_CORE = dict(  # models_demo.ipynb
    hidden_channels=(64, 64, 64),
    spatial_input_kernel=11,
    temporal_input_kernel=11,
    spatial_hidden_kernel=7,
    temporal_hidden_kernel=7,
    gamma_input_spatial=0,
    gamma_input_temporal=0,
    momentum=0.7,
)
READOUT = dict(bias=True, init_mu_range=0.2, init_sigma=1.0, feature_reg_weight=0.0, gauss_type="full")
GRID_MEAN_PREDICTOR = dict(hidden_layers=1, hidden_features=30, final_tanh=True)


class ConvGRUCell(nn.Module):
    """neuralpredictors' ConvGRUCell (43faede): gates are convs of the input plus convs of the state."""

    def __init__(self, input_channels: int, rec_channels: int, input_kern: int, rec_kern: int):
        super().__init__()
        self.rec_channels = rec_channels

        def conv(channels, kern):
            layer = nn.Conv2d(channels, rec_channels, kern, padding=kern // 2)
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
            return layer

        self.reset_input, self.reset_hidden = conv(input_channels, input_kern), conv(rec_channels, rec_kern)
        self.update_input, self.update_hidden = conv(input_channels, input_kern), conv(rec_channels, rec_kern)
        self.out_input, self.out_hidden = conv(input_channels, input_kern), conv(rec_channels, rec_kern)

    def forward(self, x, state):
        """x (b, c, y, x), state (b, rec_channels, y, x) or None (zeros) -> the new state."""
        if state is None:
            state = x.new_zeros(x.shape[0], self.rec_channels, *x.shape[2:])
        update = torch.sigmoid(self.update_input(x) + self.update_hidden(state))
        reset = torch.sigmoid(self.reset_input(x) + self.reset_hidden(state))
        out = torch.tanh(self.out_input(x) + self.out_hidden(state * reset))
        return state * (1 - update) + out * update


class GRUModule(nn.Module):
    """neuralpredictors' GRU_Module: the cell run over the frames; (b, c, t, y, x) -> (b, rec, t, y, x)."""

    def __init__(self, **gru):
        super().__init__()
        self.gru = ConvGRUCell(**gru)

    def forward(self, x):
        states, state = [], None
        for frame in range(x.shape[2]):
            state = self.gru(x[:, :, frame], state)
            states.append(state)
        return torch.stack(states, 2)


class Factorized3dCore(nn.Module):
    """neuralpredictors' Factorized3dCore (43faede with b779fde/2da2835): per layer a (1, k, k)
    spatial conv ('same' padding), a (kt, 1, 1) temporal conv (none), BatchNorm3d, ELU.
    (b, c, t, y, x) -> (b, channels[-1], t - sum(kt - 1), y, x)."""

    def __init__(self, input_channels, hidden_channels, spatial_input_kernel, temporal_input_kernel,
                 spatial_hidden_kernel, temporal_hidden_kernel, gamma_input_spatial, gamma_input_temporal, momentum):  # fmt: skip
        super().__init__()
        self.gamma_input_spatial, self.gamma_input_temporal = gamma_input_spatial, gamma_input_temporal
        self.spatial_regularizer = regularizers.LaplaceL2norm(padding=None)
        self.features = nn.Sequential()
        channels_in = input_channels
        for i, channels in enumerate(hidden_channels):
            k, kt = (spatial_input_kernel, temporal_input_kernel) if i == 0 else (spatial_hidden_kernel, temporal_hidden_kernel)
            layer = OrderedDict()
            layer["conv_spatial"] = nn.Conv3d(channels_in, channels, (1, k, k), padding=(0, k // 2, k // 2))
            layer["conv_temporal"] = nn.Conv3d(channels, channels, (kt, 1, 1))
            layer["norm"] = nn.BatchNorm3d(channels, momentum=momentum)
            layer["nonlin"] = nn.ELU()
            self.features.add_module(f"layer{i}", nn.Sequential(layer))
            channels_in = channels
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.features(x)

    def regularizer(self):
        """The Laplace smoothness of the first spatial kernels plus the 1-D (DepthLaplaceL21d)
        smoothness of the first temporal kernels, weighted."""
        first = self.features[0]
        spatial = self.spatial_regularizer(first.conv_spatial.weight[:, :, 0])
        temporal = first.conv_temporal.weight[:, :, :, 0, 0]
        flat = temporal.reshape(-1, 1, temporal.shape[-1])
        laplace = F.conv1d(flat, flat.new_tensor([[[-1.0, 4.0, -1.0]]]), padding=1)
        return self.gamma_input_spatial * spatial + self.gamma_input_temporal * laplace.pow(2).sum() / flat.pow(2).sum()


class VideoEncoder(nn.Module):
    """sensorium_2023's VideoFiringRateEncoder (2D core per frame [+ GRU] or a 3D core, then the
    readout and shifter per output frame, ELU + 1): inputs (b, c, t, y, x), pupil_center (b, 2, t)
    -> (b, t', neurons) with t' the core's output frames (the last t' of the input's)."""

    def __init__(self, core, readout, shifter, gru=None):
        super().__init__()
        self.core, self.readout, self.shifter, self.gru = core, readout, shifter, gru

    def forward(self, inputs, pupil_center, out_idx=None):
        if self.gru is not None:
            b, c, t = inputs.shape[:3]
            frames = inputs.transpose(1, 2).reshape(b * t, c, *inputs.shape[3:])
            x = self.core(frames)
            x = self.gru(x.reshape(b, t, *x.shape[1:]).transpose(1, 2))
        else:
            x = self.core(inputs)
        x = x.transpose(1, 2)
        b, t = x.shape[:2]
        pupil = pupil_center[:, :, -t:].transpose(1, 2).reshape(b * t, 2)
        shift = self.shifter[DATA_KEY](pupil)
        x = self.readout(x.reshape(b * t, *x.shape[2:]), data_key=DATA_KEY, shift=shift, out_idx=out_idx)
        return (F.elu(x) + 1).reshape(b, t, -1)

    def regularizer(self):
        return self.core.regularizer() + self.readout.regularizer(data_key=DATA_KEY)


def build_model(core: str, shapes: dict, seed: int = 0) -> VideoEncoder:
    """The ``core`` ("gru" or "factorized3d") baseline at ``shapes`` (neurons, height, width, and
    channels: of every core layer and of the GRU state; 64 in the baselines)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    neurons, height, width, channels = shapes["neurons"], shapes["height"], shapes["width"], shapes["channels"]
    if core == "gru":
        net = Stacked2dCore(**(STACKED2D_CORE | dict(hidden_channels=channels)))
        gru = GRUModule(**(GRU | dict(input_channels=channels, rec_channels=channels)))
        trim = STACKED2D_CORE["input_kern"] - 1
        out_shape = (channels, height - trim, width - trim)
    else:
        hidden = (channels,) * len(FACTORIZED3D_CORE["hidden_channels"])
        net, gru = Factorized3dCore(input_channels=3, **(FACTORIZED3D_CORE | dict(hidden_channels=hidden))), None
        out_shape = (channels, height, width)
    readout = MultiReadoutSharedParametersBase(
        in_shape_dict={DATA_KEY: out_shape},
        n_neurons_dict={DATA_KEY: neurons},
        base_readout=FullGaussian2d,
        mean_activity_dict={DATA_KEY: torch.from_numpy(rng.uniform(0.5, 2.0, neurons).astype(np.float32))},
        grid_mean_predictor=GRID_MEAN_PREDICTOR,
        grid_mean_predictor_type="cortex",
        source_grids={DATA_KEY: rng.uniform(-300, 300, (neurons, 2))},
        **READOUT,
    )
    shifter = MLPShifter([DATA_KEY], input_channels=2, hidden_channels_shifter=5, shift_layers=3, gamma_shifter=0)
    return VideoEncoder(net, readout, shifter, gru)


def output_frames(core: str, frames: int) -> int:
    """Frames of the model's output for ``frames`` input frames."""
    if core == "gru":
        return frames
    kernels = [FACTORIZED3D_CORE["temporal_input_kernel"]] + [FACTORIZED3D_CORE["temporal_hidden_kernel"]] * 2
    return frames - sum(k - 1 for k in kernels)


def with_behavior(video):
    """The model input (b, 3, t, y, x): ``video`` (b, 1, t, y, x) and two constant behaviour channels."""
    behavior = torch.ones_like(video).expand(-1, 2, -1, -1, -1)
    return torch.cat([video, behavior], 1)


def random_clips(count: int, shapes: dict, frames: int, generator):
    """``count`` random clips (count, 1, frames, y, x), each at L2 norm ``MEV_NORM * sqrt(size)``."""
    clips = torch.randn(count, 1, frames, shapes["height"], shapes["width"], generator=generator, device=generator.device)
    return rescale(clips)


def rescale(clips):
    """``clips`` (B, 1, t, y, x) scaled to L2 norm MEV_NORM * sqrt(t * y * x) each."""
    target = MEV_NORM * clips[0].numel() ** 0.5
    return clips * (target / clips.flatten(1).norm(dim=1)).view(-1, 1, 1, 1, 1)


def mev_objective(model, clips, pupil, targets, window: int):
    """Clip i's response of neuron ``targets[i]`` averaged over the last ``window`` output frames:
    (B,). Clips (B, 1, t, y, x); targets (B,) int64; eval mode, so clips do not interact."""
    out = model(with_behavior(clips), pupil[: len(clips)], out_idx=targets)  # (B, t', B)
    index = torch.arange(len(clips), device=clips.device)
    return out[index, -window:, index].mean(1)


def mev_ascent(model, clips, pupil, targets, steps: int, window: int):
    """``steps`` SGD steps (lr 1) of ``mev_objective`` on ``clips``, each rescaled after every step."""
    clips = clips.clone().requires_grad_(True)
    sgd = torch.optim.SGD([clips], lr=1.0)
    for _ in range(steps):
        sgd.zero_grad()
        (-mev_objective(model, clips, pupil, targets, window).sum()).backward()  # exact: clips are independent
        sgd.step()
        with torch.no_grad():
            clips.copy_(rescale(clips))
    return clips.detach()


def mev_steps(n: int, budget: int, max_steps: int) -> int:
    """Steps per clip in a timed call for ``n`` neurons, as twin bench chooses them."""
    return max(1, min(max_steps, budget // n))


def measure(core: str, shapes: dict, repeats: int, mev: dict, device: str) -> dict:
    """Forward, train-step and MEV throughput of the ``core`` baseline at ``shapes`` on ``device``."""
    model = build_model(core, shapes).to(device)
    batch, frames, neurons = shapes["batch"], shapes["frames"], shapes["neurons"]
    generator = torch.Generator(device).manual_seed(1)
    video = torch.randn(batch, 1, frames, shapes["height"], shapes["width"], generator=generator, device=device)
    inputs = with_behavior(video)
    pupil = torch.randn(max(batch, mev["chunk"]), 2, max(frames, shapes["mev_frames"]), generator=generator, device=device)
    t_out = output_frames(core, frames)
    responses = torch.poisson(torch.ones(batch, t_out, neurons, device=device), generator=generator)
    loss_scale = (shapes["n_train"] / batch) ** 0.5
    result = {"output_frames": t_out}

    model.eval()
    with torch.no_grad():
        result["forward_frame_s"] = median_rate(batch * frames, lambda: model(inputs, pupil[:batch, :, :frames]), repeats)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.005)

    def train_step():
        optimizer.zero_grad()
        output = model(inputs, pupil[:batch, :, :frames])
        poisson = (output - responses * torch.log(output + 1e-12)).sum()
        (loss_scale * poisson + model.regularizer()).backward()
        optimizer.step()

    result["train_frame_s"] = median_rate(batch * frames, train_step, repeats)

    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    mev_frames, window = shapes["mev_frames"], shapes["window"]

    def one_neuron_loop():
        for neuron in range(mev["neurons"]):
            start = random_clips(1, shapes, mev_frames, generator)
            mev_ascent(model, start, pupil[:, :, :mev_frames], torch.tensor([neuron], device=device), mev["max_steps"], window)

    result["mev_one_neuron"] = median_rate(mev["neurons"] * mev["max_steps"], one_neuron_loop, repeats)
    result["mev_batched"], result["mev_batched_steps"] = {}, {}
    for n in mev["counts"]:
        steps = mev_steps(n, mev["budget"], mev["max_steps"])
        targets = (torch.arange(n) % neurons).to(device)

        def batched_loop():
            for first in range(0, n, mev["chunk"]):
                batch_targets = targets[first : first + mev["chunk"]]
                start = random_clips(len(batch_targets), shapes, mev_frames, generator)
                mev_ascent(model, start, pupil[:, :, :mev_frames], batch_targets, steps, window)

        result["mev_batched"][str(n)] = median_rate(n * steps, batched_loop, repeats)
        result["mev_batched_steps"][str(n)] = steps
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=json.loads, default=SENSORIUM_2023, help="JSON dict like SENSORIUM_2023")
    parser.add_argument("--cores", default="gru,factorized3d", help="baselines to time, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    parser.add_argument("--mev-counts", default="1,16,128", help="neuron counts of the batched MEV loop")
    parser.add_argument("--mev-budget", type=int, default=16, help="batched clip-steps per timed call")
    parser.add_argument("--mev-max-steps", type=int, default=2, help="most steps per clip in a timed call")
    parser.add_argument("--mev-chunk", type=int, default=16, help="clips per batched pass, at most")
    parser.add_argument("--mev-neurons", type=int, default=1, help="neurons of the one-neuron loop per timed call")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    args = parser.parse_args(argv)
    mev = dict(
        counts=[int(n) for n in args.mev_counts.split(",")],
        budget=args.mev_budget,
        max_steps=args.mev_max_steps,
        chunk=args.mev_chunk,
        neurons=args.mev_neurons,
    )
    result = {
        "torch": torch.__version__,
        "neuralpredictors": importlib.metadata.version("neuralpredictors"),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "shapes": args.shapes,
        "mev": mev,
    }
    for core in args.cores.split(","):
        result[core] = measure(core, args.shapes, args.repeats, mev, args.device)
        print(json.dumps(result), flush=True)  # the last whole line holds every core measured so far
    return 0


if __name__ == "__main__":
    sys.exit(main())
