"""The queue's bookkeeping on Huey: backend, job records and states, status, the worker pool.

Opens Huey on SQLite (one machine) or Redis (many) and keeps JSON records in its key-value store:
a job's spec, state and segments, leases, workers. A step runs under a lease, an atomic
put-if-absent record naming its worker; workers beat, and each one re-queues the steps of
workers that died. What a step does to a film is steps.py's business. It never prints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from huey import Huey, PriorityRedisHuey, SqliteHuey
from huey.constants import EmptyData

from .errors import QueueError

try:
    from redis.exceptions import RedisError
except ImportError:  # the Redis client is the optional extra vidcolor[redis]
    RedisError = None

logger = logging.getLogger(__name__)

QUEUE_NAME = "vidcolor"  # Huey queue name: SQLite rows' queue column, suffix of the Redis keys
BEAT_S = 2.0  # seconds between a worker's liveness beats and its recovery scans
DEAD_AFTER_S = 60.0  # seconds without a beat after which a worker on another machine is dead
POLL_MAX_S = 1.0  # longest pause between polls of an empty SQLite queue, seconds
BACKEND_ERRORS = (sqlite3.Error, OSError) + ((RedisError,) if RedisError else ())
_PREFIX = "vidcolor:"  # our records in Huey's key-value store: _PREFIX + kind + ":" + ...
ACTIVE = ("queued", "running")  # job states in which its steps still run


@dataclass(frozen=True)
class JobStatus:
    """One job as `ReelQueue.status` sees it.

    Attributes:
        state: "queued", "running", "done", "failed" or "cancelled".
        error: the one-line error of a failed job, else None.
        frames_done, frames_total: progress in frames; the total is exact once the reel is
            planned, the container's estimate before, None if unknown.
        running_on: names ("host:pid") of the workers running its steps now.
        eta_s: seconds left at this job's own frame rate so far, None if unknown.
        added_at: Unix time the job was added.
        references: reference stills the job chooses from (1: one still for everything).
        references_used: how many of them its reference plan uses; None until planned, and
            for a job with one still and no mapping file.
    """

    id: str
    reel: Path
    out: Path
    state: str
    error: str | None
    frames_done: int
    frames_total: int | None
    segments_done: int
    segments_total: int | None
    running_on: tuple[str, ...]
    eta_s: float | None
    added_at: float
    references: int = 1
    references_used: int | None = None


@dataclass(frozen=True)
class WorkerStatus:
    """A live worker: its name ("host:pid"), threads, steps held now and last beat (s ago)."""

    name: str
    concurrency: int
    steps: int
    seen_s_ago: float


def redact_url(url: str) -> str:
    """The queue URL with its password replaced by ***, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def open_huey(url: str) -> tuple[Huey, Records]:
    """Open the queue at `url` and check that it answers.

    Args:
        url: "sqlite:///PATH" or a plain file path, or "redis://[:PASSWORD@]HOST:PORT/DB"
            ("rediss://" for TLS).

    Returns:
        The Huey instance (no result store) and its Records.

    Raises:
        QueueError: an unknown scheme, a missing Redis client, or a backend that cannot be
            reached; the message names the URL without its password.
    """
    parts, shown = urlsplit(url), redact_url(url)
    if parts.scheme in ("redis", "rediss"):
        if RedisError is None:
            raise QueueError(f"The queue {shown} needs the Redis client; "
                             "install it with pip install 'vidcolor[redis]'")
        try:
            huey = PriorityRedisHuey(QUEUE_NAME, url=url, results=False)
            huey.storage.conn.ping()
        except (*BACKEND_ERRORS, ValueError) as e:
            raise _unreachable(shown, e, parts.password) from e
        return huey, Records(huey, shown, parts.password)
    if parts.scheme in ("sqlite", "file", "") or len(parts.scheme) == 1:  # 1: a Windows drive
        path = Path(parts.netloc + parts.path if len(parts.scheme) > 1 else url).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            huey = SqliteHuey(QUEUE_NAME, filename=os.fspath(path), results=False)
        except BACKEND_ERRORS as e:
            raise QueueError(f"Cannot open the queue database '{path}' ({e}); "
                             "check the path and its permissions") from e
        return huey, Records(huey, shown, None)
    raise QueueError(f"Unknown queue URL '{shown}'; use sqlite:///PATH, a file path, "
                     "redis://HOST:PORT/DB or rediss://HOST:PORT/DB")


def _unreachable(shown_url: str, error: BaseException, password: str | None) -> QueueError:
    reason = " ".join(str(error).split()) or type(error).__name__
    if password:
        reason = reason.replace(password, "***")
    return QueueError(f"Cannot reach the queue at {shown_url} ({reason}); "
                      "is the server running and the URL right?")


def record_key(kind: str, *parts: str) -> str:
    """The key of a record of `kind` ("job", "state", "seg", "lease", "worker", ...)."""
    return _PREFIX + ":".join((kind, *parts))


def records_of(items: dict[str, dict], kind: str) -> dict[str, dict]:
    """The records of one kind in `Records.items()`, by the rest of their key."""
    head = record_key(kind) + ":"
    return {key[len(head):]: value for key, value in items.items() if key.startswith(head)}


class Records:
    """JSON records in Huey's key-value store; a backend failure becomes a QueueError."""

    def __init__(self, huey: Huey, shown_url: str, password: str | None) -> None:
        self._storage = huey.storage
        self.shown_url = shown_url
        self._password = password

    def get(self, key: str) -> dict | None:
        with self._reaching():
            return _decode(self._storage.peek_data(key))

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        """The records of `keys` that exist."""
        with self._reaching():
            found = self._storage.peek_many(keys)
        return {_text(k): json.loads(bytes(v)) for k, v in found.items()}

    def put(self, key: str, value: dict) -> None:
        with self._reaching():
            self._storage.put_data(key, json.dumps(value).encode())

    def put_new(self, key: str, value: dict) -> bool:
        """Store `value` only if `key` is absent, atomically; True if it was stored."""
        with self._reaching():
            return bool(self._storage.put_if_empty(key, json.dumps(value).encode()))

    def pop(self, key: str) -> dict | None:
        """Read and delete `key` in one atomic step."""
        with self._reaching():
            return _decode(self._storage.pop_data(key))

    def delete(self, key: str) -> None:
        with self._reaching():
            self._storage.delete_data(key)

    def items(self) -> dict[str, dict]:
        """All our records, by key (Huey's own entries are left out)."""
        with self._reaching():
            found = self._storage.result_items()
        return {_text(k): json.loads(bytes(v)) for k, v in found.items()
                if _text(k).startswith(_PREFIX)}

    @contextlib.contextmanager
    def _reaching(self):
        try:
            yield
        except BACKEND_ERRORS as e:
            raise _unreachable(self.shown_url, e, self._password) from e


class WorkerPool:
    """One worker process: threads run Huey tasks; the calling thread beats and recovers.

    Args:
        huey: the Huey instance whose tasks are run.
        records: its Records.
        concurrency: threads, each running one task at a time.
        once: return when nothing is queued and nothing runs here.
        stop: set it to stop; the pool sets it on the way out, so running steps can notice.
        pending_steps: from `Records.items()`, the (job id, step) pairs live jobs still need.
        enqueue: queues the task of one (job id, step).
    """

    def __init__(self, huey: Huey, records: Records, concurrency: int, once: bool,
                 stop: threading.Event, pending_steps: Callable[[dict], set[tuple[str, str]]],
                 enqueue: Callable[[str, str], None]) -> None:
        self.huey, self.records, self.stop = huey, records, stop
        self.concurrency, self.once = concurrency, once
        self.ident = worker_identity(concurrency)
        self._pending_steps, self._enqueue = pending_steps, enqueue
        self._lock = threading.Lock()
        self._executing = self._started = self._beats = 0
        self._last_started = -1
        self._suspects: set[tuple[str, str]] = set()  # (job id, step) seen without a task
        self._seen: dict[str, tuple[int, float]] = {}  # worker id -> (beat, monotonic s)

    def run(self) -> None:
        """Run until `stop` is set or an exception (Ctrl-C) arrives; threads are joined."""
        self._beat()  # the record exists before any lease names this worker
        threads = [threading.Thread(target=self._work, name=f"vidcolor-worker-{i}", daemon=True)
                   for i in range(self.concurrency)]
        for thread in threads:
            thread.start()
        logger.info("worker %s: %d thread(s) on %s", self.ident["name"], len(threads),
                    self.records.shown_url)
        idle_ticks = 0
        try:
            while not self.stop.is_set():
                try:
                    requeued = self._recover()
                    idle_ticks = idle_ticks + 1 if self._idle() and not requeued else 0
                except QueueError as e:
                    logger.warning("%s", e)
                    idle_ticks = 0
                if self.once and idle_ticks >= 2:
                    break
                self.stop.wait(BEAT_S)
                with contextlib.suppress(QueueError):
                    self._beat()
        finally:
            self.stop.set()
            for thread in threads:
                thread.join()
            with contextlib.suppress(QueueError):
                self.records.delete(record_key("worker", self.ident["id"]))
            logger.info("worker %s: stopped", self.ident["name"])

    def _work(self) -> None:
        """Thread body: take a task, run it, repeat; back off while the queue is empty."""
        delay = 0.05
        blocking = getattr(self.huey.storage, "blocking", False)  # Redis waits in dequeue()
        while not self.stop.is_set():
            try:
                task = self.huey.dequeue()
            except BACKEND_ERRORS as e:
                logger.warning("cannot read the queue at %s (%s); retrying",
                               self.records.shown_url, e)
                self.stop.wait(5 * POLL_MAX_S)
                continue
            if task is None:
                if not blocking:
                    self.stop.wait(delay)
                    delay = min(2 * delay, POLL_MAX_S)
                continue
            delay = 0.05
            with self._lock:
                self._executing += 1
                self._started += 1
            try:
                self.huey.execute(task)
            except Exception:
                logger.exception("task %s failed unexpectedly", task)
            finally:
                with self._lock:
                    self._executing -= 1

    def _idle(self) -> bool:
        """Nothing runs here, nothing is queued, and no task was taken since the last look."""
        with self._lock:
            executing, started = self._executing, self._started
        empty = self.huey.pending_count() == 0
        idle = executing == 0 and empty and started == self._last_started and not self._suspects
        self._last_started = started
        return idle

    def _beat(self) -> None:
        self._beats += 1
        self.records.put(record_key("worker", self.ident["id"]),
                         {**self.ident, "beat": self._beats, "beat_at": time.time()})

    def _recover(self) -> int:
        """Queue again the steps of dead workers, and steps of live jobs that lost their task.

        A lease whose owner is dead is taken back at once. A pending step with neither a lease
        nor a queued task is queued again only when two scans in a row find it so (a task may
        sit between the queue and its lease for a moment). Duplicates are harmless: a step runs
        only under its lease and skips finished work.

        Returns:
            How many steps were queued again.
        """
        items = self.records.items()
        workers = records_of(items, "worker")
        alive = {wid for wid, rec in workers.items() if self._alive(wid, rec)}
        leases = {tuple(key.split(":", 1)): rec["worker"]
                  for key, rec in records_of(items, "lease").items()}
        requeued = 0
        for (job_id, step), owner in leases.items():
            if owner not in alive and self._break_lease(job_id, step, owner):
                name = workers.get(owner, {}).get("name", owner)
                logger.warning("job %s: %s was left by the stopped worker %s; queued again",
                               job_id, step, name)
                self._enqueue(job_id, step)
                requeued += 1
        queued = {tuple(task.args) for task in self.huey.pending()}
        lost = {s for s in self._pending_steps(items) if s not in leases and s not in queued}
        for job_id, step in lost & self._suspects:
            logger.warning("job %s: %s had no task; queued again", job_id, step)
            self._enqueue(job_id, step)
            requeued += 1
        self._suspects = lost - self._suspects
        for wid in workers.keys() - alive:
            self.records.delete(record_key("worker", wid))
        return requeued

    def _break_lease(self, job_id: str, step: str, owner: str) -> bool:
        key = lease_key(job_id, step)
        lease = self.records.pop(key)
        if lease is None:
            return False
        if lease.get("worker") != owner:  # re-taken by a live worker meanwhile: put it back
            self.records.put_new(key, lease)
            return False
        return True

    def _alive(self, wid: str, record: dict) -> bool:
        """Same machine: is the process there. Elsewhere: has its beat changed lately.

        Beats are compared by their counter, not their clock, so clock skew between machines
        does not matter.
        """
        if wid == self.ident["id"]:
            return True
        if record.get("machine") == self.ident["machine"]:
            return record.get("boot") == self.ident["boot"] and _process_alive(
                record["pid"], record.get("token", ""))
        now = time.monotonic()
        seen = self._seen.get(wid)
        if seen is None or seen[0] != record.get("beat"):
            self._seen[wid] = (record.get("beat"), now)
            return True
        return now - seen[1] < DEAD_AFTER_S


def job_state(items: dict, job_id: str) -> str:
    """The state of a job from its records: queued, running, done, failed or cancelled."""
    state = items.get(record_key("state", job_id), {}).get("state", "queued")
    return "cancelled" if state != "done" and record_key("cancel", job_id) in items else state


def read_status(records: Records) -> tuple[list[JobStatus], list[WorkerStatus]]:
    """Every job (oldest first) and every live worker."""
    items = records.items()
    now = time.time()
    live = {wid: rec for wid, rec in records_of(items, "worker").items() if looks_alive(rec, now)}
    leases = records_of(items, "lease")
    jobs = [_job_status(spec, items, live, leases, now)
            for spec in records_of(items, "job").values()]
    workers = [WorkerStatus(rec["name"], rec["concurrency"],
                            sum(lease["worker"] == wid for lease in leases.values()),
                            max(0.0, now - rec["beat_at"])) for wid, rec in live.items()]
    return sorted(jobs, key=lambda job: job.added_at), sorted(workers, key=lambda w: w.name)


def _job_status(spec: dict, items: dict, live: dict, leases: dict, now: float) -> JobStatus:
    job_id = spec["id"]
    record = items.get(record_key("state", job_id), {})
    state = record.get("state", "queued")
    if state != "done" and record_key("cancel", job_id) in items:
        state = "cancelled"
    holders = {lease["worker"] for key, lease in leases.items() if key.startswith(job_id + ":")}
    running_on = tuple(sorted(live[w]["name"] for w in holders if w in live))
    if state in ACTIVE:  # shown by what happens now: a planned job may wait for a worker
        state = "running" if running_on else "queued"
    segments = record.get("segments") or []
    segs = [items.get(record_key("seg", job_id, str(n))) or {} for n in range(len(segments))]
    running = [s for s in segs if s.get("state") == "running" and s.get("worker") in live]
    done = [s for s in segs if s.get("state") == "done"]
    total = record.get("frames_total") or spec.get("frames_estimate")
    frames_done = sum(s["frames"] for s in done) + sum(s["frames"] for s in running)
    return JobStatus(
        id=job_id, reel=Path(spec["reel"]), out=Path(spec["out"]), state=state,
        error=record.get("error") if state == "failed" else None,
        frames_done=total if state == "done" and total else frames_done,
        frames_total=total, segments_done=len(done),
        segments_total=len(segments) or None,
        running_on=running_on,
        eta_s=_eta(done, running, total, frames_done, now) if state == "running" else None,
        added_at=spec["added_at"], references=len(spec.get("refs") or [spec["ref"]]),
        references_used=record.get("references_used"))


def _eta(done: list[dict], running: list[dict], total: int | None, frames_done: int,
         now: float) -> float | None:
    """Seconds left: frames to go over this job's own rate per step, times its steps running."""
    samples = [(s["frames"], s["seconds"]) for s in done if s.get("seconds")]
    samples += [(s["frames"], now - s["started_at"]) for s in running]
    frames, seconds = sum(f for f, _ in samples), sum(t for _, t in samples)
    if not total or frames <= 0 or seconds <= 0:
        return None
    return max(0, total - frames_done) * seconds / frames / max(1, len(running))


def lease_key(job_id: str, step: str) -> str:
    """The key of the lease that a worker holds while it runs `step` of `job_id`."""
    return record_key("lease", job_id, step)


def worker_identity(concurrency: int) -> dict:
    """This process as a worker record: a unique id, a display name and how to tell if alive."""
    host, pid = socket.gethostname(), os.getpid()
    machine, boot = machine_id()
    return {"id": f"{host}:{pid}:{os.urandom(4).hex()}", "name": f"{host}:{pid}",
            "machine": machine, "boot": boot, "pid": pid, "token": _process_token(pid),
            "concurrency": concurrency, "started_at": time.time()}


def machine_id() -> tuple[str, str]:
    """(machine, boot): which machine this is, and which boot of it (empty if unknown)."""
    machine = socket.gethostname() + "/" + _first_line(Path("/etc/machine-id"))
    return machine, _first_line(Path("/proc/sys/kernel/random/boot_id"))


def _first_line(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def looks_alive(record: dict, now: float) -> bool:
    """Liveness for display: a pid check on this machine, else a recent beat by the clock."""
    machine, boot = machine_id()
    if record.get("machine") == machine:
        return record.get("boot") == boot and _process_alive(record["pid"],
                                                              record.get("token", ""))
    return now - record.get("beat_at", 0.0) < DEAD_AFTER_S


def _process_token(pid: int) -> str:
    """The start time of process `pid` (Linux), so that a reused pid is not taken for it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]


def _process_alive(pid: int, token: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _process_token(pid) == token if token else True


def _text(key) -> str:
    return key.decode() if isinstance(key, bytes) else key


def _decode(value) -> dict | None:
    return None if value is EmptyData else json.loads(bytes(value))
