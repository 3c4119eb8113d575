""":class:`FeedbackStore`: save, list, read, quarantine and review feedback samples on one backend.

The class is assembled from three halves, one module per concern, so each stays short: :mod:`~.saving` (validate,
write, spool and flush), :mod:`~.reading` (list by date, read, quarantine) and :mod:`~.review` (records with
their source, rejections). This module only wires a backend, the settings and the spool together.
"""

from __future__ import annotations

import threading

from ukr_hw.feedback.review import Review
from ukr_hw.feedback.saving import Saving
from ukr_hw.feedback.storage import Backend, LocalBackend, backend_for
from ukr_hw.settings import Settings, get_settings


class FeedbackStore(Saving, Review):
    """Save, list, read and quarantine feedback samples (see :mod:`ukr_hw.feedback` for the layout)."""

    def __init__(self, backend: Backend, settings: Settings | None = None, spool: LocalBackend | None = None) -> None:
        self.settings = settings or get_settings()
        self.backend = backend
        #: Only remote backends spool; a local folder that fails to write is a real error.
        self.spool = spool if spool is not None or isinstance(backend, LocalBackend) else None
        if self.spool is None and not isinstance(backend, LocalBackend):
            self.spool = LocalBackend(self.settings.path(self.settings.feedback_spool_dir))
        self._flush_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> FeedbackStore:
        settings = settings or get_settings()
        return cls(backend_for(settings.feedback_uri, settings), settings)

    @property
    def description(self) -> str:
        return self.backend.description
