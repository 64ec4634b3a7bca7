r"""Datasets, splits and training-set statistics of an experiment (no Lightning needed)."""
import logging
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor
from torch_geometric.loader import DataLoader
from torch_geometric.utils import scatter

from pyg_tensorpot.datasets.base import AtomisticInMemoryDataset
from pyg_tensorpot.models.base import AtomisticModel
from pyg_tensorpot.training.builders import build_dataset
from pyg_tensorpot.training.config import ConfigError, DataConfig

logger = logging.getLogger('pyg_tensorpot.training')


@dataclass
class PreparedData:
    r"""The datasets of an experiment.

    Args:
        dataset: The whole dataset that is split.
        split (dict): ``idx_train``, ``idx_val``, ``idx_test`` index tensors.
        train: Training subset.
        val: Validation subset.
        test (dict): Named test sets: ``"test"`` (the split's test part, if not empty) and,
            with :obj:`data.test_dataset`, the external one under its class name.
        replay: With :obj:`data.replay_dataset`, the replayed structures, which :obj:`train`
            (a :class:`~pyg_tensorpot.training.replay.ReplayMix`) holds after the training
            part of the split. (default: :obj:`None`)
    """
    dataset: Any
    split: Dict[str, Tensor]
    train: Any
    val: Any
    test: Dict[str, Any] = field(default_factory=dict)
    replay: Any = None


def structure_groups(dataset, key: str) -> Tensor:
    r"""The group of every structure of :obj:`dataset` (its per-structure integer attribute
    :obj:`key`, ``data.group_key``; -1 for none) as a :obj:`[num_structures]` long tensor.

    Raises:
        ConfigError: The structures have no such attribute, or not one integer each.
    """
    from pyg_tensorpot.training.replay import ReplayMix
    if isinstance(dataset, ReplayMix) and key == dataset.group_key:
        return dataset.groups
    values: Optional[Tensor] = None
    if isinstance(dataset, AtomisticInMemoryDataset):  # vectorised, honours index selection
        store, slices = dataset.storage(), dataset.slices
        if key in slices and torch.equal(slices[key], torch.arange(slices[key].numel())):
            values = dataset._view(store[key].reshape(-1))  # one row per structure
    if values is None:
        rows = []
        for index in range(len(dataset)):
            value = getattr(dataset[index], key, None)
            if not isinstance(value, Tensor) or value.numel() != 1:
                have = sorted(dataset[index].keys()) if hasattr(dataset[index], 'keys') else []
                raise ConfigError(f"data.group_key: the structures of {type(dataset).__name__} "
                                  f"have no per-structure '{key}' (structure {index} has "
                                  f"{have})")
            rows.append(value.reshape(1))
        values = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
    if values.is_floating_point() or values.dtype == torch.bool:
        raise ConfigError(f"data.group_key: '{key}' must hold integer group ids (-1 for "
                          f"none), got {values.dtype}")
    return values.to(torch.long)


def make_split(dataset, config: DataConfig, seed: int,
               path: Optional[str] = None) -> Dict[str, Tensor]:
    r"""The train/val/test split of a configuration (see :class:`DataConfig`), saved to
    :obj:`path` (``splits.npz``) if given; an existing file there must hold the same split.

    Uses :func:`~pyg_tensorpot.datasets.load_split`,
    :func:`~pyg_tensorpot.datasets.standard_split` or
    :func:`~pyg_tensorpot.datasets.random_split` (over whole groups with
    :obj:`data.group_key`).
    """
    from pyg_tensorpot.datasets import load_split, random_split, save_split, standard_split
    from pyg_tensorpot.datasets.splits import SPLIT_KEYS
    num = len(dataset)
    groups = (None if config.group_key is None
              else structure_groups(dataset, config.group_key).numpy())
    try:
        if config.splits_file is not None:
            split = load_split(config.splits_file, num)
            if path is not None:
                if osp.exists(path):
                    existing = load_split(path, num)
                    if not all(torch.equal(existing[k], split[k]) for k in SPLIT_KEYS):
                        raise ConfigError(f"data.splits_file: '{path}' holds a different split;"
                                          f' use another out_dir')
                else:
                    save_split(split, path)
            return split
        if config.uses_standard_split:
            try:
                return standard_split(dataset, seed=config.split_seed, path=path)
            except ValueError as error:
                if 'no standard split' not in str(error):
                    raise
                logger.info('%s has no standard split; using 80/10/10 %%, seed %d',
                            type(dataset).__name__, seed)
                return random_split(num, 0.8, 0.1, None,
                                    seed if config.split_seed is None else config.split_seed,
                                    path, groups=groups)
        sizes = [config.train_size, config.val_size, config.test_size]
        if sum(s is None for s in sizes) > 1:
            raise ConfigError('data.train_size/val_size/test_size: set at least two of them '
                              '(the unset one takes the rest), or none for the standard split')
        return random_split(num, *sizes,
                            seed=seed if config.split_seed is None else config.split_seed,
                            path=path, groups=groups)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f'data split: {error}') from None


def prepare_data(config: DataConfig, seed: int, splits_path: Optional[str] = None
                 ) -> PreparedData:
    r"""Loads the dataset(s) of a configuration and splits them.

    Args:
        config (DataConfig): The data section.
        seed (int): The run's seed (the default split seed of non-standard splits).
        splits_path (str, optional): Where to save ``splits.npz``. (default: :obj:`None`)
    """
    dataset = build_dataset(config.dataset, config.root, config.args)
    if len(dataset) == 0:
        raise ConfigError(f'data.dataset: {config.dataset} is empty')
    split = make_split(dataset, config, seed, splits_path)
    train, val, test = (dataset[split[k]] for k in ('idx_train', 'idx_val', 'idx_test'))
    if len(train) == 0:
        raise ConfigError('data: the training split is empty')
    if len(val) == 0:
        raise ConfigError('data: the validation split is empty (val_size must be > 0)')
    tests: Dict[str, Any] = {}
    if len(test) > 0:
        tests['test'] = test
    if config.test_dataset is not None:
        external = build_dataset(config.test_dataset, config.test_root, config.test_args,
                                 key='data.test_dataset')
        tests[type(external).__name__] = external
    replay = None
    if config.replay_dataset is not None:
        from pyg_tensorpot.training.replay import ReplayMix, replay_subset
        replay = build_dataset(config.replay_dataset, config.replay_root, config.replay_args,
                               key='data.replay_dataset')
        seed = seed if config.split_seed is None else config.split_seed
        replay = replay_subset(replay, config.replay_size, seed, config.replay_group_key)
        train = ReplayMix(train, replay, config.group_key, config.replay_group_key,
                          required=(config.energy_key, config.forces_key,
                                    config.stress_key))
    return PreparedData(dataset, split, train, val, tests, replay)


def _num_graphs(batch) -> int:
    return int(batch.num_graphs)


def dataset_elements(dataset) -> List[int]:
    r"""The atomic numbers present in :obj:`dataset` (an in-memory dataset, a subset of one
    or any iterable of :class:`~torch_geometric.data.Data`), sorted."""
    if isinstance(dataset, AtomisticInMemoryDataset):  # vectorised, honours index selection
        counts, elements = dataset.element_counts()
        present = counts.sum(0) > 0
        return sorted(int(e) for e, keep in zip(elements, present.tolist()) if keep)
    seen = set()
    for data in dataset:
        seen.update(int(v) for v in torch.unique(data.z))
    return sorted(seen)


def check_supported_elements(model: torch.nn.Module, datasets: Dict[str, Any],
                             what: str) -> None:
    r"""Raises :class:`ConfigError` if the structures hold elements :obj:`model` does not
    support (its :obj:`supported_elements`, else atomic numbers below :obj:`max_z`), naming
    the elements and the data set, before any training step.

    Args:
        model (torch.nn.Module): The model to train.
        datasets (dict): The data sets by name.
        what (str): The model, as the message names it (e.g. the pretrained name).
    """
    from pyg_tensorpot.utils.elements import symbol
    supported = getattr(model, 'supported_elements', None)
    max_z = getattr(model, 'max_z', None)
    if supported is None and max_z is None:
        return
    for name, dataset in datasets.items():
        present = dataset_elements(dataset)
        missing = [z for z in present if (z not in supported if supported is not None
                                          else z >= max_z)]
        if missing:
            names = ', '.join(f'{symbol(z)} (Z={z})' for z in missing)
            knows = (', '.join(symbol(z) for z in supported) if supported is not None
                     else f'Z < {max_z}')
            raise ConfigError(f'{name} holds elements {names} that {what} does not support '
                              f'(it knows {knows}); remove those structures, or train a model '
                              f'from scratch (without model.init) that includes them')


@torch.no_grad()
def _refit_reference_energies(model: torch.nn.Module, loader, key: str) -> Dict[int, float]:
    """Least-squares reference energies with the network kept: the change of every
    element's energy that best explains the model's errors on the training split, the
    minimum-norm one when elements always appear together (e.g. one molecule's MD)."""
    from pyg_tensorpot.training.inference import predict
    was_training = model.training
    model.eval()
    rows, errors = [], []
    try:
        for batch in loader:
            energy = predict(model, batch, False)[0].detach().to(torch.float64)
            target = getattr(batch, key).detach().to(torch.float64).reshape(-1)
            counts = torch.zeros(int(batch.num_graphs), model.atomref.numel(),
                                 dtype=torch.float64)
            counts.index_put_((batch.batch, batch.z.long()),
                              torch.ones(batch.z.numel(), dtype=torch.float64), accumulate=True)
            rows.append(counts)
            errors.append(target - energy.reshape(-1))
    finally:
        model.train(was_training)
    counts = torch.cat(rows)
    present = (counts.sum(0) > 0).nonzero().flatten()
    matrix = counts[:, present]
    delta = torch.linalg.lstsq(matrix, torch.cat(errors).unsqueeze(-1), driver='gelsd')
    old = model.atomref.detach().to(torch.float64)
    # elements absent from the training split keep their pretrained energies
    refs = {int(z): float(old[z]) for z in old.nonzero().flatten().tolist()}
    refs.update({int(z): float(old[z] + d)
                 for z, d in zip(present.tolist(), delta.solution.flatten().tolist())})
    return refs


def _published_reference_energies(dataset, train, alternatives: str) -> Dict[int, float]:
    # data.reference_energies: dataset, the dataset's own atomref() table
    source = dataset if dataset is not None else train
    getter = getattr(source, 'atomref', None)
    refs = getter() if callable(getter) else None
    if not refs:
        raise ConfigError(f'data.reference_energies: {type(source).__name__} publishes no '
                          f'reference energies; use {alternatives}')
    return refs


@torch.no_grad()
def fit_training_statistics(model: torch.nn.Module, train, config: DataConfig,
                            dataset=None, batch_size: int = 4096,
                            pretrained: bool = False) -> Dict[str, Any]:
    r"""Fits reference energies and the standardisation on the training split only and sets
    them on :obj:`model`:

    1. :obj:`reference_energies`: ``"fit"`` uses the model's own hierarchical initialisation
       :meth:`~pyg_tensorpot.models.AtomisticModel.fit_reference_energies` (the least-squares
       fit, or the model's own initialisation: HIP-NN's hierarchical one);
       ``"dataset"`` the dataset's published :meth:`atomref`; a mapping is used as given.
    2. :obj:`standardize`: the mean :math:`\mu` and standard deviation :math:`\sigma` of the
       training energies minus the reference energies become :meth:`set_standardization`
       (:obj:`energy_std`, if given, replaces the fitted :math:`\sigma`; without
       :obj:`standardize` it is used with :math:`\mu = 0`).

    With :obj:`pretrained` (fine-tuning from :obj:`model.init`) the network's standardisation
    is kept (it sets the scale its weights were trained for), and :obj:`"fit"` or
    :obj:`"refit"` changes the reference energies by the least-squares fit of the
    pretrained model's errors on the training split (the network kept); :obj:`"pretrained"`
    keeps them.

    Args:
        model (torch.nn.Module): The model; its statistics are set in place.
        train: The training split.
        config (DataConfig): The data section.
        dataset: The whole dataset (for :obj:`"dataset"`). (default: :obj:`None`)
        batch_size (int, optional): Structures per batch of the fits. (default: :obj:`4096`)
        pretrained (bool, optional): :obj:`model` holds pretrained weights.
            (default: :obj:`False`)

    Returns:
        dict: :obj:`reference_energies` (``{Z: eV}`` or :obj:`None`), :obj:`mean`, :obj:`std`.
    """
    key = config.energy_key
    loader = DataLoader(train, batch_size=batch_size, shuffle=False)
    first = next(iter(loader))
    if getattr(first, key, None) is None:
        if config.reference_energies != 'none' or config.standardize:
            raise ConfigError(f"data: the training structures have no '{key}' (data.energy_key);"
                              f' set data.reference_energies: none and data.standardize: false')
        return {'reference_energies': None, 'mean': 0.0, 'std': 1.0}

    choice = config.reference_energies
    if choice == 'pretrained' and not pretrained:
        raise ConfigError("data.reference_energies: 'pretrained' keeps the reference energies "
                          "of model.init, but no model.init is given; use 'fit'")
    if pretrained:
        if config.energy_std is not None:
            raise ConfigError('data.energy_std: a fine-tuned model (model.init) keeps the '
                              'pretrained standardisation; leave data.energy_std out')
        atomref = model.atomref.detach().to(torch.float64)
        refs = {int(z): float(atomref[z]) for z in atomref.nonzero().flatten().tolist()}
        if choice in ('fit', 'refit'):
            refs = _refit_reference_energies(
                model, DataLoader(train, batch_size=config.inference_batch_size), key)
            model.set_atomref(refs)
        elif choice == 'dataset' or isinstance(choice, dict):
            if choice == 'dataset':
                choice = _published_reference_energies(dataset, train,
                                                       "'refit' or 'pretrained'")
            refs = dict(choice)
            model.set_atomref(refs)
        elif choice == 'none':
            refs = None
            model.set_atomref({})
        return {'reference_energies': refs, 'mean': float(model.mean), 'std': float(model.std)}
    if choice == 'refit':
        choice = 'fit'
    refs: Optional[Dict[int, float]] = None
    if choice != 'none':
        if isinstance(choice, dict):
            refs = dict(choice)
        elif choice == 'dataset':
            refs = _published_reference_energies(
                dataset, train, "'fit' (least squares on the training split) or give {Z: eV}")
        if not isinstance(model, AtomisticModel):
            raise ConfigError(f'data.reference_energies: {type(model).__name__} is not an '
                              f"AtomisticModel and has no set_atomref(); use 'none'")
        if choice == 'fit':
            refs = model.fit_reference_energies(loader, energy_key=key)
        else:
            model.set_atomref(refs)
    mean, std = 0.0, 1.0
    if config.standardize or config.energy_std is not None:
        if not isinstance(model, AtomisticModel):
            option = 'standardize' if config.standardize else 'energy_std'
            raise ConfigError(f'data.{option}: {type(model).__name__} is not an '
                              f'AtomisticModel and has no set_standardization(); use '
                              f'data.standardize: false and '
                              f'data.energy_std: null')
    if config.standardize:
        ref_table = torch.zeros(256, dtype=torch.float64)
        for number, value in (refs or {}).items():
            ref_table[int(number)] = float(value)
        residuals: List[Tensor] = []
        for batch in loader:
            energy = getattr(batch, key).detach().to(torch.float64).reshape(-1)
            baseline = scatter(ref_table[batch.z.long()], batch.batch, 0,
                               dim_size=_num_graphs(batch), reduce='sum')
            residuals.append(energy - baseline)
        values = torch.cat(residuals)
        mean = float(values.mean())
        std = float(values.std()) if values.numel() > 1 else 1.0
        if not std > 0 or not torch.isfinite(torch.tensor(std)):
            std = 1.0
    if config.energy_std is not None:
        std = float(config.energy_std)
    if config.standardize or config.energy_std is not None:
        model.set_standardization(mean, std)
    return {'reference_energies': refs, 'mean': mean, 'std': std}


def describe_statistics(stats: Dict[str, Any]) -> str:
    """One line per fitted quantity, for the log."""
    from pyg_tensorpot.utils.elements import symbol
    lines = []
    refs = stats.get('reference_energies')
    if refs:
        text = ', '.join(f'{symbol(int(z))} {e:.4f}' for z, e in sorted(refs.items()))
        lines.append(f'reference energies (eV): {text}')
    lines.append(f"standardisation: mean {stats['mean']:.6f} eV, std {stats['std']:.6f} eV")
    return '\n'.join(lines)

