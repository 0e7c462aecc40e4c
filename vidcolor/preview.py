"""Previews: a contact sheet of evenly spaced frames, and side-by-side (input | output) frames.

Owns choosing the sheet's frames while the film streams through (the film is never decoded
twice and never held in memory: only small thumbnails of candidate frames are kept) and drawing
the sheet with Pillow. The frame count known up front may be an estimate or unknown; the choice
adapts. It also builds the frames of the side-by-side comparison video, which the pipeline
encodes with the ordinary VideoWriter. It does not decide where files go and draws nothing on
the output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import writing
from .errors import EncodeError, OptionsError
from .frames import Frame, VideoInfo, quarter_turns, turned

PREVIEW_FRAMES = 6  # frames on a contact sheet by default
MAX_PREVIEW_FRAMES = 48  # a sanity bound: more columns than this is not a preview
THUMB_MAX_SIDE_PX = 320  # long side of one thumbnail, px (smaller frames are not upscaled)
CANDIDATES_PER_SLOT = 4  # candidate frames kept per sheet column while streaming
MARGIN_PX = 8  # border around and between the sheet's panels, px
LABEL_PX = 20  # height of a text line, px
FONT_PX = 14  # label font size, px
BACKGROUND_RGB = (24, 24, 24)
TEXT_RGB = (230, 230, 230)


@dataclass(frozen=True)
class SheetLayout:
    """Where everything sits on a rendered sheet (pixels, origin top left).

    Attributes:
        cell_w, cell_h: size of one thumbnail.
        columns: number of frame columns.
        ref_box: (x, y, w, h) of the reference still.
        size: (width, height) of the whole sheet.
    """

    cell_w: int
    cell_h: int
    columns: int
    ref_box: tuple[int, int, int, int]
    size: tuple[int, int]

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(x, y, w, h) of a thumbnail: row 0 is the input, row 1 the output."""
        x0 = self.ref_box[0] + self.ref_box[2] + MARGIN_PX
        x = x0 + column * (self.cell_w + MARGIN_PX)
        y = MARGIN_PX + LABEL_PX + row * (self.cell_h + MARGIN_PX)
        return x, y, self.cell_w, self.cell_h


@dataclass
class _Pick:
    index: int
    pts_s: float | None
    source: np.ndarray  # (h, w, 3) uint8 RGB: a thumbnail, or the full frame when not `done`
    color: np.ndarray  # (h, w, 3) uint8 RGB: a thumbnail, or the full frame when not `done`
    done: bool  # source and color are final thumbnails (scaled and turned upright)


class ContactSheet:
    """Collect `count` evenly spaced frames from a stream and draw them as a contact sheet.

    Candidates are kept every `stride` frames; whenever more than 2 * CANDIDATES_PER_SLOT per
    column are held, the stride doubles and every other candidate is dropped, so memory stays
    bounded whatever the real length and a shown frame is at most about
    n / (4 * CANDIDATES_PER_SLOT * count) frames from its ideal position. The last
    frame is always a candidate. At the end the candidates nearest to `count` evenly spaced
    positions over the real length are shown.

    Args:
        count: number of frames to show, 1..MAX_PREVIEW_FRAMES.
        n_frames: expected frame count (may be an estimate, or None when unknown).
        time_base: unit of Frame.pts, to label frames with their time; None labels indices.
        sample_aspect: pixel aspect ratio of the film (thumbnails are shown with square pixels).
        rotation_deg: the film's display rotation, counter-clockwise degrees (VideoInfo's);
            thumbnails are shown upright, as a player shows the film.

    Raises:
        OptionsError: `count` out of range.
    """

    def __init__(self, count: int = PREVIEW_FRAMES, n_frames: int | None = None,
                 time_base: Fraction | None = None, sample_aspect: Fraction = Fraction(1),
                 rotation_deg: int = 0) -> None:
        check_preview_frames(count)
        self._turns = quarter_turns(rotation_deg)
        self.count = count
        self.layout: SheetLayout | None = None
        self._time_base = time_base
        self._sample_aspect = Fraction(sample_aspect or 1)
        self._capacity = 2 * CANDIDATES_PER_SLOT * count
        # The estimate only sets the first stride, finer than needed: a film 4x shorter than
        # announced still leaves enough candidates; a longer one doubles the stride as it goes.
        self._stride = max(1, (n_frames or 0) // (4 * self._capacity))
        self._candidates: list[_Pick] = []
        self._tail: _Pick | None = None
        self._thumb_size: tuple[int, int] | None = None  # (w, h) before turning, 1st frame

    def add(self, frame: Frame) -> None:
        """Offer the next output frame (`source` and `color`: (H, W, 3) uint8 RGB)."""
        if frame.color is None:
            raise EncodeError(f"Frame {frame.index} reached the contact sheet without colour")
        if self._thumb_size is None:
            self._thumb_size = self._fit(frame.source.shape[:2])
        pts_s = float(frame.pts * self._time_base) if frame.pts is not None and \
            self._time_base else None
        self._tail = _Pick(frame.index, pts_s, frame.source, frame.color, False)  # no copy
        if frame.index % self._stride:
            return
        self._candidates.append(_Pick(frame.index, pts_s, self._thumb(frame.source),
                                      self._thumb(frame.color), True))
        if len(self._candidates) > self._capacity:
            self._stride *= 2
            self._candidates = [c for c in self._candidates if c.index % self._stride == 0]

    def chosen_indices(self) -> list[int]:
        """Frame indices the sheet shows, in order (after the whole film was offered)."""
        return [pick.index for pick in self._choose()]

    def render(self, reference_rgb: np.ndarray) -> np.ndarray:
        """Draw the sheet: reference on the left, then one column per chosen frame.

        Args:
            reference_rgb: (H, W, 3) uint8 RGB reference still.

        Returns:
            (H', W', 3) uint8 RGB sheet; `self.layout` tells where each thumbnail sits.

        Raises:
            EncodeError: no frame was offered.
        """
        picks = self._choose()
        if not picks:
            raise EncodeError("No frame reached the contact sheet; the film had no frames")
        cell_w, cell_h = self._thumb_size[::-1] if self._turns % 2 else self._thumb_size
        ref_h = 2 * cell_h + MARGIN_PX
        ref_w = max(1, min(2 * cell_w, round(reference_rgb.shape[1] * ref_h
                                             / reference_rgb.shape[0])))
        ref_box = (MARGIN_PX, MARGIN_PX + LABEL_PX, ref_w, ref_h)
        width = MARGIN_PX + ref_w + len(picks) * (cell_w + MARGIN_PX) + MARGIN_PX
        height = MARGIN_PX + LABEL_PX + ref_h + MARGIN_PX + LABEL_PX + MARGIN_PX
        self.layout = SheetLayout(cell_w, cell_h, len(picks), ref_box, (width, height))
        sheet = Image.new("RGB", (width, height), BACKGROUND_RGB)
        draw = ImageDraw.Draw(sheet)
        font = _font()
        sheet.paste(Image.fromarray(reference_rgb).resize((ref_w, ref_h), Image.Resampling.LANCZOS),
                    ref_box[:2])
        draw.text((MARGIN_PX, MARGIN_PX), "reference", fill=TEXT_RGB, font=font)
        for column, pick in enumerate(picks):
            for row, rgb in enumerate((pick.source, pick.color)):
                x, y, _, _ = self.layout.cell_box(row, column)
                sheet.paste(Image.fromarray(rgb if pick.done else self._thumb(rgb)), (x, y))
            x, y, _, _ = self.layout.cell_box(1, column)
            draw.text((x, y + cell_h + 2), _label(pick), fill=TEXT_RGB, font=font)
        x0, y0, _, _ = self.layout.cell_box(0, 0)
        draw.text((x0, MARGIN_PX), "input (top) / output (bottom)", fill=TEXT_RGB, font=font)
        return np.asarray(sheet)

    def save(self, path: Path, reference_rgb: np.ndarray) -> Path:
        """Render and write the sheet atomically (PATH.partial renamed into place).

        Raises:
            EncodeError: unknown image extension, no frames, or the file cannot be written.
        """
        path = Path(path)
        image_format = check_sheet_path(path)
        sheet = Image.fromarray(self.render(reference_rgb))
        try:
            with writing(path) as partial:
                sheet.save(partial, format=image_format)
        except OSError as e:
            raise EncodeError(f"Cannot write the contact sheet '{path}': {e}") from e
        return path

    def _choose(self) -> list[_Pick]:
        """The candidates nearest to `count` evenly spaced positions over the real length."""
        if self._tail is None:
            return []
        pool = list(self._candidates)
        if not pool or pool[-1].index != self._tail.index:
            pool.append(self._tail)
        targets = np.linspace(0, self._tail.index, self.count)
        chosen: dict[int, _Pick] = {}
        for target in targets:
            best = min(pool, key=lambda pick: (abs(pick.index - target), pick.index))
            chosen[best.index] = best
        return sorted(chosen.values(), key=lambda pick: pick.index)

    def _fit(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Thumbnail (w, h): display aspect, long side <= THUMB_MAX_SIDE_PX, never upscaled."""
        height, width = shape
        display_w = width * self._sample_aspect
        scale = min(Fraction(1), Fraction(THUMB_MAX_SIDE_PX) / max(display_w, height))
        return max(1, round(display_w * scale)), max(1, round(height * scale))

    def _thumb(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB frame -> its thumbnail, scaled and turned upright."""
        if (rgb.shape[1], rgb.shape[0]) != self._thumb_size:
            rgb = np.asarray(Image.fromarray(rgb).resize(
                self._thumb_size, Image.Resampling.BILINEAR, reducing_gap=2.0))
        return turned(rgb, self._turns)


def side_by_side(frame: Frame, rotation_deg: int = 0) -> Frame:
    """The input and its colourisation next to each other, as one frame for the encoder.

    Args:
        frame: `source` and `color` (H, W, 3) uint8 RGB, optional `luma_plane` (H, W).
        rotation_deg: the film's display rotation (counter-clockwise), which the comparison
            video keeps: the halves are put where they appear side by side once rotated.

    Returns:
        A Frame with the same index and pts, twice as wide as displayed: `color` is input |
        output, and `source` / `luma_plane` are the input twice (the output's luma is the
        input's, so the encoder keeps the input's own luma plane on both halves).
    """
    if frame.color is None:
        raise EncodeError(f"Frame {frame.index} reached the comparison video without colour")
    turns = quarter_turns(rotation_deg)

    def pair(left: np.ndarray, right: np.ndarray) -> np.ndarray:
        shown = np.hstack([np.rot90(left, turns), np.rot90(right, turns)])
        return turned(shown, -turns)

    luma = None if frame.luma_plane is None else pair(frame.luma_plane, frame.luma_plane)
    return Frame(frame.index, frame.pts, pair(frame.source, frame.source), luma,
                 pair(frame.source, frame.color))


def side_by_side_info(info: VideoInfo) -> VideoInfo:
    """The VideoInfo of the side-by-side video: the input's, twice as wide as displayed."""
    if info.upright_turns % 2:
        return dataclasses.replace(info, height=2 * info.height)
    return dataclasses.replace(info, width=2 * info.width)


def check_preview_frames(count: int) -> None:
    """Raise OptionsError unless 1 <= count <= MAX_PREVIEW_FRAMES."""
    if isinstance(count, bool) or not isinstance(count, int) or \
            not 1 <= count <= MAX_PREVIEW_FRAMES:
        raise OptionsError(f"preview_frames must be in [1, {MAX_PREVIEW_FRAMES}], got {count!r}")


def check_sheet_path(path: Path) -> str:
    """The Pillow format for the sheet's extension.

    Raises:
        EncodeError: the extension is not an image format Pillow writes.
    """
    image_format = Image.registered_extensions().get(Path(path).suffix.lower())
    if image_format not in ("PNG", "JPEG", "WEBP", "TIFF"):
        raise EncodeError(f"Contact sheet '{path}' needs an image extension: .png, .jpg, .webp "
                          f"or .tif")
    return image_format


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font at FONT_PX (its small bitmap font when FreeType is missing)."""
    try:
        return ImageFont.load_default(size=FONT_PX)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _label(pick: _Pick) -> str:
    if pick.pts_s is None:
        return f"#{pick.index}"
    minutes, seconds = divmod(pick.pts_s, 60.0)
    return f"#{pick.index}  {int(minutes):d}:{seconds:05.2f}"
