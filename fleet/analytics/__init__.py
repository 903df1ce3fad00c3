"""Fleet analytics (issue 14): one engine for online quality, used by the console, alerts and
rollout gates. Pure parts (no database): quality.OnlineQuality (merge telemetry, accuracy/F1/
error per slice with Wilson intervals, label-free CBPE estimate), verdicts (concept drift, slice
gap, low-confidence spike), stats. Database parts: engine (windows -> quality per version,
cohort, device class), join (prediction records + labels posted in bulk by request id).
"""

from fleet.analytics.quality import OnlineQuality, merge_payloads
from fleet.analytics.stats import wilson
from fleet.analytics.verdicts import (
    FAIL,
    PASS,
    WAIT,
    Verdict,
    build_accuracy,
    build_slice_gap,
    concept_drift,
    low_confidence_spike,
    slice_gap,
)

__all__ = ["FAIL", "PASS", "WAIT", "OnlineQuality", "Verdict", "build_accuracy", "build_slice_gap",
           "concept_drift", "low_confidence_spike", "merge_payloads", "slice_gap", "wilson"]
