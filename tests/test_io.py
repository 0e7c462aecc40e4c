"""Decoding: probe, frame order and timing, pixel formats, stills, and bad input."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import write_clip
from PIL import Image

from vidcolor import io
from vidcolor.errors import ReferenceImageError, VideoOpenError


def test_probe_reports_size_rate_and_count(gray_clip):
    info = io.probe(gray_clip)
    assert (info.width, info.height) == (64, 48)
    assert info.fps == Fraction(24000, 1001)
    assert info.n_frames == 24
    assert info.pix_fmt == "yuv420p" and info.bit_depth == 8 and not info.full_range
    assert not info.is_still


def test_read_frames_streams_in_order_with_pts_and_luma(gray_clip):
    frames = list(io.read_frames(gray_clip))
    assert [f.index for f in frames] == list(range(24))
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == 24
    first = frames[0]
    assert first.source.shape == (48, 64, 3) and first.source.dtype == np.uint8
    assert first.luma_plane.shape == (48, 64) and first.luma_plane.dtype == np.uint8
    assert first.color is None


@pytest.mark.parametrize("prefetch", [0, 2])
def test_read_frames_streams_and_stops_cleanly(gray_clip, prefetch):
    import threading

    before = threading.active_count()
    iterator = io.read_frames(gray_clip, prefetch=prefetch)
    assert [next(iterator).index for _ in range(3)] == [0, 1, 2]
    iterator.close()  # a consumer that stops early must not leave a decode thread behind
    assert threading.active_count() == before
    same = [f.pts for f in io.read_frames(gray_clip, prefetch=prefetch)]
    assert same == [f.pts for f in io.read_frames(gray_clip, prefetch=0)]


def test_decode_errors_reach_the_consumer(tmp_path):
    bogus = tmp_path / "bogus.mkv"
    bogus.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(200))
    with pytest.raises(VideoOpenError, match="bogus.mkv"):
        list(io.read_frames(bogus))


@pytest.mark.parametrize(("pix_fmt", "full_range", "depth"), [
    ("gray", True, 8), ("yuvj420p", True, 8), ("yuv420p10le", False, 10)])
def test_pixel_formats(media_dir, pix_fmt, full_range, depth):
    codec = "ffv1" if pix_fmt == "gray" else "libx264"
    path = write_clip(media_dir / f"fmt_{pix_fmt}.mkv", n_frames=4, audio=False, pix_fmt=pix_fmt,
                      codec=codec)
    info = io.probe(path)
    assert info.pix_fmt == pix_fmt and info.full_range == full_range and info.bit_depth == depth
    frame = next(io.read_frames(path))
    assert frame.luma_plane.dtype == (np.uint16 if depth > 8 else np.uint8)
    assert frame.source.dtype == np.uint8 and frame.source.shape == (48, 64, 3)
    # the decoded RGB follows the bars, not a range-shifted version of them
    expected = np.asarray(Image.fromarray(frame.source).convert("L"), dtype=float)
    assert abs(expected.mean() - frame.source.mean()) < 2


def test_rotation_is_reported(media_dir):
    path = write_clip(media_dir / "rotated.mp4", n_frames=3, audio=False, rotation_deg=90)
    assert io.probe(path).rotation_deg == 90


def test_still_detected_by_content_not_extension(media_dir):
    disguised = media_dir / "photo.mp4"
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(disguised, format="PNG")
    info = io.probe(disguised)
    assert info.is_still and (info.width, info.height) == (50, 40)
    frames = list(io.read_frames(disguised))
    assert len(frames) == 1 and frames[0].source.shape == (40, 50, 3)


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "text", "audio_only"])
def test_bad_inputs_raise_one_line_errors(media_dir, tmp_path, case):
    path = {
        "missing": tmp_path / "nope.mp4",
        "directory": tmp_path,
        "empty": tmp_path / "empty.mp4",
        "text": tmp_path / "notes.mp4",
        "audio_only": tmp_path / "sound.m4a",
    }[case]
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not a film\n" * 20)
    elif case == "audio_only":
        with av.open(str(path), "w") as container:
            stream = container.add_stream("aac", rate=48000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate = 48000
            container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    with pytest.raises(VideoOpenError) as info:
        io.probe(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_load_still_honours_exif_orientation(tmp_path):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(rgb).save(path, exif=exif, quality=95)
    loaded = io.load_still(path)
    assert loaded.shape == (40, 20, 3)
    assert loaded[:15, :, 0].mean() > 200  # the red half is now on top


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "I;16", "P"])
def test_load_still_converts_any_mode_to_rgb(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 30, 3), np.uint8))
    if mode == "I;16":
        image = Image.fromarray((np.arange(900).reshape(30, 30) * 70).astype(np.uint16))
    else:
        image = base.convert(mode)
    path = tmp_path / ("still.jpg" if mode == "CMYK" else "still.png")
    image.save(path)
    loaded = io.load_still(path)
    assert loaded.shape == (30, 30, 3) and loaded.dtype == np.uint8


def test_load_still_errors_name_the_reference(tmp_path):
    with pytest.raises(ReferenceImageError, match="does not exist"):
        io.load_still(tmp_path / "missing.jpg")
    bogus = tmp_path / "bogus.jpg"
    bogus.write_text("not an image")
    with pytest.raises(ReferenceImageError, match="bogus.jpg"):
        io.load_still(bogus)


def corrupt_middle(path, out):
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    for offset in range(len(data) // 3, len(data) // 3 + 3000, 200):
        data[offset:offset + 40] = rng.integers(0, 255, 40, dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


def test_corrupt_packets_are_replaced_by_repeats_keeping_timing(media_dir, caplog):
    clean = write_clip(media_dir / "clean.mp4", n_frames=48, width=160, height=120)
    broken = corrupt_middle(clean, media_dir / "broken.mp4")
    good = list(io.read_frames(clean))
    frames = list(io.read_frames(broken))
    assert [f.pts for f in frames] == [f.pts for f in good]
    assert [f.index for f in frames] == list(range(48))
    assert "repeat" in caplog.text


def test_truncated_files(media_dir):
    whole = write_clip(media_dir / "whole.mkv", n_frames=48, codec="ffv1", audio=False)
    half = media_dir / "half.mkv"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    frames = list(io.read_frames(half))  # Matroska: what was written decodes
    assert 10 < len(frames) < 48
    mp4 = write_clip(media_dir / "whole.mp4", n_frames=48)
    cut = media_dir / "cut.mp4"
    cut.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    with pytest.raises(VideoOpenError, match="complete"):  # MP4: the index is at the end
        io.probe(cut)
