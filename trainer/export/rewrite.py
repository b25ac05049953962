"""Export-time graph rewrites that keep the function and make ONNX Runtime faster on the CPU.

Each rewrite keeps every weight value (the file's parameter count does not change) and is tested to
leave the outputs equal within 1e-4 on real photos (tests/trainer/test_export.py).

**Grouped convolutions -> one dense convolution per group.** Nano-B's grouped SSH convs (groups = 2,
DESIGN §2) are neither depthwise nor dense, and ONNX Runtime's CPU provider runs them outside its
blocked NCHWc kernels (an im2col + GEMM per group); in the profile of a block-aligned pruned Nano-B
they were 20 % of the time at 320x256 (docs/BENCHMARKS.md). ``Split -> Conv per group -> Concat`` is
the same function with the same weights (the parameter count of the file does not change), and each
dense conv runs in NCHWc: measured 7-9 % faster end to end on ONNX Runtime, 4-5 % slower on OpenVINO
(whose grouped kernel is good), which is why the OpenVINO IR is written from the graph before this
rewrite (``exporter.export_model``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], retired: set[str]) -> None:
    """Install ``nodes`` as the graph's nodes and drop the ``retired`` initializers nothing reads now."""
    del graph.node[:]
    graph.node.extend(nodes)
    still_used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name not in retired or t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def split_grouped_convs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every grouped, non-depthwise ``Conv`` with initializer weights as Split + one Conv per
    group + Concat (in place); returns ``(model, number rewritten)``. Depthwise convs are left alone:
    ONNX Runtime has blocked kernels for them."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    retired: set[str] = set()
    count = 0
    for node in graph.node:
        attrs = _attrs(node)
        groups = int(attrs.get("group", 1))
        weight = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is None or groups == 1 or weight.dims[1] == 1:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        has_bias = len(node.input) > 2 and node.input[2] in inits
        b = numpy_helper.to_array(inits[node.input[2]]) if has_bias else None
        cin, cout = w.shape[1], w.shape[0] // groups
        name = node.name or node.output[0]
        sizes = numpy_helper.from_array(np.full(groups, cin, dtype=np.int64), f"{name}/split_sizes")
        graph.initializer.append(sizes)
        parts = [f"{name}/in{g}" for g in range(groups)]
        nodes.append(
            helper.make_node("Split", [node.input[0], sizes.name], parts, axis=1, name=f"{name}/split")
        )
        dense = {k: v for k, v in attrs.items() if k != "group"}
        outs = []
        for g in range(groups):
            wg = numpy_helper.from_array(np.ascontiguousarray(w[g * cout : (g + 1) * cout]), f"{name}/w{g}")
            graph.initializer.append(wg)
            inputs = [parts[g], wg.name]
            if b is not None:
                bg = numpy_helper.from_array(
                    np.ascontiguousarray(b[g * cout : (g + 1) * cout]), f"{name}/b{g}"
                )
                graph.initializer.append(bg)
                inputs.append(bg.name)
            outs.append(f"{name}/out{g}")
            nodes.append(helper.make_node("Conv", inputs, [outs[-1]], name=f"{name}/g{g}", **dense))
        nodes.append(helper.make_node("Concat", outs, list(node.output), axis=1, name=f"{name}/concat"))
        retired.update(node.input[1:3])
        count += 1
    _replace_nodes(graph, nodes, retired)
    return model, count


def merge_parallel_convs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Merge dense ``Conv`` nodes that read the same tensor with the same geometry into one ``Conv``
    whose output channels are theirs stacked, followed by a ``Split`` back into the original outputs
    (in place); returns ``(model, convs removed)``.

    Where Nano-B has them: the class / box / landmark heads of each level (1x1 convs of 4, 8 and 20
    channels, too narrow for ONNX Runtime's blocked kernels, 32 together) and the first BiFPN cell's two
    projections of C4 and of C5. One wider GEMM instead of several narrow ones, and fewer kernels.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    families: dict[tuple, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        attrs = _attrs(node)
        if int(attrs.get("group", 1)) != 1 or node.input[1] not in inits:
            continue
        if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
            continue
        geometry = tuple(sorted((k, str(v)) for k, v in attrs.items()))
        shape = tuple(inits[node.input[1]].dims[1:])
        families.setdefault((node.input[0], geometry, shape), []).append(node)
    # Keyed by output name: protobuf may hand out a new wrapper object per access, so id() is no key.
    merged: dict[str, list[onnx.NodeProto]] = {}  # first conv's output -> replacement nodes
    dropped: set[str] = set()
    retired: set[str] = set()
    removed = 0
    for members in families.values():
        if len(members) < 2:
            continue
        first = members[0]
        name = first.name or first.output[0]
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in members]
        biases = [
            numpy_helper.to_array(inits[n.input[2]])
            if len(n.input) > 2 and n.input[2]
            else np.zeros(w.shape[0], dtype=w.dtype)
            for n, w in zip(members, weights, strict=True)
        ]
        w = numpy_helper.from_array(np.concatenate(weights, axis=0), f"{name}/merged_w")
        b = numpy_helper.from_array(np.concatenate(biases, axis=0), f"{name}/merged_b")
        sizes = numpy_helper.from_array(
            np.array([x.shape[0] for x in weights], np.int64), f"{name}/merged_sizes"
        )
        graph.initializer.extend([w, b, sizes])
        out = f"{name}/merged"
        conv = helper.make_node("Conv", [first.input[0], w.name, b.name], [out], name=out, **_attrs(first))
        split = helper.make_node(
            "Split", [out, sizes.name], [n.output[0] for n in members], axis=1, name=f"{out}/split"
        )
        merged[first.output[0]] = [conv, split]
        dropped.update(n.output[0] for n in members[1:])
        for n in members:
            retired.update(n.input[1:3])
        removed += len(members) - 1
    if not removed:
        return model, 0
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.output[0] in merged:
            nodes.extend(merged[node.output[0]])
        elif node.output[0] not in dropped:
            nodes.append(node)
    _replace_nodes(graph, nodes, retired)
    return model, removed
