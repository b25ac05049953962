"""Soft filter pruning (He et al., IJCAI 2018) on a polynomial rate schedule.

At each boundary (epoch or step) the filters FPGM ranks as most replaceable are zeroed — conv / linear
output rows and bias and the following BN's beta, in every member of the coupled set (depthwise convs,
the other operand of a residual add, the attention MLP's output rows) — and training goes on, so a
zeroed filter receives gradient and may grow back; the next boundary re-ranks from scratch. Only the
*producing* side is zeroed, and BN's gamma only at the final boundary: a zero gamma, or zeroed consumer
columns, would cut the filter's gradient and it could never recover. (In train mode a zero filter gives
a zero batch variance, so BN outputs beta = 0: the channel is silent all the same.)

The rate follows ``r(t) = r_final * (1 - (1 - t/T)^p)``: fast early, when the network is most plastic,
and flat near the end, so it settles before the filters are removed. After the last boundary the
selection is frozen and :meth:`SoftPruner.hold` re-zeroes it after every optimiser step (the *settle*
stretch of the pipeline's phase 2): the network learns to do without those filters while it can still
train, instead of losing them all at once at removal.

After the last boundary the zeroed channels contribute exactly nothing (BN output = beta = 0, LeakyReLU(0)
= 0), so :func:`trainer.prune.surgery.remove_channels` with :attr:`SoftPruner.selection` gives the same
outputs with fewer parameters (except after reductions over channels, see docs/pruning.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge.errors import ModelError
from trainer.prune.groups import PruneGroups, validate_rates
from trainer.prune.surgery import (
    ChannelPlan,
    Selection,
    analyse,
    count_params,
    prune_spec,
    remove_channels,
    save_spec,
)


def poly_rate(t: float, total: float, r_final: float, power: float = 3.0) -> float:
    """``r_final * (1 - (1 - t/T)^p)`` with t clamped to [0, T]: 0 at t=0, r_final at t >= T, monotone."""
    if total <= 0:
        raise ValueError(f"schedule length must be positive, got {total}")
    if power <= 0:
        raise ValueError(f"schedule power must be positive, got {power}")
    frac = min(max(t / total, 0.0), 1.0)
    return r_final * (1.0 - (1.0 - frac) ** power)


def scheduled_rates(
    t: float, total: float, final: Mapping[str, float], power: float = 3.0
) -> dict[str, float]:
    """The schedule applied to every group's final rate."""
    return {g: poly_rate(t, total, r, power) for g, r in final.items()}


def zero_masks(
    model: nn.Module, plan: ChannelPlan, selection: Selection, final: bool = True
) -> dict[str, torch.Tensor]:
    """``{parameter name: bool row mask}`` that zeroes the selected channels on the producing side;
    BN gamma only when ``final`` (see the module docstring)."""
    by_root = {s.root: s for s in plan.sets}
    params = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}
    for root, chosen in selection.items():
        cset = by_root[root]
        chosen_set = set(chosen)
        for m in cset.members:
            local = [i for i, r in zip(m.idxs, m.root_idxs, strict=True) if r in chosen_set]
            if not local:
                continue
            pnames = ("bias",) if m.kind == "bn" and not final else ("weight", "bias")
            for pname in pnames:
                key = f"{m.module}.{pname}" if m.module else pname
                if key not in params:
                    continue
                mask = masks.get(key)
                if mask is None:
                    mask = torch.zeros(params[key].shape[0], dtype=torch.bool, device=params[key].device)
                    masks[key] = mask
                mask[local] = True
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked rows in place (weights, biases, BN gamma / beta)."""
    params = dict(model.named_parameters())
    for key, mask in masks.items():
        params[key][mask.to(params[key].device)] = 0.0


class SoftPruner:
    """Soft pruning of ``model`` towards ``final_rates`` over ``total_steps`` boundaries.

    Call :meth:`step` at each boundary with its index (1..T). Its state is the step index only (the
    selection is recomputed from the weights), so resuming a killed run needs ``state_dict()`` and the
    model checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        groups: PruneGroups,
        final_rates: Mapping[str, float],
        total_steps: int,
        example_inputs: torch.Tensor,
        power: float = 3.0,
        multiple: int = 1,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"soft pruning needs at least one step, got {total_steps}")
        self.model = model
        self.final_rates = validate_rates(final_rates)
        self.total_steps = total_steps
        self.power = power
        self.plan = analyse(model, example_inputs, groups, multiple)
        self.current_step = 0
        self.selection: Selection = {}
        self.masks: dict[str, torch.Tensor] = {}

    def rates_at(self, t: int) -> dict[str, float]:
        return scheduled_rates(t, self.total_steps, self.final_rates, self.power)

    @property
    def done(self) -> bool:
        """The final boundary has been applied: the selection is frozen."""
        return self.current_step >= self.total_steps

    def step(self, t: int | None = None) -> dict[str, float]:
        """Re-rank with FPGM at the schedule's rates for boundary ``t`` and zero; returns those rates."""
        self.current_step = self.current_step + 1 if t is None else t
        rates = self.rates_at(self.current_step)
        self.selection = self.plan.select(self.model, rates)
        self.masks = zero_masks(self.model, self.plan, self.selection, final=self.done)
        apply_masks(self.model, self.masks)
        return rates

    def hold(self) -> None:
        """Re-zero the current selection without re-ranking (after an optimiser step moved it)."""
        apply_masks(self.model, self.masks)

    def finish(self) -> Selection:
        """The selection for physical removal, zeroed: the frozen one when the last boundary has passed
        (re-ranking now could pick other filters than the ones the network learnt to do without),
        else the last boundary is applied first."""
        if self.done and self.selection:
            self.hold()
        else:
            self.step(self.total_steps)
        return self.selection

    def state_dict(self) -> dict:
        return {
            "current_step": self.current_step,
            "final_rates": dict(self.final_rates),
            "power": self.power,
            "selection": {k: [int(i) for i in v] for k, v in self.selection.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the boundary index and selection without re-zeroing: the checkpointed weights already
        carry the zeros, and zeroing here would make a resumed run differ from an uninterrupted one."""
        self.current_step = int(state["current_step"])
        self.selection = {k: list(v) for k, v in state.get("selection", {}).items()}
        self.masks = zero_masks(self.model, self.plan, self.selection, final=self.done)


@dataclass
class HardenResult:
    """The physically pruned model, its width spec, and how far its outputs moved (should be ~0)."""

    model: nn.Module
    spec: dict[str, Any]
    max_deviation: float


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _flat_outputs(v)]
    if isinstance(out, list | tuple):
        return [t for v in out for t in _flat_outputs(v)]
    return []


@torch.no_grad()
def harden(
    pruner: SoftPruner, example_inputs: torch.Tensor, spec_path: str | Path | None = None
) -> HardenResult:
    """End of the soft phase: zero at the final rates, then remove those channels for real.

    Compares the outputs before and after removal on ``example_inputs`` (eval mode): the zeroed
    channels contribute nothing, so the deviation is float rounding, except where the network reduces
    over channels (a CBAM spatial gate's mean over C changes when C shrinks) — the final fine-tune
    absorbs that. Writes the width spec to ``spec_path`` when given.
    """
    model = pruner.model
    was_training = model.training
    model.eval()
    selection = pruner.finish()
    before = count_params(model)
    reference = [t.clone() for t in _flat_outputs(model(example_inputs))]
    remove_channels(model, selection, example_inputs)
    after = _flat_outputs(model(example_inputs))
    if [t.shape for t in after] != [t.shape for t in reference]:
        raise ModelError("channel surgery changed the model's output shapes")
    deviation = max((float((a - b).abs().max()) for a, b in zip(after, reference, strict=True)), default=0.0)
    spec = prune_spec(model, selection, example_inputs, pruner.final_rates, params_before=before)
    spec["max_deviation"] = deviation
    if spec_path is not None:
        save_spec(spec, spec_path)
    model.train(was_training)
    return HardenResult(model, spec, deviation)
