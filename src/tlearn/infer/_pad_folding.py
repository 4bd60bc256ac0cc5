"""Static padding folded into the convolutions of a graph whose images have a fixed size.

timm's `Conv2dSame` (TF "same" padding, Lite0's stride-2 convolutions) exports as a `Pad` whose
amounts are computed from the input's shape at run time (Shape, Gather, Sub, Ceil, ...). With a
symbolic batch, onnxruntime cannot fold that arithmetic; its quantizer then leaves each `Pad` in
fp32 between a Dequantize and a Quantize. Here the amounts are computed once (the image size is
fixed in the graph's input), and each zero-constant `Pad` whose only consumer is a `Conv` becomes
that convolution's own (possibly asymmetric) `pads` attribute, which onnxruntime's kernels and
quantizer take as they are. The arithmetic left without consumers is removed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SPATIAL = 2  # Pad amounts of an NCHW tensor: [N, C, H, W] begins, then ends; Conv takes [H, W] only


def fold_pads(source: Path, target: Path) -> int:
    """Write `source` with static pads, folded into their convolutions, to `target`; return the
    number of `Pad` nodes folded. A graph whose image size is not fixed is copied unchanged."""
    import onnx

    model = onnx.load(str(source))
    folded = 0
    if _fixed_image_size(model):
        amounts = _evaluate(model, [node.input[index] for node in _pads(model) for index in (1, 2)
                                    if len(node.input) > index and node.input[index]])
        for node in _pads(model):
            _make_static(model, node, amounts)
        folded = sum(_fold(model, node) for node in _pads(model))
        _drop_unused(model)
        onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return folded


def _pads(model) -> list:
    return [node for node in model.graph.node if node.op_type == "Pad"]


def _fixed_image_size(model) -> bool:
    dims = [model_input.type.tensor_type.shape.dim for model_input in model.graph.input]
    return len(dims) == 1 and len(dims[0]) == 4 and all(dim.HasField("dim_value") for dim in dims[0][1:])


def _evaluate(model, names: list[str]) -> dict[str, np.ndarray]:
    """The values of tensors `names` (which do not depend on the pixels or the batch), computed by
    onnxruntime on one blank image."""
    import onnx
    import onnxruntime as ort

    constants = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    wanted = [name for name in dict.fromkeys(names) if name not in constants]
    if not wanted:
        return constants
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in wanted)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    image = session.get_inputs()[0]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type)
    values = session.run(wanted, {image.name: np.zeros([1, *image.shape[1:]], dtype=dtype)})
    return {**constants, **dict(zip(wanted, values))}


def _make_static(model, node, amounts: dict[str, np.ndarray]) -> None:
    """`node`'s amounts (and fill value) as initializers: its shape arithmetic loses its consumer."""
    import onnx

    for index, suffix in ((1, "static_pads"), (2, "static_value")):
        if len(node.input) > index and node.input[index]:
            name = f"{node.output[0]}_{suffix}"
            if not any(tensor.name == name for tensor in model.graph.initializer):
                model.graph.initializer.append(onnx.numpy_helper.from_array(amounts[node.input[index]], name))
            node.input[index] = name


def _fold(model, pad) -> bool:
    """Move a zero-constant spatial `pad` into the `Conv` that alone consumes it; False when it cannot."""
    import onnx

    conv = _only_conv_consumer(model, pad)
    constants = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    amounts = constants.get(pad.input[1])
    value = constants.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
    mode = {attribute.name: attribute.s for attribute in pad.attribute}.get("mode", b"constant")
    if (conv is None or amounts is None or value is None or np.any(value != 0) or len(pad.input) > 3
            or mode != b"constant" or amounts.shape != (2 * (2 + SPATIAL),) or np.any(amounts < 0)
            or np.any(amounts[[0, 1, 2 + SPATIAL, 3 + SPATIAL]] != 0)):  # batch or channels padded
        return False
    conv_attributes = {attribute.name: attribute for attribute in conv.attribute}
    if conv_attributes.get("auto_pad", onnx.helper.make_attribute("auto_pad", "NOTSET")).s != b"NOTSET":
        return False
    before = np.array(conv_attributes["pads"].ints) if "pads" in conv_attributes else np.zeros(2 * SPATIAL, np.int64)
    added = np.concatenate([amounts[2:2 + SPATIAL], amounts[4 + SPATIAL:]])
    if "pads" in conv_attributes:
        conv.attribute.remove(conv_attributes["pads"])
    conv.attribute.append(onnx.helper.make_attribute("pads", [int(amount) for amount in before + added]))
    conv.input[0] = pad.input[0]
    model.graph.node.remove(pad)
    return True


def _only_conv_consumer(model, pad):
    """The `Conv` that reads `pad`'s output as its image and is its only reader, else None."""
    consumers = [node for node in model.graph.node if pad.output[0] in node.input]
    if (len(consumers) != 1 or consumers[0].op_type != "Conv" or list(consumers[0].input).count(pad.output[0]) != 1
            or consumers[0].input[0] != pad.output[0] or pad.output[0] in {out.name for out in model.graph.output}):
        return None
    return consumers[0]


def _drop_unused(model) -> None:
    """Remove the nodes (repeatedly) and initializers whose outputs nothing reads."""
    graph = model.graph
    while True:
        read = _read_names(graph) | {output.name for output in graph.output}
        unused = [node for node in graph.node if not any(name in read for name in node.output if name)]
        if not unused:
            break
        for node in unused:
            graph.node.remove(node)
    read = _read_names(graph)
    for tensor in [tensor for tensor in graph.initializer if tensor.name not in read]:
        graph.initializer.remove(tensor)
    produced = {name for node in graph.node for name in node.output}
    for info in [info for info in graph.value_info if info.name not in produced]:
        graph.value_info.remove(info)


def _read_names(graph) -> set[str]:
    """Every tensor name a node reads, inside subgraphs (If, Loop) too."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                names |= _read_names(subgraph) | {output.name for output in subgraph.output}
    return names
