"""`harness sweep FILE.yaml --ray ADDRESS|auto|local`: the sweep's cells as Ray tasks.

Ray schedules and places; the harness does what it does in a local sweep. Each cell
becomes one task asking for what the cell's backend settings say it needs
(Backend.cell_resources: threads -> num_cpus, offloaded layers or a vLLM split -> num_gpus,
the model's size -> memory). The task calls the same sweep.execute_cell a local sweep
calls, on the node Ray chose: the cell's worker process starts there, under the cell's
timeout, and a crash, a timeout or running out of memory becomes its failure record
there, with that node's environment fingerprint (the worker computes it, as everywhere).
The record comes back to the driver with the node's id, hostname and IP, and the driver
writes it and the summary exactly as a local sweep does (sweep.run_sweep), so --resume,
show and compare treat the folder the same way.

A task is never retried by Ray: a cell whose node dies is recorded as failed, with Ray's
reason, and --resume reruns it. SIGINT/SIGTERM cancel every unfinished task (the
cancellation ends the cell's worker and everything it started, as a local stop does).
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable, Iterator

from harness.core import registry
from harness.core.errors import ConfigError, HarnessError
from harness.core.record import Failure

INSTALL_HINT = "pip install 'openbench-harness[ray]' (or: make setup)"
LOCAL_OBJECT_STORE_BYTES = 200 * 2**20  # records are small; a local cluster needs no more
CONNECT_TIMEOUT_S = 5.0
CANCEL_GRACE_S = 30.0  # for a cancelled task to end its worker before it is killed outright


class RayNotInstalled(ConfigError):
    pass


def import_ray():
    try:
        import ray
    except ImportError as exc:  # absent, or an install too broken to import
        why = "not installed" if exc.name == "ray" else f"cannot be imported ({exc})"
        raise RayNotInstalled(f"--ray needs Ray, which is {why}; install it with: {INSTALL_HINT}") from None
    return ray


def node_info() -> dict[str, str]:
    """The node this runs on, as Ray and the network know it, and the Ray worker process."""
    import ray

    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "hostname": socket.gethostname(), "ip": ray.util.get_node_ip_address(),
            "worker_id": ctx.get_worker_id()}  # the Ray worker process on that node


def run_cell_on_node(job_json: str) -> str:
    """The body of a cell's Ray task: the local sweep's cell execution, on this node."""
    from harness.execution.cells import CellJob, execute_cell

    result = execute_cell(CellJob.model_validate_json(job_json))  # no stop: ray.cancel interrupts it
    result.node = node_info()
    return result.model_dump_json()


def resources_for(job) -> dict[str, Any]:
    cls = registry.get(job.backend)
    need = cls.cell_resources(job.model, cls.Settings(**job.settings))
    return {k: v for k, v in need.items() if v is not None}


def _fmt_need(need: dict[str, Any]) -> str:
    parts = [f"{need.get('num_cpus', 0):g} CPU", f"{need.get('num_gpus', 0):g} GPU"]
    if need.get("memory"):
        parts.append(f"{need['memory'] / 2**30:.1f} GiB memory")
    return ", ".join(parts)


def _check_reachable(address: str) -> None:
    """A HOST:PORT that does not answer is one line at once: ray.init would wait on it for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
                          "`ray start --head`, or use --ray local") from None


class RayCells:
    """The cells as Ray tasks on a cluster, all submitted at once; Ray runs as many side by
    side as the nodes' resources allow, and their results come back as they finish."""

    def __init__(self, address: str, log: Callable[[str], None]):
        ray = import_ray()
        self.ray = ray
        self.address = address
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if address == "local":
            kwargs.update(address="local", object_store_memory=LOCAL_OBJECT_STORE_BYTES)
        else:
            _check_reachable(address)
            kwargs["address"] = address  # "auto": the cluster this machine is part of (ray start)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"--ray {address}: cannot reach a Ray cluster: {first} "
                              "(start one with `ray start --head`, or use --ray local)") from None
        nodes = self.nodes()
        log(f"Ray cluster at {address}: {len(nodes)} node(s), "
            + "; ".join(f"{n['NodeManagerHostname']} ({n['NodeManagerAddress']}): {_fmt_need(self._capacity(n))}"
                        for n in nodes))

    def nodes(self) -> list[dict]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    @staticmethod
    def _capacity(node: dict) -> dict[str, float]:
        r = node.get("Resources", {})
        return {"num_cpus": r.get("CPU", 0), "num_gpus": r.get("GPU", 0), "memory": r.get("memory", 0)}

    def check(self, jobs: list, labels: dict[int, str]) -> None:
        """Refuse, before any cell runs, a cell no node of the cluster could ever hold
        (Ray would otherwise leave it pending for good)."""
        capacities = [self._capacity(n) for n in self.nodes()]
        for job in jobs:
            need = resources_for(job)
            if not any(all(cap.get(k, 0) >= v for k, v in need.items()) for cap in capacities):
                hint = ""
                if need.get("num_gpus", 0) > 1 and sum(c["num_gpus"] for c in capacities) >= need["num_gpus"]:
                    hint = "; the cluster has that many GPUs over several nodes: set distributed_executor_backend: ray"
                raise ConfigError(f"cell {job.index} ({labels[job.index]}) needs {_fmt_need(need)}, which no node of the "
                                  f"Ray cluster has (set threads, n_gpu_layers or the parallel sizes to fit){hint}; "
                                  "no cell was run")

    def run(self, jobs: list, begin, stop: Callable[[], str | None],
            log: Callable[[str], None]) -> Iterator[tuple[Any, Any]]:
        from harness.execution.cells import CellResult, unrun_record

        ray = self.ray
        task = ray.remote(run_cell_on_node)
        running: dict[Any, Any] = {}
        for job in jobs:
            early = begin(job)
            if early is not None:
                yield job, early
                continue
            # max_retries=0: a cell whose node or process dies is a failure to record, never a silent rerun
            ref = task.options(**resources_for(job), max_retries=0, name=f"harness-cell-{job.index}").remote(
                job.model_dump_json())
            running[ref] = job
        reason = None
        while running:
            reason = reason or stop()
            if reason:
                for ref in running:
                    ray.cancel(ref)  # KeyboardInterrupt in the task: it ends the cell's worker tree
                for ref, job in list(running.items()):
                    try:
                        yield job, CellResult.model_validate_json(ray.get(ref, timeout=CANCEL_GRACE_S))
                    except ray.exceptions.GetTimeoutError:
                        ray.cancel(ref, force=True)
                        yield job, CellResult(stopped=reason)
                    except ray.exceptions.RayError:
                        yield job, CellResult(stopped=reason)
                return
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.25)
            for ref in done:
                job = running.pop(ref)
                try:
                    yield job, CellResult.model_validate_json(ray.get(ref))
                except ray.exceptions.RayError as exc:
                    # the task itself failed (its node died, its Ray worker crashed): the cell's failure
                    first = " ".join(str(exc).split())[:300]
                    failure = Failure(cause=f"the cell's Ray task failed: {type(exc).__name__}", detail=first)
                    yield job, CellResult(record=unrun_record(job, failure))

    def close(self) -> None:
        try:
            self.ray.shutdown()
        except Exception:  # the driver is ending anyway; a cluster it started goes with it
            pass


def connect(address: str, jobs: list, labels: dict[int, str], log: Callable[[str], None]) -> RayCells:
    cells = RayCells(address, log)
    try:
        cells.check(jobs, labels)
    except HarnessError:
        cells.close()
        raise
    return cells
