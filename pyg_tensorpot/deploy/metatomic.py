r"""Export to `metatomic <https://docs.metatensor.org/metatomic>`_ atomistic models, which
ASE (:class:`metatomic_ase.MetatomicCalculator`), LAMMPS (``pair_style metatomic``), i-PI and
other engines run.

The exported file is a TorchScript archive written by metatomic's own
:meth:`metatomic.torch.AtomisticModel.save`. The engine supplies a full neighbour list with
the model's cutoff (pairs :math:`i \to j` with integer image shifts :math:`\mathbf{S}`, vector
:math:`\mathbf{r}_j - \mathbf{r}_i + \mathbf{S}\,\mathbf{h}`) and obtains forces and stress by
differentiating the energy with respect to the positions and a strain of positions and cell
(the model recomputes every pair vector from positions, cell and shifts, so that both
derivatives flow through the engine's own tensors).

Units: lengths in Angstrom (``length_unit="angstrom"``), the energy in eV (``unit="eV"``);
metatomic converts to the engine's units.

metatomic is an optional dependency (``pip install 'pyg-tensorpot[deploy]'``,
``metatomic-torch`` and ``metatomic-ase``); importing this module needs it.
"""
import contextlib
import copy
import importlib
import json
import os
import os.path as osp
import re
import sys
import tempfile
import zipfile
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor


@contextlib.contextmanager
def torchscript_index_select() -> Iterator[None]:
    r"""Restores PyTorch's own :func:`torch.index_select` for the duration of the block.

    :mod:`torch_geometric` (imported by this package) replaces :func:`torch.index_select` by a
    Python wrapper (for its :class:`HashTensor`) that TorchScript cannot compile, so that
    scripting any code calling :func:`torch.index_select` (metatensor's operations, compiled
    when :mod:`metatensor.torch` is imported, and metatomic's export) fails after
    :mod:`torch_geometric` is imported. The wrapper is put back when the block ends.
    """
    hash_tensor = sys.modules.get('torch_geometric.hash_tensor')
    original = getattr(hash_tensor, '_old_index_select', None)
    patched = torch.index_select
    if original is None or patched is original:
        yield
        return
    torch.index_select = original
    try:
        yield
    finally:
        torch.index_select = patched


try:
    with torchscript_index_select():
        from metatensor.torch import Labels, TensorBlock, TensorMap
        import metatomic.torch as mta
        from metatomic.torch import ModelOutput, NeighborListOptions, System
except ImportError as error:  # pragma: no cover - exercised only without metatomic
    raise ImportError(
        'pyg_tensorpot.deploy.metatomic needs metatomic-torch, which is not installed: '
        "pip install 'pyg-tensorpot[deploy]' (or pip install metatomic-torch "
        'metatomic-ase)') from error

from pyg_tensorpot.utils.files import atomic_write_bytes
from pyg_tensorpot.utils.devices import load_model

__all__ = ['MetatomicPotential', 'metatomic_model', 'export_metatomic', 'load_metatomic',
           'torchscript_index_select', 'FORMAT_VERSION']

#: Version of the metadata this module writes into :obj:`ModelMetadata.extra`.
FORMAT_VERSION = 1
_EXTRA_KEY = 'pyg_tensorpot'
# TorchScript extensions an exported file may list, and the installed Python module that
# loads each (metatensor's and metatomic's own are loaded by importing metatomic.torch). Any
# other would be a shared library named by the file, which the loader refuses to open unless
# told to.
_KNOWN_EXTENSIONS = {'metatensor_torch': 'metatensor.torch', 'metatomic_torch': 'metatomic.torch',
                     'vesin_torch': 'vesin.torch'}

_REFERENCES = {
    'TensorNet': [
        'G. Simeon and G. De Fabritiis, "TensorNet: Cartesian Tensor Representations for '
        'Efficient Learning of Molecular Potentials", NeurIPS 36 (2023), arXiv:2306.06482',
    ],
    'HIP-NN': [
        'N. Lubbers, J. S. Smith and K. Barros, "Hierarchical modeling of molecular energies '
        'using a deep neural network", J. Chem. Phys. 148, 241715 (2018), '
        'doi:10.1063/1.5011181',
    ],
    'HIP-NN-TS': [
        'N. Lubbers, J. S. Smith and K. Barros, "Hierarchical modeling of molecular energies '
        'using a deep neural network", J. Chem. Phys. 148, 241715 (2018), '
        'doi:10.1063/1.5011181',
        'M. Chigaev, J. S. Smith, S. Anaya, B. Nebgen, M. Bettencourt, K. Barros and '
        'N. Lubbers, "Lightweight and effective tensor sensitivity for atomistic neural '
        'networks", J. Chem. Phys. 158, 184108 (2023), doi:10.1063/5.0142127',
    ],
}
_IMPLEMENTATION = ['pyg-tensorpot: TensorNet and HIP-NN(-TS) interatomic potentials as '
                   'PyTorch Geometric layers']


class MetatomicPotential(torch.nn.Module):
    r"""The metatomic interface around a scriptable potential: ``forward(systems, outputs,
    selected_atoms)`` returns the ``"energy"`` output as a :class:`TensorMap`, per structure or
    per atom.

    The potential is called once per system with the engine's pairs (``edge_index`` row 0 the
    neighbour :math:`j`, row 1 the receiver :math:`i`, integer ``cell_shifts``); it must have
    the signature of :class:`pyg_tensorpot.deploy.scripted.ScriptablePotential` and return the
    float64 energy. Per-atom energies (asked for with ``sample_kind="atom"``, or needed when
    the engine selects atoms, as LAMMPS does with its ghost atoms) come from the potential's
    ``atomic_energies`` method, with the same arguments, if it has one.

    Args:
        potential (torch.nn.Module): The scriptable potential.
        cutoff (float): Cutoff of the requested neighbour list in Angstrom.
        float32 (bool, optional): Run the potential in float32 (positions and cell are
            converted; the interface stays float64). (default: :obj:`False`)
    """
    def __init__(self, potential: torch.nn.Module, cutoff: float, float32: bool = False):
        super().__init__()
        self.potential = potential
        self.cutoff = float(cutoff)
        self.float32 = bool(float32)
        # A full list (i -> j and j -> i); strict: no pair beyond the cutoff, so that the
        # potential sees exactly the pairs its own neighbour search would find.
        self._neighbors = NeighborListOptions(cutoff=self.cutoff, full_list=True, strict=True)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        """The one neighbour list the model needs: full, strict, with the model's cutoff."""
        return [self._neighbors]

    def _inputs(self, system: System):
        pos = system.positions
        cell: Optional[Tensor] = None
        pbc: Optional[Tensor] = None
        cell_shifts: Optional[Tensor] = None
        neighbors = system.get_neighbor_list(self._neighbors)
        pairs = neighbors.samples.values.to(torch.long)
        # metatomic's pair (first i, second j, shift S) has the vector r_j - r_i + S h, our
        # edge (j -> i) the neighbour image r_j + S h: edge_index = [second, first].
        edge_index = torch.stack([pairs[:, 1], pairs[:, 0]])
        if bool(system.pbc.any()):
            cell = system.cell
            pbc = system.pbc
            cell_shifts = pairs[:, 2:5]
        if self.float32:
            pos = pos.to(torch.float32)
            if cell is not None:
                cell = cell.to(torch.float32)
            if cell_shifts is not None:
                cell_shifts = cell_shifts.to(torch.float32)
        elif cell_shifts is not None:
            cell_shifts = cell_shifts.to(pos.dtype)
        return pos, cell, pbc, edge_index, cell_shifts

    def _atomic_energies(self, z: Tensor, pos: Tensor, cell: Optional[Tensor],
                         pbc: Optional[Tensor], edge_index: Tensor,
                         cell_shifts: Optional[Tensor]) -> Tensor:
        if hasattr(self.potential, 'atomic_energies'):
            return self.potential.atomic_energies(z, pos, cell, pbc, edge_index, cell_shifts,
                                                  None)
        raise ValueError('this exported potential cannot compute per-atom energies (its '
                         'potential has no atomic_energies method), so it cannot be run with '
                         'selected atoms (e.g. LAMMPS with ghost atoms) or per-atom energies')

    def forward(self, systems: List[System], outputs: Dict[str, ModelOutput],
                selected_atoms: Optional[Labels]) -> Dict[str, TensorMap]:
        results: Dict[str, TensorMap] = {}
        if 'energy' not in outputs:
            return results
        per_atom = outputs['energy'].sample_kind == 'atom'
        device = systems[0].positions.device if len(systems) > 0 else torch.device('cpu')
        values: List[Tensor] = []
        samples: List[Tensor] = []
        for s, system in enumerate(systems):
            z = system.types.to(torch.long)
            pos, cell, pbc, edge_index, cell_shifts = self._inputs(system)
            if per_atom or selected_atoms is not None:
                atomic = self._atomic_energies(z, pos, cell, pbc, edge_index, cell_shifts)
                atoms = torch.arange(z.size(0), device=device)
                if selected_atoms is not None:
                    chosen = selected_atoms.values
                    atoms = chosen[chosen[:, 0] == s][:, 1].to(torch.long)
                    atomic = atomic[atoms]
                if per_atom:
                    values.append(atomic.reshape(-1, 1))
                    samples.append(torch.stack([torch.full_like(atoms, s), atoms], dim=1))
                else:
                    values.append(atomic.sum().reshape(1, 1))
                    samples.append(torch.tensor([[s]], device=device))
            else:
                energy = self.potential(z, pos, cell, pbc, edge_index, cell_shifts, None)
                values.append(energy.reshape(1, 1))
                samples.append(torch.tensor([[s]], device=device))
        names = ['system', 'atom'] if per_atom else ['system']
        if len(values) > 0:
            block_values = torch.cat(values).to(torch.float64)
            block_samples = torch.cat(samples).to(torch.int32)
        else:
            block_values = torch.zeros((0, 1), dtype=torch.float64, device=device)
            block_samples = torch.zeros((0, len(names)), dtype=torch.int32, device=device)
        block = TensorBlock(
            values=block_values,
            samples=Labels(names, block_samples),
            components=torch.jit.annotate(List[Labels], []),
            properties=Labels(['energy'], torch.zeros((1, 1), dtype=torch.int32,
                                                      device=device)),
        )
        results['energy'] = TensorMap(
            keys=Labels(['_'], torch.zeros((1, 1), dtype=torch.int32, device=device)),
            blocks=[block])
        return results


def _architecture(model: torch.nn.Module) -> str:
    from pyg_tensorpot.hub import architecture_name
    try:
        return architecture_name(model)
    except (AttributeError, TypeError, ValueError):
        return type(model).__name__


def _scriptable(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    from pyg_tensorpot.deploy.scripted import ScriptablePotential
    # A copy: the caller's model keeps its dtype, mode and gradient flags.
    model = copy.deepcopy(model).to(dtype).eval()
    return ScriptablePotential(model).eval()


def metatomic_model(
    model: torch.nn.Module,
    dtype: torch.dtype = torch.float64,
    name: Optional[str] = None,
    potential: Optional[torch.nn.Module] = None,
) -> 'mta.AtomisticModel':
    r"""Wraps a model of the package as a :class:`metatomic.torch.AtomisticModel` (not yet
    saved), declaring its capabilities and metadata.

    Capabilities: the ``"energy"`` output in eV (per structure, and per atom when the
    potential provides per-atom energies), lengths in Angstrom, the model's supported elements
    as atomic types, the cutoff as interaction range, devices ``cuda`` and ``cpu``. The
    interface dtype is float64 whatever :obj:`dtype`: a total energy of tens of thousands of
    eV (the atom reference energies) would be rounded to about 4 meV in float32, and the
    package's models sum their energies in float64 in any case; :obj:`dtype` is the type the
    network runs in.

    Args:
        model (torch.nn.Module): A model of the package (an
            :class:`~pyg_tensorpot.models.base.AtomisticModel`).
        dtype (torch.dtype, optional): :obj:`torch.float64` or :obj:`torch.float32`, the type
            of the network. (default: :obj:`torch.float64`)
        name (str, optional): Name in the metadata; defaults to the pretrained name or the
            architecture. (default: :obj:`None`)
        potential (torch.nn.Module, optional): The scriptable potential to wrap instead of
            :class:`~pyg_tensorpot.deploy.scripted.ScriptablePotential` of :obj:`model` (which
            then only supplies cutoff, elements and metadata). (default: :obj:`None`)
    """
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f'dtype must be torch.float32 or torch.float64, got {dtype!r}')
    cutoff = getattr(model, 'cutoff', None)
    if not isinstance(cutoff, (int, float)) or not cutoff > 0:
        raise ValueError(f'the model has no positive cutoff (got {cutoff!r}); metatomic needs '
                         'the interaction range in Angstrom')
    elements = getattr(model, 'supported_elements', None)
    if elements is None:
        elements = list(range(1, int(getattr(model, 'max_z', 119))))
    elements = sorted(int(v) for v in elements)
    if potential is None:
        potential = _scriptable(model, dtype)
    wrapper = MetatomicPotential(potential, float(cutoff), float32=dtype == torch.float32)
    wrapper = wrapper.eval()

    architecture = _architecture(model)
    config = getattr(model, 'pretrained_config', None) or {}
    if name is None:
        name = str(config.get('name') or architecture)
    from pyg_tensorpot import __version__
    extra = {
        'format': 'pyg-tensorpot-metatomic',
        'format_version': FORMAT_VERSION,
        'library_version': __version__,
        'architecture': architecture,
        'network_dtype': str(dtype).replace('torch.', ''),
        'cutoff': float(cutoff),
        'supported_elements': elements,
        'units': {'positions': 'angstrom', 'energy': 'eV', 'forces': 'eV/angstrom',
                  'stress': 'eV/angstrom^3'},
    }
    description = str(config.get('description') or
                      f'{architecture} potential exported by pyg-tensorpot')
    metadata = mta.ModelMetadata(
        name=name,
        description=description,
        authors=['pyg-tensorpot contributors'],
        references={'implementation': _IMPLEMENTATION,
                    'architecture': _REFERENCES.get(architecture, [])},
        extra={_EXTRA_KEY: json.dumps(extra, sort_keys=True)},
    )
    per_atom = hasattr(potential, 'atomic_energies')
    capabilities = mta.ModelCapabilities(
        outputs={'energy': ModelOutput(unit='eV', sample_kind='atom' if per_atom else 'system',
                                       explicit_gradients=[])},
        atomic_types=elements,
        interaction_range=float(cutoff),
        length_unit='angstrom',
        supported_devices=['cuda', 'cpu'],
        dtype='float64',
    )
    return mta.AtomisticModel(wrapper, metadata, capabilities)


def export_metatomic(model: Union[str, torch.nn.Module], path: str,
                     dtype: torch.dtype = torch.float64, name: Optional[str] = None) -> str:
    r"""Exports a model as a metatomic atomistic model file (``.pt``) that
    :func:`metatomic.torch.load_atomistic_model`, ASE's
    :class:`metatomic_ase.MetatomicCalculator`, LAMMPS' ``pair_style metatomic`` and i-PI load.

    The file is written atomically with metatomic's own
    :meth:`~metatomic.torch.AtomisticModel.save` (a TorchScript archive: no Python objects
    are pickled).

    Args:
        model (str or torch.nn.Module): A model, or a registered name / Hub id / folder for
            :func:`~pyg_tensorpot.hub.from_pretrained`.
        path (str): The file to write.
        dtype (torch.dtype, optional): Type of the network, :obj:`torch.float64` or
            :obj:`torch.float32` (the interface is float64; see :func:`metatomic_model`).
            (default: :obj:`torch.float64`)
        name (str, optional): Name in the metadata. (default: :obj:`None`)

    Returns:
        str: :obj:`path`.
    """
    model, _ = load_model(model)
    exported = metatomic_model(model, dtype=dtype, name=name)
    path = os.fspath(path)
    # metatomic's save takes a file name; write it beside nothing, then publish atomically.
    with tempfile.TemporaryDirectory() as folder:
        scratch = osp.join(folder, 'model.pt')
        with torchscript_index_select():
            exported.save(scratch)
        with open(scratch, 'rb') as f:
            data = f.read()
    return atomic_write_bytes(data, path)


def _read_extra(path: str, archive: zipfile.ZipFile, entry: str) -> Optional[str]:
    for member in archive.namelist():
        if member.endswith('/extra/' + entry):
            return archive.read(member).decode('utf-8', errors='replace')
    return None


def _version_tuple(text: str) -> Optional[Tuple[int, ...]]:
    match = re.match(r'\s*(\d+)\.(\d+)', text)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def _check_versions(path: str, metatomic_version: str, torch_version: Optional[str]) -> None:
    # metatomic itself only warns here; a model of another metatomic series may not run
    # (before 1.0 every minor release may change the format), so it is refused.
    ours, theirs = _version_tuple(mta.__version__), _version_tuple(metatomic_version)
    if theirs is None:
        raise ValueError(f'{path!r} has an unreadable metatomic version '
                         f'{metatomic_version[:40]!r}; it may be corrupt, export it again')
    if ours is not None and (theirs[0] != ours[0] or (ours[0] == 0 and theirs != ours)):
        raise ValueError(f'{path!r} was exported with metatomic-torch {metatomic_version}, '
                         f'which this metatomic-torch {mta.__version__} cannot load '
                         f'reliably; export the model again here (or install metatomic-torch '
                         f'{theirs[0]}.{theirs[1]})')
    if torch_version is not None:
        file_torch, here = _version_tuple(torch_version), _version_tuple(torch.__version__)
        if file_torch is None:
            raise ValueError(f'{path!r} has an unreadable torch version; it may be corrupt')
        if here is not None and file_torch > here:
            raise ValueError(f'{path!r} was exported with torch {torch_version}, newer than '
                             f'this torch {torch.__version__}; upgrade torch or export the '
                             'model again here')


def _check_file(path: str, allow_extensions: bool) -> List[str]:
    if not osp.isfile(path):
        raise FileNotFoundError(f'no exported metatomic model at {path!r}')
    if not zipfile.is_zipfile(path):
        raise ValueError(f'{path!r} is not an exported metatomic model: it is not a '
                         'TorchScript (zip) archive; it may be truncated or corrupt, '
                         'export it again with export_metatomic')
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise ValueError(f'{path!r} is corrupt (entry {bad!r} fails its checksum); '
                                 'export the model again')
            version = _read_extra(path, archive, 'metatomic-version')
            torch_version = _read_extra(path, archive, 'torch-version')
            extensions = _read_extra(path, archive, 'extensions')
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as error:
        raise ValueError(f'{path!r} is not a readable metatomic model ({error}); it may be '
                         'truncated or corrupt, export it again') from error
    if version is None:
        raise ValueError(f'{path!r} is a TorchScript archive but not a metatomic model (it '
                         'has no metatomic-version entry); export it with export_metatomic')
    _check_versions(path, version, torch_version)
    try:
        listed = [str(entry.get('name', '')) for entry in json.loads(extensions or '[]')]
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f'{path!r} has an unreadable list of extensions; it may be '
                         'corrupt, export it again') from None
    if not allow_extensions:
        foreign = [name for name in listed if name not in _KNOWN_EXTENSIONS]
        if foreign:
            raise ValueError(f'{path!r} asks to load the TorchScript extension(s) {foreign}, '
                             'shared libraries that would run code on loading; this model was '
                             'not exported by pyg-tensorpot. Pass allow_extensions=True only '
                             'if you trust the file')
    return listed


def load_metatomic(path: str, allow_extensions: bool = False,
                   extensions_directory: Optional[str] = None) -> 'mta.AtomisticModel':
    r"""Loads an exported metatomic model after checking it.

    The file must be a complete TorchScript zip archive (checksums verified) written by
    metatomic; metatomic's own :func:`~metatomic.torch.check_atomistic_model` then checks that
    its torch and metatomic versions can be loaded here. Loading a TorchScript archive
    rebuilds TorchScript code and tensors only; it never unpickles arbitrary Python objects.
    Files that ask for extra TorchScript extensions (shared libraries) are refused unless
    :obj:`allow_extensions`.

    Args:
        path (str): The file written by :func:`export_metatomic`.
        allow_extensions (bool, optional): Load extensions other than metatomic's own that the
            file lists. (default: :obj:`False`)
        extensions_directory (str, optional): Where those extensions are. (default:
            :obj:`None`)

    Raises:
        ValueError: The file is corrupt, truncated, not a metatomic model, of an
            incompatible version, or written by a newer pyg-tensorpot.
    """
    path = os.fspath(path)
    extensions = _check_file(path, allow_extensions)
    try:
        if allow_extensions:
            mta.load_model_extensions(path, extensions_directory)
        else:
            for name in extensions:
                # The installed package loads its own library; the file's path is not used.
                try:
                    importlib.import_module(_KNOWN_EXTENSIONS[name])
                except ImportError as error:
                    raise ValueError(f'{path!r} needs the TorchScript extension {name}: '
                                     f'install the package providing '
                                     f'{_KNOWN_EXTENSIONS[name]}') from error
        mta.check_atomistic_model(path)
    except RuntimeError as error:
        raise ValueError(f'{path!r} cannot be loaded by this metatomic-torch '
                         f'{mta.__version__} / torch {torch.__version__}: {error}') from error
    try:
        loaded = torch.jit.load(path, map_location='cpu')
    except RuntimeError as error:
        raise ValueError(f'{path!r} is not a loadable metatomic model ({error}); it may be '
                         'corrupt, export it again') from error
    for method in ('capabilities', 'metadata', 'requested_neighbor_lists'):
        if not hasattr(loaded, method):
            raise ValueError(f'{path!r} is a TorchScript module but not a metatomic atomistic '
                             f'model (it has no {method}() method)')
    metadata = loaded.metadata()
    raw = metadata.extra.get(_EXTRA_KEY)
    if raw is not None:
        try:
            ours = json.loads(raw)
            version = int(ours.get('format_version', 0))
        except (ValueError, TypeError, AttributeError):
            raise ValueError(f'{path!r} has unreadable pyg-tensorpot metadata; export the '
                             'model again') from None
        if version > FORMAT_VERSION:
            raise ValueError(f'{path!r} was exported with format version {version} by a newer '
                             f'pyg-tensorpot; this one reads up to {FORMAT_VERSION}: upgrade '
                             'pyg-tensorpot')
    return mta.AtomisticModel(loaded, metadata, loaded.capabilities())
