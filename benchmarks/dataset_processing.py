"""Times ``ANI1x.process()`` on a synthetic file in the exact ANI-1x release layout.

The file has the 26 keys of ``ani1x-release.h5`` per formula group, with their dtypes and
shapes (``atomic_numbers`` u1, ``coordinates`` f4, ``wb97x_dz.energy`` f8, ``wb97x_dz.forces``
f4, the other levels and properties NaN-filled as the missing entries of the release are), and
5,000,000 conformations spread over 3,114 formula groups (about the release's number of
formula groups, not recounted here) with 2 to about 75 atoms (log-normal around 14, formulas
made unique by adding hydrogens). The keys that ``ANI1x`` does not read are declared with a NaN
fill value, so HDF5 allocates no space for them; the keys it reads are written in full. 0.1 % of
the energies and 0.01 % of the force blocks are NaN, to exercise the drop path. Processing runs
in a child process so that its peak resident memory (``ru_maxrss``) is measured alone.

Usage::

    python benchmarks/dataset_processing.py                    # 5 M conformations
    python benchmarks/dataset_processing.py --conformations 200000 --groups 300
"""
import argparse
import json
import os
import os.path as osp
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from pyg_tensorpot.datasets.reference_energies import ANI1X_SELF_ENERGIES_HARTREE

#: The 26 datasets of a group of ani1x-release.h5: name -> (dtype, per-conformation shape),
#: where 'n' is the number of atoms.
RELEASE_KEYS = {
    'coordinates': ('f4', ('n', 3)),
    'wb97x_dz.energy': ('f8', ()),
    'wb97x_dz.forces': ('f4', ('n', 3)),
    'wb97x_tz.energy': ('f8', ()),
    'wb97x_tz.forces': ('f4', ('n', 3)),
    'ccsd(t)_cbs.energy': ('f8', ()),
    'hf_dz.energy': ('f8', ()),
    'hf_tz.energy': ('f8', ()),
    'hf_qz.energy': ('f8', ()),
    'mp2_dz.corr_energy': ('f8', ()),
    'mp2_tz.corr_energy': ('f8', ()),
    'mp2_qz.corr_energy': ('f8', ()),
    'npno_ccsd(t)_dz.corr_energy': ('f8', ()),
    'npno_ccsd(t)_tz.corr_energy': ('f8', ()),
    'tpno_ccsd(t)_dz.corr_energy': ('f8', ()),
    'wb97x_dz.dipole': ('f4', (3,)),
    'wb97x_tz.dipole': ('f4', (3,)),
    'wb97x_dz.quadrupole': ('f4', (6,)),
    'wb97x_dz.cm5_charges': ('f4', ('n',)),
    'wb97x_dz.hirshfeld_charges': ('f4', ('n',)),
    'wb97x_tz.mbis_charges': ('f4', ('n',)),
    'wb97x_tz.mbis_dipoles': ('f4', ('n',)),
    'wb97x_tz.mbis_quadrupoles': ('f4', ('n',)),
    'wb97x_tz.mbis_octupoles': ('f4', ('n',)),
    'wb97x_tz.mbis_volumes': ('f4', ('n',)),
}
SELF_ENERGY = ANI1X_SELF_ENERGIES_HARTREE


def write_synthetic_ani1x(path: str, conformations: int, groups: int, seed: int = 0) -> dict:
    """Writes the synthetic release file; returns its statistics."""
    import h5py
    from tqdm.auto import tqdm
    rng = np.random.default_rng(seed)
    n_atoms = np.clip(np.round(rng.lognormal(np.log(14.0), 0.4, groups)), 2, 63).astype(int)
    weights = rng.dirichlet(np.full(groups, 0.7))
    counts = rng.multinomial(conformations - groups, weights) + 1
    names = set()
    total_atoms = 0
    with h5py.File(path, 'w') as f:
        for g in tqdm(range(groups), desc='writing synthetic ANI-1x', unit='group'):
            n, m = int(n_atoms[g]), int(counts[g])
            # an empirical formula in the release's C, H, N, O order, made unique by adding H
            numbers = rng.choice([6, 1, 7, 8], size=n, p=[0.3, 0.5, 0.1, 0.1])
            c, h, nn, o = (int((numbers == v).sum()) for v in (6, 1, 7, 8))
            while f'C{c}H{h}N{nn}O{o}' in names:
                h += 1
            name = f'C{c}H{h}N{nn}O{o}'
            names.add(name)
            n = c + h + nn + o
            n_atoms[g] = n
            z = np.array([6] * c + [1] * h + [7] * nn + [8] * o, dtype=np.uint8)
            grp = f.create_group(name)
            grp['atomic_numbers'] = z
            base = rng.uniform(-3.0, 3.0, size=(1, n, 3)).astype(np.float32)
            noise = rng.standard_normal(size=(m, n, 3), dtype=np.float32)
            grp['coordinates'] = base + np.float32(0.05) * noise
            energy = sum(SELF_ENERGY[int(v)] for v in z) + 0.01 * rng.standard_normal(m)
            energy[rng.random(m) < 1e-3] = np.nan
            grp['wb97x_dz.energy'] = energy
            forces = np.float32(0.02) * rng.standard_normal(size=(m, n, 3), dtype=np.float32)
            forces[rng.random(m) < 1e-4, 0, 0] = np.nan
            grp['wb97x_dz.forces'] = forces
            for key, (dtype, tail) in RELEASE_KEYS.items():
                if key in grp:
                    continue
                shape = (m,) + tuple(n if t == 'n' else t for t in tail)
                grp.create_dataset(key, shape=shape, dtype=dtype, fillvalue=np.nan)
            total_atoms += m * n
    return {'conformations': int(counts.sum()), 'groups': groups, 'atoms': int(total_atoms),
            'max_atoms': int(n_atoms.max()), 'file_bytes': osp.getsize(path)}


CHILD = r'''
import json, resource, sys, time
t0 = time.perf_counter()
from pyg_tensorpot.datasets import ANI1x
t1 = time.perf_counter()
ds = ANI1x(sys.argv[1], log=True, verify_checksums=False)  # synthetic: not the release md5
t2 = time.perf_counter()
n = len(ds)
sample = ds[n // 2]
assert sample.energy.shape == (1,) and sample.forces.shape == sample.pos.shape
print(json.dumps({'seconds': t2 - t1, 'import_seconds': t1 - t0, 'structures': n,
                  'maxrss_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
'''


def run_child(root: str) -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, '-c', CHILD, root], check=True, text=True,
                         stdout=subprocess.PIPE)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result['wall_seconds'] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--conformations', type=int, default=5_000_000)
    parser.add_argument('--groups', type=int, default=3114)
    parser.add_argument('--workdir', default=None,
                        help='folder for the synthetic file (default: a temporary folder)')
    parser.add_argument('--keep', action='store_true', help='keep the files afterwards')
    args = parser.parse_args()
    root = args.workdir or tempfile.mkdtemp(prefix='ani1x_bench_')
    os.makedirs(osp.join(root, 'raw'), exist_ok=True)
    raw = osp.join(root, 'raw', 'ani1x-release.h5')
    try:
        t0 = time.perf_counter()
        stats = write_synthetic_ani1x(raw, args.conformations, args.groups)
        stats['write_seconds'] = time.perf_counter() - t0
        shutil.rmtree(osp.join(root, 'processed'), ignore_errors=True)
        process = run_child(root)       # processes and saves
        load = run_child(root)          # loads the processed file (checks its SHA-256)
        processed = [osp.join(root, 'processed', p) for p in os.listdir(
            osp.join(root, 'processed')) if p.endswith('.pt')]
        result = {
            'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs',
            **stats,
            'structures_kept': process['structures'],
            'process_seconds': round(process['seconds'], 1),
            'process_peak_rss_gib': round(process['maxrss_kib'] / 2 ** 20, 2),
            'load_seconds': round(load['seconds'], 1),
            'load_peak_rss_gib': round(load['maxrss_kib'] / 2 ** 20, 2),
            'processed_bytes': sum(osp.getsize(p) for p in processed),
        }
        print(json.dumps(result, indent=1))
        print()
        print('| conformations (kept) | groups | atoms | raw file | process() | peak RSS '
              '| processed file | reload | reload peak RSS |')
        print('|---|---|---|---|---|---|---|---|---|')
        print(f"| {result['conformations']:,} ({result['structures_kept']:,}) "
              f"| {result['groups']:,} | {result['atoms']:,} "
              f"| {result['file_bytes'] / 2 ** 30:.2f} GiB "
              f"| {result['process_seconds']:.0f} s | {result['process_peak_rss_gib']:.2f} GiB "
              f"| {result['processed_bytes'] / 2 ** 30:.2f} GiB "
              f"| {result['load_seconds']:.0f} s | {result['load_peak_rss_gib']:.2f} GiB |")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
