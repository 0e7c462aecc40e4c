"""scripts/train.py without ../shared: its refusal of a missing data folder, and its torch
copy of the guided upsampling (the rest needs ../shared/data/train)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT, SCRIPTS, load_script

from vidcolor.colorize import upsampling_coefficients
from vidcolor.model import AB_SCALE, ColorNet, NetConfig
from vidcolor.weights import load_model


def test_missing_data_folder_is_one_line_and_writes_nothing(tmp_path):
    missing, run = tmp_path / "no-photos", tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "train.py"), "--data", str(missing), "--run", str(run)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "--data" in lines[0]
    assert not run.exists()


@pytest.mark.parametrize(("options", "named"), [
    (["--new-basis"], ["--init"]),  # a basis to map needs a checkpoint
    (["--flip-targets", "1.5"], ["--flip-targets", "1.5"]),  # a share is from 0 to 1
])
def test_bad_options_are_one_line_and_write_nothing(train, tmp_path, capsys, options, named):
    assert train.main([*options, "--run", str(tmp_path / "run")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in named)
    assert not (tmp_path / "run").exists()


@pytest.fixture
def train(monkeypatch):
    """scripts/train.py as a module (it imports its neighbour evaluate.py)."""
    return load_script(monkeypatch, "train")


def test_training_upsampling_is_what_colorize_applies(train):
    """train.py --full-res scores the net through `guided_upsample`; it must be colorize's
    own guided upsampling (`upsampling_coefficients`, then A * L + B), or training would
    optimise something inference does not output."""
    rng = np.random.default_rng(3)
    half, size = 12, 24
    luma = cv2.resize(rng.uniform(0.1, 0.9, (6, 6)).astype(np.float32), (size, size))
    ab = rng.uniform(-40, 40, (half, half, 2)).astype(np.float32)
    ab[:4] *= 0.05  # some cells keep little of the matched chroma
    slope = rng.uniform(-60, 60, (half, half, 2)).astype(np.float32)
    window_luma = rng.uniform(0.1, 0.9, (half, half, 1)).astype(np.float32)
    matched = rng.uniform(-50, 50, (half, half, 2)).astype(np.float32)
    values = np.concatenate([ab, slope, window_luma, matched], -1)
    for radius in (1, 2):
        coef = upsampling_coefficients(values.copy(), luma, radius, train.GUIDE_EPS)
        expected = coef[..., :2] * luma[..., None] + coef[..., 2:]
        as_torch = torch.from_numpy(values).permute(2, 0, 1)[None]
        got = train.guided_upsample(as_torch[:, :2] / AB_SCALE, as_torch[:, 2:],
                                    torch.from_numpy(luma)[None, None], radius)
        got = got[0].permute(1, 2, 0).numpy() * AB_SCALE
        assert np.abs(got - expected).max() < 1e-3


def test_log_mse_loss_weighs_each_pair_by_its_relative_error(train):
    """--loss log-mse: mean PSNR over images rewards halving an easy photo's error as much as
    a hard one's. The log loss does so (the floor aside); the pooled squared error, and the
    smooth-L1 default, count the hard pair's halving far more."""
    rng = np.random.default_rng(4)
    truth = torch.from_numpy(rng.uniform(-0.5, 0.5, (2, 2, 8, 8)).astype(np.float32))
    error = torch.from_numpy(rng.normal(0.0, 1.0, (2, 2, 8, 8)).astype(np.float32))
    error[0] *= 0.15  # an easy pair (MSE ~ 0.02, 100 x the floor) ...
    error[1] *= 1.0  # ... and a hard one (~1)

    def gain(halved: int, **loss_options) -> float:
        scale = torch.ones(2, 1, 1, 1)
        scale[halved] = 0.5
        return (train.loss_fn(truth + error, truth, **loss_options)
                - train.loss_fn(truth + error * scale, truth, **loss_options)).item()

    easy, hard = gain(0, log_mse=True), gain(1, log_mse=True)
    assert easy > 0.0 and abs(easy - hard) < 0.1 * hard
    assert gain(1, beta=100.0) > 20 * gain(0, beta=100.0)  # squared error: the hard pair wins
    assert gain(1) > 5 * gain(0)  # smooth-L1 too


def write_smooth_photos(folder: Path, count: int, seed: int) -> list[Path]:
    """`count` smooth random colour photos photoKK.png (300x280, larger than the training
    working image) in `folder`."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        small = rng.integers(0, 256, (9, 10, 3), dtype=np.uint8)
        paths.append(folder / f"photo{index:02d}.png")
        cv2.imwrite(str(paths[-1]), cv2.resize(small, (300, 280), interpolation=cv2.INTER_CUBIC))
    return paths


def test_cached_features_are_the_ones_inference_computes(train, tmp_path):
    """The cache must hold the backbone's features as inference computes them, with the
    batch norms' ImageNet statistics: a net constructed in training mode once cached
    features normalised per batch of photos (and overwrote those statistics)."""
    paths = write_smooth_photos(tmp_path, 3, seed=0)
    net = ColorNet(NetConfig(kind="net", feature_blocks=train.NET_FEATURE_BLOCKS))
    net.backbone.load_state_dict(load_model("match", device="cpu").backbone.state_dict())
    assert net.backbone.training  # as train.py constructs it
    statistics = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    basis = train.pca_basis(net, paths, 0, net.config.feature_dims)
    data = train.build_cache(net, paths, tmp_path / "cache", 0, basis)
    assert all(torch.equal(v, statistics[k]) for k, v in net.backbone.state_dict().items())
    luma = torch.from_numpy(np.asarray(data["luma_t"], np.float32))
    with torch.inference_mode():
        expected = net.eval().project(net.backbone(luma, train.GRID_PX))
    cached = torch.from_numpy(np.asarray(data["feat_t"], np.float32))
    assert ((cached - expected).norm() / expected.norm()).item() < 1e-2


def test_order_seed_varies_the_batches_but_not_the_basis(train, tmp_path):
    """Two short fine-tunes that differ only in --order-seed train different weights on the
    same caches and PCA basis, so scripts/soup.py can average them; the whole loop runs."""
    data = tmp_path / "photos"
    data.mkdir()
    write_smooth_photos(data, 12, seed=1)
    outs = []
    for order_seed in (0, 1):
        run = tmp_path / f"run{order_seed}"
        outs.append(run / "ft.pt")
        assert train.main(["--data", str(data), "--run", str(run), "--out", str(outs[-1]),
                           "--init", str(ROOT / "models" / "colornet.pt"), "--new-basis",
                           "--steps", "2", "--val-every", "2", "--batch", "4", "--crop", "8",
                           "--self-propagation", "--loss", "log-mse",
                           "--order-seed", str(order_seed)]) == 0
    first, second = (torch.load(p, weights_only=True)["state_dict"] for p in outs)
    assert torch.equal(first["feature_proj"], second["feature_proj"])
    assert not torch.equal(first["decoder.out.weight"], second["decoder.out.weight"])
