"""KD loss: zero when student equals teacher, finite gradients, bounded learnable weights."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.loss.distill import DistillConfig, DistillLoss, kd_class_loss, kd_regression_loss


def _outputs(n: int = 2, a: int = 50, seed: int = 0, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    outs = (
        torch.randn(n, a, 4, generator=g),
        torch.randn(n, a, 2, generator=g) * 3,
        torch.randn(n, a, 10, generator=g),
    )
    return tuple(t.requires_grad_(requires_grad) for t in outs)


def test_kd_is_zero_when_student_equals_teacher() -> None:
    teacher = _outputs()
    student = tuple(t.clone() for t in teacher)
    terms = DistillLoss().kd_terms(student, teacher)
    assert teacher[1].softmax(-1)[..., 1].gt(0.5).any()  # the box / landmark terms are really exercised
    for name, value in terms.items():
        assert float(value) == pytest.approx(0.0, abs=1e-6), name


def test_kd_terms_positive_when_outputs_differ_and_scale_as_a_mean() -> None:
    teacher, student = _outputs(seed=0), _outputs(seed=1)
    terms = DistillLoss().kd_terms(student, teacher)
    assert all(float(v) > 0 for v in terms.values())
    # Mean over anchors: repeating the anchors does not change the class term.
    doubled = kd_class_loss(torch.cat([student[1]] * 2, 1), torch.cat([teacher[1]] * 2, 1), 4.0)
    assert float(doubled) == pytest.approx(float(terms["cls"]), rel=1e-5)


def test_regression_only_on_teacher_positive_anchors() -> None:
    s = torch.zeros(1, 3, 4)
    t = torch.ones(1, 3, 4) * 5.0  # large targets are not clipped: smooth-L1 grows linearly
    positive = torch.tensor([[True, False, False]])
    loss = kd_regression_loss(s, t, positive)
    assert float(loss) == pytest.approx(4 * 4.5)
    none = kd_regression_loss(s.requires_grad_(), t, torch.zeros(1, 3, dtype=torch.bool))
    assert float(none.detach()) == 0.0
    none.backward()  # still part of the graph


def test_total_mixes_task_and_kd_with_alpha_and_gradients_are_finite() -> None:
    cfg = DistillConfig(alpha=0.7, temperature=4.0)
    loss = DistillLoss(cfg)
    teacher, student = _outputs(seed=0), _outputs(seed=1, requires_grad=True)
    task = torch.tensor(2.0, requires_grad=True)
    total, logs = loss(student, teacher, task)
    assert float(total.detach()) == pytest.approx(0.3 * 2.0 + 0.7 * logs["kd"], rel=1e-5)
    total.backward()
    grads = [t.grad for t in student] + [loss.raw_log_var.grad, task.grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert {"w_cls", "w_box", "w_ldm", "kd_cls", "kd_box", "kd_ldm", "task"} <= set(logs)


def test_learnable_weights_stay_positive_and_bounded() -> None:
    cfg = DistillConfig(log_var_bound=2.0)
    loss = DistillLoss(cfg)
    opt = torch.optim.SGD(loss.parameters(), lr=20.0)
    teacher = _outputs(seed=0)
    # Wildly different scales push one weight up and another down as far as they can go.
    student = (teacher[0] + 100.0, teacher[1] + torch.tensor([0.0, 1e-3]), teacher[2])
    for _ in range(150):
        opt.zero_grad()
        total, _ = loss(student, teacher, torch.tensor(0.0))
        total.backward()
        opt.step()
    w = loss.weights()
    lo, hi = math.exp(-2.0) * 0.999, math.exp(2.0) * 1.001
    assert all(lo <= v <= hi for v in w.values()), w
    assert w["w_box"] < 0.2 < 1.0 < w["w_cls"]  # the weights really moved
    assert torch.isfinite(loss.raw_log_var).all()


def test_config_rejects_bad_alpha() -> None:
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig(alpha=1.5)


def test_level_balance_gives_each_pyramid_level_the_same_share() -> None:
    from edge.anchors import level_counts, prior_boxes
    from trainer.loss.distill import level_weights

    counts = level_counts(64, 64)
    assert counts == [128, 32, 8] and sum(counts) == len(prior_boxes(64, 64))
    w = level_weights(counts)
    assert float(w.sum()) == pytest.approx(1.0)
    assert [float(w[a:b].sum()) for a, b in ((0, 128), (128, 160), (160, 168))] == pytest.approx([1 / 3] * 3)
    # A student wrong on one large anchor only: the balanced mean weighs it as a third of a level's.
    teacher = torch.zeros(1, 168, 2)
    student = teacher.clone()
    student[0, 165] = torch.tensor([0.0, 5.0])
    plain = kd_class_loss(student, teacher, 4.0)
    balanced = kd_class_loss(student, teacher, 4.0, w)
    assert float(balanced) == pytest.approx(float(plain) * 168 / (3 * 8), rel=1e-5)
    # Uniform weights are the plain mean.
    uniform = torch.full((168,), 1 / 168)
    assert float(kd_class_loss(student, teacher, 4.0, uniform)) == pytest.approx(float(plain), rel=1e-6)
    with pytest.raises(ValueError, match="at least one anchor"):
        level_weights([4, 0])


def test_settle_puts_each_weight_at_the_minimum_of_its_term() -> None:
    """``settle``: weight ``1 / L`` (the minimum of ``exp(-s) L + s``), inside the bound, and the
    gradient of the uncertainty-weighted sum with respect to each log-variance is then zero."""
    loss = DistillLoss(DistillConfig(log_var_bound=2.0))
    terms = {"cls": 0.12, "box": 0.5, "ldm": 2.4}
    loss.settle(terms)
    w = loss.weights()
    assert w["w_cls"] == pytest.approx(min(1 / 0.12, math.exp(1.9)), rel=1e-5)
    assert w["w_box"] == pytest.approx(2.0, rel=1e-5) and w["w_ldm"] == pytest.approx(1 / 2.4, rel=1e-5)
    s = loss.log_var()
    stacked = torch.tensor([terms["box"], terms["ldm"]])
    (torch.exp(-s[1:]) * stacked + s[1:]).sum().backward()
    assert loss.raw_log_var.grad[1:].abs().max() < 1e-5
    loss.settle({"cls": 0.0, "box": 100.0, "ldm": 1.0})  # no positives; a huge term: both at the limit
    assert loss.weights()["w_cls"] == pytest.approx(math.exp(1.9), rel=1e-5)
    assert loss.weights()["w_box"] == pytest.approx(math.exp(-1.9), rel=1e-5)
