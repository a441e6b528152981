"""`folio eval ...`: evaluation commands, a Typer sub-app that `app.cli` mounts as `eval`.

`folio eval retrieval DIR` runs every retrieval mode on a BEIR-layout collection (or on each
collection inside DIR) and prints one table per collection; `--json OUT` writes the results.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from app.cli_globals import FolioTyper
from models.config import EncoderConfig
from pipeline.evaluation.retrieval import evaluate_retrieval
from retrieval.config import NdcgGain, RetrievalConfig, RetrievalMode

logger = logging.getLogger(__name__)

eval_app = FolioTyper(
    name="eval",
    help="Measure retrieval and answering on test collections.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_console = Console()
_err = Console(stderr=True)


@eval_app.callback()
def _eval() -> None:
    """Measure retrieval and answering on test collections."""


_METRICS = ("ndcg@10", "map", "recall@100", "mrr", "p50_ms", "p95_ms")


def _collections(directory: Path) -> list[Path]:
    """DIR itself when it is a BEIR folder, else its sub-folders that are."""
    if (directory / "corpus.jsonl").is_file():
        return [directory]
    found = (
        sorted(p for p in directory.iterdir() if (p / "corpus.jsonl").is_file())
        if directory.is_dir()
        else []
    )
    if not found:
        raise ValueError(
            f"{directory} is not a BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv) nor holds any"
        )
    return found


def _table(result: dict[str, Any]) -> Table:
    table = Table(
        title=f"{result['collection']} ({result['queries']} queries)",
        caption=f"nDCG with {result['ndcg_gain']} gains",
    )
    table.add_column("mode")
    for name in _METRICS:
        table.add_column(name, justify="right")
    for mode, metrics in result["modes"].items():
        cells = [
            f"{metrics[m]:.1f}" if m.endswith("_ms") else f"{metrics[m]:.3f}" for m in _METRICS
        ]
        table.add_row(mode, *cells)
    return table


@eval_app.command("retrieval")
def _retrieval_command(
    directory: Annotated[Path, typer.Argument(help="BEIR folder, or a folder of BEIR folders.")],
    modes: Annotated[
        str,
        typer.Option(
            "--modes", help="Comma-separated modes: " + ",".join(m.value for m in RetrievalMode)
        ),
    ] = ",".join(m.value for m in RetrievalMode),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the results to this JSON file.")
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option("--cache", help="Keep built indexes here and reuse them on later runs."),
    ] = None,
    k: Annotated[
        int, typer.Option("-k", min=100, help="Ranking depth per query (MAP, MRR).")
    ] = 1000,
    threads: Annotated[
        int,
        typer.Option("--threads", min=0, help="Torch threads for indexing (0: torch's default)."),
    ] = 0,
    ndcg_gain: Annotated[
        NdcgGain,
        typer.Option(
            "--ndcg-gain",
            help="nDCG's gain of a grade: linear (trec_eval, BEIR) or exponential (2^grade - 1).",
        ),
    ] = NdcgGain.LINEAR,
) -> None:
    """nDCG@10, MAP, Recall@100, MRR and p50/p95 latency of every retrieval mode."""
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    valid = {m.value for m in RetrievalMode}
    bad = [m for m in mode_list if m not in valid]
    if bad or not mode_list:
        _err.print(
            f"[red]error:[/red] unknown mode(s) {bad or modes!r}; use any of {sorted(valid)}",
            soft_wrap=True,
        )
        raise typer.Exit(1)
    try:
        folders = _collections(directory)
    except (ValueError, OSError) as exc:
        _err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    results = []
    for folder in folders:
        try:
            result = evaluate_retrieval(
                folder,
                modes=mode_list,
                retrieval_config=RetrievalConfig(),
                encoder_config=EncoderConfig(threads=threads),
                cache_dir=cache,
                k=k,
                ndcg_gain=ndcg_gain,
            )
        except (ValueError, FileNotFoundError) as exc:
            _err.print(f"[red]error:[/red] {folder}: {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        _console.print(_table(result))
        results.append(result)
    if json_out is not None:
        payload = results[0] if len(results) == 1 else results
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        _console.print(f"wrote {json_out}")
