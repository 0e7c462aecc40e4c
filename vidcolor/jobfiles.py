"""The files of a queued reel: its work folder and segment files, and what a worker may touch.

A job's segments go into a hidden work folder beside its output until the reel is joined; the
folder is claimed by the job's id so that another job's segments are never joined by mistake.
Also here: the checks that a job's input, references, mapping file and output are regular files
inside a worker's allowed folders, and the by-products request as a job record stores it.
The job records themselves are jobs.py's; what runs when is steps.py's. It never prints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from . import io
from .atomic import writing
from .byproducts import ExtrasRequest, check_extras
from .errors import OptionsError, QueueError, ReferenceImageError, VidcolorError, VideoOpenError
from .gallery import GALLERY_DIR
from .pipeline import PipelineOptions

logger = logging.getLogger(__name__)

WORK_SUFFIX = ".vidcolor-work"  # the hidden work folder beside OUT is ".OUT" + this


def work_dir(out: Path) -> Path:
    """The hidden folder beside `out` that holds a job's segment files until it is joined."""
    return Path(out).with_name(f".{Path(out).name}{WORK_SUFFIX}")


def segment_path(out: Path, n: int) -> Path:
    """The file of segment `n` (from 0) of the job writing `out`, in its work folder."""
    return work_dir(out) / f"seg-{n:05d}{out.suffix}"


def claim_work_dir(work: Path, job_id: str) -> None:
    """Create the work folder, clearing segments another job (other settings) left there."""
    work.mkdir(exist_ok=True)
    marker = work / "job.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text()).get("id") != job_id:
            logger.warning("'%s' held another job's segments; cleared", work)
            for path in work.glob("seg-*"):
                path.unlink()
    with writing(marker) as partial:
        partial.write_text(json.dumps({"id": job_id}))


def already_joined(state: dict, out: Path) -> bool:
    """True when the join step already wrote `out` and it is still the file it wrote."""
    joined = state.get("joined")
    try:
        done = out.stat()
    except OSError:
        return False
    return bool(joined) and (done.st_size, done.st_mtime_ns) == (joined["size"],
                                                                  joined["mtime_ns"])


def check_regular(path: Path, role: str, error: type[VidcolorError]) -> None:
    """Refuse a missing or unreadable file, or one that is not a regular file (a device, a FIFO).

    Raises:
        `error`, naming the `role` ("Input", "Reference", ...), the path and the fix.
    """
    try:
        mode = os.stat(path).st_mode  # follows symlinks: the target is what gets read
    except FileNotFoundError:
        raise error(f"{role} '{path}' does not exist; check the path") from None
    except OSError as e:
        raise error(f"{role} '{path}' cannot be read ({e.strerror})") from e
    if not stat.S_ISREG(mode):
        raise error(f"{role} '{path}' is not a regular file; give a video or image file")


def check_allowed(spec: dict, allow_dirs: tuple[Path, ...],
                  more_stills: Sequence[Path] = ()) -> None:
    """Refuse a job whose files are not regular, or lie outside the worker's folders.

    Args:
        spec: the job; its reel, still(s), mapping file and output are checked.
        allow_dirs: the worker's folders (resolved); empty: anywhere.
        more_stills: other stills the job reads (those its mapping file or plan names).
            The stills of the shipped gallery (`--ref auto`) are vidcolor's own: always allowed.
    """
    stills = dict.fromkeys([Path(p) for p in spec.get("refs", [spec["ref"]])] + list(more_stills))
    check_regular(Path(spec["reel"]), "Input", VideoOpenError)
    for still in stills:
        check_regular(still, "Reference", ReferenceImageError)
    if spec.get("ref_map"):
        check_regular(Path(spec["ref_map"]), "Reference map", OptionsError)
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


def extras_record(extras: ExtrasRequest | None) -> dict | None:
    """The request as a job stores it (JSON), or None when it asks for nothing."""
    if extras is None:
        return None
    paths = {name: getattr(extras, name) for name in ("preview", "report", "compare")}
    if all(path is None for path in paths.values()):
        return None
    return {name: None if path is None else str(path) for name, path in paths.items()} | {
        "preview_frames": extras.preview_frames}


def extras_request(record: dict) -> ExtrasRequest:
    """The request a job stored with `extras_record`, back as an ExtrasRequest."""
    return ExtrasRequest(**{name: value if name == "preview_frames" or value is None
                            else Path(value) for name, value in record.items()})


def check_extras_of(spec: dict, opts: PipelineOptions) -> None:
    """Repeat the by-products' path checks of `add` (a file may have appeared since)."""
    if spec.get("extras"):
        reel = Path(spec["reel"])
        check_extras(extras_request(spec["extras"]), reel, Path(spec["out"]), io.probe(reel),
                     opts.overwrite)
