r"""Datasets from a user's own files: extended XYZ and ASE databases, read with ASE.

Length: over 500 lines because ASE keeps the same quantity in several places (``info``,
``arrays``, calculator results, database columns) and each unit and key check names the frame.

Every structure becomes one sample with

* ``z`` (``[num_atoms]``, ``torch.long``), ``pos`` (``[num_atoms, 3]``, float64, Angstrom),
* ``energy`` (``[1]``, float64, eV) and ``forces`` (``[num_atoms, 3]``, float64, eV/Angstrom),
* ``cell`` (``[1, 3, 3]``, float64, Angstrom, rows are the lattice vectors; zeros for a
  molecule) and ``pbc`` (``[1, 3]``, bool),
* ``total_charge`` (``[1]``, float64, e; 0 where the file has none),
* ``stress`` (``[1, 3, 3]``, float64, eV/Angstrom^3) and ``has_stress`` (``[1]``, bool) when
  at least one structure has a stress or a virial (structures without one get zeros and
  ``has_stress=False``),
* ``idx`` (``[1]``, long): the position of the structure in the file (or the selection),
* every array named in :obj:`extra_keys`, unconverted.

Stress follows ASE's sign convention, :math:`\sigma = \frac{1}{V}
\frac{\partial E}{\partial \varepsilon}` (positive when the cell would like to shrink), in Voigt
order ``xx, yy, zz, yz, xz, xy`` when given as six numbers. A virial :math:`W` (energy units) is
converted as :math:`\sigma = -W / V`, the convention of extended-XYZ training sets (MACE,
NequIP), and only used when a structure has no stress.
"""
import hashlib
import json
import math
import os
import os.path as osp
import re
import warnings
import zipfile
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple
from typing import Union

import numpy as np
import torch
from torch import Tensor

from pyg_tensorpot.datasets.arguments import LocalDatasetArguments, Unpack
from pyg_tensorpot.datasets.base import (
    AtomisticInMemoryDataset,
    RawFileError,
    collate_storage,
    file_hash,
    logger,
)
from pyg_tensorpot.datasets.splits import Size, Split, load_split, random_split, split_datasets
from pyg_tensorpot.utils.elements import atomic_number, symbol
from pyg_tensorpot.utils.files import atomic_write_text
from pyg_tensorpot.utils.units import (
    BOHR_TO_ANGSTROM,
    HARTREE_TO_EV,
    KCAL_PER_MOL_TO_EV,
    KJ_PER_MOL_TO_EV,
)


#: Energy units accepted by :obj:`energy_unit`, in eV.
ENERGY_UNITS: Dict[str, float] = {
    'eV': 1.0,
    'kcal/mol': KCAL_PER_MOL_TO_EV,
    'kJ/mol': KJ_PER_MOL_TO_EV,
    'Hartree': HARTREE_TO_EV,
}
#: Length units accepted by :obj:`length_unit`, in Angstrom.
LENGTH_UNITS: Dict[str, float] = {
    'Angstrom': 1.0,
    'Bohr': BOHR_TO_ANGSTROM,
    'nm': 10.0,
}

_ENERGY_ALIASES = {
    'ev': 'eV', 'electronvolt': 'eV',
    'kcal/mol': 'kcal/mol', 'kcal_mol': 'kcal/mol', 'kcal mol-1': 'kcal/mol',
    'kcal/mole': 'kcal/mol',
    'kj/mol': 'kJ/mol', 'kj_mol': 'kJ/mol', 'kj mol-1': 'kJ/mol', 'kj/mole': 'kJ/mol',
    'hartree': 'Hartree', 'ha': 'Hartree', 'eh': 'Hartree',
}
_LENGTH_ALIASES = {
    'angstrom': 'Angstrom', 'ang': 'Angstrom', 'a': 'Angstrom', '\u00e5': 'Angstrom',
    'angs': 'Angstrom',
    'bohr': 'Bohr', 'a0': 'Bohr',
    'nm': 'nm', 'nanometer': 'nm', 'nanometre': 'nm',
}
#: ``atoms.info`` keys in which a frame may declare the units of its values.
ENERGY_UNIT_KEYS = ('energy_unit', 'energy_units')
LENGTH_UNIT_KEYS = ('length_unit', 'length_units', 'distance_unit')

#: Field names this module fills itself (an extra key may not reuse them).
RESERVED_FIELDS = ('z', 'pos', 'energy', 'forces', 'stress', 'has_stress', 'cell', 'pbc',
                   'total_charge', 'idx', 'batch', 'ptr')

_ASE_HINT = 'pip install "pyg-tensorpot[ase]"'


def require_ase(what: str = 'this dataset'):
    """Imports :mod:`ase`, with the installation hint of the ``ase`` extra when it is
    missing."""
    try:
        import ase
        import ase.io  # noqa: F401
    except ImportError as error:
        raise ImportError(f'reading {what} needs the Atomic Simulation Environment (ase), '
                          f'an optional dependency: {_ASE_HINT}') from error
    return ase


def _canonical_unit(value: Any, aliases: Dict[str, str]) -> Optional[str]:
    return aliases.get(str(value).strip().lower())


def _check_unit_argument(value: Optional[str], aliases: Dict[str, str],
                         choices: Sequence[str], what: str) -> Optional[str]:
    if value is None:
        return None
    unit = _canonical_unit(value, aliases)
    if unit is None:
        raise ValueError(f"unknown {what} '{value}'; choose one of {list(choices)}")
    return unit


class _Frame(NamedTuple):
    label: str
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    info: Dict[str, Any]
    arrays: Dict[str, Any]
    results: Dict[str, Any]
    data: Dict[str, Any]


def _per_atom_result(key: str) -> bool:
    from ase.outputs import all_outputs
    output = all_outputs.get(key)
    return output is not None and bool(output.shapespec) and output.shapespec[0] == 'natoms'


def _available(frame: _Frame) -> List[str]:
    names = set(frame.info) | set(frame.arrays) | set(frame.results) | set(frame.data)
    return sorted(str(n) for n in names - {'numbers', 'positions'})


def _lookup(frame: _Frame, key: str) -> Tuple[Any, Optional[str]]:
    """``(value, kind)`` of :obj:`key` in a frame, ``kind`` being ``'atom'``,
    ``'structure'``, ``'data'`` (an ASE-database data entry, either) or :obj:`None` (absent).
    ``atoms.info``/``atoms.arrays`` come before the calculator's results."""
    if key in frame.arrays:
        return frame.arrays[key], 'atom'
    if key in frame.info:
        return frame.info[key], 'structure'
    if key in frame.results:
        return frame.results[key], 'atom' if _per_atom_result(key) else 'structure'
    if key in frame.data:
        return frame.data[key], 'data'
    return None, None


def _numeric(value: Any, frame: _Frame, key: str, dtype=np.float64) -> np.ndarray:
    try:
        array = np.asarray(value)
        if array.dtype.kind not in 'biuf':
            raise TypeError
        return array.astype(dtype)
    except (TypeError, ValueError):
        raise RawFileError(f"{frame.label}: '{key}' is not numeric (got {str(value)[:40]!r})"
                           ) from None


def _require_finite(array: np.ndarray, frame: _Frame, key: str) -> None:
    if not np.isfinite(array).all():
        raise RawFileError(f"{frame.label}: '{key}' contains NaN or infinite values")


def _tensor3(value: Any, frame: _Frame, key: str) -> np.ndarray:
    """A stress or virial given as 6 Voigt numbers (ASE order xx, yy, zz, yz, xz, xy), 9
    numbers (row-major) or a 3x3 matrix, as a 3x3 matrix."""
    array = _numeric(value, frame, key)
    if array.size == 6:
        from ase.stress import voigt_6_to_full_3x3_stress
        array = voigt_6_to_full_3x3_stress(array.reshape(6))
    elif array.size == 9:
        array = array.reshape(3, 3)
    else:
        raise RawFileError(f"{frame.label}: '{key}' has shape {list(array.shape)}; expected 6 "
                           f"Voigt components (xx, yy, zz, yz, xz, xy), 9 numbers or a 3x3 "
                           f"matrix")
    _require_finite(array, frame, key)
    return array


def _declared_unit(frame: _Frame, keys: Sequence[str], aliases: Dict[str, str],
                   choices: Sequence[str], what: str) -> Optional[str]:
    for key in keys:
        if key in frame.info:
            unit = _canonical_unit(frame.info[key], aliases)
            if unit is None:
                raise RawFileError(f"{frame.label}: {key}={frame.info[key]!r} is not a known "
                                   f"{what}; known: {list(choices)}")
            return unit
    return None


class _UnitTracker:
    """Resolves the unit of a whole file from the argument and the frames' declarations,
    refusing files whose frames declare different units (or only some of them declare)."""

    def __init__(self, argument: Optional[str], keys: Sequence[str], aliases: Dict[str, str],
                 choices: Sequence[str], what: str, parameter: str) -> None:
        self.argument = argument
        self.keys, self.aliases, self.choices = keys, aliases, choices
        self.what, self.parameter = what, parameter
        self.first_declared: Optional[Tuple[str, str]] = None  # (label, unit)
        self.first_silent: Optional[str] = None

    def see(self, frame: _Frame) -> None:
        unit = _declared_unit(frame, self.keys, self.aliases, self.choices, self.what)
        if unit is None:
            self.first_silent = self.first_silent or frame.label
        elif self.first_declared is None:
            self.first_declared = (frame.label, unit)
        elif unit != self.first_declared[1]:
            raise RawFileError(f'mixed units: {self.first_declared[0]} declares the {self.what} '
                               f'{self.first_declared[1]} but {frame.label} declares {unit}; '
                               f'convert the file to one unit first')
        if unit is not None and self.argument is not None and unit != self.argument:
            raise RawFileError(f"{frame.label} declares the {self.what} {unit} but "
                               f"{self.parameter}='{self.argument}' was passed; pass "
                               f"{self.parameter}='{unit}' (or fix the file)")

    def resolve(self) -> str:
        if self.first_declared is not None and self.first_silent is not None:
            raise RawFileError(f'mixed units: {self.first_declared[0]} declares the {self.what} '
                               f'{self.first_declared[1]} but {self.first_silent} declares '
                               f'none (in {list(self.keys)}); declare it in every frame or in '
                               f'none and pass {self.parameter}=...')
        if self.argument is not None:
            return self.argument
        if self.first_declared is not None:
            return self.first_declared[1]
        return self.choices[0]


def _extra_spec(extra_keys: Union[Sequence[str], Mapping[str, str], None]
                ) -> Dict[str, Optional[str]]:
    if extra_keys is None:
        return {}
    if isinstance(extra_keys, str):
        extra_keys = [extra_keys]
    if isinstance(extra_keys, Mapping):
        spec = {str(k): (None if v is None else str(v)) for k, v in extra_keys.items()}
    else:
        spec = {str(k): None for k in extra_keys}
    for key, kind in spec.items():
        if kind not in (None, 'atom', 'structure'):
            raise ValueError(f"extra_keys['{key}'] must be 'atom' (one row per atom) or "
                             f"'structure' (one value per structure), got '{kind}'")
        if key in RESERVED_FIELDS:
            raise ValueError(f"extra key '{key}' clashes with a field this dataset fills "
                             f"itself ({list(RESERVED_FIELDS)})")
        if 'index' in key or 'face' in key:
            raise ValueError(f"extra key '{key}': PyTorch Geometric treats attributes whose "
                             f"name contains 'index' or 'face' as graph connectivity and "
                             f"would shift them when batching; rename it in the file")
    return spec


def _atomref_table(atomref: Mapping) -> Dict[int, float]:
    """``{Z or symbol: energy}`` as ``{Z: float}``, with messages naming the bad entry."""
    table: Dict[int, float] = {}
    for key, value in atomref.items():
        try:
            number = atomic_number(key) if isinstance(key, str) else int(key)
        except (TypeError, ValueError):
            raise ValueError(f'atomref key {key!r} is neither an atomic number nor an element '
                             f'symbol') from None
        if not 0 < number < 128:
            raise ValueError(f'atomref has an entry for Z={number}, which is no element')
        try:
            energy = float(value)
        except (TypeError, ValueError):
            raise ValueError(f'atomref of {symbol(number)} is not a number ({value!r})') from None
        if not math.isfinite(energy):
            raise ValueError(f'atomref of {symbol(number)} is not finite ({value})')
        table[number] = energy
    return table


class ASEFileDataset(AtomisticInMemoryDataset):
    r"""Base class of :class:`ExtXYZDataset` and :class:`ASEDatabaseDataset`: turns the
    structures ASE reads from a user's file into collated samples (see the module docstring for
    the fields, units and conventions).

    Args:
        root (str): Folder of the processed file (``root/processed``); its split and
            reference-energy files are saved beside it.
        path (str): The user's file.
        energy_key (str, optional): Name of the energy in ``atoms.info`` or the calculator's
            results. (default: :obj:`"energy"`)
        forces_key (str, optional): Name of the forces in ``atoms.arrays`` or the calculator's
            results; :obj:`None` for energies only. (default: :obj:`"forces"`)
        stress_key (str, optional): Name of the stress (6 Voigt numbers, 9 numbers or 3x3);
            :obj:`None` to ignore stresses. (default: :obj:`"stress"`)
        virial_key (str, optional): Name of the virial (energy units), used when a structure
            has no stress; :obj:`None` to ignore virials. (default: :obj:`"virial"`)
        charge_key (str, optional): Name of the total charge (e); structures without it get 0.
            (default: :obj:`"charge"`)
        extra_keys (Sequence[str] or Mapping[str, str], optional): More arrays to serve
            unconverted, by name; a mapping ``{name: 'atom' | 'structure'}`` says whether each
            has one row per atom or one value per structure (otherwise ``atoms.arrays`` and
            per-atom calculator results are per atom, ``atoms.info`` entries per structure).
            (default: :obj:`()`)
        energy_unit (str, optional): Unit of the file's energies: ``"eV"``, ``"kcal/mol"``,
            ``"kJ/mol"`` or ``"Hartree"``; forces are in energy/length, stresses in
            energy/length^3, virials in energy. :obj:`None` takes the unit the frames declare
            in ``info['energy_unit']``, else eV. (default: :obj:`None`)
        length_unit (str, optional): Unit of the file's positions and cells: ``"Angstrom"``,
            ``"Bohr"`` or ``"nm"``; :obj:`None` takes ``info['length_unit']``, else Angstrom.
            (default: :obj:`None`)
        atomref (Mapping or str, optional): Isolated-atom energies ``{Z or symbol: energy}``
            in :obj:`energy_unit`, or ``"fit"`` to fit them by least squares on the training
            split (needs :obj:`split`). :meth:`atomref` returns them in eV. (default:
            :obj:`None`)
        split (tuple, optional): ``(train, val, test)`` sizes, as fractions (floats) or counts
            (ints), one of them may be :obj:`None` (the rest); saved beside the processed file
            and reloaded from there. (default: :obj:`None`)
        split_seed (int, optional): Seed of the split. (default: :obj:`1`)
        transform, pre_transform, pre_filter, log, force_reload: See
            :class:`~pyg_tensorpot.datasets.base.AtomisticInMemoryDataset`.
    """
    #: Prefix of the processed file name.
    kind: str = 'ase'

    def __init__(
        self,
        root: str,
        path: str,
        energy_key: str = 'energy',
        forces_key: Optional[str] = 'forces',
        stress_key: Optional[str] = 'stress',
        virial_key: Optional[str] = 'virial',
        charge_key: Optional[str] = 'charge',
        extra_keys: Union[Sequence[str], Mapping[str, str], None] = (),
        energy_unit: Optional[str] = None,
        length_unit: Optional[str] = None,
        atomref: Union[Mapping, str, None] = None,
        split: Optional[Tuple[Size, Size, Size]] = None,
        split_seed: int = 1,
        **kwargs: Unpack[LocalDatasetArguments],
    ) -> None:
        require_ase(type(self).__name__)
        if root is None:
            raise ValueError(f'{type(self).__name__} needs a root folder for its processed '
                             f'file')
        if not energy_key:
            raise ValueError('energy_key must name the energy of the structures')
        self.path = osp.abspath(os.fspath(path))
        if not osp.isfile(self.path):
            raise FileNotFoundError(f"'{self.path}' does not exist (or is not a file)")
        self.energy_key, self.forces_key = str(energy_key), forces_key
        self.stress_key, self.virial_key, self.charge_key = stress_key, virial_key, charge_key
        self.extra_keys = _extra_spec(extra_keys)
        self.energy_unit = _check_unit_argument(energy_unit, _ENERGY_ALIASES,
                                                list(ENERGY_UNITS), 'energy unit')
        self.length_unit = _check_unit_argument(length_unit, _LENGTH_ALIASES,
                                                list(LENGTH_UNITS), 'length unit')
        if isinstance(atomref, str) and atomref != 'fit':
            raise ValueError(f"atomref must be a {{Z: energy}} mapping or 'fit', got "
                             f"'{atomref}'")
        if atomref == 'fit' and split is None:
            raise ValueError("atomref='fit' fits the reference energies on the training split: "
                             "pass split=(train, val, test) as well")
        if atomref is not None and not isinstance(atomref, (str, Mapping)):
            raise TypeError(f'atomref must be a mapping {{Z: energy}} or "fit", got '
                            f'{type(atomref).__name__}')
        if split is not None and (not isinstance(split, Sequence) or isinstance(split, str)
                                  or len(split) != 3):
            raise ValueError(f'split must be (train, val, test) sizes, got {split!r}')
        self._atomref_argument = _atomref_table(atomref) if isinstance(atomref, Mapping) \
            else atomref
        self.split_sizes = None if split is None else tuple(split)
        self.split_seed = int(split_seed)
        self.file_sha256 = file_hash(self.path)
        stem = re.sub(r'[^A-Za-z0-9_.-]+', '_', osp.splitext(osp.basename(self.path))[0])
        self.name = f'{self.kind}_{stem}'
        super().__init__(root, verify_checksums=False, **kwargs)
        self.resolved_units = self._read_units()
        self.split: Optional[Split] = None
        if self.split_sizes is not None:
            self.split = self._load_or_make_split()
        self._atomref = self._load_or_make_atomref()

    # ------------------------------------------------------------------ files
    @property
    def raw_dir(self) -> str:
        return osp.dirname(self.path)

    @property
    def raw_file_names(self) -> List[str]:
        return [osp.basename(self.path)]

    def download(self) -> None:
        raise RawFileError(f"'{self.path}' does not exist")

    def options(self) -> Dict[str, Any]:
        return {
            'path': self.path,
            'sha256': self.file_sha256,
            'energy_key': self.energy_key,
            'forces_key': self.forces_key,
            'stress_key': self.stress_key,
            'virial_key': self.virial_key,
            'charge_key': self.charge_key,
            'extra_keys': self.extra_keys,
            'energy_unit': self.energy_unit,
            'length_unit': self.length_unit,
            **self.read_options(),
        }

    def read_options(self) -> Dict[str, Any]:
        """Options of the reader that change which structures are read."""
        return {}

    def _sidecar(self, suffix: str, options: Dict[str, Any]) -> str:
        tag = hashlib.sha1(json.dumps(options, sort_keys=True, default=str).encode())
        stem = osp.splitext(self.processed_paths[0])[0]
        return f'{stem}.{suffix}_{tag.hexdigest()[:10]}'

    @property
    def units_path(self) -> str:
        """The JSON file recording the units the file was read in, beside the processed
        file."""
        return self.processed_paths[0] + '.units.json'

    def _read_json(self, path: str) -> Dict[str, Any]:
        try:
            with open(path) as f:
                value = json.load(f)
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def split_path(self) -> Optional[str]:
        """The ``.npz`` file of the split, beside the processed file (:obj:`None` without a
        split)."""
        if self.split_sizes is None:
            return None
        return self._sidecar('split', {'sizes': list(self.split_sizes), 'seed': self.split_seed,
                                       'num': self._num_stored()}) + '.npz'

    def _num_stored(self) -> int:
        return int(self.slices['z'].numel() - 1)

    def _load_or_make_split(self) -> Split:
        path = self.split_path
        num = self._num_stored()
        if osp.exists(path):
            try:
                return load_split(path, num)
            except (ValueError, OSError, KeyError, zipfile.BadZipFile) as error:
                warnings.warn(f"ignoring the unreadable split file '{path}' ({error}); drawing "
                              f"the split again", stacklevel=3)
                os.remove(path)
        train, val, test = self.split_sizes
        return random_split(num, train, val, test, self.split_seed, path)

    def split_subsets(self) -> Tuple['ASEFileDataset', 'ASEFileDataset', 'ASEFileDataset']:
        """``(train, val, test)`` views of the dataset for :attr:`split`."""
        if self.split is None:
            raise ValueError(f'{type(self).__name__} was built without split=(train, val, test)')
        return split_datasets(self, self.split)

    def _read_units(self) -> Dict[str, str]:
        units = self._read_json(self.units_path)
        if units.get('energy') in ENERGY_UNITS and units.get('length') in LENGTH_UNITS:
            return {'energy': units['energy'], 'length': units['length']}
        warnings.warn(f"'{self.units_path}' is missing or unreadable: assuming the file's "
                      f"energies are in {self.energy_unit or 'eV'} and lengths in "
                      f"{self.length_unit or 'Angstrom'} (pass force_reload=True to read the "
                      f"file again)", stacklevel=3)
        return {'energy': self.energy_unit or 'eV', 'length': self.length_unit or 'Angstrom'}

    # ------------------------------------------------------------------ reference energies
    def atomref(self) -> Optional[Dict[int, float]]:
        """The reference (isolated-atom) energies ``{Z: eV}`` given as :obj:`atomref` or fitted
        on the training split, or :obj:`None`."""
        return None if self._atomref is None else dict(self._atomref)

    @property
    def atomref_path(self) -> Optional[str]:
        """The JSON file holding :meth:`atomref`, beside the processed file."""
        if self._atomref_argument is None:
            return None
        if self._atomref_argument == 'fit':
            options = {'fit': self.split_path}
        else:
            options = {'given': sorted(self._atomref_argument.items()),
                       'unit': self.resolved_units['energy']}
        return self._sidecar('atomref', options) + '.json'

    def _load_or_make_atomref(self) -> Optional[Dict[int, float]]:
        argument = self._atomref_argument
        if argument is None:
            return None
        path = self.atomref_path
        processed_sha = self._read_json(self.manifest_path).get('sha256')
        stored = self._read_json(path)
        if stored and stored.get('processed_sha256') == processed_sha:
            try:
                return {int(k): float(v) for k, v in stored['atomref_eV'].items()}
            except (KeyError, TypeError, ValueError, AttributeError):
                pass  # unreadable: fitted or converted and written again below
        if argument == 'fit':
            from pyg_tensorpot.datasets.reference_energies import fit_reference_energies
            table = fit_reference_energies(self[self.split['idx_train']])
            source = f"least squares on idx_train of '{osp.basename(self.split_path)}'"
        else:
            scale = ENERGY_UNITS[self.resolved_units['energy']]
            table = {number: energy * scale for number, energy in argument.items()}
            source = f"given in {self.resolved_units['energy']}"
        record = {'atomref_eV': {str(k): v for k, v in sorted(table.items())},
                  'source': source, 'processed_sha256': processed_sha}
        atomic_write_text(json.dumps(record, indent=1), path)
        return table

    # ------------------------------------------------------------------ processing
    def frames(self):
        """Yields the structures of the file as :class:`_Frame` records."""
        raise NotImplementedError

    def save_storage(self, storage, slices, path) -> None:
        # The units (which may come from the frames' declarations) are written before the
        # processed file and its manifest, so a valid processed file always has them.
        atomic_write_text(json.dumps(self._units_seen), path + '.units.json')
        super().save_storage(storage, slices, path)

    def process_storage(self) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        energy_units = _UnitTracker(self.energy_unit, ENERGY_UNIT_KEYS, _ENERGY_ALIASES,
                                    list(ENERGY_UNITS), 'energy unit', 'energy_unit')
        length_units = _UnitTracker(self.length_unit, LENGTH_UNIT_KEYS, _LENGTH_ALIASES,
                                    list(LENGTH_UNITS), 'length unit', 'length_unit')
        num_atoms: List[int] = []
        z: List[np.ndarray] = []
        pos: List[np.ndarray] = []
        forces: List[np.ndarray] = []
        energy: List[float] = []
        cells: List[np.ndarray] = []
        pbcs: List[np.ndarray] = []
        charges: List[float] = []
        # Stresses are stored as (value, in_stress_units): a virial is kept in energy units and
        # converted once the units are known.
        stress: List[Optional[Tuple[np.ndarray, bool]]] = []
        extras: Dict[str, List[np.ndarray]] = {key: [] for key in self.extra_keys}
        extra_kind: Dict[str, Optional[str]] = dict(self.extra_keys)
        extra_tail: Dict[str, Tuple[Tuple[int, ...], str]] = {}

        for frame in self.frames():
            energy_units.see(frame)
            length_units.see(frame)
            n = int(frame.numbers.size)
            if n == 0:
                raise RawFileError(f'{frame.label} has no atoms')
            if np.any(frame.numbers <= 0) or np.any(frame.numbers >= 128):
                raise RawFileError(f'{frame.label} has atomic numbers outside 1..127')
            _require_finite(frame.positions, frame, 'positions')
            _require_finite(frame.cell, frame, 'cell')
            if frame.pbc.any() and abs(np.linalg.det(frame.cell)) < 1e-9:
                raise RawFileError(
                    f'{frame.label} is periodic (pbc={frame.pbc.tolist()}) but has no cell '
                    f'(all-zero or flat lattice vectors): add Lattice="..." to its comment '
                    f'line (or cell= in the database), or set pbc="F F F"')

            value, _ = _lookup(frame, self.energy_key)
            if value is None:
                raise RawFileError(f"{frame.label} has no energy '{self.energy_key}'; it has "
                                   f"{_available(frame)} (pass energy_key=...)")
            value = _numeric(value, frame, self.energy_key)
            if value.size != 1:
                raise RawFileError(f"{frame.label}: energy '{self.energy_key}' has "
                                   f"{value.size} values, expected one")
            _require_finite(value, frame, self.energy_key)
            energy.append(float(value.reshape(())))

            if self.forces_key is not None:
                value, _ = _lookup(frame, self.forces_key)
                if value is None:
                    raise RawFileError(f"{frame.label} has no forces '{self.forces_key}'; it "
                                       f"has {_available(frame)} (pass forces_key=... or "
                                       f"forces_key=None for energies only)")
                value = _numeric(value, frame, self.forces_key)
                if value.shape != (n, 3):
                    raise RawFileError(f"{frame.label}: forces '{self.forces_key}' have shape "
                                       f"{list(value.shape)}, expected [{n}, 3]")
                _require_finite(value, frame, self.forces_key)
                forces.append(value)

            stress.append(self._frame_stress(frame))

            charge = 0.0
            if self.charge_key is not None:
                value, _ = _lookup(frame, self.charge_key)
                if value is not None:
                    value = _numeric(value, frame, self.charge_key)
                    if value.size != 1:
                        raise RawFileError(f"{frame.label}: total charge '{self.charge_key}' "
                                           f"has {value.size} values, expected one (per-atom "
                                           f"charges belong in extra_keys)")
                    _require_finite(value, frame, self.charge_key)
                    charge = float(value.reshape(()))
            charges.append(charge)

            for key in self.extra_keys:
                extras[key].append(self._frame_extra(frame, key, n, extra_kind, extra_tail))

            num_atoms.append(n)
            z.append(frame.numbers.astype(np.int64))
            pos.append(frame.positions.astype(np.float64))
            cells.append(frame.cell.astype(np.float64))
            pbcs.append(frame.pbc.astype(bool))

        if not num_atoms:
            raise RawFileError(f"'{self.path}' holds no structures")
        e_unit, l_unit = energy_units.resolve(), length_units.resolve()
        self._units_seen = {'energy': e_unit, 'length': l_unit}
        e_scale, l_scale = ENERGY_UNITS[e_unit], LENGTH_UNITS[l_unit]
        if self.log:
            logger.info("read %d structures from '%s' (energies in %s, lengths in %s)",
                        len(num_atoms), self.path, e_unit, l_unit)

        cell = np.stack(cells) * l_scale
        atom_fields = {
            'z': torch.from_numpy(np.concatenate(z)),
            'pos': torch.from_numpy(np.concatenate(pos) * l_scale),
        }
        if self.forces_key is not None:
            atom_fields['forces'] = torch.from_numpy(np.concatenate(forces) * (e_scale / l_scale))
        graph_fields = {
            'energy': torch.tensor(energy, dtype=torch.float64) * e_scale,
            'cell': torch.from_numpy(cell),
            'pbc': torch.from_numpy(np.stack(pbcs)),
            'total_charge': torch.tensor(charges, dtype=torch.float64),
            'idx': torch.arange(len(num_atoms)),
        }
        if any(s is not None for s in stress):
            values = np.zeros((len(stress), 3, 3))
            for i, item in enumerate(stress):
                if item is None:
                    continue
                matrix, is_stress = item
                if is_stress:
                    values[i] = matrix * (e_scale / l_scale ** 3)
                else:
                    values[i] = -matrix * e_scale / abs(np.linalg.det(cell[i]))
            graph_fields['stress'] = torch.from_numpy(values)
            graph_fields['has_stress'] = torch.tensor([s is not None for s in stress])
        for key, rows in extras.items():
            target = atom_fields if extra_kind[key] == 'atom' else graph_fields
            if extra_kind[key] == 'atom':
                target[key] = torch.from_numpy(np.concatenate(rows))
            else:
                target[key] = torch.from_numpy(np.stack(rows))
        return collate_storage(torch.tensor(num_atoms), atom_fields, graph_fields)

    def _frame_stress(self, frame: _Frame) -> Optional[Tuple[np.ndarray, bool]]:
        if self.stress_key is not None:
            value, _ = _lookup(frame, self.stress_key)
            if value is not None:
                return _tensor3(value, frame, self.stress_key), True
        if self.virial_key is not None:
            value, _ = _lookup(frame, self.virial_key)
            if value is not None:
                virial = _tensor3(value, frame, self.virial_key)
                if abs(np.linalg.det(frame.cell)) < 1e-9:
                    raise RawFileError(f"{frame.label} has a virial '{self.virial_key}' but no "
                                       f"cell: stress = -virial / volume needs the cell volume")
                return virial, False
        return None

    def _frame_extra(self, frame: _Frame, key: str, n: int,
                     kinds: Dict[str, Optional[str]],
                     tails: Dict[str, Tuple[Tuple[int, ...], str]]) -> np.ndarray:
        value, where = _lookup(frame, key)
        if value is None:
            raise RawFileError(f"{frame.label} has no '{key}' (asked for in extra_keys); it has "
                               f"{_available(frame)}")
        array = np.asarray(value)
        if array.dtype.kind not in 'biuf':
            raise RawFileError(f"{frame.label}: '{key}' is not numeric (dtype {array.dtype}); "
                               f"only numbers can be served as tensors")
        array = array.astype({'b': bool, 'i': np.int64, 'u': np.int64}.get(array.dtype.kind,
                                                                          np.float64))
        kind = kinds[key]
        if kind is None:
            if where == 'data':
                where = 'atom' if array.ndim >= 1 and array.shape[0] == n else 'structure'
            kinds[key] = kind = where
        if kind == 'atom':
            if array.ndim == 0 or array.shape[0] != n:
                raise RawFileError(f"{frame.label}: per-atom '{key}' has shape "
                                   f"{list(array.shape)}, expected {n} rows (one per atom)")
            tail = tuple(array.shape[1:])
        else:
            tail = tuple(array.shape)
        if key not in tails:
            tails[key] = (tail, frame.label)
        elif tails[key][0] != tail:
            per = 'per-atom shape [N, ' if kind == 'atom' else 'shape ['
            raise RawFileError(
                f"{frame.label}: '{key}' has {per}{', '.join(map(str, tail))}] but "
                f"{tails[key][1]} has {per}{', '.join(map(str, tails[key][0]))}]")
        return array

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)}, path='{osp.basename(self.path)}')"


class ExtXYZDataset(ASEFileDataset):
    r"""Structures of an extended-XYZ file (as written by :func:`ase.io.write` with
    ``format="extxyz"``: ``Lattice="..."``, ``pbc="T T T"``, ``Properties=...`` and per-frame
    keys on the comment line), read with :func:`ase.io.read`.

    Energies, forces, stresses and virials are looked up in ``atoms.info`` /
    ``atoms.arrays`` and in the :class:`~ase.calculators.singlepoint.SinglePointCalculator`
    ASE attaches while reading (ASE moves ``energy``, ``forces``, ``stress``... there).

    Args:
        root (str): Folder of the processed file.
        path (str): The ``.xyz``/``.extxyz`` file.
        index (str, optional): Which frames, in :func:`ase.io.read`'s syntax.
            (default: :obj:`":"`)
        **kwargs: See :class:`ASEFileDataset` (keys, units, :obj:`atomref`, :obj:`split`,
            transforms).
    """
    kind = 'extxyz'

    def __init__(self, root: str, path: str, index: str = ':', **kwargs) -> None:
        self.index = str(index)
        super().__init__(root, path, **kwargs)

    def read_options(self) -> Dict[str, Any]:
        return {'index': self.index}

    def frames(self):
        import ase.io
        try:
            images = ase.io.read(self.path, index=self.index, format='extxyz')
        except Exception as error:  # ASE raises many types for malformed files
            raise RawFileError(f"cannot read '{self.path}' as extended XYZ: "
                               f"{type(error).__name__}: {error}") from error
        if not isinstance(images, list):
            images = [images]
        where = '' if self.index == ':' else f" of index='{self.index}'"
        for i, atoms in enumerate(images):
            arrays = {k: v for k, v in atoms.arrays.items() if k not in ('numbers', 'positions')}
            results = dict(atoms.calc.results) if atoms.calc is not None else {}
            yield _Frame(f"'{osp.basename(self.path)}' frame {i}{where}", atoms.numbers,
                         atoms.positions, np.asarray(atoms.cell[:]), np.asarray(atoms.pbc),
                         dict(atoms.info), arrays, results, {})


class ASEDatabaseDataset(ASEFileDataset):
    r"""Structures of an ASE database (``.db`` SQLite, ``.json``...), read with
    :func:`ase.db.connect`.

    Energies, forces and stresses come from the row's calculator results; other values from
    its ``key_value_pairs`` (per structure) and ``data`` (arrays: per atom when they have one
    row per atom, unless :obj:`extra_keys` says otherwise). Note that in an ASE database
    ``charge`` is the sum of the atoms' initial charges (an ASE column, which a key-value pair
    of that name cannot override): store a total charge under another key and pass e.g.
    ``charge_key="total_charge"``.

    Args:
        root (str): Folder of the processed file.
        path (str): The database file.
        selection (str, optional): An ASE-database query (e.g. ``"natoms<20,energy<0"``);
            :obj:`None` for every row. (default: :obj:`None`)
        **kwargs: See :class:`ASEFileDataset`.
    """
    kind = 'asedb'

    def __init__(self, root: str, path: str, selection: Optional[str] = None,
                 **kwargs) -> None:
        self.selection = selection
        super().__init__(root, path, **kwargs)

    def read_options(self) -> Dict[str, Any]:
        return {'selection': self.selection}

    def frames(self):
        import ase.db
        try:
            database = ase.db.connect(self.path, create_indices=False, use_lock_file=False)
            rows = list(database.select(self.selection))
        except Exception as error:  # sqlite3, JSON and query errors have many types
            raise RawFileError(f"cannot read '{self.path}' as an ASE database: "
                               f"{type(error).__name__}: {error}") from error
        name = osp.basename(self.path)
        for row in rows:
            atoms = row.toatoms()
            arrays = {k: v for k, v in atoms.arrays.items() if k not in ('numbers', 'positions')}
            results = dict(atoms.calc.results) if atoms.calc is not None else {}
            info = dict(row.key_value_pairs)
            yield _Frame(f"'{name}' row id {row.id}", atoms.numbers, atoms.positions,
                         np.asarray(atoms.cell[:]), np.asarray(atoms.pbc), info, arrays,
                         results, dict(row.data))
