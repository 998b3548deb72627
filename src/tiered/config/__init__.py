"""Loading YAML config files into pydantic models with errors that name file, line and field."""

from tiered.config.yaml_file import load_yaml, load_yaml_model, validation_error_to_config_error

__all__ = ["load_yaml", "load_yaml_model", "validation_error_to_config_error"]
