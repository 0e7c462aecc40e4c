"""Writing the result: encode coloured Frames, stream-copy the original audio, finish atomically.

The output keeps the input's own luma plane untouched (only chroma comes from the colourised
RGB), its timestamps, time base, pixel aspect and rotation. Audio packets are copied byte for
byte and checked after writing (by mux.py, which also owns containers and segment joining).
Everything goes to `OUT.partial` and is renamed into place only when complete; on any error or
interrupt the partial file is removed. No decoding happens here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, PngImagePlugin

from .atomic import partial_path, writing
from .errors import EncodeError, OptionsError
from .frames import Frame, VideoInfo
from .mux import AUDIO_LEAD_S, AudioCopier, container_format

logger = logging.getLogger(__name__)

CODECS = {"h264": "libx264", "h265": "libx265", "ffv1": "ffv1", "prores": "prores_ks"}
CHROMA_CHOICES = ("420", "444")
# FFmpeg pixel format names a user may ask for -> (chroma, bit depth) of EncodeOptions.
# 4:2:2 exists for ProRes only, which writes its "420" choice as 4:2:2.
PIX_FMTS = {"yuv420p": ("420", 8), "yuv444p": ("444", 8), "yuv420p10le": ("420", 10),
            "yuv444p10le": ("444", 10), "yuv422p10le": ("420", 10)}
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower")
_AV_COLORSPACE = {"bt709": 1, "bt601": 6}  # AVColorSpace codes: BT709, SMPTE170M
_AV_RANGE = {False: 1, True: 2}  # AVColorRange: MPEG (limited), JPEG (full)
_AV_FIELD_TT, _AV_FIELD_BB = 2, 3  # AVFieldOrder: top / bottom field first


@dataclass(frozen=True)
class EncodeOptions:
    """How the output video is encoded.

    Attributes:
        codec: one of CODECS: "h264" (default, plays everywhere), "h265", "ffv1" (lossless,
            archival), "prores" (ProRes 422/4444 HQ, 10-bit).
        crf: constant rate factor for h264/h265, 0 (lossless) .. 51; lower is better.
        preset: x264/x265 speed preset; slower presets give smaller files at the same quality.
        chroma: "420" (default) or "444" chroma subsampling (prores uses 422 for "420").
        bit_depth: 8 or 10 bits per sample; None keeps 8 for h264 and the input's depth
            otherwise (prores is always 10-bit).
    """

    codec: str = "h264"
    crf: int = 18
    preset: str = "medium"
    chroma: str = "420"
    bit_depth: int | None = None

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise OptionsError(
                f"EncodeOptions.codec must be one of {sorted(CODECS)}, got {self.codec!r}"
            )
        if not 0 <= self.crf <= 51:
            raise OptionsError(
                f"EncodeOptions.crf must be in [0, 51], got {self.crf}"
            )
        if self.preset not in X26X_PRESETS:
            raise OptionsError(
                f"EncodeOptions.preset must be one of {X26X_PRESETS}, got {self.preset!r}"
            )
        if self.chroma not in CHROMA_CHOICES:
            raise OptionsError(
                f"EncodeOptions.chroma must be one of {CHROMA_CHOICES}, got {self.chroma!r}"
            )
        if self.bit_depth not in (None, 8, 10):
            raise OptionsError(
                f"EncodeOptions.bit_depth must be 8, 10 or None, got {self.bit_depth}"
            )
        if self.codec == "prores" and self.bit_depth == 8:
            raise OptionsError("EncodeOptions.bit_depth 8 is impossible: prores is 10-bit")




def check_output_path(out: Path, src: Path, overwrite: bool) -> None:
    """Refuse an output that would clobber the input, an existing file, or cannot be written.

    Raises:
        EncodeError: with the reason and the fix.
    """
    out, src = Path(out), Path(src)
    if out.resolve() == src.resolve() or (out.exists() and os.path.samefile(out, src)):
        raise EncodeError(f"Output '{out}' is the input itself; choose another path with -o")
    if out.is_dir():
        raise EncodeError(f"Output '{out}' is a directory; give a file name inside it")
    if out.exists() and not overwrite:
        raise EncodeError(f"Output '{out}' already exists; pass --overwrite to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise EncodeError(f"Output folder '{parent}' does not exist; create it first")
    try:  # a real file, not os.access: root, ACLs and read-only mounts all answer honestly
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise EncodeError(
            f"Output folder '{parent}' is not writable ({e.strerror}); choose another with -o"
        ) from e




def write_still(out: Path, rgb: np.ndarray, comment: str | None = None) -> Path:
    """Save one coloured image atomically; the format follows the extension.

    Args:
        out: target file (.png, .jpg, .tif, .webp, ...).
        rgb: (H, W, 3) uint8 RGB.
        comment: text stored in the file's metadata (PNG "Comment" text chunk, JPEG comment);
            other formats are written without it.
    """
    image_format = Image.registered_extensions().get(Path(out).suffix.lower())
    if image_format is None:
        raise EncodeError(f"Output '{out}' has no image extension; use .png, .jpg or .tif")
    save_args = {"quality": 95} if image_format in ("JPEG", "WEBP") else {}
    save_args.update(_still_comment(image_format, comment))
    try:
        with writing(Path(out)) as partial:
            Image.fromarray(rgb).save(partial, format=image_format, **save_args)
    except OSError as e:
        raise EncodeError(f"Cannot write '{out}': {e}") from e
    return Path(out)


class VideoWriter:
    """Encode coloured frames into OUT with the audio of `audio_from`; atomic on exit.

    Use as a context manager: on a clean exit the file is finished, its audio verified and
    renamed to OUT; on any exception (or Ctrl-C) the partial file is deleted.

    Args:
        out: final output path; its extension picks the container.
        info: the input's VideoInfo (size, timing, range, matrix, rotation, aspect).
        audio_from: file whose audio streams are stream-copied, or None for no audio.
        opts: EncodeOptions.
        metadata: container-level tags to write (key -> text), e.g. {"comment": "..."}.

    Raises:
        EncodeError: bad container, codec/container mismatch, write failure, audio mismatch.
    """

    def __init__(self, out: Path, info: VideoInfo, audio_from: Path | None = None,
                 opts: EncodeOptions | None = None, metadata: dict[str, str] | None = None) -> None:
        self.out = Path(out)
        self.info = info
        self.opts = opts or EncodeOptions()
        self.pix_fmt, self.bit_depth = choose_pix_fmt(self.opts, info)
        self._partial = partial_path(self.out)
        self._audio_from = audio_from
        self._metadata = dict(metadata or {})
        self._container: av.container.OutputContainer | None = None
        self._audio: AudioCopier | None = None
        self._frames_written = 0

    def __enter__(self) -> VideoWriter:
        fmt = container_format(self.out)
        try:
            self._container = av.open(os.fspath(self._partial), mode="w", format=fmt,
                                      container_options=_container_options(fmt, self.info))
            self._stream = self._add_video_stream()
            if self._audio_from is not None:
                self._audio = AudioCopier(self._audio_from, self._container, self.out)
            self._container.metadata.update(self._metadata)
            self._container.start_encoding()
        except BaseException as e:
            self._abort()
            if isinstance(e, EncodeError):
                raise
            if isinstance(e, (av.error.FFmpegError, OSError, ValueError)):
                raise EncodeError(f"Cannot start writing '{self.out}': {e}") from e
            raise
        return self

    def write(self, frame: Frame) -> None:
        """Encode one frame; `frame.color` must be set ((H, W, 3) uint8 RGB at the input size)."""
        if frame.color is None:
            raise EncodeError(f"Frame {frame.index} reached the encoder without colour")
        av_frame = self._to_av_frame(frame)
        self._mux(self._stream.encode(av_frame))
        self._frames_written += 1

    @property
    def frames_written(self) -> int:
        return self._frames_written

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._mux(self._stream.encode(None))
            if self._audio is not None:
                self._audio.copy_until(float("inf"))
            self._container.close()
            self._container = None
            if self._audio is not None:
                self._audio.verify(self._partial)
            os.replace(self._partial, self.out)
        except BaseException as e:
            self._abort()
            if isinstance(e, (av.error.FFmpegError, OSError)):
                raise EncodeError(f"Cannot finish writing '{self.out}': {e}") from e
            raise
        logger.info("wrote %d frames to %s", self._frames_written, self.out)

    def _abort(self) -> None:
        if self._audio is not None:
            self._audio.close()
        if self._container is not None:
            with contextlib.suppress(av.error.FFmpegError, OSError):
                self._container.close()  # the file is deleted below; a failed trailer is moot
            self._container = None
        self._partial.unlink(missing_ok=True)

    def _add_video_stream(self) -> av.video.stream.VideoStream:
        info = self.info
        rate = info.fps or Fraction(25)
        stream = self._container.add_stream(CODECS[self.opts.codec], rate=rate,
                                            options=_codec_options(self.opts))
        stream.width, stream.height = info.width, info.height
        stream.pix_fmt = self.pix_fmt
        stream.time_base = info.time_base
        ctx = stream.codec_context
        ctx.time_base = info.time_base
        ctx.colorspace = _AV_COLORSPACE[info.colorspace]
        ctx.color_range = _AV_RANGE[info.full_range]
        ctx.sample_aspect_ratio = info.sample_aspect
        ctx.thread_type = "AUTO"
        if info.rotation_deg:
            stream.set_display_rotation(info.rotation_deg)
        if info.interlaced and self.opts.codec != "ffv1":  # ffv1 stores fields losslessly as is
            ctx.flags |= av.codec.context.Flags.interlaced_dct
            ctx.field_order = _AV_FIELD_TT if info.top_field_first else _AV_FIELD_BB
        return stream

    def _to_av_frame(self, frame: Frame) -> av.VideoFrame:
        info = self.info
        matrix = "itu709" if info.colorspace == "bt709" else "itu601"
        rng = "JPEG" if info.full_range else "MPEG"
        colored = av.VideoFrame.from_ndarray(frame.color, format="rgb24")
        out = colored.reformat(format=self.pix_fmt, dst_colorspace=matrix, dst_color_range=rng)
        if frame.luma_plane is not None:
            luma = fit_luma(frame.luma_plane, info.bit_depth, self.bit_depth, info.full_range)
        else:  # RGB input: its own Y under the output's matrix
            own = av.VideoFrame.from_ndarray(frame.source, format="rgb24")
            own = own.reformat(format=self.pix_fmt, dst_colorspace=matrix, dst_color_range=rng)
            luma = plane_view(own.planes[0], self.bit_depth)
        plane_view(out.planes[0], self.bit_depth)[:] = luma
        out.pts = frame.pts if frame.pts is not None else self._synthetic_pts(frame.index)
        out.time_base = info.time_base
        return out

    def _synthetic_pts(self, index: int) -> int:
        rate = self.info.fps or Fraction(25)
        return round(index / rate / self.info.time_base)

    def _mux(self, packets: list[av.Packet]) -> None:
        try:
            for packet in packets:
                if self._audio is not None and packet.dts is not None:
                    self._audio.copy_until(float(packet.dts * packet.time_base) + AUDIO_LEAD_S)
                self._container.mux(packet)
        except (av.error.FFmpegError, OSError) as e:
            raise EncodeError(f"Cannot write '{self.out}': {e}") from e


def _still_comment(image_format: str, comment: str | None) -> dict:
    """Pillow save arguments that store `comment` in a PNG or JPEG file (nothing otherwise)."""
    if comment is None:
        return {}
    if image_format == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", comment)
        return {"pnginfo": info}
    return {"comment": comment} if image_format == "JPEG" else {}




def _container_options(fmt: str, info: VideoInfo) -> dict[str, str]:
    """Muxer options that keep the input's timestamps exactly.

    MP4/MOV store a late start (a segment's first frame, or B-frame delay) as an edit list in
    the movie timescale, 1/1000 s by default, which would shift every timestamp by up to half a
    millisecond; the muxer's own video track timescale makes it exact.
    """
    options = {"avoid_negative_ts": "disabled"}
    if fmt in ("mp4", "mov"):
        timescale = info.time_base.denominator
        while timescale < 10000:  # the rule the MOV muxer uses for the video track
            timescale *= 2
        options["movie_timescale"] = str(timescale)
    return options


def choose_pix_fmt(opts: EncodeOptions, info: VideoInfo) -> tuple[str, int]:
    """Pick the output pixel format and bit depth for the codec, chroma and input."""
    if opts.codec == "prores":
        depth = 10
    elif opts.bit_depth is not None:
        depth = opts.bit_depth
    elif opts.codec == "h264":
        depth = 8
    else:
        depth = 10 if info.bit_depth > 8 else 8
    chroma = opts.chroma
    odd = info.width % 2 or info.height % 2
    if odd and chroma != "444" and opts.codec != "ffv1":
        logger.info("odd frame size %dx%d: encoding 4:4:4 chroma", info.width, info.height)
        chroma = "444"
    if opts.codec == "prores" and chroma == "420":
        chroma = "422"
    name = f"yuv{chroma}p" + ("10le" if depth == 10 else "")
    return name, depth


def fit_luma(luma: np.ndarray, in_depth: int, out_depth: int, full_range: bool) -> np.ndarray:
    """Carry the input's luma plane into the output's bit depth (identity when they match).

    Args:
        luma: (H, W) uint8 or uint16 Y samples of `in_depth` bits.

    Returns:
        (H, W) uint8 (8-bit) or uint16 (10-bit) Y samples.
    """
    dtype = np.uint8 if out_depth == 8 else np.uint16
    if in_depth == out_depth:
        return luma.astype(dtype, copy=False)
    wide = luma.astype(np.float64)
    if full_range:
        wide = wide * ((1 << out_depth) - 1) / ((1 << in_depth) - 1)
    else:
        wide = wide * float(1 << out_depth) / float(1 << in_depth)
    return np.clip(np.rint(wide), 0, (1 << out_depth) - 1).astype(dtype)


def plane_view(plane, bit_depth: int) -> np.ndarray:
    """A writable (H, W) numpy view of one PyAV plane, without its row padding."""
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    rows = np.frombuffer(plane, dtype=dtype).reshape(plane.height, -1)
    return rows[:, : plane.width]


def _codec_options(opts: EncodeOptions) -> dict[str, str]:
    if opts.codec == "h264":
        return {"crf": str(opts.crf), "preset": opts.preset}
    if opts.codec == "h265":
        return {"crf": str(opts.crf), "preset": opts.preset, "x265-params": "log-level=error"}
    if opts.codec == "ffv1":
        return {"level": "3", "slicecrc": "1", "g": "1"}
    return {"profile": "3"}  # prores_ks: HQ
