"""Packets into containers, nothing re-encoded: the muxing side of writing an output.

Owns which container an extension means, the input's audio (and subtitle) streams
stream-copied byte for byte and checked after writing, and encoded segment files put end to
end. Encoding frames is encode.py's business; no decoding happens here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import av

from .atomic import partial_path
from .errors import EncodeError

logger = logging.getLogger(__name__)

CONTAINER_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
AUDIO_LEAD_S = 0.5  # mux audio up to this far ahead of the video, so players start smoothly


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


def check_audio_fits(src: Path, out: Path) -> None:
    """Fail now, before any work, if an audio stream of `src` cannot go into OUT's container.

    Raises:
        EncodeError: naming the codec and the containers that can hold it.
    """
    with av.open(io.BytesIO(), mode="w", format=container_format(out)) as trial:
        AudioCopier(src, trial, Path(out)).close()


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
            audio = AudioCopier(Path(audio_from), container, out)
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


def _copy_segment(path: Path, container, stream, audio: AudioCopier | None, signature: tuple,
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
                audio.copy_until(float(packet.dts * packet.time_base) + AUDIO_LEAD_S)
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


class AudioCopier:
    """Stream-copy the audio (and subtitle) streams of a source, interleaved with the video.

    Audio the container cannot hold stops the run before any work; a subtitle track it cannot
    hold is left out with a warning (the sound matters, a caption track can be re-muxed later).

    Args:
        src: the file whose audio and subtitle streams are copied.
        container: the output container, before `start_encoding`.
        out: the final output path (its extension picks the container; named in messages).

    Raises:
        EncodeError: an audio stream the container cannot hold, naming the ones that can.
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
