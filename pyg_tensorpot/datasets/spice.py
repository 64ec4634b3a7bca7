"""The SPICE dataset (wB97M-D3(BJ)/def2-TZVPPD), versions 1.1.x and 2.0.1."""
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyg_tensorpot.datasets.arguments import DatasetArguments, Unpack
from pyg_tensorpot.datasets.base import AtomisticInMemoryDataset, RawFileError, logger, progress
from pyg_tensorpot.datasets.hdf5 import finite_as_float32, molecule_file
from pyg_tensorpot.utils.elements import atomic_number
from pyg_tensorpot.utils.units import (
    BOHR_TO_ANGSTROM,
    HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
    HARTREE_TO_EV,
)

#: ``version: (url, md5)`` of the SPICE releases (Zenodo), as listed by torchmd-net.
SPICE_VERSIONS: Dict[str, Tuple[str, str]] = {
    '1.1.1': ('https://zenodo.org/record/7258940/files/SPICE-1.1.1.hdf5',
              '5411e7014c6d18ff07d108c9ad820b53'),
    '1.1.2': ('https://zenodo.org/record/7338495/files/SPICE-1.1.2.hdf5',
              'a2b5ae2d1f72581040e1cceb20a79a33'),
    '1.1.3': ('https://zenodo.org/record/7606550/files/SPICE-1.1.3.hdf5',
              'be93706b3bb2b2e327b690b185905856'),
    '1.1.4': ('https://zenodo.org/records/8222043/files/SPICE-1.1.4.hdf5',
              'f27d4c81da0e37d6547276bf6b4ae6a1'),
    '2.0.1': ('https://zenodo.org/records/10975225/files/SPICE-2.0.1.hdf5',
              'bfba2224b6540e1390a579569b475510'),
}

#: Optional per-conformation properties and their conversion to e, e*Angstrom, e*Angstrom^n.
SPICE_EXTRAS: Dict[str, Tuple[bool, float]] = {  # key: (per atom, scale)
    'mbis_charges': (True, 1.0),
    'mbis_dipoles': (True, BOHR_TO_ANGSTROM),
    'mbis_quadrupoles': (True, BOHR_TO_ANGSTROM ** 2),
    'mbis_octupoles': (True, BOHR_TO_ANGSTROM ** 3),
    'scf_dipole': (False, BOHR_TO_ANGSTROM),
    'scf_quadrupole': (False, BOHR_TO_ANGSTROM ** 2),
}

_BRACKET = re.compile(r'\[([^\]]+)\]')
_CHARGE = re.compile(r'([+-]+)(\d*)$')


def smiles_formal_charge(smiles: str) -> int:
    """Total formal charge of a (mapped, explicit-hydrogen) SMILES string, e.g. ``+1`` for
    ``'[H:3][C:1]#[C:2][H:4].[Na+:5]'``."""
    total = 0
    for atom in _BRACKET.findall(smiles):
        atom = atom.split(':')[0]
        match = _CHARGE.search(atom)
        if match is None:
            continue
        signs, digits = match.groups()
        sign = 1 if signs[0] == '+' else -1
        total += sign * (int(digits) if digits else len(signs))
    return total


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


class SPICE(AtomisticInMemoryDataset):
    r"""The SPICE dataset from `"SPICE, a dataset of drug-like molecules and peptides for
    training machine learning potentials" <https://doi.org/10.1038/s41597-022-01882-6>`_
    (Eastman et al., Sci. Data 10, 11 (2023)), computed at wB97M-D3(BJ)/def2-TZVPPD with
    Psi4: small molecules, dimers, dipeptides, solvated amino acids, ions (versions 1.1.x:
    about 1.1 M conformations; 2.0.1: about 2 M conformations, up to ~110 atoms, more
    elements).

    Raw layout (``root/raw/SPICE-<version>.hdf5``): one group per molecule with ``subset``,
    ``smiles``, ``atomic_numbers`` ``(n,)``, ``conformations`` ``(m, n, 3)`` **Bohr**,
    ``formation_energy`` and ``dft_total_energy`` ``(m,)`` Hartree, ``dft_total_gradient``
    ``(m, n, 3)`` Hartree/Bohr and optional MBIS/SCF multipoles. Served in Angstrom, eV and
    eV/Angstrom, with ``forces`` = minus the gradient; ``charge`` is the total charge of the
    molecule (from the formal charges of its SMILES), ``molecule`` the index of its group.
    Conversions use the CODATA Bohr radius of :mod:`pyg_tensorpot.utils.units` (torchmd-net uses
    0.529177 Angstrom, 4e-7 relative smaller).

    Args:
        root (str): Root folder.
        version (str, optional): ``'1.1.1'``, ``'1.1.2'``, ``'1.1.3'`` (torchmd-net's
            default), ``'1.1.4'`` or ``'2.0.1'``. (default: ``'2.0.1'``)
        energy (str, optional): ``'formation'`` (``formation_energy``, total energy minus the
            isolated-atom references, as torchmd-net) or ``'total'`` (``dft_total_energy``).
            (default: ``'formation'``)
        subsets (Sequence[str], optional): Keep only molecules whose ``subset`` name contains
            one of these strings (case-insensitive), e.g. ``['PubChem', 'Dipeptides']``.
            (default: :obj:`None`)
        elements (Sequence[int or str], optional): Keep only molecules made of these elements,
            e.g. ``['H', 'C', 'N', 'O']``. (default: :obj:`None`)
        max_force (float, optional): Drop conformations whose largest per-atom force norm
            exceeds this (eV/Angstrom; torchmd-net's SPICE config uses 50.94).
            (default: :obj:`None`)
        subsample_molecules (int, optional): Keep every k-th molecule group. (default: :obj:`1`)
        extra_keys (Sequence[str], optional): Properties to serve, from ``mbis_charges`` (e),
            ``mbis_dipoles`` (e*Angstrom), ``mbis_quadrupoles``, ``mbis_octupoles``,
            ``scf_dipole`` (e*Angstrom), ``scf_quadrupole``; molecules lacking one of them are
            skipped (count logged). (default: ``()``)
        transform, pre_transform, pre_filter, log, force_reload, verify_checksums,
            mmap, source, repo_id, revision: See
            :class:`~pyg_tensorpot.datasets.base.AtomisticInMemoryDataset`.
    """
    versions = tuple(SPICE_VERSIONS)

    def __init__(
        self,
        root: str,
        version: str = '2.0.1',
        energy: str = 'formation',
        subsets: Optional[Sequence[str]] = None,
        elements: Optional[Sequence[Union[int, str]]] = None,
        max_force: Optional[float] = None,
        subsample_molecules: int = 1,
        extra_keys: Sequence[str] = (),
        **kwargs: Unpack[DatasetArguments],
    ) -> None:
        version = str(version)
        if version not in SPICE_VERSIONS:
            raise ValueError(f"unknown SPICE version '{version}'; choose one of "
                             f"{list(SPICE_VERSIONS)}")
        if energy not in ('formation', 'total'):
            raise ValueError(f"energy must be 'formation' or 'total', got '{energy}'")
        unknown = [k for k in extra_keys if k not in SPICE_EXTRAS]
        if unknown:
            raise ValueError(f'unknown SPICE properties {unknown}; choose from '
                             f'{list(SPICE_EXTRAS)}')
        if int(subsample_molecules) < 1:
            raise ValueError('subsample_molecules must be a positive integer')
        if max_force is not None and not max_force > 0:
            raise ValueError(f'max_force must be positive (eV/Angstrom), got {max_force}')
        self.version = version
        self.energy_kind = energy
        self.subsets = None if subsets is None else [str(s) for s in subsets]
        self.elements = None if elements is None else sorted(
            {atomic_number(e) if isinstance(e, str) else int(e) for e in elements})
        self.max_force = None if max_force is None else float(max_force)
        self.subsample_molecules = int(subsample_molecules)
        self.extra_keys = tuple(extra_keys)
        self.name = 'spice_' + version.replace('.', '_')
        self.checksums = {self.raw_file_names[0]: ('md5', SPICE_VERSIONS[version][1])}
        super().__init__(root, **kwargs)

    @property
    def raw_file_names(self) -> List[str]:
        return [f'SPICE-{self.version}.hdf5']

    def options(self) -> Dict:
        return {'version': self.version, 'energy': self.energy_kind, 'subsets': self.subsets,
                'elements': self.elements, 'max_force': self.max_force,
                'subsample_molecules': self.subsample_molecules, 'extra_keys': self.extra_keys}

    def download(self) -> None:
        from torch_geometric.data import download_url
        download_url(SPICE_VERSIONS[self.version][0], self.raw_dir, log=self.log,
                     filename=self.raw_file_names[0])

    def atomref(self) -> Optional[Dict[int, float]]:
        """Formation energies are already referenced to the isolated atoms, so the reference
        energies are zero; total energies have no published table here (use
        :meth:`fit_atomref`)."""
        if self.energy_kind == 'formation':
            elements = self.elements or sorted(set(self.storage().z.unique().tolist()))
            return {int(z): 0.0 for z in elements}
        return None

    def _keep_molecule(self, subset: str, z: np.ndarray) -> bool:
        if self.subsets is not None and not any(s.lower() in subset.lower()
                                                for s in self.subsets):
            return False
        if self.elements is not None and not np.isin(z, self.elements).all():
            return False
        return True

    def process_storage(self):
        path = self.raw_paths[0]
        energy_key = 'formation_energy' if self.energy_kind == 'formation' else \
            'dft_total_energy'
        needed = ('atomic_numbers', 'conformations', energy_key, 'dft_total_gradient')
        counts = {'filtered': 0, 'bad_layout': 0, 'missing_extra': 0, 'nan': 0, 'force': 0}
        with molecule_file(path, 'SPICE', 'SPICE layout', 'a SPICE file') as raw:
            names = raw.names[::self.subsample_molecules]
            plans = []
            total_confs = total_atoms = 0
            for name, group, z in raw.checked_groups(names, needed, 'SPICE: molecules',
                                                     self.log):
                shape = group['conformations'].shape
                if len(shape) != 3 or shape[1:] != (z.size, 3):
                    counts['bad_layout'] += 1
                    logger.warning("SPICE: skipping group '%s': conformations have shape %s "
                                   "for %d atoms", name, shape, z.size)
                    continue
                subset = _text(group['subset'][()]) if 'subset' in group else ''
                if not self._keep_molecule(subset, z):
                    counts['filtered'] += 1
                    continue
                if any(k not in group for k in self.extra_keys):
                    counts['missing_extra'] += 1
                    continue
                charge = smiles_formal_charge(_text(group['smiles'][()])) \
                    if 'smiles' in group else 0
                plans.append((name, z, charge, len(plans)))
                total_confs += shape[0]
                total_atoms += shape[0] * z.size
            atom_fields = {'pos': ((3,), torch.float32), 'forces': ((3,), torch.float32)}
            graph_fields = {'energy': ((), torch.float64), 'charge': ((), torch.long),
                            'molecule': ((), torch.long)}
            if not plans:
                raise RawFileError(f"no SPICE molecule of '{path}' passes the filters")
            first = raw.handle[plans[0][0]]
            for key in self.extra_keys:
                per_atom, _ = SPICE_EXTRAS[key]
                tail = first[key].shape[2:] if per_atom else first[key].shape[1:]
                if key == 'mbis_charges':
                    tail = ()
                (atom_fields if per_atom else graph_fields)[key] = (tuple(tail),
                                                                    torch.float32)
            builder = raw.builder(total_confs, total_atoms, atom_fields, graph_fields, 24)
            for name, z, charge, molecule in progress(plans, total=len(plans),
                                                      desc='SPICE: conformations',
                                                      enabled=self.log, unit='group'):
                group = raw.group(name)
                pos = group['conformations'][()]
                energy = np.asarray(group[energy_key][()], dtype=np.float64).reshape(-1)
                forces = group['dft_total_gradient'][()].astype(np.float64)
                forces *= -HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM
                with np.errstate(over='ignore', invalid='ignore'):
                    good = (np.isfinite(energy * HARTREE_TO_EV) & finite_as_float32(forces)
                            & finite_as_float32(pos.astype(np.float64) * BOHR_TO_ANGSTROM))
                extras = {}
                for key in self.extra_keys:
                    per_atom, scale = SPICE_EXTRAS[key]
                    value = group[key][()]
                    if key == 'mbis_charges':
                        value = value.reshape(value.shape[0], value.shape[1])
                    with np.errstate(over='ignore', invalid='ignore'):
                        extras[key] = (value.astype(np.float64) * scale).astype(np.float32)
                    good &= finite_as_float32(extras[key])
                counts['nan'] += int((~good).sum())
                if self.max_force is not None:
                    too_large = np.linalg.norm(forces, axis=-1).max(axis=-1) > self.max_force
                    counts['force'] += int((too_large & good).sum())
                    good &= ~too_large
                m = int(good.sum())
                if m == 0:
                    continue
                atom_values = {'pos': (pos[good].astype(np.float64) * BOHR_TO_ANGSTROM),
                               'forces': forces[good]}
                graph_values = {'energy': energy[good] * HARTREE_TO_EV,
                                'charge': np.full(m, charge, dtype=np.int64),
                                'molecule': np.full(m, molecule, dtype=np.int64)}
                for key, value in extras.items():
                    (atom_values if SPICE_EXTRAS[key][0] else graph_values)[key] = value[good]
                builder.add(z, atom_values, graph_values)
        problems = {'nan': f'{counts["nan"]} conformations with NaN values',
                    'missing_extra': f'{counts["missing_extra"]} molecules lacking '
                                     f'{list(self.extra_keys)}',
                    'bad_layout': f'{counts["bad_layout"]} molecules whose conformations are '
                                  f'not 3-D'}
        summary = ', '.join(text for key, text in problems.items() if counts[key])
        if summary:
            logger.warning('SPICE %s: dropped %s (kept %d conformations)', self.version,
                           summary, builder.n_structures)
        if counts['filtered'] or counts['force']:
            logger.info('SPICE %s: filters removed %d molecules (subsets/elements) and %d '
                        'conformations (max_force=%s eV/A)', self.version, counts['filtered'],
                        counts['force'], self.max_force)
        if builder.n_structures == 0:
            raise RawFileError(f"no SPICE conformation of '{path}' passes the filters")
        return builder.finish()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)}, version='{self.version}')"
