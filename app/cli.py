"""The command line: `folio ingest`, `folio ask`, `folio batch`, `folio docs`, `folio delete`, ...

User errors print one line and exit 1 (never a traceback); Typer's usage errors exit 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from app.api import Folio
from app.cli_eval import eval_app
from app.cli_globals import FolioTyper, GlobalOptions, log_level
from app.cli_users import user_app
from app.settings import is_loopback, parse_auth
from pipeline.config import FigureOcr, OcrMode, ParserKind, TableMode
from pipeline.ingestion.distributed import check_address
from pipeline.ingestion.ingest import IngestResult, count_pages, find_pdfs
from pipeline.ingestion.ingest import Progress as IngestProgress
from pipeline.library.documents import SchemaMismatchError
from pipeline.library.owners import has_accounts, owned_doc_id
from retrieval.config import RetrievalMode

app = FolioTyper(
    name="folio",
    help="Ask questions about long PDFs; answers cite the page and the region on the page.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(eval_app, name="eval")
app.add_typer(user_app, name="user")
console = Console()
err = Console(stderr=True, soft_wrap=True)  # one-line errors must never wrap


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    return typer.Exit(1)


def open_folio(**overrides) -> Folio:
    """The Folio the global options and `overrides` describe; a bad setting exits with one line."""
    if GlobalOptions.library is not None:
        overrides["library"] = GlobalOptions.library
    if GlobalOptions.user is not None:
        overrides["user"] = GlobalOptions.user
    try:
        return Folio(config=GlobalOptions.config, on_status=lambda m: err.print(f"[dim]{m}[/dim]"), **overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _fail(f"invalid setting {where}: {first['msg']}") from None
    except ValueError as exc:
        raise _fail(str(exc)) from None


@app.callback()
def _main() -> None:
    # NOTE: the global options were stored as they were parsed (app.cli_globals).
    logging.basicConfig(level=log_level(GlobalOptions.verbose), format="%(levelname)s %(name)s: %(message)s")


_RayOption = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Run on Ray: a local Ray started for the command, unless --ray-address or "
        "FOLIO_RAY__ADDRESS names a cluster.",
    ),
]
_RayAddressOption = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        metavar="ADDRESS",
        help="The Ray to run on (implies --ray): auto (this machine's cluster), "
        "ray://HOST:10001 or HOST:6379.",
    ),
]


def _ray(ray: bool, address: str | None) -> bool | str:
    """What `Folio.ingest` / `ask_batch` take as `ray=`: False, True, or a checked address."""
    if address is None:
        return ray
    try:
        return check_address(address)
    except ValueError as exc:
        raise _fail(f"--ray-address {exc}") from None


@app.command("ingest")
def ingest_command(
    paths: Annotated[list[Path], typer.Argument(help="PDF files or folders.")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders.")] = False,
    ocr: Annotated[OcrMode | None, typer.Option(help="OCR pages: auto (no text layer), always, never.")] = None,
    parser: Annotated[ParserKind | None, typer.Option(help="fast rules, or the layout model (slow).")] = None,
    figure_ocr: Annotated[
        FigureOcr | None,
        typer.Option("--figure-ocr", help="OCR text inside raster figures and slide regions: rapidocr, tesseract, off."),
    ] = None,
    tables: Annotated[
        TableMode | None,
        typer.Option(help="Table regions as Markdown grids (grid), or parser 1's rows of spans (spans)."),
    ] = None,
    layout_detector: Annotated[
        bool | None,
        typer.Option(
            "--layout-detector/--no-layout-detector",
            help="Find figure and table regions on OCR'd slide and infographic pages.",
        ),
    ] = None,
    reindex: Annotated[bool, typer.Option("--reindex", help="Parse and index again even if unchanged.")] = False,
    password: Annotated[str | None, typer.Option(help="Password for encrypted PDFs.")] = None,
    workers: Annotated[int | None, typer.Option(help="Parser processes.")] = None,
    ray: _RayOption = False,
    ray_address: _RayAddressOption = None,
    ray_workers: Annotated[
        int | None, typer.Option("--ray-workers", min=1, help="Ray actors parsing and embedding (default 2).")
    ] = None,
) -> None:
    """Ingest PDFs into the library (the same bytes are ingested once, unless a parse option
    changes: then stored documents are parsed again).

    With --ray, Ray actors parse (OCR included) and embed the documents; this process stores them.
    """
    chosen = {
        "ocr": ocr, "parser": parser, "tables": tables, "figure_ocr": figure_ocr,
        "layout_detector": layout_detector,
    }  # fmt: skip
    parse = {k: v for k, v in chosen.items() if v is not None}
    overrides = {"parse": parse} if parse else {}
    if workers is not None:
        overrides["ingest"] = {"workers": workers}
    if ray_workers is not None:
        overrides["ray"] = {"ingest_workers": ray_workers}
    use_ray = _ray(ray, ray_address)
    folio = open_folio(**overrides)
    try:
        files = find_pdfs(paths, recursive=recursive)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None
    if not files:
        raise _fail("no PDF files found (give files, or folders holding *.pdf; --recursive for sub-folders)")
    total_pages = count_pages(files)
    columns = _bar_columns()
    results = []
    pages_seen: dict[Path, int] = {}
    with Progress(*columns, console=err, transient=False) as bar:
        docs_task = bar.add_task("documents", total=len(files), rate="")
        pages_task = bar.add_task("pages", total=max(total_pages, 1), rate="")

        def on_progress(event: IngestProgress) -> None:
            if event.kind == "page":
                pages_seen[event.path] = event.pages_done
                task = bar.tasks[pages_task]
                speed = task.speed or 0.0
                bar.update(pages_task, completed=sum(pages_seen.values()), rate=f"{speed:.1f} p/s")
            else:
                result = event.result
                results.append(result)
                if result.status == "unchanged":
                    pages_seen[event.path] = result.pages
                bar.update(pages_task, completed=sum(pages_seen.values()))
                bar.advance(docs_task)
                if result.status == "failed":
                    bar.console.print(f"[red]failed[/red] {result.error}", highlight=False)

        try:
            folio.ingest(files, reindex=reindex, password=password, on_progress=on_progress, ray=use_ray)
        except ConnectionError as exc:
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            raise _fail("interrupted: documents finished so far are stored; run the same command to finish") from None
        finally:
            folio.close()
    added = sum(r.status == "added" for r in results)
    unchanged = sum(r.status == "unchanged" for r in results)
    failed = sum(r.status == "failed" for r in results)
    console.print(f"{added} added, {unchanged} unchanged, {failed} failed")
    if failed:
        raise typer.Exit(1)


@app.command("search")
def search_command(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    doc: Annotated[list[str] | None, typer.Option("--doc", help="Only in this document (id, id prefix or file name); repeatable.")] = None,
    mode: Annotated[RetrievalMode | None, typer.Option(help="Retriever (default: the configured one).")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="How many chunks.")] = 10,
) -> None:
    """Rank the library's chunks for a query, with document, page and score."""
    folio = open_folio()
    try:
        hits = folio.search(query, k=k, mode=mode, doc_ids=doc)
    except (ValueError, LookupError) as exc:
        raise _fail(str(exc)) from None
    finally:
        folio.close()
    if not hits:
        console.print("No matching chunks.")
        return
    table = Table("#", "score", "document", "page", "kind", "text", show_lines=False)
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(hit.text.split())[:160]
        table.add_row(str(rank), f"{hit.score:.3f}", hit.file_name, str(hit.page), hit.kind, snippet)
    console.print(table)


@app.command("docs")
def docs_command() -> None:
    """List the documents of the library."""
    folio = open_folio()
    documents = folio.documents()
    folio.close()
    if not documents:
        console.print("The library is empty: add PDFs with `folio ingest PATH`.")
        return
    table = Table("id", "file", "title", "pages", "chunks", "status")
    for d in documents:
        status = d.status if d.status == "ok" else f"[red]{d.status}[/red]: {d.error}"
        table.add_row(d.doc_id[:12], d.file_name, (d.title or "")[:60], str(d.pages), str(d.chunks), status)
    console.print(table)


@app.command("delete")
def delete_command(doc: Annotated[str, typer.Argument(help="Document id or unique id prefix.")]) -> None:
    """Delete a document and everything derived from it."""
    folio = open_folio()
    try:
        removed = folio.delete(doc)
    except LookupError as exc:
        raise _fail(str(exc)) from None
    finally:
        folio.close()
    console.print(f"deleted {removed.doc_id[:12]} {removed.file_name}")


@app.command("check")
def check_command(
    repair: Annotated[
        bool, typer.Option("--repair", help="Mark incomplete documents failed and remove leftovers of interrupted runs.")
    ] = False,
) -> None:
    """Verify the library: database integrity, whole documents, the search index, asset folders."""
    folio = open_folio()
    try:
        report = folio.check(repair=repair)
    finally:
        folio.close()
    for finding in report.findings:
        style = {"error": "red", "leftover": "yellow"}.get(finding.severity, "dim")
        console.print(finding.line(), style=style, markup=False, highlight=False, soft_wrap=True)
    console.print(report.summary(), highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command("serve")
def serve_command(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1: this machine only).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default 7860).")] = None,
    auth: Annotated[str | None, typer.Option(help="user:password required to open the app (or FOLIO_SERVE__AUTH).")] = None,
    allow_no_auth: Annotated[
        bool, typer.Option("--allow-no-auth", help="Serve a non-loopback address without a password.")
    ] = False,
    api: Annotated[
        bool,
        typer.Option("--api", help="Also serve the OpenAI-compatible endpoint at /v1 (chat completions, models)."),
    ] = False,
    api_only: Annotated[
        bool, typer.Option("--api-only", help="Serve only the OpenAI-compatible endpoint at /v1, no web page.")
    ] = False,
) -> None:
    """Start the web app: library, chat with cited answers, evidence viewer (Ctrl-C to stop).

    With --api, any OpenAI client can ask the library at http://HOST:PORT/v1 (model `folio`, or
    `folio:doc:<id>`), with an API key from `folio user key NAME` or FOLIO_SERVE__API_KEY.
    """
    serve = {k: v for k, v in {"host": host, "port": port, "auth": auth}.items() if v is not None}
    if allow_no_auth:
        serve["allow_no_auth"] = True
    folio = open_folio(**({"serve": serve} if serve else {}))
    limits = folio.settings.serve
    try:
        credentials = parse_auth(limits.auth)
        accounts = has_accounts(folio.library)
    except (ValueError, SchemaMismatchError) as exc:
        raise _fail(str(exc)) from None
    protected = limits.api_key is not None if api_only else credentials is not None
    if (api or api_only) and credentials is not None and not accounts and limits.api_key is None:
        raise _fail(
            "--api with --auth needs a key for the endpoint too: set FOLIO_SERVE__API_KEY "
            "(or add accounts with `folio user add NAME` and give them keys with `folio user key NAME`)"
        )
    if not protected and not accounts and not is_loopback(limits.host):
        if not limits.allow_no_auth:
            raise _fail(
                f"refusing to serve {limits.host} without a password (anyone who can reach it could "
                "read and delete the library): add --auth user:password or FOLIO_SERVE__AUTH, "
                "accounts with `folio user add NAME`, or --allow-no-auth"
            )
        err.print(f"[yellow]warning:[/yellow] serving {limits.host} without a password", highlight=False)
    from app.web import serve as serve_app  # NOTE: imports gradio (seconds): only when serving
    from app.web.openai_api import ApiAccess

    access = None
    if api or api_only:
        access = ApiAccess(
            api_key=limits.api_key,
            accounts=accounts,
            open=limits.api_key is None and not accounts and credentials is None,
        )

    def ready(url: str) -> None:
        where = f"the OpenAI-compatible endpoint {url}/v1" if api_only else url
        console.print(
            f"Folio is running at {where} (library {folio.settings.library}); Ctrl-C to stop",
            soft_wrap=True,
            highlight=False,
        )
        if api and not api_only:
            console.print(f"OpenAI-compatible endpoint: {url}/v1", soft_wrap=True, highlight=False)

    try:
        serve_app(
            folio, host=limits.host, port=limits.port, auth=credentials, accounts=accounts,
            on_ready=ready, api=access, api_only=api_only,
        )  # fmt: skip
    except OSError as exc:
        raise _fail(f"cannot listen on {limits.host}:{limits.port} ({exc})".splitlines()[0]) from None
    except KeyboardInterrupt:
        pass
    finally:
        folio.close()


def _answer_overrides(
    model: str | None,
    no_sampler: bool,
    no_retrieval: bool,
    no_context: bool,
    k: int | None,
    budget: int | None,
    runtime: str | None = None,
) -> dict:
    """Per-request answer options from the shared flags of ask, batch and eval qa."""
    if no_retrieval and no_context:
        raise _fail("--no-retrieval and --no-context exclude each other")
    overrides: dict = {"model": model, "runtime": runtime, "k": k, "budget": budget}
    if no_sampler:
        overrides["sampler"] = False
    if no_retrieval:
        overrides["context"] = "first-pages"
    if no_context:
        overrides["context"] = "none"
    return {key: value for key, value in overrides.items() if value is not None}


_DocOption = Annotated[
    list[str] | None,
    typer.Option("--doc", help="Only in this document (id, id prefix or file name); repeatable."),
]
_ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="Generator: a packaged name or a local Hugging Face model folder or .gguf."),
]
_RuntimeOption = Annotated[
    str | None,
    typer.Option(
        "--runtime",
        help="Generator runtime: auto (OpenVINO for the packaged Qwen models on a CPU, else torch), openvino, torch, or openai (an OpenAI-compatible server at FOLIO_GENERATOR__BASE_URL; --model is its model name).",
    ),
]
_NoSampler = Annotated[
    bool, typer.Option("--no-sampler", help="Retrieved chunks in rank order instead of WuKong sampling.")
]
_NoRetrieval = Annotated[
    bool, typer.Option("--no-retrieval", help="The document's first pages (same token budget) instead of retrieval.")
]
_NoContext = Annotated[bool, typer.Option("--no-context", help="No evidence at all (the model alone).")]
_AnswerabilityOption = Annotated[
    bool | None,
    typer.Option(
        "--answerability/--no-answerability",
        help="Check that the evidence states the answer (the model's yes/no after its draft, with retrieval scores; calibrated) and decline with 'Not answerable' when not (default: settings).",
    ),
]
_TypedOption = Annotated[
    bool | None,
    typer.Option(
        "--typed/--no-typed",
        help="Ask for the answer type the question expects (integer, number, list, yes/no, phrase) and keep the output cut to it as the short answer that eval qa scores (default: settings).",
    ),
]
_ComputeOption = Annotated[
    bool | None,
    typer.Option(
        "--compute/--no-compute",
        help="For questions that need arithmetic, have the model write an expression over numbers in the evidence, evaluate it safely and answer with the result (default: settings).",
    ),
]
_AsStoredOption = Annotated[
    bool,
    typer.Option(
        "--as-stored",
        help="Use the documents as the library stores them, without parsing any again (even ones an older parser or other parse settings stored): to measure a library as it was.",
    ),
]
_KOption = Annotated[int | None, typer.Option("-k", min=1, help="Chunks retrieved per question.")]
_BudgetOption = Annotated[int | None, typer.Option("--budget", min=0, help="Evidence tokens in the prompt.")]


@app.command("ask")
def ask_command(
    question: Annotated[str, typer.Argument(help="The question.")],
    doc: _DocOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the whole answer as JSON (no streaming).")] = False,
    model: _ModelOption = None,
    runtime: _RuntimeOption = None,
    no_sampler: _NoSampler = False,
    no_retrieval: _NoRetrieval = False,
    no_context: _NoContext = False,
    k: _KOption = None,
    budget: _BudgetOption = None,
    answerability: _AnswerabilityOption = None,
    typed: _TypedOption = None,
    compute: _ComputeOption = None,
) -> None:
    """Answer a question from the library; the answer streams, then its citations."""
    overrides = _answer_overrides(model, no_sampler, no_retrieval, no_context, k, budget, runtime)
    if answerability is not None:
        overrides["answerability"] = answerability
    overrides.update({k: v for k, v in {"typed": typed, "compute": compute}.items() if v is not None})
    folio = open_folio()
    answer = None
    try:
        if json_out:
            answer = folio.ask(question, doc_ids=doc, **overrides)
        else:
            for part in folio.ask_stream(question, doc_ids=doc, **overrides):
                if isinstance(part, str):
                    console.out(part, end="", highlight=False)
                else:
                    answer = part
            console.out("")
    except (ValueError, LookupError, TypeError) as exc:
        raise _fail(str(exc)) from None
    finally:
        folio.close()
    if json_out:
        console.out(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False), highlight=False)
        return
    if answer.short and answer.short != answer.plain:
        console.print(f"[dim]short answer:[/dim] {escape(answer.short)}")
    if answer.citations:
        table = Table("[n]", "file", "page", "quote", title="citations", title_justify="left")
        for c in answer.citations:
            table.add_row(str(c.evidence), c.file_name, str(c.page), c.quote)
        console.print(table)
    elif answer.not_answerable:
        console.print("[dim]no supporting evidence found[/dim]")
    stats = answer.stats
    if stats is not None:
        err.print(
            f"[dim]{stats.prompt_tokens} prompt tokens, TTFT {stats.ttft_ms / 1000:.1f} s, "
            f"{stats.tokens_per_s:.1f} tokens/s, {stats.total_ms / 1000:.1f} s in all[/dim]"
        )


@app.command("batch")
def batch_command(
    questions: Annotated[Path, typer.Argument(help="JSONL: one question per line (a string, or {question, doc_id, id}).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Answers (JSONL); an existing file is resumed.")],
    doc: _DocOption = None,
    model: _ModelOption = None,
    runtime: _RuntimeOption = None,
    no_sampler: _NoSampler = False,
    no_retrieval: _NoRetrieval = False,
    no_context: _NoContext = False,
    k: _KOption = None,
    budget: _BudgetOption = None,
    answerability: _AnswerabilityOption = None,
    typed: _TypedOption = None,
    compute: _ComputeOption = None,
    ray: _RayOption = False,
    ray_address: _RayAddressOption = None,
    ray_workers: Annotated[
        int | None, typer.Option("--ray-workers", min=1, help="Ray actors answering, each loading the models (default 1).")
    ] = None,
) -> None:
    """Answer every question of a file, in order; rerun the same command to resume.

    With --ray, a pool of Ray actors answers; the output keeps input order and resumes the same way.
    """
    overrides = _answer_overrides(model, no_sampler, no_retrieval, no_context, k, budget, runtime)
    if answerability is not None:
        overrides["answerability"] = answerability
    overrides.update({k: v for k, v in {"typed": typed, "compute": compute}.items() if v is not None})
    if not questions.is_file():
        raise _fail(f"{questions}: no such file")
    use_ray = _ray(ray, ray_address)
    folio = open_folio(**({"ray": {"answer_workers": ray_workers}} if ray_workers is not None else {}))
    try:
        with Progress(*_bar_columns(), console=err) as bar:
            task = bar.add_task("questions", total=None, rate="")

            def on_progress(event) -> None:
                bar.update(task, total=event.total, completed=event.done)

            answers = folio.ask_batch(questions, out=out, doc_ids=doc, on_progress=on_progress, ray=use_ray, **overrides)
    except (ValueError, TypeError, ConnectionError) as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail(f"interrupted: answers so far are in {out}; run the same command to finish") from None
    finally:
        folio.close()
    failed = sum(a.error is not None for a in answers)
    declined = sum(a.not_answerable for a in answers)
    console.print(f"{len(answers) - failed} answered ({declined} not answerable), {failed} failed -> {out}")
    if failed:
        raise typer.Exit(1)


@eval_app.command("qa")
def eval_qa_command(
    file: Annotated[Path, typer.Argument(help="MMLongBench-style questions (JSON list or JSONL).")],
    docs: Annotated[Path | None, typer.Option(help="Folder of the PDFs named by doc_id (default: FILE's folder/documents).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions (after --stride).")] = None,
    stride: Annotated[int, typer.Option(min=1, help="Every K-th question of the file (a fixed spread subset).")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    answers_out: Annotated[Path | None, typer.Option("--answers", help="Keep the answers here (JSONL); a rerun resumes from it.")] = None,
    model: _ModelOption = None,
    runtime: _RuntimeOption = None,
    no_sampler: _NoSampler = False,
    no_retrieval: _NoRetrieval = False,
    no_context: _NoContext = False,
    k: _KOption = None,
    budget: _BudgetOption = None,
    answerability: _AnswerabilityOption = None,
    typed: _TypedOption = None,
    compute: _ComputeOption = None,
    as_stored: _AsStoredOption = False,
) -> None:
    """Answer accuracy and F1 by answer format, Not-answerable precision/recall, citation page
    recall, TTFT, tokens/s and peak memory, each question asked of its own document."""
    from pipeline.evaluation.qa import batch_questions, load_qa_questions, score_run

    overrides = _answer_overrides(model, no_sampler, no_retrieval, no_context, k, budget, runtime)
    if answerability is not None:
        overrides["answerability"] = answerability
    overrides.update({k: v for k, v in {"typed": typed, "compute": compute}.items() if v is not None})
    try:
        questions = load_qa_questions(file)[::stride]
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    questions = questions[:limit] if limit else questions
    folio, _, results = _ingest_question_documents(file, docs, {q.doc_id for q in questions}, as_stored=as_stored)
    doc_ids = {r.path.name: r.doc_id for r in results if r.status != "failed" and r.doc_id}
    batch = batch_questions(questions, doc_ids)
    try:
        with Progress(*_bar_columns(), console=err) as bar:
            task = bar.add_task("questions", total=len(batch), rate="")
            answers = folio.ask_batch(
                batch, out=answers_out, on_progress=lambda event: bar.update(task, completed=event.done), **overrides
            )
    except TypeError as exc:
        raise _fail(str(exc)) from None
    finally:
        folio.close()
    report = score_run(questions, answers)
    rows = report["per_question"]
    prompt_recalls = [r["prompt_page_recall"] for r in rows if r["prompt_page_recall"] is not None and r["answer_format"] != "None"]
    table = Table("metric", "value", title=f"answering ({report['questions']} questions)")
    table.add_row("accuracy", f"{report['accuracy']:.3f}")
    table.add_row("F1", f"{report['f1']:.3f}")
    for fmt, row in report["by_format"].items():
        table.add_row(f"accuracy, {fmt} ({row['questions']:.0f})", f"{row['accuracy']:.3f}")
    table.add_row("not answerable P / R", f"{report['not_answerable']['precision']:.3f} / {report['not_answerable']['recall']:.3f}")
    for source, row in report["by_source"].items():
        table.add_row(f"accuracy, {source} source ({row['questions']:.0f})", f"{row['accuracy']:.3f}")
    table.add_row("citation page recall", f"{report['citation_page_recall']:.3f}")
    table.add_row("cited pages that are evidence", f"{report['citation_page_precision']:.3f}")
    if prompt_recalls:
        table.add_row("evidence page recall (prompt)", f"{sum(prompt_recalls) / len(prompt_recalls):.3f}")
    table.add_row("TTFT p50", f"{report['ttft_ms_p50'] / 1000:.1f} s")
    table.add_row("total p50", f"{report['total_ms_p50'] / 1000:.1f} s")
    table.add_row("decode tokens/s", f"{report['tokens_per_s']:.2f}")
    table.add_row("peak RSS", f"{report['peak_rss_mb']:.0f} MB")
    table.add_row("failed", str(sum(r["error"] is not None for r in rows)))
    console.print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


@eval_app.command("pages")
def eval_pages_command(
    file: Annotated[Path, typer.Argument(help="MMLongBench-style questions (JSON list or JSONL).")],
    docs: Annotated[Path | None, typer.Option(help="Folder of the PDFs named by doc_id (default: FILE's folder/documents).")] = None,
    modes: Annotated[list[RetrievalMode] | None, typer.Option("--mode", help="Modes to compare (default: all the library keeps).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
    as_stored: _AsStoredOption = False,
) -> None:
    """Recall@1/5/10 and nDCG@5 of evidence pages, ranking pages within each question's document."""
    from pipeline.evaluation.pages import documents_by_name, evaluate_pages, load_questions

    try:
        questions = load_questions(file)
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    questions = questions[:limit] if limit else questions
    needed = sorted({q.doc_id for q in questions})
    folio, docs_dir, _ = _ingest_question_documents(file, docs, needed, as_stored=as_stored)
    chosen = modes or [RetrievalMode(m) for m in folio.index.retriever.modes]
    doc_chunks = documents_by_name(folio.index, needed, docs_dir)
    answerable = sum(bool(q.evidence_pages) for q in questions)
    with Progress(*_bar_columns(), console=err) as bar:
        task = bar.add_task("questions", total=answerable * len(chosen), rate="")
        report = evaluate_pages(questions, folio.index, doc_chunks, chosen, lambda: bar.advance(task))
    folio.close()
    table = Table("mode", "R@1", "R@5", "R@10", "nDCG@5", title=f"evidence pages ({report['questions']} questions)")
    for mode, row in report["modes"].items():
        table.add_row(mode, *(f"{row[m]:.3f}" for m in ("recall@1", "recall@5", "recall@10", "ndcg@5")))
    console.print(table)
    sources = Table("mode", "source", "questions", "R@5", title="recall@5 by evidence source")
    for mode, row in report["modes"].items():
        for source, values in row["by_source"].items():
            sources.add_row(mode, source, str(values["questions"]), f"{values['recall@5']:.3f}")
    console.print(sources)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))


def _ingest_question_documents(file: Path, docs: Path | None, names, *, as_stored: bool = False) -> tuple[Folio, Path, list]:
    """Ingest the documents an evaluation file's questions are about (stored ones are skipped).

    With `as_stored`, nothing is parsed: the documents are used as the library holds them, even
    when an older parser or other parse settings stored them (a question whose document is not
    stored fails).
    """
    docs_dir = docs or file.parent / "documents"
    if not docs_dir.is_dir():
        raise _fail(f"{docs_dir}: no such folder of documents (use --docs DIR)")
    folio = open_folio()
    files = [docs_dir / n for n in sorted(names) if (docs_dir / n).is_file()]
    if as_stored:
        return folio, docs_dir, _stored_results(folio, files)
    err.print(f"ingesting {len(files)} documents (already stored ones are skipped)")
    return folio, docs_dir, folio.ingest(files)


def _stored_results(folio: Folio, files: list[Path]) -> list[IngestResult]:
    """The stored document of each file, matched by content, or a failure naming the fix."""
    from pipeline.ingestion.parse import sha256_file  # NOTE: PyMuPDF only when asked for

    stored = {d.doc_id for d in folio.documents() if d.status == "ok"}
    results = []
    for path in files:
        doc_id = owned_doc_id(sha256_file(path), folio.user)
        if doc_id in stored:
            results.append(IngestResult(path, doc_id, "unchanged"))
        else:
            results.append(IngestResult(path, None, "failed", error=f"{path.name}: not stored (run without --as-stored to ingest it)"))
    err.print(f"using {sum(r.doc_id is not None for r in results)} of {len(files)} documents as stored")
    return results


def _bar_columns() -> tuple:
    return (
        TextColumn("{task.description:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )


def main() -> None:
    """Console entry point."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, no traceback
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        err.print(f"[red]error:[/red] {type(exc).__name__}: {exc}".splitlines()[0], highlight=False)
        sys.exit(1)


if __name__ == "__main__":  # `python -m app.cli ...` runs this checkout's CLI
    main()
