"""QA report: per-shot colourfulness, chroma flicker and colour consistency, as JSON and HTML.

Owns the per-frame measurements taken while the film streams through (nothing is decoded twice
and only a few numbers per frame are kept), the split into shots (with the cut test it is given;
the pipeline passes where the temporal stage restarts) and the report files. The plot of
flicker over time needs matplotlib, an optional extra (`pip install vidcolor[report]`); without
it the HTML says so and still has the tables. It does not judge the film or change any frame.

Metrics (per output frame t, on a working grid whose long side is REPORT_FLOW_SIDE_PX):
- colourfulness: Hasler & Süsstrunk 2003, M = sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mu_rg^2 +
  mu_yb^2) with rg = R - G, yb = (R + G) / 2 - B on 0..255 RGB (0 = grey, ~100+ = very colourful).
- flicker_ab: mean over trusted pixels of |ab_t(x) - ab_{t-1}(x + F(x))| (Euclidean, CIE Lab a, b
  units), F the DIS flow from the *input* frame t to t-1; a pixel is trusted when it passes the
  forward-backward check of Ruder et al. 2016 and lands inside the frame. None at a shot's first
  frame, or when fewer than MIN_TRUSTED_FRACTION of the pixels are trusted.
- ewarp_ab: chroma E_warp (Lai et al. 2018) over the same pixels and warp: the mean over trusted
  pixels and both channels of ((ab_t - warped ab_{t-1}) / 100)^2.
- cdc: colour distribution consistency (Liu et al. 2021) within a shot, on the full-size output:
  per RGB channel a 256-bin histogram; JS divergence (log 2) between frames t and t + d of the
  same shot, averaged over channels and t, for d in CDC_STEPS; the shot's CDC is the mean over d.
  (`scripts/video_metrics.py` uses these same histogram and divergence functions.)
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from .errors import EncodeError
from .frames import Frame

REPORT_FLOW_SIDE_PX = 320  # long side of the grid flow and flicker are measured on, px
MIN_TRUSTED_FRACTION = 0.05  # share of trusted flow pixels below which flicker is not measured
FB_REL_TOL, FB_ABS_TOL_PX2 = 0.01, 0.5  # Ruder et al. forward-backward check (unitless, px^2)
CDC_STEPS = (1, 2, 4)  # frame distances d averaged by CDC
EXACT_FLOAT32_COUNT = 1 << 24  # pixels below which float32 histogram counts are exact
REPORT_SUFFIXES = (".html", ".htm", ".json")
PLOT_HINT = "The flicker plot needs matplotlib: pip install vidcolor[report]"
MATCH_EVERY_S = 0.5  # match confidence is measured at each shot start and this often
CONFIDENCE_NOTE = ("match confidence was not measured for this run (the output was made "
                   "without the model at hand)")


@dataclass
class _FrameStats:
    index: int
    time_s: float | None
    colourfulness: float
    flicker_ab: float | None
    ewarp_ab: float | None
    cdc_terms: tuple[float | None, ...]  # JS divergence to frame t - d, for d in CDC_STEPS
    shot_start: bool
    match: float | None = None  # match confidence, on sampled frames only


class QualityMonitor:
    """Measure each output frame as it streams past, then write the report.

    Args:
        shot_test: called with every frame, in order; True when the frame starts a new shot.
            None: only the first frame and a change of frame size start one.
        time_base: unit of Frame.pts (frames are placed in time with it); None uses `fps`.
        fps: frame rate, for frames without pts; None leaves times unknown.
        reference: the reference still used for every shot (its name is shown per shot), or
            a function of a frame index giving the name of the still that coloured it.
        match_confidence: a function of a frame giving the mean match confidence of its
            reference (`references.Score.match`, a cosine similarity: higher is a closer
            match); called at each shot start and every MATCH_EVERY_S. None: not measured.
    """

    def __init__(self, shot_test: Callable[[Frame], bool] | None = None,
                 time_base: Fraction | None = None, fps: Fraction | None = None,
                 reference: str | Callable[[int], str] | None = None,
                 match_confidence: Callable[[Frame], float] | None = None) -> None:
        self._shot_test = shot_test
        self.reference = reference
        self._match_confidence = match_confidence
        self._last_match_s: float | None = None
        self._time_base = time_base
        self._fps = fps
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        self._stats: list[_FrameStats] = []
        self._prev: tuple[tuple[int, ...], np.ndarray, np.ndarray] | None = None
        self._recent: deque[np.ndarray] = deque(maxlen=max(CDC_STEPS))  # this shot's histograms

    def add(self, frame: Frame) -> None:
        """Measure the next output frame (`source`, `color`: (H, W, 3) uint8 RGB)."""
        if frame.color is None:
            raise EncodeError(f"Frame {frame.index} reached the QA report without colour")
        size = _grid_size(frame.source.shape[:2])
        luma_u8 = cv2.cvtColor(cv2.resize(frame.source, size, interpolation=cv2.INTER_AREA),
                               cv2.COLOR_RGB2GRAY)  # (h, w) uint8
        color = cv2.resize(frame.color, size, interpolation=cv2.INTER_AREA)  # (h, w, 3) uint8
        ab = cv2.cvtColor(color.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[..., 1:]
        told = self._shot_test is not None and self._shot_test(frame)  # called on every frame
        prev = self._prev
        shot_start = told or prev is None or prev[0] != frame.source.shape
        flicker, ewarp = (None, None) if shot_start else self._flicker(luma_u8, ab, prev[1],
                                                                       prev[2])
        self._prev = (frame.source.shape, luma_u8, ab)
        if shot_start:
            self._recent.clear()
        hist = rgb_histograms(frame.color)
        cdc_terms = tuple(float(js_divergence(self._recent[-d], hist).mean())
                          if len(self._recent) >= d else None for d in CDC_STEPS)
        self._recent.append(hist)
        time_s = self._time_s(frame)
        self._stats.append(_FrameStats(frame.index, time_s, colourfulness(color), flicker,
                                       ewarp, cdc_terms, shot_start,
                                       self._measure_match(frame, time_s, shot_start)))

    def _measure_match(self, frame: Frame, time_s: float | None, shot_start: bool) -> float | None:
        """Match confidence at shot starts and every MATCH_EVERY_S (every frame if untimed)."""
        if self._match_confidence is None:
            return None
        last = self._last_match_s
        if not (shot_start or time_s is None or last is None or time_s - last >= MATCH_EVERY_S
                or time_s < last):
            return None
        self._last_match_s = time_s
        return float(self._match_confidence(frame))

    def summary(self) -> dict:
        """Per-frame values, shots and clip totals as a JSON-ready dict (NaN-free)."""
        stats = self._stats
        starts = [i for i, s in enumerate(stats) if s.shot_start]
        shots = [self._shot(number, stats[a:b]) for number, (a, b) in
                 enumerate(zip(starts, starts[1:] + [len(stats)], strict=True), 1)]
        return {
            "frames": len(stats),
            "cuts": [stats[i].index for i in starts[1:]],
            "clip": _aggregate(stats),
            "shots": shots,
            "per_frame": {
                "index": [s.index for s in stats],
                "time_s": [_round(s.time_s) for s in stats],
                "colourfulness": [_round(s.colourfulness) for s in stats],
                "flicker_ab": [_round(s.flicker_ab) for s in stats],
                "ewarp_ab": [_round(s.ewarp_ab, 8) for s in stats],
            },
            "notes": [] if self._match_confidence else [CONFIDENCE_NOTE],
        }

    def documents(self, path: Path, header: dict | None = None) -> dict[Path, str]:
        """The report's files and their text: PATH.json only for a .json path, else PATH.html
        and PATH.json (the caller writes them).

        Args:
            path: report file (.html, .htm or .json).
            header: facts about the run shown at the top (input, reference, model, ...).

        Returns:
            {path: text}, the page first.

        Raises:
            EncodeError: bad extension.
        """
        paths = report_paths(path)
        data = {"run": header or {}} | self.summary()
        docs = {paths[0]: render_html(data)} if len(paths) == 2 else {}
        return docs | {paths[-1]: json.dumps(data, indent=2, default=str) + "\n"}

    def _flicker(self, luma_u8: np.ndarray, ab: np.ndarray, prev_luma_u8: np.ndarray,
                 prev_ab: np.ndarray) -> tuple[float | None, float | None]:
        """(flicker_ab, ewarp_ab) of frame t against t-1, or (None, None) when unmeasurable."""
        back = self._dis.calc(luma_u8, prev_luma_u8, None)  # (h, w, 2) t -> t-1, px
        fwd = self._dis.calc(prev_luma_u8, luma_u8, None)  # (h, w, 2) t-1 -> t, px
        height, width = back.shape[:2]
        map_x = back[..., 0] + np.arange(width, dtype=np.float32)[None, :]
        map_y = back[..., 1] + np.arange(height, dtype=np.float32)[:, None]
        inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
        fwd_at = cv2.remap(fwd, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mismatch = ((back + fwd_at) ** 2).sum(axis=2)
        trusted = inside & (mismatch <= FB_REL_TOL * ((back**2).sum(axis=2)
                                                     + (fwd_at**2).sum(axis=2)) + FB_ABS_TOL_PX2)
        if trusted.mean() < MIN_TRUSTED_FRACTION:
            return None, None
        warped = cv2.remap(prev_ab, map_x, map_y, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)  # (h, w, 2) Lab a, b
        diff = (ab - warped)[trusted].astype(np.float64)  # (n, 2) ab units
        return float(np.hypot(diff[:, 0], diff[:, 1]).mean()), float(np.mean((diff / 100.0) ** 2))

    def _time_s(self, frame: Frame) -> float | None:
        if frame.pts is not None and self._time_base:
            return float(frame.pts * self._time_base)
        return float(frame.index / self._fps) if self._fps else None

    def _shot(self, number: int, stats: list[_FrameStats]) -> dict:
        return {"shot": number, "first_frame": stats[0].index, "last_frame": stats[-1].index,
                "start_s": _round(stats[0].time_s), "end_s": _round(stats[-1].time_s),
                "reference": self.reference(stats[0].index) if callable(self.reference)
                else self.reference, **_aggregate(stats)}


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness of an image.

    Args:
        rgb: (H, W, 3) uint8 RGB.

    Returns:
        M >= 0: 0 for a grey image; about 15 "slightly", 60 "quite", 110 "extremely colourful".
    """
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def rgb_histograms(frame: np.ndarray) -> np.ndarray:
    """(3, 256) float64 per-channel histograms of (H, W, 3) uint8 RGB, each summing to 1."""
    pixels = frame.shape[0] * frame.shape[1]
    if pixels < EXACT_FLOAT32_COUNT:  # cv2 counts in float32: exact below 2^24, ~10x faster
        frame = np.ascontiguousarray(frame)
        hist = np.stack([cv2.calcHist([frame], [c], None, [256], [0, 256]).ravel()
                         for c in range(3)])
    else:
        hist = np.stack([np.bincount(frame[..., c].ravel(), minlength=256) for c in range(3)])
    return hist.astype(np.float64) / float(pixels)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (log base 2, in [0, 1]) along the last axis of p and q.

    Args:
        p, q: (..., N) float64 probability vectors (non-negative, summing to 1).

    Returns:
        (...) float64.
    """
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> np.ndarray:
        terms = np.where(a > 0, a * np.log2(np.where(a > 0, a, 1.0) / np.where(m > 0, m, 1.0)), 0.0)
        return terms.sum(axis=-1)

    return 0.5 * (kl(p) + kl(q))


def report_paths(path: Path) -> list[Path]:
    """The files a report at `path` consists of: [PATH.html, PATH.json] or [PATH.json].

    Raises:
        EncodeError: the extension is not .html, .htm or .json.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in REPORT_SUFFIXES:
        raise EncodeError(f"Report '{path}' must end in .html (writes .html and .json) or .json")
    return [path] if suffix == ".json" else [path, path.with_suffix(".json")]


def render_html(data: dict) -> str:
    """A self-contained HTML page of a report dict (as QualityMonitor.documents builds it)."""
    esc = html.escape
    run_rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>"
                       for k, v in data.get("run", {}).items())
    columns = ("shot", "first_frame", "last_frame", "start_s", "end_s", "frames", "reference",
               "match_confidence_mean", "colourfulness_mean", "flicker_ab_mean", "flicker_ab_max",
               "ewarp_ab_mean", "cdc")
    shot_rows = "".join("<tr>" + "".join(f"<td>{_cell(shot.get(c))}</td>" for c in columns)
                        + "</tr>" for shot in data["shots"])
    clip = data["clip"]
    plot = plot_html(data)
    notes = "".join(f"<li>{esc(n)}</li>" for n in data.get("notes", []))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vidcolor QA report</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}th{{background:#f3f3f3}}</style>
</head><body>
<h1>vidcolor QA report</h1>
<table>{run_rows}</table>
<h2>Whole clip</h2>
<p>{data["frames"]} frames, {len(data["shots"])} shots, cuts at frames
{esc(", ".join(map(str, data["cuts"])) or "none")}. Mean colourfulness
{_cell(clip["colourfulness_mean"])}; mean chroma flicker {_cell(clip["flicker_ab_mean"])} Lab ab
units (max {_cell(clip["flicker_ab_max"])}).</p>
<h2>Flicker over time</h2>
{plot}
<h2>Shots</h2>
<table><tr>{"".join(f"<th>{c}</th>" for c in columns)}</tr>{shot_rows}</table>
<h2>Notes</h2>
<ul><li>colourfulness: Hasler &amp; Süsstrunk 2003 (0 = grey, ~60 quite, ~110 extremely
colourful).</li><li>flicker_ab: mean |&Delta;ab| between each output frame and the previous
output warped along the input's optical flow, over pixels where the flow is trusted; high
values mark shots to look at.</li><li>ewarp_ab: chroma E_warp (Lai et al. 2018), the mean
squared ab difference / 100 over the same pixels.</li><li>cdc: colour distribution consistency
(Liu et al. 2021) of RGB histograms at 1, 2 and 4 frames within the shot; lower is steadier.</li>
<li>match_confidence_mean: how closely the shot's reference matches it (Deep Exemplar §4 local
term): the mean over frame cells of the best cosine similarity of backbone features to a
reference cell, on frames sampled every {MATCH_EVERY_S} s. The lowest shots are where the still
fits least and colours are most guessed: on our test films, stills of the film's own scenes
scored 0.49-0.85 and unrelated photos 0.36-0.47.</li>
{notes}</ul>
</body></html>
"""


def plot_html(data: dict) -> str:
    """An <img> of flicker and colourfulness over time with cuts marked, or a hint to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return f"<p><em>{html.escape(PLOT_HINT)}</em></p>"
    frames = data["per_frame"]
    times = frames["time_s"]
    use_time = all(t is not None for t in times)
    x = np.array(times if use_time else frames["index"], dtype=np.float64)
    cut_x = [x[frames["index"].index(c)] for c in data["cuts"]]
    flicker = np.array([np.nan if v is None else v for v in frames["flicker_ab"]])
    fig = Figure(figsize=(10, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(x, flicker, color="tab:red", lw=1)
    top.set_ylabel("flicker |Δab|")
    bottom.plot(x, frames["colourfulness"], color="tab:blue", lw=1)
    bottom.set_ylabel("colourfulness")
    bottom.set_xlabel("time (s)" if use_time else "frame")
    for axis in (top, bottom):
        for cx in cut_x:
            axis.axvline(cx, color="0.4", ls="--", lw=0.8)
    top.set_title("Chroma flicker per frame (dashed lines: shot cuts)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="flicker over time" src="data:image/png;base64,{encoded}">'


def _aggregate(stats: list[_FrameStats]) -> dict:
    flicker = [s.flicker_ab for s in stats if s.flicker_ab is not None]
    ewarp = [s.ewarp_ab for s in stats if s.ewarp_ab is not None]
    per_step = [[s.cdc_terms[i] for s in stats if s.cdc_terms[i] is not None]
                for i in range(len(CDC_STEPS))]
    cdc = [float(np.mean(terms)) for terms in per_step if terms]
    matches = [s.match for s in stats if s.match is not None]
    return {"frames": len(stats),
            "colourfulness_mean": _round(float(np.mean([s.colourfulness for s in stats])))
            if stats else None,
            "flicker_ab_mean": _round(float(np.mean(flicker))) if flicker else None,
            "flicker_ab_max": _round(float(np.max(flicker))) if flicker else None,
            "ewarp_ab_mean": _round(float(np.mean(ewarp)), 8) if ewarp else None,
            "cdc": _round(float(np.mean(cdc)), 6) if cdc else None,
            "match_confidence_mean": _round(float(np.mean(matches))) if matches else None}


def _grid_size(shape: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of the measuring grid: long side <= REPORT_FLOW_SIDE_PX, never upscaled."""
    height, width = shape
    scale = min(1.0, REPORT_FLOW_SIDE_PX / max(height, width))
    return max(8, round(width * scale)), max(8, round(height * scale))


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def _cell(value) -> str:
    return "–" if value is None else html.escape(str(value))
