"""Import a neuralpredictors / sensorium checkpoint into a twin run directory.

The checkpoint is the ``state_dict()`` of a ``FiringRateEncoder`` built as the Sensorium 2022
baseline: ``core.features.layer{l}`` (Stacked2dCore / SE2dCore without SE blocks; first layer a
dense conv, then dense or depth-separable convs, BatchNorm, ELU), ``readout.<data_key>``
(FullGaussian2d, "full" or "isotropic", optionally with a grid-mean predictor) and optionally
``shifter.<data_key>`` (MLPShifter, 3 layers). Every tensor is mapped (layouts in
twin.models.cores / readouts / twin); a key that maps nowhere, or a parameter with no key, is an
error that lists them. Settings a state dict cannot hold (input padding, BatchNorm momentum,
regularizer weights) keep the ModelConfig defaults, which are the Sensorium values.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
from flax import nnx

from twin.config import DataConfig, ModelConfig, RunConfig
from twin.errors import ConfigError, RunError
from twin.models.twin import ReadoutSpec, Twin

# Buffers that carry no learned state: the Laplace filter of the core regularizer and
# BatchNorm's step counter (twin's BatchNorm momentum is fixed, not cumulative).
IGNORED = re.compile(r"core\._input_weights_regularizer\..*|.*\.num_batches_tracked")


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch state dict file as numpy arrays (torch.load, weights only)."""
    try:
        import torch
    except ImportError:
        raise ConfigError(
            f"{path}: reading PyTorch checkpoints needs torch; install the extra: pip install 'twin[torch]'"
        ) from None
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint file not found; pass the .pth state dict of the model")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for unreadable or unsafe files
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{path}: not a loadable weights-only state dict ({message}); save model.state_dict()") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: expected a state dict of tensors; save model.state_dict(), not the model")
    return {key: value.detach().cpu().numpy() for key, value in state.items()}


def data_keys(state: dict[str, np.ndarray]) -> list[str]:
    """Session names (readout data keys) in the order of the state dict."""
    keys = []
    for key in state:
        if key.startswith("readout."):
            name = key.split(".")[1]
            if name not in keys:
                keys.append(name)
    return keys


def infer_config(state: dict[str, np.ndarray], source: str) -> tuple[ModelConfig, int]:
    """The ModelConfig and input channels that a neuralpredictors state dict describes."""
    first = state.get("core.features.layer0.conv.weight")
    if first is None:
        raise ConfigError(f"{source}: no core.features.layer0.conv.weight; not a neuralpredictors Stacked2dCore model")
    channels, in_channels, input_kernel, _ = first.shape
    layers = len({m.group(1) for m in map(re.compile(r"core\.features\.layer(\d+)\.").match, state) if m})
    depth_separable = "core.features.layer1.ds_conv.spatial_conv.weight" in state
    if layers > 1:
        hidden = state.get(
            "core.features.layer1.ds_conv.spatial_conv.weight" if depth_separable else "core.features.layer1.conv.weight"
        )
        if hidden is None:
            raise ConfigError(f"{source}: core layer1 has neither ds_conv nor conv weights; unsupported core")
        hidden_kernel = hidden.shape[-1]
    else:
        hidden_kernel = ModelConfig().hidden_kernel
    core_bias = any(re.fullmatch(r"core\.features\.layer[1-9]\d*\.(ds_conv\.\w+|conv)\.bias", key) for key in state)
    keys = data_keys(state)
    if not keys:
        raise ConfigError(f"{source}: no readout.<data_key> tensors; not a FiringRateEncoder state dict")
    readout = f"readout.{keys[0]}"
    if f"{readout}._features" not in state or f"{readout}.sigma" not in state:
        raise ConfigError(f"{source}: {readout} has no _features/sigma; only FullGaussian2d readouts convert")
    stacked = state[f"{readout}._features"].shape[1] // channels
    sigma_shape = state[f"{readout}.sigma"].shape[-2:]
    gauss_types = {(2, 2): "full", (1, 1): "isotropic"}
    if sigma_shape not in gauss_types:
        raise ConfigError(f"{source}: {readout}.sigma has shape {sigma_shape}; only 'full' or 'isotropic' convert")
    grid = f"{readout}.mu_transform.0.weight"
    shifter = f"shifter.{keys[0]}.mlp.0.weight"
    defaults = ModelConfig()
    config = dataclasses.replace(
        defaults,
        core_layers=layers,
        core_channels=int(channels),
        input_kernel=int(input_kernel),
        hidden_kernel=int(hidden_kernel),
        depth_separable=depth_separable,
        core_bias=core_bias,
        stack=tuple(range(-stacked, 0)),
        gauss_type=gauss_types[sigma_shape],
        grid_mean_predictor=grid in state,
        grid_mean_hidden=int(state[grid].shape[0]) if grid in state else defaults.grid_mean_hidden,
        shifter=shifter in state,
        shifter_hidden=int(state[shifter].shape[0]) if shifter in state else defaults.shifter_hidden,
    )
    return config, int(in_channels)


def conv_hwio(w: np.ndarray) -> np.ndarray:
    """torch conv weight (out, in, k, k) -> (k, k, in, out)."""
    return w.transpose(2, 3, 1, 0)


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> nnx.Linear kernel (in, out)."""
    return w.T


def sigma_layout(w: np.ndarray) -> np.ndarray:
    """torch sigma (1, n, 2, 2) -> (n, 2, 2); isotropic (1, n, 1, 1) -> (n, 1)."""
    return w[0] if w.shape[-1] == 2 else w[0, :, 0, :]


def parameter_sources(model: Twin, keys: list[str]) -> list[tuple[nnx.Variable, str, object]]:
    """(twin variable, torch key, layout transform) for every tensor of the model."""
    pairs = []
    for l, layer in enumerate(model.core.layers):
        prefix = f"core.features.layer{l}"
        if l > 0 and hasattr(layer.conv, "spatial"):
            convs = [
                (layer.conv.in_conv, f"{prefix}.ds_conv.in_depth_conv", conv_hwio),
                (layer.conv.spatial, f"{prefix}.ds_conv.spatial_conv", lambda w: w[:, 0].transpose(1, 2, 0)),
                (layer.conv.out_conv, f"{prefix}.ds_conv.out_depth_conv", conv_hwio),
            ]
        else:
            convs = [(layer.conv, f"{prefix}.conv", conv_hwio)]
        for module, name, layout in convs:
            pairs.append((module.kernel, f"{name}.weight", layout))
            if module.bias is not None:
                pairs.append((module.bias, f"{name}.bias", None))
        norm = layer.norm
        for variable, name in ((norm.scale, "weight"), (norm.bias, "bias"), (norm.mean, "running_mean"), (norm.var, "running_var")):
            pairs.append((variable, f"{prefix}.norm.{name}", None))
    for readout, key in zip(model.readouts, keys):
        prefix = f"readout.{key}"
        if readout.grid_predictor is None:
            pairs.append((readout.mu, f"{prefix}._mu", lambda w: w[0, :, 0, :]))
        else:
            pairs.append((readout.source_grid, f"{prefix}.source_grid", None))
            for linear, index in ((readout.grid_predictor.hidden, 0), (readout.grid_predictor.out, 2)):
                pairs.append((linear.kernel, f"{prefix}.mu_transform.{index}.weight", linear_kernel))
                pairs.append((linear.bias, f"{prefix}.mu_transform.{index}.bias", None))
        pairs.append((readout.sigma, f"{prefix}.sigma", sigma_layout))
        pairs.append((readout.features, f"{prefix}._features", lambda w: w[0, :, 0, :].T))
        pairs.append((readout.bias, f"{prefix}.bias", None))
    for shifter, key in zip(model.shifters or [], keys):
        for j, linear in enumerate(shifter.layers):
            pairs.append((linear.kernel, f"shifter.{key}.mlp.{2 * j}.weight", linear_kernel))
            pairs.append((linear.bias, f"shifter.{key}.mlp.{2 * j}.bias", None))
    return pairs


def twin_from_state_dict(
    state: dict[str, np.ndarray],
    image_shape: tuple[int, int],
    n_behavior: int = 0,
    source: str = "<state dict>",
) -> tuple[Twin, ModelConfig, list[str]]:
    """A Twin (eval mode) holding exactly the tensors of a neuralpredictors state dict.

    image_shape: (y, x) of the images the model was trained on; n_behavior: how many of the first
    layer's input channels are behavior channels. Returns the model, its config and the data keys
    (one session per key, in state dict order). Unknown or missing keys raise ConfigError.
    """
    config, in_channels = infer_config(state, source)
    if n_behavior:
        config = dataclasses.replace(config, use_behavior=True)
    keys = data_keys(state)
    specs = []
    for key in keys:
        bias = state.get(f"readout.{key}.bias")
        if bias is None:
            raise ConfigError(f"{source}: missing readout.{key}.bias; the readout must have a bias")
        specs.append(ReadoutSpec(len(bias), bias, state.get(f"readout.{key}.source_grid")))
    model = Twin(config, in_channels - n_behavior, tuple(image_shape), specs, n_behavior, rngs=nnx.Rngs(0))
    pairs = parameter_sources(model, keys)
    used = {key for _, key, _ in pairs}
    missing = sorted(used - set(state))
    unknown = sorted(key for key in state if key not in used and not IGNORED.fullmatch(key))
    if missing or unknown:
        raise ConfigError(
            f"{source}: state dict does not match the Sensorium baseline layout; "
            f"missing keys: {', '.join(missing) or 'none'}; unknown keys: {', '.join(unknown) or 'none'}"
        )
    assigned = {id(variable) for variable, _, _ in pairs}
    unmapped = [
        ".".join(map(str, path))
        for path, node in nnx.iter_graph(model)
        if isinstance(node, (nnx.Param, nnx.BatchStat)) and id(node) not in assigned
    ]
    if unmapped:
        raise ConfigError(f"{source}: the twin has parameters no checkpoint key fills: {', '.join(unmapped)}")
    for variable, key, layout in pairs:
        value = np.asarray(state[key], np.float32)
        value = layout(value) if layout is not None else value
        if value.shape != variable.shape:
            raise ConfigError(f"{source}: {key} maps to shape {value.shape}, the twin expects {variable.shape}")
        variable[...] = value
    model.eval()
    return model, config, keys


def convert_neuralpredictors(
    checkpoint: str | Path, out: str | Path, stores: list[str] | None = None, overwrite: bool = False
) -> Path:
    """Write run directory ``out`` from a neuralpredictors state dict file ``checkpoint``
    (atomically; an existing run is replaced only with ``overwrite``).

    stores: the session stores the model was trained on, one per readout in state dict order;
    they give the image shape, behavior channels, normalization and neuron ids of the run.
    """
    from twin.checkpoint import save_run_model
    from twin.data.loader import load_sessions
    from twin.outputs import check_output, output

    out = check_output(out, overwrite, inputs=[checkpoint, *(stores or [])])
    state = read_state_dict(checkpoint)
    config, in_channels = infer_config(state, str(checkpoint))
    keys = data_keys(state)
    if not stores or len(stores) != len(keys):
        raise ConfigError(
            f"{checkpoint}: {len(keys)} readouts ({', '.join(keys)}) need as many --store arguments"
            f" (got {len(stores or [])}): the session stores the model was trained on, in this order"
        )
    data_config = DataConfig()
    sessions = load_sessions(stores, data_config)
    n_behavior = in_channels - sessions[0].channels
    for session, key in zip(sessions, keys):
        n = len(state[f"readout.{key}.bias"]) if f"readout.{key}.bias" in state else 0
        if session.n_neurons != n:
            raise RunError(f"{session.path}: {session.n_neurons} neurons but readout.{key} has {n}; pass the store it was trained on")
        # Behavior enters as extra image channels only when the first layer has room for them.
        behavior = 0 if session.behavior is None else session.behavior.shape[1]
        if n_behavior < 0 or (n_behavior and behavior != n_behavior):
            raise RunError(
                f"{session.path}: {session.channels} image channels + {behavior} behavior variables, but the"
                f" checkpoint's first layer takes {in_channels} channels; pass the store it was trained on"
            )
        if config.grid_mean_predictor and session.cell_xyz is None:
            raise RunError(f"{session.path}: readout.{key} predicts positions from cell_x/cell_y, which this store lacks")
    model, model_config, _ = twin_from_state_dict(state, sessions[0].image_shape, n_behavior, str(checkpoint))
    with output(out, overwrite) as staged:
        save_run_model(staged, model, RunConfig(data=data_config, model=model_config), sessions)
    return out
