"""One neuron's compact model read as a computation graph: filters as nodes, weights as edges.

A pruned student is small enough to read whole: a few dozen filters in the
first layers, a handful after the consolidation. `neuron_graph` lays that out
as data (the figure is `viz.graph.neuron_graph_figure`):

* a **node** is a surviving filter (layer, channel) with its kernels: the
  full k x k x 3 conv of layer 0, or for separable layers the depthwise
  kernels it sees and its pointwise column;
* an **edge** joins a filter to a filter of the next layer (image channels to
  layer 0, the last layer to the response through the readout). Its
  `kernel` is the effective spatial filter of the connection, pointwise
  weight x the source's depthwise kernel, and its `weight` that kernel's sum:
  how much a uniform unit of the source's activation moves the target's
  pre-activation. Only connections the network really has are edges;
* with an image, each node carries its activation map, its `contribution`
  (gradient x activation summed over the map: exact for the last layer,
  where the readout is linear, a first-order estimate elsewhere) and its
  `ablation_delta`, the exact response change when that filter alone is
  switched off. `ablate` does the same for any set of filters.

Weights are read from `student.fused()`: BatchNorm folded into the conv before
it, so edges are the numbers the network multiplies by at inference. Layer 0
acts on mean-subtracted 0-255 pixels, as the student does internally.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from compactvision.inputs import as_model_input
from compactvision.interpret.attribution import eval_mode
from compactvision.models.student import CompactStudent

#: Names of the image's channels, the sources of layer 0's edges.
INPUT_CHANNELS = ("R", "G", "B")
#: Layer index used for the image's channels in edge endpoints.
INPUT_LAYER = -1

NodeId = tuple[int, int]
#: Filters ablated per batched pass when a graph is built with an image.
_ABLATION_CHUNK = 16


@dataclass
class GraphNode:
    """A surviving filter. `kernel` is its effective C_in x k x k filter (BN folded)."""

    layer: int
    channel: int
    kernel: np.ndarray
    bias: float
    depthwise: np.ndarray | None = None   # C_in x k x k, separable layers
    pointwise: np.ndarray | None = None   # C_in, separable layers (BN folded)
    readout_map: np.ndarray | None = None  # h x w readout weights, last layer only
    activation: np.ndarray | None = None   # h x w post-ReLU map for the given image
    contribution: float | None = None      # gradient x activation, summed over the map
    ablation_delta: float | None = None    # response(with this filter off) - response

    @property
    def id(self) -> NodeId:
        return (self.layer, self.channel)

    def thumbnail(self) -> np.ndarray:
        """A 2-D picture of the node: its activation map if an image was given, else its kernel summed over inputs."""
        return self.activation if self.activation is not None else self.kernel.sum(0)


@dataclass
class GraphEdge:
    """A connection src -> dst; layer -1 is the image, layer n_layers the response."""

    src: NodeId
    dst: NodeId
    kernel: np.ndarray               # effective spatial filter of the connection
    pointwise: float | None = None   # the pointwise weight itself, separable layers

    @property
    def weight(self) -> float:
        """Signed gain: the target's change for a uniform unit of the source."""
        return float(self.kernel.sum())

    @property
    def strength(self) -> float:
        """Largest possible gain for a unit-amplitude source (L1 norm of the kernel)."""
        return float(np.abs(self.kernel).sum())

    @property
    def sign(self) -> int:
        return int(np.sign(self.weight))


@dataclass
class NeuronGraph:
    """The pruned computation graph of one output neuron of a compact student."""

    nodes: list[GraphNode]
    edges: list[GraphEdge]
    n_layers: int
    neuron: int
    readout_bias: float
    response: float | None = None
    image_size: tuple[int, int] = (112, 112)
    _index: dict[NodeId, GraphNode] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {n.id: n for n in self.nodes}

    def node(self, layer: int, channel: int) -> GraphNode:
        return self._index[(layer, channel)]

    def layer_nodes(self, layer: int) -> list[GraphNode]:
        return [n for n in self.nodes if n.layer == layer]

    @property
    def output_id(self) -> NodeId:
        return (self.n_layers, 0)

    def edges_into(self, layer: int) -> list[GraphEdge]:
        return [e for e in self.edges if e.dst[0] == layer]


def _surviving(student: CompactStudent) -> list[list[int]]:
    return [torch.nonzero(layer.mask).flatten().tolist() for layer in student.layers]


def neuron_graph(student: CompactStudent, image: np.ndarray | torch.Tensor | None = None, neuron: int = 0,
                 ablations: bool = True) -> NeuronGraph:
    """The graph of `student`'s output `neuron`; with `image` (one H x W x C image), its activations too.

    `ablations=False` skips the per-node ablation deltas (one batched pass per
    layer) when only activations and contributions are wanted.
    """
    fused = student.fused()
    keep = _surviving(fused)
    arch = fused.arch
    h, w = arch.readout_hw
    c_last = arch.channels[-1]
    readout = fused.readout.weight[neuron].detach().view(h, w, c_last).permute(2, 0, 1).cpu().numpy()

    nodes: list[GraphNode] = []
    edges: list[GraphEdge] = []
    prev = list(range(len(INPUT_CHANNELS)))
    for i, layer in enumerate(fused.layers):
        pw = layer.pointwise.weight.detach().cpu().numpy()
        bias = layer.pointwise.bias.detach().cpu().numpy()
        dw = None if layer.depthwise is None else layer.depthwise.weight.detach().cpu().numpy()[:, 0]
        for c in keep[i]:
            if dw is None:
                node = GraphNode(i, c, kernel=pw[c], bias=float(bias[c]))
            else:
                col = pw[c, :, 0, 0]
                node = GraphNode(i, c, kernel=col[:, None, None] * dw, bias=float(bias[c]), depthwise=dw, pointwise=col)
            if i == len(fused.layers) - 1:
                node.readout_map = readout[c]
            nodes.append(node)
            src_layer = INPUT_LAYER if i == 0 else i - 1
            for j in prev:
                k = node.kernel[j]
                if np.any(k != 0):
                    edges.append(GraphEdge((src_layer, j), (i, c), kernel=k,
                                           pointwise=None if dw is None else float(pw[c, j, 0, 0])))
        prev = keep[i]
    out_id = (len(fused.layers), 0)
    for c in keep[-1]:
        if np.any(readout[c] != 0):
            edges.append(GraphEdge((len(fused.layers) - 1, c), out_id, kernel=readout[c]))

    graph = NeuronGraph(nodes, edges, len(fused.layers), neuron, float(fused.readout.bias[neuron].detach()),
                        image_size=tuple(arch.input_size))
    if image is not None:
        _add_activations(fused, graph, image, keep, ablations)
    return graph


def _add_activations(fused: CompactStudent, graph: NeuronGraph, image: np.ndarray | torch.Tensor,
                     keep: list[list[int]], ablations: bool) -> None:
    x = as_model_input(image, next(fused.parameters()).device)
    if len(x) != 1:
        raise ValueError(f"neuron_graph takes one image, got {len(x)}")
    with eval_mode(fused), torch.enable_grad():
        # Gradients to the activations only: no weight gradients, no backward through layer 0's conv.
        feats = fused.features(x.requires_grad_(True))
        out = fused.readout_from(feats[-1])[0, graph.neuron]
        grads = torch.autograd.grad(out, feats)
    graph.response = float(out.detach())
    for i, (f, g) in enumerate(zip(feats, grads)):
        contrib = (g * f).sum(dim=(2, 3))[0].detach().cpu().numpy()
        act = f[0].detach().cpu().numpy()
        for c in keep[i]:
            node = graph.node(i, c)
            node.activation = act[c]
            node.contribution = float(contrib[c])
    if not ablations:
        return
    with torch.no_grad():
        for i, f in enumerate(feats):
            # One copy of the layer's activation per filter, that filter zeroed; chunked to bound memory.
            for start in range(0, len(keep[i]), _ABLATION_CHUNK):
                chans = keep[i][start:start + _ABLATION_CHUNK]
                batch = f.detach().expand(len(chans), -1, -1, -1).clone()
                batch[torch.arange(len(chans)), torch.as_tensor(chans)] = 0.0
                ablated = _run_from(fused, i, batch)[:, graph.neuron].cpu().numpy()
                for c, r in zip(chans, ablated):
                    graph.node(i, c).ablation_delta = float(r) - graph.response


def _run_from(student: CompactStudent, layer: int, feat: torch.Tensor) -> torch.Tensor:
    """Responses from layer `layer`'s activation onwards."""
    for nxt in student.layers[layer + 1:]:
        feat = nxt(feat)
    return student.readout_from(feat)


def ablate(student: CompactStudent, image: np.ndarray | torch.Tensor, nodes: Iterable[NodeId], neuron: int = 0) -> float:
    """Response of `neuron` to `image` with the listed filters switched off (their masks zeroed on a copy).

    The caller's student is left as it was.
    """
    model = copy.deepcopy(student).eval()
    with torch.no_grad():
        for layer, channel in nodes:
            if not 0 <= layer < len(model.layers) or not 0 <= channel < model.layers[layer].out_channels:
                raise ValueError(f"no filter ({layer}, {channel}) in a student with channels {model.arch.channels}")
            model.layers[layer].mask[channel] = 0.0
        x = as_model_input(image, next(model.parameters()).device)
        return float(model(x)[0, neuron])


def expanded_weights(graph: NeuronGraph, src_layer: int, dst_layer: int) -> tuple[np.ndarray, list[int], list[int]]:
    """Effective linear gains from `src_layer`'s filters to `dst_layer`'s (rows dst, columns src).

    The product of the per-layer gain matrices (edge weights) in between:
    what a uniform unit of a source filter would do to a target filter if
    every ReLU on the way passed its input. A reading aid for skipping
    layers, not the network's exact (nonlinear) effect. Returns the matrix
    and the channel lists of its rows and columns; `dst_layer` may be
    `graph.n_layers` (the response).
    """
    if not INPUT_LAYER <= src_layer < dst_layer <= graph.n_layers:
        raise ValueError(f"need {INPUT_LAYER} <= src_layer < dst_layer <= {graph.n_layers}")

    def channels(layer: int) -> list[int]:
        if layer == INPUT_LAYER:
            return list(range(len(INPUT_CHANNELS)))
        if layer == graph.n_layers:
            return [0]
        return [n.channel for n in graph.layer_nodes(layer)]

    src_ch = channels(src_layer)
    total = np.eye(len(src_ch))
    for layer in range(src_layer + 1, dst_layer + 1):
        rows, cols = channels(layer), channels(layer - 1)
        r_index, c_index = {c: k for k, c in enumerate(rows)}, {c: k for k, c in enumerate(cols)}
        gain = np.zeros((len(rows), len(cols)))
        for e in graph.edges_into(layer):
            gain[r_index[e.dst[1]], c_index[e.src[1]]] = e.weight
        total = gain @ total
    return total, channels(dst_layer), src_ch


# ------------------------------------------------------------ reading it
def importance(node: GraphNode) -> float:
    """How much the response depends on a filter: |exact ablation change|, else |contribution|, else 0."""
    for v in (node.ablation_delta, node.contribution):
        if v is not None and np.isfinite(v):
            return abs(float(v))
    return 0.0


def most_important(graph: NeuronGraph) -> NodeId:
    """The filter the response depends on most (the last layer's first filter when nothing is measured)."""
    return max(graph.nodes, key=importance).id if any(importance(n) for n in graph.nodes) else graph.nodes[-1].id


@dataclass
class PathView:
    """The part of a graph worth reading first, and how much of it was left out."""

    graph: NeuronGraph
    hidden_nodes: int
    hidden_edges: int


def important_paths(graph: NeuronGraph, share: float = 0.9, max_per_layer: int = 8, edges_per_node: int = 3) -> PathView:
    """The filters that carry `share` of each layer's importance (at most `max_per_layer`), and their strongest links.

    Each layer's filters are ranked by `importance`; the smallest top set
    holding `share` of the layer's total is kept. Each kept filter keeps its
    `edges_per_node` strongest inputs among kept sources (the image channels
    always count as kept), and the last layer keeps its links to the response.
    Nothing is recomputed: the kept nodes carry their full-graph numbers.
    """
    kept: set[NodeId] = {(INPUT_LAYER, c) for c in range(len(INPUT_CHANNELS))} | {graph.output_id}
    for layer in range(graph.n_layers):
        nodes = sorted(graph.layer_nodes(layer), key=importance, reverse=True)
        scores = np.array([importance(n) for n in nodes])
        total = scores.sum()
        k = len(nodes) if total <= 0 else int(np.searchsorted(np.cumsum(scores) / total, share - 1e-12) + 1)
        kept |= {n.id for n in nodes[:max(1, min(k, max_per_layer))]}
    edges = []
    for dst in kept:
        into = sorted((e for e in graph.edges if e.dst == dst and e.src in kept), key=lambda e: e.strength, reverse=True)
        edges += into if dst == graph.output_id else into[:edges_per_node]
    nodes = [n for n in graph.nodes if n.id in kept]
    sub = NeuronGraph(nodes, edges, graph.n_layers, graph.neuron, graph.readout_bias, graph.response, graph.image_size)
    return PathView(sub, len(graph.nodes) - len(nodes), len(graph.edges) - len(edges))
