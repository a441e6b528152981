"""Shared fixtures. TRITON_INTERPRET must be set before anything imports `kernels`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FOLIO_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (set FOLIO_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`, or skip with the reason when it is absent."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def papers_dir(shared_data: Path) -> Path:
    return _need(shared_data / "pdfs" / "papers")


@pytest.fixture(scope="session")
def robustness_dir(shared_data: Path) -> Path:
    return _need(shared_data / "pdfs" / "robustness")


@pytest.fixture(scope="session")
def mmlb_dir(shared_data: Path) -> Path:
    return _need(shared_data / "mmlongbench" / "dev")


@pytest.fixture(scope="session")
def ir_dir(shared_data: Path) -> Path:
    return _need(shared_data / "ir")


# ------------------------------------------------ tiny random models and a fake text encoder
# Shared by the answering tests (tests/pipeline/test_answer.py, tests/app/test_api_answer.py):
# mechanics only, no weights; real models are exercised by the tests marked slow.

_TINY_SENTENCES = [
    "The revenue in 2023 was 4.2 billion dollars, up from 3.9 billion in 2022.",
    "Figure 1 shows the path of a question through Folio. Table 1 lists the default settings.",
    "Question: how many pages does the parser process per second? Answer: ten pages.",
    "Evidence: the sampler keeps the most relevant paragraphs and figures under a token budget.",
]
_TINY_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_TINY_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<bos>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]


def tiny_tokenizer():
    """A byte-level BPE tokenizer with a ChatML template, trained offline on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=_TINY_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_TINY_SENTENCES * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<bos>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    tokenizer.chat_template = _TINY_CHATML
    return tokenizer


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 causal LM (2 layers, hidden 64) saved with its tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-qwen2-answer")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Gemma 3 vision-language model with its processor (28x28 images, 4 tokens)."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3 import Gemma3ImageProcessorPil

    tokenizer = tiny_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in _TINY_SPECIALS}
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
        tokenizer=tokenizer,
        chat_template=_TINY_CHATML,
        image_seq_length=4,
    )
    config = Gemma3Config(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 8192,
            "sliding_window": 16,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
        },
        mm_tokens_per_image=4,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config)
    folder = tmp_path_factory.mktemp("tiny-gemma3-vl-answer")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class BagOfWordsEncoder:
    """A fake dense text encoder: hashed bag of lower-cased words, L2-normalised (64-d).

    Deterministic and instant, so sampler and citation tests do not depend on MiniLM.
    """

    dim = 64
    name = "bag-of-words-64"

    def __init__(self) -> None:
        self.calls = 0

    def _vectors(self, texts):
        import re
        import zlib

        import numpy as np

        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, zlib.crc32(word.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)

    def encode_queries(self, texts):
        return self._vectors(list(texts))

    def encode_documents(self, texts):
        return self._vectors(list(texts))


@pytest.fixture
def bow_encoder() -> BagOfWordsEncoder:
    return BagOfWordsEncoder()


@pytest.fixture(scope="session")
def bow_encoder_class() -> type[BagOfWordsEncoder]:
    """The fake encoder class (to patch in where code builds its own encoder)."""
    return BagOfWordsEncoder


@pytest.fixture(scope="session")
def tiny_settings(tiny_lm_dir: Path):
    """Settings for a Folio on the tiny model: BM25 only, no OCR, one parser worker.

    A function: `tiny_settings(max_new_tokens=3, token_budget=400, **extra)` returns the dict.
    """

    def build(max_new_tokens: int = 3, token_budget: int = 400, **extra: dict) -> dict:
        return {
            "retrieval": {"mode": "bm25", "fusion": {"dense_weight": 0, "splade_weight": 0}},
            "parse": {"ocr": "never"},
            "ingest": {"workers": 1},
            "generator": {"model": str(tiny_lm_dir), "device": "cpu"},
            "answer": {
                "max_new_tokens": max_new_tokens,
                "token_budget": token_budget,
                "sampler": {"image_features": False},
            },
            **extra,
        }

    return build


# ------------------------------------------------ `folio serve` and a browser, for web tests
# Shared by tests/app/test_web_e2e.py and tests/reliability/test_web_concurrency.py.


def chromium_path() -> str | None:
    """Debian's chromium (no browser downloads), or None when it is not installed."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, server, timeout: float) -> None:  # noqa: ANN001 - a Popen
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"folio serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"folio serve did not answer at {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def start_folio_server(tmp_path_factory: pytest.TempPathFactory):
    """A function `(settings, artifacts, env=None) -> (url, log)` that runs `folio serve` on a
    free loopback port with an empty library, those settings and extra environment variables;
    stopped when the module ends, its log copied into `artifacts`."""
    import json
    import shutil
    import subprocess
    import sys

    started: list[tuple[subprocess.Popen, Path, Path]] = []

    def start(
        settings: dict, artifacts: Path, env: dict | None = None, prepare=None, args=()  # noqa: ANN001
    ) -> tuple[str, Path]:
        """`prepare(library_folder)`, if given, runs before the server starts; `args` are
        more options of `folio serve` (e.g. `--api`)."""
        work = tmp_path_factory.mktemp("folio-serve")
        if prepare is not None:
            prepare(work / "lib")
        config = work / "settings.json"
        config.write_text(json.dumps(settings))
        port = _free_port()
        log = work / "serve.log"
        folio = Path(sys.executable).with_name("folio")
        command = [str(folio), "--library", str(work / "lib"), "--config", str(config)]
        command += ["serve", "--port", str(port), *args]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        with log.open("w") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work
            )
        started.append((process, log, artifacts))
        url = f"http://127.0.0.1:{port}/"
        _wait_http(url, process, timeout=120)
        return url, log

    yield start
    for process, log, artifacts in started:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, artifacts / "serve.log")


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium driven by Playwright."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        # NOTE: --no-sandbox because CI runs as root.
        instance = p.chromium.launch(
            executable_path=chromium_path(), headless=True, args=["--no-sandbox"]
        )
        yield instance
        instance.close()
