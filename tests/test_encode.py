"""Encoding: exact luma, timing, audio packets, formats, and atomic output."""

from __future__ import annotations

import av
import numpy as np
import pytest
from conftest import write_clip

from vidcolor import io
from vidcolor.atomic import partial_path
from vidcolor.encode import EncodeOptions, VideoWriter, check_output_path
from vidcolor.errors import EncodeError, OptionsError


def tint(frame):
    """A stand-in colorizer: push red up; the encoder must still keep the input's Y."""
    color = frame.source.astype(np.int16)
    color[..., 0] += 60
    color[..., 2] -= 30
    return frame.with_color(np.clip(color, 0, 255).astype(np.uint8))


def encode(src, out, **options):
    info = io.probe(src)
    with VideoWriter(out, info, audio_from=src, opts=EncodeOptions(**options)) as writer:
        for frame in io.read_frames(src):
            writer.write(tint(frame))
    return out


def audio_packets(path):
    with av.open(str(path)) as container:
        return [[bytes(p) for p in container.demux(s) if p.size] for s in container.streams.audio]


def luma(path):
    return np.stack([f.luma_plane for f in io.read_frames(path)]).astype(np.float64)


def test_ffv1_keeps_luma_bit_exact_timing_and_audio_bytes(gray_clip, tmp_path):
    out = encode(gray_clip, tmp_path / "out.mkv", codec="ffv1")
    assert np.array_equal(luma(out), luma(gray_clip))
    source_times = [float(f.pts * io.probe(gray_clip).time_base) for f in io.read_frames(gray_clip)]
    out_times = [float(f.pts * io.probe(out).time_base) for f in io.read_frames(out)]
    assert np.allclose(out_times, source_times, atol=1e-3)  # Matroska stores milliseconds
    assert audio_packets(out) == audio_packets(gray_clip) and audio_packets(out)[0]
    colored = next(io.read_frames(out)).source
    assert colored[..., 0].mean() > next(io.read_frames(gray_clip)).source[..., 0].mean() + 20


def test_mp4_keeps_pts_and_time_base_exactly(gray_clip, tmp_path):
    out = encode(gray_clip, tmp_path / "out.mp4")
    assert io.probe(out).time_base == io.probe(gray_clip).time_base
    assert [f.pts for f in io.read_frames(out)] == [f.pts for f in io.read_frames(gray_clip)]
    assert audio_packets(out) == audio_packets(gray_clip)
    assert io.probe(out).pix_fmt == "yuv420p"


def test_variable_frame_rate_stays_variable(vfr_clip, tmp_path):
    out = encode(vfr_clip, tmp_path / "vfr_out.mkv")
    gaps = np.diff([f.pts for f in io.read_frames(out)])
    assert list(gaps) == list(np.diff([f.pts for f in io.read_frames(vfr_clip)]))
    assert set(gaps) == {40, 80}


def test_odd_size_is_kept_with_full_chroma(media_dir, tmp_path):
    src = write_clip(media_dir / "odd.mkv", width=63, height=47, n_frames=5, audio=False,
                     codec="ffv1")
    out = encode(src, tmp_path / "odd_out.mp4")
    info = io.probe(out)
    assert (info.width, info.height) == (63, 47) and info.pix_fmt == "yuv444p"


def test_ten_bit_input_kept_ten_bit_and_exact_with_ffv1(media_dir, tmp_path):
    src = write_clip(media_dir / "ten.mkv", n_frames=5, audio=False, pix_fmt="yuv420p10le",
                     codec="ffv1")
    out = encode(src, tmp_path / "ten_out.mkv", codec="ffv1")
    assert io.probe(out).pix_fmt == "yuv420p10le"
    assert np.array_equal(luma(out), luma(src))


def test_prores_is_ten_bit(gray_clip, tmp_path):
    out = encode(gray_clip, tmp_path / "out.mov", codec="prores")
    info = io.probe(out)
    assert info.codec == "prores" and info.bit_depth == 10
    assert audio_packets(out) == audio_packets(gray_clip)


def test_rotation_and_aspect_metadata_survive(media_dir, tmp_path):
    src = write_clip(media_dir / "rot.mp4", n_frames=3, audio=False, rotation_deg=90)
    assert io.probe(encode(src, tmp_path / "rot_out.mp4")).rotation_deg == 90


def test_audio_the_container_cannot_hold_is_refused_before_writing(media_dir, tmp_path):
    src = write_clip(media_dir / "pcm.mkv", n_frames=3, audio_codec="pcm_s16le")
    with pytest.raises(EncodeError, match=r"pcm_s16le.*\.mkv"):
        encode(src, tmp_path / "pcm_out.mp4")
    assert not list(tmp_path.iterdir())
    out = encode(src, tmp_path / "pcm_out.mkv")
    assert audio_packets(out) == audio_packets(src)


def test_failure_mid_way_leaves_no_file(gray_clip, tmp_path):
    out = tmp_path / "broken.mp4"
    info = io.probe(gray_clip)
    with pytest.raises(RuntimeError), VideoWriter(out, info, audio_from=gray_clip) as w:
        for frame in io.read_frames(gray_clip):
            w.write(tint(frame))
            if frame.index == 5:
                assert partial_path(out).exists() and not out.exists()
                raise RuntimeError("simulated crash")
    assert not out.exists() and not partial_path(out).exists()


def test_frame_without_colour_is_an_error(gray_clip, tmp_path):
    out = tmp_path / "nocolor.mp4"
    with pytest.raises(EncodeError, match="without colour"), \
            VideoWriter(out, io.probe(gray_clip)) as writer:
        writer.write(next(io.read_frames(gray_clip)))
    assert not out.exists() and not partial_path(out).exists()


def test_output_path_checks(gray_clip, tmp_path):
    with pytest.raises(EncodeError, match="input itself"):
        check_output_path(gray_clip, gray_clip, overwrite=True)
    existing = tmp_path / "exists.mp4"
    existing.write_bytes(b"x")
    with pytest.raises(EncodeError, match="--overwrite"):
        check_output_path(existing, gray_clip, overwrite=False)
    check_output_path(existing, gray_clip, overwrite=True)
    with pytest.raises(EncodeError, match="does not exist"):
        check_output_path(tmp_path / "no" / "dir" / "out.mp4", gray_clip, overwrite=False)


@pytest.mark.parametrize("bad", [{"codec": "mpeg2"}, {"crf": 60}, {"chroma": "422"},
                                 {"bit_depth": 12}, {"codec": "prores", "bit_depth": 8}])
def test_bad_options_are_rejected(bad):
    with pytest.raises(OptionsError):
        EncodeOptions(**bad)


def test_two_audio_tracks_are_both_copied(media_dir, tmp_path):
    src = write_clip(media_dir / "two_tracks.mp4", n_frames=6, audio_tracks=2)
    packets = audio_packets(encode(src, tmp_path / "two.mp4"))
    assert len(packets) == 2 and packets == audio_packets(src)


def with_subtitles(clip, out):
    """Mux an SRT subtitle track beside the clip's streams (stream copy of everything)."""
    srt = out.with_suffix(".srt")
    srt.write_text("1\n00:00:00,000 --> 00:00:00,500\nHello, archive.\n")
    with av.open(str(clip)) as video_src, av.open(str(srt)) as sub_src, \
            av.open(str(out), "w") as dst:
        mapping = {s: dst.add_stream_from_template(s) for s in video_src.streams}
        subtitle = dst.add_stream_from_template(sub_src.streams.subtitles[0])
        for packet in video_src.demux():
            if packet.size:
                packet.stream = mapping[packet.stream]
                dst.mux(packet)
        for packet in sub_src.demux():
            if packet.size:
                packet.stream = subtitle
                dst.mux(packet)
    return out


def test_subtitles_are_copied_when_the_container_can_hold_them(gray_clip, tmp_path, caplog):
    src = with_subtitles(gray_clip, tmp_path / "subbed.mkv")
    out = encode(src, tmp_path / "subbed_out.mkv")
    with av.open(str(out)) as container:
        assert [s.codec_context.name for s in container.streams.subtitles] in (["srt"], ["subrip"])
    encode(src, tmp_path / "subbed_out.mp4")  # MP4 cannot hold SubRip: left out, with a warning
    assert "subtitle" in caplog.text and "mkv" in caplog.text
    assert audio_packets(tmp_path / "subbed_out.mp4") == audio_packets(gray_clip)


def test_anamorphic_pixel_aspect_is_kept(media_dir, tmp_path):
    from fractions import Fraction

    src = write_clip(media_dir / "anamorphic.mp4", n_frames=4, audio=False,
                     sample_aspect=Fraction(64, 45))
    assert io.probe(src).sample_aspect == Fraction(64, 45)
    assert io.probe(encode(src, tmp_path / "ana.mp4")).sample_aspect == Fraction(64, 45)


def test_interlaced_input_stays_interlaced(media_dir, tmp_path):
    src = write_clip(media_dir / "interlaced.mp4", n_frames=4, audio=False, interlaced=True)
    assert io.probe(src).interlaced
    out = encode(src, tmp_path / "interlaced_out.mp4")
    assert io.probe(out).interlaced
