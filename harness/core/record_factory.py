"""Every run record starts here: bench cases, accuracy runs, load tests, sweep cells (here
or on a Ray node), and the records of runs that ended without one of their own."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from harness import __version__
from harness.core.models import ModelInfo
from harness.core.record import BackendInfo, Failure, RunRecord


def utc_now() -> str:
    """A record's timestamps: UTC to the second, ISO 8601."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def new_record(*, backend: str, settings: dict[str, Any], model: ModelInfo, command: list[str],
               run_id: str | None = None, environment: dict[str, Any] | None = None,
               engine_version: str | None = None, device: str | None = None, **fields: Any) -> RunRecord:
    """A record of one run of ``model`` on ``backend`` with ``settings`` (as the engine
    resolved them, where it has), on this machine unless ``environment`` says where."""
    from harness.core.environment import fingerprint
    from harness.core.registry import get as get_backend

    return RunRecord(
        run_id=run_id or new_run_id(), created_at=utc_now(), harness_version=__version__, command=command,
        model=model, environment=fingerprint() if environment is None else environment,
        backend=BackendInfo(name=backend, version=get_backend(backend).installed_version(),
                            engine_version=engine_version, settings=settings, device=device),
        **fields,
    )


def failed_record(failure: Failure | str, **identity: Any) -> RunRecord:
    """The record of a run that ended without one of its own: it never started, its worker
    died, timed out or refused; ``identity`` as for new_record."""
    failure = failure if isinstance(failure, Failure) else Failure(cause=failure)
    return new_record(status="failed", failures=[failure], **identity)
