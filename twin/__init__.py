"""twin: digital twins of visual cortex and their most exciting inputs, in JAX."""

from twin.config import DataConfig, FitConfig, MEIConfig, ModelConfig, RunConfig, load_config
from twin.errors import ConfigError, RunError, SessionError, StimulusError, TwinError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataConfig",
    "FitConfig",
    "MEIConfig",
    "ModelConfig",
    "RunConfig",
    "RunError",
    "SessionError",
    "StimulusError",
    "TwinError",
    "load_config",
]
