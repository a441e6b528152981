"""Folio's front ends: the Python API, the command line and the web app."""

from app.api import Folio
from app.settings import Settings
from pipeline.answer import Answer, Citation

__all__ = ["Answer", "Citation", "Folio", "Settings"]
