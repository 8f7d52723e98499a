"""HumanEval, bundled and offline, with a self-contained pass@1 scorer.

Scoring runs model-written code. It happens only when the environment variable
HARNESS_ALLOW_CODE_EXECUTION=1 is set (the harness CLI sets it for --allow-code-execution);
otherwise `process_results` raises CodeExecutionNotAllowed. The task YAML is also marked
`unsafe_code: true`, so lm-eval itself refuses to start it unless the caller passes
`confirm_run_unsafe_code=True`; both gates come from the same user opt-in.

Each program runs in the bubblewrap sandbox of harness/measurement/sandbox.py (docs/security.md): a
read-only root of system folders, a private tmpfs working directory, no network, no view of
the user's home, the results or the environment, no fork, limits on memory, CPU time and
file size, and the whole sandbox killed at its timeout. A program passes only when the
sandbox's driver wrote this run's random token after the program (solution and tests) ran
to its end; the exit status counts for nothing. Where the sandbox cannot be created, the
run is refused with one line saying why.

Settings (environment): HARNESS_CODE_EXEC_TIMEOUT (wall seconds per program, default 10),
HARNESS_CODE_EXEC_MEMORY_MB (address-space limit, default 2048).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import datasets

from harness.measurement import sandbox
from harness.measurement.sandbox import Outcome


DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "humaneval" / "HumanEval.jsonl.gz"
ALLOW_ENV = "HARNESS_ALLOW_CODE_EXECUTION"
TIMEOUT_ENV = "HARNESS_CODE_EXEC_TIMEOUT"
MEMORY_ENV = "HARNESS_CODE_EXEC_MEMORY_MB"


class CodeExecutionNotAllowed(RuntimeError):
    pass


# ------------------------------------------------------------------------- data
def load_humaneval(**_metadata) -> datasets.DatasetDict:
    """DatasetDict with one `test` split (164 problems: task_id, prompt,
    canonical_solution, test, entry_point), as openai/openai_humaneval."""
    with gzip.open(DATA_FILE, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


# ------------------------------------------------------------ filter and metric
def build_predictions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """The stock lm-eval `create_test` filter: the program is prompt + completion."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]


def check_allowed() -> None:
    if os.environ.get(ALLOW_ENV) != "1":
        raise CodeExecutionNotAllowed(
            "humaneval scores a model by executing the code it wrote. That is off unless you "
            f"opt in: pass --allow-code-execution to the harness (or set {ALLOW_ENV}=1 and "
            "confirm_run_unsafe_code=True when calling lm-eval directly). Programs then run in a "
            "bubblewrap sandbox: no network, no view of your files, limited time, memory and processes."
        )


def process_results(doc: dict, results: list) -> dict[str, float]:
    """pass@1 for one problem. `results` holds, per request, the filtered responses
    (after `create_test`, a list of prompt+completion programs, one per repeat). With n
    samples and c of them passing, the unbiased pass@1 estimate is c / n."""
    check_allowed()
    programs = results[0] if results and isinstance(results[0], (list, tuple)) else list(results)
    if not programs:
        return {"pass@1": 0.0}
    test_program = f"\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"
    passed = [run_program(str(p) + test_program).passed for p in programs]
    return {"pass@1": sum(passed) / len(passed)}


# ----------------------------------------------------------------- the sandbox
def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def run_program(program: str, timeout_s: float | None = None, memory_mb: int | None = None) -> Outcome:
    """Execute `program` (a complete Python module: solution + tests) in the sandbox.
    Passed means the sandbox's driver saw it run to its end (never the exit status)."""
    check_allowed()
    timeout_s = timeout_s or _float_env(TIMEOUT_ENV, sandbox.DEFAULT_TIMEOUT_S)
    memory_mb = memory_mb or int(_float_env(MEMORY_ENV, sandbox.DEFAULT_MEMORY_MB))
    return sandbox.run_python(program, timeout_s=timeout_s, memory_mb=memory_mb)
