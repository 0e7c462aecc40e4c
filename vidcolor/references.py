"""Which reference still colours which shot: several stills, a folder, or the shipped gallery.

One still rarely fits a reel. Given several, each shot (cut where the temporal stage resets,
`temporal.ResetTest`) gets the still that best matches a few of its frames by the score of
Deep Exemplar-based Colorization §4 (He et al. 2018): a global semantic similarity plus a local
one, where every target position is matched to its nearest reference position and scores the
cosine of their features plus beta times the correlation of their cells' luminance histograms.
The features are the colouriser's own frozen backbone's, on luminance only. A mapping file can
force the choice from any time on. This module decides; `colorize` applies the choice.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from . import frames, io
from .backbone import hypercolumn_channels
from .errors import OptionsError, ReferenceImageError
from .frames import Frame, VideoInfo
from .temporal import ResetTest, TemporalOptions

logger = logging.getLogger(__name__)

AUTO = "auto"  # `--ref auto`: the gallery that ships with the package
STILL_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
DESCRIBE_SIDE_PX = 256  # long side of the luminance image described, px (rounded to 16)
CELL_PX = 16  # one descriptor position per 16 x 16 px cell, as the paper's relu5 grid
SEMANTIC_LEVELS = 2  # the deepest tapped backbone levels count as semantic features
HIST_BINS = 16  # luminance histogram bins per cell
LUMA_BETA = 0.25  # weight of the luminance term in the local score (the paper's beta)
SAMPLE_EVERY_S = 0.5  # a shot is scored on its first frame and one frame per this many s
MAX_SAMPLES_PER_SHOT = 24  # beyond this, a long shot's samples are spread out further
LOCAL_CANDIDATES = 8  # stills ranked by the local score after the global ranking (§4)
MAP_TIME_TOLERANCE_S = 1e-3  # a map entry at a shot's printed start time covers that shot


@dataclass(frozen=True)
class Descriptor:
    """What the score needs of one image, computed once.

    Attributes:
        overall: (C,) unit vector, the mean of the deepest level's features (global term).
        cells: (N, C') unit rows, the semantic features of the N cells, row-major.
        cell_hists: (N, HIST_BINS) rows centred and scaled to unit norm, so that a dot product
            of two rows is the correlation coefficient of the cells' luminance histograms.
    """

    overall: np.ndarray
    cells: np.ndarray
    cell_hists: np.ndarray


@dataclass(frozen=True)
class Score:
    """Deep Exemplar §4 score of one reference for one target; larger is a better match.

    Attributes:
        overall: cosine of the global descriptors, in [-1, 1].
        match: mean over target cells of the best cosine to a reference cell (the local
            semantic term, in [-1, 1]); the mean match confidence.
        luminance: mean correlation of matched cells' luminance histograms, in [-1, 1].
    """

    overall: float
    match: float
    luminance: float

    @property
    def total(self) -> float:
        return self.overall + self.match + LUMA_BETA * self.luminance


class Describer:
    """Describe images with a colouriser's frozen backbone, as the §4 score wants them.

    Args:
        model: a colouriser from `weights.load_model` (its `backbone` is used, on its device).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.backbone = model.backbone
        blocks = self.backbone.feature_blocks
        self.semantic_blocks = blocks[-SEMANTIC_LEVELS:]  # the levels described, the last deepest
        self.semantic_from = hypercolumn_channels(blocks[:-SEMANTIC_LEVELS])
        self.deepest_from = hypercolumn_channels(blocks[:-1])
        self.level_scale = len(blocks) ** 0.5  # the backbone divides by sqrt(levels)
        self.device = next(model.parameters()).device

    def describe_rgb(self, rgb: np.ndarray) -> Descriptor:
        """Descriptor of an (H, W, 3) uint8 RGB image (its luminance)."""
        return self.describe_luma(frames.rgb_to_luma(rgb))

    @torch.inference_mode()
    def describe_luma(self, luma: np.ndarray) -> Descriptor:
        """Descriptor of an (H, W) float luminance image (Lab L / 100, in [0, 1])."""
        height, width = _describe_shape(luma.shape)
        small = cv2.resize(luma.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        luma_t = torch.from_numpy(small)[None, None].to(self.device)
        features = self.backbone(luma_t, CELL_PX)[0].float() * self.level_scale  # (C, h, w)
        deepest = features[self.deepest_from :].mean((1, 2))
        cells = features[self.semantic_from :].flatten(1).T  # (N, C')
        return Descriptor(
            overall=F.normalize(deepest, dim=0).cpu().numpy(),
            cells=F.normalize(cells, dim=1).cpu().numpy(),
            cell_hists=_cell_histograms(small),
        )


def score(target: Descriptor, reference: Descriptor) -> Score:
    """The §4 score of `reference` for `target` (see `Score`)."""
    similarity = target.cells @ reference.cells.T  # (N_target, N_reference) cosines
    nearest = similarity.argmax(1)
    best = similarity[np.arange(len(nearest)), nearest]
    luminance = np.einsum("ij,ij->i", target.cell_hists, reference.cell_hists[nearest])
    return Score(float(target.overall @ reference.overall), float(best.mean()),
                 float(luminance.mean()))


def _describe_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(h, w) of the described image: long side DESCRIBE_SIDE_PX, both multiples of CELL_PX."""
    height, width = shape[:2]
    scale = DESCRIBE_SIDE_PX / max(height, width)
    return tuple(max(CELL_PX, round(n * scale / CELL_PX) * CELL_PX) for n in (height, width))


def _cell_histograms(luma: np.ndarray) -> np.ndarray:
    """(N, HIST_BINS) centred unit-norm luminance histograms of the CELL_PX cells of (h, w)."""
    rows, cols = luma.shape[0] // CELL_PX, luma.shape[1] // CELL_PX
    bins = np.clip((luma * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1)
    cells = bins[: rows * CELL_PX, : cols * CELL_PX].reshape(rows, CELL_PX, cols, CELL_PX)
    cell_id = (np.arange(rows)[:, None, None, None] * cols + np.arange(cols)[None, None, :, None])
    flat = (cell_id * HIST_BINS + cells).ravel()
    hists = np.bincount(flat, minlength=rows * cols * HIST_BINS).reshape(-1, HIST_BINS)
    hists = hists - hists.mean(1, keepdims=True)
    norms = np.linalg.norm(hists, axis=1, keepdims=True)
    return (hists / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def expand_references(specs: Sequence[str | Path]) -> list[Path]:
    """The stills a `--ref` list names: files as given, a folder's stills, `auto` the gallery.

    Raises:
        ReferenceImageError: nothing given, a path that does not exist, or a folder with no
            still in it.
    """
    found: list[Path] = []
    for spec in specs:
        if str(spec) == AUTO:
            from .gallery import gallery_stills  # only `auto` needs the gallery

            found.extend(gallery_stills())
            continue
        path = Path(spec)
        if path.is_dir():
            stills = sorted(p for p in path.iterdir()
                            if p.suffix.lower() in STILL_SUFFIXES and p.is_file())
            if not stills:
                raise ReferenceImageError(
                    f"Reference folder '{path}' holds no still ({', '.join(STILL_SUFFIXES)}); "
                    f"put the reference images in it or name them one by one")
            found.extend(stills)
        elif not path.exists():
            raise ReferenceImageError(f"Reference '{path}' does not exist; check the path")
        else:
            found.append(path)
    if not found:
        raise ReferenceImageError("No reference given; pass --ref STILL (or a folder, or auto)")
    unique: dict[Path, Path] = {}  # resolved -> as given, the first time
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


@dataclass(frozen=True)
class ShotChoice:
    """The reference chosen for one shot.

    Attributes:
        number: 1-based shot number.
        start, stop: frame indices in decode order, stop exclusive.
        start_s, stop_s: the shot's time span in seconds from the film's first frame.
        reference: index into `ReferencePlan.references`.
        scores: mean §4 total score of every reference over the shot's sampled frames.
        match: mean match confidence of the chosen reference (`Score.match`).
        forced: chosen by the mapping file rather than by score.
    """

    number: int
    start: int
    stop: int
    start_s: float
    stop_s: float
    reference: int
    scores: tuple[float, ...]
    match: float
    forced: bool = False


@dataclass(frozen=True)
class ReferencePlan:
    """Which reference colours which frames: one ShotChoice per shot, in order."""

    references: tuple[Path, ...]
    shots: tuple[ShotChoice, ...]
    _starts: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", [shot.start for shot in self.shots])

    @classmethod
    def single(cls, reference: Path) -> ReferencePlan:
        """The plan of a run with one reference for everything (no scoring)."""
        return cls((Path(reference),), (ShotChoice(1, 0, 2**62, 0.0, math.inf, 0, (math.nan,),
                                                   math.nan),))

    def shot_at(self, frame_index: int) -> ShotChoice:
        """The shot that holds `frame_index` (frames past the plan stay in the last shot)."""
        return self.shots[max(0, bisect.bisect_right(self._starts, frame_index) - 1)]

    def reference_at(self, frame_index: int) -> int:
        """Index into `references` of the still that colours `frame_index`."""
        return self.shot_at(frame_index).reference

    def used(self, start: int = 0, stop: float = math.inf) -> list[int]:
        """Indices into `references` of the stills that colour frames [start, stop) (the whole
        film by default), in order of first use: the first is the one in force at `start`."""
        starts = [start] + [shot.start for shot in self.shots if start < shot.start < stop]
        return list(dict.fromkeys(self.reference_at(index) for index in starts))

    def read_stills(self, start: int = 0, stop: float = math.inf,
                    ) -> tuple[list[np.ndarray], Callable[[int], int]]:
        """The stills that colour frames [start, stop), read once in `used` order, and the map
        frame index -> position among them: what `Colorizer` and its `run` take.

        Raises:
            ReferenceImageError: a still cannot be read.
        """
        used = self.used(start, stop)
        stills = [io.load_still(self.references[i], role="reference") for i in used]
        slot = {index: position for position, index in enumerate(used)}
        return stills, lambda index: slot[self.reference_at(index)]

    def lines(self) -> list[str]:
        """The plan as text, one shot per line; also valid as a mapping file (`--ref-map`)."""
        out = ["# start        reference  # shot, end, frames, score (next best)"]
        for shot in self.shots:
            ref = self.references[shot.reference]
            ranked = sorted(range(len(shot.scores)), key=lambda i: _descending(shot.scores[i]))
            runner = next((i for i in ranked if i != shot.reference), None)
            why = ("forced by the mapping file" if shot.forced else
                   f"score {shot.scores[shot.reference]:.3f}"
                   + ("" if runner is None else
                      f" (next {self.references[runner].name} {shot.scores[runner]:.3f})"))
            out.append(f"{timecode(shot.start_s)}  {ref}  # shot {shot.number}, to "
                       f"{timecode(shot.stop_s)}, frames {shot.start}-{shot.stop - 1}, {why}")
        return out

    def to_dict(self) -> dict:
        """JSON-ready form, for the provenance sidecar, the QA report and the reel queue."""
        return {"references": [str(p) for p in self.references], "shots": [
            {"shot": s.number, "first_frame": s.start, "last_frame": s.stop - 1,
             "start_s": round(s.start_s, 3), "end_s": round(s.stop_s, 3),
             "reference": str(self.references[s.reference]),
             "match_confidence": None if math.isnan(s.match) else round(s.match, 4),
             "forced": s.forced,
             "scores": {str(p): round(v, 4) for p, v in zip(self.references, s.scores,
                                                              strict=True) if not math.isnan(v)}}
            for s in self.shots]}

    @classmethod
    def from_dict(cls, data: dict) -> ReferencePlan:
        """Rebuild a plan from `to_dict()` (the reel queue stores it so that every segment of a
        reel, on any worker, uses the same choice); scores and times keep their rounding."""
        refs = tuple(Path(p) for p in data["references"])
        index = {str(p): i for i, p in enumerate(refs)}
        return cls(refs, tuple(ShotChoice(
            s["shot"], s["first_frame"], s["last_frame"] + 1, s["start_s"], s["end_s"],
            index[s["reference"]], tuple(s["scores"].get(str(p), math.nan) for p in refs),
            math.nan if s["match_confidence"] is None else s["match_confidence"], s["forced"])
            for s in data["shots"]))


def _descending(value: float) -> float:
    """Sort key: larger scores first, unranked (NaN) ones last."""
    return math.inf if math.isnan(value) else -value


def timecode(seconds: float) -> str:
    """HH:MM:SS.mmm of a time in seconds (as the mapping file takes it)."""
    if not math.isfinite(seconds):
        return "end"
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis / 1000:06.3f}"


_TIME = re.compile(r"^(?:(?:(\d+):)?(\d+):)?(\d+(?:\.\d*)?)$")


def parse_time(text: str) -> float | None:
    """Seconds of "S[.fff]", "MM:SS[.fff]" or "HH:MM:SS[.fff]"; None if it is none of them."""
    match = _TIME.match(text)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)


def read_reference_map(path: Path, references: Sequence[Path]) -> list[tuple[float, Path]]:
    """Entries (from time s, still) of a mapping file, sorted by time.

    Each non-blank line is `START REFERENCE`, with anything after `#` a comment; START is
    seconds or [HH:]MM:SS[.fff] from the film's start; REFERENCE names one of `references`
    (by its path as given or its file name) or another still, relative to the map's folder.
    The lines `ReferencePlan.lines` prints are such a file.

    Raises:
        OptionsError: the file cannot be read, or a line is not START REFERENCE (names the
            line). ReferenceImageError: a still it names does not exist.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise OptionsError(f"Cannot read the reference map '{path}': {e}") from e
    by_name = {}
    for ref in references:
        by_name.setdefault(str(ref), ref)
        by_name.setdefault(Path(ref).name, ref)
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 1)
        start = parse_time(parts[0])
        if start is None or len(parts) < 2:
            raise OptionsError(
                f"{path}:{number}: expected 'START REFERENCE' (START like 12.5 or 00:01:02.500)"
                f", got {raw.strip()!r}")
        name = parts[1].strip()
        still = by_name.get(name)
        if still is None:
            still = next((c for c in (path.parent / name, Path(name)) if c.is_file()), None)
        if still is None:
            raise ReferenceImageError(f"{path}:{number}: reference '{name}' does not exist; "
                                      f"give a path relative to the map or one of the --ref stills")
        entries.append((start, still))
    return sorted(entries, key=lambda entry: entry[0])


class _ShotSamples:
    """The descriptors of one shot's sampled frames: its first, then one per SAMPLE_EVERY_S."""

    def __init__(self, start: int, start_s: float) -> None:
        self.start, self.start_s = start, start_s
        self.targets: list[Descriptor] = []
        self.next_sample_s = start_s
        self.spacing_s = SAMPLE_EVERY_S

    def due(self, time_s: float) -> bool:
        return time_s >= self.next_sample_s - 1e-9

    def add(self, target: Descriptor, time_s: float) -> None:
        self.targets.append(target)
        if len(self.targets) % MAX_SAMPLES_PER_SHOT == 0:
            self.spacing_s *= 2  # a long shot: enough samples, spread them wider
            self.targets = self.targets[::2]
        self.next_sample_s = time_s + self.spacing_s


class _Candidates:
    """The reference stills, described when first needed (a gallery is ranked globally first).

    Args:
        stills: the reference files.
        describer: the backbone describer.
        overall: precomputed (len(stills), C) global descriptors, or None to compute them.
    """

    def __init__(self, stills: list[Path], describer: Describer,
                 overall: np.ndarray | None = None) -> None:
        self.stills, self.describer = stills, describer
        self._descs: dict[int, Descriptor] = {}
        if overall is None:
            overall = np.stack([self.descriptor(i).overall for i in range(len(stills))])
        self.overall = overall

    def descriptor(self, index: int) -> Descriptor:
        if index not in self._descs:
            rgb = io.load_still(self.stills[index], role="reference")
            self._descs[index] = self.describer.describe_rgb(rgb)
        return self._descs[index]

    def rank(self, targets: list[Descriptor]) -> tuple[np.ndarray, np.ndarray]:
        """Mean total score (NaN for stills not ranked locally) and mean match of every still.

        As in §4: a global ranking by the overall descriptors keeps LOCAL_CANDIDATES stills,
        and the local score (with its luminance term) ranks those.
        """
        overall = np.mean([self.overall @ t.overall for t in targets], axis=0)
        keep = np.argsort(-overall)[:LOCAL_CANDIDATES]
        totals = np.full(len(self.stills), np.nan)
        matches = np.full(len(self.stills), np.nan)
        for i in keep:
            scores = [score(t, self.descriptor(int(i))) for t in targets]
            totals[i] = np.mean([s.total for s in scores])
            matches[i] = np.mean([s.match for s in scores])
        return totals, matches


def plan_references(src: Path, references: Sequence[Path], model: torch.nn.Module,
                    temporal: TemporalOptions, info: VideoInfo,
                    reference_map: Path | None = None,
                    decoded: Iterable[Frame] | None = None) -> ReferencePlan:
    """Decode the film once and choose the best reference for every shot.

    Args:
        src: the film; its frames are decoded here (or taken from `decoded`).
        references: candidate stills (see `expand_references`).
        model: the colouriser whose backbone describes frames and stills.
        temporal: the run's temporal options: shots are cut where its stage resets.
        info: the film's VideoInfo (time base and frame rate, for times).
        reference_map: a mapping file that forces the reference from given times on.
        decoded: the film's frames, if already being decoded.

    Returns:
        The plan.

    Raises:
        ReferenceImageError: a still cannot be read or is unusable; OptionsError: a bad map.
    """
    refs = [Path(p) for p in references]
    forced = [] if reference_map is None else read_reference_map(reference_map, refs)
    for _, still in forced:
        if all(still.resolve() != r.resolve() for r in refs):
            refs.append(still)
    describer = Describer(model)
    candidates = _Candidates(refs, describer, _precomputed_overall(refs, describer))
    cut_test = ResetTest(temporal)
    shots: list[tuple[_ShotSamples, tuple]] = []
    current: _ShotSamples | None = None
    first_pts, count, last_s = None, 0, 0.0
    for frame in (io.read_frames(src) if decoded is None else decoded):
        if first_pts is None:
            first_pts = frame.pts
        time_s = _time_s(frame, info, first_pts)
        if cut_test.starts_shot(frame.source) or current is None:
            if current is not None:
                shots.append((current, candidates.rank(current.targets)))
            current = _ShotSamples(frame.index, time_s)
        if current.due(time_s):
            upright = frames.turned(frame.source, info.upright_turns)  # as the stills are
            current.add(describer.describe_rgb(upright), time_s)
        count, last_s = frame.index + 1, time_s
    if current is None:
        raise ReferenceImageError(f"'{src}' has no frame to choose a reference for")
    shots.append((current, candidates.rank(current.targets)))
    frame_s = float(1 / info.fps) if info.fps else 0.0
    choices = []
    for number, (shot, (totals, matches)) in enumerate(shots, 1):
        following = shots[number][0] if number < len(shots) else None
        stop = following.start if following else count
        stop_s = following.start_s if following else last_s + frame_s
        chosen, by_map = int(np.nanargmax(totals)), False
        entry = [still for start_s, still in forced
                 if start_s <= shot.start_s + MAP_TIME_TOLERANCE_S]
        if entry:
            chosen = next(i for i, r in enumerate(refs) if r.resolve() == entry[-1].resolve())
            by_map = True
            if np.isnan(matches[chosen]):  # ranked out globally: still say how well it matches
                match = np.mean([score(t, candidates.descriptor(chosen)).match
                                 for t in shot.targets])
                matches[chosen] = match
        choices.append(ShotChoice(number, shot.start, stop, shot.start_s, stop_s, chosen,
                                  tuple(float(v) for v in totals), float(matches[chosen]),
                                  by_map))
    return ReferencePlan(tuple(refs), tuple(choices))


def _precomputed_overall(refs: list[Path], describer: Describer) -> np.ndarray | None:
    """The gallery's stored global descriptors when every still is a gallery still, else None."""
    from .gallery import stored_overall  # the gallery is optional data

    return stored_overall(refs, describer)


def _time_s(frame: Frame, info: VideoInfo, first_pts: int | None) -> float:
    """Seconds from the film's first frame (pts if known, else index / fps)."""
    if frame.pts is not None and first_pts is not None and info.time_base:
        return float((frame.pts - first_pts) * Fraction(info.time_base))
    return float(frame.index / info.fps) if info.fps else float(frame.index)
