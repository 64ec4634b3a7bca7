r"""A ragged view of the edges of each atom, for neighbour sums as batched matrix products.

Edges grouped by one endpoint are laid out one row per atom: gathering per-edge rows into such
a grid turns sums over neighbours into :func:`torch.bmm` calls of moderate size, which run at
matrix-multiply speed and never hold per-edge tensors with a channel dimension larger than the
output's. One grid as wide as the largest degree would be mostly padding where degrees vary (a
batch of molecules of different sizes, the surface of a cluster), so the rows are sorted by
degree and cut into blocks, each only as wide as its own largest degree.

The blocks are data-dependent sizes: under :func:`torch.compile`,
:class:`~pyg_tensorpot.nn.conv.HIPNNInteraction` sums over the edge list instead.
"""
from typing import List, NamedTuple, Tuple

import torch
from torch import Tensor


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
    # The rank of every edge among the edges of its atom (stable).
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
