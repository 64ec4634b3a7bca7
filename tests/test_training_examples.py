"""Every configuration in examples/ is valid, builds its model at the paper's size and, shrunk,
trains and tests through the engine on the real data samples of tests/data (rMD17, QM9, ANI-1x
with COMP6 S66x8 as external test set, SPICE, distillation label files made of S66x8 dimers)."""
import glob
import os
import os.path as osp
import shutil

import pytest
import torch

pytest.importorskip('lightning')
pytest.importorskip('yaml')
h5py = pytest.importorskip('h5py')

from pyg_tensorpot.training import load_config  # noqa: E402
from pyg_tensorpot.training.builders import build_model, dataset_class  # noqa: E402

HERE = osp.dirname(osp.abspath(__file__))
EXAMPLES = sorted(glob.glob(osp.join(osp.dirname(HERE), 'examples', '*.yaml')))
DATA = osp.join(HERE, 'data')

#: Trainable parameters of the papers' configurations (TENSORNET.md 1.8 and HIPNN.md 1.8) and
#: of the shipped pretrained models (their config.json num_parameters).
PARAMETERS = {
    'distill-ani1x-tensornet.yaml': 52_001,
    'distill-ani1x-tensornet-scans.yaml': 52_001,
    'distill-ani1x-hipnn-ts.yaml': 150_486,
    'distill-ani1x-hipnn-ts-scans.yaml': 150_486,
    'finetune-own-data.yaml': 52_001,
    'finetune-organic-dft.yaml': 52_001,
    'finetune-organic-dft-replay.yaml': 52_001,
    'TensorNet-rMD17.yaml': 766_337,
    'TensorNet-ANI1x.yaml': 769_921,
    'TensorNet-QM9.yaml': 3_974_401,
    'TensorNet-SPICE.yaml': 790_401,
    'HIPNN-ANI1x.yaml': 587_094,
    'HIPNN-TS-ANI1x.yaml': 587_606,
}


def test_every_example_is_listed():
    assert sorted(osp.basename(p) for p in EXAMPLES) == sorted(PARAMETERS)


@pytest.mark.parametrize('path', EXAMPLES, ids=osp.basename)
def test_example_builds_the_papers_model(path):
    config = load_config(path, _stage_one(osp.basename(path)))
    model = build_model(config.model)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == PARAMETERS[osp.basename(path)]
    dataset_class(config.data.dataset)
    if config.data.test_dataset:
        dataset_class(config.data.test_dataset)
    if config.data.replay_dataset:
        dataset_class(config.data.replay_dataset, 'data.replay_dataset')


def _stage_one(name: str) -> list:
    """For a stage-2 distillation recipe, whose stage-1 run is not there, the shipped model
    of the same architecture as :obj:`model.init`."""
    if name.startswith('distill-') and name.endswith('-scans.yaml'):
        return [f"model.init={name[len('distill-ani1x-'):-len('-scans.yaml')]}-ani1x"]
    return []


def _place(src, root, name):
    os.makedirs(osp.join(root, 'raw', osp.dirname(name)), exist_ok=True)
    shutil.copy(src, osp.join(root, 'raw', name))


def _s66x8_sample(tmp_path) -> list:
    """The first three S66x8 dimers (24 conformations) as a COMP6 root, in the file's own
    layout, and the overrides that make it the external test set."""
    os.makedirs(tmp_path / 'comp6' / 'raw')
    with h5py.File(osp.join(DATA, 'comp6', 's66x8_wb97x6-31gd.h5'), 'r') as src, \
            h5py.File(tmp_path / 'comp6' / 'raw' / 's66x8_wb97x6-31gd.h5', 'w') as dst:
        top = dst.create_group('s66x8')
        for k in range(3):
            src.copy(src[f's66x8/mol{k:02d}'], top, name=f'mol{k:02d}')
    return [f'data.test_root={tmp_path / "comp6"}', 'data.test_args.subset=s66x8',
            'data.test_args.verify_checksums=false']


def _organic_dft_sample(tmp_path, per_part: int = 4) -> str:
    """A folder with a few bundled DFT labels of each part of the fixed split (the bundled
    folder grows with every labelling round; one epoch on all of it would grow too)."""
    from pyg_tensorpot.datasets.organic_dft import OrganicDFT
    bundled = OrganicDFT(log=False)
    folder = tmp_path / 'organic_dft'
    folder.mkdir()
    for idx in bundled.fixed_split().values():
        assert idx.numel() > 0, 'a part of the bundled split is empty'
        for i in idx[:per_part].tolist():
            key = bundled.raw_file_names[i]
            shutil.copy(osp.join(bundled.raw_dir, key), folder / key)
    return str(folder)


def _roots(tmp_path, name):
    """Dataset roots with the real samples in the raw layout of the full releases."""
    overrides = []
    if name.startswith('distill-'):
        distillation = pytest.importorskip('test_training_distillation')
        files = distillation.write_label_files(tmp_path)
        paths = files if name.endswith('-scans.yaml') else files[:1]
        overrides += [f'data.root={tmp_path / "processed"}',
                      f'data.args.paths=[{", ".join(paths)}]'] + _s66x8_sample(tmp_path)
        overrides += _stage_one(name)
    elif name == 'TensorNet-rMD17.yaml':
        _place(osp.join(DATA, 'rmd17', 'rmd17fmt_ethanol_pbe_def2svp_pyscf_20.npz'),
               tmp_path / 'rmd17', 'rmd17/npz_data/rmd17_ethanol.npz')
        overrides += [f'data.root={tmp_path / "rmd17"}', 'data.args.molecule=ethanol',
                      'data.args.verify_checksums=false', 'data.train_size=12',
                      'data.val_size=4']
    elif name == 'finetune-own-data.yaml':
        overrides += ['data.train_size=8', 'data.val_size=4', 'data.test_size=4']
    elif name.startswith('finetune-organic-dft'):
        overrides += [f'data.args.folder={_organic_dft_sample(tmp_path)}']
        if name.endswith('-replay.yaml'):
            distillation = pytest.importorskip('test_training_distillation')
            files = distillation.write_label_files(tmp_path)
            overrides += [f'data.replay_root={tmp_path / "replay"}',
                          f'data.replay_args.paths=[{", ".join(files)}]',
                          'data.replay_size=12']
    elif name == 'TensorNet-QM9.yaml':
        qm9 = pytest.importorskip('test_datasets_qm9')  # writes PyG's raw QM9 files
        os.makedirs(tmp_path / 'qm9' / 'raw')
        qm9.write_pyg_raw(str(tmp_path / 'qm9' / 'raw'))
        overrides += [f'data.root={tmp_path / "qm9"}', 'data.args.verify_checksums=false',
                      'data.train_size=5', 'data.val_size=2']
    elif 'ANI1x' in name:
        _place(osp.join(DATA, 'ani1x', 'modelforge_ani1x_release_n5.hdf5'),
               tmp_path / 'ani1x', 'ani1x-release.h5')
        overrides += [f'data.root={tmp_path / "ani1x"}', 'data.args.verify_checksums=false',
                      'data.train_size=4', 'data.val_size=2']
        if name == 'TensorNet-ANI1x.yaml':
            overrides += _s66x8_sample(tmp_path)
    elif name == 'TensorNet-SPICE.yaml':
        _place(osp.join(DATA, 'spice', 'modelforge_SPICE-1.1.4_n2.hdf5'), tmp_path / 'spice',
               'SPICE-1.1.4.hdf5')
        overrides += [f'data.root={tmp_path / "spice"}', 'data.args.verify_checksums=false',
                      'data.train_size=20', 'data.val_size=5', 'data.test_size=5',
                      'model.cutoff=5.0']
    return overrides


SHRINK = {
    'TensorNet': ['model.hidden_channels=4', 'model.num_layers=1', 'model.num_rbf=4'],
    'HIPNN': ['model.hidden_channels=4', 'model.num_interactions=1',
              'model.num_atom_layers=1', 'model.num_sensitivities=4'],
}


@pytest.mark.parametrize('path', EXAMPLES, ids=osp.basename)
def test_example_trains_on_real_sample(path, tmp_path):
    from pyg_tensorpot.training import train
    name = osp.basename(path)
    config = load_config(path)
    shrink = [] if 'init' in config.model else SHRINK[config.model['name']]
    overrides = _roots(tmp_path, name) + shrink + [
        f'out_dir={tmp_path / "run"}', 'trainer.max_epochs=1', 'trainer.progress_bar=false',
        'data.batch_size=4', 'data.inference_batch_size=8', 'optim.warmup_steps=1',
        'trainer.num_threads=1']
    config = load_config(path, overrides)
    result = train(config, verbose=False)
    assert result.test_metrics, 'no test set was evaluated'
    for name_, metrics in result.test_metrics.items():
        assert metrics['num_structures'] > 0
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
        assert ('forces_mae' in metrics) == (config.loss.force_weight > 0)
    if config.data.test_dataset:
        assert 'COMP6' in result.test_metrics
        assert ('test' in result.test_metrics) == (config.data.test_size != 0)
