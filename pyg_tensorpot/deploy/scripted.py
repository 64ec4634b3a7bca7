r"""TorchScript potentials for MD engines: :class:`ScriptablePotential` wraps any
:class:`~pyg_tensorpot.models.AtomisticModel` behind one engine-facing signature, and
:func:`script_model` compiles it with :func:`torch.jit.script`.

Inside TorchScript the neighbour list is vesin-torch's (:mod:`pyg_tensorpot.nn.script_graph`)
or the engine's own full list with integer cell shifts. Units: Angstrom, eV, eV/A; stress in
eV/A^3 with ASE's sign convention (:math:`\sigma = \frac{1}{V}\,\partial E/\partial
\varepsilon`, negative for a compressed box), virial :math:`-\partial E/\partial\varepsilon`
in eV.
"""
import copy
from typing import Dict, List, Optional

import torch
from torch import Tensor

from pyg_tensorpot.models.base import AtomisticModel
from pyg_tensorpot.nn.graph import AtomGraph
from pyg_tensorpot.nn.script_graph import script_atom_graph
from pyg_tensorpot.utils.validation import script_check_num_graphs



class ScriptablePotential(torch.nn.Module):
    r"""A :class:`~pyg_tensorpot.models.AtomisticModel` with the calling convention of MD
    engines, compilable with :func:`torch.jit.script` (see :func:`script_model`).

    :meth:`forward` returns the float64 energy of every structure, differentiable with respect
    to :obj:`pos` and :obj:`cell`; :meth:`forward_with_derivatives` adds forces, virial and
    stress by automatic differentiation inside the compiled module (for engines without
    autograd of their own); :meth:`atomic_energies` gives per-atom energies. Positions and
    cell are converted to the model's dtype.

    Args:
        model (AtomisticModel): The potential (TensorNet, HIP-NN, HIP-NN-TS or a model built
            from the package's layers with typed :meth:`atomic_terms`).
    """
    def __init__(self, model: AtomisticModel):
        super().__init__()
        if not isinstance(model, AtomisticModel):
            raise TypeError(f'ScriptablePotential needs an AtomisticModel (TensorNet, HIPNN, '
                            f'...), got {type(model).__name__}')
        self.model = model
        self.cutoff = float(model.cutoff)
        self.self_loops = bool(model.self_loops)
        self.max_z = int(model.max_z)
        self.supported_elements: Optional[List[int]] = (
            None if model.supported_elements is None else list(model.supported_elements))

    def graph(self, z: Tensor, pos: Tensor, cell: Optional[Tensor], pbc: Optional[Tensor],
              edge_index: Optional[Tensor], cell_shifts: Optional[Tensor],
              batch: Optional[Tensor]) -> AtomGraph:
        r"""The model's :class:`~pyg_tensorpot.nn.graph.AtomGraph`, arguments as in
        :meth:`forward` (positions already in the model's dtype)."""
        num_graphs = script_check_num_graphs(batch, z.size(0), None)
        return script_atom_graph(z, pos, self.cutoff, self.self_loops, self.max_z,
                                 self.supported_elements, batch, edge_index, cell, pbc,
                                 cell_shifts, num_graphs)

    def forward(self, z: Tensor, pos: Tensor, cell: Optional[Tensor] = None,
                pbc: Optional[Tensor] = None, edge_index: Optional[Tensor] = None,
                cell_shifts: Optional[Tensor] = None,
                batch: Optional[Tensor] = None) -> Tensor:
        r"""Energies of every structure in eV, float64 :obj:`[B]`.

        Args:
            z (torch.Tensor): Atomic numbers :obj:`[N]` (long).
            pos (torch.Tensor): Positions in Angstrom :obj:`[N, 3]`.
            cell (torch.Tensor, optional): Lattice vectors as rows :obj:`[3, 3]` or
                :obj:`[B, 3, 3]`, Angstrom. (default: :obj:`None`)
            pbc (torch.Tensor, optional): Periodic directions, :obj:`[3]` or :obj:`[B, 3]`
                bools; fully periodic when a cell is given. (default: :obj:`None`)
            edge_index (torch.Tensor, optional): The engine's full neighbour list
                :obj:`[2, E]`, row 0 the neighbour :math:`j`, row 1 the receiver :math:`i`,
                every directed pair within the cutoff once; built with vesin-torch when
                :obj:`None`. (default: :obj:`None`)
            cell_shifts (torch.Tensor, optional): Integer image shifts :obj:`[E, 3]` of the
                edges: the neighbour's image is :obj:`pos[j] + cell_shifts @ cell`.
                (default: :obj:`None`)
            batch (torch.Tensor, optional): Structure of every atom :obj:`[N]`.
                (default: :obj:`None`)
        """
        dtype = self.model.std.dtype
        pos = pos.to(dtype)
        if cell is not None:
            cell = cell.to(dtype)
        graph = self.graph(z, pos, cell, pbc, edge_index, cell_shifts, batch)
        terms = self.model.atomic_terms(z, pos, graph, None)
        return self.model.reduce_energy(terms, z, graph.batch, graph.num_graphs)

    @torch.jit.export
    def atomic_energies(self, z: Tensor, pos: Tensor, cell: Optional[Tensor] = None,
                        pbc: Optional[Tensor] = None, edge_index: Optional[Tensor] = None,
                        cell_shifts: Optional[Tensor] = None,
                        batch: Optional[Tensor] = None) -> Tensor:
        r"""Per-atom energies in eV, float64 :obj:`[N]`, summing to :meth:`forward` (the mean
        energy shared equally by the atoms of a structure). Arguments as in :meth:`forward`."""
        dtype = self.model.std.dtype
        pos = pos.to(dtype)
        if cell is not None:
            cell = cell.to(dtype)
        graph = self.graph(z, pos, cell, pbc, edge_index, cell_shifts, batch)
        terms = self.model.atomic_terms(z, pos, graph, None).to(torch.float64)
        ones = torch.ones_like(terms)
        counts = torch.zeros(graph.num_graphs, dtype=torch.float64,
                             device=z.device).index_add(0, graph.batch, ones)
        return terms + self.model.atomref[z] + self.model.mean / counts[graph.batch]

    @torch.jit.export
    def forward_with_derivatives(self, z: Tensor, pos: Tensor, cell: Optional[Tensor] = None,
                                 pbc: Optional[Tensor] = None,
                                 edge_index: Optional[Tensor] = None,
                                 cell_shifts: Optional[Tensor] = None,
                                 batch: Optional[Tensor] = None,
                                 compute_stress: bool = True) -> Dict[str, Tensor]:
        r"""Energies and their derivatives, by automatic differentiation in the module.

        Call it with autograd enabled (not inside :func:`torch.no_grad`; C++ engines have it
        enabled by default). Arguments as in :meth:`forward`, and :obj:`compute_stress`
        (default :obj:`True`): also the virial and stress when a cell is given (a symmetric
        strain applied to positions and cell together, as
        :func:`~pyg_tensorpot.models.compute_properties` does).

        Returns:
            dict: :obj:`"energy"` float64 :obj:`[B]` (eV), :obj:`"forces"` :obj:`[N, 3]`
            (eV/A, in the model's dtype) and, with a cell, :obj:`"virial"` :obj:`[B, 3, 3]`
            (eV) and :obj:`"stress"` :obj:`[B, 3, 3]` (eV/A^3; 0 for a structure without
            periodic direction).
        """
        dtype = self.model.std.dtype
        num_graphs = script_check_num_graphs(batch, z.size(0), None)
        index = torch.zeros_like(z) if batch is None else batch
        # TorchScript has no enable_grad() context, and switching grad mode on inside a
        # compiled method that was first run under no_grad gives wrong (gradient-free) plans
        # on later calls: refuse instead.
        if not torch.is_grad_enabled():
            raise RuntimeError('forward_with_derivatives needs autograd: do not call it '
                               'inside torch.no_grad() or inference mode')
        positions = pos.detach().to(dtype).requires_grad_(True)
        pos_in = positions
        cell_in: Optional[Tensor] = None
        strain: Optional[Tensor] = None
        if cell is not None:
            cell_in = cell.detach().to(dtype)
            if compute_stress:
                cells = cell_in.reshape(-1, 3, 3).expand(num_graphs, 3, 3)
                strain_leaf = torch.zeros(num_graphs, 3, 3, dtype=dtype,
                                          device=pos.device).requires_grad_(True)
                symmetric = 0.5 * (strain_leaf + strain_leaf.transpose(-1, -2))
                # r' = r (1 + eps), C' = C (1 + eps), rows as vectors.
                pos_in = positions + torch.bmm(positions.unsqueeze(1),
                                               symmetric.index_select(0, index)).squeeze(1)
                cell_in = cells + torch.bmm(cells, symmetric)
                strain = strain_leaf
        energy = self.forward(z, pos_in, cell_in, pbc, edge_index, cell_shifts, batch)
        inputs = [positions]
        if strain is not None:
            inputs.append(strain)
        grads = torch.autograd.grad([energy.sum()], inputs, allow_unused=True)
        gradient = grads[0]
        forces = -gradient if gradient is not None else torch.zeros_like(positions)
        result: Dict[str, Tensor] = {'energy': energy.detach(), 'forces': forces.detach()}
        if strain is not None and cell is not None:
            de_dstrain = grads[1]
            if de_dstrain is None:
                de_dstrain = torch.zeros_like(strain)
            result['virial'] = -de_dstrain.detach()
            volume = torch.linalg.det(cell.detach().to(dtype).reshape(-1, 3, 3)).abs().expand(
                num_graphs)
            periodic = torch.ones(num_graphs, dtype=torch.bool, device=pos.device)
            if pbc is not None:
                periodic = pbc.reshape(-1, 3).expand(num_graphs, 3).any(-1).to(pos.device)
            safe = torch.where(periodic, volume, torch.ones_like(volume))
            stress = de_dstrain.detach() / safe.view(-1, 1, 1)
            result['stress'] = torch.where(periodic.view(-1, 1, 1), stress,
                                           torch.zeros_like(stress))
        return result


def script_model(model: AtomisticModel,
                 dtype: torch.dtype = torch.float32) -> torch.jit.ScriptModule:
    r"""Compiles :obj:`model` with :func:`torch.jit.script` as a :class:`ScriptablePotential`
    in :obj:`dtype` (a copy in eval mode; :obj:`model` is not changed). One compiled module
    serves any number of atoms, molecules and periodic cells.

    Args:
        model (AtomisticModel): The potential.
        dtype (torch.dtype, optional): :obj:`torch.float32` or :obj:`torch.float64` for the
            network (energies are float64 either way). (default: :obj:`torch.float32`)
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f'dtype must be torch.float32 or torch.float64, got {dtype}')
    if not isinstance(model, AtomisticModel):
        raise TypeError(f'script_model needs an AtomisticModel (TensorNet, HIPNN, ...), got '
                        f'{type(model).__name__}')
    model = copy.deepcopy(model).to(dtype).eval()
    # Derivatives are taken with respect to positions and strain only.
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    potential = ScriptablePotential(model).eval()
    try:
        return torch.jit.script(potential)
    except (RuntimeError, torch.jit.frontend.NotSupportedError) as error:
        raise TypeError(f'{type(model).__name__} cannot be compiled with TorchScript: give '
                        'atomic_terms() typed arguments (z: Tensor, pos: Tensor, graph: '
                        'AtomGraph, total_charge: Optional[Tensor]) and use only TorchScript '
                        f'operations in it. TorchScript said: {error}') from error
