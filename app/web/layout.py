"""The page: Gradio Blocks with the library, the chat, and the evidence and transparency tabs,
wired to the handlers of app/web/handlers.py.

`build_ui(folio)` builds the Blocks; only `serve` (app/web/serve.py) launches them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import gradio as gr

from app.api import Folio
from app.web import handlers
from app.web.engine import Engine
from app.web.handlers import CONFIRM_DELETE, CONFIRM_REMOVE_FAILED, PAGE_HINT

CONTEXT_CHOICES = [
    ("Retrieved passages", "retrieved"),
    ("First pages (no retrieval)", "first-pages"),
    ("None (the model alone)", "none"),
]
MODE_CHOICES = [
    ("Configured default", "default"),
    ("BM25", "bm25"),
    ("Dense (MiniLM)", "dense"),
    ("Hybrid", "hybrid"),
    ("Hybrid + feedback (PRF)", "hybrid-prf"),
    ("SPLADE", "splade"),
]


def bind(handler: Callable[..., Any], engine: Engine) -> Callable[..., Any]:
    """`handler` with its first argument (the engine) given, as Gradio expects an event
    function: its signature without that argument (Gradio reads it to pass the request), and a
    generator function when the handler is one (Gradio then streams its updates)."""
    if inspect.isgeneratorfunction(handler):

        def call(*args: Any) -> Any:
            yield from handler(engine, *args)
    else:

        def call(*args: Any) -> Any:
            return handler(engine, *args)

    functools.update_wrapper(call, handler)
    signature = inspect.signature(handler)
    call.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    return call


def build_ui(
    folio: Folio,
    engine: Engine | None = None,
    *,
    accounts: bool = False,
    local_login: str | None = None,
) -> gr.Blocks:
    """The Folio web app as Gradio Blocks (not launched; `serve` launches it).

    Args:
        folio: The library the app serves.
        engine: Background model loading and questions; a new idle one when None.
        accounts: Logins are the library's accounts (`folio user add`): each session sees,
            adds, asks about and deletes only its user's documents.
        local_login: The name of the single `serve.auth` login, which sees the local user's
            documents (as without a login).

    Raises:
        ValueError: `engine` was made with other `accounts` or `local_login`.
    """
    engine = engine or Engine(folio, accounts=accounts, local_login=local_login)
    if (engine.accounts, engine.local_login) != (accounts, local_login):
        # NOTE: the engine decides whose documents a request sees; the two must agree.
        raise ValueError("the engine serves other logins than build_ui was given")
    limits = folio.settings.serve
    answer_cfg = folio.settings.answer

    with gr.Blocks(title="Folio", analytics_enabled=False, fill_width=True) as demo:
        answers = gr.State([])  # list[Answer | None], one per turn of this browser's conversation
        view = gr.State(None)  # the page shown (see app/web/handlers.py)
        uploads = gr.State([])  # list[UploadRow] of the last upload
        # Set by the page's confirm dialogs before a deletion runs (True: the user said yes).
        confirmed = gr.Checkbox(False, visible="hidden", elem_id="folio-confirmed")

        gr.HTML(
            '<div class="folio-header"><span class="folio-logo">Folio</span>'
            '<span class="folio-tagline">Ask questions about your PDFs; every answer cites '
            "the page and the region on the page.</span></div>"
        )
        with gr.Row(equal_height=False):
            # ---------------------------------------------------------------- library
            with gr.Column(scale=3, min_width=280, elem_classes="folio-panel"):
                gr.Markdown("### Library")
                upload = gr.File(
                    label="Add PDFs",
                    file_count="multiple",
                    file_types=[".pdf"],
                    height=120,
                    elem_id="folio-upload",
                )
                gr.Markdown(
                    f"Drop one or more PDFs (up to {limits.max_upload_mb:g} MB and "
                    f"{limits.max_upload_pages} pages each); each is parsed and indexed once.",
                    elem_classes="folio-hint",
                )
                status_note = gr.HTML("", elem_id="folio-status", padding=False)
                status_timer = gr.Timer(1.0, active=False)
                progress = gr.HTML("", elem_id="folio-progress", padding=False)
                doc_table = gr.HTML("", elem_id="folio-documents")
                remove_failed = gr.Button(
                    "Remove failed uploads",
                    variant="stop",
                    size="sm",
                    visible=False,
                    elem_id="folio-remove-failed",
                )
                ask_about = gr.CheckboxGroup(
                    label="Ask about",
                    info="None checked: the whole library.",
                    choices=[],
                    elem_id="folio-ask-about",
                )
                with gr.Accordion("Delete a document", open=False):
                    to_delete = gr.Dropdown(
                        label="Document", choices=[], value=None, elem_id="folio-delete-doc"
                    )
                    delete = gr.Button(
                        "Delete from the library", variant="stop", size="sm", elem_id="folio-delete"
                    )
                delete_note = gr.Markdown("", elem_id="folio-delete-note")

            # ------------------------------------------------------------------- chat
            with gr.Column(scale=5, min_width=360, elem_classes="folio-panel"):
                chatbot = gr.Chatbot(
                    label="Conversation",
                    height=560,
                    elem_id="folio-chat",
                    elem_classes="folio-chat",
                    placeholder="Ask a question about the documents in your library. Answers "
                    "stream in, with chips such as **[p. 5]** that open the cited page.",
                    buttons=["copy"],
                    feedback_options=None,
                    group_consecutive_messages=False,
                )
                with gr.Row(equal_height=True):
                    message = gr.Textbox(
                        placeholder="Ask a question…",
                        show_label=False,
                        lines=1,
                        max_lines=4,
                        scale=6,
                        autofocus=True,
                        elem_id="folio-question",
                    )
                    send = gr.Button(
                        "Ask", variant="primary", scale=1, min_width=70, elem_id="folio-ask"
                    )
                    stop = gr.Button(
                        "Stop", variant="secondary", scale=1, min_width=70, elem_id="folio-stop"
                    )
                clear = gr.Button("New conversation", size="sm", variant="secondary")
                cite_ref = gr.Textbox(visible="hidden", elem_id="folio-cite-ref")

            # ------------------------------------------------ evidence and transparency
            with (
                gr.Column(scale=5, min_width=360, elem_classes="folio-panel"),
                gr.Tabs(selected="evidence") as tabs,
            ):
                with gr.Tab("Evidence", id="evidence"):
                    page_info = gr.Markdown(PAGE_HINT, elem_id="folio-page-info")
                    page_image = gr.Image(
                        label="Cited page",
                        show_label=False,
                        type="pil",
                        interactive=False,
                        height=760,
                        elem_id="folio-page",
                        buttons=["fullscreen", "download"],
                    )
                    with gr.Row():
                        prev_page = gr.Button("◀ Previous page", size="sm", elem_id="folio-prev")
                        next_page = gr.Button("Next page ▶", size="sm", elem_id="folio-next")
                    figures = gr.Gallery(
                        label="Figures and tables the model read",
                        columns=3,
                        height=200,
                        visible=False,
                        elem_id="folio-figures",
                    )
                with gr.Tab("Transparency", id="transparency"):
                    with gr.Accordion("Stage switches for the next question", open=False):
                        context = gr.Radio(
                            CONTEXT_CHOICES,
                            value=str(answer_cfg.context),
                            label="Evidence",
                        )
                        use_sampler = gr.Checkbox(
                            value=answer_cfg.use_sampler,
                            label="WuKong sampler (off: retrieved chunks in rank order)",
                        )
                        use_urag = gr.Checkbox(
                            value=answer_cfg.use_urag,
                            label="URaG (the model's first layers choose the evidence its "
                            "deeper layers read)",
                        )
                        use_refrag = gr.Checkbox(
                            value=answer_cfg.use_refrag,
                            label="REFRAG (evidence chunks read as one vector each, but the most "
                            "question-like; an alternative to URaG)",
                        )
                        use_answerability = gr.Checkbox(
                            value=answer_cfg.answerability,
                            label="Answerability check (the model says whether the evidence "
                            "states its answer; 'Not answerable' when not)",
                        )
                        use_typed = gr.Checkbox(
                            value=answer_cfg.typed_answers,
                            label="Typed answers (ask for the answer type the question expects: "
                            "a number, a list, yes/no, a phrase)",
                        )
                        use_compute = gr.Checkbox(
                            value=answer_cfg.compute,
                            label="Computed answers (for arithmetic questions the model writes an "
                            "expression over numbers in the evidence, evaluated safely)",
                        )
                        mode = gr.Dropdown(
                            MODE_CHOICES,
                            value=str(answer_cfg.retrieval_mode or "default"),
                            label="Retrieval mode",
                        )
                        with gr.Row():
                            k = gr.Slider(
                                1, 100, value=answer_cfg.k, step=1, label="Chunks retrieved (k)"
                            )
                            budget = gr.Slider(
                                0,
                                4000,
                                value=answer_cfg.token_budget,
                                step=50,
                                label="Evidence token budget",
                            )
                    summary = gr.Markdown(
                        "Ask a question to see what each stage kept and what it cost.",
                        elem_id="folio-summary",
                    )
                    tables = gr.HTML("", elem_id="folio-transparency")

        # ---------------------------------------------------------------- wiring
        library = [doc_table, ask_about, to_delete, remove_failed]
        viewer = [page_image, page_info, figures, view]
        chip_outputs = [*viewer, tabs]
        deleted = [delete_note, *library, progress, uploads, *viewer]

        upload.upload(
            bind(handlers.on_upload, engine),
            [upload, ask_about],
            [progress, *library, upload, uploads],
            concurrency_id="folio-library",
            concurrency_limit=1,
            show_progress="hidden",
        )
        # The confirm dialog runs in the browser and sets `confirmed`; the deletion follows.
        delete.click(
            None, [to_delete], [confirmed], js=f"(doc) => !!doc && confirm({CONFIRM_DELETE!r})"
        ).then(
            bind(handlers.on_delete, engine),
            [to_delete, confirmed, ask_about, uploads, view, answers],
            deleted,
            concurrency_id="folio-library",
            concurrency_limit=1,
        )
        remove_failed.click(
            None, None, [confirmed], js=f"() => confirm({CONFIRM_REMOVE_FAILED!r})"
        ).then(
            bind(handlers.on_remove_failed, engine),
            [confirmed, ask_about, uploads, view, answers],
            deleted,
            concurrency_id="folio-library",
            concurrency_limit=1,
        )

        asking = gr.on(
            [message.submit, send.click],
            bind(handlers.on_ask, engine),
            [
                message, chatbot, answers, ask_about, context, use_sampler, mode, k, budget,
                use_urag, use_refrag, use_answerability, use_typed, use_compute,
            ],  # fmt: skip
            [message, chatbot, answers, summary, tables, *chip_outputs, send],
            # NOTE: questions run beside an upload (the library and index are thread-safe);
            # more than a few at once only share the same cores.
            concurrency_id="folio-ask",
            concurrency_limit=limits.concurrent_questions,
            show_progress="hidden",
            trigger_mode="once",
        )
        stop.click(bind(handlers.on_stop, engine), [chatbot, answers], [send], queue=False)
        clear.click(
            handlers.on_clear,
            None,
            [chatbot, answers, view, page_image, page_info, figures, send],
            cancels=[asking],
            queue=False,
        )
        cite_ref.change(
            bind(handlers.on_chip, engine),
            [cite_ref, answers],
            chip_outputs,
            show_progress="hidden",
        )
        turns = ((prev_page, handlers.on_prev_page), (next_page, handlers.on_next_page))
        for button, handler in turns:
            button.click(
                bind(handler, engine),
                [view, answers],
                [page_image, page_info, view],
                show_progress="hidden",
            )
        status_timer.tick(
            bind(handlers.status_update, engine),
            None,
            [status_note, status_timer],
            show_progress="hidden",
        )
        demo.load(
            bind(handlers.on_load, engine), [ask_about], [*library, status_note, status_timer]
        )
    return demo
