"""Online cascade learning: cheap stages learn from the expert over a stream.

```python
from tiered.online import OnlineCascade, OnlineConfig

oc = OnlineCascade(
    cheap=[Stage("ngram", ngram_model)],
    expert=Stage("expert", llm, cost=FixedCost(usd_per_call=0.002)),
    config=OnlineConfig(target_agreement=0.96),
)
for batch in stream:
    decisions = oc.process(batch)        # learns as it goes; one expert call per batch
print(oc.stats())                        # expert share, audited agreement ± CI, USD
```
"""

from tiered.online.audit import AgreementEstimate, AgreementMeter, estimate_agreement
from tiered.online.cascade import OnlineCascade
from tiered.online.config import OnlineConfig
from tiered.online.controller import ThresholdController
from tiered.online.decisions import OnlineDecision, OnlineStats
from tiered.online.head import AccuracyTracker, DeferralHead, head_features
from tiered.online.intervals import binomial_interval, clopper_pearson_interval, wilson_interval
from tiered.online.label_buffer import LabelBuffer

__all__ = [
    "AccuracyTracker",
    "AgreementEstimate",
    "AgreementMeter",
    "DeferralHead",
    "LabelBuffer",
    "OnlineCascade",
    "OnlineConfig",
    "OnlineDecision",
    "OnlineStats",
    "ThresholdController",
    "binomial_interval",
    "clopper_pearson_interval",
    "estimate_agreement",
    "head_features",
    "wilson_interval",
]
