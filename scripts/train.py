"""Train the learned ColorNet (`--method net`) on ../shared/data/train/ on a CPU; resumable.

Self-augmented training pairs (Color2Embed / SSCN): each photo's random 256 px square is the
target, and its reference is the same square distorted by `evaluate.augment_reference` (flip,
TPS warp, rotation, crop; no colour change). Both go to the 192 x 192 working size. What is
frozen is computed once and cached in fp16 under --cache (git-ignored runs/): the backbone's
hypercolumns of target and reference (batch norms in eval mode, as at inference) projected on a
training-set PCA basis, target luminance, true ab at stride 2 and at full resolution, and the
reference's grid ab, luminance and the guide channels colorize carries with its colours.
Training then runs only the learned attention, confidence and decoder. ~20 % of the pairs get
another photo's reference (unrelated), so the net learns to fall back to low chroma when
nothing matches.

Validation: every 20th photo (sorted by name) is held out, each scored with its own reference
("related") and with the next held-out photo's ("unrelated"). Logged against two baselines:
copying the warped ab (the attention alone) and grey (ab = 0). With --val-photos, also the
PSNR of the whole colorize stage on those photos, as `evaluate.py images` reports it, and the
best state is kept by that (loss gains on the pairs have not always reached whole photos).

Usage: python scripts/train.py --out models/colornet.pt [--resume] [--steps N] [--minutes M]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from evaluate import augment_reference, load_rgb, photo_pair, psnr

from vidcolor import frames
from vidcolor.atomic import writing
from vidcolor.backbone import block_table, hypercolumn_channels
from vidcolor.colorize import (
    CARRIED_CHANNELS,
    GUIDE_RADIUS_PX,
    ColorizeOptions,
    Colorizer,
    reference_carry,
)
from vidcolor.errors import VidcolorError
from vidcolor.model import AB_SCALE, ColorNet, NetConfig
from vidcolor.weights import load_model, save_checkpoint

WORK_PX = 192  # side of the square training working image, px
CROP_PX = 256  # side of the square crop of each photo (its shorter side), px
GRID_PX = 4  # backbone grid stride, px
VAL_EVERY = 20  # every Nth photo (sorted) is held out for validation
PCA_PHOTOS = 200  # photos whose hypercolumns give the fixed PCA basis
ENCODE_BATCH = 16  # photos per backbone call while caching
SMOOTH_L1_BETA = 0.1  # in ab / 100 units: quadratic below 10 ab units
LOG_MSE_FLOOR = 2e-4  # `--loss log-mse`: added to each pair's MSE, (ab / 100)^2 (2 ab units^2)
# 2: full-resolution true ab and the reference's carried guide channels; 3: the backbone's
# batch norms in eval mode (before, the cache held features normalised by each batch of 16
# photos, which inference never sees, and the build overwrote the ImageNet statistics)
CACHE_VERSION = 3
GUIDE_EPS = ColorizeOptions(method="net").guide_eps  # the guided upsampling's, as colorize uses
# The shipped net's backbone taps. Adding block 8 (as the matcher does) was tried: it gave the
# trained net nothing (MODEL_CARD.md), so the caches and the recipe keep these.
NET_FEATURE_BLOCKS = (2, 4, 10, 14)

logger = logging.getLogger("train")


def make_pair(path: Path, seed: int, strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(target, reference) Lab float32 (WORK_PX, WORK_PX, 3) of one photo, deterministic;
    `strength` scales the reference's distortion (`augment_reference`)."""
    rgb = load_rgb(path)
    rng = np.random.default_rng([seed, zlib.crc32(path.name.encode())])
    height, width = rgb.shape[:2]
    side = min(height, width, CROP_PX)
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    target = np.ascontiguousarray(rgb[top : top + side, left : left + side])
    reference = augment_reference(target, rng, strength)
    size = (WORK_PX, WORK_PX)
    return tuple(
        cv2.resize(frames.rgb_to_lab(image), size, interpolation=cv2.INTER_AREA)
        for image in (target, reference)
    )


def lab_tensors(labs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Lab images -> (B, 1, H, W) luminance in [0, 1] and (B, 2, H, W) Lab ab."""
    lab = torch.from_numpy(np.stack(labs)).permute(0, 3, 1, 2)
    return lab[:, :1] / 100.0, lab[:, 1:]


def pca_basis(net: ColorNet, paths: list[Path], seed: int, dims: int) -> torch.Tensor:
    """(C, dims) top uncentred principal directions of target and reference hypercolumns of
    PCA_PHOTOS of the photos, evenly spread."""
    net.backbone.eval()  # ImageNet batch-norm statistics, as at inference
    spread = np.linspace(0, len(paths) - 1, min(PCA_PHOTOS, len(paths))).astype(int)
    paths = [paths[i] for i in spread]
    gram = None
    for start in range(0, len(paths), ENCODE_BATCH):
        pairs = [make_pair(p, seed) for p in paths[start : start + ENCODE_BATCH]]
        luma, _ = lab_tensors([lab for pair in pairs for lab in pair])
        with torch.inference_mode():
            feats = net.backbone(luma, GRID_PX)  # (B, C, h, w)
        flat = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).double()
        gram = flat.T @ flat if gram is None else gram + flat.T @ flat
    eigvals, eigvecs = torch.linalg.eigh(gram)
    kept = eigvals.flip(0)[:dims].sum() / eigvals.sum()
    logger.info("PCA: %d of %d dims keep %.1f %% of the energy", dims, len(eigvals), 100 * kept)
    return eigvecs.flip(1)[:, :dims].float().contiguous()


def build_cache(net: ColorNet, paths: list[Path], cache: Path, seed: int,
                basis: torch.Tensor | None = None, strength: float = 1.0) -> dict:
    """Write the frozen per-pair tensors as fp16 .npy files in `cache`; returns them (mmap).

    The PCA basis is computed from the photos unless given: every further pair set of the same
    photos (another augmentation seed) must be projected on the first set's basis.
    """
    net.backbone.eval()  # the features inference computes: ImageNet batch-norm statistics
    meta_path = cache / "meta.json"
    meta = {"version": CACHE_VERSION, "seed": seed, "n": len(paths), "work_px": WORK_PX,
            "guide_radius_px": GUIDE_RADIUS_PX["net"], "guide_eps": GUIDE_EPS,
            "config": dataclasses.asdict(net.config), "names": [p.name for p in paths]}
    if strength != 1.0:
        meta["strength"] = strength
    meta = json.loads(json.dumps(meta))  # tuples -> lists, as read back from the file
    if meta_path.is_file() and cache_identity(json.loads(meta_path.read_text())) == \
            cache_identity(meta):
        cached_basis = torch.from_numpy(np.load(cache / "feature_proj.npy"))
        if basis is None or torch.equal(cached_basis, basis):
            logger.info("using the cache in %s", cache)
            net.feature_proj.copy_(cached_basis)
            return {k: np.load(cache / f"{k}.npy", mmap_mode="r")
                    for k in cache_shapes(net.config)}
        logger.info("the cache in %s has another PCA basis: building it again", cache)
    cache.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # an interrupted build must not look complete
    started = time.perf_counter()
    if basis is None:
        basis = pca_basis(net, paths, seed, net.config.feature_dims)
    net.feature_proj.copy_(basis)
    np.save(cache / "feature_proj.npy", basis.numpy())
    grid, half = WORK_PX // GRID_PX, WORK_PX // 2
    arrays = {k: np.lib.format.open_memmap(cache / f"{k}.npy", "w+", np.float16,
                                           (len(paths), *shape(net.config, grid, half)))
              for k, shape in cache_shapes(net.config).items()}
    pool = ThreadPoolExecutor(2)  # decoding and warping release the GIL for the most part
    for start in range(0, len(paths), ENCODE_BATCH):
        chunk = slice(start, min(start + ENCODE_BATCH, len(paths)))
        pairs = list(pool.map(make_pair, paths[chunk], [seed] * ENCODE_BATCH,
                              [strength] * ENCODE_BATCH))
        luma_t, ab_t = lab_tensors([t for t, _ in pairs])
        luma_r, ab_r = lab_tensors([r for _, r in pairs])
        carry_r = torch.from_numpy(np.stack([
            reference_carry(r, GUIDE_RADIUS_PX["net"], GUIDE_EPS) for _, r in pairs
        ])).permute(0, 3, 1, 2)  # (B, CARRIED_CHANNELS, H, W), as colorize feeds the attention
        with torch.inference_mode():
            for side, luma in (("t", luma_t), ("r", luma_r)):
                features, mid = frozen_features(net, luma)
                arrays[f"feat_{side}"][chunk] = features.half().numpy()
                if mid is not None:
                    arrays[f"mid_{side}"][chunk] = mid.half().numpy()
        arrays["luma_t"][chunk] = luma_t.half().numpy()
        arrays["ab_t"][chunk] = (F.adaptive_avg_pool2d(ab_t, half) / AB_SCALE).half().numpy()
        arrays["ab_t_full"][chunk] = (ab_t / AB_SCALE).half().numpy()
        arrays["carry_r"][chunk] = F.adaptive_avg_pool2d(carry_r, grid).half().numpy()
        arrays["luma_r"][chunk] = F.adaptive_avg_pool2d(luma_r, grid).half().numpy()
        arrays["ab_r"][chunk] = (F.adaptive_avg_pool2d(ab_r, grid) / AB_SCALE).half().numpy()
        if start % (ENCODE_BATCH * 20) == 0:
            logger.info("cached %d / %d pairs, %.0f s", chunk.stop, len(paths),
                        time.perf_counter() - started)
    for array in arrays.values():
        array.flush()
    meta_path.write_text(json.dumps(meta))
    logger.info("cache of %d pairs built in %.0f s", len(paths), time.perf_counter() - started)
    return {k: np.load(cache / f"{k}.npy", mmap_mode="r") for k in cache_shapes(net.config)}


def frozen_features(net: ColorNet, luma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the cache keeps of the backbone for a (B, 1, H, W) luminance batch: the projected
    hypercolumns, and None; or, when blocks from `tuned_from` on are fine-tuned, the projection
    of the levels before them only, and the (B, C, h, w) input of block tuned_from."""
    first = net.config.tuned_from
    if not first:
        return net.project(net.backbone(luma, GRID_PX)), None
    grid = (luma.shape[-2] // GRID_PX, luma.shape[-1] // GRID_PX)
    levels, mid = net.backbone.levels(net.backbone.stem(luma), grid, range(first))
    return project_levels(net, levels, 0), mid


def tuned_features(net: ColorNet, frozen: torch.Tensor, mid: torch.Tensor | None) -> torch.Tensor:
    """Projected hypercolumns from the cache: the frozen levels' projection plus that of the
    fine-tuned blocks' levels, run on the cached input of the first of them (with gradients)."""
    if mid is None:
        return frozen
    grid = tuple(frozen.shape[-2:])
    blocks = range(net.config.tuned_from, len(net.backbone._blocks))
    levels, _ = net.backbone.levels(mid, grid, blocks)
    first_row = hypercolumn_channels(tuple(b for b in net.config.feature_blocks if b < blocks[0]))
    return frozen + project_levels(net, levels, first_row)


def project_levels(net: ColorNet, levels: list[torch.Tensor], first_row: int) -> torch.Tensor:
    """`net.project` of part of the hypercolumn: tapped levels whose channels start at
    `first_row` of the basis (the rest counted as zero). Summing over parts gives the whole."""
    return net.project(torch.cat(levels, 1) / len(net.config.feature_blocks) ** 0.5, first_row)


def cache_identity(meta: dict) -> dict:
    """What of a cache's meta must match to reuse it: all but the config fields that only the
    learned layers use (a new decoder option must not rebuild 9 GB of backbone features)."""
    config = {k: v for k, v in meta["config"].items() if k in CACHE_CONFIG_FIELDS}
    if not config.get("tuned_from"):  # caches from before tuned_from existed hold no mid_*
        config.pop("tuned_from", None)
    return {**meta, "config": config}


# what the cache holds depends on these
CACHE_CONFIG_FIELDS = ("feature_blocks", "grid_stride_px", "feature_dims", "tuned_from")
CACHE_SHAPES = {  # name -> (config, grid, half) -> per-pair shape
    "feat_t": lambda c, g, h: (c.feature_dims, g, g),
    "feat_r": lambda c, g, h: (c.feature_dims, g, g),
    "luma_t": lambda c, g, h: (1, WORK_PX, WORK_PX),
    "ab_t": lambda c, g, h: (2, h, h),
    "luma_r": lambda c, g, h: (1, g, g),
    "ab_r": lambda c, g, h: (2, g, g),
    "ab_t_full": lambda c, g, h: (2, WORK_PX, WORK_PX),
    "carry_r": lambda c, g, h: (CARRIED_CHANNELS, g, g),
}


def cache_shapes(config: NetConfig) -> dict:
    """CACHE_SHAPES, plus the input of the first fine-tuned block ("mid_t", "mid_r") if any."""
    if not config.tuned_from:
        return CACHE_SHAPES
    table = block_table()
    stride = 2 * math.prod(row[1] for row in table[: config.tuned_from])  # the stem halves
    channels = table[config.tuned_from - 1][4]
    mid = lambda c, g, h: (channels, WORK_PX // stride, WORK_PX // stride)  # noqa: E731
    return {**CACHE_SHAPES, "mid_t": mid, "mid_r": mid}


def gather(data: dict, targets: np.ndarray, refs: np.ndarray, flip: np.ndarray | None = None):
    """Batch tensors (float32) for target indices and their reference indices."""
    def take(name: str, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([data[name][i] for i in idx]).astype(np.float32))

    tuned = "mid_t" in data
    target_keys = ("feat_t", "luma_t", "ab_t", "ab_t_full") + (("mid_t",) if tuned else ())
    batch = {k: take(k, targets) for k in target_keys}
    batch.update({k: take(k, refs) for k in ("feat_r", "luma_r", "ab_r", "carry_r")
                  + (("mid_r",) if tuned else ())})
    if flip is not None and flip.any():  # mirror some targets (their features approximately)
        rows = torch.from_numpy(flip)
        for k in target_keys:
            batch[k][rows] = batch[k][rows].flip(-1)
    return batch


def run_batch(net: ColorNet, batch: dict, crop: tuple[int, int, int, int] | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The net on a batch: predicted ab / AB_SCALE (B, 2, 2h, 2w) and the warped values (B,
    2 + CARRIED_CHANNELS, 2h, 2w), ab / AB_SCALE then the carried channels (of the crop)."""
    feat_r = tuned_features(net, batch["feat_r"], batch.get("mid_r"))
    feat_t = tuned_features(net, batch["feat_t"], batch.get("mid_t"))
    values_r = torch.cat([batch["ab_r"], batch["carry_r"]], 1)  # what colorize feeds
    reference = net.encode_grid(feat_r, batch["luma_r"], values_r, GRID_PX)
    return net.decode(feat_t, batch["luma_t"], reference, crop)


def scored(pred: torch.Tensor, warped: torch.Tensor, batch: dict,
           crop: tuple[int, int, int, int] | None = None, full: bool = False,
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`run_batch`'s outputs as scored: predicted, warped and true ab, all (B, 2, 2h, 2w) /
    AB_SCALE (of the crop); with `full`, the first two brought to (B, 2, 4h, 4w) by the guided
    upsampling colorize applies (`guided_upsample`) and the truth at that resolution."""
    if not full:
        truth = batch["ab_t"]
        if crop is not None:
            top, left, height, width = crop
            truth = truth[..., 2 * top : 2 * (top + height), 2 * left : 2 * (left + width)]
        return pred, warped[:, :2], truth
    truth, luma = batch["ab_t_full"], batch["luma_t"]  # both at the working resolution
    if crop is not None:
        top, left, height, width = crop
        rows, cols = slice(4 * top, 4 * (top + height)), slice(4 * left, 4 * (left + width))
        truth, luma = truth[..., rows, cols], luma[..., rows, cols]
    carried = warped[:, 2:]
    return (guided_upsample(pred, carried, luma, GUIDE_RADIUS_PX["net"]),
            guided_upsample(warped[:, :2], carried, luma, GUIDE_RADIUS_PX["net"]), truth)


def guided_upsample(ab: torch.Tensor, carried: torch.Tensor, luma: torch.Tensor,
                    radius_px: int) -> torch.Tensor:
    """colorize's guided upsampling of the net's output in torch, so that training can score
    what inference outputs: ab (B, 2, h, w) / AB_SCALE and the carried reference channels (B,
    CARRIED_CHANNELS, h, w) at half resolution -> ab (B, 2, H, W) / AB_SCALE at the working
    resolution of luma (B, 1, H, W). The same maths as `Colorizer._colorize_batch`: bilinear
    to working size, the reference's slope scaled by the chroma the net kept, local lines
    ab = A * L + B box-averaged over (2r + 1)^2 windows (reflected borders), then A * L + B."""
    size = luma.shape[-2:]
    values = F.interpolate(torch.cat([ab * AB_SCALE, carried], 1), size=size, mode="bilinear",
                           align_corners=False)
    ab, slope, window_luma, matched = values.split([2, 2, 1, 2], 1)
    kept = (ab.square().sum(1, keepdim=True) + 1e-12).sqrt() / \
        matched.square().sum(1, keepdim=True).sqrt().clamp(min=1.0)
    slope = slope * kept.clamp(0.0, 1.0)
    lines = torch.cat([slope, ab - slope * window_luma], 1)
    r = radius_px  # cv2's BORDER_REFLECT: the edge pixel is repeated
    lines = torch.cat([lines[..., :r, :].flip(-2), lines, lines[..., -r:, :].flip(-2)], -2)
    lines = torch.cat([lines[..., :r].flip(-1), lines, lines[..., -r:].flip(-1)], -1)
    lines = F.avg_pool2d(lines, 2 * r + 1, stride=1)
    return (lines[:, :2] * luma + lines[:, 2:]) / AB_SCALE


def loss_fn(pred: torch.Tensor, truth: torch.Tensor,
            weights: torch.Tensor | None = None, beta: float = SMOOTH_L1_BETA,
            log_mse: bool = False) -> torch.Tensor:
    """Smooth-L1 of (B, 2, h, w) ab / AB_SCALE, optionally weighted per pair ((B,) weights).
    beta 0 is L1; a beta beyond the errors is half the squared error. With `log_mse`, each
    pair's log(MSE + LOG_MSE_FLOOR) instead: the mean PSNR the evaluation reports is a mean of
    -log MSE per image, so a pair already coloured well counts as much per relative gain as a
    hard one (a pooled squared error lets the hard pairs drown it)."""
    if log_mse:
        per_pair = (F.mse_loss(pred, truth, reduction="none").mean((1, 2, 3))
                    + LOG_MSE_FLOOR).log()
    else:
        per_pair = F.smooth_l1_loss(pred, truth, beta=beta, reduction="none").mean((1, 2, 3))
    return per_pair.mean() if weights is None else (per_pair * weights).sum() / weights.sum()


@torch.no_grad()
def validate(net: ColorNet, data: dict, val_idx: np.ndarray) -> dict[str, float]:
    """Mean losses on held-out pairs, related and unrelated, vs warped-ab and grey copies."""
    net.eval()
    sums = dict.fromkeys(("net", "warped", "grey", "u_net", "u_warped", "u_grey", "mse",
                          "mse_warped", "mse_full", "mse_full_warped"), 0.0)
    unrelated = np.roll(val_idx, -1)
    for start in range(0, len(val_idx), 16):
        for prefix, refs in (("", val_idx), ("u_", unrelated)):
            batch = gather(data, val_idx[start : start + 16], refs[start : start + 16])
            outputs = run_batch(net, batch)
            pred, warped, truth = scored(*outputs, batch)
            n = len(truth)
            sums[prefix + "net"] += loss_fn(pred, truth).item() * n
            sums[prefix + "warped"] += loss_fn(warped, truth).item() * n
            sums[prefix + "grey"] += loss_fn(torch.zeros_like(truth), truth).item() * n
            if not prefix:
                sums["mse"] += F.mse_loss(pred, truth).item() * n
                sums["mse_warped"] += F.mse_loss(warped, truth).item() * n
                pred, warped, truth = scored(*outputs, batch, full=True)
                sums["mse_full"] += F.mse_loss(pred, truth).item() * n
                sums["mse_full_warped"] += F.mse_loss(warped, truth).item() * n
    train_mode(net)
    return {k: v / len(val_idx) for k, v in sums.items()}


def photo_psnr(net: ColorNet, paths: list[Path]) -> dict[str, float]:
    """Mean PSNR (dB) of the whole colorize stage on the held-out photos, with their own
    distorted references ("photos") and unrelated ones ("u_photos"): what `evaluate.py images`
    reports on them (256 px working size, guided upsampling, RGB). Gains in `validate`'s losses
    (192 px pairs, ab at half resolution) have not always reached these numbers."""
    net.eval()
    opts = ColorizeOptions(method="net")
    scores = {}
    for key, unrelated in (("photos", False), ("u_photos", True)):
        values = []
        for index in range(len(paths)):
            try:
                truth, reference = photo_pair(paths, index, unrelated)
                values.append(psnr(Colorizer(net, reference, opts).colorize_rgb([truth])[0],
                                   truth))
            except (OSError, VidcolorError):  # unreadable, or a grey reference: nothing to score
                continue
        scores[key] = float(np.mean(values))
    train_mode(net)
    return scores


def train_mode(net: ColorNet) -> None:
    """Training mode, except the backbone: its batch norms keep their ImageNet statistics
    (a batch of 8 pairs is too small to estimate them), fine-tuned blocks included."""
    net.train()
    net.backbone.eval()


def save_state(path: Path, net, opt, step: int, best: float, best_state, rng) -> None:
    """Everything needed to resume, written atomically."""
    with writing(path) as partial:
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step,
                    "best": best, "best_state": best_state, "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state()}, partial)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/train"))
    parser.add_argument("--out", type=Path, default=Path("models/colornet.pt"))
    parser.add_argument("--run", type=Path, default=Path("runs/colornet"),
                        help="folder of the cache, the resumable state and the log")
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps in all")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="stop (resumably) after this wall time; 0 = no limit")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--crop", type=int, default=24, help="side of the decoded window of "
                        f"each target, grid cells (the whole grid is {WORK_PX // GRID_PX})")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate")
    parser.add_argument("--unrelated", type=float, default=0.2, help="fraction of pairs "
                        "with another photo's reference")
    parser.add_argument("--unrelated-weight", type=float, default=0.25,
                        help="loss weight of an unrelated pair (their errors are ~10x larger "
                             "and would otherwise drown the related pairs)")
    parser.add_argument("--val-every", type=int, default=250, help="steps between validations")
    parser.add_argument("--pairs", type=int, default=1, help="augmented pairs per photo: "
                        "pair set k is drawn with seed + k and cached in RUN/cache (k = 0) "
                        "or RUN/cache_k (3.3 GB and 3 min each on a quiet 2-core CPU)")
    parser.add_argument("--strong", type=int, default=0, help="further pair sets whose "
                        "references are distorted twice as hard (related but less aligned, as "
                        "a film's later frames are to its first); cached in RUN/cache_strong_k")
    parser.add_argument("--init", type=Path, default=None, help="start from the weights of "
                        "this checkpoint (a fine-tune; the schedule starts afresh)")
    parser.add_argument("--consensus", type=int, default=2, help="radius of the attention's "
                        "neighbourhood consensus in grid cells (NetConfig.consensus_radius)")
    parser.add_argument("--consensus-edge", type=float, default=0.6, help="starting weight of "
                        "the consensus kernel one cell away, relative to the centre, per axis")
    parser.add_argument("--convex-upsampling", action=argparse.BooleanOptionalAction,
                        default=True, help="learned convex upsampling of the attention's "
                        "values to the output (NetConfig.convex_upsampling); off: bilinear")
    parser.add_argument("--carried-lightness", action=argparse.BooleanOptionalAction,
                        default=True, help="the attention carries the reference's lightness "
                        "to the decoder and the convex upsampling (NetConfig.carried_lightness)")
    parser.add_argument("--lightness-regression", action=argparse.BooleanOptionalAction,
                        default=True, help="each grid cell's colour follows the pixel's "
                        "lightness along the attention's regression of ab on lightness "
                        "(NetConfig.lightness_regression)")
    parser.add_argument("--self-propagation", action=argparse.BooleanOptionalAction,
                        default=False, help="the target's confidently matched positions pass "
                        "their colours to look-alike ones (NetConfig.self_propagation)")
    parser.add_argument("--tune-from", type=int, default=0, help="fine-tune the backbone "
                        "blocks from this index on with the net (NetConfig.tuned_from; the "
                        "caches then hold the input of that block); 0 = backbone frozen")
    parser.add_argument("--tune-lr", type=float, default=0.3, help="learning rate of the "
                        "fine-tuned backbone blocks, relative to --lr")
    parser.add_argument("--new-lr", type=float, default=10.0, help="with --init: learning "
                        "rate of the layers the checkpoint lacks (zero-initialised, they must "
                        "move far within a fine-tune), relative to --lr")
    parser.add_argument("--val-photos", action="store_true", help="at each validation also "
                        "colour the held-out photos through the whole colorize stage (PSNR as "
                        "evaluate.py images gives it; ~1.5 min) and keep the best state by "
                        "that, related + --unrelated-weight x unrelated dB")
    parser.add_argument("--full-res", action="store_true", help="score the training loss "
                        "at the working resolution after the guided upsampling inference "
                        "applies (guided_upsample), not on the net's half-resolution output")
    parser.add_argument("--beta", type=float, default=SMOOTH_L1_BETA, help="smooth-L1 beta, "
                        "ab / 100 units (large: squared error, what PSNR measures)")
    parser.add_argument("--loss", choices=("smooth-l1", "log-mse"), default="smooth-l1",
                        help="training loss per pair: smooth-L1 (--beta), or the log of its "
                        "squared error (what a mean PSNR over images weighs)")
    parser.add_argument("--new-basis", action="store_true", help="with --init: compute the "
                        "PCA basis again and map the checkpoint's layers onto it "
                        "(ColorNet.change_basis), for a checkpoint whose basis is stale")
    parser.add_argument("--flip-targets", type=float, default=0.5, help="share of training "
                        "targets mirrored with their cached features (which only approximates "
                        "the features of the mirrored photo: inference never sees them)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair sets and the "
                        "PCA basis (and of the batch order unless --order-seed is given)")
    parser.add_argument("--order-seed", type=int, default=None, help="seed of the batch draws "
                        "only: runs that differ in it share their caches and basis, so their "
                        "weights can be averaged (scripts/soup.py)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    args = parser.parse_args(argv)
    if args.new_basis and args.init is None:  # a fresh net computes its basis anyway
        print("train.py: --new-basis maps a checkpoint's layers onto a new basis; pass --init "
              "CHECKPOINT with it", file=sys.stderr)
        return 1
    if not 0.0 <= args.flip_targets <= 1.0:
        print(f"train.py: --flip-targets is a share of the targets, got {args.flip_targets}; "
              f"pass a number from 0 to 1", file=sys.stderr)
        return 1
    if not args.data.is_dir():  # ../shared is not beside every clone
        print(f"train.py: '{args.data}' is not a directory; pass --data DIR, the training "
              f"photos (../shared/data/train beside the project)", file=sys.stderr)
        return 1
    args.run.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(args.run / "log")])
    logging.getLogger("vidcolor").setLevel(logging.WARNING)  # a line per photo in --val-photos
    torch.set_num_threads(args.threads)
    order_seed = args.seed if args.order_seed is None else args.order_seed
    torch.manual_seed(order_seed)
    rng = np.random.default_rng(order_seed)
    logger.info("train.py %s", " ".join(sys.argv[1:] if argv is None else argv))

    net = ColorNet(NetConfig(kind="net", feature_blocks=NET_FEATURE_BLOCKS,
                             consensus_radius=args.consensus,
                             consensus_edge=args.consensus_edge, tuned_from=args.tune_from,
                             convex_upsampling=args.convex_upsampling,
                             carried_lightness=args.carried_lightness,
                             lightness_regression=args.lightness_regression,
                             self_propagation=args.self_propagation))
    net.backbone.load_state_dict(load_model("match", device="cpu").backbone.state_dict())
    paths = sorted(p for p in args.data.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    init_state = {} if args.init is None else torch.load(
        args.init, map_location="cpu", weights_only=True)["state_dict"]
    if args.new_basis:  # the net's layers mapped onto a basis computed anew
        net.load_state_dict(init_state, strict=False)
        net.change_basis(pca_basis(net, paths, args.seed, net.config.feature_dims))
        init_state = {k: v for k, v in net.state_dict().items() if k in init_state}
    # a fine-tune keeps the checkpoint's projection: its learned layers read features on it
    pair_sets = [build_cache(net, paths, args.run / "cache", args.seed,
                             init_state.get("feature_proj"))]
    for k in range(1, args.pairs):
        basis = net.feature_proj.clone()
        pair_sets.append(build_cache(net, paths, args.run / f"cache_{k}", args.seed + k, basis))
    for k in range(args.strong):
        basis = net.feature_proj.clone()
        pair_sets.append(build_cache(net, paths, args.run / f"cache_strong_{k}",
                                     args.seed + 100 + k, basis, strength=2.0))
    # Into RAM (random access); pair i of set k is row k * n + i. Only set 0 is validated, so
    # the validation numbers stay comparable whatever --pairs is.
    data = {k: np.concatenate([s[k] for s in pair_sets]) for k in cache_shapes(net.config)}
    val_idx = np.arange(len(paths))[::VAL_EVERY]
    photo_of_row = np.arange(len(paths) * len(pair_sets)) % len(paths)
    train_idx = np.flatnonzero(~np.isin(photo_of_row, val_idx))
    logger.info("%d training pairs (%d per photo), %d held out", len(train_idx), len(pair_sets),
                len(val_idx))

    def validation() -> tuple[dict[str, float], float]:
        """The validation numbers and the score the best state is kept by (lower is better)."""
        scores = validate(net, data, val_idx)
        if not args.val_photos:
            return scores, scores["net"] + args.unrelated_weight * scores["u_net"]
        scores |= photo_psnr(net, [paths[i] for i in val_idx])
        return scores, -(scores["photos"] + args.unrelated_weight * scores["u_photos"])

    # with --init (repeat it with --resume): the parameters the checkpoint lacks
    new_layers = {n for n, _ in net.named_parameters()
                  if init_state and n not in init_state and not n.startswith("backbone.")}
    trainable = [p for n, p in net.named_parameters()
                 if not n.startswith("backbone.") and n not in new_layers]
    fresh = [p for n, p in net.named_parameters() if n in new_layers]
    net.backbone.requires_grad_(False)
    tuned = list(net.backbone._blocks[args.tune_from :].parameters()) if args.tune_from else []
    for param in tuned:
        param.requires_grad_(True)
    logger.info("trainable parameters: %d (+ %d in fine-tuned backbone blocks)",
                sum(p.numel() for p in trainable + fresh), sum(p.numel() for p in tuned))
    groups = [{"params": trainable, "lr_scale": 1.0}]
    if fresh:
        logger.info("new layers at %g x lr: %s", args.new_lr, ", ".join(sorted(new_layers)))
        groups.append({"params": fresh, "lr_scale": args.new_lr})
    if tuned:
        groups.append({"params": tuned, "lr_scale": args.tune_lr})
    opt = torch.optim.Adam(groups, lr=args.lr)
    step, best, best_state = 0, math.inf, None
    state_path = args.run / "last.pt"
    if args.resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, best, best_state = state["step"], state["best"], state["best_state"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed at step %d (best val %.5f)", step, best)
    else:
        if args.init is not None:
            missing = net.load_state_dict(init_state, strict=False).missing_keys
            # a checkpoint from before the consensus (its kernel starts from --consensus-edge),
            # the convex upsampling (it starts as bilinear, nearly), the carried lightness or
            # the self-propagation (zero-initialised: it starts where the checkpoint was)
            assert all(k.startswith(("backbone.", "decoder.select", "decoder.enter_carried",
                                     "decoder.propagate"))
                       or k in ("consensus", "self_log_temperature", "source_weight")
                       for k in missing), missing
            # its backbone keys (none, or its own fine-tuned blocks) override the ImageNet ones
            logger.info("weights from %s", args.init)
        logger.info("val at init: %s", fmt(validation()[0]))
    train_mode(net)
    started, first_step = time.perf_counter(), step
    grid = WORK_PX // GRID_PX
    running = np.zeros(2)
    log_mse = args.loss == "log-mse"
    while step < args.steps:
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        targets = rng.choice(train_idx, args.batch, replace=False)
        refs = targets.copy()
        swap = rng.random(args.batch) < args.unrelated
        refs[swap] = rng.choice(train_idx, int(swap.sum()))
        batch = gather(data, targets, refs, rng.random(args.batch) < args.flip_targets)
        top, left = rng.integers(0, grid - args.crop + 1, 2)
        crop = (int(top), int(left), args.crop, args.crop)
        pred, warped, truth = scored(*run_batch(net, batch, crop), batch, crop, args.full_res)
        weights = torch.from_numpy(np.where(swap, args.unrelated_weight, 1.0)).float()
        loss = loss_fn(pred, truth, weights, args.beta, log_mse)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running += (loss.item(),
                    loss_fn(warped.detach(), truth, weights, args.beta, log_mse).item())
        if step % 25 == 0:
            logger.info("step %d lr %.2e train loss %.5f (warped-ab copy %.5f) %.2f s/step",
                        step, lr, running[0] / 25, running[1] / 25,
                        (time.perf_counter() - started) / (step - first_step))
            running[:] = 0
        done = args.minutes and time.perf_counter() - started > args.minutes * 60
        if step % args.val_every == 0 or step == args.steps or done:
            scores, score = validation()
            if score < best:
                best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
            logger.info("step %d val %s%s", step, fmt(scores), " (best)" if score == best else "")
            save_state(state_path, net, opt, step, best, best_state, rng)
        if done:
            logger.info("stopping after %.1f min at step %d of %d; continue with --resume",
                        args.minutes, step, args.steps)
            break
    net.load_state_dict(best_state)
    save_checkpoint(net.eval(), args.out)
    logger.info("wrote %s (best val %.5f, step %d of %d, %.1f min in this run)", args.out, best,
                step, args.steps, (time.perf_counter() - started) / 60)
    return 0


def fmt(scores: dict[str, float]) -> str:
    photos = (f"; photos {scores['photos']:.3f} dB, unrelated {scores['u_photos']:.3f} dB"
              if "photos" in scores else "")
    return (f"related {scores['net']:.5f} (warped {scores['warped']:.5f}, grey "
            f"{scores['grey']:.5f}; mse {scores['mse']:.6f} vs warped {scores['mse_warped']:.6f};"
            f" at full resolution {scores['mse_full']:.6f} vs {scores['mse_full_warped']:.6f})"
            f" unrelated {scores['u_net']:.5f} (warped {scores['u_warped']:.5f}, grey "
            f"{scores['u_grey']:.5f}){photos}")


if __name__ == "__main__":
    sys.exit(main())
