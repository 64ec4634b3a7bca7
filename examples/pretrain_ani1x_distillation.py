"""Labels of the pretrained ``tensornet-ani1x`` and ``hipnn-ts-ani1x`` models.

Length: over 500 lines because the two labelling steps (molecules, teacher, MD sampler, pairs
and dissociation-scan geometry) are one recipe, run as one script beside the library.

The ANI-1x DFT release (wB97X/6-31G(d), about 5 M conformations) is the natural training set
of an ANI-1x-level potential. Where it is not available, the models are trained by
*distillation*: the published ANI-1x 8-model ensemble (NeuroChem format, read by torchani's
``neurochem`` module) is used both as the MD potential that samples off-equilibrium
conformations of real H/C/N/O molecules and as the teacher that labels them with energies and
forces. This script writes those labels; the training engine (``pyg-tensorpot train``) trains
the students on them, reading the label files as a
:class:`~pyg_tensorpot.datasets.distillation.DistillationDataset`.

Four steps, each resumable from its output::

    # 1a. sample and label (needs torchani==2.2.4 and pkg_resources, see below; recipe only)
    python examples/pretrain_ani1x_distillation.py label --out distill/ani1x_distill.npz
    # 1b. dissociation scans of dimers, labelled the same way
    python examples/pretrain_ani1x_distillation.py label-dimers --scans 8000 \
        --out distill/ani1x_dimer_scans.npz
    # 2. train a student from scratch on 1a (no torchani needed)
    pyg-tensorpot train examples/distill-ani1x-tensornet.yaml
    pyg-tensorpot train examples/distill-ani1x-hipnn-ts.yaml
    # 3. fine-tune it on 1a + 1b, with the loss on scan-relative energies
    pyg-tensorpot train examples/distill-ani1x-tensornet-scans.yaml
    pyg-tensorpot train examples/distill-ani1x-hipnn-ts-scans.yaml
    # (with the real release instead: examples/TensorNet-ANI1x.yaml)

The YAML files hold the settings of the shipped models, whose ``config.json``
(``training.stages``) and model cards record how they were trained (by the training loop this
script had before the engine took it over).

Molecules (``label``): the first 500 QM9 molecules of schnetpack's test database and the 10
QM9 xyz files (those with F dropped), the 5 formula groups of the ANI-1x release sample, the
neutral H/C/N/O molecules of the SPICE sample, and -- unless ``--no-s66-monomers`` -- the
monomers of COMP6 S66x8 (split off its 1.00x equilibrium dimers; **no S66x8 dimer conformation
is used**). Molecules of the validation and test splits of our DFT labels (``OrganicDFT``,
matched by the covalent graph of every fragment, ``bond_graph_key``) are left out, so that
those splits stay unseen by a distilled model and by replay while fine-tuning. Sampling: Langevin MD with the ensemble (0.5 fs, friction 0.02/fs) at 300, 600 and
1000 K (cycled over the molecules; 60 steps = 30 fs from the equilibrium geometry with
velocities at twice the target temperature), one snapshot every ``--stride`` steps after a
10-step burn-in; plus intermolecular pairs of sampled monomers (random orientation, closest
contact 1.6-5 Angstrom) labelled by the ensemble. Labels are the ensemble mean energy
(Hartree -> eV) and forces (-dE/dR, eV/A).

Dimer scans (``label-dimers``): pairs of the same molecules (up to 20 atoms each; the S66x8
monomers weighted to about 30 % of the pool), kept rigid and moved apart along a line so that
their contact is scaled by 0.90 ... 2.00 as in S66x8; half are N-H/O-H...N/O hydrogen bonds
(H...X 1.8-2.1 A at factor 1), half random orientations (closest contact 2.2-3.0 A).
Intermolecular energies are small next to the energy of a molecule, so step 3 also fits the
energies relative to each scan's mean (``loss.relative_energy_weight``), the quantity S66x8
measures.

torchani is used only here, never by the library. torchani 2.2.4 imports ``pkg_resources``
(setuptools<70) and ``importlib_metadata``; with torch 2.13 (which requires setuptools>=77)
install them beside the environment rather than into it::

    pip install --no-deps torchani==2.2.4 lark-parser==0.12.0
    pip install --no-deps --target /tmp/pkgres "setuptools<70" importlib_metadata==6.11.0 \
        zipp==3.20.2
    PYTHONPATH=/tmp/pkgres python examples/pretrain_ani1x_distillation.py label ...
"""
import argparse
import glob
import json
import math
import os.path as osp
import time
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import torch

from pyg_tensorpot.utils.bonds import bond_graph_key, bonded_fragments, bonded_pairs
from pyg_tensorpot.utils.files import atomic_open
from pyg_tensorpot.utils.units import HARTREE_TO_EV

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHARED = osp.join(osp.dirname(REPO), 'shared', 'data')
KB_EV = 8.617333262e-5  # eV/K
MASSES = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}
ELEMENTS = (1, 6, 7, 8)
SYMBOLS = {'H': 1, 'C': 6, 'N': 7, 'O': 8}


# ----------------------------------------------------------------------------------------------
# molecules
# ----------------------------------------------------------------------------------------------
def _first_existing(*paths: str) -> Optional[str]:
    for path in paths:
        if osp.exists(path):
            return path
    return None


def _hcno(z: np.ndarray) -> bool:
    return bool(np.isin(z, ELEMENTS).all())


def held_out_graph_keys() -> Set[str]:
    """The :func:`~pyg_tensorpot.utils.bonds.bond_graph_key` of every molecule (and every
    molecule of a cluster) in the validation and test splits of our DFT labels
    (:class:`~pyg_tensorpot.datasets.OrganicDFT`), over all their conformations."""
    from pyg_tensorpot.datasets import OrganicDFT
    dataset = OrganicDFT(log=False)
    split = dataset.fixed_split()
    keys = set()
    for part in ('val', 'test'):
        for i in split[f'idx_{part}']:
            data = dataset[int(i)]
            z, pos = data.z.numpy(), data.pos.double().numpy()
            keys.update(bond_graph_key(z[f], pos[f]) for f in bonded_fragments(z, pos))
    return keys


def without_held_out(molecules: List[Tuple[str, np.ndarray, np.ndarray]], keys: Set[str]
                     ) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """The molecules none of whose bonded fragments has a graph key in :obj:`keys`."""
    return [(name, z, pos) for name, z, pos in molecules
            if not any(bond_graph_key(z[f], pos[f]) in keys for f in bonded_fragments(z, pos))]


def load_molecules(s66_monomers: bool = True) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """Equilibrium (or near-equilibrium) geometries ``(name, z, pos)`` of real H/C/N/O
    molecules from the data available to this project, less those of the validation and test
    splits of our DFT labels (:func:`held_out_graph_keys`), which must stay unseen."""
    import h5py
    molecules = []
    db_path = _first_existing(osp.join(SHARED, 'qm9', 'schnetpack_qm9_500mol_U0.db'))
    if db_path:
        from ase.db import connect
        for row in connect(db_path).select():
            if _hcno(row.numbers):
                molecules.append((f'qm9-db-{row.id}', row.numbers.astype(np.int64),
                                  row.positions.astype(np.float64)))
    for path in sorted(glob.glob(osp.join(REPO, 'tests', 'data', 'qm9', '*.xyz'))):
        with open(path) as f:
            lines = f.read().replace('*^', 'e').splitlines()
        n = int(lines[0])
        rows = [line.split() for line in lines[2:2 + n]]
        z = np.array([SYMBOLS.get(r[0], 0) for r in rows])
        if _hcno(z):
            molecules.append((osp.basename(path), z, np.array([[float(v) for v in r[1:4]]
                                                             for r in rows])))
    ani_path = _first_existing(osp.join(REPO, 'tests', 'data', 'ani1x',
                                        'modelforge_ani1x_release_n5.hdf5'))
    if ani_path:
        with h5py.File(ani_path, 'r') as f:
            for name, group in f.items():
                z = group['atomic_numbers'][()].astype(np.int64)
                coords = group['coordinates'][()]
                for k in range(min(2, len(coords))):
                    if np.isfinite(coords[k]).all():
                        molecules.append((f'ani1x-{name}-{k}', z, coords[k].astype(np.float64)))
    spice_path = _first_existing(osp.join(REPO, 'tests', 'data', 'spice',
                                          'modelforge_SPICE-1.1.4_n2.hdf5'))
    if spice_path:
        with h5py.File(spice_path, 'r') as f:
            for name, group in f.items():
                z = group['atomic_numbers'][()].astype(np.int64)
                smiles = group['smiles'][0]
                smiles = smiles.decode() if isinstance(smiles, bytes) else str(smiles)
                if _hcno(z) and '+' not in smiles and '-' not in smiles.replace('-]', ''):
                    pos = group['conformations'][0] * 0.529177210903
                    molecules.append((f'spice-{name}', z, pos.astype(np.float64)))
    if s66_monomers:
        s66_path = osp.join(REPO, 'tests', 'data', 'comp6', 's66x8_wb97x6-31gd.h5')
        seen = set()
        with h5py.File(s66_path, 'r') as f:
            for name, group in f['s66x8'].items():
                z = np.array([SYMBOLS[s.decode()] for s in group['species'][()]])
                pos = group['coordinates'][2].astype(np.float64)  # the 1.00x dimer
                for part in bonded_fragments(z, pos):
                    key = (tuple(sorted(z[part].tolist())), round(float(
                        np.linalg.norm(pos[part] - pos[part].mean(0), axis=1).sum()), 1))
                    if key not in seen:
                        seen.add(key)
                        molecules.append((f's66-monomer-{name}', z[part], pos[part]))
    return without_held_out(molecules, held_out_graph_keys())


# ----------------------------------------------------------------------------------------------
# the teacher
# ----------------------------------------------------------------------------------------------
class Teacher:
    """The ANI-1x 8-model ensemble, on padded batches (species index -1 = padding).

    Args:
        model_dir (str): Folder with ``rHCNO-5.2R_16-3.5A_a4-8.params``, ``sae_linfit.dat``
            and ``train0..7``.
    """
    def __init__(self, model_dir: str):
        import warnings
        warnings.filterwarnings('ignore', message='cuaev not installed')
        import torchani
        from torchani import neurochem
        consts = neurochem.Constants(osp.join(model_dir, 'rHCNO-5.2R_16-3.5A_a4-8.params'))
        sae = neurochem.load_sae(osp.join(model_dir, 'sae_linfit.dat'))
        ensemble = neurochem.load_model_ensemble(consts.species, osp.join(model_dir, 'train'),
                                                 8)
        # the networks run in float32; the large self energies are added in float64
        self.model = torchani.nn.Sequential(torchani.AEVComputer(**consts),
                                            ensemble).float().eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.sae = sae.self_energies.double()
        self.index = {z: i for i, z in enumerate((1, 6, 7, 8))}

    def species(self, z: np.ndarray) -> torch.Tensor:
        return torch.tensor([self.index.get(int(v), -1) if v > 0 else -1 for v in z])

    def __call__(self, species: torch.Tensor, pos: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Energies (eV) ``[B]`` and forces (eV/A) ``[B, N, 3]`` of a padded batch."""
        pos = pos.detach().float().requires_grad_(True)
        energy = self.model((species, pos)).energies
        (grad, ) = torch.autograd.grad(energy.sum(), pos)
        sae = torch.where(species >= 0, self.sae[species.clamp(min=0)], 0.0).sum(-1)
        return ((energy.detach().double() + sae) * HARTREE_TO_EV,
                -grad.double() * HARTREE_TO_EV)


def pad(items: List[Tuple[np.ndarray, np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
    n = max(len(z) for z, _ in items)
    z_pad = np.zeros((len(items), n), dtype=np.int64)
    pos_pad = np.zeros((len(items), n, 3))
    for k, (z, pos) in enumerate(items):
        z_pad[k, :len(z)] = z
        pos_pad[k, :len(z)] = pos
    return z_pad, pos_pad


def run_md(teacher: Teacher, molecules, temperatures: List[float], steps: int, stride: int,
           burn_in: int, batch_size: int, seed: int, log) -> List[Dict]:
    """Langevin MD (BAOAB, 0.5 fs, friction 0.02/fs) of every molecule, started from its
    equilibrium geometry with velocities at twice the target temperature (temperatures cycled
    over the molecules), with the ensemble as the potential; returns the labelled snapshots
    (every ``stride`` steps after ``burn_in`` steps)."""
    rng = np.random.default_rng(seed)
    replicas = [(name, z, pos, temperatures[k % len(temperatures)])
                for k, (name, z, pos) in enumerate(molecules)]
    out = []
    dt, gamma = 0.5, 0.02  # fs, 1/fs
    # units: eV, A, amu -> time unit sqrt(amu A^2 / eV) = 10.1805 fs
    time_unit = 10.180505
    h = dt / time_unit
    c1 = math.exp(-gamma * dt)
    for start in range(0, len(replicas), batch_size):
        chunk = replicas[start:start + batch_size]
        z_pad, pos_np = pad([(z, pos) for _, z, pos, _ in chunk])
        species = torch.stack([teacher.species(z) for z in z_pad])
        mask = torch.from_numpy(z_pad > 0)
        mass = torch.tensor(np.vectorize(lambda v: MASSES.get(int(v), 1.0))(z_pad))[..., None]
        temp = torch.tensor([t for *_, t in chunk], dtype=torch.float64)[:, None, None]
        kT = KB_EV * temp
        pos = torch.from_numpy(pos_np)
        # start at twice the target kinetic energy: equipartition brings it to T in ~20 fs
        vel = torch.from_numpy(rng.standard_normal(pos.shape)) * torch.sqrt(2 * kT / mass)
        vel = vel * mask[..., None]
        energy, forces = teacher(species, pos)
        t0 = time.time()
        for step in range(1, steps + 1):
            vel = vel + 0.5 * h * forces / mass
            pos = pos + 0.5 * h * vel
            noise = torch.from_numpy(rng.standard_normal(pos.shape))
            vel = c1 * vel + math.sqrt(1 - c1 * c1) * torch.sqrt(kT / mass) * noise
            vel = vel * mask[..., None]
            pos = pos + 0.5 * h * vel
            energy, forces = teacher(species, pos)
            vel = vel + 0.5 * h * forces / mass
            if step > burn_in and step % stride == 0:
                for k, (name, z, _, t) in enumerate(chunk):
                    n = len(z)
                    out.append(dict(name=name, temperature=t, z=z,
                                    pos=pos[k, :n].numpy().copy(),
                                    energy=float(energy[k]),
                                    forces=forces[k, :n].numpy().copy()))
        log(f'  MD replicas {start + len(chunk)}/{len(replicas)}: {steps} steps in '
            f'{time.time() - t0:.0f} s, {len(out)} snapshots so far')
    return out


def random_rotation(rng) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([[a*a + b*b - c*c - d*d, 2*(b*c - a*d), 2*(b*d + a*c)],
                     [2*(b*c + a*d), a*a - b*b + c*c - d*d, 2*(c*d - a*b)],
                     [2*(b*d - a*c), 2*(c*d + a*b), a*a - b*b - c*c + d*d]])


def make_pairs(snapshots: List[Dict], count: int, max_atoms: int, seed: int
               ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Intermolecular pairs of two sampled monomers: random orientations, the closest
    contact drawn uniformly in 1.6-5.0 Angstrom (H-bonds, stacking, dispersion contacts)."""
    rng = np.random.default_rng(seed)
    pool = [s for s in snapshots if len(s['z']) <= max_atoms // 2 + 4]
    pairs = []
    while len(pairs) < count:
        a, b = (pool[i] for i in rng.integers(len(pool), size=2))
        if len(a['z']) + len(b['z']) > max_atoms:
            continue
        pa = a['pos'] - a['pos'].mean(0)
        pb = (b['pos'] - b['pos'].mean(0)) @ random_rotation(rng).T
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        target = rng.uniform(1.6, 5.0)
        # place b along the direction so that the closest contact equals the target
        lo, hi = 0.0, 30.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            dmin = np.linalg.norm(pa[:, None] - (pb + mid * direction)[None], axis=-1).min()
            lo, hi = (mid, hi) if dmin < target else (lo, mid)
        pairs.append((np.concatenate([a['z'], b['z']]), np.concatenate([pa, pb + hi * direction])))
    return pairs


#: Scale factors of the intermolecular distance in a dissociation scan (those of S66x8).
SCAN_FACTORS = (0.90, 0.95, 1.00, 1.05, 1.10, 1.25, 1.50, 2.00)


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation matrix taking the unit vector ``a`` onto the unit vector ``b`` (Rodrigues)."""
    v, c = np.cross(a, b), float(np.dot(a, b))
    if c < -1 + 1e-9:  # antiparallel: half turn about any axis normal to a
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


def _axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _tilted(direction: np.ndarray, max_angle_deg: float, rng) -> np.ndarray:
    """``direction`` turned by a random angle up to ``max_angle_deg`` about a random normal."""
    normal = np.cross(direction, rng.standard_normal(3))
    normal /= np.linalg.norm(normal)
    return _axis_rotation(normal, math.radians(rng.uniform(0, max_angle_deg))) @ direction


def _hydrogen_bond_geometry(za, pa, zb, pb, rng):
    """Places monomer b as the acceptor of a hydrogen bond from a polar H of monomer a.

    Returns ``(pb_placed, direction, contact)``: b's coordinates at the equilibrium-like
    H...X distance, the unit vector along which the scan moves b, and that distance; or
    ``None`` when a has no N-H/O-H or b no N/O."""
    bonds_a, bonds_b = bonded_pairs(za, pa), bonded_pairs(zb, pb)
    donors = [i for i in np.nonzero(za == 1)[0]
              if any(za[j] in (7, 8) for j in np.nonzero(bonds_a[i])[0])]
    acceptors = np.nonzero(np.isin(zb, (7, 8)))[0]
    if not donors or len(acceptors) == 0:
        return None
    h = int(rng.choice(donors))
    x = int(rng.choice(acceptors))
    heavy = np.nonzero(bonds_a[h])[0][0]
    bond = (pa[h] - pa[heavy]) / np.linalg.norm(pa[h] - pa[heavy])
    direction = _tilted(bond, 25.0, rng)
    # the acceptor's lone-pair side points back at the H (within 40 degrees)
    partners = np.nonzero(bonds_b[x])[0]
    lone_pair = sum((pb[x] - pb[j]) / np.linalg.norm(pb[x] - pb[j])
                    for j in partners) if len(partners) else None
    if lone_pair is None or np.linalg.norm(lone_pair) < 1e-3:
        lone_pair = rng.standard_normal(3)
    lone_pair /= np.linalg.norm(lone_pair)
    rotation = _rotation_between(lone_pair, _tilted(-direction, 40.0, rng))
    spin = _axis_rotation(-direction, rng.uniform(0, 2 * math.pi))
    pb = (pb - pb[x]) @ (spin @ rotation).T
    contact = rng.uniform(1.8, 2.1)  # H...X, Angstrom
    return pb + pa[h] + contact * direction, direction, contact


def _closest_contact(pa: np.ndarray, pb: np.ndarray) -> float:
    return float(np.linalg.norm(pa[:, None] - pb[None], axis=-1).min())


def make_dimer_scans(monomers: List[Tuple[str, np.ndarray, np.ndarray]], count: int,
                     hbond_fraction: float, noise: float, seed: int
                     ) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """Dissociation scans of molecular dimers, built like S66x8 but from random pairs.

    Each scan keeps both monomers rigid and moves one of them along a line so that the
    intermolecular contact is scaled by :data:`SCAN_FACTORS`. A fraction ``hbond_fraction``
    of the scans places b as a hydrogen-bond acceptor of a polar H of a (H...N/O 1.8-2.1 A at
    factor 1); the others use a random orientation and direction with the closest contact at
    2.2-3.0 A. Scans whose factor-0.9 geometry has a contact under 1.4 A (or, for hydrogen
    bonds, another heavy-atom contact under 2.6 A) are redrawn. Monomer geometries get
    Gaussian noise of ``noise`` A in half of the scans. Returns ``(kind, z, pos)`` in scan
    order, ``len(SCAN_FACTORS)`` entries per scan."""
    rng = np.random.default_rng(seed)
    out = []
    want_hbond = None  # kept until a pair that can form the wanted scan is drawn
    while len(out) < count * len(SCAN_FACTORS):
        if want_hbond is None:
            want_hbond = rng.random() < hbond_fraction
        (_, za, pa), (_, zb, pb) = (monomers[i] for i in rng.integers(len(monomers), size=2))
        pa = pa - pa.mean(0)
        pb = pb - pb.mean(0)
        if rng.random() < 0.5:
            pa = pa + noise * rng.standard_normal(pa.shape)
            pb = pb + noise * rng.standard_normal(pb.shape)
        if want_hbond:
            placed = _hydrogen_bond_geometry(za, pa, zb, pb, rng)
            if placed is None:
                continue
            pb, direction, contact = placed
            kind = 'dimer-hbond'
            # distance of b's move that scales the H...X contact by the factor
            shifts = [(f - 1.0) * contact for f in SCAN_FACTORS]
            geometries = [pb + s * direction for s in shifts]
            heavy_a, heavy_b = pa[za > 1], geometries[0][zb > 1]
            if _closest_contact(heavy_a, heavy_b) < 2.6:
                continue
        else:
            kind = 'dimer-random'
            pb = pb @ random_rotation(rng).T
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            contact = rng.uniform(2.2, 3.0)
            geometries = []
            for f in SCAN_FACTORS:  # bisection on the shift giving the scaled contact
                lo, hi = 0.0, 40.0
                for _ in range(40):
                    mid = 0.5 * (lo + hi)
                    lo, hi = ((mid, hi) if _closest_contact(pa, pb + mid * direction)
                              < f * contact else (lo, mid))
                geometries.append(pb + hi * direction)
        if _closest_contact(pa, geometries[0]) < 1.4:
            continue
        want_hbond = None
        for geometry in geometries:
            out.append((kind, np.concatenate([za, zb]), np.concatenate([pa, geometry])))
    return out


def label_dimers(args) -> None:
    """Step 1b: dissociation scans of dimers (rigid monomers), labelled by the ensemble."""
    t_start = time.time()
    log = lambda msg: print(f'[{time.time() - t_start:7.0f} s] {msg}', flush=True)  # noqa
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    teacher = Teacher(args.model_dir)
    molecules = [m for m in load_molecules(not args.no_s66_monomers)
                 if len(m[1]) <= args.max_monomer_atoms]
    s66 = [m for m in molecules if m[0].startswith('s66')]
    others = [m for m in molecules if not m[0].startswith('s66')]
    # the S66x8 monomers are few; without weighting they would be in 1 scan of 30
    pool = others + s66 * max(1, int(round(args.s66_weight * len(others)
                                           / max(1, len(s66)))))
    log(f'{len(others)} QM9 monomers and {len(s66)} S66x8 monomers (up to '
        f'{args.max_monomer_atoms} atoms); pool of {len(pool)}')
    scans = make_dimer_scans(pool, args.scans, args.hbond_fraction, args.noise, args.seed)
    energies, forces = [], []
    for start in range(0, len(scans), 256):
        z_pad, pos_pad = pad([(z, pos) for _, z, pos in scans[start:start + 256]])
        species = torch.stack([teacher.species(z) for z in z_pad])
        e, f = teacher(species, torch.from_numpy(pos_pad))
        energies.append(e.numpy())
        forces.extend(f[k, :len(z)].numpy() for k, (_, z, _) in
                      enumerate(scans[start:start + 256]))
    energies = np.concatenate(energies)
    log(f'{len(scans)} dimer conformations ({args.scans} scans) labelled')
    n_points = len(SCAN_FACTORS)
    group = np.repeat(np.arange(args.scans), n_points)
    # a scan is kept whole or dropped whole (its energies are compared with each other)
    bad = np.array([np.abs(f).max() >= args.max_force for f in forces]).reshape(-1, n_points)
    keep = np.repeat(~bad.any(1), n_points)
    log(f'kept {keep.sum() // n_points} of {args.scans} scans (max |F| < {args.max_force} eV/A)')
    idx = np.nonzero(keep)[0]
    # written whole or not at all (atomic_open): an interrupted run leaves no partial file
    with atomic_open(args.out) as out:
        np.savez_compressed(
            out, natoms=np.array([len(scans[i][1]) for i in idx]),
            z=np.concatenate([scans[i][1] for i in idx]).astype(np.int8),
            pos=np.concatenate([scans[i][2] for i in idx]).astype(np.float32),
            energy=energies[idx],
            forces=np.concatenate([forces[i] for i in idx]).astype(np.float32),
            temperature=np.zeros(len(idx), dtype=np.float32),
            source=np.array([scans[i][0] for i in idx]), group=group[idx],
            info=json.dumps(dict(scans=args.scans, kept_scans=int(keep.sum() // n_points),
                                 scan_factors=list(SCAN_FACTORS),
                                 hbond_fraction=args.hbond_fraction, noise=args.noise,
                                 s66_weight=args.s66_weight,
                                 max_monomer_atoms=args.max_monomer_atoms,
                                 s66_monomers=not args.no_s66_monomers, seed=args.seed,
                                 wall_s=time.time() - t_start)))
    log(f'wrote {args.out}')


def label(args) -> None:
    """Step 1: sample conformations with the ensemble and label them."""
    t_start = time.time()
    log = lambda msg: print(f'[{time.time() - t_start:7.0f} s] {msg}', flush=True)  # noqa
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    teacher = Teacher(args.model_dir)
    # sanity check of the teacher against DFT: S66x8 water dimer (wB97X/6-31G(d))
    import h5py
    with h5py.File(osp.join(REPO, 'tests', 'data', 'comp6', 's66x8_wb97x6-31gd.h5')) as f:
        g = f['s66x8/mol00']
        z = np.array([SYMBOLS[s.decode()] for s in g['species'][()]])
        e_ref = g['energies'][()] * HARTREE_TO_EV
        species = teacher.species(z)[None].repeat(8, 1)
        e, _ = teacher(species, torch.from_numpy(g['coordinates'][()].astype(np.float64)))
    log(f'teacher check on S66x8 mol00 (water dimer): |E_ens - E_DFT| max '
        f'{np.abs(e.numpy() - e_ref).max() * 1000:.1f} meV')

    molecules = load_molecules(not args.no_s66_monomers)
    log(f'{len(molecules)} molecules, {sum(len(z) for _, z, _ in molecules)} atoms')
    temps = [float(t) for t in args.temperatures.split(',')]
    snapshots = run_md(teacher, molecules, temps, args.steps, args.stride, args.burn_in,
                       args.md_batch, args.seed, log)
    pairs = make_pairs(snapshots, args.pairs, args.pair_max_atoms, args.seed + 1)
    for start in range(0, len(pairs), 256):
        chunk = pairs[start:start + 256]
        z_pad, pos_pad = pad(chunk)
        species = torch.stack([teacher.species(z) for z in z_pad])
        energy, forces = teacher(species, torch.from_numpy(pos_pad))
        for k, (z, pos) in enumerate(chunk):
            snapshots.append(dict(name='pair', temperature=0.0, z=z, pos=pos,
                                  energy=float(energy[k]),
                                  forces=forces[k, :len(z)].numpy().copy()))
    log(f'{len(pairs)} intermolecular pairs labelled')
    # drop the rare unphysical snapshot (bond broken at 1000 K, huge forces)
    keep = [s for s in snapshots if np.abs(s['forces']).max() < args.max_force
            and len(bonded_fragments(s['z'], s['pos'])) == (2 if s['name'] == 'pair' else 1)]
    log(f'kept {len(keep)} of {len(snapshots)} conformations (max |F| < {args.max_force} '
        f'eV/A, no broken molecule)')
    natoms = np.array([len(s['z']) for s in keep])
    with atomic_open(args.out) as out:
        np.savez_compressed(
            out, natoms=natoms, z=np.concatenate([s['z'] for s in keep]).astype(np.int8),
            pos=np.concatenate([s['pos'] for s in keep]).astype(np.float32),
            energy=np.array([s['energy'] for s in keep]),
            forces=np.concatenate([s['forces'] for s in keep]).astype(np.float32),
            temperature=np.array([s['temperature'] for s in keep], dtype=np.float32),
            source=np.array([s['name'] for s in keep]),
            info=json.dumps(dict(molecules=len(molecules), temperatures=temps,
                                 steps=args.steps, stride=args.stride, burn_in=args.burn_in,
                                 pairs=args.pairs, s66_monomers=not args.no_s66_monomers,
                                 seed=args.seed, wall_s=time.time() - t_start)))
    log(f'wrote {args.out}')


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('label', help='sample and label conformations with the ensemble')
    p.add_argument('--model-dir', default=osp.join(SHARED, 'ani1x_model', 'ani-1x_8x'))
    p.add_argument('--out', default='distill/ani1x_distill.npz')
    p.add_argument('--temperatures', default='300,600,1000')
    p.add_argument('--steps', type=int, default=60)
    p.add_argument('--stride', type=int, default=1)
    p.add_argument('--burn-in', type=int, default=10)
    p.add_argument('--md-batch', type=int, default=600)
    p.add_argument('--pairs', type=int, default=9000)
    p.add_argument('--pair-max-atoms', type=int, default=34)
    p.add_argument('--max-force', type=float, default=20.0)
    p.add_argument('--no-s66-monomers', action='store_true')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p = sub.add_parser('label-dimers', help='dissociation scans of dimers, labelled by the '
                       'ensemble')
    p.add_argument('--model-dir', default=osp.join(SHARED, 'ani1x_model', 'ani-1x_8x'))
    p.add_argument('--out', default='distill/ani1x_dimer_scans.npz')
    p.add_argument('--scans', type=int, default=4000)
    p.add_argument('--hbond-fraction', type=float, default=0.5)
    p.add_argument('--noise', type=float, default=0.02,
                   help='Gaussian noise (A) on the monomer atoms in half of the scans')
    p.add_argument('--s66-weight', type=float, default=0.4,
                   help='share of S66x8 monomers in the monomer pool')
    p.add_argument('--max-monomer-atoms', type=int, default=20)
    p.add_argument('--max-force', type=float, default=20.0)
    p.add_argument('--no-s66-monomers', action='store_true')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--seed', type=int, default=1)
    args = parser.parse_args(argv)
    {'label': label, 'label-dimers': label_dimers}[args.command](args)


if __name__ == '__main__':
    main()
