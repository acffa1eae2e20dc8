"""Per-session readouts from the core's feature map ``(batch, y, x, channel)`` to neurons.

Parameter layout, against neuralpredictors 0.3.0 (torch shapes in brackets):

GaussianReadout (FullGaussian2d):
- ``mu`` (n, 2) [``_mu`` (1, n, 1, 2)]: grid_sample order (x, y), in [-1, 1]; absent with a
  grid-mean predictor, where ``grid_predictor.hidden`` / ``.out`` (nnx.Linear, kernel (in, out) =
  torch weight.T) map ``source_grid`` (n, 2) to mu.
- ``sigma`` (n, 2, 2) for "full" [``sigma`` (1, n, 2, 2)], (n, 1) for "isotropic" [(1, n, 1, 1)].
- ``features`` (n, channels) [``_features`` (1, c, 1, n)]; ``bias`` (n,) [``bias``].

FactorizedReadout (FullFactorized2d): ``spatial`` (n, y, x) [``spatial`` (n, y, x)],
``features`` (n, channels) [``_features``], ``bias`` (n,).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Constant(nnx.Variable):
    """A non-trainable array that travels with the model state (e.g. the grid predictor's input)."""


def grid_corners(grid: jax.Array, height: int, width: int):
    """Points ``grid (..., 2)`` as (x, y) in [-1, 1] on a (height, width) map (align_corners=True)
    -> (x0, y0) int top-left pixels of their bilinear patches and (fx, fy) fractional offsets."""
    ix = (grid[..., 0] + 1) * 0.5 * (width - 1)
    iy = (grid[..., 1] + 1) * 0.5 * (height - 1)
    x0, y0 = jnp.floor(ix), jnp.floor(iy)
    return x0.astype(jnp.int32), y0.astype(jnp.int32), ix - x0, iy - y0


def bilinear_weights(fx: jax.Array, fy: jax.Array) -> jax.Array:
    """(..., 2, 2) weights of a bilinear patch's (y, x) corners from offsets fx, fy (...)."""
    return jnp.stack([1 - fy, fy], -1)[..., :, None] * jnp.stack([1 - fx, fx], -1)[..., None, :]


def sample_image(fmap: jax.Array, x0, y0, fx, fy, features: jax.Array) -> jax.Array:
    """One image's readout: fmap (y, x, c); x0, y0 (n,) int top-left corners (pixel units, may lie
    outside the map); fx, fy (n,) fractional offsets; features (n, c) -> (n,).

    The map is zero-padded by one pixel so each neuron gathers one (2, 2, c) patch; a patch
    clamped into the padded map only where both its corners fall outside is masked to zero.
    """
    h, w, c = fmap.shape
    padded = jnp.pad(fmap, ((1, 1), (1, 1), (0, 0)))
    inside = (x0 >= -1) & (x0 <= w - 1) & (y0 >= -1) & (y0 <= h - 1)
    start = jnp.stack([jnp.clip(y0 + 1, 0, h), jnp.clip(x0 + 1, 0, w)], axis=-1)
    dims = jax.lax.GatherDimensionNumbers(offset_dims=(1, 2, 3), collapsed_slice_dims=(), start_index_map=(0, 1))
    patch = jax.lax.gather(padded, start, dims, (2, 2, c), mode="clip")  # (n, 2, 2, c)
    weights = jnp.where(inside[:, None, None], bilinear_weights(fx, fy), 0.0)
    return jnp.einsum("nijc,nij,nc->n", patch, weights, features)


def bilinear_readout(fmap: jax.Array, grid: jax.Array, features: jax.Array) -> jax.Array:
    """Bilinear sampling (torch grid_sample, align_corners=True, zero padding) dotted with features.

    fmap: (b, y, x, c); grid: (n, 2) shared by all images or (b, n, 2), as (x, y) in [-1, 1]
    (-1 and 1 are the centres of the first and last pixels); features: (n, c). Returns (b, n):
    ``sum_c sample(fmap[b, ..., c], grid[b, n]) * features[n, c]``.

    Runs image by image (lax.map, recomputed in the backward pass) so the gathered (n, 2, 2, c)
    patches and the gradient's scatter stay cache-sized: one (b, n, c) gather over the whole batch
    runs ~5x slower on XLA CPU, mostly writing and faulting in fresh memory.
    """
    b, h, w, c = fmap.shape
    corners = grid_corners(grid, h, w)
    sample = jax.checkpoint(sample_image)
    if grid.ndim == 2:
        return jax.lax.map(lambda image: sample(image, *corners, features), fmap)
    return jax.lax.map(lambda args: sample(*args, features), (fmap, *corners))


class GridPredictor(nnx.Module):
    """Neuron positions -> readout grid means: Linear(2, hidden) -> ELU -> Linear(hidden, 2) -> tanh."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(2, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 2, rngs=rngs)

    def __call__(self, positions: jax.Array) -> jax.Array:
        """positions: (n, 2) normalized cortex coordinates -> (n, 2) grid means in [-1, 1]."""
        return jnp.tanh(self.out(jax.nn.elu(self.hidden(positions))))


class GaussianReadout(nnx.Module):
    """Gaussian readout (neuralpredictors FullGaussian2d, Lurz et al. 2021).

    Each neuron reads the feature map at one point: in training mode a point sampled per image
    from N(mu, sigma sigma^T) (the readout's own ``sample`` rng stream), in eval mode mu. The
    point is clipped to [-1, 1] (then shifted, if a shift is given), the features there are
    bilinearly interpolated and dotted with the neuron's feature vector, plus a bias.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        mean_response: np.ndarray,
        *,
        gauss_type: str = "full",
        init_mu_range: float = 0.3,
        init_sigma: float = 0.1,
        gamma_readout: float = 0.0076,
        positions: np.ndarray | None = None,
        grid_hidden: int = 30,
        rngs: nnx.Rngs,
    ):
        """in_shape: core output (y, x, channels); mean_response: (n,) initial bias;
        positions: (n, 2 or 3) cortex coordinates -> use a grid-mean predictor (first 2 columns)."""
        n = len(mean_response)
        channels = in_shape[2]
        self.in_shape = tuple(in_shape)
        self.gauss_type = gauss_type
        self.gamma_readout = gamma_readout
        if positions is None:
            self.mu = nnx.Param(jax.random.uniform(rngs.params(), (n, 2), minval=-init_mu_range, maxval=init_mu_range))
            self.grid_predictor = None
        else:
            grid = np.asarray(positions, np.float32)[:, :2]
            grid = grid - grid.mean(axis=0, keepdims=True)
            grid = grid / max(float(np.abs(grid).max()), 1e-12)
            self.source_grid = Constant(jnp.asarray(grid))
            self.grid_predictor = GridPredictor(grid_hidden, rngs=rngs)
        if gauss_type == "full":
            self.sigma = nnx.Param(jax.random.uniform(rngs.params(), (n, 2, 2), minval=-init_sigma, maxval=init_sigma))
        else:
            self.sigma = nnx.Param(jnp.full((n, 1), init_sigma, jnp.float32))
        self.features = nnx.Param(jnp.full((n, channels), 1.0 / channels, jnp.float32))
        self.bias = nnx.Param(jnp.asarray(mean_response, jnp.float32))
        self.rngs = rngs["sample"].fork()
        self.deterministic = False

    @property
    def n_neurons(self) -> int:
        return self.bias.shape[-1]  # bias (neuron,), or (member, neuron) inside an Ensemble

    def grid_means(self, neurons: jax.Array | None = None) -> jax.Array:
        """mu of all neurons, or of ``neurons`` (k,): (n or k, 2) in (x, y) order."""
        if self.grid_predictor is None:
            mu = self.mu[...] if neurons is None else self.mu[...][neurons]
        else:
            source = self.source_grid[...] if neurons is None else self.source_grid[...][neurons]
            mu = self.grid_predictor(source)
        # Clip in value but pass gradients through, as neuralpredictors clamps mu in place.
        return mu + jax.lax.stop_gradient(jnp.clip(mu, -1, 1) - mu)

    def __call__(
        self, fmap: jax.Array, *, shift: jax.Array | None = None, neurons: jax.Array | None = None
    ) -> jax.Array:
        """fmap: (b, y, x, c); shift: (b, 2) grid shift; neurons: (k,) indices -> (b, n or k)."""
        mu = self.grid_means(neurons)
        sigma = self.sigma[...] if neurons is None else self.sigma[...][neurons]
        features = self.features[...] if neurons is None else self.features[...][neurons]
        bias = self.bias[...] if neurons is None else self.bias[...][neurons]
        if self.deterministic:
            grid = mu
        else:
            z = jax.random.normal(self.rngs(), (fmap.shape[0],) + mu.shape)
            if self.gauss_type == "full":
                grid = jnp.einsum("ncd,bnd->bnc", sigma, z) + mu
            else:
                grid = z * sigma + mu
            grid = jnp.clip(grid, -1, 1)
        if shift is not None:
            grid = grid + shift[:, None, :]
        return bilinear_readout(fmap, grid, features) + bias

    def regularizer(self) -> jax.Array:
        """gamma_readout * sum |features| (neuralpredictors' reduction="sum")."""
        return self.gamma_readout * jnp.sum(jnp.abs(self.features[...]))


class FactorizedReadout(nnx.Module):
    """Spatial mask x feature vector readout (Klindt et al. 2017; neuralpredictors FullFactorized2d).

    response[b, n] = sum_{y, x, c} fmap[b, y, x, c] * spatial[n, y, x] / |spatial[n]|_2 * features[n, c] + bias[n]
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        mean_response: np.ndarray,
        *,
        gamma_readout: float = 0.0076,
        init_noise: float = 1e-3,
        rngs: nnx.Rngs,
    ):
        """in_shape: core output (y, x, channels); mean_response: (n,) initial bias."""
        n = len(mean_response)
        h, w, c = in_shape
        self.in_shape = tuple(in_shape)
        self.gamma_readout = gamma_readout
        self.spatial = nnx.Param(jax.random.normal(rngs.params(), (n, h, w)) * init_noise)
        self.features = nnx.Param(jax.random.normal(rngs.params(), (n, c)) * init_noise)
        self.bias = nnx.Param(jnp.asarray(mean_response, jnp.float32))

    @property
    def n_neurons(self) -> int:
        return self.bias.shape[-1]  # bias (neuron,), or (member, neuron) inside an Ensemble

    def normalized_spatial(self, neurons: jax.Array | None = None) -> jax.Array:
        """(n or k, y, x) masks with unit L2 norm (+1e-6 in the denominator, as neuralpredictors)."""
        spatial = self.spatial[...] if neurons is None else self.spatial[...][neurons]
        return spatial / (jnp.sqrt(jnp.sum(spatial**2, axis=(1, 2), keepdims=True)) + 1e-6)

    def __call__(
        self, fmap: jax.Array, *, shift: jax.Array | None = None, neurons: jax.Array | None = None
    ) -> jax.Array:
        """fmap: (b, y, x, c); neurons: (k,) indices -> (b, n or k). ``shift`` must be None."""
        if shift is not None:
            raise ValueError("FactorizedReadout has no grid to shift; use the Gaussian readout with a shifter")
        features = self.features[...] if neurons is None else self.features[...][neurons]
        bias = self.bias[...] if neurons is None else self.bias[...][neurons]
        pooled = jnp.einsum("byxc,nyx->bnc", fmap, self.normalized_spatial(neurons))
        return jnp.einsum("bnc,nc->bn", pooled, features) + bias

    def regularizer(self) -> jax.Array:
        """gamma_readout * sum_n |spatial_n|_1 * |features_n|_1 (neuralpredictors' reduction="sum")."""
        spatial = jnp.sum(jnp.abs(self.normalized_spatial()), axis=(1, 2))
        return self.gamma_readout * jnp.sum(spatial * jnp.sum(jnp.abs(self.features[...]), axis=1))
