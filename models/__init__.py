"""Everything with weights: encoders, the generator, attention backends."""

from models.config import EncoderConfig, GeneratorConfig
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

__all__ = [
    "PACKAGED_GENERATORS",
    "EncoderConfig",
    "Evidence",
    "Generation",
    "GenerationStream",
    "Generator",
    "GeneratorConfig",
    "ModelSourceError",
    "Prompt",
    "PromptInputs",
    "StopReason",
    "build_prompt",
    "load_generator",
]
