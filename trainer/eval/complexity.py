"""Model cost: parameter count and multiply-accumulates (MACs) at a stated input size.

MACs count convolutions (deformable ones at the cost of their sampling convolution, bilinear
sampling left out) and fully connected layers, the convention of the face-detection papers; element-
wise ops, activations, pooling and resizing are not counted. One MAC = one multiply plus one add.

- PyTorch: forward hooks on ``nn.Conv2d`` / ``nn.Linear`` (and modules that run a ``regular_conv``'s
  weights functionally, as the DCNv2 blocks do) during one forward pass on zeros.
- ONNX: every ``Conv`` / ``ConvTranspose`` / ``Gemm`` / ``MatMul`` node's output shape is read from
  one ONNX Runtime pass at that size (shape inference alone cannot see through every dynamic graph).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.errors import ModelError


def count_macs(model: Any, width: int, height: int) -> int:
    """MACs of one ``width`` x ``height`` image through ``model`` (an ``nn.Module`` or an
    ``onnx.ModelProto``)."""
    if hasattr(model, "graph") and hasattr(model, "opset_import"):
        return _onnx_macs(model, width, height)
    return _torch_macs(model, width, height)


def count_parameters(model: Any) -> int:
    """Parameters: ``numel`` of an ``nn.Module``'s parameters, or for ONNX the weights as stored in the
    file (``trainer.export.metadata.parameter_count``, the edge's rule) plus weights that other
    exporters keep in ``Constant`` nodes (some peer models)."""
    if hasattr(model, "graph") and hasattr(model, "opset_import"):
        from onnx import numpy_helper

        from edge.model import ONNX_WEIGHT_TYPES
        from trainer.export.metadata import parameter_count

        total = parameter_count(model)
        for node in model.graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.t.data_type in ONNX_WEIGHT_TYPES and attr.t.dims:
                        total += int(numpy_helper.to_array(attr.t).size)
        return total
    return sum(p.numel() for p in model.parameters())


def _torch_macs(model: Any, width: int, height: int) -> int:
    import torch
    from torch import nn

    total = 0

    def conv_hook(kernel: nn.Conv2d) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            nonlocal total
            k = kernel.weight.shape[1] * kernel.weight.shape[2] * kernel.weight.shape[3]
            total += int(out.numel() // out.shape[0]) * int(k)

        return hook

    def linear_hook(m: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += int(out.numel() // out.shape[0]) * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook(m)))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(getattr(m, "regular_conv", None), nn.Conv2d):
            # DCN: the sampling conv's weights are applied functionally, never through its forward
            handles.append(m.register_forward_hook(conv_hook(m.regular_conv)))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, height, width))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def _onnx_macs(proto: Any, width: int, height: int) -> int:
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: tuple(t.dims) for t in graph.initializer}
    consts = {
        n.output[0]: tuple(numpy_helper.to_array(a.t).shape)
        for n in graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    }
    nodes = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    existing = {o.name for o in graph.output}
    wanted = []
    for n in nodes:
        names = [n.output[0], *n.input[:2]]
        wanted += [x for x in names if x and x not in inits and x not in consts and x not in existing]
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    graph_inputs = {i.name for i in probe.graph.input}
    for name in dict.fromkeys(wanted):
        if name not in graph_inputs:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        feed = {inp.name: np.zeros((1, 3, height, width), dtype=np.float32)}
        outs = sess.run(None, feed)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot count MACs at {width}x{height}: {reason}") from exc
    shapes = {o.name: tuple(v.shape) for o, v in zip(sess.get_outputs(), outs, strict=True)}
    shapes[inp.name] = (1, 3, height, width)
    shapes.update(inits)
    shapes.update(consts)
    total = 0
    for n in nodes:
        out = shapes[n.output[0]]
        if n.op_type == "Conv":
            w = shapes[n.input[1]]
            total += int(np.prod(out[1:])) * int(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose":
            # every input pixel scatters a full kernel into the output
            x, w = shapes[n.input[0]], shapes[n.input[1]]
            total += int(np.prod(x[1:])) * int(np.prod(w[1:]))
        else:
            a = shapes[n.input[0]]
            transposed = any(a_.name == "transA" and a_.i for a_ in n.attribute)
            k = a[-2] if transposed else a[-1]
            total += int(np.prod(out[1:] if len(out) > 2 else out)) * int(k)
    return total
