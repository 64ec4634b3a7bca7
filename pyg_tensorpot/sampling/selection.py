r"""Active learning: choose the conformations to label where a committee disagrees most.

The query-by-committee criterion of ANI-1x (Smith et al., J. Chem. Phys. 148, 241733 (2018))
is the spread of the committee's energies normalised by the square root of the number of
atoms (the spread of a sum of :math:`N` independent atomic errors grows as
:math:`\sqrt{N}`),

.. math::
    \rho = \frac{s_E}{\sqrt{N}}, \qquad
    s_E = \sqrt{\frac{1}{M-1}\sum_{m=1}^{M} (E_m - \bar{E})^2},

labelled where :math:`\rho` exceeds a threshold (0.23 kcal/mol = 0.0100 eV there). The force
spread (the mean over atoms and components of the members' sample standard deviation) is a
second score for conformations whose energies agree but whose forces do not.

:func:`committee_scores` works on any committee's stacked predictions (e.g. the 8 ANI-1x
networks); :func:`ensemble_scores` runs a :class:`~pyg_tensorpot.models.Ensemble` of this
package's models on PyG batches. :func:`select` then takes the most disputed conformations,
at most a given number per molecule, so that one hard molecule does not fill the queue.
"""
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

#: ANI-1x's selection threshold on :math:`\rho` (0.23 kcal/mol), in eV.
ANI1X_RHO_THRESHOLD_EV = 0.23 * 4.184e3 / (6.02214076e23 * 1.602176634e-19)


def committee_scores(energies: np.ndarray, forces: Optional[Sequence[np.ndarray]] = None
                     ) -> Dict[str, np.ndarray]:
    r"""Disagreement of a committee on :math:`B` conformations.

    Args:
        energies (numpy.ndarray): Member energies (eV) :obj:`[M, B]`, :math:`M \ge 2`.
        forces (Sequence[numpy.ndarray], optional): Per conformation, the member forces
            (eV/Angstrom) :obj:`[M, N_b, 3]`. Without them :math:`N_b` is unknown and only
            :obj:`energy_std` is returned. (default: :obj:`None`)

    Returns:
        :obj:`energy_std` :obj:`[B]` (eV); with forces also :obj:`num_atoms`, :obj:`rho`
        (eV, :math:`s_E/\sqrt{N}`) and :obj:`forces_std` (eV/Angstrom), each :obj:`[B]`.
    """
    energies = np.asarray(energies, dtype=np.float64)
    if energies.ndim != 2 or energies.shape[0] < 2:
        raise ValueError(f'energies must be [num_members >= 2, num_conformations], got shape '
                         f'{list(energies.shape)}')
    out = {'energy_std': energies.std(0, ddof=1)}
    if forces is not None:
        if len(forces) != energies.shape[1]:
            raise ValueError(f'{len(forces)} force arrays for {energies.shape[1]} conformations')
        num_atoms, forces_std = [], []
        for k, f in enumerate(forces):
            f = np.asarray(f, dtype=np.float64)
            if f.ndim != 3 or f.shape[0] != energies.shape[0] or f.shape[2] != 3:
                raise ValueError(f'forces of conformation {k} must be [{energies.shape[0]}, '
                                 f'num_atoms, 3], got {list(f.shape)}')
            num_atoms.append(f.shape[1])
            forces_std.append(float(f.std(0, ddof=1).mean()))
        out['num_atoms'] = np.asarray(num_atoms, dtype=np.int64)
        out['rho'] = out['energy_std'] / np.sqrt(out['num_atoms'])
        out['forces_std'] = np.asarray(forces_std)
    return out


def ensemble_scores(ensemble: torch.nn.Module, structures: Sequence, batch_size: int = 32
                    ) -> Dict[str, np.ndarray]:
    r""":func:`committee_scores` of a :class:`~pyg_tensorpot.models.Ensemble` on PyG
    :obj:`Data` structures (with :obj:`z` and :obj:`pos`), in batches.

    Args:
        ensemble (Ensemble): The committee.
        structures (Sequence[torch_geometric.data.Data]): The conformations.
        batch_size (int, optional): Structures per batch. (default: :obj:`32`)
    """
    from torch_geometric.data import Batch
    if not hasattr(ensemble, 'compute'):
        raise TypeError(f'{type(ensemble).__name__} is not a committee: use '
                        f'pyg_tensorpot.models.Ensemble([...])')
    energies: List[np.ndarray] = []
    forces: List[np.ndarray] = []
    for start in range(0, len(structures), batch_size):
        batch = Batch.from_data_list(list(structures[start:start + batch_size]))
        out = ensemble.compute(batch, properties=('energy', 'forces'))
        energies.append(out['energy_members'].detach().double().numpy())
        members = out['forces_members'].detach().double().numpy()
        counts = torch.bincount(batch.batch, minlength=batch.num_graphs).tolist()
        offsets = np.cumsum([0] + counts)
        forces += [members[:, offsets[k]:offsets[k + 1]] for k in range(len(counts))]
    if not energies:
        raise ValueError('no structures to score')
    return committee_scores(np.concatenate(energies, axis=1), forces)


def select(scores: np.ndarray, count: int, groups: Optional[Sequence] = None,
           max_per_group: Optional[int] = None, threshold: Optional[float] = None
           ) -> List[int]:
    r"""Indices of the :obj:`count` highest :obj:`scores`, highest first (ties by index), at
    most :obj:`max_per_group` from one group, only scores above :obj:`threshold`.

    Args:
        scores (numpy.ndarray): One score per candidate :obj:`[B]`, e.g. :obj:`rho`.
        count (int): Candidates wanted.
        groups (Sequence, optional): The group (e.g. molecule) of each candidate.
            (default: :obj:`None`)
        max_per_group (int, optional): Cap per group; needs :obj:`groups`.
            (default: :obj:`None`)
        threshold (float, optional): Leave out scores at or below it, e.g.
            :data:`ANI1X_RHO_THRESHOLD_EV`. (default: :obj:`None`)
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f'scores must be one number per candidate, got shape '
                         f'{list(scores.shape)}')
    if not np.isfinite(scores).all():
        raise ValueError('scores hold NaN or infinite values: a committee member failed')
    if count < 0:
        raise ValueError(f'count must be >= 0, got {count}')
    if max_per_group is not None and groups is None:
        raise ValueError('max_per_group needs the groups of the candidates')
    if groups is not None and len(groups) != scores.size:
        raise ValueError(f'{len(groups)} groups for {scores.size} candidates')
    order = sorted(range(scores.size), key=lambda k: (-scores[k], k))
    taken: Dict = {}
    out: List[int] = []
    for k in order:
        if len(out) >= count:
            break
        if threshold is not None and not scores[k] > threshold:
            break
        if max_per_group is not None:
            group = groups[k]
            if taken.get(group, 0) >= max_per_group:
                continue
            taken[group] = taken.get(group, 0) + 1
        out.append(k)
    return out


def expected_spread(num_atoms: int, rho: float = ANI1X_RHO_THRESHOLD_EV) -> float:
    r"""The energy spread :math:`\rho\sqrt{N}` (eV) at which a molecule of :obj:`num_atoms`
    atoms reaches the selection threshold :obj:`rho`."""
    return rho * math.sqrt(num_atoms)
