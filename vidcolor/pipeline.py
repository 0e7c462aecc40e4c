"""The whole job: decode -> colorize -> temporal -> encode, joined in one place.

This is the only module that knows every stage and decides which files each one touches.
It validates the request up front (input, reference, output) so that a user mistake fails
before any work starts, and it owns the progress bar. It prints nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import io
from .colorize import ColorizeOptions, Colorizer
from .encode import EncodeOptions, VideoWriter, check_output_path, container_format, write_still
from .errors import OptionsError
from .frames import Frame
from .temporal import TemporalFilter, TemporalOptions
from .weights import load_model

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")
TRUNCATED_FRACTION = 0.9  # fewer decoded frames than this share of the header's count: warn
COLOUR_INPUT_SPREAD = 6.0  # mean |R-G|+|G-B| (0..510) above which an input counts as colour


@dataclass(frozen=True)
class PipelineOptions:
    """Every knob of one run, one Options dataclass per stage.

    Attributes:
        colorize: how frames are colourised (method, working size, batch).
        temporal: the temporal-consistency stage (strength 0 turns it off).
        encode: codec, quality, chroma and bit depth of the output.
        device: "auto" (CUDA when present, else CPU), "cpu" or "cuda".
        overwrite: replace an existing output instead of refusing.
    """

    colorize: ColorizeOptions = field(default_factory=ColorizeOptions)
    temporal: TemporalOptions = field(default_factory=TemporalOptions)
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICE_CHOICES:
            raise OptionsError(
                f"PipelineOptions.device must be one of {DEVICE_CHOICES}, got {self.device!r}"
            )


def colorize_video(src: Path, ref: Path, out: Path, opts: PipelineOptions | None = None, *,
                   model=None, show_progress: bool = False) -> Path:
    """Colourise the film (or still) `src` with the colours of the still `ref` into `out`.

    A still input gives a still output. The output keeps the input's luminance, timing,
    size, aspect, rotation and audio; it appears under `out` only once complete.

    Args:
        src: greyscale film or photo (any container/codec FFmpeg reads; any image Pillow reads).
        ref: colour reference still.
        out: output path; its extension picks the container (or image format).
        opts: PipelineOptions; defaults if None.
        model: an already loaded model (skips loading `opts.colorize.method`).
        show_progress: draw a tqdm bar of frames, fps and ETA on stderr.

    Returns:
        `out`.

    Raises:
        VideoOpenError, ReferenceImageError, EncodeError, WeightsError, OptionsError.
    """
    opts = opts or PipelineOptions()
    src, ref, out = Path(src), Path(ref), Path(out)
    info = io.probe(src)
    check_output_path(out, src, opts.overwrite)
    reference_rgb = io.load_still(ref, role="reference")
    if info.is_still:
        return _colorize_still_file(src, reference_rgb, out, opts, model)
    container_format(out)
    with ExitStack() as stack:
        writer = stack.enter_context(VideoWriter(out, info, audio_from=src, opts=opts.encode))
        colorizer = Colorizer(model or _load(opts), reference_rgb, opts.colorize)
        decoded = _note_colour_input(io.read_frames(src), src)
        frames = TemporalFilter(opts.temporal).run(colorizer.run(decoded))
        bar = stack.enter_context(tqdm(total=info.n_frames, unit="frame", disable=not show_progress,
                                       desc=src.name, dynamic_ncols=True))
        for frame in frames:
            writer.write(frame)
            bar.update()
    if info.n_frames and writer.frames_written < TRUNCATED_FRACTION * info.n_frames:
        logger.warning("'%s' looks truncated: %d of about %d frames could be decoded; they were "
                       "colourised with the audio that came with them", src,
                       writer.frames_written, info.n_frames)
    return out


def _note_colour_input(frames: Iterator[Frame], src: Path) -> Iterator[Frame]:
    """Say once when the input already has colour: only its luminance is used."""
    for frame in frames:
        if frame.index == 0 and _has_colour(frame.source):
            logger.warning("'%s' is already in colour; its colour is replaced (only its "
                           "luminance is used)", src)
        yield frame


def _has_colour(rgb: np.ndarray) -> bool:
    small = rgb[::4, ::4].astype(np.int16)
    spread = np.abs(small[..., 0] - small[..., 1]) + np.abs(small[..., 1] - small[..., 2])
    return float(spread.mean()) > COLOUR_INPUT_SPREAD


def colorize_image(image: np.ndarray, reference: np.ndarray, *, method: str = "match",
                   device: str = "auto") -> np.ndarray:
    """Colourise one picture from one reference, in memory.

    Args:
        image: (H, W, 3) uint8 RGB; a colour input is reduced to its luminance first.
        reference: (H', W', 3) uint8 RGB colour still.
        method: one of `available_models()`.
        device: "auto", "cpu" or "cuda".

    Returns:
        (H, W, 3) uint8 RGB whose Lab lightness is the input's.
    """
    opts = PipelineOptions(colorize=ColorizeOptions(method=method), device=device)
    colorizer = Colorizer(_load(opts), reference, opts.colorize)
    return colorizer.colorize_rgb([image])[0]


def _colorize_still_file(src: Path, reference_rgb: np.ndarray, out: Path, opts: PipelineOptions,
                         model) -> Path:
    image = io.load_still(src, role="input")
    colorizer = Colorizer(model or _load(opts), reference_rgb, opts.colorize)
    return write_still(out, colorizer.colorize_rgb([image])[0])


def _load(opts: PipelineOptions):
    device = None if opts.device == "auto" else opts.device
    return _cached_model(opts.colorize.method, device)


@lru_cache(maxsize=4)
def _cached_model(name: str, device: str | None):
    """Loading is seconds of work; reuse a model across calls in one process."""
    return load_model(name, device=device)
