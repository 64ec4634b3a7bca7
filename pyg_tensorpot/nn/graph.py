r"""The atom graph every model consumes, built once per call by :func:`atom_graph`.

Layers never rebuild or reorder it and never infer structure from the order of its edges:
which directed edges share a pair is stated by :attr:`AtomGraph.pair_index`, so that radial
functions (which depend on the distance only) are evaluated once per pair.
"""
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from pyg_tensorpot.nn.neighbors import edge_vectors, neighbor_pairs
from pyg_tensorpot.utils.validation import check_min_distance, check_num_graphs


class AtomGraph(NamedTuple):
    r"""The neighbour graph of a batch of structures, with its geometry.

    Shapes:
        - **edge_index** :math:`(2, E)`: row 0 the neighbour :math:`j`, row 1 the receiver
          :math:`i`.
        - **edge_vec** :math:`(E, 3)`: :math:`\mathbf{r}_{ij} = \mathbf{r}_i - (\mathbf{r}_j +
          \mathbf{s}_{ij})` in Angstrom, differentiable with respect to positions and cell.
        - **edge_weight** :math:`(E)`: :math:`d_{ij} = |\mathbf{r}_{ij}|` (0 for self-loops).
        - **edge_unit** :math:`(E, 3)`: :math:`\mathbf{r}_{ij} / d_{ij}` (0 for self-loops).
        - **pair_index** :math:`(E)`: row of :attr:`pair_weight` of every edge; the two
          directions of a pair (and all self-loops) share a row.
        - **pair_weight** :math:`(P)`: the distance of every pair.
        - **shifts** :math:`(E, 3)` or :obj:`None`: Cartesian image translations
          :math:`\mathbf{s}_{ij}` of the neighbours (periodic systems only).
        - **batch** :math:`(N)`: structure of every atom.
        - **num_graphs**: number of structures :math:`B`.
    """
    edge_index: Tensor
    edge_vec: Tensor
    edge_weight: Tensor
    edge_unit: Tensor
    pair_index: Tensor
    pair_weight: Tensor
    shifts: Optional[Tensor]
    batch: Tensor
    num_graphs: int


def graph_from_edges(edge_index: Tensor, edge_vec: Tensor, edge_weight: Tensor,
                     pair_index: Tensor, first: Tensor, shifts: Optional[Tensor],
                     batch: Tensor, num_graphs: int) -> AtomGraph:
    r"""The :class:`AtomGraph` of edges whose vectors and lengths are known: the distance of
    every pair (row :obj:`p` of :obj:`pair_index` takes the length of edge :obj:`first[p]`)
    and the unit vectors (0 for self-loops, whose length is 0). Shared by the eager and the
    TorchScript graph builders."""
    pair_weight = edge_weight.index_select(0, first)
    is_self = (edge_weight == 0).unsqueeze(-1)
    edge_unit = edge_vec / torch.where(is_self, torch.ones_like(edge_weight).unsqueeze(-1),
                                       edge_weight.unsqueeze(-1))
    return AtomGraph(edge_index, edge_vec, edge_weight, edge_unit, pair_index, pair_weight,
                     shifts, batch, num_graphs)


def _check_cell(cell: Tensor, pbc: Tensor, num_graphs: int) -> None:
    if cell.dim() not in (2, 3) or cell.shape[-2:] != (3, 3) or (
            cell.dim() == 3 and cell.size(0) != num_graphs):
        raise ValueError(f'cell must have shape [3, 3] or [{num_graphs}, 3, 3] (lattice '
                         f'vectors as rows, Angstrom), got {list(cell.shape)}')
    if not cell.dtype.is_floating_point:
        raise TypeError(f'cell must be a floating-point tensor, got {cell.dtype}')
    if not bool(torch.isfinite(cell).all()):
        raise ValueError('the cell contains NaN or infinite values')
    volume = torch.linalg.det(cell.detach().to(torch.float64)).abs().reshape(-1)
    # Degeneracy relative to the product of the lengths (scale-free): relative to the longest
    # vector cubed, a sound 10,000 x 10 x 10 A cell (a wire with vacuum) was called flat.
    lengths = cell.detach().to(torch.float64).norm(dim=-1).reshape(-1, 3).prod(dim=-1)
    for s in range(volume.numel()):
        # A structure without periodic directions (a molecule in a batch with crystals, whose
        # cell ASE stores as zeros) needs no cell.
        periodic = bool(pbc[s].any()) if volume.numel() > 1 else bool(pbc.any())
        if periodic and not float(volume[s]) > 1e-6 * float(lengths[s]):
            raise ValueError(
                f'the cell of structure {s} has zero volume (lattice vectors '
                f'{cell.reshape(-1, 3, 3)[s].tolist()}); give every direction, periodic or '
                'not, a nonzero lattice vector')


def periodic_flags(cell: Optional[Tensor], pbc: Optional[Union[bool, Tensor]],
                   num_graphs: int) -> Optional[Tensor]:
    r"""The periodic directions :obj:`[num_graphs, 3]` (bool, CPU) of a batch, or :obj:`None`
    for open boundaries; :obj:`pbc` defaults to fully periodic when a cell is given.

    Raises a :class:`ValueError` for periodic boundaries requested without a cell, and for a
    cell of wrong shape, with NaN entries or of zero volume.
    """
    if pbc is not None and not isinstance(pbc, (bool, Tensor)):
        try:
            pbc = torch.as_tensor(pbc)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f'pbc must be a bool or [3] bools (one per lattice vector), got '
                            f'{pbc!r}') from None
    if isinstance(pbc, Tensor) and (pbc.dtype.is_floating_point or pbc.is_complex()):
        raise TypeError(f'pbc must be bools (one per lattice vector), got {pbc.dtype}')
    if cell is None:
        if pbc is not None and bool(torch.as_tensor(pbc).any()):
            raise ValueError('periodic boundaries (pbc) were requested without a cell: pass '
                             'cell= (lattice vectors as rows, Angstrom)')
        return None
    if not isinstance(cell, Tensor):
        raise TypeError('cell must be a torch tensor [3, 3] or [num_structures, 3, 3]')
    flags = torch.as_tensor(True if pbc is None else pbc).to('cpu', torch.bool)
    if flags.dim() == 0:
        flags = flags.reshape(1, 1).expand(1, 3)
    if flags.shape[-1] != 3 or flags.dim() > 2 or flags.reshape(-1, 3).size(0) not in (
            1, num_graphs):
        raise ValueError(f'pbc must be a bool, [3] or [{num_graphs}, 3] bools, got shape '
                         f'{list(flags.shape)}')
    flags = flags.reshape(-1, 3).expand(num_graphs, 3).contiguous()
    _check_cell(cell, flags, num_graphs)
    return flags


def _pair_index(edge_index: Tensor, num_atoms: int) -> Tensor:
    # Edges (j, i) and (i, j) between the same two atoms share a row; a caller's graph has no
    # periodic images, so the unordered atom pair identifies the distance.
    low = torch.minimum(edge_index[0], edge_index[1])
    high = torch.maximum(edge_index[0], edge_index[1])
    return torch.unique(low * num_atoms + high, return_inverse=True)[1]


def atom_graph(
    z: Tensor,
    pos: Tensor,
    cutoff: float,
    batch: Optional[Tensor] = None,
    edge_index: Optional[Tensor] = None,
    cell: Optional[Tensor] = None,
    pbc: Optional[Union[bool, Tensor]] = None,
    self_loops: bool = False,
    max_num_neighbors: Optional[int] = None,
    num_graphs: Optional[int] = None,
) -> AtomGraph:
    r"""Builds the :class:`AtomGraph` of a batch: the pairs within :obj:`cutoff` (or the
    caller's :obj:`edge_index`), their periodic images, distances and unit vectors.

    A caller-supplied :obj:`edge_index` (row 0 neighbour, row 1 receiver) is used as given,
    except that self-loops are made to match :obj:`self_loops`; duplicate edges are refused.
    Atoms outside a periodic cell need no wrapping: the image shifts account for it.

    Args:
        z (torch.Tensor): Atomic numbers :obj:`[num_atoms]` (validated by the caller).
        pos (torch.Tensor): Positions in Angstrom :obj:`[num_atoms, 3]`.
        cutoff (float): Cutoff radius in Angstrom.
        batch (torch.Tensor, optional): Structure of every atom. (default: :obj:`None`)
        edge_index (torch.Tensor, optional): A caller-supplied graph. (default: :obj:`None`)
        cell (torch.Tensor, optional): Lattice vectors as rows, :obj:`[3, 3]` or
            :obj:`[B, 3, 3]`, Angstrom; differentiable (strain derivatives). (default: :obj:`None`)
        pbc (bool or torch.Tensor, optional): Periodic directions; fully periodic when a cell
            is given and this is :obj:`None`. (default: :obj:`None`)
        self_loops (bool, optional): Include the self-loop of every atom. (default: :obj:`False`)
        max_num_neighbors (int, optional): Per-atom neighbour budget, an error when exceeded.
            (default: :obj:`None`)
        num_graphs (int, optional): Number of structures, if known. (default: :obj:`None`)
    """
    num_atoms = z.size(0)
    num_graphs = check_num_graphs(batch, num_atoms, num_graphs)
    if batch is None:
        batch = torch.zeros_like(z)
    flags = periodic_flags(cell, pbc, num_graphs)
    if edge_index is None:
        if flags is not None and not bool(flags.any()):
            cell, flags = None, None
        edge_index, shifts, pair_index = neighbor_pairs(
            pos, cutoff, batch, loop=self_loops, max_num_neighbors=max_num_neighbors,
            cell=cell, pbc=flags)
        # P pairs in both directions, then one shared row for the N self-loops.
        num_loops = num_atoms if self_loops else 0
        num_rows = (edge_index.size(1) - num_loops) // 2 + (1 if num_loops > 0 else 0)
        return pair_graph(pos, edge_index, shifts, pair_index, batch, num_graphs, num_rows)
    else:
        if cell is not None:
            raise ValueError('pass either edge_index or cell, not both: periodic images need '
                             'the shifts that the model computes itself')
        edge_index = _caller_edges(edge_index, num_atoms, batch, self_loops)
        shifts = None
        pair_index = _pair_index(edge_index, num_atoms)
    return pair_graph(pos, edge_index, shifts, pair_index, batch, num_graphs)


def pair_graph(pos: Tensor, edge_index: Tensor, shifts: Optional[Tensor], pair_index: Tensor,
               batch: Tensor, num_graphs: int, num_rows: Optional[int] = None) -> AtomGraph:
    r"""The :class:`AtomGraph` of known edges (a neighbour search's, or a reused Verlet
    list's): differentiable edge vectors from :obj:`pos` and :obj:`shifts`, the minimum
    distance check, and the distance of every row of :obj:`pair_index`.

    Args:
        pos (torch.Tensor): Positions in Angstrom :obj:`[N, 3]`.
        edge_index (torch.Tensor): Edges :obj:`[2, E]`, row 0 neighbour, row 1 receiver.
        shifts (torch.Tensor, optional): Cartesian image translations :obj:`[E, 3]`.
        pair_index (torch.Tensor): Row of every edge :obj:`[E]`, rows :obj:`0..num_rows - 1`
            all used.
        batch (torch.Tensor): Structure of every atom :obj:`[N]`.
        num_graphs (int): Number of structures.
        num_rows (int, optional): Number of rows of :obj:`pair_index`, if known (saves a
            host sync). (default: :obj:`None`)
    """
    edge_vec, edge_weight = edge_vectors(pos, edge_index, shifts)
    check_min_distance(edge_index, edge_weight.detach())
    if num_rows is None:
        num_rows = int(pair_index.max()) + 1 if pair_index.numel() > 0 else 0
    first = torch.full((num_rows, ), edge_index.size(1), dtype=torch.long, device=pos.device)
    first = first.scatter_reduce(0, pair_index, torch.arange(edge_index.size(1),
                                                             device=pos.device), 'amin')
    return graph_from_edges(edge_index, edge_vec, edge_weight, pair_index, first, shifts,
                            batch, num_graphs)


def _caller_edges(edge_index: Tensor, num_atoms: int, batch: Tensor, self_loops: bool) -> Tensor:
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        shape = list(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index)
        raise ValueError(f'edge_index must have shape [2, num_edges], got {shape}')
    if edge_index.dtype.is_floating_point or edge_index.dtype == torch.bool:
        raise TypeError(f'edge_index must be an integer tensor, got {edge_index.dtype}')
    edge_index = edge_index.long()
    if edge_index.numel() > 0 and (int(edge_index.min()) < 0
                                   or int(edge_index.max()) >= num_atoms):
        raise ValueError(f'edge_index refers to atoms outside 0..{num_atoms - 1}')
    if edge_index.numel() > 0 and bool((batch[edge_index[0]] != batch[edge_index[1]]).any()):
        raise ValueError('edge_index connects atoms of different structures of the batch')
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    keys = edge_index[0] * num_atoms + edge_index[1]
    if torch.unique(keys).numel() != keys.numel():
        raise ValueError('edge_index contains duplicate edges: each directed edge may appear '
                         'once')
    if self_loops:
        loops = torch.arange(num_atoms, device=edge_index.device).repeat(2, 1)
        edge_index = torch.cat([edge_index, loops], dim=1)
    return edge_index
