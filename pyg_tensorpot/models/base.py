"""What every potential of the package shares: graph construction from ``z, pos, batch``,
atom reference energies and standardisation, and the energy/forces helper."""
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from pyg_tensorpot.hub.mixin import HubMixin
from pyg_tensorpot.models.properties import compute_properties
from pyg_tensorpot.nn.graph import AtomGraph, atom_graph
from pyg_tensorpot.nn.script_graph import script_atom_graph
from pyg_tensorpot.utils.validation import (
    check_atoms,
    check_min_distance,
    check_total_charge,
    script_check_total_charge,
)


class AtomisticModel(HubMixin, torch.nn.Module):
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

    TorchScript: :obj:`torch.jit.script(model)` compiles :meth:`forward`; in TorchScript the
    graph is built by :func:`~pyg_tensorpot.nn.script_graph.script_atom_graph` (vesin-torch),
    with the same checks and plainer messages.

    :func:`torch.compile`: :obj:`model(z, pos, batch, edge_index=..., num_graphs=...)` and
    :meth:`graph_outputs` on a prebuilt graph (e.g. from a
    :class:`~pyg_tensorpot.nn.verlet.VerletList`) trace without graph breaks in this class:
    the caller's edges are used as given (each directed edge its own row, no self-loop
    edges), the shape and dtype checks run while tracing, and the value checks (finite
    positions, known elements, overlapping atoms, the neighbour budget) are
    :func:`torch._assert_async` nodes of the compiled graph (see
    :mod:`pyg_tensorpot.utils.validation`). A batch needs :obj:`num_graphs`. The neighbour
    search itself (no :obj:`edge_index`) runs outside the compiled graph.
    """
    supported_elements: Optional[List[int]]
    max_num_neighbors: Optional[int]
    __jit_unused_properties__ = ['dtype']
    #: The training contract: names of the penalty terms that
    #: :meth:`graph_outputs_and_regularization` adds to a training loss, weighted by name in a
    #: configuration's ``loss.regularization``. A class attribute (not seen by TorchScript).
    regularizers: Tuple[str, ...] = ()

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
        self.register_buffer('atomref', torch.zeros(self.max_z, dtype=torch.float64))
        self.register_buffer('mean', torch.tensor(0.0, dtype=torch.float64))
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

    def _apply(self, fn, recurse=True):
        # The reference energies and the mean stay float64 whatever the model's dtype
        # (model.float(), model.to(...)): they are large (about -2,046 eV per oxygen) and are
        # summed over every atom, where float32 would be wrong by tens of eV at 5,000 atoms.
        kept = {name: self._buffers[name] for name in ('atomref', 'mean')}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != torch.float64:
                self._buffers[name] = old.to(device=new.device, dtype=torch.float64)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the network (of :obj:`std` and the weights)."""
        return self.std.dtype

    def graph(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        cell: Optional[Tensor] = None,
        pbc: Optional[Union[bool, Tensor]] = None,
        total_charge: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
    ) -> AtomGraph:
        r"""Validates the input and builds the :class:`~pyg_tensorpot.nn.graph.AtomGraph` with
        the model's cutoff (once per call; every layer receives it). Arguments as in
        :meth:`forward`."""
        if torch.jit.is_scripting():
            return self._script_graph(z, pos, batch, edge_index, cell, pbc, total_charge,
                                      num_graphs)
        if torch.compiler.is_compiling() and edge_index is not None:
            return self._compiled_graph(z, pos, batch, edge_index, cell, pbc, total_charge,
                                        num_graphs)
        return self._eager_graph(z, pos, batch, edge_index, cell, pbc, total_charge,
                                 num_graphs)

    def _script_graph(self, z: Tensor, pos: Tensor, batch: Optional[Tensor],
                      edge_index: Optional[Tensor], cell: Optional[Tensor],
                      pbc: Optional[Union[bool, Tensor]], total_charge: Optional[Tensor],
                      num_graphs: Optional[int]) -> AtomGraph:
        if pos.dtype != self.std.dtype:
            raise TypeError('pos and the model have different dtypes; convert one of them')
        if edge_index is not None and cell is not None:
            raise ValueError('pass either edge_index or cell, not both: periodic images need '
                             'the shifts that the model computes itself')
        flags: Optional[Tensor] = None
        if isinstance(pbc, bool):
            flags = torch.tensor(pbc)
        elif isinstance(pbc, Tensor):
            flags = pbc
        graph = script_atom_graph(z, pos, self.cutoff, self.self_loops, self.max_z,
                                  self.supported_elements, batch, edge_index, cell, flags, None,
                                  num_graphs)
        self._check_budget(graph)
        script_check_total_charge(total_charge, graph.num_graphs)
        return graph

    def _check_budget(self, graph: AtomGraph) -> None:
        budget = self.max_num_neighbors
        if budget is not None and graph.edge_index.size(1) > 0:
            edges = graph.edge_index
            real = (edges[0] != edges[1]) | (graph.edge_weight > 0)
            counts = torch.bincount(edges[1][real], minlength=graph.batch.numel())
            if int(counts.max()) > budget:
                raise ValueError('an atom has more neighbours than max_num_neighbors='
                                 + str(budget) + '; raise the budget (no pair is dropped)')

    @torch.jit.unused
    def _check_input(self, z: Tensor, pos: Tensor, batch: Optional[Tensor]) -> None:
        # The checks of the eager and the compiled graph builders.
        check_atoms(z, pos, batch, self.max_z, self.supported_elements)
        if pos.dtype != self.dtype:
            raise TypeError(f'pos is {pos.dtype} but the model is {self.dtype}; '
                            f'convert one of them (e.g. model.to(pos.dtype))')

    @torch.jit.unused
    def _compiled_graph(self, z: Tensor, pos: Tensor, batch: Optional[Tensor],
                        edge_index: Tensor, cell: Optional[Tensor],
                        pbc: Optional[Union[bool, Tensor]], total_charge: Optional[Tensor],
                        num_graphs: Optional[int]) -> AtomGraph:
        # Under torch.compile: no host sync, no data-dependent shape (see the class docstring).
        self._check_input(z, pos, batch)
        if cell is not None:
            raise ValueError('pass either edge_index or cell, not both: periodic images need '
                             'the shifts that the model computes itself')
        if pbc is not None and not isinstance(pbc, bool):
            raise TypeError('under torch.compile pbc with edge_index must be omitted (the '
                            'edges carry no periodic images)')
        if pbc:
            raise ValueError('periodic boundaries (pbc) were requested without a cell')
        graph = script_atom_graph(z, pos, self.cutoff, self.self_loops, self.max_z,
                                  self.supported_elements, batch, edge_index, None, None, None,
                                  num_graphs)
        if self.max_num_neighbors is not None and graph.edge_index.size(1) > 0:
            real = graph.edge_index[0] != graph.edge_index[1]
            counts = torch.zeros_like(z).index_add_(0, graph.edge_index[1],
                                                    real.to(z.dtype))
            torch._assert_async(~(counts > self.max_num_neighbors).any(),
                                'an atom has more neighbours than max_num_neighbors')
        check_min_distance(graph.edge_index, graph.edge_weight.detach())
        check_total_charge(total_charge, graph.num_graphs)
        return graph

    @torch.jit.unused
    def _eager_graph(self, z: Tensor, pos: Tensor, batch: Optional[Tensor],
                     edge_index: Optional[Tensor], cell: Optional[Tensor],
                     pbc: Optional[Union[bool, Tensor]], total_charge: Optional[Tensor],
                     num_graphs: Optional[int]) -> AtomGraph:
        self._check_input(z, pos, batch)
        graph = atom_graph(z, pos, self.cutoff, batch, edge_index, cell, pbc, self.self_loops,
                           self.max_num_neighbors, num_graphs)
        check_total_charge(total_charge, graph.num_graphs)
        return graph

    def atomic_terms(self, z: Tensor, pos: Tensor, graph: AtomGraph,
                     total_charge: Optional[Tensor] = None) -> Tensor:
        r"""Per-atom energies before the reference energies and the mean,
        :math:`\sigma\,\varepsilon_i`, shape :obj:`[num_atoms]`. Implemented by every model."""
        raise NotImplementedError(f'{self.__class__.__name__} must implement atomic_terms()')

    def forward(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        cell: Optional[Tensor] = None,
        pbc: Optional[Union[bool, Tensor]] = None,
        total_charge: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
    ) -> Tensor:
        r"""What the model predicts for every structure, from the graph built once
        (:meth:`graph`) by :meth:`graph_outputs`: for potentials the energies
        :obj:`[num_graphs]`, in float64 (the sum over atoms and the reference energies are
        accumulated in float64; the network runs in the model's dtype).

        The one documented place of the arguments that :meth:`graph`, :meth:`atomic_energies`
        and the models' own :meth:`forward` take:

        Args:
            z (torch.Tensor): Atomic numbers :obj:`[num_atoms]`.
            pos (torch.Tensor): Positions in Angstrom :obj:`[num_atoms, 3]`.
            batch (torch.Tensor, optional): Structure of every atom. (default: :obj:`None`)
            edge_index (torch.Tensor, optional): A caller-supplied graph (row 0 neighbour,
                row 1 receiver); built with the cutoff if :obj:`None`. (default: :obj:`None`)
            cell (torch.Tensor, optional): Periodic cell(s), lattice vectors as rows,
                :obj:`[3, 3]` or :obj:`[B, 3, 3]`, Angstrom. (default: :obj:`None`)
            pbc (bool or torch.Tensor, optional): Periodic directions; fully periodic when a
                cell is given. (default: :obj:`None`)
            total_charge (torch.Tensor, optional): Total charge of every structure in e,
                :obj:`[B]`; models that do not use it ignore it. (default: :obj:`None`)
            num_graphs (int, optional): Number of structures (saves a device sync).
                (default: :obj:`None`)
        """
        graph = self.graph(z, pos, batch, edge_index, cell, pbc, total_charge, num_graphs)
        return self.graph_outputs(z, pos, graph, total_charge)

    def graph_outputs(self, z: Tensor, pos: Tensor, graph: AtomGraph,
                      total_charge: Optional[Tensor] = None) -> Tensor:
        r"""The result of :meth:`forward` from its graph: the energies :math:`\mu + \sum_i
        (\sigma\varepsilon_i + E^\mathrm{ref}_{z_i})` of every structure, float64
        :obj:`[num_graphs]`. A model that predicts something else (TensorNet's dipoles)
        overrides this, not :meth:`forward`."""
        terms = self.atomic_terms(z, pos, graph, total_charge)
        return self.reduce_energy(terms, z, graph.batch, graph.num_graphs)

    def atomic_energies(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        cell: Optional[Tensor] = None,
        pbc: Optional[Union[bool, Tensor]] = None,
        total_charge: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
    ) -> Tensor:
        r"""Per-atom energies :math:`E_i = \sigma\varepsilon_i + E^\mathrm{ref}_{z_i} +
        \mu / N_s` (the mean shared equally by the :math:`N_s` atoms of structure :math:`s`),
        float64 :obj:`[num_atoms]`; their sum over a structure is its energy. Arguments as in
        :meth:`forward`."""
        graph = self.graph(z, pos, batch, edge_index, cell, pbc, total_charge, num_graphs)
        return self.graph_atomic_energies(z, pos, graph, total_charge)

    def graph_atomic_energies(self, z: Tensor, pos: Tensor, graph: AtomGraph,
                              total_charge: Optional[Tensor] = None) -> Tensor:
        r"""The result of :meth:`atomic_energies` from its graph, float64
        :obj:`[num_atoms]`."""
        terms = self.atomic_terms(z, pos, graph, total_charge).to(torch.float64)
        counts = torch.bincount(graph.batch, minlength=graph.num_graphs).to(torch.float64)
        return terms + self.atomref[z] + self.mean / counts[graph.batch]

    @torch.jit.unused
    def verlet_graph(self, neighbors: Any, z: Tensor, pos: Tensor,
                     batch: Optional[Tensor] = None, cell: Optional[Tensor] = None,
                     pbc: Optional[Union[bool, Tensor]] = None,
                     total_charge: Optional[Tensor] = None,
                     num_graphs: Optional[int] = None) -> AtomGraph:
        r"""What :meth:`graph` returns, with the pairs of a
        :class:`~pyg_tensorpot.nn.verlet.VerletList` reused across MD steps instead of a
        fresh neighbour search; the same input checks. The list must have been made for this
        model: :obj:`VerletList(model.cutoff, skin, model.self_loops,
        model.max_num_neighbors)`. Python only."""
        from pyg_tensorpot.nn.verlet import VerletList
        if not isinstance(neighbors, VerletList):
            raise TypeError(f'neighbors must be a pyg_tensorpot.nn.VerletList, got '
                            f'{type(neighbors).__name__}')
        if neighbors.cutoff != self.cutoff or neighbors.self_loops != bool(self.self_loops) \
                or neighbors.max_num_neighbors != self.max_num_neighbors:
            raise ValueError(
                f'the Verlet list (cutoff {neighbors.cutoff} A, self_loops '
                f'{neighbors.self_loops}, max_num_neighbors {neighbors.max_num_neighbors}) was '
                f'not made for this model (cutoff {self.cutoff} A, self_loops '
                f'{bool(self.self_loops)}, max_num_neighbors {self.max_num_neighbors}): create '
                'it as VerletList(model.cutoff, skin, model.self_loops, '
                'model.max_num_neighbors)')
        self._check_input(z, pos, batch)
        graph = neighbors.graph(z, pos, batch, cell, pbc, num_graphs)
        check_total_charge(total_charge, graph.num_graphs)
        return graph

    def reduce_energy(self, atomic_terms: Tensor, z: Tensor, batch: Tensor,
                      num_graphs: Optional[int] = None) -> Tensor:
        r"""Molecular energies :math:`\mu + \sum_i (t_i + E^\mathrm{ref}_{z_i})`, summed in
        float64, from per-atom terms :math:`t_i` (:meth:`atomic_terms`)."""
        atomic = atomic_terms.to(torch.float64) + self.atomref[z]
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1
        # A structure without atoms (a gap in batch) has zero energy, as the sum of its
        # atomic_energies() is: the mean belongs to structures that have atoms.
        # (Counted by a scatter, not bincount, which would sync with an accelerator.)
        occupied = scatter(torch.ones_like(atomic), batch, 0, dim_size=num_graphs,
                           reduce='sum') > 0
        return scatter(atomic, batch, 0, dim_size=num_graphs, reduce='sum') + torch.where(
            occupied, self.mean, torch.zeros_like(self.mean))

    def graph_outputs_and_regularization(
            self, z: Tensor, pos: Tensor, graph: AtomGraph,
            total_charge: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        r"""The training contract: :meth:`graph_outputs` (the energies) and, from the same
        pass, the model's unweighted penalty terms, one scalar per name of
        :attr:`regularizers` (none by default; a model that declares some overrides this).
        Training weights them by name (``loss.regularization``). Python only: not part of the
        TorchScript module.

        Returns:
            (torch.Tensor, dict): Energies :obj:`[num_graphs]` (float64) and
            :obj:`{name: scalar}`.
        """
        return self.graph_outputs(z, pos, graph, total_charge), {}

    @torch.no_grad()
    def fit_reference_energies(self, dataset: Iterable[Any], *,
                               energy_key: str = 'energy') -> Dict[int, float]:
        r"""Fits the per-element reference energies :math:`E^\mathrm{ref}` by least squares
        to the energies of :obj:`dataset`
        (:func:`~pyg_tensorpot.datasets.fit_reference_energies`; fit on the training split
        only) and sets them (:meth:`set_atomref`). Models with their own initialisation
        (HIP-NN's hierarchical one) override it.

        Args:
            dataset (Iterable[Data]): Structures (or batches) with :obj:`z` and an energy.
            energy_key (str, optional): Name of the energy attribute.
                (default: :obj:`"energy"`)

        Returns:
            dict: :obj:`{Z: energy}` in the units of the data.
        """
        # Imported here: the datasets package pulls in optional dependencies.
        from pyg_tensorpot.datasets.reference_energies import fit_reference_energies
        refs = fit_reference_energies(dataset, None, energy_key)
        self.set_atomref(refs)
        return refs

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
    \partial \mathbf{r}_i`: :func:`~pyg_tensorpot.models.properties.compute_properties` with
    :obj:`properties=("energy", "forces")`.

    Args:
        model (torch.nn.Module): The potential.
        z (torch.Tensor): Atomic numbers :obj:`[num_atoms]`.
        pos (torch.Tensor): Positions in Angstrom :obj:`[num_atoms, 3]`; not modified.
        batch (torch.Tensor, optional): Structure index of every atom. (default: :obj:`None`)
        create_graph (bool, optional): Keep the graph of the forces so that a force loss can be
            backpropagated. Defaults to :obj:`model.training`. (default: :obj:`None`)
        **kwargs: :obj:`edge_index`, :obj:`cell`, :obj:`pbc`, :obj:`total_charge`,
            :obj:`num_graphs`.

    Returns:
        (energy, forces): :obj:`[num_structures]` and :obj:`[num_atoms, 3]`, forces in energy
        units per Angstrom.
    """
    out = compute_properties(model, z, pos, batch, properties=('energy', 'forces'),
                             create_graph=create_graph, **kwargs)
    return out['energy'], out['forces']
