"""Blocks → chunks, the retrieval units. Every chunk stays on one page and keeps its block ids,
so whatever retrieval finds can be cited back to regions of that page."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.config import ChunkConfig

_TOKEN = re.compile(r"\w+|[^\w\s]")
_RULE = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")  # a Markdown table's header rule, |---|---|
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"“])")


def count_tokens(text: str) -> int:
    """A cheap token estimate (words and punctuation), close to a subword count for English."""
    return len(_TOKEN.findall(text))


@dataclass(frozen=True)
class BlockRef:
    """What chunking needs of a stored block."""

    id: int
    page: int
    kind: str
    text: str
    caption_of: int | None = None  # reading order of the figure/table a caption describes
    reading_order: int = 0


@dataclass(frozen=True)
class ChunkDraft:
    ordinal: int
    kind: str  # "text", "figure" or "table"
    page_start: int
    page_end: int
    block_ids: tuple[int, ...]
    text: str
    token_count: int


def chunk_blocks(blocks: Sequence[BlockRef], config: ChunkConfig) -> list[ChunkDraft]:
    """Group blocks (in page and reading order) into chunks.

    Figures and tables become one chunk each (their caption, the text inside the figure or the
    table's Markdown); a table longer than `max_tokens` becomes several chunks of about
    `target_tokens`, each with the caption and the header row on top. Text blocks are packed into
    chunks of about `target_tokens`, starting a new chunk at each heading and page; a block longer
    than `max_tokens` is split at sentence ends.
    """
    drafts: list[ChunkDraft] = []
    by_page: dict[int, list[BlockRef]] = {}
    for block in blocks:
        by_page.setdefault(block.page, []).append(block)

    def emit(kind: str, page: int, ids: list[int], parts: list[str]) -> None:
        text = "\n".join(p for p in parts if p).strip()
        if text:
            drafts.append(
                ChunkDraft(len(drafts), kind, page, page, tuple(ids), text, count_tokens(text))
            )

    for page, page_blocks in sorted(by_page.items()):
        regions = {b.reading_order: b for b in page_blocks if b.kind in ("figure", "table")}
        linked_captions = {b.caption_of: b for b in page_blocks if b.kind == "caption" and b.caption_of in regions}
        ids: list[int] = []
        parts: list[str] = []
        size = 0
        headings_only = True  # the open chunk holds nothing but headings so far
        for block in page_blocks:
            if block.kind in ("figure", "table"):
                caption = linked_captions.get(block.reading_order)
                block_ids = [block.id] + ([caption.id] if caption else [])
                # The region's text already starts with its caption (see parse._link_captions).
                if block.kind == "table" and count_tokens(block.text) > config.max_tokens:
                    for piece in split_table(block.text, config.target_tokens):
                        emit(block.kind, page, block_ids, [piece])
                else:
                    emit(block.kind, page, block_ids, [block.text])
                continue
            if block.kind == "caption" and block.caption_of in regions:
                continue
            tokens = count_tokens(block.text)
            # A heading alone is a poor chunk: it is carried into the next one instead.
            full = block.kind == "heading" or size + tokens > config.target_tokens
            if parts and full and not headings_only:
                emit("text", page, ids, parts)
                ids, parts, size, headings_only = [], [], 0, True
            if tokens > config.max_tokens:
                for piece in _split_long(block.text, config.target_tokens):
                    emit("text", page, [*ids, block.id], [*parts, piece])
                    ids, parts, size, headings_only = [], [], 0, True
                continue
            ids.append(block.id)
            parts.append(block.text)
            size += tokens
            headings_only = headings_only and block.kind == "heading"
        emit("text", page, ids, parts)
    return drafts


def split_table(text: str, target: int) -> list[str]:
    """A Markdown table (after its caption lines) cut into pieces of about `target` tokens, each
    repeating the caption and the header row with its rule; text without a header is returned
    whole."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None or start + 1 >= len(lines) or not _RULE.match(lines[start + 1]):
        return [text]
    head = lines[: start + 2]
    # NOTE: a long caption and header still leave each piece room for rows.
    budget = max(target // 2, target - count_tokens("\n".join(head)))
    pieces: list[str] = []
    rows: list[str] = []
    size = 0
    for row in lines[start + 2 :]:
        n = count_tokens(row)
        if rows and size + n > budget:
            pieces.append("\n".join(head + rows))
            rows, size = [], 0
        rows.append(row)
        size += n
    if rows or not pieces:
        pieces.append("\n".join(head + rows))
    return pieces


def _split_long(text: str, target: int) -> list[str]:
    """Split at sentence ends into pieces of about `target` tokens (hard split if no sentences)."""
    sentences = _SENTENCE_END.split(text)
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for sentence in sentences:
        n = count_tokens(sentence)
        if current and size + n > target:
            pieces.append(" ".join(current))
            current, size = [], 0
        if n > 2 * target:  # one huge "sentence" (tables flattened to text, lists): cut by words
            words = sentence.split()
            step = max(1, int(target * 0.75))
            pieces += [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
            continue
        current.append(sentence)
        size += n
    if current:
        pieces.append(" ".join(current))
    return pieces
