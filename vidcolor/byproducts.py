"""A run's by-products besides its output: contact sheet, QA report, side-by-side video, sidecar.

Owns checking their paths before any work, feeding them the frames as they reach the encoder
(the film is decoded once), and writing them when the output is complete: the sheet and report,
then the provenance sidecar last, so that a sidecar only ever vouches for a finished output.
What each one contains is decided in `preview`, `report` and `provenance`; which model and
weights a run used is told by the pipeline.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .encode import (
    EncodeOptions,
    VideoWriter,
    check_audio_fits,
    check_output_path,
    container_format,
    write_still,
)
from .errors import EncodeError, ReferenceImageError
from .frames import Frame, VideoInfo
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
from .report import QualityMonitor, report_paths
from .temporal import ShotCutTest, TemporalOptions

COMPARE_ENCODE = EncodeOptions(crf=20, preset="veryfast")  # the side-by-side video: for viewing


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
        src, ref, out: the run's input, reference still and output.
        info: the input's VideoInfo.
        request: the by-products to write (paths already checked by `check_extras`).
        identity: model, weights and settings of the run.

    Raises:
        ReferenceImageError: the reference cannot be read to hash it.
    """

    def __init__(self, src: Path, ref: Path, out: Path, info: VideoInfo, request: ExtrasRequest,
                 identity: RunIdentity) -> None:
        self.src, self.ref, self.out, self.info = Path(src), Path(ref), Path(out), info
        self.request, self.identity = request, identity
        self.started = utc_now()
        try:
            self.ref_sha256 = sha256_file(ref)
        except OSError as e:
            raise ReferenceImageError(f"Cannot read the reference '{ref}': {e}") from e
        self.tag = {TAG_KEY: metadata_tag(identity.model_name, self.ref_sha256)}
        self.sheet = None if request.preview is None else ContactSheet(
            request.preview_frames, info.n_frames, info.time_base, info.sample_aspect,
            info.rotation_deg)
        cuts = ShotCutTest(identity.temporal)  # the temporal stage's histogram test
        self.monitor = None if request.report is None else QualityMonitor(
            lambda frame: cuts.starts_shot(frame.source), info.time_base, info.fps,
            reference=self.ref.name)
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
            self.compare_writer.write(side_by_side(frame))
        elif self.request.compare is not None:  # a still input: one side-by-side image
            write_still(self.request.compare, side_by_side(frame).color,
                        comment=self.tag[TAG_KEY])

    def finish(self, reference_rgb: np.ndarray | None, frames_written: int) -> None:
        """Write the sheet and the report, then the sidecar; call once the output is complete.

        Args:
            reference_rgb: (H, W, 3) uint8 RGB reference still, shown on the sheet (None
                when no sheet was asked for).
            frames_written: frames in the output.

        Raises:
            EncodeError: a file cannot be written (the sidecar is still written if it can).
        """
        request = self.request
        written = {} if request.compare is None else {"compare": Path(request.compare)}
        try:
            if self.sheet is not None:
                written["preview"] = self.sheet.save(request.preview, reference_rgb)
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
                ref_sha256=self.ref_sha256, extra_outputs=written))

    def _report_header(self) -> dict:
        return {"input": str(self.src), "output": str(self.out), "reference": str(self.ref),
                "reference_sha256": self.ref_sha256, "model": self.identity.model_name,
                "temporal_strength": self.identity.temporal.strength,
                "provenance": str(sidecar_path(self.out))}

