r"""Run the package's potentials in `OpenMM <https://openmm.org>`_.

Length: just over 500 lines because both routes into OpenMM (the PythonForce and the
openmm-torch module) share their unit conversions, box handling and checks here.

Two routes:

* :func:`python_force` (and :func:`create_system`, :func:`create_simulation`): an
  :class:`openmm.PythonForce` (tested with OpenMM 8.6) whose function evaluates the model with
  :func:`~pyg_tensorpot.models.properties.compute_properties`. OpenMM calls it whenever it
  needs forces or the energy, so every integrator (Verlet, Langevin, multiple evaluations per
  step), barostat, minimiser and reporter sees the model's own energy and forces at the
  positions it asks about (unlike a CustomExternalForce refreshed between steps, no force is
  ever stale and no energy offset has to be kept up to date).
  This route needs nothing beyond :obj:`openmm`.
* :func:`export_openmm` and :func:`torch_force`: a TorchScript module of openmm-torch's
  convention, ``forward(positions, boxvectors=None) -> energy`` with the atomic numbers stored
  in it and the neighbour list built inside
  (:class:`pyg_tensorpot.deploy.scripted.ScriptablePotential`), for
  :class:`openmmtorch.TorchForce`, which evaluates it inside OpenMM's C++ loop.

Units: OpenMM works in nm, kJ/mol and kJ/mol/nm, the model in Angstrom, eV and eV/A:
:math:`x_\mathrm{A} = 10\,x_\mathrm{nm}`, :math:`E_\mathrm{kJ/mol} = 96.4853321233\,E_\mathrm{eV}`
and :math:`F_\mathrm{kJ/mol/nm} = 964.853321233\,F_\mathrm{eV/A}`.

Periodic systems: OpenMM is periodic in all three directions or none and wants its box
vectors in reduced form (a lower-triangular cell: :math:`\mathbf{a}` along :math:`x`,
:math:`\mathbf{b}` in the :math:`xy` plane, :math:`a_x \ge 2|b_x|`, ...). The model is given
the positions exactly as OpenMM passes them, which OpenMM may leave unwrapped or wrap into
another image; the energy does not depend on which image an atom is in.

openmm-torch 1.5 from the package registry does not work beside this package's torch 2.13
(CPU) build: ``import openmmtorch`` fails with
``ImportError: libnvrtc.so.12: cannot open shared object file: No such file or directory``
because its libraries are linked against a CUDA build of libtorch (they need
``libnvrtc.so.12``, ``libc10_cuda.so`` and ``libtorch_cuda.so``; the registry's
``nvidia-cuda-nvrtc-cu12`` supplies only the first, the other two exist only in CUDA torch
wheels). With stand-ins for those three libraries the import succeeds, but the first force
evaluation fails inside the plugin's copy of libtorch's inline code (built against other
libtorch headers) with ``set_stride is not allowed on a Tensor created from .data or
.detach()``. :func:`torch_force` therefore works only with an openmm-torch built against the
installed torch (conda-forge builds its openmm-torch against its own pytorch);
:func:`load_openmmtorch` raises an :class:`ImportError` that says so.
"""
import io
import json
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

try:
    import openmm
    from openmm import app, unit
except ImportError as error:  # pragma: no cover - exercised only without openmm
    raise ImportError('pyg_tensorpot.deploy.openmm needs OpenMM, which is not installed: '
                      "pip install 'pyg-tensorpot[deploy]' (or pip install openmm)") from error

from pyg_tensorpot.models.properties import compute_properties
from pyg_tensorpot.utils.files import atomic_write_bytes
from pyg_tensorpot.utils.units import KJ_PER_MOL_TO_EV

__all__ = ['EV_TO_KJ_PER_MOL', 'NM_TO_ANGSTROM', 'ModelComputation', 'python_force',
           'create_system', 'create_topology', 'create_simulation', 'OpenMMTorchModule',
           'openmm_module', 'export_openmm', 'load_openmm', 'load_openmmtorch', 'torch_force',
           'read_atoms', 'FORMAT_VERSION']

#: 1 eV in kJ/mol (CODATA 2018, from :mod:`pyg_tensorpot.utils.units`).
EV_TO_KJ_PER_MOL = 1.0 / KJ_PER_MOL_TO_EV
#: 1 nm in Angstrom.
NM_TO_ANGSTROM = 10.0
#: 1 eV/A in kJ/mol/nm.
EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM = EV_TO_KJ_PER_MOL * NM_TO_ANGSTROM
#: Version of the metadata :func:`export_openmm` writes.
FORMAT_VERSION = 1
_FORMAT = 'pyg_tensorpot-openmm-torch'
_METADATA = 'pyg_tensorpot.json'


def _atomic_numbers(atomic_numbers: Union[Tensor, Sequence[int], np.ndarray],
                    model: Optional[torch.nn.Module] = None) -> Tensor:
    try:
        z = (atomic_numbers.detach().cpu() if isinstance(atomic_numbers, Tensor) else
             torch.as_tensor(np.asarray(atomic_numbers)))
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f'atomic_numbers must be a list of integers, one per atom: {error}'
                         ) from error
    if z.dim() != 1 or z.numel() == 0 or z.dtype.is_floating_point or z.dtype == torch.bool:
        raise ValueError('atomic_numbers must be a non-empty list of integers, one per atom, '
                         f'got shape {tuple(z.shape)} and dtype {z.dtype}')
    z = z.long()
    if bool((z < 1).any()) or bool((z > 118).any()):
        raise ValueError(f'atomic numbers must lie in 1..118, got {sorted(set(z.tolist()))}')
    supported = getattr(model, 'supported_elements', None)
    if supported is not None:
        unknown = sorted(set(z.tolist()) - set(int(v) for v in supported))
        if unknown:
            raise ValueError(f'the model was not trained on the elements Z={unknown}; it '
                             f'supports Z={sorted(int(v) for v in supported)}')
    return z


def _device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device('cpu')


class ModelComputation:
    r"""The function an :class:`openmm.PythonForce` calls: the model's energy (kJ/mol) and
    forces (kJ/mol/nm) at the positions (nm) of an OpenMM :class:`~openmm.State`.

    It cannot be pickled, so that a :class:`~openmm.System` holding it is never written to
    XML with a pickled model inside (loading such a file would run arbitrary code); save the
    model with :func:`~pyg_tensorpot.hub.save_pretrained` instead.

    Args:
        model (torch.nn.Module): A potential of the package (or any module
            :func:`~pyg_tensorpot.models.properties.compute_properties` accepts).
        atomic_numbers (Sequence[int]): Atomic number of every particle the force acts on.
        periodic (bool, optional): Pass OpenMM's box vectors to the model as a cell periodic
            in all directions. (default: :obj:`False`)
        total_charge (float, optional): Total charge in e, for models that use it.
            (default: :obj:`None`)

    Shapes:
        - **input:** a :class:`~openmm.State` with positions :math:`[N, 3]` in nm.
        - **output:** energy (float, kJ/mol), forces :math:`[N, 3]` (numpy, kJ/mol/nm).
    """
    def __init__(self, model: torch.nn.Module, atomic_numbers: Sequence[int],
                 periodic: bool = False, total_charge: Optional[float] = None):
        self.model = model
        self.device = _device(model)
        self.z = _atomic_numbers(atomic_numbers, model).to(self.device)
        self.periodic = bool(periodic)
        self.pbc = torch.ones(3, dtype=torch.bool, device=self.device)
        self.total_charge = (None if total_charge is None else torch.tensor(
            [float(total_charge)], dtype=torch.float64, device=self.device))
        self.num_calls = 0

    def __reduce__(self):
        raise TypeError('a ModelComputation (pyg_tensorpot model in an OpenMM PythonForce) '
                        'cannot be pickled; save the model with save_pretrained() and build '
                        'the force again with python_force()')

    def properties(self, positions_nm: np.ndarray,
                   box_nm: Optional[np.ndarray] = None) -> Tuple[float, np.ndarray]:
        """Energy (kJ/mol) and forces (kJ/mol/nm) at positions and box vectors in nm."""
        positions = np.asarray(positions_nm, dtype=np.float64)
        if positions.shape != (self.z.numel(), 3):
            raise ValueError(f'the model was set up for {self.z.numel()} atoms but OpenMM '
                             f'passed positions of shape {positions.shape}: give '
                             'atomic_numbers for exactly the particles of the force')
        pos = torch.from_numpy(positions * NM_TO_ANGSTROM).to(self.device)
        cell = pbc = None
        if self.periodic:
            if box_nm is None:
                raise ValueError('the force is periodic but OpenMM passed no box vectors')
            cell = torch.from_numpy(np.asarray(box_nm, dtype=np.float64) *
                                    NM_TO_ANGSTROM).to(self.device)
            pbc = self.pbc
        out = compute_properties(self.model, self.z, pos, cell=cell, pbc=pbc,
                                 total_charge=self.total_charge,
                                 properties=('energy', 'forces'), create_graph=False)
        self.num_calls += 1
        energy = float(out['energy'].sum()) * EV_TO_KJ_PER_MOL
        forces = out['forces'].detach().to('cpu', torch.float64).numpy()
        return energy, forces * EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM

    def __call__(self, state: 'openmm.State') -> Tuple[float, np.ndarray]:
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        box = None
        if self.periodic:
            box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
        return self.properties(positions, box)


def python_force(model: torch.nn.Module, atomic_numbers: Sequence[int], periodic: bool = False,
                 total_charge: Optional[float] = None) -> 'openmm.PythonForce':
    r"""An :class:`openmm.PythonForce` that applies the model to all particles of a system.

    Args:
        model (torch.nn.Module): The potential.
        atomic_numbers (Sequence[int]): Atomic number of every particle.
        periodic (bool, optional): Use the system's periodic box. (default: :obj:`False`)
        total_charge (float, optional): Total charge in e. (default: :obj:`None`)
    """
    if not hasattr(openmm, 'PythonForce'):
        raise ImportError(f'OpenMM {openmm.__version__} has no PythonForce; '
                          'pip install "openmm>=8.6"')
    force = openmm.PythonForce(ModelComputation(model, atomic_numbers, periodic, total_charge))
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setName('pyg_tensorpot')
    return force


def _box_vectors(cell: Union[Tensor, np.ndarray, Sequence]) -> Tuple['openmm.Vec3', ...]:
    cell = np.asarray(torch.as_tensor(cell, dtype=torch.float64).cpu(), dtype=np.float64)
    if cell.shape != (3, 3) or not np.isfinite(cell).all():
        raise ValueError(f'the cell must be 3 finite lattice vectors in Angstrom (rows), got '
                         f'an array of shape {cell.shape}')
    a, b, c = cell
    # OpenMM's reduced form: a along x, b in the xy plane, and each vector shortened by the
    # previous ones as far as it goes (|b_x| <= a_x / 2, |c_x| <= a_x / 2, |c_y| <= b_y / 2).
    reduced = (a[1] == 0 and a[2] == 0 and b[2] == 0 and a[0] > 0 and b[1] > 0 and c[2] > 0
               and a[0] >= 2 * abs(b[0]) and a[0] >= 2 * abs(c[0]) and b[1] >= 2 * abs(c[1]))
    if not reduced:
        raise ValueError('OpenMM needs the cell in reduced form: a lower-triangular matrix '
                         '(a along x, b in the xy plane) with positive diagonal and '
                         '|b_x|, |c_x| <= a_x / 2 and |c_y| <= b_y / 2; rotate the structure '
                         '(ase.Atoms.set_cell with a standard form, or '
                         f'ase.geometry.minkowski_reduce), got\n{cell}')
    return tuple(openmm.Vec3(*(row / NM_TO_ANGSTROM)) for row in cell)


def create_system(model: torch.nn.Module, atomic_numbers: Sequence[int],
                  cell: Optional[Union[Tensor, np.ndarray]] = None,
                  total_charge: Optional[float] = None,
                  masses: Optional[Sequence[float]] = None) -> 'openmm.System':
    r"""An OpenMM :class:`~openmm.System` of the atoms with the model as its only force.

    Args:
        model (torch.nn.Module): The potential.
        atomic_numbers (Sequence[int]): Atomic numbers :obj:`[N]`.
        cell (torch.Tensor, optional): Lattice vectors as rows in Angstrom :obj:`[3, 3]`, in
            OpenMM's reduced form; makes the system periodic in all directions.
            (default: :obj:`None`)
        total_charge (float, optional): Total charge in e. (default: :obj:`None`)
        masses (Sequence[float], optional): Masses in Dalton; OpenMM's element masses by
            default. (default: :obj:`None`)
    """
    z = _atomic_numbers(atomic_numbers, model)
    if masses is None:
        masses = [app.element.Element.getByAtomicNumber(int(n)).mass.value_in_unit(unit.dalton)
                  for n in z.tolist()]
    masses = [float(m) for m in masses]
    if len(masses) != z.numel() or not all(m >= 0 and np.isfinite(m) for m in masses):
        raise ValueError(f'masses must be {z.numel()} non-negative numbers (Dalton)')
    system = openmm.System()
    for mass in masses:
        system.addParticle(mass)
    if cell is not None:
        system.setDefaultPeriodicBoxVectors(*_box_vectors(cell))
    system.addForce(python_force(model, z, cell is not None, total_charge))
    return system


def create_topology(atomic_numbers: Sequence[int],
                    cell: Optional[Union[Tensor, np.ndarray]] = None) -> 'app.Topology':
    """An OpenMM :class:`~openmm.app.Topology` with one residue holding every atom (what
    :class:`~openmm.app.Simulation` and its reporters need)."""
    z = _atomic_numbers(atomic_numbers)
    topology = app.Topology()
    residue = topology.addResidue('MOL', topology.addChain())
    counts: Dict[str, int] = {}
    for number in z.tolist():
        element = app.element.Element.getByAtomicNumber(int(number))
        counts[element.symbol] = counts.get(element.symbol, 0) + 1
        topology.addAtom(f'{element.symbol}{counts[element.symbol]}', element, residue)
    if cell is not None:
        topology.setPeriodicBoxVectors(_box_vectors(cell))
    return topology


def create_simulation(model: torch.nn.Module, atomic_numbers: Sequence[int],
                      positions: Union[Tensor, np.ndarray], integrator: 'openmm.Integrator',
                      cell: Optional[Union[Tensor, np.ndarray]] = None,
                      platform: str = 'Reference',
                      total_charge: Optional[float] = None) -> 'app.Simulation':
    r"""An OpenMM :class:`~openmm.app.Simulation` of the atoms under the model, positions set.

    Args:
        model (torch.nn.Module): The potential.
        atomic_numbers (Sequence[int]): Atomic numbers :obj:`[N]`.
        positions (torch.Tensor): Positions in Angstrom :obj:`[N, 3]`.
        integrator (openmm.Integrator): Any OpenMM integrator.
        cell (torch.Tensor, optional): Lattice vectors as rows in Angstrom :obj:`[3, 3]`.
            (default: :obj:`None`)
        platform (str, optional): OpenMM platform; ``"Reference"`` integrates in double
            precision, ``"CPU"`` in mixed. (default: ``"Reference"``)
        total_charge (float, optional): Total charge in e. (default: :obj:`None`)
    """
    z = _atomic_numbers(atomic_numbers, model)
    pos = np.asarray(torch.as_tensor(positions, dtype=torch.float64).cpu(), dtype=np.float64)
    if pos.shape != (z.numel(), 3) or not np.isfinite(pos).all():
        raise ValueError(f'positions must be finite, shape ({z.numel()}, 3) in Angstrom, got '
                         f'{pos.shape}')
    system = create_system(model, z, cell, total_charge)
    simulation = app.Simulation(create_topology(z, cell), system, integrator,
                                openmm.Platform.getPlatformByName(platform))
    simulation.context.setPositions(pos / NM_TO_ANGSTROM)
    return simulation


class OpenMMTorchModule(torch.nn.Module):
    r"""openmm-torch's convention around a scriptable potential: positions in nm (and the box
    vectors in nm for a periodic force) in, the energy in kJ/mol out; the atomic numbers are
    stored in the module. OpenMM obtains the forces by differentiating the energy.

    Args:
        potential (torch.nn.Module): A :class:`~pyg_tensorpot.deploy.scripted.
            ScriptablePotential` (scripted or not) of the contract
            ``potential(z, pos, cell, pbc, edge_index, cell_shifts, batch) -> energy [B]``
            (Angstrom, eV).
        atomic_numbers (torch.Tensor): Atomic numbers :obj:`[N]`.
        dtype (torch.dtype, optional): Floating-point type the positions are converted to.
            (default: :obj:`torch.float32`)

    Shapes:
        - **input:** positions :math:`[N, 3]` (nm), boxvectors :math:`[3, 3]` (nm, rows).
        - **output:** energy :math:`[]` (float64, kJ/mol).
    """
    def __init__(self, potential: torch.nn.Module, atomic_numbers: Tensor,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.potential = potential
        self.register_buffer('atomic_numbers', torch.as_tensor(atomic_numbers).long().clone())
        self.register_buffer('length_scale', torch.tensor(NM_TO_ANGSTROM, dtype=dtype))
        self.energy_scale = EV_TO_KJ_PER_MOL

    def forward(self, positions: Tensor, boxvectors: Optional[Tensor] = None) -> Tensor:
        if positions.dim() != 2 or positions.size(0) != self.atomic_numbers.size(0) or \
                positions.size(1) != 3:
            raise ValueError('positions must have shape [num_atoms, 3] for the atoms this '
                             'module was exported for')
        pos = positions.to(self.length_scale.dtype) * self.length_scale
        cell: Optional[Tensor] = None
        pbc: Optional[Tensor] = None
        if boxvectors is not None:
            cell = boxvectors.to(self.length_scale.dtype) * self.length_scale
            pbc = torch.ones(3, dtype=torch.bool, device=positions.device)
        energy = self.potential(self.atomic_numbers, pos, cell, pbc, None, None, None)
        return energy.sum().to(torch.float64) * self.energy_scale


def openmm_module(model: torch.nn.Module, atomic_numbers: Sequence[int],
                  dtype: torch.dtype = torch.float32) -> torch.jit.ScriptModule:
    r"""The scripted :class:`OpenMMTorchModule` of a model for the given atoms.

    Args:
        model (torch.nn.Module): A potential of the package.
        atomic_numbers (Sequence[int]): Atomic numbers :obj:`[N]`.
        dtype (torch.dtype, optional): :obj:`torch.float32` or :obj:`torch.float64`.
            (default: :obj:`torch.float32`)
    """
    from pyg_tensorpot.deploy.scripted import script_model
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f'dtype must be torch.float32 or torch.float64, got {dtype}')
    z = _atomic_numbers(atomic_numbers, model)
    return torch.jit.script(OpenMMTorchModule(script_model(model, dtype=dtype), z, dtype))


def _metadata(model: torch.nn.Module, z: Tensor, dtype: torch.dtype,
              periodic: bool) -> Dict[str, Any]:
    from pyg_tensorpot import __version__
    config = getattr(model, 'pretrained_config', None) or {}
    return {
        'format': _FORMAT, 'format_version': FORMAT_VERSION, 'package_version': __version__,
        'model': config.get('name', type(model).__name__),
        'dtype': str(dtype).replace('torch.', ''),
        'cutoff_angstrom': float(getattr(model, 'cutoff', float('nan'))),
        'atomic_numbers': z.tolist(), 'periodic': bool(periodic),
        'units': {'positions': 'nm', 'boxvectors': 'nm', 'energy': 'kJ/mol'},
        'forward': 'forward(positions[N,3], boxvectors[3,3] optional) -> energy',
    }


def export_openmm(model: torch.nn.Module, path: str, dtype: torch.dtype = torch.float32,
                  atomic_numbers: Optional[Sequence[int]] = None,
                  periodic: bool = False) -> str:
    r"""Writes the model as a TorchScript file for :class:`openmmtorch.TorchForce`.

    The archive holds the TorchScript code, the weights and the metadata
    ``pyg_tensorpot.json`` (format, version, model, dtype, cutoff, atomic numbers, units);
    :func:`torch.jit.load` does not run pickled Python code. The file is written atomically.

    Args:
        model (torch.nn.Module): A potential of the package.
        path (str): Output file (``.pt``).
        dtype (torch.dtype, optional): :obj:`torch.float32` or :obj:`torch.float64`.
            (default: :obj:`torch.float32`)
        atomic_numbers (Sequence[int]): Atomic numbers of the system, in OpenMM's particle
            order; openmm-torch passes only positions. Required.
        periodic (bool, optional): Recorded in the metadata, so that :func:`torch_force`
            sets :meth:`TorchForce.setUsesPeriodicBoundaryConditions`. (default: :obj:`False`)

    Returns:
        str: The path written.
    """
    if atomic_numbers is None:
        raise ValueError("OpenMM's TorchForce passes only positions, so the exported file must "
                         'hold the atomic numbers of the system: give atomic_numbers (on the '
                         'command line, --atoms with a structure file)')
    z = _atomic_numbers(atomic_numbers, model)
    module = openmm_module(model, z, dtype)
    buffer = io.BytesIO()
    extra = {_METADATA: json.dumps(_metadata(model, z, dtype, periodic), indent=1)}
    torch.jit.save(module, buffer, _extra_files=extra)
    return atomic_write_bytes(buffer.getvalue(), str(path))


def read_atoms(path: str) -> Tuple[List[int], bool]:
    r"""Atomic numbers and periodicity of a structure file (any format :func:`ase.io.read`
    reads; the first frame), for :func:`export_openmm` from the command line.

    Raises:
        ValueError: The file cannot be read, or is periodic in some directions only (OpenMM
            is periodic in all three or none).
    """
    import ase.io
    try:
        atoms = ase.io.read(str(path), index=0)
    except Exception as error:  # ASE raises many types for unreadable files
        raise ValueError(f'cannot read a structure from {path}: {error}') from error
    pbc = [bool(v) for v in atoms.pbc]
    if any(pbc) and not all(pbc):
        raise ValueError(f'{path} is periodic along {pbc}: OpenMM is periodic in all three '
                         'directions or none')
    return [int(v) for v in atoms.numbers], all(pbc)


def load_openmm(path: str) -> Tuple[torch.jit.ScriptModule, Dict[str, Any]]:
    r"""Loads a file written by :func:`export_openmm`: the module and its metadata.

    Raises:
        ValueError: The file is not a TorchScript archive, is truncated, or was not written
            by :func:`export_openmm` of a compatible version.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.endswith('/' + _METADATA)]
            if not names:
                raise ValueError(f'{path} is a TorchScript archive but was not written by '
                                 'pyg_tensorpot.deploy.openmm.export_openmm (no metadata)')
            metadata = json.loads(archive.read(names[0]).decode('utf-8'))
    except (zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError,
            json.JSONDecodeError) as error:
        raise ValueError(f'{path} is not a readable OpenMM model file of pyg_tensorpot '
                         f'(corrupt or truncated?): {error}') from error
    if not isinstance(metadata, dict) or metadata.get('format') != _FORMAT:
        raise ValueError(f'{path} is not an OpenMM model file of pyg_tensorpot')
    if metadata.get('format_version') != FORMAT_VERSION:
        raise ValueError(f'{path} has format version {metadata.get("format_version")!r}; this '
                         f'pyg_tensorpot reads version {FORMAT_VERSION}: export it again')
    try:
        module = torch.jit.load(path, map_location='cpu')
    except RuntimeError as error:
        raise ValueError(f'{path} is corrupt: {error}') from error
    return module, metadata


def load_openmmtorch():
    """Imports :mod:`openmmtorch`, or raises an :class:`ImportError` saying why it cannot be
    used (see the module's docstring)."""
    try:
        import openmmtorch
    except ModuleNotFoundError as error:
        if error.name != 'openmmtorch':
            raise _unusable_openmmtorch(error) from error
        raise ImportError(
            'openmmtorch is not installed. Install an openmm-torch built for torch '
            f'{torch.__version__} (as conda-forge builds them together; the wheel of the '
            'package registry does not work with it), or use '
            'pyg_tensorpot.deploy.openmm.python_force, which needs only OpenMM') from error
    except ImportError as error:
        raise _unusable_openmmtorch(error) from error
    return openmmtorch


def _unusable_openmmtorch(error: ImportError) -> ImportError:
    return ImportError(
        f'openmmtorch cannot be imported ({error}). The openmmtorch wheel of the package '
        'registry is built against a CUDA libtorch of another version than the installed '
        f'torch {torch.__version__}; install an openmm-torch built for this torch (as '
        'conda-forge builds them together), or use '
        'pyg_tensorpot.deploy.openmm.python_force, which needs only OpenMM')


def torch_force(model_or_file: Union[torch.nn.Module, str],
                atomic_numbers: Optional[Sequence[int]] = None, periodic: bool = False,
                dtype: torch.dtype = torch.float32):
    r"""An :class:`openmmtorch.TorchForce` of a model (exported here for the atoms) or of a
    file written by :func:`export_openmm`.

    Args:
        model_or_file (torch.nn.Module or str): A potential, or the path of an exported file.
        atomic_numbers (Sequence[int], optional): Atomic numbers; required with a model.
            (default: :obj:`None`)
        periodic (bool, optional): Use the system's periodic box (a file records its own).
            (default: :obj:`False`)
        dtype (torch.dtype, optional): Precision of the model. (default: :obj:`torch.float32`)
    """
    openmmtorch = load_openmmtorch()
    if isinstance(model_or_file, torch.nn.Module):
        if atomic_numbers is None:
            raise ValueError('give the atomic_numbers of the system the force is for')
        force = openmmtorch.TorchForce(openmm_module(model_or_file, atomic_numbers, dtype))
    else:
        module, metadata = load_openmm(str(model_or_file))
        periodic = bool(metadata.get('periodic', periodic))
        force = openmmtorch.TorchForce(module)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    return force
