"""The load-testing process: ``python -m harness.execution.traffic_worker`` with a TrafficRequest on stdin.

Same machinery as the other workers (harness.execution.runner.run_job): its own session, so
the parent ends it and any server it started as one tree; typed events on its channel. The
measurement (harness.measurement.traffic) sends its record after every load point, the
finished record at the end; a problem the user can fix (bad options, a server that fails
every request) ends it with a ``refused`` event that carries the command's exit status.
"""

from __future__ import annotations

import sys

from harness.core.errors import HarnessError
from harness.core.events import Channel, Phase, PointDone, RecordDone, Refused, serve_job
from harness.measurement.traffic import measure_traffic
from harness.measurement.traffic_options import TrafficRequest


def run_traffic_job(req: TrafficRequest, channel: Channel) -> None:
    record = measure_traffic(req, on_point=lambda r: channel.send(PointDone(record=r)),
                             log=lambda line: channel.send(Phase(what=line)))
    channel.send(RecordDone(record=record))


def _answer(exc: Exception) -> Refused | None:
    if isinstance(exc, HarnessError):
        return Refused(message=str(exc), exit_code=exc.exit_code)  # run_worker redacts every line
    return None


def main() -> int:
    return serve_job(TrafficRequest, run_traffic_job, _answer)


if __name__ == "__main__":
    sys.exit(main())
