"""Per-element reference energies by least squares, for any dataset."""
from typing import Dict, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data

from pyg_tensorpot.utils.units import HARTREE_TO_EV

#: wB97X/6-31G(d) self energies (Hartree) of the original ANI-1 paper (Smith et al., Chem. Sci.
#: 8, 3192 (2017)); torchmd-net uses them as the atomref of ANI-1 and COMP6 v1, and its ANI-1x
#: class subtracted them from the energies in the TensorNet paper era (2023 - Feb 2024).
ANI1_SELF_ENERGIES_HARTREE: Dict[int, float] = {
    1: -0.500607632585, 6: -37.8302333826, 7: -54.5680045287, 8: -75.0362229210}

#: Linear-fit self energies (Hartree) of the ANI-1x model (``sae_linfit.dat`` of torchani's
#: ``ani-1x_8x``), fitted to the ANI-1x wB97X/6-31G(d) energies; torchmd-net's ``ANI1X``
#: ``get_atomref()`` (3.x).
ANI1X_SELF_ENERGIES_HARTREE: Dict[int, float] = {
    1: -0.600952980, 6: -38.08316124, 7: -54.70775770, 8: -75.19446356}

#: Linear-fit self energies (Hartree) of ANI-1ccx (CCSD(T)*/CBS), as in torchmd-net's
#: ``ANI1CCX``.
ANI1CCX_SELF_ENERGIES_HARTREE: Dict[int, float] = {
    1: -0.5991501324919538, 6: -38.03750806057356, 7: -54.67448347695333,
    8: -75.16043537275567}


#: Every published self-energy table of the package by name, the one place each lives: the
#: datasets (``ANI1x(self_energies=...)``, COMP6), examples and benchmarks take them from here.
SELF_ENERGY_TABLES: Dict[str, Dict[int, float]] = {
    'ani1': ANI1_SELF_ENERGIES_HARTREE,
    'ani1x': ANI1X_SELF_ENERGIES_HARTREE,
    'ani1ccx': ANI1CCX_SELF_ENERGIES_HARTREE,
}

#: The level of theory of each table of :data:`SELF_ENERGY_TABLES` (``'ani1'`` and
#: ``'ani1x'`` are two fits at one level, kept both because published models use either).
LEVELS_OF_THEORY: Dict[str, str] = {
    'ani1': 'wB97X/6-31G(d)',
    'ani1x': 'wB97X/6-31G(d)',
    'ani1ccx': 'CCSD(T)*/CBS',
}


def self_energies_ev(name: str) -> Dict[int, float]:
    """The table :obj:`name` of :data:`SELF_ENERGY_TABLES` as ``{Z: eV}``.

    Raises:
        KeyError: No table of that name (the message lists them).
    """
    if name not in SELF_ENERGY_TABLES:
        raise KeyError(f"no reference-energy table {name!r}; the tables are "
                       f"{', '.join(f'{k} ({LEVELS_OF_THEORY[k]})' for k in SELF_ENERGY_TABLES)}")
    return hartree_to_ev(SELF_ENERGY_TABLES[name])


def hartree_to_ev(table: Mapping[int, float]) -> Dict[int, float]:
    """Converts a ``{Z: Hartree}`` table to ``{Z: eV}``."""
    return {int(k): float(v) * HARTREE_TO_EV for k, v in table.items()}


def atomref_tensor(atomref: Mapping[int, float], max_z: int = 128) -> Tensor:
    """A ``{Z: energy}`` table as a ``[max_z]`` float64 tensor (zeros elsewhere), the layout
    :meth:`~pyg_tensorpot.models.AtomisticModel.set_atomref` also accepts."""
    out = torch.zeros(max_z, dtype=torch.float64)
    for number, energy in atomref.items():
        if not 0 < int(number) < max_z:
            raise ValueError(f'atomref for Z={number} is outside 1..{max_z - 1}')
        out[int(number)] = float(energy)
    return out


def reference_energy_sum(z: Tensor, batch: Optional[Tensor],
                         atomref: Mapping[int, float]) -> Tensor:
    """Sum of the reference energies of the atoms of each structure (float64)."""
    table = atomref_tensor(atomref, max(128, int(z.max()) + 1 if z.numel() else 1))
    per_atom = table[z.long()]
    if batch is None:
        return per_atom.sum().reshape(1)
    out = torch.zeros(int(batch.max()) + 1 if batch.numel() else 0, dtype=torch.float64)
    return out.index_add_(0, batch, per_atom)


def fit_reference_energies(
    dataset: Iterable[Data],
    elements: Optional[Sequence[int]] = None,
    energy_key: str = 'energy',
) -> Dict[int, float]:
    r"""Fits per-element energies :math:`E^\mathrm{ref}_Z` so that
    :math:`E \approx \sum_i E^\mathrm{ref}_{z_i}` in the least-squares sense,

    .. math::
        \mathbf{e} = \operatorname{argmin}_{\mathbf{e}} \|\mathbf{C}\mathbf{e} -
        \mathbf{E}\|^2 = \mathbf{C}^{+}\mathbf{E},

    with :math:`C_{mZ}` the number of atoms of element :math:`Z` in structure :math:`m`
    (minimum-norm solution when elements always appear together). Fit it on the training split
    only.

    Args:
        dataset (Iterable[Data]): Structures with :obj:`z` and :obj:`energy` (a PyG dataset, a
            subset or a list; batches from a :obj:`DataLoader` also work).
        elements (Sequence[int], optional): Atomic numbers to fit; defaults to those present.
            (default: :obj:`None`)
        energy_key (str, optional): Name of the energy attribute. (default: :obj:`"energy"`)

    Returns:
        dict: :obj:`{Z: energy}` in the units of the dataset's energies.
    """
    fast = getattr(dataset, 'element_counts', None)
    if callable(fast) and getattr(dataset, 'slices', None) is not None:
        # Vectorised path for this package's in-memory datasets (millions of structures).
        counts_t, numbers = dataset.element_counts()
        energies_t = dataset.energies(energy_key)
        if counts_t.size(0) == 0:
            raise ValueError('cannot fit reference energies on an empty dataset')
    else:
        counts, energies = [], []
        for data in dataset:
            z = data.z.long()
            batch = getattr(data, 'batch', None)
            if batch is None:
                batch = torch.zeros_like(z)
            num_graphs = int(batch.max()) + 1 if z.numel() else 0
            count = torch.zeros(num_graphs, 128, dtype=torch.float64)
            count.index_put_((batch, z), torch.ones_like(z, dtype=torch.float64),
                             accumulate=True)
            counts.append(count)
            energies.append(getattr(data, energy_key).detach().to(torch.float64).reshape(-1))
        if not counts:
            raise ValueError('cannot fit reference energies on an empty dataset')
        counts_t = torch.cat(counts)
        energies_t = torch.cat(energies)
        numbers = (counts_t.sum(0) > 0).nonzero().flatten().tolist()
        counts_t = counts_t[:, numbers]
    if counts_t.size(0) != energies_t.size(0):
        raise ValueError(f"'{energy_key}' must hold one energy per structure")
    if not torch.isfinite(energies_t).all():
        raise ValueError('the energies contain NaN or infinite values')
    present = [int(v) for v in numbers]
    if elements is None:
        elements = present
    elements = [int(e) for e in elements]
    missing = sorted(set(present) - set(elements))
    if missing:
        raise ValueError(f'the data contain elements {missing} that are not in {list(elements)}')
    # Elements asked for but absent get an all-zero column (and a zero minimum-norm energy).
    matrix = torch.zeros(counts_t.size(0), len(elements), dtype=torch.float64)
    for j, number in enumerate(elements):
        if number in present:
            matrix[:, j] = counts_t[:, present.index(number)]
    solution = torch.linalg.pinv(matrix) @ energies_t
    return {e: float(v) for e, v in zip(elements, solution.tolist())}
