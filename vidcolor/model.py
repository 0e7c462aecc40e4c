"""The colourisation networks and their architecture config, top to bottom (nanoGPT style).

Owns `NetConfig`, the training-free exemplar matcher `MatchNet` and the learned `ColorNet`, both
on the frozen EfficientNet-Lite0 hypercolumns of `backbone.py`. Everything works on luminance in
[0, 1] and Lab ab in Lab units. It opens no files and knows nothing of frames, uint8 images or
devices: `weights.py` builds and loads, `colorize.py` runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone, block_table, check_grid_stride, hypercolumn_channels
from .errors import OptionsError

MODEL_KINDS = ("match", "net")  # training-free MatchNet, learned ColorNet
ATTENTION_ROWS = 1024  # target positions per attention chunk (bounds the similarity buffer)
CONSENSUS_ROWS = 256  # target positions per consensus chunk (its logits stay in cache)
# Softmax logits (minus the row max) are raised to this first: exp underflows float32 below
# it anyway (e^-87 ~ 1.6e-38, lost beside a row sum >= 1), and torch's vectorised exp takes a
# ~12x slower path on underflowing inputs, which most attention logits are (60 % at 480p).
EXP_FLOOR = -87.0


@dataclass(frozen=True)
class NetConfig:
    """Architecture of a colouriser. Saved inside checkpoints; loading never infers it.

    Lists given for tuple fields (as after a JSON or checkpoint round trip) are accepted.
    """

    kind: str = "match"  # which network: "match" (training-free exemplar matcher)
    # backbone blocks tapped: strides 4-32 px (block 8, stride 16, adds 0.16 dB to the matcher on
    # held-out train photos; the shipped ColorNet taps (2, 4, 10, 14), its checkpoint says so)
    feature_blocks: tuple[int, ...] = (2, 4, 8, 10, 14)
    grid_stride_px: int = 4  # default matching grid, working-image px per feature position
    temperature: float = 0.01  # softmax temperature of the similarity (unitless)
    luma_weight: float = 2.0  # similarity penalty per squared luminance difference, 1/(L/100)^2
    match_dims: int = 64  # hypercolumn channels kept for matching (reference PCA); 0 = all
    # The fields below are used by kind "net" only.
    feature_dims: int = 128  # fixed projection of the hypercolumns (training-set PCA), channels
    key_dims: int = 64  # learned query/key channels of the attention
    width: int = 64  # decoder channels at stride 4 (x3/2 at stride 8, /2 at stride 2)
    palette_bins: int = 8  # per-axis bins of the reference ab histogram (colour embedding)
    # neighbourhood consensus on the attention logits (NCNet-style), grid cells each side;
    # 0 = off (checkpoints from before it). Radius 2 and edge 0.4 add 0.48 dB to the matcher on
    # held-out train photos.
    consensus_radius: int = 2
    # weight of the logit one cell away in the consensus, relative to the centre's, per axis
    # (edge ** |offset|: the matcher's kernel; ColorNet learns its own from this start)
    consensus_edge: float = 0.4
    # first backbone block fine-tuned with the net (kind "net"; those blocks' weights are in its
    # checkpoint, the earlier ones stay the ImageNet weights); 0 = the whole backbone frozen
    tuned_from: int = 0
    # kind "net": its half-resolution output takes the attention's values as a learned convex
    # mix of the 3 x 3 grid cells around (RAFT's convex upsampling: a colour edge between two
    # cells stays sharp) instead of bilinear; False in checkpoints from before it
    convex_upsampling: bool = True
    # kind "net": the attention also carries the reference's lightness (and its products with
    # ab); the decoder and the convex upsampling compare the lightness each cell's colour came
    # with to the target's; False in checkpoints from before it
    carried_lightness: bool = True
    # kind "net", with carried_lightness: each grid cell's colour follows the pixel's lightness
    # along the attention-weighted regression of ab on lightness (`_lightness_regression`);
    # False in checkpoints from before it
    lightness_regression: bool = True
    # kind "net": colours found for the target's own confident positions also reach its other
    # positions that look alike (`_propagate`): regions the reference does not show (cropped
    # away, or new in a film's later frames) get their neighbours' colours, not a wrong match;
    # False in checkpoints from before it
    self_propagation: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_blocks", tuple(int(b) for b in self.feature_blocks))
        n_blocks = len(block_table())
        if self.kind not in MODEL_KINDS:
            raise OptionsError(f"NetConfig.kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if not self.feature_blocks or any(not 0 <= b < n_blocks for b in self.feature_blocks):
            raise OptionsError(
                f"NetConfig.feature_blocks must be non-empty block indices in [0, {n_blocks}), "
                f"got {self.feature_blocks}"
            )
        if list(self.feature_blocks) != sorted(set(self.feature_blocks)):
            raise OptionsError(
                f"NetConfig.feature_blocks must be strictly increasing, got {self.feature_blocks}"
            )
        check_grid_stride(self.grid_stride_px, "NetConfig.grid_stride_px")
        if not self.temperature > 0.0:
            raise OptionsError(f"NetConfig.temperature must be > 0, got {self.temperature}")
        if self.match_dims < 0:
            raise OptionsError(f"NetConfig.match_dims must be >= 0, got {self.match_dims}")
        if not self.luma_weight >= 0.0:
            raise OptionsError(f"NetConfig.luma_weight must be >= 0, got {self.luma_weight}")
        for name in ("feature_dims", "key_dims", "width", "palette_bins"):
            if getattr(self, name) < 2:
                raise OptionsError(f"NetConfig.{name} must be >= 2, got {getattr(self, name)}")
        if not 0 <= self.consensus_radius <= 3:
            raise OptionsError(
                f"NetConfig.consensus_radius must be in [0, 3], got {self.consensus_radius}"
            )
        if not self.consensus_edge > 0.0:
            raise OptionsError(f"NetConfig.consensus_edge must be > 0, got {self.consensus_edge}")
        if self.tuned_from and not (
            self.kind == "net" and 0 < self.tuned_from <= max(self.feature_blocks)
        ):
            raise OptionsError(
                f"NetConfig.tuned_from must be 0 or, for kind 'net', a block index in "
                f"[1, {max(self.feature_blocks)}], got {self.tuned_from}"
            )
        if self.carried_lightness and not self.convex_upsampling:
            raise OptionsError("NetConfig.carried_lightness needs convex_upsampling")
        if self.lightness_regression and not self.carried_lightness:
            raise OptionsError("NetConfig.lightness_regression needs carried_lightness")
        if self.key_dims > self.feature_dims:
            raise OptionsError(
                f"NetConfig.key_dims must be <= feature_dims ({self.feature_dims}), "
                f"got {self.key_dims}"
            )


@dataclass(frozen=True)
class MatchReference:
    """A reference still encoded once by `MatchNet.encode_reference`.

    Attributes:
        keys: (1, N, D + 2) float, the N reference grid positions' projected hypercolumns plus
            two luminance channels (see `MatchNet`).
        ab: (1, N, 2 + k) float, Lab a and b of each position (mean over its grid cell), then
            the k channels carried along (`encode_reference`'s `carry`).
        projection: (C, D) float, orthonormal columns mapping hypercolumns to match space.
        grid_stride_px: grid stride the reference was encoded at; targets use the same.
        grid: (rows, columns) of the reference grid, N = rows * columns.
    """

    keys: torch.Tensor
    ab: torch.Tensor
    projection: torch.Tensor
    grid_stride_px: int
    grid: tuple[int, int]


class MatchNet(nn.Module):
    """Training-free exemplar colouriser: attention from target to reference positions.

    Each target grid position takes the softmax(similarity / temperature)-weighted mean of the
    reference ab, where similarity = mean per-level cosine similarity of the hypercolumns
    - luma_weight * (difference of the cells' mean luminance)^2.

    Two exact-or-nearly rewrites keep it fast. The hypercolumns are projected on the top
    `match_dims` principal directions (uncentred PCA) of the reference's own: a dot product
    with a reference vector only sees its span, so little is lost. The luminance term is a dot
    product through two extra channels: query (sqrt(2w) l, 1), key (sqrt(2w) l', -w l'^2); the
    leftover -w l^2 is the same for all keys of a query, and the softmax ignores it.

    With `consensus_radius` > 0 the similarities are first replaced by their neighbourhood
    consensus (`_consensus`, a fixed kernel from `consensus_edge`): a position's match is
    trusted as far as its neighbours match the reference's neighbours the same way.
    """

    def __init__(self, config: NetConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetConfig()
        self.backbone = Backbone(self.config.feature_blocks)
        self._scores = torch.empty(0)  # similarity scratch buffer, grown on demand

    def encode_reference(
        self, ref_luma: torch.Tensor, ref_ab: torch.Tensor, grid_stride_px: int | None = None,
        carry: torch.Tensor | None = None,
    ) -> MatchReference:
        """Compute the reference features once, to reuse for every target frame.

        Args:
            ref_luma: (1, 1, H, W) float luminance (Lab L / 100) in [0, 1].
            ref_ab: (1, 2, H, W) float Lab a and b, roughly in [-128, 127].
            grid_stride_px: matching grid stride in px; None uses `config.grid_stride_px`.
            carry: (1, k, H, W) float, other per-pixel values of the reference that the
                attention carries to the target like its colours (`forward` returns them after
                a and b); the colouriser sends its local colour-per-lightness slopes.

        Returns:
            The encoded reference, on the device of the inputs.
        """
        stride = grid_stride_px or self.config.grid_stride_px
        check_grid_stride(stride, "grid_stride_px")
        features, luma = self._features(ref_luma, stride)  # (1, N, C), (1, N, 1)
        dims = self.config.match_dims
        if 0 < dims < min(features.shape[1:]):
            _, _, v_h = torch.linalg.svd(features[0], full_matrices=False)  # (C', C)
            projection = v_h[:dims].T.contiguous()  # (C, D)
        else:
            projection = torch.eye(features.shape[-1], device=features.device)
        weight = self.config.luma_weight
        keys = [features @ projection, (2.0 * weight) ** 0.5 * luma, -weight * luma * luma]
        grid = ref_luma.shape[-2] // stride, ref_luma.shape[-1] // stride
        values = ref_ab if carry is None else torch.cat([ref_ab, carry], 1)
        ab = _positions(F.adaptive_avg_pool2d(values, grid))  # (1, N, 2 + k)
        return MatchReference(torch.cat(keys, -1), ab, projection, stride, grid)

    def forward(self, target_luma: torch.Tensor, reference: MatchReference) -> torch.Tensor:
        """Predict ab for a target batch on the matching grid.

        Args:
            target_luma: (B, 1, H, W) float luminance (Lab L / 100) in [0, 1].
            reference: from `encode_reference`, on the same device.

        Returns:
            (B, 2 + k, H / s, W / s) float Lab a and b (then the k carried channels),
            s = reference.grid_stride_px.
        """
        stride = reference.grid_stride_px
        features, luma = self._features(target_luma, stride)  # (B, M, C), (B, M, 1)
        weight = self.config.luma_weight
        projected = features @ reference.projection  # (B, M, D)
        query = torch.cat([projected, (2.0 * weight) ** 0.5 * luma, torch.ones_like(luma)], -1)
        query = query / self.config.temperature  # (B, M, D + 2)
        keys_t = reference.keys[0].T.contiguous()  # (D + 2, N)
        ab_one = F.pad(reference.ab[0], (0, 1), value=1.0)  # (N, 3 + k): a, b, ..., 1 -> sum
        grid = target_luma.shape[-2] // stride, target_luma.shape[-1] // stride
        hood, mirrored = None, [None] * len(query)
        if self.config.consensus_radius:
            sampled = query.view(len(query), *grid, -1)[:, ::2, ::2]  # as ColorNet's col_query
            hood = _Neighbourhood(consensus_taps(self.config).repeat(2, 1), grid, reference.grid,
                                  sampled.shape[2], (0, 0, *grid))
            mirrored = _mirrored(sampled.flatten(1, 2) @ keys_t, hood).tolist()
        ab = torch.cat([self._attend(q, keys_t, ab_one, hood, m)
                        for q, m in zip(query, mirrored, strict=True)])  # (B*M, 2 + k)
        return ab.view(len(query), *grid, ab.shape[-1]).permute(0, 3, 1, 2)

    @torch.inference_mode()
    def _attend(
        self, query: torch.Tensor, keys_t: torch.Tensor, ab_one: torch.Tensor,
        hood: _Neighbourhood | None = None, mirrored: bool | None = None,
    ) -> torch.Tensor:
        """Softmax attention of (M, D) queries on (D, N) keys over (N, V + 1) values (then 1),
        on the neighbourhood consensus of the logits if `hood` is given.

        Works in row chunks in one similarity buffer kept between calls: a fresh (M, N)
        matrix per frame costs more in page faults than the arithmetic. Returns (M, V).
        """
        n_keys = keys_t.shape[1]
        scores_buf = self._scores
        if (
            scores_buf.numel() < ATTENTION_ROWS * n_keys
            or (scores_buf.device, scores_buf.dtype) != (query.device, query.dtype)
        ):
            scores_buf = query.new_empty(ATTENTION_ROWS * n_keys)
            self._scores = scores_buf
        out = query.new_empty(query.shape[0], ab_one.shape[1])
        for start, scores in _logit_chunks(query, keys_t, scores_buf, hood, mirrored):
            scores.sub_(scores.amax(1, keepdim=True)).clamp_(min=EXP_FLOOR).exp_()  # (rows, N)
            torch.mm(scores, ab_one, out=out[start : start + len(scores)])
        return out[:, :-1] / out[:, -1:]

    def _features(self, luma: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Hypercolumns (B, M, C) and mean luminance (B, M, 1) of the M grid cells, row-major."""
        features = self.backbone(luma, stride)  # (B, C, h, w)
        return _positions(features), _positions(F.adaptive_avg_pool2d(luma, features.shape[-2:]))


def consensus_taps(config: NetConfig) -> torch.Tensor:
    """(2r + 1,) weights of the consensus kernel along one axis: edge ** |offset|."""
    offsets = torch.arange(-config.consensus_radius, config.consensus_radius + 1).abs()
    return config.consensus_edge ** offsets.float()


def _positions(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C), one row per grid position, contiguous."""
    return grid.flatten(2).transpose(1, 2).contiguous()


AB_SCALE = 100.0  # ColorNet works on ab / AB_SCALE internally
PALETTE_RANGE = 100.0  # the reference ab histogram spans [-PALETTE_RANGE, PALETTE_RANGE]


@dataclass(frozen=True)
class NetReference:
    """A reference still encoded once by `ColorNet.encode_reference`.

    Attributes:
        keys: (1, N, K + 3) float, learned keys of the N reference grid positions plus three
            luminance channels (the query . key product includes MatchNet's luminance term).
        values: (1, N, 2 + k) float, Lab a and b / AB_SCALE of each position (grid-cell
            mean), then the k carried channels (`encode_reference`'s `carry`), then (with
            `carried_lightness`) the moments of `_lightness_regression`.
        palette: (1, P) float, the global colour embedding input (ab histogram, mean, std).
        grid_stride_px: grid stride the reference was encoded at (always the config's).
        grid: (rows, columns) of the reference grid, N = rows * columns.
    """

    keys: torch.Tensor
    values: torch.Tensor
    palette: torch.Tensor
    grid_stride_px: int
    grid: tuple[int, int]


class ColorNet(nn.Module):
    """Learned exemplar colouriser: learned attention, confidence, and a residual decoder.

    On frozen backbone hypercolumns (projected on a fixed training-set PCA basis, the
    `feature_proj` buffer), learned query/key projections and temperature give softmax
    attention from target to reference grid positions (plus MatchNet's luminance term). The
    attention (on the neighbourhood consensus of its logits, `_consensus`, with a learned
    kernel, when `consensus_radius` > 0) warps the reference ab and yields three confidence
    maps: best similarity, normalised attention entropy and a reverse check (how far the
    attended reference positions are from preferring this target position above all others,
    Deep Exemplar's bidirectional similarity). A small U-Net (strides 4, 8, 2), conditioned on
    an embedding of the reference's ab histogram, predicts at stride 2 a gain g and a residual
    r: ab = warped * (1 + g) + r, where `warped` reaches stride 2 by a learned convex
    upsampling (`_Decoder.upsample`, with `convex_upsampling`); with `lightness_regression`
    each grid cell's colour first moves to the pixel's lightness along the attention-weighted
    line of ab on lightness (`_lightness_regression`); with `self_propagation` each pixel may
    then move towards the colours the target's confidently matched positions pass to
    look-alike ones (`_propagate`). The last layers are zero-initialised, so an untrained
    ColorNet returns the warped ab exactly (upsampled bilinearly, nearly; regressed if so
    configured).
    """

    def __init__(self, config: NetConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetConfig(kind="net")
        cfg = self.config
        self.backbone = Backbone(cfg.feature_blocks)
        channels = hypercolumn_channels(cfg.feature_blocks)
        proj = torch.eye(channels, cfg.feature_dims)  # replaced by the PCA basis in training
        self.register_buffer("feature_proj", proj)  # (C, F)
        self.query = nn.Linear(cfg.feature_dims, cfg.key_dims, bias=False)
        self.key = nn.Linear(cfg.feature_dims, cfg.key_dims, bias=False)
        with torch.no_grad():  # start as a dot product of the top key_dims PCA channels
            self.query.weight.copy_(torch.eye(cfg.key_dims, cfg.feature_dims))
            self.key.weight.copy_(torch.eye(cfg.key_dims, cfg.feature_dims))
        self.log_temperature = nn.Parameter(torch.tensor(float(cfg.temperature)).log())
        self.luma_weight = nn.Parameter(torch.tensor(float(cfg.luma_weight)))
        if cfg.consensus_radius:  # log weights of the separable kernel, rows then columns
            self.consensus = nn.Parameter(consensus_taps(cfg).log().repeat(2, 1))
        if cfg.self_propagation:  # target -> target attention: its temperature, and the weight
            # of each source position's confidence (its best logit on the reference)
            self.self_log_temperature = nn.Parameter(torch.tensor(float(cfg.temperature)).log())
            self.source_weight = nn.Parameter(torch.tensor(1.0))
        self.decoder = _Decoder(cfg)

    @torch.no_grad()
    def change_basis(self, basis: torch.Tensor) -> None:
        """Project the hypercolumns on `basis` (C, F) from now on, and map the layers that read
        projected features onto it, so that what both bases hold is read as before.

        Why: a trained net's basis may miss energy of the features inference computes (steps
        1-7 computed theirs on batch-statistics features); a fine-tune from the mapped layers
        starts where the net was and can learn to use what the new basis adds. Exact when the
        two bases span the same space."""
        overlap = self.feature_proj.T @ basis  # (F, F): old projection ~= overlap @ new one
        dims = basis.shape[1]
        self.query.weight.copy_(self.query.weight @ overlap)
        self.key.weight.copy_(self.key.weight @ overlap)
        enter = self.decoder.enter[0].weight  # (out, F + ..., 1, 1): the features come first
        enter[:, :dims, 0, 0] = enter[:, :dims, 0, 0] @ overlap
        self.feature_proj.copy_(basis)

    def encode_reference(
        self, ref_luma: torch.Tensor, ref_ab: torch.Tensor, grid_stride_px: int | None = None,
        carry: torch.Tensor | None = None,
    ) -> NetReference:
        """Compute the reference features once, to reuse for every target frame.

        Args:
            ref_luma: (1, 1, H, W) float luminance (Lab L / 100) in [0, 1].
            ref_ab: (1, 2, H, W) float Lab a and b, roughly in [-128, 127].
            grid_stride_px: must be None or `config.grid_stride_px` (the net was trained on
                that grid).
            carry: (1, k, H, W) float, other per-pixel values that the attention carries to
                the target like the colours (as in `MatchNet.encode_reference`).

        Raises:
            OptionsError: another grid stride was asked for.
        """
        stride = self._check_stride(grid_stride_px)
        features = self.project(self.backbone(ref_luma, stride))  # (1, F, h, w)
        grid = features.shape[-2:]
        luma = F.adaptive_avg_pool2d(ref_luma, grid)  # (1, 1, h, w)
        ab = F.adaptive_avg_pool2d(ref_ab, grid) / AB_SCALE  # (1, 2, h, w)
        if carry is not None:
            ab = torch.cat([ab, F.adaptive_avg_pool2d(carry, grid)], 1)
        return self.encode_grid(features, luma, ab, stride)

    def project(self, hypercolumns: torch.Tensor, first_row: int = 0) -> torch.Tensor:
        """(B, C, h, w) backbone hypercolumns -> (B, F, h, w) on the fixed PCA basis.

        `first_row` > 0 projects part of a hypercolumn: channels first_row .. first_row + C of
        it, the rest counted as zero (training sums frozen and fine-tuned levels so)."""
        basis = self.feature_proj[first_row : first_row + hypercolumns.shape[1]]
        return torch.einsum("bchw,cf->bfhw", hypercolumns, basis)

    def encode_grid(
        self, features: torch.Tensor, luma: torch.Tensor, ab: torch.Tensor, stride: int
    ) -> NetReference:
        """`encode_reference` from grid tensors (also what training feeds from its cache).

        Args:
            features: (B, F, h, w) projected hypercolumns; luma: (B, 1, h, w) cell-mean
                luminance in [0, 1]; ab: (B, 2 + k, h, w) cell-mean Lab ab / AB_SCALE, then k
                carried channels.
        """
        weight = self.luma_weight.clamp(min=0.0)
        luma_n = _positions(luma)  # (B, N, 1)
        keys = [self.key(_positions(features)), (2.0 * weight).sqrt() * luma_n,
                -weight * luma_n * luma_n, torch.ones_like(luma_n)]
        values = _positions(ab)  # (B, N, 2 + k)
        palette = _palette(values[..., :2], self.config.palette_bins)
        if self.config.carried_lightness:  # the decoder's last channels
            values = torch.cat([values, lightness_moments(values[..., :2], luma_n, -1)], -1)
        grid = (int(features.shape[-2]), int(features.shape[-1]))
        return NetReference(torch.cat(keys, -1), values, palette, stride, grid)

    def forward(self, target_luma: torch.Tensor, reference: NetReference) -> torch.Tensor:
        """Predict ab for a target batch at half the working resolution.

        Args:
            target_luma: (B, 1, H, W) float luminance (Lab L / 100) in [0, 1], H and W
                multiples of 16.
            reference: from `encode_reference`, on the same device.

        Returns:
            (B, 2 + k, H / 2, W / 2) float Lab a and b, then the k carried channels
            (bilinear from the attention grid).
        """
        stride = reference.grid_stride_px
        features = self.project(self.backbone(target_luma, stride))  # (B, F, H/4, W/4)
        predicted, warped = self.decode(features, target_luma, reference)
        return torch.cat([predicted * AB_SCALE, warped[:, 2:]], 1)

    def decode(
        self,
        features: torch.Tensor,
        target_luma: torch.Tensor,
        reference: NetReference,
        crop: tuple[int, int, int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention, confidence and decoder from projected target features.

        Args:
            features: (B, F, h, w) projected hypercolumns of the target on the stride-4 grid.
            target_luma: (B, 1, 4h, 4w) float luminance in [0, 1].
            reference: one reference (batch 1, shared) or one per target (batch B).
            crop: (top, left, height, width) in grid cells: decode only this window (training
                does, to save time); the reverse check still sees the whole target.

        Returns:
            Predicted ab / AB_SCALE, (B, 2, 2h, 2w) float (of the crop), and the warped
            reference values (B, 2 + k, 2h, 2w): ab / AB_SCALE, then the carried channels,
            upsampled from the grid (`_Decoder.upsample`).
        """
        batch, _, height, width = features.shape
        luma_grid = F.adaptive_avg_pool2d(target_luma, (height, width))  # (B, 1, h, w)
        weight = self.luma_weight.clamp(min=0.0)
        luma_q = luma_grid.permute(0, 2, 3, 1)  # (B, h, w, 1)
        # query . key = feature similarity - weight * (luma - luma')^2
        query = torch.cat([self.query(features.permute(0, 2, 3, 1)),
                           (2.0 * weight).sqrt() * luma_q, torch.ones_like(luma_q),
                           -weight * luma_q * luma_q], -1)  # (B, h, w, D)
        col_grid = query[:, ::2, ::2]  # the reverse check's positions
        col_query = col_grid.reshape(batch, -1, query.shape[-1])
        top, left, height, width = (0, 0, height, width) if crop is None else crop
        neighbourhood = None
        if self.config.consensus_radius:  # the consensus needs the logits around the window
            halo = self.config.consensus_radius
            top0, left0 = max(0, top - halo), max(0, left - halo)
            bottom, right = top + height + halo, left + width + halo
            query = query[:, top0:bottom, left0:right]
            neighbourhood = _Neighbourhood(
                self.consensus.exp(), tuple(query.shape[1:3]), reference.grid,
                col_grid.shape[2], (top - top0, left - left0, height, width))
        else:
            query = query[:, top : top + height, left : left + width]
        propagated = None
        if self.config.self_propagation:  # from the whole target, before the crop
            propagated = self._propagate(features, col_query, reference, crop)
        if crop is not None:
            rows, cols = slice(top, top + height), slice(left, left + width)
            px = target_luma.shape[-1] // features.shape[-1]  # grid stride
            features, luma_grid = features[..., rows, cols], luma_grid[..., rows, cols]
            target_luma = target_luma[..., px * top : px * (top + height),
                                      px * left : px * (left + width)]
        warped, confidence = _attend(
            query.reshape(batch, -1, query.shape[-1]), col_query, reference.keys,
            reference.values, self.log_temperature.exp(), neighbourhood,
        )
        warped = warped.transpose(1, 2).reshape(batch, -1, height, width)  # (B, 2 + k, h, w)
        confidence = confidence.transpose(1, 2).reshape(batch, 3, height, width)
        palette = reference.palette.expand(batch, -1)
        return self.decoder(features, luma_grid, target_luma, warped, confidence, palette,
                            propagated)

    def _propagate(
        self, features: torch.Tensor, col_query: torch.Tensor, reference: NetReference,
        crop: tuple[int, int, int, int] | None,
    ) -> torch.Tensor:
        """Each position's colours as its confidently matched look-alikes in the same target
        see them: (B, 2, 2h, 2w) ab / AB_SCALE (of the crop), the look-alikes taken from every
        other row and column of the whole target grid.

        Why: most of the error is where the reference does not show the target (on held-out
        photos, the 23 % of pixels cropped out of the reference hold 61 % of the squared error),
        and there the attention's best match is a wrong colour. Each sampled position gets the
        reference's colours by plain attention (no consensus) and its best logit as its
        confidence; then each position attends to the sampled ones by feature likeness
        (the learned query and key, target on target) plus source_weight x that confidence,
        so an unmatched region takes the colours of confidently matched regions that look
        like it. The decoder learns where to use them."""
        batch, _, height, width = features.shape
        col_logits = col_query @ reference.keys.transpose(1, 2) / self.log_temperature.exp()
        best = col_logits.amax(2)  # (B, M')
        source_ab = _floored_softmax(col_logits) @ reference.values[..., :2]  # (B, M', 2)
        sampled = features[..., ::2, ::2]  # the positions of col_query
        positions = _positions(sampled)  # (B, M', F)
        logits = self.query(positions) @ self.key(positions).transpose(1, 2)  # (B, M', M')
        logits = logits / self.self_log_temperature.exp() + self.source_weight * best[:, None]
        propagated = _floored_softmax(logits) @ source_ab  # (B, M', 2)
        propagated = propagated.transpose(1, 2).reshape(batch, 2, *sampled.shape[-2:])
        propagated = F.interpolate(propagated, size=(2 * height, 2 * width), mode="bilinear",
                                   align_corners=False)
        if crop is None:
            return propagated
        top, left, rows, cols = crop
        return propagated[..., 2 * top : 2 * (top + rows), 2 * left : 2 * (left + cols)]

    def _check_stride(self, grid_stride_px: int | None) -> int:
        stride = self.config.grid_stride_px
        if grid_stride_px not in (None, stride):
            raise OptionsError(
                f"the learned ColorNet works on the {stride} px grid it was trained on, "
                f"got grid_stride_px={grid_stride_px}; leave feature_stride_px unset"
            )
        return stride


@dataclass(frozen=True)
class _Neighbourhood:
    """What `_attend` needs for the neighbourhood consensus of its logits.

    Attributes:
        taps: (2, 2r + 1) positive kernel weights along rows, then along columns.
        query_grid: (rows, columns) of the query positions (the window plus its halo).
        key_grid: (rows, columns) of the reference grid.
        col_columns: columns of the reverse check's `col_query` grid.
        window: (top, left, rows, columns) of the positions to return, within query_grid.
    """

    taps: torch.Tensor
    query_grid: tuple[int, int]
    key_grid: tuple[int, int]
    col_columns: int
    window: tuple[int, int, int, int]


def _attend(
    query: torch.Tensor,
    col_query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    temperature: torch.Tensor,
    hood: _Neighbourhood | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of target on reference positions, and its confidence.

    Args:
        query: (B, M, D) target positions; keys: (B or 1, N, D) reference positions;
            query . key is their similarity.
        col_query: (B, M', D) the target positions the reverse check compares with: every
            other row and column of the whole target grid.
        values: (B or 1, N, V) reference ab / AB_SCALE (and any carried channels).
        temperature: () softmax temperature.
        hood: if given, the logits are replaced by their neighbourhood consensus
            (`_consensus`), and only `hood.window` of the query positions is returned.

    Returns:
        (B, M, V) warped values and (B, M, 3) confidence: best similarity, attention
        entropy / log N in [0, 1], and the reverse check sum_j A_ij (z_ij - max_i' z_i'j) / 10
        with z = similarity / temperature and i' over `col_query` (cheaper than all target
        positions, and without the consensus): <= 0 roughly, 0 when the match is mutual.
    """
    query = query / temperature
    col_logits = col_query @ keys.transpose(1, 2) / temperature  # (B, M', N)
    col_max = col_logits.amax(1, keepdim=True)  # (B, 1, N)
    mirrored = None if hood is None else _mirrored(col_logits, hood)
    if torch.is_grad_enabled():
        logits = query @ keys.transpose(1, 2)  # (B, M, N)
        if hood is not None:
            logits = torch.cat([_consensus(
                logits[b : b + 1].view(1, *hood.query_grid, -1), hood, bool(mirrored[b]),
                hood.window) for b in range(len(logits))])
        row_max = logits.amax(2, keepdim=True)  # (B, M, 1)
        exp = (logits - row_max).clamp(min=EXP_FLOOR).exp()
        total = exp.sum(2, keepdim=True)
        attn = exp / total
        warped = attn @ values  # (B, M, 2)
        mean_logit = (attn * logits).sum(2, keepdim=True)
        reverse = mean_logit - attn @ col_max.transpose(1, 2)
    else:
        row_max, total, warped, mean_logit, reverse = _attend_chunks(
            query, keys, values, col_max, hood, mirrored)
    entropy = (row_max + total.log() - mean_logit) / math.log(keys.shape[1])
    return warped, torch.cat([row_max * temperature, entropy, reverse / 10.0], -1)


def _floored_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, logits more than -EXP_FLOOR below their row's max raised to
    that floor first: the same result, on torch's fast exp path."""
    return (logits - logits.amax(-1, keepdim=True)).clamp(min=EXP_FLOOR).softmax(-1)


def _mirrored(col_logits: torch.Tensor, hood: _Neighbourhood) -> torch.Tensor:
    """(B,) bool: does the reference show the target mirrored left to right?

    Each sampled target position's best reference position pairs a target column with a
    reference column; if the reference column falls as the target column rises, the
    reference is mirrored (training mirrors half its references; a still may be a flipped
    print). Unrelated references give either answer, and it does not matter which."""
    target_cols = torch.arange(col_logits.shape[1], device=col_logits.device) % hood.col_columns
    key_cols = col_logits.argmax(2) % hood.key_grid[1]  # (B, M')
    target_cols = target_cols.to(col_logits.dtype) - target_cols.to(col_logits.dtype).mean()
    key_cols = key_cols.to(col_logits.dtype)
    key_cols = key_cols - key_cols.mean(1, keepdim=True)
    return (target_cols * key_cols).sum(1) < 0.0


def _consensus(
    logits: torch.Tensor, hood: _Neighbourhood, mirrored: bool,
    window: tuple[int, int, int, int],
) -> torch.Tensor:
    """Neighbourhood consensus (Rocco et al. 2018, NCNet, as one fixed-shape 4-D filter).

    A true match (i, j) has neighbours that match the neighbours of j by the same offset; a
    look-alike usually has not. So each logit becomes the weighted mean of the logits of
    (i + d, j + d) over offsets d within the radius (a separable kernel over rows, then
    columns; offsets that leave either grid are left out of the mean). For a mirrored
    reference the column offset runs the other way in the reference.

    Args:
        logits: (1, h, w, N) logits of a block of query positions, rows then columns; the block
            must hold every row and column of the query grid within the radius of `window`.
        window: (top, left, rows, columns) of the block to return.

    Returns:
        (1, rows * columns, N) consensus logits of the window.
    """
    top, left, height, width = window
    grid = logits.view(*logits.shape[:3], *hood.key_grid)  # (1, h, w, h', w')
    grid = _diagonal_mean(grid, hood.taps[0], 1, 3, False, (top, height))
    grid = _diagonal_mean(grid, hood.taps[1], 2, 4, mirrored, (left, width))
    return grid.reshape(1, height * width, -1)


def _diagonal_mean(
    grid: torch.Tensor, taps: torch.Tensor, dim_q: int, dim_k: int, mirrored: bool,
    span: tuple[int, int],
) -> torch.Tensor:
    """Weighted mean of grid[.., q + d, .., k + d (k - d if mirrored), ..] over the offsets d
    of the centred `taps`, along query dim `dim_q` and key dim `dim_k`, for the query indices
    q in span = (first, count) only (the halo a chunk brings is read, not computed); offsets
    that leave the grid are left out of the mean."""
    radius = len(taps) // 2
    first, count = span
    n_q, n_k = grid.shape[dim_q], grid.shape[dim_k]
    inference = not torch.is_grad_enabled()
    weights = taps.tolist() if inference else taps
    total = grid.narrow(dim_q, first, count) * weights[radius]
    norm = weights[radius] * grid.new_ones(count, n_k)
    for offset in range(-radius, radius + 1):
        key_offset = -offset if mirrored else offset
        q_lo, q_hi = max(first, -offset), min(first + count, n_q - offset)
        length_k = n_k - abs(offset)
        if offset == 0 or q_hi <= q_lo or length_k <= 0:
            continue
        into = total.narrow(dim_q, q_lo - first, q_hi - q_lo).narrow(
            dim_k, max(0, -key_offset), length_k)
        source = grid.narrow(dim_q, q_lo + offset, q_hi - q_lo).narrow(
            dim_k, max(0, key_offset), length_k)
        if inference:
            into.add_(source, alpha=weights[radius + offset])
        else:
            into += weights[radius + offset] * source
        inside = grid.new_zeros(count, n_k)
        inside[q_lo - first : q_hi - first,
               max(0, -key_offset) : max(0, -key_offset) + length_k] = 1.0
        norm = norm + weights[radius + offset] * inside
    shape = [1] * grid.dim()
    shape[dim_q], shape[dim_k] = count, n_k
    return total.div_(norm.view(shape)) if inference else total / norm.view(shape)


def _attend_chunks(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, col_max: torch.Tensor,
    hood: _Neighbourhood | None = None, mirrored: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """`_attend`'s inference path: ATTENTION_ROWS target rows at a time, in two reused
    buffers that stay in cache (a full (B, M, N) softmax costs several trips to memory).
    With a neighbourhood, whole grid rows at a time (CONSENSUS_ROWS positions, plus the halo
    rows the consensus reads), their logits in fresh tensors.

    Returns (B, M, 1) row max, (B, M, 1) sum of exp, (B, M, V) warped values, (B, M, 1) mean
    logit and (B, M, 1) attention-weighted (logit - column max), as `_attend` needs them.
    """
    batch = query.shape[0]
    n_keys, n_values = keys.shape[1], values.shape[-1]
    if hood is None:
        n_query = query.shape[1]
        rows = min(ATTENTION_ROWS, n_query)
        logits_buf = query.new_empty(rows * n_keys)
    else:  # the consensus chunks bring their own logits
        n_query = hood.window[2] * hood.window[3]
        rows = min(n_query, _consensus_step(hood) * hood.window[3])
        logits_buf = None
    out = query.new_empty(batch, n_query, n_values + 4)  # max, total, values, mean, reverse
    exp_buf = query.new_empty(rows * n_keys)
    for b in range(batch):
        keys_t = keys[min(b, len(keys) - 1)].T.contiguous()  # (D, N)
        ab_one = torch.cat([values[min(b, len(values) - 1)], torch.ones_like(
            values[0, :, :1]), col_max[b].T], 1)  # (N, V + 2): values, 1, column max
        for start, logits in _logit_chunks(query[b], keys_t, logits_buf, hood,
                                           None if mirrored is None else bool(mirrored[b])):
            exp = exp_buf[: len(logits) * n_keys].view(len(logits), n_keys)
            row_max = logits.amax(1, keepdim=True)
            torch.sub(logits, row_max, out=exp).clamp_(min=EXP_FLOOR).exp_()
            sums = exp @ ab_one  # (rows, V + 2)
            logits.mul_(exp)
            total = sums[:, n_values : n_values + 1]
            mean_logit = logits.sum(1, keepdim=True) / total
            chunk = out[b, start : start + len(logits)]
            chunk[:, :1], chunk[:, 1:2] = row_max, total
            chunk[:, 2 : 2 + n_values] = sums[:, :n_values] / total
            chunk[:, -2:-1] = mean_logit
            chunk[:, -1:] = mean_logit - sums[:, -1:] / total
    return (out[..., :1], out[..., 1:2], out[..., 2 : 2 + n_values], out[..., -2:-1],
            out[..., -1:])


def _logit_chunks(query, keys_t, logits_buf, hood, mirrored):
    """Yield (first output position, (rows, N) logits) over one target's (M, D) queries: plain
    query . key rows in `logits_buf`, or the consensus logits of whole window rows."""
    n_keys = keys_t.shape[1]
    if hood is None:
        rows = len(logits_buf) // n_keys
        for start in range(0, len(query), rows):
            q = query[start : start + rows]
            logits = logits_buf[: len(q) * n_keys].view(len(q), n_keys)
            yield start, torch.mm(q, keys_t, out=logits)
        return
    top, left, height, width = hood.window
    grid_rows, grid_cols = hood.query_grid
    radius = hood.taps.shape[1] // 2
    step = _consensus_step(hood)
    grid = query.view(grid_rows, grid_cols, -1)
    for first in range(top, top + height, step):
        last = min(first + step, top + height)
        lo, hi = max(0, first - radius), min(grid_rows, last + radius)
        block = (grid[lo:hi].reshape(-1, grid.shape[-1]) @ keys_t).view(1, hi - lo, grid_cols, -1)
        window = (first - lo, left, last - first, width)
        yield (first - top) * width, _consensus(block, hood, mirrored, window)[0]


def _consensus_step(hood: _Neighbourhood) -> int:
    """Window rows per consensus chunk: CONSENSUS_ROWS positions, at least one row."""
    return max(1, CONSENSUS_ROWS // hood.window[3])


def _palette(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Global colour embedding input of reference ab: histogram, mean and std.

    Args:
        values: (B, N, 2) ab / AB_SCALE.

    Returns:
        (B, bins * bins + 4) float: the fraction of positions in each ab bin over
        [-PALETTE_RANGE, PALETTE_RANGE]^2 (a row-major, b fastest), then mean a, b and std a, b.
    """
    span = PALETTE_RANGE / AB_SCALE
    index = ((values + span) / (2 * span) * bins).long().clamp(0, bins - 1)  # (B, N, 2)
    flat = index[..., 0] * bins + index[..., 1]  # (B, N)
    hist = torch.zeros(values.shape[0], bins * bins, device=values.device, dtype=values.dtype)
    hist.scatter_add_(1, flat, torch.ones_like(flat, dtype=values.dtype))
    hist = hist / values.shape[1]
    return torch.cat([hist, values.mean(1), values.std(1)], -1)


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True))


class _Decoder(nn.Module):
    """U-Net on strides 4 -> 8 -> 4 -> 2 predicting a gain and residual on the warped ab."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        width, wide, narrow = cfg.width, cfg.width * 3 // 2, cfg.width // 2
        self.enter = nn.Sequential(
            nn.Conv2d(cfg.feature_dims + 2 + 3 + 1, width, 1), nn.ReLU(inplace=True),
            _conv(width, width),
        )
        self.down = _conv(width, wide)
        self.palette = nn.Sequential(  # reference palette + image-wide confidence statistics
            nn.Linear(cfg.palette_bins**2 + 4 + 6, width), nn.ReLU(inplace=True),
            nn.Linear(width, wide),
        )
        self.middle = _conv(wide, wide)
        self.up = _conv(wide + width, width)
        self.fine = nn.Sequential(_conv(width + 3, narrow), _conv(narrow, narrow))
        self.out = nn.Conv2d(narrow, 3, 3, padding=1)
        if cfg.convex_upsampling:  # logits of the 3 x 3 cells each half-resolution pixel mixes,
            # from the decoder's features and the pixel's lightness gaps to those cells
            self.select = nn.Conv2d(narrow + 9, 9, 3, padding=1)
        if cfg.carried_lightness:  # the same from the lightness each cell's colour came with,
            # and how far the target's cells are from the lightness their colours came with;
            # separate layers (a linear layer on more inputs is their sum) so that a checkpoint
            # from before them starts its fine-tune unchanged
            self.select_carried = nn.Conv2d(9, 9, 3, padding=1, bias=False)
            self.enter_carried = nn.Conv2d(1, width, 1, bias=False)
        if cfg.self_propagation:  # per pixel, how far to move to the propagated colours
            self.propagate = nn.Conv2d(narrow + 4, 1, 3, padding=1)
        self.regression = cfg.lightness_regression
        for module in self.modules():  # He init: PyTorch's default shrinks ReLU stacks ~6x a layer
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        last = [self.out] + [getattr(self, name) for name in
                             ("select", "select_carried", "enter_carried", "propagate")
                             if hasattr(self, name)]
        for layer in last:  # starts as the (bilinear, nearly) warped ab exactly
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, features, luma_grid, target_luma, values, confidence, palette,
                propagated=None):
        """Args: (B, F, h, w), (B, 1, h, w), (B, 1, 4h, 4w), (B, 2 + k (+ 4), h, w) warped
        values (ab / AB_SCALE, then carried channels, then with `carried_lightness` the
        lightness moments), (B, 3, h, w), (B, P), and with `self_propagation` the (B, 2, 2h,
        2w) propagated ab / AB_SCALE (`ColorNet._propagate`). Returns predicted ab / AB_SCALE
        (B, 2, 2h, 2w) and the values but the moments upsampled to (2h, 2w) (`upsample`)."""
        carried = hasattr(self, "select_carried")
        if carried:
            values, moments = values[:, :-MOMENT_CHANNELS], values[:, -MOMENT_CHANNELS:]
            ref_luma, slope = _lightness_regression(values[:, :2], moments)
        warped = values[:, :2]
        size = (2 * values.shape[-2], 2 * values.shape[-1])
        convex = hasattr(self, "select")  # then only ab is needed bilinear, as an input
        warped2 = F.interpolate(warped if convex else values, size=size, mode="bilinear",
                                align_corners=False)
        x4 = self.enter[0](torch.cat([features, warped, confidence, luma_grid], 1))
        if carried:  # signed, ~[-1, 1]: a lightness mismatch says the colour is doubtful
            x4 = x4 + self.enter_carried((luma_grid - ref_luma) * CARRIED_GAP_SCALE)
        x4 = self.enter[1:](x4)
        x8 = self.down(F.avg_pool2d(x4, 2))  # (B, wide, h/2, w/2)
        # Whether the reference fits this image at all is a global question: the mean and
        # spread of the confidence maps answer it (an unrelated reference should fade to grey).
        stats = torch.cat([palette, confidence.mean((2, 3)), confidence.std((2, 3))], 1)
        x8 = self.middle(x8 + self.palette(stats)[:, :, None, None])
        up = F.interpolate(x8, size=x4.shape[-2:], mode="bilinear", align_corners=False)
        x4 = self.up(torch.cat([up, x4], 1))
        size = (2 * x4.shape[-2], 2 * x4.shape[-1])
        luma2 = F.adaptive_avg_pool2d(target_luma, size)
        x2 = F.interpolate(x4, size=size, mode="bilinear", align_corners=False)
        x2 = self.fine(torch.cat([x2, luma2, warped2[:, :2]], 1))
        if convex:  # each pixel's 3 x 3 cells of every grid it reads, in one unfold
            grids = [values, luma_grid] + ([ref_luma, slope] if carried else [])
            around = _cells_around(torch.cat(grids, 1))
            cells, cell_luma, carried_cells = around.split(
                [values.shape[1], 1, around.shape[1] - values.shape[1] - 1], 1)
            # a pixel on the dark side of an edge is closest to the dark cells: the cue of
            # joint bilateral upsampling, squared an input of the learned one
            gaps = (luma2 - cell_luma[:, 0]).square() * LIGHTNESS_GAP_SCALE
            logits = self.select(torch.cat([x2, gaps], 1))
            if carried:  # the same gaps to the lightness each cell's colour came with
                ref_cell_luma, slope_cells = carried_cells.split([1, 2], 1)
                offsets = luma2 - ref_cell_luma[:, 0]  # (B, 9, 2h, 2w)
                logits = logits + self.select_carried(offsets.square() * LIGHTNESS_GAP_SCALE)
                if self.regression:  # each cell's ab moves along its line to that lightness
                    ab = cells[:, :2] + slope_cells * offsets.unsqueeze(1)
                    cells = torch.cat([ab, cells[:, 2:]], 1)
            warped2 = self.upsample(cells, logits)
        gain, residual = self.out(x2).split([1, 2], 1)
        ab = warped2[:, :2] * (1.0 + gain) + residual
        if propagated is not None:  # zero-initialised: a fine-tune starts where the net was
            move = self.propagate(torch.cat([x2, propagated, propagated - ab.detach()], 1))
            ab = ab + move * (propagated - ab)
        return ab, warped2

    @staticmethod
    def upsample(cells: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Convex upsampling (Teed & Deng 2020, RAFT) of grid values to (B, V, 2h, 2w): each
        output pixel is a softmax(logits + prior)-weighted mix of the 3 x 3 cells around its
        own. The prior is log(bilinear weight + CONVEX_PRIOR_FLOOR), so zero logits give
        bilinear upsampling (plus a little of the far cells); learned logits can take each
        pixel from the side of a colour edge its lightness belongs to.

        Args: cells (B, V, 9, 2h, 2w) the values of those cells for each output pixel
            (`_cells_around` of the (B, V, h, w) grid values); logits (B, 9, 2h, 2w)."""
        prior = _bilinear_prior(logits.dtype, logits.device).repeat(1, *(
            n // 2 for n in cells.shape[-2:]))
        weights = (logits + prior).softmax(1).unsqueeze(1)  # (B, 1, 9, 2h, 2w)
        return (cells * weights).sum(2)


CONVEX_PRIOR_FLOOR = 0.01  # weight floor of the convex upsampling's prior (see `upsample`)
LIGHTNESS_GAP_SCALE = 100.0  # (luminance difference)^2 -> convex upsampling input, ~[0, 10]
# ridge term of `_lightness_regression`, luminance^2 (a 0.017 std): 3e-4 and 1e-4 gave the
# untrained regression +0.26 and +0.27 dB on held-out train photos, 1e-3 +0.22, 1e-2 +0.07
REGRESSION_EPS = 3e-4
MOMENT_CHANNELS = 4  # the attention's last value channels with carried_lightness: c, c a, c b, c^2
CARRIED_GAP_SCALE = 10.0  # target minus carried reference luminance -> decoder input, ~[-1, 1]


def lightness_moments(ab: torch.Tensor, luma: torch.Tensor, dim: int) -> torch.Tensor:
    """The values `_lightness_regression` needs the attention to carry, stacked along `dim`:
    c, c * a, c * b and c^2 of the centred luminance c = L - 0.5 (centred: less cancellation
    in the variance). ab: Lab ab / AB_SCALE, 2 along `dim`; luma: L / 100, 1 along it."""
    centred = luma - 0.5
    return torch.cat([centred, ab * centred, centred * centred], dim)


def _lightness_regression(
    ab: torch.Tensor, moments: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target grid cell, the attention-weighted least-squares line ab ~ ab + slope * (L -
    L_mean) through the reference positions it attends to: when the attention splits between
    a dark red and a light blue region, a pixel's own lightness says which it is.

    Args: ab (B, 2, h, w) attention-weighted ab / AB_SCALE; moments (B, 4, h, w) the attention-
        weighted c, c * a, c * b and c^2 of the reference's centred luminance c = L - 0.5.
    Returns: L_mean (B, 1, h, w) in [0, 1] and slope (B, 2, h, w), ab per luminance unit,
        ridge-regularised by REGRESSION_EPS (a cell attending to one lightness gets ~0)."""
    mean, mean_ab, mean_square = moments.split([1, 2, 1], 1)
    variance = (mean_square - mean.square()).clamp(min=0.0)
    return mean + 0.5, (mean_ab - ab * mean) / (variance + REGRESSION_EPS)


def _cells_around(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, 9, 2h, 2w): for each half-resolution pixel, the values of the 3 x 3
    grid cells around its own, row-major (edge cells repeated at the border)."""
    batch, channels, height, width = grid.shape
    cells = F.unfold(F.pad(grid, (1, 1, 1, 1), mode="replicate"), 3)  # (B, C * 9, h * w)
    cells = cells.view(batch, channels, 9, height, width)
    return cells.repeat_interleave(2, 3).repeat_interleave(2, 4)


def _bilinear_prior(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(9, 2, 2) log prior of `_Decoder.upsample`: the bilinear weights (align_corners False)
    of the 3 x 3 cells for the four half-resolution pixels of a cell."""
    sides = torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.75, 0.25]], dtype=dtype, device=device)
    weights = sides[:, None, :, None] * sides[None, :, None, :]  # (2, 2, 3, 3): y, x, cells
    return (weights + CONVEX_PRIOR_FLOOR).log().flatten(2).permute(2, 0, 1).contiguous()
