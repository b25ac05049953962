"""Feature KD: closed-form linear maps from the student's head inputs to the teacher's."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer.loss.feature_kd import FeatureKD, HeadInputs


def _feats(channels: list[int], sizes: list[int], n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, s, s, generator=g) for c, s in zip(channels, sizes, strict=True)]


def test_a_linear_relation_is_found_at_once_and_unrelated_features_explain_nothing() -> None:
    student = _feats([6, 5], [8, 4])
    g = torch.Generator().manual_seed(1)
    maps = [
        (torch.randn(6, 9, generator=g), torch.randn(9, generator=g)),
        (torch.randn(5, 3, generator=g), 0.0),
    ]
    teacher = [
        (s.permute(0, 2, 3, 1) @ w + b).permute(0, 3, 1, 2) for s, (w, b) in zip(student, maps, strict=True)
    ]
    kd = FeatureKD([6, 5], [9, 3])
    # The first call already fits the exact affine map: nothing is left unexplained.
    assert float(kd(student, teacher)) == pytest.approx(0.0, abs=1e-3)
    # Teacher features unrelated to the student's leave (almost) all their variance unexplained.
    unrelated = FeatureKD([6, 5], [9, 3])
    assert float(unrelated(student, _feats([9, 3], [8, 4], seed=7))) > 0.8


def test_gradient_reaches_the_student_only_and_lowers_the_loss() -> None:
    student = [f.clone().requires_grad_(True) for f in _feats([4], [6])]
    target = [_feats([8], [6], seed=3)[0].requires_grad_(True)]  # unrelated at first: loss near 1
    kd = FeatureKD([4], [8])
    optimizer = torch.optim.SGD(student, lr=50.0)
    losses = []
    for _ in range(40):
        loss = kd(student, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert target[0].grad is None  # the teacher is a fixed target
    assert losses[0] > 0.8 and losses[-1] < 0.85 * losses[0], losses[::10]
    assert all(b < a for a, b in itertools.pairwise(losses)), losses


def test_state_round_trip_gives_the_same_loss() -> None:
    student, teacher = _feats([3, 3], [4, 2]), _feats([5, 5], [4, 2], seed=2)
    kd = FeatureKD([3, 3], [5, 5])
    for seed in range(3):
        kd(_feats([3, 3], [4, 2], seed=10 + seed), _feats([5, 5], [4, 2], seed=20 + seed))
    again = FeatureKD([3, 3], [5, 5])
    again.load_state_dict(kd.state_dict())
    assert int(again.updates) == 3
    assert torch.equal(kd(student, teacher), again(student, teacher))


def test_level_count_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="levels"):
        FeatureKD([3, 3], [5])
    with pytest.raises(ValueError, match="feature levels"):
        FeatureKD([3], [5])(_feats([3, 3], [4, 2]), _feats([5], [4]))


def test_head_inputs_reads_what_each_class_head_receives() -> None:
    from trainer.models.nano_b import NanoB, NanoBConfig

    model = NanoB(NanoBConfig()).eval()
    taps = HeadInputs(model)
    seen: list[torch.Tensor] = []
    handles = [h.register_forward_hook(lambda _m, args, _o: seen.append(args[0])) for h in model.ClassHead]
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    feats = taps.take()
    assert [f.shape[1] for f in feats] == taps.channels
    assert all(f is s for f, s in zip(feats, seen, strict=True))
    with pytest.raises(RuntimeError, match="no forward pass"):
        taps.take()
    taps.close()
    for h in handles:
        h.remove()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert taps.feats == [None] * 3  # closed: nothing captured any more
    with pytest.raises(ValueError, match="ClassHead"):
        HeadInputs(nn.Conv2d(3, 3, 1))


def _rank_fits(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        kd = FeatureKD([3], [4])
        for step in range(3):  # each rank sees its own batches
            kd(_feats([3], [4], seed=100 * rank + step), _feats([4], [4], seed=50 + 100 * rank + step))
        torch.save(kd.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_fit_the_same_maps_on_the_global_batch(tmp_path: Path) -> None:
    """Under DDP every rank averages the statistics of all ranks' batches: the maps are equal, and
    equal to one process fitting both ranks' batches together (so rank 0's checkpoint fits all)."""
    import torch.multiprocessing as mp

    from edge.broker import free_port

    mp.spawn(_rank_fits, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    alone = FeatureKD([3], [4])
    for step in range(3):
        s = [torch.cat([_feats([3], [4], seed=100 * r + step)[0] for r in (0, 1)])]
        t = [torch.cat([_feats([4], [4], seed=50 + 100 * r + step)[0] for r in (0, 1)])]
        alone(s, t)
    torch.testing.assert_close(a["map0"], alone.state_dict()["map0"], rtol=1e-5, atol=1e-6)
