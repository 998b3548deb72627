"""Config files: the run config (:mod:`tiered.config.run`) and YAML loading.

The YAML loader itself lives in :mod:`tiered.core.yaml_file` (cascade files need it, and
core imports nothing above it); it is re-exported here for the config modules.
"""

from tiered.core.yaml_file import (
    load_yaml,
    load_yaml_model,
    validate_yaml,
    validation_error_to_config_error,
)

__all__ = ["load_yaml", "load_yaml_model", "validate_yaml", "validation_error_to_config_error"]
