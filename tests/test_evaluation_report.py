"""Accuracy reports of ``pyg-tensorpot evaluate``: errors overall, per element and per group
of structures against numpy, the markdown tables, atomic writes, and a user's extended-XYZ
file evaluated end to end (with a model whose errors are known in closed form)."""
import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from pyg_tensorpot.training.inference import evaluate_model
from pyg_tensorpot.training.report import (
    accuracy_report,
    format_markdown_report,
    format_value,
)
from pyg_tensorpot.utils.elements import symbol
from pyg_tensorpot.utils.files import atomic_write_text

DATA = osp.join(osp.dirname(__file__), 'data')
S66X8 = osp.join(DATA, 'comp6', 's66x8_wb97x6-31gd.h5')


def _stiffness(z: np.ndarray) -> np.ndarray:
    return 0.5 + 0.1 * z


def _offset(z: np.ndarray) -> np.ndarray:
    return -0.25 * z


class KnownErrorPotential(torch.nn.Module):
    r"""Independent harmonic atoms, :math:`E = \sum_i k_{Z_i} |\mathbf{r}_i|^2/2 + e_{Z_i}`
    with :math:`k_Z = 0.5 + 0.1 Z` and :math:`e_Z = -0.25 Z`, so that its energies and forces
    (:math:`-k_{Z_i}\mathbf{r}_i`) follow in closed form (:func:`_closed_form`)."""
    def __init__(self) -> None:
        super().__init__()
        z = np.arange(119, dtype=np.float64)
        self.stiffness = torch.nn.Parameter(torch.from_numpy(_stiffness(z)))
        self.offset = torch.nn.Parameter(torch.from_numpy(_offset(z)))

    def forward(self, z, pos, batch=None, edge_index=None, cell=None, pbc=None,
                total_charge=None):
        batch = torch.zeros_like(z) if batch is None else batch
        atomic = 0.5 * self.stiffness[z] * pos.square().sum(-1) + self.offset[z]
        num_graphs = int(batch.max()) + 1 if batch.numel() else 1
        return torch.zeros(num_graphs, dtype=atomic.dtype, device=pos.device).index_add(
            0, batch, atomic)


def _closed_form(z: np.ndarray, pos: np.ndarray):
    """Energy and forces of :class:`KnownErrorPotential` for one structure, in numpy."""
    energy = float((0.5 * _stiffness(z) * (pos ** 2).sum(-1) + _offset(z)).sum())
    return energy, -_stiffness(z)[:, None] * pos


#: Structures of H, C, N, O of 2 to 6 atoms, with group labels of two kinds.
def _structures(seed: int = 0, n: int = 12):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        num = int(rng.integers(2, 7))
        z = rng.choice([1, 6, 7, 8], size=num)
        pos = rng.normal(scale=1.2, size=(num, 3))
        energy, forces = _closed_form(z, pos)
        # reference = model + known errors, different for every structure and atom
        e_ref = energy + rng.normal(scale=0.05)
        f_ref = forces + rng.normal(scale=0.1, size=forces.shape)
        out.append(dict(z=z, pos=pos, energy=e_ref, forces=f_ref, subset=i % 3,
                        config_type=('bulk', 'surface', 'cluster')[(i * 7) % 3]))
    return out


def _as_data(structures):
    return [Data(z=torch.from_numpy(s['z']).long(), pos=torch.from_numpy(s['pos']),
                 energy=torch.tensor([s['energy']], dtype=torch.float64),
                 forces=torch.from_numpy(s['forces']),
                 subset=torch.tensor([s['subset']]), name=s['config_type'])
            for s in structures]


def _numpy_errors(structures, group_of=None):
    r"""Energy errors per structure, force errors per atom (and the atoms' Z and groups),
    computed from the closed form."""
    e_err, n_atoms, f_err, z_all, groups = [], [], [], [], []
    for s in structures:
        energy, forces = _closed_form(s['z'], s['pos'])
        e_err.append(energy - s['energy'])
        n_atoms.append(len(s['z']))
        f_err.append(forces - s['forces'])
        z_all.append(s['z'])
        groups.append(None if group_of is None else group_of(s))
    return (np.asarray(e_err), np.asarray(n_atoms), np.concatenate(f_err),
            np.concatenate(z_all), np.asarray(groups, dtype=object))


def _mae_rmse(x):
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return np.abs(x).mean(), np.sqrt((x ** 2).mean())


def _check_report(report, structures, group_of):
    e_err, n_atoms, f_err, z_all, groups = _numpy_errors(structures, group_of)
    overall = report['overall']
    for key, values in (('energy', e_err), ('energy_per_atom', e_err / n_atoms),
                        ('forces', f_err)):
        mae, rmse = _mae_rmse(values)
        assert overall[f'{key}_mae'] == pytest.approx(mae, rel=1e-10)
        assert overall[f'{key}_rmse'] == pytest.approx(rmse, rel=1e-10)
    assert overall['num_atoms'] == n_atoms.sum()
    assert list(report['per_element']) == [symbol(int(z)) for z in np.unique(z_all)]
    for element, values in report['per_element'].items():
        mask = z_all == values['z']
        mae, rmse = _mae_rmse(f_err[mask])
        assert values['num_atoms'] == mask.sum()
        assert values['forces_mae'] == pytest.approx(mae, rel=1e-10)
        assert values['forces_rmse'] == pytest.approx(rmse, rel=1e-10)
    atom_groups = np.repeat(groups, n_atoms)
    assert set(report['per_group']) == set(groups.tolist())
    for label, values in report['per_group'].items():
        mask = groups == label
        assert values['num_structures'] == mask.sum()
        for key, vals in (('energy', e_err[mask]),
                          ('energy_per_atom', e_err[mask] / n_atoms[mask]),
                          ('forces', f_err[atom_groups == label])):
            mae, rmse = _mae_rmse(vals)
            assert values[f'{key}_mae'] == pytest.approx(mae, rel=1e-10)
            assert values[f'{key}_rmse'] == pytest.approx(rmse, rel=1e-10)


# ------------------------------------------------------------------- report from predictions
def test_per_element_and_per_group_errors_match_numpy():
    structures = _structures()
    model = KnownErrorPotential()
    metrics, predictions = evaluate_model(model, _as_data(structures), batch_size=5,
                                          group_key='subset')
    assert predictions['group'].dtype == np.int64
    assert predictions['z'].shape == (sum(len(s['z']) for s in structures),)
    report = accuracy_report(predictions, metrics, 'subset', group_names=('a', 'b', 'c'))
    _check_report(report, structures, lambda s: 'abc'[s['subset']])
    # the streamed sums of ErrorAccumulator and the report agree
    for key in ('energy_mae', 'energy_per_atom_rmse', 'forces_rmse'):
        assert report['overall'][key] == pytest.approx(metrics[key], rel=1e-12)

    # string labels (PyG collates them into lists), batched differently
    _, predictions = evaluate_model(model, _as_data(structures), batch_size=4,
                                    group_key='name')
    assert predictions['group'].dtype.kind == 'U'
    report = accuracy_report(predictions, None, 'name')
    _check_report(report, structures, lambda s: s['config_type'])


def test_group_labels_must_be_per_structure():
    data = _as_data(_structures(n=3))
    with pytest.raises(KeyError, match="no attribute 'charge'"):
        evaluate_model(KnownErrorPotential(), data, group_key='charge')
    with pytest.raises(ValueError, match="'z' has .* not one label per structure"):
        evaluate_model(KnownErrorPotential(), data, group_key='z')


def test_markdown_tables_hold_the_numbers():
    structures = _structures(seed=3, n=13)  # groups of 5, 4 and 4 structures
    metrics, predictions = evaluate_model(KnownErrorPotential(), _as_data(structures),
                                          group_key='name')
    report = accuracy_report(predictions, metrics, 'name')
    text = format_markdown_report(report, 'Errors of KnownErrorPotential', ['errors_x.png'])
    lines = text.splitlines()
    e_err, n_atoms, f_err, z_all, _ = _numpy_errors(structures)
    mae, rmse = _mae_rmse(e_err / n_atoms)
    assert '| energy / atom | MAE | ' + ' | '.join(format_value(mae)) + ' |' in lines
    assert '| energy / atom | RMSE | ' + ' | '.join(format_value(rmse)) + ' |' in lines
    for z in np.unique(z_all):
        mae, _ = _mae_rmse(f_err[z_all == z])
        row = (f'| {symbol(int(z))} | {int(z)} | {int((z_all == z).sum()):,} | MAE | '
               + ' | '.join(format_value(mae)) + ' |')
        assert row in lines
    cluster = [i for i, s in enumerate(structures) if s['config_type'] == 'cluster']
    mae, _ = _mae_rmse(e_err[cluster])
    assert (f'| cluster | {len(cluster)} | energy / structure | MAE | '
            + ' | '.join(format_value(mae)) + ' |') in lines
    # meV and kcal/mol are the eV value scaled
    ev, mev, kcal = (float(c) for c in format_value(0.0123456))
    assert mev == pytest.approx(ev * 1e3, abs=0.01) and kcal == pytest.approx(0.284698, 1e-4)
    assert '![errors_x](errors_x.png)' in lines
    # with many groups only the largest are listed, and the text says so
    counts = {label: v['num_structures'] for label, v in report['per_group'].items()}
    largest = max(counts, key=counts.get)
    short = format_markdown_report(report, 'x', max_groups=1).splitlines()
    assert f'The 1 largest of {len(counts)} groups (all of them are in evaluation.json).' \
        in short
    listed = {line.split(' | ')[0][2:] for line in short[short.index('## Per name'):]
              if line.startswith('| ') and 'structure' in line and 'quantity' not in line}
    assert listed == {largest}


def test_comp6_subsets_are_named(tmp_path):
    pytest.importorskip('h5py')
    from pyg_tensorpot.datasets import COMP6
    from pyg_tensorpot.training.run import _group_labels, _group_names
    os.makedirs(tmp_path / 'raw')
    shutil.copy(S66X8, tmp_path / 'raw' / 's66x8_wb97x6-31gd.h5')
    ds = COMP6(str(tmp_path), subset='s66x8', log=False)[:24]
    key, labels = _group_labels(ds, 'COMP6', None)
    assert key == 'subset' and labels is None
    metrics, predictions = evaluate_model(KnownErrorPotential(), ds, batch_size=8,
                                          group_key=key)
    report = accuracy_report(predictions, metrics, key, _group_names(ds, key))
    assert list(report['per_group']) == ['s66x8']
    assert report['per_group']['s66x8']['num_structures'] == 24
    assert report['per_group']['s66x8']['energy_mae'] == pytest.approx(metrics['energy_mae'])
    assert set(report['per_element']) == set(symbol(int(z)) for z in ds.storage().z[
        :int(predictions['num_atoms'].sum())].unique())


# ---------------------------------------------------------------------------- atomic writes
def test_writes_are_atomic(tmp_path, monkeypatch):
    from pyg_tensorpot.training import plots
    path = str(tmp_path / 'report.md')
    atomic_write_text('first\n', path)

    def refuse(src, dst):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'replace', refuse)
    with pytest.raises(OSError, match='disk full'):
        atomic_write_text('second\n', path)
    pytest.importorskip('matplotlib')
    structures = _structures(n=4)
    _, predictions = evaluate_model(KnownErrorPotential(), _as_data(structures))
    with pytest.raises(OSError, match='disk full'):
        plots.plot_error_histogram(predictions, str(tmp_path / 'errors.png'))
    monkeypatch.undo()
    # the previous report is intact, no temporary file is left, no half image exists
    assert open(path).read() == 'first\n'
    assert sorted(os.listdir(tmp_path)) == ['report.md']
    out = plots.plot_error_histogram(predictions, str(tmp_path / 'errors.png'), title='t')
    with open(out, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


# ------------------------------------------------------------- evaluate a user's extxyz file
@pytest.fixture(scope='module')
def known_model(tmp_path_factory):
    from pyg_tensorpot.training.config import load_config
    from pyg_tensorpot.training.run import export_model
    folder = tmp_path_factory.mktemp('model')
    config = load_config(None, [f'model.name={__name__}:KnownErrorPotential', 'precision=64',
                                f'out_dir={folder}'])
    return export_model(KnownErrorPotential(), config, str(folder / 'model'))


def _write_extxyz(path, structures):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    import ase.io
    images = []
    for s in structures:
        atoms = Atoms(numbers=s['z'], positions=s['pos'])
        atoms.info['config_type'] = s['config_type']
        atoms.calc = SinglePointCalculator(atoms, energy=s['energy'], forces=s['forces'])
        images.append(atoms)
    ase.io.write(path, images, format='extxyz')


def test_evaluate_extxyz_file_writes_report(tmp_path, known_model, capsys):
    pytest.importorskip('ase')
    pytest.importorskip('matplotlib')
    import ase.io
    from pyg_tensorpot.cli import main
    structures = _structures(seed=5, n=10)
    path = str(tmp_path / 'my set.extxyz')
    _write_extxyz(path, structures)
    # what the file holds after the text round trip is the reference of the check
    stored = []
    for s, atoms in zip(structures, ase.io.read(path, index=':')):
        stored.append(dict(s, z=atoms.numbers, pos=atoms.positions,
                           energy=atoms.get_potential_energy(), forces=atoms.get_forces()))
    out = str(tmp_path / 'eval')
    assert main(['evaluate', known_model, '--data', path, '--out', out]) == 0
    assert 'report:' in capsys.readouterr().out
    with open(osp.join(out, 'evaluation.json')) as f:
        result = json.load(f)['my set.extxyz']
    assert result['group_key'] == 'config_type'
    report = {'overall': result, 'per_element': result['per_element'],
              'per_group': result['per_group']}
    _check_report(report, stored, lambda s: s['config_type'])
    assert result['num_structures'] == len(structures)
    for name in ('report_my_set_extxyz.md', 'parity_my_set_extxyz.png',
                 'errors_my_set_extxyz.png'):
        assert osp.isfile(osp.join(out, name)), name
    assert not [n for n in os.listdir(out) if n.endswith('.tmp')]
    text = open(osp.join(out, 'report_my_set_extxyz.md')).read()
    assert '## Per config_type' in text and '| O | 8 |' in text
    assert format_value(result['forces_mae'])[1] in text

    # problems are exit status 2 with the key or file named; --arg reaches ExtXYZDataset
    assert main(['evaluate', known_model, '--data', path, '--out', out, '--no-plots',
                 '--group-by', 'nosuch']) == 2
    err = capsys.readouterr().err
    assert "--group-by nosuch" in err and 'config_type' in err
    assert main(['evaluate', known_model, '--data', str(tmp_path / 'missing.extxyz'),
                 '--out', out]) == 2
    assert 'missing.extxyz' in capsys.readouterr().err
    assert main(['evaluate', known_model, '--data', path, '--out', out, '--no-plots',
                 '--arg', 'index=::2', '--arg', 'no_such_option=1']) == 2
    assert 'no_such_option' in capsys.readouterr().err
    assert main(['evaluate', known_model, '--data', path, '--out', out, '--no-plots',
                 '--arg', 'index=::2']) == 0
    with open(osp.join(out, 'evaluation.json')) as f:
        result = json.load(f)['my set.extxyz']
    report = {'overall': result, 'per_element': result['per_element'],
              'per_group': result['per_group']}
    _check_report(report, stored[::2], lambda s: s['config_type'])
