"""The measuring process: ``python -m harness.execution.worker`` with a job on stdin.

It loads one model once, measures each case of its load group in turn and tells
the harness what happens as typed events (harness.core.events) on its channel.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel

from harness.core import registry
from harness.core.config import PerfTests, perf_test_name
from harness.core.environment import fingerprint, redact
from harness.core.errors import HarnessError
from harness.core.events import CaseFailed, Channel, Loading, RecordDone, RepDone, serve_job
from harness.measurement.meters import GpuMeter, MemorySampler, now_ns, rss_mib
from harness.core.models import ModelInfo
from harness.measurement.perf import run_batch_test, run_test
from harness.core.record import Failure, LoadResult
from harness.core.record_factory import new_record


class JobCase(BaseModel):
    index: int
    run_id: str
    settings: dict[str, Any]


class Job(BaseModel):
    backend: str
    model: ModelInfo
    cases: list[JobCase]
    tests: PerfTests
    command: list[str] = []


def run_job(job: Job, channel: Channel) -> None:
    cls = registry.get(job.backend)
    first = cls.Settings(**job.cases[0].settings)
    backend = cls(job.model, first)
    env = fingerprint()
    gpu = GpuMeter()
    t0 = now_ns()
    channel.send(Loading(model=job.model.ref))
    try:
        # an engine's memory peaks while it starts (vLLM profiles and allocates its KV cache)
        with MemorySampler(gpu if gpu.ok else None, interval_s=0.1) as load_mem:
            info = backend.load()
    except HarnessError as exc:
        for case in job.cases:
            channel.send(CaseFailed(index=case.index, cause="load failed", detail=redact(str(exc))))
        return
    load_ms = (now_ns() - t0) / 1e6
    seed_setting = cls.Settings.role("seed")  # the random prompts' seed, where the backend has one
    load = LoadResult(load_ms=load_ms, rss_after_load_mib=rss_mib(), model_file_mib=job.model.size_bytes / 2**20,
                      mmap=info.mmap, n_ctx=info.n_ctx, n_vocab=info.n_vocab,
                      peak_rss_load_mib=load_mem.peaks.peak_rss_mib, peak_rss_tree_load_mib=load_mem.peaks.peak_rss_tree_mib,
                      engine_memory=backend.engine_memory())
    try:
        for case in job.cases:
            started = now_ns()
            backend.apply(cls.Settings(**case.settings))
            record = new_record(run_id=case.run_id, backend=cls.name, settings=backend.effective_settings(),
                                model=job.model, command=job.command, environment=env,
                                engine_version=cls.engine_version(), device=info.device, model_load=load)

            def progress(test: str, rep: int, reps: int, index=case.index) -> None:
                channel.send(RepDone(index=index, test=test, rep=rep, reps=reps))

            for kind, n, depth in job.tests.cases():
                try:
                    record.perf.append(run_test(backend, kind, n, job.tests.reps, gpu if gpu.ok else None,
                                                seed=case.settings.get(seed_setting, 0), progress=progress, depth=depth,
                                                roofline_device=info.device))
                except HarnessError as exc:
                    record.failures.append(Failure(cause=f"{perf_test_name(kind, n, depth)} failed", detail=redact(str(exc))))
            for size in job.tests.batch:
                try:
                    record.perf.append(run_batch_test(backend, size, job.tests.batch_pp, job.tests.batch_tg, job.tests.reps,
                                                      gpu if gpu.ok else None, seed=case.settings.get(seed_setting, 0),
                                                      progress=progress))
                except HarnessError as exc:
                    record.failures.append(Failure(cause=f"batch{size} failed", detail=redact(str(exc))))
            if record.failures:
                record.status = "partial" if record.perf else "failed"
            record.wall_s = (now_ns() - started) / 1e9
            channel.send(RecordDone(index=case.index, record=record))
    finally:
        backend.close()


def main() -> int:
    return serve_job(Job, run_job)


if __name__ == "__main__":
    sys.exit(main())
