"""Errors the CLI turns into one clear line and a non-zero exit."""


class HarnessError(Exception):
    """A problem the user can fix; the message names it and what to do."""

    exit_code = 2


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
