r"""Models and datasets by name: the package's own, or ``"package.module:Class"``."""
import importlib
import inspect
from typing import Any, Dict, Optional

import torch

from pyg_tensorpot.training.config import ConfigError, check_constructor_kwargs


def _import_path(path: str, key: str):
    module_name, _, attr = path.partition(':')
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"{key}: cannot import module '{module_name}' ({error})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{key}: module '{module_name}' has no '{attr}'") from None


def _registry(module_name: str, base: type) -> Dict[str, type]:
    module = importlib.import_module(module_name)
    out = {}
    for name in getattr(module, '__all__', dir(module)):
        obj = getattr(module, name, None)
        if inspect.isclass(obj) and issubclass(obj, base) and not inspect.isabstract(obj):
            out[name] = obj
    return out


def model_registry() -> Dict[str, type]:
    """The models of :mod:`pyg_tensorpot.models` by class name."""
    from pyg_tensorpot.models import AtomisticModel
    registry = _registry('pyg_tensorpot.models', torch.nn.Module)
    return {k: v for k, v in registry.items() if v is not AtomisticModel}


def dataset_registry() -> Dict[str, type]:
    """The datasets of :mod:`pyg_tensorpot.datasets` by class name."""
    from torch_geometric.data import Dataset
    from pyg_tensorpot.datasets import AtomisticInMemoryDataset
    registry = _registry('pyg_tensorpot.datasets', Dataset)
    return {k: v for k, v in registry.items() if v is not AtomisticInMemoryDataset}


def _lookup(name: str, registry: Dict[str, type], key: str, what: str) -> type:
    if ':' in name:
        return _import_path(name, key)
    if name in registry:
        return registry[name]
    folded = {k.lower().replace('-', '').replace('_', ''): v for k, v in registry.items()}
    wanted = name.lower().replace('-', '').replace('_', '')
    if wanted in folded:
        return folded[wanted]
    raise ConfigError(f"{key}: unknown {what} {name!r}; choose one of "
                      f"{', '.join(sorted(registry))}, or give 'package.module:Class'")


def model_class(name: str) -> type:
    """The model class called :obj:`name`."""
    return _lookup(name, model_registry(), 'model.name', 'model')


def dataset_class(name: str, key: str = 'data.dataset') -> type:
    """The dataset class called :obj:`name`."""
    return _lookup(name, dataset_registry(), key, 'dataset')


def build_model(model_config: Dict[str, Any], dtype: torch.dtype = torch.float32
                ) -> torch.nn.Module:
    r"""Instantiates the model of a configuration's ``model`` section.

    Args:
        model_config (dict): :obj:`name` plus the constructor's keyword arguments.
        dtype (torch.dtype, optional): Floating-point type of the weights.
            (default: :obj:`torch.float32`)
    """
    config = dict(model_config)
    name = config.pop('name')
    cls = model_class(name)
    check_constructor_kwargs('model', cls, config)
    try:
        model = cls(**config)
    except (TypeError, ValueError) as error:
        raise ConfigError(f'model: cannot build {cls.__name__} from {config}: {error}') from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f'model.name: {name} is not a torch.nn.Module')
    return model.to(dtype)


def build_dataset(name: str, root: Optional[str], args: Dict[str, Any],
                  key: str = 'data.dataset'):
    r"""Instantiates a dataset by name (the ``data`` section's :obj:`dataset`, :obj:`root`
    and :obj:`args`)."""
    cls = dataset_class(name, key)
    section = key.rsplit('.', 1)[0]
    args_key = 'test_args' if key.endswith('test_dataset') else 'args'
    check_constructor_kwargs(f'{section}.{args_key}', cls, args, skip=('root', ))
    kwargs = dict(args)
    if root is not None:
        kwargs['root'] = root
    else:
        params = inspect.signature(cls.__init__).parameters
        root_param = params.get('root')
        if root_param is not None and root_param.default is inspect.Parameter.empty:
            root_key = 'test_root' if key.endswith('test_dataset') else 'root'
            raise ConfigError(f'{section}.{root_key}: {cls.__name__} needs a folder for its raw '
                              f'and processed files')
    return cls(**kwargs)


def supports_keyword(fn, name: str) -> bool:
    """Whether :obj:`fn` names the keyword argument :obj:`name` explicitly (a catch-all
    ``**kwargs`` does not count: it does not promise to honour it)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
