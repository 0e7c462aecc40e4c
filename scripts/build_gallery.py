"""Build the `--ref auto` gallery in vidcolor/gallery_stills/: thumbnails, licences, descriptors.

Only photos whose terms allow redistribution go in (../shared/data/train/PROVENANCE.md: the
ImageNet, BSDS500 and Urban100 photos are research-only and may not ship):
  - every DreamBooth photo of ../shared/data/train/ (google/dreambooth, CC BY 4.0; the photos
    are under the Unsplash License or were taken by the authors), per its manifest.csv;
  - the public-domain and CC0 colour photos that ship inside scikit-image (astronaut, chelsea,
    coffee, rocket), whose licences its docstrings state, and matplotlib's sample photo of
    Grace Hopper (an official US Navy portrait, public domain).
Each is saved as a JPEG (quality 90) with a long side of THUMB_PX; then the global descriptors
are computed with the shipped backbone (`vidcolor.gallery.write_features`).

Usage: python scripts/build_gallery.py [--data ../shared/data/train]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import skimage.data
from matplotlib import cbook
from PIL import Image

from vidcolor.gallery import GALLERY_DIR, gallery_stills, write_features
from vidcolor.io import load_still
from vidcolor.references import Describer
from vidcolor.weights import load_model

HOPPER_LICENCE = ("official US Navy portrait of Commodore Grace M. Hopper (James S. Davis, "
                  "1984); a work of the US federal government, public domain")
THUMB_PX = 320  # long side of a gallery thumbnail (the best preset works at 320 px)
SKIMAGE_PHOTOS = {  # name -> licence, as scikit-image's docstrings state them
    "astronaut": "NASA photograph (Eileen Collins); public domain",
    "chelsea": "CC0, by the photographer Stefan van der Walt",
    "coffee": "CC0, by the photographer Rachel Michetti (Pikolo Espresso Bar)",
    "rocket": "SpaceX photograph (DSCOVR launch); released into the public domain",
}


def thumbnail(rgb: np.ndarray) -> Image.Image:
    image = Image.fromarray(rgb)
    scale = THUMB_PX / max(image.size)
    size = tuple(max(1, round(n * scale)) for n in image.size)
    return image.resize(size, Image.Resampling.LANCZOS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/train"))
    args = parser.parse_args(argv)
    manifest = args.data / "manifest.csv"
    if not manifest.is_file():
        print(f"build_gallery: {manifest} not found; this needs ../shared/data beside the project",
              file=sys.stderr)
        return 2
    GALLERY_DIR.mkdir(exist_ok=True)
    for old in GALLERY_DIR.glob("*.jpg"):
        old.unlink()
    rows = ["| file | source | licence |", "|---|---|---|"]
    with open(manifest, newline="") as handle:
        for entry in csv.DictReader(handle):
            if not entry["file"].startswith("dreambooth_"):
                continue
            with Image.open(args.data / entry["file"]) as image:
                thumb = thumbnail(np.asarray(image.convert("RGB")))
            thumb.save(GALLERY_DIR / entry["file"], quality=90)
            rows.append(f"| {entry['file']} | `{entry['source_repo']}` @ "
                        f"`{entry['source_commit'][:12]}` `{entry['source_path']}` | "
                        f"{entry['license']} |")
    hopper = "grace_hopper.jpg"
    with Image.open(cbook.get_sample_data(hopper)) as image:
        thumbnail(np.asarray(image.convert("RGB"))).save(GALLERY_DIR / f"matplotlib_{hopper}",
                                                         quality=90)
    rows.append(f"| matplotlib_{hopper} | matplotlib sample data `{hopper}` | {HOPPER_LICENCE} |")
    for name, licence in SKIMAGE_PHOTOS.items():
        thumbnail(getattr(skimage.data, name)()).save(GALLERY_DIR / f"skimage_{name}.jpg",
                                                      quality=90)
        rows.append(f"| skimage_{name}.jpg | scikit-image `skimage.data.{name}()` | {licence} |")
    stills = gallery_stills()
    (GALLERY_DIR / "LICENSES.md").write_text(
        "# Licences of the `--ref auto` gallery\n\n"
        "Thumbnails (long side 320 px) of colour photos whose terms allow redistribution, made "
        "by scripts/build_gallery.py. DreamBooth (Ruiz et al., CVPR 2023, "
        "https://github.com/google/dreambooth): the dataset is CC BY 4.0; its photos are "
        "from Unsplash (Unsplash License) or were taken by the authors, see "
        "`dataset/references_and_licenses.txt` in that repository. scikit-image sample "
        "and matplotlib sample photos: public domain or CC0 as listed.\n\n"
        + "\n".join(rows) + "\n")
    describer = Describer(load_model("match", device="cpu"))
    path = write_features(describer, stills, [load_still(p) for p in stills])
    size = sum(p.stat().st_size for p in GALLERY_DIR.iterdir())
    print(f"{len(stills)} stills, descriptors in {path.name}; gallery {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
