"""benchmarks.module_cost builds every variant it times: each switch really removes its module."""

from __future__ import annotations

import torch

from benchmarks.module_cost import VARIANTS, build_variant
from trainer.models.files import save_student
from trainer.models.nano_b import NanoB


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_every_variant_is_smaller_than_the_whole_network() -> None:
    whole = _params(build_variant({}, None))
    for label, changes in VARIANTS[1:]:
        net = build_variant(changes, None)
        assert _params(net) < whole, label
        with torch.no_grad():
            loc, conf, _ = net.eval()(torch.zeros(1, 3, 64, 96))
        assert loc.shape[1] == conf.shape[1]


def test_variants_take_the_widths_of_a_student(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A pruned width of the student (a CBAM hidden layer cut from 32 to 16) is kept by a variant that
    still has the layer, and dropped with the layer by one that switches it off."""
    from trainer.models.nano_b import apply_channel_spec

    student = NanoB()
    gate = "backbone_cbam.2.ChannelGate"
    apply_channel_spec(student, {f"{gate}.mlp.1": [16, 256], f"{gate}.mlp.3": [256, 16]})
    save_student(tmp_path / "s.pt", student, None)
    kept = dict(build_variant({"assn": False}, tmp_path / "s.pt").named_modules())
    assert kept[f"{gate}.mlp.1"].weight.shape == (16, 256)
    assert "assn" not in {n.split(".")[0] for n in kept if n}
    gone = dict(build_variant({"backbone_cbam": False}, tmp_path / "s.pt").named_modules())
    assert f"{gate}.mlp.1" not in gone
