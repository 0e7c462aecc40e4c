"""QA report: per-shot colourfulness and flicker on a real two-shot clip, JSON and HTML."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import vidcolor
from vidcolor.errors import EncodeError
from vidcolor.frames import Frame
from vidcolor.provenance import sidecar_path
from vidcolor.report import (
    PLOT_HINT,
    QualityMonitor,
    colourfulness,
    js_divergence,
    render_html,
    report_paths,
    rgb_histograms,
)

CUT_AT = 12  # first frame of the second shot


@pytest.fixture(scope="module")
def two_shot_clip(media_dir):
    """Real photos: a coffee cup panning, then from CUT_AT a rocket (a cut) panning."""
    from conftest import PHOTO_SIZE, photo_shots, write_clip

    return write_clip(media_dir / "two_shots.mp4", n_frames=2 * CUT_AT, width=PHOTO_SIZE[0],
                      height=PHOTO_SIZE[1], frame_of=photo_shots(("coffee", "rocket"), CUT_AT))


@pytest.fixture(scope="module")
def report_run(two_shot_clip, ref_still, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    out = vidcolor.colorize_video(two_shot_clip, ref_still, folder / "out.mp4",
                                  report=folder / "qa.html")
    return out, folder / "qa.html", json.loads((folder / "qa.json").read_text())


def test_report_finds_the_cut_and_splits_shots(report_run):
    _, _, data = report_run
    assert data["frames"] == 24 and data["cuts"] == [CUT_AT]
    first, second = data["shots"]
    assert (first["first_frame"], first["last_frame"]) == (0, CUT_AT - 1)
    assert (second["first_frame"], second["last_frame"]) == (CUT_AT, 23)
    assert first["frames"] + second["frames"] == 24
    assert first["reference"] == second["reference"] == "ref.png"
    assert second["start_s"] == pytest.approx(CUT_AT * 1001 / 24000, abs=1e-3)


def test_report_values_are_sane(report_run):
    _, _, data = report_run
    per_frame = data["per_frame"]
    assert per_frame["index"] == list(range(24))
    flicker = per_frame["flicker_ab"]
    assert flicker[0] is None and flicker[CUT_AT] is None  # a shot's first frame has no past
    measured = [v for v in flicker if v is not None]
    assert len(measured) >= 18 and all(v >= 0.0 for v in measured)
    assert all(c > 10.0 for c in per_frame["colourfulness"])  # coloured, not grey
    ewarp = [v for v in per_frame["ewarp_ab"] if v is not None]
    assert len(ewarp) == len(measured) and all(v >= 0.0 for v in ewarp)
    for shot in data["shots"]:
        assert shot["flicker_ab_mean"] >= 0.0 and shot["flicker_ab_max"] >= shot["flicker_ab_mean"]
        assert shot["ewarp_ab_mean"] >= 0.0 and 0.0 <= shot["cdc"] <= 1.0
        assert 0.0 < shot["match_confidence_mean"] <= 1.0  # a cosine similarity
    assert not data["notes"]  # match confidence was measured: no note says otherwise
    assert data["run"]["reference_sha256"] and data["run"]["model"] == "net"


def test_html_has_the_table_and_the_plot(report_run):
    pytest.importorskip("matplotlib")
    out, html_path, _ = report_run
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert '<img alt="flicker over time" src="data:image/png;base64,' in page
    assert page.count("<tr>") >= 3 and "ref.png" in page
    record = json.loads(sidecar_path(out).read_text())
    assert record["extra_outputs"]["report"] == str(html_path.resolve())


def test_html_without_matplotlib_says_how_to_get_the_plot(report_run, monkeypatch):
    _, _, data = report_run
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    page = render_html(data)
    assert "<img" not in page and PLOT_HINT in page and "<table>" in page


def test_flicker_is_zero_for_a_static_shot_and_grey_has_no_colour():
    monitor = QualityMonitor()
    rng = np.random.default_rng(0)
    source = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    color = np.zeros_like(source)
    color[..., 0] = 200
    for i in range(4):
        monitor.add(Frame(i, None, source, color=color))
    data = monitor.summary()
    assert data["cuts"] == [] and data["per_frame"]["flicker_ab"][1:] == [0.0, 0.0, 0.0]
    assert data["clip"]["ewarp_ab_mean"] == 0.0 and data["clip"]["cdc"] == 0.0
    assert colourfulness(np.full((8, 8, 3), 128, np.uint8)) == 0.0
    assert colourfulness(color) > 50.0


def test_js_divergence_known_values():
    uniform = np.full(4, 0.25)
    assert js_divergence(uniform, uniform) == 0.0
    assert js_divergence(np.array([1.0, 0, 0, 0]), np.array([0, 0, 0, 1.0])) == pytest.approx(1.0)
    hist = rgb_histograms(np.zeros((4, 4, 3), np.uint8))
    assert hist.shape == (3, 256) and (hist[:, 0] == 1.0).all()


def test_json_path_gives_only_json(tmp_path):
    monitor = QualityMonitor()
    frame = np.full((16, 16, 3), 100, np.uint8)
    monitor.add(Frame(0, None, frame, color=frame))
    (only,) = monitor.documents(tmp_path / "r.json").items()
    assert only[0] == tmp_path / "r.json" and json.loads(only[1])["frames"] == 1
    assert list(monitor.documents(tmp_path / "r.html")) == [tmp_path / "r.html",
                                                             tmp_path / "r.json"]
    assert report_paths(tmp_path / "r.html") == [tmp_path / "r.html", tmp_path / "r.json"]
    with pytest.raises(EncodeError, match=".html"):
        report_paths(tmp_path / "r.pdf")


def test_bad_report_path_fails_before_work(gray_clip, ref_still, tmp_path):
    with pytest.raises(EncodeError, match="does not exist"):
        vidcolor.colorize_video(gray_clip, ref_still, tmp_path / "out.mp4",
                                report=tmp_path / "missing" / "qa.html")
    (tmp_path / "qa.json").write_text("{}")
    with pytest.raises(EncodeError, match="already exists"):
        vidcolor.colorize_video(gray_clip, ref_still, tmp_path / "out.mp4",
                                report=tmp_path / "qa.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa.json"]


BROWSERS = ("chromium", "chromium-headless-shell", "chromium-browser")


def test_report_renders_its_plot_in_a_headless_browser(report_run, tmp_path):
    """Debian's Chromium opens the page and paints the plot (red flicker, blue colourfulness)."""
    import shutil
    import subprocess

    from PIL import Image

    pytest.importorskip("matplotlib")
    browser = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if browser is None:
        pytest.skip("no Chromium: apt-get install chromium-headless-shell (or chromium)")
    _, html_path, _ = report_run
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1100,1400", html_path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    page = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def pixels_near(rgb):  # (row, column) of every pixel close to that colour
        return np.nonzero(np.abs(page - np.array(rgb)).sum(axis=2) < 60)

    red_rows, red_cols = pixels_near((214, 39, 40))  # matplotlib's tab:red flicker line
    blue_rows, blue_cols = pixels_near((31, 119, 180))  # tab:blue colourfulness line
    assert red_rows.size > 200 and blue_rows.size > 200
    # Two stacked panels: flicker on top, colourfulness below, each line drawn across the time
    # axis (a broken or clipped image, or a stray swatch, would fail one of these).
    assert red_rows.max() < blue_rows.min()
    width = page.shape[1]
    assert np.ptp(red_cols) > width / 2 and np.ptp(blue_cols) > width / 2
