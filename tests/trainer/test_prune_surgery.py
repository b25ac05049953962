"""Physical channel removal: equivalence with the soft-masked model, size, ONNX, spec round trip."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from edge.errors import ModelError
from tests.trainer.prune_toynet import ToyNet
from trainer.prune.groups import GROUP_BOUNDS
from trainer.prune.soft import SoftPruner, harden
from trainer.prune.surgery import (
    ParamCounter,
    analyse,
    apply_spec,
    count_params,
    dry_run_params,
    folded_param_count,
    load_spec,
    onnx_param_count,
    remove_channels,
    save_spec,
)

RATES = {"backbone_early": 0.4, "backbone_late": 0.5, "cbam": 0.5, "bifpn": 0.5, "ssh": 0.5, "heads": 0.3}
UNIFORM = dict.fromkeys(RATES, 0.3)


def _trained_toynet(seed: int = 0) -> ToyNet:
    """A ToyNet with non-trivial BN affine parameters and running statistics."""
    torch.manual_seed(seed)
    net = ToyNet()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 3, 64, 64))
    return net.eval()


@pytest.fixture(scope="module")
def hardened(tmp_path_factory):
    net = _trained_toynet()
    x = torch.randn(1, 3, 64, 64)
    before = count_params(net)
    pruner = SoftPruner(net, net.prune_groups(), RATES, total_steps=3, example_inputs=x)
    for t in (1, 2):
        pruner.step(t)
    out = tmp_path_factory.mktemp("prune")
    result = harden(pruner, x, spec_path=out / "prune_spec.json")
    return result, before, out


def test_pruned_equals_soft_masked_model(hardened) -> None:
    result, before, _ = hardened
    assert result.max_deviation < 1e-4
    assert result.spec["params_before"] == before
    assert result.spec["params_after"] == count_params(result.model) < before
    # Independently: the hardened model against a masked copy on fresh inputs, at two sizes.
    net = _trained_toynet()
    x = torch.randn(1, 3, 64, 64)
    pruner = SoftPruner(net, net.prune_groups(), RATES, total_steps=3, example_inputs=x)
    for t in (1, 2):
        pruner.step(t)
    selection = pruner.finish()
    masked = copy.deepcopy(net)
    remove_channels(net, selection, x)
    for size in (64, 96):
        probe = torch.randn(2, 3, size, size)
        with torch.no_grad():
            for a, b in zip(masked(probe), net(probe), strict=True):
                assert a.shape == b.shape  # head outputs (anchors x 2/4/10) unchanged
                assert torch.allclose(a, b, atol=1e-4)


def test_param_count_drops_roughly_by_rate() -> None:
    net = _trained_toynet()
    x = torch.randn(1, 3, 64, 64)
    before = count_params(net)
    plan = analyse(net, x, net.prune_groups())
    after = dry_run_params(net, plan, UNIFORM, x)
    assert count_params(net) == before  # the dry run works on a copy
    # Channels at rate r shrink a conv's weights by between (1 - r) (one side pruned) and (1 - r)^2.
    assert 0.49 - 0.05 <= after / before <= 0.7 + 0.05
    counter = pickle.loads(
        pickle.dumps(ParamCounter(net, net.prune_groups(), x))
    )  # as a search worker gets it
    folded = counter(UNIFORM)
    pruner = SoftPruner(net, net.prune_groups(), UNIFORM, total_steps=1, example_inputs=x)
    pruned = harden(pruner, x).model
    assert count_params(pruned) == after
    # The counter counts as the export does (BN folded into the convs): check against a real export.
    assert folded == folded_param_count(pruned) == onnx_param_count(pruned, x)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, on purpose
def test_onnx_export_runs_in_onnxruntime(hardened, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = hardened[0].model.eval()
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["loc", "conf", "landm"]
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in model(x)]
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-4)


def test_spec_round_trip_rebuilds_identical_model(hardened, tmp_path) -> None:
    result, _, out = hardened
    spec = load_spec(out / "prune_spec.json")
    assert spec["params_after"] == count_params(result.model)
    rebuilt = apply_spec(ToyNet(), spec)
    rebuilt.load_state_dict(result.model.state_dict(), strict=True)
    rebuilt.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(rebuilt(x), result.model.eval()(x), strict=True):
            assert torch.equal(a, b)
    # A spec that does not fit the builder fails with a message naming the module.
    wrong = dict(spec, widths={**spec["widths"], "lateral.0": [1, 1]})
    with pytest.raises(ModelError, match=r"lateral\.0"):
        apply_spec(ToyNet(), wrong)
    bogus = save_spec({"format": "nope"}, tmp_path / "bad.json")
    with pytest.raises(ModelError, match="not a pruning spec"):
        load_spec(bogus)


def test_final_heads_and_shuffles_are_refused() -> None:
    net = ToyNet()
    x = torch.randn(1, 3, 64, 64)
    groups = net.prune_groups()
    groups["heads"] = [*groups["heads"], net.cls]  # even if a model lists a final head conv ...
    sets = {s.root: s for s in analyse(net, x, groups).sets}
    assert sets["cls"].blocked == "reaches a model output"  # ... its outputs are never pruned
    assert sets["head_mid.0"].blocked is None
    # A listed module the forward pass never uses (switched off by config) is reported, not fatal.
    net.unused = nn.Conv2d(4, 4, 1)
    groups["ssh"] = [*groups["ssh"], net.unused]
    sets = {s.root: s for s in analyse(net, x, groups).sets}
    assert sets["unused"].blocked == "not used in the forward pass"


class _RealCBAMNet(nn.Module):
    """The project's CBAM (spatial gate reduces over channels), BiFPN-like scalar fusion weights, a
    grouped conv followed by a channel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        from trainer.layers.cbam import CBAM

        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.cbam = CBAM(16, reduction=4, residual=True)
        self.w = nn.Parameter(torch.ones(2))
        self.b = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.c = nn.Conv2d(16, 16, 1)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cbam(torch.relu(self.bn(self.a(x))))
        w = torch.relu(self.w)
        y = self.b(w[0] * y + w[1] * torch.relu(y))
        n, c, h, wd = y.shape
        y = y.view(n, 2, c // 2, h, wd).transpose(1, 2).reshape(n, c, h, wd)
        return self.out(self.c(y))

    def prune_groups(self) -> dict[str, list[nn.Module]]:
        return {"backbone_early": [self.a], "cbam": [self.cbam.ChannelGate.mlp[1]], "ssh": [self.b, self.c]}


def test_channel_reductions_broadcasts_and_shuffles() -> None:
    pytest.importorskip("trainer.layers.cbam")
    torch.manual_seed(0)
    net = _RealCBAMNet().eval()
    x = torch.randn(1, 3, 16, 16)
    sets = {s.root: s for s in analyse(net, x, net.prune_groups()).sets}
    # The spatial gate's mean/max over channels did not glue its 1-channel conv to the features.
    assert [m.module for m in sets["a"].members if m.kind != "bn"] == ["a", "cbam.ChannelGate.mlp.3"]
    assert sets["a"].chunks == 2  # feeds a groups=2 conv: same positions pruned in both halves
    assert "shuffle" in sets["b"].blocked
    rates = {"backbone_early": 0.4, "backbone_late": 0.1, "cbam": 0.5, "bifpn": 0.1, "ssh": 0.5, "heads": 0.0}
    pruner = SoftPruner(net, net.prune_groups(), rates, total_steps=1, example_inputs=x)
    result = harden(pruner, x)
    assert result.model.a.out_channels == 10 and result.model.b.in_channels == 10
    assert result.model(x).shape == (1, 4, 16, 16)
    # Only the channel mean in the spatial gate moves the output; the fine-tune absorbs that.
    assert result.max_deviation < 0.05


def test_nano_b_prunes_physically_and_exactly() -> None:
    from trainer.models import build_model

    model = build_model("nano_b").eval()
    x = torch.randn(1, 3, 64, 64)
    plan = analyse(model, x, model.prune_groups())
    assert plan.prunable, [s.blocked for s in plan.sets]
    mid = {g: (lo + hi) / 2 for g, (lo, hi) in GROUP_BOUNDS.items()}
    pruner = SoftPruner(model, model.prune_groups(), mid, total_steps=1, example_inputs=x)
    result = harden(pruner, x)
    assert count_params(result.model) < result.spec["params_before"]
    assert result.max_deviation < 1e-4


def test_block_aligned_pruning_keeps_whole_channel_blocks_and_runs_in_onnxruntime() -> None:
    """With ``multiple=16`` every pruned set keeps a multiple of 16 channels (sets narrower than a
    block are left whole); the search's latency probe exports and times the pruned network."""
    import math

    from trainer.models.nano_b import NanoB
    from trainer.prune.latency import onnx_latency_ms

    torch.manual_seed(0)
    net = NanoB().eval()
    x = torch.zeros(1, 3, 64, 64)
    before = {n: m.out_channels for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    plan = analyse(net, x, net.prune_groups(), multiple=16)
    rates = {
        "backbone_early": 0.3,
        "backbone_late": 0.45,
        "cbam": 0.3,
        "bifpn": 0.33,
        "ssh": 0.3,
        "heads": 0.2,
    }
    selection = plan.select(net, rates)
    assert selection  # something is pruned
    pruned_sets = {s.root for s in plan.prunable if s.root in selection}
    for s in plan.prunable:
        kept = s.n - len(selection.get(s.root, []))
        assert kept % 16 == 0 or (s.root not in pruned_sets and kept == s.n), (s.root, s.n, kept)
    remove_channels(net, selection, x)
    after = {n: m.out_channels for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    shrunk = [n for n in after if after[n] < before[n]]
    assert shrunk and all(after[n] % 16 == 0 for n in shrunk)
    ms = onnx_latency_ms(net, (96, 64), runs=3)
    assert math.isfinite(ms) and ms > 0
