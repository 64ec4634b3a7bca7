r"""The ``config.json`` of a saved model: what it holds (:func:`build_config`, rebuilt from
the model's own attributes by :func:`model_kwargs`) and how strictly it is read
(:func:`check_config`).

``config.json`` is read strictly: an unknown top-level key is an error naming it and the valid
keys (:data:`CONFIG_KEYS`), not a silently ignored one. Forward compatibility goes through
``format_version``: a writer that adds keys raises it, and a reader refuses a version newer
than its own with "upgrade pyg-tensorpot". Documentation keys (``name``, ``metrics``, ...)
may be missing; ``model_class`` and ``model_kwargs`` may not.
"""
import inspect
import json
import math
import os.path as osp
import re
from typing import Any, Dict, List, Mapping, Optional

import torch

from pyg_tensorpot.hub.registry import MODEL_CLASSES, PretrainedModelError
from pyg_tensorpot.models import HIPNN, AtomisticModel
from pyg_tensorpot.utils.dtypes import DTYPES, dtype_name

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
MODEL_CARD_NAME = 'README.md'
FORMAT_NAME = 'pyg-tensorpot'
FORMAT_VERSION = 1


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


def reference_energies(model: AtomisticModel) -> Dict[str, float]:
    """The non-zero reference energies of :obj:`model` as ``{"Z": eV}`` (JSON keys)."""
    atomref = model.atomref.detach().double().cpu()
    return {str(z): float(atomref[z]) for z in range(atomref.numel()) if atomref[z] != 0}


def model_dtype(model: AtomisticModel) -> torch.dtype:
    """The floating-point type of :obj:`model`'s network."""
    # the standardisation's type: the reference energies may be kept in float64 in any model
    return model.std.dtype


#: The documentation sections of ``config.json`` that :func:`build_config` takes by keyword.
CONFIG_SECTIONS = ('training_data', 'metrics', 'training', 'units')


def build_config(model: AtomisticModel, name: Optional[str] = None, *, description: str = '',
                 supported_elements: Optional[List[int]] = None,
                 **sections: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The ``config.json`` content of :obj:`model`; the arguments are those of
    :func:`~pyg_tensorpot.hub.save_pretrained` (:obj:`sections`: :data:`CONFIG_SECTIONS`).

    Raises:
        TypeError: A section that ``config.json`` does not have.
        ValueError: The model cannot be saved (not float32/float64, unregistered class,
            constructor arguments it does not store).
    """
    from pyg_tensorpot import __version__
    unknown = sorted(set(sections) - set(CONFIG_SECTIONS))
    if unknown:
        raise TypeError(f"unknown config.json section {unknown[0]!r}; the sections are "
                        f"{', '.join(CONFIG_SECTIONS)}")
    training_data, metrics, training, units = (sections.get(k) for k in CONFIG_SECTIONS)
    dtype = model_dtype(model)
    if dtype not in DTYPES.values():
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
        'dtype': dtype_name(dtype),
        'num_parameters': int(sum(p.numel() for p in model.parameters())),
        'units': dict(units or {'positions': 'Angstrom', 'energy': 'eV',
                                'forces': 'eV/Angstrom'}),
        'cutoff': float(model.cutoff),
        'supported_elements': None if elements is None else sorted(int(v) for v in elements),
        'reference_energies': reference_energies(model),
        'standardization': {'mean': float(model.mean), 'std': float(model.std)},
        'training_data': dict(training_data or {}),
        'training': dict(training or {}),
        'metrics': dict(metrics or {}),
        'library': {'name': 'pyg-tensorpot', 'version': __version__,
                    'torch': torch.__version__.split('+')[0]},
    }


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


def values_agree(a: float, b: float) -> bool:
    return abs(a - b) <= _AGREEMENT_RTOL * max(1.0, abs(a), abs(b))


def check_config(config: Any, path: str) -> Dict[str, Any]:
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
    if 'dtype' in config and (not isinstance(config['dtype'], str)
                              or config['dtype'] not in DTYPES):
        fail(f"unknown dtype {config['dtype']!r}; expected one of {', '.join(DTYPES)}")
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


def read_bytes(path: str, what: str) -> bytes:
    """The content of :obj:`path`; a missing or unreadable file is a
    :class:`PretrainedModelError` naming it (and :obj:`what` it should be)."""
    if not osp.isfile(path):
        raise PretrainedModelError(f"'{path}' is missing: {what}")
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError as error:
        raise PretrainedModelError(f"'{path}' cannot be read ({error})") from None


def parse_config(raw: bytes, path: str) -> Dict[str, Any]:
    """The checked ``config.json`` dictionary of the bytes :obj:`raw` read from :obj:`path`."""
    try:
        config = json.loads(raw.decode('utf-8'))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise PretrainedModelError(f"'{path}' is not valid JSON ({error}); the file is "
                                   f"corrupt or truncated") from None
    return check_config(config, path)
