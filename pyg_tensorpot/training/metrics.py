r"""Error metrics of energies and forces, and the error table printed after training."""
import math
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from pyg_tensorpot.utils.units import EV_TO_KCAL_PER_MOL

#: Names of the running sums, in a fixed order (so they can be all-reduced as one tensor).
_SUMS = ('n_structures', 'energy_abs', 'energy_sq', 'energy_atom_abs', 'energy_atom_sq',
         'n_force_components', 'forces_abs', 'forces_sq')


class ErrorAccumulator:
    r"""Running sums of energy and force errors over batches, in float64, from which the mean
    absolute error (MAE) and root-mean-square error (RMSE) follow exactly, also across the
    processes of a distributed run (:meth:`reduce` sums the partial sums).

    Energy errors are per structure (:obj:`energy_*`) and per atom, :math:`(E-\hat E)/N`
    (:obj:`energy_per_atom_*`); force errors per Cartesian component (:obj:`forces_*`), in the
    units of the data (eV and eV/Angstrom for this package's datasets). Batches that give the
    group of every structure add the errors of the energies relative to their group's mean
    (:obj:`relative_energy_*`, :func:`~pyg_tensorpot.training.losses.group_relative_errors`
    over all batches, so a group may span several); those are kept per structure and are not
    summed over processes.

    Args:
        device (torch.device, optional): Device of the sums. (default: :obj:`None`)
    """
    def __init__(self, device: Optional[torch.device] = None):
        self.sums = torch.zeros(len(_SUMS), dtype=torch.float64, device=device)
        self._groups: List[Tensor] = []
        self._group_errors: List[Tensor] = []

    def reset(self) -> None:
        self.sums.zero_()
        self._groups, self._group_errors = [], []

    @torch.no_grad()
    def update(self, energy: Optional[Tensor], energy_target: Optional[Tensor],
               num_atoms: Tensor, forces: Optional[Tensor] = None,
               forces_target: Optional[Tensor] = None, group: Optional[Tensor] = None) -> None:
        """Adds one batch (any of energies, forces and groups may be missing)."""
        if self.sums.device != num_atoms.device:
            self.sums = self.sums.to(num_atoms.device)
        s = self.sums
        if energy is not None and energy_target is not None:
            diff = energy.detach().to(torch.float64) - energy_target.detach().to(torch.float64)
            per_atom = diff / num_atoms.to(torch.float64)
            s[0] += diff.numel()
            s[1] += diff.abs().sum()
            s[2] += diff.square().sum()
            s[3] += per_atom.abs().sum()
            s[4] += per_atom.square().sum()
            if group is not None:
                self._groups.append(group.detach().reshape(-1).cpu())
                self._group_errors.append(diff.reshape(-1).cpu())
        if forces is not None and forces_target is not None:
            diff = forces.detach().to(torch.float64) - forces_target.detach().to(torch.float64)
            s[5] += diff.numel()
            s[6] += diff.abs().sum()
            s[7] += diff.square().sum()

    def reduce(self, all_reduce_sum: Callable[[Tensor], Tensor]) -> None:
        """Replaces the sums by their totals over all processes."""
        self.sums = all_reduce_sum(self.sums)

    def compute(self) -> Dict[str, float]:
        """MAE and RMSE of everything that was accumulated (absent keys were not)."""
        s = self.sums.tolist()
        out: Dict[str, float] = {}
        n, m = s[0], s[5]
        if n > 0:
            out['energy_mae'] = s[1] / n
            out['energy_rmse'] = math.sqrt(s[2] / n)
            out['energy_per_atom_mae'] = s[3] / n
            out['energy_per_atom_rmse'] = math.sqrt(s[4] / n)
            out['energy_mse'] = s[2] / n
            out['energy_per_atom_mse'] = s[4] / n
        if m > 0:
            out['forces_mae'] = s[6] / m
            out['forces_rmse'] = math.sqrt(s[7] / m)
            out['forces_mse'] = s[7] / m
        if self._groups:
            from pyg_tensorpot.training.losses import group_relative_errors
            diff = torch.cat(self._group_errors)
            relative = group_relative_errors(diff, torch.zeros_like(diff), torch.cat(self._groups))
            if relative.numel():
                out['relative_energy_mae'] = float(relative.abs().mean())
                out['relative_energy_mse'] = float(relative.square().mean())
                out['relative_energy_rmse'] = math.sqrt(out['relative_energy_mse'])
        out['num_structures'] = n
        return out


def loss_from_metrics(metrics: Dict[str, float], loss_type: str, energy_weight: float,
                      force_weight: float, per_atom_energy: bool,
                      relative_energy_weight: float = 0.0) -> float:
    r"""The training objective :math:`w_E\ell_E + w_F\ell_F + w_R\ell_R` evaluated over a
    whole set (validation), from :meth:`ErrorAccumulator.compute`."""
    def term(prefix: str) -> Optional[float]:
        if f'{prefix}_mae' not in metrics:
            return None
        if loss_type == 'mse':
            return metrics[f'{prefix}_mse']
        if loss_type == 'mae':
            return metrics[f'{prefix}_mae']
        return metrics[f'{prefix}_rmse'] + metrics[f'{prefix}_mae']

    total = 0.0
    energy = term('energy_per_atom' if per_atom_energy else 'energy')
    if energy is not None and energy_weight > 0:
        total += energy_weight * energy
    forces = term('forces')
    if forces is not None and force_weight > 0:
        total += force_weight * forces
    relative = term('relative_energy')
    if relative is not None and relative_energy_weight > 0:
        total += relative_energy_weight * relative
    return total


_ROWS = (
    ('energy / structure', 'energy_mae', 'energy_rmse', 'eV', 'meV', 'kcal/mol'),
    ('energy / atom', 'energy_per_atom_mae', 'energy_per_atom_rmse', 'eV', 'meV', 'kcal/mol'),
    ('forces (per component)', 'forces_mae', 'forces_rmse', 'eV/Å', 'meV/Å', 'kcal/mol/Å'),
    ('energy rel. to group mean', 'relative_energy_mae', 'relative_energy_rmse', 'eV', 'meV',
     'kcal/mol'),
)


def format_error_table(metrics: Dict[str, float], title: Optional[str] = None) -> str:
    """The errors of :meth:`ErrorAccumulator.compute` (data in eV and eV/Angstrom) as a text
    table in eV, meV and kcal/mol."""
    header = ('quantity', 'metric', 'eV(/Å)', 'meV(/Å)', 'kcal/mol(/Å)')
    rows: List[tuple] = []
    for label, mae_key, rmse_key, *_ in _ROWS:
        for metric, key in (('MAE', mae_key), ('RMSE', rmse_key)):
            if key in metrics:
                value = metrics[key]
                rows.append((label, metric, f'{value:.5f}', f'{value * 1e3:.2f}',
                             f'{value * EV_TO_KCAL_PER_MOL:.4f}'))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def line(cells) -> str:
        return '  '.join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    rule = '-' * len(line(header))
    out = []
    if title:
        out.append(title)
    out += [rule, line(header), rule] + [line(r) for r in rows] + [rule]
    return '\n'.join(out)
