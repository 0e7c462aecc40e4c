"""The command line: real runs on small real files, messages, exit codes, nothing left behind."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vidcolor import __version__, io
from vidcolor.atomic import partial_path
from vidcolor.cli import app, default_output

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_explains_the_main_form():
    result = run("--help")
    assert result.exit_code == 0
    for flag in ("--ref", "--out", "--overwrite", "--quiet", "--device", "--method",
                 "--no-temporal",                 "--temporal-strength", "--codec", "--version"):
        assert flag in result.output


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_colorizes_a_clip_to_the_default_output(gray_clip, ref_still, tmp_path):
    src = tmp_path / "film.mp4"
    src.write_bytes(gray_clip.read_bytes())
    result = run(src, "--ref", ref_still, "--quiet")
    assert result.exit_code == 0, result.output
    out = tmp_path / "film.color.mp4"
    assert result.output.strip() == str(out)
    assert io.probe(out).n_frames == io.probe(src).n_frames
    assert src.read_bytes() == gray_clip.read_bytes()  # the input is never modified


def test_flags_reach_the_encoder(gray_clip, ref_still, tmp_path):
    out = tmp_path / "archival.mkv"
    result = run(gray_clip, "-r", ref_still, "-o", out, "--codec", "ffv1", "--chroma", "444",
                 "--no-temporal", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    info = io.probe(out)
    assert info.codec == "ffv1" and info.pix_fmt == "yuv444p"


def test_existing_output_is_refused_then_overwritten(gray_clip, ref_still, tmp_path):
    out = tmp_path / "taken.mp4"
    out.write_bytes(b"precious")
    assert_one_line_error(run(gray_clip, "--ref", ref_still, "-o", out, "-q"), "--overwrite")
    assert out.read_bytes() == b"precious"
    assert run(gray_clip, "--ref", ref_still, "-o", out, "-q", "--overwrite").exit_code == 0
    assert io.probe(out).n_frames == 24


def test_missing_reference_is_one_line_and_leaves_nothing(gray_clip, tmp_path):
    out = tmp_path / "never.mp4"
    assert_one_line_error(run(gray_clip, "--ref", tmp_path / "nope.jpg", "-o", out),
                          "nope.jpg", "does not exist")
    assert not out.exists() and not partial_path(out).exists()


def test_grey_reference_is_refused(gray_clip, tmp_path):
    from PIL import Image

    grey = tmp_path / "grey.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(grey)
    out = tmp_path / "never.mp4"
    result = run(gray_clip, "--ref", grey, "-o", out)
    assert_one_line_error(result, "grey")
    assert not list(tmp_path.glob("never*"))


def test_corrupted_model_checkpoint_is_one_line(gray_clip, ref_still, tmp_path, monkeypatch):
    """A damaged copy of the shipped network (one flipped byte) is refused by its sha256."""
    from vidcolor import weights

    shipped, _ = weights.shipped_weights_path("net")
    damaged = bytearray(shipped.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / shipped.name).write_bytes(bytes(damaged))
    monkeypatch.setenv(weights.MODEL_DIR_ENV, str(tmp_path / "models"))
    out = tmp_path / "never.mp4"
    result = run(gray_clip, "--ref", ref_still, "--method", "net", "-o", out)
    assert_one_line_error(result, shipped.name, "corrupted", "reinstall")
    assert not out.exists() and not partial_path(out).exists()


def test_non_media_input_is_one_line(ref_still, tmp_path):
    fake = tmp_path / "film.mp4"
    fake.write_text("hello, not a film\n" * 10)
    assert_one_line_error(run(fake, "--ref", ref_still), "film.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["film.mp4"]


@pytest.mark.parametrize("args", [["--codec", "mpeg1"], ["--temporal-strength", "3"],
                                  ["--crf", "99"], ["--device", "tpu"], ["--method", "magic"]])
def test_bad_options_are_usage_errors(gray_clip, ref_still, args):
    result = run(gray_clip, "--ref", ref_still, *args)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_still_in_still_out(ref_still, tmp_path):
    import numpy as np
    from conftest import moving_bars
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    Image.fromarray(moving_bars(0, 80, 60)).save(photo)
    out = tmp_path / "photo.color.png"
    assert default_output(photo) == out
    result = run(photo, "--ref", ref_still, "-q")
    assert result.exit_code == 0, result.output
    colored = np.asarray(Image.open(out))
    assert colored.shape == (60, 80, 3)


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "vidcolor", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--ref" in result.stdout


@pytest.mark.parametrize(("args", "work_side_px", "encoder"), [
    ([], 256, "medium"), (["--preset", "fast"], 192, "veryfast"),
    (["--preset", "best"], 320, "slow"),
    (["--preset", "fast", "--encoder-preset", "slow"], 192, "slow"),
])
def test_speed_preset_reaches_the_options_and_flags_override_it(gray_clip, ref_still, tmp_path,
                                                                monkeypatch, args, work_side_px,
                                                                encoder):
    received = {}
    monkeypatch.setattr("vidcolor.cli.colorize_video",
                        lambda src, ref, out, opts, **kwargs: received.setdefault("opts", opts))
    result = run(gray_clip, "-r", ref_still, "-o", tmp_path / "out.mp4", "-q",
                 "--temporal-strength", "0.3", *args)
    assert result.exit_code == 0, result.output
    opts = received["opts"]
    assert opts.colorize.work_side_px == work_side_px and opts.encode.preset == encoder
    assert opts.temporal.strength == 0.3


def test_an_x264_name_given_as_preset_points_to_encoder_preset(gray_clip, ref_still, tmp_path):
    result = run(gray_clip, "-r", ref_still, "-o", tmp_path / "out.mp4", "--preset", "medium")
    assert result.exit_code == 2 and "--encoder-preset" in result.output


@pytest.mark.parametrize(("name", "codec", "expected"), [
    ("film.mp4", "h264", "film.color.mp4"), ("film.mp4", "prores", "film.color.mov"),
    ("film.mkv", "prores", "film.color.mkv"), ("film.mov", "ffv1", "film.color.mkv"),
    ("film.avi", "h264", "film.color.mkv"),
])
def test_default_output_picks_a_container_that_holds_the_codec(tmp_path, name, codec, expected):
    assert default_output(tmp_path / name, codec) == tmp_path / expected


def test_prores_from_an_mp4_lands_in_a_mov(gray_clip, ref_still, tmp_path):
    src = tmp_path / "film.mp4"
    src.write_bytes(gray_clip.read_bytes())
    result = run(src, "--ref", ref_still, "--codec", "prores", "-q")
    assert result.exit_code == 0, result.output
    out = tmp_path / "film.color.mov"
    assert io.probe(out).codec == "prores" and io.probe(out).n_frames == 24


def test_output_equal_to_the_input_is_refused_even_with_overwrite(gray_clip, ref_still, tmp_path):
    src = tmp_path / "film.mp4"
    src.write_bytes(gray_clip.read_bytes())
    before = src.read_bytes()
    for target in (src, tmp_path / "." / "film.mp4"):
        result = run(src, "--ref", ref_still, "-o", target, "--overwrite")
        assert_one_line_error(result, "is the input itself")
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["film.mp4"]


@pytest.mark.parametrize("codec, pix_fmt, suffix", [("h265", "yuv420p10le", ".mkv"),
                                                    ("prores", "yuv422p10le", ".mov"),
                                                    ("ffv1", "yuv444p", ".mkv")])
def test_pix_fmt_sets_chroma_and_depth(gray_clip, ref_still, tmp_path, codec, pix_fmt, suffix):
    out = tmp_path / f"out{suffix}"
    result = run(gray_clip, "-r", ref_still, "-o", out, "--codec", codec, "--pix-fmt", pix_fmt,
                 "--no-temporal", "-q")
    assert result.exit_code == 0, result.output
    assert io.probe(out).pix_fmt == pix_fmt


@pytest.mark.parametrize("args, fragment", [
    (("--pix-fmt", "yuv422p10le"), "prores only"),
    (("--codec", "prores", "--pix-fmt", "yuv420p"), "ProRes is 10-bit"),
    (("--pix-fmt", "yuv444p", "--bit-depth", "10"), "contradicts"),
    (("--pix-fmt", "rgb24"), "'rgb24' is not one of"),
])
def test_bad_pix_fmt_is_a_usage_error(gray_clip, ref_still, tmp_path, args, fragment):
    result = run(gray_clip, "-r", ref_still, "-o", tmp_path / "out.mkv", *args, "-q")
    assert result.exit_code == 2 and fragment in result.output
    assert not (tmp_path / "out.mkv").exists()


def test_queue_add_takes_pix_fmt_like_colorize(gray_clip, ref_still, tmp_path):
    from vidcolor.cli import queue_app

    url = str(tmp_path / "queue.sqlite3")
    base = ["add", str(gray_clip), "--ref", str(ref_still), "--queue", url, "--codec", "ffv1"]
    bad = runner.invoke(queue_app, [*base, "--pix-fmt", "yuv422p10le", "--out-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "prores only" in bad.output
    good = runner.invoke(queue_app, [*base, "--pix-fmt", "yuv444p10le",
                                     "--out-dir", str(tmp_path)])
    assert good.exit_code == 0, good.output
