"""The entry point: argv's aliases rewritten, the command run, and every way out turned into one of
the exit statuses in docs/exit-codes.md, with one line on stderr instead of a traceback.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer
from typer.exceptions import TyperException

from harness.cli.app import app
from harness.core.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, HarnessError
from harness.execution import interrupts


def _say_interrupted(exc: KeyboardInterrupt) -> int:
    print("error: interrupted" + (" (SIGTERM)" if isinstance(exc, interrupts.Terminated) else "") + _kept(exc),
          file=sys.stderr)
    return interrupts.exit_code(exc)


def _kept(exc: BaseException) -> str:
    """Where the work finished before a failure is, when the failing command kept some."""
    kept = getattr(exc, "kept", None)
    return f"; {kept}" if kept and kept not in str(exc) else ""


# what help shows for a value instead of Python's type names (<list[str]>, <str>)
_METAVARS = {"str": "TEXT", "int": "N", "float": "X", "Path": "PATH", "bool": ""}


def _metavar(param) -> str:
    if getattr(param, "is_flag", False):
        return ""  # a flag takes no value
    desc = getattr(param, "type_descriptor", None)
    annotation = getattr(desc, "annotation", None)
    from typing import get_args, get_origin

    while get_origin(annotation) is not None and get_args(annotation):  # Optional[...], list[...]
        annotation = next((a for a in get_args(annotation) if a is not type(None)), None)
    return _METAVARS.get(getattr(annotation, "__name__", ""), "VALUE")


def _command_tree():
    """The click command behind the Typer app, with a metavariable on every parameter that
    names none of its own (Typer would show the Python type)."""
    root = typer.main.get_command(app)
    for cmd in [root, *getattr(root, "commands", {}).values()]:
        help_option = cmd.get_help_option(typer.main._click.Context(cmd, help_option_names=["--help"]))
        for param in [*cmd.params, *([help_option] if help_option else [])]:
            if param.param_type_name == "argument":  # its name is its metavariable; the type column goes
                param.display_type_rich = lambda ctx, shown=_metavar(param): shown
            elif param.metavar is None:
                param.metavar = _metavar(param)
    return root


def with_hyphens(argv: list[str], root) -> list[str]:
    """lm-eval's and vLLM's underscore spellings as aliases: --num_fewshot is --num-fewshot,
    --output_path=x is --output-path=x, for every option of the command being run. Only
    tokens that name a real option after the change are touched; nothing after "--"."""
    sub = next((a for a in argv if not a.startswith("-")), None)
    cmd = getattr(root, "commands", {}).get(sub) if sub else None
    if cmd is None:
        return argv
    names = {opt for param in cmd.params for opt in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ()))}
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if arg.startswith("--") and "_" in arg.partition("=")[0]:
            name, eq, value = arg.partition("=")
            alias = "--" + name[2:].replace("_", "-")
            if name not in names and alias in names:
                arg = alias + eq + value
        out.append(arg)
    return out


def joined_goodput(argv: list[str]) -> list[str]:
    """vllm bench serve writes --goodput ttft:500 tpot:50 (several values after one flag);
    click takes one, so the KEY:MS words that follow are joined into it."""
    out: list[str] = []
    for arg in argv:
        if out and len(out) >= 2 and out[-2] == "--goodput" and re.fullmatch(r"[a-z0-9_]+:[^\s]+", arg) \
                and not arg.startswith("-"):
            out[-1] = f"{out[-1]} {arg}"
            continue
        out.append(arg)
    return out


def main() -> None:
    """Run the CLI; every way out is one of the exit statuses in docs/exit-codes.md."""
    from harness.core.environment import RedactingStream

    interrupts.install()

    # nothing the harness prints may carry a key, whoever formatted it
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    # standalone_mode=False lets usage errors reach us, so they print as one line
    # instead of click's boxed usage text
    try:
        root = _command_tree()
        args = joined_goodput(with_hyphens(sys.argv[1:], root))
        code = root.main(args=args, prog_name="harness", standalone_mode=False)
        stopped_by = interrupts.first_seen()
        if code == 130 and stopped_by:  # typer makes an uncaught Ctrl-C a silent return of 130
            code = _say_interrupted(stopped_by)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        code = 130
    except TyperException as exc:
        if exc.format_message():  # empty when the message is the help already shown
            from harness.core.environment import redact  # a bad option's value may be a key

            print(f"error: {redact(exc.format_message())}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except HarnessError as exc:
        from harness.core.environment import redact

        print(f"error: {redact(str(exc))}{redact(_kept(exc))}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt as exc:
        code = _say_interrupted(exc)
    except OSError as exc:
        code = _os_error(exc)
    except Exception as exc:
        code = _internal_error(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _os_error(exc: OSError) -> int:
    """A file the harness could not read or write (a full disk, a read-only folder): one line naming it."""
    from harness.core.environment import redact
    from harness.core.errors import describe_os_error

    if exc.filename is None:
        return _internal_error(exc)  # no path to name: treated as a bug, with its traceback kept
    print(f"error: {redact(describe_os_error(exc))}{redact(_kept(exc))}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _internal_error(exc: BaseException) -> int:
    """A bug, not bad input: one line, and the traceback (secrets removed) in a log file."""
    import traceback

    from harness import __version__
    from harness.core.environment import redact

    from harness.core.errors import WorkerBug

    if isinstance(exc, WorkerBug):  # raised in a worker process: its own traceback, not ours
        summary, trace = str(exc), exc.traceback
    else:
        summary, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc()
    text = redact(f"harness {__version__}\ncommand: harness {' '.join(sys.argv[1:])}\n\n{trace}")
    where = _write_crash_log(text)
    summary = redact(summary.splitlines()[0][:300])
    if where is None:
        print(f"error: internal error ({summary}); the traceback could not be written to a log file, so here it is:",
              file=sys.stderr)
        print(text.rstrip(), file=sys.stderr)
    else:
        print(f"error: internal error ({summary}){redact(_kept(exc))}; the traceback is in {where} "
              "(please include it in a bug report)", file=sys.stderr)
    return EXIT_INTERNAL


def _write_crash_log(text: str) -> Path | None:
    """The traceback in $HARNESS_CACHE_DIR/logs (else the temporary folder); None if neither takes it."""
    import os
    import tempfile
    import time

    from harness.core.paths import cache_dir

    name = f"error-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}.log"
    for folder in (lambda: cache_dir() / "logs", lambda: Path(tempfile.gettempdir())):
        try:
            path = folder() / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return path
        except OSError:
            continue
    return None

