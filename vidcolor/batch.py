"""The reel queue: reels are jobs on Huey, with SQLite (one machine) or Redis (many) behind it.

A job runs as steps, each a Huey task: "plan" checks the request and splits the film into
segments (and, with several references, chooses the still of every shot once, kept with the
job so that every segment follows the same choice), "seg:N" colourises segment N into a
checkpoint file in a hidden work folder beside the output, and "join" puts the segments end to
end with the original audio, then makes the contact sheet, report and side-by-side video the
job asked for from the joined file. Steps of one reel may run on different workers at once.
Job records live in the backend's key-value store and finished segments in the work folder, so
the job of a crashed or killed worker resumes after its last complete segment. Colourising is
pipeline.py's business; this module never prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import io
from .byproducts import ExtrasRequest, check_extras, extras_from_files
from .errors import (
    EncodeError,
    OptionsError,
    QueueError,
    ReferenceImageError,
    VidcolorError,
    VideoOpenError,
)
from .frames import VideoInfo
from .gallery import GALLERY_DIR
from .jobs import (
    ACTIVE,
    BACKEND_ERRORS,
    JobStatus,
    WorkerPool,
    WorkerStatus,
    job_state,
    lease_key,
    open_huey,
    read_status,
    record_key,
    records_of,
)
from .pipeline import (
    PipelineOptions,
    _identity,
    _load,
    check_film_request,
    colorize_segment,
    join_reel,
    plan_segments,
)
from .provenance import sha256_file
from .references import ReferencePlan, expand_references, read_reference_map
from .report import report_paths

logger = logging.getLogger(__name__)

DEFAULT_SEGMENT_FRAMES = 1440  # frames per segment: a minute of film at 24 fps
QUEUE_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")  # containers that keep segment timestamps
WORK_SUFFIX = ".vidcolor-work"  # the hidden work folder beside OUT is ".OUT" + this
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


@dataclass(frozen=True)
class AddResult:
    """What `ReelQueue.add` did: `added` is False when the same job was already there."""

    id: str
    reel: Path
    out: Path
    added: bool
    state: str


class _HandBack(Exception):
    """The worker is stopping: give the step back to the queue."""


class _Halted(Exception):
    """The job was cancelled or failed elsewhere: stop this step, keep nothing."""


def work_dir(out: Path) -> Path:
    """The hidden folder beside `out` that holds a job's segment files until it is joined."""
    return Path(out).with_name(f".{Path(out).name}{WORK_SUFFIX}")


def job_id_for(reel: Path, ref: Path | Sequence[Path], out: Path, opts: PipelineOptions,
               extras: ExtrasRequest | None = None, ref_map: Path | None = None) -> str:
    """The job id: the same reel, reference(s), output, settings and by-products give the same
    id (and the same mapping file, by its content).

    `overwrite` does not count: it does not change the picture. A job without by-products
    keeps the id it had before they could be asked for; one with a single still and no map,
    the id it had before several could be given.

    Args:
        ref: the still, or the stills (`references.expand_references`, not folders).
    """
    stills = [ref] if isinstance(ref, str | Path) else list(ref)
    single = len(stills) == 1 and ref_map is None
    identity = {"reel": str(Path(reel).resolve()), "out": str(Path(out).resolve()),
                "ref": str(Path(stills[0]).resolve()) if single
                else [str(Path(still).resolve()) for still in stills],
                "options": dataclasses.asdict(dataclasses.replace(opts, overwrite=False))}
    if ref_map is not None:
        identity["ref_map"] = {"path": str(Path(ref_map).resolve()),
                               "sha256": sha256_file(Path(ref_map))}
    wanted = _extras_record(extras)
    if wanted is not None:
        identity["extras"] = wanted
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


class ReelQueue:
    """A queue of reels that any process on any machine reaching the backend may use.

    Args:
        url: "sqlite:///PATH" or a plain file path (one machine, no server), or
            "redis://[:PASSWORD@]HOST:PORT/DB" ("rediss://" for TLS) for workers on many machines.

    Raises:
        QueueError: an unknown URL scheme, or a backend that cannot be reached; the message
            names the URL without its password.
    """

    def __init__(self, url: str) -> None:
        self.huey, self._store = open_huey(url)
        self.shown_url = self._store.shown_url
        self._step_task = self.huey.task(name="step")(self._run_step)
        self._worker: WorkerPool | None = None
        self._worker_opts = WorkerOptions()

    def close(self) -> None:
        """Close the backend connection."""
        with contextlib.suppress(*BACKEND_ERRORS):
            self.huey.storage.close()

    def add(self, reel: Path, ref: Path | str | Sequence[Path | str], out: Path,
            opts: PipelineOptions | None = None, *,
            segment_frames: int = DEFAULT_SEGMENT_FRAMES, extras: ExtrasRequest | None = None,
            ref_map: Path | None = None) -> AddResult:
        """Queue one reel, unless the same reel with the same settings is already there.

        A job already queued, running, done, failed or cancelled is reported, not added again
        (retry a failed one); a done job whose output has since been deleted is run again.
        With several references (or a map), the worker that plans the reel chooses the
        still of every shot once, as `colorize_video` does, and every segment uses that plan.

        Args:
            reel, out: the film and the output.
            ref: the colour reference still; or a list of stills and folders, or "auto" (the
                shipped gallery); folders are listed now.
            opts: PipelineOptions; defaults if None.
            segment_frames: target segment length in frames, >= 2.
            extras: contact sheet, QA report and side-by-side video to write once the reel
                is joined (checked now like `colorize_video` checks them); None for none.
            ref_map: a mapping file forcing the reference from given times on
                (`references.read_reference_map`), read again when the reel is planned.

        Raises:
            VideoOpenError, ReferenceImageError, EncodeError: the request cannot succeed.
            OptionsError: a bad mapping file or segment length.
            QueueError: another job writes the same output or by-product, or the backend is
                unreachable.
        """
        opts = opts or PipelineOptions()
        if segment_frames < 2:
            raise OptionsError(f"segment_frames must be >= 2, got {segment_frames}")
        reel, out = Path(reel).absolute(), Path(out).absolute()
        stills = [p.absolute() for p in expand_references([ref] if isinstance(ref, str | Path)
                                                          else ref)]
        if ref_map is not None:
            ref_map = Path(ref_map).absolute()
            _check_regular(ref_map, "Reference map", OptionsError)
            read_reference_map(ref_map, stills)  # its one-line errors before anything else
        extras = _absolute_extras(extras)
        job_id = job_id_for(reel, stills, out, opts, extras, ref_map)
        if self._store.get(record_key("job", job_id)) is not None:
            return self._add_again(job_id, reel, out)
        info = _check_request(reel, stills, ref_map, out, opts)
        if extras is not None:
            check_extras(extras, reel, out, info, opts.overwrite)
        self._check_output_free(job_id, out, extras)
        spec = {"id": job_id, "reel": str(reel), "ref": str(stills[0]), "out": str(out),
                "options": dataclasses.asdict(opts), "segment_frames": segment_frames,
                "frames_estimate": info.n_frames, "added_at": time.time()}
        if len(stills) > 1 or ref_map is not None:  # a single still keeps the old spec
            spec["refs"] = [str(still) for still in stills]
            if ref_map is not None:
                spec["ref_map"] = str(ref_map)
        if extras is not None:
            spec["extras"] = _extras_record(extras)
        if not self._store.put_new(record_key("job", job_id), spec):
            return self._add_again(job_id, reel, out)  # someone added it just now
        self._requeue(job_id)
        logger.info("job %s: queued %s -> %s", job_id, reel, out)
        return AddResult(job_id, reel, out, added=True, state="queued")

    def status(self) -> tuple[list[JobStatus], list[WorkerStatus]]:
        """Every job (oldest first) and every live worker."""
        return read_status(self._store)

    def retry(self, job_id: str) -> str:
        """Queue a failed or cancelled job again; its finished segments are kept. Returns its id.

        Raises:
            QueueError: no such job, or the job is not failed or cancelled.
        """
        job_id = self._resolve_id(job_id)
        state = self._job_state(job_id)
        if state not in ("failed", "cancelled"):
            raise QueueError(f"Job {job_id} is {state}; only failed or cancelled jobs are retried")
        self._store.delete(record_key("cancel", job_id))
        self._requeue(job_id)
        return job_id

    def retry_failed(self) -> list[str]:
        """Queue every failed job again; returns their ids."""
        items = self._store.items()
        failed = [job_id for job_id in records_of(items, "job")
                  if items.get(record_key("state", job_id), {}).get("state") == "failed"
                  and record_key("cancel", job_id) not in items]
        for job_id in failed:
            self._requeue(job_id)
        return failed

    def cancel(self, job_id: str) -> str:
        """Cancel a job: it is not started, or its running steps stop within a second or two.

        Finished segments stay in the work folder, so `retry` resumes the job.

        Raises:
            QueueError: no such job, or it is already done.
        """
        job_id = self._resolve_id(job_id)
        if self._job_state(job_id) == "done":
            raise QueueError(f"Job {job_id} is already done; nothing to cancel")
        self._store.put(record_key("cancel", job_id), {"at": time.time()})
        return job_id

    def run_worker(self, opts: WorkerOptions | None = None,
                   stop: threading.Event | None = None) -> None:
        """Be a worker: run steps until `stop` is set, Ctrl-C, or (`opts.once`) no work is left.

        On the way out, running segments are handed back to the queue.

        Args:
            opts: WorkerOptions; defaults if None.
            stop: an Event another thread may set to stop the worker.
        """
        opts = opts or WorkerOptions()
        self._worker_opts = dataclasses.replace(
            opts, allow_dirs=tuple(Path(d).resolve() for d in opts.allow_dirs))
        self._worker = WorkerPool(self.huey, self._store, opts.concurrency, opts.once,
                                  stop or threading.Event(), _pending_steps, self._enqueue_step)
        try:
            self._worker.run()
        finally:
            self._worker = None

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
                _check_allowed(spec, self._worker_opts.allow_dirs)
                if step == "plan":
                    self._plan(spec)
                elif step == "join":
                    self._join(spec, self._worker_opts.keep_segments, worker)
                else:
                    self._segment(spec, int(step.split(":")[1]), worker)
        except _HandBack:
            handed_back = True
        except _Halted:
            logger.info("job %s: %s stopped (job %s)", job_id, step, self._job_state(job_id))
        except VidcolorError as e:
            self._fail(job_id, step, str(e))
        except Exception as e:
            logger.exception("job %s: %s failed unexpectedly", job_id, step)
            self._fail(job_id, step, f"{type(e).__name__}: {e}")
        finally:
            with contextlib.suppress(QueueError):
                self._store.delete(lease)
        if handed_back:  # after the lease is gone, so whoever takes the task may run it
            self._enqueue_step(job_id, step)
            logger.info("job %s: %s handed back to the queue", job_id, step)

    def _enqueue_step(self, job_id: str, step: str) -> None:
        self._step_task(job_id, step, priority=_PRIORITY[step.split(":")[0]])

    def _may_run(self, job_id: str, step: str) -> bool:
        """Segments and the join run in a planned job; the plan runs once per (re)queueing."""
        state = self._job_state(job_id)
        if step != "plan":
            return state == "running"
        record = self._store.get(record_key("state", job_id)) or {}
        return state == "queued" or (state == "running" and not record.get("segments"))

    def _plan(self, spec: dict) -> None:
        job_id, out, reel = spec["id"], Path(spec["out"]), Path(spec["reel"])
        opts = PipelineOptions.from_dict(spec["options"])
        state = self._store.get(record_key("state", job_id)) or {}
        if _joined(state, out):  # only the by-products were left to make (retry after a failure)
            self._update_state(job_id, state="running", error=None)
            self._enqueue_step(job_id, "join")
            return
        segments, plan = self._plan_reel(spec, opts, state)
        _check_extras_of(spec, opts)
        work = work_dir(out)
        _claim_work_dir(work, job_id)
        if state.get("segments") not in (None, [list(s) for s in segments]):
            logger.warning("job %s: '%s' has changed since it was planned; starting over", job_id,
                           reel)
            for path in work.glob("seg-*"):
                path.unlink()
        todo = []
        for n in range(len(segments)):
            key, path = record_key("seg", job_id, str(n)), _segment_path(out, n)
            record = self._store.get(key)
            if path.exists() and not (record and record["state"] == "done"):
                frames = segments[n][1] - segments[n][0]
                self._store.put(key, {"state": "done", "frames": frames, "reused": True})
            elif not path.exists():
                todo.append(n)
                if record is not None:
                    self._store.delete(key)
        self._update_state(job_id, state="running", segments=segments,
                           frames_total=segments[-1][1], error=None, joined=None,
                           references_used=None if plan is None else len(plan.used()),
                           started_at=state.get("started_at") or time.time())
        logger.info("job %s: %d segments, %d to do", job_id, len(segments), len(todo))
        for n in todo:
            self._enqueue_step(job_id, f"seg:{n}")
        if not todo:
            self._enqueue_step(job_id, "join")

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
        _check_allowed(spec, self._worker_opts.allow_dirs,  # the map may name other stills
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
        _check_allowed(spec, self._worker_opts.allow_dirs, plan.references)
        return plan

    def _segment(self, spec: dict, n: int, worker: WorkerPool) -> None:
        job_id, out = spec["id"], Path(spec["out"])
        segments = self._store.get(record_key("state", job_id))["segments"]
        start, stop = segments[n]
        path, key = _segment_path(out, n), record_key("seg", job_id, str(n))
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
            self._enqueue_step(job_id, "join")

    def _progress(self, job_id: str, key: str, record: dict, worker: WorkerPool):
        """on_frame hook: hand back when the worker stops, halt when the job is cancelled."""
        last = [time.monotonic()]

        def on_frame(frames: int) -> None:
            if worker.stop.is_set():
                raise _HandBack()
            if time.monotonic() - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = time.monotonic()
            if self._job_state(job_id) not in ACTIVE:
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
                if self._job_state(job_id) not in ACTIVE:
                    raise _Halted()

        return on_frame

    def _join(self, spec: dict, keep_segments: bool, worker: WorkerPool) -> None:
        """Join the segments (unless an earlier run of this step did), then the by-products."""
        job_id, out = spec["id"], Path(spec["out"])
        opts = PipelineOptions.from_dict(spec["options"])
        state = self._store.get(record_key("state", job_id))
        segments, ref = state["segments"], self._references(spec)
        if _joined(state, out):
            logger.info("job %s: '%s' was joined before; making its by-products", job_id, out)
        else:
            paths = [_segment_path(out, n) for n in range(len(segments))]
            missing = [n for n, path in enumerate(paths) if not path.exists()]
            if missing:  # the work folder was touched: make those segments again
                logger.warning("job %s: segments %s are missing; making them again", job_id,
                               missing)
                for n in missing:
                    self._store.delete(record_key("seg", job_id, str(n)))
                    self._enqueue_step(job_id, f"seg:{n}")
                return
            _check_extras_of(spec, opts)
            join_reel(Path(spec["reel"]), paths, out, opts, ref=ref)
            # From here on the output is ours: a re-run of this step (a crash, or a retry
            # after the by-products failed) makes only the by-products, without checks that
            # would now refuse our own files.
            done = out.stat()
            self._update_state(job_id, joined={"size": done.st_size,
                                                "mtime_ns": done.st_mtime_ns})
        if spec.get("extras"):
            extras_from_files(Path(spec["reel"]), ref, out, _extras_request(spec["extras"]),
                              _identity(opts, None),
                              model=_load(opts) if spec["extras"].get("report") else None,
                              on_frame=self._watch(job_id, worker))
            logger.info("job %s: by-products written (%s)", job_id, ", ".join(
                f"{name} {path}" for name, path in spec["extras"].items()
                if name != "preview_frames" and path))
        self._update_state(job_id, state="done", finished_at=time.time())
        self._store.delete(record_key("refplan", job_id))  # the sidecar has it; keep records small
        if not keep_segments:
            shutil.rmtree(work_dir(out), ignore_errors=True)
        logger.info("job %s: done, %d frames in %s", job_id, segments[-1][1], out)

    # -- records ----------------------------------------------------------------------------

    def _fail(self, job_id: str, step: str, message: str) -> None:
        message = " ".join(message.split())  # one line, whatever the library said
        with contextlib.suppress(QueueError):
            self._update_state(job_id, state="failed", error=message, finished_at=time.time())
        logger.error("job %s failed in %s: %s", job_id, step, message)

    def _requeue(self, job_id: str) -> None:
        """Queue the plan step; a known plan is kept to show progress and spot a changed reel."""
        self._update_state(job_id, state="queued", error=None, finished_at=None)
        self._enqueue_step(job_id, "plan")

    def _update_state(self, job_id: str, **changes) -> None:
        state = self._store.get(record_key("state", job_id)) or {}
        state.update(changes, updated_at=time.time())
        self._store.put(record_key("state", job_id), state)

    def _job_state(self, job_id: str) -> str:
        return job_state(self._store.get_many([record_key("state", job_id),
                                               record_key("cancel", job_id)]), job_id)

    def _add_again(self, job_id: str, reel: Path, out: Path) -> AddResult:
        state = self._job_state(job_id)
        if state == "done" and not out.exists():
            self._requeue(job_id)
            return AddResult(job_id, reel, out, added=True, state="queued")
        return AddResult(job_id, reel, out, added=False, state=state)

    def _check_output_free(self, job_id: str, out: Path,
                           extras: ExtrasRequest | None = None) -> None:
        """Refuse an output or by-product that a live job will write too."""
        mine = _targets(out, _extras_record(extras))
        for other, spec in records_of(self._store.items(), "job").items():
            if other == job_id or self._job_state(other) not in ACTIVE:
                continue
            if Path(spec["out"]) == out:
                raise QueueError(f"Output '{out}' is already the target of job {other}; "
                                 f"cancel that job or choose another --out-dir")
            shared = mine & _targets(Path(spec["out"]), spec.get("extras"))
            if shared:
                raise QueueError(f"'{min(shared)}' is already written by job {other}; cancel "
                                 f"that job or choose another path")

    def _resolve_id(self, prefix: str) -> str:
        ids = [i for i in records_of(self._store.items(), "job") if i.startswith(prefix.strip())]
        if len(ids) != 1:
            found = "is ambiguous" if ids else "is not in the queue"
            raise QueueError(f"Job '{prefix}' {found} at {self.shown_url}; "
                             "`vidcolor queue status` lists the jobs")
        return ids[0]

def _check_request(reel: Path, stills: list[Path], ref_map: Path | None, out: Path,
                   opts: PipelineOptions) -> VideoInfo:
    """The checks of a new job, before it is queued; the worker repeats them when it plans."""
    _check_regular(reel, "Input", VideoOpenError)
    for still in stills:
        _check_regular(still, "Reference", ReferenceImageError)
    if out.suffix.lower() not in QUEUE_SUFFIXES:
        raise EncodeError(f"Output '{out}': queued reels are written as "
                          f"{', '.join(QUEUE_SUFFIXES)}; choose one of those")
    return check_film_request(reel, stills, out, opts, ref_map=ref_map)


def _absolute_extras(extras: ExtrasRequest | None) -> ExtrasRequest | None:
    """The request with absolute paths (workers may run elsewhere); None if it asks nothing."""
    if extras is None or _extras_record(extras) is None:
        return None
    return dataclasses.replace(extras, **{
        name: Path(getattr(extras, name)).absolute()
        for name in ("preview", "report", "compare") if getattr(extras, name) is not None})


def _extras_record(extras: ExtrasRequest | None) -> dict | None:
    """The request as a job stores it (JSON), or None when it asks for nothing."""
    if extras is None:
        return None
    paths = {name: getattr(extras, name) for name in ("preview", "report", "compare")}
    if all(path is None for path in paths.values()):
        return None
    return {name: None if path is None else str(path) for name, path in paths.items()} | {
        "preview_frames": extras.preview_frames}


def _extras_request(record: dict) -> ExtrasRequest:
    return ExtrasRequest(**{name: value if name == "preview_frames" or value is None
                            else Path(value) for name, value in record.items()})


def _check_extras_of(spec: dict, opts: PipelineOptions) -> None:
    """Repeat the by-products' path checks of `add` (a file may have appeared since)."""
    if spec.get("extras"):
        reel = Path(spec["reel"])
        check_extras(_extras_request(spec["extras"]), reel, Path(spec["out"]), io.probe(reel),
                     opts.overwrite)


def _targets(out: Path, extras: dict | None) -> set[Path]:
    """Every file a job writes besides its sidecar: the output and its by-products."""
    paths = {Path(out)}
    for name in ("preview", "report", "compare"):
        if extras and extras.get(name):
            paths.update(report_paths(Path(extras[name])) if name == "report"
                         else [Path(extras[name])])
    return paths


def _joined(state: dict, out: Path) -> bool:
    """True when the join step already wrote `out` and it is still the file it wrote."""
    joined = state.get("joined")
    try:
        done = out.stat()
    except OSError:
        return False
    return bool(joined) and (done.st_size, done.st_mtime_ns) == (joined["size"],
                                                                  joined["mtime_ns"])


def _check_regular(path: Path, role: str, error: type[VidcolorError]) -> None:
    try:
        mode = os.stat(path).st_mode  # follows symlinks: the target is what gets read
    except FileNotFoundError:
        raise error(f"{role} '{path}' does not exist; check the path") from None
    except OSError as e:
        raise error(f"{role} '{path}' cannot be read ({e.strerror})") from e
    if not stat.S_ISREG(mode):
        raise error(f"{role} '{path}' is not a regular file; give a video or image file")


def _check_allowed(spec: dict, allow_dirs: tuple[Path, ...],
                   more_stills: Sequence[Path] = ()) -> None:
    """Refuse a job whose files are not regular, or lie outside the worker's folders.

    Args:
        spec: the job; its reel, still(s), mapping file and output are checked.
        allow_dirs: the worker's folders (resolved); empty: anywhere.
        more_stills: other stills the job reads (those its mapping file or plan names).
            The stills of the shipped gallery (`--ref auto`) are vidcolor's own: always allowed.
    """
    stills = dict.fromkeys([Path(p) for p in spec.get("refs", [spec["ref"]])] + list(more_stills))
    _check_regular(Path(spec["reel"]), "Input", VideoOpenError)
    for still in stills:
        _check_regular(still, "Reference", ReferenceImageError)
    if spec.get("ref_map"):
        _check_regular(Path(spec["ref_map"]), "Reference map", OptionsError)
    files = [("input", spec["reel"])] + [
        ("reference", str(still)) for still in stills
        if not still.resolve().is_relative_to(GALLERY_DIR.resolve())]
    files += [("reference map", spec["ref_map"])] if spec.get("ref_map") else []
    files.append(("output", spec["out"]))
    for role, path in files if allow_dirs else ():
        real = Path(path).resolve()
        if not any(real.is_relative_to(folder) for folder in allow_dirs):
            raise QueueError(f"The {role} '{path}' lies outside this worker's allowed folders "
                             f"({', '.join(map(str, allow_dirs))}); refused")


def _claim_work_dir(work: Path, job_id: str) -> None:
    """Create the work folder, clearing segments another job (other settings) left there."""
    work.mkdir(exist_ok=True)
    marker = work / "job.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text()).get("id") != job_id:
            logger.warning("'%s' held another job's segments; cleared", work)
            for path in work.glob("seg-*"):
                path.unlink()
    partial = marker.with_suffix(".partial")
    partial.write_text(json.dumps({"id": job_id}))
    os.replace(partial, marker)


def _segment_path(out: Path, n: int) -> Path:
    return work_dir(out) / f"seg-{n:05d}{out.suffix}"


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
