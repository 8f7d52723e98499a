"""Check `harness eval` (llama.cpp on the SmolLM2 Q4_1 GGUF) against lm-eval's own `hf`
model (HFLM) on the same weights (transformers dequantizes the GGUF) and the same
documents of the bundled tasks.

Needs a second environment with torch, transformers, accelerate, gguf and lm-eval (the
project's own .venv keeps torch out), for example:

    python3 -m venv /tmp/hf-venv
    /tmp/hf-venv/bin/pip install torch==2.13.0+cpu transformers accelerate gguf lm-eval==0.4.13
    /tmp/hf-venv/bin/python benchmarks/against_lm_eval_hf.py \
        [--mmlu-limit 5] [--tqa-limit 200] [--threads 2] [--out /tmp/hf_compare]

1. runs `harness eval --tasks mmlu_snapshot,truthfulqa_mc2 --limit ... --log-samples` in the
   project venv (its own worker process, as a user runs it);
2. loads the GGUF with transformers (AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)),
   wraps it in lm-eval's HFLM and runs simple_evaluate on the same task configs
   (TaskManager over tasks/, include_defaults=False) with the same limit;
3. compares accuracy per task/group, and document by document: the chosen letter for MMLU,
   the MC2 score for TruthfulQA.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parent.parent


def by_doc(samples: list[dict], task_filter=lambda t: True) -> dict[tuple[str, int], dict]:
    return {(s["task"], int(s["doc_id"])): s for s in samples if task_filter(s["task"])}


def mmlu_choice(sample: dict) -> int:
    lls = [r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in sample["filtered_resps"]]
    return max(range(len(lls)), key=lambda i: float(lls[i]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mmlu-limit", type=int, default=3)
    ap.add_argument("--tqa-limit", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("hf_compare"))
    ap.add_argument("--harness-python", default=str(REPO / ".venv" / "bin" / "python"),
                    help="the Python that has the harness installed (default: the project's .venv)")
    ap.add_argument("--model", default="smollm2-135m", help="a GGUF reference the harness resolves")
    ap.add_argument("--skip-llamacpp", action="store_true", help="reuse the llama.cpp run already in --out")
    args = ap.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    gguf = Path(subprocess.run([args.harness_python, "-c", "import sys; from harness.core.models import resolve; "
                                "print(resolve(sys.argv[1]).path)", args.model],
                               capture_output=True, text=True, check=True).stdout.strip())

    # ------------------------------------------------------------------ llama.cpp through harness eval
    runs = {t: n for t, n in {"mmlu_snapshot": args.mmlu_limit, "truthfulqa_mc2": args.tqa_limit}.items() if n}  # 0: skip
    cpp_samples: list[dict] = []
    cpp_acc: dict = {}
    for task, limit in runs.items():
        rec_path = args.out / f"cpp-{task}.json"
        if not (args.skip_llamacpp and rec_path.exists()):
            t0 = time.time()
            proc = subprocess.run([args.harness_python, "-m", "harness.cli", "eval", "--model", args.model, "--tasks", task, "--limit", str(limit), "--threads",
                                   str(args.threads), "--log-samples", "--no-cache", "--format", "json",
                                   "--out", str(args.out / "runs")], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(proc.stderr[-3000:])
            rec_path.write_text(proc.stdout)
            print(f"[compare] harness eval {task} --limit {limit}: {time.time() - t0:.0f} s", flush=True)
        rec = json.loads(rec_path.read_text())
        cpp_samples += [json.loads(line) for line in Path(rec["evaluation"]["samples_file"]).read_text().splitlines()]
        for a in rec["accuracy"]:
            cpp_acc[(a["task"], a["metric"])] = (a["value"], a["n"])

    # ------------------------------------------------------------------ transformers + lm-eval's HFLM
    import torch
    import lm_eval
    import transformers
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32)
    model.eval()
    print(f"[compare] transformers {transformers.__version__}, torch {torch.__version__}: GGUF dequantized in "
          f"{time.time() - t0:.0f} s ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, "
          f"{next(model.parameters()).dtype})", flush=True)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size, device="cpu")
    tm = TaskManager(include_path=str(REPO / "tasks"), include_defaults=False)
    hf_samples: list[dict] = []
    hf_acc: dict = {}
    for task, limit in runs.items():
        t0 = time.time()
        res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=tm, limit=limit, log_samples=True)
        print(f"[compare] hf {task} --limit {limit}: {time.time() - t0:.0f} s", flush=True)
        for name, entry in res["results"].items():
            for key, value in entry.items():
                if "," in key and "_stderr" not in key:
                    hf_acc[(name, key.split(",")[0])] = (value, None)
        for name, samples in res["samples"].items():
            for s in samples:
                hf_samples.append({"task": name, "doc_id": s["doc_id"], "filtered_resps": s["filtered_resps"],
                                   "acc": s.get("acc")})
    (args.out / "hf-samples.json").write_text(json.dumps(hf_samples, default=str))

    # ------------------------------------------------------------------ comparison
    report = {"accuracy": {}, "per_doc": {}}
    print("\n| task | metric | llama.cpp (harness) | hf (lm-eval HFLM, dequantized GGUF) | difference, points |")
    print("|---|---|---:|---:|---:|")
    shown = {"mmlu_snapshot", "mmlu_snapshot_stem", "mmlu_snapshot_other", "mmlu_snapshot_social_sciences",
             "mmlu_snapshot_humanities", "truthfulqa_mc2"}
    for key in sorted(set(cpp_acc) & set(hf_acc)):
        if key[0] not in shown:
            continue
        c, n = cpp_acc[key]
        h, _ = hf_acc[key]
        report["accuracy"][f"{key[0]} {key[1]}"] = {"llamacpp": c, "hf": h, "n": n, "diff_points": 100 * (c - h)}
        print(f"| {key[0]} | {key[1]} | {c:.4f} | {h:.4f} | {100 * (c - h):+.2f} |")
    cpp_mmlu = by_doc(cpp_samples, lambda t: t.startswith("mmlu_snapshot_"))
    hf_mmlu = by_doc(hf_samples, lambda t: t.startswith("mmlu_snapshot_"))
    common = sorted(set(cpp_mmlu) & set(hf_mmlu))
    agree = sum(mmlu_choice(cpp_mmlu[k]) == mmlu_choice(hf_mmlu[k]) for k in common)
    cpp_tqa = by_doc(cpp_samples, lambda t: t == "truthfulqa_mc2")
    hf_tqa = by_doc(hf_samples, lambda t: t == "truthfulqa_mc2")
    tcommon = sorted(set(cpp_tqa) & set(hf_tqa))
    diffs = [abs(float(cpp_tqa[k]["acc"]) - float(hf_tqa[k]["acc"])) for k in tcommon]
    # per choice: llama.cpp's log-likelihood minus hf's, over every MMLU choice
    ll_diffs = [float(a[0] if not isinstance(a[0], list) else a[0][0]) - float(b[0] if not isinstance(b[0], list) else b[0][0])
                for k in common for a, b in zip(cpp_mmlu[k]["filtered_resps"], hf_mmlu[k]["filtered_resps"])]
    report["per_doc"] = {
        "mmlu_docs": len(common), "mmlu_same_answer": agree,
        "mmlu_ll_mean_diff": sum(ll_diffs) / max(1, len(ll_diffs)),
        "mmlu_ll_mean_abs_diff": sum(abs(d) for d in ll_diffs) / max(1, len(ll_diffs)),
        "tqa_docs": len(tcommon), "tqa_mean_abs_diff": sum(diffs) / max(1, len(diffs)), "tqa_max_abs_diff": max(diffs, default=0),
    }
    if common:
        print(f"\nMMLU: the same letter chosen on {agree}/{len(common)} documents ({100 * agree / max(1, len(common)):.1f}%); "
              f"per-choice log-likelihood llama.cpp - hf: mean {report['per_doc']['mmlu_ll_mean_diff']:+.4f}, "
              f"mean abs {report['per_doc']['mmlu_ll_mean_abs_diff']:.4f} nats")
    if tcommon:
        print(f"TruthfulQA MC2: per-document score differs by {report['per_doc']['tqa_mean_abs_diff']:.4f} on average "
              f"(max {report['per_doc']['tqa_max_abs_diff']:.4f}) over {len(tcommon)} documents")
    (args.out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
