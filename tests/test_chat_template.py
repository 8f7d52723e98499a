"""Chat templates from model files are hostile: they render under a memory limit and a
deadline (harness/measurement/template_sandbox.py), and a hostile one gets one line, never a crash.

The hostile GGUFs are real copies of the bundled model with only their chat template
replaced, written by gguf's own gguf_new_metadata tool.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.measurement.chat_template import ChatTemplate

from harness.core.errors import EvalError

USER = [{"role": "user", "content": "hi"}]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def test_an_ordinary_template_renders_and_continues_a_final_message():
    chat = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
                        "{% if add_generation_prompt %}<assistant>{% endif %}", "<s>", "</s>")
    try:
        assert chat.render(USER) == "<user>hi\n<assistant>"
        prefilled = chat.render(USER + [{"role": "assistant", "content": "The answer is"}], add_generation_prompt=False)
        assert prefilled == "<user>hi\n<assistant>The answer is"
        assert chat.render([{"role": "user", "content": "x" * 100_000}]).count("x") == 100_000
    finally:
        chat.close()


@pytest.mark.parametrize("template, needle", [
    ("{{ 'x' * 10**10 }}", "MiB"),  # folded while it compiles
    ("{{ messages[0].content * 10**10 }}", "MiB"),  # computed as it renders
    ("{{ 'x'|center(10**10) }}", "MiB"),
    ("{{ ('%10000000000s' % 'x')|length }}", "MiB"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
     "MiB"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "longer than 2 s"),
    ("{% for i in range(30000) %}{{ 'y' * 1000 }}{% endfor %}", "characters"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursed"),
])
def test_a_hostile_template_is_stopped_in_one_line(template, needle):
    child_mem = []
    t0 = time.monotonic()
    with pytest.raises(EvalError) as err:
        # the deadline is short only where time is what the template exhausts
        chat = ChatTemplate(template, timeout_s=2 if "longer" in needle else 30, memory_bytes=512 * 2**20)
        proc = psutil.Process(chat._renderer._proc.pid)
        child_mem.append(proc)
        chat.render(USER)
    message = str(err.value)
    assert needle in message and "\n" not in message, message
    assert message.startswith("the model's chat template was stopped")
    assert time.monotonic() - t0 < 60
    # this process never held the template's memory, and the stopped child is gone
    assert psutil.Process().memory_info().rss < 1024 * 2**20
    for proc in child_mem:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


def test_after_a_stopped_render_the_next_one_gets_a_fresh_child():
    chat = ChatTemplate("{% if messages[0].content == 'boom' %}{{ messages[0].content * 10**10 }}{% endif %}ok",
                        timeout_s=5)
    try:
        with pytest.raises(EvalError, match="stopped"):
            chat.render([{"role": "user", "content": "boom"}])
        assert chat.render(USER) == "ok"
    finally:
        chat.close()


def test_the_sandbox_still_forbids_attribute_tricks():
    with pytest.raises(EvalError, match="sandbox forbids"):
        ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}").render(USER)
    with pytest.raises(EvalError, match="line 1"):
        ChatTemplate("{% for m in messages %}")


def test_the_child_dies_with_its_parent(tmp_path):
    # a parent that starts a render that never ends and is then killed
    script = ("from harness.measurement.chat_template import ChatTemplate\n"
              "import sys\n"
              "c = ChatTemplate('{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}', timeout_s=600)\n"
              "print(c._renderer._proc.pid, flush=True)\n"
              "c.render([])\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        time.sleep(0.5)
    finally:
        parent.kill()
        parent.wait()
    child.wait(timeout=10)  # the child notices its parent is gone within a second or two


# ----------------------------------------------------------------------- through harness eval
def _gguf_with_template(src: Path, dst: Path, template: str) -> Path:
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(src), str(dst),
                    "--chat-template", template, "--force"], check=True, capture_output=True, timeout=300)
    return dst


def test_harness_eval_refuses_a_hostile_gguf_template_in_one_line(cli, tmp_path, smollm2_path):
    from harness.core.models import read_chat_template

    model = _gguf_with_template(smollm2_path, tmp_path / "hostile.gguf", "{{ 'x' * 10**10 }}")
    assert read_chat_template(model) == "{{ 'x' * 10**10 }}"
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = cli("eval", "--model", str(model), "--tasks", "mmlu_snapshot_generative_anatomy", "--limit", "1",
              "--apply-chat-template", "--no-cache", "--out", str(out), env=OFFLINE)
    assert res.code == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr + res.stdout, res.stderr
    assert lines[0].startswith("error: the model's chat template was stopped: it needed more than"), lines[0]
    assert not out.exists() or not any(out.rglob("*.json"))
    assert time.monotonic() - t0 < 120


def test_a_template_that_folds_into_10_gb_is_refused_before_llama_cpp_compiles_it(cli, tmp_path, smollm2_path):
    # Jinja computes constant expressions while it compiles, and llama-cpp-python compiles
    # a model's templates in process as it loads it: without the check this takes 10 GB
    model = _gguf_with_template(smollm2_path, tmp_path / "folds.gguf",
                                "{% if false %}{{ 'x'|center(10**10) }}{% endif %}{{ messages[0].content }}")
    out = tmp_path / "out"
    res = cli("bench", "--model", str(model), "-p", "8", "-n", "4", "-r", "1", "--out", str(out), env=OFFLINE)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    (record_file,) = out.glob("*.json")
    record = json.loads(record_file.read_text())
    failures = [c.get("failure") for c in record.get("cases", [])] + (record.get("failures") or [])
    details = " ".join(f["detail"] for f in failures if f)
    assert "is refused: compiling its chat template was stopped (it needed more than" in details, details


@pytest.mark.slow
def test_a_template_hostile_only_on_real_prompts_fails_the_run_in_one_line(cli, tmp_path, smollm2_path):
    # passes the pre-flight render ("Hello"), then exhausts memory on the first real prompt
    model = _gguf_with_template(smollm2_path, tmp_path / "late.gguf",
                                "{% if messages[0].content != 'Hello' %}{{ messages[0].content * 10**9 }}{% endif %}"
                                "{{ messages[0].content }}")
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = cli("eval", "--model", str(model), "--tasks", "mmlu_snapshot_generative_anatomy", "--limit", "1",
              "--apply-chat-template", "--no-cache", "--threads", "1", "--out", str(out), env=OFFLINE)
    assert res.code == 1 and "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    assert "evaluation failed" in res.stdout
    # the record keeps the one-line reason
    (record_file,) = out.glob("*.json")
    failures = json.loads(record_file.read_text())["failures"]
    assert [f["cause"] for f in failures] == ["evaluation failed"]
    assert failures[0]["detail"].startswith("the model's chat template was stopped: it needed more than"), failures
    assert time.monotonic() - t0 < 300


def test_harness_load_refuses_a_template_that_folds_into_10_gb(cli, tmp_path, smollm2_path):
    # harness load builds a vocabulary-only llama.cpp model for its prompts (and --serve starts a server on
    # the file): both compile the templates in process, so the file is refused before either
    model = _gguf_with_template(smollm2_path, tmp_path / "folds.gguf",
                                "{% if false %}{{ 'x'|center(10**10) }}{% endif %}{{ messages[0].content }}")
    out = tmp_path / "out"
    res = cli("load", "--base-url", "http://127.0.0.1:9/v1", "--model", str(model), "--requests", "1",
              "--out", str(out), env=OFFLINE)
    assert res.code == 2 and "Traceback" not in res.stderr + res.stdout, res.stderr[-2000:]
    assert "is refused: compiling its chat template was stopped" in res.stderr
    assert not out.exists() or not list(out.glob("*.json"))
