r"""A trained model on disk: :func:`export_model` writes the folder of a run (``out_dir/model/``)
in the package's one weights format -- the :func:`~pyg_tensorpot.save_pretrained` files
(``model.safetensors`` + ``config.json`` + ``README.md``) plus ``training.json`` with the
run's configuration and fitted statistics -- and :func:`load_trained_model` reads it back,
as well as Lightning checkpoints and the ``model.pt`` files of earlier versions (all with
``torch.load(weights_only=True)`` where torch files are read)."""
import dataclasses
import json
import os
import os.path as osp
from typing import Any, Dict, Optional, Tuple

import torch

from pyg_tensorpot.training.builders import build_model
from pyg_tensorpot.training.config import TrainingConfig
from pyg_tensorpot.utils.dtypes import to_dtype
from pyg_tensorpot.utils.files import atomic_write_text

#: ``format`` tag of the ``model.pt`` files of earlier versions (read, no longer written).
LEGACY_MODEL_FORMAT = 'pyg-tensorpot-model'
#: The single-file export of earlier versions in a run folder.
LEGACY_MODEL_FILE = 'model.pt'
#: File of an :func:`export_model` folder with the run's configuration and statistics.
TRAINING_FILE = 'training.json'
#: ``format`` tag of :data:`TRAINING_FILE`.
TRAINING_FORMAT = 'pyg-tensorpot-training'
#: Folder of a run's :func:`export_model` export.
PRETRAINED_DIR = 'model'


def export_model(model: torch.nn.Module, config: TrainingConfig, directory: str,
                 statistics: Optional[Dict[str, Any]] = None,
                 metrics: Optional[Dict[str, Any]] = None,
                 training: Optional[Dict[str, Any]] = None) -> str:
    r"""Writes a trained model as a folder in the package's one weights format: for a
    registered model class (:func:`~pyg_tensorpot.hub.register_model_class`) the
    :func:`~pyg_tensorpot.save_pretrained` files (``model.safetensors`` + ``config.json`` +
    ``README.md``, recording the training data and the test errors), for any other class
    ``model.safetensors`` alone; beside them ``training.json`` holds the run's configuration
    and fitted statistics, so that :func:`load_trained_model` rebuilds any class. No pickle.

    Args:
        model (torch.nn.Module): The trained model.
        config (TrainingConfig): Its experiment.
        directory (str): The folder (created; files of the same names are replaced).
        statistics (dict, optional): Fitted reference energies and standardisation.
            (default: :obj:`None`)
        metrics (dict, optional): Test errors by test-set name. (default: :obj:`None`)
        training (dict, optional): Training settings to record (epochs, steps, ...).
            (default: :obj:`None`)

    Returns:
        str: The folder.
    """
    from pyg_tensorpot.hub import WEIGHTS_NAME
    from pyg_tensorpot.hub.weights import state_dict_bytes
    from pyg_tensorpot.utils.files import atomic_write_bytes, sha256_file
    os.makedirs(directory, exist_ok=True)
    if export_pretrained(model, config, directory, metrics, training) is None:
        atomic_write_bytes(state_dict_bytes(model), osp.join(directory, WEIGHTS_NAME))
    elements = getattr(model, 'supported_elements', None)
    record = {
        'format': TRAINING_FORMAT,
        'version': 1,
        'config': config.to_dict(),
        'statistics': _json_statistics(statistics),
        'supported_elements': None if elements is None else [int(z) for z in elements],
        # ties this record to its weights: a folder whose weights were replaced since
        # is refused instead of loaded with another run's configuration
        'weights': {'file': WEIGHTS_NAME,
                    'sha256': sha256_file(osp.join(directory, WEIGHTS_NAME))},
    }
    atomic_write_text(json.dumps(record, indent=1) + '\n', osp.join(directory, TRAINING_FILE))
    return directory


def _json_statistics(statistics: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if statistics is None:
        return None
    refs = statistics.get('reference_energies')
    return {'reference_energies': None if refs is None else {str(int(k)): float(v)
                                                             for k, v in refs.items()},
            'mean': float(statistics.get('mean', 0.0)), 'std': float(statistics.get('std', 1.0))}


def is_training_export(path: str) -> bool:
    """Whether :obj:`path` is a folder :func:`load_trained_model` reads: an
    :func:`export_model` folder, a run folder holding one, or a run folder of an earlier
    version holding ``model.pt``."""
    return osp.isdir(path) and any(osp.isfile(osp.join(path, *parts)) for parts in (
        (TRAINING_FILE, ), (PRETRAINED_DIR, TRAINING_FILE), (LEGACY_MODEL_FILE, )))


def _read_training_record(directory: str) -> Dict[str, Any]:
    path = osp.join(directory, TRAINING_FILE)
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ValueError(f"'{path}' is not readable JSON ({error}); export the model again "
                         f"(pyg_tensorpot.training.export_model)") from None
    if not isinstance(record, dict) or record.get('format') != TRAINING_FORMAT \
            or not isinstance(record.get('config'), dict):
        raise ValueError(f"'{path}' is not a training record of pyg-tensorpot (format "
                         f"{TRAINING_FORMAT!r} with the run's 'config')")
    if not isinstance(record.get('version'), int) or record['version'] > 1:
        raise ValueError(f"'{path}' has version {record.get('version')!r}, newer than this "
                         f"pyg-tensorpot understands (1); upgrade pyg-tensorpot")
    return record


def _load_export(directory: str, map_location: str) -> Tuple[torch.nn.Module, TrainingConfig]:
    """The model and configuration of an :func:`export_model` folder."""
    from pyg_tensorpot.hub import CONFIG_NAME, WEIGHTS_NAME, load_from_directory
    from pyg_tensorpot.hub.config import read_bytes
    from pyg_tensorpot.hub.weights import load_state_bytes
    from pyg_tensorpot.utils.files import sha256_bytes
    record = _read_training_record(directory)
    config = TrainingConfig.from_dict(record['config'])
    if osp.isfile(osp.join(directory, CONFIG_NAME)):
        # a registered class: the Hub loader checks config.json against the weights
        model = load_from_directory(directory, map_location)
    else:
        weights_path = osp.join(directory, WEIGHTS_NAME)
        raw = read_bytes(weights_path, f'the weights of the run recorded in {TRAINING_FILE}')
        expected = (record.get('weights') or {}).get('sha256')
        if expected is not None and sha256_bytes(raw) != expected:
            raise ValueError(f"'{weights_path}' does not match the SHA-256 recorded in "
                             f"'{osp.join(directory, TRAINING_FILE)}': the file is corrupt or "
                             f"was replaced; export the model again")
        model = build_model(config.model, to_dtype(config.precision))
        model.load_state_dict(load_state_bytes(raw, weights_path))
        if record.get('supported_elements') is not None:
            model.supported_elements = [int(z) for z in record['supported_elements']]
    return model.to(map_location).eval(), config


def load_trained_model(path: str, map_location: str = 'cpu'
                       ) -> Tuple[torch.nn.Module, TrainingConfig]:
    r"""Loads a trained model with its configuration from

    * a folder written by :func:`export_model` (a run's ``model/``), or the run folder;
    * a Lightning checkpoint written by :func:`train` (its weight average, else the raw
      weights), read with ``torch.load(weights_only=True)``;
    * a ``model.pt`` of earlier versions (also read with ``weights_only=True``).

    Args:
        path (str): The folder or file.
        map_location (str, optional): Device of the model. (default: :obj:`"cpu"`)

    Returns:
        (torch.nn.Module, TrainingConfig): The model in evaluation mode and its configuration.

    Raises:
        FileNotFoundError: Nothing is there.
        ValueError: The folder or file is not a trained model of pyg-tensorpot (the message
            names it).
    """
    if osp.isdir(path):
        for folder in (path, osp.join(path, PRETRAINED_DIR)):
            if osp.isfile(osp.join(folder, TRAINING_FILE)):
                return _load_export(folder, map_location)
        if not osp.isfile(osp.join(path, LEGACY_MODEL_FILE)):
            raise ValueError(f"'{path}' holds no trained model ({TRAINING_FILE} of "
                             f"export_model); a folder of save_pretrained alone loads with "
                             f"pyg_tensorpot.from_pretrained")
        path = osp.join(path, LEGACY_MODEL_FILE)
    if not osp.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling errors have many types
        raise ValueError(f"'{path}' is not a pyg-tensorpot model or checkpoint ({error})") \
            from None
    elements = None
    if isinstance(payload, dict) and payload.get('format') == LEGACY_MODEL_FORMAT:
        config_dict, state = payload['config'], payload['state_dict']
        elements = payload.get('supported_elements')
    elif isinstance(payload, dict) and 'state_dict' in payload and isinstance(
            payload.get('hyper_parameters'), dict) and 'config' in payload['hyper_parameters']:
        config_dict = payload['hyper_parameters']['config']
        full = payload['state_dict']
        prefix = 'ema.module.' if any(k.startswith('ema.module.') for k in full) else 'model.'
        state = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
    else:
        raise ValueError(f"'{path}' is neither a model exported by pyg-tensorpot nor a "
                         f'checkpoint of pyg-tensorpot train')
    config = TrainingConfig.from_dict(config_dict)
    model = build_model(config.model, to_dtype(config.precision))
    model.load_state_dict(state)
    if elements is not None:
        model.supported_elements = [int(z) for z in elements]
    model.eval()
    return model, config


def export_pretrained(model: torch.nn.Module, config: TrainingConfig, directory: str,
                      metrics: Optional[Dict[str, Any]] = None,
                      training: Optional[Dict[str, Any]] = None) -> Optional[str]:
    r"""Saves a trained model with :func:`~pyg_tensorpot.save_pretrained`
    (``model.safetensors`` + ``config.json`` + ``README.md``, no pickle), recording the
    training data and the test errors; :func:`export_model` adds the run's record.

    Args:
        model (torch.nn.Module): The trained model.
        config (TrainingConfig): Its experiment.
        directory (str): The folder.
        metrics (dict, optional): Test errors by test-set name. (default: :obj:`None`)
        training (dict, optional): Training settings to record. (default: :obj:`None`)

    Returns:
        str or None: The folder, or :obj:`None` for a model that is not one of the
        registered classes (:func:`~pyg_tensorpot.hub.register_model_class`).
    """
    from pyg_tensorpot.hub import save_pretrained
    from pyg_tensorpot.hub.registry import is_registered
    if not is_registered(type(model)):
        return None
    data = config.data
    training_data = {'dataset': data.dataset}
    if data.path is not None:
        training_data['file'] = osp.basename(data.path)
    if config.model.get('init') is not None:
        training_data['fine_tuned_from'] = config.model['init']
    settings = {'seed': config.seed, 'loss': dataclasses.asdict(config.loss),
                'optim': dataclasses.asdict(config.optim)}
    if config.model.get('freeze'):
        settings['frozen'] = list(config.model['freeze'])
    settings.update(training or {})
    return save_pretrained(model, directory, training_data=training_data,
                           metrics=metrics or {}, training=settings,
                           description=f'Trained with pyg-tensorpot train on {data.dataset}'
                           + (f' ({osp.basename(data.path)})' if data.path else '') + '.')
