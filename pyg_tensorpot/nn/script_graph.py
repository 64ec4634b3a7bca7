r"""The :class:`~pyg_tensorpot.nn.graph.AtomGraph` built inside TorchScript (and
:func:`torch.export`): the neighbour pairs from vesin-torch's TorchScript
:class:`vesin_torch.NeighborList`, or supplied by an MD engine with integer cell shifts.

The eager :func:`~pyg_tensorpot.nn.graph.atom_graph` (vesin plus the exact fallback search of
:mod:`pyg_tensorpot.nn.pair_search` for boxes vesin cannot handle safely, and chemist-friendly
error messages) stays the reference; this builder gives the same edges (in another order) and
so the same energies, with plainer messages.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from vesin_torch import NeighborList

from pyg_tensorpot.nn.graph import AtomGraph, graph_from_edges
from pyg_tensorpot.nn.neighbors import edge_vectors
from pyg_tensorpot.utils.validation import (
    MIN_INTERATOMIC_DISTANCE,
    script_check_atoms,
    script_check_num_graphs,
)


def script_pbc(cell: Optional[Tensor], pbc: Optional[Tensor], num_graphs: int,
               checks: bool = True) -> Tensor:
    r"""The periodic directions :obj:`[num_graphs, 3]` (bool): all :obj:`False` without a cell,
    all :obj:`True` for a cell without :obj:`pbc`."""
    if cell is None:
        if checks and pbc is not None and bool(pbc.any()):
            raise ValueError('periodic boundaries (pbc) were requested without a cell')
        return torch.zeros(num_graphs, 3, dtype=torch.bool)
    if cell.dim() not in (2, 3) or cell.size(-1) != 3 or cell.size(-2) != 3 or (
            cell.dim() == 3 and cell.size(0) != num_graphs):
        raise ValueError('cell must have shape [3, 3] or [num_structures, 3, 3] (lattice '
                         'vectors as rows, Angstrom)')
    if checks and not bool(torch.isfinite(cell).all()):
        raise ValueError('the cell contains NaN or infinite values')
    if pbc is None:
        return torch.ones(num_graphs, 3, dtype=torch.bool)
    if pbc.dtype != torch.bool:
        raise TypeError('pbc must be bools (one per lattice vector)')
    if pbc.dim() == 0:
        return pbc.reshape(1, 1).expand(num_graphs, 3).cpu()
    if pbc.size(-1) != 3 or pbc.dim() > 2 or pbc.reshape(-1, 3).size(0) not in (1, num_graphs):
        raise ValueError('pbc must be a bool, [3] or [num_structures, 3] bools')
    return pbc.reshape(-1, 3).expand(num_graphs, 3).cpu()


def _cells(cell: Optional[Tensor], num_graphs: int, pos: Tensor) -> Tensor:
    if cell is None:
        return torch.zeros(num_graphs, 3, 3, dtype=pos.dtype, device=pos.device)
    return cell.to(pos.dtype).reshape(-1, 3, 3).expand(num_graphs, 3, 3)


def vesin_pairs(pos: Tensor, batch: Tensor, num_graphs: int, cutoff: float, cells: Tensor,
                flags: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Every pair closer than :obj:`cutoff` once, structure by structure, with vesin-torch.

    Returns:
        (i, j, shifts): atom indices :obj:`[P]` and the Cartesian translation of the image of
        :math:`j`, :obj:`[P, 3]`, differentiable with respect to :obj:`cells`; the vector of the
        pair is :math:`\mathbf{r}_j + \mathbf{s} - \mathbf{r}_i`.
    """
    calculator = NeighborList(cutoff=cutoff, full_list=False)
    points = pos.detach().to(torch.float64)
    all_i: List[Tensor] = []
    all_j: List[Tensor] = []
    all_shifts: List[Tensor] = []
    for s in range(num_graphs):
        periodic = flags[s].to(pos.device)
        box = cells[s]
        # A structure without periodic direction (a molecule) gets vesin's zero box.
        search_box = box.detach().to(torch.float64)
        if not bool(periodic.any()):
            search_box = torch.zeros_like(search_box)
        if num_graphs == 1:
            atoms = torch.arange(points.size(0), device=pos.device)
        else:
            atoms = (batch == s).nonzero().flatten()
        if atoms.numel() == 0:
            continue
        result = calculator.compute(points.index_select(0, atoms), search_box, periodic, 'ijS')
        all_i.append(atoms.index_select(0, result[0]))
        all_j.append(atoms.index_select(0, result[1]))
        all_shifts.append(result[2].to(pos.dtype) @ box)
    if len(all_i) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=pos.device)
        return empty, empty, torch.zeros(0, 3, dtype=pos.dtype, device=pos.device)
    return torch.cat(all_i), torch.cat(all_j), torch.cat(all_shifts)


def script_atom_graph(
    z: Tensor,
    pos: Tensor,
    cutoff: float,
    self_loops: bool,
    max_z: int,
    supported_elements: Optional[List[int]] = None,
    batch: Optional[Tensor] = None,
    edge_index: Optional[Tensor] = None,
    cell: Optional[Tensor] = None,
    pbc: Optional[Tensor] = None,
    cell_shifts: Optional[Tensor] = None,
    num_graphs: Optional[int] = None,
) -> AtomGraph:
    r"""Builds the :class:`~pyg_tensorpot.nn.graph.AtomGraph` of a batch in TorchScript.

    Without :obj:`edge_index`, every pair closer than :obj:`cutoff` is found by vesin-torch
    (both directions of a pair share a row of :attr:`AtomGraph.pair_index`). With it (row 0
    the neighbour :math:`j`, row 1 the receiver :math:`i`, every directed edge once, as an MD
    engine's full neighbour list), the edges are used as given, each its own row, and
    :obj:`cell_shifts` :obj:`[E, 3]` (integer multiples of the lattice vectors) place the
    image of :math:`j` at :math:`\mathbf{r}_j + \mathbf{n}_{ij}\,\mathbf{C}`; an edge of an
    atom to itself without shift is dropped (under :func:`torch.export` and
    :func:`torch.compile`, which trace without input checks, it must not be given).

    Args:
        z (torch.Tensor): Atomic numbers :obj:`[N]`.
        pos (torch.Tensor): Positions in Angstrom :obj:`[N, 3]`.
        cutoff (float): Cutoff radius in Angstrom.
        self_loops (bool): Add the self-loop of every atom.
        max_z (int): Atomic numbers must be below this.
        supported_elements (List[int], optional): The only atomic numbers allowed.
            (default: :obj:`None`)
        batch (torch.Tensor, optional): Structure of every atom. (default: :obj:`None`)
        edge_index (torch.Tensor, optional): Engine-supplied edges :obj:`[2, E]`.
            (default: :obj:`None`)
        cell (torch.Tensor, optional): Lattice vectors as rows :obj:`[3, 3]` or
            :obj:`[B, 3, 3]`, Angstrom. (default: :obj:`None`)
        pbc (torch.Tensor, optional): Periodic directions, bools. (default: :obj:`None`)
        cell_shifts (torch.Tensor, optional): Integer image shifts of the engine's edges
            :obj:`[E, 3]`. (default: :obj:`None`)
        num_graphs (int, optional): Number of structures. (default: :obj:`None`)
    """
    # torch.compile / torch.export trace the graph without the input checks (no host syncs);
    # TorchScript and eager calls check.
    checks = not torch.compiler.is_compiling()
    if checks:
        script_check_atoms(z, pos, batch, max_z, supported_elements)
    num_atoms = z.size(0)
    num_graphs = script_check_num_graphs(batch, num_atoms, num_graphs)
    if batch is None:
        batch = torch.zeros_like(z)
    flags = script_pbc(cell, pbc, num_graphs, checks)
    cells = _cells(cell, num_graphs, pos)
    device = pos.device
    if edge_index is None:
        if cell_shifts is not None:
            raise ValueError('cell_shifts were given without edge_index')
        i, j, pair_shifts = vesin_pairs(pos, batch, num_graphs, cutoff, cells, flags)
        num_pairs = i.numel()
        # Receiver i and neighbour j; seen from j, the image of i is at -s.
        edge_index = torch.stack([torch.cat([j, i]), torch.cat([i, j])], dim=0)
        shifts = torch.cat([pair_shifts, -pair_shifts], dim=0)
        pair_index = torch.arange(num_pairs, device=device).repeat(2)
        first = torch.arange(num_pairs, device=device)
    else:
        edge_index, shifts = _engine_edges(edge_index, cell_shifts, cells, batch, num_atoms,
                                           checks)
        num_pairs = edge_index.size(1)
        pair_index = torch.arange(num_pairs, device=device)
        first = pair_index
    if self_loops:
        # Every self-loop has d = 0: one shared row.
        loops = torch.arange(num_atoms, device=device).repeat(2, 1)
        edge_index = torch.cat([edge_index, loops], dim=1)
        shifts = torch.cat([shifts, shifts.new_zeros(num_atoms, 3)])
        pair_index = torch.cat([pair_index, torch.full_like(z, num_pairs)])
        first = torch.cat([first, torch.full_like(z[:1], edge_index.size(1) - num_atoms)])
    edge_vec, edge_weight = edge_vectors(pos, edge_index, shifts)
    if checks:
        script_check_min_distance(edge_index, edge_weight.detach(), shifts)
    return graph_from_edges(edge_index, edge_vec, edge_weight, pair_index, first, shifts,
                            batch, num_graphs)


def _engine_edges(edge_index: Tensor, cell_shifts: Optional[Tensor], cells: Tensor,
                  batch: Tensor, num_atoms: int, checks: bool) -> Tuple[Tensor, Tensor]:
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError('edge_index must have shape [2, num_edges]')
    if torch.is_floating_point(edge_index) or edge_index.dtype == torch.bool:
        raise TypeError('edge_index must be an integer tensor')
    edge_index = edge_index.long()
    if checks and edge_index.numel() > 0 and (int(edge_index.min()) < 0
                                   or int(edge_index.max()) >= num_atoms):
        raise ValueError('edge_index refers to atoms that do not exist')
    if checks and edge_index.numel() > 0 and bool(
            (batch[edge_index[0]] != batch[edge_index[1]]).any()):
        raise ValueError('edge_index connects atoms of different structures of the batch')
    if cell_shifts is None:
        integer_shifts = torch.zeros(edge_index.size(1), 3, dtype=torch.long,
                                     device=edge_index.device)
    else:
        if cell_shifts.dim() != 2 or cell_shifts.size(0) != edge_index.size(1) or \
                cell_shifts.size(1) != 3:
            raise ValueError('cell_shifts must have shape [num_edges, 3]')
        if checks and torch.is_floating_point(cell_shifts) and not bool(
                (cell_shifts == torch.round(cell_shifts)).all()):
            raise ValueError('cell_shifts must be whole numbers of lattice vectors')
        integer_shifts = cell_shifts.long()
    if checks:
        keep = (edge_index[0] != edge_index[1]) | (integer_shifts != 0).any(dim=1)
        if not bool(keep.all()):
            edge_index = edge_index[:, keep]
            integer_shifts = integer_shifts[keep]
    # Cartesian translation of the neighbour's image in the cell of its structure.
    cell_of_edge = cells.index_select(0, batch.index_select(0, edge_index[1]))
    shifts = torch.bmm(integer_shifts.to(cells.dtype).unsqueeze(1), cell_of_edge).squeeze(1)
    return edge_index, shifts


def script_check_min_distance(edge_index: Tensor, edge_weight: Tensor,
                              shifts: Optional[Tensor] = None,
                              min_distance: float = MIN_INTERATOMIC_DISTANCE) -> None:
    r"""Raises if two atoms (or an atom and an image) are closer than
    :obj:`~pyg_tensorpot.utils.validation.MIN_INTERATOMIC_DISTANCE` Angstrom; self-loops are
    ignored."""
    not_self = edge_index[0] != edge_index[1]
    if shifts is not None:
        not_self = not_self | (shifts != 0).any(dim=-1)
    too_close = not_self & (edge_weight < min_distance)
    if bool(too_close.any()):
        k = int(too_close.nonzero()[0, 0])
        raise ValueError('atoms ' + str(int(edge_index[1, k])) + ' and '
                         + str(int(edge_index[0, k])) + ' are ' + str(float(edge_weight[k]))
                         + ' A apart: coincident or overlapping atoms; check the geometry '
                         'and its units')
