"""Dependency-aware channel surgery: which channels are coupled, which to drop, and dropping them.

torch-pruning's DependencyGraph traces the model once and links every tensor dimension that must shrink
together: a conv's output filters, the following BN, depthwise convs (groups = channels), the consumer's
input columns, both operands of a residual add, the slice of a concatenation, the Linear of an attention
MLP whose output multiplies the channels. A *coupled set* is one such bundle of channels.

Two of its tracing rules are wrong for our networks and are corrected here before any group is built:
a reduction over the channel dimension (CBAM's spatial gate takes mean/max over C) is traced as an
element-wise op, and a broadcast multiply by a 1-channel map (spatial attention, BiFPN's scalar fusion
weights) couples that map with every channel. Both links are cut. Sets that pass a reshape other than a
global-pool flatten (a channel shuffle), a permute, or reach a model output (the head convs whose sizes
are anchors x {2, 4, 10}) are refused, so head outputs never change.

The selection is data: ``{root module name: [channel indices]}``. Re-running :func:`remove_channels`
with it on a freshly built, unpruned model reproduces the pruned architecture exactly (DESIGN "pruned
widths are data"); :func:`prune_spec` adds the resulting widths so a rebuild can be checked.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops

from edge.errors import ModelError
from trainer.prune.fpgm import aggregate_scores, fpgm_scores, n_to_prune
from trainer.prune.groups import PruneGroups

SPEC_FORMAT = "featherface-prune-spec/1"
Selection = dict[str, list[int]]

_OUT_FNS = {
    tp.prune_conv_out_channels: "conv",
    tp.prune_depthwise_conv_out_channels: "conv",
    tp.prune_linear_out_channels: "linear",
    tp.prune_batchnorm_out_channels: "bn",
}
_REDUCTION = re.compile(r"^(Mean|Sum|Amax|Amin|Max|Min|Std|Var|Norm|Logsumexp|Prod|Median)Backward\d+$")
_BINARY = ("MulBackward", "AddBackward", "SubBackward", "DivBackward")


@dataclass(frozen=True)
class Member:
    """One layer's share of a coupled set: its local channel indices and the set's (root) indices."""

    module: str
    kind: str  # "conv" | "linear" | "bn": what soft pruning zeroes (output rows / affine params)
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


@dataclass
class CoupledSet:
    """Channels that must be pruned together, rooted at one listed conv / linear's output filters."""

    root: str
    n: int
    members: list[Member]
    groups: tuple[str, ...]  # B-FPGM groups of the listed producers in the set; its rate is their minimum
    chunks: int = 1  # > 1 behind a grouped conv: prune the same positions in each of `chunks` parts
    blocked: str | None = None

    def rate(self, rates: Mapping[str, float]) -> float:
        return min((float(rates.get(g, 0.0)) for g in self.groups), default=0.0)


@dataclass
class ChannelPlan:
    """Every coupled set of a model whose root is a conv / linear listed in ``prune_groups()``."""

    sets: list[CoupledSet] = field(default_factory=list)
    # Kept channels per set are rounded to a multiple of this (1: exact rates); see fpgm.n_to_prune.
    multiple: int = 1

    @property
    def prunable(self) -> list[CoupledSet]:
        return [s for s in self.sets if s.blocked is None]

    def select(self, model: nn.Module, rates: Mapping[str, float]) -> Selection:
        """FPGM choice of the channels to drop per set at ``rates`` (on the model's current weights)."""
        modules = dict(model.named_modules())
        out: Selection = {}
        for s in self.prunable:
            k = n_to_prune(s.n, s.rate(rates), s.chunks, self.multiple)
            if k == 0:
                continue
            parts = []
            for m in s.members:
                if m.kind == "bn":
                    continue  # FPGM ranks filters, not BN scales
                w = modules[m.module].weight.detach()
                parts.append((fpgm_scores(w[list(m.idxs)]), m.root_idxs))
            scores = aggregate_scores(parts, s.n)
            out[s.root] = _lowest(scores, k, s.chunks)
        return out


def _lowest(scores: torch.Tensor, k: int, chunks: int) -> list[int]:
    """The k lowest-scored channels; with chunks, the same k/chunks local positions in every chunk
    (torch-pruning slices a grouped conv's input columns by position, so they must line up)."""
    if chunks == 1:
        return sorted(int(i) for i in torch.sort(scores, stable=True).indices[:k])
    size = scores.numel() // chunks
    local = scores.reshape(chunks, size).sum(dim=0)
    pos = torch.sort(local, stable=True).indices[: k // chunks]
    return sorted(int(p) + c * size for c in range(chunks) for p in pos)


# ---------------------------------------------------------------------------------------------------
# Dependency graph with the two tracing corrections


def build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` (in eval mode, so BN statistics are untouched) and correct the couplings."""
    param = next(model.parameters(), None)
    if param is not None and isinstance(example_inputs, torch.Tensor):
        example_inputs = example_inputs.to(param.device)  # a CPU probe for a model on the GPU is fine
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    finally:
        model.train(was_training)
    _cut_false_couplings(graph)
    return graph


def _cut(a: Any, b: Any) -> None:
    a.dependencies = [d for d in a.dependencies if d.target is not b]
    b.dependencies = [d for d in b.dependencies if d.target is not a]


def _channels(t: Any) -> int | None:
    return int(t.shape[1]) if isinstance(t, torch.Tensor) and t.dim() >= 2 else None


def _cut_false_couplings(graph: tp.DependencyGraph) -> None:
    for node in list(graph.module2node.values()):
        fn = node.grad_fn
        name = type(fn).__name__ if fn is not None else ""
        if _REDUCTION.match(name) and _reduces_channels(fn):
            for other in list(node.inputs) + list(node.outputs):
                _cut(node, other)
        elif name.startswith(_BINARY) and hasattr(fn, "_saved_other") and hasattr(fn, "_saved_self"):
            try:
                operands = [fn._saved_self, fn._saved_other]
            except RuntimeError:  # saved tensors already freed
                continue
            widths = [_channels(t) for t in operands]
            full = max((w for w in widths if w is not None), default=None)
            for i, w in enumerate(widths):
                if full is not None and full > 1 and (w is None or w == 1):
                    producer = fn.next_functions[i][0]
                    for other in node.inputs:
                        if other.grad_fn is producer:
                            _cut(node, other)


def _reduces_channels(fn: Any) -> bool:
    if not hasattr(fn, "_saved_dim"):
        return True  # a full reduction (mean of everything): no channel dimension survives
    dims = fn._saved_dim
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    sizes = getattr(fn, "_saved_self_sym_sizes", None)
    if sizes is None and hasattr(fn, "_saved_self"):
        sizes = fn._saved_self.shape
    if len(dims) == 0:
        return True  # dim=() reduces over everything
    ndim = len(sizes) if sizes is not None else 4
    return ndim >= 2 and any(d % ndim == 1 for d in dims)


def _block_reason(node: Any, name: str) -> str | None:
    if node.type == ops.OPTYPE.OUTPUT:
        return "reaches a model output"
    if node.type == ops.OPTYPE.PARAMETER:
        return "couples with an unwrapped parameter"
    gname = type(node.grad_fn).__name__ if node.grad_fn is not None else ""
    if gname.startswith(("PermuteBackward", "TransposeBackward")):
        return f"passes a permute/transpose ({gname})"
    if node.type == ops.OPTYPE.RESHAPE:
        sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
        # A global-pool flatten (N, C, 1, 1) <-> (N, C) keeps channel order; anything else (a channel
        # shuffle's view) does not, and torch-pruning would map the indices as if it did.
        if sizes is None or not (len(sizes) == 2 or (len(sizes) == 4 and sizes[2] == sizes[3] == 1)):
            return "passes a reshape (channel shuffle?)"
    module = node.module
    supported = nn.Conv2d | nn.Linear | nn.BatchNorm2d
    if (
        isinstance(module, nn.Module)
        and not isinstance(module, supported)
        and any(True for _ in module.parameters(recurse=False))
    ):
        return f"couples with unsupported layer {name} ({type(module).__name__})"
    return None


def analyse(
    model: nn.Module, example_inputs: torch.Tensor, groups: PruneGroups, multiple: int = 1
) -> ChannelPlan:
    """The coupled sets of ``model``, one per listed conv / linear not already covered by another's set."""
    graph = build_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    group_of = {id(m): g for g, ms in groups.items() for m in ms}
    covered: set[str] = set()
    plan = ChannelPlan(multiple=multiple)
    listed = [m for m in model.modules() if id(m) in group_of]
    for root in listed:
        root_name = names[root]
        if root_name in covered:
            continue
        fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
        n = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        if root not in graph.module2node:  # listed but switched off by config: nothing to prune
            plan.sets.append(CoupledSet(root_name, n, [], (), 1, "not used in the forward pass"))
            continue
        group = graph.get_pruning_group(root, fn, list(range(n)))
        members: list[Member] = []
        in_groups: set[str] = set()
        chunks, blocked = 1, None
        for item in group:
            dep, idxs, root_idxs = item.dep, list(item.idxs), list(item.root_idxs)
            node, module = dep.target, dep.target.module
            mname = names.get(module, str(module)) if isinstance(module, nn.Module) else "<param>"
            reason = _block_reason(node, mname)
            # "reaches a model output" wins: it is the reason a reader expects for the heads.
            if reason and (blocked is None or reason == "reaches a model output"):
                blocked = reason
            if isinstance(module, nn.Conv2d) and module.groups == module.in_channels != module.out_channels:
                blocked = blocked or f"depthwise conv {mname} with a channel multiplier"
            elif isinstance(module, nn.Conv2d) and 1 < module.groups < module.in_channels:
                # A grouped (not depthwise) conv: its channel halves must shrink alike.
                if idxs != root_idxs or len(idxs) != n:
                    blocked = blocked or f"grouped conv {mname} behind a concatenation"
                chunks = math.lcm(chunks, module.groups)
            kind = _OUT_FNS.get(dep.handler)
            if kind is None:
                continue
            members.append(Member(mname, kind, tuple(idxs), tuple(root_idxs)))
            if kind != "bn":
                covered.add(mname)
                if id(module) in group_of:
                    in_groups.add(group_of[id(module)])
        if n % chunks:
            blocked = blocked or f"{n} channels do not split into {chunks} equal groups"
        plan.sets.append(CoupledSet(root_name, n, members, tuple(sorted(in_groups)), chunks, blocked))
    return plan


# ---------------------------------------------------------------------------------------------------
# Physical removal and the width spec


def remove_channels(
    model: nn.Module, selection: Mapping[str, Sequence[int]], example_inputs: torch.Tensor
) -> nn.Module:
    """Physically remove the selected channels (in place) and return ``model``, now smaller."""
    graph = build_graph(model, example_inputs)
    modules = dict(model.named_modules())
    for root_name, idxs in selection.items():
        if not idxs:
            continue
        if root_name not in modules:
            raise ModelError(f"pruning spec names module {root_name!r}, which this model does not have")
        root = modules[root_name]
        fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
        group = graph.get_pruning_group(root, fn, sorted(int(i) for i in idxs))
        if not graph.check_pruning_group(group):
            raise ModelError(f"pruning {len(idxs)} channels at {root_name!r} would empty a layer")
        group.prune()
    return model


def count_params(model: nn.Module) -> int:
    """Sum of parameter tensor sizes (BN included; the export folds BN, see docs/pruning.md)."""
    return sum(p.numel() for p in model.parameters())


def folded_param_count(model: nn.Module) -> int:
    """The parameter count once every BN is folded into the conv before it, as the ONNX export does:
    each BN's 2C affine parameters become the conv's C biases. Equals :func:`onnx_param_count` for a
    trained model whose BNs follow bias-free convs (the exporter also merges identical initializers,
    which only an untrained model — all-zero folded biases — has)."""
    bn = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    return count_params(model) - bn


def onnx_param_count(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """DESIGN §2's count: the sum of initializer sizes in the exported ONNX file (BN folded into convs).

    Exports in memory (TorchScript exporter, eval mode); slower than :func:`count_params` but exact.
    """
    import io
    import warnings

    import onnx

    buf = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example_inputs,), buf, dynamo=False, do_constant_folding=True)
    finally:
        model.train(was_training)
    graph = onnx.load_from_string(buf.getvalue()).graph
    return sum(math.prod(init.dims) for init in graph.initializer)


def widths(model: nn.Module) -> dict[str, list[int]]:
    """``{name: [in, out]}`` of every conv / linear and ``[C, C]`` of every BN: the pruned architecture."""
    out: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = [m.in_channels, m.out_channels]
        elif isinstance(m, nn.Linear):
            out[name] = [m.in_features, m.out_features]
        elif isinstance(m, nn.BatchNorm2d):
            out[name] = [m.num_features, m.num_features]
    return out


def prune_spec(
    model: nn.Module,
    selection: Mapping[str, Sequence[int]],
    example_inputs: torch.Tensor,
    rates: Mapping[str, float] | None = None,
    params_before: int | None = None,
) -> dict[str, Any]:
    """The JSON-able spec of a pruned ``model``: what was removed, the widths that resulted, param counts."""
    return {
        "format": SPEC_FORMAT,
        "model": type(model).__name__,
        "input_shape": list(example_inputs.shape),
        "rates": dict(rates or {}),
        "removed": {k: sorted(int(i) for i in v) for k, v in selection.items() if len(v)},
        "widths": widths(model),
        "params_before": params_before,
        "params_after": count_params(model),
    }


def save_spec(spec: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    return path


def load_spec(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read pruning spec {path}: {exc}") from exc
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise ModelError(f"{path} is not a pruning spec (expected format {SPEC_FORMAT!r})")
    for key in ("removed", "widths", "input_shape"):
        if key not in spec:
            raise ModelError(f"pruning spec {path} lacks the key {key!r}")
    return spec


def apply_spec(model: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """Turn a freshly built, *unpruned* model into the pruned architecture of ``spec`` (in place).

    Re-runs the same surgery with the recorded selection, then checks every width against the spec, so
    a spec from another builder fails loudly. Load the pruned weights afterwards with ``strict=True``.
    """
    device = next(model.parameters()).device
    example = torch.zeros(*spec["input_shape"], device=device)
    remove_channels(model, spec["removed"], example)
    got = widths(model)
    for name, want in spec["widths"].items():
        if got.get(name) != list(want):
            raise ModelError(f"pruning spec width of {name!r} is {want}, rebuilt model has {got.get(name)}")
    return model


def dry_run_params(
    model: nn.Module, plan: ChannelPlan, rates: Mapping[str, float], example_inputs: torch.Tensor
) -> int:
    """Parameter count ``model`` would have if pruned at ``rates`` now (surgery on a deep copy)."""
    clone = copy.deepcopy(model)
    return count_params(remove_channels(clone, plan.select(clone, rates), example_inputs))


class ParamCounter:
    """``rates -> parameter count of the exported file after pruning`` (DESIGN §2 counts the export),
    by dry-run surgery on a copy (about one trace) and :func:`folded_param_count`; with
    ``exported=True`` by a real in-memory ONNX export (exact for any model, several times slower).

    Picklable (the traced plan is rebuilt lazily in each process), so it can be handed to spawned
    search workers.
    """

    def __init__(
        self,
        model: nn.Module,
        groups: PruneGroups,
        example_inputs: torch.Tensor,
        exported: bool = False,
        multiple: int = 1,
    ) -> None:
        self.model = copy.deepcopy(model).eval()
        self.exported = exported  # count the real ONNX export (slow) instead of the folded estimate
        names = {id(m): n for n, m in model.named_modules()}
        # Store the groups by module name: module objects of the original would not survive pickling.
        self.group_names = {g: [names[id(m)] for m in ms] for g, ms in groups.items()}
        self.example_inputs = example_inputs
        self.multiple = multiple
        self._plan: ChannelPlan | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_plan": None}

    def __call__(self, rates: Mapping[str, float]) -> int:
        if self._plan is None:
            modules = dict(self.model.named_modules())
            groups = {g: [modules[n] for n in ns] for g, ns in self.group_names.items()}
            self._plan = analyse(self.model, self.example_inputs, groups, self.multiple)
        clone = copy.deepcopy(self.model)
        remove_channels(clone, self._plan.select(clone, rates), self.example_inputs)
        return onnx_param_count(clone, self.example_inputs) if self.exported else folded_param_count(clone)
