r"""A dense, padded view of the edges of each atom, for neighbour sums as batched matrix
products.

Edges grouped by one endpoint are laid out in an :obj:`[N, D]` grid (:math:`D` the largest
degree): row :math:`n` holds the edges whose endpoint is atom :math:`n`, the rest is padding.
Gathering per-edge rows into the grid turns sums over neighbours into :func:`torch.bmm` calls
of moderate size, which run at matrix-multiply speed and never hold per-edge tensors with a
channel dimension larger than the output's.

The width is a data-dependent size: under :func:`torch.compile` it is an unbacked integer,
which traces without a graph break only with ``torch._dynamo.config.capture_scalar_outputs =
True`` (set by the caller, e.g. with ``torch._dynamo.config.patch``).
:class:`~pyg_tensorpot.nn.conv.HIPNNInteraction` does not need it: under compile it sums over
the edge list instead.
"""
from typing import NamedTuple

import torch
from torch import Tensor


class PaddedNeighbors(NamedTuple):
    r"""Edges of every atom in an :obj:`[num_nodes, width]` grid.

    Attributes:
        slot (torch.Tensor): Flat grid position of every edge, :obj:`[E]`.
        edge_of_slot (torch.Tensor): Edge in every grid position, :obj:`[num_nodes * width]`
            (0 on padding: mask or ignore those rows).
        mask (torch.Tensor): :obj:`True` where a grid position holds an edge.
        num_nodes (int): Rows of the grid.
        width (int): Columns of the grid (the largest degree).
    """
    slot: Tensor
    edge_of_slot: Tensor
    mask: Tensor
    num_nodes: int
    width: int


def padded_neighbors(index: Tensor, num_nodes: int) -> PaddedNeighbors:
    r"""Groups the edges by :obj:`index` (e.g. :obj:`edge_index[1]`, the receivers) into a
    :class:`PaddedNeighbors` grid; edges keep their relative order within a row.

    Args:
        index (torch.Tensor): Atom of every edge, :obj:`[E]`, values in
            :obj:`0..num_nodes - 1`.
        num_nodes (int): Number of atoms.
    """
    if index.dim() != 1:
        raise ValueError(f'index must be one-dimensional, got shape {list(index.shape)}')
    num_edges = index.numel()
    if torch.compiler.is_compiling():
        # bincount's output size depends on the data (a graph break); this one's does not.
        counts = torch.zeros(num_nodes, dtype=torch.long, device=index.device).index_add_(
            0, index, torch.ones_like(index))
    else:
        counts = torch.bincount(index, minlength=num_nodes)
    if num_edges == 0:
        width = 0
    elif torch.jit.is_scripting():
        width = int(counts.max())
    else:
        width = _max_degree(counts)
    # Already sorted, e.g. neighbor_pairs' receivers (a traced graph always sorts: same result).
    if num_edges < 2 or (not torch.compiler.is_compiling()
                         and bool((index[1:] >= index[:-1]).all())):
        order = torch.arange(num_edges, device=index.device)
        sorted_index = index
    else:
        order = torch.argsort(index, stable=True)
        sorted_index = index[order]
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(num_edges, device=index.device) - start[sorted_index]
    sorted_slot = sorted_index * width + rank
    slot = torch.empty_like(order)
    slot[order] = sorted_slot
    edge_of_slot = torch.zeros(num_nodes * width, dtype=torch.long, device=index.device)
    edge_of_slot[sorted_slot] = order
    mask = torch.zeros(num_nodes * width, dtype=torch.bool, device=index.device)
    mask[sorted_slot] = True
    return PaddedNeighbors(slot, edge_of_slot, mask, num_nodes, width)


@torch.jit.unused
def _max_degree(counts: Tensor) -> int:
    if torch.compiler.is_compiling():
        # A data-dependent size for torch.export / torch.compile (an unbacked integer).
        width = counts.max().item()
        torch._check(width >= 1)
        return width
    return int(counts.max())
