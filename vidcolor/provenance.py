"""Provenance: how an output was made, in a JSON sidecar `OUT.vidcolor.json` and a metadata tag.

Owns the sidecar's content (versions, weights and file hashes, settings, the input's stream
layout, start and end times), its atomic write, and the one-line tag the encoder puts in the
output's container metadata. Nothing is burnt into the picture. It never decodes a frame (the
stream layout comes from container headers) and does not decide when it is called: the
pipeline writes the sidecar only once the output is complete.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import av

from . import __version__
from .atomic import writing
from .errors import EncodeError

SIDECAR_SUFFIX = ".vidcolor.json"  # the sidecar of OUT is OUT + this suffix
SCHEMA_VERSION = 1  # bumped when a key of the sidecar changes meaning
HASH_CHUNK_BYTES = 1 << 20  # read size while hashing, bytes
TAG_KEY = "comment"  # container metadata key: MP4/MOV (©cmt) and Matroska (COMMENT) all keep it
_LIBRARIES = ("av", "numpy", "torch", "opencv-python-headless", "pillow", "scipy")


@dataclass(frozen=True)
class RunFacts:
    """What the pipeline knows about one finished run, for the sidecar.

    Attributes:
        src: the input film or still.
        ref: the colour reference still.
        out: the finished output.
        model_name: the colouriser's name ("match", "net", ...).
        weights: (role, path) of every weights file the model was loaded from; empty when the
            model was handed over in memory (then they are not known).
        settings: the run's PipelineOptions as a plain dict (`dataclasses.asdict`).
        started, finished: aware UTC datetimes of the run's start and end.
        frames_written: frames in the output (1 for a still).
        ref_sha256: the reference's sha256 if already computed (it is hashed otherwise).
        extra_outputs: other files the run wrote ({"preview": path, "report": path}).
        more_refs: (path, sha256) of the other reference stills used, when several were.
        reference_plan: which still coloured which shot (`ReferencePlan.to_dict`), when the
            run chose among several or followed a mapping file.
    """

    src: Path
    ref: Path
    out: Path
    model_name: str
    weights: list[tuple[str, Path]]
    settings: dict
    started: dt.datetime
    finished: dt.datetime
    frames_written: int
    ref_sha256: str | None = None
    extra_outputs: dict[str, Path] = field(default_factory=dict)
    more_refs: list[tuple[Path, str]] = field(default_factory=list)
    reference_plan: dict | None = None


def sidecar_path(out: Path) -> Path:
    """Where the sidecar of the output `out` goes: `OUT.vidcolor.json` beside it."""
    out = Path(out)
    return out.with_name(out.name + SIDECAR_SUFFIX)


def utc_now() -> dt.datetime:
    """The current time as an aware UTC datetime (what RunFacts.started/finished hold)."""
    return dt.datetime.now(dt.timezone.utc)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (a reel of many GB never sits in memory).

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def metadata_tag(model_name: str, ref_sha256: str) -> str:
    """The value of the container tag TAG_KEY that names the tool, model and reference(s)
    (several sha256 are joined by commas).

    Example: "vidcolor 0.1.0; model match; ref sha256 9f2c...; details in the .vidcolor.json
    sidecar".
    """
    return (f"vidcolor {__version__}; model {model_name}; ref sha256 {ref_sha256}; "
            f"details in the {SIDECAR_SUFFIX} sidecar")


def describe_media(path: Path) -> dict:
    """The stream layout of a media file from its container headers (no frame is decoded).

    Returns:
        {"format", "duration_s", "bit_rate", "streams": [...]}: every stream with its index,
        type and codec; video streams add width, height, pix_fmt, fps (a "num/den" string),
        time_base and the header's frame count; audio streams add sample_rate, channels and
        layout. {"format": None, "streams": []} when FFmpeg cannot open the file (some still
        formats only Pillow reads).
    """
    try:
        with av.open(os.fspath(path)) as container:
            return {
                "format": container.format.name,
                "duration_s": container.duration / av.time_base if container.duration else None,
                "bit_rate": container.bit_rate or None,
                "streams": [_describe_stream(s) for s in container.streams],
            }
    except (av.error.FFmpegError, OSError, ValueError):
        return {"format": None, "duration_s": None, "bit_rate": None, "streams": []}


def _describe_stream(stream) -> dict:
    ctx = stream.codec_context
    entry = {"index": stream.index, "type": stream.type, "codec": ctx.name if ctx else None}
    if stream.type == "video":
        rate = stream.average_rate or stream.guessed_rate
        entry.update(width=ctx.width, height=ctx.height,
                     pix_fmt=ctx.format.name if ctx.format else None,
                     fps=str(rate) if rate else None, time_base=str(stream.time_base),
                     frames=stream.frames or None)
    elif stream.type == "audio":
        entry.update(sample_rate=ctx.sample_rate, channels=ctx.channels,
                     layout=ctx.layout.name if ctx.layout else None)
    return entry


def build_record(facts: RunFacts) -> dict:
    """The sidecar's content as a JSON-ready dict (hashes every file it names).

    Raises:
        EncodeError: a file to hash cannot be read.
    """
    ref_sha256 = facts.ref_sha256 or _hash(facts.ref)
    all_sha256 = ",".join([ref_sha256] + [sha for _, sha in facts.more_refs])
    record = {
        "schema": SCHEMA_VERSION,
        "vidcolor": __version__,
        "started_utc": facts.started.isoformat(timespec="seconds"),
        "finished_utc": facts.finished.isoformat(timespec="seconds"),
        "duration_s": round((facts.finished - facts.started).total_seconds(), 3),
        "input": _file_entry(facts.src) | {"layout": describe_media(facts.src)},
        "reference": _file_entry(facts.ref, ref_sha256),
        "model": {"name": facts.model_name,
                  "weights": [{"role": role} | _file_entry(path) for role, path in facts.weights]
                  or "not recorded: the model was passed in memory"},
        "settings": facts.settings,
        "output": _file_entry(facts.out) | {"frames": facts.frames_written,
                                            "metadata": {TAG_KEY: metadata_tag(facts.model_name,
                                                                               all_sha256)}},
        "extra_outputs": {name: str(Path(p).resolve()) for name, p in facts.extra_outputs.items()},
        "software": {"python": platform.python_version(), **_library_versions()},
    }
    if facts.more_refs:
        record["references"] = [record["reference"]] + [_file_entry(path, sha)
                                                        for path, sha in facts.more_refs]
    if facts.reference_plan is not None:
        record["reference_plan"] = facts.reference_plan
    return record


def write_sidecar(facts: RunFacts) -> Path:
    """Write `OUT.vidcolor.json` atomically (a temporary file renamed into place).

    Call it only when `facts.out` is complete: a sidecar vouches for a finished file.

    Returns:
        The sidecar's path.

    Raises:
        EncodeError: a file cannot be hashed or the sidecar cannot be written.
    """
    path = sidecar_path(facts.out)
    text = json.dumps(build_record(facts), indent=2, default=str) + "\n"
    write_text_atomic(path, text)
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via `PATH.partial` and a rename; nothing is left on failure.

    Raises:
        EncodeError: the file cannot be written.
    """
    path = Path(path)
    try:
        with writing(path) as partial:
            partial.write_text(text, encoding="utf-8")
    except OSError as e:
        raise EncodeError(f"Cannot write '{path}': {e}") from e


def _file_entry(path: Path, sha256: str | None = None) -> dict:
    path = Path(path)
    return {"path": str(path.resolve()), "size_bytes": _size(path),
            "sha256": sha256 or _hash(path)}


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _hash(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as e:
        raise EncodeError(f"Cannot read '{path}' to record its sha256: {e}") from e


def _library_versions() -> dict[str, str | None]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
