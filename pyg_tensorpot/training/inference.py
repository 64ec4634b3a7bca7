r"""Predictions of any potential on batches and whole datasets (no Lightning needed)."""
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.loader import DataLoader

from pyg_tensorpot.training.builders import supports_keyword
from pyg_tensorpot.training.metrics import ErrorAccumulator


def predict(
    model: torch.nn.Module,
    batch,
    forces: bool,
    create_graph: bool = False,
    hierarchicality: bool = False,
    dtype: Optional[torch.dtype] = None,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    r"""Energies (and forces :math:`-\partial E/\partial\mathbf{r}`, and the hierarchicality)
    of a batch, for any model whose ``forward(z, pos, batch)`` returns per-structure energies.

    Args:
        model (torch.nn.Module): The potential.
        batch (torch_geometric.data.Batch): Structures with :obj:`z`, :obj:`pos`,
            :obj:`batch`.
        forces (bool): Compute forces by autograd.
        create_graph (bool, optional): Keep the graph of the forces (for a force loss).
            (default: :obj:`False`)
        hierarchicality (bool, optional): Ask the model for its hierarchicality
            (``forward(..., return_hierarchicality=True)``). (default: :obj:`False`)
        dtype (torch.dtype, optional): Floating-point type of the positions; defaults to the
            model's. (default: :obj:`None`)

    Returns:
        (energy, forces, hierarchicality): :obj:`[num_graphs]`, :obj:`[num_atoms, 3]` or
        :obj:`None`, :obj:`[num_graphs]` or :obj:`None`.
    """
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()),
                     torch.get_default_dtype())
    z = batch.z.long()
    pos = batch.pos.to(dtype)
    kwargs: Dict[str, Any] = {}
    if hierarchicality:
        kwargs['return_hierarchicality'] = True
    if supports_keyword(model.forward, 'num_graphs'):
        kwargs['num_graphs'] = int(batch.num_graphs)

    def run(positions: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        out = model(z, positions, batch.batch, **kwargs)
        hier = None
        if isinstance(out, (tuple, list)):
            out, hier = out[0], (out[1] if hierarchicality else None)
        return out.reshape(-1), hier

    if not forces:
        energy, hier = run(pos)
        return energy, None, hier
    with torch.enable_grad():
        positions = pos.detach().requires_grad_(True)
        energy, hier = run(positions)
        (gradient, ) = torch.autograd.grad(energy.sum(), positions, create_graph=create_graph)
    if not create_graph:
        energy = energy.detach()
        hier = None if hier is None else hier.detach()
    return energy, -gradient, hier


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
            energy, forces, _ = predict(model, batch, forces_t is not None, dtype=dtype)
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
