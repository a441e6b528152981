"""The answering models, loaded once and shared by every question: generators, samplers (with
their encoders and embedding cache), URaG runners and REFRAG compressors.

Concurrent questions (threads of the web app or of a caller) share them; one lock makes sure
each is loaded once. Questions themselves run without it, so nothing here holds per-question
state (URaG's per-prompt selection lives on a `UragPass` each question binds).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.config import (
    EncoderConfig,
    GeneratorConfig,
    GeneratorRuntime,
    RefragConfig,
    SamplerConfig,
    UragConfig,
)
from models.generator import Generator
from models.runtime import select_runtime
from models.sampler import EmbeddingCache, EvidenceSampler
from pipeline.answering.prompt import token_counter
from pipeline.config import AnswerConfig

logger = logging.getLogger(__name__)

__all__ = ["ModelCache", "with_runtime_for"]

# Generators kept loaded: the configured one and one per-request alternative.
_GENERATORS_KEPT = 2


class ModelCache:
    """Loads the answering models on first use and keeps them.

    Args:
        load: Loads a generator (`models.generator.load_generator`; tests pass a fake).
        cache_dir: Folder for converted packaged models.
        encoder_config: Encoders for the sampler when none is given.
        text_encoder: A callable giving the sampler's text encoder when first needed (the
            library index's dense encoder, when it has one), else None: MiniLM.
        image_encoder: The sampler's image encoder, instead of EfficientNet-Lite0.
    """

    def __init__(
        self,
        load: Callable[..., Generator],
        cache_dir: Path,
        encoder_config: EncoderConfig,
        *,
        text_encoder: Callable[[], Any | None] | None = None,
        image_encoder: Any | None = None,
    ) -> None:
        self._load = load
        self.cache_dir = cache_dir
        self.encoder_config = encoder_config
        self._find_text_encoder = text_encoder
        self._text_encoder: Any | None = None
        self._image_encoder = image_encoder
        self._generators: dict[GeneratorConfig, Generator] = {}
        self._samplers: dict[tuple[SamplerConfig, int], EvidenceSampler] = {}
        self._embeddings = EmbeddingCache()
        self._urag: dict[tuple[UragConfig, int], Any] = {}
        self._refrag: dict[tuple[str | None, int], Any] = {}
        self._loading = threading.RLock()

    def generator(self, config: GeneratorConfig) -> Generator:
        """The loaded generator for `config` (loaded on first use; the last two are kept)."""
        with self._loading:
            if config not in self._generators:
                if len(self._generators) >= _GENERATORS_KEPT:
                    oldest = self._generators.pop(next(iter(self._generators)))
                    # Samplers count tokens with their generator's tokenizer: drop them with it.
                    self._samplers = {k: v for k, v in self._samplers.items() if k[1] != id(oldest)}
                self._generators[config] = self._load(config, cache_dir=self.cache_dir)
            return self._generators[config]

    def sampler(self, config: SamplerConfig, generator: Generator) -> EvidenceSampler:
        """The sampler for `config`, counting tokens with `generator`'s tokenizer."""
        with self._loading:
            key = (config, id(generator))
            if key not in self._samplers:
                if self._image_encoder is None and config.image_features:
                    from models.encoders import EfficientNetImageEncoder

                    self._image_encoder = EfficientNetImageEncoder(self.encoder_config)
                self._samplers[key] = EvidenceSampler(
                    config,
                    self._text(),
                    self._image_encoder if config.image_features else None,
                    count_tokens=token_counter(generator),
                    cache=self._embeddings,
                )
            return self._samplers[key]

    def _text(self) -> Any:
        if self._text_encoder is None:
            found = self._find_text_encoder() if self._find_text_encoder is not None else None
            if found is None:
                from models.encoders import MiniLMEncoder

                found = MiniLMEncoder(self.encoder_config)
            self._text_encoder = found
        return self._text_encoder

    def urag(self, config: UragConfig, generator: Generator) -> Any:
        """The URaG runner (`models.urag.UragRunner`) for `config` on `generator`: shared
        weights; each question binds its own pass."""
        with self._loading:
            key = (config, id(generator))
            if key not in self._urag:
                from models.urag import UragRunner

                self._urag = {k: v for k, v in self._urag.items() if k[1] == id(generator)}
                self._urag[key] = UragRunner(generator, config)
            return self._urag[key]

    def refrag(self, config: RefragConfig, generator: Generator) -> Any:
        """The REFRAG compressor (`models.refrag.RefragCompressor`) for `generator`: its
        projector loads once per generator.

        Raises:
            FileNotFoundError: No projector file (train one with
                `python -m pipeline.research.refrag_train`).
            ValueError: A projector trained for another hidden size.
        """
        with self._loading:
            key = (config.projector, id(generator))
            if key not in self._refrag:
                from models.refrag import (
                    ChunkEncoder,
                    ChunkProjector,
                    RefragCompressor,
                    default_projector_path,
                )

                path = (
                    Path(config.projector)
                    if config.projector
                    else default_projector_path(generator)
                )
                self._refrag = {k: v for k, v in self._refrag.items() if k[1] == id(generator)}
                projector = ChunkProjector.load(path)
                self._refrag[key] = RefragCompressor(
                    generator, projector, ChunkEncoder.for_projector(projector)
                )
            return self._refrag[key]


def with_runtime_for(config: AnswerConfig, generator: GeneratorConfig) -> GeneratorConfig:
    """`generator` with its runtime resolved for a request whose stages read or feed the model's
    internals (URaG, REFRAG): those run on torch (`models.runtime.select_runtime`; runtime auto
    picks it and the log says why, an explicit openvino or openai is refused in one line, never
    switched). Requests without such a stage keep `generator` as it is, so their runtime
    resolves at load.

    Raises:
        ValueError: runtime="openvino" or "openai" with URaG or REFRAG on, or "openai" with the
            answerability check.
    """
    if config.answerability and generator.runtime is GeneratorRuntime.OPENAI:
        raise ValueError(
            "the answerability check reads the model's next-token probabilities, which a remote "
            "generator (runtime=openai) does not give: switch it off (--no-answerability) or use "
            "a local model"
        )
    stage = "URaG" if config.use_urag else "REFRAG" if config.use_refrag else None
    if stage is None:
        return generator
    choice = select_runtime(generator, needs_internals=True, stage=stage)
    if choice.runtime != generator.runtime:
        logger.info("generator runtime for %s: %s (%s)", stage, choice.runtime, choice.reason)
    return generator.model_copy(update={"runtime": choice.runtime})
