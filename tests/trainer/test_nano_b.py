"""Nano-B: shapes align with V1's priors, budget, ablation switches, prune groups, teacher init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edge.anchors import prior_boxes
from edge.errors import ConfigError
from tests.shared_paths import need_shared
from trainer.layers.nano_small_face import ScaleDecoupling, ScaleSequenceAttention, SemanticEnhancement
from trainer.models import build_model, count_parameters
from trainer.models.init_from_teacher import init_from_teacher
from trainer.models.nano_b import PRUNE_GROUPS, NanoB, NanoBConfig, channel_spec, nano_b_from_state

V1_PARAMETERS = 592_371


@pytest.fixture(scope="module")
def model() -> NanoB:
    torch.manual_seed(0)
    return NanoB().eval()


@pytest.mark.parametrize("size", [(96, 64), (100, 75)])
def test_outputs_align_with_v1_priors(model: NanoB, size: tuple[int, int]) -> None:
    w, h = size
    with torch.no_grad():
        loc, conf, ldm = model(torch.randn(2, 3, h, w))
    a = len(prior_boxes(w, h))
    assert loc.shape == (2, a, 4) and conf.shape == (2, a, 2) and ldm.shape == (2, a, 10)


def test_smaller_than_v1_and_sized_for_pruning(model: NanoB) -> None:
    n = count_parameters(model)
    assert 250_000 < n < V1_PARAMETERS


def test_registered_and_options_checked() -> None:
    m = build_model("nano_b", assn=False)
    assert isinstance(m, NanoB) and m.assn is None
    with pytest.raises(ConfigError, match="unknown option 'nope'"):
        build_model("nano_b", nope=1)


@pytest.mark.parametrize(
    "off",
    [
        "backbone_cbam",
        "post_cbam",
        "scale_decoupling",
        "semantic_enhancement",
        "assn",
        "ssh",
        "shuffle_block",
    ],
)
def test_every_module_switches_off(off: str) -> None:
    full = count_parameters(NanoB())
    m = NanoB(NanoBConfig(**{off: False})).eval()
    assert count_parameters(m) < full
    with torch.no_grad():
        loc, _, _ = m(torch.randn(1, 3, 64, 64))
    assert loc.shape == (1, len(prior_boxes(64, 64)), 4)


def test_without_bifpn_cells() -> None:
    m = NanoB(NanoBConfig(bifpn_cells=0)).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64))[1].shape[1] == len(prior_boxes(64, 64))


def test_small_face_modules_are_cheap_and_start_as_identity() -> None:
    torch.manual_seed(0)
    p3, p4, p5 = torch.randn(1, 64, 16, 16), torch.randn(1, 64, 8, 8), torch.randn(1, 64, 4, 4)
    mods = [ScaleDecoupling(64, 128), SemanticEnhancement(64), ScaleSequenceAttention(64)]
    for m in mods:
        assert sum(p.numel() for p in m.parameters()) < 5_000
        m.eval()
    with torch.no_grad():
        assert torch.equal(mods[0](p3, torch.randn(1, 128, 8, 8)), p3)
        assert torch.equal(mods[1](p3), p3)
        assert torch.equal(mods[2](p3, p4, p5), p3)


def test_prune_groups_cover_six_groups_without_depthwise(model: NanoB) -> None:
    groups = model.prune_groups()
    assert tuple(groups) == PRUNE_GROUPS
    seen: set[int] = set()
    for name, layers in groups.items():
        assert layers, name
        for layer in layers:
            assert isinstance(layer, nn.Conv2d | nn.Linear)
            if isinstance(layer, nn.Conv2d):
                assert not (layer.groups > 1 and layer.groups == layer.in_channels), name
            assert id(layer) not in seen  # a layer belongs to one group only
            seen.add(id(layer))
    assert model.ClassHead[0].conv1x1 not in groups["heads"]  # head outputs are fixed


def test_rebuild_from_sliced_state() -> None:
    torch.manual_seed(0)
    m = NanoB().eval()
    # Physically narrow one backbone layer and its consumers, as surgery would.
    state = m.state_dict()
    keep = torch.arange(0, 64, 2)
    for key in ("body.stage2.0.3.weight",):
        state[key] = state[key][keep]
    for key in ("weight", "bias", "running_mean", "running_var"):
        state[f"body.stage2.0.4.{key}"] = state[f"body.stage2.0.4.{key}"][keep]
    for key in ("weight", "bias", "running_mean", "running_var"):
        state[f"body.stage2.1.1.{key}"] = state[f"body.stage2.1.1.{key}"][keep]
    state["body.stage2.1.0.weight"] = state["body.stage2.1.0.weight"][keep]
    state["body.stage2.1.3.weight"] = state["body.stage2.1.3.weight"][:, keep]
    rebuilt = nano_b_from_state(m.cfg, state).eval()
    assert channel_spec(rebuilt)["body.stage2.1.0"] == [32, 1, 3, 3]
    assert count_parameters(rebuilt) < count_parameters(m)
    with torch.no_grad():
        assert rebuilt(torch.randn(1, 3, 64, 64))[0].shape[1] == len(prior_boxes(64, 64))


@pytest.mark.shared
def test_init_from_teacher_copies_most_tensors_and_keeps_cbam_function() -> None:
    path = need_shared("weights/featherface_v1_official.pth")
    from trainer.models.v1 import load_v1_official

    teacher = load_v1_official(path, deformable=False)
    student = NanoB().eval()
    report = init_from_teacher(student, path)
    total = count_parameters(student) + sum(b.numel() for b in student.buffers())
    assert report.params("copied") + report.params("sliced") > 0.9 * total
    assert all(not k.startswith("body.") for k in report.fresh + report.sliced)
    assert any(k.startswith("ssh.0.conv3X3") for k in report.sliced)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        _c3, _c4, c5 = teacher.body(x)
        assert torch.allclose(student.body(x)[2], c5)
        # Widened CBAM MLPs (reduction 8) compute exactly the teacher's reduction-16 gate.
        assert torch.allclose(student.backbone_cbam[2](c5), teacher.bacbkbone_2_cbam(c5), atol=1e-6)
        # The folded shuffle block equals V1's explicit shuffle block.
        p = torch.randn(1, 64, 12, 16)
        assert torch.allclose(student.ssh_cs[1](p), teacher.ssh2_cs(p), atol=1e-5)


@pytest.mark.shared
@pytest.mark.parametrize("cells", [1, 2, 3])
def test_every_bifpn_tensor_starts_from_the_teacher_whatever_the_cell_count(cells: int) -> None:
    """The last cell comes from V1's last; a one-cell student's input projections (which only a stack's
    first cell has) from V1's first cell, so no BiFPN tensor starts fresh."""
    path = need_shared("weights/featherface_v1_official.pth")
    report = init_from_teacher(NanoB(NanoBConfig(bifpn_cells=cells)), path)
    assert not [k for k in report.fresh if k.startswith("bifpn.")]
    assert any(k.startswith("bifpn.0.p5_down_channel") for k in report.copied)


def test_untrained_model_starts_with_low_face_scores() -> None:
    torch.manual_seed(0)
    m = NanoB().eval()
    with torch.no_grad():
        _, conf, _ = m(torch.randn(1, 3, 64, 64) * 50)
    assert float(conf.softmax(-1)[..., 1].mean()) < 0.1
