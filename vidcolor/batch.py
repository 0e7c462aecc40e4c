"""The reel queue: reels are jobs on Huey, with SQLite (one machine) or Redis (many) behind it.

`ReelQueue` is what the CLI and a Python caller use: add a reel (checked now, so a mistake
fails at once), list every job and worker, cancel, retry, and be a worker. A job runs as steps
("plan", "seg:N", "join"; steps.py) that any worker reaching the backend may take, several at
once for one reel; job records live in the backend's key-value store (jobs.py) and finished
segments in a work folder beside the output (jobfiles.py), so the job of a crashed or killed
worker resumes after its last complete segment. Colourising is segments.py's business; this
module never prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .byproducts import ExtrasRequest, check_extras
from .errors import EncodeError, OptionsError, QueueError, ReferenceImageError, VideoOpenError
from .frames import VideoInfo
from .jobfiles import check_regular, extras_record
from .jobs import (
    ACTIVE,
    BACKEND_ERRORS,
    JobStatus,
    WorkerStatus,
    open_huey,
    read_status,
    record_key,
    records_of,
)
from .pipeline import PipelineOptions
from .provenance import sha256_file
from .references import expand_references, read_reference_map
from .report import report_paths
from .segments import check_film_request
from .steps import StepRunner, WorkerOptions

logger = logging.getLogger(__name__)

DEFAULT_SEGMENT_FRAMES = 1440  # frames per segment: a minute of film at 24 fps
QUEUE_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")  # containers that keep segment timestamps


@dataclass(frozen=True)
class AddResult:
    """What `ReelQueue.add` did: `added` is False when the same job was already there."""

    id: str
    reel: Path
    out: Path
    added: bool
    state: str


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
    wanted = extras_record(extras)
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
        self._steps = StepRunner(self.huey, self._store)

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
            check_regular(ref_map, "Reference map", OptionsError)
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
            spec["extras"] = extras_record(extras)
        if not self._store.put_new(record_key("job", job_id), spec):
            return self._add_again(job_id, reel, out)  # someone added it just now
        self._steps.requeue(job_id)
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
        state = self._steps.state(job_id)
        if state not in ("failed", "cancelled"):
            raise QueueError(f"Job {job_id} is {state}; only failed or cancelled jobs are retried")
        self._store.delete(record_key("cancel", job_id))
        self._steps.requeue(job_id)
        return job_id

    def retry_failed(self) -> list[str]:
        """Queue every failed job again; returns their ids."""
        items = self._store.items()
        failed = [job_id for job_id in records_of(items, "job")
                  if items.get(record_key("state", job_id), {}).get("state") == "failed"
                  and record_key("cancel", job_id) not in items]
        for job_id in failed:
            self._steps.requeue(job_id)
        return failed

    def cancel(self, job_id: str) -> str:
        """Cancel a job: it is not started, or its running steps stop within a second or two.

        Finished segments stay in the work folder, so `retry` resumes the job.

        Raises:
            QueueError: no such job, or it is already done.
        """
        job_id = self._resolve_id(job_id)
        if self._steps.state(job_id) == "done":
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
        self._steps.run_worker(opts, stop or threading.Event())

    def _add_again(self, job_id: str, reel: Path, out: Path) -> AddResult:
        state = self._steps.state(job_id)
        if state == "done" and not out.exists():
            self._steps.requeue(job_id)
            return AddResult(job_id, reel, out, added=True, state="queued")
        return AddResult(job_id, reel, out, added=False, state=state)

    def _check_output_free(self, job_id: str, out: Path,
                           extras: ExtrasRequest | None = None) -> None:
        """Refuse an output or by-product that a live job will write too."""
        mine = _targets(out, extras_record(extras))
        for other, spec in records_of(self._store.items(), "job").items():
            if other == job_id or self._steps.state(other) not in ACTIVE:
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
    check_regular(reel, "Input", VideoOpenError)
    for still in stills:
        check_regular(still, "Reference", ReferenceImageError)
    if out.suffix.lower() not in QUEUE_SUFFIXES:
        raise EncodeError(f"Output '{out}': queued reels are written as "
                          f"{', '.join(QUEUE_SUFFIXES)}; choose one of those")
    return check_film_request(reel, stills, out, opts, ref_map=ref_map)


def _absolute_extras(extras: ExtrasRequest | None) -> ExtrasRequest | None:
    """The request with absolute paths (workers may run elsewhere); None if it asks nothing."""
    if extras is None or extras_record(extras) is None:
        return None
    return dataclasses.replace(extras, **{
        name: Path(getattr(extras, name)).absolute()
        for name in ("preview", "report", "compare") if getattr(extras, name) is not None})


def _targets(out: Path, extras: dict | None) -> set[Path]:
    """Every file a job writes besides its sidecar: the output and its by-products."""
    paths = {Path(out)}
    for name in ("preview", "report", "compare"):
        if extras and extras.get(name):
            paths.update(report_paths(Path(extras[name])) if name == "report"
                         else [Path(extras[name])])
    return paths
