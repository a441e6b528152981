"""Generation of a prepared question: the plain prompt, or with REFRAG's compressed evidence, or
through URaG's pruned prefill; streamed, with the stages' stats."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from models.generator import GenerationStream, Generator
from pipeline.answering.answer_types import infer_type
from pipeline.answering.answerability import check_answerability
from pipeline.answering.cache import ModelCache
from pipeline.answering.compute import compute_answer
from pipeline.answering.progress import Progress
from pipeline.answering.types import Generated, Prepared, StageStats

logger = logging.getLogger(__name__)

__all__ = ["GenerationRun"]


class GenerationRun(GenerationStream):
    """The answer's text deltas as the model writes them; `result` (a `Generated`) once they are
    consumed.

    Args:
        prepared: The question with its prompt (`Prepared.answerable`).
        generator: The loaded generator of `prepared.generator_config`.
        models: Where the URaG runner and the REFRAG compressor are loaded.
        say: Told as the prefill starts and at the first token.
    """

    def __init__(
        self, prepared: Prepared, generator: Generator, models: ModelCache, say: Progress
    ) -> None:
        if prepared.prompt is None:
            raise ValueError("nothing to generate: the question found no evidence")
        super().__init__(_run(prepared, generator, models, say))


def _run(
    prepared: Prepared, generator: Generator, models: ModelCache, say: Progress
) -> Iterator[str]:
    cfg, items, prompt = prepared.config, prepared.items, prepared.prompt
    assert prompt is not None  # GenerationRun checked it
    started = time.perf_counter()
    stages: list[StageStats] = []
    computation = None
    if prepared.compute_prompt is not None:
        say("Computing the answer…")
        computation, computed, stage = compute_answer(
            prepared, generator, infer_type(prepared.question)
        )
        stages.append(stage)
        if computation.ok and computed is not None:
            first_token = time.perf_counter()
            yield computation.answer
            evidence_tokens = sum(item.tokens for item in items)
            stages.append(
                StageStats(
                    "prompt", len(items), len(items), evidence_tokens, computed.prompt_tokens, 0.0
                )
            )
            return Generated(
                generation=computed,
                stages=tuple(stages),
                first_token=first_token,
                finished=first_token,
                computation=computation,
            )
    urag_pass = None
    compression = None
    inputs = None
    cache: Any | None = None
    if cfg.use_refrag and items and not prompt.images:
        from models.urag import layout_prompt

        t_compress = time.perf_counter()
        layout = layout_prompt(generator, prompt)
        compression = models.refrag(cfg.refrag, generator).compress(
            layout.inputs.input_ids, layout.segments, k=cfg.refrag.chunk_tokens,
            expand_fraction=cfg.refrag.expand_fraction, question=prepared.question,
        )  # fmt: skip
        stages.append(
            StageStats(
                "refrag", len(compression.expanded), compression.chunks,
                compression.positions, compression.tokens_before,
                (time.perf_counter() - t_compress) * 1000,
            )
        )  # fmt: skip
        stream = generator.stream(
            compression.inputs, max_new_tokens=cfg.max_new_tokens, stop_at_newline=True,
            **say.stream_args(),
        )  # fmt: skip
    elif cfg.use_urag and items and not prompt.images:
        from models.urag import layout_prompt

        # A pass of its own per question: concurrent questions share the runner's weights only.
        urag_pass = models.urag(cfg.urag, generator).bind(layout_prompt(generator, prompt))
        stream = generator.stream(
            urag_pass.layout.inputs, max_new_tokens=cfg.max_new_tokens, stop_at_newline=True,
            **say.stream_args(urag_pass),
        )  # fmt: skip
    else:
        if cfg.answerability:
            # The check continues this conversation: its tokens, and on torch this KV cache.
            inputs = generator.encode(prompt)
            cache = generator.new_cache() if generator.runtime == "torch" else None
        stream = generator.stream(
            inputs if inputs is not None else prompt, max_new_tokens=cfg.max_new_tokens,
            stop_at_newline=True,
            **({"cache": cache} if cache is not None else {}), **say.stream_args(),
        )  # fmt: skip
    first_token: float | None = None
    for delta in stream:
        if first_token is None:
            first_token = time.perf_counter()
            say("Writing the answer…")
        yield delta
    result = stream.result
    finished = time.perf_counter()
    urag_kept: tuple[int, ...] = ()
    if urag_pass is not None and urag_pass.selection is not None:
        chosen = urag_pass.selection
        urag_kept = tuple(i + 1 for i in chosen.kept)
        stages.append(
            StageStats(
                "urag", len(chosen.kept), len(items), chosen.kept_evidence_tokens,
                chosen.evidence_tokens, chosen.ms,
            )
        )  # fmt: skip
    evidence_tokens = sum(item.tokens for item in items)
    stages.append(
        StageStats("prompt", len(items), len(items), evidence_tokens, result.prompt_tokens, 0.0)
    )
    stages.append(
        StageStats(
            "generate", 1, 1, result.new_tokens, cfg.max_new_tokens, (finished - started) * 1000
        )
    )
    answerability = None
    if cfg.answerability:
        say("Checking that the evidence states the answer…")
        try:
            answerability, checked = check_answerability(
                prepared, result.text.strip(), generator,
                inputs if inputs is not None else generator.encode(prompt), cache=cache,
            )  # fmt: skip
            stages.append(checked)
        except NotImplementedError as exc:
            logger.warning("answerability check skipped: %s", exc)
    return Generated(
        generation=result,
        stages=tuple(stages),
        first_token=first_token,
        finished=finished,
        computation=computation,
        urag_kept=urag_kept,
        refrag_ratio=round(compression.ratio, 3) if compression is not None else 1.0,
        refrag_compressed=compression.items_compressed if compression is not None else (),
        answerability=answerability,
    )
