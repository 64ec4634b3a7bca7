r"""Models and datasets by name: the package's own, or ``"package.module:Class"``."""
import importlib
import inspect
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from pyg_tensorpot.training.config import MODEL_OPTIONS, ConfigError, check_constructor_kwargs


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
    """The model classes by name: the one registry of :mod:`pyg_tensorpot.hub.registry`
    (TensorNet, HIPNN and every class added with
    :func:`~pyg_tensorpot.hub.register_model_class`)."""
    from pyg_tensorpot.hub.registry import MODEL_CLASSES
    return dict(MODEL_CLASSES)


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
        model_config (dict): :obj:`name` plus the constructor's keyword arguments. The
            options :obj:`init` and :obj:`freeze` are not applied here (the weights are newly
            initialised; :func:`resolve_init` loads the pretrained ones and
            :func:`freeze_parameters` freezes); a section of only :obj:`init` builds the
            pretrained architecture.
        dtype (torch.dtype, optional): Floating-point type of the weights.
            (default: :obj:`torch.float32`)
    """
    if 'name' not in model_config and model_config.get('init') is not None:
        model_config = resolve_init(model_config)[0]
    config = {k: v for k, v in model_config.items() if k not in MODEL_OPTIONS}
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
    parts = key.rsplit('.', 1)  # 'data.test_dataset', or a CLI option ('--dataset')
    section, attribute = parts[0], parts[-1]
    prefix = attribute[:-len('dataset')] if attribute.endswith('_dataset') else ''  # test_
    args_key = f'{prefix}args'
    check_constructor_kwargs(f'{section}.{args_key}', cls, args, skip=('root', ))
    kwargs = dict(args)
    if root is not None:
        kwargs['root'] = root
    else:
        params = inspect.signature(cls.__init__).parameters
        root_param = params.get('root')
        if root_param is not None and root_param.default is inspect.Parameter.empty:
            root_key = f'{prefix}root'
            raise ConfigError(f'{section}.{root_key}: {cls.__name__} needs a folder for its raw '
                              f'and processed files')
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        # a bad keyword or value of data.args (classes taking **kwargs are not checked above)
        raise ConfigError(f'{section}.{args_key}: {cls.__name__} refuses {args}: {error}') \
            from None


def regularizers_of(model: Union[type, torch.nn.Module]) -> Tuple[str, ...]:
    """The penalty terms that :obj:`model` (a class or an instance) adds to a training loss:
    :attr:`~pyg_tensorpot.models.AtomisticModel.regularizers`; none for any other module."""
    from pyg_tensorpot.models.base import AtomisticModel
    cls = model if isinstance(model, type) else type(model)
    return tuple(cls.regularizers) if issubclass(cls, AtomisticModel) else ()


def load_init_model(init: str) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    r"""The pretrained model that :obj:`model.init` names, with its architecture.

    Args:
        init (str): A registered name (``"tensornet-ani1x"``, ``"hipnn-ts-ani1x"``), a folder
            written by :func:`~pyg_tensorpot.save_pretrained` (also a run's ``model/`` of
            :func:`~pyg_tensorpot.training.export_model`), a run folder, a Lightning
            checkpoint of a run or a Hub repository id (from the Hub cache when offline).

    Returns:
        (torch.nn.Module, dict): The model (with its weights, reference energies and
        standardisation) and its ``model`` section (:obj:`name` plus constructor arguments).

    Raises:
        ConfigError: Nothing loadable is found under that name (the message names it).
    """
    import os.path as osp

    from pyg_tensorpot.hub import CONFIG_NAME, PretrainedModelError, from_pretrained, model_kwargs
    from pyg_tensorpot.training.export import is_training_export, load_trained_model
    if osp.isfile(init) or (osp.isdir(init) and not osp.isfile(osp.join(init, CONFIG_NAME))
                            and is_training_export(init)):
        try:
            model, config = load_trained_model(init)
        except (ValueError, KeyError, RuntimeError) as error:
            raise ConfigError(f"model.init: cannot load '{init}' ({error})") from None
        section = {k: v for k, v in config.model.items() if k not in MODEL_OPTIONS}
        return model, section
    try:
        model = from_pretrained(init)
    except (PretrainedModelError, OSError, ValueError) as error:
        raise ConfigError(f'model.init: cannot load the pretrained model {init!r}: {error}') \
            from None
    return model, {'name': type(model).__name__, **model_kwargs(model)}


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def resolve_init(model_config: Dict[str, Any]) -> Tuple[Dict[str, Any], Optional[torch.nn.Module]]:
    r"""The ``model`` section of a fine-tuning run with the pretrained architecture filled in.

    Without :obj:`init` the section is returned unchanged. With it, :obj:`name` and every
    constructor argument given must agree with the pretrained model's; the ones left out are
    taken from it.

    Args:
        model_config (dict): The ``model`` section.

    Returns:
        (dict, torch.nn.Module or None): The complete section (with :obj:`init` and
        :obj:`freeze` kept, to document the run) and the pretrained model.

    Raises:
        ConfigError: The section contradicts the pretrained architecture (the message names
            the key and both values), or :obj:`init` cannot be loaded.
    """
    init = model_config.get('init')
    if init is None:
        return dict(model_config), None
    pretrained, section = load_init_model(init)
    name = model_config.get('name')
    if name is not None and model_class(name) is not type(pretrained):
        raise ConfigError(f'model.name: {name} contradicts model.init {init!r}, which is a '
                          f'{type(pretrained).__name__}; leave model.name out or set it to '
                          f'{type(pretrained).__name__}')
    for key, value in model_config.items():
        if key == 'name' or key in MODEL_OPTIONS:
            continue
        if key not in section:
            raise ConfigError(f'unknown key model.{key} for {section["name"]} (the architecture '
                              f'of model.init {init!r}); allowed keys are '
                              f'{", ".join(repr(k) for k in section if k != "name")}')
        if not _same_value(value, section[key]):
            raise ConfigError(f'model.{key}: {value!r} contradicts model.init {init!r}, which '
                              f'has {key}={section[key]!r}; a fine-tuned model keeps the '
                              f'pretrained architecture, so leave model.{key} out')
    resolved = dict(section)
    resolved.update({k: model_config[k] for k in MODEL_OPTIONS if k in model_config})
    return resolved, pretrained


def freeze_parameters(model: torch.nn.Module, prefixes: Sequence[str]) -> List[str]:
    r"""Sets :obj:`requires_grad=False` on every parameter whose name is one of
    :obj:`prefixes` or lies below one (``"layers.0"`` matches ``"layers.0.linear.weight"``,
    not ``"layers.01..."``), so that the optimiser leaves it unchanged.

    Args:
        model (torch.nn.Module): The model.
        prefixes (Sequence[str]): Parameter-name prefixes (:obj:`model.freeze`).

    Returns:
        List[str]: The names of the frozen parameters.

    Raises:
        ConfigError: A prefix matches no parameter (the message lists the model's top-level
            parameter groups).
    """
    names = [name for name, _ in model.named_parameters()]
    frozen: List[str] = []
    for prefix in prefixes:
        prefix = prefix.rstrip('.')
        matched = [n for n in names if n == prefix or n.startswith(prefix + '.')]
        if not matched:
            groups = sorted({'.'.join(n.split('.')[:2]) for n in names})
            raise ConfigError(f'model.freeze: {prefix!r} matches no parameter of '
                              f'{type(model).__name__}; its parameter groups are '
                              f'{", ".join(groups)} (or the first part of one of them)')
        frozen.extend(n for n in matched if n not in frozen)
    parameters = dict(model.named_parameters())
    for name in frozen:
        parameters[name].requires_grad_(False)
    return frozen
