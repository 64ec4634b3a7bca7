r"""Writing and reading deployable potentials: TorchScript archives, :func:`torch.export`
programs, and the ``pyg-tensorpot export`` command, which also dispatches to the engine
formats (:mod:`pyg_tensorpot.deploy.metatomic`, :mod:`pyg_tensorpot.deploy.openmm`).

Every file carries our metadata, ``pyg_tensorpot.json`` (package and format version, model
name, dtype, cutoff, elements, units), and is checked before it is loaded: a file that is not
an archive, is truncated, or has another format version raises a :class:`ValueError` that says
so. Neither loader unpickles arbitrary Python objects: :func:`torch.jit.load` reads a
TorchScript archive with TorchScript's own restricted unpickler (tensors, containers and
compiled TorchScript code only; no Python code is run), and :func:`load_exported` refuses an
exported program with pickled payloads before :func:`torch.export.load` sees it.
"""
import argparse
import copy
import io
import json
import zipfile
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from pyg_tensorpot.deploy.scripted import ScriptablePotential, script_model
from pyg_tensorpot.models.base import AtomisticModel
from pyg_tensorpot.utils.files import atomic_write_bytes

#: Version of the layout of our files (the metadata and the module's signature).
FORMAT_VERSION = 1
#: Name of the metadata entry in every archive.
METADATA_NAME = 'pyg_tensorpot.json'
FORMATS = ('torchscript', 'exported', 'metatomic', 'openmm')
DTYPES = {'float32': torch.float32, 'float64': torch.float64}
UNITS = {'length': 'Angstrom', 'energy': 'eV', 'forces': 'eV/Angstrom',
         'stress': 'eV/Angstrom^3 (ASE sign convention)', 'virial': 'eV'}


def metadata(model: AtomisticModel, dtype: torch.dtype, file_format: str,
             name: Optional[str] = None) -> Dict[str, Any]:
    r"""The metadata stored with an exported :obj:`model` (a JSON-serialisable dict)."""
    from pyg_tensorpot import __version__
    elements = model.supported_elements
    return {
        'package': 'pyg_tensorpot',
        'package_version': __version__,
        'format': file_format,
        'format_version': FORMAT_VERSION,
        'model': name or type(model).__name__,
        'architecture': type(model).__name__,
        'dtype': str(dtype).replace('torch.', ''),
        'cutoff': float(model.cutoff),
        'max_z': int(model.max_z),
        'elements': None if elements is None else [int(e) for e in elements],
        'units': dict(UNITS),
    }


def _check_metadata(text: Union[str, bytes], path: str, file_format: str) -> Dict[str, Any]:
    try:
        info = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f'{path}: its {METADATA_NAME} is not valid JSON; the file is '
                         'damaged') from None
    if not isinstance(info, dict) or info.get('package') != 'pyg_tensorpot':
        raise ValueError(f'{path}: its {METADATA_NAME} does not describe a pyg_tensorpot model')
    if info.get('format_version') != FORMAT_VERSION:
        raise ValueError(f'{path} has format version {info.get("format_version")!r}, this '
                         f'pyg_tensorpot ({info.get("package_version")!r} wrote it) reads '
                         f'version {FORMAT_VERSION}; export the model again with this version')
    if info.get('format') != file_format:
        raise ValueError(f'{path} holds a {info.get("format")!r} model, not {file_format!r}')
    return info


def _open_archive(path: str) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(path)
        damaged = archive.testzip()
    except FileNotFoundError:
        raise ValueError(f'{path} does not exist') from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ValueError(f'{path} is not a complete model archive (a zip file): it is '
                         f'truncated, damaged or of another kind ({error})') from None
    if damaged is not None:
        archive.close()
        raise ValueError(f'{path} is damaged: its entry {damaged} fails its checksum')
    return archive


def _entry(archive: zipfile.ZipFile, suffix: str) -> Optional[str]:
    names = [n for n in archive.namelist() if n.endswith(suffix)]
    return names[0] if len(names) == 1 else None


def save_scripted(module: torch.jit.ScriptModule, path: str, info: Dict[str, Any]) -> str:
    r"""Writes a compiled module with its metadata :obj:`info` atomically to :obj:`path`."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer, _extra_files={METADATA_NAME: json.dumps(info, indent=1)})
    return atomic_write_bytes(buffer.getvalue(), path)


def read_scripted_metadata(path: str) -> Dict[str, Any]:
    r"""Checks that :obj:`path` is a complete TorchScript archive written by
    :func:`save_scripted` in this format version, and returns its metadata; a
    :class:`ValueError` otherwise."""
    with _open_archive(path) as archive:
        for suffix in ('data.pkl', 'constants.pkl', 'version'):
            if _entry(archive, '/' + suffix) is None:
                raise ValueError(f'{path} is a zip file but not a TorchScript archive (no '
                                 f'{suffix})')
        name = _entry(archive, '/extra/' + METADATA_NAME)
        if name is None:
            raise ValueError(f'{path} is a TorchScript archive without {METADATA_NAME}: not '
                             'written by pyg_tensorpot (export it with pyg-tensorpot export)')
        return _check_metadata(archive.read(name), path, 'torchscript')


def load_scripted(path: str, map_location: Optional[Union[str, torch.device]] = None
                  ) -> Tuple[torch.jit.ScriptModule, Dict[str, Any]]:
    r"""Loads a TorchScript potential written by :func:`export_model` (format
    :obj:`"torchscript"`) after checking the file (:func:`read_scripted_metadata`).

    :func:`torch.jit.load` runs no Python code: the archive holds TorchScript code and tensors,
    read by TorchScript's own unpickler, which builds only tensors, containers and TorchScript
    objects.

    Returns:
        (module, metadata): the :class:`~pyg_tensorpot.deploy.scripted.ScriptablePotential`
        and its metadata dict.
    """
    info = read_scripted_metadata(path)
    try:
        module = torch.jit.load(path, map_location=map_location)
    except RuntimeError as error:
        raise ValueError(f'{path} could not be read as a TorchScript potential: {error}') \
            from None
    return module, info


class ExportablePotential(torch.nn.Module):
    r"""The energy of one structure from engine-supplied pairs, the signature exported by
    :func:`export_program`: :meth:`forward` :obj:`(z [N], pos [N, 3], edge_index [2, E],
    cell_shifts [E, 3], cell [3, 3]) -> energy [1]` (float64, eV). Pairs follow
    :class:`~pyg_tensorpot.deploy.scripted.ScriptablePotential` (full list, row 0 the
    neighbour, no self edges); a molecule passes a zero cell and zero shifts."""
    def __init__(self, potential: ScriptablePotential):
        super().__init__()
        self.potential = potential

    def forward(self, z: Tensor, pos: Tensor, edge_index: Tensor, cell_shifts: Tensor,
                cell: Tensor) -> Tensor:
        return self.potential(z, pos, cell, None, edge_index, cell_shifts, None)


def _example(model: AtomisticModel, dtype: torch.dtype) -> Tuple[Tensor, ...]:
    from vesin_torch import NeighborList

    from pyg_tensorpot.structures import water_box
    z, pos, cell = water_box(8, dtype=dtype)
    i, j, shifts = NeighborList(cutoff=model.cutoff, full_list=True).compute(
        pos, cell, True, 'ijS')
    return z, pos, torch.stack([j, i]), shifts.long(), cell


def export_program(model: AtomisticModel, dtype: torch.dtype = torch.float32,
                   example: Optional[Tuple[Tensor, ...]] = None
                   ) -> torch.export.ExportedProgram:
    r""":func:`torch.export.export` of :class:`ExportablePotential` with a dynamic number of
    atoms and of edges: one program serves any structure size.

    The program computes the energy; forces and stress come from automatic differentiation
    of its module (:func:`exported_properties`). (Differentiating inside the exported graph,
    with :func:`torch.autograd.grad` or :func:`torch.func.grad`, is refused by
    :func:`torch.export` in torch 2.13.)

    Args:
        model (AtomisticModel): The potential.
        dtype (torch.dtype, optional): Network dtype. (default: :obj:`torch.float32`)
        example (tuple, optional): :obj:`(z, pos, edge_index, cell_shifts, cell)` to trace
            with, at least 2 atoms and 2 edges; a periodic box of 24 atoms of water by
            default. (default: :obj:`None`)
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f'dtype must be torch.float32 or torch.float64, got {dtype}')
    model = copy.deepcopy(model).to(dtype).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    module = ExportablePotential(ScriptablePotential(model)).eval()
    if example is None:
        example = _example(model, dtype)
    atoms = torch.export.Dim('num_atoms', min=2)
    edges = torch.export.Dim('num_edges', min=2)
    shapes = ({0: atoms}, {0: atoms}, {1: edges}, {0: edges}, None)
    return torch.export.export(module, tuple(example), dynamic_shapes=shapes)


def exported_properties(program: Union[torch.export.ExportedProgram, torch.nn.Module],
                        z: Tensor, pos: Tensor, edge_index: Tensor, cell_shifts: Tensor,
                        cell: Tensor, compute_stress: bool = True) -> Dict[str, Tensor]:
    r"""Energy, forces and (for a cell of nonzero volume) virial and stress of an exported
    program, by automatic differentiation of its module with the strain of
    :func:`~pyg_tensorpot.models.compute_properties`. Units and keys as
    :meth:`~pyg_tensorpot.deploy.scripted.ScriptablePotential.forward_with_derivatives`."""
    module = program.module() if isinstance(program, torch.export.ExportedProgram) else program
    with torch.enable_grad():
        positions = pos.detach().clone().requires_grad_(True)
        strain = torch.zeros(3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
        symmetric = 0.5 * (strain + strain.T)
        energy = module(z, positions + positions @ symmetric, edge_index, cell_shifts,
                        cell + cell @ symmetric)
        forces, de_dstrain = torch.autograd.grad(energy.sum(), [positions, strain],
                                                 allow_unused=True)
    out = {'energy': energy.detach(),
           'forces': -forces if forces is not None else torch.zeros_like(pos)}
    volume = float(torch.linalg.det(cell.detach().to(torch.float64)).abs())
    if compute_stress and volume > 0:
        de_dstrain = torch.zeros_like(strain) if de_dstrain is None else de_dstrain
        out['virial'] = -de_dstrain.unsqueeze(0)
        out['stress'] = de_dstrain.unsqueeze(0) / volume
    return out


def save_exported(program: torch.export.ExportedProgram, path: str,
                  info: Dict[str, Any]) -> str:
    r"""Writes an exported program with its metadata atomically to :obj:`path`."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={METADATA_NAME: json.dumps(info, indent=1)})
    return atomic_write_bytes(buffer.getvalue(), path)


def _check_no_pickles(archive: zipfile.ZipFile, path: str) -> None:
    # torch.export.load unpickles payloads marked use_pickle (weights_only=False) and opaque
    # constants (pickle.loads), and falls back to weights_only=False for sample inputs: refuse
    # the first two, and accept the sample inputs only if the restricted unpickler can read
    # them (then the fallback is never reached).
    for name in archive.namelist():
        if name.endswith('_config.json') and '/data/' in name:
            try:
                config = json.loads(archive.read(name)).get('config', {})
            except (ValueError, AttributeError):
                raise ValueError(f'{path}: {name} is not valid JSON; the file is damaged') \
                    from None
            for key, payload in config.items():
                if not isinstance(payload, dict) or payload.get('use_pickle', True) or not \
                        str(payload.get('path_name', '')).startswith(('weight_', 'tensor_')):
                    raise ValueError(f'{path}: entry {key} is stored as a Python pickle, which '
                                     'pyg_tensorpot refuses to load (export the model again '
                                     'with pyg-tensorpot export)')
        elif '/data/sample_inputs/' in name:
            try:
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception:
                raise ValueError(f'{path}: {name} holds Python objects other than tensors; '
                                 'refusing to load it') from None


def load_exported(path: str) -> Tuple[torch.export.ExportedProgram, Dict[str, Any]]:
    r"""Loads a program written by :func:`export_model` (format :obj:`"exported"`) after
    checking it: a complete archive, our metadata in this format version, and no pickled
    payloads (:func:`torch.export.load` would unpickle those without restriction).

    Returns:
        (program, metadata).
    """
    with _open_archive(path) as archive:
        name = _entry(archive, '/extra/' + METADATA_NAME)
        if name is None:
            raise ValueError(f'{path} has no {METADATA_NAME}: not an exported pyg_tensorpot '
                             'program')
        info = _check_metadata(archive.read(name), path, 'exported')
        _check_no_pickles(archive, path)
    try:
        program = torch.export.load(path)
    except Exception as error:
        raise ValueError(f'{path} could not be read as an exported program: {error}') \
            from None
    return program, info


def _resolve(model_or_name: Union[str, torch.nn.Module]) -> Tuple[AtomisticModel, str]:
    if isinstance(model_or_name, str):
        from pyg_tensorpot.hub import from_pretrained
        return from_pretrained(model_or_name), model_or_name
    if not isinstance(model_or_name, AtomisticModel):
        raise TypeError(f'export needs an AtomisticModel or the name of a pretrained model, '
                        f'got {type(model_or_name).__name__}')
    return model_or_name, type(model_or_name).__name__


def export_model(model_or_name: Union[str, torch.nn.Module], file_format: str, path: str,
                 dtype: torch.dtype = torch.float32,
                 atomic_numbers: Optional[Sequence[int]] = None, periodic: bool = False) -> str:
    r"""Writes :obj:`model_or_name` (a model, a registered pretrained name or a
    :func:`~pyg_tensorpot.save_pretrained` folder) to :obj:`path` for an MD engine.

    Args:
        model_or_name (str or AtomisticModel): The potential.
        file_format (str): :obj:`"torchscript"` (:func:`load_scripted`), :obj:`"exported"`
            (:func:`load_exported`), :obj:`"metatomic"` or :obj:`"openmm"`.
        path (str): Output file, written atomically.
        dtype (torch.dtype, optional): Network dtype. (default: :obj:`torch.float32`)
        atomic_numbers (Sequence[int], optional): For :obj:`"openmm"` only (required there):
            the atomic numbers of the simulated system in OpenMM's particle order, since
            openmm-torch passes positions only. (default: :obj:`None`)
        periodic (bool, optional): For :obj:`"openmm"`: the system is periodic.
            (default: :obj:`False`)

    Returns:
        str: :obj:`path`.
    """
    if file_format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got '{file_format}'")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f'dtype must be torch.float32 or torch.float64, got {dtype}')
    model, name = _resolve(model_or_name)
    if file_format == 'torchscript':
        return save_scripted(script_model(model, dtype), path,
                             metadata(model, dtype, file_format, name))
    if file_format == 'exported':
        return save_exported(export_program(model, dtype), path,
                             metadata(model, dtype, file_format, name))
    # Engine formats live in their own modules, imported only when asked for.
    if file_format == 'metatomic':
        from pyg_tensorpot.deploy.metatomic import export_metatomic
        export_metatomic(model, path, dtype)
    else:
        from pyg_tensorpot.deploy.openmm import export_openmm
        export_openmm(model, path, dtype, atomic_numbers=atomic_numbers, periodic=periodic)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    r"""Adds the arguments of ``pyg-tensorpot export`` to :obj:`parser`."""
    parser.add_argument('model', metavar='MODEL_OR_NAME',
                        help='a registered pretrained model (e.g. tensornet-ani1x) or a '
                        'save_pretrained folder')
    parser.add_argument('--format', required=True, choices=FORMATS, dest='file_format',
                        help='torchscript (torch.jit.load), exported (torch.export.load), '
                        'metatomic or openmm')
    parser.add_argument('-o', '--output', required=True, metavar='FILE', help='output file')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='float32',
                        help='network dtype (energies are float64 either way)')
    parser.add_argument('--atoms', default=None, metavar='STRUCTURE_FILE',
                        help='the system OpenMM will simulate, in its particle order (any file '
                        'ase.io.read reads); required for --format openmm')
    return parser


def run(args: argparse.Namespace) -> int:
    r"""Runs ``pyg-tensorpot export``; returns the exit status (0 on success, 1 with a message
    on standard error)."""
    import sys
    try:
        atomic_numbers, periodic = None, False
        if args.atoms is not None:
            if args.file_format != 'openmm':
                raise ValueError('--atoms is only for --format openmm (the other formats take '
                                 'the atoms from the engine at run time)')
            from pyg_tensorpot.deploy.openmm import read_atoms
            atomic_numbers, periodic = read_atoms(args.atoms)
        path = export_model(args.model, args.file_format, args.output, DTYPES[args.dtype],
                            atomic_numbers=atomic_numbers, periodic=periodic)
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as error:
        print(f'pyg-tensorpot export: {error}', file=sys.stderr)
        return 1
    print(f'wrote {args.file_format} model to {path}')
    return 0
