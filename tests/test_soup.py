"""scripts/soup.py on the shipped net: the soup is the mean of the weights, loads like any
checkpoint, and nets on different PCA bases are refused with one line."""

from __future__ import annotations

import pytest
import torch
from conftest import load_script

from vidcolor.weights import load_model, save_checkpoint


@pytest.fixture
def soup(monkeypatch):
    return load_script(monkeypatch, "soup")


@pytest.fixture
def shipped_and_moved(tmp_path):
    """The shipped net's checkpoint and a copy whose trained weights moved at random."""
    net = load_model("net", device="cpu")
    shipped = save_checkpoint(net, tmp_path / "shipped.pt")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if not name.startswith("backbone."):
                param.add_(torch.randn(param.shape, generator=generator))
    return shipped, save_checkpoint(net, tmp_path / "moved.pt")


def test_soup_is_the_mean_of_the_weights(soup, shipped_and_moved, tmp_path):
    shipped, moved = shipped_and_moved
    out = tmp_path / "soup.pt"
    assert soup.main([str(out), str(shipped), str(moved)]) == 0
    mixed = load_model(out, device="cpu").state_dict()
    first, second = (load_model(p, device="cpu").state_dict() for p in (shipped, moved))
    assert not torch.equal(first["decoder.out.weight"], second["decoder.out.weight"])
    for key, value in mixed.items():  # counters (batch-norm's) are kept, not averaged
        mean = (first[key] + second[key]) / 2 if value.is_floating_point() else first[key]
        torch.testing.assert_close(value, mean, msg=key)
    assert not list(tmp_path.glob("*.partial"))


def test_nets_on_other_bases_are_refused_in_one_line(soup, shipped_and_moved, tmp_path,
                                                     capsys):
    shipped, _ = shipped_and_moved
    net = load_model(shipped, device="cpu")
    net.change_basis(torch.linalg.qr(torch.randn_like(net.feature_proj))[0])
    rebased = save_checkpoint(net, tmp_path / "rebased.pt")
    out = tmp_path / "soup.pt"
    assert soup.main([str(out), str(shipped), str(rebased)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(rebased) in lines[0] and "--order-seed" in lines[0]
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
