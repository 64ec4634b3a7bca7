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

Where degrees vary (a batch of molecules of different sizes, the surface of a cluster), most
of a grid as wide as the largest degree is padding. :func:`ragged_neighbors` sorts the atoms by
degree and cuts the sorted rows into blocks, each only as wide as its own largest degree.
"""
from typing import List, NamedTuple, Tuple

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


class RaggedNeighbors(NamedTuple):
    r"""Edges of every atom in blocks of rows sorted by degree, each block as wide as its own
    largest degree (:func:`ragged_neighbors`).

    Row :math:`r` holds the edges of atom :obj:`order[r]`; block :math:`b` is the
    :obj:`[end - start, width]` grid of rows :obj:`start..end - 1`, stored flat from slot
    :obj:`offset` on. Atoms without edges are in no block.

    Attributes:
        order (torch.Tensor): Atom of every row, :obj:`[num_nodes]` (degrees non-increasing).
        row (torch.Tensor): Row of every atom (the inverse of :obj:`order`).
        slot (torch.Tensor): Flat slot of every edge, :obj:`[E]`.
        num_slots (int): Slots of all blocks (edges plus the padding of each block).
        blocks (List[Tuple[int, int, int, int]]): :obj:`(start, end, width, offset)` of
            every block.
    """
    order: Tensor
    row: Tensor
    slot: Tensor
    num_slots: int
    blocks: List[Tuple[int, int, int, int]]


def ragged_neighbors(index: Tensor, num_nodes: int, block_slots: int) -> RaggedNeighbors:
    r"""Groups the edges by :obj:`index` into a :class:`RaggedNeighbors` layout: rows sorted by
    degree (ties in atom order), blocks of about :obj:`block_slots` slots; edges keep their
    relative order within a row.

    Args:
        index (torch.Tensor): Atom of every edge, :obj:`[E]`, values in
            :obj:`0..num_nodes - 1`.
        num_nodes (int): Number of atoms.
        block_slots (int): Slots per block (at least one row per block).
    """
    if index.dim() != 1:
        raise ValueError(f'index must be one-dimensional, got shape {list(index.shape)}')
    if block_slots < 1:
        raise ValueError(f'block_slots must be positive, got {block_slots}')
    device = index.device
    counts = torch.bincount(index, minlength=num_nodes)
    order = torch.argsort(counts, descending=True, stable=True)
    row_of_atom = torch.empty_like(order)
    row_of_atom[order] = torch.arange(num_nodes, device=device)
    degrees: List[int] = counts.index_select(0, order).tolist()
    blocks: List[Tuple[int, int, int, int]] = []
    start, offset = 0, 0
    while start < num_nodes and degrees[start] > 0:
        width = degrees[start]  # the largest of the block: degrees do not increase
        end = min(num_nodes, start + max(1, block_slots // width))
        blocks.append((start, end, width, offset))
        offset += (end - start) * width
        start = end
    # Flat slot of the first column of every row: offset_b + (row - start_b) * width_b.
    first = torch.zeros(num_nodes, dtype=torch.long, device=device)
    if len(blocks) > 0:
        sizes = torch.tensor([b[1] - b[0] for b in blocks], device=device)
        widths = torch.tensor([b[2] for b in blocks], device=device)
        bases = torch.tensor([b[3] - b[0] * b[2] for b in blocks], device=device)
        rows = torch.arange(start, device=device)
        first[:start] = (torch.repeat_interleave(bases, sizes)
                         + rows * torch.repeat_interleave(widths, sizes))
    # The rank of every edge among the edges of its atom (stable), as in padded_neighbors.
    num_edges = index.numel()
    if num_edges < 2 or bool((index[1:] >= index[:-1]).all()):
        edge_order = torch.arange(num_edges, device=device)
        sorted_index = index
    else:
        edge_order = torch.argsort(index, stable=True)
        sorted_index = index[edge_order]
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(num_edges, device=device) - group_start[sorted_index]
    slot = torch.empty_like(edge_order)
    slot[edge_order] = first[row_of_atom[sorted_index]] + rank
    return RaggedNeighbors(order, row_of_atom, slot, offset, blocks)
