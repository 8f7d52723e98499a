"""The `harness` command. Each command parses its options into a request, calls one function and
prints; a module per command or per family of them, registered here in the order help lists them.

Errors a user can fix come out as one line on stderr with a non-zero exit, never a traceback:
see harness.cli.main.
"""

from __future__ import annotations

from harness.cli import bench, evaluation, listing, load, results, sweep
from harness.cli.app import app
from harness.cli.main import main

for command in (bench.bench, listing.models, listing.backends, sweep.sweep, results.show, listing.env, load.load,
                results.compare, results.report, results.trend):
    app.command()(command)
app.command("eval")(evaluation.eval_)

__all__ = ["app", "main"]
