r"""The training objective: weighted energy, force, stress and group-relative energy errors
plus model regularisers."""
from typing import Callable, Dict, Mapping, Optional

import torch
from torch import Tensor

LOSS_TYPES = ('mse', 'mae', 'rmse+mae')


def error_loss(prediction: Tensor, target: Tensor, loss_type: str) -> Tensor:
    r"""Mean error of :obj:`prediction` against :obj:`target` over all elements:
    :obj:`"mse"` :math:`\langle\Delta^2\rangle`, :obj:`"mae"` :math:`\langle|\Delta|\rangle`,
    or :obj:`"rmse+mae"` :math:`\sqrt{\langle\Delta^2\rangle} + \langle|\Delta|\rangle`
    (hippynn's ANI-1x objective)."""
    diff = prediction - target
    if loss_type == 'mse':
        return diff.square().mean()
    if loss_type == 'mae':
        return diff.abs().mean()
    if loss_type == 'rmse+mae':
        return diff.square().mean().sqrt() + diff.abs().mean()
    raise ValueError(f"loss type must be one of {LOSS_TYPES}, got '{loss_type}'")


def group_relative_errors(energy: Tensor, target: Tensor, group: Tensor) -> Tensor:
    r"""The energy errors :math:`\Delta_i = E_i - \hat E_i` of the structures in a group
    (:obj:`group` :math:`\geq 0`) minus the mean error of their group,
    :math:`\Delta_i - \langle\Delta\rangle_{g(i)}`: the errors of the energies relative to
    the group's mean (a dissociation scan's conformational energies), which no constant
    offset per group changes. Structures of group -1 are left out.

    Args:
        energy (torch.Tensor): Predicted energies :obj:`[num_graphs]`.
        target (torch.Tensor): Reference energies :obj:`[num_graphs]`.
        group (torch.Tensor): Group of every structure :obj:`[num_graphs]` (-1 for none).

    Returns:
        torch.Tensor: One error per structure in a group, in batch order.
    """
    group = group.reshape(-1)
    if group.numel() != energy.numel():
        raise ValueError(f'group has {group.numel()} entries for {energy.numel()} energies')
    member = group >= 0
    _, index = torch.unique(group[member], return_inverse=True)
    diff = energy.reshape(-1)[member] - target.reshape(-1)[member].to(energy.dtype)
    count = torch.bincount(index, minlength=1).to(diff.dtype)
    mean = torch.zeros_like(count).index_add_(0, index, diff) / count.clamp(min=1)
    return diff - mean[index]


class EnergyForceLoss(torch.nn.Module):
    r"""The weighted loss of an interatomic potential,

    .. math::
        L = w_E\,\ell(E, \hat E) + w_F\,\ell(\mathbf{F}, \hat{\mathbf{F}})
        + w_S\,\ell(\boldsymbol{\sigma}, \hat{\boldsymbol{\sigma}})
        + w_R\,\ell(\Delta_i - \langle\Delta\rangle_{g(i)}) + \sum_k w_k R_k,

    with :math:`\ell` the mean squared or absolute error (energies per molecule, or per atom
    :math:`(E-\hat E)/N`; forces and stress per Cartesian component; the energy errors
    relative to their group's mean, :func:`group_relative_errors`, per molecule in eV, over
    the structures of a batch that are in a group) and :math:`R_k` the
    penalty terms the model adds
    (:meth:`~pyg_tensorpot.models.AtomisticModel.graph_outputs_and_regularization`, e.g. HIP-NN's
    :obj:`"hierarchicality"` and :obj:`"l2"`), weighted by name.

    With :obj:`energy_loss_ema` :math:`=\alpha<1` the energy term of the training loss is
    smoothed over batches as in torchmd-net, :math:`\alpha\,\ell + (1-\alpha)\,
    \mathrm{EMA}_{\mathrm{prev}}` (the EMA is detached, so the energy gradient is scaled by
    :math:`\alpha`). The smoothed value is part of the module's state (saved in checkpoints).

    Args:
        energy_weight (float, optional): :math:`w_E`. (default: :obj:`1.0`)
        force_weight (float, optional): :math:`w_F`. (default: :obj:`100.0`)
        loss_type (str, optional): :obj:`"mse"`, :obj:`"mae"` or :obj:`"rmse+mae"`.
            (default: :obj:`"mse"`)
        per_atom_energy (bool, optional): Energy errors per atom. (default: :obj:`False`)
        energy_loss_ema (float, optional): :math:`\alpha`; 1 disables the smoothing.
            (default: :obj:`1.0`)
        stress_weight (float, optional): :math:`w_S`. (default: :obj:`0.0`)
        regularization (Mapping[str, float], optional): :math:`w_k` by term name; terms
            without a weight are not added. (default: :obj:`None`)
        relative_energy_weight (float, optional): :math:`w_R`. (default: :obj:`0.0`)
    """
    def __init__(self, energy_weight: float = 1.0, force_weight: float = 100.0,
                 loss_type: str = 'mse', per_atom_energy: bool = False,
                 energy_loss_ema: float = 1.0, stress_weight: float = 0.0,
                 regularization: Optional[Mapping[str, float]] = None,
                 relative_energy_weight: float = 0.0):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got '{loss_type}'")
        if not 0 < energy_loss_ema <= 1:
            raise ValueError(f'energy_loss_ema must be in (0, 1], got {energy_loss_ema}')
        self.energy_weight = float(energy_weight)
        self.force_weight = float(force_weight)
        self.loss_type = loss_type
        self.per_atom_energy = per_atom_energy
        self.energy_loss_ema = float(energy_loss_ema)
        self.stress_weight = float(stress_weight)
        self.regularization = {str(k): float(w) for k, w in (regularization or {}).items()
                               if float(w) > 0}
        self.relative_energy_weight = float(relative_energy_weight)
        self._ema_value: Optional[float] = None

    def energy_error_terms(self, energy: Tensor, target: Tensor, num_atoms: Tensor) -> Tensor:
        """The energy errors entering the loss, per molecule or per atom."""
        diff = energy - target
        return diff / num_atoms.to(diff.dtype) if self.per_atom_energy else diff

    def forward(
        self,
        energy: Optional[Tensor],
        energy_target: Optional[Tensor],
        num_atoms: Tensor,
        forces: Optional[Tensor] = None,
        forces_target: Optional[Tensor] = None,
        regularization_terms: Optional[Mapping[str, Tensor]] = None,
        smooth: bool = False,
        reduce_mean: Optional[Callable[[Tensor], Tensor]] = None,
        stress: Optional[Tensor] = None,
        stress_target: Optional[Tensor] = None,
        group: Optional[Tensor] = None,
    ) -> Dict[str, Tensor]:
        r"""
        Args:
            energy (torch.Tensor, optional): Predicted energies :obj:`[num_graphs]`.
            energy_target (torch.Tensor, optional): Reference energies :obj:`[num_graphs]`.
            num_atoms (torch.Tensor): Atoms per structure :obj:`[num_graphs]`.
            forces (torch.Tensor, optional): Predicted forces :obj:`[num_atoms, 3]`.
                (default: :obj:`None`)
            forces_target (torch.Tensor, optional): Reference forces. (default: :obj:`None`)
            regularization_terms (Mapping[str, torch.Tensor], optional): The model's
                scalar penalty terms by name. (default: :obj:`None`)
            smooth (bool, optional): Apply (and update) the energy-loss EMA (training only).
                (default: :obj:`False`)
            reduce_mean (callable, optional): Averages a scalar over the processes of a
                distributed run, so that the EMA is the same on all of them and equal to a
                single-process run on the same global batch. (default: :obj:`None`)
            stress (torch.Tensor, optional): Predicted stress :obj:`[num_graphs, 3, 3]` in
                eV/A^3. (default: :obj:`None`)
            stress_target (torch.Tensor, optional): Reference stress. (default: :obj:`None`)
            group (torch.Tensor, optional): Group of every structure :obj:`[num_graphs]`
                (-1 for none), for the relative energies. (default: :obj:`None`)

        Returns:
            dict: :obj:`loss` (the total) and its unweighted parts :obj:`energy`,
            :obj:`forces`, :obj:`stress`, :obj:`relative_energy` and every weighted penalty
            term (by its name) where present.
        """
        parts: Dict[str, Tensor] = {}
        total: Optional[Tensor] = None
        if energy is not None and energy_target is not None and self.energy_weight > 0:
            errors = self.energy_error_terms(energy, energy_target, num_atoms)
            loss_e = error_loss(errors, torch.zeros_like(errors), self.loss_type)
            if smooth and self.energy_loss_ema < 1:
                if self._ema_value is not None:
                    loss_e = (self.energy_loss_ema * loss_e +
                              (1 - self.energy_loss_ema) * self._ema_value)
                value = loss_e.detach()
                if reduce_mean is not None:
                    value = reduce_mean(value)
                self._ema_value = float(value)
            parts['energy'] = loss_e
            total = self.energy_weight * loss_e
        if forces is not None and forces_target is not None and self.force_weight > 0:
            loss_f = error_loss(forces, forces_target, self.loss_type)
            parts['forces'] = loss_f
            term = self.force_weight * loss_f
            total = term if total is None else total + term
        if stress is not None and stress_target is not None and self.stress_weight > 0:
            loss_s = error_loss(stress, stress_target.to(stress.dtype), self.loss_type)
            parts['stress'] = loss_s
            term = self.stress_weight * loss_s
            total = term if total is None else total + term
        if (group is not None and energy is not None and energy_target is not None
                and self.relative_energy_weight > 0):
            errors = group_relative_errors(energy, energy_target, group)
            if errors.numel():
                loss_r = error_loss(errors, torch.zeros_like(errors), self.loss_type)
                parts['relative_energy'] = loss_r
                term = self.relative_energy_weight * loss_r
                total = term if total is None else total + term
        for name, value in (regularization_terms or {}).items():
            weight = self.regularization.get(name)
            if weight is not None:
                parts[name] = value
                term = weight * value
                total = term if total is None else total + term
        if total is None:
            raise ValueError('nothing to train on: the batch has no energies with '
                             'energy_weight > 0 and no forces with force_weight > 0')
        parts['loss'] = total
        return parts

    def get_extra_state(self) -> Dict[str, Optional[float]]:
        return {'energy_loss_ema_value': self._ema_value}

    def set_extra_state(self, state: Dict[str, Optional[float]]) -> None:
        self._ema_value = state.get('energy_loss_ema_value')

    def extra_repr(self) -> str:
        return (f'energy_weight={self.energy_weight}, force_weight={self.force_weight}, '
                f'stress_weight={self.stress_weight}, '
                f'relative_energy_weight={self.relative_energy_weight}, '
                f"loss_type='{self.loss_type}', per_atom_energy={self.per_atom_energy}, "
                f'energy_loss_ema={self.energy_loss_ema}, '
                f'regularization={self.regularization}')
