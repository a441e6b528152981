"""Folio answering through a remote generator (runtime=openai) over real HTTP: the scripted
OpenAI-compatible server of tests/models/openai_fault_server.py in its own process, the sample
guide in a BM25 library. Cited answers come back; a server that drops the connection mid-answer
ends the question with one clear error and nothing half is kept (the batch file records the
failure, a rerun answers it again); figure crops stored at ingest go as image parts.

The same path against a real server (`transformers serve` on the packaged 0.5B) is
tests/models/test_transformers_serve.py (slow).
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from pathlib import Path

import pytest
from PIL import Image

from app import Answer, Folio
from tests.models.openai_fault_server import FaultServer

QUESTION = "What was the revenue in 2023?"


@pytest.fixture(scope="module", autouse=True)
def _fake_text_encoder(bow_encoder_class):
    """The sampler's text encoder: the bag-of-words fake (MiniLM has its own tests)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("models.encoders.MiniLMEncoder", lambda _config=None: bow_encoder_class())
        yield


@pytest.fixture(scope="module")
def server() -> FaultServer:
    with FaultServer() as running:
        yield running


def _settings(server: FaultServer, model: str, **generator) -> dict:
    return {
        "retrieval": {"mode": "bm25", "fusion": {"dense_weight": 0, "splade_weight": 0}},
        "parse": {"ocr": "never"},
        "ingest": {"workers": 1},
        "generator": {
            "runtime": "openai",
            "base_url": server.base_url,
            "model": model,
            "max_retries": 0,
            "request_timeout_s": 10,
            **generator,
        },
        "answer": {"max_new_tokens": 32, "token_budget": 400, "sampler": {"image_features": False}},
    }


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, sample_pdf: Path, server: FaultServer):
    root = tmp_path_factory.mktemp("remote-answer") / "lib"
    with Folio(library=root, **_settings(server, "normal")) as folio:
        (result,) = folio.ingest([sample_pdf])
        assert result.status == "added"
    return root


def test_a_cited_answer_streams_from_the_remote_server(library: Path, server: FaultServer) -> None:
    model = f"normal:{uuid.uuid4().hex[:8]}"
    with Folio(library=library, **_settings(server, model)) as folio:
        parts = list(folio.ask_stream(QUESTION))
    *deltas, answer = parts
    assert isinstance(answer, Answer) and answer.error is None
    assert len(deltas) > 3 and all(isinstance(d, str) for d in deltas)
    assert "4.2 billion dollars" in answer.text
    # "[1]" cites the first evidence item: a page of the guide, with its region.
    (cited,) = [c for c in answer.citations if c.how == "cited"]
    assert cited.evidence == 1 and cited.file_name == "folio-guide.pdf" and cited.page >= 1
    assert cited.bbox[2] > cited.bbox[0] and cited.quote
    assert answer.stats.model == model and answer.stats.ttft_ms > 0
    (request,) = server.requests(model)
    assert "Question: " + QUESTION in request["body"]["messages"][-1]["content"]


def test_a_connection_dropped_mid_answer_keeps_nothing_half(
    library: Path, server: FaultServer, tmp_path: Path
) -> None:
    with Folio(library=library, **_settings(server, "die")) as folio:
        shown: list[str] = []
        with pytest.raises(ConnectionError, match="broke off mid-answer") as caught:
            for part in folio.ask_stream(QUESTION):
                assert isinstance(part, str)  # never an Answer
                shown.append(part)
        assert shown  # it had begun streaming
        assert "\n" not in str(caught.value)
        out = tmp_path / "answers.jsonl"
        (failed,) = folio.ask_batch([QUESTION], out=out)
    assert failed.text == "" and not failed.citations
    assert "broke off mid-answer" in failed.error and "no partial answer is kept" in failed.error
    (line,) = out.read_text(encoding="utf-8").splitlines()
    stored = json.loads(line)
    assert stored["text"] == "" and "broke off mid-answer" in stored["error"]
    # The failure is not taken for an answer: the same batch against a working server redoes it.
    model = f"normal:{uuid.uuid4().hex[:8]}"
    with Folio(library=library, **_settings(server, model)) as folio:
        (answered,) = folio.ask_batch([QUESTION], out=out)
    assert answered.error is None and "4.2 billion" in answered.text
    assert len(server.requests(model)) == 1


def test_stored_figure_crops_go_as_image_parts(library: Path, server: FaultServer) -> None:
    model = f"normal:{uuid.uuid4().hex[:8]}"
    settings = _settings(server, model, images=True)
    settings["answer"]["sampler"]["image_token_cost"] = 64
    with Folio(library=library, **settings) as folio:
        answer = folio.ask("What does Figure 1 show about the path of a question?")
    figures = [e for e in answer.evidence if e.image is not None]
    assert figures and all(e.kind in ("figure", "table") for e in figures)
    (request,) = server.requests(model)
    user = request["body"]["messages"][-1]
    images = [p["image_url"]["url"] for p in user["content"] if p["type"] == "image_url"]
    assert len(images) == len(figures)
    for url, figure in zip(images, figures, strict=True):
        sent = Image.open(io.BytesIO(base64.b64decode(url.removeprefix("data:image/png;base64,"))))
        with Image.open(figure.image) as crop:
            # The stored crop itself, downscaled to the pixel limit only when larger.
            assert sent.format == "PNG"
            assert abs(sent.width / sent.height - crop.width / crop.height) < 0.05
            assert sent.width <= crop.width


def test_the_web_page_shows_the_broken_answer_as_one_clear_message(
    library: Path, server: FaultServer
) -> None:
    from app.web.chat import respond

    with Folio(library=library, **_settings(server, "die")) as folio:
        replies = list(respond(QUESTION, [], folio))
    assert len(replies) >= 2  # the partial text streamed first
    last = replies[-1]
    assert last.answer is not None and last.answer.text == ""
    assert last.answer.error.startswith(f"the generator at {server.base_url} broke off mid-answer")
    assert "internal error" not in last.text and "broke off mid-answer" in last.text
