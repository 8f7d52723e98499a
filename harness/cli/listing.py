"""`harness models`, `harness backends` and `harness env`: what this machine has."""

from __future__ import annotations

import json

import typer

from harness.cli.app import FORMAT_HELP, check_format
from harness.core.errors import HarnessError


def models(fmt: str = typer.Option("md", "--format", "-f", metavar="FORMAT", help=FORMAT_HELP)) -> None:
    """List the bundled and local models, and those Ollama and LM Studio hold, with size, quantization and license."""
    from harness.core.catalog import list_models
    from harness.output.printers import _params_label, table_text

    rows = list_models()
    if check_format(fmt) == "json":
        print(json.dumps(rows, indent=2))
        return
    header = ["name", "source", "size MiB", "params", "quant", "license", "path"]
    table = [[r["name"], r["source"], str(r.get("size_mib", "")), _params_label(r.get("parameters")) if "parameters" in r else "",
              r.get("quantization") or "", r.get("license") or "", r.get("error") or r["path"]] for r in rows]
    print(table_text(fmt, header, table, {2, 3}))


def backends(fmt: str = typer.Option("md", "--format", "-f", metavar="FORMAT", help=FORMAT_HELP)) -> None:
    """List backends and whether each is installed."""
    from harness.core import registry
    from harness.output.printers import table_text

    check_format(fmt)
    rows = []
    for name, target in sorted(registry.available().items()):
        try:
            cls = registry.get(name)
            ver = cls.installed_version()
            rows.append([name, ver or "not installed", "" if ver else cls.install_hint, target])
        except HarnessError as exc:
            rows.append([name, "broken", str(exc), target])
    print(table_text(fmt, ["backend", "version", "install", "module"], rows))


def env(fmt: str = typer.Option("json", "--format", "-f", metavar="FORMAT", help="output format: json (default), md or csv")) -> None:
    """Print the environment fingerprint stored with every result."""
    from harness.core.environment import fingerprint
    from harness.output.printers import table_text

    check_format(fmt)
    info = fingerprint()
    if fmt == "json":
        print(json.dumps(info, indent=2))
        return

    def flat(prefix: str, value) -> list[list[str]]:
        if isinstance(value, dict):
            return [row for k, v in value.items() for row in flat(f"{prefix}.{k}" if prefix else str(k), v)]
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return [row for i, v in enumerate(value) for row in flat(f"{prefix}[{i}]", v)]
        shown = " ".join(map(str, value)) if isinstance(value, list) else ("" if value is None else str(value))
        return [[prefix, shown]]

    print(table_text(fmt, ["key", "value"], flat("", info)))


