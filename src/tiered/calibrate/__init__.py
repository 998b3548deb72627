"""Offline calibration: search cascades on a replay log, keep the Pareto frontier, choose.

>>> from tiered.calibrate import calibrate          # doctest: +SKIP
>>> cal = calibrate(log, min_quality="top")          # doctest: +SKIP
>>> cal.save("cascade.yaml")                         # doctest: +SKIP

New kinds of deferral rule join the search as :class:`RuleFamily` subclasses (pass a
factory as ``calibrate(..., families=...)``).
"""

from tiered.calibrate.calibrator import (
    Calibration,
    CVReport,
    FrontierPoint,
    calibrate,
    choose,
)
from tiered.calibrate.certificate import Certificate
from tiered.calibrate.certify import certify
from tiered.calibrate.certify_labels import CertifiedLabels, certify_labels
from tiered.calibrate.evaluate import Outcome, StageRef, evaluate_spec, evaluate_stages
from tiered.calibrate.families import (
    AgreementFamily,
    Candidate,
    CombinedFamily,
    RuleFamily,
    ThresholdFamily,
    VoteFamily,
    WindowFamily,
    default_families,
)
from tiered.calibrate.objective import Objective, QualityTarget, parse_budget, parse_min_quality
from tiered.calibrate.search import Config, Point, SearchResult, SearchSettings, pareto, search
from tiered.replay.view import LogView

__all__ = [
    "AgreementFamily",
    "CVReport",
    "Calibration",
    "Candidate",
    "Certificate",
    "CertifiedLabels",
    "CombinedFamily",
    "Config",
    "FrontierPoint",
    "LogView",
    "Objective",
    "Outcome",
    "Point",
    "QualityTarget",
    "RuleFamily",
    "SearchResult",
    "SearchSettings",
    "StageRef",
    "ThresholdFamily",
    "VoteFamily",
    "WindowFamily",
    "calibrate",
    "certify",
    "certify_labels",
    "choose",
    "default_families",
    "evaluate_spec",
    "evaluate_stages",
    "pareto",
    "parse_budget",
    "parse_min_quality",
    "search",
]
