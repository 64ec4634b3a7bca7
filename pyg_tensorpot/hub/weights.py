r"""Writing and reading a saved model folder: ``model.safetensors`` (every parameter and
buffer, never pickle) beside ``config.json`` and the model card.

Files are written atomically (a temporary file renamed over the old one) under an exclusive
lock of the folder, and read under a shared one, so a process loading a folder or Hub cache
that another process is rewriting gets the old or the new model, never a mixture. On
reading, the weights are checked against ``config.json`` (names, shapes, dtypes, SHA-256,
finite values) and the values stored in both must agree.
"""
import contextlib
import json
import os
import os.path as osp
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Type, Union

import torch

from pyg_tensorpot.hub.card import render_model_card
from pyg_tensorpot.hub.config import (
    CONFIG_NAME,
    FORMAT_NAME,
    MODEL_CARD_NAME,
    WEIGHTS_NAME,
    architecture_name,
    build_config,
    parse_config,
    read_bytes,
    reference_energies,
    values_agree,
)
from pyg_tensorpot.hub.registry import MODEL_CLASSES, PretrainedModelError
from pyg_tensorpot.models import AtomisticModel
from pyg_tensorpot.utils.dtypes import to_dtype
from pyg_tensorpot.utils.files import atomic_write_bytes, atomic_write_text, sha256_bytes


def state_dict_bytes(module: torch.nn.Module) -> bytes:
    """Every parameter and buffer of :obj:`module` as the bytes of a ``model.safetensors``
    file (the one weights format the package writes; no pickle)."""
    from safetensors.torch import save
    tensors = {key: value.detach().cpu().contiguous().clone()
               for key, value in module.state_dict().items()}
    return save(tensors, metadata={'format': 'pt', 'library': FORMAT_NAME,
                                   'model_class': type(module).__name__})


def load_state_bytes(raw: bytes, path: str) -> Dict[str, torch.Tensor]:
    """The tensors of the ``model.safetensors`` bytes :obj:`raw` read from :obj:`path`.

    Raises:
        PretrainedModelError: The bytes are not a readable safetensors file (naming it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load
    try:
        return load(raw)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as error:
        raise PretrainedModelError(f"'{path}' is not a readable safetensors file "
                                   f"({error}); it is corrupt or truncated") from None


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
    if not isinstance(model, AtomisticModel):
        raise TypeError(f'save_pretrained needs an AtomisticModel, got {type(model).__name__}')
    name = name or osp.basename(osp.normpath(directory))
    config = build_config(model, name, description=description,
                          supported_elements=supported_elements, training_data=training_data,
                          metrics=metrics, training=training, units=units)
    os.makedirs(directory, exist_ok=True)
    weights = state_dict_bytes(model)
    config['weights'] = {'file': WEIGHTS_NAME, 'sha256': sha256_bytes(weights)}
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
        stored = reference_energies(model)
        listed = {str(int(k)): float(v) for k, v in config['reference_energies'].items()}
        for key in sorted(set(stored) | set(listed), key=int):
            if not values_agree(listed.get(key, 0.0), stored.get(key, 0.0)):
                raise contradiction(f'the reference energy of Z={key}', listed.get(key, 0.0),
                                    stored.get(key, 0.0))
    for key in ('mean', 'std'):
        if key in config.get('standardization', {}):
            listed, stored = float(config['standardization'][key]), float(getattr(model, key))
            if not values_agree(listed, stored):
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
            config = parse_config(read_bytes(config_path, what), config_path)
            weights = read_bytes(weights_path, f"the weights of the model described by "
                                                f"'{config_path}'")
        expected = config.get('weights', {}).get('sha256')
        if not check_hash or not expected or sha256_bytes(weights) == expected:
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
    config_path = osp.join(directory, CONFIG_NAME)
    weights_path = osp.join(directory, WEIGHTS_NAME)
    config, raw_weights = _read_consistent(config_path, weights_path, check_hash)
    cls = MODEL_CLASSES.get(config['model_class'])
    if cls is None:
        raise PretrainedModelError(f"'{config_path}' asks for model class "
                                   f"'{config['model_class']}', which is not registered "
                                   f"(known: {sorted(MODEL_CLASSES)})")
    state = load_state_bytes(raw_weights, weights_path)
    dtype = to_dtype(config['dtype']) if 'dtype' in config else _weights_dtype(state)
    model = _build(cls, config['model_kwargs'], config_path, state, weights_path).to(dtype)
    _check_weights(model, state, dtype, weights_path, config_path)
    model.load_state_dict(state, strict=True)
    _check_agreement(model, config, config_path, weights_path)
    if config.get('supported_elements') is not None:
        model.supported_elements = sorted(int(v) for v in config['supported_elements'])
    model.pretrained_config = config
    return model.to(map_location).eval()

