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
from pathlib import Path
from typing import Annotated

import typer
from tqdm.contrib.logging import logging_redirect_tqdm

from . import __version__
from .colorize import ColorizeOptions
from .encode import CHROMA_CHOICES, CODECS, X26X_PRESETS, EncodeOptions
from .errors import OptionsError, VidcolorError
from .io import is_still_image
from .pipeline import DEVICE_CHOICES, PipelineOptions, colorize_video
from .temporal import TemporalOptions
from .weights import available_models

logger = logging.getLogger("vidcolor")

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v")  # a default output keeps these containers

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
    ref: Annotated[Path, typer.Option("--ref", "-r", help="Colour reference still whose colours are transferred.", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file. Default: VIDEO.color.mp4 beside the input (same container as the input when it is .mp4/.mov/.mkv; a photo gets VIDEO.color.png).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists (otherwise vidcolor refuses).")] = False,
    method: Annotated[str, typer.Option("--method", "-m", help=f"Colorizer: {', '.join(available_models())}. 'match' is training-free exemplar matching.")] = ColorizeOptions.method,
    no_temporal: Annotated[bool, typer.Option("--no-temporal", help="Skip the temporal-consistency stage (same as --temporal-strength 0).")] = False,
    temporal_strength: Annotated[float, typer.Option("--temporal-strength", min=0.0, max=1.0, help="How hard colour is pulled toward the motion-compensated previous frame, 0..1. Higher removes more flicker but may let colour lag on fast motion; 0 turns the stage off.")] = TemporalOptions.strength,
    codec: Annotated[str, typer.Option("--codec", help=f"Video codec: {', '.join(CODECS)} (ffv1 is lossless, prores is 10-bit).")] = EncodeOptions.codec,
    crf: Annotated[int, typer.Option("--crf", min=0, max=51, help="Quality for h264/h265: lower is better and bigger; 18 is visually lossless.")] = EncodeOptions.crf,
    preset: Annotated[str, typer.Option("--preset", help="x264/x265 speed preset: slower gives smaller files at the same quality.")] = EncodeOptions.preset,
    chroma: Annotated[str, typer.Option("--chroma", help="Chroma subsampling: 420 (plays everywhere) or 444 (full colour resolution).")] = EncodeOptions.chroma,
    bit_depth: Annotated[int | None, typer.Option("--bit-depth", help="8 or 10 bits per sample. Default: 8 for h264, the input's depth otherwise.", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu or cuda.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; only errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and debug logs (also VIDCOLOR_DEBUG=1).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Colourise VIDEO with the colours of one reference still.

    Example: vidcolor film.mp4 --ref still.jpg   (writes film.color.mp4)
    """
    debug = debug or os.environ.get("VIDCOLOR_DEBUG", "") not in ("", "0")
    _choice(method, available_models(), "--method")
    _choice(codec, CODECS, "--codec")
    _choice(preset, X26X_PRESETS, "--preset")
    _choice(chroma, CHROMA_CHOICES, "--chroma")
    _choice(device, DEVICE_CHOICES, "--device")
    _setup_logging(quiet, debug)
    with _reported_errors(debug):
        try:
            opts = PipelineOptions(
                colorize=ColorizeOptions(method=method),
                temporal=TemporalOptions(strength=0.0 if no_temporal else temporal_strength),
                encode=EncodeOptions(codec=codec, crf=crf, preset=preset, chroma=chroma,
                                     bit_depth=bit_depth),
                device=device,
                overwrite=overwrite,
            )
        except OptionsError as e:
            raise typer.BadParameter(str(e)) from e
        target = out or default_output(video)
        colorize_video(video, ref, target, opts, show_progress=not quiet)
        typer.echo(str(target))


def default_output(video: Path) -> Path:
    """VIDEO.color.EXT beside the input: .png for photos, the input's container for films."""
    if video.is_file() and is_still_image(video):
        return video.with_name(f"{video.stem}.color.png")
    suffix = video.suffix.lower() if video.suffix.lower() in VIDEO_SUFFIXES else ".mkv"
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


def main() -> None:
    """Entry point of the `vidcolor` command."""
    app()
