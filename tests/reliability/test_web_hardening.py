"""The web app under hostile input, against a real `folio serve` over HTTP (no browser).

- It listens on loopback only, and refuses a public address without a password.
- Upload file names never become paths: traversal names land inside the upload folder, and the
  library stores a name only as text (escaped wherever the page shows it).
- Uploads over the size limit are refused with a message; the size, type and page checks of
  the upload panel say which limit was broken.
- No response carries a stack trace, and the file route serves nothing outside its folders.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pymupdf
import pytest

from app import Folio
from app.web import UploadRow, check_upload, documents_html, progress_html
from pipeline.library.documents import list_documents

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("FOLIO_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "web-hardening"
TRAVERSAL_NAMES = [
    "../../../../tmp/folio-evil-{tag}.pdf",
    "..\\..\\..\\folio-evil-{tag}.pdf",
    "/etc/folio-evil-{tag}.pdf",
    "a/../../folio-evil-{tag}.pdf",
    "..%2f..%2ffolio-evil-{tag}.pdf",
]
XSS_NAME = '<img src=x onerror="alert(1)">.pdf'


def _pdf_bytes(text: str = "A small test page.") -> bytes:
    document = pymupdf.open()
    document.new_page().insert_text((72, 72), text)
    data = document.tobytes()
    document.close()
    return data


def _post_files(url: str, files: list[tuple[str, bytes]]) -> tuple[int, str]:
    boundary = uuid.uuid4().hex
    body = b""
    for name, data in files:
        body += (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/pdf\r\n\r\n"
        ).encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    return _send(request)


def _send(request: urllib.request.Request | str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def server(start_folio_server, tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`folio serve` with a 1 MB upload limit and its own upload folder; (url, log, upload dir)."""
    uploads = tmp_path_factory.mktemp("gradio-uploads")
    settings = {
        "retrieval": {"mode": "bm25", "fusion": {"dense_weight": 0, "splade_weight": 0}},
        "parse": {"ocr": "never"},
        "generator": {"model": str(tiny_lm_dir), "device": "cpu"},
        "serve": {"max_upload_mb": 1, "max_upload_pages": 5, "preload": False},
    }
    url, log = start_folio_server(settings, ARTIFACTS, env={"GRADIO_TEMP_DIR": str(uploads)})
    return url, log, uploads


def test_it_listens_on_loopback_only(server) -> None:
    url, _, _ = server
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks an interface
            address = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this machine has no address besides loopback")
    with socket.socket() as client:
        client.settimeout(5)
        assert client.connect_ex((address, port)) != 0, f"reachable on {address}:{port}"


def test_a_public_address_without_a_password_is_refused(tmp_path: Path) -> None:
    folio = Path(sys.executable).with_name("folio")
    result = subprocess.run(
        [str(folio), "--library", str(tmp_path / "lib"), "serve", "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    message = result.stderr.strip()
    assert "password" in message.lower() or "auth" in message.lower(), message
    assert "Traceback" not in result.stderr + result.stdout and len(message.splitlines()) == 1


def test_upload_names_never_become_paths(server) -> None:
    url, _, uploads = server
    tag = uuid.uuid4().hex[:8]
    names = [n.format(tag=tag) for n in TRAVERSAL_NAMES] + [XSS_NAME]
    status, body = _post_files(url + "gradio_api/upload", [(n, _pdf_bytes()) for n in names])
    assert status == 200, body
    stored = [Path(p) for p in json.loads(body)]
    assert len(stored) == len(names)
    for path in stored:
        assert path.resolve().is_relative_to(uploads.resolve()), path
        assert ".." not in path.parts and "/" not in path.name and "\\" not in path.name
    escaped = [p for p in Path("/").glob(f"*/folio-evil-{tag}.pdf")] + list(
        Path("/").glob(f"folio-evil-{tag}.pdf")
    )
    assert not escaped, escaped


def test_the_library_keeps_file_names_as_text(tmp_path: Path) -> None:
    """A hostile name is stored and shown escaped; no file or folder of the library uses it."""
    odd = [XSS_NAME, "..%2f..%2fevil.pdf", "name with\nnewline.pdf", "ünïcödé 名前.pdf"]
    paths = []
    for i, name in enumerate(odd):
        path = tmp_path / "in" / str(i) / name
        path.parent.mkdir(parents=True)
        path.write_bytes(_pdf_bytes(f"Document number {i}."))
        paths.append(path)
    library = tmp_path / "lib"
    with Folio(
        library=library,
        retrieval={"mode": "bm25", "fusion": {"dense_weight": 0, "splade_weight": 0}},
        parse={"ocr": "never"},
        ingest={"workers": 1},
    ) as folio:
        results = folio.ingest(paths)
        assert [r.status for r in results] == ["added"] * len(odd)
        documents = list_documents(folio.library)
    assert sorted(d.file_name for d in documents) == sorted(odd)
    for item in library.rglob("*"):
        assert item.resolve().is_relative_to(library.resolve())
        assert not any(part in item.name for part in ("evil", "newline", "img", "名前")), item
    page = documents_html(documents)
    assert "<img" not in page and "&lt;img src=x" in page
    panel = progress_html([UploadRow(XSS_NAME, state="failed", detail=XSS_NAME)])
    assert "<img" not in panel


def test_limits_are_enforced_with_a_message(server, tmp_path: Path) -> None:
    url, _, _ = server
    big = _pdf_bytes() + b"%" + b"x" * 1_200_000  # a comment after %%EOF: still a PDF
    status, body = _post_files(url + "gradio_api/upload", [("big.pdf", big)])
    assert status == 413 and "size" in body.lower(), (status, body)
    assert "Traceback" not in body

    text = tmp_path / "notes.txt"
    text.write_text("not a pdf")
    assert "only .pdf" in check_upload(text, max_mb=1, max_pages=5)
    pages = tmp_path / "long.pdf"
    document = pymupdf.open()
    for _ in range(6):
        document.new_page()
    document.save(pages)
    assert "FOLIO_SERVE__MAX_UPLOAD_PAGES" in check_upload(pages, max_mb=1, max_pages=5)


def test_no_response_carries_a_stack_trace(server) -> None:
    url, log, _ = server
    probes = [
        url + "gradio_api/file=/etc/passwd",
        url + "gradio_api/file=../../../../etc/passwd",
        url + "gradio_api/file=%2e%2e/%2e%2e/etc/passwd",
        url + "gradio_api/info?x=" + "%" * 5,
        url + "no/such/page",
    ]
    for probe in probes:
        status, body = _send(probe)
        assert "root:x:0:0" not in body, probe
        assert "Traceback" not in body and 'File "/' not in body, (probe, body[:300])
    # Calls with malformed payloads to every endpoint the app exposes.
    status, info = _send(url + "gradio_api/info")
    assert status == 200
    endpoints = list(json.loads(info).get("named_endpoints", {}))
    assert endpoints, info[:300]
    for name in endpoints:
        for payload in (b"{", json.dumps({"data": [None] * 3}).encode(), b'{"data": "x" }'):
            request = urllib.request.Request(
                url + "gradio_api/call" + name, data=payload,
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            status, body = _send(request)
            assert "Traceback" not in body and 'File "/' not in body, (name, body[:300])
            if status == 200 and "event_id" in body:
                event = json.loads(body)["event_id"]
                _, stream = _send(url + f"gradio_api/call{name}/{event}")
                assert "Traceback" not in stream and 'File "/' not in stream, (name, stream[:300])
