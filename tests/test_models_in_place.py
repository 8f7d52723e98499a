"""Models where other tools keep them: Ollama's store, LM Studio's folder, split GGUF files.
Each is read in place; the real benchmark of an Ollama model is in test_habits_real.py."""

from __future__ import annotations

import json

import pytest

from cli_checks import assert_one_line_error
from harness.core.errors import ModelError
from model_stores import make_lmstudio_store, make_ollama_store


@pytest.fixture(scope="module")
def ollama_store(tmp_path_factory, smollm2_path):
    root = tmp_path_factory.mktemp("ollama") / "models"
    return root, make_ollama_store(root, smollm2_path)


def test_ollama_reference_resolves_to_the_blob_in_place(ollama_store, smollm2, monkeypatch):
    from harness.core.models import resolve

    root, made = ollama_store
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    info = resolve("ollama:smollm2:135m")
    assert info.path == str(made["blob"].resolve())  # no copy
    assert info.sha256 == smollm2.sha256 and f"sha256:{info.sha256}" == made["digest"]
    assert info.source == "ollama" and info.store == {"tool": "ollama", "name": "smollm2:135m",
                                                      "manifest": str(made["manifest"]), "digest": made["digest"]}
    assert info.quantization == "Q4_1" and info.parameters == smollm2.parameters
    # the full form names the same manifest
    assert resolve("ollama:registry.ollama.ai/library/smollm2:135m").sha256 == info.sha256


def test_ollama_refusals_name_the_problem(ollama_store, tmp_path, monkeypatch):
    from harness.core.models import resolve

    root, made = ollama_store
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    with pytest.raises(ModelError, match=r"no Ollama model smollm2:latest .*ollama pull smollm2:latest.*pulled here: smollm2:135m"):
        resolve("ollama:smollm2")
    with pytest.raises(ModelError, match="bad Ollama reference"):
        resolve("ollama:../etc/passwd")
    # a damaged store: a copy of it, each part broken in turn
    import shutil

    bad = tmp_path / "models"
    shutil.copytree(root, bad)
    monkeypatch.setenv("OLLAMA_MODELS", str(bad))
    manifest = bad / made["manifest"].relative_to(root)
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "layers": [{**data["layers"][0], "digest": "sha256:../../x"}]}))
    with pytest.raises(ModelError, match="malformed blob digest"):
        resolve("ollama:smollm2:135m")
    manifest.write_text(json.dumps(data))
    blob = bad / "blobs" / made["digest"].replace(":", "-")
    at = blob.stat().st_size - 4096  # same size, one byte of the last tensor changed
    with blob.open("r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError, match="does not match its digest"):
        resolve("ollama:smollm2:135m")
    blob.unlink()
    with pytest.raises(ModelError, match="names blob sha256-.*which is missing"):
        resolve("ollama:smollm2:135m")
    manifest.write_text("{not json")
    with pytest.raises(ModelError, match="unreadable or not JSON"):
        resolve("ollama:smollm2:135m")


def test_lmstudio_reference(tmp_path, smollm2_path, smollm2, monkeypatch):
    from harness.core.models import resolve

    dest = make_lmstudio_store(tmp_path / "lms", smollm2_path)
    monkeypatch.setenv("LMSTUDIO_MODELS_DIR", str(tmp_path / "lms"))
    info = resolve("lmstudio:lmstudio-community/SmolLM2-135M-Instruct-GGUF")
    assert info.path == str(dest.resolve()) and info.sha256 == smollm2.sha256 and info.source == "lmstudio"
    (dest.parent / "other-Q8_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="holds 2 GGUF files; name one"):
        resolve("lmstudio:lmstudio-community/SmolLM2-135M-Instruct-GGUF")
    assert resolve(f"lmstudio:lmstudio-community/SmolLM2-135M-Instruct-GGUF/{dest.name}").path == str(dest.resolve())


def test_harness_models_lists_what_ollama_and_lm_studio_hold(cli, ollama_store, tmp_path, smollm2_path):
    root, made = ollama_store
    make_lmstudio_store(tmp_path / "lms", smollm2_path)
    r = cli("models", "--format", "json", env={"OLLAMA_MODELS": str(root), "LMSTUDIO_MODELS_DIR": str(tmp_path / "lms")})
    assert r.code == 0, r.stderr
    rows = {row["name"]: row for row in r.json()}
    ollama = rows["ollama:smollm2:135m"]
    assert ollama["source"] == "ollama" and ollama["path"] == str(made["blob"]) and ollama["quantization"] == "Q4_1"
    lms = rows["lmstudio:lmstudio-community/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_1.gguf"]
    assert lms["source"] == "lmstudio" and lms["parameters"] == ollama["parameters"]


def test_split_gguf_parts_are_checked(tmp_path):
    from harness.core.models import split_parts

    first = tmp_path / "m-00001-of-00003.gguf"
    first.write_bytes(b"GGUF")
    (tmp_path / "m-00002-of-00003.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match=r"missing 1 of its 3 parts \(m-00003-of-00003.gguf\)"):
        split_parts(first)
    with pytest.raises(ModelError, match="is part 2 of a split model; name its first part, m-00001-of-00003.gguf"):
        split_parts(tmp_path / "m-00002-of-00003.gguf")
    (tmp_path / "m-00003-of-00003.gguf").write_bytes(b"GGUF")
    assert [p.name for p in split_parts(first)] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert split_parts(tmp_path / "plain.gguf") == [tmp_path / "plain.gguf"]


def test_a_part_given_to_bench_is_refused_in_one_line(cli, tmp_path):
    (tmp_path / "m-00002-of-00002.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    r = cli("bench", "-m", str(tmp_path / "m-00002-of-00002.gguf"), "--out", str(tmp_path / "out"))
    assert_one_line_error(r, tmp_path / "out", r"part 2 of a split model; name its first part")
