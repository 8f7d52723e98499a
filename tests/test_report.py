"""`harness report`: reference data with sources, cost arithmetic, and the page itself
rendered in a real headless chromium (Debian's package; .ci/run installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from compare_runs import real_runs, write_variant  # noqa: F401  (session fixture)
from harness.measurement.cost import CostInputs, cost_per_mtok, hours_per_mtok, measured_power_w, parse_api_price
from harness.core.errors import ConfigError
from harness.output.reference import (
    Protocol,
    load_openness,
    load_published_scores,
    osi_approval,
    protocol_differences,
)

REPO = Path(__file__).resolve().parent.parent
SHARED_REFERENCE = REPO.parent / "shared" / "reference"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


# ---------------------------------------------------------------------------- reference data


def test_every_published_score_has_source_and_protocol():
    scores = load_published_scores()
    assert len(scores.scores) == 107
    for s in scores.scores:
        assert s.source.strip() and s.protocol_text.strip()
        assert s.benchmark in scores.benchmarks
    gpt4 = {s.benchmark: s for s in scores.scores if s.model == "GPT-4 (2023-03-14)"}
    assert gpt4["gsm8k"].value == 92.0 and gpt4["gsm8k"].protocol == Protocol(shots=5, cot=True)
    assert gpt4["mmlu"].source == "GPT-4 Technical Report, arXiv 2303.08774, Table 2" and gpt4["mmlu"].verified
    # [unverified] figures are kept only with the label
    gpt4o = [s for s in scores.scores if s.model.startswith("GPT-4o")]
    assert gpt4o and not any(s.verified for s in gpt4o)
    claude_gsm8k = next(s for s in scores.scores if s.model.startswith("Claude") and s.benchmark == "gsm8k")
    assert claude_gsm8k.value == 96.4 and not claude_gsm8k.verified
    # two protocols for one model and benchmark stay two numbers
    assert sorted(s.value for s in scores.scores if s.model.startswith("Claude 3.5") and s.benchmark == "mmlu") == [88.3, 90.4]
    # a subject of a bundled group is measured like the group, and says it is a part
    tp, note = scores.task_protocol_for("mmlu_snapshot_generative_anatomy")
    assert tp is scores.tasks["mmlu_snapshot_generative"] and "one part of mmlu_snapshot_generative" in note
    assert scores.task_protocol_for("mmlu_snapshot_anatomy")[0] is scores.tasks["mmlu_snapshot"]
    assert scores.task_protocol_for("hellaswag") == (None, None)
    # every bundled task says how it measures its benchmark
    suites = __import__("yaml").safe_load((REPO / "tasks" / "suites.yaml").read_text())["suites"]
    for task in {t for suite in suites.values() for t in suite["tasks"]}:
        assert scores.task_protocol(task) is not None, task


@pytest.mark.skipif(not (SHARED_REFERENCE / "published_scores.md").exists(), reason="shared/reference not beside the repo")
def test_published_scores_match_the_reference_notes_number_for_number():
    md = (SHARED_REFERENCE / "published_scores.md").read_text()
    scores = load_published_scores()
    by_model: dict[str, set[float]] = {}
    for s in scores.scores:
        by_model.setdefault(s.model, set()).add(s.value)
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith(("| model", "|---"))]
    assert len(rows) == 15
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        model = cells[0]
        figures = " ".join(cells[1:-1])
        # the figures of a row, without what is said of an older version in the source column
        numbers = {float(x) for x in re.findall(r"(?<![\d.])(\d{1,2}\.\d)(?![\d.])", figures)}
        assert numbers, row
        assert numbers == by_model[model], (model, numbers, by_model.get(model))


def test_2025_scores_match_their_notes_number_for_number():
    """The figures added for 2025 models come from docs/published-scores-2025.md, which
    names each one's source; every figure of a row there is in the data, and no other."""
    md = (REPO / "docs" / "published-scores-2025.md").read_text()
    notes_md = (SHARED_REFERENCE / "published_scores.md").read_text() if SHARED_REFERENCE.exists() else ""
    scores = load_published_scores()
    by_model: dict[str, set[float]] = {}
    for s in scores.scores:
        by_model.setdefault(s.model, set()).add(s.value)
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith(("| model", "|---"))]
    assert len(rows) == 27
    seen = set()
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        model, figures = cells[0], cells[1]
        numbers = {float(x) for x in re.findall(r"(?<![\d.])(\d{1,2}\.\d{1,2})(?![\d.])", figures)}
        assert numbers and numbers == by_model[model], (model, numbers, by_model.get(model))
        assert ("[unverified]" in figures) == any(not s.verified for s in scores.scores if s.model == model), model
        seen.add(model)
    # every score is in one of the two notes
    for s in scores.scores:
        assert s.model in seen or f"| {s.model} |" in notes_md or not notes_md, s.model


def test_openness_facts_with_sources():
    o = load_openness()
    smol = o.family_for("Smollm2 135M 8k Lc100K Mix1 Ep2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert smol.family == "SmolLM2" and smol.license.spdx == "Apache-2.0" and "openness.md" in smol.source
    gemma = o.family_for("gemma-3-270m-it-Q4_K_M.gguf")
    assert gemma.family == "Gemma 3" and gemma.license.spdx is None and gemma.training_data.value == "not released"
    llama = o.family_for("Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf")
    assert any("700 million monthly active users" in c.value for c in llama.clauses)
    assert o.family_for("phi-2.Q4_0.gguf") is None
    assert o.family_for("OLMo-2-1124-7B").osaid is not None
    assert [f.name for f in o.frameworks][0].startswith("OSI Open Source AI Definition 1.0")
    assert osi_approval("apache-2.0")[0] == "yes" and "SPDX License List" in osi_approval("apache-2.0")[1]
    verdict, source = osi_approval("gemma")
    assert verdict == "no" and "not on the SPDX License List" in source
    assert osi_approval(None)[0] == "unknown"


def test_protocol_differences_are_named():
    measured = Protocol(shots=5, cot=False, metric="acc", form="loglikelihood")
    differs, unstated = protocol_differences(measured, Protocol(shots=0, cot=True))
    assert differs == ["shots: reported 0-shot, measured 5-shot", "cot: reported CoT, measured no CoT"] and not unstated
    differs, unstated = protocol_differences(measured, Protocol(shots=5))
    assert not differs and unstated == ["cot"]
    assert protocol_differences(measured, Protocol(shots=5, cot=False, metric="acc")) == ([], [])
    assert protocol_differences(measured, Protocol(metric="acc_norm"))[0] == ["metric: reported acc_norm, measured acc"]


def test_bad_reference_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "scores.yaml"
    text = (REPO / "harness" / "data" / "published_scores.yaml").read_text()
    bad.write_text(text.replace('source: "GPT-4 Technical Report, arXiv 2303.08774, Table 2", verified: true}', "verified: true}", 1))
    with pytest.raises(ConfigError, match=r"fails validation at 'scores\.0\.source'"):
        load_published_scores(bad)
    bad.write_text("scores: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_published_scores(bad)


# ---------------------------------------------------------------------------- cost


def test_cost_arithmetic():
    inputs = CostInputs(kwh_price=0.30, hw_cost=3000, hw_lifetime_h=30000, currency="EUR").check()
    c = cost_per_mtok(100.0, inputs, measured_power_w=200.0)
    assert c.hours == pytest.approx(1e6 / 100 / 3600)  # 2.7778 h
    assert c.power_source == "measured" and c.kwh == pytest.approx(200 * 2.7777778 / 1000)
    assert c.electricity == pytest.approx(0.5555556 * 0.30)
    assert c.hardware == pytest.approx(3000 / 30000 * 2.7777778)
    assert c.total == pytest.approx(0.1666667 + 0.2777778)
    # a user-given power wins over a measured one
    given = cost_per_mtok(100.0, CostInputs(kwh_price=0.30, power_w=50), measured_power_w=200.0)
    assert given.power_w == 50 and given.power_source.startswith("given")
    assert given.electricity == pytest.approx(50 * 2.7777778 / 1000 * 0.30)
    assert given.hardware is None and given.total is None  # no amortization given: no silent zero
    unknown = cost_per_mtok(100.0, CostInputs(kwh_price=0.30))
    assert unknown.power_w is None and unknown.kwh is None and unknown.electricity is None
    assert measured_power_w(500.0, 10.0) == 50.0 and measured_power_w(None, 10.0) is None
    assert hours_per_mtok(1e6 / 3600) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        hours_per_mtok(0)
    with pytest.raises(ConfigError, match="go together"):
        CostInputs(hw_cost=1000).check()
    with pytest.raises(ConfigError, match="must not be negative"):
        CostInputs(kwh_price=-1).check()
    p = parse_api_price("gpt-4o = 2.5/10")
    assert (p.name, p.input_per_mtok, p.output_per_mtok) == ("gpt-4o", 2.5, 10.0)
    with pytest.raises(ConfigError, match="NAME=IN/OUT"):
        parse_api_price("gpt-4o:2.5")


# ---------------------------------------------------------------------------- the page in chromium


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; .ci/run installs it with apt-get install -y chromium")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def render(page: Path) -> tuple[str, list[str]]:
    """The DOM after scripts ran, and every console message the page produced."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        proc = subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=180,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def test_the_page_check_catches_broken_plots_and_script_errors(tmp_path):
    # the check below must be able to fail: a page with a script error and a plot that
    # does not decode is caught on both counts
    template = (REPO / "harness" / "data" / "report.html.j2").read_text()
    script = template[template.index("<script>"): template.index("</script>") + len("</script>")]
    page = tmp_path / "broken.html"
    page.write_text(f'<html><body><img class="plot" data-plot="x" src="data:image/png;base64,AAAA">'
                    f"<script>notDefined();</script>{script}</body></html>")
    dom, console = render(page)
    assert 'data-plots-loaded="0/1"' in dom and '<p class="plot-failed">plot failed to load: x</p>' in dom
    assert any("notDefined is not defined" in line for line in console)


@pytest.fixture(scope="module")
def load_run(tmp_path_factory):
    """A real load test: llama-cpp-python's server started on loopback by harness load."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("load")
    res = run_cli("load", "--serve", "llamacpp", "-m", "smollm2-135m", "-c", "1,2", "-n", "2", "--warmup", "0",
                  "--input-len", "8", "--output-len", "4", "-o", str(out))
    assert res.code == 0, res.stderr
    return out


def _eval_like(real_runs, dest: Path) -> Path:
    """The 1-thread run with accuracy entries as harness eval records them."""
    def add(d):
        d["accuracy"] = [
            {"task": "mmlu_snapshot_generative", "metric": "exact_match", "filter": "flexible-extract", "value": 0.28,
             "stderr": 0.06, "n": 57, "num_fewshot": 5, "higher_is_better": True},
            {"task": "gsm8k", "metric": "exact_match", "filter": "flexible-extract", "value": 0.02, "stderr": 0.014,
             "n": 100, "num_fewshot": 5, "higher_is_better": True},
        ]
    return write_variant(real_runs.file(real_runs.t1), dest, add)


def _closed_model(real_runs, dest: Path) -> Path:
    """A closed model measured through the OpenAI-compatible backend: no file, no perf."""
    def closed(d):
        d["model"] = {"ref": "openai:gpt-4o-mini", "name": "gpt-4o-mini", "path": "https://api.example.com/v1",
                      "sha256": "", "format": "openai-api", "size_bytes": 0}
        d["backend"] = {"name": "openai", "version": "0.28.1",
                        "settings": {"base_url": "https://api.example.com/v1", "api": "chat", "model_name": "gpt-4o-mini"}}
        d["perf"], d["model_load"], d["load"] = [], None, []
        d["accuracy"] = [
            {"task": "mmlu_snapshot_generative", "metric": "exact_match", "filter": "flexible-extract", "value": 0.80,
             "stderr": 0.05, "n": 57, "num_fewshot": 5},
            {"task": "gsm8k", "metric": "exact_match", "filter": "flexible-extract", "value": 0.90, "stderr": 0.03,
             "n": 100, "num_fewshot": 5},
        ]
    return write_variant(real_runs.file(real_runs.t1), dest, closed)


def test_full_report_renders_in_chromium(cli, real_runs, load_run, tmp_path):
    runs = tmp_path / "runs"
    _eval_like(real_runs, runs / "eval")
    _closed_model(real_runs, runs / "closed")
    shutil.copytree(real_runs.t2, runs / "t2")
    shutil.copytree(load_run, runs / "load")
    html = tmp_path / "site" / "report.html"
    res = cli("report", str(runs), "--html", str(html), "--power-w", "65", "--kwh-price", "0.30",
              "--hw-cost", "2000", "--hw-lifetime-h", "26280", "--api-price", "gpt-4o-mini=0.15/0.60", "--currency", "EUR")
    assert res.code == 0, res.stderr
    pngs = sorted(html.parent.glob("report-*.png"))
    names = {p.stem.removeprefix("report-") for p in pngs}
    assert {"throughput", "ttft", "tpot", "benchmark_1", "benchmark_2"} <= names, names
    assert "accuracy_memory" not in names  # one configuration with a memory figure: nothing to compare
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = html.read_text()
    # self-contained: every plot embedded, nothing fetched from anywhere
    assert text.count('src="data:image/png;base64,') == len(pngs)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text) and "@import" not in text

    dom, console = render(html)
    assert console == [], console
    assert f'data-plots-loaded="{len(pngs)}/{len(pngs)}"' in dom and '<p class="plot-failed">' not in dom
    assert "no load-test data" not in dom and "no accuracy data" not in dom
    # 2 requests a point and a few repetitions a test: too few for a p99, so the cells are blank and
    # a note says why (per load point: TTFT p99, TPOT p99 and the goodput of a run without --slo)
    assert 'id="thin-load"' in dom and 'id="thin-speed"' in dom
    load_table = dom[dom.index('id="load"'):dom.index('id="thin-load"')]
    assert load_table.count('<td class="num"></td>') == 3 * 2, load_table
    # open against closed: measured open, measured closed, reported with source and protocol
    assert "best open measured here" in dom and "closed measured here" in dom and "reported (closed)" in dom
    assert "GPT-4 Technical Report, arXiv 2303.08774, Table 2" in dom
    assert "differs: shots: reported 0-shot, measured 5-shot" in dom  # Claude's 0-shot CoT GSM8K
    assert "smoke test (n=57): not a claim" in dom  # the 57-question MMLU score
    assert "[unverified]" in dom
    assert "+88.0" in dom  # gsm8k: measured closed 90.0 against the best measured open 2.0
    # openness card for the bundled model, every fact with its source
    card = dom[dom.index('class="card openness-card"'):]
    assert "apache-2.0" in card and "GGUF metadata general.license" in card
    assert re.search(r"OSI-approved license</dt><dd>yes", card)
    assert "open (huggingface/smollm)" in card
    # the closed model has no reference facts: unknown, not guessed
    assert "gpt-4o-mini" in card and "unknown" in card
    # cost: the 1-thread tg16 throughput priced with the given inputs
    t1 = real_runs.data(real_runs.t1)
    tg = next(p for p in t1["perf"] if p["test"] == "tg16")
    c = cost_per_mtok(tg["tps_mean"], CostInputs(kwh_price=0.30, hw_cost=2000, hw_lifetime_h=26280, power_w=65))
    assert f"{c.total:.4f}" in dom and f"{c.kwh:.3f}" in dom
    assert "gpt-4o-mini" in dom and "0.15" in dom and "served at c=" in dom


def test_report_without_load_or_accuracy_says_so(cli, real_runs, tmp_path):
    html = tmp_path / "bare.html"
    png_dir = tmp_path / "png"
    res = cli("report", str(real_runs.t1), "--html", str(html), "--png-dir", str(png_dir))
    assert res.code == 0, res.stderr
    dom, console = render(html)
    assert console == []
    assert "no load-test data" in dom and "no accuracy data" in dom and "no accuracy measured" in dom
    assert 'data-plots-loaded="2/2"' in dom  # TTFT and time-per-token percentiles
    assert sorted(p.name for p in png_dir.iterdir()) == ["bare-tpot.png", "bare-ttft.png"]
    # no --power-w: the power is the measured one where the meters read it, else unknown
    assert "unknown (give --power-w)" in dom or "measured (" in dom


@pytest.mark.parametrize("args, message", [
    (["--api-price", "gpt4"], "--api-price: bad value 'gpt4'"),
    (["--hw-cost", "1000"], "--hw-cost and --hw-lifetime-h go together"),
    (["--kwh-price", "-0.2"], "--kwh-price must not be negative"),
])
def test_bad_report_input_writes_nothing(cli, real_runs, tmp_path, args, message):
    html = tmp_path / "r.html"
    res = cli("report", str(real_runs.t1), "--html", str(html), *args)
    assert res.code == 2 and res.stderr.startswith(f"error: {message}"), res.stderr
    assert "Traceback" not in res.stderr and not list(tmp_path.iterdir())


def test_report_refuses_empty_and_damaged_inputs(cli, real_runs, tmp_path):
    (tmp_path / "empty").mkdir()
    res = cli("report", str(tmp_path / "empty"), "--html", str(tmp_path / "r.html"))
    assert res.code == 2 and "holds no result files" in res.stderr
    cut = tmp_path / "cut"
    cut.mkdir()
    text = real_runs.file(real_runs.t1).read_text()
    (cut / "r.json").write_text(text[:100])
    res = cli("report", str(cut), "--html", str(tmp_path / "r.html"))
    assert res.code == 2 and "not valid JSON" in res.stderr
    assert not (tmp_path / "r.html").exists()


def test_trend_table_over_nights(cli, real_runs, tmp_path):
    history = tmp_path / "history"
    for day, folder in (("2026-01-01", real_runs.t1), ("2026-01-02", real_runs.t1_again)):
        def redate(d, day=day):
            d["created_at"] = f"{day}T03:00:00Z"
        write_variant(real_runs.file(folder), history / day, redate)
    res = cli("trend", str(history), "--format", "json")
    assert res.code == 0, res.stderr
    rows = {(r["test"], r["metric"]): r for r in json.loads(res.stdout)}
    tg = rows[("tg16", "tg_tps")]
    a = real_runs.data(real_runs.t1)
    b = real_runs.data(real_runs.t1_again)
    va = next(p for p in a["perf"] if p["test"] == "tg16")["tps_mean"]
    vb = next(p for p in b["perf"] if p["test"] == "tg16")["tps_mean"]
    assert float(tg["2026-01-01"]) == pytest.approx(va, rel=0.01) and float(tg["2026-01-02"]) == pytest.approx(vb, rel=0.01)
    assert tg["last vs previous"] == f"{(vb - va) / va * 100:+.1f}%"


# ---------------------------------------------------------------------------- labels


def test_one_label_names_file_quantization_backend_and_server(cli, real_runs, tmp_path):
    from harness.output.labels import model_label
    from harness.output.store import read_record

    local = read_record(real_runs.file(real_runs.t1))
    assert model_label(local) == "smollm2-135m Q4_1 · llamacpp"
    closed = read_record(_closed_model(real_runs, tmp_path / "closed"))
    assert model_label(closed) == "gpt-4o-mini@api.example.com · openai"

    def nameless(d):  # a served model whose record carries nothing but the reference
        d["model"].update(name=None)
        d["backend"]["settings"].pop("model_name")
    bare = read_record(write_variant(_closed_model(real_runs, tmp_path / "c2"), tmp_path / "bare", nameless))
    assert model_label(bare) == "gpt-4o-mini@api.example.com · openai"
    # the same label in show, compare and trend
    shown = cli("show", str(real_runs.t1), str(tmp_path / "closed"))
    assert shown.code == 0, shown.stderr
    assert "smollm2-135m Q4_1" in shown.stdout and "gpt-4o-mini@api.example.com" in shown.stdout and "?" not in shown.stdout
    compared = cli("compare", str(real_runs.t1), str(real_runs.t1_again))
    assert "smollm2-135m Q4_1" in compared.stdout, compared.stdout + compared.stderr
    trended = cli("trend", str(real_runs.t1), str(real_runs.t1_again))
    assert trended.code == 0 and "smollm2-135m Q4_1" in trended.stdout


# ---------------------------------------------------------------------------- the headline


def _acc(task, value, n, *, metric="acc", filt="none", stderr=0.001, kind="task", parent=None, shots=5,
         config_hash="cfg-" + "0" * 60, scoring="loglikelihood"):
    return {"task": task, "metric": metric, "filter": filt, "value": value, "stderr": stderr, "n": n, "kind": kind,
            "parent": parent, "num_fewshot": shots, "higher_is_better": True,
            "task_config_hash": config_hash + task, "scoring": scoring}


def _evaluation(chat=False):
    return {"lm_eval_version": "0.4.13", "tasks": ["mmlu_snapshot", "gsm8k"], "apply_chat_template": chat,
            "requests_total": 100, "requests_recalled": 0}


def _fixture_runs(real_runs, root: Path) -> Path:
    """Two open models and a closed one; groups with subjects, tiny and large n."""
    def open_a(d):  # the bundled model: a weak group score, one strong subject from 6 questions
        d["accuracy"] = [
            _acc("mmlu_snapshot", 0.30, 1000, kind="group"),
            _acc("mmlu_snapshot_anatomy", 0.8333, 6, parent="mmlu_snapshot"),
            _acc("gsm8k", 0.5, 2, metric="exact_match", filt="flexible-extract", scoring="generative"),
        ]
        d["evaluation"] = _evaluation()

    def open_b(d):  # another open file: the best group score; GSM8K perfect on 50 questions
        d["model"].update(ref="other-open.gguf", name="Other Open 1B", sha256="b" * 64,
                          path=str(Path(d["model"]["path"]).with_name("other-open-1b.Q8_0.gguf")), quantization="Q8_0")
        d["accuracy"] = [
            _acc("mmlu_snapshot", 0.35, 1000, kind="group"),
            _acc("mmlu_snapshot_anatomy", 0.5, 6, parent="mmlu_snapshot"),
            _acc("gsm8k", 1.0, 50, metric="exact_match", filt="flexible-extract", scoring="generative"),
        ]
        d["evaluation"] = _evaluation()

    def closed(d):
        d["model"] = {"ref": "openai:gpt-4o-mini", "name": "gpt-4o-mini", "path": "https://api.example.com/v1",
                      "sha256": "", "format": "openai-api", "size_bytes": 0}
        d["backend"] = {"name": "openai", "version": "0.28.1",
                        "settings": {"base_url": "https://api.example.com/v1", "api": "chat", "model_name": "gpt-4o-mini"}}
        d["perf"], d["model_load"], d["load"] = [], None, []
        d["accuracy"] = [
            _acc("mmlu_snapshot", 0.80, 1000, kind="group"),
            _acc("mmlu_snapshot_anatomy", 1.0, 6, parent="mmlu_snapshot"),
            _acc("gsm8k", 0.9, 200, metric="exact_match", filt="flexible-extract", shots=0, scoring="generative"),
        ]
        d["evaluation"] = _evaluation()

    src = real_runs.file(real_runs.t1)
    for name, change in (("open-a", open_a), ("open-b", open_b), ("closed", closed)):
        write_variant(src, root / name, change)
    shutil.copytree(real_runs.t2, root / "bench-t2")  # speed of the bundled model
    return root


def test_headline_picks_group_scores_gaps_and_intervals(real_runs, tmp_path):
    from scipy.stats import binomtest

    from harness.measurement.cost import CostInputs
    from harness.output.report import build_report
    from harness.output.store import load_records

    loaded = load_records([_fixture_runs(real_runs, tmp_path / "runs")])
    records, files = loaded.records, loaded.files
    rep = build_report(records, files, CostInputs(), [], with_plots=False)
    blocks = {b["benchmark"]: b for b in rep.sections["headline"]}
    mmlu = blocks["mmlu"]
    best, closed = mmlu["measured"]
    # the group score of the better open model, not a 6-question subject at 83.3 or 100
    assert best["kind"] == "best open measured here" and best["model"] == "other-open-1b.Q8_0 · llamacpp"
    assert best["value"] == pytest.approx(35.0) and best["n"] == 1000 and not best["smoke"]
    assert closed["model"] == "gpt-4o-mini@api.example.com · openai" and closed["kind"] == "closed measured here"
    assert closed["identical"] and closed["match"] == ["identical"]
    # the gap and its interval: Newcombe's combination of the two Wilson intervals (scipy's)
    ci_open = binomtest(350, 1000).proportion_ci(method="wilson")
    ci_closed = binomtest(800, 1000).proportion_ci(method="wilson")
    assert best["ci"] == pytest.approx((ci_open.low * 100, ci_open.high * 100), abs=1e-6)
    assert closed["gap"] == pytest.approx(45.0)
    lo = 45.0 - 100 * ((0.80 - ci_closed.low) ** 2 + (ci_open.high - 0.35) ** 2) ** 0.5
    hi = 45.0 + 100 * ((ci_closed.high - 0.80) ** 2 + (0.35 - ci_open.low) ** 2) ** 0.5
    assert closed["gap_ci"] == pytest.approx((lo, hi), abs=1e-6)
    assert closed["gap_text"] == "+45.0" and closed["gap_ci_text"] == f"[{lo:+.1f}, {hi:+.1f}]"
    # published figures come second, gaps against the same best open score, protocols compared
    gpt4 = next(r for r in mmlu["published"] if r["model"] == "GPT-4 (2023-03-14)")
    assert gpt4["gap"] == pytest.approx(86.4 - 35.0) and gpt4["kind"] == "reported (closed)"
    assert any("dataset differs" in m for m in gpt4["match"])
    claude = next(r for r in mmlu["published"] if r["model"] == "Claude 3.5 Sonnet (2024-06-20)" and r["value"] == 88.3)
    assert "differs: shots: reported 0-shot, measured 5-shot; cot: reported CoT, measured no CoT" in claude["match"]

    # GSM8K: every open score is a smoke test, so none is "best", the closed one differs in shots
    gsm = blocks["gsm8k"]
    ref, closed = gsm["measured"]
    assert gsm["ref_is_smoke"] and ref["kind"] == "open measured here (best of smoke tests)"
    assert ref["smoke"] == "smoke test (n=50): not a claim"
    assert not any(r["kind"] == "best open measured here" for r in gsm["measured"])
    assert closed["identical"] is False and closed["match"] == ["differs: 0-shot vs 5-shot"]
    assert closed["smoke"] == "smoke test (n=50): not a claim"  # its gap is against a smoke test
    # the threshold is a setting: from 10 documents the 50-question score is a claim
    rep10 = build_report(records, files, CostInputs(), [], with_plots=False, min_docs=10)
    gsm10 = next(b for b in rep10.sections["headline"] if b["benchmark"] == "gsm8k")
    assert gsm10["measured"][0]["kind"] == "best open measured here" and not gsm10["ref_is_smoke"]
    # speed, memory and cost of the same models sit under the table
    side = {r["model"]: r for r in rep.sections["side_by_side"]}
    assert "gpt-4o-mini@api.example.com · openai" in side and "other-open-1b.Q8_0 · llamacpp" in side
    assert side["gpt-4o-mini@api.example.com · openai"]["tg"] == "not measured"
    # subjects stay out of every comparison, and are kept (collapsed) in the accuracy section
    assert {r["task"] for r in rep.sections["accuracy"]["subjects"]} == {"mmlu_snapshot_anatomy"}
    assert "mmlu_snapshot_anatomy" not in {r["task"] for r in rep.sections["accuracy"]["rows"]}


def _measure_width(page: Path, width: int, tmp_path: Path) -> tuple[int, int]:
    """(document scroll width, viewport width) of the page laid out `width` px wide in
    headless chromium. The page is framed at that width (chromium's window cannot be made
    narrower than 500 px); the frame's viewport is what a phone of that width gives it."""
    frame = tmp_path / f"frame-{width}.html"
    frame.write_text(
        f'<html><body style="margin:0"><iframe id="f" src="{page.resolve().as_uri()}" '
        f'style="width:{width}px;height:900px;border:0"></iframe><script>'
        "document.getElementById('f').addEventListener('load', function () {"
        " var d = this.contentDocument; document.body.dataset.widths = d.documentElement.scrollWidth + 'x' +"
        " this.contentWindow.innerWidth; document.body.dataset.framed = d.title; });</script></body></html>")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1000",
                               "--allow-file-access-from-files", "--hide-scrollbars", "--virtual-time-budget=5000",
                               "--dump-dom", frame.resolve().as_uri()],
                              capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'data-widths="(\d+)x(\d+)"', proc.stdout)
    assert m, proc.stdout[:500]
    title = re.search(r"<title>(.*?)</title>", page.read_text())
    assert f'data-framed="{title.group(1) if title else ""}"' in proc.stdout  # the page itself was measured
    return int(m.group(1)), int(m.group(2))


def test_the_width_check_can_fail(tmp_path):
    page = tmp_path / "wide.html"
    page.write_text('<html><head><meta name="viewport" content="width=device-width, initial-scale=1"><title>wide</title></head>'
                    '<body><div style="width: 1500px">wide</div></body></html>')
    for width in (1280, 390):
        scroll, window = _measure_width(page, width, tmp_path)
        assert window == width and scroll > window


def test_headline_page_reads_at_a_glance_at_desk_and_phone_widths(cli, real_runs, tmp_path):
    runs = _fixture_runs(real_runs, tmp_path / "runs")
    html = tmp_path / "site" / "report.html"
    res = cli("report", str(runs), "--html", str(html), "--api-price", "gpt-4o-mini=0.15/0.60")
    assert res.code == 0, res.stderr
    dom, console = render(html)
    assert console == [], console
    # the first section is the answer
    first_h2 = re.search(r"<h2[^>]*>(.*?)</h2>", dom).group(1)
    assert first_h2 == "Closed against open on this hardware"
    answer = dom[dom.index('id="answer"'):dom.index('id="runs"')]
    assert "smoke test (n=50): not a claim" in answer and 'class="measured smoke"' in answer
    assert "differs: 0-shot vs 5-shot" in answer and ">identical<" in answer
    assert "Against published figures: reported, not measured here" in answer
    assert "API: 0.15 in / 0.6 out per Mtok" in answer  # cost beside the closed model
    # one plot per benchmark
    names = {p.stem.removeprefix("report-") for p in html.parent.glob("report-*.png")}
    assert {"benchmark_1", "benchmark_2"} <= names and "accuracy_memory" in names
    # subjects only in a collapsed details element
    details = dom[dom.index('<details class="subjects"'):]
    assert "mmlu_snapshot_anatomy" in details and "mmlu_snapshot_anatomy" not in dom[:dom.index('<details class="subjects"')]
    for width in (1280, 390):
        scroll, window = _measure_width(html, width, tmp_path)
        assert window == width and scroll <= window, (width, scroll, window)


# ---------------------------------------------------------------------------- printers and recalled answers


def test_eval_table_shows_groups_first_and_labels_smoke_tests_and_recalled_runs(real_runs, tmp_path):
    from harness.output.labels import RECALLED_NOTE
    from harness.output.printers import accuracy_markdown, csv_text
    from harness.output.store import load_records

    runs = _fixture_runs(real_runs, tmp_path / "runs")

    def recalled(d):
        d["evaluation"].update(requests_total=120, requests_recalled=120, cost={
            "wall_s": 1.5, "tokens_evaluated": 0, "tokens_without_reuse": 0, "tokens_saved_by_reuse": 0, "floor_tokens": 0})
    write_variant(real_runs.file(runs / "open-a"), tmp_path / "recalled", recalled)
    (record,) = load_records([tmp_path / "recalled"]).records
    md = accuracy_markdown([record])
    lines = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [line.split("|")[2].strip() for line in lines]
    assert names == ["mmlu_snapshot", "gsm8k", "- mmlu_snapshot_anatomy"]  # groups and benchmarks first
    assert "smoke test (n=2): not a claim" in lines[1] and "smoke test (n=6): not a claim" in lines[2]
    assert "smoke test" not in lines[0]
    assert all(line.split("|")[1].strip() == "smollm2-135m Q4_1 · llamacpp" for line in lines)
    # a run whose answers came from the cache says so, and its wall time is not a speed
    assert RECALLED_NOTE in lines[0]
    assert f"{RECALLED_NOTE}; its eval wall (1.5 s) and token counts are not a speed" in md
    assert "tokens evaluated" not in md
    assert RECALLED_NOTE in csv_text([record])
    (fresh,) = load_records([runs / "open-a"]).records
    assert RECALLED_NOTE not in accuracy_markdown([fresh]) + csv_text([fresh])


@pytest.mark.slow
def test_a_rerun_from_the_request_cache_is_marked_recalled(cli, tmp_path):
    """The real lm-eval request cache: a second run of the same evaluation asks the model
    nothing, and every printer and the report say its answers were recalled."""
    from harness.output.labels import RECALLED_NOTE
    from harness.output.store import load_records

    env = {"HARNESS_CACHE_DIR": str(tmp_path / "cache")}
    args = ("eval", "--tasks", "truthfulqa_mc2", "--limit", "2")
    first = cli(*args, "-o", str(tmp_path / "first"), env=env)
    assert first.code == 0, first.stderr
    again = cli(*args, "-o", str(tmp_path / "again"), env=env)
    assert again.code == 0, again.stderr
    fresh = cli(*args, "--no-cache", "-o", str(tmp_path / "fresh"), env=env)
    assert fresh.code == 0, fresh.stderr
    (a,) = load_records([tmp_path / "first"]).records
    (b,) = load_records([tmp_path / "again"]).records
    (c,) = load_records([tmp_path / "fresh"]).records
    assert a.evaluation.requests_total > 0 and a.evaluation.requests_recalled == 0
    assert b.evaluation.requests_recalled == b.evaluation.requests_total == a.evaluation.requests_total
    assert b.evaluation.cost.requests_loglikelihood == 0  # the model was asked nothing
    assert c.evaluation.requests_recalled == 0 and c.evaluation.request_cache is None
    assert RECALLED_NOTE not in first.stdout and RECALLED_NOTE in again.stdout and RECALLED_NOTE not in fresh.stdout
    shown = cli("show", str(tmp_path / "again"), "--format", "csv")
    assert RECALLED_NOTE in shown.stdout
    html = tmp_path / "r.html"
    assert cli("report", str(tmp_path / "again"), "--html", str(html)).code == 0
    assert RECALLED_NOTE in html.read_text()


def test_a_served_open_family_name_is_open_unless_named_closed(real_runs, tmp_path):
    """A chat proxy on this machine may serve a closed stand-in under an open family's name:
    --closed-model says which served models are closed."""
    from harness.measurement.cost import CostInputs
    from harness.output.report import build_report
    from harness.output.store import load_records

    runs = _fixture_runs(real_runs, tmp_path / "runs")

    def renamed(d):
        d["model"].update(ref="openai:smollm2-135m", name="smollm2-135m", path="http://127.0.0.1:8011/v1")
        d["backend"]["settings"].update(base_url="http://127.0.0.1:8011/v1", model_name="smollm2-135m")
    write_variant(real_runs.file(runs / "closed"), runs / "closed", renamed)
    loaded = load_records([runs])
    records, files = loaded.records, loaded.files
    by_kind = lambda rep: {r["model"]: r["kind"] for b in rep.sections["headline"] for r in b["measured"]}  # noqa: E731
    plain = by_kind(build_report(records, files, CostInputs(), [], with_plots=False))
    assert plain["smollm2-135m@127.0.0.1:8011 · openai"] == "best open measured here"  # an open family's name
    named = by_kind(build_report(records, files, CostInputs(), [], with_plots=False, closed_models=["smollm2-135m"]))
    assert named["smollm2-135m@127.0.0.1:8011 · openai"] == "closed measured here"
