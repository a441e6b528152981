"""Table regions → Markdown grids: rows from the words' own lines, columns from white gaps.

Tables without rules (most academic and financial tables) are only text placed on a grid. A
table region (found from a "Table N" caption or from rules, see parse.py) is rebuilt here:

1. rows: the region's words grouped by the vertical centre of their line, so rows that sit tight
   stay apart (PyMuPDF's `find_tables(strategy="text")` interleaves the characters of such rows,
   and on the labelled sample it was ~90x slower and less accurate: see BENCHMARKS.md,
   "Tables (issue 23)");
2. columns: the x ranges that no body row's words cover are the gaps between columns; the top
   two rows (headers, whose cells may span columns) and rows with few pieces of text (group
   and section rows) do not vote;
3. cells: the words of a row between two gaps, in reading order; a phrase written across a gap
   with a plain word space (a spanning header) stays one cell, in the column it overlaps most.

The Markdown has one line per row, the top row as the header, and every row as wide as the grid.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class Word:
    bbox: BBox
    text: str


# The top rows of a table: its headers, whose cells may span columns.
_HEADER_ROWS = 2
# Narrowest gap between columns, as a share of the median word height (a word space is ~0.3).
_MIN_GAP = 0.35
# Two words closer than this share of their height are one phrase even across a column gap.
_WORD_SPACE = 0.33
# Rows with fewer pieces of text than this share of the fullest row do not vote on gaps.
_VOTERS = 0.75


def table_markdown(words: Sequence[Word]) -> str:
    """A Markdown table from the words of a table region ("" when they do not form a grid)."""
    rows = group_rows(words)
    if len(rows) < 2:
        return ""
    gaps = column_gaps(rows)
    grid = [_cells(row, gaps) for row in rows]
    width = len(gaps) + 1
    if width < 2:
        return ""
    grid = [row for row in grid if any(row)]
    lines = ["| " + " | ".join(_escape(cell) for cell in row) + " |" for row in grid]
    lines.insert(1, "|" + "---|" * width)
    return "\n".join(lines)


def group_rows(words: Sequence[Word]) -> list[list[Word]]:
    """Words grouped into rows by the vertical centre of their line, top to bottom, each row
    left to right. A word far taller than the others (a rotated group label) joins the row
    nearest its centre."""
    if not words:
        return []
    height = statistics.median(w.bbox[3] - w.bbox[1] for w in words)
    upright = [w for w in words if w.bbox[3] - w.bbox[1] <= 1.8 * height]
    tall = [w for w in words if w.bbox[3] - w.bbox[1] > 1.8 * height]
    rows: list[list[Word]] = []
    centres: list[float] = []
    for word in sorted(upright, key=_centre_y):
        y = _centre_y(word)
        # NOTE: the centre, not the box: boxes of tight rows overlap, their centres do not.
        if rows and abs(y - centres[-1]) <= 0.45 * min(height, word.bbox[3] - word.bbox[1]):
            rows[-1].append(word)
            centres[-1] = statistics.median(_centre_y(w) for w in rows[-1])
        else:
            rows.append([word])
            centres.append(y)
    for word in tall:
        if rows:
            nearest = min(range(len(rows)), key=lambda i: abs(centres[i] - _centre_y(word)))
            rows[nearest].append(word)
    return [sorted(row, key=lambda w: w.bbox[0]) for row in rows]


def column_gaps(rows: Sequence[Sequence[Word]]) -> list[tuple[float, float]]:
    """The x ranges between columns: covered by no word of a body row that has many pieces of
    text, and wider than a word space. Sorted left to right.

    Rows with few separate pieces of text (spanning group headers, notes, section rows) and
    the header rows on top are left out of the vote: they cross the gaps of the columns below."""
    pieces = [_pieces(row) for row in rows]
    most = max(pieces, default=0)
    # NOTE: the top rows (headers) may cross a gap with a cell spanning two columns; a row below
    # them never does.
    headers = _HEADER_ROWS if len(rows) > _HEADER_ROWS + 1 else 1
    voters = [
        (row, i < headers) for i, (row, n) in enumerate(zip(rows, pieces, strict=True))
        if n >= _VOTERS * most
    ]
    words = [w for row, _ in voters for w in row]
    if not words:
        return []
    height = statistics.median(w.bbox[3] - w.bbox[1] for w in words)
    left = min(w.bbox[0] for w in words)
    right = max(w.bbox[2] for w in words)
    # Elementary x intervals between all word edges, each counted by the rows covering it.
    edges = np.unique([w.bbox[i] for w in words for i in (0, 2)])
    middles = (edges[:-1] + edges[1:]) / 2
    free = np.ones(len(middles), dtype=bool)
    for row, is_header in voters:
        if not is_header:
            boxes = np.array([(w.bbox[0], w.bbox[2]) for w in row])
            inside = (boxes[None, :, 0] < middles[:, None]) & (middles[:, None] < boxes[None, :, 1])
            free &= ~inside.any(axis=1)
    gaps: list[tuple[float, float]] = []
    start = None
    for i, is_free in enumerate(free):
        if is_free and start is None:
            start = edges[i]
        elif not is_free and start is not None:
            gaps.append((float(start), float(edges[i])))
            start = None
    return [(a, b) for a, b in gaps if b - a >= _MIN_GAP * height and left < a and b < right]


def _pieces(row: Sequence[Word]) -> int:
    """How many separate pieces of text a row has (words apart by more than a word space)."""
    count = 0
    for previous, word in zip([None, *row], row, strict=False):
        height = word.bbox[3] - word.bbox[1]
        count += previous is None or word.bbox[0] - previous.bbox[2] > _WORD_SPACE * height
    return count


def _cells(row: Sequence[Word], gaps: Sequence[tuple[float, float]]) -> list[str]:
    """The row's words placed into the columns between `gaps`."""
    bounds = [(-1e9, gaps[0][0] if gaps else 1e9)]
    bounds += [(gaps[i][1], gaps[i + 1][0] if i + 1 < len(gaps) else 1e9) for i in range(len(gaps))]
    cells: list[list[str]] = [[] for _ in bounds]
    phrase: list[Word] = []
    for word in row:
        if phrase and not _same_phrase(phrase[-1], word, gaps):
            _place(phrase, bounds, cells)
            phrase = []
        phrase.append(word)
    if phrase:
        _place(phrase, bounds, cells)
    return [" ".join(parts) for parts in cells]


def _same_phrase(previous: Word, word: Word, gaps: Sequence[tuple[float, float]]) -> bool:
    """Whether `word` continues the piece of text `previous` ends: a plain word space always does
    (a header across two columns); a wider space only when no column gap lies in it."""
    space = word.bbox[0] - previous.bbox[2]
    height = min(previous.bbox[3] - previous.bbox[1], word.bbox[3] - word.bbox[1])
    crosses = any(a < word.bbox[0] and previous.bbox[2] < b for a, b in gaps)
    return space <= _WORD_SPACE * height or (not crosses and space <= 2 * height)


def _place(
    phrase: Sequence[Word], bounds: Sequence[tuple[float, float]], cells: list[list[str]]
) -> None:
    x0, x1 = phrase[0].bbox[0], phrase[-1].bbox[2]
    overlap = [max(0.0, min(x1, b) - max(x0, a)) for a, b in bounds]
    column = max(range(len(bounds)), key=lambda i: (overlap[i], -i))
    cells[column].append(" ".join(w.text for w in phrase))


def _centre_y(word: Word) -> float:
    return (word.bbox[1] + word.bbox[3]) / 2


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")
