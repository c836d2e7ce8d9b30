"""thresholds.toml: pydantic models, loading with environment overrides, compiling to rules."""

from spek_sentinel.config.loader import Config, load_config

__all__ = ["Config", "load_config"]
