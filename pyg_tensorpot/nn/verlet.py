r"""A neighbour list reused across molecular-dynamics steps with a Verlet skin
(L. Verlet, *Phys. Rev.* 159, 98 (1967)), as MD engines keep theirs.

The candidate pairs are searched once at :math:`r_c + r_s` (cutoff plus skin) and reused
while no atom has moved more than :math:`r_s / 2` since that search: a pair closer than
:math:`r_c` now was then closer than :math:`r_c + r_s`, since its distance changed by at most
the sum of the two displacements. At every call the candidates are filtered to
:math:`d_{ij} < r_c` with the float64 expression of the fresh search
(:func:`~pyg_tensorpot.nn.neighbors.find_pairs`), so a model sees exactly the pair set that a
fresh search gives, in another order.
"""
import math
from typing import Optional, Union

import torch
from torch import Tensor

from pyg_tensorpot.nn.graph import AtomGraph, pair_graph, periodic_flags
from pyg_tensorpot.nn.neighbors import NeighborPairs, cartesian_shifts, find_pairs, pair_edges
from pyg_tensorpot.utils.validation import check_num_graphs

# The candidates are searched a hair beyond cutoff + skin so that rounding of the bound
# d_build <= d_now + |dr_i| + |dr_j| can never lose a pair.
_RADIUS_MARGIN = 1e-9


class VerletList:
    r"""Neighbour pairs within :obj:`cutoff`, from candidates searched at
    :obj:`cutoff + skin` and reused until an atom has moved more than :obj:`skin / 2`.

    A new search (a *build*) is made on the first call, when an atom has moved more than half
    the skin since the last build, and when the number of atoms, the atomic numbers, the batch
    vector, the cell or the periodic directions change (NPT dynamics with a moving cell
    therefore builds every step). With :obj:`skin=0` every call builds. An atom wrapped back
    into a periodic cell (as TorchSim's integrators do) has not moved: its displacement is
    taken modulo the lattice vectors of the periodic directions, and the image shifts of its
    candidates are corrected by the lattice vectors it was wrapped by (counted in
    :obj:`num_rebases`), with no new search.

    The pairs returned are those of a fresh
    :func:`~pyg_tensorpot.nn.neighbors.neighbor_pairs` at :obj:`cutoff`: the candidates'
    distances are recomputed at every call in float64 from the current positions and integer
    image shifts, with the expression of the fresh search, and those with
    :math:`d_{ij} \geq r_c` dropped.

    Args:
        cutoff (float): Cutoff radius of the model in Angstrom.
        skin (float, optional): Verlet skin :math:`r_s` in Angstrom, :math:`\geq 0`.
            (default: :obj:`0.0`)
        self_loops (bool, optional): Add the self-loop of every atom. (default: :obj:`False`)
        max_num_neighbors (int, optional): Neighbour budget per atom within the cutoff (an
            error, not a drop, when exceeded). (default: :obj:`None`)

    Shapes:
        - **input:** positions :math:`(N, 3)`, optional batch :math:`(N)`, cell
          :math:`(3, 3)` or :math:`(B, 3, 3)`, pbc :math:`(3)` or :math:`(B, 3)`
        - **output:** :class:`~pyg_tensorpot.nn.neighbors.NeighborPairs` (edges
          :math:`(2, E)`, Cartesian shifts :math:`(E, 3)`, pair index :math:`(E)`) or an
          :class:`~pyg_tensorpot.nn.graph.AtomGraph` (:meth:`graph`)

    Attributes:
        num_builds (int): Searches made so far.
        num_calls (int): Calls so far; :obj:`num_calls - num_builds` reused the candidates.
        num_rebases (int): Reuses whose image shifts were corrected for wrapped atoms.

    Example:

        >>> verlet = VerletList(cutoff=5.0, skin=1.0)
        >>> graph = verlet.graph(z, pos, cell=cell)  # builds
        >>> energy = model.graph_outputs(z, pos, graph)
    """

    def __init__(self, cutoff: float, skin: float = 0.0, self_loops: bool = False,
                 max_num_neighbors: Optional[int] = None):
        for name, value in (('cutoff', cutoff), ('skin', skin)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f'{name} must be a number of Angstrom, got {value!r}')
        if not (math.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f'cutoff must be a positive, finite number of Angstrom, got '
                             f'{cutoff}')
        if not (math.isfinite(skin) and skin >= 0):
            raise ValueError(f'the Verlet skin must be a finite number of Angstrom >= 0 (0 '
                             f'searches the neighbours at every call), got {skin}')
        if max_num_neighbors is not None and (isinstance(max_num_neighbors, bool) or
                                              not isinstance(max_num_neighbors, int) or
                                              max_num_neighbors < 0):
            raise ValueError(f'max_num_neighbors must be a non-negative int, got '
                             f'{max_num_neighbors!r}')
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.self_loops = bool(self_loops)
        self.max_num_neighbors = max_num_neighbors
        self.num_builds = 0
        self.num_calls = 0
        self.num_rebases = 0
        self.reset()

    @classmethod
    def for_model(cls, model: torch.nn.Module, skin: float) -> Optional['VerletList']:
        r"""The Verlet list of a simulation wrapper's :obj:`skin` option for :obj:`model` (its
        cutoff, self-loops and neighbour budget), or :obj:`None` for :obj:`skin=0` (a fresh
        search every call). Raises a :class:`ValueError` for a skin that is not a finite
        number of Angstrom :math:`\geq 0`, and for a positive skin with a model that is not an
        :class:`~pyg_tensorpot.models.AtomisticModel` (an ensemble, a plain module)."""
        from pyg_tensorpot.models.base import AtomisticModel
        if isinstance(skin, bool) or not isinstance(skin, (int, float)) or \
                not math.isfinite(skin) or skin < 0:
            raise ValueError(f'skin must be a finite number of Angstrom >= 0 (0 searches the '
                             f'neighbours at every call), got {skin!r}')
        if skin == 0:
            return None
        if not isinstance(model, AtomisticModel):
            raise ValueError(f'a Verlet skin needs a model of the package (an AtomisticModel), '
                             f'got {type(model).__name__}; use skin=0 for ensembles and other '
                             f'modules')
        return cls(model.cutoff, float(skin), model.self_loops, model.max_num_neighbors)

    def reset(self) -> None:
        """Forgets the candidates: the next call builds."""
        self._ref_pos: Optional[Tensor] = None
        self._cell: Optional[Tensor] = None
        self._pbc: Optional[Tensor] = None
        self._z: Optional[Tensor] = None
        self._batch: Optional[Tensor] = None
        self._periodic = False
        self._i: Optional[Tensor] = None
        self._j: Optional[Tensor] = None
        self._shifts: Optional[Tensor] = None
        # Per build: the candidates' translations in float64 (for the exact test) and in the
        # caller's dtype (for a cell that needs no gradient).
        self._shift64: Optional[Tensor] = None
        self._shift_cell: Optional[Tensor] = None
        # The periodic directions of every structure [B, 3] (bool) of a periodic build, and
        # the inverse of its float64 cells (fractional displacements of wrapped atoms).
        self._flags: Optional[Tensor] = None
        self._inverse: Optional[Tensor] = None

    def _unchanged(self, pos: Tensor, batch: Optional[Tensor], cell: Optional[Tensor],
                   pbc_key: Tensor, z: Optional[Tensor]) -> bool:
        ref = self._ref_pos
        if self.skin == 0 or ref is None or ref.shape != pos.shape or ref.device != pos.device:
            return False
        same = self._z is None if z is None else (
            self._z is not None and self._z.shape == z.shape and torch.equal(self._z, z))
        same = same and (self._batch is None if batch is None else (
            self._batch is not None and self._batch.shape == batch.shape
            and torch.equal(self._batch, batch)))
        same = same and (self._cell is None if cell is None else (
            self._cell is not None and self._cell.numel() == cell.numel()
            and torch.equal(self._cell, cell.detach().to(torch.float64).reshape(-1, 3, 3))))
        same = same and self._pbc is not None and self._pbc.shape == pbc_key.shape and \
            torch.equal(self._pbc, pbc_key)
        if not same:
            return False
        delta = pos.detach().to(torch.float64) - ref
        wrap = self._wrapped(delta, batch)
        offsets = None
        if wrap is not None:
            # w_i C per atom: what wrapping added to its position.
            offsets = cartesian_shifts(wrap, self._cell_on(pos), self._batch_of(pos, batch),
                                       torch.arange(pos.size(0), device=pos.device))
            delta = delta - offsets
        moved = torch.linalg.vector_norm(delta, dim=-1)
        if bool((moved > 0.5 * self.skin).any()):
            return False
        if wrap is not None and offsets is not None:
            self._rebase(pos, batch, cell, wrap, offsets)
        return True

    def _cell_on(self, pos: Tensor) -> Tensor:
        assert self._cell is not None
        return self._cell.to(pos.device)

    def _wrapped(self, delta: Tensor, batch: Optional[Tensor]) -> Optional[Tensor]:
        # The whole lattice vectors by which atoms were moved back into the cell since the
        # build (integer [N, 3], periodic directions only), or None when none was. Wrapping is
        # not motion: a wrapped atom keeps its candidates, with their image shifts corrected.
        if not self._periodic or self._inverse is None or self._flags is None:
            return None
        inverse = self._inverse.to(delta.device)
        if inverse.size(0) == 1:
            fractional = delta @ inverse[0]
        else:
            index = self._batch_of(delta, batch)
            fractional = torch.bmm(delta.unsqueeze(1), inverse.index_select(0, index)).squeeze(1)
        wrap = torch.round(fractional) * self._flags_of(delta, batch)
        if not bool(wrap.any()):
            return None
        return wrap.long()

    def _flags_of(self, pos: Tensor, batch: Optional[Tensor]) -> Tensor:
        assert self._flags is not None
        flags = self._flags.to(device=pos.device, dtype=torch.float64)
        return flags[0].expand(pos.size(0), 3) if flags.size(0) == 1 else \
            flags.index_select(0, self._batch_of(pos, batch))

    def _rebase(self, pos: Tensor, batch: Optional[Tensor], cell: Optional[Tensor],
                wrap: Tensor, offsets: Tensor) -> None:
        # r_i = r_i^build + d_i + w_i C: the pair (i, j, n) of the build is (i, j, n + w_i - w_j)
        # now (its vector r_i - r_j - n C is unchanged but for d_i - d_j), and the reference
        # positions move by w_i C, so that later displacements are measured from them.
        assert self._i is not None and self._j is not None and self._shifts is not None
        atoms_batch = self._batch_of(pos, batch)
        self._ref_pos = self._ref_pos + offsets
        moved = wrap.to(self._shifts.device)
        self._shifts = self._shifts + (moved.index_select(0, self._i)
                                       - moved.index_select(0, self._j)).to(self._shifts.dtype)
        self._shift64 = cartesian_shifts(self._shifts, self._cell_on(pos), atoms_batch, self._i)
        if cell is not None:
            self._shift_cell = cartesian_shifts(self._shifts, cell.detach(), atoms_batch,
                                                self._i)
        self.num_rebases += 1

    def _build(self, pos: Tensor, batch: Optional[Tensor], cell: Optional[Tensor],
               pbc: Optional[Union[bool, Tensor]], pbc_key: Tensor, z: Optional[Tensor]) -> None:
        num_atoms = pos.size(0)
        num_graphs = check_num_graphs(batch, num_atoms)
        flags = periodic_flags(cell, pbc, num_graphs)
        search_cell = cell
        if flags is not None and not bool(flags.any()):
            search_cell, flags = None, None
        radius = (self.cutoff + self.skin) * (1.0 + _RADIUS_MARGIN)
        i, j, shifts = find_pairs(pos, radius, batch, search_cell, flags)
        self._i, self._j, self._shifts = i, j, shifts
        self._periodic = search_cell is not None
        self._flags = flags if self._periodic else None
        self._ref_pos = pos.detach().to(torch.float64).clone()
        self._cell = None if cell is None else \
            cell.detach().to(torch.float64).reshape(-1, 3, 3).clone()
        self._inverse = torch.linalg.inv(self._cell) if self._periodic and \
            self._cell is not None else None
        self._shift64, self._shift_cell = None, None
        if shifts is not None and self._periodic and cell is not None and self._cell is not None:
            atoms_batch = self._batch_of(pos, batch)
            self._shift64 = cartesian_shifts(shifts, self._cell.to(pos.device), atoms_batch, i)
            self._shift_cell = cartesian_shifts(shifts, cell.detach(), atoms_batch, i)
        self._pbc = pbc_key
        self._z = None if z is None else z.detach().clone()
        self._batch = None if batch is None else batch.detach().clone()
        self.num_builds += 1

    def pairs(self, pos: Tensor, batch: Optional[Tensor] = None, cell: Optional[Tensor] = None,
              pbc: Optional[Union[bool, Tensor]] = None,
              z: Optional[Tensor] = None) -> NeighborPairs:
        r"""The pairs closer than the cutoff (both directions, then the self-loops), building
        the candidates first when needed.

        Args:
            pos (torch.Tensor): Positions in Angstrom :obj:`[N, 3]`.
            batch (torch.Tensor, optional): Structure of every atom. (default: :obj:`None`)
            cell (torch.Tensor, optional): Lattice vectors as rows, Angstrom; the shifts
                returned are differentiable with respect to it. (default: :obj:`None`)
            pbc (bool or torch.Tensor, optional): Periodic directions; fully periodic when a
                cell is given and this is :obj:`None`. (default: :obj:`None`)
            z (torch.Tensor, optional): Atomic numbers; a change of species builds.
                (default: :obj:`None`)
        """
        if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.size(-1) != 3 or \
                not pos.dtype.is_floating_point:
            shape = list(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
            raise ValueError(f'pos must be a floating-point tensor [num_atoms, 3] (Angstrom), '
                             f'got {shape}')
        pbc_key = torch.as_tensor(True if pbc is None else pbc).to('cpu', torch.bool)
        self.num_calls += 1
        if not self._unchanged(pos, batch, cell, pbc_key, z):
            self._build(pos, batch, cell, pbc, pbc_key, z)
        i, j, shifts = self._i, self._j, self._shifts
        assert i is not None and j is not None
        points = pos.detach().to(torch.float64)
        vec = points.index_select(0, i) - points.index_select(0, j)
        if self._shift64 is not None:
            # The fresh search's exact test: (r_i - r_j) - n C in float64.
            vec = vec - self._shift64
        keep = torch.linalg.vector_norm(vec, dim=-1) < self.cutoff
        i, j = i[keep], j[keep]
        cartesian: Optional[Tensor] = None
        if shifts is not None and self._shift_cell is not None and cell is not None:
            # Differentiable with respect to the cell only when it asks for a gradient
            # (stress); otherwise the translations of the build are reused.
            cartesian = cartesian_shifts(shifts[keep], cell, self._batch_of(pos, batch), i) \
                if cell.requires_grad else self._shift_cell[keep].to(cell.dtype)
        return pair_edges(i, j, cartesian, pos.size(0), self.self_loops,
                          self.max_num_neighbors, self.cutoff)

    @staticmethod
    def _batch_of(pos: Tensor, batch: Optional[Tensor]) -> Tensor:
        if batch is None:
            return torch.zeros(pos.size(0), dtype=torch.long, device=pos.device)
        return batch

    def graph(self, z: Tensor, pos: Tensor, batch: Optional[Tensor] = None,
              cell: Optional[Tensor] = None, pbc: Optional[Union[bool, Tensor]] = None,
              num_graphs: Optional[int] = None) -> AtomGraph:
        r"""The :class:`~pyg_tensorpot.nn.graph.AtomGraph` of :meth:`pairs`, for a model's
        :meth:`~pyg_tensorpot.models.AtomisticModel.graph_outputs`; edge vectors
        differentiable with respect to :obj:`pos` and :obj:`cell`.

        Args:
            z (torch.Tensor): Atomic numbers :obj:`[N]` (validated by the caller).
            pos (torch.Tensor): Positions in Angstrom :obj:`[N, 3]`.
            batch (torch.Tensor, optional): Structure of every atom. (default: :obj:`None`)
            cell (torch.Tensor, optional): Lattice vectors as rows. (default: :obj:`None`)
            pbc (bool or torch.Tensor, optional): Periodic directions. (default: :obj:`None`)
            num_graphs (int, optional): Number of structures. (default: :obj:`None`)
        """
        num_graphs = check_num_graphs(batch, z.size(0), num_graphs)
        edge_index, shifts, pair_index = self.pairs(pos, batch, cell, pbc, z)
        num_rows = edge_index.size(1) // 2 if not self.self_loops else \
            (edge_index.size(1) - pos.size(0)) // 2 + 1
        return pair_graph(pos, edge_index, shifts, pair_index, self._batch_of(pos, batch),
                          num_graphs, num_rows)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(cutoff={self.cutoff}, skin={self.skin}, '
                f'builds={self.num_builds}, calls={self.num_calls}, rebases={self.num_rebases})')
