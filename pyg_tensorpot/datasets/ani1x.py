"""The ANI-1x dataset (wB97X/6-31G(d) energies and forces, plus CCSD(T)/CBS and other levels)."""
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyg_tensorpot.datasets.arguments import DatasetArguments, Unpack
from pyg_tensorpot.datasets.base import AtomisticInMemoryDataset, RawFileError, logger, progress
from pyg_tensorpot.datasets.hdf5 import finite_as_float32, molecule_file
from pyg_tensorpot.datasets.reference_energies import SELF_ENERGY_TABLES, hartree_to_ev
from pyg_tensorpot.utils.units import HARTREE_TO_EV

#: Levels of theory of the release: ``level: (energy keys summed, forces key or None)``.
#: Composite levels add the correlation energy to the HF energy in the same basis.
ANI1X_LEVELS: Dict[str, Tuple[Tuple[str, ...], Optional[str]]] = {
    'wb97x_dz': (('wb97x_dz.energy',), 'wb97x_dz.forces'),
    'wb97x_tz': (('wb97x_tz.energy',), 'wb97x_tz.forces'),
    'ccsd(t)_cbs': (('ccsd(t)_cbs.energy',), None),
    'hf_dz': (('hf_dz.energy',), None),
    'hf_tz': (('hf_tz.energy',), None),
    'hf_qz': (('hf_qz.energy',), None),
    'mp2_dz': (('hf_dz.energy', 'mp2_dz.corr_energy'), None),
    'mp2_tz': (('hf_tz.energy', 'mp2_tz.corr_energy'), None),
    'mp2_qz': (('hf_qz.energy', 'mp2_qz.corr_energy'), None),
    'npno_ccsd(t)_dz': (('hf_dz.energy', 'npno_ccsd(t)_dz.corr_energy'), None),
    'npno_ccsd(t)_tz': (('hf_tz.energy', 'npno_ccsd(t)_tz.corr_energy'), None),
    'tpno_ccsd(t)_dz': (('hf_dz.energy', 'tpno_ccsd(t)_dz.corr_energy'), None),
}


_LEVEL_ATOMREF = {'wb97x_dz': 'ani1x', 'ccsd(t)_cbs': 'ani1ccx'}


def attribute_name(key: str) -> str:
    """The sample attribute name of an HDF5 key, e.g. ``'wb97x_dz.dipole'`` ->
    ``'wb97x_dz_dipole'``, ``'ccsd(t)_cbs.energy'`` -> ``'ccsd_t_cbs_energy'``."""
    return re.sub(r'_+', '_', re.sub(r'[^0-9a-zA-Z]+', '_', key)).strip('_')


def _extra_scale(key: str) -> float:
    return HARTREE_TO_EV if key.endswith('energy') or key.endswith('.forces') else 1.0


class ANI1x(AtomisticInMemoryDataset):
    r"""The ANI-1x dataset from `"The ANI-1ccx and ANI-1x data sets, coupled-cluster and
    density functional theory properties for molecules" <https://doi.org/10.1038/s41597-020-
    0473-z>`_ (Smith et al., Sci. Data 7, 134 (2020)): about 5 million conformations of
    organic molecules (H, C, N, O) selected by active learning, with wB97X/6-31G(d) energies
    and forces, and subsets at wB97X/def2-TZVPP, CCSD(T)*/CBS (ANI-1ccx), HF, MP2 and
    DLPNO-CCSD(T).

    Raw layout (``root/raw/ani1x-release.h5``): one group per empirical formula (e.g.
    ``C2H10N6O1``) with ``atomic_numbers`` ``(n,)``, ``coordinates`` ``(m, n, 3)``
    Angstrom, ``<level>.energy`` ``(m,)`` Hartree, ``wb97x_{dz,tz}.forces`` ``(m, n, 3)``
    Hartree/Angstrom (true forces), ``*.corr_energy`` (correlation energies, Hartree) and
    properties (dipoles, charges, ...). Missing values are NaN: a conformation is dropped when
    its energy, a position, a force or a requested extra is NaN (the count is logged). Samples
    carry ``z``, ``pos`` (Angstrom), ``energy`` (eV, float64), ``forces`` (eV/Angstrom, for the
    wB97X levels), ``molecule`` (index of the formula group) and the requested extras.

    **Self energies.** torchmd-net's ANI-1x loader changed convention: its HEAD serves total
    energies (:obj:`self_energies=None`, the default here), while the TensorNet paper models
    were trained on energies minus the ANI-1 wB97X/6-31G(d) self energies
    (:obj:`self_energies='ani1'`; torchmd-net subtracted them after casting the total energy to
    float32, here everything stays float64). ``'ani1x'`` (the ANI-1x linear fit,
    ``sae_linfit.dat``), ``'ani1ccx'`` or a custom ``{Z: eV}`` table also work.

    Args:
        root (str): Root folder.
        level (str, optional): Level of theory of ``energy``: ``'wb97x_dz'`` (wB97X/6-31G(d)),
            ``'wb97x_tz'`` (wB97X/def2-TZVPP), ``'ccsd(t)_cbs'`` (CCSD(T)*/CBS, about 0.5 M
            conformations), ``'hf_dz'``, ``'hf_tz'``, ``'hf_qz'``, ``'mp2_dz'``, ``'mp2_tz'``,
            ``'mp2_qz'``, ``'npno_ccsd(t)_dz'``, ``'npno_ccsd(t)_tz'``, ``'tpno_ccsd(t)_dz'``
            (the last six: HF energy plus the correlation energy in the same basis).
            (default: ``'wb97x_dz'``)
        forces (bool, optional): Serve forces (only the wB97X levels have them).
            (default: :obj:`True`)
        self_energies (str or dict, optional): Per-element energies subtracted from
            ``energy``: :obj:`None`, ``'ani1'``, ``'ani1x'``, ``'ani1ccx'`` or ``{Z: eV}``.
            (default: :obj:`None`)
        extra_keys (Sequence[str], optional): Further HDF5 keys to serve, e.g.
            ``('wb97x_dz.dipole', 'wb97x_dz.cm5_charges', 'ccsd(t)_cbs.energy')``, stored under
            :func:`attribute_name` of the key; energies and forces are converted to eV and
            eV/Angstrom, other properties keep the release's units. (default: ``()``)
        transform, pre_transform, pre_filter, log, force_reload, verify_checksums,
            mmap, source, repo_id, revision: See
            :class:`~pyg_tensorpot.datasets.base.AtomisticInMemoryDataset`.
    """
    url = 'https://figshare.com/ndownloader/files/18112775'
    raw_name = 'ani1x-release.h5'
    name = 'ani1x'
    #: MD5 published by figshare for ``ani1x-release.h5`` (5,590,846,027 bytes, article
    #: 10047041 v1).
    checksums = {raw_name: ('md5', '98090dd6679106da861f52bed825ffb7')}
    levels = tuple(ANI1X_LEVELS)

    def __init__(
        self,
        root: str,
        level: str = 'wb97x_dz',
        forces: bool = True,
        self_energies: Optional[Union[str, Mapping[int, float]]] = None,
        extra_keys: Sequence[str] = (),
        **kwargs: Unpack[DatasetArguments],
    ) -> None:
        level = str(level).lower()
        if level not in ANI1X_LEVELS:
            raise ValueError(f"unknown ANI-1x level of theory '{level}'; choose one of "
                             f"{list(ANI1X_LEVELS)}")
        if forces and ANI1X_LEVELS[level][1] is None:
            raise ValueError(f"ANI-1x has no forces at level '{level}' (only wB97X); pass "
                             f"forces=False")
        self.level = level
        self.use_forces = bool(forces)
        self.self_energy_table = self._resolve_self_energies(self_energies)
        self.self_energies = (self_energies if isinstance(self_energies, (str, type(None)))
                              else 'custom')
        self.extra_keys = tuple(extra_keys)
        super().__init__(root, **kwargs)

    @staticmethod
    def _resolve_self_energies(value) -> Optional[Dict[int, float]]:
        if value is None:
            return None
        if isinstance(value, str):
            if value.lower() not in SELF_ENERGY_TABLES:
                raise ValueError(f"unknown self-energy table '{value}'; choose one of "
                                 f"{sorted(SELF_ENERGY_TABLES)}, None or a {{Z: eV}} dict")
            return hartree_to_ev(SELF_ENERGY_TABLES[value.lower()])
        return {int(k): float(v) for k, v in dict(value).items()}

    @property
    def raw_file_names(self) -> List[str]:
        return [self.raw_name]

    def options(self) -> Dict:
        return {'level': self.level, 'forces': self.use_forces,
                'self_energies': self.self_energy_table, 'extra_keys': self.extra_keys}

    def download(self) -> None:
        from torch_geometric.data import download_url
        download_url(self.url, self.raw_dir, log=self.log, filename=self.raw_name)

    def atomref(self) -> Optional[Dict[int, float]]:
        """Per-element reference energies (eV) of the served energies: the ANI-1x linear-fit
        self energies for ``wb97x_dz`` and the ANI-1ccx ones for ``ccsd(t)_cbs`` when total
        energies are served; :obj:`None` when self energies were already subtracted or none is
        published for the level (use :meth:`fit_atomref`)."""
        if self.self_energy_table is not None or self.level not in _LEVEL_ATOMREF:
            return None
        return hartree_to_ev(SELF_ENERGY_TABLES[_LEVEL_ATOMREF[self.level]])

    def process_storage(self):
        path = self.raw_paths[0]
        energy_keys, forces_key = ANI1X_LEVELS[self.level]
        if not self.use_forces:
            forces_key = None
        needed = ('atomic_numbers', 'coordinates') + energy_keys + (
            (forces_key,) if forces_key else ()) + self.extra_keys
        with molecule_file(path, 'ANI-1x', 'ANI-1x release layout',
                           'the ANI-1x release') as raw:
            # Pass 1: energies only (8 bytes per conformation), to size the output exactly.
            plans = []
            total_confs = total_atoms = 0
            for name, group, z in raw.checked_groups(raw.names, needed, 'ANI-1x: energies',
                                                     self.log):
                shape = group['coordinates'].shape
                if len(shape) != 3 or shape[1:] != (z.size, 3):
                    raise RawFileError(f"group '{name}' of '{path}': coordinates {shape} do "
                                       f"not match {z.size} atoms")
                energy = np.zeros(shape[0], dtype=np.float64)
                for key in energy_keys:
                    energy += group[key][()]
                keep = np.isfinite(energy)
                plans.append((name, z, keep, energy))
                total_confs += int(keep.sum())
                total_atoms += int(keep.sum()) * z.size
            extras = self._extra_layout(raw.handle[raw.names[0]])
            atom_fields = {'pos': ((3,), torch.float32)}
            if forces_key:
                atom_fields['forces'] = ((3,), torch.float32)
            graph_fields = {'energy': ((), torch.float64), 'molecule': ((), torch.long)}
            for key, (per_atom, tail) in extras.items():
                target = atom_fields if per_atom else graph_fields
                target[attribute_name(key)] = (tail, torch.float32)
            builder = raw.builder(total_confs, total_atoms, atom_fields, graph_fields, 16)
            # Pass 2: geometries, forces and extras of the kept conformations.
            dropped = sum(int((~keep).sum()) for _, _, keep, _ in plans)
            bar = progress(range(len(plans)), total=len(plans), desc='ANI-1x: conformations',
                           enabled=self.log, unit='group')
            for index in bar:
                name, z, keep, energy = plans[index]
                if not keep.any():
                    continue
                group = raw.group(name)
                pos = group['coordinates'][()][keep]
                good = finite_as_float32(pos)
                atom_values = {'pos': pos}
                if forces_key:
                    with np.errstate(over='ignore', invalid='ignore'):
                        forces = group[forces_key][()][keep] * np.float32(HARTREE_TO_EV)
                    good &= finite_as_float32(forces)
                    atom_values['forces'] = forces
                extra_values = {}
                for key, (per_atom, _) in extras.items():
                    with np.errstate(over='ignore', invalid='ignore'):
                        value = (group[key][()][keep].astype(np.float64)
                                 * _extra_scale(key)).astype(np.float32)
                    good &= finite_as_float32(value)
                    if per_atom:
                        atom_values[attribute_name(key)] = value
                    else:
                        extra_values[attribute_name(key)] = value
                e = energy[keep] * HARTREE_TO_EV
                if self.self_energy_table is not None:
                    e = e - self._reference_sum(z, name)
                good &= np.isfinite(e)
                if not good.all():
                    dropped += int((~good).sum())
                    atom_values = {k: v[good] for k, v in atom_values.items()}
                    extra_values = {k: v[good] for k, v in extra_values.items()}
                    e = e[good]
                graph_values = dict(extra_values, energy=e,
                                    molecule=np.full(e.shape[0], index, dtype=np.int64))
                builder.add(z, atom_values, graph_values)
        if dropped:
            logger.warning('ANI-1x (%s): dropped %d conformations with NaN values (kept %d)',
                           self.level, dropped, builder.n_structures)
        if builder.n_structures == 0:
            raise RawFileError(f"'{path}' has no conformation with a finite {self.level} "
                               f"energy")
        return builder.finish()

    def _extra_layout(self, group) -> Dict[str, Tuple[bool, Tuple[int, ...]]]:
        layout = {}
        for key in self.extra_keys:
            shape = group[key].shape
            per_atom = any(tag in key for tag in ('charges', 'mbis_', '.forces'))
            layout[key] = (per_atom, tuple(shape[2:] if per_atom else shape[1:]))
        return layout

    def _reference_sum(self, z: np.ndarray, name: str) -> float:
        missing = sorted(set(z.tolist()) - set(self.self_energy_table))
        if missing:
            raise ValueError(f"group '{name}' has elements {missing} without a self energy")
        return float(sum(self.self_energy_table[int(v)] for v in z))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)}, level='{self.level}', "
                f"self_energies={self.self_energies!r})")
