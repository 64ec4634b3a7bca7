r"""Fused message kernels of TensorNet's embedding and interaction layers.

Both sum per-edge products of radial filters with 10 packed tensor components into the
receiving atoms. A plain gather-multiply-scatter materialises several ``[E, 10, H]`` tensors and
keeps some of them alive for the backward pass (about 1 GB each for 5,000 atoms of liquid
water at a 4.5 A cutoff). These autograd functions keep only what the gradients need at atom
or pair level, recompute the per-edge products in the backward pass, and process the edges in
chunks, so that the per-edge temporaries stay small. Filters may be given per radial row
(shared by both directions of a pair) with :obj:`radial_index` mapping edges to rows. The
backward passes are written with differentiable operations: force training (double backward)
works.
"""
from typing import Iterator, Optional

import torch
from torch import Tensor

from pyg_tensorpot.nn.tensor_algebra import PART_SLICES, scale_parts

#: Number of float elements of one per-edge temporary; sets the chunk length.
CHUNK_ELEMENTS = 2**24


def _chunks(num_edges: int, width: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(width, 1))
    for start in range(0, num_edges, step):
        yield slice(start, min(start + step, num_edges))


def _rows(filters: Tensor, radial_index: Optional[Tensor], edges: slice) -> Tensor:
    return filters[edges] if radial_index is None else filters.index_select(
        0, radial_index[edges])


def _accumulate_rows(grad: Tensor, radial_index: Optional[Tensor], edges: slice,
                     values: Tensor) -> None:
    if radial_index is None:
        grad[edges] = grad[edges] + values
    else:
        grad.index_add_(0, radial_index[edges], values)


def _scale(values: Tensor, filters: Tensor) -> Tensor:
    """values [E, 10, H] times each component's filter from filters [E, 3, H].

    In place when autograd is not recording (the forward passes below, and their backward
    unless a double backward was asked for), which saves passes over [E, 10, H].
    """
    if torch.is_grad_enabled():
        return scale_parts(values, filters)
    for c, part in enumerate(PART_SLICES):
        values[:, part].mul_(filters[:, c:c + 1])
    return values


def _reduce(products: Tensor) -> Tensor:
    # [E, 10, H] -> [E, 3, H], summing the components of each filter.
    return torch.stack([products[:, part].sum(1) for part in PART_SLICES], dim=1)


class _FilteredGatherScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, filters: Tensor, radial_index: Optional[Tensor],
                source: Tensor, target: Tensor) -> Tensor:
        ctx.save_for_backward(features, filters, radial_index, source, target)
        width = features[0].numel()
        out = torch.zeros_like(features)
        with torch.no_grad():
            for edges in _chunks(source.numel(), width):
                messages = _scale(features.index_select(0, source[edges]),
                                  _rows(filters, radial_index, edges))
                out.index_add_(0, target[edges], messages)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        features, filters, radial_index, source, target = ctx.saved_tensors
        need_features, need_filters = ctx.needs_input_grad[:2]
        grad_features = torch.zeros_like(features) if need_features else None
        grad_filters = torch.zeros_like(filters) if need_filters else None
        for edges in _chunks(source.numel(), features[0].numel()):
            grad_at_target = grad_out.index_select(0, target[edges])
            edge_filters = _rows(filters, radial_index, edges)
            if need_filters:
                products = features.index_select(0, source[edges])
                products = (products * grad_at_target if torch.is_grad_enabled() else
                            products.mul_(grad_at_target))
                _accumulate_rows(grad_filters, radial_index, edges, _reduce(products))
            if need_features:
                # The transpose graph: gradients flow back from receivers to neighbours.
                grad_features = grad_features.index_add(
                    0, source[edges], _scale(grad_at_target, edge_filters))
        return grad_features, grad_filters, None, None, None


def filtered_gather_scatter(features: Tensor, filters: Tensor, edge_index: Tensor,
                            radial_index: Optional[Tensor] = None) -> Tensor:
    r"""Sums :math:`g^{c(k)}_{ij}\, y^k_j` over the edges :math:`(j, i)` into the receivers.

    Args:
        features (torch.Tensor): Packed node features :math:`y`, shape :obj:`[N, 10, H]`.
        filters (torch.Tensor): Filters :math:`(g^I, g^A, g^S)`, shape :obj:`[R, 3, H]`.
        edge_index (torch.Tensor): Row 0 the neighbour :math:`j`, row 1 the receiver :math:`i`.
        radial_index (torch.Tensor, optional): Row of :obj:`filters` for every edge; if
            :obj:`None`, row :math:`e` belongs to edge :math:`e`. (default: :obj:`None`)

    Returns:
        torch.Tensor: :obj:`[N, 10, H]`.
    """
    if torch.jit.is_scripting():
        return _plain_filtered_gather_scatter(features, filters, edge_index, radial_index)
    return _fused_filtered_gather_scatter(features, filters, edge_index, radial_index)


@torch.jit.unused
def _fused_filtered_gather_scatter(features: Tensor, filters: Tensor, edge_index: Tensor,
                                   radial_index: Optional[Tensor]) -> Tensor:
    # Autograd functions cannot be compiled by TorchScript, torch.compile or torch.export:
    # those get the plain path (the same sums, with per-edge temporaries).
    if torch.compiler.is_compiling():
        return _plain_filtered_gather_scatter(features, filters, edge_index, radial_index)
    return _FilteredGatherScatter.apply(features, filters, radial_index, edge_index[0],
                                        edge_index[1])


def _plain_filtered_gather_scatter(features: Tensor, filters: Tensor, edge_index: Tensor,
                                   radial_index: Optional[Tensor]) -> Tensor:
    rows = filters if radial_index is None else filters.index_select(0, radial_index)
    messages = scale_parts(features.index_select(0, edge_index[0]), rows)
    return torch.zeros_like(features).index_add(0, edge_index[1], messages)


class _EmbeddingScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, radial: Tensor, radial_index: Optional[Tensor], pair: Tensor,
                geometry: Tensor, target: Tensor, num_nodes: int) -> Tensor:
        ctx.save_for_backward(radial, radial_index, pair, geometry, target)
        H = pair.size(-1)
        out = pair.new_zeros((num_nodes, geometry.size(1), H))
        with torch.no_grad():
            for edges in _chunks(target.numel(), geometry.size(1) * H):
                filters = _rows(radial, radial_index, edges).mul_(pair[edges].unsqueeze(1))
                messages = filters.new_empty((filters.size(0), geometry.size(1), H))
                for c, part in enumerate(PART_SLICES):
                    torch.mul(filters[:, c:c + 1], geometry[edges, part, None],
                              out=messages[:, part])
                out.index_add_(0, target[edges], messages)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        radial, radial_index, pair, geometry, target = ctx.saved_tensors
        need_radial, _, need_pair, need_geometry = ctx.needs_input_grad[:4]
        grad_radial = torch.zeros_like(radial) if need_radial else None
        grad_pair = torch.zeros_like(pair) if need_pair else None
        grad_geometry = torch.zeros_like(geometry) if need_geometry else None
        for edges in _chunks(target.numel(), geometry.size(1) * pair.size(-1)):
            grad_at_target = grad_out.index_select(0, target[edges])
            edge_radial = _rows(radial, radial_index, edges)
            edge_pair = pair[edges].unsqueeze(1)
            edge_geometry = geometry[edges]
            if need_radial or need_pair:
                grad_filters = torch.stack([
                    torch.einsum('ek,ekh->eh', edge_geometry[:, part], grad_at_target[:, part])
                    for part in PART_SLICES
                ], dim=1)
                if need_radial:
                    _accumulate_rows(grad_radial, radial_index, edges, grad_filters * edge_pair)
                if need_pair:
                    grad_pair[edges] = (grad_filters * edge_radial).sum(1)
            if need_geometry:
                filters = edge_radial * edge_pair
                grad_geometry[edges] = torch.cat([
                    torch.einsum('ekh,eh->ek', grad_at_target[:, part], filters[:, c])
                    for c, part in enumerate(PART_SLICES)
                ], dim=1)
        return grad_radial, None, grad_pair, grad_geometry, None, None


def embedding_scatter(radial: Tensor, pair: Tensor, geometry: Tensor, edge_index: Tensor,
                      num_nodes: int, radial_index: Optional[Tensor] = None) -> Tensor:
    r"""Sums :math:`f^{c(k)}_{ij}\, q^k_{ij}` with :math:`f^c_{ij} = r^c_{ij} Z_{ij}` over the
    edges :math:`(j, i)` into the receivers (TensorNet's embedding).

    Args:
        radial (torch.Tensor): Radial filters :math:`r`, shape :obj:`[R, 3, H]`.
        pair (torch.Tensor): Pair embeddings :math:`Z_{ij}`, shape :obj:`[E, H]`.
        geometry (torch.Tensor): Per-edge components :math:`q`, shape :obj:`[E, 10]`.
        edge_index (torch.Tensor): Row 0 the neighbour :math:`j`, row 1 the receiver :math:`i`.
        num_nodes (int): Number of nodes :math:`N`.
        radial_index (torch.Tensor, optional): Row of :obj:`radial` for every edge.
            (default: :obj:`None`)

    Returns:
        torch.Tensor: :obj:`[N, 10, H]`.
    """
    if torch.jit.is_scripting():
        return _plain_embedding_scatter(radial, pair, geometry, edge_index, num_nodes,
                                        radial_index)
    return _fused_embedding_scatter(radial, pair, geometry, edge_index, num_nodes, radial_index)


@torch.jit.unused
def _fused_embedding_scatter(radial: Tensor, pair: Tensor, geometry: Tensor, edge_index: Tensor,
                             num_nodes: int, radial_index: Optional[Tensor]) -> Tensor:
    if torch.compiler.is_compiling():
        return _plain_embedding_scatter(radial, pair, geometry, edge_index, num_nodes,
                                        radial_index)
    return _EmbeddingScatter.apply(radial, radial_index, pair, geometry, edge_index[1],
                                   num_nodes)


def _plain_embedding_scatter(radial: Tensor, pair: Tensor, geometry: Tensor, edge_index: Tensor,
                             num_nodes: int, radial_index: Optional[Tensor]) -> Tensor:
    rows = radial if radial_index is None else radial.index_select(0, radial_index)
    filters = rows * pair.unsqueeze(1)
    messages = torch.cat([filters[:, 0:1] * geometry[:, 0:1, None],
                          filters[:, 1:2] * geometry[:, 1:4, None],
                          filters[:, 2:3] * geometry[:, 4:10, None]], dim=1)
    out = pair.new_zeros((num_nodes, geometry.size(1), pair.size(-1)))
    return out.index_add(0, edge_index[1], messages)
