"""Evidence as the model reads it: screened, quoted as data, labelled, numbered, in a prompt."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from models.generator import EVIDENCE_IS_DATA, Evidence, Generator, Prompt, defuse
from models.generator import build_prompt as render_prompt
from pipeline.answering.guard import screen
from pipeline.answering.types import EvidenceItem, StageStats
from pipeline.config import AnswerConfig

logger = logging.getLogger(__name__)

__all__ = ["CITE_INSTRUCTION", "build_prompt", "read_texts", "token_counter"]

CITE_INSTRUCTION = (
    "Answer the question using only the numbered evidence. "
    "Reply with only the answer (a number, a short phrase, or a list), then the number of the "
    "evidence it comes from in brackets, for example: 42 [3]. "
    'If the evidence does not contain the answer, reply "Not answerable".'
)
_ALL_SCREENED = "(left out: text addressed to the model)"


def token_counter(generator: Generator) -> Callable[[str], int]:
    """Token count of a text in the generator's tokenizer (no special tokens)."""
    tokenizer = generator.tokenizer

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    return count


def read_texts(
    items: Sequence[EvidenceItem], cfg: AnswerConfig, generator: Generator
) -> tuple[list[str], tuple[StageStats, ...]]:
    """The text of each item as the model reads it: screened, then quoted as data.

    Returns:
        (the texts, the `screen` stage's stats when screening ran).
    """
    started = time.perf_counter()
    texts = [item.text for item in items]
    stages: tuple[StageStats, ...] = ()
    if cfg.screen_instructions and texts:
        count = token_counter(generator)
        results = [screen(text) for text in texts]
        removed = [r for r in results if r.removed]
        for item, result in zip(items, results, strict=True):
            if result.removed:
                logger.warning(
                    "left out of the prompt, addressed to the model (%s p. %d): %s",
                    item.doc_id[:12], item.page, " | ".join(result.removed)[:300],
                )  # fmt: skip
        texts = [r.text or _ALL_SCREENED for r in results]
        total = sum(r.sentences for r in results)
        tokens = sum(i.tokens for i in items)
        stages = (
            StageStats(
                "screen",
                total - sum(len(r.removed) for r in removed),
                total,
                tokens - sum(count(" ".join(r.removed)) for r in removed),
                tokens,
                (time.perf_counter() - started) * 1000,
            ),
        )
    if cfg.quote_evidence:
        texts = [defuse(text, generator.control_tokens) for text in texts]
    return texts, stages


def build_prompt(
    question: str,
    items: Sequence[EvidenceItem],
    texts: Sequence[str],
    names: Mapping[str, str],
    cfg: AnswerConfig,
    generator: Generator,
    *,
    ask: str = "",
) -> Prompt:
    """The prompt of a question: instructions, the items labelled and numbered, the question.

    `texts` are the items' texts as the model reads them (`read_texts`); `names` the file name
    of each document (items of several documents are labelled with it); `ask`, a line after the
    question ("Answer with a single integer."): after it, so that prompts that differ only in
    it share the prefix of instructions and evidence (the runtime's prefix cache reuses it).
    """
    several_docs = len({i.doc_id for i in items}) > 1
    evidence = [
        Evidence(
            text=_label(item, names, several_docs) + text,
            image=item.image if generator.is_multimodal else None,
        )
        for item, text in zip(items, texts, strict=True)
    ]
    instructions = CITE_INSTRUCTION if cfg.ask_citations else generator.config.instructions
    if cfg.quote_evidence and evidence:
        instructions = f"{instructions} {EVIDENCE_IS_DATA}".strip()
        question = defuse(question, generator.control_tokens, role_lines=False)
    if ask:
        question = f"{question}\n{ask}"
    return render_prompt(
        question, evidence, instructions=instructions, question_first=cfg.question_first
    )


def _label(item: EvidenceItem, names: Mapping[str, str], several_docs: bool) -> str:
    """Where an evidence item comes from, as the model reads it: `(page 3) ` or with the file."""
    if several_docs:
        return f"({names.get(item.doc_id, item.doc_id[:12])}, page {item.page}) "
    return f"(page {item.page}) "
