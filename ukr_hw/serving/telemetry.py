"""What the service reports about itself: its ``ukr_hw_*`` metrics and its log.

The metrics are BentoML's (Prometheus underneath), so ``/metrics`` exports them next to BentoML's own request
metrics, summed over the service's processes: whether the last registry check succeeded, failed checks and model
swaps, which model version is served, whether it is the BentoML store's fallback, and how many requests were refused
as bad input (by reason). The log ``ukr_hw.serve`` gets its own stderr handler, because BentoML configures only its
own loggers: each refused request is one INFO line (no traceback) and each reload problem a WARNING.
"""

from __future__ import annotations

import logging

import bentoml

log = logging.getLogger("ukr_hw.serve")
if not log.handlers:  # BentoML configures only its own loggers: client errors (INFO) and reload warnings to stderr
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False

REGISTRY_REACHABLE = bentoml.metrics.Gauge(
    name="ukr_hw_registry_reachable",
    documentation="1 if the last registry check succeeded, else 0",
    multiprocess_mode="livemax",
)
RELOAD_FAILURES = bentoml.metrics.Counter(
    name="ukr_hw_reload_failures", documentation="Failed checks or loads of the registry's champion"
)
RELOADS = bentoml.metrics.Counter(name="ukr_hw_reloads", documentation="Model swaps after the champion moved")
MODEL_VERSION = bentoml.metrics.Gauge(
    name="ukr_hw_model_version",
    documentation="1 for the model version being served (label version), 0 for earlier ones",
    labelnames=["version"],
    multiprocess_mode="livemax",
)
MODEL_STORE_FALLBACK = bentoml.metrics.Gauge(
    name="ukr_hw_model_store_fallback",
    documentation="1 while the model served is the BentoML store's newest, taken because the registry was "
    "unreachable when the API started; 0 once the registry confirmed or replaced it",
    multiprocess_mode="livemax",
)
REJECTED = bentoml.metrics.Counter(
    name="ukr_hw_rejected_requests", documentation="Requests refused as bad input", labelnames=["reason"]
)
