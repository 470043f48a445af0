"""Executors: hand independent jobs to this process, a Ray cluster or SLURM (through submitit).

Every executor implements ``run(setup, fn, items)``: ``setup()`` builds a worker's state once
per worker (models, prompts: loaded once, reused by every job the worker runs) and
``fn(state, item)`` computes one item. ``run`` yields ``(index, result)`` pairs as items finish,
in any order; an item whose ``fn`` raised yields a ``Failure`` (its traceback included) instead of
stopping the others. ``setup`` and ``fn`` must be picklable (a module-level function, an instance
of a module-level class) for the distributed executors, which ship them to other processes.

Ray is optional (``pip install 'causal_nb[scale]'``, which also brings submitit); the import is
deferred to the first ``run`` so the kit imports without it.

One sweep config runs anywhere; only the command changes::

    python -m causal_nb sweep sweep.yaml                                   # this process
    python -m causal_nb sweep sweep.yaml --executor ray --workers 2        # local Ray cluster
    ray start --head                                                       # on the head node,
    ray start --address HEAD:6379                                          # on each other node
    python -m causal_nb sweep sweep.yaml --executor ray --address auto --workers 16
    python -m causal_nb sweep sweep.yaml --executor submitit --partition gpu --gpus-per-job 1

Every node needs the same causal_nb version (checked per job) and, for the results, the driver
only: workers return rows and the driver writes ``<out>/cells``. A worker that dies is rerun by
Ray; a killed driver is resumed with ``--resume``.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .version import __version__

__all__ = ["ExecutorError", "Failure", "InProcessExecutor", "RayExecutor", "SubmititExecutor", "make_executor",
           "require"]

EXTRA = "pip install 'causal_nb[scale]'  (or: pip install 'ray[default]>=2.30' submitit)"


class ExecutorError(RuntimeError):
    """An executor that cannot run here (missing package, unreachable cluster, bad settings)."""


@dataclass
class Failure:
    """One item whose job raised: the exception's one-line summary and its full traceback."""

    item: Any
    error: str
    traceback: str

    def __str__(self) -> str:
        return self.error


def require(module: str):
    """Import an optional package, or raise ``ExecutorError`` naming the extra that installs it."""
    import importlib  # noqa: PLC0415

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExecutorError(f"the {module!r} executor needs the package {module!r}, which is not installed ({e}); "
                            f"install the kit's scale extra: {EXTRA}") from None


def _call(state, fn, item) -> Any:
    """``fn(state, item)``, or a ``Failure`` carrying the traceback (jobs go on after one raises)."""
    try:
        return fn(state, item)
    except Exception as e:  # noqa: BLE001 - reported per item, the run goes on
        return Failure(item, f"{type(e).__name__}: {e}", traceback.format_exc())


class InProcessExecutor:
    """Runs items one after another in this process (the default executor)."""

    def map(self, fn: Callable[[Any], Any], items: Iterable) -> Iterator:
        """``fn`` on each item in order (the original executor interface; exceptions propagate)."""
        for c in items:
            yield fn(c)

    def run(self, setup: Callable[[], Any], fn: Callable[[Any, Any], Any], items: Iterable) -> Iterator[tuple[int, Any]]:
        state = setup()
        for i, item in enumerate(items):
            yield i, _call(state, fn, item)


# Per worker process: the state each distinct ``setup`` built (keyed by its pickle), so a Ray
# worker that runs many jobs of one sweep loads its models once.
_STATES: dict[bytes, Any] = {}


def _worker_state(setup):
    key = pickle.dumps(setup)
    if key not in _STATES:
        _STATES.clear()  # one run's state at a time: a new run's models replace the last run's
        _STATES[key] = setup()
    return _STATES[key]


def _remote_job(setup, fn, item, version: str, threads: int):
    """Body of one distributed job: same kit version as the driver, bounded threads, cached state."""
    if version != __version__:
        return Failure(item, f"ExecutorError: this worker runs causal_nb {__version__}, the driver {version}; "
                             "install the same version of the kit on every node", "")
    import torch  # noqa: PLC0415

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)  # workers sharing a node must not oversubscribe its cores
    try:
        state = _worker_state(setup)
    except Exception as e:  # noqa: BLE001 - a setup error fails this item, reported with its traceback
        return Failure(item, f"{type(e).__name__} in worker setup: {e}", traceback.format_exc())
    return _call(state, fn, item)


def _check_reachable(address: str, timeout: float) -> None:
    """Fail within ``timeout`` seconds when nothing listens at a ``host:port`` / ``ray://`` address."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"Ray address {address!r} is not 'auto', 'host:port' or 'ray://host:port'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ExecutorError(f"cannot reach the Ray cluster at {address!r} ({e}) within {timeout:g} s; start it with "
                            "`ray start --head` on that machine, or pass the address it printed (--address)") from None


class RayExecutor:
    """Items as Ray tasks: a local cluster started here, or an existing one at ``address``.

    Args:
        address: None starts a local cluster of ``workers`` CPUs (or joins the one this process
            already started with ``ray.init``); ``"auto"`` joins the cluster ``ray start`` runs on
            this machine; ``"host:port"`` or ``"ray://host:port"`` a remote one.
        workers: jobs in flight at once (each a Ray worker process that keeps its state).
        num_gpus_per_cell: GPUs each job reserves; ``"auto"`` is 1 where the cluster has GPUs,
            else 0.
        threads_per_worker: torch CPU threads (and CPUs reserved) per job, so that workers on one
            node do not oversubscribe its cores.
        max_retries: reruns of a job whose worker process died (killed, out of memory); a job
            that raises is not rerun (it is reported as a ``Failure``).
        connect_timeout: seconds to wait for a remote address to answer.
    """

    def __init__(self, address: str | None = None, workers: int = 2, num_gpus_per_cell: int | float | str = "auto",
                 threads_per_worker: int = 1, max_retries: int = 3, connect_timeout: float = 5.0):
        if not isinstance(workers, int) or workers < 1:
            raise ExecutorError(f"workers must be an integer >= 1, got {workers!r}")
        if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
            raise ExecutorError(f"threads_per_worker must be an integer >= 1, got {threads_per_worker!r}")
        if num_gpus_per_cell != "auto" and not (isinstance(num_gpus_per_cell, int | float) and num_gpus_per_cell >= 0):
            raise ExecutorError(f"num_gpus_per_cell must be 'auto' or a number >= 0, got {num_gpus_per_cell!r}")
        self.address, self.workers, self.num_gpus_per_cell = address, workers, num_gpus_per_cell
        self.threads_per_worker, self.max_retries, self.connect_timeout = threads_per_worker, max_retries, connect_timeout
        self.startup_seconds: float | None = None  # time ray.init took on the last run (None: joined a running one)

    def connect(self):
        """Start or join the cluster; returns (ray, whether this call started it)."""
        ray = require("ray")
        if self.address is not None:
            _check_reachable(self.address, self.connect_timeout)  # before anything that could wait long
        if ray.is_initialized():
            return ray, False
        t0 = time.perf_counter()
        try:
            if self.address is None:
                ray.init(num_cpus=self.workers * self.threads_per_worker, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        except Exception as e:  # noqa: BLE001 - Ray raises bare Exception/ConnectionError/RuntimeError here
            where = f"join the Ray cluster at {self.address!r}" if self.address else "start a local Ray cluster"
            hint = ("; Ray gives its raylet 30 s to start its agents, which a heavily loaded machine or slow Python "
                    "imports can exceed (see /tmp/ray/session_latest/logs/raylet.out)") if "timed out" in str(e) else ""
            raise ExecutorError(f"cannot {where}: {e}{hint}") from None
        self.startup_seconds = time.perf_counter() - t0
        return ray, True

    def __enter__(self) -> RayExecutor:
        """Start (or join) the cluster for several ``run`` calls: a local cluster this starts is
        started once, and its worker processes keep their state from one run to the next."""
        self._session = self.connect()
        return self

    def __exit__(self, *exc) -> None:
        ray, owned = getattr(self, "_session", (None, False))
        self._session = None
        if owned:
            ray.shutdown()

    def _gpus(self, ray) -> float:
        have = ray.cluster_resources().get("GPU", 0)
        if self.num_gpus_per_cell == "auto":
            return 1 if have else 0
        if self.num_gpus_per_cell > have:
            raise ExecutorError(f"num_gpus_per_cell={self.num_gpus_per_cell} but the Ray cluster has {have:g} GPU(s); "
                                "use num_gpus_per_cell=0 (CPU) or 'auto', or join a cluster with GPUs")
        return self.num_gpus_per_cell

    def run(self, setup, fn, items: Iterable) -> Iterator[tuple[int, Any]]:
        items = list(items)
        ray, owned = self.connect()
        try:
            job = ray.remote(_remote_job).options(num_cpus=self.threads_per_worker, num_gpus=self._gpus(ray),
                                                  max_retries=self.max_retries, retry_exceptions=False)
            setup_ref, fn_ref = ray.put(setup), ray.put(fn)
            todo, pending = list(enumerate(items)), {}
            while todo or pending:
                while todo and len(pending) < self.workers:
                    i, item = todo.pop(0)
                    pending[job.remote(setup_ref, fn_ref, item, __version__, self.threads_per_worker)] = i
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RaySystemError as e:
                    raise ExecutorError(f"a Ray worker could not run the kit's job ({e}); every node needs causal_nb "
                                        f"{__version__} installed (the same version as here)") from None
                except ray.exceptions.RayError as e:  # the worker died more than max_retries times
                    out = Failure(items[i], f"{type(e).__name__}: {e}".splitlines()[0], str(e))
                yield i, out
        finally:
            if owned:
                ray.shutdown()


def _submitit_job(setup, fn, chunk: list, version: str, threads: int) -> list:
    """One SLURM array task: its chunk of ``(index, item)`` pairs, state built once."""
    return [(i, _remote_job(setup, fn, item, version, threads)) for i, item in chunk]


class SubmititExecutor:
    """Items as a SLURM job array through submitit (``cluster="local"``: subprocesses, for tests).

    Args:
        folder: submitit's log and pickle folder (shared between the nodes and this machine).
        partition: SLURM partition. gpus_per_job, cpus_per_job: resources of each array task.
        jobs: array tasks (the items are split into this many chunks, each loading the models
            once); default one task per item.
        timeout_min: each task's time limit. cluster: None (SLURM where ``sbatch`` exists, else
            local), ``"slurm"``, ``"local"`` or ``"debug"``.
        poll_seconds: how often finished tasks are looked for.
        slurm: further ``update_parameters`` options (e.g. ``{"slurm_mem": "32G"}``).
    """

    def __init__(self, folder: str | os.PathLike = "runs/submitit", partition: str | None = None, gpus_per_job: int = 0,
                 cpus_per_job: int = 1, jobs: int | None = None, timeout_min: int = 60, cluster: str | None = None,
                 poll_seconds: float = 0.5, slurm: dict | None = None):
        if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
            raise ExecutorError(f"jobs must be an integer >= 1 or None, got {jobs!r}")
        if not isinstance(gpus_per_job, int) or gpus_per_job < 0:
            raise ExecutorError(f"gpus_per_job must be an integer >= 0, got {gpus_per_job!r}")
        if not isinstance(cpus_per_job, int) or cpus_per_job < 1:
            raise ExecutorError(f"cpus_per_job must be an integer >= 1, got {cpus_per_job!r}")
        self.folder, self.partition, self.gpus_per_job, self.cpus_per_job = folder, partition, gpus_per_job, cpus_per_job
        self.jobs, self.timeout_min, self.cluster, self.poll_seconds = jobs, timeout_min, cluster, poll_seconds
        self.slurm = dict(slurm or {})

    def run(self, setup, fn, items: Iterable) -> Iterator[tuple[int, Any]]:
        submitit = require("submitit")
        items = list(items)
        if not items:
            return
        ex = submitit.AutoExecutor(folder=str(self.folder), cluster=self.cluster)
        params = {"timeout_min": self.timeout_min, "cpus_per_task": self.cpus_per_job, "gpus_per_node": self.gpus_per_job}
        if ex.cluster == "slurm":
            params.update({"slurm_partition": self.partition} if self.partition else {})
            params.update(self.slurm)  # SLURM-only settings; the local executor (tests) has no partition
        ex.update_parameters(**params)
        n = min(self.jobs or len(items), len(items))
        chunks = [[(i, items[i]) for i in range(k, len(items), n)] for k in range(n)]
        jobs = ex.map_array(_submitit_job, [setup] * n, [fn] * n, chunks, [__version__] * n, [self.cpus_per_job] * n)
        waiting = dict(zip(jobs, chunks))
        while waiting:
            done = [j for j in waiting if j.done()]
            if not done:
                time.sleep(self.poll_seconds)
                continue
            for j in done:
                chunk = waiting.pop(j)
                try:
                    yield from j.result()
                except Exception as e:  # noqa: BLE001 - the task died (killed, timed out): its items fail
                    for i, item in chunk:
                        yield i, Failure(item, f"{type(e).__name__}: {e}".splitlines()[0], str(e))


def make_executor(executor=None, **options):
    """An executor from a name (``None``/``"inprocess"``, ``"ray"``, ``"submitit"``) and its
    options, or an executor object passed through unchanged."""
    if executor is None or executor == "inprocess":
        if options:
            raise ExecutorError(f"the in-process executor takes no options, got {sorted(options)}")
        return InProcessExecutor()
    if executor == "ray":
        return RayExecutor(**options)
    if executor == "submitit":
        return SubmititExecutor(**options)
    if isinstance(executor, str):
        raise ExecutorError(f"unknown executor {executor!r}; valid: 'inprocess', 'ray', 'submitit' (or an object "
                            "with run(setup, fn, items))")
    if options:
        raise ExecutorError("executor options go to the executor's constructor when an executor object is passed")
    return executor
