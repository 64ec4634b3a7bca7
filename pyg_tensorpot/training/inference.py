r"""Predictions of any potential on batches and whole datasets (no Lightning needed)."""
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.loader import DataLoader

from pyg_tensorpot.models.properties import compute_properties
from pyg_tensorpot.training.metrics import ErrorAccumulator


def predict(
    model: torch.nn.Module,
    batch,
    forces: bool,
    create_graph: bool = False,
    regularization: bool = False,
    stress: bool = False,
) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor], Optional[Tensor]]:
    r"""Energies (and forces, stress, the model's penalty terms) of a batch through
    :func:`~pyg_tensorpot.models.properties.compute_properties`; the batch's :obj:`cell`,
    :obj:`pbc` and :obj:`total_charge` are passed to the model, positions converted to its
    dtype.

    Args:
        model (torch.nn.Module): The potential.
        batch (torch_geometric.data.Batch): Structures with :obj:`z`, :obj:`pos`,
            :obj:`batch` (and :obj:`cell`, :obj:`pbc`, :obj:`total_charge` where present).
        forces (bool): Compute forces by autograd.
        create_graph (bool, optional): Keep the graph of the derivatives (for a force or
            stress loss). (default: :obj:`False`)
        regularization (bool, optional): Also compute the model's penalty terms for the
            loss (:meth:`~pyg_tensorpot.models.AtomisticModel.graph_outputs_and_regularization`).
            (default: :obj:`False`)
        stress (bool, optional): Compute the stress of the (periodic) structures.
            (default: :obj:`False`)

    Returns:
        (energy, forces, penalties, stress): :obj:`[num_graphs]`, :obj:`[num_atoms, 3]` or
        :obj:`None`, :obj:`{name: scalar}` (empty unless requested), :obj:`[num_graphs, 3, 3]`
        or :obj:`None`.
    """
    wanted = ['energy'] + (['forces'] if forces else []) + (['stress'] if stress else [])
    out = compute_properties(model, batch, properties=wanted, create_graph=create_graph,
                             regularization=regularization)
    prefix = 'regularization.'
    penalties = {key[len(prefix):]: value for key, value in out.items()
                 if key.startswith(prefix)}
    return out['energy'].reshape(-1), out.get('forces'), penalties, out.get('stress')


def batch_targets(batch, energy_key: str, forces_key: str, dtype: torch.dtype
                  ) -> Tuple[Optional[Tensor], Optional[Tensor], Tensor]:
    """``(energies [num_graphs], forces [num_atoms, 3], atoms per structure)`` of a batch."""
    energy = getattr(batch, energy_key, None)
    forces = getattr(batch, forces_key, None)
    if energy is not None:
        energy = energy.reshape(-1).to(dtype)
    if forces is not None:
        forces = forces.to(dtype)
    num_atoms = torch.bincount(batch.batch, minlength=int(batch.num_graphs))
    return energy, forces, num_atoms


def batch_group_labels(batch, key: str) -> np.ndarray:
    r"""One label per structure of a batch from its attribute :obj:`key`: a tensor with one
    value per structure (int64, or float64 for a floating-point attribute), or the list of
    strings PyG collates from a string attribute.

    Raises:
        KeyError: When the batch has no such attribute.
        ValueError: When the attribute does not hold one value per structure.
    """
    num_graphs = int(batch.num_graphs)
    value = getattr(batch, key, None)
    if value is None:
        raise KeyError(f"the structures have no attribute '{key}' to group the errors by")
    if isinstance(value, Tensor):
        if value.numel() != num_graphs:
            raise ValueError(f"'{key}' has {value.numel()} values for {num_graphs} structures: "
                             f"it is not one label per structure (shape {list(value.shape)})")
        value = value.detach().reshape(-1).cpu()
        if value.is_floating_point():
            return value.to(torch.float64).numpy()
        return value.to(torch.long).numpy()
    if isinstance(value, (list, tuple)) and len(value) == num_graphs:
        return np.asarray([str(v) for v in value], dtype=object)
    if isinstance(value, (str, int, float)) and num_graphs == 1:
        return np.asarray([str(value)], dtype=object)
    raise ValueError(f"'{key}' ({type(value).__name__}) is not one label per structure")


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset,
    batch_size: int = 64,
    device: Optional[torch.device] = None,
    energy_key: str = 'energy',
    forces_key: str = 'forces',
    keep_predictions: bool = True,
    group_key: Optional[str] = None,
) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    r"""Energy and force errors of :obj:`model` on every structure of :obj:`dataset`.

    Args:
        model (torch.nn.Module): The potential.
        dataset: Structures with :obj:`z`, :obj:`pos` and reference energies and/or forces.
        batch_size (int, optional): Structures per batch. (default: :obj:`64`)
        device (torch.device, optional): Where to run; defaults to the model's device.
            (default: :obj:`None`)
        energy_key (str, optional): Attribute with the energies. (default: :obj:`"energy"`)
        forces_key (str, optional): Attribute with the forces. (default: :obj:`"forces"`)
        keep_predictions (bool, optional): Also return all predictions (for parity plots
            and :func:`~pyg_tensorpot.training.report.accuracy_report`).
            (default: :obj:`True`)
        group_key (str, optional): Per-structure attribute (e.g. COMP6's :obj:`subset`)
            whose value is kept for every structure as :obj:`group`, for errors per group.
            (default: :obj:`None`)

    Returns:
        (dict, dict): The metrics of :meth:`ErrorAccumulator.compute` and, if requested,
        float64 arrays :obj:`energy_pred`, :obj:`energy_true`, :obj:`num_atoms`,
        :obj:`forces_pred`, :obj:`forces_true` (those the data has), the atomic numbers
        :obj:`z` (int64, one per atom, in the order of the forces) and, with
        :obj:`group_key`, :obj:`group` (one label per structure: int64 or float64 for a
        tensor attribute, str for a string attribute).

    Shapes:
        - **predictions** :obj:`energy_*`, :obj:`num_atoms`, :obj:`group`:
          :obj:`[num_structures]`; :obj:`forces_*`: :obj:`[num_atoms_total, 3]`;
          :obj:`z`: :obj:`[num_atoms_total]`.
    """
    was_training = model.training
    model.eval()
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device('cpu'))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()),
                 torch.get_default_dtype())
    errors = ErrorAccumulator(device)
    kept: Dict[str, list] = {}
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            batch = batch.to(device)
            energy_t, forces_t, num_atoms = batch_targets(batch, energy_key, forces_key, dtype)
            energy, forces, _, _ = predict(model, batch, forces_t is not None)
            errors.update(energy, energy_t, num_atoms, forces, forces_t)
            if keep_predictions:
                def keep(key: str, value: Optional[Tensor]) -> None:
                    if value is not None:
                        kept.setdefault(key, []).append(
                            value.detach().to(torch.float64).cpu().numpy())
                keep('energy_pred', energy if energy_t is not None else None)
                keep('energy_true', energy_t)
                keep('num_atoms', num_atoms)
                keep('forces_pred', forces)
                keep('forces_true', forces_t)
                kept.setdefault('z', []).append(batch.z.detach().to(torch.long).cpu().numpy())
                if group_key is not None:
                    kept.setdefault('group', []).append(
                        batch_group_labels(batch, group_key))
    finally:
        model.train(was_training)
    predictions = {k: np.concatenate(v) for k, v in kept.items()}
    if 'group' in predictions and predictions['group'].dtype == object:
        predictions['group'] = predictions['group'].astype(str)
    return errors.compute(), predictions
