"""Most discriminative stimuli: the contrastive objective, reassignment, merging, the adjusted
Rand index and `twin mds` end to end on a tiny simulated session and a tiny (unfitted) twin."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from twin.checkpoint import readout_specs, save_run_model
from twin.cli import main
from twin.config import DataConfig, MEIConfig, ModelConfig, RunConfig
from twin.data.loader import load_session
from twin.data.simulate import ground_truth, mean_response, simulate
from twin.data.store import open_dataset, write_session
from twin.mei.mds import (
    cluster_weights,
    contrastive_values,
    drop_empty,
    kmeans,
    most_discriminative_stimuli,
    pair_discriminability,
    reassign,
)
from twin.mei.validate import GroundTruth
from twin.metrics import adjusted_rand_index
from twin.models.twin import Twin


def test_contrastive_value_and_gradient_on_a_toy_case():
    # Four neurons in clusters [0, 0, 1, 2]: cluster means m = (1.5, 0, -1) at T = 1.
    cluster = np.array([0, 0, 1, 2])
    weights = jnp.asarray(cluster_weights(cluster, 3))[None]
    z = jnp.array([[1.0, 2.0, 0.0, -1.0]])
    value = contrastive_values(z, weights, jnp.array([0]), 1.0)
    expected = 1.5 - np.log(np.exp(1.5) + np.exp(0.0) + np.exp(-1.0)) + np.log(3)
    np.testing.assert_allclose(value, [expected], rtol=1e-6)
    # dJ/dz_i = w_0i / T - sum_c softmax_c w_ci / T.
    gradient = jax.grad(lambda z: contrastive_values(z, weights, jnp.array([0]), 1.0).sum())(z)
    p = np.exp([1.5, 0.0, -1.0]) / np.exp([1.5, 0.0, -1.0]).sum()
    np.testing.assert_allclose(gradient[0], [(1 - p[0]) / 2, (1 - p[0]) / 2, -p[1], -p[2]], rtol=1e-5)
    # A stimulus that drives every cluster alike scores 0; a higher temperature flattens J.
    np.testing.assert_allclose(contrastive_values(jnp.ones((1, 4)), weights, jnp.array([1]), 1.0), [0.0], atol=1e-6)
    assert contrastive_values(z, weights, jnp.array([0]), 4.0)[0] < value[0]


def test_empty_clusters_leave_the_softmax():
    weights = np.zeros((1, 3, 4), np.float32)
    weights[0, :2] = cluster_weights(np.array([0, 0, 1, 1]), 2)
    z = jnp.array([[2.0, 2.0, 0.0, 0.0]])
    value = contrastive_values(z, jnp.asarray(weights), jnp.array([0]), 1.0)
    np.testing.assert_allclose(value, [2.0 - np.log(np.exp(2.0) + 1.0) + np.log(2)], rtol=1e-6)


def test_reassignment_moves_each_neuron_to_the_stimulus_that_drives_it_most():
    z = np.array([[3.0, 0.0, 1.0, -1.0], [1.0, 2.0, 0.5, -2.0], [0.0, 1.0, 4.0, -0.5]])
    np.testing.assert_array_equal(reassign(z), [0, 1, 2, 2])
    np.testing.assert_array_equal(drop_empty(np.array([4, 1, 4, 7])), [1, 0, 1, 2])


def test_pair_discriminability_finds_the_pair_to_merge():
    # Stimuli 0 and 1 drive clusters 0 and 1 alike; stimulus 2 drives only cluster 2.
    cluster = np.array([0, 0, 1, 1, 2, 2])
    z = np.array(
        [[2.0, 2.0, 1.8, 1.8, 0.0, 0.0], [1.6, 1.6, 2.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 3.0, 3.0]]
    )
    d = pair_discriminability(z, cluster)
    np.testing.assert_allclose(d[0, 1], 1 - (1.8 / 2.0 + 1.6 / 2.0) / 2)
    np.testing.assert_allclose(d[0, 2], 1.0)
    assert d[0, 1] == d[1, 0] and np.isinf(d[0, 0])
    assert np.unravel_index(np.argmin(d), d.shape) in ((0, 1), (1, 0))


def test_kmeans_separates_well_separated_groups():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(c, 0.1, (10, 2)) for c in (0.0, 5.0, 10.0)])
    labels = kmeans(features, 3, seed=1)
    assert adjusted_rand_index(labels, np.repeat([0, 1, 2], 10)) == 1.0


def test_adjusted_rand_index_against_a_hand_computed_value():
    # Contingency table [[2, 1, 0], [0, 1, 2]]: sum C(n_ij, 2) = 2, rows 3 + 3 = 6, columns 1 + 1 + 1 = 3,
    # C(6, 2) = 15: expected 6 * 3 / 15 = 1.2, ARI = (2 - 1.2) / (4.5 - 1.2) = 0.8 / 3.3.
    a = [0, 0, 0, 1, 1, 1]
    b = [0, 0, 1, 1, 2, 2]
    assert adjusted_rand_index(a, b) == pytest.approx(0.8 / 3.3)
    assert adjusted_rand_index(b, a) == pytest.approx(0.8 / 3.3)
    assert adjusted_rand_index(["x", "x", "y"], [5, 5, 2]) == 1.0  # labels need not match
    assert adjusted_rand_index([0, 0, 0, 0], [0, 0, 0, 0]) == 1.0
    assert adjusted_rand_index([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(-0.5)


def test_merging_runs_until_every_pair_is_discriminated():
    """On the simulated animal's own neurons (the ground-truth adapter), four clusters end as one
    when no pair counts as discriminated, one optimize-and-reassign round after each merge."""
    ds = simulate(8, 30, 2, 2, size=(18, 32), seed=3, types=2)
    params = ground_truth(ds)
    natural = mean_response(params, ds["images"].values.astype(np.float32))
    model = GroundTruth(params, 128.0, 64.0)
    result = most_discriminative_stimuli(
        model, 0, np.arange(8), MEIConfig(steps=3, seeds=1), np.array([0, 1, 2, 3] * 2),
        natural.mean(0), natural.std(0), image_shape=(18, 32), pixel_range=(-2.0, 127 / 64),
        max_iter=1, merge_threshold=np.inf, progress=False,
    )  # fmt: skip
    assert result.images.shape == (1, 18, 32) and result.responses.shape == (1, 8)
    np.testing.assert_array_equal(result.cluster, np.zeros(8))
    assert 1 <= len(result.merges) <= 3 and result.iterations == len(result.merges) + 1
    np.testing.assert_array_equal(result.initial_cluster, [0, 1, 2, 3] * 2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mds_run")
    write_session(simulate(8, 40, 2, 2, size=(18, 32), seed=3, types=2), root / "sim.zarr")
    data = load_session(root / "sim.zarr", DataConfig())
    config = RunConfig(model=ModelConfig(core_layers=2, core_channels=4, input_kernel=5, hidden_kernel=3))
    model = Twin(config.model, 1, (18, 32), readout_specs([data]), rngs=nnx.Rngs(0))
    model.eval()
    save_run_model(root / "run", model, config, [data])
    (root / "mds.toml").write_text("[mei]\nsteps = 5\n")
    return root


def test_mds_command_writes_store_grid_and_summary(run_dir, capsys):
    out = run_dir / "mds.zarr"
    argv = ["mds", str(run_dir / "run"), "--clusters", "3", "--seeds", "2", "--max-iter", "1",
            "--config", str(run_dir / "mds.toml"), "--out", str(out), "--json"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads((run_dir / "mds.json").read_text())
    ds = open_dataset(out)
    k = summary["clusters"]
    assert 1 <= k <= 3 and summary["initial_clusters"] == 3
    assert ds["images"].shape == (k, 18, 32) and ds["responses"].shape == (k, 8)
    cluster = ds["cluster"].values
    assert sorted(set(cluster)) == list(range(k)) and summary["cluster_sizes"] == np.bincount(cluster).tolist()
    # Every neuron sits in the cluster whose stimulus drives it most.
    np.testing.assert_array_equal(cluster, ds["responses"].values.argmax(0))
    assert [n["cluster"] for n in summary["neurons"]] == cluster.tolist()
    assert summary["ari_true_type"] == pytest.approx(adjusted_rand_index(cluster, ds["true_type"].values))
    assert "ari_true_kind" in summary and summary["merges"] == []
    assert len(summary["spectral_kl"]) == k and min(summary["spectral_kl"]) >= 0
    assert (run_dir / "mds.png").stat().st_size > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--clusters", "1"], "--clusters '1': give auto or a number of clusters of at least 2"),
        (["--clusters", "many"], "--clusters 'many'"),
        (["--clusters", "9"], "--clusters 9: only 8 neurons are clustered; give at most 8"),
        (["--neurons", "0:99"], "--neurons '0:99'"),
        (["--session", "2"], "--session 2"),
        (["--recipe", "nope"], "unknown recipe"),
    ],
)
def test_bad_arguments_exit_2_without_output(run_dir, capsys, extra, message):
    out = run_dir / "bad.zarr"
    assert main(["mds", str(run_dir / "run"), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and not (run_dir / "bad.png").exists() and not (run_dir / "bad.json").exists()


def test_an_out_path_without_zarr_suffix_exits_2(run_dir, capsys):
    assert main(["mds", str(run_dir / "run"), "--out", str(run_dir / "mds.npz")]) == 2
    assert "--out" in capsys.readouterr().err and not (run_dir / "mds.npz").exists()
