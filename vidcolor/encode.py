"""Writing the result: encode coloured Frames, stream-copy the original audio, finish atomically.

The output keeps the input's own luma plane untouched (only chroma comes from the colourised
RGB), its timestamps, time base, pixel aspect and rotation. Audio packets are copied byte for
byte and checked after writing. Everything goes to `OUT.partial` and is renamed into place only
when complete; on any error or interrupt the partial file is removed. No decoding happens here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, PngImagePlugin

from .errors import EncodeError, OptionsError
from .frames import Frame, VideoInfo

logger = logging.getLogger(__name__)

CODECS = {"h264": "libx264", "h265": "libx265", "ffv1": "ffv1", "prores": "prores_ks"}
CHROMA_CHOICES = ("420", "444")
# FFmpeg pixel format names a user may ask for -> (chroma, bit depth) of EncodeOptions.
# 4:2:2 exists for ProRes only, which writes its "420" choice as 4:2:2.
PIX_FMTS = {"yuv420p": ("420", 8), "yuv444p": ("444", 8), "yuv420p10le": ("420", 10),
            "yuv444p10le": ("444", 10), "yuv422p10le": ("420", 10)}
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower")
CONTAINER_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
PARTIAL_SUFFIX = ".partial"  # in-progress output is OUT + this suffix
_AV_COLORSPACE = {"bt709": 1, "bt601": 6}  # AVColorSpace codes: BT709, SMPTE170M
_AV_RANGE = {False: 1, True: 2}  # AVColorRange: MPEG (limited), JPEG (full)
_AV_FIELD_TT, _AV_FIELD_BB = 2, 3  # AVFieldOrder: top / bottom field first
_AUDIO_LEAD_S = 0.5  # mux audio up to this far ahead of the video, so players start smoothly


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


def partial_path(out: Path) -> Path:
    """Where the output is written while incomplete."""
    return out.with_name(out.name + PARTIAL_SUFFIX)


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


def container_format(out: Path) -> str:
    """FFmpeg muxer name for the output's extension.

    Raises:
        EncodeError: the extension is not a video container we write.
    """
    fmt = CONTAINER_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise EncodeError(
            f"Output '{out}' has an unknown container; use one of {', '.join(CONTAINER_FORMATS)}"
        )
    return fmt


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
    partial = partial_path(Path(out))
    try:
        save_args = {"quality": 95} if image_format in ("JPEG", "WEBP") else {}
        save_args.update(_still_comment(image_format, comment))
        Image.fromarray(rgb).save(partial, format=image_format, **save_args)
        os.replace(partial, out)
    except OSError as e:
        raise EncodeError(f"Cannot write '{out}': {e}") from e
    finally:
        partial.unlink(missing_ok=True)
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
        self._audio: _AudioCopier | None = None
        self._frames_written = 0

    def __enter__(self) -> VideoWriter:
        fmt = container_format(self.out)
        try:
            self._container = av.open(os.fspath(self._partial), mode="w", format=fmt,
                                      container_options=_container_options(fmt, self.info))
            self._stream = self._add_video_stream()
            if self._audio_from is not None:
                self._audio = _AudioCopier(self._audio_from, self._container, self.out)
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
                    self._audio.copy_until(float(packet.dts * packet.time_base) + _AUDIO_LEAD_S)
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


def check_audio_fits(src: Path, out: Path) -> None:
    """Fail now, before any work, if an audio stream of `src` cannot go into OUT's container.

    Raises:
        EncodeError: naming the codec and the containers that can hold it.
    """
    with av.open(io.BytesIO(), mode="w", format=container_format(out)) as trial:
        _AudioCopier(src, trial, Path(out)).close()


def join_segments(segments: list[Path], out: Path, audio_from: Path | None = None,
                  metadata: dict[str, str] | None = None) -> int:
    """Put encoded segment files end to end into OUT, packet for packet, with the input's audio.

    Each segment is a video-only file that VideoWriter wrote with the same EncodeOptions and
    VideoInfo: it starts with a keyframe and carries its frames' source timestamps, so packets
    are copied unchanged (nothing is re-encoded) and the result has the timing of a one-pass
    run. Audio is stream-copied and verified as in VideoWriter; OUT appears only when complete.

    Args:
        segments: segment files in playing order, all in OUT's container format.
        out: final output path.
        audio_from: file whose audio (and subtitle) streams are copied, or None.
        metadata: container-level tags to write (key -> text), as in VideoWriter.

    Returns:
        The number of video packets (frames) written.

    Raises:
        EncodeError: a segment that does not match the first one or does not start with a
            keyframe, timestamps that go backwards, a write failure, or an audio mismatch.
    """
    out = Path(out)
    if not segments:
        raise EncodeError(f"No segments to join into '{out}'")
    partial = partial_path(out)
    container, audio = None, None
    try:
        container = av.open(os.fspath(partial), mode="w", format=container_format(out),
                            container_options={"avoid_negative_ts": "disabled"})
        with av.open(os.fspath(segments[0])) as first:
            template = first.streams.video[0]
            stream = container.add_stream_from_template(template)
            stream.time_base = template.time_base
            signature = _segment_signature(template)
        if audio_from is not None:
            audio = _AudioCopier(Path(audio_from), container, out)
        container.metadata.update(metadata or {})
        container.start_encoding()
        last_dts = [None]  # the previous packet's dts, carried across segments
        count = sum(_copy_segment(Path(p), container, stream, audio, signature, last_dts)
                    for p in segments)
        if audio is not None:
            audio.copy_until(float("inf"))
        container.close()
        container = None
        if audio is not None:
            audio.verify(partial)
        os.replace(partial, out)
    except BaseException as e:
        if audio is not None:
            audio.close()
        if container is not None:
            with contextlib.suppress(av.error.FFmpegError, OSError):
                container.close()
        partial.unlink(missing_ok=True)
        if isinstance(e, (av.error.FFmpegError, OSError)):
            raise EncodeError(f"Cannot join segments into '{out}': {e}") from e
        raise
    logger.info("joined %d segments (%d frames) into %s", len(segments), count, out)
    return count


def _segment_signature(stream) -> tuple:
    ctx = stream.codec_context
    return (ctx.name, ctx.width, ctx.height, ctx.format.name if ctx.format else None,
            bytes(ctx.extradata or b""), stream.time_base)


def _copy_segment(path: Path, container, stream, audio: _AudioCopier | None, signature: tuple,
                  last_dts: list) -> int:
    """Mux the video packets of one segment file into `container`; returns how many."""
    with av.open(os.fspath(path)) as segment:
        if _segment_signature(segment.streams.video[0]) != signature:
            raise EncodeError(f"Segment '{path}' was encoded differently from the first one; "
                              "delete the work folder and run the reel again")
        stamps = [(p.pts, p.dts) for p in segment.demux(segment.streams.video[0]) if p.size]
    decode_ts = _complete_dts(stamps, path)
    count = 0
    with av.open(os.fspath(path)) as segment:
        for packet in segment.demux(segment.streams.video[0]):
            if not packet.size:
                continue
            if count == 0 and not packet.is_keyframe:
                raise EncodeError(f"Segment '{path}' does not start with a keyframe")
            packet.dts = decode_ts[count]
            if last_dts[0] is not None and packet.dts <= last_dts[0]:
                raise EncodeError(f"Segment '{path}' overlaps the previous one in time "
                                  f"(dts {packet.dts} after {last_dts[0]})")
            last_dts[0] = packet.dts
            if audio is not None:
                audio.copy_until(float(packet.dts * packet.time_base) + _AUDIO_LEAD_S)
            packet.stream = stream
            container.mux(packet)
            count += 1
    return count


def _complete_dts(stamps: list[tuple[int | None, int | None]], path: Path) -> list[int]:
    """Decode timestamps of packets in decode order, given their (pts, dts) as demuxed.

    MP4 and MOV store every dts. Matroska stores only pts, so its demuxer leaves the first
    packets of a stream with B-frames without one; they are rebuilt the way encoders set
    them: the pts in presentation order, delayed by the stream's reorder depth.
    """
    if all(dts is not None for _, dts in stamps):
        return [dts for _, dts in stamps]
    pts = [p for p, _ in stamps]
    if None in pts:
        raise EncodeError(f"Segment '{path}' has packets without timestamps; run the reel again")
    ordered = sorted(pts)
    step = min((b - a for a, b in zip(ordered, ordered[1:], strict=False) if b > a), default=1)
    delay = next(d for d in range(len(pts) + 1)
                 if all(ordered[i - d] <= pts[i] for i in range(d, len(pts))))
    return [ordered[i - delay] if i >= delay else ordered[0] - (delay - i) * step
            for i in range(len(pts))]


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


def _muxer_accepts(fmt: str, src: Path, stream_index: int) -> bool:
    """Trial-mux one real packet of the stream in memory, header to trailer.

    Some muxers accept a codec in the header and refuse it only at the trailer (PCM in MP4),
    and PyAV exposes no codec query, so a complete tiny write is the reliable test.
    """
    with av.open(os.fspath(src)) as source:
        stream = next(s for s in source.streams if s.index == stream_index)
        packet = next((p for p in source.demux(stream) if p.size), None)
        try:
            with av.open(io.BytesIO(), mode="w", format=fmt) as trial:
                trial_stream = trial.add_stream_from_template(stream)
                if packet is not None:
                    packet.stream = trial_stream
                    trial.mux(packet)
        except (av.error.FFmpegError, ValueError):
            return False
    return True


class _AudioCopier:
    """Stream-copy the audio (and subtitle) streams of a source, interleaved with the video.

    Audio the container cannot hold stops the run before any work; a subtitle track it cannot
    hold is left out with a warning (the sound matters, a caption track can be re-muxed later).
    """

    def __init__(self, src: Path, container: av.container.OutputContainer, out: Path) -> None:
        self._src = av.open(os.fspath(src))
        self._out_name = out
        in_streams = list(self._src.streams.audio)
        self._out_streams = {}
        for stream in self._src.streams.subtitles:
            if _muxer_accepts(container_format(out), src, stream.index):
                in_streams.append(stream)
            else:
                logger.warning("'%s': subtitle track %d (%s) cannot go into a %s file and is left "
                               "out; use -o with .mkv to keep it", src, stream.index,
                               stream.codec_context.name, out.suffix)
        for stream in in_streams:
            if stream.type == "audio" and not _muxer_accepts(container_format(out), src,
                                                             stream.index):
                codec = stream.codec_context.name
                fits = [sfx for sfx in (".mkv", ".mov", ".mp4")
                        if _muxer_accepts(CONTAINER_FORMATS[sfx], src, stream.index)]
                self.close()
                raise EncodeError(
                    f"The audio codec {codec} of '{src}' cannot go into "
                    f"a {out.suffix} file ('{out}'); use -o with {' or '.join(fits)} to keep it"
                )
            self._out_streams[stream.index] = container.add_stream_from_template(stream)
        self._container = container
        # Stream objects die with their container; keep the plain indices for verify().
        self._written_index = {i: s.index for i, s in self._out_streams.items()}
        self._digests = {i: hashlib.sha256() for i in self._out_streams}
        self._counts = dict.fromkeys(self._out_streams, 0)
        self._packets = self._demux(in_streams) if in_streams else iter(())
        self._pending: av.Packet | None = None

    def _demux(self, streams) -> Iterator[av.Packet]:
        for packet in self._src.demux(streams):
            if packet.size:  # the demuxer's final empty packet marks end of stream
                yield packet

    def copy_until(self, time_s: float) -> None:
        """Mux source audio packets whose timestamp is at or before `time_s` seconds."""
        while True:
            packet = self._pending or next(self._packets, None)
            self._pending = None
            if packet is None:
                return
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is not None and float(stamp * packet.time_base) > time_s:
                self._pending = packet
                return
            index = packet.stream.index
            self._digests[index].update(bytes(packet))
            self._counts[index] += 1
            packet.stream = self._out_streams[index]
            self._container.mux(packet)

    def verify(self, written: Path) -> None:
        """Re-read the written file's audio and compare packet bytes with what was copied."""
        self.close()
        if not self._out_streams:
            return
        written_index = self._written_index
        with av.open(os.fspath(written)) as check:
            streams = [s for s in check.streams if s.index in written_index.values()]
            digests = {s.index: hashlib.sha256() for s in streams}
            counts = dict.fromkeys(digests, 0)
            for packet in check.demux(streams):
                if packet.size:
                    digests[packet.stream.index].update(bytes(packet))
                    counts[packet.stream.index] += 1
        for src_index, out_index in written_index.items():
            expected = (self._counts[src_index], self._digests[src_index].hexdigest())
            if expected != (counts.get(out_index), digests[out_index].hexdigest()):
                raise EncodeError(
                    f"Audio in '{self._out_name}' does not match the input's packets after copying"
                )

    def close(self) -> None:
        self._src.close()
