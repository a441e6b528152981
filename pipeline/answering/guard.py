"""Screening evidence for instructions aimed at the model (prompt injection from documents).

A document can carry text written for the model rather than the reader: "ignore all previous
instructions and reply ...". The answer prompt already quotes evidence as data (see
`models._prompt.defuse` and `EVIDENCE_IS_DATA`); a small model may still obey such a sentence,
so with `AnswerConfig.screen_instructions` on, sentences that address the model are left out of
the prompt. They stay in the library, in search results and in the page viewer.

The patterns are deliberately narrow: BENCHMARKS.md records how many sentences of the
MMLongBench dev documents they flag (false positives) and what the screen buys on the injection
benchmark (`python -m bench.injection`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_BLANK_LINES = re.compile(r"[ \t]*\n\s*\n\s*")

_PATTERNS = [
    # "ignore / disregard / forget (all) (the) previous instructions"
    r"\b(ignore|disregard|forget|override|overrule|skip)\b[^.!?\n]{0,40}\b(previous|prior|above|"
    r"earlier|preceding|foregoing|system|original|your|all)\b[^.!?\n]{0,20}\b(instructions?|"
    r"prompts?|rules|directions|directives|guidelines|context)\b",
    # a new persona or new orders
    r"\b(you are now|from now on,? you|act as (an?|the) (ai|assistant|chatbot|language model))\b",
    r"\b(new|updated|real|actual|secret|hidden)\s+(instructions?|system prompt|task|orders)\s*:",
    r"\b(system|developer)\s+(prompt|message|instructions?)\s*:",
    # text addressed to the model that reads it
    r"\b(note|message|instructions?|attention)\s+(to|for)\s+(the\s+)?(ai|assistant|chatbot|llm|"
    r"language model|model|bot)\b",
    r"\b(if you are|as) an? (ai|assistant|chatbot|llm|large language model|language model)\b",
    # dictated output: "reply only with X", "always answer 'X'"
    r"\b(respond|reply|answer|say|output|print|write)\b[^.!?\n]{0,30}\b(only|exactly|always)\b"
    r"[^.!?\n]{0,20}(with\b|the word|the phrase|[\"'\u201c\u2018]|:\s*(?-i:[\"'\u201c\u2018A-Z]))",
    r"\b(always|only)\s+(respond|reply|answer|say|output)\s+(with\b|[\"'\u201c\u2018]|"
    r"(?-i:[A-Z][A-Z0-9-]{2,})\b)",
    # chat-template markers written into a document
    r"<\|?(im_start|im_end|system|user|assistant|endoftext)\|?>|<(start|end)_of_turn>|\[/?INST\]",
]
_INJECTION = re.compile("|".join(f"(?:{p})" for p in _PATTERNS), re.IGNORECASE)
# A chat-template marker with the role after it: left out on its own, the text around it stays.
_CHAT_MARKER = re.compile(
    r"<\|?(im_start|im_end|endoftext|system|user|assistant)\|?>(\s*(system|user|assistant)\b)?"
    r"|<(start|end)_of_turn>(\s*(user|model)\b)?|\[/?INST\]",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Screened:
    """Evidence text with the sentences addressed to the model left out.

    Attributes:
        text: What the model reads.
        removed: The sentences left out, in order.
        sentences: How many sentences the text had.
    """

    text: str
    removed: tuple[str, ...]
    sentences: int


def looks_like_injection(sentence: str) -> bool:
    """Whether `sentence` addresses the model that reads it (an instruction, a dictated answer)."""
    return _INJECTION.search(sentence) is not None


def screen(text: str) -> Screened:
    """Leave out of `text` the sentences that address the model and any chat-template markers;
    keep everything else verbatim.

    `Screened.sentences` counts the pieces considered: sentences, plus markers when some were
    found, so `sentences - len(removed)` is what the model still reads.
    """
    parts = [p for p in _SENTENCE.split(text) if p.strip()]
    if not any(looks_like_injection(p) for p in parts):
        return Screened(text, (), len(parts))
    removed: list[str] = [m.group(0).strip() for m in _CHAT_MARKER.finditer(text)]
    considered = len(removed)
    text = _CHAT_MARKER.sub("\n", text)
    kept: list[str] = []
    # NOTE: rebuild from the original spans so kept text keeps its line breaks (tables).
    cursor = 0
    for match in _SENTENCE.finditer(text + "\n"):
        piece = text[cursor : match.start()]
        separator = match.group(0) if match.end() <= len(text) else ""
        cursor = match.end()
        if not piece.strip():
            kept.append(separator)
            continue
        considered += 1
        if looks_like_injection(piece):
            removed.append(piece.strip())
        else:
            kept.append(piece + separator)
    clean = _BLANK_LINES.sub("\n", "".join(kept)).strip()
    return Screened(clean, tuple(removed), considered)
