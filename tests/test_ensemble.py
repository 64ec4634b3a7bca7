"""Ensembles: the mean is exactly the members' mean, the model contract holds, and the spread
grows away from the training distribution (a property test on real MD17 ethanol frames)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyg_tensorpot import Ensemble, TensorNet, compute_properties
from pyg_tensorpot.datasets import MD17EthanolSample
from pyg_tensorpot.structures import water_box


def small_members(n=3):
    members = []
    for seed in range(n):
        torch.manual_seed(seed)
        members.append(TensorNet(hidden_channels=8, num_layers=1, num_rbf=8,
                                 cutoff=3.0).double().eval())
    return members


def test_mean_is_the_members_mean_exactly():
    members = small_members()
    ensemble = Ensemble(members)
    z, pos, cell = water_box(8, seed=5)
    out = ensemble.compute(z, pos, cell=cell, properties=['energy', 'forces', 'stress'])
    each = [compute_properties(m, z, pos, cell=cell, properties=['energy', 'forces', 'stress'])
            for m in members]
    for key in ('energy', 'forces', 'stress'):
        stacked = torch.stack([e[key] for e in each])
        assert torch.equal(out[key], stacked.mean(0))
        assert torch.equal(out[f'{key}_std'], stacked.std(0))
        assert out[f'{key}_members'].shape[0] == 3
    # The ensemble is itself a model: autograd of the mean energy gives the mean forces.
    direct = compute_properties(ensemble, z, pos, cell=cell, properties=['energy', 'forces'])
    torch.testing.assert_close(direct['energy'], out['energy'], rtol=1e-14, atol=1e-12)
    torch.testing.assert_close(direct['forces'], out['forces'], rtol=1e-12, atol=1e-12)


def test_bad_members():
    with pytest.raises(ValueError, match='at least two'):
        Ensemble(small_members(1))
    with pytest.raises(TypeError, match='different dtypes'):
        Ensemble([small_members(1)[0], small_members(1)[0].float()])


@pytest.fixture(scope='module')
def committee_and_frames(tmp_path_factory):
    committee = Ensemble.from_pretrained(['tensornet-ani1x', 'hipnn-ts-ani1x']).eval()
    dataset = MD17EthanolSample(str(tmp_path_factory.mktemp('md17')), log=False)
    return committee, [dataset[i] for i in range(0, 2000, 250)]


@settings(max_examples=8, deadline=None)  # 4 model calls per case
@given(frame=st.integers(0, 7), seed=st.integers(0, 2**16), size=st.floats(0.15, 0.4))
def test_spread_grows_on_distorted_geometries(committee_and_frames, frame, seed, size):
    # MD17 ethanol frames are thermal geometries near equilibrium (inside the models'
    # training distribution); a random displacement of 0.15-0.4 A per coordinate is far
    # outside it. Measured over frames and seeds, the members' force disagreement grows 5-30x.
    committee, frames = committee_and_frames
    data = frames[frame]
    pos = data.pos.float()
    noise = torch.randn(pos.shape, generator=torch.Generator().manual_seed(seed))
    near = committee.compute(data.z, pos)
    far = committee.compute(data.z, pos + size * noise)
    assert far['forces_std'].norm(dim=-1).mean() > 2 * near['forces_std'].norm(dim=-1).mean()


def test_calculator_reports_the_committee_spread(committee_and_frames):
    ase = pytest.importorskip('ase')
    from pyg_tensorpot.calculator import TensorPotCalculator
    committee, frames = committee_and_frames
    data = frames[0]
    atoms = ase.Atoms(numbers=data.z.numpy(), positions=data.pos.numpy())
    atoms.calc = TensorPotCalculator(['tensornet-ani1x', 'hipnn-ts-ani1x'])
    energy = atoms.get_potential_energy()
    direct = Ensemble.from_pretrained(['tensornet-ani1x', 'hipnn-ts-ani1x']).double().eval()
    expected = direct.compute(data.z, data.pos.double())
    assert energy == pytest.approx(float(expected['energy']), abs=1e-9)
    assert atoms.calc.results['energy_std'] == pytest.approx(float(expected['energy_std']),
                                                             abs=1e-9)
    assert atoms.calc.results['forces_std'].shape == (len(atoms), 3)


def test_active_learning_example_selects_the_most_uncertain_frames(tmp_path, monkeypatch):
    pytest.importorskip('ase')
    import os
    import runpy
    root = os.path.dirname(os.path.dirname(__file__))
    main = runpy.run_path(os.path.join(root, 'examples', 'active_learning_selection.py'))['main']
    summary = main(['--steps', '30', '--interval', '5', '--select', '2', '--threads', '1',
                    '--output', str(tmp_path)])
    from ase.io import read
    selected = read(summary['output'], index=':')
    assert len(selected) == 2 and summary['frames'] == 7
    spreads = [frame.info['committee_force_std'] for frame in selected]
    assert spreads == sorted(spreads, reverse=True)
    assert min(spreads) >= summary['median_force_std']
