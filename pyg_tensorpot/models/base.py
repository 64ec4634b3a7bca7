"""What every potential of the package shares: graph construction from ``z, pos, batch``,
atom reference energies and standardisation, and the energy/forces helper."""
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from pyg_tensorpot.nn.neighbors import edge_vectors, radius_graph
from pyg_tensorpot.utils.validation import check_atoms, check_min_distance


class AtomisticModel(torch.nn.Module):
    r"""Base class of the package's potentials.

    A subclass computes per-atom energies :math:`\varepsilon_i`; this class turns them into
    molecular energies

    .. math::
        E = \mu + \sum_{i} \left(\sigma\,\varepsilon_i + E^\mathrm{ref}_{z_i}\right),

    with the standardisation :math:`(\mu, \sigma)` (buffers ``mean`` and ``std``) and per-element
    reference energies :math:`E^\mathrm{ref}` (buffer ``atomref``), and provides
    :meth:`energy_and_forces`. Energies are in the units of the training data (eV in this
    package's datasets), positions in Angstrom.

    Args:
        cutoff (float): Cutoff radius of the neighbour graph in Angstrom.
        max_z (int): Atomic numbers must be smaller than this.
        self_loops (bool): Whether the graph includes the self-loop of every atom.
        max_num_neighbors (int, optional): Per-atom neighbour budget (an error, not a drop,
            when exceeded). (default: :obj:`None`)
        supported_elements (Sequence[int], optional): The only atomic numbers the model accepts.
            (default: :obj:`None`)
    """
    def __init__(self, cutoff: float, max_z: int, self_loops: bool,
                 max_num_neighbors: Optional[int] = None,
                 supported_elements: Optional[Sequence[int]] = None):
        super().__init__()
        self.cutoff = float(cutoff)
        self.max_z = int(max_z)
        self.self_loops = self_loops
        self.max_num_neighbors = max_num_neighbors
        self.supported_elements = (None if supported_elements is None else
                                   [int(v) for v in supported_elements])
        self.register_buffer('atomref', torch.zeros(self.max_z))
        self.register_buffer('mean', torch.tensor(0.0))
        self.register_buffer('std', torch.tensor(1.0))

    def set_atomref(self, atomref: Union[Tensor, dict]) -> None:
        """Sets per-element reference energies, from a ``[max_z]`` tensor or ``{Z: energy}``."""
        values = torch.zeros_like(self.atomref)
        if isinstance(atomref, dict):
            for number, energy in atomref.items():
                if not 0 < int(number) < self.max_z:
                    raise ValueError(f'atomref for Z={number} is outside 1..{self.max_z - 1}')
                values[int(number)] = float(energy)
        else:
            atomref = torch.as_tensor(atomref, dtype=values.dtype).flatten()
            if atomref.numel() > self.max_z:
                raise ValueError(f'atomref has {atomref.numel()} entries, more than max_z')
            values[:atomref.numel()] = atomref
        self.atomref.copy_(values)

    def set_standardization(self, mean: float, std: float) -> None:
        """Sets :math:`\\mu` and :math:`\\sigma` of :math:`E = \\mu + \\sum_i \\sigma
        \\varepsilon_i + \\dots`."""
        if not std > 0:
            raise ValueError(f'std must be positive, got {std}')
        self.mean.fill_(float(mean))
        self.std.fill_(float(std))

    def build_graph(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        cell: Optional[Tensor] = None,
        pbc: Optional[Union[bool, Tensor]] = None,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""Validates the input and returns ``(batch, edge_index, edge_vec, edge_weight)``.

        A caller-supplied :obj:`edge_index` (e.g. from :obj:`torch_cluster.radius_graph`, row 0
        the neighbour and row 1 the receiver) is used as given, except that self-loops are made
        to match the model (added or removed). Pairs beyond the cutoff contribute nothing.
        """
        check_atoms(z, pos, batch, self.max_z, self.supported_elements)
        if pos.dtype != self.atomref.dtype:
            raise TypeError(f'pos is {pos.dtype} but the model is {self.atomref.dtype}; '
                            f'convert one of them (e.g. model.to(pos.dtype))')
        if batch is None:
            batch = torch.zeros_like(z)
        shifts = None
        if edge_index is None:
            edge_index, shifts = radius_graph(pos, self.cutoff, batch, loop=self.self_loops,
                                              max_num_neighbors=self.max_num_neighbors,
                                              cell=cell, pbc=pbc)
        else:
            if cell is not None:
                raise ValueError('pass either edge_index or cell, not both: periodic images '
                                 'need the shifts that radius_graph computes')
            edge_index = self._match_self_loops(edge_index, z.size(0))
        edge_vec, edge_weight = edge_vectors(pos, edge_index, shifts)
        check_min_distance(edge_index, edge_weight.detach())
        return batch, edge_index, edge_vec, edge_weight

    def _match_self_loops(self, edge_index: Tensor, num_atoms: int) -> Tensor:
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f'edge_index must have shape [2, num_edges], got '
                             f'{list(edge_index.shape)}')
        if edge_index.numel() > 0 and (int(edge_index.min()) < 0
                                       or int(edge_index.max()) >= num_atoms):
            raise ValueError(f'edge_index refers to atoms outside 0..{num_atoms - 1}')
        edge_index = edge_index[:, edge_index[0] != edge_index[1]]
        if self.self_loops:
            loops = torch.arange(num_atoms, device=edge_index.device).repeat(2, 1)
            edge_index = torch.cat([edge_index, loops], dim=1)
        return edge_index

    def reduce_energy(self, atomic_energy: Tensor, z: Tensor, batch: Tensor,
                      num_graphs: Optional[int] = None) -> Tensor:
        r"""Molecular energies :math:`\mu + \sum_i (\sigma \varepsilon_i + E^\mathrm{ref}_{z_i})`."""
        atomic_energy = atomic_energy * self.std + self.atomref[z]
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1
        return scatter(atomic_energy, batch, 0, dim_size=num_graphs, reduce='sum') + self.mean

    def energy_and_forces(self, z: Tensor, pos: Tensor, batch: Optional[Tensor] = None,
                          create_graph: Optional[bool] = None,
                          **kwargs) -> Tuple[Tensor, Tensor]:
        """Energies of every structure and forces :math:`-\\partial E/\\partial \\mathbf{r}_i`.

        See :func:`energy_and_forces`."""
        return energy_and_forces(self, z, pos, batch, create_graph=create_graph, **kwargs)


def energy_and_forces(model: torch.nn.Module, z: Tensor, pos: Tensor,
                      batch: Optional[Tensor] = None, create_graph: Optional[bool] = None,
                      **kwargs) -> Tuple[Tensor, Tensor]:
    r"""Energies of every structure and the forces :math:`\mathbf{F}_i = -\partial E /
    \partial \mathbf{r}_i` by autograd, for any model whose ``forward(z, pos, batch, **kwargs)``
    returns per-structure energies.

    Args:
        model (torch.nn.Module): The potential.
        z (torch.Tensor): Atomic numbers :obj:`[num_atoms]`.
        pos (torch.Tensor): Positions in Angstrom :obj:`[num_atoms, 3]`; not modified.
        batch (torch.Tensor, optional): Structure index of every atom. (default: :obj:`None`)
        create_graph (bool, optional): Keep the graph of the forces so that a force loss can be
            backpropagated. Defaults to :obj:`model.training`: on when training, off for
            inference, where it would only cost memory. (default: :obj:`None`)
        **kwargs: Passed on to the model (e.g. :obj:`edge_index`, :obj:`cell`).

    Returns:
        (energy, forces): :obj:`[num_structures]` and :obj:`[num_atoms, 3]`, forces in energy
        units per Angstrom.
    """
    if create_graph is None:
        create_graph = model.training
    with torch.enable_grad():
        pos = pos.detach().requires_grad_(True)
        energy = model(z, pos, batch, **kwargs)
        (gradient, ) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
    forces = -gradient
    if not create_graph:
        energy = energy.detach()
    return energy, forces
