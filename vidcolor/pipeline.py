"""The whole job: decode -> colorize -> temporal -> encode, joined in one place.

This is the module that knows every stage and decides which files each one touches (segments.py
runs the same stages, `run_stages`, on part of a film for the reel queue). It validates the
request up front (input, reference, output) so that a user mistake fails before any work
starts, and it owns the progress bar. It prints nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import io
from .byproducts import ExtrasRequest, RunExtras, RunIdentity, check_extras
from .colorize import ColorizeOptions, Colorizer
from .encode import EncodeOptions, VideoWriter, check_output_path, write_still
from .errors import OptionsError
from .frames import Frame
from .mux import container_format
from .preview import PREVIEW_FRAMES
from .provenance import TAG_KEY
from .references import ReferencePlan, expand_references, plan_references
from .temporal import TemporalFilter, TemporalOptions
from .threads import in_thread
from .weights import MODEL_DIR_ENV, backbone_weights_path, load_model, shipped_weights_path

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")
TRUNCATED_FRACTION = 0.9  # fewer decoded frames than this share of the header's count: warn
COLOUR_INPUT_SPREAD = 6.0  # mean |R-G|+|G-B| (0..510) above which an input counts as colour
STAGE_QUEUE_FRAMES = 4  # frames waiting between two stages: lets them overlap, bounds memory
# Speed presets: the knobs each one sets; everything else keeps its Options default. "balanced"
# is the defaults themselves. The measured trade is in BENCHMARKS.md ("Speed and scale").
PRESETS = {
    "fast": {"colorize": {"work_side_px": 192},  # (256/192)^2 = 1.8x fewer matching positions
             "temporal": {},  # a lighter solve saved ~5 ms/frame at 480p but let flicker through
             "encode": {"preset": "veryfast"}},
    "balanced": {"colorize": {}, "temporal": {}, "encode": {}},
    "best": {"colorize": {"work_side_px": 320},
             "temporal": {"flow_max_side_px": 480, "solver_iterations": 6},
             "encode": {"preset": "slow"}},
}


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

    @classmethod
    def from_dict(cls, data: dict) -> PipelineOptions:
        """Rebuild options from `dataclasses.asdict(opts)`, as the reel queue stores them."""
        return cls(**{f.name: type(f.default_factory())(**data[f.name])
                      if f.default_factory is not MISSING else data[f.name] for f in fields(cls)})


def preset_options(preset: str = "balanced", method: str = ColorizeOptions.method, *,
                   device: str = "auto", overwrite: bool = False) -> PipelineOptions:
    """The options of a speed preset, to refine with `dataclasses.replace`.

    "fast" colourises at a 192-px working size instead of 256 (1.8x fewer matching positions)
    and encodes with x264 "veryfast" (bigger files at the same CRF), keeping the default
    temporal stage: 1.4-2.0x faster end to end (BENCHMARKS.md), colour edges slightly blurrier.
    "balanced" (the default) is the Options defaults. "best" colourises at a 320-px working
    size, runs the temporal stage on a 480-px grid with 6 iterations and encodes with x264
    "slow" (smaller files): 1.5-1.8x slower, for finer colour detail.

    Args:
        preset: one of PRESETS.
        method: colouriser, one of `available_models()`.
        device: "auto", "cpu" or "cuda".
        overwrite: replace an existing output.

    Raises:
        OptionsError: an unknown preset (the choices are listed).
    """
    if preset not in PRESETS:
        raise OptionsError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    knobs = PRESETS[preset]
    return PipelineOptions(colorize=ColorizeOptions(method=method, **knobs["colorize"]),
                           temporal=TemporalOptions(**knobs["temporal"]),
                           encode=EncodeOptions(**knobs["encode"]),
                           device=device, overwrite=overwrite)


def colorize_video(src: Path, ref: Path | str | Sequence[Path | str], out: Path,
                   opts: PipelineOptions | None = None, *,
                   model=None, show_progress: bool = False, preview: Path | None = None,
                   preview_frames: int = PREVIEW_FRAMES, report: Path | None = None,
                   compare: Path | None = None, ref_map: Path | None = None,
                   on_plan: Callable[[ReferencePlan], None] | None = None) -> Path:
    """Colourise the film (or still) `src` with the colours of the still(s) `ref` into `out`.

    A still input gives a still output. The output keeps the input's luminance, timing,
    size, aspect, rotation and audio; it appears under `out` only once complete. Then the
    provenance sidecar `OUT.vidcolor.json` is written beside it (and the output carries a
    "comment" metadata tag naming vidcolor, the model and the references' sha256).

    With several references (or a folder, or "auto" for the shipped gallery) the film is
    decoded once more first, to choose the best reference for every shot
    (`references.plan_references`); the temporal stage restarts at those cuts anyway.

    Args:
        src: greyscale film or photo (any container/codec FFmpeg reads; any image Pillow reads).
        ref: colour reference still; or a list of stills and folders; or "auto".
        out: output path; its extension picks the container (or image format).
        opts: PipelineOptions; defaults if None.
        model: an already loaded model (skips loading `opts.colorize.method`).
        show_progress: draw a tqdm bar of frames, fps and ETA on stderr.
        preview: also write a contact sheet here (.png, .jpg, .webp, .tif): `preview_frames`
            evenly spaced frames, input above output, beside the reference(s).
        preview_frames: frames on the contact sheet, 1..48.
        report: also write a QA report here: .html (writes the .json beside it too) or .json.
        compare: also write a side-by-side video here (input | output, H.264, with the sound);
            for a still input, a side-by-side image.
        ref_map: a mapping file forcing the reference from given times on
            (`references.read_reference_map`); it also makes a single `ref` go through the plan.
        on_plan: called with the reference plan before colourising (to print it); only
            when there is a choice to make (several references or a map).

    Returns:
        `out`.

    Raises:
        VideoOpenError, ReferenceImageError, EncodeError, WeightsError, OptionsError.
    """
    opts = opts or PipelineOptions()
    src, out = Path(src), Path(out)
    stills = expand_references([ref] if isinstance(ref, str | Path) else ref)
    request = ExtrasRequest(preview, preview_frames, report, compare)
    info = io.probe(src)
    check_output_path(out, src, opts.overwrite)
    check_extras(request, src, out, info, opts.overwrite)
    image = io.load_still(src, role="input") if info.is_still else None  # read once
    if len(stills) == 1 and ref_map is None:
        plan = ReferencePlan.single(stills[0])
    else:
        decoded = None if image is None else [Frame(index=0, pts=None, source=image)]
        plan = plan_references(src, stills, model or load_model_for(opts), opts.temporal, info,
                               ref_map, decoded)
        if on_plan is not None:
            on_plan(plan)
    references_rgb, reference_of = plan.read_stills()
    extras = RunExtras(src, plan, out, info, request, run_identity(opts, model),
                       model=(model or load_model_for(opts)) if report is not None else None)
    if info.is_still:
        extras.add(_colorize_still_file(image, references_rgb[0], out, opts, model, extras.tag))
        extras.finish(references_rgb, 1)
        return out
    container_format(out)
    with ExitStack() as stack:
        extras.open_compare(stack)  # entered first, so the output is finished before it
        writer = stack.enter_context(VideoWriter(out, info, audio_from=src, opts=opts.encode,
                                                 metadata=extras.tag))
        colorizer = Colorizer(model or load_model_for(opts), references_rgb, opts.colorize,
                              info.upright_turns)
        decoded = _note_colour_input(io.read_frames(src), src)
        frames = stack.enter_context(contextlib.closing(run_stages(decoded, colorizer, opts,
                                                                reference_of)))
        bar = stack.enter_context(tqdm(total=info.n_frames, unit="frame", disable=not show_progress,
                                       desc=src.name, dynamic_ncols=True))
        for frame in frames:
            writer.write(frame)
            extras.add(frame)
            bar.update()
    if info.n_frames and writer.frames_written < TRUNCATED_FRACTION * info.n_frames:
        logger.warning("'%s' looks truncated: %d of about %d frames could be decoded; they were "
                       "colourised with the audio that came with them", src,
                       writer.frames_written, info.n_frames)
    extras.finish(references_rgb, writer.frames_written)
    return out


def run_identity(opts: PipelineOptions, model) -> RunIdentity:
    """The model, weights files and settings of a run, for its provenance and report."""
    if model is not None:  # handed over in memory: its files are not known
        name, weights = model.config.kind, []
    else:  # every colouriser runs on the backbone; a learned one has its own file too
        name = opts.colorize.method
        weights = [] if name == "match" else [(name, shipped_weights_path(name)[0])]
        weights.append(("backbone", backbone_weights_path()))
    return RunIdentity(name, weights, dataclasses.asdict(opts), opts.temporal)


def run_stages(decoded: Iterator[Frame], colorizer: Colorizer, opts: PipelineOptions,
            reference_of: Callable[[int], int] | None = None) -> Iterator[Frame]:
    """Colorize and temporal stages, each in its own thread (`threads.in_thread`).

    Decode (its own thread in `io`), colorize, temporal and the caller's encode loop run at
    the same time. Close the returned generator to stop every stage. `reference_of` maps a
    frame index to the colorizer's reference (None: its only one).
    """
    colored = in_thread(lambda frames: colorizer.run(frames, reference_of), decoded,
                        STAGE_QUEUE_FRAMES, "vidcolor-colorize")
    smoother = TemporalFilter(opts.temporal)
    return in_thread(smoother.run, colored, STAGE_QUEUE_FRAMES, "vidcolor-temporal")


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




def colorize_image(image: np.ndarray, reference: np.ndarray, *, method: str = "net",
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
    colorizer = Colorizer(load_model_for(opts), reference, opts.colorize)
    return colorizer.colorize_rgb([image])[0]


def _colorize_still_file(image: np.ndarray, reference_rgb: np.ndarray, out: Path,
                         opts: PipelineOptions, model, tag: dict[str, str]) -> Frame:
    """Colourise a still image ((H, W, 3) uint8 RGB) into `out`; returns it as a one-frame
    Frame for the by-products."""
    colorizer = Colorizer(model or load_model_for(opts), reference_rgb, opts.colorize)
    color = colorizer.colorize_rgb([image])[0]
    write_still(out, color, comment=tag.get(TAG_KEY))
    return Frame(index=0, pts=None, source=image, color=color)


def load_model_for(opts: PipelineOptions):
    """The model `opts` asks for, on its device; loaded once per process and reused."""
    device = None if opts.device == "auto" else opts.device
    return _cached_model(opts.colorize.method, device, os.environ.get(MODEL_DIR_ENV))


@lru_cache(maxsize=4)
def _cached_model(name: str, device: str | None, model_dir: str | None):
    """Loading is seconds of work; reuse a model across calls in one process. `model_dir`
    (where the weights are looked for first) is part of the key: other files, another load."""
    return load_model(name, device=device)
