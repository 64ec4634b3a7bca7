"""Experiment configuration: one YAML file per experiment, checked key by key.

Length: over 500 lines because every key of every section is declared, documented and
checked here (one place for the CLI, YAML files and the fuzz tests).

A configuration has five sections and three top-level keys::

    seed: 12345               # model initialisation, data order, default split seed
    precision: 32             # 32 or 64 (float32 or float64 weights and data)
    out_dir: runs/rmd17       # checkpoints, logs, splits.npz, plots
    model:    {name: TensorNet, hidden_channels: 128, ...}   # name + constructor arguments
    data:     {dataset: RMD17, root: data/rmd17, args: {molecule: aspirin}, ...}
    loss:     {energy_weight: 0.5, force_weight: 0.5, ...}
    optim:    {lr: 1.0e-3, warmup_steps: 500, ...}
    trainer:  {max_epochs: 10000, early_stopping_patience: 300, ...}

Every key is documented on the dataclass of its section (:class:`DataConfig`,
:class:`LossConfig`, :class:`OptimConfig`, :class:`TrainerConfig`); the ``model`` section is
``name`` plus the keyword arguments of the model's constructor. Unknown keys (also the
model's), bad values (wrong types, NaN or infinite numbers, YAML dates or binary) and
unreadable files or overrides raise :class:`ConfigError`, naming the key and the allowed
values, before any data is read.
"""
import copy
import dataclasses
import inspect
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

from pyg_tensorpot.utils.dtypes import PRECISIONS


def _yaml():
    try:
        import yaml
    except ImportError:
        raise ImportError("reading and writing configuration files needs PyYAML: pip install "
                          "'pyg-tensorpot[train]' (or pip install pyyaml)") from None
    return yaml


class ConfigError(ValueError):
    """A configuration key or value is not valid (the message names the key)."""


def _fmt(values: Sequence[Any]) -> str:
    return ', '.join(repr(v) for v in values)


def _check_choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
    # type first: 32.0 == 32 and True == 1 would otherwise pass for 32 and 1
    if not any(type(value) is type(option) and value == option for option in allowed):
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {_fmt(allowed)}")


def _check_string(key: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value:
        expected = 'a non-empty string' + (' or null' if allow_none else '')
        raise ConfigError(f'{key}: expected {expected}, got {value!r}')


#: Largest seed (NumPy and Lightning take seeds in [0, 2**32 - 1]).
MAX_SEED = 2**32 - 1
#: Largest atomic number of a reference energy.
MAX_ATOMIC_NUMBER = 118


def _check_number(key: str, value: Any, minimum: Optional[float] = None,
                  maximum: Optional[float] = None, integer: bool = False,
                  allow_none: bool = False, strict_minimum: bool = False) -> None:
    if value is None and allow_none:
        return
    kinds = (int, ) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = 'an integer' if integer else 'a number'
        raise ConfigError(f'{key}: expected {kind}, got {value!r}')
    if not math.isfinite(value):
        raise ConfigError(f'{key}: expected a finite number, got {value!r}')
    if minimum is not None and (value < minimum or (strict_minimum and value == minimum)):
        relation = '>' if strict_minimum else '>='
        raise ConfigError(f'{key}: must be {relation} {minimum}, got {value!r}')
    if maximum is not None and value > maximum:
        raise ConfigError(f'{key}: must be <= {maximum}, got {value!r}')


#: The string values of ``data.reference_energies``.
REFERENCE_ENERGY_CHOICES = ('fit', 'dataset', 'none', 'refit', 'pretrained')
#: File extensions of ``data.path`` and the dataset class that reads them.
DATA_FILE_DATASETS = {'.xyz': 'ExtXYZDataset', '.extxyz': 'ExtXYZDataset',
                      '.db': 'ASEDatabaseDataset', '.json': 'ASEDatabaseDataset',
                      '.aselmdb': 'ASEDatabaseDataset'}
#: Keys of the ``model`` section that are not constructor arguments: ``init`` (the
#: pretrained model to fine-tune) and ``freeze`` (parameter-name prefixes kept fixed).
MODEL_OPTIONS = ('init', 'freeze')


@dataclass
class DataConfig:
    r"""The ``data`` section: which dataset, how it is split, batched and referenced.

    Args:
        dataset (str): A dataset of :mod:`pyg_tensorpot.datasets` (e.g. :obj:`"RMD17"`,
            :obj:`"QM9"`, :obj:`"ANI1x"`, :obj:`"COMP6"`, :obj:`"SPICE"`,
            :obj:`"MD17EthanolSample"`) or :obj:`"package.module:Class"` for your own PyG
            dataset of :class:`~torch_geometric.data.Data` with :obj:`z`, :obj:`pos` (Angstrom),
            :obj:`energy` (eV, shape :obj:`[1]`) and optionally :obj:`forces` (eV/Angstrom).
            (default: :obj:`"MD17EthanolSample"`)
        root (str, optional): Dataset folder (raw and processed files). (default: :obj:`None`)
        args (dict, optional): Further keyword arguments of the dataset class, e.g.
            :obj:`{molecule: aspirin}`, or :obj:`{energy_unit: kcal/mol}` for a file of
            :obj:`path`. (default: :obj:`{}`)
        path (str, optional): Your own structures: an extended-XYZ file (``.xyz``,
            ``.extxyz``: :class:`~pyg_tensorpot.datasets.ExtXYZDataset`) or an ASE database
            (``.db``, ``.json``, ``.aselmdb``:
            :class:`~pyg_tensorpot.datasets.ASEDatabaseDataset`), chosen by extension; it
            sets :obj:`dataset` and :obj:`args.path`, and :obj:`root` defaults to
            ``out_dir/data`` (the processed file beside the run). (default: :obj:`None`)
        test_dataset (str, optional): A separate test set (e.g. COMP6 after ANI-1x training);
            when given, the whole of it is the test set. (default: :obj:`None`)
        test_root (str, optional): Folder of the test set. (default: :obj:`None`)
        test_args (dict, optional): Keyword arguments of the test set class.
            (default: :obj:`{}`)
        train_size (int or float, optional): Training structures (a float is a fraction). With
            all three sizes unset, the dataset's standard split of the literature is used
            (:func:`~pyg_tensorpot.datasets.standard_split`). (default: :obj:`None`)
        val_size (int or float, optional): Validation structures. (default: :obj:`None`)
        test_size (int or float, optional): Test structures; unset takes the rest.
            (default: :obj:`None`)
        split_seed (int, optional): Seed of the random split; defaults to the standard
            protocol's seed (standard split) or to the run's :obj:`seed`. (default: :obj:`None`)
        splits_file (str, optional): A saved ``splits.npz`` (``idx_train/idx_val/idx_test``) to
            use instead. (default: :obj:`None`)
        batch_size (int, optional): Training structures per optimiser step (the global batch,
            divided among the processes of a DDP run). (default: :obj:`32`)
        inference_batch_size (int, optional): Structures per validation/test batch.
            (default: :obj:`64`)
        num_workers (int, optional): Data-loader worker processes. (default: :obj:`0`)
        energy_key (str, optional): Attribute with the energies. (default: :obj:`"energy"`)
        forces_key (str, optional): Attribute with the forces. (default: :obj:`"forces"`)
        stress_key (str, optional): Attribute with the stress :obj:`[1, 3, 3]` (eV/A^3, ASE's
            sign) of periodic structures. (default: :obj:`"stress"`)
        reference_energies (str or dict, optional): Per-element reference energies that the
            model adds to its output: :obj:`"fit"` (least squares on the training split),
            :obj:`"dataset"` (the dataset's published values), :obj:`"none"`, or
            :obj:`{Z: eV}`. When fine-tuning (:obj:`model.init`), :obj:`"refit"` (as
            :obj:`"fit"`) refits them by least squares on the new training split with the
            pretrained network kept (for data of another level of theory), and
            :obj:`"pretrained"` keeps the pretrained ones. (default: :obj:`"fit"`)
        standardize (bool, optional): Scale the per-atom outputs by the standard deviation of
            the training energies (after reference energies) and shift the molecular energies
            by their mean. (default: :obj:`True`)
        energy_std (float, optional): A fixed :math:`\sigma` in eV instead of the fitted one
            (with :obj:`standardize: false` the mean stays 0), e.g. 0.0433641 = 1 kcal/mol,
            the output unit of hippynn's ANI-1x networks. (default: :obj:`None`)
        group_key (str, optional): Per-structure integer attribute naming the group a
            structure belongs to (-1 for none), e.g. :obj:`group`, the dissociation scan of
            :class:`~pyg_tensorpot.datasets.distillation.DistillationDataset`. Every group
            then lies in one part of a random split and in one training batch (batches hold
            :obj:`batch_size` structures or up to one group more), as
            :obj:`loss.relative_energy_weight` needs; such batches run in one process.
            (default: :obj:`None`)
        replay_dataset (str, optional): A second dataset whose structures join the training
            split (never validation or test), e.g. the teacher-labelled conformations a
            pretrained model was distilled on, replayed while it is fine-tuned on new labels so
            that it keeps what it learnt (:class:`~pyg_tensorpot.training.replay.ReplayMix`;
            the structures are served with the attributes both datasets have). Its energies
            must be of the same level of theory and reference. (default: :obj:`None`)
        replay_root (str, optional): Folder of the replayed dataset. (default: :obj:`None`)
        replay_args (dict, optional): Keyword arguments of the replayed dataset class.
            (default: :obj:`{}`)
        replay_size (int, optional): Replay this many of its structures, drawn once with the
            split seed (whole groups of :obj:`replay_group_key`); all of them if unset.
            (default: :obj:`None`)
        replay_group_key (str, optional): The group attribute of the replayed structures
            (e.g. :obj:`group`, the dissociation scans of a
            :class:`~pyg_tensorpot.datasets.distillation.DistillationDataset`); their groups
            join those of :obj:`group_key` under new ids. (default: :obj:`None`)
    """
    dataset: str = 'MD17EthanolSample'
    root: Optional[str] = None
    args: Dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None
    test_dataset: Optional[str] = None
    test_root: Optional[str] = None
    test_args: Dict[str, Any] = field(default_factory=dict)
    train_size: Optional[Union[int, float]] = None
    val_size: Optional[Union[int, float]] = None
    test_size: Optional[Union[int, float]] = None
    split_seed: Optional[int] = None
    splits_file: Optional[str] = None
    batch_size: int = 32
    inference_batch_size: int = 64
    num_workers: int = 0
    energy_key: str = 'energy'
    forces_key: str = 'forces'
    stress_key: str = 'stress'
    reference_energies: Union[str, Dict[int, float]] = 'fit'
    standardize: bool = True
    energy_std: Optional[float] = None
    group_key: Optional[str] = None
    replay_dataset: Optional[str] = None
    replay_root: Optional[str] = None
    replay_args: Dict[str, Any] = field(default_factory=dict)
    replay_size: Optional[int] = None
    replay_group_key: Optional[str] = None

    def validate(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError('data.dataset: name a dataset, e.g. RMD17, QM9, ANI1x, COMP6, '
                              'SPICE or MD17EthanolSample')
        for key in ('root', 'path', 'test_dataset', 'test_root', 'splits_file', 'group_key',
                    'replay_dataset', 'replay_root', 'replay_group_key'):
            _check_string(f'data.{key}', getattr(self, key), allow_none=True)
        _check_number('data.replay_size', self.replay_size, 1, integer=True, allow_none=True)
        if self.replay_dataset is None and (self.replay_size is not None or self.replay_args
                                            or self.replay_root is not None
                                            or self.replay_group_key is not None):
            raise ConfigError('data.replay_size/replay_args/replay_root/replay_group_key: set '
                              'data.replay_dataset, the dataset they describe')
        if self.replay_group_key is not None and self.group_key is None:
            raise ConfigError('data.replay_group_key: the replayed groups join those of '
                              'data.group_key; set it too')
        for key in ('energy_key', 'forces_key'):
            _check_string(f'data.{key}', getattr(self, key))
        for key in ('args', 'test_args', 'replay_args'):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(f'data.{key}: expected a mapping of keyword arguments, got '
                                  f'{getattr(self, key)!r}')
            for name in getattr(self, key):
                if not isinstance(name, str) or not name.isidentifier():
                    raise ConfigError(f'data.{key}: {name!r} is not a keyword argument name')
        for key in ('train_size', 'val_size', 'test_size'):
            value = getattr(self, key)
            _check_number(f'data.{key}', value, 0, allow_none=True)
            if isinstance(value, float) and value > 1:
                raise ConfigError(f'data.{key}: a fraction must lie in [0, 1], got {value}; '
                                  f'write a number of structures as an integer')
        _check_number('data.split_seed', self.split_seed, 0, MAX_SEED, integer=True,
                      allow_none=True)
        _check_number('data.batch_size', self.batch_size, 1, integer=True)
        _check_number('data.inference_batch_size', self.inference_batch_size, 1, integer=True)
        _check_number('data.num_workers', self.num_workers, 0, integer=True)
        ref = self.reference_energies
        if isinstance(ref, dict):
            values = {}
            for number, energy in ref.items():
                if isinstance(number, str) and number.strip().isdigit():
                    number = int(number)
                if isinstance(number, bool) or not isinstance(number, int) \
                        or not 0 < number <= MAX_ATOMIC_NUMBER:
                    raise ConfigError(f'data.reference_energies: a mapping must be {{atomic '
                                      f'number 1..{MAX_ATOMIC_NUMBER}: energy in eV}}, got key '
                                      f'{number!r}')
                _check_number(f'data.reference_energies.{number}', energy)
                values[number] = float(energy)
            self.reference_energies = values
        else:
            _check_choice('data.reference_energies', ref, REFERENCE_ENERGY_CHOICES)
        if not isinstance(self.standardize, bool):
            raise ConfigError(f'data.standardize: expected true or false, got '
                              f'{self.standardize!r}')
        _check_number('data.energy_std', self.energy_std, 0, allow_none=True,
                      strict_minimum=True)

    @property
    def uses_standard_split(self) -> bool:
        return (self.splits_file is None and self.train_size is None and self.val_size is None
                and self.test_size is None)


@dataclass
class LossConfig:
    r"""The ``loss`` section: :math:`L = w_E L_E + w_F L_F + w_S L_S + w_R L_R
    + \sum_k w_k R_k`.

    Args:
        energy_weight (float, optional): :math:`w_E`. (default: :obj:`1.0`)
        force_weight (float, optional): :math:`w_F`; 0 trains on energies only (no forces are
            computed during training). (default: :obj:`100.0`)
        type (str, optional): :obj:`"mse"` (mean squared error), :obj:`"mae"` (mean
            absolute error) or :obj:`"rmse+mae"` (their sum, hippynn's ANI-1x objective), for
            energies and forces alike. (default: :obj:`"mse"`)
        per_atom_energy (bool, optional): Compare energies per atom, :math:`(E - \hat E)/N`,
            instead of per molecule. (default: :obj:`False`)
        energy_loss_ema (float, optional): torchmd-net's ``ema_alpha_y``: with :math:`\alpha<1`
            the training energy loss is smoothed over batches, :math:`\alpha L +
            (1-\alpha)\,\mathrm{EMA}`, which also scales its gradient by :math:`\alpha`; 1
            switches it off. (default: :obj:`1.0`)
        stress_weight (float, optional): :math:`w_S`, the weight of the error of the stress
            tensor (eV/A^3, every component) of periodic structures that carry one; 0 computes
            no stress. (default: :obj:`0.0`)
        regularization (dict, optional): :math:`w_k` by name of the penalty terms
            :math:`R_k` the model adds (its
            :attr:`~pyg_tensorpot.models.AtomisticModel.regularizers`; a name the model does
            not add is an error). HIP-NN adds :obj:`hierarchicality` and :obj:`l2` (hippynn's
            ``l2reg``): hippynn weights the hierarchicality by 1 next to RMSE + MAE losses in
            kcal/mol (:obj:`type: rmse+mae`, energy and force weights 23.06, see
            ``examples/HIPNN-ANI1x.yaml``); next to an MSE in eV² a weight of 1 would outweigh
            the energy error and shift the energies. The former keys
            :obj:`hierarchicality_weight` and :obj:`l2_weight` are read as these entries (with
            a :class:`FutureWarning`). (default: :obj:`{}`)
        relative_energy_weight (float, optional): :math:`w_R`, the weight of
            :math:`L_R = \ell(\Delta_i - \langle\Delta\rangle_{g(i)})`, the error of the
            energies relative to the mean error of their group :math:`g(i)` (eV per molecule,
            :math:`\Delta = E - \hat E`, over the structures in a group): the
            conformational energies of a dissociation scan, the quantity S66x8 measures.
            Needs :obj:`data.group_key`. (default: :obj:`0.0`)
    """
    energy_weight: float = 1.0
    force_weight: float = 100.0
    type: str = 'mse'
    per_atom_energy: bool = False
    energy_loss_ema: float = 1.0
    stress_weight: float = 0.0
    regularization: Dict[str, float] = field(default_factory=dict)
    relative_energy_weight: float = 0.0

    def validate(self) -> None:
        _check_number('loss.energy_weight', self.energy_weight, 0)
        _check_number('loss.relative_energy_weight', self.relative_energy_weight, 0)
        _check_number('loss.force_weight', self.force_weight, 0)
        _check_number('loss.stress_weight', self.stress_weight, 0)
        if not isinstance(self.regularization, dict):
            raise ConfigError(f'loss.regularization: expected a mapping of penalty-term names '
                              f'to weights, e.g. {{hierarchicality: 1.0}}, got '
                              f'{self.regularization!r}')
        for name, weight in self.regularization.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigError(f'loss.regularization: {name!r} is not a penalty-term name')
            _check_number(f'loss.regularization.{name}', weight, 0)
        if (self.energy_weight == 0 and self.force_weight == 0 and self.stress_weight == 0
                and self.relative_energy_weight == 0):
            raise ConfigError('loss: energy_weight, force_weight, stress_weight and '
                              'relative_energy_weight are all 0; nothing would be trained')
        _check_choice('loss.type', self.type, ('mse', 'mae', 'rmse+mae'))
        if not isinstance(self.per_atom_energy, bool):
            raise ConfigError(f'loss.per_atom_energy: expected true or false, got '
                              f'{self.per_atom_energy!r}')
        _check_number('loss.energy_loss_ema', self.energy_loss_ema, 0, 1, strict_minimum=True)


@dataclass
class OptimConfig:
    r"""The ``optim`` section: AdamW, linear warm-up, ReduceLROnPlateau, clipping, weight EMA.

    Args:
        lr (float, optional): Peak learning rate. (default: :obj:`1e-4`)
        weight_decay (float, optional): AdamW weight decay. (default: :obj:`0.0`)
        warmup_steps (int, optional): Optimiser steps of linear warm-up from
            :math:`\mathrm{lr}/\mathrm{warmup\_steps}` to :obj:`lr`. (default: :obj:`1000`)
        lr_factor (float, optional): Factor of ReduceLROnPlateau (on the validation loss).
            (default: :obj:`0.5`)
        lr_patience (int, optional): Epochs without improvement before the learning rate is
            reduced. (default: :obj:`5`)
        lr_min (float, optional): Lower bound of the learning rate. (default: :obj:`1e-7`)
        gradient_clip (float, optional): Maximum gradient norm; 0 disables clipping.
            (default: :obj:`100.0`)
        ema_decay (float, optional): Decay of the exponential moving average of the weights
            that is validated, tested and exported (ramped up as :math:`\min(d, (1+t)/(10+t))`
            over the first steps); 0 disables it. (default: :obj:`0.999`)
    """
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    lr_factor: float = 0.5
    lr_patience: int = 5
    lr_min: float = 1e-7
    gradient_clip: float = 100.0
    ema_decay: float = 0.999

    def validate(self) -> None:
        _check_number('optim.lr', self.lr, 0, strict_minimum=True)
        _check_number('optim.weight_decay', self.weight_decay, 0)
        _check_number('optim.warmup_steps', self.warmup_steps, 0, integer=True)
        _check_number('optim.lr_factor', self.lr_factor, 0, 1, strict_minimum=True)
        if self.lr_factor == 1:
            raise ConfigError('optim.lr_factor: must be < 1 (1 would never reduce the rate)')
        _check_number('optim.lr_patience', self.lr_patience, 0, integer=True)
        _check_number('optim.lr_min', self.lr_min, 0)
        _check_number('optim.gradient_clip', self.gradient_clip, 0)
        _check_number('optim.ema_decay', self.ema_decay, 0)
        if self.ema_decay >= 1:
            raise ConfigError(f'optim.ema_decay: must be in [0, 1), got {self.ema_decay}')


MONITORS = ('val_loss', 'val_energy_mae', 'val_energy_rmse', 'val_forces_mae',
            'val_forces_rmse', 'val_relative_energy_mae')


@dataclass
class TrainerConfig:
    r"""The ``trainer`` section: when to stop, where to run, how often to log and checkpoint.

    Args:
        max_epochs (int, optional): Maximum number of epochs. (default: :obj:`500`)
        max_steps (int, optional): Maximum number of optimiser steps; -1 for no limit.
            (default: :obj:`-1`)
        max_time (float, optional): Wall-clock limit in minutes (a run stopped by it is not
            reproducible); :obj:`None` for none. (default: :obj:`None`)
        early_stopping_patience (int, optional): Epochs without improvement of the monitored
            validation metric before training stops; 0 disables early stopping.
            (default: :obj:`30`)
        monitor (str, optional): The validation metric that drives ReduceLROnPlateau, early
            stopping and the best checkpoint: :obj:`"val_loss"` (the training objective on
            the validation set), or :obj:`"val_energy_mae"`, :obj:`"val_energy_rmse"`,
            :obj:`"val_forces_mae"`, :obj:`"val_forces_rmse"`, or, with
            :obj:`data.group_key`, :obj:`"val_relative_energy_mae"` (energies relative to their
            group's mean). (default: :obj:`"val_loss"`)
        accelerator (str, optional): :obj:`"auto"`, :obj:`"cpu"` or :obj:`"gpu"`.
            (default: :obj:`"auto"`)
        devices (int or str, optional): Devices per node (:obj:`"auto"` for all).
            (default: :obj:`1`)
        num_nodes (int, optional): Number of nodes. (default: :obj:`1`)
        strategy (str, optional): :obj:`"auto"` or :obj:`"ddp"` (Lightning's
            DistributedDataParallel; the default with more than one device).
            (default: :obj:`"auto"`)
        check_val_every_n_epoch (int, optional): Validation interval in epochs.
            (default: :obj:`1`)
        log_every_n_steps (int, optional): Logging interval of the training loss.
            (default: :obj:`50`)
        checkpoint_every_n_steps (int, optional): Also write ``last.ckpt`` every this many
            optimiser steps (it is always written after every validation). (default: :obj:`None`)
        progress_bar (bool, optional): Show a progress bar. (default: :obj:`True`)
        num_threads (int, optional): CPU threads of torch (:obj:`None` leaves torch's default).
            (default: :obj:`None`)
    """
    max_epochs: int = 500
    max_steps: int = -1
    max_time: Optional[float] = None
    early_stopping_patience: int = 30
    monitor: str = 'val_loss'
    accelerator: str = 'auto'
    devices: Union[int, str] = 1
    num_nodes: int = 1
    strategy: str = 'auto'
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 50
    checkpoint_every_n_steps: Optional[int] = None
    progress_bar: bool = True
    num_threads: Optional[int] = None

    def validate(self) -> None:
        _check_number('trainer.max_epochs', self.max_epochs, 1, integer=True)
        _check_number('trainer.max_steps', self.max_steps, -1, integer=True)
        if self.max_steps == 0:
            raise ConfigError('trainer.max_steps: must be -1 (no limit) or positive, got 0')
        _check_number('trainer.max_time', self.max_time, 0, allow_none=True,
                      strict_minimum=True)
        _check_number('trainer.early_stopping_patience', self.early_stopping_patience, 0,
                      integer=True)
        _check_choice('trainer.monitor', self.monitor, MONITORS)
        _check_choice('trainer.accelerator', self.accelerator, ('auto', 'cpu', 'gpu', 'cuda'))
        if self.devices != 'auto':
            _check_number('trainer.devices', self.devices, 1, integer=True)
        _check_number('trainer.num_nodes', self.num_nodes, 1, integer=True)
        _check_choice('trainer.strategy', self.strategy, ('auto', 'ddp'))
        _check_number('trainer.check_val_every_n_epoch', self.check_val_every_n_epoch, 1,
                      integer=True)
        _check_number('trainer.log_every_n_steps', self.log_every_n_steps, 1, integer=True)
        _check_number('trainer.checkpoint_every_n_steps', self.checkpoint_every_n_steps, 1,
                      integer=True, allow_none=True)
        if not isinstance(self.progress_bar, bool):
            raise ConfigError(f'trainer.progress_bar: expected true or false, got '
                              f'{self.progress_bar!r}')
        _check_number('trainer.num_threads', self.num_threads, 1, integer=True,
                      allow_none=True)


_SECTIONS = {'data': DataConfig, 'loss': LossConfig, 'optim': OptimConfig,
             'trainer': TrainerConfig}
_TOP_LEVEL = ('seed', 'precision', 'out_dir', 'model', 'data', 'loss', 'optim', 'trainer')


@dataclass
class TrainingConfig:
    r"""A whole experiment (see the module docstring for the layout).

    Args:
        model (dict, optional): :obj:`name` (:obj:`"TensorNet"`, :obj:`"HIPNN"` or
            :obj:`"package.module:Class"`) plus the constructor's keyword arguments, and two
            options (:data:`MODEL_OPTIONS`): :obj:`init`, a pretrained model to fine-tune (a
            registered name such as :obj:`"tensornet-ani1x"`, a folder written by
            :func:`~pyg_tensorpot.save_pretrained` or a run folder (or its ``model/``); the
            architecture is then the pretrained one, and :obj:`name` and the arguments may be left out but
            must agree with it when given), and :obj:`freeze`, a list of parameter-name
            prefixes (e.g. :obj:`[embedding, layers.0]`) whose weights are not trained.
            (default: :obj:`{"name": "TensorNet"}`)
        data (DataConfig, optional): The data section.
        loss (LossConfig, optional): The loss section.
        optim (OptimConfig, optional): The optimiser section.
        trainer (TrainerConfig, optional): The trainer section.
        seed (int, optional): Seed of the weights' initialisation and of the data order.
            (default: :obj:`1`)
        precision (int, optional): 32 or 64. (default: :obj:`32`)
        out_dir (str, optional): Output folder. (default: :obj:`"runs/default"`)
    """
    model: Dict[str, Any] = field(default_factory=lambda: {'name': 'TensorNet'})
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 1
    precision: int = 32
    out_dir: str = 'runs/default'

    def validate(self) -> 'TrainingConfig':
        """Checks every value; raises :class:`ConfigError` naming the first bad key."""
        fine_tuning = isinstance(self.model, dict) and 'init' in self.model
        if not isinstance(self.model, dict) or (
                ('name' in self.model or not fine_tuning)
                and (not isinstance(self.model.get('name'), str) or not self.model['name'])):
            raise ConfigError("model.name: name the model, e.g. TensorNet, HIPNN or "
                              "'package.module:Class'")
        for name in self.model:
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigError(f'model: {name!r} is not a constructor argument name')
        if fine_tuning:
            _check_string('model.init', self.model['init'])
        freeze = self.model.get('freeze', [])
        if not isinstance(freeze, list) or not all(isinstance(p, str) and p for p in freeze):
            raise ConfigError(f'model.freeze: expected a list of parameter-name prefixes, e.g. '
                              f'[embedding, layers.0], got {freeze!r}')
        _check_number('seed', self.seed, 0, MAX_SEED, integer=True)
        _check_choice('precision', self.precision, tuple(PRECISIONS))
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise ConfigError(f'out_dir: expected a folder name, got {self.out_dir!r}')
        for name in _SECTIONS:
            getattr(self, name).validate()
        if self.loss.relative_energy_weight > 0 and self.data.group_key is None:
            raise ConfigError('loss.relative_energy_weight: energies relative to their '
                              "group's mean need the groups; set data.group_key (e.g. group)")
        self._resolve_data_path()
        # the model's arguments are checked here, before any data is read, not at training;
        # with model.init and no name they are checked against the pretrained model then
        if 'name' in self.model:
            from pyg_tensorpot.training.builders import model_class
            kwargs = {k: v for k, v in self.model.items()
                      if k != 'name' and k not in MODEL_OPTIONS}
            cls = model_class(self.model['name'])
            check_constructor_kwargs('model', cls, kwargs)
            check_regularization(cls, self.loss.regularization)
        return self

    def _resolve_data_path(self) -> None:
        """``data.path`` sets ``data.dataset`` (by extension), ``data.args.path`` and, when
        unset, ``data.root`` (``out_dir/data``)."""
        data = self.data
        if data.path is None:
            return
        extension = os.path.splitext(data.path)[1].lower()
        dataset = DATA_FILE_DATASETS.get(extension)
        if dataset is None:
            raise ConfigError(f"data.path: cannot tell the format of '{data.path}' from its "
                              f"extension {extension!r}; name an extended-XYZ file (.xyz, "
                              f".extxyz) or an ASE database (.db, .json, .aselmdb)")
        if data.dataset != dataset and data.dataset != DataConfig.dataset:
            raise ConfigError(f"data.dataset: {data.dataset} contradicts data.path "
                              f"'{data.path}', which is read by {dataset}; leave data.dataset "
                              f"out")
        path = os.path.abspath(data.path)
        given = data.args.get('path')
        if given is not None and (not isinstance(given, str)
                                  or os.path.abspath(given) != path):
            raise ConfigError(f"data.args.path: {given!r} contradicts data.path '{data.path}';"
                              f" give only one of them")
        data.dataset = dataset
        data.args = {**data.args, 'path': path}
        if data.root is None:
            data.root = os.path.join(self.out_dir, 'data')

    def to_dict(self) -> Dict[str, Any]:
        """Plain nested dictionary (YAML/JSON and ``torch.load(weights_only=True)`` safe)."""
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> 'TrainingConfig':
        """Builds and validates a configuration from a nested dictionary."""
        if not isinstance(values, dict):
            raise ConfigError(f'a configuration must be a mapping, got {type(values).__name__}')
        unknown = sorted((key for key in values if key not in _TOP_LEVEL), key=str)
        if unknown:
            raise ConfigError(f'unknown top-level key {unknown[0]!r}; allowed keys are '
                              f'{_fmt(_TOP_LEVEL)}')
        count = [0]
        for key, value in values.items():
            _check_plain(key, value, count)
        kwargs: Dict[str, Any] = {}
        for key, value in values.items():
            if key == 'loss' and isinstance(value, dict):
                value = _upgrade_loss(value, values.get('model', {}))
            if key in _SECTIONS:
                kwargs[key] = _build_section(key, _SECTIONS[key], value)
            elif key == 'model':
                if not isinstance(value, dict):
                    raise ConfigError(f'model: expected a mapping with name and the '
                                      f'constructor arguments, got {value!r}')
                # a fine-tuned model takes the pretrained architecture's name
                kwargs[key] = dict(value) if 'init' in value else {'name': 'TensorNet', **value}
            else:
                kwargs[key] = value
        return cls(**kwargs).validate()

    def save(self, path: str) -> None:
        """Writes the configuration as YAML."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, 'w') as f:
            _yaml().safe_dump(self.to_dict(), f, sort_keys=False)


#: Former ``loss`` keys and the ``loss.regularization`` entries they now are.
DEPRECATED_LOSS_KEYS = {'hierarchicality_weight': 'hierarchicality', 'l2_weight': 'l2'}


def _upgrade_loss(loss: Dict[str, Any], model: Any) -> Dict[str, Any]:
    """Reads the former keys ``loss.hierarchicality_weight`` and ``loss.l2_weight`` as
    ``loss.regularization`` entries. They were ignored for models without the term, so they
    still are (a zero weight, which every saved run has, is dropped silently)."""
    if not any(key in loss for key in DEPRECATED_LOSS_KEYS):
        return loss
    from pyg_tensorpot.training.builders import model_class, regularizers_of
    declared: Optional[Sequence[str]] = None
    if isinstance(model, dict) and 'init' not in model:
        model = {'name': 'TensorNet', **model}  # the default model, as from_dict builds it
    if isinstance(model, dict) and isinstance(model.get('name'), str):
        try:
            declared = regularizers_of(model_class(model['name']))
        except ConfigError:
            pass  # reported by validate()
    loss = dict(loss)
    regularization = loss.get('regularization', {})
    regularization = dict(regularization) if isinstance(regularization, dict) else regularization
    for old, name in DEPRECATED_LOSS_KEYS.items():
        if old not in loss:
            continue
        weight = loss.pop(old)
        _check_number(f'loss.{old}', weight, 0)
        if weight == 0:
            continue
        warnings.warn(f'loss.{old} is deprecated; write loss.regularization.{name} instead',
                      FutureWarning, stacklevel=4)
        if not isinstance(regularization, dict) or (declared is not None
                                                    and name not in declared):
            continue
        if name in regularization and regularization[name] != weight:
            raise ConfigError(f'loss.{old} ({weight}) contradicts loss.regularization.{name} '
                              f'({regularization[name]}); keep only the latter')
        regularization[name] = weight
    if regularization:
        loss['regularization'] = regularization
    return loss


def check_regularization(model: Any, weights: Dict[str, float]) -> None:
    """Raises :class:`ConfigError` for a weight of ``loss.regularization`` that names a
    term the model (a class or an instance) does not add."""
    from pyg_tensorpot.training.builders import regularizers_of
    declared = regularizers_of(model)
    for name in weights:
        if name not in declared:
            cls = model if isinstance(model, type) else type(model)
            adds = ', '.join(declared) if declared else 'none'
            raise ConfigError(f"loss.regularization.{name}: {cls.__name__} adds no '{name}' "
                              f'term to the loss (its terms: {adds})')


#: Most values (leaves and containers) a configuration may hold; YAML aliases can make a
#: short file expand to billions.
MAX_VALUES = 100_000


def _check_plain(key: str, value: Any, _count: Optional[List[int]] = None) -> None:
    """Only YAML's plain types (what JSON and ``torch.load(weights_only=True)`` read back):
    not dates, sets or binary, which PyYAML makes from unquoted ``2024-01-01`` or tags."""
    count = [0] if _count is None else _count
    count[0] += 1
    if count[0] > MAX_VALUES:
        raise ConfigError(f'{key}: the configuration holds more than {MAX_VALUES:,} values '
                          f'(nested YAML aliases?)')
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, (str, int)) or isinstance(name, bool):
                raise ConfigError(f'{key}: key {name!r} must be a name, not '
                                  f'{type(name).__name__}')
            _check_plain(f'{key}.{name}', item, count)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_plain(f'{key}[{index}]', item, count)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise ConfigError(f'{key}: {value!r} is a {type(value).__name__}; write a number, '
                          f'true/false, null, a list, a mapping or a quoted string')


def _build_section(name: str, cls, value: Any):
    allowed = [f.name for f in dataclasses.fields(cls)]
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise ConfigError(f'{name}: is a section, expected a mapping of its keys '
                          f'({_fmt(allowed)}), got {value!r}')
    for key in value:
        if key not in allowed:
            raise ConfigError(f'unknown key {name}.{key}; allowed keys of {name} are '
                              f'{_fmt(allowed)}')
    return cls(**value)


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """Turns ``["optim.lr=5e-4", "data.args.molecule=ethanol"]`` into a nested dictionary.

    Values are parsed as YAML (numbers, booleans, ``null``, lists and mappings); a value that
    is not valid YAML (e.g. ``[1,`` or ``*name``) is a :class:`ConfigError` naming the
    override (quote it to pass a string). Whether the keys exist is checked by
    :meth:`TrainingConfig.from_dict`.

    Args:
        overrides (Sequence[str]): ``key.path=value`` strings.

    Raises:
        ConfigError: An item without ``=``, an empty key, an unreadable value, or two items
            that set a key and a key below it.
    """
    result: Dict[str, Any] = {}
    for item in overrides:
        if '=' not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value, e.g. "
                              f"optim.lr=5e-4")
        key, text = item.split('=', 1)
        path = [part for part in key.strip().split('.')]
        if not all(path):
            raise ConfigError(f'override {item!r}: empty key')
        try:
            value = _parse_scalar(text)
        except ValueError as error:
            raise ConfigError(f'override {item!r}: cannot read the value {text!r} ({error}); '
                              f"quote it to pass a string, e.g. {key}='{text}'") from None
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f'override {item!r} conflicts with another override')
        node[path[-1]] = value
    return result


def _parse_scalar(text: str) -> Any:
    """The YAML value of an override; raises :class:`ValueError` if it is not YAML."""
    yaml = _yaml()
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as error:
        raise ValueError(' '.join(str(error).split())) from None
    return _fix_numbers(value)


def merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """Recursive dictionary update (``update`` wins), returning a new dictionary."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (),
                base: Optional[Dict[str, Any]] = None) -> TrainingConfig:
    """Reads a YAML configuration, applies ``key=value`` overrides and validates it.

    Args:
        path (str, optional): YAML file; :obj:`None` starts from the defaults.
            (default: :obj:`None`)
        overrides (Sequence[str], optional): ``section.key=value`` strings.
            (default: :obj:`()`)
        base (dict, optional): Values applied before the file. (default: :obj:`None`)
    """
    values: Dict[str, Any] = dict(base or {})
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"configuration file '{path}' does not exist")
        yaml = _yaml()
        try:
            with open(path, encoding='utf-8') as f:
                loaded = yaml.safe_load(f)
        except (yaml.YAMLError, RecursionError) as error:
            raise ConfigError(f"'{path}' is not valid YAML: {error}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(f"'{path}' is not a UTF-8 text file ({error})") from None
        except OSError as error:
            raise ConfigError(f"cannot read configuration file '{path}' ({error})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"'{path}' must hold a mapping of sections, got "
                              f"{type(loaded).__name__}")
        values = merge(values, _fix_numbers(loaded))
    values = merge(values, parse_overrides(overrides))
    try:
        return TrainingConfig.from_dict(values)
    except RecursionError:
        raise ConfigError(f"the configuration{f' in {path!r}' if path else ''} is nested too "
                          f"deeply") from None


_SCIENTIFIC = re.compile(r'^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$')


def _fix_numbers(value: Any, _seen: Optional[Dict[int, Any]] = None) -> Any:
    """PyYAML (YAML 1.1) reads ``1e-4`` (no dot) as a string; turn such strings into floats."""
    # a YAML alias (*name) shares one node; converting it once keeps nested aliases from
    # growing exponentially
    seen = {} if _seen is None else _seen
    if isinstance(value, (dict, list)):
        if id(value) in seen:
            return seen[id(value)]
        if isinstance(value, dict):
            out: Any = {}
            seen[id(value)] = out
            out.update((k, _fix_numbers(v, seen)) for k, v in value.items())
        else:
            out = []
            seen[id(value)] = out
            out.extend(_fix_numbers(v, seen) for v in value)
        return out
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return float(value)
    return value


def check_constructor_kwargs(what: str, cls, kwargs: Dict[str, Any],
                             skip: Sequence[str] = ()) -> None:
    """Raises :class:`ConfigError` if :obj:`kwargs` has a key that :obj:`cls` does not take,
    listing the allowed ones."""
    signature = inspect.signature(cls.__init__)
    params = signature.parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed: List[str] = [n for n in params if n not in ('self', ) and n not in skip
                          and params[n].kind not in (inspect.Parameter.VAR_POSITIONAL, )]
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(f'unknown key {what}.{key} for {cls.__name__}; allowed keys are '
                              f'{_fmt(allowed)}')
