"""The commands behind the CLI that run measurements: bench, eval and the nightly job
(harness.cli parses options into their requests; the sweep lives with its executors)."""
