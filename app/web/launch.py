"""Launching the app: theme, the page's stylesheet and script (app/web/static/), sign-in."""

from __future__ import annotations

import hmac
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import gradio as gr
from starlette.routing import Mount

from app.api import Folio
from app.web.engine import Engine
from app.web.layout import build_ui
from app.web.openai_api import ApiAccess, build_api
from pipeline.library.owners import check_login, list_users

STATIC = Path(__file__).with_name("static")

THEME = gr.themes.Soft(
    primary_hue="indigo",
    neutral_hue="slate",
    font=["Inter", "ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
)


def page_css() -> str:
    """The page's stylesheet (app/web/static/folio.css)."""
    return (STATIC / "folio.css").read_text(encoding="utf-8")


def page_head() -> str:
    """The page's script (app/web/static/folio.js) as a <script> element for the page head."""
    return f"<script>\n{(STATIC / 'folio.js').read_text(encoding='utf-8')}</script>\n"


def serve(
    folio: Folio,
    *,
    host: str,
    port: int,
    auth: tuple[str, str] | None = None,
    accounts: bool = False,
    on_ready: Callable[[str], None] | None = None,
    api: ApiAccess | None = None,
    api_only: bool = False,
) -> None:
    """Launch the app and block until it is stopped (Ctrl-C).

    Args:
        folio: The library to serve.
        host: Address to listen on.
        port: Port to listen on.
        auth: (user, password) of the single login that sees the local user's documents.
        accounts: Sign in with the library's accounts (`folio user add`), each seeing only its
            own documents (and `auth`, if given, as the local user).
        on_ready: Told the app's address once it is listening.
        api: Who may use the OpenAI-compatible endpoint (app/web/openai_api.py), mounted at
            `/v1` beside the page; None: no endpoint.
        api_only: Serve the endpoint alone (needs `api`), without the web page.

    Raises:
        ValueError: `auth`'s user name is also an account's, or `api_only` without `api`.
        OSError: The address cannot be listened on.
    """
    limits = folio.settings.serve
    if accounts and auth is not None and auth[0] in {u.name for u in list_users(folio.library)}:
        raise ValueError(
            f"--auth user {auth[0]!r} is also an account: give the local login another name"
        )
    engine = Engine(folio, accounts=accounts, local_login=auth[0] if auth else None)
    routes = []
    if api is not None:
        # NOTE: a route given to FastAPI's constructor comes before Gradio's own, so /v1 is ours.
        endpoint = build_api(engine, api, concurrent=limits.concurrent_questions)
        routes.append(Mount("/v1", app=endpoint))
    elif api_only:
        raise ValueError("api_only needs api (who may use the endpoint)")
    if api_only:
        _serve_api_only(engine, routes, host=host, port=port, on_ready=on_ready)
        return
    demo = build_ui(folio, engine, accounts=accounts, local_login=auth[0] if auth else None)
    demo.queue(default_concurrency_limit=4)
    if limits.preload:
        engine.preload()
    demo.launch(
        server_name=host,
        server_port=port,
        auth=_login_check(folio, auth) if accounts else auth,
        auth_message=(
            "Folio: sign in with your account."
            if accounts
            else "Folio: sign in with the user and password given to `folio serve`."
        ),
        max_file_size=f"{limits.max_upload_mb:g}mb",
        theme=THEME,
        css=page_css(),
        head=page_head(),
        ssr_mode=False,
        show_error=False,
        quiet=True,
        footer_links=["api", "settings"],
        prevent_thread_lock=True,
        # The answers' figure and page crops live in the library, which may be anywhere, not
        # only under the working directory or the temp folder that Gradio serves by default.
        allowed_paths=[str(folio.library.assets_dir)],
        app_kwargs={"routes": routes},
    )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if on_ready is not None:
        on_ready(url)
    try:
        demo.block_thread()
    finally:
        demo.close()


def _serve_api_only(
    engine: Engine,
    routes: list[Mount],
    *,
    host: str,
    port: int,
    on_ready: Callable[[str], None] | None,
) -> None:
    """The endpoint alone on uvicorn, until Ctrl-C."""
    import uvicorn
    from fastapi import FastAPI

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))  # NOTE: here, so a busy port is an OSError the CLI reports in one line
    app = FastAPI(routes=routes, docs_url=None, redoc_url=None, openapi_url=None)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    if engine.folio.settings.serve.preload:
        engine.preload()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        thread.join(0.05)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if on_ready is not None and server.started:
        on_ready(url)
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


def _login_check(folio: Folio, local: tuple[str, str] | None) -> Callable[[str, str], bool]:
    """Gradio's login check: the library's accounts, and the single local login if given."""

    def check(name: str, password: str) -> bool:
        if local is not None and name == local[0]:
            return hmac.compare_digest(password.encode(), local[1].encode())
        return check_login(folio.library, name, password)

    return check
