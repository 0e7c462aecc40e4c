"""Contact sheet: frame choice while streaming, layout, and a real run through the CLI."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vidcolor
from vidcolor import io
from vidcolor.cli import app
from vidcolor.errors import OptionsError
from vidcolor.frames import Frame, rgb_to_lab
from vidcolor.preview import MAX_PREVIEW_FRAMES, ContactSheet
from vidcolor.provenance import sidecar_path

runner = CliRunner()


def offer(sheet, n_frames, shape=(30, 40)):
    for i in range(n_frames):
        rgb = np.full((*shape, 3), i % 256, np.uint8)
        sheet.add(Frame(i, i * 100, rgb, color=rgb))


@pytest.mark.parametrize("estimate", [1000, 300, 3000, None], ids=["exact", "under", "over",
                                                                     "unknown"])
def test_frames_are_evenly_spaced_whatever_the_estimate(estimate):
    sheet = ContactSheet(6, n_frames=estimate, time_base=Fraction(1, 2400))
    offer(sheet, 1000)
    chosen = sheet.chosen_indices()
    ideal = np.linspace(0, 999, 6)
    assert len(chosen) == 6 and chosen[0] == 0 and chosen[-1] == 999
    assert np.abs(np.array(chosen) - ideal).max() <= 1000 / (4 * 6)  # within a candidate step
    assert len(sheet._candidates) <= sheet._capacity  # memory stays bounded


def test_short_film_shows_every_frame_once():
    sheet = ContactSheet(6, n_frames=100)
    offer(sheet, 3)
    assert sheet.chosen_indices() == [0, 1, 2]


def test_layout_and_pixels():
    sheet = ContactSheet(4, n_frames=40)
    offer(sheet, 40, shape=(30, 40))
    reference = np.zeros((50, 50, 3), np.uint8)
    reference[..., 0] = 255
    image = sheet.render(reference)
    layout = sheet.layout
    assert image.shape == (layout.size[1], layout.size[0], 3) and image.dtype == np.uint8
    assert (layout.cell_w, layout.cell_h, layout.columns) == (40, 30, 4)
    for column, index in enumerate(sheet.chosen_indices()):
        x, y, w, h = layout.cell_box(0, column)
        assert (image[y:y + h, x:x + w] == index % 256).all()
    x, y, w, h = layout.ref_box
    assert (image[y:y + h, x:x + w, 0] > 250).all()


def test_big_frames_become_thumbnails_with_display_aspect():
    sheet = ContactSheet(2, n_frames=2, sample_aspect=Fraction(4, 3))
    offer(sheet, 2, shape=(480, 720))
    sheet.render(np.full((40, 40, 3), 128, np.uint8))
    assert (sheet.layout.cell_w, sheet.layout.cell_h) == (320, 160)


@pytest.mark.parametrize("count", [0, MAX_PREVIEW_FRAMES + 1])
def test_bad_frame_count(count):
    with pytest.raises(OptionsError, match="preview_frames"):
        ContactSheet(count)


def test_cli_preview_top_row_is_the_input_bottom_row_is_coloured(gray_clip, ref_still, tmp_path):
    out, sheet_path = tmp_path / "out.mp4", tmp_path / "sheet.png"
    result = runner.invoke(app, [str(gray_clip), "--ref", str(ref_still), "-o", str(out), "-q",
                                 "--preview", str(sheet_path), "--preview-frames", "5"])
    assert result.exit_code == 0, result.output
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    sources = [frame.source for frame in io.read_frames(gray_clip)]
    outputs = [frame.source for frame in io.read_frames(out)]
    # The same choice and layout, rebuilt from the decoded files.
    expected = ContactSheet(5, len(sources))
    for i, (source, color) in enumerate(zip(sources, outputs, strict=True)):
        expected.add(Frame(i, None, source, color=color))
    expected.render(np.asarray(Image.open(ref_still).convert("RGB")))
    layout = expected.layout
    assert sheet.shape == (layout.size[1], layout.size[0], 3)
    assert len(expected.chosen_indices()) == 5
    for column, index in enumerate(expected.chosen_indices()):
        x, y, w, h = layout.cell_box(0, column)
        assert np.array_equal(sheet[y:y + h, x:x + w], sources[index])
        x, y, w, h = layout.cell_box(1, column)
        cell = rgb_to_lab(sheet[y:y + h, x:x + w])
        assert np.hypot(cell[..., 1], cell[..., 2]).mean() > 4.0  # coloured: grey is < 1
        lightness_gap = np.abs(cell[..., 0] - rgb_to_lab(sources[index])[..., 0]).mean()
        assert lightness_gap < 3.0  # the input's own luminance
    record = json.loads(sidecar_path(out).read_text())
    assert record["extra_outputs"]["preview"] == str(sheet_path.resolve())


@pytest.mark.parametrize(("name", "fragment"), [("missing/sheet.png", "does not exist"),
                                                ("sheet.txt", "image extension")])
def test_cli_bad_preview_path_is_one_line_before_any_work(gray_clip, ref_still, tmp_path, name,
                                                          fragment):
    result = runner.invoke(app, [str(gray_clip), "--ref", str(ref_still), "-q", "-o",
                                 str(tmp_path / "out.mp4"), "--preview", str(tmp_path / name)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_cli_passes_preview_and_report_options(gray_clip, ref_still, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("vidcolor.cli.colorize_video",
                        lambda *args, **kwargs: seen.update(kwargs))
    result = runner.invoke(app, [str(gray_clip), "--ref", str(ref_still), "-q",
                                 "--preview", "s.png", "--preview-frames", "9",
                                 "--report", "r.html"])
    assert result.exit_code == 0, result.output
    assert (seen["preview"], seen["preview_frames"], seen["report"]) == (
        Path("s.png"), 9, Path("r.html"))


def test_compare_video_is_input_beside_output_with_the_sound(gray_clip, ref_still, tmp_path):
    import av
    from conftest import block_means

    out, side = tmp_path / "out.mp4", tmp_path / "side.mkv"
    vidcolor.colorize_video(gray_clip, ref_still, out, compare=side)
    sources = list(io.read_frames(gray_clip))
    outputs = list(io.read_frames(out))
    both = list(io.read_frames(side))
    assert len(both) == len(sources) == 24
    times = [float(f.pts * io.probe(side).time_base) for f in both]  # Matroska: 1 ms steps
    assert times == pytest.approx([float(f.pts * io.probe(gray_clip).time_base) for f in sources],
                                  abs=1e-3)
    for source, output, pair in zip(sources, outputs, both, strict=True):
        assert pair.source.shape == (48, 128, 3)
        left, right = pair.source[:, :64], pair.source[:, 64:]
        assert np.hypot(*rgb_to_lab(left)[..., 1:].transpose(2, 0, 1)).mean() < 3.0  # grey
        assert np.abs(left.astype(int) - source.source).mean() < 4.0  # the input
        assert np.hypot(*rgb_to_lab(right)[..., 1:].transpose(2, 0, 1)).mean() > 4.0  # grey is < 3
        # the output: 4 x 4 block means, which the compare file's 4:2:0 chroma keeps
        shown = block_means(right, 4)
        to_output = np.abs(shown - block_means(output.source, 4)).mean()
        assert to_output < 0.5 * np.abs(shown - block_means(source.source, 4)).mean()
        luma_gap = pair.luma_plane[:, 64:].astype(int) - source.luma_plane  # lossy H.264
        assert np.abs(luma_gap).mean() < 6.0  # the input's luma, through lossy H.264
    with av.open(str(side)) as a, av.open(str(gray_clip)) as b:
        assert [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size] == \
            [bytes(p) for p in b.demux(b.streams.audio[0]) if p.size]
    record = json.loads(sidecar_path(out).read_text())
    assert record["extra_outputs"]["compare"] == str(side.resolve())


def test_compare_with_a_container_that_cannot_hold_the_audio_fails_first(media_dir, ref_still,
                                                                           tmp_path):
    from conftest import write_clip

    from vidcolor.errors import EncodeError

    src = write_clip(media_dir / "pcm.mkv", n_frames=4, audio_codec="pcm_s16le")
    with pytest.raises(EncodeError, match="cannot go into"):
        vidcolor.colorize_video(src, ref_still, tmp_path / "out.mkv", compare=tmp_path / "s.mp4")
    assert list(tmp_path.iterdir()) == []


def test_rotated_film_is_shown_upright(media_dir, ref_still, tmp_path):
    """Thumbnails turn by the display rotation, counter-clockwise, as FFmpeg's players do."""
    from conftest import write_clip

    src = write_clip(media_dir / "turned.mp4", n_frames=6, audio=False, rotation_deg=90)
    turns = io.probe(src).rotation_deg // 90
    assert turns % 2 == 1
    sheet_path = tmp_path / "sheet.png"
    vidcolor.colorize_video(src, ref_still, tmp_path / "out.mp4", preview=sheet_path,
                            preview_frames=3)
    sources = [frame.source for frame in io.read_frames(src)]
    expected = ContactSheet(3, len(sources), rotation_deg=90 * turns)
    for i, source in enumerate(sources):
        expected.add(Frame(i, None, source, color=source))
    expected.render(np.asarray(Image.open(ref_still).convert("RGB")))
    assert (expected.layout.cell_w, expected.layout.cell_h) == (48, 64)  # portrait
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    for column, index in enumerate(expected.chosen_indices()):
        x, y, w, h = expected.layout.cell_box(0, column)
        assert np.array_equal(sheet[y:y + h, x:x + w], np.rot90(sources[index], turns))


def test_rotated_film_compare_shows_input_left_of_output_once_turned(media_dir, ref_still,
                                                                     tmp_path):
    """A film with a display rotation keeps it in the comparison video; turned upright as a
    player turns it, the input is on the left and the output on the right."""
    from conftest import write_clip

    src = write_clip(media_dir / "turned_cmp.mp4", n_frames=4, audio=False, rotation_deg=90)
    info = io.probe(src)
    turns = info.rotation_deg // 90
    side = tmp_path / "side.mp4"
    vidcolor.colorize_video(src, ref_still, tmp_path / "out.mp4", compare=side)
    side_info = io.probe(side)
    assert side_info.rotation_deg == info.rotation_deg
    assert (side_info.width, side_info.height) == (info.width, 2 * info.height)
    for source, shown in zip(io.read_frames(src), io.read_frames(side), strict=True):
        upright = np.rot90(shown.source, turns)  # as displayed
        left, right = np.hsplit(upright, 2)
        assert np.abs(left.astype(int) - np.rot90(source.source, turns)).mean() < 6.0  # CRF 20
        assert chroma(right) > chroma(left) + 5.0  # the coloured half is on the right


def chroma(rgb: np.ndarray) -> float:
    small = rgb.astype(np.int16)
    return float((np.abs(small[..., 0] - small[..., 1]) + np.abs(small[..., 1] - small[..., 2]))
                 .mean())
