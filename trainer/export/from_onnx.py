"""A trainable Nano-B rebuilt from its exported ONNX file (``featherface-train import-onnx``).

The file in ``edge/models`` is what ships, and often all that is left of the run that made it: a
user's download, a machine that was wiped. Fine-tuning it on other data, or going on with the
pipeline's phase 3 (``[phase3] init``), needs the PyTorch network back.

**How.** The exporter maps the network's tensors to the file's initializers in several ways: each BN
is folded into the conv before it; grouped convs are split per group and parallel convs merged
(:mod:`trainer.export.rewrite`); the BiFPN's fusion weights are normalised into scalars. Rather than
write each of these backwards (and again whenever the exporter changes), a template Nano-B is exported
by the same code with every element of every tensor set to its own integer (a *marker*) and every BN
an identity. Each element of each exported initializer then says which tensor element it came from,
and the file's value goes back there.

A conv bias and the BN shift after it fold into one number, so the template is exported twice: once
with the BN shifts marked, once with the conv biases marked. The unmarked side holds distinct
fractions under 0.25: the export's optimiser drops zero biases and merges equal initializers, which
would rename nodes, and a fraction that small leaves the marker beside it readable. The file's widths
are found the same way from an unpruned template: each owner's share of the file's tensor shapes.
The BiFPN fusion weights, ``relu(w) / (sum(relu(w)) + eps)``, are the one non-linear step. They are
recognised by designed template values and inverted in closed form.

**What comes back** is the same function, not the same tensors. Each folded BN becomes an identity,
with its scale left in the conv. That is exact in eval mode. Training re-normalises with batch
statistics, so :func:`restandardise` first gives each such BN the statistics of its input on real
images, with a shift and scale that leave the function unchanged.

**Checked** before anything is returned: the rebuilt network against ONNX Runtime on the file. A
mismatch is a :class:`~edge.errors.ModelError`, never a quietly different network.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edge.errors import ModelError
from trainer.layers.bifpn import BiFPNCell
from trainer.models.nano_b import NanoB, NanoBConfig, apply_channel_spec, weight_shapes

log = logging.getLogger(__name__)

# Markers start above the small integers an identity BN holds (0, 1), so those never read as one.
FIRST_MARKER = 16
# float32 holds every integer up to 2**24 exactly.
LAST_MARKER = 2**24
# The exporter wraps the network as ``InferenceHead.net``: the prefix of names taken from the network.
NET_PREFIX = "net."
# Outputs of the rebuilt network and of ONNX Runtime on the file agree within this, relative to the
# output's largest value (float32 rounding in folded and split convs is ~1e-5).
PARITY_TOLERANCE = 1e-3


@dataclass
class Imported:
    """A Nano-B rebuilt from an ONNX file, and the channel spec of its widths (``save_student``'s)."""

    model: NanoB
    spec: dict[str, list[int]]
    source: Path


def _fusion_eps(net: nn.Module) -> dict[str, float]:
    """State key of every BiFPN fusion weight -> the epsilon of its normalisation."""
    return {
        f"{name}.{pname}": m.epsilon
        for name, m in net.named_modules()
        if isinstance(m, BiFPNCell)
        for pname, _ in m.named_parameters(recurse=False)
    }


def _fusion_design(j: int, n: int) -> np.ndarray:
    """Template values of the j-th fusion weight: normalised, no two weights share a value."""
    return (j + 2.0) ** np.arange(n)


def _identity(bn: nn.BatchNorm2d) -> dict[str, float]:
    """The values of an identity BN's scale and statistics (its shift is set apart)."""
    return {"weight": 1.0, "running_mean": 0.0, "running_var": 1.0 - bn.eps}


def _mark(net: nn.Module, shifts: bool) -> tuple[dict[str, int], int]:
    """Set the template's tensors (see the module doc); returns state key -> marker offset (element i
    of that tensor holds ``offset + 1 + i``) and the last marker. ``shifts``: mark the BN shifts, else
    the conv biases."""
    bns = {name: m for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    fusion = list(_fusion_eps(net))
    filler = torch.Generator().manual_seed(0)
    offsets: dict[str, int] = {}
    n = FIRST_MARKER
    with torch.no_grad():
        for key, v in net.state_dict().items():
            if not v.is_floating_point():
                continue
            module, _, leaf = key.rpartition(".")
            if key in fusion:
                v.copy_(torch.from_numpy(_fusion_design(fusion.index(key), v.numel())))
            elif module in bns and leaf != "bias":
                v.fill_(_identity(bns[module])[leaf])
            elif leaf == "bias" and (module in bns) != shifts:
                v.copy_(0.01 + 0.19 * torch.rand(v.shape, generator=filler))
            else:
                v.copy_(torch.arange(n + 1, n + 1 + v.numel(), dtype=v.dtype).reshape(v.shape))
                offsets[key] = n
                n += v.numel()
    if n > LAST_MARKER:
        raise ModelError(f"a network of {n:,} values is too large to import (at most {LAST_MARKER:,})")
    return offsets, n


@dataclass
class _Reading:
    """One template's export: its initializers, and for each element the state key and flat index of
    the tensor element it came from (key None: no marker)."""

    inits: dict[str, np.ndarray]
    keys: dict[str, np.ndarray]
    index: dict[str, np.ndarray]


def _read_template(
    net: nn.Module, example: torch.Tensor, names: set[str], shifts_only: bool = False
) -> _Reading:
    """Export ``net`` marked (BN shifts, then conv biases; ``shifts_only``: the first alone, enough for
    the widths) and read each initializer's owners. ``names``: the file's initializers, which the
    template's must be."""
    from trainer.export.exporter import InferenceHead, onnx_graph

    reading = _Reading({}, {}, {})
    for shifts in (True,) if shifts_only else (True, False):
        offsets, top = _mark(net, shifts)
        order = sorted(offsets.items(), key=lambda kv: kv[1])
        starts = np.array([o for _, o in order], np.int64)
        owners = np.array([k for k, _ in order], dtype=object)
        graph, _ = onnx_graph(InferenceHead(net.eval()), example)
        inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
        if inits.keys() != names:
            odd = sorted(names ^ inits.keys())
            raise ModelError(
                f"the file was not exported from this Nano-B design ({len(odd)} tensors differ, e.g. "
                f"{odd[0]}); pass the [model] table it was trained with (--config)"
            )
        reading.inits = reading.inits or inits
        for name, t in inits.items():
            if t.dtype != np.float32 or t.ndim == 0:  # scalars: the fusion weights, read apart
                continue
            flat = t.astype(np.float64).ravel()
            r = np.rint(flat).astype(np.int64)
            ok = (np.abs(flat - r) < 0.25) & (r > FIRST_MARKER) & (r <= top)
            keys = reading.keys.setdefault(name, np.full(t.size, None, dtype=object))
            index = reading.index.setdefault(name, np.zeros(t.size, np.int64))
            j = np.searchsorted(starts, r - 1, side="right") - 1
            new = ok & np.equal(keys, None)
            keys[new] = owners[j[new]]
            index[new] = (r - 1 - starts[j])[new]
    return reading


def _split_sizes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Initializer of a merged conv (weight or bias) -> the output widths its ``Split`` gives back."""
    inits = {t.name: t for t in model.graph.initializer}
    split_of = {
        n.input[0]: numpy_helper.to_array(inits[n.input[1]]).tolist()
        for n in model.graph.node
        if n.op_type == "Split" and len(n.input) > 1 and n.input[1] in inits
    }
    return {
        name: split_of[n.output[0]]
        for n in model.graph.node
        if n.op_type == "Conv" and n.output[0] in split_of
        for name in n.input[1:]
    }


def _widths(template: nn.Module, reading: _Reading, file_model: onnx.ModelProto) -> dict[str, list[int]]:
    """The channel spec of the file: each conv / linear / BN of the template at the file's width."""
    file_shapes = {t.name: tuple(t.dims) for t in file_model.graph.initializer}
    sizes = _split_sizes(file_model)
    pieces: dict[str, list[tuple[int, tuple[int, ...]]]] = {}
    for name, keys in reading.keys.items():
        shape = reading.inits[name].shape
        rows = keys.reshape(shape[0], -1)[:, 0]
        runs = [k for k, _ in itertools.groupby(rows)]
        if runs == [None]:
            continue
        target = file_shapes[name]
        widths = [target[0]] if len(runs) == 1 else sizes.get(name, [])
        if len(widths) != len(runs) or None in runs:
            raise ModelError(f"cannot tell whose channels the file's tensor {name} holds")
        for key, width in zip(runs, widths, strict=True):
            pieces.setdefault(key, []).append((width, target[1:]))
    spec: dict[str, list[int]] = {}
    for key, parts in pieces.items():
        module_name, _, leaf = key.rpartition(".")
        module = template.get_submodule(module_name)
        out = sum(w for w, _ in parts)
        if leaf == "weight" and isinstance(module, nn.Conv2d | nn.Linear):
            spec[module_name] = [out, *parts[0][1]]
        elif leaf == "bias" and isinstance(module, nn.BatchNorm2d):
            spec[module_name] = [out]
    return spec


def _fusion_weights(net: nn.Module, reading: _Reading, file_inits: Mapping[str, np.ndarray]) -> dict:
    """Raw BiFPN fusion weights that normalise to the file's scalars."""
    eps = _fusion_eps(net)
    sizes = {key: t.numel() for key, t in net.state_dict().items() if key in eps}
    design = {}
    for j, key in enumerate(eps):
        raw = _fusion_design(j, sizes[key])
        for i, v in enumerate(raw / (raw.sum() + eps[key])):
            design[(key, i)] = v
    found: dict[str, dict[int, float]] = {}
    for name, t in reading.inits.items():
        if t.ndim or t.dtype != np.float32 or not design:
            continue
        (key, i), v = min(design.items(), key=lambda kv: abs(kv[1] - float(t)))
        if abs(v - float(t)) < 1e-6:
            found.setdefault(key, {})[i] = float(file_inits[name])
    raw_weights = {}
    for key, e in eps.items():
        # An entry no node reads (a fusion input the network never uses) counts as 0 in the sum.
        w = np.array([found.get(key, {}).get(i, 0.0) for i in range(sizes[key])], np.float64)
        # relu(t w) / (t sum(w) + eps) = w  <=>  t = eps / (1 - sum(w)); the sum is < 1 by eps.
        gap = 1.0 - w.sum()
        raw_weights[key] = torch.from_numpy((w * (e / gap if gap > 1e-9 else 1e4)).astype(np.float32))
    return raw_weights


def _fill(net: nn.Module, reading: _Reading, file_model: onnx.ModelProto) -> None:
    """Put the file's values into ``net`` (already at the file's widths)."""
    file_inits = {t.name: numpy_helper.to_array(t) for t in file_model.graph.initializer}
    bns = {name: m for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for key, v in state.items():
        module, _, leaf = key.rpartition(".")
        if not v.is_floating_point():
            continue
        if module in bns and leaf != "bias":
            # An identity unless the file kept this BN as a node (copied by name below).
            v.fill_(_identity(bns[module])[leaf])
        else:
            v.zero_()  # a conv bias beside a BN shift stays 0: the file holds their sum
    for name, keys in reading.keys.items():
        values = file_inits[name].ravel()
        for q in np.flatnonzero(np.not_equal(keys, None)):
            state[keys[q]].view(-1)[reading.index[name][q]] = float(values[q])
    for module in bns:
        for leaf in ("weight", "running_mean", "running_var"):
            kept, key = file_inits.get(f"{NET_PREFIX}{module}.{leaf}"), f"{module}.{leaf}"
            if kept is not None:
                state[key] = torch.from_numpy(kept.copy()).reshape(state[key].shape)
    state.update(_fusion_weights(net, reading, file_inits))
    net.load_state_dict(state, strict=True)


def _check(net: NanoB, path: Path, example: torch.Tensor) -> float:
    """Largest output difference to ONNX Runtime on the file, relative; ModelError above tolerance."""
    import onnxruntime as ort

    from trainer.export.exporter import InferenceHead

    x = np.random.default_rng(0).uniform(-120.0, 130.0, tuple(example.shape)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        ours = InferenceHead(net.eval())(torch.from_numpy(x))
    worst = max(
        float(np.abs(r - o.numpy()).max()) / max(1.0, float(np.abs(r).max()))
        for r, o in zip(ref, ours, strict=True)
    )
    if worst > PARITY_TOLERANCE:
        raise ModelError(
            f"{path}: the rebuilt network differs from the file by {worst:.2g} (relative); "
            "was it exported from a Nano-B with another [model] table?"
        )
    return worst


def _config(meta_provenance: Mapping[str, Any], cfg: NanoBConfig | None) -> NanoBConfig:
    """The file's own [model] table when its provenance records one, else ``cfg``, else the default."""
    recorded = meta_provenance.get("model")
    if isinstance(recorded, Mapping):
        return NanoBConfig.from_options(recorded)
    return cfg or NanoBConfig()


def student_from_onnx(path: str | Path, cfg: NanoBConfig | None = None) -> Imported:
    """Rebuild the Nano-B an ONNX file was exported from (see the module doc).

    ``cfg``: its architecture, when the file's provenance does not record it (files exported before
    2026-12-07); the default is the shipped design. Errors are one :class:`ModelError` line.
    """
    from edge.model import read_model

    path = Path(path)
    meta = read_model(path).meta  # a missing, corrupt or foreign file fails here, in one line
    if meta.name != "nano_b":
        raise ModelError(f"{path} holds a {meta.name!r} network; only Nano-B files can be imported")
    try:
        file_model = onnx.load(str(path))
    except Exception as exc:  # read_model parsed it already; a race or a full disk
        raise ModelError(f"cannot read ONNX file {path}: {exc}") from exc
    cfg = _config(meta.provenance or {}, cfg)
    example = torch.zeros(1, 3, meta.input.height, meta.input.width)

    names = {t.name for t in file_model.graph.initializer}
    unpruned = NanoB(cfg)
    try:
        spec = _widths(unpruned, _read_template(unpruned, example, names, shifts_only=True), file_model)
        net = NanoB(cfg)
        apply_channel_spec(net, spec)
        reading = _read_template(net, example, names)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    file_shapes = {t.name: tuple(t.dims) for t in file_model.graph.initializer}
    wrong = [n for n, t in reading.inits.items() if t.shape != file_shapes[n]]
    if wrong:
        raise ModelError(f"{path}: the widths read off the file do not rebuild it (tensor {wrong[0]})")
    _fill(net, reading, file_model)
    worst = _check(net, path, example)
    log.info("imported %s: %d layers resized, outputs within %.1g of the file", path, len(spec), worst)
    # The spec save_student records: every weight's shape, as nano_b_from_state derives it.
    return Imported(net.eval(), weight_shapes(net.state_dict()), path)


@torch.no_grad()
def restandardise(net: nn.Module, blobs: Iterable[torch.Tensor]) -> int:
    """Give each identity BN (what :func:`student_from_onnx` leaves for a folded one) the mean and
    variance of its input over ``blobs``, with a scale and shift that keep the eval-mode function:
    ``(z - m) / sqrt(v + eps) * sqrt(v + eps) + (b + m) = z + b``. Training then starts from batch
    statistics close to the running ones, instead of re-normalising a conv that already holds its
    scale. Returns the number of BNs changed."""
    targets = {
        name: m
        for name, m in net.named_modules()
        if isinstance(m, nn.BatchNorm2d)
        and torch.all(m.weight == 1)
        and torch.all(m.running_mean == 0)
        and torch.all(m.running_var == 1.0 - m.eps)
    }
    sums: dict[str, list[torch.Tensor | int]] = {}

    def hook(name: str):
        def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            z = inputs[0].detach().double().transpose(0, 1).flatten(1)
            acc = sums.setdefault(name, [0.0, 0.0, 0])
            acc[0] = acc[0] + z.sum(1)
            acc[1] = acc[1] + (z * z).sum(1)
            acc[2] += z.shape[1]

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in targets.items()]
    was_training = net.training
    net.eval()
    try:
        for blob in blobs:
            net(blob)
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    for name, (s, ss, count) in sums.items():
        m = targets[name]
        mean = s / count
        var = (ss / count - mean * mean).clamp_min(0.0)
        m.running_mean.copy_(mean.float())
        m.running_var.copy_(var.float())
        m.weight.copy_(torch.sqrt(var + m.eps).float())
        m.bias.add_(mean.float())
    return len(sums)
