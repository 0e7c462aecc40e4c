"""Average the weights of fine-tunes from one start: a uniform model soup.

Usage: soup.py OUT CHECKPOINT CHECKPOINT [CHECKPOINT ...]

Why: fine-tunes that differ only in their batch order (train.py --order-seed) land near one
another, and their mean usually scores above each of them (Wortsman et al. 2022, "Model
soups"). One draw of a fine-tune is also noisy on the eval films (bmx and car move by up to
0.7 dB between such runs); the mean of several is a steadier candidate.

The checkpoints must share their NetConfig and their frozen PCA basis (`feature_proj`: the
learned layers read features on it, so nets on different bases do not average). Every other
floating-point tensor is averaged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vidcolor.errors import VidcolorError
from vidcolor.weights import load_model, save_checkpoint


def average_nets(paths: list[Path]) -> torch.nn.Module:
    """The first checkpoint's net holding the mean of all the checkpoints' weights.

    Raises:
        ValueError: the checkpoints differ in config or basis (the message names the file).
    """
    nets = [load_model(path, device="cpu") for path in paths]
    first = nets[0]
    for path, net in zip(paths[1:], nets[1:], strict=True):
        if net.config != first.config:
            raise ValueError(f"'{path}' has another NetConfig than '{paths[0]}'; soup only "
                             f"fine-tunes of one architecture")
        if not torch.equal(net.feature_proj, first.feature_proj):
            raise ValueError(f"'{path}' reads its features on another PCA basis than "
                             f"'{paths[0]}'; train both with the same --seed (vary "
                             f"--order-seed)")
    states = [net.state_dict() for net in nets]
    mean = {key: torch.stack([state[key] for state in states]).mean(0)
            if value.is_floating_point() else value for key, value in states[0].items()}
    first.load_state_dict(mean)
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the averaged checkpoint to write")
    parser.add_argument("checkpoints", type=Path, nargs="+", help="train.py outputs to average")
    args = parser.parse_args(argv)
    if len(args.checkpoints) < 2:
        print("soup.py: a soup needs two checkpoints or more; pass them after OUT",
              file=sys.stderr)
        return 1
    try:
        net = average_nets(args.checkpoints)
    except (ValueError, VidcolorError) as error:
        print(f"soup.py: {error}", file=sys.stderr)
        return 1
    save_checkpoint(net, args.out)
    print(f"wrote {args.out}: the mean of {len(args.checkpoints)} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
