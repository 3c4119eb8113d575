"""The logic behind the HTTP API (``services/bento/service.py`` is only its BentoML wiring), one module per job.

* :mod:`~ukr_hw.serving.process`: what each service process does once (pixel-bomb guard, fail-fast MLflow client,
  warm-up, freezing the heap out of the garbage collector's view);
* :mod:`~ukr_hw.serving.telemetry`: the ``ukr_hw_*`` metrics exported at ``/metrics`` and the ``ukr_hw.serve`` log;
* :mod:`~ukr_hw.serving.schemas`: what goes in and out (the form's ``mode`` field, the result models) and the
  completion of BentoML's OpenAPI document;
* :mod:`~ukr_hw.serving.inputs`: checking an upload and turning it into one model input row, or a :class:`BadInput`;
* :mod:`~ukr_hw.serving.upload_guard`: the ASGI middleware that refuses bad requests before BentoML parses them;
* :mod:`~ukr_hw.serving.batching`: the :class:`Coalescer`, one model call per API worker for all queued requests;
* :mod:`~ukr_hw.serving.model`: the :class:`ModelHolder`, the served Predictor that follows the registry's champion.

``SETTINGS`` is the one settings object these modules (and the service) read, made once per process at import.
"""

from ukr_hw.settings import get_settings

SETTINGS = get_settings()
