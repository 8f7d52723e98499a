"""The published JSON Schema of run records, generated from the record models.

``python -m harness.core.schema`` rewrites results/schema/run.schema.json; ``--check`` exits 1
when the committed file differs from what the models generate (a test runs it). With
HARNESS_CHECK_SCHEMA set, every record the harness writes is validated against the
committed schema first (the test suite sets it, so every record a test writes is checked).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from harness.core.errors import ResultFileError
from harness.core.paths import PACKAGE_DIR

SCHEMA_FILE = PACKAGE_DIR.parent / "results" / "schema" / "run.schema.json"
SCHEMA_ID = "https://github.com/openbench-harness/harness/results/schema/run.schema.json"


def run_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a run record, as pydantic generates it from RunRecord."""
    from harness.core.record import SCHEMA_VERSION, RunRecord

    schema = RunRecord.model_json_schema(mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": f"harness run record, schema_version {SCHEMA_VERSION}", **schema}


def schema_text() -> str:
    return json.dumps(run_schema(), indent=2, sort_keys=True) + "\n"


def committed_schema() -> dict[str, Any]:
    """The committed schema file, or the generated one where the harness runs without its checkout."""
    try:
        return json.loads(SCHEMA_FILE.read_text())
    except OSError:
        return run_schema()


_validator = None


def check_record(data: dict[str, Any]) -> None:
    """Raise ResultFileError naming the first place a record breaks the published schema."""
    global _validator
    if _validator is None:
        try:
            import jsonschema
        except ImportError:
            raise ResultFileError("HARNESS_CHECK_SCHEMA is set but jsonschema is not installed: pip install jsonschema") from None
        schema = committed_schema()
        _validator = jsonschema.Draft202012Validator(schema)
    error = next(iter(sorted(_validator.iter_errors(data), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "(top)"
        raise ResultFileError(f"record does not match {SCHEMA_FILE.name} at {where}: {error.message[:300]}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        try:
            committed = SCHEMA_FILE.read_text()
        except OSError:
            print(f"error: {SCHEMA_FILE} is missing; run: python -m harness.core.schema", file=sys.stderr)
            return 1
        if committed != schema_text():
            print(f"error: {SCHEMA_FILE} is stale (the record models changed); run: python -m harness.core.schema",
                  file=sys.stderr)
            return 1
        return 0
    SCHEMA_FILE.parent.mkdir(parents=True, exist_ok=True)
    SCHEMA_FILE.write_text(schema_text())
    print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
