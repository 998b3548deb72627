"""Contract checks for tiered's pluggable parts (as scikit-learn's ``check_estimator``).

- :func:`check_model` runs every check that applies to a model (chosen from its
  :class:`~tiered.core.model.ModelTags`) against a :class:`ModelCase`;
- :func:`check_rule_accept_mask` checks a deferral rule.

The project's own test suite runs them over every registered model kind and rule kind;
a model written elsewhere can run them in its own tests::

    from tiered.checks import ModelCase, check_model
    check_model(ModelCase("mine", factory=lambda: MyModel(seed=0)))
"""

from tiered.checks.data import TOY_CLASSES, toy_items
from tiered.checks.models import CHECKS, Check, ModelCase, check_model, model_checks
from tiered.checks.rules import EXAMPLE_RULES, check_rule_accept_mask, sample_answers

__all__ = [
    "CHECKS",
    "EXAMPLE_RULES",
    "TOY_CLASSES",
    "Check",
    "ModelCase",
    "check_model",
    "check_rule_accept_mask",
    "model_checks",
    "sample_answers",
    "toy_items",
]
