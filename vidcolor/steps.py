"""What a worker does for a queued reel: its steps "plan", "seg:N" and "join", as one Huey task.

"plan" checks the request again and splits the film into segments (with several references,
choosing the still of every shot once and storing that plan with the job), "seg:N" colourises
segment N into the job's work folder (jobfiles.py), and "join" puts the segments end to end
with the original audio, then makes the by-products the job asked for. Each step runs under a
lease, reports its progress, and stops when the job is cancelled or the worker stops (handing
it back). Adding and listing jobs is batch.py's business; colourising is segments.py's. It
never prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from huey import Huey

from .byproducts import extras_from_files
from .errors import OptionsError, QueueError, VidcolorError
from .jobfiles import (
    already_joined,
    check_allowed,
    check_extras_of,
    claim_work_dir,
    extras_request,
    segment_path,
    work_dir,
)
from .jobs import ACTIVE, Records, WorkerPool, job_state, lease_key, record_key, records_of
from .pipeline import PipelineOptions, load_model_for, run_identity
from .references import ReferencePlan, read_reference_map
from .segments import colorize_segment, join_reel, plan_segments

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0  # seconds between progress writes (and cancel checks) of a segment
# Huey task priorities: finish reels already started before planning new ones.
_PRIORITY = {"plan": 0, "seg": 1, "join": 2}


@dataclass(frozen=True)
class WorkerOptions:
    """How one worker process runs.

    Attributes:
        concurrency: steps run at once in this process (threads), >= 1.
        once: exit when nothing is queued and nothing runs here (instead of waiting for work).
        allow_dirs: when not empty, refuse jobs whose input, reference or output lies outside
            these folders (after resolving symlinks).
        keep_segments: keep the work folder with its segment files after a reel is joined.
    """

    concurrency: int = 1
    once: bool = False
    allow_dirs: tuple[Path, ...] = ()
    keep_segments: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) \
                or self.concurrency < 1:
            raise OptionsError(f"WorkerOptions.concurrency must be >= 1, got {self.concurrency!r}")


class _HandBack(Exception):
    """The worker is stopping: give the step back to the queue."""


class _Halted(Exception):
    """The job was cancelled or failed elsewhere: stop this step, keep nothing."""


class StepRunner:
    """Runs the steps of one queue's jobs: registers the "step" task and, in a worker, runs it.

    It also keeps a job's state record (`update_state`, `state`) and queues its steps
    (`enqueue`, `requeue`), for the queue (batch.py) as for the steps themselves.

    Args:
        huey: the queue's Huey; the "step" task is registered on it.
        store: the queue's records (`jobs.open_huey`).
    """

    def __init__(self, huey: Huey, store: Records) -> None:
        self.huey, self._store = huey, store
        self._step_task = self.huey.task(name="step")(self._run_step)
        self._worker: WorkerPool | None = None
        self._worker_opts = WorkerOptions()

    def run_worker(self, opts: WorkerOptions, stop: threading.Event) -> None:
        """Be a worker: run steps until `stop` is set, Ctrl-C, or (`opts.once`) no work is left."""
        self._worker_opts = dataclasses.replace(
            opts, allow_dirs=tuple(Path(d).resolve() for d in opts.allow_dirs))
        self._worker = WorkerPool(self.huey, self._store, opts.concurrency, opts.once,
                                  stop, _pending_steps, self.enqueue)
        try:
            self._worker.run()
        finally:
            self._worker = None

    def enqueue(self, job_id: str, step: str) -> None:
        """Queue the task of one step of a job ("plan", "seg:N" or "join")."""
        self._step_task(job_id, step, priority=_PRIORITY[step.split(":")[0]])

    def requeue(self, job_id: str) -> None:
        """Queue the plan step; a known plan is kept to show progress and spot a changed reel."""
        self.update_state(job_id, state="queued", error=None, finished_at=None)
        self.enqueue(job_id, "plan")

    def update_state(self, job_id: str, **changes) -> None:
        """Merge `changes` into the job's state record."""
        state = self._store.get(record_key("state", job_id)) or {}
        state.update(changes, updated_at=time.time())
        self._store.put(record_key("state", job_id), state)

    def state(self, job_id: str) -> str:
        """The job's state: "queued", "running", "done", "failed" or "cancelled"."""
        return job_state(self._store.get_many([record_key("state", job_id),
                                               record_key("cancel", job_id)]), job_id)

    # -- steps ------------------------------------------------------------------------------

    def _run_step(self, job_id: str, step: str) -> None:
        """Huey task: run one step of a job, at most once at a time across all workers."""
        worker = self._worker
        spec = self._store.get(record_key("job", job_id))
        if worker is None or spec is None:
            return
        lease = lease_key(job_id, step)
        if not self._store.put_new(lease, {"worker": worker.ident["id"]}):
            return  # another worker holds this step; a duplicate task is dropped
        handed_back = False
        try:
            if self._may_run(job_id, step):
                check_allowed(spec, self._worker_opts.allow_dirs)
                if step == "plan":
                    self._plan(spec)
                elif step == "join":
                    self._join(spec, self._worker_opts.keep_segments, worker)
                else:
                    self._segment(spec, int(step.split(":")[1]), worker)
        except _HandBack:
            handed_back = True
        except _Halted:
            logger.info("job %s: %s stopped (job %s)", job_id, step, self.state(job_id))
        except VidcolorError as e:
            self._fail(job_id, step, str(e))
        except Exception as e:
            logger.exception("job %s: %s failed unexpectedly", job_id, step)
            self._fail(job_id, step, f"{type(e).__name__}: {e}")
        finally:
            with contextlib.suppress(QueueError):
                self._store.delete(lease)
        if handed_back:  # after the lease is gone, so whoever takes the task may run it
            self.enqueue(job_id, step)
            logger.info("job %s: %s handed back to the queue", job_id, step)

    def _may_run(self, job_id: str, step: str) -> bool:
        """Segments and the join run in a planned job; the plan runs once per (re)queueing."""
        state = self.state(job_id)
        if step != "plan":
            return state == "running"
        record = self._store.get(record_key("state", job_id)) or {}
        return state == "queued" or (state == "running" and not record.get("segments"))

    def _plan(self, spec: dict) -> None:
        job_id, out, reel = spec["id"], Path(spec["out"]), Path(spec["reel"])
        opts = PipelineOptions.from_dict(spec["options"])
        state = self._store.get(record_key("state", job_id)) or {}
        if already_joined(state, out):  # only the by-products were left (a retry after a failure)
            self.update_state(job_id, state="running", error=None)
            self.enqueue(job_id, "join")
            return
        segments, plan = self._plan_reel(spec, opts, state)
        check_extras_of(spec, opts)
        work = work_dir(out)
        claim_work_dir(work, job_id)
        if state.get("segments") not in (None, [list(s) for s in segments]):
            logger.warning("job %s: '%s' has changed since it was planned; starting over", job_id,
                           reel)
            for path in work.glob("seg-*"):
                path.unlink()
        todo = []
        for n in range(len(segments)):
            key, path = record_key("seg", job_id, str(n)), segment_path(out, n)
            record = self._store.get(key)
            if path.exists() and not (record and record["state"] == "done"):
                frames = segments[n][1] - segments[n][0]
                self._store.put(key, {"state": "done", "frames": frames, "reused": True})
            elif not path.exists():
                todo.append(n)
                if record is not None:
                    self._store.delete(key)
        self.update_state(job_id, state="running", segments=segments,
                          frames_total=segments[-1][1], error=None, joined=None,
                          references_used=None if plan is None else len(plan.used()),
                          started_at=state.get("started_at") or time.time())
        logger.info("job %s: %d segments, %d to do", job_id, len(segments), len(todo))
        for n in todo:
            self.enqueue(job_id, f"seg:{n}")
        if not todo:
            self.enqueue(job_id, "join")

    def _plan_reel(self, spec: dict, opts: PipelineOptions,
                   state: dict) -> tuple[list[tuple[int, int]], ReferencePlan | None]:
        """The reel's segments and, with several references, its reference plan.

        The plan is made once and stored with the job, so that every segment, on any worker,
        uses the same choice; planning again (a retry) keeps it unless the reel has changed.
        """
        job_id, reel, out = spec["id"], Path(spec["reel"]), Path(spec["out"])
        if "refs" not in spec:
            return plan_segments(reel, Path(spec["ref"]), out, opts,
                                 segment_frames=spec["segment_frames"]), None
        refs = [Path(p) for p in spec["refs"]]
        ref_map = Path(spec["ref_map"]) if spec.get("ref_map") else None
        kept, made = self._stored_plan(job_id), []
        forced = [] if ref_map is None else [s for _, s in read_reference_map(ref_map, refs)]
        check_allowed(spec, self._worker_opts.allow_dirs,  # the map may name other stills
                      forced + ([] if kept is None else list(kept.references)))
        segments = plan_segments(reel, kept or refs, out, opts,
                                 segment_frames=spec["segment_frames"], ref_map=ref_map,
                                 on_plan=made.append)
        if kept is not None and state.get("segments") not in (None, [list(s) for s in segments]):
            kept = None  # the reel has changed since it was planned: choose again
            segments = plan_segments(reel, refs, out, opts, segment_frames=spec["segment_frames"],
                                     ref_map=ref_map, on_plan=made.append)
        if kept is not None:
            logger.info("job %s: keeps its reference plan (%d shot(s)); the reel is unchanged",
                        job_id, len(kept.shots))
            return segments, kept
        plan = made[-1]
        self._store.put(record_key("refplan", job_id), {"plan": plan.to_dict()})
        logger.info("job %s: %d shot(s), %d of %d reference(s) used:\n%s", job_id,
                    len(plan.shots), len(plan.used()), len(plan.references),
                    "\n".join(plan.lines()))
        return segments, plan

    def _stored_plan(self, job_id: str) -> ReferencePlan | None:
        record = self._store.get(record_key("refplan", job_id))
        return None if record is None else ReferencePlan.from_dict(record["plan"])

    def _references(self, spec: dict) -> Path | ReferencePlan:
        """What colours the reel's frames: its still, or the reference plan made for it."""
        if "refs" not in spec:
            return Path(spec["ref"])
        plan = self._stored_plan(spec["id"])
        if plan is None:
            raise QueueError(f"Job {spec['id']} has lost its reference plan; `vidcolor queue "
                             f"retry {spec['id']}` plans it again")
        check_allowed(spec, self._worker_opts.allow_dirs, plan.references)
        return plan

    def _segment(self, spec: dict, n: int, worker: WorkerPool) -> None:
        job_id, out = spec["id"], Path(spec["out"])
        segments = self._store.get(record_key("state", job_id))["segments"]
        start, stop = segments[n]
        path, key = segment_path(out, n), record_key("seg", job_id, str(n))
        if path.exists():
            logger.info("job %s: seg:%d was already done; kept", job_id, n)
        else:
            record = {"state": "running", "worker": worker.ident["id"], "frames": 0,
                      "started_at": time.time()}
            self._store.put(key, record)
            began = time.monotonic()
            try:
                colorize_segment(Path(spec["reel"]), self._references(spec), path, start, stop,
                                 PipelineOptions.from_dict(spec["options"]),
                                 on_frame=self._progress(job_id, key, record, worker))
            except BaseException:
                with contextlib.suppress(QueueError):
                    self._store.delete(key)
                raise
            seconds = time.monotonic() - began
            self._store.put(key, {**record, "state": "done", "frames": stop - start,
                                  "seconds": seconds, "finished_at": time.time()})
            logger.info("job %s: seg:%d done (frames %d-%d of %d) in %.1f s by %s", job_id, n,
                        start, stop - 1, segments[-1][1], seconds, worker.ident["name"])
        keys = [record_key("seg", job_id, str(i)) for i in range(len(segments))]
        records = self._store.get_many(keys)
        if all(records.get(k, {}).get("state") == "done" for k in keys):
            self.enqueue(job_id, "join")

    def _progress(self, job_id: str, key: str, record: dict, worker: WorkerPool):
        """on_frame hook: hand back when the worker stops, halt when the job is cancelled."""
        last = [time.monotonic()]

        def on_frame(frames: int) -> None:
            if worker.stop.is_set():
                raise _HandBack()
            if time.monotonic() - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = time.monotonic()
            if self.state(job_id) not in ACTIVE:
                raise _Halted()
            self._store.put(key, {**record, "frames": frames, "updated_at": time.time()})

        return on_frame

    def _watch(self, job_id: str, worker: WorkerPool):
        """on_frame hook of a step without a segment record: hand back or halt, as segments do."""
        last = [time.monotonic()]

        def on_frame(frames: int) -> None:
            if worker.stop.is_set():
                raise _HandBack()
            if time.monotonic() - last[0] >= PROGRESS_EVERY_S:
                last[0] = time.monotonic()
                if self.state(job_id) not in ACTIVE:
                    raise _Halted()

        return on_frame

    def _join(self, spec: dict, keep_segments: bool, worker: WorkerPool) -> None:
        """Join the segments (unless an earlier run of this step did), then the by-products."""
        job_id, out = spec["id"], Path(spec["out"])
        opts = PipelineOptions.from_dict(spec["options"])
        state = self._store.get(record_key("state", job_id))
        segments, ref = state["segments"], self._references(spec)
        if already_joined(state, out):
            logger.info("job %s: '%s' was joined before; making its by-products", job_id, out)
        else:
            paths = [segment_path(out, n) for n in range(len(segments))]
            missing = [n for n, path in enumerate(paths) if not path.exists()]
            if missing:  # the work folder was touched: make those segments again
                logger.warning("job %s: segments %s are missing; making them again", job_id,
                               missing)
                for n in missing:
                    self._store.delete(record_key("seg", job_id, str(n)))
                    self.enqueue(job_id, f"seg:{n}")
                return
            check_extras_of(spec, opts)
            join_reel(Path(spec["reel"]), paths, out, opts, ref=ref)
            # From here on the output is ours: a re-run of this step (a crash, or a retry
            # after the by-products failed) makes only the by-products, without checks that
            # would now refuse our own files.
            done = out.stat()
            self.update_state(job_id, joined={"size": done.st_size,
                                               "mtime_ns": done.st_mtime_ns})
        if spec.get("extras"):
            extras_from_files(Path(spec["reel"]), ref, out, extras_request(spec["extras"]),
                              run_identity(opts, None),
                              model=load_model_for(opts) if spec["extras"].get("report") else None,
                              on_frame=self._watch(job_id, worker))
            logger.info("job %s: by-products written (%s)", job_id, ", ".join(
                f"{name} {path}" for name, path in spec["extras"].items()
                if name != "preview_frames" and path))
        self.update_state(job_id, state="done", finished_at=time.time())
        self._store.delete(record_key("refplan", job_id))  # the sidecar has it; keep records small
        if not keep_segments:
            shutil.rmtree(work_dir(out), ignore_errors=True)
        logger.info("job %s: done, %d frames in %s", job_id, segments[-1][1], out)

    def _fail(self, job_id: str, step: str, message: str) -> None:
        message = " ".join(message.split())  # one line, whatever the library said
        with contextlib.suppress(QueueError):
            self.update_state(job_id, state="failed", error=message, finished_at=time.time())
        logger.error("job %s failed in %s: %s", job_id, step, message)


def _pending_steps(items: dict) -> set[tuple[str, str]]:
    """(job id, step) of every step that live jobs still need, from the records alone."""
    pending = set()
    for job_id in records_of(items, "job"):
        record = items.get(record_key("state", job_id), {})
        if record.get("state", "queued") not in ACTIVE or record_key("cancel", job_id) in items:
            continue
        segments = record.get("segments")
        if record.get("state") == "queued" or not segments:
            pending.add((job_id, "plan"))
            continue
        todo = [n for n in range(len(segments))
                if items.get(record_key("seg", job_id, str(n)), {}).get("state") != "done"]
        pending.update((job_id, f"seg:{n}") for n in todo)
        if not todo:
            pending.add((job_id, "join"))
    return pending
