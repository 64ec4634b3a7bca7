r"""Training and evaluation runs: what ``pyg-tensorpot train`` and ``evaluate`` do.

Length: over 500 lines because the training path (statistics, fine-tuning start,
ensembles, locking) and the evaluation report share the run-folder conventions; the model
export is :mod:`pyg_tensorpot.training.export`.
"""
import contextlib
import datetime
import json
import logging
import os
import os.path as osp
import re
import shutil
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Subset

from pyg_tensorpot.training.builders import (
    build_dataset,
    build_model,
    freeze_parameters,
    resolve_init,
)
from pyg_tensorpot.training.config import MAX_SEED, ConfigError, TrainingConfig, merge
from pyg_tensorpot.training.data import (
    check_supported_elements,
    describe_statistics,
    fit_training_statistics,
    make_split,
    prepare_data,
)
from pyg_tensorpot.training.export import (  # noqa: F401 (also imported from here)
    LEGACY_MODEL_FILE,
    PRETRAINED_DIR,
    TRAINING_FILE,
    export_model,
    export_pretrained,
    is_training_export,
    load_trained_model,
)
from pyg_tensorpot.training.inference import evaluate_model
from pyg_tensorpot.training.metrics import format_error_table
from pyg_tensorpot.utils.dtypes import to_dtype
from pyg_tensorpot.utils.files import atomic_write_text

logger = logging.getLogger('pyg_tensorpot.training')

#: Lock file that a training run holds in its output folder while it runs.
LOCK_NAME = '.train.lock'
#: File of an ensemble run that lists its members (:func:`load_ensemble`).
ENSEMBLE_FILE = 'ensemble.json'
#: ``format`` tag of :data:`ENSEMBLE_FILE`.
ENSEMBLE_FORMAT = 'pyg-tensorpot-ensemble'


class OutputFolderInUseError(RuntimeError):
    """The output folder of a training run is in use by another run (its lock is held)."""


@contextlib.contextmanager
def lock_output_folder(out_dir: str) -> Iterator[str]:
    r"""Holds the lock file ``out_dir/.train.lock`` (created with the folder) for as long as
    the block runs, so that a second run into the same folder refuses at once instead of
    interleaving checkpoints. The lock is the operating system's (:mod:`filelock`): it is
    released when the holding process ends, also when it is killed, so a stale lock file
    never blocks.

    Args:
        out_dir (str): The run's folder.

    Raises:
        OutputFolderInUseError: Another process holds the lock.
    """
    from filelock import FileLock, Timeout
    os.makedirs(out_dir, exist_ok=True)
    path = osp.join(out_dir, LOCK_NAME)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputFolderInUseError(
            f"output folder '{out_dir}' is in use by another training run (it holds the lock "
            f"'{path}'); wait for that run to end, or train into another folder "
            f"(e.g. out_dir={osp.normpath(out_dir)}-2)") from None
    try:
        yield path
    finally:
        lock.release()


@dataclass
class TrainResult:
    r"""What :func:`train` produced.

    Args:
        out_dir (str): The run's folder.
        best_checkpoint (str): Lightning checkpoint with the best validation metric.
        model_path (str): The folder of the exported best model, ``out_dir/model``
            (:func:`export_model`, read by :func:`load_trained_model`).
        pretrained_dir (str): The same folder where it is also a
            :func:`~pyg_tensorpot.save_pretrained` folder (loadable by
            :func:`~pyg_tensorpot.from_pretrained`, by :obj:`model.init` of another run, by
            an ensemble), or :obj:`None` for a model that cannot be saved so (a custom class
            not registered with :func:`~pyg_tensorpot.hub.register_model_class`).
        test_metrics (dict): Test errors by test-set name (eV, eV/Angstrom).
        statistics (dict): Fitted reference energies and standardisation.
        interrupted (bool): Training was interrupted (resume it with ``--resume``).
        epochs (int): Epochs run (the last one possibly cut short by a step or time limit).
        steps (int): Optimiser steps run.
    """
    out_dir: str
    best_checkpoint: Optional[str]
    model_path: Optional[str]
    test_metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    statistics: Dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    epochs: int = 0
    steps: int = 0
    pretrained_dir: Optional[str] = None


def _echo(message: str, verbose: bool = True) -> None:
    if verbose:
        print(message, flush=True)


def _is_rank_zero() -> bool:
    return int(os.environ.get('LOCAL_RANK', 0)) == 0 and int(os.environ.get('NODE_RANK', 0)) == 0


def checkpoint_dir(out_dir: str) -> str:
    return osp.join(out_dir, 'checkpoints')


def find_resume_checkpoint(out_dir: str) -> Optional[str]:
    """``out_dir/checkpoints/last.ckpt`` if it exists."""
    path = osp.join(checkpoint_dir(out_dir), 'last.ckpt')
    return path if osp.isfile(path) else None


#: Lightning messages that say nothing to a user of this package's runs.
_NOISE = (
    '.*Experiment logs directory.*',
    '.*does not have many workers.*',
    '.*Checkpoint directory .* exists and is not empty.*',
    '.*isinstance\\(treespec, LeafSpec\\).*',
    '.*is smaller than the logging interval.*',
    '.*callbacks used to create the checkpoint need to be provided.*',
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return 'Tip:' not in record.getMessage()


@contextlib.contextmanager
def quiet_lightning():
    """Silences Lightning's advertising tips and warnings that do not apply to these runs."""
    tips = _DropTips()
    lightning_logger = logging.getLogger('lightning.pytorch.utilities.rank_zero')
    lightning_logger.addFilter(tips)
    try:
        with warnings.catch_warnings():
            for pattern in _NOISE:
                warnings.filterwarnings('ignore', message=pattern)
            yield
    finally:
        lightning_logger.removeFilter(tips)


def _build_callbacks(pl, config: TrainingConfig, ckpt_dir: str) -> Dict[str, Any]:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from pyg_tensorpot.training.module import LastCheckpoint
    trainer_cfg = config.trainer
    callbacks: Dict[str, Any] = {}
    # the best checkpoint first: the 'last' ones then carry its up-to-date state
    callbacks['best'] = ModelCheckpoint(dirpath=ckpt_dir, filename='best',
                                        monitor=trainer_cfg.monitor, mode='min', save_top_k=1,
                                        enable_version_counter=False)
    callbacks['last'] = LastCheckpoint(dirpath=ckpt_dir, filename='last', monitor=None,
                                        save_top_k=1, every_n_epochs=1,
                                        enable_version_counter=False)
    if trainer_cfg.checkpoint_every_n_steps:
        callbacks['steps'] = LastCheckpoint(
            dirpath=ckpt_dir, filename='last', monitor=None, save_top_k=1,
            every_n_train_steps=trainer_cfg.checkpoint_every_n_steps,
            enable_version_counter=False)
    if trainer_cfg.early_stopping_patience > 0:
        callbacks['early_stopping'] = EarlyStopping(
            monitor=trainer_cfg.monitor, mode='min',
            patience=trainer_cfg.early_stopping_patience, check_on_train_epoch_end=False)
    return callbacks


def _check_monitor(config: TrainingConfig, prepared) -> None:
    monitor = config.trainer.monitor
    sample = prepared.val[0]
    if 'forces' in monitor and getattr(sample, config.data.forces_key, None) is None:
        raise ConfigError(f"trainer.monitor: {monitor} needs forces, but the validation "
                          f"structures have no '{config.data.forces_key}'")
    if 'energy' in monitor and getattr(sample, config.data.energy_key, None) is None:
        raise ConfigError(f"trainer.monitor: {monitor} needs energies, but the validation "
                          f"structures have no '{config.data.energy_key}'")


def train(config: TrainingConfig, resume: Optional[str] = None, verbose: bool = True,
          extra_callbacks: Sequence[Any] = (), report: bool = True) -> TrainResult:
    r"""Trains, tests on the best checkpoint and exports the model of an experiment.

    Writes to :obj:`config.out_dir`: ``config.yaml``, ``splits.npz``,
    ``checkpoints/{best,last}.ckpt``, ``logs/metrics.csv``, ``learning_curves.png``,
    ``test_metrics.json`` and the best weight average as the :func:`export_model` folder
    ``model/`` (safetensors + JSON, :func:`load_trained_model`; for the package's models also
    a :func:`~pyg_tensorpot.save_pretrained` folder).

    With :obj:`model.init` the model starts from the pretrained weights (the architecture is
    the pretrained one, see :func:`~pyg_tensorpot.training.builders.resolve_init`), the
    parameters under :obj:`model.freeze` are not trained, the pretrained standardisation is
    kept and the reference energies are refitted or kept (:obj:`data.reference_energies`);
    elements of the data that the pretrained model does not support raise
    :class:`ConfigError` before training.

    Args:
        config (TrainingConfig): The experiment.
        resume (str, optional): A checkpoint to resume from, or :obj:`"auto"` for
            ``out_dir/checkpoints/last.ckpt`` when it exists. (default: :obj:`None`)
        verbose (bool, optional): Print progress, statistics and the error table.
            (default: :obj:`True`)
        extra_callbacks (Sequence, optional): More Lightning callbacks. (default: :obj:`()`)
        report (bool, optional): Print the test error table at the end (when
            :obj:`verbose`). (default: :obj:`True`)

    Raises:
        OutputFolderInUseError: Another run is training into :obj:`config.out_dir` (see
            :func:`lock_output_folder`).
    """
    config.validate()
    # one lock per run: the other processes of a DDP run are not rank zero
    lock = lock_output_folder(config.out_dir) if _is_rank_zero() else contextlib.nullcontext()
    with lock:
        threads = torch.get_num_threads()
        if config.trainer.num_threads is not None:
            torch.set_num_threads(config.trainer.num_threads)
        try:
            return _train(config, resume, verbose, extra_callbacks, report)
        finally:
            torch.set_num_threads(threads)


def _train(config: TrainingConfig, resume: Optional[str], verbose: bool,
           extra_callbacks: Sequence[Any], report: bool) -> TrainResult:
    from pyg_tensorpot.training._lightning import require_lightning
    pl = require_lightning()
    from lightning.pytorch.loggers import CSVLogger

    from pyg_tensorpot.training.module import AtomisticDataModule, PotentialModule

    config.validate()
    # fine-tuning: the run's configuration records the pretrained architecture
    model_section, pretrained = resolve_init(config.model)
    if pretrained is not None:
        config = TrainingConfig.from_dict({**config.to_dict(), 'model': model_section})
    out_dir = config.out_dir
    rank_zero = _is_rank_zero()
    verbose = verbose and rank_zero
    ckpt_path = None
    if resume == 'auto':
        ckpt_path = find_resume_checkpoint(out_dir)
        if ckpt_path is None:
            _echo(f'no checkpoint in {checkpoint_dir(out_dir)}; starting from scratch', verbose)
    elif resume is not None:
        if not osp.isfile(resume):
            raise FileNotFoundError(f"checkpoint '{resume}' does not exist")
        ckpt_path = resume
    elif rank_zero and osp.isdir(checkpoint_dir(out_dir)):
        _echo(f'note: {out_dir} holds an earlier run; training starts from scratch and replaces '
              f'its checkpoints and logs (pass --resume to continue it instead)', verbose)
        for stale in ('checkpoints', osp.join('logs', 'metrics.csv')):
            path = osp.join(out_dir, stale)
            if osp.isdir(path):
                shutil.rmtree(path)
            elif osp.isfile(path):
                os.remove(path)
    os.makedirs(out_dir, exist_ok=True)
    if rank_zero:
        config.save(osp.join(out_dir, 'config.yaml'))

    pl.seed_everything(config.seed, workers=True, verbose=False)
    dtype = to_dtype(config.precision)
    prepared = prepare_data(config.data, config.seed, osp.join(out_dir, 'splits.npz'))
    _check_monitor(config, prepared)
    model = build_model(config.model, dtype)
    if pretrained is not None:
        model.load_state_dict(pretrained.state_dict())
        model.supported_elements = pretrained.supported_elements
        what = f"the pretrained model {config.model['init']!r}"
    else:
        what = f"{type(model).__name__} (model section)"
    replayed = ({} if prepared.replay is None else
                {f'the replayed data set {config.data.replay_dataset}': prepared.replay})
    check_supported_elements(model, {f'the data set {config.data.dataset}': prepared.dataset,
                                     **replayed, **prepared.test}, what)
    frozen = freeze_parameters(model, config.model.get('freeze', []))
    statistics = fit_training_statistics(model, prepared.train, config.data, prepared.dataset,
                                         pretrained=pretrained is not None)
    if pretrained is not None:
        _echo(f"fine-tuning {what}" + (f'; {len(frozen)} parameter tensors frozen '
                                       f"({', '.join(config.model['freeze'])})"
                                       if frozen else ''), verbose)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _echo(f'{type(model).__name__}: {n_params:,} trainable parameters; '
          f'{len(prepared.train)} training'
          + (f' (of them {len(prepared.replay)} replayed from {config.data.replay_dataset})'
             if prepared.replay is not None else '')
          + f' / {len(prepared.val)} validation structures'
          + ''.join(f' / {len(ds)} {name}' for name, ds in prepared.test.items()), verbose)
    _echo(describe_statistics(statistics), verbose)
    module = PotentialModule(model, config, statistics)
    datamodule = AtomisticDataModule(config.data, config.seed, prepared=prepared)

    ckpt_dir = checkpoint_dir(out_dir)
    callbacks = _build_callbacks(pl, config, ckpt_dir)
    trainer_cfg = config.trainer
    max_time = (None if trainer_cfg.max_time is None else
                datetime.timedelta(minutes=float(trainer_cfg.max_time)))
    extra = list(extra_callbacks)
    if verbose and not trainer_cfg.progress_bar:
        from pyg_tensorpot.training.module import EpochSummary
        extra.append(EpochSummary())
    strategy: Any = trainer_cfg.strategy
    if strategy == 'ddp':
        from lightning.pytorch.strategies import DDPStrategy
        strategy = DDPStrategy(find_unused_parameters=False)
    csv_logger = CSVLogger(out_dir, name='', version='logs')
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator=trainer_cfg.accelerator if trainer_cfg.accelerator != 'cuda' else 'gpu',
            devices=trainer_cfg.devices,
            num_nodes=trainer_cfg.num_nodes,
            strategy=strategy,
            max_epochs=trainer_cfg.max_epochs,
            max_steps=trainer_cfg.max_steps,
            max_time=max_time,
            gradient_clip_val=config.optim.gradient_clip or None,
            gradient_clip_algorithm='norm',
            callbacks=list(callbacks.values()) + extra,
            logger=csv_logger,
            enable_progress_bar=trainer_cfg.progress_bar and verbose,
            enable_model_summary=False,
            log_every_n_steps=trainer_cfg.log_every_n_steps,
            check_val_every_n_epoch=trainer_cfg.check_val_every_n_epoch,
            num_sanity_val_steps=0,
            inference_mode=False,
            use_distributed_sampler=False,
            default_root_dir=out_dir,
        )
    with quiet_lightning():
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    best = callbacks['best'].best_model_path or None
    result = TrainResult(out_dir, best, None, {}, statistics, trainer.interrupted,
                         epochs=int(trainer.current_epoch),
                         steps=int(trainer.global_step))
    if trainer.interrupted:
        _echo(f'training interrupted; resume with: pyg-tensorpot train '
              f'{osp.join(out_dir, "config.yaml")} --resume', verbose)
        return result
    if best is not None:
        # the best weights, also for the export when there is no test set
        checkpoint = torch.load(best, map_location='cpu', weights_only=True)
        module.load_state_dict(checkpoint['state_dict'])
    if prepared.test:
        with quiet_lightning():
            trainer.test(module, datamodule=datamodule, verbose=False)
        result.test_metrics = dict(module.test_results)
    if rank_zero:
        from pyg_tensorpot.hub.registry import is_registered
        result.model_path = export_model(
            module.eval_model, config, osp.join(out_dir, PRETRAINED_DIR),
            module.hparams.get('statistics'), result.test_metrics,
            {'epochs': result.epochs, 'steps': result.steps,
             'training_structures': len(prepared.train)})
        if is_registered(type(module.eval_model)):
            result.pretrained_dir = result.model_path
        atomic_write_text(json.dumps(result.test_metrics, indent=1),
                          osp.join(out_dir, 'test_metrics.json'))
        metrics_csv = osp.join(out_dir, 'logs', 'metrics.csv')
        if osp.isfile(metrics_csv):
            try:
                from pyg_tensorpot.training.plots import plot_learning_curves
                plot_learning_curves(metrics_csv, osp.join(out_dir, 'learning_curves.png'),
                                     title=f'{type(model).__name__} on {config.data.dataset}')
            except ImportError as error:
                _echo(f'(no learning-curve plot: {error})', verbose)
        for name, metrics in result.test_metrics.items():
            title = (f'Test errors of the best {type(model).__name__} (weight average) on '
                     f'{int(metrics["num_structures"]):,} structures ({name})')
            _echo(format_error_table(metrics, title), verbose and report)
        _echo(f'model: {result.model_path}/\nbest checkpoint: {best}', verbose and report)
    return result


@dataclass
class EnsembleResult:
    r"""What :func:`train_ensemble` produced.

    Args:
        out_dir (str): The ensemble's folder.
        members (list): The :class:`TrainResult` of every member (``out_dir/member_k``).
        ensemble_file (str): ``out_dir/ensemble.json`` (:func:`load_ensemble`), or
            :obj:`None` when a member was interrupted.
        test_metrics (dict): Test errors of the ensemble's mean prediction by test-set name.
    """
    out_dir: str
    members: List[TrainResult]
    ensemble_file: Optional[str] = None
    test_metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)

    @property
    def interrupted(self) -> bool:
        return any(member.interrupted for member in self.members)


def train_ensemble(config: TrainingConfig, num_members: int, resume: Optional[str] = None,
                   verbose: bool = True) -> EnsembleResult:
    r"""Trains :obj:`num_members` copies of an experiment with the seeds :obj:`config.seed`,
    :obj:`config.seed + 1`, ... into ``out_dir/member_0``, ``out_dir/member_1``, ... (each
    a whole run of :func:`train`), all on the split of the first member, then writes
    ``out_dir/ensemble.json`` (the members' :func:`~pyg_tensorpot.save_pretrained` folders,
    :func:`load_ensemble`) and ``out_dir/test_metrics.json`` (the errors of the members' mean
    prediction).

    Args:
        config (TrainingConfig): The experiment of every member.
        num_members (int): Members, at least 2.
        resume (str, optional): :obj:`"auto"` resumes every member from its
            ``checkpoints/last.ckpt``. (default: :obj:`None`)
        verbose (bool, optional): Print progress and the error tables. (default: :obj:`True`)

    Raises:
        ConfigError: Fewer than two members, or a member's model cannot be saved with
            :func:`~pyg_tensorpot.save_pretrained`.
    """
    if isinstance(num_members, bool) or not isinstance(num_members, int) or num_members < 2:
        raise ConfigError(f'--ensemble: an ensemble needs at least 2 members, got '
                          f'{num_members!r}')
    if resume not in (None, 'auto'):
        raise ConfigError('--resume: an ensemble resumes every member from its own last '
                          'checkpoint; pass --resume without a file')
    config.validate()
    if config.seed + num_members - 1 > MAX_SEED:
        raise ConfigError(f'seed: {config.seed} + {num_members - 1} members exceeds {MAX_SEED}')
    out_dir = config.out_dir
    base = config.to_dict()
    results: List[TrainResult] = []
    rank_zero = _is_rank_zero()
    # the other processes of a DDP run train the members with rank zero, which holds the lock
    lock = lock_output_folder(out_dir) if rank_zero else contextlib.nullcontext()
    with lock:
        member_configs = []
        for k in range(num_members):
            values = merge(base, {'seed': config.seed + k,
                                  'out_dir': osp.join(out_dir, f'member_{k}')})
            if k > 0 and config.data.splits_file is None:
                # one split for all: the test set is unseen by every member
                values['data']['splits_file'] = osp.join(results[0].out_dir, 'splits.npz')
            member = TrainingConfig.from_dict(values)
            member_configs.append(member)
            _echo(f'--- ensemble member {k + 1} of {num_members} (seed {member.seed}): '
                  f'{member.out_dir}', verbose)
            result = train(member, resume=resume, verbose=verbose)
            results.append(result)
            if result.interrupted:
                return EnsembleResult(out_dir, results)
        if not rank_zero:
            return EnsembleResult(out_dir, results)
        missing = [r.out_dir for r in results if r.pretrained_dir is None]
        if missing:
            raise ConfigError(f"model.name: {config.model.get('name')} cannot be saved with "
                              f"save_pretrained (register_model_class), so no ensemble folder "
                              f"was written; the members' models are in {', '.join(missing)}")
        listing = {
            'format': ENSEMBLE_FORMAT,
            'version': 1,
            'members': [osp.relpath(r.pretrained_dir, out_dir) for r in results],
            'seeds': [m.seed for m in member_configs],
        }
        path = osp.join(out_dir, ENSEMBLE_FILE)
        atomic_write_text(json.dumps(listing, indent=1), path)
        summary = EnsembleResult(out_dir, results, path)
        ensemble = load_ensemble(path)
        device = torch.device('cuda' if torch.cuda.is_available()
                              and config.trainer.accelerator in ('auto', 'gpu', 'cuda')
                              else 'cpu')
        ensemble = ensemble.to(device)
        data = member_configs[-1].data
        tests = prepare_data(data, member_configs[-1].seed).test
        for name, subset in tests.items():
            metrics, _ = evaluate_model(ensemble, subset, data.inference_batch_size, device,
                                        data.energy_key, data.forces_key)
            summary.test_metrics[name] = metrics
            title = (f'Test errors of the ensemble of {num_members} (mean prediction) on '
                     f'{int(metrics["num_structures"]):,} structures ({name})')
            _echo(format_error_table(metrics, title), verbose)
        atomic_write_text(json.dumps(summary.test_metrics, indent=1),
                          osp.join(out_dir, 'test_metrics.json'))
        _echo(f'ensemble: {path} (pyg_tensorpot.training.run.load_ensemble)', verbose)
    return summary


def load_ensemble(path: str, map_location: str = 'cpu'):
    r"""Loads the ensemble written by :func:`train_ensemble` (``pyg-tensorpot train
    --ensemble N``) as an :class:`~pyg_tensorpot.models.ensemble.Ensemble`.

    Args:
        path (str): The ensemble's folder or its ``ensemble.json``.
        map_location (str, optional): Device of the members. (default: :obj:`"cpu"`)

    Raises:
        FileNotFoundError: No ``ensemble.json`` there.
        ValueError: The file is not an ensemble listing (the message names it).
    """
    from pyg_tensorpot.models.ensemble import Ensemble
    file = osp.join(path, ENSEMBLE_FILE) if osp.isdir(path) else path
    if not osp.isfile(file):
        raise FileNotFoundError(f"'{file}' does not exist: not an ensemble written by "
                                f"pyg-tensorpot train --ensemble")
    try:
        with open(file, encoding='utf-8') as f:
            listing = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"'{file}' is not readable JSON ({error})") from None
    if not isinstance(listing, dict) or listing.get('format') != ENSEMBLE_FORMAT:
        raise ValueError(f"'{file}' is not an ensemble listing (format {ENSEMBLE_FORMAT!r})")
    members = listing.get('members')
    if not isinstance(members, list) or len(members) < 2 or not all(
            isinstance(m, str) and m for m in members):
        raise ValueError(f"'{file}': 'members' must list at least two model folders")
    folder = osp.dirname(osp.abspath(file))
    return Ensemble.from_pretrained([osp.join(folder, m) for m in members],
                                    map_location=map_location)


def evaluation_sets(config: TrainingConfig, dataset: Optional[str] = None,
                    root: Optional[str] = None, args: Optional[Dict[str, Any]] = None,
                    split: Optional[str] = None, splits_file: Optional[str] = None
                    ) -> Dict[str, Any]:
    r"""The structures to evaluate: the test set(s) of the training configuration, or a named
    dataset (whole, or one part of a split).

    Args:
        config (TrainingConfig): The configuration the model was trained with.
        dataset (str, optional): Dataset name; :obj:`None` uses the training data.
            (default: :obj:`None`)
        root (str, optional): Its folder. (default: :obj:`None`)
        args (dict, optional): Its keyword arguments. (default: :obj:`None`)
        split (str, optional): :obj:`"test"`, :obj:`"val"`, :obj:`"train"` or :obj:`"all"`;
            defaults to :obj:`"test"` for the training data and :obj:`"all"` for another
            dataset. (default: :obj:`None`)
        splits_file (str, optional): A ``splits.npz`` to take the part from; defaults to the
            training configuration's split. (default: :obj:`None`)
    """
    allowed = ('test', 'val', 'train', 'all')
    if split is not None and split not in allowed:
        raise ConfigError(f"--split: {split!r} is not allowed; choose one of {allowed}")
    data = config.data
    if splits_file is not None:
        data = type(data)(**{**data.__dict__, 'splits_file': splits_file})
    if dataset is None:
        split = split or 'test'
        if split == 'test' and splits_file is None:
            prepared = prepare_data(data, config.seed)
            if not prepared.test:
                raise ConfigError('the training configuration has no test set; pass '
                                  '--split val or --dataset')
            return {(f'{type(prepared.dataset).__name__} (test)' if name == 'test' else name): ds
                    for name, ds in prepared.test.items()}
        ds = build_dataset(data.dataset, data.root, data.args)
        name = type(ds).__name__
    else:
        ds = build_dataset(dataset, root, args or {}, key='--dataset')
        name = type(ds).__name__
        split = split or 'all'
    if split == 'all':
        return {name: ds}
    parts = make_split(ds, data, config.seed)
    return {f'{name} ({split})': ds[parts[f'idx_{split}']]}


def evaluate(checkpoint: str, dataset: Optional[str] = None, root: Optional[str] = None,
             args: Optional[Dict[str, Any]] = None, split: Optional[str] = None,
             splits_file: Optional[str] = None, batch_size: int = 64,
             device: Optional[str] = None, out_dir: Optional[str] = None,
             plots: bool = True, verbose: bool = True, data: Optional[str] = None,
             group_by: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    r"""Evaluates a trained model: prints energy (per structure and per atom) and force MAE
    and RMSE in eV, meV and kcal/mol, and writes for every evaluated set an accuracy report
    ``report_<set>.md`` (errors overall, per element and per group of structures), parity
    plots and error histograms as PNG, and ``evaluation.json`` with the same numbers (plus
    the learning curves of the run, when its ``logs/metrics.csv`` is found).

    Args:
        checkpoint (str): A run folder, its ``model/`` folder or a ``.ckpt`` written by
            :func:`train` (anything :func:`load_trained_model` reads).
        dataset, root, args, split, splits_file: See :func:`evaluation_sets`; with
            :obj:`data`, :obj:`args` are keyword arguments of
            :class:`~pyg_tensorpot.datasets.ExtXYZDataset` (e.g. :obj:`energy_key`,
            :obj:`energy_unit`).
        batch_size (int, optional): Structures per batch. (default: :obj:`64`)
        device (str, optional): :obj:`"cpu"`, :obj:`"cuda"`, ...; defaults to CUDA when
            available. (default: :obj:`None`)
        out_dir (str, optional): Where to write the reports, plots and ``evaluation.json``;
            defaults to the run folder of :obj:`checkpoint`. (default: :obj:`None`)
        plots (bool, optional): Write the PNG plots. (default: :obj:`True`)
        verbose (bool, optional): Print the tables. (default: :obj:`True`)
        data (str, optional): A user's extended-XYZ file to evaluate (every structure),
            processed into ``out_dir/data/``; excludes :obj:`dataset`. (default: :obj:`None`)
        group_by (str, optional): Per-structure attribute to group the errors by (for an
            extended-XYZ file also a key of the frames' ``info``, e.g. ``config_type``);
            defaults to the first of
            :obj:`~pyg_tensorpot.training.report.DEFAULT_GROUP_KEYS` the structures have.
            (default: :obj:`None`)

    Returns:
        dict: By evaluated set, the metrics of
        :meth:`~pyg_tensorpot.training.metrics.ErrorAccumulator.compute` (eV, eV/Angstrom)
        plus :obj:`num_atoms`, :obj:`per_element`, :obj:`group_key` and :obj:`per_group` of
        :func:`~pyg_tensorpot.training.report.accuracy_report`.
    """
    from pyg_tensorpot.training.report import (
        accuracy_report,
        format_markdown_report,
        write_json_atomic,
    )
    if group_by is not None and not str(group_by).strip():
        raise ConfigError('--group-by: give the name of a per-structure attribute, e.g. '
                          'subset')
    from pyg_tensorpot.hub import PretrainedModelError
    try:
        model, config = load_trained_model(checkpoint)
    except (ValueError, PretrainedModelError) as error:
        # a corrupt or foreign file of the user's: named, exit status 2 on the command line
        raise ConfigError(f'cannot evaluate {checkpoint!r}: {error}') from None
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    model = model.to(device)
    run_dir = _run_dir_of(checkpoint)
    out_dir = out_dir or run_dir
    if data is not None:
        if dataset is not None or splits_file is not None:
            raise ConfigError('--data evaluates a file of your own: give either --data or '
                              '--dataset (and --splits), not both')
        if split not in (None, 'all'):
            raise ConfigError(f'--split {split}: --data evaluates every structure of the file '
                              f'(choose the frames with --arg index=..., e.g. index=::10)')
        sets = {osp.basename(data): _user_extxyz(data, args or {}, out_dir, verbose)}
        energy_key, forces_key = 'energy', 'forces'
    else:
        sets = evaluation_sets(config, dataset, root, args, split, splits_file)
        energy_key, forces_key = config.data.energy_key, config.data.forces_key
    results: Dict[str, Dict[str, Any]] = {}
    for name, ds in sets.items():
        group_key, labels = _group_labels(ds, name, group_by)
        metrics, predictions = evaluate_model(
            model, ds, batch_size, torch.device(device), energy_key, forces_key,
            keep_predictions=True, group_key=group_key if labels is None else None)
        if labels is not None:
            predictions['group'] = labels
        report = accuracy_report(predictions, metrics, group_key,
                                 _group_names(ds, group_key) if group_key else None)
        results[name] = {**metrics, 'num_atoms': report['overall']['num_atoms'],
                         'per_element': report['per_element'],
                         'group_key': report['group_key'], 'per_group': report['per_group']}
        title = (f'Errors of {type(model).__name__} on {int(metrics["num_structures"]):,} '
                 f'structures of {name}')
        _echo(format_error_table(metrics, title), verbose)
        slug = re.sub('[^0-9a-z]+', '_', name.lower()).strip('_') or 'set'
        written = []
        if plots and predictions:
            from pyg_tensorpot.training.plots import plot_error_histogram, plot_parity
            if any(k in predictions for k in ('energy_pred', 'forces_pred')):
                path = plot_parity(predictions, osp.join(out_dir, f'parity_{slug}.png'), title)
                written.append(osp.basename(path))
                _echo(f'parity plot: {path}', verbose)
                try:
                    path = plot_error_histogram(predictions,
                                                osp.join(out_dir, f'errors_{slug}.png'), title)
                    written.append(osp.basename(path))
                    _echo(f'error histogram: {path}', verbose)
                except ValueError as error:  # only non-finite errors: nothing to bin
                    _echo(f'no error histogram for {name}: {error}', verbose)
        path = atomic_write_text(format_markdown_report(report, title, written),
                                 osp.join(out_dir, f'report_{slug}.md'))
        _echo(f'report: {path}', verbose)
    if plots:
        metrics_csv = osp.join(run_dir, 'logs', 'metrics.csv')
        if osp.isfile(metrics_csv):
            from pyg_tensorpot.training.plots import plot_learning_curves
            path = plot_learning_curves(metrics_csv, osp.join(out_dir, 'learning_curves.png'),
                                        title=f'{type(model).__name__} on '
                                        f'{config.data.dataset}')
            _echo(f'learning curves: {path}', verbose)
    write_json_atomic(results, osp.join(out_dir, 'evaluation.json'))
    return results


def _user_extxyz(path: str, args: Dict[str, Any], out_dir: str, verbose: bool):
    r"""The :class:`~pyg_tensorpot.datasets.ExtXYZDataset` of a user's file, processed into
    ``out_dir/data/<file name>``; every problem of the file is a :class:`ConfigError` naming
    it."""
    from pyg_tensorpot.datasets.base import RawFileError
    if not osp.isfile(path):
        raise FileNotFoundError(f"--data: '{path}' does not exist (or is not a file)")
    stem = re.sub(r'[^A-Za-z0-9_.-]+', '_', osp.basename(path)) or 'data'
    kwargs = {'log': verbose, **args, 'path': path}
    try:
        return build_dataset('ExtXYZDataset', osp.join(out_dir, 'data', stem), kwargs,
                             key='--data')
    except ConfigError:
        raise
    except (RawFileError, ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"--data '{path}': {error}") from None


def _unwrap(ds):
    """The dataset below :class:`torch.utils.data.Subset` wrappers (PyG's own subsets,
    ``dataset[index]``, are datasets already)."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


def _group_names(ds, key: str) -> Optional[Sequence[str]]:
    r"""Names of the integer labels of :obj:`key`: ``dataset.<key>_names``, else a class
    attribute ``<key>s`` holding strings (:obj:`COMP6.subsets` for COMP6's ``subset``)."""
    base = _unwrap(ds)
    names = getattr(base, f'{key}_names', None)
    if names is None:
        names = getattr(type(base), f'{key}s', None)
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


def _per_structure(sample, key: str) -> bool:
    value = getattr(sample, key, None)
    if isinstance(value, str):
        return True
    return isinstance(value, torch.Tensor) and value.numel() == 1


def _extxyz_info(ds, key: Optional[str]) -> Tuple[Optional[str], Optional[Any], Sequence[str]]:
    r"""For an :class:`~pyg_tensorpot.datasets.ExtXYZDataset` (or a part of one): the key
    found (:obj:`key`, or the first default one), the labels of its structures read with ASE
    from the frames' ``info`` (``"(none)"`` where a frame lacks it), and the info keys of the
    first frame."""
    import numpy as np
    from pyg_tensorpot.datasets import ExtXYZDataset
    from pyg_tensorpot.training.report import DEFAULT_GROUP_KEYS
    base = _unwrap(ds)
    if not isinstance(base, ExtXYZDataset) or len(ds) == 0:
        return None, None, ()
    import ase.io
    images = ase.io.read(base.path, index=base.index, format='extxyz')
    if not isinstance(images, list):
        images = [images]
    available = sorted(images[0].info) if images else []
    found = key if key is not None else next(
        (k for k in DEFAULT_GROUP_KEYS if images and k in images[0].info), None)
    if found is None or not any(found in atoms.info for atoms in images):
        return None, None, available
    texts = [str(atoms.info.get(found, '(none)')) for atoms in images]
    labels = np.asarray([texts[int(ds[i].idx)] for i in range(len(ds))], dtype=str)
    return found, labels, available


def _group_labels(ds, name: str, group_by: Optional[str]) -> Tuple[Optional[str], Optional[Any]]:
    r"""The attribute to group the errors of :obj:`ds` by: ``(key, None)`` for an attribute
    of the structures, ``(key, labels)`` for labels read from an extended-XYZ file, or
    ``(None, None)`` (no grouping)."""
    from pyg_tensorpot.training.report import DEFAULT_GROUP_KEYS
    if len(ds) == 0:
        return None, None
    sample = ds[0]
    keys = sorted(k for k in sample.keys() if _per_structure(sample, k))
    if group_by is not None:
        if group_by in sample.keys():
            if not _per_structure(sample, group_by):
                raise ConfigError(f"--group-by {group_by}: '{group_by}' of {name} is not one "
                                  f"label per structure; per-structure attributes are {keys}")
            return group_by, None
        found, labels, info = _extxyz_info(ds, group_by)
        if labels is not None:
            return found, labels
        also = f' and the frames have the info keys {list(info)}' if info else ''
        raise ConfigError(f"--group-by {group_by}: the structures of {name} have no "
                          f"'{group_by}'; their per-structure attributes are {keys}{also}")
    for key in DEFAULT_GROUP_KEYS:
        if key in keys:
            return key, None
    found, labels, _ = _extxyz_info(ds, None)
    return (found, labels) if labels is not None else (None, None)


def _run_dir_of(checkpoint: str) -> str:
    folder = osp.dirname(osp.abspath(checkpoint))
    if osp.basename(folder) == 'checkpoints':
        return osp.dirname(folder)
    return folder

