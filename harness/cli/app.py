"""The Typer app with its root options, and the option pieces the commands share."""

from __future__ import annotations

import typer

from harness.core.errors import EXIT_STATUS_HELP, HarnessError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Benchmark open-weight language models on your own hardware.",
    epilog=EXIT_STATUS_HELP,
)

def _print_version(value: bool) -> None:
    if value:
        from harness import __version__

        print(f"harness {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_print_version,
                                 help="print the harness's version and exit"),
) -> None:
    """Benchmark open-weight language models on your own hardware."""


FORMAT_HELP = "output format: md, csv or json"
RECORD_FORMAT_HELP = "output format: md, csv, json, jsonl or sql"
BENCH_FORMAT_HELP = "output format, as llama-bench's -o: md, csv, json, jsonl or sql"


def check_format(fmt: str, formats: tuple[str, ...] | None = None) -> str:
    from harness.output.printers import FORMATS

    formats = formats or FORMATS
    if fmt not in formats:
        raise HarnessError(f"--format: unknown format '{fmt}'; use one of {', '.join(formats)}")
    return fmt


def joined(values: list[str] | None) -> str | None:
    """A repeatable list option as one comma list: -p 128 -p 512 and -p 128,512 are the same."""
    return ",".join(values) if values else None


def raise_unsaved(outcome) -> None:
    """A record measured but not written (the disk filled up): its figures are on stdout now."""
    if outcome.unsaved:
        first = outcome.unsaved[0]
        n = len(outcome.unsaved)
        first.kept = (f"the {n} result{'s' if n > 1 else ''} not saved {'are' if n > 1 else 'is'} printed above "
                      f"({len(outcome.paths)} saved)")
        raise first


