"""`harness compare` on real runs of the bundled model: joins, direction, significance, gates."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from compare_runs import real_runs, write_variant  # noqa: F401  (session fixture)
from harness.output.compare import CompareError, Threshold, check_gate_matches, compare, find_axis, parse_fail_on
from harness.output.compare_printers import csv_text, gate_failures
from harness.output.measurements import measurements
from harness.output.significance import accuracy_significance, perf_significance
from harness.core.errors import ConfigError, HarnessError, ResultFileError
from harness.core.record import DIRECTION
from harness.output.store import load_records, read_record

pytestmark = pytest.mark.slow


def _rows(res) -> dict[tuple[str, str], dict]:
    data = res.json()
    return {(r["test"], r["metric"]): r for r in data["rows"]}


def _records(folder: Path):
    return [read_record(f) for f in sorted(folder.glob("*.json"))]


# ---------------------------------------------------------------------------- axis and joins


def test_thread_change_is_the_axis_and_is_flagged(cli, real_runs):
    res = cli("compare", str(real_runs.t1), str(real_runs.t2), "--format", "json")
    assert res.code == 0, res.stderr
    data = res.json()
    assert data["axis"] == "n_threads, n_threads_batch"
    assert data["axis_values"] == [["1"], ["2"]]
    rows = _rows(res)
    assert {("pp32", "pp_tps"), ("pp32", "ttft_ms"), ("tg16", "tg_tps"), ("pp32", "peak_rss_mib")} <= set(rows)
    assert not data["only_base"] and not data["only_head"]
    # the raw samples of both runs are what was tested
    b, h = real_runs.data(real_runs.t1), real_runs.data(real_runs.t2)
    pp_b = next(p for p in b["perf"] if p["test"] == "pp32")
    pp_h = next(p for p in h["perf"] if p["test"] == "pp32")
    assert rows[("pp32", "pp_tps")]["base"] == pytest.approx(sum(pp_b["samples_tps"]) / 5)
    assert rows[("pp32", "pp_tps")]["head"] == pytest.approx(sum(pp_h["samples_tps"]) / 5)
    assert rows[("pp32", "pp_tps")]["n_base"] == rows[("pp32", "pp_tps")]["n_head"] == 5
    # Whether one thread against two is a significant change depends on what else holds the
    # machine's cores while the five samples run, so only the rule is checked on these;
    # test_a_real_slowdown_is_flagged checks that a change is caught.
    for r in (rows[("pp32", "pp_tps")], rows[("tg16", "tg_tps")]):
        assert r["flagged"] == (r["p"] < 0.05 and abs(r["change"]) >= 5), r
        if r["flagged"]:
            assert r["verdict"] == ("improved" if r["change"] > 0 else "regressed")
    # a single-value figure is never flagged: there is nothing to test it with
    assert rows[("pp32", "peak_rss_mib")]["p"] is None and not rows[("pp32", "peak_rss_mib")]["flagged"]


def _slowdown(p: dict) -> float:
    """A speed factor for one test that puts every slowed sample below the run's slowest one
    (half its slowest over its fastest), however widely the run's own samples spread."""
    return 0.5 * min(p["samples_tps"]) / max(p["samples_tps"])


def _slow_down(d):
    """The same run, slower in every raw sample of every test, not only in the mean."""
    for p in d["perf"]:
        f = _slowdown(p)
        p["samples_tps"] = [x * f for x in p["samples_tps"]]
        p["tps_mean"], p["tps_stddev"] = p["tps_mean"] * f, p["tps_stddev"] * f
        for key in ("samples_ms", "samples_ttft_ms"):
            if p.get(key):
                p[key] = [x / f for x in p[key]]
        if p.get("ttft_ms_mean") is not None:
            p["ttft_ms_mean"], p["ttft_ms_stddev"] = p["ttft_ms_mean"] / f, p["ttft_ms_stddev"] / f


def _slower_t1(real_runs, tmp_path) -> Path:
    return write_variant(real_runs.file(real_runs.t1), tmp_path / "slower", _slow_down).parent


def test_a_change_too_few_samples_can_test_says_why_and_shows_no_interval(cli, real_runs, tmp_path):
    """Two repetitions a side, all of them slower: a big change that a Mann-Whitney test of 2 vs 2
    cannot confirm. The table shows no interval for it, and says why it is untested."""
    def two(d):
        for p in d["perf"]:
            p["samples_tps"], p["samples_ms"] = p["samples_tps"][:2], p["samples_ms"][:2]
            if p.get("samples_ttft_ms"):
                p["samples_ttft_ms"] = p["samples_ttft_ms"][:2]

    def two_slower(d):
        _slow_down(d)
        two(d)
    base = write_variant(real_runs.file(real_runs.t1), tmp_path / "base", two).parent
    head = write_variant(real_runs.file(real_runs.t1), tmp_path / "head", two_slower).parent
    res = cli("compare", str(base), str(head))
    assert res.code == 0, res.stderr
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("| tg16") and "tg_tps" in ln)
    assert "untested" in row and "[" not in row, row  # no "[low, high]" interval
    assert "2 vs 2 samples cannot reach p < 0.05 (use more --reps): " in res.stdout and "tg16 tg_tps" in res.stdout
    rows = _rows(cli("compare", str(base), str(head), "--format", "json"))
    assert rows[("tg16", "tg_tps")]["why_untested"].startswith("2 vs 2 samples cannot reach")
    assert rows[("tg16", "tg_tps")]["ci_low"] is not None  # the raw interval stays in the machine-readable rows


def test_a_real_slowdown_is_flagged(cli, real_runs, tmp_path):
    # every slowed sample lies below every original one, so the exact Mann-Whitney p is its
    # floor for five against five, 2/252
    slower = str(_slower_t1(real_runs, tmp_path))
    res = cli("compare", str(real_runs.t1), slower, "--format", "json")
    assert res.code == 0, res.stderr
    rows = _rows(res)
    factor = {p["test"]: _slowdown(p) for p in real_runs.data(real_runs.t1)["perf"]}
    for key in (("pp32", "pp_tps"), ("tg16", "tg_tps")):
        r = rows[key]
        assert r["flagged"] and r["verdict"] == "regressed", r
        assert r["p"] == pytest.approx(2 / 252) and r["change"] == pytest.approx((factor[key[0]] - 1) * 100)
    ttft = rows[("pp32", "ttft_ms")]
    assert ttft["flagged"] and ttft["verdict"] == "regressed"
    assert ttft["change"] == pytest.approx((1 / factor["pp32"] - 1) * 100)
    # and the same records read the other way round are an improvement
    back = _rows(cli("compare", slower, str(real_runs.t1), "--format", "json"))
    assert back[("pp32", "pp_tps")]["verdict"] == "improved" and back[("pp32", "pp_tps")]["flagged"]


def test_direction_of_each_metric(real_runs):
    ms = {m.metric: m for m in measurements(_records(real_runs.t1)[0])}
    assert ms["pp_tps"].direction == DIRECTION["tps_mean"] == +1
    assert ms["tg_tps"].direction == +1
    assert ms["ttft_ms"].direction == DIRECTION["ttft_ms_mean"] == -1
    assert ms["peak_rss_mib"].direction == -1 and ms["load_ms"].direction == -1
    # a latency that rises is a regression; throughput that rises is an improvement
    base, head = _records(real_runs.t1), _records(real_runs.t2)
    c = compare(base, head)
    for row in c.rows:
        if row.flagged:
            worse = (row.change > 0) != (row.direction > 0)
            assert row.verdict == ("regressed" if worse else "improved")
    tps = next(r for r in c.rows if r.metric == "pp_tps")
    ttft = next(r for r in c.rows if r.metric == "ttft_ms")
    if tps.flagged and ttft.flagged:  # the same slowdown seen from both sides
        assert tps.verdict == ttft.verdict


def test_repeated_identical_runs_join_on_identity(cli, real_runs):
    # two separate runs (different run ids, times) of one configuration: no axis, every
    # measurement joined. Whether they differ depends on what else this shared machine did
    # between them (drift is a real change of conditions, and is reported as one), so
    # only the rule is checked here: flagged means significant and over the threshold.
    res = cli("compare", str(real_runs.t1), str(real_runs.t1_again), "--format", "json")
    assert res.code == 0, res.stderr
    data = res.json()
    assert data["axis"] is None and not data["only_base"] and not data["only_head"]
    assert {(r["test"], r["metric"]) for r in data["rows"]} >= {("pp32", "pp_tps"), ("tg16", "tg_tps"), ("load", "load_ms")}
    for r in data["rows"]:
        assert r["flagged"] == (r["verdict"] in ("improved", "regressed"))
        if r["flagged"]:
            assert r["p"] < 0.05 and abs(r["change"]) >= 5
        if r["p"] is None:
            assert not r["flagged"]


def test_same_run_against_itself_flags_nothing_and_passes_the_gate(cli, real_runs):
    res = cli("compare", str(real_runs.t1), str(real_runs.t1), "--fail-on", "tg_tps:-5%,pp_tps:-5%")
    assert res.code == 0, res.stderr
    assert "regressed" not in res.stdout and "improved" not in res.stdout
    assert "same configurations" in res.stdout


def test_pooling_repeated_runs_doubles_the_samples(real_runs, tmp_path):
    pooled = tmp_path / "pooled"
    pooled.mkdir()
    for folder in (real_runs.t1, real_runs.t1_again):
        f = real_runs.file(folder)
        (pooled / f.name).write_text(f.read_text())
    c = compare(_records(pooled), _records(real_runs.t2))
    tps = next(r for r in c.rows if r.metric == "tg_tps")
    assert (tps.n_base, tps.n_head) == (10, 5)


def test_by_names_the_axis_and_the_rest_must_match(cli, real_runs, tmp_path):
    base, head = _records(real_runs.t1), _records(real_runs.t2)
    for name in ("threads", "n_threads"):  # the column title or the setting's name
        assert compare(base, head, by=name).axis == "n_threads, n_threads_batch"
    with pytest.raises(ConfigError, match="no record has that setting"):
        compare(base, head, by="no_such_setting")
    # naming another axis leaves threads in the identity: nothing joins, said in one line
    res = cli("compare", str(real_runs.t1), str(real_runs.t2), "--by", "n_batch")
    assert res.code == 2
    assert res.stderr.startswith("error: nothing to compare") and "n_threads" in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_two_differences_need_an_axis(real_runs, tmp_path):
    def more(d):
        d["backend"]["settings"]["n_batch"] = 1024
    head = read_record(write_variant(real_runs.file(real_runs.t2), tmp_path / "head", more))
    with pytest.raises(CompareError, match="differ in more than one setting .*--by"):
        compare(_records(real_runs.t1), [head])
    # naming one of them as the axis still needs the other to match
    with pytest.raises(CompareError, match="nothing to compare"):
        compare(_records(real_runs.t1), [head], by="threads")


def test_quantization_and_model_axes(real_runs, tmp_path):
    src = real_runs.file(real_runs.t1)

    def requant(d):
        d["model"]["sha256"] = "0" * 64
        d["model"]["quantization"] = "Q8_0"
    def other_model(d):
        requant(d)
        d["model"]["architecture"], d["model"]["parameters"] = "gemma3", 268098176
    base = _records(real_runs.t1)
    q = [read_record(write_variant(src, tmp_path / "q", requant))]
    assert find_axis(base, q, None).kind == "quantization"
    c = compare(base, q)
    assert {r.axis_base for r in c.rows} == {"Q4_1"} and {r.axis_head for r in c.rows} == {"Q8_0"}
    m = [read_record(write_variant(src, tmp_path / "m", other_model))]
    assert find_axis(base, m, None).kind == "model"
    # backend differs: the backend is the axis and settings are not joined
    def other_backend(d):
        d["backend"]["name"], d["backend"]["settings"] = "vllm", {"max_num_seqs": 8}
    v = [read_record(write_variant(src, tmp_path / "v", other_backend))]
    assert find_axis(base, v, None).kind == "backend"
    assert compare(base, v).rows


# ---------------------------------------------------------------------------- significance


def test_mann_whitney_on_real_samples(real_runs):
    b = next(p for p in _records(real_runs.t1)[0].perf if p.test == "tg16").samples_tps
    again = next(p for p in _records(real_runs.t1_again)[0].perf if p.test == "tg16").samples_tps
    same = perf_significance(b, b, 0.05, "mwu")
    assert same.p == pytest.approx(1.0) and same.significant is False
    assert same.ci_low <= 1.0 <= same.ci_high
    # fully separated samples (the real ones doubled) are significant by both tests
    shifted = [x * 2 for x in b]
    for stat in ("mwu", "bootstrap"):
        s = perf_significance(b, shifted, 0.05, stat)
        assert s.significant is True, stat
    assert perf_significance(b, shifted, 0.05, "mwu").p == pytest.approx(2 / 252)  # exact, 5 vs 5
    boot = perf_significance(b, shifted, 0.05, "bootstrap")
    assert 1.0 < boot.ci_low <= 2.0 <= boot.ci_high  # the interval of head/base holds the true ratio
    # too few samples to ever reach p < 0.05: said so, not called noise
    few = perf_significance(b[:2], shifted[:2], 0.05, "mwu")
    assert few.significant is None and "cannot reach" in few.why_untested
    assert perf_significance(b, again, 0.05, "mwu").p is not None
    assert perf_significance(b[:1], again[:1], 0.05, "mwu").significant is None


# ---------------------------------------------------------------------------- accuracy


def _with_accuracy(src: Path, dest: Path, entries: list[dict]) -> Path:
    def add(d):
        d["accuracy"] = entries
    return write_variant(src, dest, add)


ACC = {"metric": "acc", "n": 500, "num_fewshot": 5, "filter": "none"}


def test_accuracy_change_against_combined_stderr(cli, real_runs, tmp_path):
    src = real_runs.file(real_runs.t1)
    _with_accuracy(src, tmp_path / "base", [
        {**ACC, "task": "mmlu_snapshot", "value": 0.30, "stderr": 0.02},
        {**ACC, "task": "truthfulqa_mc2", "value": 0.40, "stderr": 0.02, "num_fewshot": 0},
        {"task": "gsm8k", "metric": "exact_match", "filter": "flexible-extract", "value": 0.05, "stderr": 0.03, "n": 50, "num_fewshot": 5},
        {"task": "gsm8k", "metric": "exact_match", "filter": "strict-match", "value": 0.05, "stderr": None, "n": 50, "num_fewshot": 5},
        {**ACC, "task": "arc_easy", "value": 0.5, "stderr": 0.02, "task_config_hash": "aaa"},
    ])
    _with_accuracy(src, tmp_path / "head", [
        {**ACC, "task": "mmlu_snapshot", "value": 0.20, "stderr": 0.02},  # -10 pt, z = 3.5
        {**ACC, "task": "truthfulqa_mc2", "value": 0.405, "stderr": 0.02, "num_fewshot": 0},  # +0.5 pt
        {"task": "gsm8k", "metric": "exact_match", "filter": "flexible-extract", "value": 0.08, "stderr": 0.03, "n": 50, "num_fewshot": 5},  # +3 pt, z = 0.7
        {"task": "gsm8k", "metric": "exact_match", "filter": "strict-match", "value": 0.10, "stderr": None, "n": 50, "num_fewshot": 5},
        {**ACC, "task": "arc_easy", "value": 0.6, "stderr": 0.02, "task_config_hash": "bbb"},  # prompts changed
    ])
    res = cli("compare", str(tmp_path / "base"), str(tmp_path / "head"), "--format", "json")
    assert res.code == 0, res.stderr
    rows = _rows(res)
    base, head = _records(tmp_path / "base"), _records(tmp_path / "head")
    mmlu = rows[("mmlu_snapshot", "acc")]
    assert mmlu["change_unit"] == "pt" and mmlu["change"] == pytest.approx(-10.0)
    assert mmlu["base"] == pytest.approx(30.0) and mmlu["base_sd"] == pytest.approx(2.0)
    assert mmlu["p"] < 0.001 and mmlu["verdict"] == "regressed" and mmlu["flagged"]
    assert rows[("truthfulqa_mc2", "acc")]["verdict"] == "within threshold"
    flex = rows[("gsm8k", "exact_match (flexible-extract)")]
    assert flex["change"] == pytest.approx(3.0) and flex["verdict"] == "not significant"
    assert flex["p"] == pytest.approx(0.4795, abs=1e-3)  # 2 * (1 - Phi(3 / sqrt(0.03^2 + 0.03^2)))
    assert rows[("gsm8k", "exact_match (strict-match)")]["verdict"] == "untested"
    arc = rows[("arc_easy", "acc")]
    assert arc["verdict"] == "not compared" and "task config differs" in arc["note"]
    # the gate: acc fails, exact_match does not; accuracy matches every accuracy metric
    def gate(spec):
        return gate_failures([compare(base, head, gate=parse_fail_on(spec))])
    assert len(gate("acc:-1pt")) == 1 and not gate("exact_match:-1pt")
    assert not gate("mmlu_snapshot/acc:-20pt")  # -10 pt is within a 20 pt gate
    res = cli("compare", str(tmp_path / "base"), str(tmp_path / "head"), "--fail-on", "accuracy:-1pt")
    assert res.code == 1 and "mmlu_snapshot acc -10.0 pt" in res.stderr


def test_accuracy_significance_arithmetic(real_runs):
    r = _records(real_runs.t1)[0]
    from harness.output.measurements import Measurement

    def m(value, se):
        return Measurement("accuracy", "t", "acc", [value], +1, "", r, "", stderr=se)
    s = accuracy_significance(m(0.50, 0.03), m(0.56, 0.04), 0.05)
    assert s.p == pytest.approx(0.2301, abs=1e-3)  # z = 0.06 / 0.05 = 1.2
    assert s.ci_low == pytest.approx(0.06 - 1.959964 * 0.05, abs=1e-6)
    assert accuracy_significance(m(0.5, None), m(0.6, 0.02), 0.05).significant is None


# ---------------------------------------------------------------------------- gates


def test_fail_on_exit_codes_follow_the_regression(cli, real_runs, tmp_path):
    # a large slowdown is a regression in exactly one direction of comparison
    slower = str(_slower_t1(real_runs, tmp_path))
    forward = cli("compare", str(real_runs.t1), slower, "--fail-on", "pp_tps:-5%", "--format", "json")
    backward = cli("compare", slower, str(real_runs.t1), "--fail-on", "pp_tps:-5%", "--format", "json")
    assert (forward.code, backward.code) == (1, 0), (forward.stderr, backward.stderr)
    failing = forward
    assert failing.stderr.startswith("error: --fail-on: 1 flagged regression(s): pp32 pp_tps")
    assert failing.stdout.strip()  # the table is printed before the gate fails
    assert _rows(failing)[("pp32", "pp_tps")]["gate_failed"] is True


@pytest.mark.parametrize("spec, message", [
    ("tg_tps:+5%", "would fail on an improvement"),
    ("ttft_ms:-5%", "would fail on an improvement"),
    ("tg_tps:-1pt", "points apply to accuracy"),
    ("tg_tps", "bad item"),
    ("tg_tps:-five%", "bad threshold"),
    ("acc:-1pt", "no compared measurement has that metric"),
])
def test_bad_fail_on_specs(real_runs, spec, message):
    with pytest.raises(ConfigError, match=message):
        rules = parse_fail_on(spec)
        c = compare(_records(real_runs.t1), _records(real_runs.t1_again), gate=rules)
        check_gate_matches([c], rules)


def test_bad_fail_on_is_one_line(cli, real_runs):
    res = cli("compare", str(real_runs.t1), str(real_runs.t1_again), "--fail-on", "tg_tps:+5%")
    assert res.code == 2 and res.stderr.startswith("error: --fail-on tg_tps:+5% would fail on an improvement")
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr and not res.stdout


def test_parse_fail_on():
    rules = parse_fail_on("tg_tps:-5%, acc:-1pt,ttft_ms:+10%")
    assert [(r.key, r.threshold) for r in rules] == [
        ("tg_tps", Threshold(5, "%", -1)), ("acc", Threshold(1, "pt", -1)), ("ttft_ms", Threshold(10, "%", 1))]
    with pytest.raises(ConfigError):
        parse_fail_on(",")


def test_missing_gated_measurement_in_head_fails(cli, real_runs, tmp_path):
    def drop_tg(d):
        d["perf"] = [p for p in d["perf"] if not p["test"].startswith("tg")]
        d["status"] = "partial"
        d["failures"] = [{"cause": "tg16 crashed"}]
    head = write_variant(real_runs.file(real_runs.t1_again), tmp_path / "head", drop_tg)
    res = cli("compare", str(real_runs.t1), str(head.parent), "--fail-on", "tg_tps:-5%")
    assert res.code == 1
    assert "missing from head" in res.stderr and "only in base" in res.stdout
    assert "head run" in res.stderr and "partial: tg16 crashed" in res.stderr


# ---------------------------------------------------------------------------- environment


def test_environment_mismatch_warns(cli, real_runs, tmp_path):
    def other_machine(d):
        d["environment"]["cpu_model"] = "AMD EPYC 9654 96-Core Processor"
        d["environment"]["cpu_cores_physical"] = 96
        d["environment"]["packages"]["numpy"] = "1.26.4"
        d["backend"]["version"] = "0.3.99"
    head = write_variant(real_runs.file(real_runs.t1_again), tmp_path / "head", other_machine)
    res = cli("compare", str(real_runs.t1), str(head.parent))
    assert res.code == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert any("different hardware" in w and "AMD EPYC 9654" in w and "96 cores" in w for w in warnings), warnings
    soft = next(w for w in warnings if "different software" in w)
    assert "package numpy" in soft and "1.26.4" in soft and "llamacpp version 0.3.36 -> 0.3.99" in soft
    assert "> warning: different hardware" in res.stdout  # in the table for a PR comment too
    # the same machine and software: no warning
    assert not compare(_records(real_runs.t1), _records(real_runs.t1_again)).warnings


# ---------------------------------------------------------------------------- output


def test_markdown_hides_constant_columns(cli, real_runs):
    res = cli("compare", str(real_runs.t1), str(real_runs.t2))
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("**harness compare** base → head: **n_threads, n_threads_batch** 1 → 2")
    common = next(line for line in lines if line.startswith("common: "))
    assert "n_batch 2048" in common and "backend llamacpp" in common
    header = next(line for line in lines if line.startswith("| test"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert "n_batch" not in cols and "model" not in cols and "backend" not in cols
    assert cols[:2] == ["test", "metric"] and "verdict" in cols and "p-value" in cols
    sep = lines[lines.index(header) + 1]
    assert set(sep.replace("|", "").replace(" ", "")) <= {"-", ":"} and "--:" in sep


def test_csv_and_json_carry_every_column(cli, real_runs):
    rows = list(csv.DictReader(io.StringIO(csv_text([compare(_records(real_runs.t1), _records(real_runs.t2))]))))
    assert rows and {"setting_n_batch", "test", "metric", "base", "head", "change", "p", "verdict", "axis"} <= set(rows[0])
    assert {r["setting_n_batch"] for r in rows} == {"2048"}
    js = cli("compare", str(real_runs.t1), str(real_runs.t2), str(real_runs.t1_again), "--format", "json").json()
    assert isinstance(js, list) and len(js) == 2  # one comparison per head
    assert js[0]["axis"] and js[1]["axis"] is None


def test_damaged_and_missing_inputs(cli, real_runs, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    text = real_runs.file(real_runs.t2).read_text()
    (bad / "cut.json").write_text(text[: len(text) // 2])
    res = cli("compare", str(real_runs.t1), str(bad))
    assert res.code == 2 and "not valid JSON" in res.stderr and "Traceback" not in res.stderr
    with pytest.raises(ResultFileError, match="head .*nowhere does not exist"):
        load_records([tmp_path / "nowhere"], "head")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultFileError, match="head .*empty holds no result files"):
        load_records([tmp_path / "empty"], "head")
    with pytest.raises(HarnessError):
        compare(_records(real_runs.t1), _records(real_runs.t2), alpha=2)
