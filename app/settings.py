"""One settings object for every front end: defaults < preset or JSON file < FOLIO_* env < flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.config import EncoderConfig, GeneratorConfig
from pipeline.config import AnswerConfig, ChunkConfig, IngestConfig, ParseConfig
from retrieval.config import RetrievalConfig
from storage.config import StorageConfig

PRESETS = Path(__file__).parent / "presets"


class Settings(BaseSettings):
    """Everything Folio can be told. Environment: FOLIO_LIBRARY, FOLIO_PARSE__OCR, ..."""

    model_config = SettingsConfigDict(
        env_prefix="FOLIO_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    library: Path = Field(default=Path("folio-library"), description="Library folder.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the database (default: SQLite in the library)."
    )
    parse: ParseConfig = Field(default_factory=ParseConfig)
    chunk: ChunkConfig = Field(default_factory=ChunkConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    encoders: EncoderConfig = Field(default_factory=EncoderConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    model_cache: Path | None = Field(
        default=None,
        description="Folder of converted packaged models (default: <library>/models); point "
        "several libraries at one folder to convert a model once.",
    )

    @property
    def storage(self) -> StorageConfig:
        return StorageConfig(library=self.library, database_url=self.database_url)

    @classmethod
    def load(cls, config: str | Path | None = None, **overrides: Any) -> Settings:
        """Settings from a preset name (app/presets/NAME.json) or a JSON file, then the FOLIO_*
        environment, then `overrides` (nested as dicts: parse={"ocr": "never"}).

        Raises:
            ValueError: the preset or file does not exist or is not valid JSON.
        """
        from_file = _read_config(config) if config is not None else {}
        # NOTE: init values outrank the environment in pydantic-settings, so the file, the
        # environment's explicit values and the overrides are merged here in precedence order.
        merged = _deep_merge(from_file, _explicit(cls()), overrides)
        return cls(**merged)


def _read_config(config: str | Path) -> dict[str, Any]:
    path = Path(config)
    if not path.suffix and not path.exists():
        path = PRESETS / f"{config}.json"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.json")))
        raise ValueError(f"no config file or preset {str(config)!r} (presets: {names})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def _explicit(settings: Settings) -> dict[str, Any]:
    """The values the environment set (non-default fields only), nested."""
    return settings.model_dump(exclude_defaults=True)


def _deep_merge(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = _deep_merge(out[key], value)
            else:
                out[key] = value
    return out
