"""B-FPGM pruning: FPGM filter ranking, soft pruning on a schedule, Bayesian rate search, surgery.

Typical use by the pipeline (see docs/pruning.md)::

    groups = model.prune_groups()
    pruner = SoftPruner(model, groups, rates, total_steps=epochs, example_inputs=x)
    for epoch in range(1, epochs + 1):
        train_one_epoch(model)
        pruner.step(epoch)
    result = harden(pruner, x, spec_path=out / "prune_spec.json")   # result.model is smaller
"""

from trainer.prune.fpgm import fpgm_scores, rank_filters
from trainer.prune.groups import GROUP_BOUNDS, GROUP_NAMES, model_groups, validate_rates
from trainer.prune.search import SearchConfig, SearchResult, load_best_rates, param_penalty, run_search
from trainer.prune.soft import HardenResult, SoftPruner, harden, poly_rate
from trainer.prune.surgery import (
    ChannelPlan,
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

__all__ = [
    "GROUP_BOUNDS",
    "GROUP_NAMES",
    "ChannelPlan",
    "HardenResult",
    "ParamCounter",
    "SearchConfig",
    "SearchResult",
    "SoftPruner",
    "analyse",
    "apply_spec",
    "count_params",
    "dry_run_params",
    "folded_param_count",
    "fpgm_scores",
    "harden",
    "load_best_rates",
    "load_spec",
    "model_groups",
    "onnx_param_count",
    "param_penalty",
    "poly_rate",
    "rank_filters",
    "remove_channels",
    "run_search",
    "save_spec",
    "validate_rates",
]
