"""TensorNet speed and memory: pyg-tensorpot against torchmd-net 3.1.0, side by side in one run.

    pip install -c constraints.txt -e ".[benchmark]"
    python benchmarks/tensornet_speed.py [--s66x8 PATH] [--repeats 5]

Configuration: the ANI-1x TensorNet (H=128, L=2, 32 expnorm RBF, cutoff 4.5 A, O(3)), float32,
identical weights in both codes (checked before timing). Measured end to end from (z, pos,
batch), neighbour list included, on this machine's CPU threads:

* energy+forces throughput on batches of 64 S66x8 conformers (COMP6 v1) with 15-20 atoms;
* one training step (energy+force MSE loss, backward, AdamW step) on the same batch;
* energy+forces on single water boxes (liquid density) of ~1,000, ~5,000 and ~10,000 atoms,
  with the peak resident memory of the first call (each measurement runs in its own process;
  the kernel's high-water mark is reset just before the call: peak RSS minus RSS before it)
  and the median time of three calls.

torchmd-net is timed on its default code path (Warp kernels when warp-lang is installed, as
here) and on its pure-PyTorch path (the Warp ops swapped for its own PyTorch functions).
The record goes to benchmarks/results/tensornet_speed.json (--json); --render prints the
tables of an existing record.
"""
import os
import sys


def _wait_policy(argv) -> str:
    # --omp-wait-policy, read before torch starts its thread pool (argparse runs later).
    for k, arg in enumerate(argv):
        if arg == '--omp-wait-policy' and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith('--omp-wait-policy='):
            return arg.split('=', 1)[1]
    return os.environ.get('OMP_WAIT_POLICY', 'default')


# 'default' leaves the OpenMP runtime's own policy (threads spin a while, then sleep): what a
# user's process gets, and what hipnn_speed.py uses. PASSIVE (threads sleep at once) is for a
# loaded machine, where threads spinning for a busy core make every library slower and the
# timings erratic. All implementations run under the same setting.
OMP_WAIT_POLICY = _wait_policy(sys.argv)
if OMP_WAIT_POLICY == 'default':
    os.environ.pop('OMP_WAIT_POLICY', None)
else:
    os.environ['OMP_WAIT_POLICY'] = OMP_WAIT_POLICY

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from common import cpu_model  # noqa: E402  (benchmarks/ is on sys.path)
from pyg_tensorpot.io import load_torchmdnet  # noqa: E402
from pyg_tensorpot.utils.files import atomic_write_text  # noqa: E402

CONFIG = dict(hidden_channels=128, num_layers=2, num_rbf=32, cutoff=4.5, max_z=128)
IMPLEMENTATIONS = ('pyg-tensorpot', 'torchmd-net (warp)', 'torchmd-net (pure PyTorch)')
DEFAULT_S66X8 = [
    os.path.join(os.path.dirname(HERE), 'tests', 'data', 'comp6', 's66x8_wb97x6-31gd.h5'),
    os.path.join(os.path.dirname(HERE), '..', 'shared', 'data', 'comp6', 's66x8_wb97x6-31gd.h5'),
]


def torchmdnet_args(max_num_neighbors=128):
    return dict(
        model='tensornet', embedding_dimension=CONFIG['hidden_channels'],
        num_layers=CONFIG['num_layers'], num_rbf=CONFIG['num_rbf'], rbf_type='expnorm',
        trainable_rbf=False, activation='silu', cutoff_lower=0.0,
        cutoff_upper=CONFIG['cutoff'], max_z=CONFIG['max_z'],
        max_num_neighbors=max_num_neighbors, equivariance_invariance_group='O(3)',
        precision=32, derivative=True, output_model='Scalar', reduce_op='add',
        prior_model=None, atom_filter=-1, static_shapes=False, output_mlp_num_layers=0,
        box_vecs=None, charge=False, spin=False)


@contextlib.contextmanager
def torchmdnet_path(pure_pytorch):
    """Selects torchmd-net's pure-PyTorch TensorNet ops (module globals read at call time)."""
    import torchmdnet.models.tensornet as tn
    names = ('compose_tensor', 'decompose_tensor', 'tensor_matmul_o3', 'tensor_matmul_so3')
    saved = {n: getattr(tn, n) for n in names}
    if pure_pytorch:
        for n in names:
            setattr(tn, n, getattr(tn, '_' + n))
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(tn, n, f)


def build_models(max_num_neighbors=128):
    """Our TensorNet and torchmd-net's warp and pure-PyTorch models, with the same weights."""
    try:  # Warp (torchmd-net's kernels) logs every module it loads unless told not to.
        import warp
        warp.config.log_level = warp.LOG_WARNING
        warp.config.quiet = True
    except ImportError:
        pass
    from torchmdnet.models.model import create_model
    torch.manual_seed(0)
    reference = create_model(torchmdnet_args(max_num_neighbors))
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = load_torchmdnet(reference.state_dict(), hparams=torchmdnet_args())
    pure = create_model(torchmdnet_args(max_num_neighbors))
    pure.load_state_dict(reference.state_dict())
    for module in pure.modules():
        if hasattr(module, 'opt'):
            module.opt = False
    # Inference mode for all: torchmd-net keeps the graph of the forces only when training.
    return {IMPLEMENTATIONS[0]: ours.eval(), IMPLEMENTATIONS[1]: reference.eval(),
            IMPLEMENTATIONS[2]: pure.eval()}


def energy_and_forces(name, model, z, pos, batch):
    if name == IMPLEMENTATIONS[0]:
        return model.energy_and_forces(z, pos, batch)
    with torchmdnet_path(pure_pytorch=name == IMPLEMENTATIONS[2]):
        energy, neg_dy = model(z, pos, batch)
    return energy.detach().squeeze(-1), neg_dy.detach()


def training_step(name, model, optimizer, z, pos, batch, energy_ref, forces_ref):
    model.train()
    optimizer.zero_grad()
    if name == IMPLEMENTATIONS[0]:
        energy, forces = model.energy_and_forces(z, pos, batch)
    else:
        with torchmdnet_path(pure_pytorch=name == IMPLEMENTATIONS[2]):
            energy, forces = model(z, pos, batch)
        energy = energy.squeeze(-1)
    loss = torch.nn.functional.mse_loss(energy, energy_ref) + torch.nn.functional.mse_loss(
        forces, forces_ref)
    if name != IMPLEMENTATIONS[0]:
        with torchmdnet_path(pure_pytorch=name == IMPLEMENTATIONS[2]):
            loss.backward()
    else:
        loss.backward()
    optimizer.step()
    model.eval()


def load_s66x8_batch(path, size=64, min_atoms=15, max_atoms=20):
    import h5py
    z_list, pos_list = [], []
    symbols = {'H': 1, 'C': 6, 'N': 7, 'O': 8}
    with h5py.File(path, 'r') as f:
        for name in sorted(f['s66x8']):
            group = f['s66x8'][name]
            species = [symbols[s.decode()] for s in group['species'][()]]
            if not min_atoms <= len(species) <= max_atoms:
                continue
            for conformation in group['coordinates'][()]:
                z_list.append(torch.tensor(species))
                pos_list.append(torch.from_numpy(conformation.astype(np.float32)))
    if len(z_list) < size:
        raise RuntimeError(f'only {len(z_list)} conformers with {min_atoms}-{max_atoms} atoms')
    z_list, pos_list = z_list[:size], pos_list[:size]
    batch = torch.cat([torch.full((len(z), ), i) for i, z in enumerate(z_list)])
    return torch.cat(z_list), torch.cat(pos_list), batch


def water_box(num_atoms, seed=0):
    """Water molecules on a 3.104 A cubic lattice (liquid density, 0.1 atoms/A^3), randomly
    oriented: a single open-boundary system."""
    g = torch.Generator().manual_seed(seed)
    water = torch.tensor([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
    n_mol = max(1, round(num_atoms / 3))
    side = int(np.ceil(n_mol**(1 / 3)))
    sites = torch.stack(torch.meshgrid(*[torch.arange(side)] * 3, indexing='ij'), -1)
    sites = sites.reshape(-1, 3)[:n_mol].float() * 3.104
    q, r = torch.linalg.qr(torch.randn(n_mol, 3, 3, generator=g))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
    pos = (water.unsqueeze(0) @ q.transpose(1, 2) + sites.unsqueeze(1)).reshape(-1, 3)
    z = torch.tensor([8, 1, 1]).repeat(n_mol)
    return z, pos


def timed_round_robin(functions, repeats, warmup=2):
    """Median wall time of each function, the implementations taking turns, so that load
    from other processes on a shared machine falls on all of them alike."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def check_agreement(models, z, pos, batch):
    results = {name: energy_and_forces(name, m, z, pos, batch) for name, m in models.items()}
    e0, f0 = results[IMPLEMENTATIONS[0]]
    worst = 0.0
    for name, (e, f) in results.items():
        worst = max(worst, float((e - e0).abs().max() / e0.abs().max()),
                    float((f - f0).abs().max() / f0.abs().max()))
    return worst


def single_system(name, num_atoms, repeats=2):
    """One energy+forces call on a fresh water box of :obj:`num_atoms`: its peak RSS increase
    (MiB) and the median time of it and :obj:`repeats` more calls (as in molecular dynamics).
    Returns the row and the model and inputs, for further measurements in the same process."""
    torch.manual_seed(0)
    model = build_models(128)[name]
    # Warm up kernels (Warp JIT, Numba, allocator) on a small system so their one-time cost is
    # not counted as the big system's memory.
    zs, ps = water_box(60)
    energy_and_forces(name, model, zs, ps, torch.zeros_like(zs))
    z, pos = water_box(num_atoms)
    batch = torch.zeros_like(z)
    # Reset the kernel's high-water mark of this process, so that only this call counts.
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    rss_before = _status_mib('VmRSS')
    start = time.perf_counter()
    energy_and_forces(name, model, z, pos, batch)
    times = [time.perf_counter() - start]
    peak = _status_mib('VmHWM') - rss_before
    for _ in range(repeats):
        start = time.perf_counter()
        energy_and_forces(name, model, z, pos, batch)
        times.append(time.perf_counter() - start)
    row = {'atoms': len(z), 'seconds': statistics.median(times), 'calls': len(times),
           'peak_mib': peak}
    return row, model, (z, pos, batch)


def memory_worker(name, num_atoms):
    """Run in a fresh process: prints :func:`single_system`'s row as JSON."""
    row, _, _ = single_system(name, num_atoms)
    print(json.dumps(row))


def _status_mib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f'{field} not in /proc/self/status')


def run_memory(name, num_atoms):
    out = subprocess.run([sys.executable, __file__, '--memory-worker', name, str(num_atoms)],
                         capture_output=True, text=True, check=False)
    if out.returncode < 0:
        return {'error': f'killed by signal {-out.returncode} (out of memory?)'}
    if out.returncode != 0:
        lines = [line for line in out.stderr.splitlines() if 'Error' in line]
        return {'error': lines[-1] if lines else f'exit code {out.returncode}'}
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio(ours, theirs):
    return f'{theirs / ours:.2f}x' if ours and theirs else 'n/a'


def measure(args, path):
    """Runs every measurement and returns the record written to --json."""
    models = build_models()
    z, pos, batch = load_s66x8_batch(path)
    record = {
        'benchmark': 'tensornet_speed', 'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        'machine': cpu_model(), 'logical_cpus': os.cpu_count(), 'threads': torch.get_num_threads(),
        'omp_wait_policy': OMP_WAIT_POLICY,
        'torch': torch.__version__, 'load_average_before': list(os.getloadavg()),
        'config': dict(CONFIG, num_rbf=CONFIG['num_rbf'], rbf='expnorm', equivariance='O(3)',
                       dtype='float32'),
        'numba_kernels': importlib.util.find_spec('numba') is not None,
        'agreement_max_relative': check_agreement(models, z, pos, batch),
        'repeats': args.repeats, 'batch_atoms': z.numel(), 'batch_molecules': 64,
    }
    inference = {
        name: (lambda name=name, model=model: energy_and_forces(name, model, z, pos, batch))
        for name, model in models.items()
    }
    steps = {}
    for name, model in models.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        e_ref, f_ref = energy_and_forces(name, model, z, pos, batch)
        steps[name] = (lambda name=name, model=model, optimizer=optimizer, e_ref=e_ref, f_ref=
                       f_ref: training_step(name, model, optimizer, z, pos, batch, e_ref, f_ref))
    inference_time = timed_round_robin(inference, args.repeats)
    step_time = timed_round_robin(steps, args.repeats)
    record['batch'] = {name: {'energy_forces_s': inference_time[name],
                              'molecules_per_s': 64 / inference_time[name],
                              'training_step_s': step_time[name]} for name in IMPLEMENTATIONS}
    record['load_average_after_batch'] = list(os.getloadavg())
    record['single_systems'] = []
    for size in args.sizes:
        for name in IMPLEMENTATIONS:
            if name == IMPLEMENTATIONS[2] and size > args.pure_max_atoms:
                row = {'skipped': f'above --pure-max-atoms {args.pure_max_atoms}'}
            else:
                row = run_memory(name, size)
            record['single_systems'].append(dict(row, requested_atoms=size, implementation=name))
    record['load_average_after'] = list(os.getloadavg())
    return record


def render(record):
    """The Markdown tables of a record (benchmarks/README.md quotes them)."""
    ours = IMPLEMENTATIONS[0]
    lines = [f'# TensorNet speed: pyg-tensorpot vs torchmd-net 3.1.0 ({record["date"]})',
             f'machine: {record["machine"]}, {record["logical_cpus"]} logical CPUs, torch '
             f'{record["torch"]}, {record["threads"]} threads, float32, OpenMP wait policy '
             f'{record.get("omp_wait_policy", "PASSIVE")}; load average '
             f'{record["load_average_before"][0]:.1f} before, '
             f'{record["load_average_after"][0]:.1f} after; Numba kernels: '
             f'{"yes" if record["numba_kernels"] else "no"}',
             f'max relative difference of energies/forces between implementations on the batch: '
             f'{record["agreement_max_relative"]:.1e}', '',
             f'Batch of {record["batch_molecules"]} S66x8 conformers ({record["batch_atoms"]} '
             f'atoms), median of {record["repeats"]}:', '',
             '| implementation | energy+forces (molecules/s) | ours faster by | training step (ms) '
             '| ours faster by |', '|---|---|---|---|---|']
    batch = record['batch']
    for name in IMPLEMENTATIONS:
        row = batch[name]
        lines.append(f'| {name} | {row["molecules_per_s"]:.0f} | '
                     f'{ratio(batch[ours]["energy_forces_s"], row["energy_forces_s"])} | '
                     f'{row["training_step_s"] * 1e3:.0f} | '
                     f'{ratio(batch[ours]["training_step_s"], row["training_step_s"])} |')
    lines += ['', 'Single systems (water box, open boundaries), energy+forces:', '',
              '| atoms | implementation | time (s) | peak memory (MiB) | MB per atom '
              '| ours faster by | ours smaller by |', '|---|---|---|---|---|---|---|']
    rows = record['single_systems']
    for size in sorted({r['requested_atoms'] for r in rows}):
        group = {r['implementation']: r for r in rows if r['requested_atoms'] == size}
        base = group.get(ours, {})
        for name in IMPLEMENTATIONS:
            row = group.get(name)
            if row is None:
                continue
            if 'skipped' in row or 'error' in row:
                reason = row.get('skipped') or 'failed: ' + row['error'][:60]
                lines.append(f'| {size} | {name} | {reason} | | | | |')
                continue
            lines.append(
                f'| {row["atoms"]:,} | {name} | {row["seconds"]:.3f} | {row["peak_mib"]:,.0f} | '
                f'{row["peak_mib"] * 2**20 / 1e6 / row["atoms"]:.3f} | '
                f'{ratio(base.get("seconds"), row["seconds"]) if name != ours else ""} | '
                f'{ratio(base.get("peak_mib"), row["peak_mib"]) if name != ours else ""} |')
    lines.append('\nRatios are torchmd-net / pyg-tensorpot: above 1x means ours is faster or '
                 'smaller.')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--s66x8', default=None, help='COMP6 v1 s66x8_wb97x6-31gd.h5')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--sizes', type=int, nargs='+', default=[1000, 5000, 10000])
    parser.add_argument('--pure-max-atoms', type=int, default=5001,
                        help='skip torchmd-net\'s pure-PyTorch path above this size (it needs '
                        'about 2.7 MB per atom)')
    parser.add_argument('--omp-wait-policy', choices=['PASSIVE', 'ACTIVE', 'default'],
                        default=OMP_WAIT_POLICY,
                        help="OpenMP wait policy ('default': the runtime's own, unless "
                        'OMP_WAIT_POLICY is set)')
    parser.add_argument('--json', default=os.path.join(HERE, 'results', 'tensornet_speed.json'))
    parser.add_argument('--render', action='store_true',
                        help='print the tables of the existing --json record and exit')
    parser.add_argument('--memory-worker', nargs=2, metavar=('IMPL', 'ATOMS'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker[0], int(args.memory_worker[1]))
        return
    if args.render:
        with open(args.json) as f:
            print(render(json.load(f)))
        return
    warnings_off()
    path = args.s66x8 or next((p for p in DEFAULT_S66X8 if os.path.exists(p)), None)
    if path is None:
        sys.exit('S66x8 file not found: pass --s66x8 PATH to COMP6 v1 s66x8_wb97x6-31gd.h5')
    record = measure(args, path)
    atomic_write_text(json.dumps(record, indent=2) + '\n', args.json)
    print(render(record))
    print(f'\nrecord written to {args.json}')


def warnings_off():
    import warnings
    warnings.filterwarnings('ignore')


if __name__ == '__main__':
    main()
