"""Training on a user's own files and fine-tuning pretrained models from the command line:
``pyg-tensorpot train --data FILE [--init NAME] [--ensemble N]`` on extxyz files and ASE
databases written here with ASE."""
import json
import os.path as osp

import numpy as np
import pytest
import torch

pytest.importorskip('lightning')
ase_io = pytest.importorskip('ase.io')

import ase.db  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

from pyg_tensorpot import TensorNet, compute_properties  # noqa: E402
from pyg_tensorpot.cli import main  # noqa: E402
from pyg_tensorpot.datasets import ExtXYZDataset  # noqa: E402
from pyg_tensorpot.hub import from_pretrained  # noqa: E402
from pyg_tensorpot.models.ensemble import Ensemble  # noqa: E402
from pyg_tensorpot.structures import water_box  # noqa: E402
from pyg_tensorpot.training import ConfigError, load_config, load_trained_model  # noqa: E402
from pyg_tensorpot.training.builders import freeze_parameters, resolve_init  # noqa: E402
from pyg_tensorpot.training.data import fit_training_statistics  # noqa: E402
from pyg_tensorpot.training.run import load_ensemble, train  # noqa: E402

#: Settings of every training run here: small batches, 2 epochs, one CPU thread.
QUICK = ['data.batch_size=4', 'data.inference_batch_size=8', 'optim.lr=1e-3',
         'optim.warmup_steps=2', 'optim.ema_decay=0', 'trainer.max_epochs=2',
         'trainer.progress_bar=false', 'trainer.accelerator=cpu', 'trainer.num_threads=1']
#: A tiny network trained from scratch (fine-tuning takes the pretrained architecture).
TINY = ['model.hidden_channels=8', 'model.num_layers=1', 'model.num_rbf=8',
        'model.cutoff=3.0'] + QUICK
TINY_FINE_TUNING = QUICK

#: Small molecules of H, C, N, O (tensornet-ani1x's elements): formula and a rough geometry.
MOLECULES = {
    'H2O': [[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]],
    'NH3': [[0.0, 0.0, 0.0], [1.01, 0.0, 0.0], [-0.34, 0.95, 0.0], [-0.34, -0.48, 0.83]],
    'CH4': [[0.0, 0.0, 0.0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
            [0.63, -0.63, -0.63]],
    'CO2': [[0.0, 0.0, 0.0], [1.16, 0.0, 0.0], [-1.16, 0.0, 0.0]],
}


pytestmark = pytest.mark.usefixtures('one_thread')  # structures of 3-12 atoms (conftest.py)


def teacher():
    torch.manual_seed(0)
    model = TensorNet(hidden_channels=8, num_layers=1, num_rbf=8, cutoff=3.0).double().eval()
    model.set_atomref({1: -13.6, 6: -1030.0, 7: -1485.0, 8: -2041.0, 9: -2715.0,
                       16: -10830.0})
    return model


def molecules(count, formulas=tuple(MOLECULES), seed=0):
    """Distorted copies of :data:`MOLECULES` (in turn), as ASE atoms without labels."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        formula = formulas[i % len(formulas)]
        base = np.array(MOLECULES.get(formula, MOLECULES['CH4']))
        atoms = Atoms(formula if formula in MOLECULES else 'CH4',
                      positions=base + rng.normal(scale=0.05, size=base.shape))
        if formula not in MOLECULES:  # another element in place of the carbon atom
            atoms.numbers[0] = Atoms(formula.split('H')[0]).numbers[0]
        frames.append(atoms)
    return frames


def label(frames, model, shift=None):
    """Energies and forces of :obj:`model` (plus per-element :obj:`shift` in eV)."""
    for atoms in frames:
        z = torch.as_tensor(atoms.numbers)
        pos = torch.as_tensor(atoms.positions, dtype=model.std.dtype)
        out = compute_properties(model, z, pos, properties=['energy', 'forces'])
        energy = float(out['energy'])
        if shift is not None:
            energy += sum(shift[int(n)] for n in atoms.numbers)
        atoms.calc = SinglePointCalculator(atoms, energy=energy,
                                           forces=out['forces'].double().numpy())
    return frames


def write_boxes(path, count=12):
    """Periodic water boxes (``Lattice=``, ``pbc=``) with energy, forces and stress."""
    model = teacher()
    frames = []
    for seed in range(count):
        z, pos, cell = water_box(4, seed=seed)
        scale = 1.0 + 0.02 * (seed % 3 - 1)
        cell, pos = cell * scale, pos * scale
        out = compute_properties(model, z, pos, cell=cell,
                                 properties=['energy', 'forces', 'stress'])
        atoms = Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell.numpy(), pbc=True)
        s = out['stress'][0].numpy()
        atoms.calc = SinglePointCalculator(atoms, energy=float(out['energy']),
                                           forces=out['forces'].numpy(),
                                           stress=[s[0, 0], s[1, 1], s[2, 2], s[1, 2],
                                                   s[0, 2], s[0, 1]])
        frames.append(atoms)
    ase_io.write(path, frames, format='extxyz')


def parameters(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_periodic_extxyz_with_stress_from_the_command_line(tmp_path):
    path = str(tmp_path / 'boxes.extxyz')
    write_boxes(path)
    out = tmp_path / 'run'
    status = main(['train', '--data', path, '--quiet', 'seed=2', 'loss.force_weight=10',
                   'loss.stress_weight=100', f'out_dir={out}'] + TINY)
    assert status == 0
    config = load_config(str(out / 'config.yaml'))
    # the reader is chosen by the extension; the processed file lies beside the run
    assert config.data.dataset == 'ExtXYZDataset'
    assert config.data.args['path'] == osp.abspath(path)
    assert config.data.root == str(out / 'data') and osp.isdir(out / 'data' / 'processed')
    logged = open(out / 'logs' / 'metrics.csv').read()
    assert 'train_stress_loss' in logged
    # the export is a save_pretrained folder (no pickle) that both loaders read alike
    model, _ = load_trained_model(str(out / 'model'))
    saved = from_pretrained(str(out / 'model'))
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved.state_dict()[name]), name
    metrics = json.load(open(out / 'test_metrics.json'))
    assert metrics['test']['num_structures'] == len(np.load(out / 'splits.npz')['idx_test'])
    assert metrics['test']['forces_mae'] > 0


def test_molecules_without_yaml_and_ase_database(tmp_path):
    frames = label(molecules(20), teacher())
    xyz, db = str(tmp_path / 'mols.xyz'), str(tmp_path / 'mols.db')
    ase_io.write(xyz, frames, format='extxyz')
    with ase.db.connect(db) as connection:
        for atoms in frames:
            connection.write(atoms)
    out = tmp_path / 'xyz-run'
    # no YAML at all: a small TensorNet with the defaults, split 80/10/10
    assert main(['train', '--data', xyz, '--quiet', 'trainer.max_epochs=1',
                 'trainer.progress_bar=false', 'trainer.num_threads=1',
                 'trainer.accelerator=cpu', f'out_dir={out}']) == 0
    config = load_config(str(out / 'config.yaml'))
    assert config.model['hidden_channels'] == 32 and config.model['num_layers'] == 2
    split = np.load(out / 'splits.npz')
    assert [len(split[k]) for k in ('idx_train', 'idx_val', 'idx_test')] == [16, 2, 2]
    # an ASE database is read by ASEDatabaseDataset, with the same structures
    config = load_config(None, [f'data.path={db}', f'out_dir={tmp_path / "db-run"}'])
    assert config.data.dataset == 'ASEDatabaseDataset'
    from pyg_tensorpot.training.data import prepare_data
    prepared = prepare_data(config.data, config.seed)
    first = ExtXYZDataset(str(tmp_path / 'check'), xyz, log=False)[0]
    torch.testing.assert_close(prepared.dataset[0].energy, first.energy)
    # an unknown extension is named
    with pytest.raises(ConfigError, match="data.path.*'.csv'"):
        load_config(None, ['data.path=energies.csv'])


def ani1x_data(tmp_path, shift, count=24):
    """Molecules labelled by tensornet-ani1x plus per-element shifts (another level of
    theory, in effect), as an extxyz file."""
    frames = label(molecules(count, seed=1), from_pretrained('tensornet-ani1x'), shift)
    path = str(tmp_path / 'ani1x_shifted.extxyz')
    ase_io.write(path, frames, format='extxyz')
    return path


SHIFT = {1: 0.25, 6: -1.5, 7: 0.75, 8: -0.5}


def test_fine_tuning_starts_from_the_pretrained_weights_and_freezes(tmp_path):
    path = ani1x_data(tmp_path, SHIFT)
    pretrained = from_pretrained('tensornet-ani1x')
    start = {}

    from lightning.pytorch.callbacks import Callback

    class RecordStart(Callback):
        def on_train_start(self, trainer, pl_module):
            start.update(parameters(pl_module.model))

    config = load_config(None, [f'data.path={path}', 'model.init=tensornet-ani1x',
                                'model.freeze=[embedding, interactions.0]',
                                'data.reference_energies=refit', 'seed=4',
                                f'out_dir={tmp_path / "fine"}'] + TINY_FINE_TUNING)
    result = train(config, verbose=False, extra_callbacks=[RecordStart()])
    # the architecture is the pretrained one, recorded in the run's configuration
    saved = load_config(str(tmp_path / 'fine' / 'config.yaml'))
    assert saved.model['hidden_channels'] == 32 and saved.model['init'] == 'tensornet-ani1x'
    # the training starts from the pretrained weights, bit for bit
    for name, value in pretrained.named_parameters():
        assert torch.equal(start[name], value.detach()), name
    model, _ = load_trained_model(result.model_path)
    assert model.supported_elements == [1, 6, 7, 8]
    frozen = [n for n, _ in pretrained.named_parameters()
              if n.startswith('embedding.') or n.startswith('interactions.0.')]
    assert frozen
    after = parameters(model)
    for name, value in pretrained.named_parameters():
        if name in frozen:
            assert torch.equal(after[name], value.detach()), name
    assert any(not torch.equal(after[n], v.detach()) for n, v in pretrained.named_parameters()
               if n not in frozen)
    # the refitted reference energies recover the shifts of the new "level of theory"
    for z, delta in SHIFT.items():
        refit = float(model.atomref[z]) - float(pretrained.atomref[z])
        assert abs(refit - delta) < 1e-3, (z, refit, delta)
    # a fine-tuned run can itself be fine-tuned (its exported folder, or the run folder)
    for init in (result.pretrained_dir, result.out_dir):
        section, again = resolve_init({'init': init})
        assert section['hidden_channels'] == 32
        assert torch.equal(again.atomref, model.atomref)


def test_reference_energies_refit_or_kept(tmp_path):
    path = ani1x_data(tmp_path, SHIFT, count=16)
    dataset = ExtXYZDataset(str(tmp_path / 'data'), path, log=False)
    pretrained = from_pretrained('tensornet-ani1x')
    for choice in ('refit', 'pretrained'):
        config = load_config(None, [f'data.path={path}', 'model.init=tensornet-ani1x',
                                    f'data.reference_energies={choice}'])
        _, model = resolve_init(config.model)
        stats = fit_training_statistics(model, dataset, config.data, dataset, pretrained=True)
        # the network and its standardisation are kept either way
        assert float(model.std) == float(pretrained.std)
        for name, value in pretrained.named_parameters():
            assert torch.equal(dict(model.named_parameters())[name], value), name
        for z in SHIFT:
            expected = float(pretrained.atomref[z]) + (SHIFT[z] if choice == 'refit' else 0.0)
            # float32 network energies of ~-1,000 eV: the least-squares shifts agree to 1 meV
            assert abs(stats['reference_energies'][z] - expected) < 1e-3, (choice, z)
    # elements absent from the training structures keep their pretrained energies
    frames = label(molecules(6, formulas=('H2O', 'CH4', 'CO2'), seed=2), pretrained, SHIFT)
    no_nitrogen = str(tmp_path / 'no_nitrogen.extxyz')
    ase_io.write(no_nitrogen, frames, format='extxyz')
    subset = ExtXYZDataset(str(tmp_path / 'data2'), no_nitrogen, log=False)
    config = load_config(None, [f'data.path={no_nitrogen}', 'model.init=tensornet-ani1x',
                                'data.reference_energies=refit'])
    _, model = resolve_init(config.model)
    stats = fit_training_statistics(model, subset, config.data, subset, pretrained=True)
    assert stats['reference_energies'][7] == float(pretrained.atomref[7])
    assert abs(stats['reference_energies'][8] - float(pretrained.atomref[8]) - SHIFT[8]) < 1e-3
    config = load_config(None, [f'data.path={path}', 'model.init=tensornet-ani1x',
                                'data.reference_energies=pretrained'])
    with pytest.raises(ConfigError, match="'pretrained'.*no model.init"):
        fit_training_statistics(TensorNet(hidden_channels=8, num_layers=1, num_rbf=8),
                                dataset, config.data, dataset)


def test_unsupported_elements_are_named_before_training(tmp_path, capsys):
    frames = label(molecules(8, formulas=('H2O', 'FH3', 'SH3')), teacher())
    path = str(tmp_path / 'fluorine_sulfur.extxyz')
    ase_io.write(path, frames, format='extxyz')
    status = main(['train', '--data', path, '--init', 'tensornet-ani1x', '--quiet',
                   f'out_dir={tmp_path / "run"}'] + TINY_FINE_TUNING)
    err = capsys.readouterr().err
    assert status == 2
    assert 'F (Z=9)' in err and 'S (Z=16)' in err and 'tensornet-ani1x' in err, err
    assert not osp.exists(tmp_path / 'run' / 'checkpoints')
    # a malformed file and a misspelt reader option are named too, without a traceback
    bad = tmp_path / 'broken.extxyz'
    bad.write_text('3\nProperties=species:S:1:pos:R:3 energy=1.0\nH 0 0\n')
    assert main(['train', '--data', str(bad), '--quiet', f'out_dir={tmp_path / "bad"}']) == 2
    assert 'broken.extxyz' in capsys.readouterr().err
    assert main(['train', '--data', path, '--quiet', 'data.args.energy_units=eV',
                 f'out_dir={tmp_path / "typo"}']) == 2
    assert 'data.args' in capsys.readouterr().err


def test_conflicting_model_section_is_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match='model.hidden_channels: 64 contradicts.*32'):
        resolve_init({'init': 'tensornet-ani1x', 'hidden_channels': 64})
    with pytest.raises(ConfigError, match='model.name: HIPNN contradicts.*TensorNet'):
        resolve_init({'init': 'tensornet-ani1x', 'name': 'HIPNN'})
    with pytest.raises(ConfigError, match='unknown key model.elements'):
        resolve_init({'init': 'tensornet-ani1x', 'elements': [1, 6]})
    with pytest.raises(ConfigError, match='model.init.*no-such-model'):
        resolve_init({'init': 'no-such-model'})
    # agreeing values are accepted
    section, _ = resolve_init({'init': 'tensornet-ani1x', 'name': 'TensorNet', 'cutoff': 5})
    assert section['cutoff'] == 5.0
    with pytest.raises(ConfigError, match="model.freeze: 'readout.x'.*interactions.0"):
        freeze_parameters(from_pretrained('tensornet-ani1x'), ['readout.x'])
    with pytest.raises(ConfigError, match='model.freeze'):
        load_config(None, ['model.freeze=embedding'])
    path = ani1x_data(tmp_path, SHIFT, count=8)
    status = main(['train', '--data', path, '--init', 'tensornet-ani1x', '--quiet',
                   'model.num_layers=3', f'out_dir={tmp_path / "run"}'])
    err = capsys.readouterr().err
    assert status == 2 and 'model.num_layers: 3 contradicts' in err, err


def test_ensemble_of_two(tmp_path):
    frames = label(molecules(16), teacher())
    path = str(tmp_path / 'mols.extxyz')
    ase_io.write(path, frames, format='extxyz')
    out = tmp_path / 'committee'
    assert main(['train', '--data', path, '--ensemble', '2', '--quiet', 'seed=7',
                 f'out_dir={out}'] + TINY + ['trainer.max_epochs=1']) == 0
    listing = json.load(open(out / 'ensemble.json'))
    assert listing['members'] == ['member_0/model', 'member_1/model']
    assert listing['seeds'] == [7, 8]
    splits = [np.load(out / f'member_{k}' / 'splits.npz') for k in range(2)]
    for key in ('idx_train', 'idx_val', 'idx_test'):
        assert np.array_equal(splits[0][key], splits[1][key])
    ensemble = load_ensemble(str(out))
    assert isinstance(ensemble, Ensemble) and len(ensemble) == 2
    same = Ensemble.from_pretrained([str(out / m) for m in listing['members']])
    a, b = (dict(m.named_parameters()) for m in ensemble.models)
    assert any(not torch.equal(a[n], b[n]) for n in a)  # two seeds, two models
    data = ExtXYZDataset(str(tmp_path / 'check'), path, log=False)[0]
    out_a = ensemble.compute(data.z, data.pos)
    out_b = same.compute(data.z, data.pos)
    torch.testing.assert_close(out_a['energy'], out_b['energy'])
    assert float(out_a['energy_std']) > 0
    metrics = json.load(open(out / 'test_metrics.json'))
    assert metrics['test']['num_structures'] == len(splits[0]['idx_test'])
    with pytest.raises(ConfigError, match='at least 2'):
        from pyg_tensorpot.training.run import train_ensemble
        train_ensemble(load_config(None, []), 1)
