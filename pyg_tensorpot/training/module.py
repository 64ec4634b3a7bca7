r"""The Lightning module and data module: one training engine for every model and dataset.

Needs PyTorch Lightning (``pip install 'pyg-tensorpot[train]'``).
"""
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from pyg_tensorpot.training._lightning import require_lightning
from pyg_tensorpot.training.config import (
    ConfigError,
    DataConfig,
    TrainingConfig,
    check_regularization,
)
from pyg_tensorpot.training.data import PreparedData, prepare_data, structure_groups
from pyg_tensorpot.training.ema import ExponentialMovingAverage
from pyg_tensorpot.training.inference import batch_targets, predict
from pyg_tensorpot.training.losses import EnergyForceLoss
from pyg_tensorpot.training.metrics import ErrorAccumulator, loss_from_metrics
from pyg_tensorpot.training.sampling import (
    ResumableDataLoader,
    evaluation_loader,
    training_loader,
)
from pyg_tensorpot.utils.dtypes import to_dtype

pl = require_lightning()
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402


class PotentialModule(pl.LightningModule):
    r"""Trains any potential of the package (TensorNet, HIP-NN, HIP-NN-TS) or any user model
    whose ``forward(z, pos, batch)`` returns per-structure energies.

    * Loss: :class:`~pyg_tensorpot.training.EnergyForceLoss` (weighted energy and force
      MSE/MAE, per molecule or per atom, torchmd-net's energy-loss EMA, and the penalty
      terms the model declares, weighted by :obj:`loss.regularization`; see
      :meth:`~pyg_tensorpot.models.AtomisticModel.graph_outputs_and_regularization`).
    * Optimisation: AdamW, linear warm-up over :obj:`optim.warmup_steps` steps, then
      ReduceLROnPlateau on the monitored validation metric (stepped at the end of every
      validation, before checkpoints are written, so that a resumed run is identical);
      gradient clipping is the trainer's.
    * An exponential moving average of the weights
      (:class:`~pyg_tensorpot.training.ExponentialMovingAverage`) is validated, tested and
      exported.
    * Validation and test errors are accumulated exactly (sums over all processes) and logged
      as :obj:`val_loss`, :obj:`val_energy_mae`, ... in eV and eV/Angstrom.

    Set the model's reference energies and standardisation before building the module
    (:func:`~pyg_tensorpot.training.fit_training_statistics`), so that the averaged copy
    starts from them.

    Args:
        model (torch.nn.Module): The potential, in the precision of :obj:`config`.
        config (TrainingConfig or dict): The experiment.
        statistics (dict, optional): Fitted reference energies and standardisation, stored
            with the checkpoints. (default: :obj:`None`)
    """
    def __init__(self, model: torch.nn.Module, config: Union[TrainingConfig, Dict[str, Any]],
                 statistics: Optional[Dict[str, Any]] = None):
        super().__init__()
        if isinstance(config, dict):
            config = TrainingConfig.from_dict(config)
        self.config = config
        self.model = model
        self.dtype_ = to_dtype(config.precision)
        self.ema = (ExponentialMovingAverage(model, config.optim.ema_decay)
                    if config.optim.ema_decay > 0 else None)
        loss = config.loss
        # Checked against the model itself too: with model.init the configuration names none.
        check_regularization(model, loss.regularization)
        self.loss_fn = EnergyForceLoss(loss.energy_weight, loss.force_weight, loss.type,
                                       loss.per_atom_energy, loss.energy_loss_ema,
                                       loss.stress_weight, loss.regularization,
                                       loss.relative_energy_weight)
        self.save_hyperparameters({'config': config.to_dict(),
                                   'statistics': _plain_statistics(statistics)})
        self._val_errors = ErrorAccumulator()
        self._test_errors: List[ErrorAccumulator] = []
        self._plateau: Optional[torch.optim.lr_scheduler.ReduceLROnPlateau] = None
        self._pending_plateau_state: Optional[Dict[str, Any]] = None
        #: Test metrics of the last :meth:`~lightning.pytorch.Trainer.test`, by test-set name.
        self.test_results: Dict[str, Dict[str, float]] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def eval_model(self) -> torch.nn.Module:
        """The model that is validated, tested and exported (the weight average if any)."""
        return self.ema.module if self.ema is not None else self.model

    def forward(self, z: Tensor, pos: Tensor, batch: Optional[Tensor] = None,
                **kwargs) -> Tensor:
        return self.model(z, pos, batch, **kwargs)

    def _all_reduce(self, tensor: Tensor, op: str) -> Tensor:
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return tensor
        return trainer.strategy.reduce(tensor, reduce_op=op)

    def _reduce_sum(self, tensor: Tensor) -> Tensor:
        return self._all_reduce(tensor, 'sum')

    def _reduce_mean(self, tensor: Tensor) -> Tensor:
        return self._all_reduce(tensor, 'mean')

    def _targets(self, batch):
        data = self.config.data
        return batch_targets(batch, data.energy_key, data.forces_key, self.dtype_)

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        loader = self.trainer.train_dataloader
        if isinstance(loader, ResumableDataLoader):
            loader.mark_batch(batch_idx)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        energy_t, forces_t, num_atoms = self._targets(batch)
        stress_t = getattr(batch, self.config.data.stress_key, None)
        need_forces = forces_t is not None and self.loss_fn.force_weight > 0
        need_stress = stress_t is not None and self.loss_fn.stress_weight > 0
        energy, forces, penalties, stress = predict(
            self.model, batch, need_forces, create_graph=True,
            regularization=bool(self.loss_fn.regularization), stress=need_stress)
        has_stress = getattr(batch, 'has_stress', None)
        if need_stress and has_stress is not None:
            # Only the structures whose data carry a stress (ExtXYZDataset marks them).
            keep = has_stress.reshape(-1).bool()
            stress, stress_t = stress[keep], stress_t[keep]
        group_key = self.config.data.group_key
        group = getattr(batch, group_key) if group_key is not None else None
        parts = self.loss_fn(energy, energy_t, num_atoms, forces, forces_t, penalties,
                             smooth=True, reduce_mean=self._reduce_mean, stress=stress,
                             stress_target=stress_t, group=group)
        loss = parts['loss']
        if 'energy' not in parts:
            # every parameter must take part in the graph (DDP), also with energy_weight = 0
            loss = loss + 0.0 * energy.sum()
        n = int(batch.num_graphs)
        self.log('train_loss', loss.detach(), on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=n, sync_dist=True)
        for key in ('energy', 'forces', 'stress', 'relative_energy') + tuple(penalties):
            if key in parts:
                self.log(f'train_{key}_loss', parts[key].detach(), on_step=False,
                         on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def configure_optimizers(self):
        optim = self.config.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
        self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode='min', factor=optim.lr_factor, patience=optim.lr_patience,
            min_lr=optim.lr_min)
        if self._pending_plateau_state is not None:
            self._plateau.load_state_dict(self._pending_plateau_state)
            self._pending_plateau_state = None
        return optimizer

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer,
                       optimizer_closure: Optional[Callable[[], Any]] = None) -> None:
        warmup = self.config.optim.warmup_steps
        step = self.trainer.global_step
        if step < warmup:
            scale = min(1.0, float(step + 1) / float(warmup))
            for group in optimizer.param_groups:
                group['lr'] = scale * self.config.optim.lr
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.ema is not None:
            self.ema.update(self.model)

    # ------------------------------------------------------------------ evaluation
    def _evaluate_batch(self, batch, errors: ErrorAccumulator) -> None:
        energy_t, forces_t, num_atoms = self._targets(batch)
        energy, forces, _, _ = predict(self.eval_model, batch, forces_t is not None,
                                       create_graph=False)
        group_key = self.config.data.group_key
        group = getattr(batch, group_key, None) if group_key is not None else None
        errors.update(energy, energy_t, num_atoms, forces, forces_t, group)

    def on_validation_epoch_start(self) -> None:
        self._val_errors.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate_batch(batch, self._val_errors)

    def on_validation_epoch_end(self) -> None:
        self._val_errors.reduce(self._reduce_sum)
        metrics = self._val_errors.compute()
        loss = self.config.loss
        values = {'val_loss': loss_from_metrics(metrics, loss.type, loss.energy_weight,
                                                loss.force_weight, loss.per_atom_energy,
                                                loss.relative_energy_weight)}
        for key in ('energy_mae', 'energy_rmse', 'energy_per_atom_mae', 'forces_mae',
                    'forces_rmse', 'relative_energy_mae', 'relative_energy_rmse'):
            if key in metrics:
                values[f'val_{key}'] = metrics[key]
        trainer = self.trainer
        if trainer.optimizers:
            values['lr'] = trainer.optimizers[0].param_groups[0]['lr']
        self.log_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()},
                      prog_bar=False, sync_dist=False)
        monitor = self.config.trainer.monitor
        if monitor not in values:
            raise ConfigError(f'trainer.monitor: {monitor} is not available for this data '
                              f'(available: {", ".join(sorted(values))})')
        fitting = trainer.state.fn == 'fit'
        if fitting and not trainer.sanity_checking and self._plateau is not None:
            self._plateau.step(values[monitor])

    def on_test_epoch_start(self) -> None:
        loaders = self.trainer.test_dataloaders
        count = len(loaders) if isinstance(loaders, (list, tuple)) else 1
        self._test_errors = [ErrorAccumulator() for _ in range(count)]

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate_batch(batch, self._test_errors[dataloader_idx])

    def on_test_epoch_end(self) -> None:
        names = getattr(self.trainer.datamodule, 'test_names', None) or [
            'test' if i == 0 else f'test{i}' for i in range(len(self._test_errors))]
        self.test_results = {}
        logged = {}
        for name, errors in zip(names, self._test_errors):
            errors.reduce(self._reduce_sum)
            metrics = errors.compute()
            self.test_results[name] = metrics
            prefix = 'test' if name == 'test' else f'test_{name}'
            for key, value in metrics.items():
                if key.endswith(('_mae', '_rmse')):
                    logged[f'{prefix}_{key}'] = torch.tensor(value, dtype=torch.float64)
        self.log_dict(logged, sync_dist=False, add_dataloader_idx=False)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self._plateau is not None:
            checkpoint['plateau_scheduler'] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        state = checkpoint.get('plateau_scheduler')
        if state is None:
            return
        if self._plateau is not None:
            self._plateau.load_state_dict(state)
        else:
            self._pending_plateau_state = state


def _plain_statistics(statistics: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if statistics is None:
        return None
    refs = statistics.get('reference_energies')
    return {
        'reference_energies': None if refs is None else {int(k): float(v)
                                                         for k, v in refs.items()},
        'mean': float(statistics.get('mean', 0.0)),
        'std': float(statistics.get('std', 1.0)),
    }


class AtomisticDataModule(pl.LightningDataModule):
    r"""The datasets, split and loaders of a configuration's ``data`` section.

    The training loader is deterministic per epoch, shards the global batch over the processes
    of a DDP run and resumes in the middle of an epoch
    (:class:`~pyg_tensorpot.training.sampling.ResumableDataLoader`); with
    :obj:`data.group_key` its batches keep every group whole
    (:class:`~pyg_tensorpot.training.sampling.GroupBatchSampler`, one process). Validation and
    test loaders visit every structure exactly once over all processes.

    Args:
        config (DataConfig): The data section.
        seed (int): The run's seed (data order and default split seed).
        splits_path (str, optional): Where to save ``splits.npz``. (default: :obj:`None`)
        prepared (PreparedData, optional): Already loaded and split datasets.
            (default: :obj:`None`)
    """
    def __init__(self, config: DataConfig, seed: int, splits_path: Optional[str] = None,
                 prepared: Optional[PreparedData] = None):
        super().__init__()
        self.config = config
        self.seed = int(seed)
        self.splits_path = splits_path
        self.prepared = prepared

    def setup(self, stage: Optional[str] = None) -> None:
        if self.prepared is None:
            self.prepared = prepare_data(self.config, self.seed, self.splits_path)

    @property
    def test_names(self) -> List[str]:
        """Names of the test sets, in the order of :meth:`test_dataloader`."""
        return list(self.prepared.test) if self.prepared is not None else []

    def _world(self) -> Tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _loader_kwargs(self) -> Dict[str, Any]:
        workers = self.config.num_workers
        return {'num_workers': workers, 'persistent_workers': workers > 0}

    def train_dataloader(self) -> ResumableDataLoader:
        world, rank = self._world()
        groups = None
        if self.config.group_key is not None:
            groups = structure_groups(self.prepared.train, self.config.group_key)
        try:
            return training_loader(self.prepared.train, self.config.batch_size, self.seed,
                                   world, rank, groups=groups, **self._loader_kwargs())
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def val_dataloader(self):
        world, rank = self._world()
        return evaluation_loader(self.prepared.val, self.config.inference_batch_size, world,
                                 rank, **self._loader_kwargs())

    def test_dataloader(self):
        world, rank = self._world()
        return [evaluation_loader(ds, self.config.inference_batch_size, world, rank,
                                  **self._loader_kwargs()) for ds in self.prepared.test.values()]


class LastCheckpoint(ModelCheckpoint):
    r"""Writes ``last.ckpt`` (any :class:`~lightning.pytorch.callbacks.ModelCheckpoint`
    arguments) only in states from which a resumed run continues exactly as an
    uninterrupted one:

    * after a complete epoch and its validation, and not after an epoch cut short by
      ``max_steps`` or ``max_time`` (that would be resumed as if it were complete);
    * every :obj:`every_n_train_steps` steps, except on the last batch of an epoch (that state
      precedes the epoch's validation, which a resumed run would skip).
    """
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if done < trainer.num_training_batches:
            return
        super().on_train_epoch_end(trainer, pl_module)


class EpochSummary(pl.Callback):
    r"""Prints one line per validation: epoch, validation loss, energy and force
    MAE (meV, meV/Angstrom), learning rate and elapsed time (a compact alternative to the
    progress bar, e.g. for logs)."""
    def __init__(self):
        super().__init__()
        self._start: Optional[float] = None

    def on_train_start(self, trainer, pl_module) -> None:
        import time
        self._start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        import time
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [f'epoch {trainer.current_epoch + 1:>4d}/{trainer.max_epochs}']
        if 'val_loss' in metrics:
            parts.append(f'val loss {float(metrics["val_loss"]):.3e}')
        if 'val_energy_mae' in metrics:
            parts.append(f'val energy MAE {1e3 * float(metrics["val_energy_mae"]):8.2f} meV')
        if 'val_forces_mae' in metrics:
            parts.append(f'force MAE {1e3 * float(metrics["val_forces_mae"]):8.2f} meV/Å')
        if 'lr' in metrics:
            parts.append(f'lr {float(metrics["lr"]):.1e}')
        if self._start is not None:
            parts.append(f'{time.perf_counter() - self._start:6.0f} s')
        print('  '.join(parts), flush=True)
