"""Citation attribution: which evidence, and which region of it, supports an answer.

`[n]` in the answer cites evidence item n. An answer that cites nothing is attributed: to the
best-ranked item holding a short answer verbatim, else to the item most similar to the question
and answer (dense encoder); with URaG on, only among the items its deep layers read. Within an
item, the cited region is the block holding the answer, else the most similar block.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

from models.sampler import EvidenceSampler
from pipeline.answering.types import MARKER, Citation, EvidenceItem

__all__ = ["cite", "cite_numbers"]

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"\w+")
_QUOTE_CHARS = 300
_BARE_WORDS = 8  # an answer this short is looked for verbatim in the evidence


def _normal(text: str) -> str:
    """Lower case, citation markers and thousands separators removed, spaces folded."""
    text = MARKER.sub(" ", text.lower())
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _contains(haystack: str, needle: str) -> bool:
    """`needle` in `haystack` as whole words/numbers (both already `_normal`)."""
    if not needle:
        return False
    pattern = r"(?<![\w.])" + re.escape(needle) + r"(?![\w])"
    return re.search(pattern, haystack) is not None


def _core(answer: str) -> str:
    """The answer without markers, surrounding quotes or end punctuation, normalised."""
    return _normal(answer).strip(" .,;:!?'\"`")


def cite(
    question: str,
    answer: str,
    items: Sequence[EvidenceItem],
    names: Mapping[str, str],
    sampler: EvidenceSampler,
    read: Collection[int] | None = None,
) -> tuple[Citation, ...]:
    """Citations of an answer: the items it cites with `[n]`, else attributed ones.

    `read`: the evidence numbers the model's deep layers read (URaG kept them); an answer is
    only attributed to those. None: every item.
    """
    if not items:
        return ()
    numbers: list[int] = []
    for group in MARKER.findall(answer):
        for part in re.split(r"\s*[,;]\s*", group):
            n = int(part)
            if 1 <= n <= len(items) and n not in numbers:
                numbers.append(n)
    if numbers:
        similar = _Similarity(question, _core(answer), items, sampler)
        return tuple(_region(similar, items[n - 1], n, names, "cited") for n in numbers)
    candidates = sorted(n - 1 for n in read) if read else list(range(len(items)))
    out: list[Citation] = []
    sentences = [s for s in _SENTENCE.split(answer.strip()) if _core(s)] or [answer]
    for sentence in sentences:
        similar = _Similarity(question, _core(sentence), items, sampler)
        n = _attribute(similar, items, candidates)
        citation = _region(similar, items[n - 1], n, names, "attributed")
        if all(c.block_id != citation.block_id for c in out):
            out.append(citation)
    return tuple(out)


def cite_numbers(
    question: str,
    expression: str,
    items: Sequence[EvidenceItem],
    names: Mapping[str, str],
    sources: Sequence[int],
) -> tuple[Citation, ...]:
    """Citations of a computed answer: in each source item (evidence numbers [n]), the block
    that holds one of the expression's numbers, quoted at the sentence that holds it.

    The operands are matched as written in the expression and as the evidence writes them
    ("1358" finds "1,358"; `pipeline.answering.compute.find_sources` chose the items).
    """
    operands = re.findall(r"\d+(?:\.\d+)?", expression)
    out: list[Citation] = []
    for n in sources:
        if not 1 <= n <= len(items):
            continue
        item = items[n - 1]
        blocks = [b for b in item.blocks if b.text.strip()] or list(item.blocks)
        if not blocks:
            continue
        held = [(b, o) for b in blocks for o in operands if _contains(_normal(b.text), o)]
        block, number = held[0] if held else (blocks[0], "")
        out.append(
            Citation(
                doc_id=block.doc_id,
                file_name=names.get(block.doc_id, ""),
                page=block.page,
                bbox=block.bbox,
                quote=_quote(block.text, number, question),
                block_id=block.id,
                evidence=n,
                how="cited",
            )
        )
    return tuple(out)


class _Similarity:
    """Dense similarity of the question + answer to each evidence block (computed on demand).

    Block embeddings come from the sampler's cache, so the blocks it just scored cost nothing.
    """

    def __init__(
        self, question: str, core: str, items: Sequence[EvidenceItem], sampler: EvidenceSampler
    ) -> None:
        self.question, self.core = question, core
        self._items, self._sampler = items, sampler
        self._scores: dict[int, float] | None = None

    def of(self, block_id: int) -> float:
        if self._scores is None:
            blocks = [b for item in self._items for b in item.blocks]
            query = self._sampler.text_encoder.encode_queries(
                [f"{self.question} {self.core}".strip()]
            )[0]
            vectors = self._sampler.embed_texts([b.text for b in blocks])  # [N, D]
            self._scores = {b.id: float(v @ query) for b, v in zip(blocks, vectors, strict=True)}
        return self._scores[block_id]


def _attribute(similar: _Similarity, items: Sequence[EvidenceItem], candidates: Sequence[int]) -> int:
    """The evidence number an uncited answer (or sentence) comes from, among `candidates`
    (0-based item indexes)."""
    core = similar.core
    if core and len(core.split()) <= _BARE_WORDS:
        holding = [i for i in candidates if _contains(_normal(items[i].text), core)]
        if holding:
            return min(holding, key=lambda i: items[i].rank) + 1
    best = max(candidates, key=lambda i: max(similar.of(b.id) for b in items[i].blocks))
    return best + 1


def _region(
    similar: _Similarity, item: EvidenceItem, number: int, names: Mapping[str, str], how: str
) -> Citation:
    """The block of `item` that best supports the answer, as a citation."""
    core = similar.core
    blocks = [b for b in item.blocks if b.text.strip()] or item.blocks
    block = next((b for b in blocks if core and _contains(_normal(b.text), core)), None)
    if block is None:
        block = blocks[0] if len(blocks) == 1 else max(blocks, key=lambda b: similar.of(b.id))
    return Citation(
        doc_id=block.doc_id,
        file_name=names.get(block.doc_id, ""),
        page=block.page,
        bbox=block.bbox,
        quote=_quote(block.text, core, similar.question),
        block_id=block.id,
        evidence=number,
        how=how,
    )


def _quote(text: str, core: str, question: str) -> str:
    """The sentence of `text` holding the answer, else the one sharing most words with the
    question and answer; at most ~300 characters."""
    flat = re.sub(r"\s+", " ", text).strip()
    sentences = _SENTENCE.split(flat) or [flat]
    chosen = next((s for s in sentences if core and _contains(_normal(s), core)), None)
    if chosen is None:
        words = set(_WORD.findall(f"{question} {core}".lower()))
        chosen = max(sentences, key=lambda s: len(words & set(_WORD.findall(s.lower()))))
    if len(chosen) <= _QUOTE_CHARS:
        return chosen
    at = _normal(chosen).find(core) if core else -1
    start = max(0, min(at - _QUOTE_CHARS // 3, len(chosen) - _QUOTE_CHARS)) if at > 0 else 0
    snippet = chosen[start : start + _QUOTE_CHARS].strip()
    return ("…" if start else "") + snippet + ("…" if start + _QUOTE_CHARS < len(chosen) else "")
