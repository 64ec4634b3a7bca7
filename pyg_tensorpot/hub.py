r"""Saving, loading and sharing pretrained potentials (Hugging Face Hub).

Length: over 500 lines because every field of ``config.json`` is validated here, next to the
loader that trusts it; the split into a ``hub/`` package (registry, files, card, remote) is
open as issue 15.

A saved model is a folder with three files:

* ``model.safetensors``: every parameter and buffer (reference energies, standardisation)
  as `safetensors <https://huggingface.co/docs/safetensors>`_ -- never pickle;
* ``config.json``: the model class and its constructor arguments (enough to rebuild it),
  units, cutoff, supported elements, reference energies, training data, training settings and
  metrics;
* ``README.md``: a model card generated from ``config.json`` (with a Hub YAML header).

:func:`from_pretrained` resolves, in this order, an explicit local folder, the copy shipped
inside the package for a registered short name (``"tensornet-ani1x"``, ``"hipnn-ts-ani1x"``;
skipped when a ``revision`` is asked for), and a Hugging Face Hub repository (the Hub cache and
``HF_HUB_OFFLINE`` are honoured). :func:`push_to_hub` uploads a saved folder with
:class:`huggingface_hub.HfApi`.

``config.json`` is read strictly: an unknown top-level key is an error naming it and the valid
keys (:data:`CONFIG_KEYS`), not a silently ignored one. Forward compatibility goes through
``format_version``: a writer that adds keys raises it, and a reader refuses a version newer
than its own with "upgrade pyg-tensorpot". Documentation keys (``name``, ``metrics``, ...)
may be missing; ``model_class`` and ``model_kwargs`` may not. Files are written atomically
(a temporary file renamed over the old one), so a process loading a folder or Hub cache that
another process is rewriting gets the old or the new model, never a mixture.

.. code-block:: python

    from pyg_tensorpot.hub import from_pretrained

    model = from_pretrained('tensornet-ani1x')        # works offline: shipped with the package
    energy, forces = model.energy_and_forces(z, pos)  # eV and eV/Angstrom
"""
import contextlib
import hashlib
import inspect
import json
import math
import os
import os.path as osp
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Type, Union

import torch

from pyg_tensorpot.models import HIPNN, AtomisticModel, TensorNet
from pyg_tensorpot.utils.files import atomic_write_bytes, atomic_write_text

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
MODEL_CARD_NAME = 'README.md'
FORMAT_NAME = 'pyg-tensorpot'
FORMAT_VERSION = 1
#: Folder of the weights shipped with the package (``pyg_tensorpot/pretrained/<name>/``).
PACKAGE_PRETRAINED_DIR = osp.join(osp.dirname(osp.abspath(__file__)), 'pretrained')

#: Model classes :func:`from_pretrained` can rebuild, by the name stored in ``config.json``.
MODEL_CLASSES: Dict[str, Type[AtomisticModel]] = {'TensorNet': TensorNet, 'HIPNN': HIPNN}

_DTYPES = {'float32': torch.float32, 'float64': torch.float64}


class PretrainedModelError(RuntimeError):
    """A saved model (folder, Hub repository or registered name) is missing, incomplete or
    corrupt; the message names the file."""


@dataclass(frozen=True)
class PretrainedEntry:
    """A registered pretrained model.

    Args:
        name (str): The short name, e.g. ``"tensornet-ani1x"``.
        repo_id (str): Its Hugging Face Hub repository.
        description (str): One line for :func:`list_pretrained`.
    """
    name: str
    repo_id: str
    description: str

    @property
    def package_dir(self) -> str:
        """The copy shipped inside the package."""
        return osp.join(PACKAGE_PRETRAINED_DIR, self.name)


#: Short names of the pretrained models, mapped to Hub repositories.
PRETRAINED_MODELS: Dict[str, PretrainedEntry] = {
    'tensornet-ani1x': PretrainedEntry(
        'tensornet-ani1x', 'pyg-tensorpot/tensornet-ani1x',
        'TensorNet distilled from the ANI-1x 8-model ensemble; H, C, N, O; eV, Angstrom'),
    'hipnn-ts-ani1x': PretrainedEntry(
        'hipnn-ts-ani1x', 'pyg-tensorpot/hipnn-ts-ani1x',
        'HIP-NN-TS (l=2) distilled from the ANI-1x 8-model ensemble; H, C, N, O; eV, Angstrom'),
}


def list_pretrained() -> Dict[str, str]:
    """The registered pretrained models: ``{short name: description}``."""
    return {name: entry.description for name, entry in PRETRAINED_MODELS.items()}


def register_model_class(cls: Type[AtomisticModel]) -> Type[AtomisticModel]:
    """Makes a custom :class:`~pyg_tensorpot.models.AtomisticModel` subclass loadable by
    :func:`from_pretrained` (usable as a class decorator). Its constructor arguments must be
    stored as attributes of the same names, with JSON-serialisable values."""
    if not (isinstance(cls, type) and issubclass(cls, AtomisticModel)):
        raise TypeError(f'{cls!r} is not a subclass of AtomisticModel')
    MODEL_CLASSES[cls.__name__] = cls
    return cls


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
def architecture_name(model: AtomisticModel) -> str:
    """``"TensorNet"``, ``"HIP-NN"`` (:obj:`max_order=0`), ``"HIP-NN-TS"`` or the class name."""
    if isinstance(model, HIPNN):
        return 'HIP-NN' if int(model.max_order) == 0 else 'HIP-NN-TS'
    return type(model).__name__


def model_kwargs(model: AtomisticModel) -> Dict[str, Any]:
    """The constructor arguments that rebuild :obj:`model` (read back from its attributes).

    Raises:
        ValueError: If an argument is not stored on the model or is not JSON-serialisable
            (e.g. an activation passed as a module instead of its name).
    """
    cls = type(model)
    if MODEL_CLASSES.get(cls.__name__) is not cls:
        raise ValueError(f'{cls.__name__} is not a registered model class; known: '
                         f'{sorted(MODEL_CLASSES)} (see register_model_class)')
    kwargs = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == 'self' or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if not hasattr(model, name):
            raise ValueError(f"{cls.__name__} does not store its constructor argument '{name}'"
                             f", so it cannot be saved and rebuilt")
        value = getattr(model, name)
        if isinstance(value, tuple):
            value = list(value)
        try:
            json.dumps(value)
        except TypeError:
            raise ValueError(f"{cls.__name__} argument {name}={value!r} cannot be written to "
                             f"{CONFIG_NAME}; pass it by name (e.g. activation='silu')") from None
        kwargs[name] = value
    return kwargs


def _reference_energies(model: AtomisticModel) -> Dict[str, float]:
    atomref = model.atomref.detach().double().cpu()
    return {str(z): float(atomref[z]) for z in range(atomref.numel()) if atomref[z] != 0}


def _model_dtype(model: AtomisticModel) -> torch.dtype:
    # the network's type: the reference energies may be kept in float64 in any model
    return model.std.dtype


def build_config(
    model: AtomisticModel,
    name: Optional[str] = None,
    training_data: Optional[Mapping[str, Any]] = None,
    metrics: Optional[Mapping[str, Any]] = None,
    training: Optional[Mapping[str, Any]] = None,
    units: Optional[Mapping[str, str]] = None,
    description: str = '',
    supported_elements: Optional[List[int]] = None,
) -> Dict[str, Any]:
    """The ``config.json`` content of :obj:`model`; see :func:`save_pretrained`."""
    from pyg_tensorpot import __version__
    dtype = _model_dtype(model)
    if dtype not in _DTYPES.values():
        raise ValueError(f'only float32 and float64 models can be saved, got {dtype}')
    elements = supported_elements
    if elements is None:
        elements = model.supported_elements
    return {
        'format': FORMAT_NAME,
        'format_version': FORMAT_VERSION,
        'name': name,
        'description': description,
        'model_class': type(model).__name__,
        'architecture': architecture_name(model),
        'model_kwargs': model_kwargs(model),
        'dtype': str(dtype).replace('torch.', ''),
        'num_parameters': int(sum(p.numel() for p in model.parameters())),
        'units': dict(units or {'positions': 'Angstrom', 'energy': 'eV',
                                'forces': 'eV/Angstrom'}),
        'cutoff': float(model.cutoff),
        'supported_elements': None if elements is None else sorted(int(v) for v in elements),
        'reference_energies': _reference_energies(model),
        'standardization': {'mean': float(model.mean), 'std': float(model.std)},
        'training_data': dict(training_data or {}),
        'training': dict(training or {}),
        'metrics': dict(metrics or {}),
        'library': {'name': 'pyg-tensorpot', 'version': __version__,
                    'torch': torch.__version__.split('+')[0]},
    }


# ----------------------------------------------------------------------------------------------
# saving
# ----------------------------------------------------------------------------------------------
def save_pretrained(
    model: AtomisticModel,
    directory: str,
    name: Optional[str] = None,
    training_data: Optional[Mapping[str, Any]] = None,
    metrics: Optional[Mapping[str, Any]] = None,
    training: Optional[Mapping[str, Any]] = None,
    units: Optional[Mapping[str, str]] = None,
    description: str = '',
    supported_elements: Optional[List[int]] = None,
    model_card: Optional[str] = None,
) -> str:
    r"""Saves :obj:`model` as ``model.safetensors`` + ``config.json`` + ``README.md``.

    Args:
        model (AtomisticModel): A :class:`~pyg_tensorpot.models.TensorNet`,
            :class:`~pyg_tensorpot.models.HIPNN` (HIP-NN or HIP-NN-TS) or a class added with
            :func:`register_model_class`.
        directory (str): Output folder (created; existing files of the same names are
            replaced).
        name (str, optional): Model name for the card. (default: the folder name)
        training_data (Mapping, optional): What the model was trained on (dataset, level of
            theory, number of conformations, ...). (default: :obj:`None`)
        metrics (Mapping, optional): Test errors, e.g. ``{"S66x8": {...}}``.
            (default: :obj:`None`)
        training (Mapping, optional): Training settings (epochs, optimiser, wall time, ...).
            (default: :obj:`None`)
        units (Mapping, optional): Units of positions, energy and forces. (default:
            Angstrom, eV, eV/Angstrom, the package's convention)
        description (str, optional): A paragraph for the model card. (default: ``""``)
        supported_elements (List[int], optional): Atomic numbers the model was trained on; the
            loaded model refuses other elements. (default: the model's own
            :obj:`supported_elements`)
        model_card (str, optional): Markdown body of ``README.md``; by default generated
            from the configuration. (default: :obj:`None`)

    Returns:
        str: The folder.
    """
    from safetensors.torch import save
    if not isinstance(model, AtomisticModel):
        raise TypeError(f'save_pretrained needs an AtomisticModel, got {type(model).__name__}')
    name = name or osp.basename(osp.normpath(directory))
    config = build_config(model, name, training_data, metrics, training, units, description,
                          supported_elements)
    os.makedirs(directory, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous().clone()
               for key, value in model.state_dict().items()}
    weights = save(tensors, metadata={'format': 'pt', 'library': FORMAT_NAME,
                                      'model_class': config['model_class']})
    config['weights'] = {'file': WEIGHTS_NAME, 'sha256': hashlib.sha256(weights).hexdigest()}
    card = model_card if model_card is not None else render_model_card(config)
    with _folder_lock(directory, exclusive=True):
        # the weights first: a reader holding the previous config.json then sees a SHA-256
        # mismatch and reads again (load_from_directory), never a half-written file
        atomic_write_bytes(weights, osp.join(directory, WEIGHTS_NAME))
        atomic_write_text(json.dumps(config, indent=2) + '\n', osp.join(directory, CONFIG_NAME))
        atomic_write_text(card, osp.join(directory, MODEL_CARD_NAME))
    return directory


@contextlib.contextmanager
def _folder_lock(directory: str, exclusive: bool) -> Iterator[None]:
    """A lock on the folder itself (no lock file to leave behind or upload): exclusive for
    :func:`save_pretrained`, shared for :func:`load_from_directory`, so that a reader sees
    the three files of one save. The OS releases it when the process dies. Where it is not
    available (Windows, some network file systems) nothing is locked; each file is still
    replaced atomically and readers re-read a pair that does not match."""
    fd = None
    try:
        import fcntl
        fd = os.open(directory, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except (ImportError, OSError):
        if fd is not None:
            os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


def _format_metrics(metrics: Mapping[str, Any]) -> str:
    lines = []
    for key, value in metrics.items():
        if isinstance(value, Mapping) and 'table' in value:
            lines += ['', f'**{key}**', '', str(value['table']), '']
            if value.get('note'):
                lines += [str(value['note']), '']
        elif isinstance(value, Mapping):
            items = ', '.join(f'{k} = {v:.4g}' if isinstance(v, float) else f'{k} = {v}'
                              for k, v in value.items())
            lines += [f'- **{key}**: {items}']
        else:
            lines += [f'- **{key}**: {value}']
    return '\n'.join(lines)


def render_model_card(config: Mapping[str, Any]) -> str:
    """A Markdown model card (with the Hub's YAML header) from a ``config.json`` dictionary."""
    from pyg_tensorpot.utils.elements import symbol
    elements = config.get('supported_elements')
    element_text = ('any' if elements is None else ', '.join(symbol(int(z)) for z in elements))
    data = config.get('training_data') or {}
    lines = [
        '---',
        'library_name: pyg-tensorpot',
        'license: mit',
        'tags:',
        '- interatomic-potential',
        '- machine-learned-potential',
        '- pytorch-geometric',
        f"- {config['architecture'].lower()}",
        '---',
        '',
        f"# {config.get('name') or config['architecture']}",
        '',
        config.get('description') or '',
        '',
        '## Usage',
        '',
        '```python',
        'from pyg_tensorpot.hub import from_pretrained',
        '',
        f"model = from_pretrained('{config.get('name')}')",
        'energy, forces = model.energy_and_forces(z, pos)  # z: atomic numbers, pos: Angstrom',
        '```',
        '',
        '## Model',
        '',
        f"- Architecture: {config['architecture']} "
        f"(`pyg_tensorpot.models.{config['model_class']}`),"
        f" {config.get('num_parameters', '?')} parameters, {config.get('dtype')}",
        f"- Hyperparameters: `{json.dumps(config['model_kwargs'])}`",
        f"- Cutoff: {config['cutoff']} Angstrom",
        f"- Elements: {element_text}",
        f"- Units: positions {config['units'].get('positions')}, energy "
        f"{config['units'].get('energy')}, forces {config['units'].get('forces')}",
        f"- Reference (atomic) energies added to the prediction: "
        f"`{json.dumps(config.get('reference_energies', {}))}` ({config['units'].get('energy')})",
        '',
        '## Training data',
        '',
    ]
    if data:
        lines += [f'- {key}: {json.dumps(value) if not isinstance(value, str) else value}'
                  for key, value in data.items()]
    else:
        lines += ['Not recorded.']
    training = dict(config.get('training') or {})
    if training:
        lines += ['', '## Training', '']
        stages = training.pop('stages', None) or []
        lines += [f'- {key}: {value}' for key, value in training.items()]
        for number, stage in enumerate(stages, 1):
            lines += ['', f'Stage {number} of {len(stages)}:', '']
            lines += [f'- {key}: {value}' for key, value in stage.items()]
    lines += ['', '## Evaluation', '']
    lines += [_format_metrics(config['metrics'])] if config.get('metrics') else ['Not recorded.']
    lines += ['', f"Saved with pyg-tensorpot {config.get('library', {}).get('version', '?')}.", '']
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
_REQUIRED_KEYS = ('model_class', 'model_kwargs')
#: The top-level keys of a ``config.json`` of :data:`FORMAT_VERSION`; any other key is an
#: error (a writer that adds keys must raise the format version, which older readers refuse).
CONFIG_KEYS = ('format', 'format_version', 'name', 'description', 'model_class',
               'architecture', 'model_kwargs', 'dtype', 'num_parameters', 'units', 'cutoff',
               'supported_elements', 'reference_energies', 'standardization', 'training_data',
               'training', 'metrics', 'library', 'weights')
_SUB_KEYS = {'weights': ('file', 'sha256'), 'standardization': ('mean', 'std')}
_SHA256 = re.compile(r'^[0-9a-f]{64}$')
# Reference energies and the standardisation are stored twice (config.json and the weights);
# float32 keeps about 7 significant digits, so two copies of one number agree to 1e-6
# relative, and a larger difference means that they describe different models.
_AGREEMENT_RTOL = 1e-6


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _agree(a: float, b: float) -> bool:
    return abs(a - b) <= _AGREEMENT_RTOL * max(1.0, abs(a), abs(b))


def _check_config(config: Any, path: str) -> Dict[str, Any]:
    """Checks the keys and value types of a ``config.json``; raises naming key and file."""
    def fail(message: str) -> None:
        raise PretrainedModelError(f"'{path}': {message}")

    if not isinstance(config, dict):
        fail(f'expected a JSON object with {", ".join(_REQUIRED_KEYS)}, got '
             f'{type(config).__name__}: not a pyg-tensorpot model configuration')
    missing = [key for key in _REQUIRED_KEYS if key not in config]
    if missing:
        fail(f"is not a pyg-tensorpot model configuration (no {'/'.join(map(repr, missing))})")
    version = config.get('format_version', FORMAT_VERSION)
    if not _is_integer(version) or version < 1:
        fail(f'format_version must be a positive integer, got {version!r}')
    if version > FORMAT_VERSION:
        fail(f'has format version {version}, newer than this pyg-tensorpot understands '
             f'({FORMAT_VERSION}); upgrade pyg-tensorpot')
    unknown = sorted(str(key) for key in config if key not in CONFIG_KEYS)
    if unknown:
        fail(f"unknown key {unknown[0]!r} (format version {version}); valid keys are "
             f"{', '.join(CONFIG_KEYS)}")
    if config.get('format', FORMAT_NAME) != FORMAT_NAME:
        fail(f"format is {config['format']!r}, not {FORMAT_NAME!r}: not a pyg-tensorpot model")
    for key in ('model_class', 'architecture'):
        if key in config and not (isinstance(config[key], str) and config[key]):
            fail(f'{key} must be a non-empty string, got {config[key]!r}')
    for key in ('name', 'description'):
        if config.get(key) is not None and not isinstance(config[key], str):
            fail(f'{key} must be a string or null, got {config[key]!r}')
    for key in ('model_kwargs', 'units', 'reference_energies', 'standardization',
                'training_data', 'training', 'metrics', 'library', 'weights'):
        if key in config and not isinstance(config[key], dict):
            fail(f'{key} must be a JSON object, got {config[key]!r}')
    for key, allowed in _SUB_KEYS.items():
        extra = sorted(str(k) for k in config.get(key, {}) if k not in allowed)
        if extra:
            fail(f"unknown key {key}.{extra[0]}; valid keys of {key} are {', '.join(allowed)}")
    if 'dtype' in config and config['dtype'] not in _DTYPES:
        fail(f"unknown dtype {config['dtype']!r}; expected one of {', '.join(_DTYPES)}")
    if 'num_parameters' in config and not (_is_integer(config['num_parameters'])
                                           and config['num_parameters'] >= 0):
        fail(f"num_parameters must be a non-negative integer, got {config['num_parameters']!r}")
    for key, value in config.get('units', {}).items():
        if not isinstance(value, str):
            fail(f'units.{key} must be a string, got {value!r}')
    cutoff = config.get('cutoff')
    if 'cutoff' in config and not (_is_number(cutoff) and cutoff > 0):
        fail(f'cutoff must be a positive number of Angstrom, got {cutoff!r}')
    kwargs_cutoff = config['model_kwargs'].get('cutoff')
    if 'cutoff' in config and kwargs_cutoff is not None and (
            not _is_number(kwargs_cutoff) or float(kwargs_cutoff) != float(cutoff)):
        fail(f'cutoff {cutoff!r} contradicts model_kwargs.cutoff {kwargs_cutoff!r}')
    elements = config.get('supported_elements')
    if elements is not None and not (isinstance(elements, list) and elements and all(
            _is_integer(v) and v > 0 for v in elements)):
        fail(f'supported_elements must be null or a non-empty list of atomic numbers, got '
             f'{elements!r}')
    for key, value in config.get('reference_energies', {}).items():
        if not (re.fullmatch('[0-9]+', key) and int(key) > 0) or not _is_number(value):
            fail(f'reference_energies must map atomic numbers to energies in eV, got '
                 f'{key!r}: {value!r}')
    for key in ('mean', 'std'):
        value = config.get('standardization', {}).get(key, 1.0)
        if not _is_number(value) or (key == 'std' and value <= 0):
            fail(f'standardization.{key} must be a {"positive " if key == "std" else ""}'
                 f'number, got {value!r}')
    weights = config.get('weights', {})
    if weights.get('file', WEIGHTS_NAME) != WEIGHTS_NAME:
        fail(f"weights.file is {weights['file']!r}; a saved model keeps its weights in "
             f"'{WEIGHTS_NAME}' beside {CONFIG_NAME}")
    if 'sha256' in weights and not (isinstance(weights['sha256'], str)
                                    and _SHA256.match(weights['sha256'])):
        fail(f"weights.sha256 must be 64 lower-case hexadecimal digits, got "
             f"{weights['sha256']!r}")
    return config


def _read_bytes(path: str, what: str) -> bytes:
    if not osp.isfile(path):
        raise PretrainedModelError(f"'{path}' is missing: {what}")
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError as error:
        raise PretrainedModelError(f"'{path}' cannot be read ({error})") from None


def _parse_config(raw: bytes, path: str) -> Dict[str, Any]:
    try:
        config = json.loads(raw.decode('utf-8'))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise PretrainedModelError(f"'{path}' is not valid JSON ({error}); the file is "
                                   f"corrupt or truncated") from None
    return _check_config(config, path)


def _read_config(path: str) -> Dict[str, Any]:
    what = f'a saved pyg-tensorpot model needs {CONFIG_NAME} and {WEIGHTS_NAME}'
    return _parse_config(_read_bytes(path, what), path)


class _TooLarge(Exception):
    pass


@contextlib.contextmanager
def _meta_size_limit(max_tensors: int, max_elements: int):
    """While a model is built on the ``meta`` device, aborts as soon as it registers more
    tensors or elements than the weights file holds (a config asking for a huge model must
    not hang or exhaust the memory)."""
    from torch.nn.modules import module as module_lib
    count = [0, 0]

    def hook(_module, _name, tensor):
        if tensor is not None and tensor.device.type == 'meta':
            count[0] += 1
            count[1] += tensor.numel()
            if count[0] > max_tensors or count[1] > max_elements:
                raise _TooLarge()

    handles = [module_lib.register_module_parameter_registration_hook(hook),
               module_lib.register_module_buffer_registration_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _build(cls: Type[AtomisticModel], kwargs: Dict[str, Any], config_path: str,
           state: Mapping[str, torch.Tensor], weights_path: str) -> AtomisticModel:
    """Builds the model of ``config.json``, first on the ``meta`` device (no memory) to
    compare it with the weights, then for real."""
    def cannot(error: BaseException) -> PretrainedModelError:
        return PretrainedModelError(f"'{config_path}': cannot build {cls.__name__} from its "
                                    f"model_kwargs {kwargs} ({type(error).__name__}: {error})")

    limit = (2 * len(state) + 16, 2 * sum(t.numel() for t in state.values()) + 4096)
    try:
        with _meta_size_limit(*limit), torch.device('meta'):
            cls(**kwargs)
    except _TooLarge:
        raise PretrainedModelError(
            f"'{weights_path}' does not fit the {cls.__name__} described by '{config_path}': "
            f"model_kwargs {kwargs} ask for a larger model than the file holds") from None
    except Exception:  # noqa: BLE001 - retried for real below, which reports the error
        pass
    try:
        return cls(**kwargs)
    except Exception as error:  # noqa: BLE001 - any constructor error is a bad model_kwargs
        raise cannot(error) from None


def _check_weights(model: AtomisticModel, state: Mapping[str, torch.Tensor], dtype: torch.dtype,
                   weights_path: str, config_path: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f'{k}: file {list(state[k].shape)}, model {list(own[k].shape)}'
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        details = '; '.join(filter(None, [
            f'missing {missing[:5]}' if missing else '',
            f'unexpected {unexpected[:5]}' if unexpected else '',
            f'shape mismatch {wrong[:5]}' if wrong else '']))
        raise PretrainedModelError(f"'{weights_path}' does not fit the {type(model).__name__} "
                                   f"described by '{config_path}': {details}")
    for key, tensor in state.items():
        wanted = own[key].dtype
        # buffers the model keeps in float64 whatever its dtype (reference energies) may come
        # as float32 from older files: widening is exact; narrowing or other types are not
        widened = tensor.dtype == torch.float32 and wanted == torch.float64 != dtype
        if tensor.dtype != wanted and not widened:
            raise PretrainedModelError(
                f"dtype mismatch: '{config_path}' describes a {str(dtype)[6:]} model, so "
                f"'{key}' should be {str(wanted)[6:]}, but '{weights_path}' holds "
                f"{str(tensor.dtype)[6:]}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PretrainedModelError(f"'{weights_path}': tensor '{key}' holds NaN or "
                                       f"infinite values; the file is corrupt")


def _check_agreement(model: AtomisticModel, config: Mapping[str, Any], config_path: str,
                     weights_path: str) -> None:
    """Values stored in both files must agree (else one of them belongs to another model)."""
    def contradiction(what: str, in_config: Any, in_weights: Any) -> PretrainedModelError:
        return PretrainedModelError(f"'{config_path}' and '{weights_path}' contradict each "
                                    f"other: {what} is {in_config} in {CONFIG_NAME} but "
                                    f"{in_weights} in {WEIGHTS_NAME}")

    if 'reference_energies' in config:
        stored = _reference_energies(model)
        listed = {str(int(k)): float(v) for k, v in config['reference_energies'].items()}
        for key in sorted(set(stored) | set(listed), key=int):
            if not _agree(listed.get(key, 0.0), stored.get(key, 0.0)):
                raise contradiction(f'the reference energy of Z={key}', listed.get(key, 0.0),
                                    stored.get(key, 0.0))
    for key in ('mean', 'std'):
        if key in config.get('standardization', {}):
            listed, stored = float(config['standardization'][key]), float(getattr(model, key))
            if not _agree(listed, stored):
                raise contradiction(f'standardization.{key}', listed, stored)
    if 'num_parameters' in config:
        count = int(sum(p.numel() for p in model.parameters()))
        if config['num_parameters'] != count:
            raise contradiction('the number of parameters', config['num_parameters'], count)
    if 'architecture' in config and config['architecture'] != architecture_name(model):
        raise PretrainedModelError(f"'{config_path}': architecture {config['architecture']!r} "
                                   f"contradicts the model it describes, a "
                                   f"{architecture_name(model)}")
    elements = config.get('supported_elements')
    if elements is not None and max(elements) >= int(model.max_z):
        raise PretrainedModelError(f"'{config_path}': supported_elements {elements} include "
                                   f"atomic numbers the model cannot take (max_z "
                                   f"{model.max_z})")


def _weights_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The float type of most weights (a config without ``dtype``); float32 by default."""
    counts: Dict[torch.dtype, int] = {}
    for tensor in state.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return max(counts, key=counts.get) if counts else torch.float32


#: How often :func:`load_from_directory` re-reads a folder whose two files were caught in the
#: middle of being replaced by another process (waiting 10, 20, 40, ... ms in between).
_CONSISTENT_READ_ATTEMPTS = 6


def _read_consistent(config_path: str, weights_path: str, check_hash: bool
                     ) -> Tuple[Dict[str, Any], bytes]:
    """``config.json`` and the weights bytes, read under a shared lock of the folder, and
    read again a few times if the SHA-256 in the config does not match the weights (a writer
    that does not take the lock may be between its two renames)."""
    what = f'a saved pyg-tensorpot model needs {CONFIG_NAME} and {WEIGHTS_NAME}'
    for attempt in range(_CONSISTENT_READ_ATTEMPTS):
        if attempt:
            time.sleep(0.01 * 2**(attempt - 1))
        with _folder_lock(osp.dirname(config_path), exclusive=False):
            config = _parse_config(_read_bytes(config_path, what), config_path)
            weights = _read_bytes(weights_path, f"the weights of the model described by "
                                                f"'{config_path}'")
        expected = config.get('weights', {}).get('sha256')
        if not check_hash or not expected or hashlib.sha256(weights).hexdigest() == expected:
            return config, weights
    raise PretrainedModelError(f"'{weights_path}' does not match the SHA-256 recorded in "
                               f"'{config_path}': the file is corrupt or was replaced")


def load_from_directory(directory: str, map_location: Union[str, torch.device] = 'cpu',
                        check_hash: bool = True) -> AtomisticModel:
    """Rebuilds a model saved by :func:`save_pretrained` from a local folder.

    Every key and value of ``config.json`` is checked (see :data:`CONFIG_KEYS`), the weights
    are compared with it (names, shapes, dtypes, SHA-256, finite values) and the values
    stored in both files (reference energies, standardisation, number of parameters,
    architecture) must agree. The files are only read. A folder being rewritten by
    :func:`save_pretrained` of another process is read again until both files belong to
    the same save.

    Args:
        directory (str): Folder with ``config.json`` and ``model.safetensors``.
        map_location (str or torch.device, optional): Device of the returned model.
            (default: ``"cpu"``)
        check_hash (bool, optional): Compare the weights with the SHA-256 recorded in
            ``config.json``. (default: :obj:`True`)

    Raises:
        PretrainedModelError: Missing, corrupt or contradictory ``config.json`` or
            ``model.safetensors`` (bad JSON, unknown or ill-typed keys, truncated file, wrong
            tensor names, shapes or dtypes), naming the file and the key.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors
    config_path = osp.join(directory, CONFIG_NAME)
    weights_path = osp.join(directory, WEIGHTS_NAME)
    config, raw_weights = _read_consistent(config_path, weights_path, check_hash)
    cls = MODEL_CLASSES.get(config['model_class'])
    if cls is None:
        raise PretrainedModelError(f"'{config_path}' asks for model class "
                                   f"'{config['model_class']}', which is not registered "
                                   f"(known: {sorted(MODEL_CLASSES)})")
    try:
        state = load_safetensors(raw_weights)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as error:
        raise PretrainedModelError(f"'{weights_path}' is not a readable safetensors file "
                                   f"({error}); it is corrupt or truncated") from None
    dtype = _DTYPES[config['dtype']] if 'dtype' in config else _weights_dtype(state)
    model = _build(cls, config['model_kwargs'], config_path, state, weights_path).to(dtype)
    _check_weights(model, state, dtype, weights_path, config_path)
    model.load_state_dict(state, strict=True)
    _check_agreement(model, config, config_path, weights_path)
    if config.get('supported_elements') is not None:
        model.supported_elements = sorted(int(v) for v in config['supported_elements'])
    model.pretrained_config = config
    return model.to(map_location).eval()


def _hub_error(repo_id: str, filename: str, revision: Optional[str], error: Exception
               ) -> PretrainedModelError:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    where = f"'{filename}' of Hub repository '{repo_id}'" + (
        f' at revision {revision!r}' if revision else '')
    if isinstance(error, LocalEntryNotFoundError):
        reason = ('it is not in the Hub cache and downloads are disabled (HF_HUB_OFFLINE is set)'
                  if constants.HF_HUB_OFFLINE else
                  'it is not in the Hub cache and the Hub could not be reached')
        return PretrainedModelError(f'cannot load {where}: {reason}')
    if isinstance(error, RepositoryNotFoundError):
        return PretrainedModelError(f"Hub repository '{repo_id}' does not exist (or is private:"
                                    f" pass token=...)")
    if isinstance(error, RevisionNotFoundError):
        return PretrainedModelError(f"Hub repository '{repo_id}' has no revision {revision!r}")
    if isinstance(error, EntryNotFoundError):
        return PretrainedModelError(f'{where} does not exist: not a pyg-tensorpot model')
    return PretrainedModelError(f'cannot download {where}: {error}')


def resolve_pretrained(
    name_or_path: str,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: Optional[Union[str, bool]] = None,
) -> str:
    """The local folder holding the model :obj:`name_or_path`, downloading from the Hub if
    needed. Arguments as in :func:`from_pretrained`."""
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        raise TypeError(f'name_or_path must be a folder, a registered name or a Hub repository '
                        f'id (a string), got {type(name_or_path).__name__}')
    if osp.isdir(name_or_path):
        return name_or_path
    entry = PRETRAINED_MODELS.get(name_or_path)
    if entry is not None and revision is None and not force_download \
            and osp.isfile(osp.join(entry.package_dir, CONFIG_NAME)):
        return entry.package_dir
    repo_id = entry.repo_id if entry is not None else name_or_path
    if repo_id.count('/') != 1 or osp.sep in repo_id and osp.exists(osp.dirname(repo_id)):
        raise PretrainedModelError(
            f"'{name_or_path}' is neither a folder, nor a registered pretrained model "
            f"({', '.join(PRETRAINED_MODELS)}), nor a Hub repository id like 'org/name'")
    from huggingface_hub import hf_hub_download
    folder = None
    for filename in (CONFIG_NAME, WEIGHTS_NAME, MODEL_CARD_NAME):
        try:
            path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                   force_download=force_download,
                                   local_files_only=local_files_only, token=token)
        except Exception as error:  # huggingface_hub's own errors, re-raised with context
            if filename == MODEL_CARD_NAME:
                continue  # the card is documentation, not needed to load
            raise _hub_error(repo_id, filename, revision, error) from error
        if folder is None:
            folder = osp.dirname(path)
            # the other files from the same snapshot, even if the branch moves meanwhile
            # (another process updating the cache): config and weights of one commit
            if revision is None and re.fullmatch('[0-9a-f]{40}', osp.basename(folder)):
                revision = osp.basename(folder)
    return folder


def from_pretrained(
    name_or_path: str,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: Optional[Union[str, bool]] = None,
    map_location: Union[str, torch.device] = 'cpu',
) -> AtomisticModel:
    r"""Loads a pretrained model: a local folder, a registered short name or a Hub repository.

    Resolution order: (1) an existing local folder written by :func:`save_pretrained`;
    (2) for a registered short name (see :func:`list_pretrained`) the copy shipped with the
    package, so that it works offline on a fresh install -- unless :obj:`revision` or
    :obj:`force_download` is given; (3) the Hugging Face Hub repository (the registered one for
    a short name), through :func:`huggingface_hub.hf_hub_download`, which uses the Hub cache
    (``HF_HUB_CACHE`` or :obj:`cache_dir`) and honours ``HF_HUB_OFFLINE``.

    The returned model is the class recorded in ``config.json``
    (:class:`~pyg_tensorpot.models.TensorNet` or :class:`~pyg_tensorpot.models.HIPNN` for
    HIP-NN and HIP-NN-TS), in evaluation mode, with the configuration in
    :obj:`model.pretrained_config`. It refuses elements it was not trained on.

    Args:
        name_or_path (str): Folder, short name (``"tensornet-ani1x"``, ``"hipnn-ts-ani1x"``) or
            Hub repository id (``"org/name"``).
        revision (str, optional): Hub branch, tag or commit. (default: :obj:`None`, ``main``)
        cache_dir (str, optional): Hub cache folder. (default: :obj:`None`, the Hub's default)
        force_download (bool, optional): Download again even if cached. (default: :obj:`False`)
        local_files_only (bool, optional): Only use the Hub cache. (default: :obj:`False`)
        token (str or bool, optional): Hub token for private repositories.
            (default: :obj:`None`)
        map_location (str or torch.device, optional): Device of the model.
            (default: ``"cpu"``)

    Raises:
        PretrainedModelError: The model cannot be found, or one of its files is missing,
            corrupt or contradicts the other (unknown or ill-typed ``config.json`` keys,
            truncated weights, wrong tensor shapes or dtypes); the message names the file and
            the key.
        TypeError: :obj:`name_or_path` is not a string or path.
    """
    directory = resolve_pretrained(name_or_path, revision, cache_dir, force_download,
                                   local_files_only, token)
    return load_from_directory(directory, map_location)


# ----------------------------------------------------------------------------------------------
# sharing
# ----------------------------------------------------------------------------------------------
def push_to_hub(
    model: AtomisticModel,
    repo_id: str,
    commit_message: str = 'Upload pyg-tensorpot model',
    private: Optional[bool] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    endpoint: Optional[str] = None,
    api: Optional[Any] = None,
    **save_kwargs: Any,
):
    r"""Saves :obj:`model` with :func:`save_pretrained` and uploads the folder to the Hugging
    Face Hub (creating the repository if needed).

    Args:
        model (AtomisticModel): The model.
        repo_id (str): Target repository ``"org/name"``.
        commit_message (str, optional): Commit message.
            (default: ``"Upload pyg-tensorpot model"``)
        private (bool, optional): Visibility of a newly created repository.
            (default: :obj:`None`, the Hub's default)
        token (str, optional): Hub token. (default: :obj:`None`, the logged-in user)
        revision (str, optional): Branch to commit to. (default: :obj:`None`, ``main``)
        create_pr (bool, optional): Open a pull request instead of committing.
            (default: :obj:`False`)
        endpoint (str, optional): Hub endpoint URL. (default: :obj:`None`, ``HF_ENDPOINT``)
        api (huggingface_hub.HfApi, optional): A configured client to use instead.
            (default: :obj:`None`)
        **save_kwargs: Passed to :func:`save_pretrained` (``training_data``, ``metrics``, ...).

    Returns:
        huggingface_hub.CommitInfo: The commit (``.oid``, ``.commit_url``).
    """
    from huggingface_hub import HfApi
    if repo_id.count('/') != 1:
        raise ValueError(f"repo_id must look like 'org/name', got '{repo_id}'")
    api = api if api is not None else HfApi(endpoint=endpoint, token=token)
    save_kwargs.setdefault('name', repo_id.split('/')[1])
    with tempfile.TemporaryDirectory(prefix='pyg_tensorpot_push_') as folder:
        save_pretrained(model, folder, **save_kwargs)
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        return api.upload_folder(folder_path=folder, repo_id=repo_id,
                                 commit_message=commit_message, revision=revision,
                                 create_pr=create_pr, token=token)


# ----------------------------------------------------------------------------------------------
# demonstration
# ----------------------------------------------------------------------------------------------
def pretrained_demo(name: str = 'tensornet-ani1x', dimer: int = 0, reference: str = 'auto',
                    printer=print) -> Dict[str, float]:
    r"""Loads a pretrained model offline and compares it with DFT on a bundled molecule.

    The molecule is an S66x8 dimer of the COMP6 benchmark (wB97X/6-31G(d), the ANI-1x level of
    theory) shipped in ``tests/data`` of the source tree; where that file is not available (an
    installed wheel), 8 frames of the MD17 ethanol sample bundled with the package are used
    (PBE+vdW-TS, a different level of theory, so only a rough check).

    Args:
        name (str, optional): Registered model or folder. (default: ``"tensornet-ani1x"``)
        dimer (int, optional): S66x8 dimer index 0..65 (0: water dimer). (default: :obj:`0`)
        reference (str, optional): ``"s66x8"``, ``"md17"`` or ``"auto"`` (S66x8 if the file is
            there). (default: ``"auto"``)
        printer (Callable, optional): Where the lines go. (default: :func:`print`)

    Returns:
        Dict[str, float]: ``energy_mae_kcal_mol`` (energies relative to their mean over the
        8 conformations) and ``forces_mae_ev_per_angstrom``.
    """
    from pyg_tensorpot.utils.units import EV_TO_KCAL_PER_MOL, HARTREE_TO_EV
    model = from_pretrained(name)
    dtype = _model_dtype(model)
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    s66 = osp.join(root, 'tests', 'data', 'comp6', 's66x8_wb97x6-31gd.h5')
    if reference not in ('auto', 's66x8', 'md17'):
        raise ValueError(f"reference must be 'auto', 's66x8' or 'md17', got '{reference}'")
    if reference == 's66x8' and not osp.isfile(s66):
        raise FileNotFoundError(f"'{s66}' is missing (it is part of the source tree only)")
    if reference != 'md17' and osp.isfile(s66):
        import h5py
        from pyg_tensorpot.utils.elements import atomic_number
        with h5py.File(s66, 'r') as f:
            group = f[f's66x8/mol{dimer:02d}']
            z = torch.tensor([atomic_number(s.decode()) for s in group['species'][()]])
            pos = torch.from_numpy(group['coordinates'][()]).to(dtype)
            e_ref = torch.from_numpy(group['energies'][()]) * HARTREE_TO_EV
            f_ref = -torch.from_numpy(group['forces'][()]).double() * HARTREE_TO_EV
        num = z.numel()
        batch = torch.arange(8).repeat_interleave(num)
        energy, forces = model.energy_and_forces(z.repeat(8), pos.reshape(-1, 3), batch)
        energy = energy.double()
        rel_pred = (energy - energy.mean()) * EV_TO_KCAL_PER_MOL
        rel_ref = (e_ref - e_ref.mean()) * EV_TO_KCAL_PER_MOL
        printer(f'{name} on S66x8 dimer {dimer} ({num} atoms), vs wB97X/6-31G(d):')
        printer('  separation  E_rel model  E_rel DFT   (kcal/mol)')
        for k, scale in enumerate((0.90, 0.95, 1.00, 1.05, 1.10, 1.25, 1.50, 2.00)):
            printer(f'  {scale:9.2f}x  {rel_pred[k]:11.3f}  {rel_ref[k]:9.3f}')
        f_mae = (forces.double().reshape(8, num, 3) - f_ref).abs().mean().item()
        e_mae = (rel_pred - rel_ref).abs().mean().item()
        printer(f'  energy MAE {e_mae:.3f} kcal/mol, force MAE {f_mae:.4f} eV/A '
                f'(absolute energy at 1.00x: model {energy[2]:.3f} eV, DFT {e_ref[2]:.3f} eV)')
        return {'energy_mae_kcal_mol': e_mae, 'forces_mae_ev_per_angstrom': f_mae}
    from pyg_tensorpot.datasets import MD17EthanolSample
    frames = MD17EthanolSample(log=False)
    sample = [frames[i] for i in range(0, 2000, 250)]
    z = torch.cat([d.z for d in sample])
    pos = torch.cat([d.pos for d in sample]).to(dtype)
    batch = torch.arange(len(sample)).repeat_interleave(sample[0].z.numel())
    energy, forces = model.energy_and_forces(z, pos, batch)
    e_ref = torch.cat([d.energy.double().view(-1) for d in sample])
    f_ref = torch.cat([d.forces for d in sample]).double()
    rel_pred = (energy.double() - energy.double().mean()) * EV_TO_KCAL_PER_MOL
    rel_ref = (e_ref - e_ref.mean()) * EV_TO_KCAL_PER_MOL
    e_mae = (rel_pred - rel_ref).abs().mean().item()
    f_mae = (forces.double() - f_ref).abs().mean().item()
    printer(f'{name} on 8 MD17 ethanol frames (bundled), vs DFT PBE+vdW-TS -- a different '
            f'level of theory than the model\'s (wB97X/6-31G(d)):')
    printer(f'  relative-energy MAE {e_mae:.3f} kcal/mol, force MAE {f_mae:.4f} eV/A')
    return {'energy_mae_kcal_mol': e_mae, 'forces_mae_ev_per_angstrom': f_mae}


def _classmethod_from_pretrained(cls, name_or_path: str, **kwargs) -> AtomisticModel:
    model = from_pretrained(name_or_path, **kwargs)
    if cls is not AtomisticModel and not isinstance(model, cls):
        raise PretrainedModelError(f"'{name_or_path}' holds a {type(model).__name__}, not a "
                                   f"{cls.__name__}; use AtomisticModel.from_pretrained or "
                                   f"pyg_tensorpot.hub.from_pretrained to get any class")
    return model


def _method_save_pretrained(self, directory: str, **kwargs) -> str:
    return save_pretrained(self, directory, **kwargs)


def _method_push_to_hub(self, repo_id: str, **kwargs):
    return push_to_hub(self, repo_id, **kwargs)


_classmethod_from_pretrained.__doc__ = ('Loads a pretrained model; see '
                                        ':func:`pyg_tensorpot.hub.from_pretrained`. On a '
                                        'subclass, checks that the model is of that class.')
_method_save_pretrained.__doc__ = 'See :func:`pyg_tensorpot.hub.save_pretrained`.'
_method_push_to_hub.__doc__ = 'See :func:`pyg_tensorpot.hub.push_to_hub`.'
# AtomisticModel.from_pretrained / .save_pretrained / .push_to_hub (attached here so that
# models/base.py does not import huggingface_hub)
AtomisticModel.from_pretrained = classmethod(_classmethod_from_pretrained)
AtomisticModel.save_pretrained = _method_save_pretrained
AtomisticModel.push_to_hub = _method_push_to_hub

__all__ = [
    'CONFIG_NAME', 'WEIGHTS_NAME', 'MODEL_CARD_NAME', 'PRETRAINED_MODELS', 'PretrainedEntry',
    'CONFIG_KEYS', 'PretrainedModelError', 'list_pretrained', 'register_model_class',
    'save_pretrained',
    'from_pretrained', 'load_from_directory', 'resolve_pretrained', 'push_to_hub',
    'build_config', 'render_model_card', 'model_kwargs', 'architecture_name',
    'pretrained_demo',
]
