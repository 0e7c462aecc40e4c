"""scripts/evaluate.py videos on a tiny synthetic colour clip, so it runs without ../shared."""

from __future__ import annotations

import math
import re
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import load_script
from PIL import Image

from vidcolor import io

METRIC_COLUMNS = ("PSNR dB", "SSIM", "Ewarp RGB", "Ewarp ab", "CDC", "fps")


@pytest.fixture
def evaluate(monkeypatch):
    """scripts/evaluate.py as a module (it imports its neighbour video_metrics.py)."""
    return load_script(monkeypatch, "evaluate")


def moving_colour(index: int, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB: a colourful gradient with bars, panning 2 px per frame."""
    from conftest import colorful_still

    rgb = colorful_still(width + 32, height).astype(np.int16)
    rgb[:, ::12] //= 2  # texture, so that optical flow has something to follow
    return np.ascontiguousarray(rgb[:, 2 * index: 2 * index + width].astype(np.uint8))


@pytest.fixture
def clip_dir(tmp_path) -> Path:
    """A folder with one colour clip (8 frames, 64x48, AAC) and its first frame as png."""
    from conftest import write_clip

    clip = write_clip(tmp_path / "pan.mp4", n_frames=8, frame_of=moving_colour)
    first = next(iter(io.read_frames(clip)))
    Image.fromarray(first.source).save(tmp_path / "pan_frame0.png")
    return tmp_path


def test_videos_prints_every_metric(evaluate, clip_dir, capsys):
    code = evaluate.main(["videos", str(clip_dir), "--strengths", "0,1", "--end-to-end", "-v"])
    out = capsys.readouterr().out
    assert code == 0, out
    header = next(line for line in out.splitlines() if line.startswith("clip"))
    for column in METRIC_COLUMNS:
        assert column in header
    rows = {tuple(line.split()[1:3]): line.split() for line in out.splitlines()
            if line.startswith("pan ")}
    assert set(rows) == {("cached", "0.00"), ("cached", "0.60"), ("cached", "1.00"),
                         ("e2e", "0.00"), ("e2e", "0.60")}  # 0 and the default always run
    for label, row in rows.items():
        values = [float(v) for v in row[3:9]]  # PSNR, SSIM, E_warp RGB and ab, CDC, fps
        assert all(math.isfinite(v) for v in values), (label, row)
        assert 10.0 < values[0] < 100.0 and 0.0 < values[1] <= 1.0
    assert "temporal (λ=0.60) vs per-frame (λ=0), cached: chroma E_warp" in out
    assert "temporal (λ=0.60) vs per-frame (λ=0), end to end: chroma E_warp" in out
    assert "λ curve" in out and "frames agree to" in out


def test_videos_missing_dir_is_one_line(evaluate, tmp_path, capsys):
    assert evaluate.main(["videos", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a directory" in err


def test_videos_clip_without_first_frame_is_refused(evaluate, clip_dir, capsys):
    (clip_dir / "pan_frame0.png").unlink()
    assert evaluate.main(["videos", str(clip_dir)]) == 1
    assert "pan_frame0.png" in capsys.readouterr().err


def test_videos_bad_strengths_is_usage_error(evaluate, clip_dir):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["videos", str(clip_dir), "--strengths", "0,1.5"])
    assert exit_info.value.code == 2


def test_grey_copy_keeps_luma_and_audio(evaluate, clip_dir, tmp_path):
    clip = clip_dir / "pan.mp4"
    grey = evaluate.write_grey_copy(clip, tmp_path / "grey.mp4")
    pairs = list(zip(io.read_frames(clip), io.read_frames(grey), strict=True))
    assert len(pairs) == 8
    for original, copy in pairs:
        np.testing.assert_array_equal(copy.luma_plane, original.luma_plane)
        assert np.all(copy.source == copy.source[..., :1])  # R = G = B
    with av.open(str(grey)) as container:
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]


def write_photos(folder: Path, count: int = 3) -> list[Path]:
    """`count` different colour photos photo_K.png (96x80) in `folder`, for `images`."""
    from conftest import colorful_still

    paths = [folder / f"photo_{k}.png" for k in range(count)]
    for k, path in enumerate(paths):
        Image.fromarray(np.roll(colorful_still(96, 80), 20 * k, axis=1)).save(path)
    return paths


def test_images_protocol_pairs_are_seeded_per_photo(evaluate, tmp_path):
    """The self-augmented reference depends on the seed and the file name only (train.py's
    --val-photos and `evaluate.py images` score the same pairs); unrelated is the next photo."""
    paths = write_photos(tmp_path)
    truth, reference = evaluate.photo_pair(paths, 1, False)
    again = evaluate.photo_pair(paths, 1, False)[1]
    np.testing.assert_array_equal(reference, again)
    assert not np.array_equal(reference, evaluate.photo_pair(paths, 1, False, seed=1)[1])
    assert not np.array_equal(reference, truth)  # distorted, not the photo itself
    wrapped = evaluate.photo_pair(paths, 2, True)[1]  # the last photo's unrelated: the first
    np.testing.assert_array_equal(wrapped, evaluate.load_rgb(paths[0]))


def test_images_summary_is_the_mean_of_the_photos_to_three_decimals(evaluate, tmp_path, capsys):
    """The issue's measure is a mean PSNR whose gains are compared to 0.01 dB: the summary gives
    three decimals, and its vidcolor row is the mean of the per-photo rows."""
    write_photos(tmp_path)
    assert evaluate.main(["images", str(tmp_path), "--method", "match", "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    per_photo = [float(line.split()[3]) for line in lines if line.startswith("photo_")]
    summary = next(line.split() for line in lines if line.startswith("vidcolor "))
    assert len(per_photo) == 3 and len(summary[1].split(".")[1]) == 3
    assert float(summary[1]) == pytest.approx(np.mean(per_photo), abs=2e-3)


def test_coverage_is_where_the_reference_pixels_come_from(evaluate, tmp_path):
    """`reference_coverage` draws the distortion `photo_pair` draws: on a photo whose colours
    encode each pixel's position, every reference pixel's position is marked shown, and the
    crop leaves part of the photo unshown. Undistorted (x0; only the flip), all of it is shown."""
    height, width = 90, 120
    rows, cols = np.mgrid[0:height, 0:width]
    path = tmp_path / "positions.png"
    Image.fromarray(np.dstack([cols * 2, rows * 2, np.full_like(rows, 128)]).astype(np.uint8)
                    ).save(path)
    _, reference = evaluate.photo_pair([path], 0, False)
    shown = evaluate.reference_coverage(path, (height, width))
    landed_rows = np.clip(np.rint(reference[..., 1] / 2).astype(int), 0, height - 1)
    landed_cols = np.clip(np.rint(reference[..., 0] / 2).astype(int), 0, width - 1)
    assert shown[landed_rows, landed_cols].mean() > 0.99  # rounding of the interpolated colours
    assert 0.3 < shown.mean() < 0.97
    assert evaluate.reference_coverage(path, (height, width), strength=0.0).all()


def test_coverage_split_is_printed_and_refused_with_unrelated(evaluate, tmp_path, capsys):
    write_photos(tmp_path)
    assert evaluate.main(["images", str(tmp_path), "--method", "match", "--coverage"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    match = re.fullmatch(r"vidcolor, pixels the reference does not show: ([\d.]+) % of the "
                         r"pixels, ([\d.]+) % of the squared error \(MSE ([\d.]+) there, "
                         r"([\d.]+) where it shows them\)", line)
    assert match, line
    unseen_share, error_share = float(match[1]), float(match[2])
    assert 0.0 < unseen_share < 50.0 and 0.0 < error_share < 100.0
    assert evaluate.main(["images", str(tmp_path), "--coverage", "--unrelated"]) == 1
    assert "drop --unrelated" in capsys.readouterr().err
