"""Contract checks for tiered's pluggable parts (as scikit-learn's ``check_estimator``).

- :func:`check_model` runs every check that applies to a model (chosen from its
  :class:`~tiered.core.model.ModelTags`) against a :class:`ModelCase`; a model class
  says how to build its case with ``contract_case()`` (:func:`contract_case` finds it);
- :func:`check_rule` runs the rule checks on a deferral rule; every rule class carries
  examples of itself (``DeferralRule.examples()``, found by :func:`rule_examples`).

The project's own test suite runs them over every registered model kind and rule kind
(tiered's and installed plugins'); a model or rule written elsewhere can run them in its
own tests::

    from tiered.checks import ModelCase, check_model
    check_model(ModelCase("mine", factory=lambda: MyModel(seed=0)))
"""

from tiered.checks.data import TOY_CLASSES, toy_items
from tiered.checks.models import (
    CHECKS,
    Check,
    HasContractCase,
    ModelCase,
    check_model,
    contract_case,
    model_checks,
    model_class,
)
from tiered.checks.rules import (
    RULE_CHECKS,
    check_rule,
    check_rule_accept_mask,
    rule_examples,
    sample_answers,
    sample_items,
)

__all__ = [
    "CHECKS",
    "RULE_CHECKS",
    "TOY_CLASSES",
    "Check",
    "HasContractCase",
    "ModelCase",
    "check_model",
    "check_rule",
    "check_rule_accept_mask",
    "contract_case",
    "model_checks",
    "model_class",
    "rule_examples",
    "sample_answers",
    "sample_items",
    "toy_items",
]
