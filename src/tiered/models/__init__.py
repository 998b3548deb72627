"""Concrete models. Importing this package registers every built-in model kind."""

from tiered.models import replay as replay  # registers kind "replay"
