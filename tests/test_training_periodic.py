"""Periodic training end to end: an extxyz water-box data set (``Lattice=``, ``pbc=``, stress),
labelled here by a reference model, trains with an energy + force + stress loss, and the
engine's predictions use the cell."""
import os

import pytest
import torch

pytest.importorskip('lightning')
ase_io = pytest.importorskip('ase.io')

from ase import Atoms  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

from pyg_tensorpot import TensorNet, compute_properties  # noqa: E402
from pyg_tensorpot.datasets import ExtXYZDataset  # noqa: E402
from pyg_tensorpot.structures import water_box  # noqa: E402
from pyg_tensorpot.training import (  # noqa: E402
    evaluate_model,
    load_config,
    load_trained_model,
    train,
)


def write_labelled_boxes(path, count=24):
    torch.manual_seed(0)
    teacher = TensorNet(hidden_channels=8, num_layers=1, num_rbf=8, cutoff=3.0).double().eval()
    teacher.set_atomref({1: -13.6, 8: -2041.0})
    frames = []
    for seed in range(count):
        z, pos, cell = water_box(8, seed=seed)
        generator = torch.Generator().manual_seed(100 + seed)
        pos = pos + 0.05 * torch.randn(pos.shape, generator=generator, dtype=torch.float64)
        cell = cell * (1.0 + 0.02 * (seed % 5 - 2))  # five densities: the stress varies
        pos = pos * (1.0 + 0.02 * (seed % 5 - 2))
        out = compute_properties(teacher, z, pos, cell=cell,
                                 properties=['energy', 'forces', 'stress'])
        atoms = Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell.numpy(), pbc=True)
        stress = out['stress'][0].numpy()
        voigt = [stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2],
                 stress[0, 1]]
        atoms.calc = SinglePointCalculator(atoms, energy=float(out['energy']),
                                           forces=out['forces'].numpy(), stress=voigt)
        frames.append(atoms)
    ase_io.write(path, frames, format='extxyz')


def test_periodic_extxyz_trains_with_stress_loss(tmp_path):
    path = str(tmp_path / 'water_boxes.extxyz')
    write_labelled_boxes(path)
    with open(path) as handle:
        header = handle.read(4000)
    assert 'Lattice="' in header and 'pbc="T T T"' in header and 'stress=' in header

    dataset = ExtXYZDataset(str(tmp_path / 'data'), path, log=False)
    assert dataset[0].cell.shape == (1, 3, 3) and bool(dataset[0].pbc.all())
    config = load_config(None, [
        'seed=3', 'model.name=TensorNet', 'model.hidden_channels=8', 'model.num_layers=1',
        'model.num_rbf=8', 'model.cutoff=3.0', 'data.dataset=ExtXYZDataset',
        f'data.root={tmp_path / "data"}', f'data.args.path={path}', 'data.args.log=false',
        'data.train_size=16', 'data.val_size=4', 'data.test_size=4', 'data.batch_size=4',
        'data.inference_batch_size=8', 'loss.force_weight=10', 'loss.stress_weight=1000',
        'optim.lr=1e-3', 'optim.warmup_steps=2', 'optim.ema_decay=0', 'trainer.max_epochs=2',
        'trainer.progress_bar=false', 'trainer.accelerator=cpu', 'trainer.num_threads=1',
        'precision=64', f'out_dir={tmp_path / "run"}'])
    result = train(config, verbose=False)
    metrics = result.test_metrics['test']
    assert metrics['forces_mae'] > 0 and metrics['energy_mae'] > 0
    logged = open(os.path.join(str(tmp_path / 'run'), 'logs', 'metrics.csv')).read()
    assert 'train_stress_loss' in logged  # the stress term was part of the loss

    # The engine passes the cell: its predictions equal the periodic energies, which differ
    # from those of the same atoms without periodic images.
    model, _ = load_trained_model(result.model_path)
    _, predictions = evaluate_model(model, [dataset[i] for i in range(4)], batch_size=4)
    expected = torch.cat([compute_properties(model.eval(), dataset[i])['energy']
                          for i in range(4)])
    isolated = torch.cat([compute_properties(model, dataset[i].z, dataset[i].pos)['energy']
                          for i in range(4)])
    torch.testing.assert_close(torch.from_numpy(predictions['energy_pred']), expected)
    assert float((expected - isolated).abs().min()) > 1e-6
