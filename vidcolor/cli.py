"""Command line: `vidcolor FILM --ref STILL` and friends.

Parses flags into Options, calls the pipeline, and turns errors into one-line messages and
exit codes (0 ok, 1 handled error, 2 bad usage, 130 Ctrl-C, 143 SIGTERM). The decisions live
in the library; this module only talks to the user. It is the only place that prints or exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from tqdm.contrib.logging import logging_redirect_tqdm

from . import __version__
from .batch import DEFAULT_SEGMENT_FRAMES, JobStatus, ReelQueue, WorkerOptions, WorkerStatus
from .byproducts import ExtrasRequest
from .colorize import ColorizeOptions
from .encode import CHROMA_CHOICES, CODECS, PIX_FMTS, X26X_PRESETS, EncodeOptions
from .errors import OptionsError, ReferenceImageError, VidcolorError
from .io import is_still_image
from .pipeline import DEVICE_CHOICES, PRESETS, PipelineOptions, colorize_video, preset_options
from .preview import MAX_PREVIEW_FRAMES, PREVIEW_FRAMES
from .references import ReferencePlan
from .temporal import TemporalOptions
from .weights import available_models

logger = logging.getLogger("vidcolor")

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v")  # a default output keeps these containers
REEL_FIELD = "{reel}"  # in a `queue add` by-product path: replaced by each reel's name

PRESET_HELP = ("Speed against quality: fast (1.4-2.0x faster than balanced: 192-px instead of 256-px working "
               "size and x264 veryfast; colour edges slightly blurrier, files bigger), balanced (the default), "
               "best (320-px working size, finer temporal grid, x264 slow; 1.5-1.8x slower, finer colour "
               "detail). Flags given explicitly (e.g. --encoder-preset) override the preset. "
               "Measured trade: BENCHMARKS.md.")

app = typer.Typer(add_completion=False, context_settings={"help_option_names": ["-h", "--help"]},
                  rich_markup_mode=None, pretty_exceptions_enable=False)


class _Terminated(Exception):
    """SIGTERM arrived; unwinding removes the partial output like Ctrl-C does."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vidcolor {__version__}")
        raise typer.Exit()


def _choice(value: str, choices, flag: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=flag)
    return value


@app.command()
def colorize(
    video: Annotated[Path, typer.Argument(help="Black-and-white film (or a photo) to colourise.", show_default=False)],
    ref: Annotated[list[str], typer.Option("--ref", "-r", help="Colour reference still whose colours are transferred. Repeat it, or give a folder, to let vidcolor pick the best still for each shot (it prints its choice); 'auto' picks from the gallery that ships with vidcolor.", show_default=False)],
    ref_map: Annotated[Path | None, typer.Option("--ref-map", help="Force the reference per shot: a text file of lines 'START STILL' (START in seconds or HH:MM:SS.mmm; from then on STILL is used). The choice vidcolor prints is such a file: save it, edit it, pass it back.", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file. Default: VIDEO.color.mp4 beside the input (same container as the input when it is .mp4/.mov/.mkv; a photo gets VIDEO.color.png).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists (otherwise vidcolor refuses).")] = False,
    method: Annotated[str, typer.Option("--method", "-m", help=f"Colorizer: {', '.join(available_models())}. 'match' is training-free exemplar matching.")] = ColorizeOptions.method,
    no_temporal: Annotated[bool, typer.Option("--no-temporal", help="Skip the temporal-consistency stage (same as --temporal-strength 0).")] = False,
    temporal_strength: Annotated[float, typer.Option("--temporal-strength", min=0.0, max=1.0, help="How hard colour is pulled toward the motion-compensated previous frame, 0..1. Higher removes more flicker but may let colour lag on fast motion; 0 turns the stage off.")] = TemporalOptions.strength,
    codec: Annotated[str, typer.Option("--codec", help=f"Video codec: {', '.join(CODECS)} (ffv1 is lossless, prores is 10-bit).")] = EncodeOptions.codec,
    crf: Annotated[int, typer.Option("--crf", min=0, max=51, help="Quality for h264/h265: lower is better and bigger; 18 is visually lossless.")] = EncodeOptions.crf,
    preset: Annotated[str, typer.Option("--preset", help=PRESET_HELP)] = "balanced",
    encoder_preset: Annotated[str | None, typer.Option("--encoder-preset", help=f"x264/x265 speed preset ({', '.join(X26X_PRESETS)}): slower gives smaller files at the same quality. Default: from --preset (veryfast, medium, slow).", show_default=False)] = None,
    chroma: Annotated[str, typer.Option("--chroma", help="Chroma subsampling: 420 (plays everywhere) or 444 (full colour resolution).")] = EncodeOptions.chroma,
    bit_depth: Annotated[int | None, typer.Option("--bit-depth", help="8 or 10 bits per sample. Default: 8 for h264, the input's depth otherwise.", show_default=False)] = None,
    pix_fmt: Annotated[str | None, typer.Option("--pix-fmt", help=f"Output pixel format, the FFmpeg way, instead of --chroma and --bit-depth: {', '.join(PIX_FMTS)} (yuv422p10le with prores only).", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu or cuda.")] = "auto",
    preview: Annotated[Path | None, typer.Option("--preview", help="Also write a contact sheet image (.png or .jpg) to check the result at a glance: evenly spaced frames, the input above the output, with the reference.", show_default=False)] = None,
    preview_frames: Annotated[int, typer.Option("--preview-frames", min=1, max=MAX_PREVIEW_FRAMES, help="How many frames the contact sheet shows.")] = PREVIEW_FRAMES,
    report: Annotated[Path | None, typer.Option("--report", help="Also write a quality report: per shot colourfulness and colour flicker, with a plot of flicker over time. report.html writes report.json beside it; a .json path writes only the JSON.", show_default=False)] = None,
    compare: Annotated[Path | None, typer.Option("--compare", help="Also write a side-by-side video (input left, output right, with the sound), e.g. side.mp4, to show before and after.", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; only errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and debug logs (also VIDCOLOR_DEBUG=1).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Colourise VIDEO with the colours of a reference still (or the best of several, per shot).

    Example: vidcolor film.mp4 --ref still.jpg   (writes film.color.mp4)
             vidcolor film.mp4 --ref street.jpg --ref face.jpg   (or --ref stills/, --ref auto)

    Many reels, overnight or on several machines: vidcolor queue --help
    """
    debug = debug or os.environ.get("VIDCOLOR_DEBUG", "") not in ("", "0")
    _choice(method, available_models(), "--method")
    _choice(codec, CODECS, "--codec")
    _choice_preset(preset, encoder_preset)
    _choice(chroma, CHROMA_CHOICES, "--chroma")
    _choice(device, DEVICE_CHOICES, "--device")
    if pix_fmt is not None:
        chroma, bit_depth = _pix_fmt_knobs(pix_fmt, codec, chroma, bit_depth)
    _setup_logging(quiet, debug)
    with _reported_errors(debug):
        try:
            opts = _preset_with_flags(preset, method, device, overwrite,
                                      0.0 if no_temporal else temporal_strength,
                                      dict(codec=codec, crf=crf, preset=encoder_preset,
                                           chroma=chroma, bit_depth=bit_depth))
        except OptionsError as e:
            raise typer.BadParameter(str(e)) from e
        target = out or default_output(video, codec)
        colorize_video(video, ref, target, opts, show_progress=not quiet, preview=preview,
                       preview_frames=preview_frames, report=report, compare=compare,
                       ref_map=ref_map, on_plan=None if quiet else _print_plan)
        typer.echo(str(target))


def _pix_fmt_knobs(pix_fmt: str, codec: str, chroma: str,
                   bit_depth: int | None) -> tuple[str, int]:
    """--pix-fmt as (chroma, bit depth); refuses one the codec cannot take or that contradicts
    an explicit --chroma or --bit-depth."""
    _choice(pix_fmt, PIX_FMTS, "--pix-fmt")
    wanted_chroma, wanted_depth = PIX_FMTS[pix_fmt]
    if pix_fmt == "yuv422p10le" and codec != "prores":
        raise typer.BadParameter("4:2:2 is written by --codec prores only; use yuv420p10le or "
                                 "yuv444p10le", param_hint="--pix-fmt")
    if codec == "prores" and wanted_depth == 8:
        raise typer.BadParameter("ProRes is 10-bit: use yuv422p10le or yuv444p10le",
                                 param_hint="--pix-fmt")
    if chroma != EncodeOptions.chroma and chroma != wanted_chroma or (
            bit_depth is not None and bit_depth != wanted_depth):
        raise typer.BadParameter(f"{pix_fmt} contradicts --chroma/--bit-depth; give one or the "
                                 f"other", param_hint="--pix-fmt")
    return wanted_chroma, wanted_depth


def _print_plan(plan: ReferencePlan) -> None:
    """Say which still colours which shot, on stderr (stdout names the output only)."""
    used = len(plan.used())
    typer.echo(f"# {len(plan.shots)} shot(s), {used} of {len(plan.references)} reference(s) used:",
               err=True)
    for line in plan.lines():
        typer.echo(line, err=True)


def _choice_preset(preset: str, encoder_preset: str | None) -> None:
    if preset not in PRESETS and preset in X26X_PRESETS:
        raise typer.BadParameter(f"{preset!r} is not one of {', '.join(PRESETS)}; x264/x265 "
                                 f"presets are set with --encoder-preset", param_hint="--preset")
    _choice(preset, PRESETS, "--preset")
    if encoder_preset is not None:
        _choice(encoder_preset, X26X_PRESETS, "--encoder-preset")


def _preset_with_flags(preset: str, method: str, device: str, overwrite: bool,
                       temporal_strength: float, encode: dict) -> PipelineOptions:
    """The speed preset's options, then every flag given explicitly on top (None: not given)."""
    base = preset_options(preset, method, device=device, overwrite=overwrite)
    given = {name: value for name, value in encode.items() if value is not None}
    return replace(base, temporal=replace(base.temporal, strength=temporal_strength),
                   encode=replace(base.encode, **given))


# Containers that hold each archival codec; the delivery codecs go in any of VIDEO_SUFFIXES.
CODEC_CONTAINERS = {"prores": (".mov", ".mkv"), "ffv1": (".mkv",)}


def default_output(video: Path, codec: str = "h264") -> Path:
    """VIDEO.color.EXT beside the input: .png for photos; for films the input's container, or
    the first container that can hold `codec` (ProRes: .mov, FFV1: .mkv) when it cannot."""
    if video.is_file() and is_still_image(video):
        return video.with_name(f"{video.stem}.color.png")
    suffix = video.suffix.lower() if video.suffix.lower() in VIDEO_SUFFIXES else ".mkv"
    fitting = CODEC_CONTAINERS.get(codec, VIDEO_SUFFIXES)
    if suffix not in fitting:
        suffix = fitting[0]
    return video.with_name(f"{video.stem}.color{suffix}")


@contextlib.contextmanager
def _reported_errors(debug: bool) -> Iterator[None]:
    """Turn our errors and interrupts into one red line and an exit code."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with logging_redirect_tqdm():
            yield
    except VidcolorError as e:
        if debug:
            logger.exception("failed")
        typer.secho(f"Error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        typer.secho("Interrupted; no partial output was kept.", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except _Terminated:
        typer.secho("Terminated; no partial output was kept.", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(EXIT_TERMINATED) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def _setup_logging(quiet: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else (logging.ERROR if quiet else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("vidcolor").setLevel(level)


queue_app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]},
    help="A queue of reels that workers colourise, resumable after a crash: an SQLite file on "
         "this machine by default, Redis (redis:// or rediss://) for workers on several machines.")

QueueUrl = Annotated[str | None, typer.Option("--queue", envvar="VIDCOLOR_QUEUE", show_envvar=True, show_default=False, help="Queue URL: sqlite:///PATH or a file path (default: vidcolor/queue.sqlite3 in your data folder), or redis://[:PASSWORD@]HOST:PORT/DB (rediss:// for TLS).")]
Debug = Annotated[bool, typer.Option("--debug", help="Show full tracebacks and debug logs (also VIDCOLOR_DEBUG=1).")]


@queue_app.command("add")
def queue_add(
    reels: Annotated[list[Path], typer.Argument(help="Black-and-white reels to queue, one job each.", show_default=False)],
    ref: Annotated[list[str], typer.Option("--ref", "-r", help="Colour reference still for all of them. Repeat it, or give a folder, to have the best still chosen for each shot (once per reel, when a worker plans it; the worker logs the choice); 'auto' chooses from the gallery that ships with vidcolor.", show_default=False)],
    ref_map: Annotated[Path | None, typer.Option("--ref-map", help="Force the reference per shot: a file of lines 'START STILL', as for vidcolor --ref-map (read when the reel is planned).", show_default=False)] = None,
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Folder for the outputs (REEL.color.EXT). Default: beside each reel.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs that exist (otherwise such a reel is refused).")] = False,
    method: Annotated[str, typer.Option("--method", "-m", help=f"Colorizer: {', '.join(available_models())}.")] = ColorizeOptions.method,
    no_temporal: Annotated[bool, typer.Option("--no-temporal", help="Skip the temporal-consistency stage.")] = False,
    temporal_strength: Annotated[float, typer.Option("--temporal-strength", min=0.0, max=1.0, help="Temporal-consistency strength, 0..1; 0 turns the stage off.")] = TemporalOptions.strength,
    codec: Annotated[str, typer.Option("--codec", help=f"Video codec: {', '.join(CODECS)}.")] = EncodeOptions.codec,
    crf: Annotated[int, typer.Option("--crf", min=0, max=51, help="Quality for h264/h265: lower is better.")] = EncodeOptions.crf,
    preset: Annotated[str, typer.Option("--preset", help=f"Speed against quality: {', '.join(PRESETS)} (see vidcolor --help).")] = "balanced",
    encoder_preset: Annotated[str | None, typer.Option("--encoder-preset", help="x264/x265 speed preset. Default: from --preset.", show_default=False)] = None,
    chroma: Annotated[str, typer.Option("--chroma", help="Chroma subsampling: 420 or 444.")] = EncodeOptions.chroma,
    bit_depth: Annotated[int | None, typer.Option("--bit-depth", help="8 or 10 bits per sample.", show_default=False)] = None,
    pix_fmt: Annotated[str | None, typer.Option("--pix-fmt", help=f"Output pixel format instead of --chroma and --bit-depth: {', '.join(PIX_FMTS)}.", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda (on the worker).")] = "auto",
    segment_frames: Annotated[int, typer.Option("--segment-frames", min=2, help="Segment length in frames: a reel is cut at the shot cut nearest this length, each segment is saved when done and segments may run on different workers.")] = DEFAULT_SEGMENT_FRAMES,
    preview: Annotated[Path | None, typer.Option("--preview", help="Also write a contact sheet image (.png or .jpg) when the reel is done; {reel} in the path is replaced by the reel's name (needed when queueing several reels), e.g. sheets/{reel}.png.", show_default=False)] = None,
    preview_frames: Annotated[int, typer.Option("--preview-frames", min=1, max=MAX_PREVIEW_FRAMES, help="How many frames the contact sheet shows.")] = PREVIEW_FRAMES,
    report: Annotated[Path | None, typer.Option("--report", help="Also write a quality report (.html, with the .json beside it, or only .json) when the reel is done; {reel} as for --preview.", show_default=False)] = None,
    compare: Annotated[Path | None, typer.Option("--compare", help="Also write a side-by-side video (input left, output right, with the sound) when the reel is done; {reel} as for --preview.", show_default=False)] = None,
    queue: QueueUrl = None,
    debug: Debug = False,
) -> None:
    """Queue reels. The same reel with the same settings is reported, not queued twice."""
    debug = _debug_on(debug)
    for value, choices, flag in ((method, available_models(), "--method"), (codec, CODECS, "--codec"),
                                 (chroma, CHROMA_CHOICES, "--chroma"),
                                 (device, DEVICE_CHOICES, "--device")):
        _choice(value, choices, flag)
    _choice_preset(preset, encoder_preset)
    if pix_fmt is not None:
        chroma, bit_depth = _pix_fmt_knobs(pix_fmt, codec, chroma, bit_depth)
    _setup_logging(False, debug)
    try:
        opts = _preset_with_flags(preset, method, device, overwrite,
                                  0.0 if no_temporal else temporal_strength,
                                  dict(codec=codec, crf=crf, preset=encoder_preset, chroma=chroma,
                                       bit_depth=bit_depth))
    except OptionsError as e:
        raise typer.BadParameter(str(e)) from e
    by_products = {"--preview": preview, "--report": report, "--compare": compare}
    for flag, path in by_products.items():
        if path is not None and len(reels) > 1 and REEL_FIELD not in str(path):
            raise typer.BadParameter(f"'{path}' would be the same file for all {len(reels)} "
                                     f"reels; put {REEL_FIELD} in it, e.g. "
                                     f"{path.with_name(REEL_FIELD + path.suffix)}",
                                     param_hint=flag)
    refused = 0
    with _reported_errors(debug):
        reel_queue = _open_queue(queue)
        for reel in reels:
            out = default_output(reel, codec)
            out = out_dir / out.name if out_dir is not None else out
            extras = ExtrasRequest(_for_reel(preview, reel), preview_frames,
                                   _for_reel(report, reel), _for_reel(compare, reel))
            try:
                result = reel_queue.add(reel, ref, out, opts, segment_frames=segment_frames,
                                        extras=extras, ref_map=ref_map)
            except (ReferenceImageError, OptionsError):
                raise  # the same for every reel: said once, and nothing more is queued
            except VidcolorError as e:
                typer.secho(f"Error: {e}", fg=typer.colors.RED, err=True)
                refused += 1
                continue
            if result.added:
                typer.echo(f"{result.id}  queued  {reel} -> {result.out}")
            else:
                hint = "; vidcolor queue retry runs it again" if result.state in ("failed", "cancelled") else ""
                typer.echo(f"{result.id}  already {result.state}, not queued again  {reel}{hint}")
    if refused:
        raise typer.Exit(EXIT_ERROR)


def _for_reel(path: Path | None, reel: Path) -> Path | None:
    """A by-product path of `queue add` with {reel} replaced by the reel's name (no suffix)."""
    return None if path is None else Path(str(path).replace(REEL_FIELD, reel.stem))


@queue_app.command("worker")
def queue_worker(
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Segments colourised at once by this process.")] = 1,
    once: Annotated[bool, typer.Option("--once", help="Exit when nothing is left to do, instead of waiting for more.")] = False,
    allow_dir: Annotated[list[Path] | None, typer.Option("--allow-dir", help="Take only jobs whose reel, reference and output lie inside this folder (symlinks resolved); repeat for several.", show_default=False)] = None,
    keep_segments: Annotated[bool, typer.Option("--keep-segments", help="Keep each reel's segment files (in .OUT.vidcolor-work/) after joining.")] = False,
    queue: QueueUrl = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log only warnings and errors.")] = False,
    debug: Debug = False,
) -> None:
    """Colourise queued reels until stopped. Ctrl-C hands running segments back to the queue."""
    debug = _debug_on(debug)
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("vidcolor").setLevel(level)
    logging.getLogger("huey").setLevel(logging.DEBUG if debug else logging.WARNING)
    with _reported_errors(debug):
        opts = WorkerOptions(concurrency=concurrency, once=once, allow_dirs=tuple(allow_dir or ()),
                             keep_segments=keep_segments)
        _open_queue(queue).run_worker(opts)


@queue_app.command("status")
def queue_status(queue: QueueUrl = None, debug: Debug = False) -> None:
    """Show every job: its state, which worker runs it, progress in frames and ETA."""
    debug = _debug_on(debug)
    with _reported_errors(debug):
        jobs, workers = _open_queue(queue).status()
    typer.echo(_status_table(jobs, workers))


@queue_app.command("retry")
def queue_retry(
    job: Annotated[str | None, typer.Argument(help="Job ID (a unique prefix is enough).", show_default=False)] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Retry every failed job.")] = False,
    queue: QueueUrl = None,
    debug: Debug = False,
) -> None:
    """Queue a failed or cancelled job again; its finished segments are reused."""
    if (job is None) == (not failed):
        raise typer.BadParameter("give one job ID or --failed", param_hint="JOB")
    debug = _debug_on(debug)
    with _reported_errors(debug):
        reel_queue = _open_queue(queue)
        ids = reel_queue.retry_failed() if failed else [reel_queue.retry(job)]
    typer.echo("\n".join(f"{i}  queued again" for i in ids) if ids else "No failed jobs.")


@queue_app.command("cancel")
def queue_cancel(
    job: Annotated[str, typer.Argument(help="Job ID (a unique prefix is enough).", show_default=False)],
    queue: QueueUrl = None,
    debug: Debug = False,
) -> None:
    """Cancel a job; its running segments stop within a couple of seconds."""
    debug = _debug_on(debug)
    with _reported_errors(debug):
        typer.echo(f"{_open_queue(queue).cancel(job)}  cancelled")


def _debug_on(flag: bool) -> bool:
    return flag or os.environ.get("VIDCOLOR_DEBUG", "") not in ("", "0")


def _open_queue(url: str | None) -> ReelQueue:
    return ReelQueue(url or str(_user_data_dir() / "vidcolor" / "queue.sqlite3"))


def _user_data_dir() -> Path:
    """Where per-user data lives: XDG_DATA_HOME on Linux, the platform's own folder elsewhere."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def _status_table(jobs: list[JobStatus], workers: list[WorkerStatus]) -> str:
    """Jobs as a table, then a summary line of states and workers."""
    rows = [("JOB", "STATE", "PROGRESS", "ETA", "REEL")]
    for job in jobs:
        total = job.frames_total
        share = f" {100 * job.frames_done // total:3d}%" if total else ""
        progress = f"{job.frames_done}/{total or '?'} frames{share}"
        detail = f"{job.reel.name} -> {job.out}"
        if job.running_on:
            detail = f"{job.reel.name} on {', '.join(job.running_on)}"
        if job.references > 1:
            used = "" if job.references_used is None else f"{job.references_used} of "
            detail += f" ({used}{job.references} references)"
        if job.error:
            detail = f"{job.reel.name}: {job.error}"
        rows.append((job.id, job.state, progress, _clock(job.eta_s), detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[4]
             for row in rows]
    counts = {state: sum(job.state == state for job in jobs)
              for state in ("running", "queued", "done", "failed", "cancelled")}
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no jobs"
    busy = ", ".join(f"{w.name} ({w.steps}/{w.concurrency} busy, seen {w.seen_s_ago:.0f} s ago)" for w in workers)
    lines.append(f"{len(jobs)} jobs: {summary}. Workers: {busy or 'none running'}.")
    return "\n".join(lines if jobs else lines[-1:])


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def main() -> None:
    """Entry point of the `vidcolor` command; `vidcolor queue ...` goes to the queue commands.

    A film literally named "queue" can still be colourised as ./queue.
    """
    if sys.argv[1:2] == ["queue"]:
        queue_app(args=sys.argv[2:], prog_name="vidcolor queue")
    else:
        app()
