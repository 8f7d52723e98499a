"""Letter scoring of multiple-choice tasks (harness/measurement/letters.py, `harness eval --mc-scoring letters`).

The agreement tests run the same documents two ways on the bundled SmolLM2: through the
chat-only proxy (tests/chat_proxy.py) in front of llama-cpp-python's real server, which
returns the top_logprobs of the generated token as OpenAI's API does, and in process on
llama.cpp from the logits after the chat-rendered prompt. Both engines run without flash
attention: with it, llama.cpp's numbers on CPU depend on which earlier prompt's cache a
prompt reuses (SmolLM2's letter probabilities moved by up to 0.061 over 513 MMLU questions),
and the two engines reuse differently; without it they agreed to 1.6e-7.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from chat_proxy import ChatProxy
from cli_checks import assert_one_line_error
from loopback_servers import llamacpp_server

pytest.importorskip("lm_eval")

from harness.measurement import letters as L  # noqa: E402

KEY = "sk-closedlab-LETTERS-0123456789abcdef"
TASK = "mmlu_snapshot_marketing"
TASKS = Path(__file__).resolve().parent.parent / "tasks"


# ----------------------------------------------------------------------------- the arithmetic


def test_token_variants_of_a_letter_are_merged():
    assert [L.letter_of(t) for t in ("A", " A", "A.", "(A)", " B:", "**C**", " D)")] == list("AAAABCD")
    assert [L.letter_of(t) for t in ("Ab", "a", " ", "", "The", "AB", "1")] == [None] * 7
    top = [(" A", math.log(0.3)), ("A", math.log(0.2)), ("B.", math.log(0.1)), ("The", math.log(0.35)),
           ("Z", math.log(0.05))]
    scores = L.letter_logprobs(top, 4)
    probs = [math.exp(ll) if ll > -math.inf else 0.0 for ll, _ in scores]
    assert probs == pytest.approx([0.5, 0.1, 0.0, 0.0])
    assert [g for _, g in scores] == [False] * 4  # the most likely token ("The") is no letter
    assert L.mass_of(scores) == pytest.approx(0.6)  # Z is beyond the 4 choices: not a valid letter


def test_choice_order_is_fixed_per_document_and_not_the_datasets():
    choices = [f"answer {i}" for i in range(8)]
    first = L.order_for("What happens?", choices)
    assert first == L.order_for("What happens?", choices) and sorted(first) == list(range(8))
    orders = {tuple(L.order_for(f"question {i}", choices)) for i in range(40)}
    assert len(orders) > 30
    # a dataset that always lists the right answer first must not hand it letter A
    assert sum(o[0] == 0 for o in orders) < 15


def _loaded(names):
    from harness.measurement.eval_tasks import load_tasks, quiet_lm_eval

    quiet_lm_eval()
    return load_tasks(names, [str(TASKS)])


def test_letter_form_of_truthfulqa_lists_shuffled_choices_and_keeps_the_right_one():
    loaded = _loaded(["truthfulqa_mc1", "truthfulqa_mc2"])
    assert L.apply(loaded, ["truthfulqa_mc1", "truthfulqa_mc2"]) == {"truthfulqa_mc1", "truthfulqa_mc2"}
    mc1 = loaded.leaves["truthfulqa_mc1"]
    gold_letters = []
    for doc in list(mc1.eval_docs)[:30]:
        text, letters, gold = mc1.doc_to_text(doc), mc1.doc_to_choice(doc), mc1.doc_to_target(doc)
        n = len(doc["mc1_targets"]["choices"])
        assert letters == list(L.LETTERS[:n])
        assert text.endswith(f"\n{L.INSTRUCTION}\nAnswer:") and "\nA:" not in text[-200:]
        listed = dict(line.split(". ", 1) for line in text.splitlines() if len(line) > 2 and line[1:3] == ". "
                      and line[0] in L.LETTERS)
        assert listed[letters[gold]] == doc["mc1_targets"]["choices"][0].strip()  # the best answer
        gold_letters.append(gold)
    assert len(set(gold_letters)) > 3
    # MC2's own metric gets the probabilities back in the dataset's order: all the mass on the
    # true answers' letters gives 1, all of it on a false one gives 0
    mc2 = loaded.leaves["truthfulqa_mc2"]
    doc = next(iter(mc2.eval_docs))
    labels = doc["mc2_targets"]["labels"]
    text = mc2.doc_to_text(doc)
    listed = [line.split(". ", 1)[1] for line in text.splitlines() if line[:1] in L.LETTERS and line[1:3] == ". "]
    truth = {c.strip(): lab for c, lab in zip(doc["mc2_targets"]["choices"], labels)}
    on_true = [(0.0 if truth[c] else -math.inf, False) for c in listed]
    on_false = [(-math.inf if truth[c] else 0.0, False) for c in listed]
    assert mc2.process_results(doc, on_true)["acc"] == pytest.approx(1.0)
    assert mc2.process_results(doc, on_false)["acc"] == pytest.approx(0.0)
    nothing = mc2.process_results(doc, [(-math.inf, False)] * len(listed))
    assert nothing == {"acc": 0.0, "letter_mass": 0.0}  # no letter among the likely tokens: no answer


def test_mmlu_keeps_its_own_listing_and_order():
    loaded = _loaded([TASK])
    task = loaded.leaves[TASK]
    doc = next(iter(task.eval_docs))
    before = task.doc_to_text(doc)
    gold = task.doc_to_target(doc)
    L.apply(loaded, [TASK])
    after = task.doc_to_text(doc)
    assert after == before[: -len("\nAnswer:")] + f"\n{L.INSTRUCTION}\nAnswer:"
    assert task.doc_to_choice(doc) == ["A", "B", "C", "D"] and task.doc_to_target(doc) == gold
    assert "mc_scoring" in json.dumps(task.dump_config(), default=str)  # the config hash sees it


# ----------------------------------------------------------------------------- bad input


def test_a_task_that_is_not_multiple_choice_is_refused(cli, tmp_path):
    r = cli("eval", "--tasks", "gsm8k", "--mc-scoring", "letters", "--limit", "1", "--out", str(tmp_path))
    assert_one_line_error(r, tmp_path, r"task 'gsm8k' is not multiple-choice .*--mc-scoring letters applies to "
                                       r"multiple_choice tasks only")


def test_more_choices_than_letters_is_refused(cli, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = tmp_path / "many.jsonl"
    data.write_text(json.dumps({"q": "Pick one", "choices": [f"option {i}" for i in range(21)], "gold": 3}) + "\n")
    (tasks / "many_choices.yaml").write_text(
        "task: many_choices\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: gold\n")
    out = tmp_path / "out"
    r = cli("eval", "--tasks", "many_choices", "--tasks-dir", str(tasks), "--mc-scoring", "letters", "--out", str(out),
            env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert_one_line_error(r, out, r"task 'many_choices' has a question with 21 choices, more than the 20 letters A-T")


def test_unknown_mode_and_a_stray_fallback_are_refused(cli, tmp_path):
    r = cli("eval", "--tasks", TASK, "--mc-scoring", "letter", "--out", str(tmp_path))
    assert_one_line_error(r, tmp_path, r"--mc-scoring must be loglikelihood or letters \(got 'letter'\)")
    r = cli("eval", "--tasks", TASK, "--allow-generated-letters", "--out", str(tmp_path))
    assert_one_line_error(r, tmp_path, r"--allow-generated-letters is for letter scoring")


# ----------------------------------------------------------------------------- the two routes


@pytest.fixture(scope="module")
def upstream(smollm2_path):
    with llamacpp_server(str(smollm2_path), n_ctx=2048, flash_attn=False) as url:
        yield url


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("CLOSED_LAB_KEY", KEY)
    return {"CLOSED_LAB_KEY": KEY}


def _api(url: str, out: Path, *more: str) -> list[str]:
    return ["eval", "-b", "openai", "--base-url", url, "--api-key-env", "CLOSED_LAB_KEY", "--out", str(out),
            "--format", "json", *more]


def _record(out: Path) -> dict:
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def _samples(record: dict) -> dict[int, dict]:
    lines = Path(record["evaluation"]["samples_file"]).read_text().splitlines()
    return {s["doc_id"]: s for s in map(json.loads, lines)}


def _probs(sample: dict) -> list[float]:
    return [math.exp(r[0][0]) if r[0][0] > -1e30 else 0.0 for r in sample["resps"]]


def _rows(record: dict, task: str) -> dict[str, dict]:
    return {a["metric"]: a for a in record["accuracy"] if a["task"] == task}


@pytest.mark.slow
def test_the_chat_api_and_in_process_read_the_same_letter_distribution(upstream, cli, tmp_path, key_env):
    same = ["--tasks", TASK, "--limit", "8", "--mc-scoring", "letters", "--log-samples", "--no-cache"]
    with ChatProxy(upstream, KEY) as proxy:
        served = cli(*_api(proxy.url, tmp_path / "api", *same, "--concurrency", "2"), env=key_env)
        assert served.code == 0, served.stderr[-3000:]
    api = _record(tmp_path / "api")
    assert KEY not in json.dumps(api) and proxy.other_paths == []
    bodies = [e["body"] for e in proxy.chat_posts]
    assert len(bodies) == 8 and proxy.fates() == ["answered"] * 8  # one request per question, not per choice
    for body in bodies:
        assert body["max_tokens"] == 1 and body["temperature"] == 0 and body["logprobs"] is True
        assert body["top_logprobs"] == L.TOP_LOGPROBS and "echo" not in body
        assert [m["role"] for m in body["messages"]] == ["system"] + ["user", "assistant"] * 5 + ["user"]
        assert body["messages"][-1]["content"].endswith(f"\n{L.INSTRUCTION}\nAnswer:")
    assert api["evaluation"]["usage"][TASK]["requests"] == 8
    assert api["evaluation"]["usage"][TASK]["completion_tokens"] == 8

    local_run = cli("eval", "-b", "llamacpp", *same, "--set", "flash_attn=0", "--format", "json",
                    "--out", str(tmp_path / "local"))
    assert local_run.code == 0, local_run.stderr[-3000:]
    local = _record(tmp_path / "local")
    for rec in (api, local):
        rows = _rows(rec, TASK)
        assert rows["acc"]["scoring"] == L.FIRST_TOKEN and rows["acc"]["n"] == 8
        assert 0.5 < rows["letter_mass"]["value"] <= 1.0 + 1e-9
        assert rec["evaluation"]["apply_chat_template"] is True and rec["evaluation"]["fewshot_as_multiturn"] is True
    a, b = _samples(api), _samples(local)
    assert sorted(a) == sorted(b) == list(range(8))
    for doc in a:
        # the same messages, and in process the text the model's template renders them to
        assert a[doc]["arguments"] == b[doc]["arguments"]
        assert b[doc]["rendered_prompt"].endswith("Answer:<|im_end|>\n<|im_start|>assistant\n")
        assert _probs(a[doc]) == pytest.approx(_probs(b[doc]), abs=1e-6)
        assert a[doc]["acc"] == b[doc]["acc"]
    assert _rows(api, TASK)["acc"]["value"] == _rows(local, TASK)["acc"]["value"]
    assert _rows(api, TASK)["acc"]["task_config_hash"] == _rows(local, TASK)["acc"]["task_config_hash"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["refuse", "drop"])
def test_an_api_without_logprobs_is_refused_unless_the_fallback_is_allowed(upstream, cli, tmp_path, key_env, mode):
    same = ["--tasks", TASK, "--limit", "3", "--mc-scoring", "letters", "--no-cache"]
    with ChatProxy(upstream, KEY, logprobs=mode) as proxy:
        r = cli(*_api(proxy.url, tmp_path / "strict", *same), env=key_env)
        assert_one_line_error(r, tmp_path / "strict",
                              r"refused a generation request \(HTTP 400: .*'logprobs'.*letter scoring needs logprobs with "
                              r"top_logprobs 20 \(--allow-generated-letters scores the generated letter" if mode == "refuse"
                              else r"answered without log-probabilities for the generated token.*--allow-generated-letters")
        r = cli(*_api(proxy.url, tmp_path / "loose", *same, "--allow-generated-letters"), env=key_env)
        assert r.code == 0, r.stderr[-3000:]
    rows = _rows(_record(tmp_path / "loose"), TASK)
    assert rows["acc"]["scoring"] == L.GENERATED and rows["acc"]["n"] == 3
    assert rows["letter_mass"]["value"] in (0.0, 1 / 3, 2 / 3, 1.0) or rows["letter_mass"]["value"] == pytest.approx(
        round(rows["letter_mass"]["value"] * 3) / 3)


@pytest.mark.slow
def test_the_report_compares_letter_scores_only_with_letter_scores(upstream, cli, tmp_path, key_env):
    """A closed model measured by letters gets its own headline block, against the best open
    letter score, marked identical; the log-likelihood score of the same task stays apart."""
    runs = tmp_path / "runs"
    task = "truthfulqa_mc1"  # a whole benchmark (a subject of MMLU never heads the report)
    same = ["--tasks", task, "--limit", "4", "--mc-scoring", "letters", "--no-cache"]
    with ChatProxy(upstream, KEY) as proxy:
        assert cli(*_api(proxy.url, runs, *same), env=key_env).code == 0
    assert cli("eval", *same, "--out", str(runs)).code == 0
    assert cli("eval", "--tasks", task, "--limit", "4", "--no-cache", "--out", str(runs)).code == 0
    from harness.measurement.cost import CostInputs
    from harness.output.report import build_report
    from harness.output.store import load_records

    loaded = load_records([runs])
    records, files = loaded.records, loaded.files
    rep = build_report(records, files, CostInputs(), [], with_plots=False)
    r = cli("report", str(runs), "--html", str(tmp_path / "report.html"))
    assert r.code == 0, r.stderr[-2000:]
    assert "scored by letters" in (tmp_path / "report.html").read_text()
    blocks = rep.sections["headline"]
    letters = [b for b in blocks if b["letters"]]
    assert len(letters) == 1 and letters[0] is blocks[0]  # the strongest comparison comes first
    rows = letters[0]["measured"]
    assert [row["kind"] for row in rows] == ["open measured here (best of smoke tests)", "closed measured here"]
    assert rows[1]["match"] == ["identical"] and letters[0]["published"] == []
    assert all(row["protocol"].split(" · ")[3] == L.FIRST_TOKEN for row in rows)
    others = [b for b in blocks if not b["letters"]]
    assert others and all("letters" not in row["protocol"] for b in others for row in b["measured"])
