"""A run's by-products besides its output: contact sheet, QA report, side-by-side video, sidecar.

Owns checking their paths before any work, feeding them the frames as they reach the encoder
(the film is decoded once), and writing them when the output is complete: the sheet and report,
then the provenance sidecar last, so that a sidecar only ever vouches for a finished output.
For an output put together from pieces (the queue's joined segments) they are made afterwards
from the finished file and its input, each decoded once (`extras_from_files`).
What each one contains is decided in `preview`, `report` and `provenance`; which model and
weights a run used is told by the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import cv2
import numpy as np

from . import io
from .encode import EncodeOptions, VideoWriter, check_output_path, write_still
from .errors import EncodeError, ReferenceImageError
from .frames import Frame, VideoInfo, turned
from .mux import check_audio_fits, container_format
from .preview import (
    PREVIEW_FRAMES,
    ContactSheet,
    check_preview_frames,
    check_sheet_path,
    side_by_side,
    side_by_side_info,
)
from .provenance import (
    TAG_KEY,
    RunFacts,
    metadata_tag,
    sha256_file,
    sidecar_path,
    utc_now,
    write_sidecar,
    write_text_atomic,
)
from .references import Describer, Descriptor, ReferencePlan, score
from .report import QualityMonitor, report_paths
from .temporal import ResetTest, TemporalOptions

COMPARE_ENCODE = EncodeOptions(crf=20, preset="veryfast")  # the side-by-side video: for viewing
PANEL_STILL_PX = 360  # height of each reference still on a contact sheet with several


@dataclass(frozen=True)
class ExtrasRequest:
    """Which by-products a run writes besides its output (none by default).

    Attributes:
        preview: contact sheet image (.png, .jpg, .webp, .tif), or None.
        preview_frames: frames on the contact sheet, 1..MAX_PREVIEW_FRAMES.
        report: QA report, .html (plus the .json beside it) or .json, or None.
        compare: side-by-side video (input | output, with the sound), or for a still input a
            side-by-side image; None for none.
    """

    preview: Path | None = None
    preview_frames: int = PREVIEW_FRAMES
    report: Path | None = None
    compare: Path | None = None

    def __post_init__(self) -> None:
        check_preview_frames(self.preview_frames)


@dataclass(frozen=True)
class RunIdentity:
    """What the pipeline knows about how the output is made, for provenance and the report.

    Attributes:
        model_name: the colouriser ("match", "net", ...).
        weights: (role, path) of every weights file the model came from; empty if unknown.
        settings: the run's PipelineOptions as a dict (`dataclasses.asdict`).
        temporal: the run's TemporalOptions (the report's cut test is the temporal stage's).
    """

    model_name: str
    weights: list[tuple[str, Path]]
    settings: dict
    temporal: TemporalOptions


def check_extras(request: ExtrasRequest, src: Path, out: Path, info: VideoInfo,
                 overwrite: bool) -> None:
    """Refuse a contact sheet, report or comparison path that is unusable, before any work.

    Raises:
        EncodeError: bad extension, missing or unwritable folder, an existing file (without
            `overwrite`), a path that is also the output, its sidecar or another by-product,
            or a comparison video whose container cannot hold the input's audio.
    """
    paths = []
    if request.preview is not None:
        check_sheet_path(request.preview)
        paths.append(Path(request.preview))
    if request.report is not None:
        paths.extend(report_paths(request.report))
    if request.compare is not None:
        if info.is_still:
            check_sheet_path(request.compare)
        else:
            container_format(request.compare)
            check_audio_fits(src, request.compare)
        paths.append(Path(request.compare))
    taken = {Path(out).resolve(), sidecar_path(out).resolve()}
    for path in paths:
        check_output_path(path, src, overwrite)
        if path.resolve() in taken:
            raise EncodeError(f"'{path}' is already used by this run's output or another "
                              f"by-product; choose another name")
        taken.add(path.resolve())


class RunExtras:
    """Collect frames for the requested by-products and write them, then the sidecar.

    Args:
        src, out: the run's input and output.
        ref: the reference still, or the plan of which still colours which shot.
        info: the input's VideoInfo.
        request: the by-products to write (paths already checked by `check_extras`).
        identity: model, weights and settings of the run.
        model: the colouriser, to measure the report's match confidence; None: not measured.

    Raises:
        ReferenceImageError: a reference cannot be read to hash it.
    """

    def __init__(self, src: Path, ref: Path | ReferencePlan, out: Path, info: VideoInfo,
                 request: ExtrasRequest, identity: RunIdentity, model=None) -> None:
        self.plan = ref if isinstance(ref, ReferencePlan) else ReferencePlan.single(Path(ref))
        self.refs = [self.plan.references[i] for i in self.plan.used()]  # the stills used
        self.src, self.ref, self.out, self.info = Path(src), self.refs[0], Path(out), info
        self.request, self.identity = request, identity
        self.started = utc_now()
        self.ref_sha256s = []
        for still in self.refs:
            try:
                self.ref_sha256s.append(sha256_file(still))
            except OSError as e:
                raise ReferenceImageError(f"Cannot read the reference '{still}': {e}") from e
        self.ref_sha256 = self.ref_sha256s[0]
        self.tag = {TAG_KEY: metadata_tag(identity.model_name, ",".join(self.ref_sha256s))}
        self.sheet = None if request.preview is None else ContactSheet(
            request.preview_frames, info.n_frames, info.time_base, info.sample_aspect,
            info.rotation_deg)
        cuts = ResetTest(identity.temporal)  # where the temporal stage restarts, if it ran

        def starts_shot(frame: Frame) -> bool:  # the stage's own mark saves a flow per frame
            return cuts.starts_shot(frame.source) if frame.shot_start is None else frame.shot_start

        self.monitor = None if request.report is None else QualityMonitor(
            starts_shot, info.time_base, info.fps,
            reference=lambda index: self.plan.references[self.plan.reference_at(index)].name,
            match_confidence=None if model is None else MatchConfidence(model, self.plan,
                                                                        info.upright_turns))
        self.compare_writer: VideoWriter | None = None

    def open_compare(self, stack: ExitStack) -> None:
        """Start the side-by-side video, if asked for; it is finished when `stack` closes."""
        if self.request.compare is not None and not self.info.is_still:
            self.compare_writer = stack.enter_context(VideoWriter(
                self.request.compare, side_by_side_info(self.info), audio_from=self.src,
                opts=COMPARE_ENCODE, metadata=self.tag))

    def add(self, frame: Frame) -> None:
        """Offer the next output frame (`source` and `color` set), in order."""
        for collector in (self.sheet, self.monitor):
            if collector is not None:
                collector.add(frame)
        if self.compare_writer is not None:
            self.compare_writer.write(side_by_side(frame, self.info.rotation_deg))
        elif self.request.compare is not None:  # a still input: one side-by-side image
            write_still(self.request.compare, side_by_side(frame).color,
                        comment=self.tag[TAG_KEY])

    def finish(self, reference_rgb: np.ndarray | list[np.ndarray] | None,
               frames_written: int) -> None:
        """Write the sheet and the report, then the sidecar; call once the output is complete.

        Args:
            reference_rgb: (H, W, 3) uint8 RGB reference still shown on the sheet, or the
                stills used, in `plan.used()` order (tiled); None when no sheet was asked for.
            frames_written: frames in the output.

        Raises:
            EncodeError: a file cannot be written (the sidecar is still written if it can).
        """
        request = self.request
        written = {} if request.compare is None else {"compare": Path(request.compare)}
        try:
            if self.sheet is not None:
                written["preview"] = self.sheet.save(request.preview,
                                                     reference_panel(reference_rgb))
            if self.monitor is not None:
                for path, text in self.monitor.documents(request.report,
                                                         self._report_header()).items():
                    write_text_atomic(path, text)
                written["report"] = Path(request.report)
        finally:
            write_sidecar(RunFacts(
                src=self.src, ref=self.ref, out=self.out, model_name=self.identity.model_name,
                weights=self.identity.weights, settings=self.identity.settings,
                started=self.started, finished=utc_now(), frames_written=frames_written,
                ref_sha256=self.ref_sha256, extra_outputs=written,
                more_refs=list(zip(self.refs[1:], self.ref_sha256s[1:], strict=True)),
                reference_plan=None if len(self.plan.references) == 1 and not any(
                    s.forced for s in self.plan.shots) else self.plan.to_dict()))

    def _report_header(self) -> dict:
        return {"input": str(self.src), "output": str(self.out),
                "reference": ", ".join(map(str, self.refs)),
                "reference_sha256": ", ".join(self.ref_sha256s),
                "model": self.identity.model_name,
                "temporal_strength": self.identity.temporal.strength,
                "provenance": str(sidecar_path(self.out))}


def reference_panel(stills: np.ndarray | list[np.ndarray] | None) -> np.ndarray | None:
    """One image of the reference stills for the contact sheet: side by side in rows of two,
    each scaled to the same height; a single still as it is."""
    if stills is None or isinstance(stills, np.ndarray):
        return stills
    if len(stills) == 1:
        return stills[0]
    height = min(PANEL_STILL_PX, *(s.shape[0] for s in stills))
    scaled = [cv2.resize(s, (max(1, round(s.shape[1] * height / s.shape[0])), height),
                         interpolation=cv2.INTER_AREA) for s in stills]
    rows = [scaled[i : i + 2] for i in range(0, len(scaled), 2)]
    width = max(sum(s.shape[1] for s in row) for row in rows)
    panel = np.full((height * len(rows), width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        x = 0
        for still in row:
            panel[r * height : (r + 1) * height, x : x + still.shape[1]] = still
            x += still.shape[1]
    return panel


class MatchConfidence:
    """The report's match confidence of a frame: the §4 local term of the reference that
    coloured it (each reference described once); frames are described upright, as the film is
    shown (`upright_turns`: VideoInfo's), like the stills."""

    def __init__(self, model, plan: ReferencePlan, upright_turns: int = 0) -> None:
        self.describer, self.plan = Describer(model), plan
        self.upright_turns = upright_turns
        self._refs: dict[int, Descriptor] = {}

    def __call__(self, frame: Frame) -> float:
        index = self.plan.reference_at(frame.index)
        if index not in self._refs:
            still = io.load_still(self.plan.references[index], role="reference")
            self._refs[index] = self.describer.describe_rgb(still)
        upright = turned(frame.source, self.upright_turns)
        return score(self.describer.describe_rgb(upright), self._refs[index]).match


def extras_from_files(src: Path, ref: Path | ReferencePlan, out: Path, request: ExtrasRequest,
                      identity: RunIdentity, *, model=None,
                      on_frame: Callable[[int], None] | None = None) -> int:
    """Make the by-products of a finished film output from the files, then rewrite its sidecar.

    For an output that was not encoded in one pass (the queue joins segments): `src` and
    `out` are decoded once, side by side, and each pair is offered to the contact sheet, the
    report and the side-by-side video as `colorize_video` offers its frames; the report thus
    measures the encoded output. Every file appears atomically; the sidecar is written last
    and names them. Paths are not checked here (`check_extras` did that before the output
    was made); existing by-products are replaced.

    Args:
        src: the input film; out: the finished output.
        ref: the colour reference still, or the plan of which still coloured which shot.
        request: the by-products to write (at least one path set).
        identity: model, weights and settings the output was made with.
        model: the colouriser, to measure the report's match confidence; None: not measured.
        on_frame: called after each frame with the count so far; an exception it raises
            stops the work and nothing new is kept.

    Returns:
        Frames in the output.

    Raises:
        VideoOpenError: `src` or `out` cannot be decoded; EncodeError: they differ in frame
        count or size, or a file cannot be written; ReferenceImageError: a reference cannot
        be read.
    """
    src, out = Path(src), Path(out)
    info = io.probe(src)
    extras = RunExtras(src, ref, out, info, request, identity,
                       model=model if request.report is not None else None)
    reference_rgb = None if request.preview is None else extras.plan.read_stills()[0]
    count = 0
    with ExitStack() as stack:
        extras.open_compare(stack)
        sources = stack.enter_context(closing(io.read_frames(src)))
        outputs = stack.enter_context(closing(io.read_frames(out)))
        for source, output in zip_longest(sources, outputs):
            if source is None or output is None or output.source.shape != source.source.shape:
                raise EncodeError(f"'{out}' does not match its input '{src}' (frame {count} "
                                  f"differs in size or is missing); make the output again")
            extras.add(source.with_color(output.source))  # the output's RGB is its colour
            count += 1
            if on_frame is not None:
                on_frame(count)
    extras.finish(reference_rgb, count)
    return count
