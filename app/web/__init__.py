"""The web app (`folio serve`); see app/web/layout.py."""

from app.web.layout import *  # noqa: F403
from app.web.layout import __all__  # noqa: F401
