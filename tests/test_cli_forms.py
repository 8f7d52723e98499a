"""The forms users bring from llama-bench, lm-eval and vllm bench serve, refused or taken
as those tools take them; output formats; help text. No model is loaded here (the real
runs are in test_habits_real.py)."""

from __future__ import annotations

import csv
import io
import json
import re

from cli_checks import assert_one_line_error


def test_version(cli):
    from harness import __version__

    for flag in ("--version", "-V"):
        r = cli(flag)
        assert r.code == 0 and r.stdout.strip() == f"harness {__version__}", r.stderr


def test_help_shows_metavariables_not_python_types(cli):
    for command in ("bench", "eval", "load", "sweep", "show", "compare", "trend", "env", "models"):
        r = cli(command, "--help", env={"COLUMNS": "200"})
        assert r.code == 0, r.stderr
        assert not re.search(r"<?\b(list\[str\]|str|int|float|Path)\b>|<\w+>", r.stdout), (command, r.stdout)
    text = cli("bench", "--help", env={"COLUMNS": "200"}).stdout
    assert re.search(r"--pp\b.*\bLIST\b", text) and re.search(r"--reps\b.*\bN\b", text) and "PATH" in text


def test_bench_o_is_the_format_as_in_llama_bench(cli, tmp_path):
    r = cli("bench", "-o", str(tmp_path / "runs"), "--reps", "1")
    assert_one_line_error(r, tmp_path / "runs", r"unknown format .*md, csv, json, jsonl, sql.*--out PATH")
    r = cli("bench", "-o", "json", "-f", "csv", "--out", str(tmp_path / "runs"))
    assert_one_line_error(r, tmp_path / "runs", r"-o json and --format csv disagree")


def test_bench_list_options_are_checked_by_llama_bench_rules(cli, tmp_path):
    out = tmp_path / "runs"
    # repeated flags add values, so a value given twice is a repeat
    assert_one_line_error(cli("bench", "-p", "16", "-p", "16", "--out", str(out)), out, r"--pp: '16,16' repeats a value")
    assert_one_line_error(cli("bench", "-pg", "16", "--out", str(out)), out, r"-pg: '16' is not PP,TG")
    assert_one_line_error(cli("bench", "-ctk", "q9_9", "--out", str(out)), out, r"unknown KV cache type 'q9_9'")
    assert_one_line_error(cli("bench", "-sm", "diagonal", "--out", str(out)), out, r"--split-mode: 'diagonal' is not one of none, layer, row")
    assert_one_line_error(cli("bench", "-ts", "3/x", "--out", str(out)), out, r"--tensor-split: '3/x' is not a split")
    assert_one_line_error(cli("bench", "-ctv", "q8_0", "-fa", "0", "--out", str(out)), out, r"quantized V cache \(q8_0\) needs flash attention")
    assert_one_line_error(cli("bench", "-d", "-1", "--out", str(out)), out, r"--n-depth: -1 is too small")
    # a model list: each reference is checked before anything runs
    assert_one_line_error(cli("bench", "-m", "smollm2-135m,nosuch.gguf", "--out", str(out)), out, r"model file not found: nosuch.gguf")


def test_bench_flags_a_backend_lacks_are_named(cli, tmp_path):
    out = tmp_path / "runs"
    r = cli("bench", "-b", "openai", "-ctk", "q8_0", "--out", str(out))
    assert_one_line_error(r, out, r"--cache-type-k: backend 'openai' has no such setting")


def test_lm_eval_underscore_spellings_are_aliases(cli, tmp_path):
    out = tmp_path / "out"
    # each refusal below names the hyphenated option: the underscore form reached it
    assert_one_line_error(cli("eval", "--num_fewshot", "-1", "--output_path", str(out)), out, r"--num-fewshot must be 0 or more")
    assert_one_line_error(cli("eval", "--limit", "1.5", "--output_path=" + str(out)), out, r"--limit: 1.5 is neither a count")
    assert_one_line_error(cli("eval", "--limit", "0", "--out", str(out)), out, r"--limit: 0 is neither a count")
    assert_one_line_error(cli("eval", "--seed", "1,2", "--out", str(out)), out, r"--seed: '1,2' gives 2 seeds")
    assert_one_line_error(cli("eval", "--gen_kwargs", "temperature", "--out", str(out)), out, r"--gen-kwargs: 'temperature' is not KEY=VALUE")
    # an underscore name that is no option stays an unknown option
    r = cli("eval", "--no_such_option", "1")
    assert r.code == 2 and "No such option: --no_such_option" in r.stderr


def test_hyphen_rewrite_touches_only_real_options():
    from harness.cli.main import _command_tree, with_hyphens

    root = _command_tree()
    argv = ["eval", "--num_fewshot", "5", "--set", "max_num_seqs=2", "--output_path=/x_y", "--", "--log_samples"]
    assert with_hyphens(argv, root) == ["eval", "--num-fewshot", "5", "--set", "max_num_seqs=2", "--output-path=/x_y",
                                        "--", "--log_samples"]
    assert with_hyphens(["bench", "--n_depth", "4"], root) == ["bench", "--n-depth", "4"]


def test_load_forms_of_vllm_bench_serve(cli, tmp_path):
    out = tmp_path / "out"
    base = ["load", "--base-url", "http://127.0.0.1:9/v1", "--out", str(out)]
    assert_one_line_error(cli(*base, "--goodput", "ttft=500"), out, r"--goodput: 'ttft=500' is not KEY:MS")
    assert_one_line_error(cli(*base, "--goodput", "ttft:500", "--slo", "ttft_ms=400"), out, r"--goodput ttft repeats --slo ttft_ms")
    assert_one_line_error(cli(*base, "--percentile-metrics", "ttft,foo"), out, r"'foo' is not one of ttft, tpot, itl, e2el")
    assert_one_line_error(cli(*base, "--metric-percentiles", "50"), out, r"--metric-percentiles needs --percentile-metrics")
    assert_one_line_error(cli(*base, "--percentile-metrics", "ttft", "--metric-percentiles", "0"), out, r"0 is not a percentile")
    assert_one_line_error(cli(*base, "--rate", "2", "--burstiness", "0"), out, r"--burstiness: 0.0 must be above 0")


def test_goodput_parses_to_the_slo_form():
    from harness.measurement.traffic_options import parse_goodput, parse_metric_percentiles, parse_percentile_metrics

    assert parse_goodput(["ttft:500 tpot:50", "e2el:2000"]) == {"ttft_ms": 500.0, "tpot_ms": 50.0, "e2el_ms": 2000.0}
    assert parse_percentile_metrics("ttft,itl") == ["ttft_ms", "itl_ms"]
    assert parse_metric_percentiles("25,50,99.9") == [25.0, 50.0, 99.9]


def test_models_and_backends_honour_format(cli):
    r = cli("models", "-f", "csv")
    assert r.code == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert rows[0]["name"] == "smollm2-135m" and rows[0]["quant"] == "Q4_1"
    js = cli("models", "-f", "json").json()
    assert js[0]["name"] == "smollm2-135m"
    r = cli("backends", "-f", "json")
    assert r.code == 0 and {"backend", "version"} <= set(r.json()[0])
    r = cli("backends", "-f", "csv")
    assert r.stdout.splitlines()[0] == "backend,version,install,module"


def test_env_honours_format(cli):
    js = cli("env").json()
    assert js["cpu_model"] and "cpu_flags" in js
    md = cli("env", "-f", "md")
    assert md.code == 0 and md.stdout.startswith("| key") and "cpu_model" in md.stdout
    rows = {r["key"]: r["value"] for r in csv.DictReader(io.StringIO(cli("env", "--format", "csv").stdout))}
    assert rows["cpu_model"] == js["cpu_model"] and rows["cpu_cores_physical"] == str(js["cpu_cores_physical"])
    assert_one_line_error(cli("env", "-f", "xml"), io_dir := __import__("pathlib").Path("/nonexistent"), r"unknown format 'xml'")
    del io_dir


X86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx f16c avx2 fma avx512f avx512bw amx_tile amx_int8\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp sve i8mm\nCPU implementer\t: 0x41\n"


def test_cpu_flags_from_cpuinfo():
    from harness.core.environment import cpu_flags

    assert cpu_flags(X86) == ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "amx_tile", "amx_int8"]
    assert cpu_flags(ARM) == ["neon", "asimd", "asimddp", "i8mm", "sve"]
    assert cpu_flags("processor: 0\n") is None  # nothing said is not "no flags"
    here = cpu_flags()
    assert here is None or isinstance(here, list)


def test_gpu_fields_carry_clocks_and_power_or_why_not():
    from harness.core.environment import fingerprint

    env = fingerprint()
    for gpu in env.get("gpus", []):
        for key in ("sm_clock_mhz", "sm_clock_max_mhz", "mem_clock_mhz", "power_limit_w"):
            assert key in gpu or key in gpu.get("unavailable", {}), gpu
    if not env.get("gpus"):
        assert env.get("gpu_unavailable") or env.get("gpus") == []


def test_record_printers_sql_and_jsonl(tmp_path):
    import sqlite3

    from harness.output.printers import PRINTERS
    from harness.core.record import PerfResult
    from test_store import _record

    records = [_record(), _record()]
    records[1].run_id = "def456"
    for r in records:
        r.perf = [PerfResult(test=t, n_prompt=8, n_gen=0, reps=1, tps_mean=10.0, tps_stddev=0.0, samples_tps=[10.0],
                             samples_ms=[800.0]) for t in ("pp8", "pp8 @ d16")]
    db = sqlite3.connect(":memory:")
    db.executescript(PRINTERS["sql"](records))
    assert db.execute("select count(*) from test").fetchone()[0] == 4
    assert db.execute("select tps_mean, n_depth from test where test = 'pp8 @ d16' and run_id = 'def456'").fetchone() == (10.0, 0)
    lines = PRINTERS["jsonl"](records).splitlines()
    assert [json.loads(x)["run_id"] for x in lines] == [r.run_id for r in records]
    assert isinstance(json.loads(PRINTERS["json"](records[:1])), list)


def test_arrival_gaps_follow_vllm_bench_serve_burstiness():
    import numpy as np

    from harness.measurement.traffic_send import arrival_gap

    rng = np.random.default_rng(0)
    for burstiness in (0.25, 1.0, 4.0):
        gaps = np.array([arrival_gap(rng, 5.0, burstiness) for _ in range(20000)])
        assert abs(gaps.mean() - 0.2) < 0.01  # the rate is kept
        # the coefficient of variation of gamma(k) gaps is 1/sqrt(k): burstier below 1, steadier above
        assert abs(gaps.std() / gaps.mean() - 1 / burstiness ** 0.5) < 0.05


def test_goodput_takes_several_words_as_vllm_bench_serve_does():
    from harness.cli.main import joined_goodput

    assert joined_goodput(["load", "--goodput", "ttft:500", "tpot:50", "--rate", "2"]) == \
        ["load", "--goodput", "ttft:500 tpot:50", "--rate", "2"]
    assert joined_goodput(["load", "--goodput", "ttft:500", "--goodput", "e2el:9"]) == \
        ["load", "--goodput", "ttft:500", "--goodput", "e2el:9"]


def test_compare_names_a_pg_test_by_its_own_metric():
    from harness.output.measurements import measurements
    from harness.core.record import PerfResult
    from test_store import _record

    r = _record()
    r.perf = [PerfResult(test=t, n_prompt=8, n_gen=g, reps=1, tps_mean=1.0, tps_stddev=0.0, samples_tps=[1.0], samples_ms=[1.0])
              for t, g in (("pp8", 0), ("pp8+tg4", 4), ("pp8+tg4 @ d16", 4), ("pp8 @ d16", 0))]
    by_test = {m.test: m.metric for m in measurements(r) if m.metric.endswith("_tps")}
    assert by_test == {"pp8": "pp_tps", "pp8+tg4": "pg_tps", "pp8+tg4 @ d16": "pg_tps", "pp8 @ d16": "pp_tps"}
