"""Training engine: configuration, data order, losses, weight average, metrics, training of
TensorNet, HIP-NN-TS and a user model on real MD17 ethanol frames, evaluation, CLI and exact
resumption of an interrupted run."""
import json
import math
import os
import os.path as osp
import sys
import textwrap
import warnings

import pytest
import torch
from torch_geometric.data import Batch, Data

pytest.importorskip('lightning')
pytest.importorskip('yaml')

from pyg_tensorpot.training import (  # noqa: E402
    ConfigError,
    EnergyForceLoss,
    ErrorAccumulator,
    ExponentialMovingAverage,
    ResumableSampler,
    format_error_table,
    load_config,
)
from pyg_tensorpot.training.config import TrainingConfig, parse_overrides  # noqa: E402
from pyg_tensorpot.training.sampling import training_loader  # noqa: E402
from pyg_tensorpot.utils.units import EV_TO_KCAL_PER_MOL  # noqa: E402

# A tiny TensorNet on 32 training / 16 validation / 16 test frames of the bundled real MD17
# ethanol sample: 4 optimiser steps per epoch.
TINY_TENSORNET = ['model.hidden_channels=8', 'model.num_layers=1', 'model.num_rbf=4']
TINY = [
    'seed=7',
    'data.dataset=MD17EthanolSample', 'data.train_size=32', 'data.val_size=16',
    'data.test_size=16', 'data.batch_size=8', 'data.inference_batch_size=16',
    'optim.lr=2e-3', 'optim.warmup_steps=3', 'optim.lr_patience=0', 'optim.lr_factor=0.5',
    'optim.ema_decay=0.9', 'trainer.max_epochs=3', 'trainer.progress_bar=false',
    'trainer.accelerator=cpu', 'trainer.early_stopping_patience=2', 'trainer.num_threads=1',
]


def tiny_config(out_dir, *extra, model=TINY_TENSORNET):
    return load_config(None, TINY + list(model) + [f'out_dir={out_dir}'] + list(extra))


def state_dicts_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def exported_weights(model_dir):
    """The tensors of an exported model folder, read as the safetensors file it is."""
    from safetensors.torch import load_file
    return load_file(osp.join(model_dir, 'model.safetensors'))


# ---------------------------------------------------------------------- configuration
def test_config_yaml_overrides_and_scientific_notation(tmp_path):
    path = tmp_path / 'cfg.yaml'
    path.write_text(textwrap.dedent('''
        seed: 3
        model: {name: TensorNet, hidden_channels: 16}
        data: {dataset: MD17EthanolSample, batch_size: 4}
        optim: {lr: 1e-4, lr_min: 1.0e-8}
    '''))
    config = load_config(str(path), ['optim.lr=5e-4', 'model.num_layers=3',
                                     'data.args.log=false', 'trainer.max_time=1.5'])
    assert config.seed == 3
    assert config.optim.lr == 5e-4 and isinstance(config.optim.lr, float)
    assert config.optim.lr_min == 1e-8
    assert config.model == {'name': 'TensorNet', 'hidden_channels': 16, 'num_layers': 3}
    assert config.data.args == {'log': False}
    assert config.trainer.max_time == 1.5
    # a saved configuration reads back identically
    config.save(str(tmp_path / 'again.yaml'))
    assert load_config(str(tmp_path / 'again.yaml')).to_dict() == config.to_dict()


@pytest.mark.parametrize('override, words', [
    (['optim.learning_rate=1e-3'], ['optim.learning_rate', "'lr'", "'warmup_steps'"]),
    (['loss.type=huber'], ['loss.type', "'huber'", "'mse'", "'mae'"]),
    (['trainer.strategy=fsdp'], ['trainer.strategy', "'ddp'"]),
    (['precision=16'], ['precision', '32', '64']),
    (['data.train_size=1.5'], ['data.train_size', 'fraction']),
    (['trainer.monitor=val_accuracy'], ['trainer.monitor', "'val_forces_mae'"]),
    (['optimizer.lr=1'], ["'optimizer'", "'optim'"]),
    (['data.reference_energies=guess'], ['data.reference_energies', "'fit'", "'dataset'"]),
    (['loss.energy_weight=0', 'loss.force_weight=0'], ['nothing would be trained']),
    (['loss.regularization.hierarchicality=1'],
     ['loss.regularization.hierarchicality', 'TensorNet', "no 'hierarchicality'", 'none']),
    (['model.name=HIPNN', 'loss.regularization.l3=1'], ["no 'l3'", 'hierarchicality, l2']),
    (['loss.regularization=1'], ['loss.regularization', 'mapping']),
    (['model.name=HIPNN', 'loss.regularization.l2=-1'], ['loss.regularization.l2', '>= 0']),
])
def test_bad_config_names_key_and_allowed_values(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, override)
    for word in words:
        assert word in str(info.value)


def test_former_regularizer_keys_are_read_as_regularization_weights():
    with pytest.warns(FutureWarning, match='loss.regularization.hierarchicality'):
        config = load_config(None, ['model.name=HIPNN', 'loss.hierarchicality_weight=0.5',
                                    'loss.l2_weight=0'])
    assert config.loss.regularization == {'hierarchicality': 0.5}
    assert 'hierarchicality_weight' not in config.to_dict()['loss']
    # as before, a model without the term ignores the former key (with the warning)
    with pytest.warns(FutureWarning, match='loss.regularization.l2'):
        assert load_config(None, ['loss.l2_weight=1e-6']).loss.regularization == {}
    # the zero weights every saved run holds are dropped without a warning
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        old_run = {'loss': {'hierarchicality_weight': 0.0, 'l2_weight': 0.0}}
        assert TrainingConfig.from_dict(old_run).loss.regularization == {}
    with pytest.raises(ConfigError, match='contradicts'), pytest.warns(FutureWarning):
        load_config(None, ['model.name=HIPNN', 'loss.l2_weight=1',
                           'loss.regularization.l2=2'])


def test_bad_model_and_dataset_arguments(tmp_path):
    from pyg_tensorpot.training.builders import build_dataset, build_model
    with pytest.raises(ConfigError, match=r"model\.hidden_size.*'hidden_channels'"):
        build_model({'name': 'TensorNet', 'hidden_size': 8})
    with pytest.raises(ConfigError, match=r"unknown model 'SchNet'.*TensorNet"):
        build_model({'name': 'SchNet'})
    with pytest.raises(ConfigError, match=r"unknown dataset 'MD22'.*MD17EthanolSample"):
        build_dataset('MD22', None, {})
    with pytest.raises(ConfigError, match=r"data\.args\.molecule"):
        build_dataset('MD17EthanolSample', None, {'molecule': 'aspirin'})
    with pytest.raises(ConfigError, match='key=value'):
        parse_overrides(['optim.lr'])


# ---------------------------------------------------------------------- data order
def test_sampler_is_deterministic_per_epoch_and_shards_the_global_batch():
    single = ResumableSampler(20, seed=5)
    single.set_epoch(3)
    order = single.indices()
    assert sorted(order) == list(range(20))
    again = ResumableSampler(20, seed=5)
    again.set_epoch(3)
    assert again.indices() == order
    again.set_epoch(4)
    assert again.indices() != order
    # two processes with local batch 2 see, step by step, the global batch of 4
    data = [Data(idx=torch.tensor([i])) for i in range(20)]
    full = training_loader(data, 4, seed=5)
    ranks = [training_loader(data, 4, seed=5, num_replicas=2, rank=r) for r in range(2)]
    for loader in [full] + ranks:
        loader.sampler.set_epoch(3)
    for big, *parts in zip(full, *ranks):
        assert sorted(big.idx.tolist()) == sorted(sum((p.idx.tolist() for p in parts), []))
    with pytest.raises(ValueError, match='divisible'):
        training_loader(data, 3, seed=5, num_replicas=2)


def test_loader_state_resumes_mid_epoch():
    data = [Data(idx=torch.tensor([i])) for i in range(10)]
    loader = training_loader(data, 3, seed=1)
    loader.sampler.set_epoch(2)
    batches = [b.idx.tolist() for b in loader]
    loader.mark_batch(1)  # two batches of epoch 2 started
    state = loader.state_dict()
    assert state['epoch'] == 2 and state['batches'] == 2
    fresh = training_loader(data, 3, seed=1)
    fresh.load_state_dict(state)
    assert [b.idx.tolist() for b in fresh] == batches[2:]
    # a complete epoch resumes at the start of the next one
    loader.mark_batch(len(loader) - 1)
    assert loader.state_dict()['epoch'] == 3 and loader.state_dict()['batches'] == 0
    with pytest.raises(ValueError, match='seed'):
        training_loader(data, 3, seed=2).load_state_dict(state)


# ---------------------------------------------------------------------- loss, EMA, metrics
def test_loss_terms_types_and_energy_ema():
    energy = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0.0, 4.0], dtype=torch.float64)
    atoms = torch.tensor([2, 4])
    forces = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)
    forces_t = torch.zeros(1, 3, dtype=torch.float64)
    mse = EnergyForceLoss(2.0, 10.0, 'mse')(energy, target, atoms, forces, forces_t)
    assert math.isclose(mse['energy'].item(), (1 + 4) / 2)
    assert math.isclose(mse['forces'].item(), 2 / 3)
    assert math.isclose(mse['loss'].item(), 2 * 2.5 + 10 * 2 / 3, rel_tol=1e-6)
    mae = EnergyForceLoss(1.0, 0.0, 'mae', per_atom_energy=True)(energy, target, atoms)
    assert math.isclose(mae['loss'].item(), (0.5 + 0.5) / 2)
    both = EnergyForceLoss(1.0, 0.0, 'rmse+mae')(energy, target, atoms)
    assert math.isclose(both['loss'].item(), math.sqrt(2.5) + 1.5, rel_tol=1e-6)
    # penalty terms are weighted by name; a term without a weight is not added
    terms = {'hierarchicality': torch.tensor(0.3, dtype=torch.float64),
             'l2': torch.tensor(7.0, dtype=torch.float64)}
    hier = EnergyForceLoss(1.0, 0.0, regularization={'hierarchicality': 0.5})(
        energy, target, atoms, regularization_terms=terms)
    assert math.isclose(hier['loss'].item(), 2.5 + 0.5 * 0.3, rel_tol=1e-12)
    assert 'l2' not in hier and math.isclose(hier['hierarchicality'].item(), 0.3)
    # torchmd-net's energy-loss EMA: the second step's loss is alpha*L + (1-alpha)*EMA and its
    # gradient is scaled by alpha
    smooth = EnergyForceLoss(1.0, 0.0, energy_loss_ema=0.1)
    first = smooth(energy, target, atoms, smooth=True)['loss']
    assert math.isclose(first.item(), 2.5)
    energy2 = target.clone().requires_grad_(True)  # a perfect batch
    second = smooth(energy2, target, atoms, smooth=True)['loss']
    assert math.isclose(second.item(), 0.9 * 2.5, rel_tol=1e-6)
    energy3 = torch.tensor([1.0, 4.0], dtype=torch.float64, requires_grad=True)
    smooth(energy3, target, atoms, smooth=True)['loss'].backward()
    assert math.isclose(energy3.grad[0].item(), 0.1 * 2 * 1.0 / 2, rel_tol=1e-6)
    # the EMA travels with the state dict (checkpoints)
    restored = EnergyForceLoss(1.0, 0.0, energy_loss_ema=0.1)
    restored.load_state_dict(smooth.state_dict())
    assert restored._ema_value == smooth._ema_value
    with pytest.raises(ValueError, match='nothing to train'):
        EnergyForceLoss(0.0, 1.0)(energy, target, atoms)


def test_weight_average_follows_parameters_and_copies_buffers():
    model = torch.nn.Linear(2, 1)
    model.register_buffer('mean', torch.tensor(-4209.123456789))
    ema = ExponentialMovingAverage(model, decay=0.5)
    start = model.weight.detach().clone()
    assert not any(p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        model.weight.add_(1.0)
        model.mean.fill_(7.0)
    decay = ema.current_decay()  # min(0.5, 1/10)
    assert decay == pytest.approx(0.1)
    ema.update(model)
    assert torch.allclose(ema.module.weight, decay * start + (1 - decay) * model.weight)
    assert ema.module.mean.item() == 7.0
    assert int(ema.num_updates) == 1
    for _ in range(20):
        ema.update(model)
    assert ema.current_decay() == 0.5


def test_published_reference_energies_are_the_dataset_atomref():
    from pyg_tensorpot.models import TensorNet
    from pyg_tensorpot.training import DataConfig, fit_training_statistics

    class Published(list):
        def atomref(self):
            return {1: -0.5, 8: -75.0}

    water = Data(z=torch.tensor([8, 1, 1]), energy=torch.tensor([-76.0]),
                 pos=torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]))
    model = TensorNet(hidden_channels=8, num_layers=1, num_rbf=4, cutoff=3.0)
    config = DataConfig(reference_energies='dataset', standardize=False)
    stats = fit_training_statistics(model, Published([water]), config)
    assert stats['reference_energies'] == {1: -0.5, 8: -75.0}
    assert float(model.atomref[8]) == -75.0
    with pytest.raises(ConfigError, match=r"list publishes no reference energies; use 'fit'"):
        fit_training_statistics(model, [water], config)


def test_error_accumulator_and_table():
    errors = ErrorAccumulator()
    e_pred, e_true = torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0.0, 0.0, 0.0])
    atoms = torch.tensor([2, 2, 5])
    f_pred = torch.tensor([[0.1, 0.2, -0.3], [0.0, 0.0, 0.4]])
    errors.update(e_pred[:2], e_true[:2], atoms[:2], f_pred, torch.zeros(2, 3))
    errors.update(e_pred[2:], e_true[2:], atoms[2:])
    metrics = errors.compute()
    assert metrics['num_structures'] == 3
    assert metrics['energy_mae'] == pytest.approx(2.5 / 3)
    assert metrics['energy_rmse'] == pytest.approx(math.sqrt(2.25 / 3))
    assert metrics['energy_per_atom_mae'] == pytest.approx((0.5 + 0.5 + 0.1) / 3)
    assert metrics['forces_mae'] == pytest.approx(1.0 / 6)
    # sums of two processes give the metrics of one
    doubled = ErrorAccumulator()
    doubled.update(e_pred, e_true, atoms)
    doubled.reduce(lambda t: 2 * t)
    assert doubled.compute()['energy_mae'] == pytest.approx(2.5 / 3)
    table = format_error_table(metrics, 'title')
    assert table.splitlines()[0] == 'title'
    assert 'kcal/mol' in table and 'meV' in table
    assert f'{metrics["energy_mae"] * EV_TO_KCAL_PER_MOL:.4f}' in table
    assert f'{metrics["forces_rmse"] * 1e3:.2f}' in table


# ---------------------------------------------------------------------- statistics
def test_statistics_are_fitted_on_the_training_split_only():
    from pyg_tensorpot import TensorNet
    from pyg_tensorpot.training import fit_training_statistics, prepare_data
    config = load_config(None, TINY + TINY_TENSORNET + ['data.reference_energies=fit'])
    prepared = prepare_data(config.data, config.seed)
    model = TensorNet(hidden_channels=8, num_layers=0, num_rbf=4)
    stats = fit_training_statistics(model, prepared.train, config.data, prepared.dataset)
    energies = torch.cat([d.energy for d in prepared.train]).double()
    counts = torch.tensor([[int((d.z == e).sum()) for e in (1, 6, 8)] for d in prepared.train])
    refs = torch.tensor([stats['reference_energies'][e] for e in (1, 6, 8)], dtype=torch.float64)
    residual = energies - counts.double() @ refs
    assert stats['mean'] == pytest.approx(float(residual.mean()), abs=1e-6)
    assert stats['std'] == pytest.approx(float(residual.std()), rel=1e-6)
    assert float(model.std) == pytest.approx(stats['std'], rel=1e-6)
    assert float(model.atomref[6]) == pytest.approx(stats['reference_energies'][6], rel=1e-6)
    # validation and test energies play no role
    val_energies = torch.cat([d.energy for d in prepared.val]).double()
    assert stats['std'] != pytest.approx(float(torch.cat([energies, val_energies]).std()),
                                         rel=1e-9)


# ---------------------------------------------------------------------- training runs
@pytest.fixture(scope='module')
def tensornet_run(tmp_path_factory):
    from pyg_tensorpot.training import train
    out = tmp_path_factory.mktemp('tensornet')
    result = train(tiny_config(out, 'trainer.early_stopping_patience=0'), verbose=False)
    return result


def test_training_improves_and_writes_everything(tensornet_run):
    from pyg_tensorpot.training.plots import read_metrics_csv
    out = tensornet_run.out_dir
    for name in ('config.yaml', 'splits.npz', 'test_metrics.json', 'learning_curves.png',
                 'logs/metrics.csv', 'checkpoints/best.ckpt', 'checkpoints/last.ckpt',
                 'model/model.safetensors', 'model/config.json', 'model/README.md',
                 'model/training.json'):
        assert osp.isfile(osp.join(out, name)), name
    # one weights format: the export is the save_pretrained folder, no pickled file
    assert tensornet_run.model_path == tensornet_run.pretrained_dir == osp.join(out, 'model')
    assert not osp.exists(osp.join(out, 'model.pt'))
    series = read_metrics_csv(osp.join(out, 'logs', 'metrics.csv'))
    val = series['val_loss']
    assert sorted(val) == [0, 1, 2]
    assert min(val[1], val[2]) < val[0]
    # warm-up over 3 steps, then the plateau rule may halve the rate
    assert series['lr'][0] == pytest.approx(2e-3)
    metrics = tensornet_run.test_metrics['test']
    assert metrics['num_structures'] == 16
    with open(osp.join(out, 'test_metrics.json')) as f:
        assert json.load(f)['test']['forces_mae'] == pytest.approx(metrics['forces_mae'])
    # the best checkpoint is the one with the lowest validation loss (of the weight average)
    best = torch.load(tensornet_run.best_checkpoint, weights_only=True)
    assert best['epoch'] == min(val, key=val.get)


def test_exported_model_and_evaluate_reproduce_test_metrics(tensornet_run, capsys):
    from pyg_tensorpot.cli import main
    from pyg_tensorpot.training import load_trained_model
    model, config = load_trained_model(tensornet_run.model_path)
    assert type(model).__name__ == 'TensorNet' and config.model['hidden_channels'] == 8
    # the Lightning checkpoint holds the same weight average
    from_ckpt, _ = load_trained_model(tensornet_run.best_checkpoint)
    assert state_dicts_equal(model.state_dict(), from_ckpt.state_dict())
    out = osp.join(tensornet_run.out_dir, 'eval')
    assert main(['evaluate', tensornet_run.model_path, '--out', out]) == 0
    printed = capsys.readouterr().out
    assert 'energy / atom' in printed and 'kcal/mol' in printed
    with open(osp.join(out, 'evaluation.json')) as f:
        metrics = json.load(f)['MD17EthanolSample (test)']
    expected = tensornet_run.test_metrics['test']
    for key in ('energy_mae', 'energy_rmse', 'forces_mae', 'forces_rmse'):
        assert metrics[key] == pytest.approx(expected[key], rel=1e-5)
    assert osp.isfile(osp.join(out, 'parity_md17ethanolsample_test.png'))
    assert osp.isfile(osp.join(out, 'learning_curves.png'))
    # another dataset, whole (here: the validation frames through --split)
    assert main(['evaluate', tensornet_run.model_path, '--dataset', 'MD17EthanolSample',
                 '--split', 'val', '--out', out, '--no-plots']) == 0
    with open(osp.join(out, 'evaluation.json')) as f:
        assert json.load(f)['MD17EthanolSample (val)']['num_structures'] == 16
    assert main(['evaluate', tensornet_run.model_path, '--dataset', 'NoSuchSet']) == 2
    assert 'unknown dataset' in capsys.readouterr().err


def test_export_reads_back_checks_its_weights_and_old_model_pt(tensornet_run, tmp_path):
    from pyg_tensorpot.training import export_model, load_trained_model
    model, config = load_trained_model(tensornet_run.out_dir)  # the run folder itself
    # a model.pt of earlier versions (a torch.save dict of plain types) still loads
    legacy = tmp_path / 'model.pt'
    torch.save({'format': 'pyg-tensorpot-model', 'version': 1, 'config': config.to_dict(),
                'statistics': None, 'state_dict': model.state_dict(),
                'supported_elements': [1, 6, 8]}, legacy)
    old, _ = load_trained_model(str(legacy))
    assert state_dicts_equal(old.state_dict(), model.state_dict())
    assert old.supported_elements == [1, 6, 8]
    # re-exporting gives the same weights; weights swapped for another file are refused
    folder = export_model(model, config, str(tmp_path / 'again'))
    assert state_dicts_equal(exported_weights(folder), model.state_dict())
    os.remove(osp.join(folder, 'config.json'))  # read as for a class outside the registry
    again, _ = load_trained_model(folder)
    assert state_dicts_equal(again.state_dict(), model.state_dict())
    from pyg_tensorpot.hub.weights import state_dict_bytes
    from pyg_tensorpot.training.builders import build_model
    with open(osp.join(folder, 'model.safetensors'), 'wb') as f:
        f.write(state_dict_bytes(build_model(config.model)))  # freshly initialised weights
    with pytest.raises(ValueError, match='SHA-256 recorded in'):
        load_trained_model(folder)
    from pyg_tensorpot.cli import main
    assert main(['evaluate', folder, '--no-plots']) == 2  # named, no traceback
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='holds no trained model'):
        load_trained_model(str(tmp_path / 'empty'))

def test_cli_reports_bad_configuration(tmp_path, capsys):
    from pyg_tensorpot.cli import main
    path = tmp_path / 'bad.yaml'
    path.write_text('optim: {lr: 1e-3, warmup: 10}\n')
    assert main(['train', str(path)]) == 2
    err = capsys.readouterr().err
    assert 'optim.warmup' in err and "'warmup_steps'" in err
    assert main(['train', str(tmp_path / 'missing.yaml')]) == 2


class _Crash(Exception):
    pass


def _crash_after(step):
    from lightning.pytorch.callbacks import Checkpoint

    class CrashAfter(Checkpoint):
        """Raises after the checkpoints of optimiser step ``step`` are written (a kill)."""
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == step:
                raise _Crash()

    return CrashAfter()


def test_killed_run_resumes_to_identical_result(tmp_path):
    """A run killed mid-epoch (after optimiser step 6 of 4 per epoch), resumed, killed again
    right after the last batch of an epoch (step 8, before that epoch's validation) and resumed
    again ends with the weights, weight average, optimiser, plateau and early-stopping state and
    test errors of an uninterrupted run. The energy-loss EMA is on and the plateau rule halves
    the rate after every epoch without improvement."""
    from pyg_tensorpot.training import train
    extra = ['trainer.checkpoint_every_n_steps=2', 'loss.energy_loss_ema=0.5']
    reference = train(tiny_config(tmp_path / 'a', *extra), verbose=False)
    last_path = tmp_path / 'b' / 'checkpoints' / 'last.ckpt'
    with pytest.raises(_Crash):
        train(tiny_config(tmp_path / 'b', *extra), verbose=False,
              extra_callbacks=[_crash_after(6)])
    assert torch.load(last_path, weights_only=True)['global_step'] == 6
    with pytest.raises(_Crash):
        train(tiny_config(tmp_path / 'b', *extra), resume='auto', verbose=False,
              extra_callbacks=[_crash_after(8)])
    # no step checkpoint on the last batch of an epoch: its validation has not run yet
    assert torch.load(last_path, weights_only=True)['global_step'] == 6
    resumed = train(tiny_config(tmp_path / 'b', *extra), resume='auto', verbose=False)
    a = torch.load(tmp_path / 'a' / 'checkpoints' / 'last.ckpt', weights_only=True)
    b = torch.load(last_path, weights_only=True)
    assert a['global_step'] == b['global_step'] == 12 and a['epoch'] == b['epoch']
    tensors = [k for k in a['state_dict'] if isinstance(a['state_dict'][k], torch.Tensor)]
    assert all(torch.equal(a['state_dict'][k], b['state_dict'][k]) for k in tensors)
    assert a['state_dict']['loss_fn._extra_state'] == b['state_dict']['loss_fn._extra_state']
    adam_a, adam_b = (c['optimizer_states'][0]['state'] for c in (a, b))
    assert adam_a.keys() == adam_b.keys() and all(
        torch.equal(adam_a[p][k], adam_b[p][k]) for p in adam_a for k in adam_a[p])
    assert a['optimizer_states'][0]['param_groups'][0]['lr'] == \
        b['optimizer_states'][0]['param_groups'][0]['lr'] < 2e-3
    assert a['plateau_scheduler'] == b['plateau_scheduler']
    assert a['callbacks'].keys() == b['callbacks'].keys()
    assert reference.test_metrics == resumed.test_metrics
    assert state_dicts_equal(exported_weights(reference.model_path),
                             exported_weights(resumed.model_path))


def test_run_stopped_by_step_limit_resumes_to_identical_result(tmp_path):
    """A run stopped by ``trainer.max_steps`` in the middle of an epoch (step 6 of 12) and
    resumed without the limit ends exactly as an uninterrupted run: the cut-short epoch is not
    checkpointed as if it were complete."""
    from pyg_tensorpot.training import train
    reference = train(tiny_config(tmp_path / 'a'), verbose=False)
    stopped = train(tiny_config(tmp_path / 'b', 'trainer.max_steps=6'), verbose=False)
    assert stopped.steps == 6
    assert torch.load(tmp_path / 'b' / 'checkpoints' / 'last.ckpt',
                      weights_only=True)['global_step'] == 4
    resumed = train(tiny_config(tmp_path / 'b'), resume='auto', verbose=False)
    assert resumed.steps == reference.steps == 12
    assert reference.test_metrics == resumed.test_metrics
    assert state_dicts_equal(exported_weights(reference.model_path),
                             exported_weights(resumed.model_path))


def test_hipnn_ts_trains_with_hierarchicality_and_frozen_species_energies(tmp_path):
    from pyg_tensorpot.training import load_trained_model, train
    from pyg_tensorpot.training.plots import read_metrics_csv
    hipnn_ts = ['model.name=HIPNN', 'model.max_order=2', 'model.hidden_channels=8',
                'model.num_interactions=1', 'model.num_atom_layers=1',
                'model.num_sensitivities=4', 'model.soft_max=4.0', 'model.cutoff=4.5']
    config = tiny_config(tmp_path, 'loss.type=rmse+mae', 'loss.regularization.l2=1e-6',
                         'loss.regularization.hierarchicality=1', 'trainer.max_epochs=1',
                         model=hipnn_ts)
    result = train(config, verbose=False)
    series = read_metrics_csv(osp.join(tmp_path, 'logs', 'metrics.csv'))
    assert series['train_hierarchicality_loss'][0] > 0 and series['train_l2_loss'][0] > 0
    model, _ = load_trained_model(result.model_path)
    # hippynn's hierarchical initialisation: w_0 is the least-squares fit and stays frozen
    head = model.energy_head.layers[0].weight.detach().flatten()
    fitted = result.statistics['reference_energies']
    assert torch.allclose(head.double(), torch.tensor([fitted[e] for e in model.elements],
                                                      dtype=torch.float64), rtol=1e-6)


def test_user_model_by_import_path(tmp_path, monkeypatch):
    (tmp_path / 'my_potential.py').write_text(textwrap.dedent('''
        import torch
        from torch_geometric.utils import scatter

        class PairPotential(torch.nn.Module):
            """E = sum over pairs of a learned function of the distance."""
            def __init__(self, width: int = 8):
                super().__init__()
                self.net = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.SiLU(),
                                               torch.nn.Linear(width, 1))
                self.offset = torch.nn.Parameter(torch.zeros(()))

            def forward(self, z, pos, batch):
                same = batch[:, None] == batch[None, :]
                same.fill_diagonal_(False)
                i, j = same.nonzero().t()
                d = (pos[i] - pos[j]).norm(dim=-1, keepdim=True)
                pair = self.net(d).squeeze(-1)
                atom = scatter(pair, i, 0, dim_size=z.numel(), reduce='sum')
                return scatter(atom, batch, 0, reduce='sum') + self.offset
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    from pyg_tensorpot.training import train
    user = ['model.name=my_potential:PairPotential', 'model.width=4']
    config = tiny_config(tmp_path / 'run', 'data.reference_energies=none',
                         'data.standardize=false', 'trainer.max_epochs=1',
                         'loss.energy_weight=0', model=user)
    result = train(config, verbose=False)
    assert result.test_metrics['test']['forces_mae'] > 0
    # a class outside the registry is exported as weights plus the run's record (no
    # config.json for from_pretrained) and rebuilt from the run's configuration
    from pyg_tensorpot.training import load_trained_model
    assert result.pretrained_dir is None
    assert sorted(os.listdir(result.model_path)) == ['model.safetensors', 'training.json']
    model, loaded = load_trained_model(result.out_dir)
    assert type(model).__name__ == 'PairPotential' and loaded.model['width'] == 4
    assert state_dicts_equal(model.state_dict(), exported_weights(result.model_path))
    with pytest.raises(ConfigError, match='set_standardization'):
        train(tiny_config(tmp_path / 'run2', 'data.reference_energies=none', model=user),
              verbose=False)
    # the model contract: only an AtomisticModel has reference energies to fit
    with pytest.raises(ConfigError, match="not an AtomisticModel.*use 'none'"):
        train(tiny_config(tmp_path / 'run3', 'data.reference_energies=fit',
                          'data.standardize=false', model=user), verbose=False)


def test_lightning_is_optional_for_configs_and_evaluation():
    """Importing the package, configurations and evaluation must not need Lightning."""
    code = ('import sys; sys.modules["lightning"] = None; sys.modules["lightning.pytorch"] = '
            'None\nimport pyg_tensorpot.training as t\nt.load_config(None, ["seed=1"])\n'
            'from pyg_tensorpot.training.run import evaluate, load_trained_model\n'
            'try:\n    t.PotentialModule\nexcept ImportError as e:\n    print(e)\n')
    import subprocess
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         env={**os.environ, 'PYTHONPATH': osp.dirname(osp.dirname(
                             osp.abspath(__file__)))}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'pyg-tensorpot[train]'" in out.stdout


def test_batch_of_mixed_sizes_per_atom_metrics():
    from pyg_tensorpot.training.inference import batch_targets
    batch = Batch.from_data_list([
        Data(z=torch.tensor([1, 1]), pos=torch.zeros(2, 3), energy=torch.tensor([1.0])),
        Data(z=torch.tensor([8, 1, 1]), pos=torch.zeros(3, 3), energy=torch.tensor([2.0])),
    ])
    energy, forces, atoms = batch_targets(batch, 'energy', 'forces', torch.float64)
    assert energy.dtype == torch.float64 and forces is None
    assert atoms.tolist() == [2, 3]


def test_quickstart_configuration_is_the_rmd17_protocol_on_the_bundled_frames(tmp_path):
    from pyg_tensorpot.training import prepare_data
    from pyg_tensorpot.training.quickstart import quickstart_config
    config = quickstart_config(str(tmp_path), max_epochs=2)
    assert config.trainer.max_epochs == 2 and config.trainer.max_time is None  # deterministic
    prepared = prepare_data(config.data, config.seed)
    assert (len(prepared.train), len(prepared.val), len(prepared.test['test'])) == \
        (950, 50, 1000)
    assert type(prepared.dataset).__name__ == 'MD17EthanolSample'
