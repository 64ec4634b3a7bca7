r"""Saving, loading and sharing pretrained potentials (Hugging Face Hub).

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

.. code-block:: python

    from pyg_tensorpot.hub import from_pretrained

    model = from_pretrained('tensornet-ani1x')        # works offline: shipped with the package
    energy, forces = model.energy_and_forces(z, pos)  # eV and eV/Angstrom
"""
import hashlib
import inspect
import json
import os
import os.path as osp
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Type, Union

import torch

from pyg_tensorpot.models import HIPNN, AtomisticModel, TensorNet

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


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


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
    dtype = model.atomref.dtype
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
    from safetensors.torch import save_file
    if not isinstance(model, AtomisticModel):
        raise TypeError(f'save_pretrained needs an AtomisticModel, got {type(model).__name__}')
    name = name or osp.basename(osp.normpath(directory))
    config = build_config(model, name, training_data, metrics, training, units, description,
                          supported_elements)
    os.makedirs(directory, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous().clone()
               for key, value in model.state_dict().items()}
    weights_path = osp.join(directory, WEIGHTS_NAME)
    save_file(tensors, weights_path, metadata={'format': 'pt', 'library': FORMAT_NAME,
                                               'model_class': config['model_class']})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(weights_path, 0o666 & ~umask)  # safetensors writes 0600; share like other files
    config['weights'] = {'file': WEIGHTS_NAME, 'sha256': _sha256(weights_path)}
    with open(osp.join(directory, CONFIG_NAME), 'w') as f:
        json.dump(config, f, indent=2)
        f.write('\n')
    with open(osp.join(directory, MODEL_CARD_NAME), 'w') as f:
        f.write(model_card if model_card is not None else render_model_card(config))
    return directory


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
def _read_config(path: str) -> Dict[str, Any]:
    if not osp.isfile(path):
        raise PretrainedModelError(f"'{path}' is missing: a saved pyg-tensorpot model needs "
                                   f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        with open(path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PretrainedModelError(f"'{path}' is not valid JSON ({error}); the file is "
                                   f"corrupt or truncated") from None
    if not isinstance(config, dict) or 'model_class' not in config \
            or 'model_kwargs' not in config:
        raise PretrainedModelError(f"'{path}' is not a pyg-tensorpot model configuration "
                                   f"(no 'model_class'/'model_kwargs')")
    if int(config.get('format_version', 1)) > FORMAT_VERSION:
        raise PretrainedModelError(
            f"'{path}' has format version {config['format_version']}, newer than this "
            f"pyg-tensorpot understands ({FORMAT_VERSION}); upgrade pyg-tensorpot")
    return config


def load_from_directory(directory: str, map_location: Union[str, torch.device] = 'cpu',
                        check_hash: bool = True) -> AtomisticModel:
    """Rebuilds a model saved by :func:`save_pretrained` from a local folder.

    Args:
        directory (str): Folder with ``config.json`` and ``model.safetensors``.
        map_location (str or torch.device, optional): Device of the returned model.
            (default: ``"cpu"``)
        check_hash (bool, optional): Compare the weights with the SHA-256 recorded in
            ``config.json``. (default: :obj:`True`)

    Raises:
        PretrainedModelError: Missing or corrupt ``config.json`` or ``model.safetensors``
            (bad JSON, truncated file, wrong tensor shapes or names), naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    config_path = osp.join(directory, CONFIG_NAME)
    config = _read_config(config_path)
    cls = MODEL_CLASSES.get(config['model_class'])
    if cls is None:
        raise PretrainedModelError(f"'{config_path}' asks for model class "
                                   f"'{config['model_class']}', which is not registered "
                                   f"(known: {sorted(MODEL_CLASSES)})")
    weights_file = (config.get('weights') or {}).get('file', WEIGHTS_NAME)
    weights_path = osp.join(directory, weights_file)
    if not osp.isfile(weights_path):
        raise PretrainedModelError(f"'{weights_path}' is missing: the weights of the model "
                                   f"described by '{config_path}'")
    expected = (config.get('weights') or {}).get('sha256')
    if check_hash and expected and _sha256(weights_path) != expected:
        raise PretrainedModelError(f"'{weights_path}' does not match the SHA-256 recorded in "
                                   f"'{config_path}': the file is corrupt or was replaced")
    try:
        state = load_file(weights_path, device='cpu')
    except (SafetensorError, OSError, ValueError) as error:
        raise PretrainedModelError(f"'{weights_path}' is not a readable safetensors file "
                                   f"({error}); it is corrupt or truncated") from None
    try:
        model = cls(**config['model_kwargs'])
    except (TypeError, ValueError) as error:
        raise PretrainedModelError(f"'{config_path}': cannot build {cls.__name__} from its "
                                   f"model_kwargs ({error})") from None
    dtype = _DTYPES.get(config.get('dtype', 'float32'))
    if dtype is None:
        raise PretrainedModelError(f"'{config_path}': unknown dtype '{config.get('dtype')}'")
    model = model.to(dtype)
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
        raise PretrainedModelError(f"'{weights_path}' does not fit the {cls.__name__} "
                                   f"described by '{config_path}': {details}")
    model.load_state_dict(state, strict=True)
    if config.get('supported_elements') is not None:
        model.supported_elements = [int(v) for v in config['supported_elements']]
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
        folder = folder or osp.dirname(path)
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
        PretrainedModelError: The model cannot be found, or one of its files is missing or
            corrupt (the message names it).
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
    dtype = model.atomref.dtype
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
    'PretrainedModelError', 'list_pretrained', 'register_model_class', 'save_pretrained',
    'from_pretrained', 'load_from_directory', 'resolve_pretrained', 'push_to_hub',
    'build_config', 'render_model_card', 'model_kwargs', 'architecture_name',
    'pretrained_demo',
]
