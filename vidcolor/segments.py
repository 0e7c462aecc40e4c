"""A film cut into segments that are colourised apart and joined: the reel queue's runs.

`plan_segments` checks a request and cuts the film at sure shot cuts (choosing the reference of
every shot once, when there are several), `colorize_segment` colourises one segment into a
video-only file and `join_reel` puts them end to end with the original audio, giving the frames
and timestamps of a one-pass `pipeline.colorize_video`. Which worker runs what is batch.py's
business; this module prints nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

from . import io
from .byproducts import ExtrasRequest, RunExtras
from .colorize import Colorizer
from .encode import VideoWriter, check_output_path
from .errors import OptionsError, VideoOpenError
from .frames import Frame, VideoInfo
from .mux import check_audio_fits, container_format, join_segments
from .pipeline import (
    TRUNCATED_FRACTION,
    PipelineOptions,
    load_model_for,
    run_identity,
    run_stages,
)
from .references import (
    ReferencePlan,
    expand_references,
    plan_references,
    read_reference_map,
)
from .temporal import ShotCutTest, TemporalOptions

logger = logging.getLogger(__name__)

SURE_CUT_MARGIN = 0.02  # histogram distance (0..1) beyond the temporal cut threshold: a sure cut


def _check_references(ref: Path | str | Sequence[Path | str],
                     ref_map: Path | None = None) -> list[Path]:
    """Check, before any work, that every reference still can be read (those a folder holds,
    `auto`'s gallery, and those the mapping file names) and that the mapping file parses.

    Returns:
        The stills (`references.expand_references`).

    Raises:
        ReferenceImageError: a still is missing or unreadable; OptionsError: a bad map.
    """
    stills = expand_references([ref] if isinstance(ref, str | Path) else ref)
    forced = [] if ref_map is None else read_reference_map(ref_map, stills)
    for still in dict.fromkeys([*stills, *(still for _, still in forced)]):
        io.load_still(still, role="reference")
    return stills


def check_film_request(src: Path, ref: Path | str | Sequence[Path | str], out: Path,
                       opts: PipelineOptions | None = None, *,
                       ref_map: Path | None = None) -> VideoInfo:
    """The checks a film run makes before any work, for runs that start later (the queue).

    Args:
        src: the film; out: the output; opts: PipelineOptions, defaults if None.
        ref: a still, or a list of stills and folders, or "auto".
        ref_map: a mapping file forcing the reference from given times on, or None.

    Returns:
        The film's VideoInfo.

    Raises:
        VideoOpenError: not a film (a still, or not media); ReferenceImageError: a reference
        cannot be read; OptionsError: a bad mapping file; EncodeError: the output is taken,
        unwritable, or cannot hold the audio.
    """
    opts = opts or PipelineOptions()
    src, out = Path(src), Path(out)
    info = io.probe(src)
    if info.is_still:
        raise VideoOpenError(f"'{src}' is a still image, not a film; colourise it directly "
                             f"with `vidcolor {src.name} --ref STILL`")
    check_output_path(out, src, opts.overwrite)
    _check_references(ref, ref_map)
    container_format(out)
    check_audio_fits(src, out)
    return info


def plan_segments(src: Path, ref: Path | str | Sequence[Path | str] | ReferencePlan, out: Path,
                  opts: PipelineOptions | None = None, *, segment_frames: int = 1440,
                  ref_map: Path | None = None, model=None,
                  on_plan: Callable[[ReferencePlan], None] | None = None) -> list[tuple[int, int]]:
    """Check a film request up front and split the film into segments to encode apart.

    A boundary is put at a shot cut where one lies within half a segment of the target length:
    the temporal stage restarts at such a cut anyway, so segments processed apart give the
    frames of a one-pass run. A shot longer than that is split every `segment_frames` frames,
    and the temporal stage restarts there. Decodes the whole film once (no colourising); with
    several references (or a map) the same pass chooses the reference of every shot, as
    `colorize_video` does. Every sure cut is one of the plan's cuts, so a segment's shots are
    the plan's, and a shot split in two keeps its still.

    Args:
        src: greyscale film (not a still).
        ref: colour reference still; or a list of stills and folders, or "auto"; or a
            ReferencePlan already made for this film (kept as it is: nothing is scored).
        out: the final output path (checked like `colorize_video` does).
        opts: PipelineOptions; defaults if None.
        segment_frames: target segment length in frames, >= 2.
        ref_map: a mapping file forcing the reference from given times on (ignored with a
            ReferencePlan).
        model: an already loaded model to score the references with (skips loading it).
        on_plan: called with the new reference plan, when there was a choice to make.

    Returns:
        [(start, stop), ...]: frame indices in decode order, stop exclusive, covering the film.

    Raises:
        VideoOpenError, ReferenceImageError, EncodeError, OptionsError.
    """
    opts = opts or PipelineOptions()
    src, out = Path(src), Path(out)
    if segment_frames < 2:
        raise OptionsError(f"segment_frames must be >= 2, got {segment_frames}")
    known = ref if isinstance(ref, ReferencePlan) else None
    if known is not None:
        ref, ref_map = list(known.references), None
    info = check_film_request(src, ref, out, opts, ref_map=ref_map)
    stills = expand_references([ref] if isinstance(ref, str | Path) else ref)
    scan, plan = _ShotScan(opts.temporal), None
    with contextlib.closing(io.read_frames(src)) as decoded:
        frames = scan.watch(decoded)
        if known is None and (len(stills) > 1 or ref_map is not None):
            plan = plan_references(src, stills, model or load_model_for(opts), opts.temporal, info,
                                   ref_map, frames)
        else:
            for _ in frames:
                pass
    if info.n_frames and scan.count < TRUNCATED_FRACTION * info.n_frames:
        logger.warning("'%s' looks truncated: %d of about %d frames could be decoded", src,
                       scan.count, info.n_frames)
    if plan is not None and on_plan is not None:
        on_plan(plan)
    return _segment_bounds(scan.count, scan.cuts, segment_frames)


def colorize_segment(src: Path, ref: Path | ReferencePlan, seg_out: Path, start_index: int,
                     stop_index: int, opts: PipelineOptions | None = None, *, model=None,
                     on_frame: Callable[[int], None] | None = None) -> int:
    """Colourise frames [start_index, stop_index) of `src` into the video-only file `seg_out`.

    The segment starts with a keyframe, keeps its frames' source timestamps and has no audio,
    so that `encode.join_segments` can put segments end to end. The temporal stage starts
    afresh at `start_index`. Like every output, `seg_out` appears only once complete.

    Args:
        src: the film.
        ref: the colour reference still, or the reel's ReferencePlan (`plan_segments`): each
            frame is coloured by `plan.reference_at(index)`; only the stills of this segment's
            shots are read, each encoded once.
        seg_out: segment file; its extension picks the container (use the final output's).
        start_index, stop_index: frame indices in decode order, stop exclusive.
        opts: PipelineOptions; defaults if None.
        model: an already loaded model (skips loading `opts.colorize.method`).
        on_frame: called after each frame with the count written so far; an exception it
            raises stops the segment and nothing is kept.

    Returns:
        The number of frames written (stop_index - start_index).

    Raises:
        VideoOpenError: the film no longer has those frames; and as `colorize_video`.
    """
    opts = opts or PipelineOptions()
    src, seg_out = Path(src), Path(seg_out)
    plan = ref if isinstance(ref, ReferencePlan) else ReferencePlan.single(Path(ref))
    references_rgb, reference_of = plan.read_stills(start_index, stop_index)
    info = io.probe(src)
    with ExitStack() as stack:
        writer = stack.enter_context(VideoWriter(seg_out, info, audio_from=None,
                                                 opts=opts.encode))
        colorizer = Colorizer(model or load_model_for(opts), references_rgb, opts.colorize,
                              info.upright_turns)
        decoded = stack.enter_context(contextlib.closing(io.read_frames(src)))
        wanted = itertools.islice(decoded, start_index, stop_index)
        frames = stack.enter_context(contextlib.closing(run_stages(wanted, colorizer, opts,
                                                                reference_of)))
        for frame in frames:
            writer.write(frame)
            if on_frame is not None:
                on_frame(writer.frames_written)
        if writer.frames_written != stop_index - start_index:
            raise VideoOpenError(f"'{src}' has changed: frames {start_index}..{stop_index - 1} "
                                 f"could not all be decoded; plan the film again")
    return writer.frames_written


def join_reel(src: Path, segment_files: list[Path], out: Path,
              opts: PipelineOptions | None = None, *,
              ref: Path | ReferencePlan | None = None) -> Path:
    """Join the segments `colorize_segment` wrote, in order, into `out` with the film's audio.

    With `ref` (the reference still the segments were made with, or their ReferencePlan),
    `out` gets the provenance tag and sidecar of `colorize_video` (with a plan: every still
    used, and the plan); its start time is then the join's.

    Raises:
        EncodeError: `out` exists (without `opts.overwrite`), a segment does not fit, a write
            failure or an audio mismatch.
        ReferenceImageError: a reference cannot be read.
    """
    opts = opts or PipelineOptions()
    src, out = Path(src), Path(out)
    check_output_path(out, src, opts.overwrite)
    extras = None if ref is None else RunExtras(src, ref, out, io.probe(src), ExtrasRequest(),
                                                run_identity(opts, None))
    count = join_segments([Path(p) for p in segment_files], out, audio_from=src,
                          metadata=None if extras is None else extras.tag)
    if extras is not None:
        extras.finish(None, count)
    return out


class _ShotScan:
    """Counts the frames passing by and notes those where the temporal stage surely starts a
    new shot.

    This applies TemporalFilter's own histogram test (not its flow test), with a margin, so
    a frame noted here is one where a one-pass run resets its history too.
    """

    def __init__(self, temporal: TemporalOptions) -> None:
        self.temporal = temporal
        self.count = 0  # frames seen
        self.cuts: list[int] = []  # indices of the frames that surely start a shot
        self._sure_cuts = ShotCutTest(temporal, margin=SURE_CUT_MARGIN)

    def watch(self, frames: Iterator[Frame]) -> Iterator[Frame]:
        """Pass `frames` on unchanged, looking at each one."""
        for frame in frames:
            self.count += 1
            if self.temporal.strength != 0.0 and self._sure_cuts.starts_shot(frame.source) \
                    and self.count > 1:  # without a temporal stage every boundary is exact
                self.cuts.append(frame.index)
            yield frame


def _segment_bounds(n_frames: int, cuts: list[int], segment_frames: int) -> list[tuple[int, int]]:
    """Segment (start, stop) pairs: at the cut nearest the target length, else at the target."""
    starts = [0]
    while n_frames - starts[-1] > segment_frames:
        target = starts[-1] + segment_frames
        low, high = target - segment_frames // 2, min(target + segment_frames // 2, n_frames - 1)
        near = [cut for cut in cuts if low <= cut <= high]
        starts.append(min(near, key=lambda cut: abs(cut - target), default=target))
    return list(zip(starts, starts[1:] + [n_frames], strict=True))
