"""The reference gallery that ships with vidcolor, for `--ref auto` (no still of one's own).

Colour photos that may be redistributed (see gallery_stills/LICENSES.md), as small thumbnails,
and their global descriptors precomputed (`references.Descriptor.overall`), so that the global
ranking of Deep Exemplar §4 over the whole gallery costs one matrix product per sampled frame;
only the few stills it keeps are read and described in full. Built by scripts/build_gallery.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import ReferenceImageError

logger = logging.getLogger(__name__)

GALLERY_DIR = Path(__file__).with_name("gallery_stills")
FEATURES_FILE = GALLERY_DIR / "overall.npz"  # names, overall (N, C), fingerprint
STILL_SUFFIX = ".jpg"


def gallery_stills() -> list[Path]:
    """The gallery's stills, sorted by name.

    Raises:
        ReferenceImageError: the gallery is missing (an incomplete install).
    """
    stills = sorted(GALLERY_DIR.glob(f"*{STILL_SUFFIX}"))
    if not stills:
        raise ReferenceImageError(f"The reference gallery '{GALLERY_DIR}' is missing or empty; "
                                  f"reinstall vidcolor, or give your own still with --ref STILL")
    return stills


def backbone_fingerprint(describer) -> float:
    """A number that changes when the describing backbone's weights or the levels it describes
    change (not with other tapped levels: the matcher and the net describe alike)."""
    total = sum(float(p.double().abs().sum()) for p in describer.backbone.parameters())
    *others, deepest = describer.semantic_blocks
    return round(total + sum(others) + 1e3 * deepest, 3)


def stored_overall(stills: list[Path], describer) -> np.ndarray | None:
    """Stored (len(stills), C) global descriptors when all `stills` are gallery stills whose
    descriptors were made by this backbone; None otherwise (the caller computes them)."""
    gallery = GALLERY_DIR.resolve()
    if not FEATURES_FILE.is_file() or any(p.resolve().parent != gallery for p in stills):
        return None
    with np.load(FEATURES_FILE) as data:
        names = [str(n) for n in data["names"]]
        overall, fingerprint = data["overall"], float(data["fingerprint"])
    if abs(fingerprint - backbone_fingerprint(describer)) > 1e-3 * max(1.0, abs(fingerprint)):
        logger.warning("the gallery's stored descriptors were made by another backbone; "
                       "describing its stills afresh")
        return None
    row = {name: i for i, name in enumerate(names)}
    if any(p.name not in row for p in stills):
        return None
    return overall[[row[p.name] for p in stills]]


def write_features(describer, stills: list[Path], images: list[np.ndarray],
                   path: Path = FEATURES_FILE) -> Path:
    """Store the global descriptors of the stills (their (H, W, 3) uint8 RGB `images`), as
    scripts/build_gallery.py does."""
    overall = np.stack([describer.describe_rgb(image).overall for image in images])
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, names=np.array([p.name for p in stills]),
                            overall=overall.astype(np.float32),
                            fingerprint=np.float64(backbone_fingerprint(describer)))
    tmp.replace(path)
    return path
