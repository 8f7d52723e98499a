"""Errors the CLI turns into one clear line and a non-zero exit, and the exit statuses.

The statuses (docs/exit-codes.md) let a script tell a regression from a crash:
0 done; 1 a measurement failed or a gate found a regression; 2 bad input (an option,
a file, a path that cannot be written); 3 an internal error (a bug: the traceback goes
to a log file); 130 and 143 interrupted by SIGINT and SIGTERM.
"""

from __future__ import annotations

import errno

EXIT_FAILED = 1  # a measurement failed, or --fail-on found a regression
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_SIGINT = 130  # 128 + the signal's number, as a shell reports it
EXIT_SIGTERM = 143

EXIT_STATUS_HELP = (
    "Exit status: 0 done; 1 a measurement failed or a gate (--fail-on) found a regression; "
    "2 bad input (an option, a file, a folder that cannot be written, a full disk); "
    "3 internal error (the traceback is in the log file the error line names); "
    "130 interrupted (Ctrl-C); 143 terminated (SIGTERM). See docs/exit-codes.md."
)


class HarnessError(Exception):
    """A problem the user can fix; the message names it and what to do."""

    exit_code = EXIT_BAD_INPUT


class ModelError(HarnessError):
    pass


class BackendError(HarnessError):
    pass


class BackendNotInstalled(BackendError):
    pass


class ConfigError(HarnessError):
    pass


class ResultFileError(HarnessError):
    pass


class WorkerBug(Exception):
    """A bug that raised in a worker process, not here: the CLI treats it as an internal
    error here (status 3): its message (the worker's last error line) in the one line, the
    worker's ``traceback`` in the log file."""

    def __init__(self, message: str, traceback: str):
        super().__init__(message)
        self.traceback = traceback


class MeasurementFailed(HarnessError):
    """The run was set up right but could not measure (a server failing every request)."""

    exit_code = EXIT_FAILED


def describe_os_error(exc: OSError, path: object = None, doing: str = "cannot use") -> str:
    """'cannot write results/x.json: No space left on device (ENOSPC)': the path, the reason, its errno name."""
    where = path if path is not None else exc.filename
    reason = exc.strerror or str(exc)
    name = errno.errorcode.get(exc.errno or 0)
    hint = {errno.ENOSPC: "free some space or choose another folder",
            errno.EDQUOT: "free some space or choose another folder",
            errno.EACCES: "choose a folder you can write to",
            errno.EPERM: "choose a folder you can write to",
            errno.EROFS: "the file system is read-only: choose another folder"}.get(exc.errno or 0)
    return f"{doing} {where}: {reason}{f' ({name})' if name else ''}{f'; {hint}' if hint else ''}"


class OutputFileError(HarnessError):
    """A result, log or summary file could not be written (full disk, read-only folder)."""

    def __init__(self, path: object, exc: OSError, doing: str = "cannot write"):
        super().__init__(describe_os_error(exc, path, doing))
        self.path = path
        self.errno = exc.errno


class EvalError(HarnessError):
    """An accuracy run cannot go on: a chat template that fails, a request the engine refuses."""
