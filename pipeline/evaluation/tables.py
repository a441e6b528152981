"""Table cell accuracy: labelled rows (typed from the rendered page) against what a parser stored.

A labelled row is a list of cell strings. A page's extracted rows are every line of its blocks'
text: a Markdown table line (`| a | b |`) is split into its cells, any other line is one cell.
Two scores per labelled row, each taking the page's best-matching extracted row:

- cells: how many labelled cells the extracted row holds as whole cells, in order (the longest
  common subsequence of equal cells), so a cell merged with its neighbour or split in two counts
  wrong; row right when all its cells are.
- line: whether the labelled cells appear in order inside one line's text (cell borders ignored):
  what a reader of the flattened text could still recover.

Cells compare after normalisation: Unicode NFKC, dashes and minus signs as "-", curly quotes as
straight ones, no Markdown bold markers (`**`), and no whitespace at all (so "53.8 (0.5)" equals
"53.8(0.5)").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

_DASHES = str.maketrans(
    {"−": "-", "–": "-", "—": "-", "‐": "-", "‑": "-", "’": "'", "‘": "'", "“": '"', "”": '"'}
)
_SPACE = re.compile(r"\s+")
_MARKDOWN_RULE = re.compile(r"^\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?$")


def normalize_cell(text: str) -> str:
    """A cell as compared: NFKC, plain dashes and quotes, no bold markers, no whitespace."""
    plain = unicodedata.normalize("NFKC", text).translate(_DASHES).replace("**", "")
    return _SPACE.sub("", plain)


def extracted_rows(texts: Sequence[str]) -> list[list[str]]:
    """Every line of the given block texts as a row of cells (Markdown rows split at `|`)."""
    rows = []
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if not line or _MARKDOWN_RULE.match(line):
                continue
            if line.startswith("|") and line.endswith("|") and len(line) > 1:
                rows.append([cell.strip() for cell in line[1:-1].split("|")])
            else:
                rows.append([line])
    return rows


def _common_cells(labelled: list[str], extracted: list[str]) -> int:
    """Length of the longest common subsequence of equal cells."""
    previous = [0] * (len(extracted) + 1)
    for cell in labelled:
        current = [0]
        for j, other in enumerate(extracted):
            current.append(previous[j] + 1 if cell == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _in_order(labelled: list[str], line: str) -> bool:
    position = 0
    for cell in labelled:
        if not cell:
            continue
        found = line.find(cell, position)
        if found < 0:
            return False
        position = found + len(cell)
    return True


@dataclass(frozen=True)
class RowScore:
    cells: int  # labelled cells
    cells_right: int  # found as whole cells, in order, in the best extracted row
    line_right: bool  # all non-empty cells found in order inside one extracted line


def score_row(labelled: Sequence[str], rows: Sequence[Sequence[str]]) -> RowScore:
    """Score one labelled row against a page's extracted rows."""
    want = [normalize_cell(c) for c in labelled]
    got = [[normalize_cell(c) for c in row] for row in rows]
    best = max((_common_cells(want, row) for row in got), default=0)
    line = any(_in_order(want, "".join(row)) for row in got)
    return RowScore(len(want), best, line)


@dataclass(frozen=True)
class TableScores:
    rows: int
    cells: int
    cell_accuracy: float  # labelled cells found as cells, in order
    row_accuracy: float  # labelled rows with every cell right
    line_accuracy: float  # labelled rows whose cells appear in order on one line

    def as_dict(self) -> dict[str, float | int]:
        return {
            "rows": self.rows,
            "cells": self.cells,
            "cell_accuracy": round(self.cell_accuracy, 3),
            "row_accuracy": round(self.row_accuracy, 3),
            "line_accuracy": round(self.line_accuracy, 3),
        }


def aggregate(scores: Sequence[RowScore]) -> TableScores:
    """Totals over labelled rows (cell accuracy is over all labelled cells)."""
    if not scores:
        return TableScores(0, 0, 0.0, 0.0, 0.0)
    cells = sum(s.cells for s in scores)
    return TableScores(
        rows=len(scores),
        cells=cells,
        cell_accuracy=sum(s.cells_right for s in scores) / cells if cells else 0.0,
        row_accuracy=sum(s.cells_right == s.cells for s in scores) / len(scores),
        line_accuracy=sum(s.line_right for s in scores) / len(scores),
    )
