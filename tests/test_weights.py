"""weights.py: registry, device choice, hash-checked backbone loading, checkpoints round trip."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from vidcolor import weights
from vidcolor.errors import OptionsError, WeightsError
from vidcolor.model import ColorNet, MatchNet, NetConfig
from vidcolor.weights import (
    available_models,
    backbone_weights_path,
    default_device,
    load_model,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def model() -> MatchNet:
    return load_model("match", device="cpu")


def test_registry_lists_match():
    assert "match" in available_models()


def test_default_device_is_a_usable_device():
    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_load_model_gives_a_frozen_eval_model_with_the_package_weights(model):
    assert isinstance(model, MatchNet) and model.config == NetConfig()
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).device.type == "cpu"
    package = torch.load(backbone_weights_path(), map_location="cpu", weights_only=True)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, package[key]), key


def test_unknown_name_lists_the_available_models():
    with pytest.raises(WeightsError, match="available models: match"):
        load_model("no-such-model")


def test_missing_checkpoint_path_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="unknown model"):
        load_model(tmp_path / "absent.pt")


def test_corrupted_backbone_file_is_detected(tmp_path):
    copy = tmp_path / "efficientnet-lite0.pth"
    shutil.copyfile(backbone_weights_path(), copy)
    with copy.open("r+b") as f:  # flip one byte in the middle of the tensors
        f.seek(copy.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WeightsError, match="corrupted") as excinfo:
        weights._load_backbone(MatchNet().backbone, copy)
    assert str(copy) in str(excinfo.value) and "reinstall" in str(excinfo.value)


def test_missing_backbone_file_is_detected(tmp_path):
    with pytest.raises(WeightsError, match="missing"):
        weights._load_backbone(MatchNet().backbone, tmp_path / "gone.pth")


def test_checkpoint_round_trip_keeps_config_and_weights(model, tmp_path):
    config = dataclasses.replace(model.config, temperature=0.02, match_dims=32)
    custom = MatchNet(config)
    custom.load_state_dict(model.state_dict())
    path = save_checkpoint(custom, tmp_path / "custom.pt")
    loaded = load_model(path, device="cpu")
    assert loaded.config == config and not loaded.training
    for key, value in custom.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_checkpoint_that_does_not_fit_is_rejected(tmp_path):
    net = load_model("net", device="cpu")
    trained = [k for k in net.state_dict() if not k.startswith("backbone.")]
    state = {k: v for k, v in net.state_dict().items() if k != trained[0]}
    path = tmp_path / "partial.pt"
    torch.save({"config": dataclasses.asdict(net.config), "state_dict": state}, path)
    with pytest.raises(WeightsError, match="1 missing and 0 unexpected"):
        load_model(path)
    state["not.a.layer"] = torch.zeros(1)
    state[trained[0]] = net.state_dict()[trained[0]]
    torch.save({"config": dataclasses.asdict(net.config), "state_dict": state}, path)
    with pytest.raises(WeightsError, match="0 missing and 1 unexpected"):
        load_model(path)


def test_checkpoints_leave_out_the_frozen_backbone(model, tmp_path):
    """The backbone comes from its package: a checkpoint holds only what was trained."""
    net = load_model("net", device="cpu")
    saved = torch.load(save_checkpoint(net, tmp_path / "net.pt"), weights_only=True)
    assert saved["state_dict"] and not any(k.startswith("backbone.") for k in saved["state_dict"])
    reloaded = load_model(tmp_path / "net.pt", device="cpu")
    for key, value in net.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


def test_checkpoint_from_before_the_consensus_loads_without_it(tmp_path):
    """A config saved before consensus_radius (or convex_upsampling, carried_lightness,
    lightness_regression) existed means none of them (bilinear upsampling, no carried
    lightness), whatever today's default is; the shipped net has its learned kernel."""
    net = load_model("net", device="cpu")
    assert net.config.consensus_radius == 2 and net.consensus.shape == (2, 5)
    old = ColorNet(dataclasses.replace(net.config, consensus_radius=0, convex_upsampling=False,
                                       carried_lightness=False, lightness_regression=False))
    config = dataclasses.asdict(old.config)
    for field in ("consensus_radius", "consensus_edge", "convex_upsampling", "carried_lightness",
                  "lightness_regression"):
        del config[field]
    state = {k: v for k, v in old.state_dict().items() if not k.startswith("backbone.")}
    torch.save({"config": config, "state_dict": state}, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt", device="cpu")
    assert loaded.config.consensus_radius == 0 and not hasattr(loaded, "consensus")
    assert not loaded.config.convex_upsampling and not hasattr(loaded.decoder, "select")
    assert not loaded.config.carried_lightness and not hasattr(loaded.decoder, "select_carried")
    assert not loaded.config.lightness_regression


def test_checkpoint_keeps_the_fine_tuned_backbone_blocks_only(tmp_path):
    """With tuned_from, the blocks from there on are ours and travel in the checkpoint; the
    earlier ones still come from the package, hash-checked."""
    shipped = load_model("net", device="cpu")
    net = ColorNet(dataclasses.replace(shipped.config, tuned_from=10))
    net.load_state_dict(shipped.state_dict())
    with torch.no_grad():
        net.backbone._blocks[12]._project_conv.weight.mul_(1.5)
    path = save_checkpoint(net, tmp_path / "tuned.pt")
    saved = torch.load(path, weights_only=True)["state_dict"]
    blocks = {int(k.split(".")[2]) for k in saved if k.startswith("backbone.")}
    assert blocks == set(range(10, 15))
    loaded = load_model(path, device="cpu")
    assert loaded.config.tuned_from == 10
    for key, value in net.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    del saved["backbone._blocks.12._project_conv.weight"]  # a fine-tuned block is not optional
    torch.save({"config": dataclasses.asdict(net.config), "state_dict": saved}, path)
    with pytest.raises(WeightsError, match="1 missing"):
        load_model(path)


@pytest.mark.parametrize(
    "content",
    [b"not a torch file", None],
    ids=["garbage", "not-a-checkpoint-dict"],
)
def test_foreign_files_are_rejected(tmp_path, content):
    path = tmp_path / "foreign.pt"
    if content is None:
        torch.save({"weights": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=str(path).replace("\\", "\\\\")):
        load_model(path)


def test_checkpoint_with_a_bad_config_is_rejected(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"config": {"kind": "match", "temperature": -1.0}, "state_dict": {}}, path)
    with pytest.raises(WeightsError, match="invalid NetConfig"):
        load_model(path)


def test_bad_device_is_an_options_error():
    with pytest.raises(OptionsError, match="device"):
        load_model("match", device="toaster")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_without_cuda_is_an_options_error():
    with pytest.raises(OptionsError, match="CUDA is not available"):
        load_model("match", device="cuda")


def test_sha256_is_computed_once_per_file():
    path = Path(backbone_weights_path())
    weights._check_sha256(path, weights.BACKBONE_SHA256, "fix")
    hits = weights._sha256.cache_info().hits
    weights._check_sha256(path, weights.BACKBONE_SHA256, "fix")
    assert weights._sha256.cache_info().hits == hits + 1


@pytest.fixture(scope="module")
def shipped_net():
    return load_model("net", device="cpu")


def test_registry_lists_the_learned_net():
    assert "net" in available_models()


def test_shipped_net_loads_with_its_hash_checked(shipped_net):
    path, sha256 = weights.shipped_weights_path("net")
    assert path.name == "colornet.pt" and path.stat().st_size <= 20 * 2**20
    assert weights._sha256(path, path.stat().st_size, path.stat().st_mtime_ns) == sha256
    assert isinstance(shipped_net, ColorNet) and shipped_net.config.kind == "net"
    assert not shipped_net.training
    assert not any(p.requires_grad for p in shipped_net.parameters())
    package = torch.load(backbone_weights_path(), map_location="cpu", weights_only=True)
    for key, value in shipped_net.backbone.state_dict().items():  # the frozen ImageNet backbone
        assert torch.equal(value, package[key]), key


def test_corrupted_shipped_net_is_a_weights_error(tmp_path, monkeypatch):
    path, _ = weights.shipped_weights_path("net")
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    with copy.open("r+b") as f:
        f.seek(copy.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setenv(weights.MODEL_DIR_ENV, str(tmp_path))
    with pytest.raises(WeightsError, match="corrupted") as excinfo:
        load_model("net", device="cpu")
    message = str(excinfo.value)
    assert str(copy) in message and "reinstall" in message and "\n" not in message


def test_the_wheel_carries_the_shipped_weights_and_their_card(tmp_path):
    """An offline `pip install .` must find the net: the wheel holds the file whose sha256
    vidcolor checks, where `shipped_weights_path` looks first (vidcolor/models/). Built from a
    copy of the checkout: setuptools' build/ folder would otherwise land in it and carry stale
    files into later wheels."""
    source = shutil.copytree(ROOT, tmp_path / "source", ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "out", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                    "--no-build-isolation", "--quiet", "-w", str(tmp_path)], check=True)
    (wheel,) = tmp_path.glob("vidcolor-*.whl")
    filename, sha256 = weights._SHIPPED["net"]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert hashlib.sha256(archive.read(f"vidcolor/models/{filename}")).hexdigest() == sha256
    assert {"vidcolor/models/MODEL_CARD.md", "vidcolor/atomic.py"} <= names
    assert not any("candidates" in name for name in names)
