"""FPGM ranking on literal filters, rate -> count rounding, coupled-score aggregation, group bounds."""

from __future__ import annotations

import pytest
import torch

from edge.errors import ConfigError
from trainer.prune.fpgm import aggregate_scores, fpgm_scores, n_to_prune, rank_filters, select_lowest
from trainer.prune.groups import GROUP_BOUNDS, validate_rates


def test_filter_at_geometric_median_ranks_first() -> None:
    # Three 1x1 filters on a line: 0 is the median of {-1, 0, 1}; its distance-sum is 2, the others' 3.
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])[:, :, None, None]
    assert fpgm_scores(w).tolist() == pytest.approx([3.0, 2.0, 3.0])
    assert rank_filters(w).tolist()[0] == 1


def test_duplicate_filter_is_pruned_before_distinct_ones() -> None:
    # Two identical filters and two far apart: a duplicate is nearest the median (most replaceable).
    w = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    order = rank_filters(w).tolist()
    assert set(order[:2]) == {0, 1}
    assert fpgm_scores(torch.ones(1, 4)).tolist() == [0.0]


def test_rate_to_count_rounds_and_keeps_one() -> None:
    assert n_to_prune(64, 0.5) == 32
    assert n_to_prune(10, 0.26) == 3
    assert n_to_prune(8, 0.0) == 0
    assert n_to_prune(2, 0.9) == 1  # never empties a layer
    assert n_to_prune(32, 0.3, chunks=2) == 10  # 5 per half of a groups=2 conv
    assert n_to_prune(32, 0.3, chunks=2) % 2 == 0


def test_rate_to_count_keeps_whole_simd_blocks() -> None:
    # Kept widths land on multiples of the block (ONNX Runtime's NCHWc kernels), nearest the rate.
    assert n_to_prune(64, 0.33, multiple=16) == 16  # 42.9 kept -> 48
    assert n_to_prune(64, 0.4, multiple=16) == 32  # 38.4 kept -> 32
    assert n_to_prune(256, 0.49, multiple=16) == 128
    assert n_to_prune(64, 0.99, multiple=16) == 48  # at least one block stays
    assert n_to_prune(8, 0.5, multiple=16) == 0  # narrower than a block: left whole
    assert n_to_prune(21, 0.2, multiple=16) == 5  # an odd width is brought onto the grid
    assert n_to_prune(48, 0.3, chunks=3, multiple=8) == 24  # both the block and the groups divide 24
    assert (48 - n_to_prune(48, 0.3, chunks=3, multiple=8)) % 3 == 0


def test_select_lowest_takes_equally_from_chunks() -> None:
    scores = torch.tensor([5.0, 1.0, 2.0, 9.0, 0.5, 0.1, 7.0, 8.0])
    assert select_lowest(scores, 2) == [4, 5]
    assert select_lowest(scores, 2, chunks=2) == [1, 5]


def test_aggregate_normalises_each_layer_and_averages() -> None:
    # Layer A covers channels 0..3 with large scores, layer B only channels 2..3 with small ones.
    a = (torch.tensor([100.0, 300.0, 200.0, 200.0]), [0, 1, 2, 3])
    b = (torch.tensor([1.0, 3.0]), [2, 3])
    agg = aggregate_scores([a, b], 5)
    assert agg[:4].tolist() == pytest.approx([0.5, 1.5, (1.0 + 0.5) / 2, (1.0 + 1.5) / 2])
    assert agg[4] == float("inf")  # a channel nobody produces is never chosen


def test_group_rates_validated_against_bounds() -> None:
    assert set(GROUP_BOUNDS) == {"backbone_early", "backbone_late", "cbam", "bifpn", "ssh", "heads"}
    assert GROUP_BOUNDS["backbone_early"] == (0.0, 0.4) and GROUP_BOUNDS["heads"] == (0.0, 0.3)
    ok = {"backbone_early": 0.4, "backbone_late": 0.1, "cbam": 0.6, "bifpn": 0.3, "ssh": 0.2, "heads": 0.0}
    assert validate_rates(ok) == ok
    with pytest.raises(ConfigError, match="'heads' outside"):
        validate_rates({**ok, "heads": 0.35})
    with pytest.raises(ConfigError, match="unknown pruning group 'neck'"):
        validate_rates({**ok, "neck": 0.1})
    with pytest.raises(ConfigError, match="'ssh' missing"):
        validate_rates({k: v for k, v in ok.items() if k != "ssh"})
