"""The PyTorch peer: the Sensorium 2022 baseline in neuralpredictors 0.3.0, timed on this machine.

Run as its own process (``twin bench`` starts it twice: with and without the glibc malloc
tunables, which must be set before the process starts) and prints one JSON object::

    python benchmarks/peer_torch.py [--shapes JSON] [--repeats 3] [--mei-neurons 3] [--mei-steps 30]

Measures, after warm-up, medians over a few repeats:
- forward images/s (eval mode, no grad, batch 128),
- training images/s (train mode, Adam, Poisson loss x sqrt(n_train / batch) + regularizers),
- the MEI loop of the Sinz-lab tools, one neuron at a time: eval mode, gradient of that one
  neuron's response w.r.t. the image (batch 1), SGD, image rescaled to a fixed L2 norm each step;
  image-steps/s.

``build_model`` is also used by tests/test_convert.py to make the checkpoint that twin converts.
"""

from __future__ import annotations

import argparse
import collections
import collections.abc
import importlib.metadata
import json
import os
import statistics
import sys
import time
import types

# neuralpredictors 0.3.0 on Python 3.11: its core module imports collections.Iterable and
# torchvision (unused for these layers; the PyPI torchvision build does not load here).
collections.Iterable = collections.abc.Iterable
sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from neuralpredictors.layers.cores import SE2dCore  # noqa: E402
from neuralpredictors.layers.encoders import FiringRateEncoder  # noqa: E402
from neuralpredictors.layers.readouts import FullGaussian2d, MultiReadoutSharedParametersBase  # noqa: E402
from neuralpredictors.layers.shifters import MLPShifter  # noqa: E402

# Shapes of the Sensorium 2022 baseline (twin bench passes its own, e.g. tiny ones for CI).
SENSORIUM = dict(neurons=7776, height=36, width=64, batch=128, channels=64, layers=4, n_train=4500)
MEI_NORM = 25.0


# The Sensorium 2022 baseline core (sinzlab/sensorium, SE2dCore without SE blocks).
SENSORIUM_CORE = dict(
    hidden_channels=64,
    input_kern=9,
    hidden_kern=7,
    layers=4,
    gamma_input=6.3831,
    skip=0,
    final_nonlinearity=True,
    bias=False,
    momentum=0.9,
    pad_input=False,
    batch_norm=True,
    hidden_dilation=1,
    laplace_padding=None,
    input_regularizer="LaplaceL2norm",
    stack=-1,
    depth_separable=True,
    use_avg_reg=False,
    n_se_blocks=0,
)

def build_model(
    n_neurons: int,
    image_shape: tuple[int, int] = (36, 64),
    channels: int = 64,
    layers: int = 4,
    *,
    shifter: bool = False,
    grid_mean_predictor: bool = False,
    gauss_type: str = "full",
    data_key: str = "session",
    seed: int = 0,
) -> FiringRateEncoder:
    """The Sensorium baseline as sinzlab/sensorium builds it (SE2dCore without SE blocks, full
    Gaussian readout, optional MLP shifter; one session called ``data_key``).

    Input (batch, 1, y, x); output (batch, n_neurons). With ``grid_mean_predictor`` the readout
    positions come from an MLP on random cortical coordinates (n_neurons, 2).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    core = SE2dCore(input_channels=1, **(SENSORIUM_CORE | dict(hidden_channels=channels, layers=layers)))
    out_shape = (channels, image_shape[0] - 8, image_shape[1] - 8)
    readout_kwargs = {}
    if grid_mean_predictor:
        readout_kwargs = dict(
            grid_mean_predictor=dict(hidden_layers=1, hidden_features=30, final_tanh=True),
            grid_mean_predictor_type="cortex",
            source_grids={data_key: rng.uniform(-300, 300, (n_neurons, 2))},
        )
    mean_activity = torch.from_numpy(rng.uniform(0.5, 2.0, n_neurons).astype(np.float32))
    readout = MultiReadoutSharedParametersBase(
        in_shape_dict={data_key: out_shape},
        n_neurons_dict={data_key: n_neurons},
        base_readout=FullGaussian2d,
        mean_activity_dict={data_key: mean_activity},
        init_mu_range=0.3,
        init_sigma=0.1,
        bias=True,
        feature_reg_weight=0.0076,
        gauss_type=gauss_type,
        **readout_kwargs,
    )
    shift = None
    if shifter:
        shift = MLPShifter(
            [data_key], input_channels=2, hidden_channels_shifter=5, shift_layers=3, gamma_shifter=0
        )
    return FiringRateEncoder(core=core, readout=readout, shifter=shift, elu_offset=0.0)


def median_rate(work, run, repeats: int) -> float:
    """``work`` units per second: median over ``repeats`` timed calls of ``run`` after one warm-up."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return work / statistics.median(times)


def measure(shapes: dict, repeats: int, mei_neurons: int, mei_steps: int) -> dict:
    """Forward, train-step and MEI-loop throughput of the baseline at ``shapes``."""
    model = build_model(
        shapes["neurons"], (shapes["height"], shapes["width"]), shapes["channels"], shapes["layers"]
    )
    batch = shapes["batch"]
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 1, shapes["height"], shapes["width"], generator=generator)
    responses = torch.poisson(torch.ones(batch, shapes["neurons"]), generator=generator)

    model.eval()

    def forward():
        with torch.no_grad():
            model(images, data_key="session")

    forward_rate = median_rate(batch, forward, repeats)

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.009)
    loss_scale = (shapes["n_train"] / batch) ** 0.5

    def train_step():
        optimizer.zero_grad()
        output = model(images, data_key="session")
        poisson = (output - responses * torch.log(output + 1e-12)).sum()
        loss = loss_scale * poisson + model.regularizer(data_key="session")
        loss.backward()
        optimizer.step()

    train_rate = median_rate(batch, train_step, repeats)

    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    def mei_neuron(neuron: int):
        image = torch.randn(1, 1, shapes["height"], shapes["width"], generator=generator)
        image = (image * MEI_NORM / image.norm()).requires_grad_(True)
        sgd = torch.optim.SGD([image], lr=1.0)
        out_idx = np.array([neuron])
        for _ in range(mei_steps):
            sgd.zero_grad()
            activation = model(image, data_key="session", out_idx=out_idx)[0, 0]
            (-activation).backward()
            sgd.step()
            with torch.no_grad():
                image *= MEI_NORM / image.norm()

    def mei_loop():
        for neuron in range(mei_neurons):
            mei_neuron(neuron)

    mei_rate = median_rate(mei_neurons * mei_steps, mei_loop, repeats)
    return {
        "forward_img_s": forward_rate,
        "train_img_s": train_rate,
        "mei_image_steps_s": mei_rate,
        "mei_neurons_timed": mei_neurons,
        "mei_steps_timed": mei_steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=json.loads, default=SENSORIUM, help="JSON dict like SENSORIUM")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    parser.add_argument("--mei-neurons", type=int, default=3, help="neurons optimized in a timed MEI call")
    parser.add_argument("--mei-steps", type=int, default=30, help="steps per neuron in a timed MEI call")
    args = parser.parse_args(argv)
    result = {
        "torch": torch.__version__,
        "neuralpredictors": importlib.metadata.version("neuralpredictors"),
        "threads": torch.get_num_threads(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "shapes": args.shapes,
        **measure(args.shapes, args.repeats, args.mei_neurons, args.mei_steps),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
