"""A numpy engine for the ONNX sub-set edge-smsp's CNNs export: eval and train forward, backward, SGD.

A graph is a list of nodes `{"op", "inputs", "outputs", "attrs"}` in topological order (ONNX names; "" is an
absent optional input) and the initializers by name (`params`). A *cut* is a tensor that alone carries
everything from the nodes before it to the nodes after it (a block boundary, or the graph input): the nodes
after it are the *tail*, trained on the cut's cached values; the nodes up to it are the frozen *front*.
"""

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import RuntimeToolError, one_line
from .model import import_numpy
from .ops import OPS, PARAMETER_INPUTS, STATISTIC_INPUTS

np = import_numpy()

# SGD as the host fine-tunes (edge_smsp.train): momentum 0.9, decay on kernels and matrices only.
SGD_MOMENTUM = 0.9
SGD_WEIGHT_DECAY = 5e-5


# Inputs each operator takes (at least the first `low` of them non-empty), and its attributes' kinds.
INPUT_COUNTS = {
    "Conv": (2, 3), "BatchNormalization": (5, 5), "Relu": (1, 1), "Clip": (1, 3), "Sigmoid": (1, 1),
    "Add": (2, 2), "Mul": (2, 2), "GlobalAveragePool": (1, 1), "Flatten": (1, 1), "Reshape": (2, 2),
    "Identity": (1, 1), "Dropout": (1, 3), "Gemm": (2, 3), "MatMul": (2, 2), "MaxPool": (1, 1),
}  # fmt: skip
# (length, minimum) of integer-list attributes; (minimum, maximum) of integer ones.
_INT_LIST_ATTRS = {"kernel_shape": (2, 1), "strides": (2, 1), "dilations": (2, 1), "pads": (4, 0)}
_INT_ATTRS = {"group": (1, None), "transA": (0, 1), "transB": (0, 1), "allowzero": (0, 1), "ceil_mode": (0, 1),
              "axis": (None, None)}  # fmt: skip
_NUMBER_ATTRS = ("epsilon", "momentum", "alpha", "beta", "min", "max")


def node_label(index: int, node: Any) -> str:
    """'node 3 'name' (Conv)' for messages: where in graph.json's nodes a problem lies."""
    name = node.get("name") if isinstance(node, dict) else None
    op = node.get("op") if isinstance(node, dict) else None
    return (
        f"node {index}"
        + (f" {name!r}" if isinstance(name, str) and name else "")
        + (f" ({op})" if isinstance(op, str) and op else "")
    )


def _shape_text(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(side) for side in shape) + "]"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any, low: Optional[int] = None, high: Optional[int] = None) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (low is None or value >= low)
        and (high is None or value <= high)
    )


def _attrs_problem(node: Dict[str, Any]) -> Optional[str]:
    """What is wrong with a node's attributes as the numpy engine reads them (None: nothing)."""
    attrs = node.get("attrs", {})
    if not isinstance(attrs, dict):
        return f"field 'attrs' must be an object, got {_shown(attrs)}"
    for name, value in attrs.items():
        if name in _INT_LIST_ATTRS:
            length, low = _INT_LIST_ATTRS[name]
            if not isinstance(value, list) or len(value) != length or not all(_is_int(v, low) for v in value):
                return f"attribute {name!r} must be {length} integers of at least {low}, got {_shown(value)}"
        elif name in _INT_ATTRS:
            low, high = _INT_ATTRS[name]
            if not _is_int(value, low, high):
                bounds = (
                    ""
                    if low is None
                    else (f" from {low} to {high}" if high is not None else f" of at least {low}")
                )
                return f"attribute {name!r} must be an integer{bounds}, got {_shown(value)}"
        elif name in _NUMBER_ATTRS and (
            not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value)
        ):
            return f"attribute {name!r} must be a number, got {_shown(value)}"
        elif name == "epsilon" and not (0 < value < 1):  # BatchNorm divides by sqrt(var + epsilon)
            return f"attribute 'epsilon' must be a small positive number, got {_shown(value)}"
    if node["op"] == "MaxPool" and "kernel_shape" not in attrs:
        return "attribute 'kernel_shape' is missing"
    return None


def nodes_problem(nodes: Any, params: Dict[str, Any], input_name: str) -> Optional[str]:
    """What makes graph.json's `nodes` unusable by the numpy engine (None: nothing found): each node's fields
    and attributes, its input count, and every tensor it reads computed before it or a parameter."""
    if not isinstance(nodes, list) or not nodes:
        return f"'nodes' must be a non-empty list of nodes, got {_shown(nodes)}"
    for index, node in enumerate(nodes):
        label = node_label(index, node)
        if not isinstance(node, dict):
            return f"{label} must be an object with op, inputs, outputs and attrs, got {_shown(node)}"
        if not isinstance(node.get("op"), str) or not node.get("op"):
            return f"{label}: field 'op' must be an operator name, got {_shown(node.get('op'))}"
        for key in ("inputs", "outputs"):
            value = node.get(key)
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                return f"{label}: field {key!r} must be a list of tensor names, got {_shown(value)}"
        if not node["outputs"] or not node["outputs"][0]:
            return f"{label}: field 'outputs' names no tensor"
    unknown = sorted({node["op"] for node in nodes} - set(OPS))
    if unknown:
        return f"the graph has operators the numpy engine lacks: {', '.join(unknown)}"
    available = {input_name} | set(params)
    for index, node in enumerate(nodes):
        label = node_label(index, node)
        low, high = INPUT_COUNTS[node["op"]]
        inputs = node["inputs"]
        if not low <= len(inputs) <= high:
            takes = str(low) if low == high else f"{low} to {high}"
            return f"{label}: field 'inputs' has {len(inputs)} tensor(s); {node['op']} takes {takes}"
        problem = _attrs_problem(node)
        if problem:
            return f"{label}: {problem}"
        for position, name in enumerate(inputs):
            if not name and position < low:
                return f"{label}: input {position} is empty; {node['op']} needs it"
            if name and name not in available:
                return f"{label} reads {name!r}, which no node before it computes and no parameter holds"
        available.update(node["outputs"])
    return None


class Graph:
    """Nodes in topological order, their parameters, one image input and one logits output."""

    def __init__(
        self, nodes: List[Dict[str, Any]], params: Dict[str, Any], input_name: str, output_name: str
    ):
        problem = nodes_problem(nodes, params, input_name)
        if problem:
            raise RuntimeToolError(problem)
        self.nodes = nodes
        self.params = params
        self.input_name = input_name
        self.output_name = output_name
        self.producer = {}  # type: Dict[str, int]
        for index, node in enumerate(nodes):
            for name in node["outputs"]:
                self.producer[name] = index
        if output_name not in self.producer:
            raise RuntimeToolError(f"no node produces the graph output {output_name!r}")

    # -- structure ------------------------------------------------------------------------------------------

    def first_failure(self, x: Any) -> Tuple[Optional[str], Any]:
        """Run every node in eval mode on the input `x`: (what the first node that cannot run says, None), or
        (None, the output) when all ran. A bundle is tried on a blank image before any image is read."""
        env = {self.input_name: x}
        last_use = self._last_use(range(len(self.nodes)), self.output_name)
        with np.errstate(all="ignore"):
            for index, node in enumerate(self.nodes):
                inputs = []  # type: List[Any]
                try:
                    inputs = [self._value(name, env) for name in node["inputs"]]
                    outputs, _ = OPS[node["op"]][0](node, inputs, False)
                except Exception as error:  # a shape or attribute graph.json got wrong: name the node
                    shapes = ", ".join(_shape_text(np.shape(value)) for value in inputs)
                    problem = f"{node_label(index, node)} cannot run on inputs of shape {shapes}"
                    return f"{problem}: {one_line(error)}", None
                for name, value in zip(node["outputs"], outputs):
                    env[name] = value
                for name in node["inputs"]:
                    if last_use.get(name) == index and name != self.output_name:
                        env.pop(name, None)
        return None, env[self.output_name]

    def split(self, cut: str) -> Tuple[List[int], List[int]]:
        """(front, tail) node indices for a cut tensor; an error when the tail needs anything else of the front."""
        if cut == self.input_name:
            position = -1
        elif cut in self.producer:
            position = self.producer[cut]
        else:
            raise RuntimeToolError(f"cut tensor {cut!r} is not in the graph")
        front, tail = list(range(position + 1)), list(range(position + 1, len(self.nodes)))
        available = {cut}
        for index in tail:
            node = self.nodes[index]
            for name in node["inputs"]:
                if name and name not in available and name not in self.params:
                    raise RuntimeToolError(
                        f"cut tensor {cut!r} is not a block boundary: {node['op']} after it reads {name!r}"
                    )
            available.update(node["outputs"])
        return front, tail

    def trainable(self, tail: Iterable[int]) -> List[str]:
        """The parameters (weights, biases, BN scales and shifts) of the parameterised nodes in `tail`."""
        names = []  # type: List[str]
        for index in tail:
            node = self.nodes[index]
            for position in PARAMETER_INPUTS.get(node["op"], ()):
                if position < len(node["inputs"]):
                    name = node["inputs"][position]
                    if name in self.params and name not in names:
                        names.append(name)
        return names

    def batchnorms(self, indices: Optional[Iterable[int]] = None) -> List[int]:
        indices = range(len(self.nodes)) if indices is None else indices
        return [index for index in indices if self.nodes[index]["op"] == "BatchNormalization"]

    # -- forward and backward -------------------------------------------------------------------------------

    def forward(
        self,
        feeds: Dict[str, Any],
        indices: Sequence[int],
        target: str,
        training: bool = False,
        keep: bool = False,
    ) -> Tuple[Any, Dict[int, Any]]:
        """Run nodes `indices` from `feeds`; returns `target`'s value and, per node, its cache (all nodes' with
        `keep`, else only the batch statistics of train-mode BatchNormalization)."""
        env = dict(feeds)
        caches = {}  # type: Dict[int, Any]
        last_use = self._last_use(indices, target)
        with np.errstate(over="ignore", under="ignore"):
            for index in indices:
                node = self.nodes[index]
                forward = OPS[node["op"]][0]
                inputs = [self._value(name, env) for name in node["inputs"]]
                outputs, cache = forward(node, inputs, training)
                for name, value in zip(node["outputs"], outputs):
                    env[name] = value
                if keep:
                    caches[index] = cache
                elif training and node["op"] == "BatchNormalization":
                    caches[index] = (None, None, None, None, cache[4])
                if not keep:
                    for name in node["inputs"]:
                        if last_use.get(name) == index and name != target:
                            env.pop(name, None)
        if target not in env:
            raise RuntimeToolError(f"tensor {target!r} was not computed")
        return env[target], caches

    def backward(
        self, tail: Sequence[int], caches: Dict[int, Any], target: str, grad: Any, wanted: Sequence[str]
    ) -> Dict[str, Any]:
        """Gradients of the parameters `wanted` from the gradient of `target`, through the tail's caches."""
        grads = {target: grad}  # type: Dict[str, Any]
        wanted_set = set(wanted)
        needed = self._needs_gradient(tail, wanted_set)
        result = {}  # type: Dict[str, Any]
        with np.errstate(over="ignore", under="ignore"):
            for index in reversed(tail):
                node = self.nodes[index]
                outgoing = [grads.pop(name, None) for name in node["outputs"]]
                if outgoing[0] is None:
                    continue
                needs = [bool(name) and (name in wanted_set or name in needed) for name in node["inputs"]]
                if not any(needs):
                    continue
                incoming = OPS[node["op"]][1](node, caches.pop(index), outgoing, needs)
                for name, need, value in zip(node["inputs"], needs, incoming):
                    if not need or value is None:
                        continue
                    store = result if name in wanted_set else grads
                    store[name] = value if name not in store else store[name] + value
        return result

    def _needs_gradient(self, tail: Sequence[int], wanted: set) -> set:
        """Activations in the tail that depend on a wanted parameter (their gradient leads to one)."""
        needed = set()  # type: set
        for index in tail:
            node = self.nodes[index]
            if any(name in wanted or name in needed for name in node["inputs"]):
                needed.update(node["outputs"])
        return needed

    def _value(self, name: str, env: Dict[str, Any]) -> Any:
        if not name:
            return None
        if name in env:
            return env[name]
        if name in self.params:
            return self.params[name]
        raise RuntimeToolError(f"tensor {name!r} is neither computed nor a parameter")

    def _last_use(self, indices: Sequence[int], target: str) -> Dict[str, int]:
        last = {}  # type: Dict[str, int]
        for index in indices:
            for name in self.nodes[index]["inputs"]:
                last[name] = index
        return last

    # -- statistics -----------------------------------------------------------------------------------------

    def update_running(self, caches: Dict[int, Any]) -> None:
        """Running BN statistics updated from train-mode batch statistics (ONNX momentum: the kept share)."""
        for index, cache in caches.items():
            node = self.nodes[index]
            if node["op"] != "BatchNormalization" or cache is None:
                continue
            momentum = float(node.get("attrs", {}).get("momentum", 0.9))
            for position, batch in zip(STATISTIC_INPUTS["BatchNormalization"], cache[4]):
                running = self.params[node["inputs"][position]]
                running *= momentum
                running += (1.0 - momentum) * batch


def cross_entropy(logits: Any, labels: Any) -> Tuple[float, Any]:
    """Mean softmax cross-entropy and its gradient w.r.t. the logits."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    count = len(labels)
    loss = -float(log_probs[np.arange(count), labels].mean())
    grad = np.exp(log_probs)
    grad[np.arange(count), labels] -= 1.0
    return loss, (grad / count).astype(np.float32)


class SGD:
    """torch.optim.SGD with momentum and decoupled-by-group weight decay (kernels and matrices only)."""

    def __init__(self, params: Dict[str, Any], names: Sequence[str], momentum: float = SGD_MOMENTUM,
                 weight_decay: float = SGD_WEIGHT_DECAY) -> None:  # fmt: skip
        self.params = params
        self.names = list(names)
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.buffers = {}  # type: Dict[str, Any]

    def step(self, grads: Dict[str, Any], lr: float) -> None:
        for name in self.names:
            grad = grads.get(name)
            if grad is None:
                continue
            param = self.params[name]
            if param.ndim > 1 and self.weight_decay:
                grad = grad + self.weight_decay * param
            buffer = self.buffers.get(name)
            if buffer is None:
                buffer = self.buffers[name] = np.array(grad, dtype=np.float32)
            else:
                buffer *= self.momentum
                buffer += grad
            param -= np.float32(lr) * buffer


def cosine_lr(base: float, step: int, total: int) -> float:
    """The host's LambdaLR: base * (1 + cos(pi * step / total)) / 2."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / total))


def default_lr(batch_size: int) -> float:
    """The host's SGD default (edge_smsp.train.default_lr): 0.01 x batch / 32, for batches from 32 to 128."""
    return 0.01 * min(max(batch_size, 32), 128) / 32
