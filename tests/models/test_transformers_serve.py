"""The remote generator against an independently written OpenAI-compatible server: `transformers
serve` (part of transformers) in its own process, on the CPU, offline, serving a model folder:
the tiny random Qwen2 of the test fixtures (fast, in the default suite) and the packaged
Qwen2.5-Coder-0.5B's converted fp32 folder (slow). A question on the sample guide goes end to end
through Folio: the answer streams, citations come back, and the greedy answer is the one the
in-process torch runtime gives on the same weights and prompt.

The packaged case is slow (a model load in the server and one in-process) and skipped when the
converted folder is not in the model cache (`FOLIO_MODEL_CACHE`, else the user's cache; any Folio run with the packaged model
and that cache creates it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from models._encoder_runtime import default_model_cache
from models._packaged import PACKAGED_MODELS, is_converted

QUESTION = "What is the default chunk size in tokens?"


def _converted_folder() -> Path:
    entry = PACKAGED_MODELS["qwen2.5-coder-0.5b"]
    folder = default_model_cache() / f"{entry.name}-{entry.sha256[:12]}"
    if not is_converted(folder):
        pytest.skip(f"no converted qwen2.5-coder-0.5b at {folder} (set FOLIO_MODEL_CACHE)")
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", params=["tiny", pytest.param("packaged", marks=pytest.mark.slow)])
def served(request: pytest.FixtureRequest, tiny_lm_dir: Path) -> tuple[str, Path]:
    """`transformers serve FOLDER` on the CPU: (its API root, the folder, which is its model name)."""
    folder = tiny_lm_dir if request.param == "tiny" else _converted_folder()
    cli = Path(sys.executable).with_name("transformers")
    command = [str(cli)] if cli.is_file() else [shutil.which("transformers") or "transformers"]
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(
        [*command, "serve", str(folder), "--device", "cpu", "--dtype", "float32",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited: {process.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("transformers serve did not come up within 300 s")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1", folder
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _settings(generator: dict) -> dict:
    return {
        "retrieval": {"mode": "bm25", "fusion": {"dense_weight": 0, "splade_weight": 0}},
        "parse": {"ocr": "never"},
        "ingest": {"workers": 1},
        "generator": generator,
        "answer": {"max_new_tokens": 24, "token_budget": 600},
    }


def test_a_question_streams_with_citations_and_matches_the_local_runtime(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    from app import Answer, Folio
    from pipeline.ingestion.sample import write_sample_pdf

    base_url, folder = served
    remote = {
        "runtime": "openai", "base_url": base_url, "model": str(folder),
        "request_timeout_s": 600,
    }  # fmt: skip
    pdf = write_sample_pdf(tmp_path / "folio-guide.pdf")
    with Folio(library=tmp_path / "lib", **_settings(remote)) as folio:
        (added,) = folio.ingest([pdf])
        assert added.status == "added"
        parts = list(folio.ask_stream(QUESTION))
    *deltas, answer = parts
    assert isinstance(answer, Answer) and answer.error is None, answer.error
    assert deltas and "".join(deltas).strip() and all(isinstance(d, str) for d in deltas)
    assert answer.citations and all(c.file_name == "folio-guide.pdf" for c in answer.citations)
    assert answer.stats.ttft_ms > 0 and answer.stats.new_tokens >= 1
    # The server's tokenizer is the model folder's: Folio counted the prompt exactly.
    assert answer.stats.prompt_tokens > 100

    # The same weights in-process (torch), same prompt, greedy: the same answer.
    local = {"runtime": "torch", "model": str(folder), "device": "cpu"}
    with Folio(library=tmp_path / "lib", **_settings(local)) as folio:
        in_process = folio.ask(QUESTION)
    assert in_process.text == answer.text
    assert in_process.stats.prompt_tokens == answer.stats.prompt_tokens
