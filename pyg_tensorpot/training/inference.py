r"""Predictions of any potential on batches and whole datasets (no Lightning needed)."""
from typing import Any, Dict, Optional, Tuple

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
    hierarchicality: bool = False,
    stress: bool = False,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    r"""Energies (and forces, stress, the hierarchicality) of a batch through
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
        hierarchicality (bool, optional): Ask the model for its hierarchicality
            (``forward(..., return_hierarchicality=True)``). (default: :obj:`False`)
        stress (bool, optional): Compute the stress of the (periodic) structures.
            (default: :obj:`False`)

    Returns:
        (energy, forces, hierarchicality, stress): :obj:`[num_graphs]`, :obj:`[num_atoms, 3]`
        or :obj:`None`, :obj:`[num_graphs]` or :obj:`None`, :obj:`[num_graphs, 3, 3]` or
        :obj:`None`.
    """
    wanted = ['energy'] + (['forces'] if forces else []) + (['stress'] if stress else [])
    kwargs: Dict[str, Any] = {'return_hierarchicality': True} if hierarchicality else {}
    out = compute_properties(model, batch, properties=wanted, create_graph=create_graph,
                             model_kwargs=kwargs)
    return (out['energy'].reshape(-1), out.get('forces'), out.get('aux'), out.get('stress'))


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


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset,
    batch_size: int = 64,
    device: Optional[torch.device] = None,
    energy_key: str = 'energy',
    forces_key: str = 'forces',
    keep_predictions: bool = True,
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
        keep_predictions (bool, optional): Also return all predictions (for parity plots).
            (default: :obj:`True`)

    Returns:
        (dict, dict): The metrics of :meth:`ErrorAccumulator.compute` and, if requested,
        float64 arrays :obj:`energy_pred`, :obj:`energy_true`, :obj:`num_atoms`,
        :obj:`forces_pred`, :obj:`forces_true`.
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
    finally:
        model.train(was_training)
    predictions = {k: np.concatenate(v) for k, v in kept.items()}
    return errors.compute(), predictions
