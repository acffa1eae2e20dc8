"""The PyTorch peer: the Sensorium 2022 baseline in neuralpredictors 0.3.0, timed on this machine.

Run as its own process (``twin bench`` starts it twice: with and without the glibc malloc
tunables, which must be set before the process starts) and prints one JSON object::

    python benchmarks/peer_torch.py [--shapes JSON] [--repeats 3] [--mei-neurons 3] [--mei-steps 30]
        [--mei-counts 1,16,128,1024] [--mei-budget 512] [--mei-chunk 128] [--no-compile REASON]
        [--device cpu|cuda]

It prints the eager figures first (with the compiled variants marked unfinished), then the whole
object, so a run stopped during its compiles still leaves its eager figures on the last line.

Measures, after warm-up, medians over a few repeats:
- forward images/s (eval mode, no grad, batch 128),
- training images/s (train mode, Adam, Poisson loss x sqrt(n_train / batch) + regularizers),
- the MEI loop of the Sinz-lab tools, one neuron at a time: eval mode, gradient of that one
  neuron's response w.r.t. the image (batch 1), SGD, image rescaled to a fixed L2 norm each step;
  image-steps/s,
- the same MEI loop batched, as a PyTorch user would write it for many neurons: B images in one
  forward pass, the readout's ``out_idx`` set to the B target neurons and image i read out only
  for its own target (the diagonal of the (B, B) output), SGD on the sum, each image rescaled to
  the norm; for each count of neurons in ``--mei-counts``, in chunks of at most ``--mei-chunk``
  images; image-steps/s,
- with ``torch.compile`` (inductor), unless ``--no-compile``: the forward pass, the training
  loss (forward + loss + regularizers; its backward compiled by AOTAutograd, Adam eager) and the
  batched MEI objective (its backward compiled too; the SGD step and rescaling eager), each with
  its compile time. A compile that fails is reported as skipped with the reason.

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


def synchronized(run):
    """``run`` followed by waiting for the GPU, when there is one (its kernels run asynchronously)."""
    if not torch.cuda.is_initialized():
        return run

    def call():
        run()
        torch.cuda.synchronize()

    return call


def median_rate(work, run, repeats: int) -> float:
    """``work`` units per second: median over ``repeats`` timed calls of ``run`` after one warm-up."""
    run = synchronized(run)
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return work / statistics.median(times)


def neuron_activation(model, image, neuron: int):
    """The one-neuron loop's objective: the response of ``neuron`` to ``image`` (1, 1, y, x); scalar."""
    return model(image, data_key="session", out_idx=np.array([neuron]))[0, 0]


def target_activations(model, images, targets):
    """The batched loop's objective: image i's response of neuron ``targets[i]``; images (B, 1, y, x),
    targets (B,) int64 tensor; returns (B,). Eval mode, so images do not interact."""
    return model(images, data_key="session", out_idx=targets).diagonal()


def random_images(count: int, shapes: dict, generator) -> "torch.Tensor":
    """``count`` random images (count, 1, y, x) on the generator's device, each at L2 norm MEI_NORM."""
    images = torch.randn(count, 1, shapes["height"], shapes["width"], generator=generator, device=generator.device)
    return images * (MEI_NORM / images.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)


def mei_neuron(model, image, neuron: int, steps: int):
    """The one-neuron loop: ``steps`` SGD steps (lr 1) on ``image`` (1, 1, y, x), rescaled to
    MEI_NORM after each; returns the image."""
    image = image.clone().requires_grad_(True)
    sgd = torch.optim.SGD([image], lr=1.0)
    for _ in range(steps):
        sgd.zero_grad()
        (-neuron_activation(model, image, neuron)).backward()
        sgd.step()
        with torch.no_grad():
            image *= MEI_NORM / image.norm()
    return image.detach()


def mei_batch(objective, images, targets, steps: int):
    """The batched loop: the one-neuron loop's steps for B images at once, image i for neuron
    ``targets[i]``; ``objective(images, targets)`` -> (B,); images (B, 1, y, x); returns the images."""
    images = images.clone().requires_grad_(True)
    sgd = torch.optim.SGD([images], lr=1.0)
    for _ in range(steps):
        sgd.zero_grad()
        # Summing is exact: each activation depends on its own image only.
        (-objective(images, targets).sum()).backward()
        sgd.step()
        with torch.no_grad():
            images *= (MEI_NORM / images.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    return images.detach()


def mei_steps(n: int, budget: int, max_steps: int) -> int:
    """Steps per image in a timed call for ``n`` neurons, as twin bench chooses them."""
    return max(2, min(max_steps, budget // n))


def batched_rates(objective, shapes: dict, repeats: int, counts, budget: int, chunk: int, max_steps: int, generator):
    """Image-steps/s of ``mei_batch`` for each count of neurons: {str(n): rate}."""
    rates = {}
    for n in counts:
        steps = mei_steps(n, budget, max_steps)
        targets = (torch.arange(n) % shapes["neurons"]).to(generator.device)

        def run():
            for first in range(0, n, chunk):
                batch = targets[first : first + chunk]
                mei_batch(objective, random_images(len(batch), shapes, generator), batch, steps)

        rates[str(n)] = median_rate(n * steps, run, repeats)
    return rates


def first_call_seconds(run) -> float:
    """Wall time of the first call of ``run`` (a compiled function's compile time plus one call)."""
    run = synchronized(run)
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(
    shapes: dict, repeats: int, mei_neurons: int, max_steps: int, mei: dict, compile_skip: str | None, device: str, emit
) -> dict:
    """Forward, train-step and MEI-loop throughput of the baseline at ``shapes`` on ``device``, eager
    and (unless ``compile_skip`` says why not) compiled. ``mei``: counts, budget, chunk of the batched
    loop. ``emit(result)`` receives the eager figures before the compiles start."""
    model = build_model(
        shapes["neurons"], (shapes["height"], shapes["width"]), shapes["channels"], shapes["layers"]
    ).to(device)
    batch = shapes["batch"]
    generator = torch.Generator(device).manual_seed(1)
    images = torch.randn(batch, 1, shapes["height"], shapes["width"], generator=generator, device=device)
    responses = torch.poisson(torch.ones(batch, shapes["neurons"], device=device), generator=generator)
    loss_scale = (shapes["n_train"] / batch) ** 0.5

    def train_loss(images, responses):
        output = model(images, data_key="session")
        poisson = (output - responses * torch.log(output + 1e-12)).sum()
        return loss_scale * poisson + model.regularizer(data_key="session")

    def forward_rate(forward):
        model.eval()
        with torch.no_grad():
            return median_rate(batch, lambda: forward(images, data_key="session"), repeats)

    def train_rate(loss_fn):
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.009)

        def train_step():
            optimizer.zero_grad()
            loss_fn(images, responses).backward()
            optimizer.step()

        return median_rate(batch, train_step, repeats)

    result = {"forward_img_s": forward_rate(model), "train_img_s": train_rate(train_loss)}

    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    def mei_loop():
        for neuron in range(mei_neurons):
            mei_neuron(model, random_images(1, shapes, generator), neuron, max_steps)

    result["mei_image_steps_s"] = median_rate(mei_neurons * max_steps, mei_loop, repeats)
    result["mei_neurons_timed"] = mei_neurons
    result["mei_steps_timed"] = max_steps

    def objective(images, targets):
        return target_activations(model, images, targets)

    batched = dict(shapes=shapes, repeats=repeats, **mei, max_steps=max_steps, generator=generator)
    result["mei_batched"] = batched_rates(objective, **batched)
    result["mei_batched_steps"] = {str(n): mei_steps(n, mei["budget"], max_steps) for n in mei["counts"]}
    if not compile_skip:
        emit(result | {"compiled": {"skipped": "torch.compile variants unfinished (the run was stopped)"}})
    result["compiled"] = {"skipped": compile_skip} if compile_skip else measure_compiled(
        model, images, responses, train_loss, objective, forward_rate, train_rate, batched
    )
    return result


def measure_compiled(model, images, responses, train_loss, objective, forward_rate, train_rate, batched) -> dict:
    """The forward pass, training loss and batched MEI objective under ``torch.compile``: rates
    and compile times (first call), or {"skipped": why} when inductor fails here."""
    try:
        compiled_forward = torch.compile(model, dynamic=False)
        model.eval()
        with torch.no_grad():
            forward_s = first_call_seconds(lambda: compiled_forward(images, data_key="session"))
        out = {"forward_img_s": forward_rate(compiled_forward)}
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        compiled_loss = torch.compile(train_loss, dynamic=False)
        model.train()
        train_s = first_call_seconds(lambda: compiled_loss(images, responses).backward())
        out["train_img_s"] = train_rate(compiled_loss)
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        compiled_objective = torch.compile(objective, dynamic=False)
        shapes, generator = batched["shapes"], batched["generator"]
        mei_s = 0.0
        for size in sorted({min(n, batched["chunk"]) for n in batched["counts"]}):  # one compile per batch size
            targets = (torch.arange(size) % shapes["neurons"]).to(generator.device)
            start_images = random_images(size, shapes, generator)
            mei_s += first_call_seconds(lambda: mei_batch(compiled_objective, start_images, targets, 1))
        check_compiled_gradient(objective, compiled_objective, shapes, generator)
        out["mei_batched"] = batched_rates(compiled_objective, **batched)
        out["compile_s"] = {"forward": forward_s, "train": train_s, "mei": mei_s}
        return out
    except Exception as error:  # inductor needs a working C compiler; any failure skips the variant
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return {"skipped": f"torch.compile failed: {type(error).__name__}: {message[:200]}"}


def mei_gradient(objective, images, targets):
    """d(sum of ``objective``)/d images for images (B, 1, y, x): (B, 1, y, x)."""
    images = images.clone().requires_grad_(True)
    return torch.autograd.grad(objective(images, targets).sum(), images)[0]


def check_compiled_gradient(objective, compiled_objective, shapes: dict, generator) -> None:
    """Raise when the compiled batched objective's gradient differs from the eager one's."""
    images = random_images(4, shapes, generator)
    targets = (torch.arange(4) % shapes["neurons"]).to(generator.device)
    eager, compiled = mei_gradient(objective, images, targets), mei_gradient(compiled_objective, images, targets)
    if not torch.allclose(eager, compiled, rtol=1e-3, atol=1e-5 * float(eager.abs().max())):
        raise RuntimeError("the compiled MEI gradient differs from the eager one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=json.loads, default=SENSORIUM, help="JSON dict like SENSORIUM")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    parser.add_argument("--mei-neurons", type=int, default=3, help="neurons optimized in a timed MEI call")
    parser.add_argument("--mei-steps", type=int, default=30, help="steps per neuron in a timed MEI call")
    parser.add_argument("--mei-counts", default="1,16,128,1024", help="neuron counts of the batched MEI loop")
    parser.add_argument("--mei-budget", type=int, default=512, help="batched image-steps per timed call")
    parser.add_argument("--mei-chunk", type=int, default=128, help="images per batched forward pass, at most")
    parser.add_argument("--no-compile", metavar="REASON", help="skip the torch.compile variants, saying why")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    args = parser.parse_args(argv)
    mei = dict(counts=[int(n) for n in args.mei_counts.split(",")], budget=args.mei_budget, chunk=args.mei_chunk)
    head = {
        "torch": torch.__version__,
        "neuralpredictors": importlib.metadata.version("neuralpredictors"),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "shapes": args.shapes,
    }

    def emit(result):
        print(json.dumps(head | result), flush=True)

    emit(measure(args.shapes, args.repeats, args.mei_neurons, args.mei_steps, mei, args.no_compile, args.device, emit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
