"""Everything with weights: encoders, the generator, attention backends."""

from models._packaged import resolve_model_dir
from models.config import EncoderConfig, GeneratorConfig, GeneratorRuntime, SamplerConfig
from models.generator import (
    PACKAGED_GENERATORS,
    Evidence,
    Generation,
    GenerationStream,
    Generator,
    ModelSourceError,
    Prompt,
    PromptInputs,
    StopReason,
    build_prompt,
    load_generator,
)
from models.runtime import RuntimeChoice, select_runtime
from models.sampler import Candidate, EmbeddingCache, EvidenceSampler, SampleResult

__all__ = [
    "PACKAGED_GENERATORS",
    "Candidate",
    "EmbeddingCache",
    "EncoderConfig",
    "Evidence",
    "EvidenceSampler",
    "Generation",
    "GenerationStream",
    "Generator",
    "GeneratorConfig",
    "GeneratorRuntime",
    "ModelSourceError",
    "Prompt",
    "PromptInputs",
    "RuntimeChoice",
    "SampleResult",
    "SamplerConfig",
    "StopReason",
    "build_prompt",
    "load_generator",
    "resolve_model_dir",
    "select_runtime",
]
