r"""Neighbour pairs on top of `vesin <https://github.com/Luthaf/vesin>`_ (and an exact hashed
cell list for the boxes vesin cannot handle safely, :mod:`pyg_tensorpot.nn.pair_search`).

Models do not call :func:`neighbor_pairs` themselves: their one graph builder is
:func:`~pyg_tensorpot.nn.graph.atom_graph`, which adds the geometry (edge vectors, distances,
unit vectors) to these pairs.

Edge convention (PyG's ``flow="source_to_target"``): ``edge_index[0]`` is the neighbour
:math:`j` (source of the message) and ``edge_index[1]`` the receiving atom :math:`i`. The edge
vector is :math:`\mathbf{r}_{ij} = \mathbf{r}_i - (\mathbf{r}_j + \mathbf{s}_{ij})`, receiver
minus neighbour, where :math:`\mathbf{s}_{ij}` is the Cartesian lattice translation of the
periodic image of :math:`j` (zero without periodic boundaries).
"""
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from pyg_tensorpot.nn.pair_search import open_boundary_pairs, periodic_pairs


class NeighborPairs(NamedTuple):
    r"""The directed edges between atoms of the same structure closer than the cutoff.

    Shapes:
        - **edge_index** :math:`(2, E)`: row 0 the neighbour :math:`j`, row 1 the receiver
          :math:`i`. The :math:`P` pairs found come first, then the same :math:`P` pairs
          reversed, then the self-loops if requested, so :math:`E = 2P` (or :math:`2P + N`).
        - **shifts** :math:`(E, 3)` or :obj:`None`: Cartesian image translations
          :math:`\mathbf{s}_{ij}` of the neighbours in Angstrom (with a cell only).
        - **pair_index** :math:`(E)`: the pair of every edge, in :math:`0, \dots, P - 1`; the
          two directions of a pair share it, and all self-loops share :math:`P`, so that
          functions of the distance only can be evaluated once per pair.
    """
    edge_index: Tensor
    shifts: Optional[Tensor]
    pair_index: Tensor


def neighbor_pairs(
    pos: Tensor,
    cutoff: float,
    batch: Optional[Tensor] = None,
    loop: bool = False,
    max_num_neighbors: Optional[int] = None,
    cell: Optional[Tensor] = None,
    pbc: Optional[Union[bool, Tensor]] = None,
) -> NeighborPairs:
    r"""Finds all atom pairs of the same structure closer than :obj:`cutoff`, periodic images
    included.

    Pairs are found in :math:`O(N)` with vesin's cell lists, or, for boxes vesin cannot handle
    safely (flat, elongated or mostly empty), with an exact hashed cell list (see
    :mod:`pyg_tensorpot.nn.pair_search`), in float64 whatever the dtype of :obj:`pos`. The
    pairs are not differentiable; the edge vectors computed from them with
    :func:`edge_vectors` are. Every pair is stored in both directions.

    Args:
        pos (torch.Tensor): Positions in Angstrom, shape :obj:`[num_atoms, 3]`.
        cutoff (float): Cutoff radius in Angstrom; pairs with :math:`d_{ij} < r_c` are kept.
        batch (torch.Tensor, optional): Structure index of every atom. (default: :obj:`None`)
        loop (bool, optional): If :obj:`True`, adds the self-loop :math:`(i, i)` of every atom.
            (default: :obj:`False`)
        max_num_neighbors (int, optional): Neighbour budget per atom (self-loops not counted).
            An atom with more neighbours raises an error instead of silently losing pairs.
            (default: :obj:`None`)
        cell (torch.Tensor, optional): Lattice vectors as rows, shape :obj:`[3, 3]` or
            :obj:`[num_structures, 3, 3]`, Angstrom. (default: :obj:`None`)
        pbc (bool or torch.Tensor, optional): Periodic directions, a bool or :obj:`[3]` bools
            (or :obj:`[num_structures, 3]`). Defaults to fully periodic when :obj:`cell` is
            given. (default: :obj:`None`)

    Returns:
        NeighborPairs: :obj:`edge_index`, :obj:`shifts` (:obj:`None` without a cell) and
        :obj:`pair_index`, on the device of :obj:`pos`.
    """
    if pos.dim() != 2 or pos.size(-1) != 3:
        raise ValueError(f'pos must have shape [num_atoms, 3], got {list(pos.shape)}')
    if not cutoff > 0:
        raise ValueError(f'cutoff must be positive, got {cutoff}')
    num_atoms = pos.size(0)
    device = pos.device
    if batch is None:
        batch = torch.zeros(num_atoms, dtype=torch.long, device=device)
    points = pos.detach().to('cpu', torch.float64)
    batch_cpu = batch.to('cpu')

    shifts: Optional[Tensor] = None
    if cell is None:
        i, j = open_boundary_pairs(points, batch_cpu, cutoff)
    else:
        i, j, shifts = periodic_pairs(points, batch_cpu, cutoff, cell, pbc)
    num_pairs = i.numel()

    # Both directions; seen from j, the image of i is at -s.
    if shifts is not None:
        shifts = torch.cat([shifts, -shifts], dim=0)
    i, j = torch.cat([i, j]), torch.cat([j, i])
    if max_num_neighbors is not None:
        counts = torch.bincount(i, minlength=num_atoms)
        if num_atoms > 0 and int(counts.max()) > max_num_neighbors:
            atom = int(counts.argmax())
            raise ValueError(
                f'atom {atom} has {int(counts.max())} neighbours within {cutoff} A, more than '
                f'max_num_neighbors={max_num_neighbors}; raise the budget (no pair is dropped)')

    # vesin's (i, j) pair has its vector pointing from i to j; i receives the message.
    edge_index = torch.stack([j, i], dim=0)
    pair_index = torch.arange(num_pairs, device=device).repeat(2)
    if loop:
        edge_index = torch.cat([edge_index, torch.arange(num_atoms).repeat(2, 1)], dim=1)
        # Every self-loop has d = 0: one shared row.
        pair_index = torch.cat(
            [pair_index, torch.full((num_atoms, ), num_pairs, device=device)])
        if shifts is not None:
            shifts = torch.cat([shifts, shifts.new_zeros(num_atoms, 3)], dim=0)
    return NeighborPairs(edge_index.to(device), None if shifts is None else shifts.to(device),
                         pair_index)


def edge_vectors(pos: Tensor, edge_index: Tensor,
                 shifts: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""Differentiable edge vectors :math:`\mathbf{r}_{ij}` and lengths :math:`d_{ij}`.

    Self-loops get a zero vector and length 0 with a finite gradient (the norm is only
    evaluated on the other edges).

    Args:
        pos (torch.Tensor): Positions, shape :obj:`[num_atoms, 3]`.
        edge_index (torch.Tensor): Graph, row 0 the neighbour :math:`j`, row 1 the receiver
            :math:`i`.
        shifts (torch.Tensor, optional): Cartesian image translations of the neighbours,
            shape :obj:`[num_edges, 3]`. (default: :obj:`None`)

    Returns:
        (edge_vec, edge_weight): :obj:`[num_edges, 3]` and :obj:`[num_edges]`.
    """
    source, target = edge_index[0], edge_index[1]
    edge_vec = pos.index_select(0, target) - pos.index_select(0, source)
    if shifts is not None:
        edge_vec = edge_vec - shifts.to(edge_vec.dtype)
    is_self = (source == target).unsqueeze(-1)
    if shifts is not None:
        is_self = is_self & (shifts == 0).all(dim=-1, keepdim=True)
    safe_vec = torch.where(is_self, torch.ones_like(edge_vec), edge_vec)
    edge_weight = torch.where(is_self.squeeze(-1), torch.zeros_like(edge_vec[:, 0]),
                              torch.linalg.vector_norm(safe_vec, dim=-1))
    return edge_vec, edge_weight
