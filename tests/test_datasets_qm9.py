"""QM9 from PyG's raw layout, built from the first 10 real molecules of the QM9 release."""
import glob
import os
import os.path as osp

import numpy as np
import pytest
import torch
from torch_geometric.datasets.qm9 import HAR2EV, atomrefs
from torch_geometric.loader import DataLoader

from pyg_tensorpot.datasets import QM9, RawFileError, random_split, standard_split
from pyg_tensorpot.datasets.qm9 import QM9_TARGETS

DATA = osp.join(osp.dirname(__file__), 'data', 'qm9')
RADII = {'H': 0.31, 'C': 0.76, 'N': 0.71, 'O': 0.66, 'F': 0.57}
SKIPPED = (3, 7)  # 1-based ids listed in the test uncharacterized.txt


def read_qm9_xyz(path):
    with open(path) as f:
        lines = f.read().replace('*^', 'e').splitlines()
    n = int(lines[0])
    head = lines[1].split()
    index, props = int(head[1]), [float(v) for v in head[2:17]]
    atoms = [line.split() for line in lines[2:2 + n]]
    symbols = [a[0] for a in atoms]
    pos = np.array([[float(v) for v in a[1:4]] for a in atoms])
    return index, props, symbols, pos


def write_pyg_raw(raw_dir, skipped=SKIPPED):
    """Writes gdb9.sdf (V2000, 4 decimals as in MoleculeNet's file), gdb9.sdf.csv and
    uncharacterized.txt (9 header lines, ids, footer) from the real QM9 xyz files."""
    os.makedirs(raw_dir, exist_ok=True)
    molecules = [read_qm9_xyz(p) for p in sorted(glob.glob(osp.join(DATA, '*.xyz')))]
    ha = {key: [v / HAR2EV for v in atomrefs[key]] for key in (7, 8, 9, 10)}
    order = {'H': 0, 'C': 1, 'N': 2, 'O': 3, 'F': 4}
    sdf, csv = [], ['mol_id,A,B,C,mu,alpha,homo,lumo,gap,r2,zpve,u0,u298,h298,g298,cv,'
                    'u0_atom,u298_atom,h298_atom,g298_atom']
    for index, props, symbols, pos in molecules:
        bonds = []
        for i in range(len(symbols)):
            for j in range(i + 1, len(symbols)):
                if np.linalg.norm(pos[i] - pos[j]) < 1.25 * (RADII[symbols[i]] +
                                                            RADII[symbols[j]]):
                    bonds.append((i + 1, j + 1))
        sdf.append(f'gdb_{index}\n     RDKit          3D\n\n'
                   f'{len(symbols):3d}{len(bonds):3d}  0  0  0  0  0  0  0  0999 V2000')
        for s, (x, y, z) in zip(symbols, pos):
            sdf.append(f'{x:10.4f}{y:10.4f}{z:10.4f} {s:<3} 0  0  0  0  0  0  0  0  0  0  0  0')
        sdf.extend(f'{i:3d}{j:3d}  1  0' for i, j in bonds)
        sdf.append('M  END\n$$$$')
        # atomisation energies: property (Ha) minus the atom references, in kcal/mol
        atomisation = [(props[10 + k] - sum(ha[7 + k][order[s]] for s in symbols)) * 627.509474
                       for k in range(4)]
        csv.append(','.join([f'gdb_{index}'] + [repr(v) for v in props + atomisation]))
    with open(osp.join(raw_dir, 'gdb9.sdf'), 'w') as f:
        f.write('\n'.join(sdf) + '\n')
    with open(osp.join(raw_dir, 'gdb9.sdf.csv'), 'w') as f:
        f.write('\n'.join(csv) + '\n')
    header = ['List of uncharacterized molecules (test copy of the QM9 file layout)'] + \
        [f'header line {k}' for k in range(2, 10)]
    body = [f'{k:7d}  C{k}H{k}  test entry' for k in skipped]
    with open(osp.join(raw_dir, 'uncharacterized.txt'), 'w') as f:
        f.write('\n'.join(header + body + [f'  {len(skipped)} molecules']) + '\n')
    return molecules


@pytest.fixture(scope='module')
def qm9_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('qm9'))
    write_pyg_raw(osp.join(root, 'raw'))
    return root


def test_qm9_values(qm9_root):
    ds = QM9(qm9_root, log=False)
    assert len(ds) == 10 - len(SKIPPED)
    assert ds[0].idx.item() == 0 and ds[2].idx.item() == 3  # gdb_3 removed
    assert 3 - 1 not in ds.storage().idx.tolist() and 7 - 1 not in ds.storage().idx.tolist()
    ch4 = ds[0]
    assert ch4.z.tolist() == [6, 1, 1, 1, 1]
    assert ch4.energy.dtype == torch.float64 and ch4.energy.shape == (1,)
    assert ch4.energy.item() == pytest.approx(-40.47893 * HAR2EV, abs=1e-9)
    # y is PyG's float32 19-vector: U0 at 7, gap at 4 (eV), mu at 0 (Debye), A at 16 (GHz)
    assert ch4.y.shape == (1, 19) and ch4.y.dtype == torch.float32
    assert ch4.y[0, 7].item() == pytest.approx(-40.47893 * HAR2EV, rel=1e-7)
    assert ch4.y[0, 4].item() == pytest.approx(0.5048 * HAR2EV, rel=1e-6)
    assert ch4.y[0, 16].item() == pytest.approx(157.7118, rel=1e-7)
    assert ds[1].y[0, 0].item() == pytest.approx(1.6256, rel=1e-6)  # NH3 dipole
    # U0_atom column (kcal/mol -> eV) equals U0 minus the atom references
    ref = sum(atomrefs[7][i] for i in (1, 0, 0, 0, 0))
    assert ch4.y[0, 12].item() == pytest.approx(ch4.y[0, 7].item() - ref, abs=2e-3)
    # positions from the SD file: 4 decimals of the xyz coordinates
    assert torch.allclose(ch4.pos[0], torch.tensor([-0.0127, 1.0858, 0.0080]), atol=1e-6)


def test_qm9_atomref_and_targets(qm9_root):
    ds = QM9(qm9_root, log=False)
    ref = ds.atomref()
    assert ref == pytest.approx({1: -13.61312172, 6: -1029.86312267, 7: -1485.30251237,
                                 8: -2042.61123593, 9: -2713.48485589})
    assert ds.atomref('U0_atom') is None
    g = QM9(qm9_root, target='G', log=False)
    assert g[0].energy.item() == pytest.approx(-40.498597 * HAR2EV, abs=1e-9)
    assert torch.equal(g[0].y, ds[0].y)
    with pytest.raises(ValueError, match='unknown QM9 target'):
        QM9(qm9_root, target='U00', log=False)
    with pytest.raises(ValueError, match='energy column'):
        QM9(qm9_root, target='mu', log=False)


def test_qm9_loader_and_split(qm9_root, tmp_path):
    ds = QM9(qm9_root, log=False)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch.energy.shape == (4,) and batch.y.shape == (4, 19)
    assert batch.num_graphs == 4 and batch.pos.shape[0] == batch.z.shape[0]
    with pytest.raises(ValueError, match='too few'):
        standard_split(ds)  # 110,000 / 10,000 needs the full dataset
    split = random_split(len(ds), 4, 2, None, seed=1, path=str(tmp_path / 'splits.npz'))
    assert sorted(torch.cat(list(split.values())).tolist()) == list(range(len(ds)))


def test_qm9_mismatched_raw_files(tmp_path):
    raw = tmp_path / 'raw'
    write_pyg_raw(str(raw))
    lines = (raw / 'gdb9.sdf.csv').read_text().splitlines()
    (raw / 'gdb9.sdf.csv').write_text('\n'.join(lines[:-1]) + '\n')
    with pytest.raises(RawFileError, match='do not belong together'):
        QM9(str(tmp_path), log=False)


def test_qm9_same_as_pyg_with_rdkit(qm9_root, tmp_path):
    """Our RDKit-free reader gives PyG's z, pos and y (only where RDKit is installed)."""
    pytest.importorskip('rdkit')
    from torch_geometric.datasets import QM9 as PygQM9
    pyg_root = tmp_path / 'pyg'
    write_pyg_raw(str(pyg_root / 'raw'))
    theirs = PygQM9(str(pyg_root))
    ours = QM9(qm9_root, log=False)
    assert len(theirs) == len(ours)
    for a, b in zip(theirs, ours):
        assert torch.equal(a.z, b.z) and torch.equal(a.y, b.y) and a.idx == b.idx.item()
        assert torch.allclose(a.pos, b.pos, atol=1e-6)
    assert QM9_TARGETS[7] == 'U0'
