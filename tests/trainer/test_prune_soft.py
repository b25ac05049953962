"""Soft filter pruning: the polynomial schedule and what the masks zero."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.trainer.prune_toynet import ToyNet
from trainer.prune.soft import SoftPruner, poly_rate, scheduled_rates

RATES = {"backbone_early": 0.4, "backbone_late": 0.5, "cbam": 0.5, "bifpn": 0.5, "ssh": 0.5, "heads": 0.3}


def test_schedule_monotone_and_hits_final() -> None:
    values = [poly_rate(t, 20, 0.5) for t in range(0, 21)]
    assert values[0] == 0.0
    assert values[-1] == pytest.approx(0.5)
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert poly_rate(30, 20, 0.5) == pytest.approx(0.5)  # clamped past the end
    # p = 3 front-loads: half way, 1 - 0.5^3 = 87.5 % of the final rate is already reached.
    assert poly_rate(10, 20, 0.4, power=3) == pytest.approx(0.4 * 0.875)
    assert scheduled_rates(20, 20, RATES) == pytest.approx(RATES)
    with pytest.raises(ValueError):
        poly_rate(1, 0, 0.5)


@pytest.fixture
def net() -> ToyNet:
    torch.manual_seed(0)
    return ToyNet()


def test_masks_zero_selected_filters_bias_and_bn(net: ToyNet) -> None:
    x = torch.randn(1, 3, 64, 64)
    cls_before = net.cls.weight.detach().clone()
    pruner = SoftPruner(net, net.prune_groups(), RATES, total_steps=4, example_inputs=x)
    pruner.step(4)
    sel = pruner.selection
    assert sel, "nothing selected at the final rates"
    # head_mid: 32 filters at the heads rate 0.3 -> 10 zeroed output rows and BN gamma / beta.
    rows = sel["head_mid.0"]
    assert len(rows) == round(0.3 * 32)
    conv, bn = net.head_mid[0], net.head_mid[1]
    assert torch.all(conv.weight[rows] == 0)
    assert torch.all(bn.weight[rows] == 0) and torch.all(bn.bias[rows] == 0)
    keep = [i for i in range(32) if i not in rows]
    assert torch.all(conv.weight[keep].abs().sum(dim=(1, 2, 3)) > 0)
    # Consumers keep their input columns, so zeroed filters still get gradient and can recover.
    assert torch.all(net.cls.weight[:, rows].abs().sum(dim=(0, 2, 3)) > 0)
    # A coupled set: the residual add's channels are zeroed in both branches and the depthwise conv.
    res = sel["block1.1.0"]
    for module in (net.block1[1][0], net.block2[1][0], net.block2[0][0], net.block3[0][0]):
        assert torch.all(module.weight[res] == 0)
    # The attention MLP's output rows for the concatenated channels follow (offset by the lateral's 32).
    assert torch.all(net.attn.fc2.weight[[32 + i for i in res]] == 0)
    assert torch.all(net.attn.fc2.bias[[32 + i for i in res]] == 0)
    # The final head convs are never touched.
    assert "cls" not in sel and torch.equal(net.cls.weight, cls_before)


def test_zeroed_filters_recover_and_are_reranked(net: ToyNet) -> None:
    x = torch.randn(2, 3, 64, 64)
    pruner = SoftPruner(net, net.prune_groups(), RATES, total_steps=10, example_inputs=x[:1])
    assert pruner.step(2)["heads"] == pytest.approx(poly_rate(2, 10, 0.3))
    zeroed = list(pruner.selection["head_mid.0"])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()
    loss = sum(o.pow(2).mean() for o in net(x))
    loss.backward()
    # Before the final boundary BN gamma is kept, so gradient reaches the zeroed filters.
    assert net.head_mid[1].weight[zeroed].abs().min() > 0
    assert net.head_mid[1].bias[zeroed].abs().max() == 0
    assert net.head_mid[0].weight.grad[zeroed].abs().sum() > 0
    opt.step()
    assert net.head_mid[0].weight[zeroed].abs().sum() > 0  # they grew back
    # Rates only grow: later boundaries select at least as many channels.
    counts = [sum(len(v) for v in pruner.selection.values())]
    for t in (5, 10):
        pruner.step(t)
        counts.append(sum(len(v) for v in pruner.selection.values()))
    assert counts == sorted(counts)
    state = pruner.state_dict()
    assert state["current_step"] == 10
    # Resuming restores the boundary index without touching the (checkpointed) weights.
    before = {k: v.clone() for k, v in net.state_dict().items()}
    again = SoftPruner(net, net.prune_groups(), RATES, total_steps=10, example_inputs=x[:1])
    again.load_state_dict(state)
    assert again.current_step == 10
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_settle_holds_final_selection_and_removal_is_exact(net: ToyNet) -> None:
    """After the last boundary the selection is frozen: ``hold`` re-zeroes it after training moved it,
    ``finish`` returns it without re-ranking, and a resumed pruner holds the same filters."""
    from trainer.prune.surgery import remove_channels

    x = torch.randn(2, 3, 64, 64)
    pruner = SoftPruner(net, net.prune_groups(), RATES, total_steps=3, example_inputs=x[:1])
    for t in (1, 2, 3):
        pruner.step(t)
    assert pruner.done
    frozen = {k: list(v) for k, v in pruner.selection.items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    net.train()
    rows = frozen["head_mid.0"]
    for _ in range(3):  # the settle stretch: a held channel's BN beta still gets gradient; hold re-zeroes
        opt.zero_grad()
        sum(o.pow(2).mean() for o in net(x)).backward()
        opt.step()
        assert net.head_mid[1].bias[rows].abs().sum() > 0
        pruner.hold()
        assert net.head_mid[1].bias[rows].abs().sum() == 0 and net.head_mid[0].weight[rows].abs().sum() == 0
    state = pruner.state_dict()
    resumed = SoftPruner(net, net.prune_groups(), RATES, total_steps=3, example_inputs=x[:1])
    resumed.load_state_dict(state)
    assert resumed.done and resumed.selection == frozen
    assert pruner.finish() == frozen
    net.eval()
    with torch.no_grad():
        before = [o.clone() for o in net(x)]
        remove_channels(net, frozen, x[:1])
        after = net(x)
    # Nothing in the toy net reduces across channels (docs/pruning.md), so removal changes no output.
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
