r"""Training and evaluation of interatomic potentials: one engine for every model and dataset.

The Lightning-based pieces (:class:`PotentialModule`, :class:`AtomisticDataModule`,
:func:`train`) need the ``train`` extra (``pip install 'pyg-tensorpot[train]'``); they are
imported on first access, so that configuration handling, metrics and evaluation work without
Lightning.
"""
from pyg_tensorpot.training.config import (
    ConfigError,
    DataConfig,
    LossConfig,
    OptimConfig,
    TrainerConfig,
    TrainingConfig,
    load_config,
)
from pyg_tensorpot.training.data import PreparedData, fit_training_statistics, prepare_data
from pyg_tensorpot.training.ema import ExponentialMovingAverage
from pyg_tensorpot.training.inference import evaluate_model, predict
from pyg_tensorpot.training.losses import EnergyForceLoss
from pyg_tensorpot.training.metrics import ErrorAccumulator, format_error_table
from pyg_tensorpot.training.replay import ReplayMix
from pyg_tensorpot.training.sampling import ResumableDataLoader, ResumableSampler

_LAZY = {
    'PotentialModule': 'pyg_tensorpot.training.module',
    'AtomisticDataModule': 'pyg_tensorpot.training.module',
    'train': 'pyg_tensorpot.training.run',
    'evaluate': 'pyg_tensorpot.training.run',
    'export_model': 'pyg_tensorpot.training.export',
    'load_trained_model': 'pyg_tensorpot.training.export',
    'TrainResult': 'pyg_tensorpot.training.run',
    'train_ensemble': 'pyg_tensorpot.training.run',
    'load_ensemble': 'pyg_tensorpot.training.run',
    'export_pretrained': 'pyg_tensorpot.training.export',
    'EnsembleResult': 'pyg_tensorpot.training.run',
    'quickstart': 'pyg_tensorpot.training.quickstart',
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pyg_tensorpot.training' has no attribute '{name}'")


__all__ = [
    'ConfigError',
    'DataConfig',
    'LossConfig',
    'OptimConfig',
    'TrainerConfig',
    'TrainingConfig',
    'load_config',
    'PreparedData',
    'prepare_data',
    'fit_training_statistics',
    'ExponentialMovingAverage',
    'EnergyForceLoss',
    'ErrorAccumulator',
    'format_error_table',
    'predict',
    'evaluate_model',
    'ResumableSampler',
    'ResumableDataLoader',
    'ReplayMix',
] + list(_LAZY)
