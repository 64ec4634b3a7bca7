r"""Training and evaluation runs: what ``pyg-tensorpot train`` and ``evaluate`` do."""
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
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch

from pyg_tensorpot.training.builders import build_dataset, build_model
from pyg_tensorpot.training.config import ConfigError, TrainingConfig
from pyg_tensorpot.training.data import (
    describe_statistics,
    fit_training_statistics,
    make_split,
    prepare_data,
)
from pyg_tensorpot.training.inference import evaluate_model
from pyg_tensorpot.training.metrics import format_error_table

logger = logging.getLogger('pyg_tensorpot.training')

#: ``format`` tag of the model files written by :func:`export_model`.
MODEL_FORMAT = 'pyg-tensorpot-model'
_DTYPES = {32: torch.float32, 64: torch.float64}
#: Lock file that a training run holds in its output folder while it runs.
LOCK_NAME = '.train.lock'


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
        model_path (str): The exported best model (:func:`load_trained_model`).
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


def export_model(model: torch.nn.Module, config: TrainingConfig, path: str,
                 statistics: Optional[Dict[str, Any]] = None) -> str:
    r"""Writes a trained model as a plain file (configuration plus state dict) that
    :func:`load_trained_model` reads back with ``torch.load(weights_only=True)``."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    payload = {
        'format': MODEL_FORMAT,
        'version': 1,
        'config': config.to_dict(),
        'statistics': statistics,
        'state_dict': {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path + '.tmp'
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_trained_model(path: str, map_location: str = 'cpu'
                       ) -> Tuple[torch.nn.Module, TrainingConfig]:
    r"""Loads a model exported by :func:`export_model` or the weight average (else the raw
    weights) of a Lightning checkpoint written by :func:`train`, with
    ``torch.load(weights_only=True)``.

    Returns:
        (torch.nn.Module, TrainingConfig): The model in evaluation mode and its configuration.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling errors have many types
        raise ValueError(f"'{path}' is not a pyg-tensorpot model or checkpoint ({error})") \
            from None
    if isinstance(payload, dict) and payload.get('format') == MODEL_FORMAT:
        config_dict, state = payload['config'], payload['state_dict']
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
    model = build_model(config.model, _DTYPES[config.precision])
    model.load_state_dict(state)
    model.eval()
    return model, config


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
    ``test_metrics.json`` and ``model.pt`` (the best weight average,
    :func:`load_trained_model`).

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
    dtype = _DTYPES[config.precision]
    prepared = prepare_data(config.data, config.seed, osp.join(out_dir, 'splits.npz'))
    _check_monitor(config, prepared)
    model = build_model(config.model, dtype)
    statistics = fit_training_statistics(model, prepared.train, config.data, prepared.dataset)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _echo(f'{type(model).__name__}: {n_params:,} trainable parameters; '
          f'{len(prepared.train)} training / {len(prepared.val)} validation structures'
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
        result.model_path = export_model(module.eval_model, config,
                                         osp.join(out_dir, 'model.pt'),
                                         module.hparams.get('statistics'))
        with open(osp.join(out_dir, 'test_metrics.json'), 'w') as f:
            json.dump(result.test_metrics, f, indent=1)
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
        _echo(f'model: {result.model_path}\nbest checkpoint: {best}', verbose and report)
    return result


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
             plots: bool = True, verbose: bool = True) -> Dict[str, Dict[str, float]]:
    r"""Evaluates a trained model: prints energy (per structure and per atom) and force MAE
    and RMSE in eV, meV and kcal/mol, and writes parity plots (and the learning curves of the
    run, when its ``logs/metrics.csv`` is found) as PNG.

    Args:
        checkpoint (str): ``model.pt`` or a ``.ckpt`` written by :func:`train`.
        dataset, root, args, split, splits_file: See :func:`evaluation_sets`.
        batch_size (int, optional): Structures per batch. (default: :obj:`64`)
        device (str, optional): :obj:`"cpu"`, :obj:`"cuda"`, ...; defaults to CUDA when
            available. (default: :obj:`None`)
        out_dir (str, optional): Where to write the plots and ``evaluation.json``; defaults
            to the run folder of :obj:`checkpoint`. (default: :obj:`None`)
        plots (bool, optional): Write the PNG plots. (default: :obj:`True`)
        verbose (bool, optional): Print the tables. (default: :obj:`True`)

    Returns:
        dict: Metrics by evaluated set (eV, eV/Angstrom).
    """
    model, config = load_trained_model(checkpoint)
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    model = model.to(device)
    run_dir = _run_dir_of(checkpoint)
    out_dir = out_dir or run_dir
    sets = evaluation_sets(config, dataset, root, args, split, splits_file)
    results: Dict[str, Dict[str, float]] = {}
    for name, ds in sets.items():
        metrics, predictions = evaluate_model(model, ds, batch_size, torch.device(device),
                                              config.data.energy_key, config.data.forces_key,
                                              keep_predictions=plots)
        results[name] = metrics
        title = (f'Errors of {type(model).__name__} on {int(metrics["num_structures"]):,} '
                 f'structures of {name}')
        _echo(format_error_table(metrics, title), verbose)
        if plots and predictions:
            from pyg_tensorpot.training.plots import plot_parity
            slug = re.sub('[^0-9a-z]+', '_', name.lower()).strip('_')
            path = plot_parity(predictions, osp.join(out_dir, f'parity_{slug}.png'), title)
            _echo(f'parity plot: {path}', verbose)
    if plots:
        metrics_csv = osp.join(run_dir, 'logs', 'metrics.csv')
        if osp.isfile(metrics_csv):
            from pyg_tensorpot.training.plots import plot_learning_curves
            path = plot_learning_curves(metrics_csv, osp.join(out_dir, 'learning_curves.png'),
                                        title=f'{type(model).__name__} on '
                                        f'{config.data.dataset}')
            _echo(f'learning curves: {path}', verbose)
    os.makedirs(out_dir, exist_ok=True)
    with open(osp.join(out_dir, 'evaluation.json'), 'w') as f:
        json.dump(results, f, indent=1)
    return results


def _run_dir_of(checkpoint: str) -> str:
    folder = osp.dirname(osp.abspath(checkpoint))
    if osp.basename(folder) == 'checkpoints':
        return osp.dirname(folder)
    return folder

