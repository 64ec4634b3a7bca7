r"""wB97X/6-31G(d) energies and forces with PySCF, the level of theory of ANI-1x and COMP6.

The settings (:class:`DFTSettings`) reproduce COMP6 v1's Gaussian references of S66x8 to about
0.02 kcal/mol in absolute energy and 0.02 kcal/mol/Angstrom in gradient MAE: restricted
Kohn-Sham with the range-separated hybrid wB97X (Chai and Head-Gordon, J. Chem. Phys. 128,
084106 (2008)), the 6-31G(d) basis with six *cartesian* d functions (Gaussian's default for
6-31G(d), :obj:`cart=True` in PySCF), integration grid level 4, RI-JK density fitting with the
def2-universal-jkfit auxiliary basis, SCF converged to :math:`10^{-10}` Hartree.

Labels are served in eV and eV/Angstrom. Forces are minus the nuclear gradient,

.. math::
    \mathbf{F}_i = -\frac{\partial E}{\partial \mathbf{R}_i}
    \cdot \frac{E_h\,[\mathrm{eV}]}{a_0\,[\mathrm{\mathring{A}}]},

so a label is directly comparable with :obj:`compute_properties(...)['forces']` (COMP6 stores
the gradient :math:`+\partial E/\partial \mathbf{R}` under ``forces``; the loaders negate it).

:class:`PySCFLabeller` writes one small JSON file per conformation, atomically, so that an
interrupted run resumes where it stopped and finished labels can be committed as they come.
"""
import copy
import dataclasses
import json
import os
import os.path as osp
import re
import time
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pyg_tensorpot.utils.elements import symbol
from pyg_tensorpot.utils.files import atomic_write_text
from pyg_tensorpot.utils.units import BOHR_TO_ANGSTROM, HARTREE_TO_EV
from pyg_tensorpot.utils.validation import structure_arrays

#: Version of the label-file layout written by :class:`PySCFLabeller`.
LABEL_FORMAT = 1

#: Elements the labeller accepts (6-31G(d) exists for more, but the level of theory of ANI-1x
#: is validated here only for these).
SUPPORTED_ELEMENTS = (1, 6, 7, 8)

_KEY = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$')


@dataclasses.dataclass(frozen=True)
class DFTSettings:
    r"""The electronic-structure settings of a label.

    Args:
        xc (str, optional): Exchange-correlation functional (libxc name). (default:
            :obj:`"wb97x"`)
        basis (str, optional): Basis set (PySCF name). (default: :obj:`"6-31g*"`)
        cart (bool, optional): Cartesian d functions (6 instead of 5), as Gaussian's 6-31G(d).
            (default: :obj:`True`)
        grid_level (int, optional): PySCF integration grid level. (default: :obj:`4`)
        conv_tol (float, optional): SCF energy convergence (Hartree). (default: :obj:`1e-10`)
        max_cycle (int, optional): SCF iterations before the second-order fallback.
            (default: :obj:`100`)
        auxbasis (str, optional): Density-fitting basis of the Coulomb and exchange integrals;
            :obj:`None` computes them exactly. (default: :obj:`"def2-universal-jkfit"`)
        charge (int, optional): Total charge (e). (default: :obj:`0`)
        spin (int, optional): :math:`2S` (number of unpaired electrons); only closed shells
            (:obj:`0`, restricted Kohn-Sham) are supported. (default: :obj:`0`)
    """
    xc: str = 'wb97x'
    basis: str = '6-31g*'
    cart: bool = True
    grid_level: int = 4
    conv_tol: float = 1e-10
    max_cycle: int = 100
    auxbasis: Optional[str] = 'def2-universal-jkfit'
    charge: int = 0
    spin: int = 0

    def __post_init__(self):
        if self.spin != 0:
            raise ValueError(f'only closed-shell molecules (spin=0) are supported, got '
                             f'spin={self.spin}')
        if not 0 <= self.grid_level <= 9:
            raise ValueError(f'grid_level must be 0..9 (PySCF grid levels), got '
                             f'{self.grid_level}')
        if not self.conv_tol > 0 or self.max_cycle < 1:
            raise ValueError('conv_tol must be positive and max_cycle at least 1')

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _check_structure(z: Sequence[int], pos: Sequence[Sequence[float]],
                     charge: int) -> Tuple[np.ndarray, np.ndarray]:
    z, pos = structure_arrays(z, pos)
    bad = sorted({int(v) for v in z} - set(SUPPORTED_ELEMENTS))
    if bad:
        raise ValueError(f'the wB97X/6-31G(d) labeller is validated for H, C, N, O only; '
                         f'got {", ".join(symbol(v) for v in bad)}')
    if (int(z.sum()) - charge) % 2:
        raise ValueError(f'{int(z.sum())} protons and charge {charge} leave an odd number of '
                         f'electrons: a radical, which restricted Kohn-Sham cannot describe')
    if z.size > 1:
        dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        dist[np.diag_indices(z.size)] = np.inf
        if dist.min() < 0.5:
            i, j = np.unravel_index(np.argmin(dist), dist.shape)
            raise ValueError(f'atoms {i} ({symbol(int(z[i]))}) and {j} ({symbol(int(z[j]))}) are '
                             f'{dist.min():.3f} Angstrom apart: not a molecular geometry')
    return z.astype(np.int64), pos


def build_mean_field(z: Sequence[int], pos: Sequence[Sequence[float]],
                     settings: DFTSettings = DFTSettings(), verbose: int = 0):
    """The PySCF :obj:`RKS` object of one conformation at :obj:`settings` (not yet run).

    Args:
        z (Sequence[int]): Atomic numbers.
        pos (Sequence[Sequence[float]]): Positions in Angstrom, shape :obj:`[num_atoms, 3]`.
        settings (DFTSettings, optional): The settings. (default: :obj:`DFTSettings()`)
        verbose (int, optional): PySCF verbosity. (default: :obj:`0`)
    """
    from pyscf import dft, gto
    z, pos = _check_structure(z, pos, settings.charge)
    mol = gto.M(atom=[(int(v), tuple(p)) for v, p in zip(z, pos)], unit='Angstrom',
                basis=settings.basis, cart=settings.cart, charge=settings.charge,
                spin=settings.spin, verbose=verbose)
    mf = dft.RKS(mol)
    mf.xc = settings.xc
    mf.grids.level = settings.grid_level
    mf.conv_tol = settings.conv_tol
    mf.max_cycle = settings.max_cycle
    if settings.auxbasis:
        mf = mf.density_fit(auxbasis=settings.auxbasis)
    return mf


#: Integration grid and energy convergence (Hartree) of the start of an SCF without a guess.
GUESS_GRID_LEVEL = 1
GUESS_CONV_TOL = 1e-6


def compute_label(z: Sequence[int], pos: Sequence[Sequence[float]],
                  settings: DFTSettings = DFTSettings(), dm0: Optional[np.ndarray] = None,
                  verbose: int = 0, coarse_start: bool = True) -> Dict[str, Any]:
    r"""Energy and forces of one conformation.

    A converged density matrix of a nearby conformation of the same molecule (same atoms in
    the same order) as :obj:`dm0` saves a third to a half of the SCF iterations. Without one,
    the SCF first converges to :obj:`GUESS_CONV_TOL` on the coarse grid
    :obj:`GUESS_GRID_LEVEL` (about a fifth of the points of level 4), whose density then
    starts the SCF at :obj:`settings`: the exchange-correlation integration is most of an SCF
    cycle's cost, and the result is that of :obj:`settings` (it converges to
    :obj:`settings.conv_tol` on their grid). When the DIIS iterations do not converge in
    :obj:`settings.max_cycle`, the second-order (Newton) solver continues from where they
    stopped.

    Args:
        z (Sequence[int]): Atomic numbers (H, C, N, O).
        pos (Sequence[Sequence[float]]): Positions in Angstrom, shape :obj:`[num_atoms, 3]`.
        settings (DFTSettings, optional): The settings. (default: :obj:`DFTSettings()`)
        dm0 (numpy.ndarray, optional): Initial density matrix. (default: :obj:`None`)
        verbose (int, optional): PySCF verbosity. (default: :obj:`0`)
        coarse_start (bool, optional): Without :obj:`dm0`, start on the coarse grid.
            (default: :obj:`True`)

    Returns:
        A dictionary with :obj:`energy` (eV), :obj:`forces` (eV/Angstrom, :math:`-\nabla E`,
        :obj:`[num_atoms, 3]`), :obj:`energy_hartree`, :obj:`gradient_hartree_per_bohr`
        (:math:`+\nabla E`), :obj:`converged`, :obj:`solver` (:obj:`"diis"` or
        :obj:`"newton"`), :obj:`seconds` and :obj:`dm` (the converged density matrix).
    """
    mf = build_mean_field(z, pos, settings, verbose)
    if dm0 is not None and np.shape(dm0) != (mf.mol.nao, mf.mol.nao):
        dm0 = None  # another molecule: fall back to the default guess
    start = time.perf_counter()
    if dm0 is None and coarse_start and settings.grid_level > GUESS_GRID_LEVEL:
        dm0 = _coarse_density(mf, settings)
    energy = mf.kernel(dm0=dm0)
    solver = 'diis'
    if not mf.converged:
        mf = mf.newton()
        energy = mf.kernel(dm0=mf.make_rdm1())
        solver = 'newton'
    gradient = np.asarray(mf.nuc_grad_method().kernel()) if mf.converged else None
    seconds = time.perf_counter() - start
    out: Dict[str, Any] = dict(converged=bool(mf.converged), solver=solver, seconds=seconds,
                               energy_hartree=float(energy), nao=int(mf.mol.nao))
    if gradient is not None:
        out.update(energy=float(energy) * HARTREE_TO_EV,
                   forces=-gradient * (HARTREE_TO_EV / BOHR_TO_ANGSTROM),
                   gradient_hartree_per_bohr=gradient, dm=mf.make_rdm1())
    return out


def _coarse_density(mf, settings: DFTSettings) -> Optional[np.ndarray]:
    # The same mean-field object (its density-fitting tensors are built once), on the coarse
    # grid; its own grids are restored for the SCF at the settings.
    grids = mf.grids
    coarse = copy.copy(grids)
    coarse.level = GUESS_GRID_LEVEL
    coarse.reset()
    mf.grids, mf.conv_tol = coarse, max(GUESS_CONV_TOL, settings.conv_tol)
    try:
        mf.kernel()
        return mf.make_rdm1() if mf.converged else None
    finally:
        mf.grids, mf.conv_tol = grids, settings.conv_tol


def _dumps(record: Dict[str, Any]) -> str:
    # compact, one line; Python's float repr reads back to the same double
    return json.dumps(record, separators=(',', ':'), allow_nan=False) + '\n'


def _pyscf_version() -> str:
    import pyscf
    return pyscf.__version__


class PySCFLabeller:
    r"""Labels conformations with :func:`compute_label`, one JSON file per conformation
    (``<out_dir>/<key>.json``, written atomically), skipping those already labelled, so that
    a run can be interrupted and started again at any time.

    A file holds the conformation (``z``, ``pos`` in Angstrom), ``energy`` (eV), ``forces``
    (eV/Angstrom, minus the gradient), ``energy_hartree``, the settings, the PySCF version,
    the wall time, and any metadata given with the conformation (e.g. its SMILES and how it
    was sampled). A conformation whose SCF fails to converge is recorded in
    ``<key>.failed.json`` and not tried again unless :obj:`retry_failed`.

    Args:
        out_dir (str): Folder of the label files.
        settings (DFTSettings, optional): The settings. (default: :obj:`DFTSettings()`)
        threads (int, optional): OpenMP threads of PySCF (:obj:`pyscf.lib.num_threads`); one
            per process, one process per core, is the most labels per hour. (default: :obj:`1`)
        retry_failed (bool, optional): Try failed conformations again. (default: :obj:`False`)
    """
    def __init__(self, out_dir: str, settings: DFTSettings = DFTSettings(), threads: int = 1,
                 retry_failed: bool = False):
        if threads < 1:
            raise ValueError(f'threads must be at least 1, got {threads}')
        self.out_dir = out_dir
        self.settings = settings
        self.threads = threads
        self.retry_failed = retry_failed
        self._guess: Dict[str, np.ndarray] = {}

    def path(self, key: str) -> str:
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f'a conformation key is 1-128 characters of letters, digits, '
                             f"'.', '_' or '-' (it names a file), got {key!r}")
        return osp.join(self.out_dir, f'{key}.json')

    def failed_path(self, key: str) -> str:
        return self.path(key)[:-len('.json')] + '.failed.json'

    def is_done(self, key: str) -> bool:
        """Whether :obj:`key` is labelled (or failed, unless :obj:`retry_failed`)."""
        return osp.exists(self.path(key)) or (not self.retry_failed
                                              and osp.exists(self.failed_path(key)))

    def label(self, key: str, z: Sequence[int], pos: Sequence[Sequence[float]],
              metadata: Optional[Mapping[str, Any]] = None,
              guess_group: Optional[str] = None) -> Optional[Dict[str, Any]]:
        """Labels one conformation unless it is done; returns its record (:obj:`None` if it
        was done already).

        Args:
            key (str): Name of the conformation (its file name without ``.json``).
            z (Sequence[int]): Atomic numbers.
            pos (Sequence[Sequence[float]]): Positions in Angstrom.
            metadata (Mapping[str, Any], optional): JSON-serialisable facts stored with the
                label. (default: :obj:`None`)
            guess_group (str, optional): Conformations of one group (e.g. one molecule) reuse
                each other's converged density as the initial guess. (default: :obj:`None`)
        """
        from pyscf import lib
        if self.is_done(key):
            return None
        lib.num_threads(self.threads)
        z, pos = _check_structure(z, pos, self.settings.charge)
        dm0 = self._guess.get(guess_group) if guess_group is not None else None
        result = compute_label(z, pos, self.settings, dm0=dm0)
        record: Dict[str, Any] = dict(
            format=LABEL_FORMAT, key=key, z=z.tolist(), pos=pos.tolist(),
            converged=result['converged'], solver=result['solver'],
            energy_hartree=result['energy_hartree'], nao=result['nao'],
            seconds=round(result['seconds'], 2), threads=self.threads,
            settings=self.settings.to_dict(), program=f'pyscf {_pyscf_version()}',
            units=dict(pos='Angstrom', energy='eV', forces='eV/Angstrom (= -dE/dR)',
                       energy_hartree='Hartree'),
            metadata=dict(metadata or {}))
        if not result['converged']:
            atomic_write_text(_dumps(record), self.failed_path(key))
            return record
        record['energy'] = result['energy']
        record['forces'] = result['forces'].tolist()
        atomic_write_text(_dumps(record), self.path(key))
        if guess_group is not None:
            self._guess = {guess_group: result['dm']}  # keep one matrix: they are large
        return record

    def run(self, queue: Iterable[Mapping[str, Any]], limit: Optional[int] = None,
            log=None) -> int:
        """Labels the items of :obj:`queue` in order, each a mapping with ``key``, ``z``,
        ``pos`` and optionally ``metadata`` and ``group``; returns the number labelled now.

        Args:
            queue (Iterable[Mapping]): The conformations, most wanted first.
            limit (int, optional): Stop after this many new labels. (default: :obj:`None`)
            log (callable, optional): Called with one line per label. (default: :obj:`None`)
        """
        count = 0
        for item in queue:
            if limit is not None and count >= limit:
                break
            if self.is_done(item['key']):
                continue
            record = self.label(item['key'], item['z'], item['pos'], item.get('metadata'),
                                item.get('group'))
            count += 1
            if log is not None and record is not None:
                state = 'ok' if record['converged'] else 'NOT CONVERGED'
                log(f"{item['key']}: {len(record['z'])} atoms, {record['nao']} basis functions, "
                    f"{record['seconds']:.0f} s, {state}")
        return count


def read_label(path: str) -> Dict[str, Any]:
    """One label file, checked: ``z`` int64 :obj:`[N]`, ``pos`` and ``forces`` float64
    :obj:`[N, 3]`, ``energy`` float (eV), plus the rest of the record."""
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the DFT label file '{path}': {error}") from error
    missing = {'format', 'key', 'z', 'pos', 'energy', 'forces', 'settings'} - set(record)
    if missing:
        raise ValueError(f"'{path}' is not a DFT label file (missing {sorted(missing)})")
    if record['format'] != LABEL_FORMAT:
        raise ValueError(f"'{path}' has label format {record['format']}; this version reads "
                         f"format {LABEL_FORMAT}")
    record['z'] = np.asarray(record['z'], dtype=np.int64)
    record['pos'] = np.asarray(record['pos'], dtype=np.float64)
    record['forces'] = np.asarray(record['forces'], dtype=np.float64)
    n = record['z'].size
    if record['pos'].shape != (n, 3) or record['forces'].shape != (n, 3):
        raise ValueError(f"'{path}': pos and forces must have shape [{n}, 3]")
    if not (np.isfinite(record['pos']).all() and np.isfinite(record['forces']).all()
            and np.isfinite(record['energy'])):
        raise ValueError(f"'{path}' holds NaN or infinite values")
    return record


def iter_labels(folder: str) -> Iterator[Dict[str, Any]]:
    """The label files of :obj:`folder` (``*.json`` without ``*.failed.json``), by name."""
    if not osp.isdir(folder):
        raise FileNotFoundError(f"no DFT label folder '{folder}'")
    for name in sorted(os.listdir(folder)):
        if name.endswith('.json') and not name.endswith('.failed.json') \
                and not name.startswith('.'):
            yield read_label(osp.join(folder, name))


def label_keys(folder: str) -> List[str]:
    """Keys of the finished labels in :obj:`folder`."""
    if not osp.isdir(folder):
        return []
    return sorted(name[:-5] for name in os.listdir(folder)
                  if name.endswith('.json') and not name.endswith('.failed.json')
                  and not name.startswith('.'))
