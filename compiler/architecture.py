"""What kind of network an ONNX graph is, read from its operators, so quantization can fit it.

Transformer blocks are recognised by their parts: attention (a Softmax fed by a MatMul whose output
feeds another MatMul), layer norms (LayerNormalization, or the ReduceMean-Sub-Pow-ReduceMean-Sqrt-Div
decomposition older exporters write), and GELU (Gelu, or the Erf form). Those parts are where static
INT8 wrecks a trained encoder (one outlier channel sets a LayerNorm's range), so the transformer
schemes keep them and the residual Adds in float and quantize only the MatMul/Gemm weights' inputs.

Detectors (YOLO-style) are recognised by their decode head: walking back from the graph outputs
through everything but convolutions (the DFL's fixed 1x1 conv after its Softmax included) finds
a Sigmoid (class scores) and Concats (scales, box + class) fed by several convolutions. That
subgraph turns raw head outputs into pixel boxes (anchor grid offsets, strides up to 32): a per-tensor
INT8 scale over coordinates up to 320 px moves every box, so detector schemes keep it in float and
quantize the backbone and neck.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Operators a transformer scheme keeps in float: normalisation, attention probabilities, the
# activation and the residual stream, whose outliers a per-tensor INT8 scale cannot hold.
FLOAT_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "Softmax", "Gelu",
             "FastGelu", "BiasGelu", "Erf", "Add", "Pow", "Sqrt", "Div", "ReduceMean", "Sub")
QUANTIZED_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class Architecture:
    kind: str  # "transformer" | "detector" | "cnn" | "mlp" | "other"
    attention_blocks: int = 0
    layer_norms: int = 0
    gelus: int = 0
    convolutions: int = 0
    matmuls: int = 0
    float_nodes: tuple[str, ...] = field(default=(), repr=False)  # node names the kind's scheme keeps in float
    head_nodes: int = 0  # detectors: nodes in the decode head

    @property
    def transformer(self) -> bool:
        return self.kind == "transformer"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "attention_blocks": self.attention_blocks, "layer_norms": self.layer_norms,
                "gelus": self.gelus, "convolutions": self.convolutions, "matmuls": self.matmuls,
                **({"detection_head_nodes": self.head_nodes} if self.head_nodes else {})}


def _walk(graph: Any) -> list[Any]:
    """Every node, including those inside If/Loop bodies."""
    nodes = []
    for n in graph.node:
        nodes.append(n)
        for attr in n.attribute:
            if attr.g is not None and attr.g.node:
                nodes.extend(_walk(attr.g))
            for g in attr.graphs:
                nodes.extend(_walk(g))
    return nodes


def _decode_head(graph: Any, producer: dict[str, Any]) -> list[Any]:
    """Nodes reached backwards from the outputs without crossing a convolution (except one fed by a
    Softmax, possibly through a Transpose: YOLOv8's DFL integral), and the convolutions that feed them."""
    head: dict[str, Any] = {}
    feeding: set[str] = set()
    stack = [o.name for o in graph.output]
    while stack:
        n = producer.get(stack.pop())
        if n is None or id(n) in head:
            continue
        if n.op_type in ("Conv", "ConvTranspose"):
            src = producer.get(n.input[0])
            src = producer.get(src.input[0]) if src is not None and src.op_type == "Transpose" else src
            if src is None or src.op_type != "Softmax":
                feeding.add(n.output[0])
                continue
        head[id(n)] = n
        stack.extend(n.input)
    nodes = list(head.values())
    ops = {n.op_type for n in nodes}
    if len(feeding) >= 2 and {"Sigmoid", "Concat"} <= ops and not ops & {"MatMul", "Gemm"}:
        return nodes
    return []


def detect(path: Path) -> Architecture:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    nodes = _walk(model.graph)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)

    def upstream_op(tensor: str, wanted: str, depth: int = 4) -> bool:
        n = producer.get(tensor)
        while n is not None and depth > 0:
            if n.op_type == wanted:
                return True
            n = producer.get(n.input[0]) if n.input else None
            depth -= 1
        return False

    def downstream_op(tensor: str, wanted: str, depth: int = 3) -> bool:
        frontier = [tensor]
        for _ in range(depth):
            nxt = []
            for t in frontier:
                for c in consumers.get(t, []):
                    if c.op_type == wanted:
                        return True
                    nxt.extend(c.output)
            frontier = nxt
        return False

    ops = [n.op_type for n in nodes]
    attention = sum(1 for n in nodes if n.op_type == "Softmax" and upstream_op(n.input[0], "MatMul")
                    and downstream_op(n.output[0], "MatMul"))
    decomposed_ln = sum(1 for n in nodes if n.op_type == "ReduceMean" and producer.get(n.input[0]) is not None
                        and producer[n.input[0]].op_type == "Pow")
    layer_norms = sum(ops.count(o) for o in ("LayerNormalization", "SimplifiedLayerNormalization",
                                             "SkipLayerNormalization")) + decomposed_ln
    gelus = sum(ops.count(o) for o in ("Gelu", "FastGelu", "BiasGelu", "Erf"))
    convs = ops.count("Conv") + ops.count("ConvTranspose")
    matmuls = ops.count("MatMul") + ops.count("Gemm")
    head = _decode_head(model.graph, producer) if convs and not attention else []
    if attention and (layer_norms or gelus):
        kind = "transformer"
    elif head:
        kind = "detector"
    elif convs:
        kind = "cnn"
    elif matmuls:
        kind = "mlp"
    else:
        kind = "other"
    float_nodes = tuple(n.name for n in nodes if n.op_type in FLOAT_OPS and n.name) if kind == "transformer" else ()
    if kind == "detector":
        float_nodes = tuple(n.name for n in head if n.name)
    return Architecture(kind, attention, layer_norms, gelus, convs, matmuls, float_nodes, len(head))


# Operators that only an INT8 graph holds (QDQ pairs, QOperator kernels, dynamic quantization).
_INT8_MARKS = ("QuantizeLinear", "QLinear", "Integer", "DynamicQuantize", "QGemm", "QAttention")
_COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN")


class NothingQuantized(RuntimeError):
    """An INT8 candidate in which the quantizer changed no operator: it would ship FP32 labelled INT8."""


def _int8_ops(path: Path, fmt: str) -> int | None:
    """How many INT8 operators the artifact holds; None for formats not inspected (TFLite)."""
    if fmt == "onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return sum(1 for n in _walk(model.graph) if any(m in n.op_type for m in _INT8_MARKS))
    if fmt == "openvino":
        text = Path(path).read_text(errors="replace")
        return text.count('type="FakeQuantize"') + text.count('element_type="i8"') + text.count('element_type="u8"')
    return None


def check_quantized(path: Path, fmt: str, precision: str) -> None:
    """Raise NothingQuantized when an INT8 build left every operator in float (silero-vad's ONNX keeps
    its convolutions and LSTMs inside If bodies, which onnxruntime's quantizer does not enter)."""
    if "int8" not in precision or _int8_ops(path, fmt) != 0:
        return
    import onnx

    inner: list[str] = []
    if fmt == "onnx":
        model = onnx.load(str(path), load_external_data=False)
        bodies = [g for n in model.graph.node for a in n.attribute for g in [*([a.g] if a.g.node else []), *a.graphs]]
        inner = [n.op_type for g in bodies for n in _walk(g)]
    kinds = sorted({op for op in inner if op in _COMPUTE_OPS})
    why = (f": its {sum(op in _COMPUTE_OPS for op in inner)} compute operators ({', '.join(kinds)}) sit inside "
           "If/Loop bodies, which the quantizer does not enter") if kinds else ""
    raise NothingQuantized(f"the {precision} build quantized no operator{why}; it would be the FP32 model "
                           f"labelled {precision}")
