"""Colourise every clip of ../shared/data/film/ with all of its reference stills; print choices.

Each clip folder holds CLIP.mp4 and references/ (several stills the source project supplies).
vidcolor picks the best still per shot (`references.plan_references`, Deep Exemplar §4 score);
this prints that plan, then the QA report's per-shot table (reference, mean match confidence,
colourfulness, chroma flicker) of the real run, with the run's speed. These films are B&W, so
there is no ground truth colour: the choice is checked by eye on the contact sheets (and, for
deepremaster_abomb, whose references are hand-coloured frames of its own shots, in order).

Usage: python scripts/film_references.py [--data ../shared/data/film] [--out-dir runs/film]
                                          [--method match|net] [--clips NAME,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vidcolor import io
from vidcolor.colorize import ColorizeOptions
from vidcolor.pipeline import PipelineOptions, colorize_video


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/film"))
    parser.add_argument("--out-dir", type=Path, default=Path("runs/film"))
    parser.add_argument("--method", default="match")
    parser.add_argument("--clips", default="", help="comma-separated clip folders (default: all)")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"film_references: {args.data} not found; it needs ../shared/data beside the "
              f"project", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(filter(None, args.clips.split(",")))
    opts = PipelineOptions(colorize=ColorizeOptions(method=args.method), overwrite=True)
    for clip in sorted(p for p in args.data.iterdir() if p.is_dir()):
        if wanted and clip.name not in wanted:
            continue
        film = next(clip.glob("*.mp4"))
        refs = sorted((clip / "references").iterdir())
        out = args.out_dir / f"{clip.name}.mp4"
        report = args.out_dir / f"{clip.name}.html"
        print(f"\n== {clip.name}: {film.name}, {io.probe(film).n_frames} frames, "
              f"{len(refs)} references")
        started = time.perf_counter()
        colorize_video(film, [clip / "references"], out, opts, report=report,
                       preview=args.out_dir / f"{clip.name}.jpg",
                       on_plan=lambda plan: print("\n".join(plan.lines())))
        seconds = time.perf_counter() - started
        data = json.loads(report.with_suffix(".json").read_text())
        print(f"{'shot':>4s} {'start s':>8s} {'end s':>8s} {'reference':24s} {'match':>6s} "
              f"{'colourful':>9s} {'flicker':>7s}")
        for shot in data["shots"]:
            print(f"{shot['shot']:4d} {shot['start_s']:8.2f} {shot['end_s']:8.2f} "
                  f"{shot['reference']:24s} {_num(shot['match_confidence_mean']):>6s} "
                  f"{_num(shot['colourfulness_mean'], 1):>9s} "
                  f"{_num(shot['flicker_ab_mean'], 2):>7s}")
        print(f"{data['frames']} frames in {seconds:.1f} s ({data['frames'] / seconds:.1f} fps, "
              f"choosing and colourising, report on); report {report}")
    return 0


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
