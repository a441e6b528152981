"""Folio's front ends: the Python API, the command line and the web app."""

import os

# NOTE: set before transformers is imported: models come from local paths only (nothing is
# downloaded at run time), and loading them should not draw progress bars over ours.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from app.api import Folio
from app.settings import Settings
from pipeline.answering.types import Answer, Citation

__all__ = ["Answer", "Citation", "Folio", "Settings"]
