"""The web app (`folio serve`): library, streaming chat with citation chips, evidence viewer,
transparency panel.

- chat.py: the conversation (Gradio history as turns, answers with citation chips, `respond`)
- panels.py: what the side panels show (documents, cited pages, transparency tables)
- uploads.py: upload checks and per-file progress
- engine.py: the Folio behind the page (model preloading, questions with live status, deletes)
- handlers.py: the page's event handlers, module-level functions of explicit state
- layout.py: the Gradio Blocks and their wiring (`build_ui`)
- launch.py: launching (`serve`), with static/folio.css and static/folio.js
"""

from app.web.chat import (
    AskOptions,
    Chip,
    Reply,
    Turn,
    chip_ref,
    citation_chips,
    format_answer,
    history_to_turns,
    mark_stopped,
    respond,
)
from app.web.engine import Engine
from app.web.launch import serve
from app.web.layout import build_ui
from app.web.panels import (
    document_choices,
    documents_html,
    evidence_rows,
    retrieved_rows,
    stage_rows,
    summary_markdown,
    transparency_html,
)
from app.web.uploads import UploadRow, apply_progress, check_upload, drain_progress, progress_html

__all__ = [
    "AskOptions",
    "Chip",
    "Engine",
    "Reply",
    "Turn",
    "UploadRow",
    "apply_progress",
    "build_ui",
    "check_upload",
    "chip_ref",
    "citation_chips",
    "document_choices",
    "documents_html",
    "drain_progress",
    "evidence_rows",
    "format_answer",
    "history_to_turns",
    "mark_stopped",
    "progress_html",
    "respond",
    "retrieved_rows",
    "serve",
    "stage_rows",
    "summary_markdown",
    "transparency_html",
]
