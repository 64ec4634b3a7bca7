r"""The one property function: energy and its derivatives by autograd, for every model.

Training, evaluation, the command line, the pretrained demo and the ASE calculator all call
:func:`compute_properties`. Stress and virial are derivatives with respect to a symmetric strain
:math:`\boldsymbol{\varepsilon}` applied to positions and cell together,
:math:`\mathbf{r} \to \mathbf{r}(\mathbf{1} + \boldsymbol{\varepsilon})`,
:math:`\mathbf{h} \to \mathbf{h}(\mathbf{1} + \boldsymbol{\varepsilon})` (row vectors):

.. math::
    \mathbf{W} = -\frac{\partial E}{\partial \boldsymbol{\varepsilon}}, \qquad
    \boldsymbol{\sigma} = \frac{1}{V}\frac{\partial E}{\partial \boldsymbol{\varepsilon}}
    = -\frac{\mathbf{W}}{V},

which is ASE's sign convention (a compressed box has negative stress; pressure is
:math:`-\mathrm{tr}\,\boldsymbol{\sigma}/3`), in eV/A^3, as full 3x3 tensors. In a batch that
mixes periodic structures and molecules, the molecules' stress is 0 (they have no volume).
"""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from pyg_tensorpot.nn.graph import periodic_flags
from pyg_tensorpot.utils.validation import check_atoms, check_num_graphs

#: What :func:`compute_properties` can compute.
PROPERTIES = ('energy', 'forces', 'stress', 'virial', 'energies', 'hessian')


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating-point type a model computes in (of its first floating parameter)."""
    dtype = getattr(model, 'dtype', None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next((p.dtype for p in model.parameters() if p.is_floating_point()),
                torch.get_default_dtype())


def _inputs_of(data: Data) -> Dict[str, Any]:
    if getattr(data, 'z', None) is None or getattr(data, 'pos', None) is None:
        raise ValueError('the Data object needs z (atomic numbers) and pos (Angstrom)')
    inputs: Dict[str, Any] = {'z': data.z, 'pos': data.pos, 'batch': getattr(data, 'batch', None)}
    for key in ('cell', 'pbc', 'total_charge'):
        inputs[key] = getattr(data, key, None)
    inputs['num_graphs'] = int(getattr(data, 'num_graphs', 1) or 1)
    charge = getattr(data, 'charge', None)
    if inputs['total_charge'] is None and isinstance(charge, Tensor) and charge.numel() == \
            inputs['num_graphs'] and charge.size(0) == inputs['num_graphs']:
        # SPICE's name for the total charge of each structure (one value per structure).
        inputs['total_charge'] = charge.reshape(-1)
    return inputs


def compute_properties(
    model: torch.nn.Module,
    z: Union[Tensor, Data],
    pos: Optional[Tensor] = None,
    batch: Optional[Tensor] = None,
    edge_index: Optional[Tensor] = None,
    cell: Optional[Tensor] = None,
    pbc: Optional[Union[bool, Tensor]] = None,
    total_charge: Optional[Tensor] = None,
    properties: Sequence[str] = ('energy', 'forces'),
    create_graph: Optional[bool] = None,
    num_graphs: Optional[int] = None,
    regularization: bool = False,
    neighbors: Optional[Any] = None,
) -> Dict[str, Tensor]:
    r"""Energies and, on request, forces, stress, virial, per-atom energies and the Hessian of
    a (batch of) structure(s), by automatic differentiation of the model's energy.

    The model is any module whose ``forward(z, pos, batch, edge_index, cell, pbc,
    total_charge, ...)`` returns per-structure energies (every model of the package, or one a
    user composes from its layers); per-atom energies need an
    :class:`~pyg_tensorpot.models.AtomisticModel` or an
    :class:`~pyg_tensorpot.models.Ensemble` of them. Positions and cell are converted to the
    model's dtype.

    Args:
        model (torch.nn.Module): The potential.
        z (torch.Tensor or torch_geometric.data.Data): Atomic numbers :obj:`[N]`, or a
            :obj:`Data`/:obj:`Batch` carrying :obj:`z`, :obj:`pos` and optionally
            :obj:`batch`, :obj:`cell`, :obj:`pbc`, :obj:`total_charge`.
        pos (torch.Tensor, optional): Positions in Angstrom :obj:`[N, 3]`; never modified.
        batch (torch.Tensor, optional): Structure of every atom. (default: :obj:`None`)
        edge_index (torch.Tensor, optional): A caller-supplied graph. (default: :obj:`None`)
        cell (torch.Tensor, optional): Lattice vectors as rows, :obj:`[3, 3]` or
            :obj:`[B, 3, 3]`, Angstrom. (default: :obj:`None`)
        pbc (bool or torch.Tensor, optional): Periodic directions. (default: :obj:`None`)
        total_charge (torch.Tensor, optional): Charge of every structure in e, :obj:`[B]`.
            (default: :obj:`None`)
        properties (Sequence[str], optional): Any of :obj:`"energy"`, :obj:`"forces"`,
            :obj:`"stress"`, :obj:`"virial"`, :obj:`"energies"` (per atom) and
            :obj:`"hessian"`. (default: :obj:`("energy", "forces")`)
        create_graph (bool, optional): Keep the autograd graph of the results, so that a loss
            on forces or stress can be backpropagated. Defaults to :obj:`model.training`.
            (default: :obj:`None`)
        num_graphs (int, optional): Number of structures (saves a device sync).
            (default: :obj:`None`)
        regularization (bool, optional): Also return the model's penalty terms for a
            training loss as :obj:`"regularization.<name>"`, computed in the same pass as the
            energy (the model's :meth:`graph_outputs_and_regularization`; none for modules
            that are not an :class:`~pyg_tensorpot.models.AtomisticModel`). Not with
            :obj:`"energies"`. (default: :obj:`False`)
        neighbors (pyg_tensorpot.nn.VerletList, optional): A Verlet list made for the model
            (:obj:`VerletList(model.cutoff, skin, model.self_loops,
            model.max_num_neighbors)`) whose pairs are reused across calls (MD steps) until an
            atom has moved more than half the skin; the results are those of a fresh search.
            Only for an :class:`~pyg_tensorpot.models.AtomisticModel` and without
            :obj:`edge_index`. (default: :obj:`None`, a fresh search every call)

    Returns:
        dict: :obj:`"energy"` :obj:`[B]` (eV), :obj:`"forces"` :obj:`[N, 3]` (eV/A),
        :obj:`"stress"` :obj:`[B, 3, 3]` (eV/A^3), :obj:`"virial"` :obj:`[B, 3, 3]` (eV),
        :obj:`"energies"` :obj:`[N]` (eV), :obj:`"hessian"` :obj:`[3N, 3N]` (eV/A^2,
        :math:`\partial^2 E / \partial r_{a} \partial r_{b}` with :math:`a = 3i + \alpha`),
        and with :obj:`regularization` one scalar per penalty term.
    """
    if isinstance(z, Data):
        inputs = _inputs_of(z)
        z, pos, batch = inputs['z'], inputs['pos'], inputs['batch']
        cell = inputs['cell'] if cell is None else cell
        pbc = inputs['pbc'] if pbc is None else pbc
        total_charge = inputs['total_charge'] if total_charge is None else total_charge
        num_graphs = inputs['num_graphs'] if num_graphs is None else num_graphs
    if pos is None:
        raise ValueError('pos (positions in Angstrom) is required')
    if isinstance(properties, str):
        properties = (properties, )
    unknown = sorted(set(properties) - set(PROPERTIES))
    if unknown:
        raise ValueError(f'unknown properties {unknown}; choose from {list(PROPERTIES)}')
    want = set(properties) | {'energy'}
    if not isinstance(pos, Tensor) or not pos.dtype.is_floating_point:
        raise TypeError('pos must be a floating-point torch tensor [num_atoms, 3] (Angstrom)')
    if create_graph is None:
        create_graph = model.training
    dtype = model_dtype(model)
    pos = pos.detach().to(dtype)
    if isinstance(z, Tensor) and not z.dtype.is_floating_point and z.dtype != torch.bool:
        z = z.long()
    # Checked here, before the strain indexes positions by batch, so that a malformed input
    # is reported as such rather than as an error from deep inside torch.
    check_atoms(z, pos, batch)
    if cell is not None and isinstance(cell, Tensor) and cell.dtype.is_floating_point:
        cell = cell.detach().to(dtype)
    num_graphs = check_num_graphs(batch, z.size(0), num_graphs)
    strained = bool(want & {'stress', 'virial'})
    derivatives = bool(want & {'forces', 'stress', 'virial', 'hessian'})
    if regularization and 'energies' in want:
        raise ValueError('per-atom energies and regularisation terms are not computed together;'
                         ' ask for them in two calls')
    if neighbors is not None:
        if not _is_atomistic(model):
            raise ValueError(f'a Verlet list (neighbors) needs a model of the package (an '
                             f'AtomisticModel), got {type(model).__name__}; pass '
                             f'neighbors=None for ensembles and other modules')
        if edge_index is not None:
            raise ValueError('pass either edge_index or neighbors (a Verlet list), not both')
    result: Dict[str, Tensor] = {}

    with torch.enable_grad():
        pos_in = pos.requires_grad_(derivatives)
        cell_in = cell
        strain = None
        if strained:
            cell_in, strain, pos_in = _apply_strain(pos_in, cell, pbc, batch, num_graphs)
        args, options = _model_inputs(model, z, pos_in, batch, edge_index, cell_in, pbc,
                                      total_charge, num_graphs)
        graph = None if neighbors is None else model.verlet_graph(
            neighbors, z, pos_in, batch, cell_in, pbc, total_charge, num_graphs)
        if 'energies' in want:
            _check_atomic_energies(model)
            energies = model.atomic_energies(*args, **options) if graph is None else \
                model.graph_atomic_energies(z, pos_in, graph, total_charge)
            energy = scatter(energies, _batch_of(batch, z), 0, dim_size=num_graphs,
                             reduce='sum')
            result['energies'] = energies
        elif regularization and _is_atomistic(model):
            if graph is None:
                graph = model.graph(*args, **options)
            out, penalties = model.graph_outputs_and_regularization(z, pos_in, graph,
                                                                    total_charge)
            energy = out.reshape(-1)
            for name, value in penalties.items():
                result[f'regularization.{name}'] = value
        elif graph is not None:
            energy = model.graph_outputs(z, pos_in, graph, total_charge).reshape(-1)
        else:
            energy = model(*args, **options).reshape(-1)
        result['energy'] = energy
        if derivatives:
            wrt = [pos] + ([] if strain is None else [strain])
            keep = create_graph or 'hessian' in want
            grads = torch.autograd.grad(energy.sum(), wrt, create_graph=keep,
                                        allow_unused=True)
            gradient = grads[0] if grads[0] is not None else torch.zeros_like(pos)
            if 'forces' in want:
                result['forces'] = -gradient
            if strain is not None:
                de_dstrain = grads[1] if grads[1] is not None else torch.zeros_like(strain)
                if 'virial' in want:
                    result['virial'] = -de_dstrain
                if 'stress' in want:
                    result['stress'] = de_dstrain / _volumes(cell_in, pbc, num_graphs)
            if 'hessian' in want:
                result['hessian'] = _hessian(gradient, pos, create_graph)
    if not create_graph:
        result = {key: value.detach() for key, value in result.items()}
    return result


def _volumes(cell: Tensor, pbc: Optional[Union[bool, Tensor]], num_graphs: int) -> Tensor:
    # Cell volumes [B, 1, 1]; a structure of a mixed batch without periodic directions has no
    # volume: its stress is reported as 0 (its virial is still -dE/d(strain)).
    volume = torch.linalg.det(cell.detach().reshape(-1, 3, 3)).abs().expand(num_graphs)
    flags = periodic_flags(cell, pbc, num_graphs).to(volume.device).any(-1)
    volume = torch.where(flags, volume, torch.full_like(volume, float('inf')))
    return volume.reshape(-1, 1, 1)


def _is_atomistic(model: torch.nn.Module) -> bool:
    from pyg_tensorpot.models.base import AtomisticModel
    return isinstance(model, AtomisticModel)


def _check_atomic_energies(model: torch.nn.Module) -> None:
    # The model contract: every AtomisticModel, and an Ensemble whose members all are, has
    # atomic_energies(); a plain module returns only totals.
    from pyg_tensorpot.models.ensemble import Ensemble
    members = list(model.models) if isinstance(model, Ensemble) else [model]
    for member in members:
        if not _is_atomistic(member):
            raise ValueError(f'per-atom energies need a model of the package (an '
                             f'AtomisticModel); {type(member).__name__} returns only the total '
                             f'energy of each structure')


def _model_inputs(model: torch.nn.Module, z: Tensor, pos: Tensor, batch: Optional[Tensor],
                  edge_index: Optional[Tensor], cell: Optional[Tensor],
                  pbc: Optional[Union[bool, Tensor]], total_charge: Optional[Tensor],
                  num_graphs: int) -> Tuple[tuple, Dict[str, Any]]:
    if _is_atomistic(model):
        return (z, pos, batch, edge_index, cell, pbc, total_charge), {'num_graphs': num_graphs}
    # A plain module written as forward(z, pos, batch, ...): only the inputs it was given.
    options = {key: value for key, value in (('edge_index', edge_index), ('cell', cell),
                                             ('pbc', pbc), ('total_charge', total_charge))
               if value is not None}
    return (z, pos, batch if batch is not None else torch.zeros_like(z)), options


def _batch_of(batch: Optional[Tensor], z: Tensor) -> Tensor:
    return torch.zeros_like(z) if batch is None else batch


def _apply_strain(pos: Tensor, cell: Optional[Tensor], pbc: Optional[Union[bool, Tensor]],
                  batch: Optional[Tensor], num_graphs: int) -> Tuple[Tensor, Tensor, Tensor]:
    if cell is None:
        raise ValueError('stress and virial need a periodic cell: this system has none (for a '
                         'molecule in vacuum they are not defined)')
    flags = periodic_flags(cell, pbc, num_graphs)
    if flags is None or not bool(flags.any()):
        raise ValueError('stress and virial are not defined for a non-periodic system '
                         '(pbc is False in every direction)')
    cells = cell.reshape(-1, 3, 3).expand(num_graphs, 3, 3)
    strain = torch.zeros(num_graphs, 3, 3, dtype=pos.dtype, device=pos.device,
                         requires_grad=True)
    symmetric = 0.5 * (strain + strain.transpose(-1, -2))
    index = torch.zeros(pos.size(0), dtype=torch.long,
                        device=pos.device) if batch is None else batch
    pos_in = pos + torch.einsum('na,nab->nb', pos, symmetric.index_select(0, index))
    cell_in = cells + cells @ symmetric
    return cell_in, strain, pos_in


def _hessian(gradient: Tensor, pos: Tensor, create_graph: bool) -> Tensor:
    # One backward pass per coordinate: d(dE/dr_a)/dr for a = 3i + alpha.
    flat = gradient.reshape(-1)
    rows = []
    for a in range(flat.numel()):
        (row, ) = torch.autograd.grad(flat[a], pos, retain_graph=True,
                                      create_graph=create_graph, allow_unused=True)
        rows.append(torch.zeros_like(pos).reshape(-1) if row is None else row.reshape(-1))
    return torch.stack(rows) if rows else gradient.new_zeros(0, 0)
