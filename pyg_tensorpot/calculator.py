r"""An ASE calculator for every model of the package: relaxations, molecular dynamics and cell
optimisation with :mod:`ase`.

ASE is an optional dependency (``pip install 'pyg-tensorpot[ase]'``); :obj:`import
pyg_tensorpot` never imports it, only importing this module does.
"""
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

try:
    from ase import Atoms
    from ase.calculators.calculator import (Calculator, PropertyNotImplementedError,
                                            all_changes)
    from ase.stress import full_3x3_to_voigt_6_stress
except ImportError as error:  # pragma: no cover - exercised in a subprocess without ASE
    raise ImportError(
        'pyg_tensorpot.calculator needs the Atomic Simulation Environment (ase), which is not '
        "installed: install the ase extra, pip install 'pyg-tensorpot[ase]' (or pip install "
        "'ase>=3.23')") from error

from pyg_tensorpot.models.ensemble import Ensemble
from pyg_tensorpot.models.properties import compute_properties
from pyg_tensorpot.nn.verlet import VerletList
from pyg_tensorpot.utils.devices import inference_copy, load_model, resolve_device

__all__ = ['TensorPotCalculator']


class TensorPotCalculator(Calculator):
    r"""ASE calculator for TensorNet, HIP-NN(-TS) or any :class:`torch.nn.Module` whose
    ``forward(z, pos, batch, edge_index, cell, pbc, total_charge, num_graphs)`` returns
    energies in eV (every model of the package, or one composed from its layers).

    Energy and forces (eV, eV/A) are computed together on every new geometry; the stress
    (eV/A^3, ASE's sign: negative under compression, Voigt order xx, yy, zz, yz, xz, xy) and
    the per-atom energies (:obj:`"energies"`, eV, summing to the energy) only when asked for,
    all by automatic differentiation through
    :func:`~pyg_tensorpot.models.properties.compute_properties`. :obj:`"free_energy"` is the
    energy (there is no electronic entropy).

    Molecules (:obj:`atoms.pbc` all :obj:`False`: the cell, if any, is ignored), fully
    periodic cells of any shape (triclinic included, cells shorter than twice the cutoff
    included) and mixed boundaries (e.g. slabs, :obj:`pbc=(True, True, False)`) are supported.
    Atoms need not be wrapped into the cell: the periodic images are found from the
    unwrapped positions, so :obj:`atoms.wrap()` leaves energy, forces and stress unchanged.
    In a non-periodic direction a zero lattice vector is allowed (it is replaced by a normal
    vector, which affects nothing), but then the stress is not defined. The stress of a
    structure that is not periodic in any direction raises
    :class:`~ase.calculators.calculator.PropertyNotImplementedError`.

    The total charge (in e) is :obj:`atoms.info["charge"]` if present, else :obj:`charge`;
    models that do not use a charge ignore it.

    With an :class:`~pyg_tensorpot.Ensemble` (or a list of models / names), the results are
    the members' mean, and their spread (sample standard deviation over members) is in
    :obj:`calc.results["energy_std"]` (eV), :obj:`["forces_std"]` (eV/A, per atom and
    component) and, with the stress, :obj:`["stress_std"]` (Voigt).

    The model is loaded and converted once, at construction, and reused by every call; the
    model you pass is never modified: it is used as is if it already has the requested dtype
    and device and is in evaluation mode, otherwise a converted copy in evaluation mode is
    kept in :obj:`calc.model`. Positions are converted to the model's dtype; energies are
    returned as Python floats and arrays as float64 numpy arrays.

    Args:
        model (str or torch.nn.Module or list, optional): A model, or a registered name
            (``"tensornet-ani1x"``, ``"hipnn-ts-ani1x"``), Hub repository id or folder passed
            to :func:`~pyg_tensorpot.hub.from_pretrained`, or a list of those (an ensemble).
            (default: ``"tensornet-ani1x"``)
        dtype (torch.dtype, optional): Floating-point type of the computation. float64 makes
            forces exact derivatives of the energy to about 1e-10 and keeps NVE energy
            drift at the integrator's level; float32 (the pretrained models' own type) is
            faster on GPUs. (default: :obj:`torch.float64`)
        device (str or torch.device, optional): Where the model runs, e.g. ``"cpu"``,
            ``"cuda"``, ``"cuda:1"``. (default: ``"cpu"``)
        charge (float, optional): Total charge in e of structures without
            :obj:`atoms.info["charge"]`. (default: :obj:`None`)
        skin (float, optional): Verlet skin in Angstrom
            (:class:`~pyg_tensorpot.nn.verlet.VerletList`): the neighbour candidates are
            searched at cutoff + skin and reused until an atom has moved more than half the
            skin, or the cell, the periodic directions or the atoms change; energies, forces
            and stress are those of a fresh search (the same pair set). :obj:`0` searches at
            every call. A model of the package (not an ensemble) is needed for a skin.
            Builds are counted in :obj:`calc.verlet.num_builds`. (default: :obj:`0.0`)
        **kwargs: Passed on to :class:`ase.calculators.calculator.Calculator` (e.g.
            :obj:`label`, :obj:`directory`).

    Example:

        >>> from ase.build import molecule
        >>> from ase.optimize import BFGS
        >>> from pyg_tensorpot.calculator import TensorPotCalculator
        >>> atoms = molecule('CH3CH2OH')
        >>> atoms.calc = TensorPotCalculator('tensornet-ani1x')
        >>> BFGS(atoms).run(fmax=0.01)
        >>> atoms.get_potential_energy(), atoms.get_forces().shape
    """

    implemented_properties = ['energy', 'free_energy', 'forces', 'stress', 'energies']
    default_parameters: Dict[str, Any] = {'charge': None}

    def __init__(
        self,
        model: Union[str, torch.nn.Module, Sequence[Union[str, torch.nn.Module]]] = 'tensornet-ani1x',
        dtype: torch.dtype = torch.float64,
        device: Union[str, torch.device] = 'cpu',
        charge: Optional[float] = None,
        skin: float = 0.0,
        **kwargs: Any,
    ):
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f'dtype must be a floating-point torch dtype such as torch.float64 '
                            f'or torch.float32, got {dtype!r}')
        self.device = resolve_device(device)
        self.dtype = dtype
        self.model = self._prepare(model)
        self.verlet: Optional[VerletList] = VerletList.for_model(self.model, skin)
        self.skin = float(skin)
        super().__init__(charge=charge, **kwargs)
        self._z_key: Optional[np.ndarray] = None
        self._z: Optional[torch.Tensor] = None
        self._last_charge: Optional[float] = None

    def _prepare(self, model: Union[str, torch.nn.Module, Sequence]) -> torch.nn.Module:
        # A committee (list) becomes an Ensemble: its spread is reported beside the mean
        # (energy_std, forces_std, ...).
        module, owned = load_model(model, self.device)
        return inference_copy(module, self.dtype, self.device, owned)

    # ------------------------------------------------------------------------------------------
    def _charge_of(self, atoms: Atoms) -> Optional[float]:
        charge = atoms.info.get('charge', self.parameters.get('charge'))
        if charge is None:
            return None
        try:
            charge = float(charge)
        except (TypeError, ValueError):
            raise ValueError(f'the total charge must be a number (e), got {charge!r} (from '
                             'atoms.info["charge"] or the calculator\'s charge=)') from None
        if not np.isfinite(charge):
            raise ValueError(f'the total charge must be finite, got {charge}')
        return charge

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> List[str]:
        # ASE does not compare atoms.info; a new total charge must invalidate the results.
        changes = super().check_state(atoms, tol=tol)
        if not changes and atoms.info.get('charge', self.parameters.get('charge')) != \
                self._last_charge:
            changes = list(changes) + ['charge']
        return changes

    def _numbers(self, numbers: np.ndarray) -> torch.Tensor:
        if self._z is None or self._z_key is None or not np.array_equal(numbers, self._z_key):
            self._z_key = numbers.copy()
            self._z = torch.as_tensor(numbers, dtype=torch.long, device=self.device)
        return self._z

    def _cell_and_pbc(self, atoms: Atoms, want_stress: bool):
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if not pbc.any():
            if want_stress:
                raise PropertyNotImplementedError(
                    'the stress is not defined for a structure that is not periodic in any '
                    'direction (atoms.pbc is all False, e.g. a molecule in vacuum); set a cell '
                    'and atoms.pbc = True for a periodic system')
            return None, None
        cell = np.array(atoms.cell, dtype=np.float64)
        lengths = np.linalg.norm(cell, axis=1)
        missing = lengths == 0.0
        if bool((missing & pbc).any()):
            axes = ', '.join('abc'[i] for i in np.flatnonzero(missing & pbc))
            raise ValueError(f'the structure is periodic along lattice vector(s) {axes} but '
                             'they have zero length: set the cell (Angstrom) or atoms.pbc')
        if missing.any():
            if want_stress:
                raise PropertyNotImplementedError(
                    'the stress needs a cell volume, but the lattice vector(s) '
                    f"{', '.join('abc'[i] for i in np.flatnonzero(missing))} of the "
                    'non-periodic direction(s) are zero: give them a length (vacuum)')
            cell = _complete_cell(cell, missing)
        return (torch.as_tensor(cell, dtype=self.dtype, device=self.device),
                torch.as_tensor(pbc, device=self.device))

    def calculate(self, atoms: Optional[Atoms] = None,
                  properties: Sequence[str] = ('energy', ),
                  system_changes: Sequence[str] = tuple(all_changes)) -> None:
        r"""Computes energy, free energy and forces, plus :obj:`"stress"` and
        :obj:`"energies"` when they are in :obj:`properties`, into :obj:`self.results`."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        want = ['energy', 'forces']
        want_stress = 'stress' in properties
        if want_stress:
            want.append('stress')
        if 'energies' in properties:
            want.append('energies')
        positions = atoms.positions
        if len(atoms) == 0:
            raise ValueError('the Atoms object has no atoms')
        finite = np.isfinite(positions).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)[:10]
            names = ', '.join(f'{atoms[i].symbol}{i}' for i in bad)
            raise ValueError(f'positions contain NaN or infinite values (atoms {names}); the '
                             'structure may have exploded (check the time step and '
                             'temperature)')
        cell, pbc = self._cell_and_pbc(atoms, want_stress)
        charge = self._charge_of(atoms)
        total_charge = None if charge is None else torch.tensor(
            [charge], dtype=self.dtype, device=self.device)
        pos = torch.as_tensor(positions, dtype=self.dtype, device=self.device)
        if isinstance(self.model, Ensemble):
            out = self.model.compute(self._numbers(atoms.numbers), pos, cell=cell, pbc=pbc,
                                     total_charge=total_charge, properties=want,
                                     create_graph=False)
        else:
            out = compute_properties(self.model, self._numbers(atoms.numbers), pos, cell=cell,
                                     pbc=pbc, total_charge=total_charge, properties=want,
                                     create_graph=False, num_graphs=1, neighbors=self.verlet)
        energy = float(out['energy'].reshape(-1)[0])
        self._last_charge = atoms.info.get('charge', self.parameters.get('charge'))
        self.results['energy'] = energy
        self.results['free_energy'] = energy
        self.results['forces'] = out['forces'].to('cpu', torch.float64).numpy().reshape(-1, 3)
        if want_stress:
            stress = out['stress'].reshape(3, 3).to('cpu', torch.float64).numpy()
            self.results['stress'] = full_3x3_to_voigt_6_stress(stress)
        if 'energies' in want:
            self.results['energies'] = out['energies'].to('cpu', torch.float64).numpy()
        if 'energy_std' in out:
            self.results['energy_std'] = float(out['energy_std'].reshape(-1)[0])
            self.results['forces_std'] = out['forces_std'].to('cpu', torch.float64).numpy()
            if want_stress:
                self.results['stress_std'] = full_3x3_to_voigt_6_stress(
                    out['stress_std'].reshape(3, 3).to('cpu', torch.float64).numpy())

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(model={type(self.model).__name__}, '
                f'dtype={self.dtype}, device={self.device}, skin={self.skin})')


def _complete_cell(cell: np.ndarray, missing: np.ndarray) -> np.ndarray:
    # Only non-periodic directions are filled; their lattice vector enters neither the
    # neighbour search nor the energy, it just has to make the cell non-singular.
    cell = cell.copy()
    present = [i for i in range(3) if not missing[i]]
    scale = max(float(np.linalg.norm(cell, axis=1).max()), 1.0)
    if len(present) == 2:
        normal = np.cross(cell[present[0]], cell[present[1]])
        length = float(np.linalg.norm(normal))
        if length > 0:  # parallel periodic vectors: left singular, refused by the model
            cell[int(np.flatnonzero(missing)[0])] = normal / length * scale
    else:
        basis = np.eye(3) * scale
        if len(present) == 1:
            a = cell[present[0]]
            others = [v for v in basis if abs(np.dot(v, a)) < 0.9 * scale * np.linalg.norm(a)]
            b = np.cross(a, others[0])
            b = b / np.linalg.norm(b) * scale
            c = np.cross(a, b)
            c = c / np.linalg.norm(c) * scale
            fill = [b, c]
        else:
            fill = list(basis)
        for i, vector in zip(np.flatnonzero(missing), fill):
            cell[i] = vector
    return cell
