"""Reading the inputs: probe a film, decode its Frames in order, load still images.

This is the only module that decodes with PyAV or Pillow. It streams frames (never the whole
film in memory) and keeps what the encoder needs to reproduce the input: timestamps, time base,
the raw luma plane, range, matrix, rotation and pixel aspect. It knows nothing about torch.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ReferenceImageError, VideoOpenError
from .frames import Frame, VideoInfo
from .threads import in_thread

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_BAD_PACKETS = 25  # give up on a stream after this many undecodable packets in a row
DECODE_QUEUE_FRAMES = 8  # frames decoded ahead in the background thread

# AVColorSpace codes that mean the BT.709 matrix; everything else tagged is treated as BT.601.
_AV_COLORSPACE_BT709 = 1
_AV_COLORSPACE_UNSPECIFIED = 2
_AV_RANGE_FULL = 2
_AV_FIELD_BB_ORDERS = (3, 5)  # AVFieldOrder BB and BT: bottom field displayed first
_FULL_RANGE_FORMATS = ("yuvj420p", "yuvj422p", "yuvj444p", "gray", "gray10le", "gray12le")


def is_still_image(path: Path) -> bool:
    """True when `path` holds a single still picture, judged by its content, not its extension."""
    try:
        with Image.open(path) as image:
            return getattr(image, "n_frames", 1) == 1
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def probe(path: Path) -> VideoInfo:
    """Describe the film (or still) at `path` without decoding all of it.

    Raises:
        VideoOpenError: missing, not a file, not media, or no video stream.
    """
    path = _check_readable(Path(path), VideoOpenError, "input")
    if is_still_image(path):
        return _probe_still(path)
    with _open_container(path) as container:
        stream = container.streams.video[0]
        first = _first_frame(container, stream, path)
        return _video_info(stream, first)


def read_frames(path: Path, prefetch: int = DECODE_QUEUE_FRAMES) -> Iterator[Frame]:
    """Decode the frames of `path` in presentation order, one at a time.

    Decoding runs in a background thread, `prefetch` frames ahead (0: in the caller's thread),
    so it overlaps with colourisation; memory stays bounded by the queue.
    A frame that cannot be decoded (its packet was demuxed but no picture came out) is
    replaced by a repeat of the last good frame at the lost timestamp, so timing and frame
    count hold; one warning per film. After MAX_CONSECUTIVE_BAD_PACKETS in a row the film is
    given up as corrupt.

    Yields:
        Frame with `source` (H, W, 3) uint8 RGB and `luma_plane` the stream's own Y plane.

    Raises:
        VideoOpenError: the file cannot be opened or is corrupt beyond repair.
    """
    frames = _decode_frames(Path(path))
    return in_thread(iter, frames, prefetch, "vidcolor-decode") if prefetch > 0 else frames


def _decode_frames(path: Path) -> Iterator[Frame]:
    if is_still_image(path):
        rgb = load_still(path, role="input")
        yield Frame(index=0, pts=None, source=rgb, luma_plane=None)
        return
    with _open_container(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threading: decode overlaps with our per-frame work
        expected: list[int] = []  # heap: pts of demuxed packets not yet matched by a frame
        half_frame = _half_frame_pts(stream)
        index, last, repeated = 0, None, 0
        for av_frame in _decode_tolerant(container, stream, path, expected):
            frame = _to_frame(av_frame, index)
            for pts in _lost_before(expected, frame.pts, half_frame, last):
                if not repeated:
                    logger.warning("'%s': a frame at pts %d could not be decoded; repeating the "
                                   "last good frame in its place", path, pts)
                repeated += 1
                yield dataclasses.replace(last, index=index, pts=pts)
                index += 1
            last = dataclasses.replace(frame, index=index)
            yield last
            index += 1
        for pts in _lost_before(expected, None, half_frame, last):
            repeated += 1
            yield dataclasses.replace(last, index=index, pts=pts)
            index += 1
        if repeated:
            logger.warning("'%s': %d undecodable frames were replaced by repeats", path, repeated)
    if index == 0:
        raise VideoOpenError(f"'{path}' has a video stream but no frame could be decoded")


def load_still(path: Path, role: str = "reference") -> np.ndarray:
    """Load a still image as RGB, honouring EXIF orientation.

    Alpha is composited over white, CMYK and 16-bit images are converted to 8-bit RGB.

    Args:
        path: image file.
        role: "reference" (errors are ReferenceImageError) or "input" (VideoOpenError).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    error = ReferenceImageError if role == "reference" else VideoOpenError
    path = _check_readable(Path(path), error, role)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return _pil_to_rgb(image)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise error(f"Cannot read {role} image '{path}': not an image ({e})") from e


def _check_readable(path: Path, error: type[Exception], role: str) -> Path:
    if not path.exists():
        raise error(f"{role.capitalize()} '{path}' does not exist; check the path")
    if path.is_dir():
        raise error(f"{role.capitalize()} '{path}' is a directory; give a file")
    if not os.access(path, os.R_OK):
        raise error(f"{role.capitalize()} '{path}' is not readable; check its permissions")
    if path.stat().st_size == 0:
        raise error(f"{role.capitalize()} '{path}' is empty (0 bytes); is the copy complete?")
    return path


def _open_container(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(os.fspath(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoOpenError(
            f"Cannot open '{path}' as a video ({e}); is it a complete, uncorrupted video file?"
        ) from e
    if not container.streams.video:
        container.close()
        raise VideoOpenError(f"'{path}' has no video stream; is it an audio file?")
    return container


def _half_frame_pts(stream) -> float:
    """Half a nominal frame duration in pts units: how far a frame may sit from its packet."""
    rate = stream.average_rate or stream.guessed_rate
    if not rate or not stream.time_base:
        return 0.5
    return max(0.5, 0.5 / float(rate * stream.time_base))


def _lost_before(expected: list[int], pts: int | None, half_frame: float,
                 last: Frame | None) -> list[int]:
    """Match a decoded frame to its packet; return packet timestamps that produced no frame.

    Decoders output in presentation order, so a packet whose pts lies before the frame now
    decoded (by more than half a frame) will never produce a picture. With `pts` None (end of
    stream) every unmatched packet is lost. Losses before the first good frame are dropped:
    there is nothing to repeat.
    """
    if pts is None and last is None:
        return []
    lost = []
    while expected and (pts is None or expected[0] <= pts + half_frame):
        candidate = heapq.heappop(expected)
        if pts is not None and candidate >= pts - half_frame:
            continue  # this frame's own packet
        if last is not None and last.pts is not None and candidate > last.pts + half_frame:
            lost.append(candidate)
    return lost


def _decode_tolerant(container, stream, path: Path,
                     expected: list[int] | None = None) -> Iterator[av.VideoFrame]:
    """Decode `stream`, skipping bad packets with one warning and a cap on consecutive failures.

    The pts of every demuxed packet is pushed onto the heap `expected`, when given.
    """
    consecutive_bad = 0
    warned = False
    for packet in container.demux(stream):
        if expected is not None and packet.size and packet.pts is not None:
            heapq.heappush(expected, packet.pts)
        try:
            frames = packet.decode()
        except av.error.InvalidDataError as e:
            consecutive_bad += 1
            if not warned:
                logger.warning("'%s': undecodable data (%s)", path, e)
                warned = True
            if consecutive_bad >= MAX_CONSECUTIVE_BAD_PACKETS:
                raise VideoOpenError(
                    f"'{path}' is corrupt: {consecutive_bad} packets in a row cannot be decoded"
                ) from e
            continue
        consecutive_bad = 0
        yield from frames


def _first_frame(container, stream, path: Path) -> av.VideoFrame:
    for av_frame in _decode_tolerant(container, stream, path):
        return av_frame
    raise VideoOpenError(f"'{path}' has a video stream but no frame could be decoded")


def _video_info(stream, first: av.VideoFrame) -> VideoInfo:
    fps = stream.average_rate or stream.guessed_rate
    fps = Fraction(fps) if fps else None
    duration_s = float(stream.duration * stream.time_base) if stream.duration else None
    if duration_s is None and stream.container.duration:
        duration_s = stream.container.duration / av.time_base
    n_frames = stream.frames or (round(duration_s * fps) if duration_s and fps else None)
    pix_fmt = first.format.name
    return VideoInfo(
        width=first.width,
        height=first.height,
        fps=fps,
        time_base=Fraction(stream.time_base),
        n_frames=n_frames or None,
        duration_s=duration_s,
        pix_fmt=pix_fmt,
        bit_depth=first.format.components[0].bits,
        full_range=_is_full_range(first),
        colorspace=_matrix_name(first),
        rotation_deg=int(round(first.rotation or 0)) % 360,
        sample_aspect=Fraction(stream.sample_aspect_ratio or 1),
        codec=stream.codec_context.name,
        interlaced=bool(first.interlaced_frame),
        top_field_first=stream.codec_context.field_order not in _AV_FIELD_BB_ORDERS,
    )


def _probe_still(path: Path) -> VideoInfo:
    with Image.open(path) as image:
        width, height = ImageOps.exif_transpose(image).size
    return VideoInfo(width=width, height=height, fps=None, time_base=Fraction(1), n_frames=1,
                     duration_s=None, pix_fmt="rgb24", full_range=True, is_still=True)


def _is_full_range(av_frame: av.VideoFrame) -> bool:
    return av_frame.color_range == _AV_RANGE_FULL or av_frame.format.name in _FULL_RANGE_FORMATS


def _matrix_name(av_frame: av.VideoFrame) -> str:
    if av_frame.colorspace == _AV_COLORSPACE_BT709:
        return "bt709"
    if av_frame.colorspace == _AV_COLORSPACE_UNSPECIFIED and av_frame.height >= 720:
        return "bt709"  # untagged HD: what players assume
    return "bt601"


def _to_frame(av_frame: av.VideoFrame, index: int) -> Frame:
    matrix = "itu709" if _matrix_name(av_frame) == "bt709" else "itu601"
    rgb = av_frame.to_ndarray(
        format="rgb24",
        src_colorspace=matrix,
        src_color_range="JPEG" if _is_full_range(av_frame) else "MPEG",
    )
    return Frame(index=index, pts=av_frame.pts, source=rgb, luma_plane=_luma_plane(av_frame))


def _luma_plane(av_frame: av.VideoFrame) -> np.ndarray | None:
    """The Y (or gray) plane exactly as stored: (H, W) uint8, or uint16 above 8 bits."""
    fmt = av_frame.format
    if fmt.is_rgb or fmt.name.startswith(("pal", "bayer", "nv", "p0", "p2", "y2", "uyvy", "yuyv")):
        return None  # no planar luma to keep; the encoder derives Y from the RGB
    if not fmt.name.startswith(("yuv", "gray")):
        return None
    plane = av_frame.planes[0]
    dtype = np.uint16 if fmt.components[0].bits > 8 else np.uint8
    row = np.frombuffer(plane, dtype=dtype).reshape(plane.height, -1)
    return row[:, : plane.width].copy()


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.float64)
        top = 65535.0 if wide.max() > 255 else 255.0
        gray = np.clip(np.rint(wide / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))

