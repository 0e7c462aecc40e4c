"""model.py: NetConfig checks, the Lite0 backbone on real weights, MatchNet shapes and values."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidcolor import model as model_module
from vidcolor.backbone import Backbone, _same_pad
from vidcolor.errors import OptionsError
from vidcolor.model import ColorNet, MatchNet, NetConfig, _attend, _palette
from vidcolor.weights import load_model

HYPERCOLUMN_CHANNELS = 24 + 40 + 112 + 112 + 192  # outputs of blocks 2, 4, 8, 10, 14


@pytest.fixture(scope="module")
def net() -> MatchNet:
    return load_model("match", device="cpu")


def smooth_luma(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(1, 1, H, W) float luminance in [0, 1] with structure at several scales."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 1, height // 8, width // 8, generator=gen)
    coarse = F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    stripes = 0.15 * torch.sin(x / 3.0 + y / 5.0)
    return (0.6 * coarse + 0.2 + stripes).clamp(0.0, 1.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "nope"},
        {"feature_blocks": ()},
        {"feature_blocks": (4, 2)},
        {"feature_blocks": (2, 99)},
        {"grid_stride_px": 3},
        {"temperature": 0.0},
        {"luma_weight": -1.0},
        {"match_dims": -1},
        {"consensus_radius": 4},
        {"consensus_edge": 0.0},
        {"tuned_from": 5},  # the training-free matcher has nothing to fine-tune
        {"kind": "net", "tuned_from": 15},  # past the deepest tapped block
    ],
)
def test_netconfig_rejects_bad_values(bad):
    with pytest.raises(OptionsError, match=next(iter(bad))):
        NetConfig(**bad)


def test_netconfig_round_trips_through_a_dict():
    config = NetConfig(feature_blocks=[2, 4], temperature=0.02)  # lists, as after JSON
    assert config.feature_blocks == (2, 4)
    assert NetConfig(**dataclasses.asdict(config)) == config


def test_same_pad_matches_tensorflow_sizes():
    x = torch.zeros(1, 1, 9, 10)
    assert _same_pad(x, 3, 2).shape[-2:] == (11, 11)  # 9: pad 1+1; 10: pad 0+1
    assert _same_pad(x, 5, 2).shape[-2:] == (13, 13)  # 9: pad 2+2; 10: pad 1+2


def test_backbone_keys_are_the_package_keys():
    keys = set(Backbone((2, 4, 10, 14)).state_dict())
    assert "_conv_stem.weight" in keys and "_blocks.14._project_conv.weight" in keys
    assert "_blocks.0._depthwise_conv.weight" in keys
    assert "_blocks.0._expand_conv.weight" not in keys  # block 0 has expand ratio 1
    assert not any(k.startswith(("_blocks.15", "_conv_head", "_fc")) for k in keys)


def test_backbone_hypercolumns_are_normalised_levels_on_the_grid(net):
    with torch.inference_mode():
        features = net.backbone(smooth_luma(96, 128).expand(2, -1, -1, -1), 4)
    assert features.shape == (2, HYPERCOLUMN_CHANNELS, 24, 32)
    assert features.dtype == torch.float32
    # The stride-4 level is on the grid as is: a unit vector / sqrt(5 levels) at every position.
    stride4 = features[:, :24].norm(dim=1)
    torch.testing.assert_close(stride4, torch.full((2, 24, 32), 5**-0.5), atol=1e-4, rtol=0)
    # Resampled coarser levels can only be shorter: the total norm is at most 1.
    assert features.norm(dim=1).max().item() <= 1.0 + 1e-4
    assert features.norm(dim=1).mean().item() > 0.8


def test_backbone_in_two_parts_equals_the_whole(net):
    """Training caches the frozen first blocks' output and runs only the fine-tuned rest:
    the two parts' levels are the whole hypercolumn's, in order."""
    luma = smooth_luma(64, 96)
    backbone = net.backbone
    with torch.no_grad():
        whole = backbone(luma, 4)
        first, mid = backbone.levels(backbone.stem(luma), (16, 24), range(5))
        rest, _ = backbone.levels(mid, (16, 24), range(5, len(backbone._blocks)))
    assert [len(level[0]) for level in first + rest] == [24, 40, 112, 112, 192]
    parts = torch.cat(first + rest, 1) / len(backbone.feature_blocks) ** 0.5
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6)


def test_backbone_features_see_structure(net):
    """Pretrained features: a flat picture and a textured one give different hypercolumns."""
    with torch.inference_mode():
        flat = net.backbone(torch.full((1, 1, 64, 64), 0.5), 8).flatten(1)
        textured = net.backbone(smooth_luma(64, 64), 8).flatten(1)
    assert F.cosine_similarity(flat, textured).item() < 0.9


def test_matchnet_shapes(net):
    ref_ab = torch.randn(1, 2, 64, 96) * 20
    for stride in (4, 8):
        with torch.inference_mode():
            reference = net.encode_reference(smooth_luma(64, 96), ref_ab, stride)
            ab = net(smooth_luma(48, 80, seed=1).expand(3, -1, -1, -1), reference)
        n_ref = (64 // stride) * (96 // stride)
        assert reference.keys.shape == (1, n_ref, net.config.match_dims + 2)
        assert reference.ab.shape == (1, n_ref, 2)
        assert ab.shape == (3, 2, 48 // stride, 80 // stride) and ab.dtype == torch.float32


def test_carried_values_travel_with_the_colours(net):
    """`carry` channels are pooled and warped by the same attention as ab: carrying ab itself
    gives back the matcher's ab exactly, for MatchNet and (before its decoder, without the
    lightness regression, which moves ab only) ColorNet."""
    ref_luma, ref_ab = smooth_luma(64, 96), torch.randn(1, 2, 64, 96) * 20
    target = smooth_luma(48, 80, seed=1).expand(2, -1, -1, -1)
    learned = load_model("net", device="cpu")
    plain = ColorNet(dataclasses.replace(learned.config, lightness_regression=False)).eval()
    plain.load_state_dict(learned.state_dict())
    with torch.inference_mode():
        out = net(target, net.encode_reference(ref_luma, ref_ab, carry=ref_ab))
        reference = learned.encode_reference(ref_luma, ref_ab, carry=ref_ab)
        features = learned.project(learned.backbone(target, 4))
        warped, warped_plain = (model.decode(features, target, reference)[1]
                                for model in (learned, plain))
        net_out = learned(target, reference)
    assert out.shape == (2, 4, 12, 20)
    torch.testing.assert_close(out[:, 2:], out[:, :2], atol=1e-3, rtol=0)
    assert net_out.shape == (2, 4, 24, 40) and warped.shape == (2, 4, 24, 40)
    torch.testing.assert_close(warped_plain[:, 2:], warped_plain[:, :2] * model_module.AB_SCALE,
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(warped[:, 2:], warped_plain[:, 2:])
    assert (warped[:, :2] - warped_plain[:, :2]).abs().max() > 1e-3  # the regression moved ab
    torch.testing.assert_close(net_out[:, 2:], warped[:, 2:])
    assert reference.palette.shape == (1, learned.config.palette_bins ** 2 + 4)


def test_matchnet_rejects_a_bad_stride(net):
    with pytest.raises(OptionsError, match="grid_stride_px"):
        net.encode_reference(smooth_luma(64, 64), torch.zeros(1, 2, 64, 64), 5)


def test_self_match_recovers_the_reference_colours(net):
    """Target = reference luminance: each cell should find itself and get back its own ab."""
    luma = smooth_luma(128, 128)
    ab = torch.cat([(luma - 0.5) * 120, torch.flip(luma, [3]) * 60 - 30], 1)  # (1, 2, H, W)
    with torch.inference_mode():
        reference = net.encode_reference(luma, ab)
        predicted = net(luma, reference)
    truth = F.adaptive_avg_pool2d(ab, predicted.shape[-2:])
    assert (predicted - truth).abs().mean().item() < 3.0
    assert ab.std().item() > 15.0  # the test would be vacuous on flat colours


def test_prediction_is_a_convex_mix_of_reference_colours(net):
    ref_ab = torch.tensor([30.0, -20.0]).view(1, 2, 1, 1).expand(1, 2, 64, 64)
    with torch.inference_mode():
        reference = net.encode_reference(smooth_luma(64, 64), ref_ab)
        ab = net(smooth_luma(64, 64, seed=3), reference)
    torch.testing.assert_close(ab, ref_ab[..., :16, :16].expand_as(ab), atol=1e-3, rtol=0)


def test_batch_items_are_independent(net):
    ref_ab = torch.randn(1, 2, 64, 64) * 20
    first, second = smooth_luma(64, 64, seed=4), smooth_luma(64, 64, seed=5)
    with torch.inference_mode():
        reference = net.encode_reference(smooth_luma(64, 64), ref_ab)
        both = net(torch.cat([first, second]), reference)
        alone = net(second, reference)
    torch.testing.assert_close(both[1:], alone, atol=1e-3, rtol=0)


def test_attention_equals_plain_softmax():
    """The chunked in-place attention is exactly softmax(q k) v, also over several chunks."""
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(2500, 8, generator=gen) * 3  # > ATTENTION_ROWS: three chunks
    keys_t = torch.randn(8, 300, generator=gen)
    ab = torch.randn(300, 2, generator=gen) * 40
    ab_one = F.pad(ab, (0, 1), value=1.0)
    got = MatchNet(NetConfig(feature_blocks=(2,)))._attend(query, keys_t, ab_one)
    expected = torch.softmax(query @ keys_t, dim=1) @ ab
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-3)


def test_attention_floor_on_underflowing_logits_changes_nothing():
    """Logits far below their row's max (most of them, in a sharp attention) are raised to
    EXP_FLOOR before exp, for speed: the result equals an unfloored float64 softmax."""
    gen = torch.Generator().manual_seed(1)
    query = torch.randn(300, 8, generator=gen) * 30  # logits spread over hundreds of units
    keys_t = torch.randn(8, 500, generator=gen)
    ab = torch.randn(500, 2, generator=gen) * 40
    logits = query @ keys_t
    assert ((logits - logits.amax(1, keepdim=True)) < model_module.EXP_FLOOR).float().mean() > 0.5
    ab_one = F.pad(ab, (0, 1), value=1.0)
    got = MatchNet(NetConfig(feature_blocks=(2,)))._attend(query, keys_t, ab_one)
    expected = torch.softmax(logits.double(), dim=1) @ ab.double()
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)


TINY_NET = NetConfig(kind="net", feature_blocks=(2, 4), feature_dims=16, key_dims=8, width=8)


def test_netconfig_rejects_bad_net_fields():
    with pytest.raises(OptionsError, match="key_dims"):
        NetConfig(kind="net", feature_dims=16, key_dims=32)
    with pytest.raises(OptionsError, match="width"):
        NetConfig(kind="net", width=1)
    with pytest.raises(OptionsError, match="carried_lightness needs convex_upsampling"):
        NetConfig(kind="net", convex_upsampling=False)
    with pytest.raises(OptionsError, match="lightness_regression needs carried_lightness"):
        NetConfig(kind="net", carried_lightness=False)


def test_colornet_shapes_and_its_own_grid_only():
    net = ColorNet(TINY_NET).eval()
    with torch.inference_mode():
        reference = net.encode_reference(smooth_luma(64, 96), torch.randn(1, 2, 64, 96) * 20)
        ab = net(smooth_luma(48, 80, seed=1).expand(3, -1, -1, -1), reference)
    assert reference.keys.shape == (1, 16 * 24, TINY_NET.key_dims + 3)
    assert reference.values.shape == (1, 16 * 24, 6)  # ab, then the lightness moments
    assert reference.palette.shape == (1, TINY_NET.palette_bins**2 + 4)
    assert ab.shape == (3, 2, 24, 40) and ab.dtype == torch.float32
    with pytest.raises(OptionsError, match="grid_stride_px"):
        net.encode_reference(smooth_luma(64, 64), torch.zeros(1, 2, 64, 64), 8)


def test_untrained_colornet_returns_the_warped_ab_exactly():
    """The decoder's last layer starts at zero: training starts from the attention's colours."""
    torch.manual_seed(0)  # the decoder's random init: the check must not depend on test order
    net = ColorNet(TINY_NET).eval()
    noise = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # ab with a clear mean (20, 20): the warped ab is far from 0
        reference = net.encode_reference(smooth_luma(64, 64), noise * 30 + 20)
        features = net.project(net.backbone(smooth_luma(64, 64, seed=2), 4))
        predicted, warped = net.decode(features, smooth_luma(64, 64, seed=2), reference)
    assert torch.equal(predicted, warped) and warped.abs().mean().item() > 0.01


def test_convex_upsampling_starts_bilinear_and_can_pick_one_cell(monkeypatch):
    """Zero logits give the prior: bilinear weights (exactly so without the floor); a strong
    logit takes a pixel's values from one of the 3 x 3 cells around, e.g. across an edge."""
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64)
    zero = torch.zeros(2, 9, 12, 14, dtype=torch.float64)
    bilinear = F.interpolate(values, size=(12, 14), mode="bilinear", align_corners=False)
    floor = model_module.CONVEX_PRIOR_FLOOR  # each of the 9 cells gets floor on top
    cell_sums = 9 * F.avg_pool2d(F.pad(values, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    cell_sums = cell_sums.repeat_interleave(2, 2).repeat_interleave(2, 3)
    cells = model_module._cells_around(values)
    torch.testing.assert_close(model_module._Decoder.upsample(cells, zero),
                               (bilinear + floor * cell_sums) / (1 + 9 * floor))
    logits = torch.full_like(zero, -100.0)
    logits[:, 5] = 100.0  # the cell to the right (row-major 3 x 3: index 5 = row 0, column +1)
    picked = model_module._Decoder.upsample(cells, logits)
    right = F.pad(values, (0, 1, 0, 0), mode="replicate")[..., 1:]
    expected = right.repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(picked, expected)
    monkeypatch.setattr(model_module, "CONVEX_PRIOR_FLOOR", 0.0)
    torch.testing.assert_close(model_module._Decoder.upsample(cells, zero), bilinear)


def test_carried_lightness_layers_start_at_zero():
    """The carried-lightness layers start at zero: on a reference of one lightness (nothing to
    regress on) a net with them gives what a net without gives. The decoder never returns
    the moments."""
    torch.manual_seed(0)
    without = ColorNet(dataclasses.replace(TINY_NET, carried_lightness=False,
                                           lightness_regression=False)).eval()
    net = ColorNet(TINY_NET).eval()
    missing = net.load_state_dict(without.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["decoder.enter_carried.weight", "decoder.select_carried.weight"]
    with torch.no_grad():
        for name in ("out", "select"):  # trained-looking, non-zero
            weight = net.decoder.get_submodule(name).weight.normal_(0.0, 0.3)
            without.decoder.get_submodule(name).weight.copy_(weight)
    ref_luma, ref_ab = torch.full((1, 1, 64, 64), 0.5), torch.randn(1, 2, 64, 64) * 20
    target = smooth_luma(64, 64, seed=3)
    with torch.inference_mode():
        outputs = [model(target, model.encode_reference(ref_luma, ref_ab,
                                                        carry=ref_luma.expand(-1, 3, -1, -1)))
                   for model in (without, net)]
    assert outputs[1].shape == (1, 5, 32, 32)  # ab and the 3 carried channels, no luminance
    torch.testing.assert_close(outputs[1], outputs[0])


def test_self_propagation_starts_at_zero():
    """A net given the self-propagation layers returns what it returned without them, however
    trained its other layers look: a fine-tune starts where the shipped net was."""
    torch.manual_seed(0)
    without = ColorNet(TINY_NET).eval()
    with torch.no_grad():
        without.decoder.out.weight.normal_(0.0, 0.3)  # trained-looking, non-zero
    net = ColorNet(dataclasses.replace(TINY_NET, self_propagation=True)).eval()
    missing = net.load_state_dict(without.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["decoder.propagate.bias", "decoder.propagate.weight",
                               "self_log_temperature", "source_weight"]
    ref_luma, ref_ab = smooth_luma(64, 64), torch.randn(1, 2, 64, 64) * 20
    with torch.inference_mode():
        outputs = [model(smooth_luma(64, 96, seed=3), model.encode_reference(ref_luma, ref_ab))
                   for model in (without, net)]
    torch.testing.assert_close(outputs[1], outputs[0])


def random_grids(net: ColorNet, batch: int, grid: tuple[int, int],
                 ref_grid: tuple[int, int]):
    """Random float64 inputs of `ColorNet.decode` on a stride-4 grid: target features (batch,
    16, *grid), target luminance at 4 x the grid, a one-image reference on `ref_grid`, and
    the seeded generator they came from (for further draws)."""
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(batch, 16, *grid, generator=gen, dtype=torch.float64)
    luma = torch.rand(batch, 1, 4 * grid[0], 4 * grid[1], generator=gen, dtype=torch.float64)
    reference = net.encode_grid(
        torch.randn(1, 16, *ref_grid, generator=gen, dtype=torch.float64),
        torch.rand(1, 1, *ref_grid, generator=gen, dtype=torch.float64),
        torch.randn(1, 2, *ref_grid, generator=gen, dtype=torch.float64) * 0.3, 4)
    return features, luma, reference, gen


def propagation_case(source_weight: float, self_temperature: float):
    """A self-propagating ColorNet (float64) and what `_propagate` returns on random grids,
    whole and for a crop, with a brute-force version of the same maths."""
    torch.manual_seed(0)
    net = ColorNet(dataclasses.replace(TINY_NET, self_propagation=True)).double().eval()
    features, _, reference, gen = random_grids(net, 1, (12, 14), (10, 9))
    # the reverse check's queries (every other row and column: 6 x 7), any values will do
    query = torch.randn(1, 42, reference.keys.shape[-1], generator=gen, dtype=torch.float64)
    with torch.no_grad():
        net.source_weight.fill_(source_weight)
        net.self_log_temperature.fill_(math.log(self_temperature))
        whole = net._propagate(features, query, reference, None)
        crop = net._propagate(features, query, reference, (2, 3, 6, 8))
        # brute force: colours by plain attention, confidence = best logit, then target on target
        logits = (query[0] @ reference.keys[0].T) / net.log_temperature.exp()
        source_ab = torch.softmax(logits, 1) @ reference.values[0, :, :2]
        best = logits.amax(1)
        sampled = features[0, :, ::2, ::2].flatten(1).T  # (42, F)
        likeness = net.query(sampled) @ net.key(sampled).T / self_temperature
        expected = torch.softmax(likeness + source_weight * best[None], 1) @ source_ab
    return whole, crop, expected.T.reshape(1, 2, 6, 7), source_ab, best


def test_propagation_is_confidence_weighted_attention_on_the_target():
    """`_propagate` is the two softmaxes it documents; a crop is the slice of the whole."""
    whole, crop, expected, _, _ = propagation_case(source_weight=0.7, self_temperature=0.5)
    assert whole.shape == (1, 2, 24, 28)
    torch.testing.assert_close(
        whole, F.interpolate(expected, size=(24, 28), mode="bilinear", align_corners=False))
    torch.testing.assert_close(crop, whole[..., 4:16, 6:22])


def test_propagation_takes_the_most_confident_colour_when_confidence_rules():
    """With the confidence weight far above the likeness, every position gets the colours of
    the sampled position that matched the reference best, wherever it is."""
    whole, _, _, source_ab, best = propagation_case(source_weight=50.0, self_temperature=100.0)
    torch.testing.assert_close(whole, source_ab[best.argmax()].view(1, 2, 1, 1).expand_as(whole))


def test_convex_upsampling_follows_the_carried_lightness():
    """With a strong negative weight on the carried-lightness gaps, each half-resolution pixel
    takes its colour from the one of the 3 x 3 cells around whose colour came with the
    lightness nearest its own (the target's own cell lightness plays no part here)."""
    torch.manual_seed(0)
    decoder = ColorNet(TINY_NET).decoder.eval()
    with torch.no_grad():
        decoder.select_carried.weight[:, :, 1, 1] = -1e3 * torch.eye(9)
    gen = torch.Generator().manual_seed(1)
    levels = torch.randperm(42, generator=gen).float().view(1, 1, 6, 7) / 42  # all distinct
    ab = torch.randn(1, 2, 6, 7, generator=gen)
    # each cell attends to one reference lightness: slope 0
    values = torch.cat([ab, model_module.lightness_moments(ab, levels, 1)], 1)
    cells = model_module._cells_around(torch.cat([ab, levels], 1))  # (1, 3, 9, 12, 14)
    chosen = torch.randint(0, 9, (1, 1, 1, 12, 14), generator=gen)  # each pixel's true cell
    luma2 = cells[:, 2:].gather(2, chosen)[:, :, 0] + 0.002 * torch.randn(1, 1, 12, 14,
                                                                          generator=gen)
    target_luma = luma2.repeat_interleave(2, 2).repeat_interleave(2, 3)  # its 2 x 2 means
    inputs = (torch.randn(1, TINY_NET.feature_dims, 6, 7, generator=gen),
              F.adaptive_avg_pool2d(target_luma, (6, 7)), target_luma, values,
              torch.rand(1, 3, 6, 7, generator=gen),
              torch.rand(1, TINY_NET.palette_bins**2 + 4, generator=gen))
    with torch.inference_mode():
        _, upsampled = decoder(*inputs)
    expected = cells[:, :2].gather(2, chosen.expand(-1, 2, -1, -1, -1))[:, :, 0]
    torch.testing.assert_close(upsampled, expected)


def test_lightness_regression_is_the_weighted_least_squares_line():
    """An attention split between a dark red and a light blue reference region: the line
    through them gives a dark pixel red and a light one blue (not the purple mean)."""
    weights = torch.tensor([0.3, 0.7])  # attention on two reference positions
    luma = torch.tensor([0.2, 0.8])
    ab = torch.tensor([[0.6, 0.4], [-0.1, -0.5]])  # (positions, a and b) / AB_SCALE
    centred = luma - 0.5
    mean_ab = weights @ ab
    moments = torch.cat([weights @ centred[:, None], weights @ (ab * centred[:, None]),
                         weights @ centred.square()[:, None]])
    mean_luma, slope = model_module._lightness_regression(
        mean_ab.view(1, 2, 1, 1), moments.view(1, 4, 1, 1))
    torch.testing.assert_close(mean_luma.flatten(), (weights @ luma).view(1))
    spread = weights @ (luma - weights @ luma).square()
    exact = (weights @ ((ab - mean_ab) * (luma - weights @ luma)[:, None])) / spread
    shrink = spread / (spread + model_module.REGRESSION_EPS)  # the ridge term
    torch.testing.assert_close(slope.flatten(), exact * shrink)
    for position in range(2):  # each region's own lightness gets (nearly) its own colour
        line = mean_ab + slope.flatten() * (luma[position] - mean_luma.flatten())
        torch.testing.assert_close(line, ab[position], atol=0.01, rtol=0)


def test_attention_confidence_values_and_the_chunked_path(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(2, 12 * 10, 8, generator=gen) * 0.3  # a 12 x 10 target grid
    keys = torch.randn(1, 70, 8, generator=gen) * 0.3
    values = torch.randn(1, 70, 2, generator=gen)
    temperature = torch.tensor(0.05)
    with torch.enable_grad():  # the training path: plain batched softmax
        warped, confidence = _attend(query, query[:, ::3], keys, values, temperature)
    scores = query @ keys.transpose(1, 2)
    torch.testing.assert_close(warped, torch.softmax(scores / 0.05, dim=2) @ values)
    torch.testing.assert_close(confidence[..., 0], scores.amax(2))  # best similarity
    entropy = confidence[..., 1]
    assert entropy.min().item() >= 0.0 and entropy.max().item() <= 1.0  # entropy / log N
    monkeypatch.setattr(model_module, "ATTENTION_ROWS", 50)  # three chunks per image
    with torch.inference_mode():  # the chunked inference path gives the same numbers
        warped_c, confidence_c = _attend(query, query[:, ::3], keys, values, temperature)
    torch.testing.assert_close(warped_c, warped, atol=1e-5, rtol=0)
    torch.testing.assert_close(confidence_c, confidence, atol=1e-5, rtol=0)


def test_palette_is_a_histogram_plus_moments():
    values = torch.tensor([[[0.1, -0.2], [0.3, 0.5], [-0.9, 0.9], [0.1, -0.2]]])  # (1, 4, 2)
    palette = _palette(values, 4)
    assert palette.shape == (1, 20)
    torch.testing.assert_close(palette[0, :16].sum(), torch.tensor(1.0))
    torch.testing.assert_close(palette[0, 16:18], values[0].mean(0))


def _brute_consensus(logits, taps_rows, taps_cols, mirrored):
    """The consensus by its definition: a loop over (h, w, h', w') and the kernel offsets."""
    height, width, key_rows, key_cols = logits.shape
    radius = len(taps_rows) // 2
    out = torch.zeros_like(logits)
    for y, x, y2, x2 in np.ndindex(height, width, key_rows, key_cols):
        num = den = 0.0
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                yy, xx, yy2, xx2 = y + dy, x + dx, y2 + dy, x2 + (-dx if mirrored else dx)
                if 0 <= yy < height and 0 <= xx < width and 0 <= yy2 < key_rows and (
                        0 <= xx2 < key_cols):
                    weight = taps_rows[dy + radius] * taps_cols[dx + radius]
                    num += weight * logits[yy, xx, yy2, xx2]
                    den += weight
        out[y, x, y2, x2] = num / den
    return out


@pytest.mark.parametrize("mirrored", [False, True])
def test_consensus_is_the_weighted_mean_over_matching_neighbours(mirrored):
    """Separable, in place and windowed, it still equals the 4-D mean by its definition,
    borders (fewer neighbours) and mirrored references included, with and without grad."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 6, 7, 4 * 5, generator=gen, dtype=torch.float64)
    taps = torch.rand(2, 3, generator=gen, dtype=torch.float64) + 0.2
    hood = model_module._Neighbourhood(taps, (6, 7), (4, 5), 4, (0, 0, 6, 7))
    expected = _brute_consensus(logits.view(6, 7, 4, 5), taps[0], taps[1], mirrored)
    with torch.inference_mode():
        fast = model_module._consensus(logits, hood, mirrored, (1, 2, 4, 3))
    with torch.enable_grad():
        graded = model_module._consensus(logits, hood, mirrored, (0, 0, 6, 7))
    torch.testing.assert_close(fast.view(4, 3, 4, 5), expected[1:5, 2:5])
    torch.testing.assert_close(graded.view(6, 7, 4, 5), expected)


def test_mirrored_reads_the_direction_of_the_best_matches():
    key_grid, cols = (3, 8), 8
    target_cols = torch.arange(2 * cols) % cols  # two rows of sampled target positions
    for mirrored in (False, True):
        best = (cols - 1 - target_cols) if mirrored else target_cols
        best = best + key_grid[1] * (torch.arange(2 * cols) // cols)  # rows 0 and 1
        logits = F.one_hot(best, key_grid[0] * key_grid[1]).float()[None]  # (1, M', N)
        hood = model_module._Neighbourhood(torch.ones(2, 3), (4, 16), key_grid, cols,
                                           (0, 0, 4, 16))
        assert model_module._mirrored(logits, hood).tolist() == [mirrored]


def test_consensus_paths_agree_and_a_crop_sees_the_whole_neighbourhood(monkeypatch):
    """ColorNet with the consensus: the training (grad) path equals the chunked inference
    path, and a decoded crop gets the same attention as the whole image inside it."""
    torch.manual_seed(0)
    config = dataclasses.replace(TINY_NET, consensus_radius=1)
    net = ColorNet(config).double().eval()
    with torch.no_grad():
        net.consensus.copy_(torch.randn(2, 3) * 0.3)
    features, luma, reference, _ = random_grids(net, 2, (20, 28), (18, 22))
    monkeypatch.setattr(model_module, "CONSENSUS_ROWS", 60)  # several chunks of grid rows
    with torch.no_grad():
        predicted, warped = net.decode(features, luma, reference)
        _, warped_crop = net.decode(features, luma, reference, (3, 5, 10, 12))
    graded, graded_warped = net.decode(features, luma, reference)
    torch.testing.assert_close(graded, predicted)
    torch.testing.assert_close(graded_warped, warped)
    inner = warped[..., 6:26, 10:34][..., 2:-2, 2:-2]  # away from the crop's bilinear edge
    torch.testing.assert_close(warped_crop[..., 2:-2, 2:-2], inner)


def test_matcher_consensus_reads_a_mirrored_reference_as_mirrored(net, monkeypatch):
    """On real backbone features: a reference that is the target mirrored is read as mirrored
    (the consensus then runs its column offsets the other way), the target itself is not, and
    reading it the wrong way round would give worse colours."""
    config = dataclasses.replace(net.config, consensus_radius=1)
    matcher = MatchNet(config)
    matcher.backbone = net.backbone
    luma = smooth_luma(64, 96, seed=7)
    ab = torch.cat([luma * 60 - 30, 20 - luma * 40], 1)
    truth = F.adaptive_avg_pool2d(ab, (16, 24))
    read = []
    mirrored = model_module._mirrored
    monkeypatch.setattr(model_module, "_mirrored", lambda *a: read.append(mirrored(*a)) or read[-1])

    def error(reference_luma, reference_ab):
        with torch.inference_mode():
            out = matcher(luma, matcher.encode_reference(reference_luma, reference_ab))
        return (out - truth).abs().mean().item()

    straight, flipped = error(luma, ab), error(luma.flip(-1), ab.flip(-1))
    assert [r.tolist() for r in read] == [[False], [True]]
    monkeypatch.setattr(model_module, "_mirrored", lambda col, hood: torch.tensor([False]))
    assert flipped < 0.8 * error(luma.flip(-1), ab.flip(-1)) and straight < flipped


def test_change_basis_keeps_what_both_bases_hold():
    """On a basis spanning the same space (the old one, rotated) the net gives what it gave;
    the layers that read projected features are what changed, the rest is untouched."""
    torch.manual_seed(0)
    net = ColorNet(TINY_NET).eval()
    with torch.no_grad():
        net.decoder.out.weight.normal_(0.0, 0.3)  # trained-looking: the decoder's say counts
        net.query.weight.normal_(0.0, 0.5)
    rotation, _ = torch.linalg.qr(torch.randn(TINY_NET.feature_dims, TINY_NET.feature_dims,
                                              generator=torch.Generator().manual_seed(1)))
    ref_luma, ref_ab = smooth_luma(64, 64, seed=4), torch.randn(1, 2, 64, 64) * 20
    target = smooth_luma(64, 64, seed=5)

    def output() -> torch.Tensor:
        with torch.inference_mode():
            return net(target, net.encode_reference(ref_luma, ref_ab))

    before, old_state = output(), {k: v.clone() for k, v in net.state_dict().items()}
    net.change_basis(net.feature_proj @ rotation)
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, old_state[k])}
    assert changed == {"feature_proj", "query.weight", "key.weight", "decoder.enter.0.weight"}
    torch.testing.assert_close(output(), before, atol=1e-4, rtol=1e-4)
