"""The peer's batched MEI loop (benchmarks/peer_torch.py) optimizes what its one-neuron loop does."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("neuralpredictors")

from benchmarks.peer_torch import (  # noqa: E402
    build_model,
    mei_batch,
    mei_gradient,
    mei_neuron,
    neuron_activation,
    random_images,
    target_activations,
)

SHAPES = dict(neurons=10, height=20, width=24)


def objective(model):
    return lambda images, targets: target_activations(model, images, targets)


@pytest.fixture(scope="module")
def model():
    model = build_model(SHAPES["neurons"], (SHAPES["height"], SHAPES["width"]), channels=8, layers=2, seed=3).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def test_batched_gradient_is_each_neurons_own(model):
    images = random_images(4, SHAPES, torch.Generator().manual_seed(0))
    targets = torch.tensor([7, 0, 3, 7])
    batched = mei_gradient(objective(model), images, targets)
    for i, neuron in enumerate(targets.tolist()):
        image = images[i : i + 1].clone().requires_grad_(True)
        (alone,) = torch.autograd.grad(neuron_activation(model, image, neuron), image)
        assert float(alone.abs().max()) > 0
        np.testing.assert_allclose(batched[i : i + 1].numpy(), alone.numpy(), rtol=1e-4, atol=1e-6)


def test_batched_loop_follows_the_one_neuron_loop(model):
    images = random_images(3, SHAPES, torch.Generator().manual_seed(1))
    targets = torch.tensor([2, 9, 5])
    batched = mei_batch(objective(model), images, targets, steps=3)
    np.testing.assert_allclose(batched.flatten(1).norm(dim=1).numpy(), 25.0, rtol=1e-5)
    for i, neuron in enumerate(targets.tolist()):
        alone = mei_neuron(model, images[i : i + 1], neuron, steps=3)
        assert not torch.allclose(alone, images[i : i + 1], atol=1e-3)  # the steps moved the image
        np.testing.assert_allclose(batched[i : i + 1].numpy(), alone.numpy(), rtol=1e-4, atol=1e-5)
