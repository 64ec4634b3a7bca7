"""HIP-NN and HIP-NN-TS (l <= 2): pyg-tensorpot against hippynn 0.1.3, side by side.

Needs hippynn==0.1.3 and h5py (numba optional: hippynn's numba kernels are timed when it is
installed). Run from the repository root::

    python benchmarks/hipnn_speed.py            # full table (about 30 minutes on 2 cores)
    python benchmarks/hipnn_speed.py --quick    # batches and the 99-atom system only
    python benchmarks/hipnn_speed.py --render benchmarks/results/hipnn_speed.json

It writes its record to ``benchmarks/results/hipnn_speed.json`` (``--json``) and prints the
table of the README from it (``--render`` prints the table of an existing record).

hippynn's pure-PyTorch kernels (``set_custom_kernels("pytorch")``, what it uses without numba)
are its envsum/sensesum/featsum functions compiled with ``torch.compile``.

What is measured, on the CPU, in float32, for the ANI-1x size of hippynn's examples (width 128,
20 sensitivities, soft 0.75-5.5 A, cutoff 6.5 A, 2 blocks x 3 on-site layers, species HCNO),
for HIP-NN (``Hipnn``) and HIP-NN-TS l <= 2 (``HipnnQuad``), with the same weights in both
libraries (hippynn's are converted with ``load_hippynn``; the energies are compared):

* ``E+F 64 S66x8``: energy and forces of a batch of 64 S66x8 conformers (6-34 atoms). Each
  library as it computes forces by default: hippynn's ``GradientNode`` always keeps the graph
  (``create_graph=True``), pyg-tensorpot in eval mode does not.
* ``train step 64``: forward, forces with ``create_graph=True``, loss = MSE(E) + MSE(F),
  backward and an Adam step on the same batch.
* ``E+F N atoms``: one open-boundary water cluster of N = 99, 999 and 5001 atoms at liquid
  density (S66x8's water, randomly rotated on a 3.1 A lattice), energy and forces.

Each model runs in its own worker process that holds both libraries (hippynn's kernels are
switched with ``set_custom_kernels``). Timings are interleaved (one call of each library in
turn, repeated), so that load from other jobs on the machine hits all libraries alike, and the
table shows the fastest repeat after warm-up (the median is printed while running). Neighbour
search is included (vesin cell lists here, hippynn's default dense ``OpenPairIndexer``).
``--omp-wait-policy`` sets the workers' OpenMP wait policy: ``default`` (the OpenMP runtime's
own, what a user's process gets: idle threads spin a while, then sleep) unless
``OMP_WAIT_POLICY`` is set. Run it on an otherwise idle machine; where other jobs hold the
cores, ``PASSIVE`` (idle threads sleep at once) keeps spinning threads from slowing every library
down several times, at the cost of a thread wake-up per parallel operation, which doubles the
time of the small systems (99 atoms) of both libraries.

Peak memory is measured after all timings of the worker (the ``mallopt`` below would change the
allocator for the timings that follow it), each library alone: the increase of the peak
resident set size (``VmHWM`` in ``/proc/self/status``, reset through
``/proc/self/clear_refs``) during one call over the resident size just before it, with glibc's
``M_MMAP_THRESHOLD`` set to 64 KiB (and ``malloc_trim`` before) so that every tensor is mapped
and returned to the system on its own. It counts everything the call allocates: inputs it
copies, activations kept for the gradient, temporaries, allocator slack. A worker gets an
allocation ceiling (``RLIMIT_DATA``, ``--memory-limit-gb`` above its size after set-up); a
library that needs more is reported as out of memory instead of exhausting the machine.
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

S66X8 = '/work/shared/data/comp6/s66x8_wb97x6-31gd.h5'
HARTREE_TO_EV = 27.211386246
ELEMENT = {b'H': 1, b'C': 6, b'N': 7, b'O': 8}
ANI1X_SIZE = dict(n_features=128, n_sensitivities=20, dist_soft_min=0.75, dist_soft_max=5.5,
                  dist_hard_max=6.5, n_interaction_layers=2, n_atom_layers=3,
                  possible_species=[0, 1, 6, 7, 8])
MODELS = {'HIP-NN': 0, 'HIP-NN-TS l<=2': 2}
WATER_SIZES = (99, 999, 5001)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'hipnn_speed.json')


# ----------------------------------------------------------------------------------------------
# data
def s66x8_batch(num: int, seed: int = 0):
    import h5py
    import numpy as np
    rng = np.random.default_rng(seed)
    systems = []
    with h5py.File(S66X8, 'r') as f:
        group = f[list(f.keys())[0]]
        for name in sorted(group.keys()):
            mol = group[name]
            z = np.array([ELEMENT[s] for s in mol['species'][()]])
            for k in range(mol['coordinates'].shape[0]):
                systems.append((z, mol['coordinates'][k].astype(np.float64),
                                float(mol['energies'][k]) * HARTREE_TO_EV,
                                -mol['forces'][k].astype(np.float64) * HARTREE_TO_EV))
    pick = rng.choice(len(systems), size=num, replace=False)
    return [systems[i] for i in pick]


def water_cluster(num_atoms: int, seed: int = 0):
    import h5py
    import numpy as np
    rng = np.random.default_rng(seed)
    with h5py.File(S66X8, 'r') as f:
        mol = f['s66x8']['mol00']  # water dimer; its first three atoms are one water
        water = mol['coordinates'][3][:3].astype(np.float64)
        z_water = np.array([ELEMENT[s] for s in mol['species'][()][:3]])
    water -= water.mean(0)
    count = num_atoms // 3
    side = math.ceil(count**(1 / 3))
    spacing = 3.104  # 29.9 A^3 per molecule: 1.0 g/cm3
    sites = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing='ij'), -1).reshape(-1, 3)
    sites = sites[:count] * spacing
    pos = []
    for site in sites:
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        a, b, c, d = q
        rot = np.array([[a*a + b*b - c*c - d*d, 2*(b*c - a*d), 2*(b*d + a*c)],
                        [2*(b*c + a*d), a*a - b*b + c*c - d*d, 2*(c*d - a*b)],
                        [2*(b*d - a*c), 2*(c*d + a*b), a*a - b*b - c*c + d*d]])
        pos.append(water @ rot.T + site + rng.normal(scale=0.05, size=3))
    return np.tile(z_water, count), np.concatenate(pos)


# ----------------------------------------------------------------------------------------------
# worker: one model, every library and task, timings interleaved across libraries
def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _reset_peak():
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')


def _peak_mb(fn) -> float:
    """Increase of the peak resident set size during one call of fn, in MB."""
    import ctypes
    import gc
    gc.collect()
    libc = ctypes.CDLL('libc.so.6')
    libc.malloc_trim(0)
    _reset_peak()
    base = _status_kib('VmRSS')
    fn()
    return (_status_kib('VmHWM') - base) / 1024


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or 'memory' in str(error).lower()


def worker(spec):
    import ctypes
    import warnings
    warnings.filterwarnings('ignore')
    import numpy as np
    import torch
    torch.set_num_threads(spec['threads'])
    import hippynn
    from hippynn import custom_kernels
    from hippynn.graphs import GraphModule, inputs, networks, physics, targets

    from pyg_tensorpot.io import load_hippynn
    hippynn.settings.WARN_LOW_DISTANCES = False
    torch.set_default_dtype(torch.float32)

    def emit(**record):
        print(json.dumps(record), flush=True)

    torch.manual_seed(0)
    species = inputs.SpeciesNode(db_name='Z')
    positions = inputs.PositionsNode(db_name='R')
    network_class = [networks.Hipnn, networks.HipnnVec, networks.HipnnQuad][spec['order']]
    network = network_class('HIPNN', (species, positions), module_kwargs=ANI1X_SIZE)
    henergy = targets.HEnergyNode('HEnergy', network)
    gradient = physics.GradientNode('forces', (henergy, positions), sign=-1)
    graph = GraphModule([species, positions], [henergy.mol_energy, gradient])
    model = load_hippynn(graph.state_dict(), cutoff=ANI1X_SIZE['dist_hard_max']).eval()
    kernels = {'hippynn (pytorch)': 'pytorch', 'hippynn (numba)': 'numba'}

    systems = s66x8_batch(64)
    energy_ref = torch.tensor([s[2] for s in systems])
    energy_ref = energy_ref - energy_ref.mean()
    z = torch.cat([torch.from_numpy(s[0]) for s in systems])
    pos = torch.cat([torch.from_numpy(s[1]).float() for s in systems])
    batch = torch.cat([torch.full((len(s[0]), ), m) for m, s in enumerate(systems)])
    forces_ref = torch.from_numpy(np.concatenate([s[3] for s in systems])).float()
    n_pad = max(len(s[0]) for s in systems)
    Z = torch.zeros(len(systems), n_pad, dtype=torch.long)
    R = torch.zeros(len(systems), n_pad, 3)
    for m, (zm, pm, *_) in enumerate(systems):
        Z[m, :len(zm)] = torch.from_numpy(zm)
        R[m, :len(zm)] = torch.from_numpy(pm).float()
    mask = Z > 0
    padded_forces_ref = torch.zeros_like(R)
    padded_forces_ref[mask] = forces_ref

    ours_energy = model.energy_and_forces(z, pos, batch)[0]
    for library in spec['libraries'][1:]:
        custom_kernels.set_custom_kernels(kernels[library])
        theirs = graph(Z, R)[0].reshape(-1).detach()
        emit(task='agreement', library=library,
             value=float(((ours_energy - theirs).abs() / theirs.abs().clamp(min=1.0)).max()))

    ours_optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
    graph_optimizer = torch.optim.Adam(graph.parameters(), lr=1e-6)

    def ours_train():
        model.train()
        ours_optimizer.zero_grad()
        e, f = model.energy_and_forces(z, pos, batch, create_graph=True)
        loss = (e - energy_ref).square().mean() + (f - forces_ref).square().mean()
        loss.backward()
        ours_optimizer.step()
        model.eval()

    def graph_train():
        graph_optimizer.zero_grad()
        e, f = graph(Z, R)
        loss = (e.reshape(-1) - energy_ref).square().mean() + \
            (f[mask] - padded_forces_ref[mask]).square().mean()
        loss.backward()
        graph_optimizer.step()

    tasks = [('E+F 64 S66x8', lambda: model.energy_and_forces(z, pos, batch),
              lambda: graph(Z, R), 2, spec['repeats']),
             ('train step 64', ours_train, graph_train, 1, spec['repeats'])]
    for n in spec['sizes']:
        zw, pw = water_cluster(n)
        zt, pt = torch.from_numpy(zw), torch.from_numpy(pw).float()
        tasks.append((f'E+F {n} atoms', lambda zt=zt, pt=pt: model.energy_and_forces(zt, pt),
                      lambda zt=zt, pt=pt: graph(zt[None], pt[None]), 1,
                      spec['repeats'] if n < 2000 else max(2, spec['repeats'] // 2)))

    # Allocations beyond the ceiling fail (torch raises an out-of-memory error) instead of
    # exhausting a machine shared with others.
    ceiling = _status_kib('VmData') * 1024 + int(spec['memory_limit_gb'] * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (ceiling, resource.RLIM_INFINITY))

    # Every timing first, then every memory measurement: the mallopt() call of the memory
    # pass switches off glibc's dynamic mmap threshold for the rest of the process, which would
    # make every later large allocation a fresh, page-faulting mapping in the timings.
    measured = []
    for name, ours_fn, graph_fn, warmup, repeats in tasks:
        functions = {'pyg-tensorpot': ours_fn}
        functions.update({lib: graph_fn for lib in spec['libraries'][1:]})
        times = {lib: [] for lib in functions}
        failed = {}
        for round_ in range(warmup + repeats):
            for library, fn in functions.items():
                if library in failed:
                    continue
                if library in kernels:
                    custom_kernels.set_custom_kernels(kernels[library])
                emit(task=name, library=library, status='started')
                try:
                    start = time.perf_counter()
                    fn()
                    elapsed = time.perf_counter() - start
                except (RuntimeError, MemoryError) as error:
                    failed[library] = error
                    continue
                if round_ >= warmup:
                    times[library].append(elapsed)
        measured.append((name, functions, times, failed))
    # Memory, each library alone, with every allocation of 64 KiB or more mapped and unmapped
    # on its own so that freed memory leaves the resident set.
    libc = ctypes.CDLL('libc.so.6')
    libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
    for name, functions, times, failed in measured:
        for library, fn in functions.items():
            if library in failed:
                error = failed[library]
                emit(task=name, library=library, status='oom' if _is_oom(error) else 'error',
                     message=str(error).splitlines()[0][:160])
                continue
            if library in kernels:
                custom_kernels.set_custom_kernels(kernels[library])
            emit(task=name, library=library, status='started')
            try:
                peak = _peak_mb(fn)
            except (RuntimeError, MemoryError) as error:
                emit(task=name, library=library, status='oom' if _is_oom(error) else 'error',
                     message=str(error).splitlines()[0][:160])
                continue
            emit(task=name, library=library, status='ok', seconds=min(times[library]),
                 median_seconds=float(np.median(times[library])), repeats=len(times[library]),
                 peak_mb=peak)


# ----------------------------------------------------------------------------------------------
# driver
def run_worker(spec):
    import threading

    import psutil
    env = dict(os.environ, NUMBA_NUM_THREADS=str(spec['threads']),
               OMP_NUM_THREADS=str(spec['threads']), HIPPYNN_USE_CUSTOM_KERNELS='False',
               HIPPYNN_PROGRESS='0')
    # PASSIVE: idle OpenMP threads sleep instead of spinning (on a machine shared with other
    # jobs, spinning threads that wait for a descheduled partner slow every library down
    # 2-4x); 'default' leaves the OpenMP runtime's own policy, what a user's process gets.
    if spec['omp_wait_policy'] == 'default':
        env.pop('OMP_WAIT_POLICY', None)
    else:
        env['OMP_WAIT_POLICY'] = spec['omp_wait_policy']
    env['PYTHONPATH'] = os.pathsep.join([os.getcwd(), env.get('PYTHONPATH', '')])
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--worker',
                             json.dumps(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    # Backstop for memory the data-segment ceiling does not see: kill the worker.
    hard_limit = int((spec['memory_limit_gb'] + 3) * 2**30)
    killed = threading.Event()

    def watchdog():
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                if watched.memory_info().rss > hard_limit:
                    killed.set()
                    proc.kill()
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)

    threading.Thread(target=watchdog, daemon=True).start()
    records, current = {}, None
    for line in proc.stdout:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        key = (record['task'], record['library'])
        if record.get('status') == 'started':
            current = key
            continue
        records[key] = record
        if record['task'] == 'agreement':
            continue
        print(f"  {spec['model']:15s} {record['task']:15s} {record['library']:18s} "
              f"{record['status']:5s} " +
              (f"{record['seconds'] * 1e3:9.1f} ms (median {record['median_seconds'] * 1e3:.1f})"
               f" {record['peak_mb']:8.0f} MB" if record['status'] == 'ok' else
               record.get('message', '')), flush=True)
    proc.wait()
    stderr = proc.stderr.read()
    if proc.returncode != 0:
        message = stderr.strip().splitlines()[-1][:160] if stderr.strip() else \
            f'exit {proc.returncode}'
        if current is not None and current not in records:
            records[current] = dict(task=current[0], library=current[1],
                                    status='oom' if killed.is_set() else 'error',
                                    message=message)
        print(f"  worker for {spec['model']} stopped: {message}", flush=True)
    return records


def _fmt_time(record):
    if record is None:
        return '-'
    if record['status'] == 'ok':
        return f"{record['seconds'] * 1e3:.0f} ms" if record['seconds'] < 10 else \
            f"{record['seconds']:.1f} s"
    return 'OOM' if record['status'] == 'oom' else 'error'


def _fmt_mem(record):
    if record is None or record['status'] != 'ok':
        return '-'
    return f"{record['peak_mb']:.0f} MB" if record['peak_mb'] < 10240 else \
        f"{record['peak_mb'] / 1024:.1f} GB"


def table(record) -> str:
    """The markdown table of a JSON record written by this script."""
    libraries = record['settings']['libraries']
    others = libraries[1:]
    rows = {(r['model'], r['task'], r['library']): r for r in record['rows']}
    header = ['model', 'task'] + list(libraries) + \
        [f'speed-up vs {lib[len("hippynn ("):-1]}' for lib in others] + \
        [f'peak mem {lib}' for lib in libraries] + \
        [f'mem ratio vs {lib[len("hippynn ("):-1]}' for lib in others]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for model in record['settings']['models']:
        for task in record['settings']['tasks']:
            recs = [rows.get((model, task, lib)) for lib in libraries]
            ours = recs[0]
            line = [model, task] + [_fmt_time(r) for r in recs]
            ratios = {'seconds': [], 'peak_mb': []}
            for other in recs[1:]:
                for key in ratios:
                    if ours and ours['status'] == 'ok' and other and other['status'] == 'ok':
                        ratios[key].append(f'{other[key] / max(ours[key], 1e-9):.1f}x')
                    elif ours and ours['status'] == 'ok' and other and other['status'] == 'oom':
                        ratios[key].append(
                            f"hippynn OOM at {record['settings']['memory_limit_gb']:g} GB")
                    else:
                        ratios[key].append('-')
            line += ratios['seconds'] + [_fmt_mem(r) for r in recs] + ratios['peak_mb']
            lines.append('| ' + ' | '.join(line) + ' |')
    return '\n'.join(lines)


def describe(record) -> str:
    """The run's conditions, one line, for the README."""
    m, st = record['machine'], record['settings']
    load = ', '.join(f'{v:.1f}' for v in m['load_average_before'])
    after = ', '.join(f'{v:.1f}' for v in m['load_average_after'])
    return (f"{record['date']}, {m['cpu']} ({m['cpus']} CPUs), {st['threads']} threads, torch "
            f"{m['torch']}, hippynn {m['hippynn']}, numba {m['numba']}; load average {load} "
            f"before, {after} after; OpenMP wait policy {st.get('omp_wait_policy', 'PASSIVE')}; "
            f"fastest of {st['repeats']} interleaved repeats")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    parser.add_argument('--quick', action='store_true', help='only the 99-atom single system')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--memory-limit-gb', type=float, default=8.0,
                        help='allocation ceiling per worker process')
    parser.add_argument('--sizes', type=int, nargs='*', default=None)
    parser.add_argument('--models', nargs='*', default=None, choices=list(MODELS))
    parser.add_argument('--no-numba', action='store_true', help="skip hippynn's numba kernels")
    parser.add_argument('--omp-wait-policy', choices=['PASSIVE', 'ACTIVE', 'default'],
                        default=os.environ.get('OMP_WAIT_POLICY', 'default'),
                        help="OpenMP wait policy of the workers ('default': the runtime's own, "
                        'spin a while, then sleep, unless OMP_WAIT_POLICY is set)')
    parser.add_argument('--json', default=RESULTS, help='where the JSON record goes')
    parser.add_argument('--render', metavar='JSON',
                        help='only print the table of an existing record')
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.render:
        with open(args.render) as f:
            record = json.load(f)
        print(describe(record))
        print()
        print(table(record))
        return

    import platform

    import torch
    from common import cpu_model

    from pyg_tensorpot.utils.files import atomic_write_text
    libraries = ['pyg-tensorpot', 'hippynn (pytorch)']
    try:
        import numba
        numba_version = numba.__version__
        if not args.no_numba:
            libraries.append('hippynn (numba)')
    except ImportError:
        numba_version = None
        print("numba is not installed: hippynn's numba kernels are not timed")
    import hippynn
    models = args.models or list(MODELS)
    sizes = args.sizes if args.sizes is not None else \
        (WATER_SIZES[:1] if args.quick else WATER_SIZES)
    tasks = ['E+F 64 S66x8', 'train step 64'] + [f'E+F {n} atoms' for n in sizes]
    record = {
        'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        'machine': {'cpu': cpu_model(), 'cpus': os.cpu_count(), 'python': platform.python_version(),
                    'torch': torch.__version__, 'hippynn': getattr(hippynn, '__version__', '?'),
                    'numba': numba_version, 'load_average_before': list(os.getloadavg())},
        'settings': {'libraries': libraries, 'models': models, 'tasks': tasks, 'sizes': sizes,
                     'repeats': args.repeats, 'threads': args.threads, 'dtype': 'float32',
                     'memory_limit_gb': args.memory_limit_gb,
                     'omp_wait_policy': args.omp_wait_policy},
        'agreement': {}, 'rows': [],
    }
    print(f'torch {torch.__version__}, {args.threads} threads, float32, allocation ceiling '
          f'{args.memory_limit_gb:g} GB per worker, OMP_WAIT_POLICY='
          f"{record['settings']['omp_wait_policy']}")

    for model in models:
        spec = dict(model=model, order=MODELS[model], libraries=libraries, sizes=sizes,
                    repeats=args.repeats, threads=args.threads,
                    memory_limit_gb=args.memory_limit_gb, omp_wait_policy=args.omp_wait_policy)
        results = run_worker(spec)
        record['agreement'][model] = {}
        for library in libraries[1:]:
            agreement = results.get(('agreement', library))
            if agreement:
                record['agreement'][model][library] = agreement['value']
                print(f'  {model}: energies of pyg-tensorpot and {library} agree to '
                      f"{agreement['value']:.1e} (relative, float32)")
        for (task, library), row in results.items():
            if task != 'agreement':
                record['rows'].append(dict(row, model=model))
    record['machine']['load_average_after'] = list(os.getloadavg())
    atomic_write_text(json.dumps(record, indent=1) + '\n', args.json)
    print()
    print(describe(record))
    print()
    print(table(record))
    print(f'\nrecord written to {args.json}')


if __name__ == '__main__':
    main()
