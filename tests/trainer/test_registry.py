"""The model registry, and a forward / backward check of every registered variant."""

from __future__ import annotations

import pytest
import torch

from edge.anchors import prior_boxes
from edge.errors import ConfigError
from trainer.models import (
    available_models,
    build_model,
    count_parameters,
    parameter_table,
    register,
    registry,
)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_v1_is_registered() -> None:
    assert "v1" in available_models()
    assert available_models() == sorted(available_models())


@pytest.mark.parametrize("name", available_models())
@pytest.mark.parametrize(("width", "height"), [(64, 64), (128, 96)])
def test_forward_backward(name: str, width: int, height: int) -> None:
    torch.manual_seed(0)
    model = build_model(name).train()
    x = torch.randn(2, 3, height, width) * 50
    loc, conf, ldm = model(x)
    anchors = len(prior_boxes(width, height))
    assert loc.shape == (2, anchors, 4)
    assert conf.shape == (2, anchors, 2)
    assert ldm.shape == (2, anchors, 10)
    (loc.square().mean() + conf.logsumexp(-1).mean() + ldm.square().mean()).backward()
    params = dict(model.named_parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    # The gradient reaches every top-level part, from the first backbone conv to the heads.
    for part, _ in parameter_table(model):
        grads = [p.grad for n, p in params.items() if n == part or n.startswith(part + ".")]
        assert any(g.abs().sum() > 0 for g in grads), f"{name}: no gradient reaches {part}"


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'v9'; available: .*v1"):
        build_model("v9")


def test_unknown_config_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model 'v1': bad config: .*colour"):
        build_model("v1", colour="red")


def test_register_rejects_a_second_builder(scratch_registry) -> None:
    @register("toy")
    def toy() -> torch.nn.Module:
        return torch.nn.Linear(2, 3)

    register("toy")(toy)  # the same builder again is harmless (module re-import)
    assert "toy" in available_models()
    assert count_parameters(build_model("toy")) == 9
    with pytest.raises(ValueError, match="already registered"):
        register("toy")(lambda: torch.nn.Linear(1, 1))


def test_parameter_table_sums_to_count() -> None:
    model = build_model("v1")
    top = parameter_table(model)
    assert [name for name, _ in top][:2] == ["body", "bacbkbone_0_cbam"]
    assert sum(n for _, n in top) == count_parameters(model) == 592_371
    deep = parameter_table(model, depth=2)
    assert ("bifpn.0", count_parameters(model.bifpn[0])) in deep
    assert sum(n for _, n in deep) == 592_371
    # A module holding parameters of its own (BiFPN fusion weights) shows them under its name.
    cell = parameter_table(model.bifpn[0], depth=1)
    assert ("(root)", 2 + 2 + 3 + 3) in cell


def test_count_parameters_trainable_only() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    model[0].requires_grad_(False)
    assert count_parameters(model) == 10
    assert count_parameters(model, trainable_only=True) == 4
