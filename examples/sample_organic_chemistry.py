"""Sample organic chemistry as ANI-1x does and choose what to label by the teacher's spread.

One round of active learning (issue 18)::

    PYTHONPATH=/tmp/pkgres python examples/sample_organic_chemistry.py \
        --teacher ../shared/data/ani1x_model/ani-1x_8x --round 1 --select 600

1. Molecules (``pyg_tensorpot.sampling.molecules``): neutral closed-shell C/H/N/O molecules of
   the NCI Open Database sample that RDKit ships (public domain) and new ones joined from
   their BRICS fragments, up to ``--max-heavy`` heavy atoms; the 14 S66x8 monomers are
   excluded (by InChIKey connectivity), so that S66x8 stays a clean test set.
2. Conformations of each: ETKDG conformers relaxed with MMFF94, normal-mode samples around
   the lowest one at 300-1,000 K (MMFF94 Hessian), Langevin MD with the teacher at 300, 600 and
   1,000 K (``run_md`` of ``pretrain_ani1x_distillation.py``), and a torsion scan about one
   rotatable bond; plus dimers and trimers of different molecules (closest contact 1.7-3.5 A).
3. Scores: the ANI-1x 8-model ensemble (the teacher) predicts every conformation;
   rho = (spread of the 8 energies) / sqrt(atoms) is ANI-1x's selection criterion.
4. The queue: the ``--select`` conformations of highest rho, at most ``--max-per-molecule`` per
   molecule or cluster, highest first, written (atomically) to
   ``pyg_tensorpot/data/organic_dft/queue_r<round>.npz`` for ``examples/label_dft.py``; the
   whole scored pool goes to ``--pool``.

The teacher needs torchani 2.2.4, installed beside the environment as the docstring of
``examples/pretrain_ani1x_distillation.py`` says (``Teacher`` and ``run_md`` are imported from
there); the library never imports torchani.
"""
import argparse
import io
import os.path as osp
import sys
import time
from typing import Dict, List

import numpy as np
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(REPO, 'examples'))

from pretrain_ani1x_distillation import Teacher, pad, run_md  # noqa: E402

from pyg_tensorpot.datasets.organic_dft import conformation_split  # noqa: E402
from pyg_tensorpot.sampling import (  # noqa: E402
    MoleculeFilter,
    brics_fragments,
    brics_molecules,
    committee_scores,
    embed_conformers,
    finite_difference_hessian,
    make_clusters,
    mmff_forces,
    nci_molecules,
    normal_mode_samples,
    rotatable_torsions,
    select,
    torsion_scan,
)
from pyg_tensorpot.utils.files import atomic_write_bytes  # noqa: E402
from pyg_tensorpot.utils.units import HARTREE_TO_EV  # noqa: E402

DATA = osp.join(REPO, 'pyg_tensorpot', 'data', 'organic_dft')


def log(message: str) -> None:
    print(f'[{time.strftime("%H:%M:%S")}] {message}', flush=True)


def teacher_members(teacher: Teacher, items, batch_size: int = 64):
    """Energies (eV) ``[8, B]`` and forces (eV/A) ``[8, N_b, 3]`` per item of every network of
    the ensemble (the self energies added, as in ``Teacher.__call__``)."""
    aev, networks = teacher.model[0], teacher.model[1]
    energies, forces = [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        z_pad, pos_pad = pad(chunk)
        species = torch.stack([teacher.species(z) for z in z_pad])
        pos = torch.from_numpy(pos_pad).float().requires_grad_(True)
        sae = torch.where(species >= 0, teacher.sae[species.clamp(min=0)], 0.0).sum(-1)
        feats = aev((species, pos))
        member_e, member_f = [], []
        for network in networks:
            e = network(feats).energies
            (grad, ) = torch.autograd.grad(e.sum(), pos, retain_graph=True)
            member_e.append((e.detach().double() + sae) * HARTREE_TO_EV)
            member_f.append(-grad.double() * HARTREE_TO_EV)
        energies.append(torch.stack(member_e).numpy())
        f = torch.stack(member_f).numpy()
        forces += [f[:, k, :len(z)] for k, (z, _) in enumerate(chunk)]
    return np.concatenate(energies, axis=1), forces


def choose_molecules(args) -> List[Dict]:
    keep_all = MoleculeFilter(1, 60)
    nci = nci_molecules(keep_all)
    log(f'NCI sample: {len(nci)} neutral closed-shell C/H/N/O molecules (S66x8 excluded)')
    rng = np.random.default_rng(args.seed)
    from rdkit import Chem
    heavy = {s: Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in nci}
    medium = sorted(s for s in nci if args.min_heavy <= heavy[s] <= args.max_heavy)
    small = sorted(s for s in nci if 3 <= heavy[s] < args.min_heavy)
    fragments = brics_fragments(list(nci), max_heavy=12)
    joined = brics_molecules(fragments, args.brics,
                             MoleculeFilter(args.min_heavy, args.max_heavy + 5), pieces=3,
                             seed=args.seed)
    joined = [s for s in joined if s not in nci]
    log(f'{len(fragments)} BRICS fragments, {len(joined)} new joined molecules')
    picks = []
    for smiles in rng.choice(medium, size=min(args.nci, len(medium)), replace=False):
        picks.append(dict(smiles=str(smiles), source=nci[smiles]))
    for smiles in rng.choice(small, size=min(args.small, len(small)), replace=False):
        picks.append(dict(smiles=str(smiles), source=nci[smiles]))
    for smiles in joined:
        picks.append(dict(smiles=smiles, source='brics'))
    return picks


def sample(args, teacher: Teacher) -> List[Dict]:
    rng = np.random.default_rng(args.seed)
    candidates: List[Dict] = []
    minima = []
    for k, pick in enumerate(choose_molecules(args)):
        try:
            mol, z, positions, _ = embed_conformers(pick['smiles'], args.conformers,
                                                    seed=args.seed + k)
        except ValueError as error:
            log(f"  skipped {pick['smiles']}: {error}")
            continue
        base = dict(smiles=pick['smiles'], source=pick['source'], group=pick['smiles'])
        for c, pos in enumerate(positions[:3]):
            candidates.append(dict(base, z=z, pos=pos, kind='conformer', temperature=0.0))
        minima.append((pick['smiles'], z, positions[0], pick['source']))
        try:
            hessian = finite_difference_hessian(mmff_forces(mol), z, positions[0])
        except ValueError:
            hessian = None
        if hessian is not None:
            for t in args.temperatures:
                for pos in normal_mode_samples(z, positions[0], hessian, t, args.nms,
                                               seed=int(rng.integers(1 << 31))):
                    candidates.append(dict(base, z=z, pos=pos, kind='normal-modes',
                                           temperature=float(t)))
        torsions = rotatable_torsions(mol)
        if torsions:
            torsion = torsions[int(rng.integers(len(torsions)))]
            angles = np.arange(0.0, 360.0, 360.0 / args.torsion_steps)
            for angle, pos in zip(angles, torsion_scan(mol, torsion, angles)):
                candidates.append(dict(base, z=z, pos=pos, kind=f'torsion-{angle:.0f}',
                                       temperature=0.0))
    log(f'{len(minima)} molecules embedded; {len(candidates)} conformer, normal-mode and '
        f'torsion candidates')
    snapshots = run_md(teacher, [(s, z, p) for s, z, p, _ in minima], args.temperatures,
                       steps=args.md_steps, stride=args.md_stride, burn_in=10, batch_size=32,
                       seed=args.seed, log=log)
    source = {s: src for s, _, _, src in minima}
    for snap in snapshots:
        candidates.append(dict(smiles=snap['name'], source=source[snap['name']],
                               group=snap['name'], z=snap['z'], pos=snap['pos'],
                               kind='md', temperature=float(snap['temperature'])))
    pool = [(z, p) for _, z, p, _ in minima]
    names = [s for s, *_ in minima]
    # a cluster joins molecules of one part of the fixed split, so it is never left out of all
    parts = [conformation_split(name) for name in names]
    for c, (members, (z, pos)) in enumerate(make_clusters(pool, args.clusters, max_atoms=40,
                                                          seed=args.seed, groups=parts)):
        smiles = '.'.join(names[m] for m in members)
        candidates.append(dict(smiles=smiles, source='cluster', group=f'cluster-{c}', z=z,
                               pos=pos, kind=f'cluster-{len(members)}', temperature=0.0))
    log(f'{len(candidates)} candidates with MD snapshots and clusters')
    return candidates


def to_npz(items: List[Dict], scores: Dict[str, np.ndarray], keys: List[str]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, key=np.array(keys), num_atoms=np.array([len(c['z']) for c in items]),
        z=np.concatenate([c['z'] for c in items]).astype(np.int64),
        pos=np.concatenate([c['pos'] for c in items]).astype(np.float64),
        smiles=np.array([c['smiles'] for c in items]),
        group=np.array([c['group'] for c in items]),
        source=np.array([c['source'] for c in items]),
        kind=np.array([c['kind'] for c in items]),
        temperature=np.array([c['temperature'] for c in items]),
        **{name: np.asarray(value) for name, value in scores.items() if name != 'num_atoms'})
    return buffer.getvalue()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--teacher', default=osp.join(osp.dirname(REPO), 'shared', 'data',
                                                      'ani1x_model', 'ani-1x_8x'),
                        help='folder of the ANI-1x 8-model ensemble (NeuroChem files)')
    parser.add_argument('--round', type=int, default=1, help='active-learning round')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--nci', type=int, default=50, help='NCI molecules of min..max heavy')
    parser.add_argument('--small', type=int, default=15, help='NCI molecules of 3..min-1 heavy')
    parser.add_argument('--brics', type=int, default=25, help='new BRICS-joined molecules')
    parser.add_argument('--min-heavy', type=int, default=10)
    parser.add_argument('--max-heavy', type=int, default=20)
    parser.add_argument('--conformers', type=int, default=6)
    parser.add_argument('--nms', type=int, default=2, help='normal-mode samples per T')
    parser.add_argument('--temperatures', type=float, nargs='+', default=[300.0, 600.0, 1000.0])
    parser.add_argument('--torsion-steps', type=int, default=6)
    parser.add_argument('--md-steps', type=int, default=60)
    parser.add_argument('--md-stride', type=int, default=25)
    parser.add_argument('--clusters', type=int, default=120)
    parser.add_argument('--select', type=int, default=600)
    parser.add_argument('--max-per-molecule', type=int, default=8)
    parser.add_argument('--max-atoms', type=int, default=40,
                        help='largest conformation queued for DFT (cost grows as N^3)')
    parser.add_argument('--pool', default=osp.join(DATA, 'pool_r{round}.npz'))
    parser.add_argument('--queue', default=osp.join(DATA, 'queue_r{round}.npz'))
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    teacher = Teacher(args.teacher)
    candidates = sample(args, teacher)
    energies, forces = teacher_members(teacher, [(c['z'], c['pos']) for c in candidates])
    scores = committee_scores(energies, forces)
    scores['teacher_energy'] = energies.mean(0)
    log(f"rho: median {np.median(scores['rho']) * 1e3:.2f} meV, 90th percentile "
        f"{np.percentile(scores['rho'], 90) * 1e3:.2f} meV, max {scores['rho'].max() * 1e3:.2f}")
    pool_path = args.pool.format(round=args.round)
    keys = [f'pool{args.round}-{k:05d}' for k in range(len(candidates))]
    atomic_write_bytes(to_npz(candidates, scores, keys), pool_path)
    log(f'wrote the scored pool ({len(candidates)}) to {pool_path}')
    small_enough = np.array([len(c['z']) <= args.max_atoms for c in candidates])
    rho = np.where(small_enough, scores['rho'], -np.inf)
    order = select(np.where(np.isfinite(rho), rho, -1.0), args.select,
                   groups=[c['group'] for c in candidates],
                   max_per_group=args.max_per_molecule, threshold=0.0)
    order = [k for k in order if small_enough[k]]
    chosen = [candidates[k] for k in order]
    queue_path = args.queue.format(round=args.round)
    queue_keys = [f'r{args.round}-{rank:05d}' for rank in range(len(chosen))]
    atomic_write_bytes(to_npz(chosen, {name: np.asarray(value)[order]
                                       for name, value in scores.items()}, queue_keys),
                       queue_path)
    kinds: Dict[str, int] = {}
    for c in chosen:
        kind = c['kind'].split('-')[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    log(f'queued {len(chosen)} conformations by rho (>= {rho[order[-1]] * 1e3:.2f} meV) into '
        f'{queue_path}: {kinds}')


if __name__ == '__main__':
    main()
