"""The main job on an embedded default: ``tiered demo`` / ``make demo``."""
