"""Model references and pre-flight checks, on the real bundled GGUF and real damaged files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from harness.core.errors import ModelError
from harness.core.models import resolve, sha256_of
from harness.core.paths import cache_dir


def test_bundled_default_metadata(smollm2, smollm2_path):
    assert smollm2.path == str(smollm2_path.resolve())
    assert smollm2.architecture == "llama"
    assert smollm2.quantization == "Q4_1"
    assert smollm2.parameters == 134_515_008
    assert smollm2.context_length_train == 8192
    assert smollm2.n_layers == 30
    assert smollm2.chat_template is True
    assert smollm2.license == "apache-2.0"
    assert smollm2.size_bytes == smollm2_path.stat().st_size
    assert smollm2.sha256 == hashlib.sha256(smollm2_path.read_bytes()).hexdigest()


def test_sha256_is_cached_by_path_size_and_mtime(tmp_path):
    f = tmp_path / "m.bin"
    f.write_bytes(b"abc")
    real = hashlib.sha256(b"abc").hexdigest()
    assert sha256_of(f) == real
    cache_file = cache_dir() / "sha256.json"
    cache = json.loads(cache_file.read_text())
    # plant a different digest under the same key: a cache hit must return it unhashed
    cache[str(f.resolve())]["sha256"] = "0" * 64
    cache_file.write_text(json.dumps(cache))
    assert sha256_of(f) == "0" * 64
    # a changed file (new mtime and size) is hashed again
    f.write_bytes(b"abcd")
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert sha256_of(f) == hashlib.sha256(b"abcd").hexdigest()


def test_second_model_is_assembled_and_described():
    info = resolve("gemma3-270m")
    assert info.architecture == "gemma3"
    assert info.quantization == "Q4_K_M"
    assert info.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "not found"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("just some text, renamed\n"), "not a GGUF"),
])
def test_bad_files_are_refused(tmp_path, make, message):
    p = tmp_path / "model.gguf"
    make(p)
    with pytest.raises(ModelError, match=message):
        resolve(str(p))


def test_truncated_gguf_is_refused(tmp_path, smollm2_path):
    p = tmp_path / "cut.gguf"
    with smollm2_path.open("rb") as fh:
        p.write_bytes(fh.read(5_000_000))
    with pytest.raises(ModelError, match="truncated|damaged"):
        resolve(str(p))


def test_header_only_gguf_is_refused(tmp_path, smollm2_path):
    p = tmp_path / "head.gguf"
    with smollm2_path.open("rb") as fh:
        p.write_bytes(fh.read(200))
    with pytest.raises(ModelError, match="truncated|damaged"):
        resolve(str(p))


def test_unknown_name_suggests_bundled():
    with pytest.raises(ModelError, match="unknown model 'smollm2'.*smollm2-135m"):
        resolve("smollm2")


def test_hub_reference_resolves_from_local_hub_cache(tmp_path, smollm2_path):
    """hf:ORG/REPO:FILE goes through huggingface_hub; offline it is served from the hub cache layout."""
    repo_dir = tmp_path / "hub" / "models--example--tiny-gguf"
    snap = repo_dir / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "tiny.gguf").symlink_to(smollm2_path)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("a" * 40)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    code = "from harness.core.models import resolve; m = resolve('hf:example/tiny-gguf:tiny.gguf'); print(m.sha256, m.source)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    sha, source = out.stdout.split()
    assert sha == hashlib.sha256(smollm2_path.read_bytes()).hexdigest()
    assert source == "hf:example/tiny-gguf"
    missing = "from harness.core.models import resolve; resolve('hf:example/tiny-gguf:other.gguf')"
    out = subprocess.run([sys.executable, "-c", missing], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0 and "offline and not in the local hub cache" in out.stderr


def test_bad_hub_reference_syntax():
    with pytest.raises(ModelError, match="hf:ORG/REPO:FILE"):
        resolve("hf:just-a-name")
