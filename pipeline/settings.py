"""One settings object for every front end: defaults < preset or JSON file < FOLIO_* env < flags.

It lives in `pipeline` so that everything that answers as `folio` does (the front ends in `app/`
and the research scripts in `pipeline/research/`) reads the same settings the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.config import EncoderConfig, GeneratorConfig
from pipeline.config import AnswerConfig, ChunkConfig, IngestConfig, ParseConfig, RayConfig
from retrieval.config import RetrievalConfig
from storage.config import StorageConfig

__all__ = ["PRESETS", "ServeConfig", "Settings"]

PRESETS = Path(__file__).parent / "presets"


class ServeConfig(BaseModel):
    """The web app (`folio serve`): where it listens, who may use it, what it accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Address to listen on (loopback: this machine only).")
    port: int = Field(default=7860, ge=1, le=65535, description="Port to listen on.")
    auth: str | None = Field(
        default=None,
        description="'user:password' required to open the app (FOLIO_SERVE__AUTH keeps it out "
        "of the process list).",
    )
    allow_no_auth: bool = Field(
        default=False,
        description="Listen on a non-loopback address without a password (anyone who can reach "
        "it can read, add and delete documents). Off: `folio serve` refuses.",
    )
    api_key: str | None = Field(
        default=None,
        repr=False,
        description="Bearer key that `folio serve --api` accepts for the local user's library "
        "(FOLIO_SERVE__API_KEY keeps it out of the process list); accounts get their own key "
        "from `folio user key NAME`.",
    )
    max_upload_mb: float = Field(default=100, gt=0, description="Largest PDF accepted by upload, in MB.")
    max_upload_pages: int = Field(default=2000, ge=1, description="Most pages of an uploaded PDF.")
    max_upload_files: int = Field(default=50, ge=1, description="Most PDFs in one upload.")
    concurrent_questions: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Questions answered at the same time (others wait their turn); uploads "
        "and deletes run beside them, one at a time.",
    )
    preload: bool = Field(
        default=True,
        description="Load the search index and the answering models in the background as soon "
        "as the app is up (the page itself never waits for them).",
    )


class Settings(BaseSettings):
    """Everything Folio can be told. Environment: FOLIO_LIBRARY, FOLIO_PARSE__OCR, ..."""

    model_config = SettingsConfigDict(
        env_prefix="FOLIO_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    library: Path = Field(default=Path("folio-library"), description="Library folder.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the database (default: SQLite in the library)."
    )
    user: str | None = Field(
        default=None,
        description="Whose documents to see and add in a library shared by several users "
        "(None: the local user's). The web app takes it from each login instead.",
    )
    parse: ParseConfig = Field(default_factory=ParseConfig)
    chunk: ChunkConfig = Field(default_factory=ChunkConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    encoders: EncoderConfig = Field(default_factory=EncoderConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
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
        """Settings from a preset name (pipeline/presets/NAME.json) or a JSON file, then the FOLIO_*
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
