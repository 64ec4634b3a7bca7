"""Concurrent builds of one dataset root (issue 17, part 5): two processes started at once
leave one valid processed file, identical to a single-process build."""
import multiprocessing
import os
import os.path as osp
import shutil
import time

import numpy as np
import pytest
import torch

from pyg_tensorpot.datasets import RMD17
from pyg_tensorpot.datasets.base import LOCK_FILE_NAME, build_lock

RMD17_SAMPLE = osp.join(osp.dirname(__file__), 'data', 'rmd17',
                        'rmd17fmt_ethanol_pbe_def2svp_pyscf_20.npz')


def place_rmd17(root):
    folder = osp.join(root, 'raw', 'rmd17', 'npz_data')
    os.makedirs(folder)
    shutil.copy(RMD17_SAMPLE, osp.join(folder, 'rmd17_ethanol.npz'))


def build_in_child(root, start, results):
    """Child process: waits for the common start, builds the dataset (processing made slow
    enough, 1.5 s, that the two builds overlap without the lock) and reports what it did."""
    calls = []
    original = RMD17.process_storage

    def slow_process_storage(self):
        calls.append(time.monotonic())
        time.sleep(1.5)
        return original(self)
    RMD17.process_storage = slow_process_storage
    start.wait()
    try:
        ds = RMD17(root, molecule='ethanol', log=False)
        results.put((os.getpid(), len(calls), len(ds), ds.storage().energy.sum().item(), None))
    except BaseException as error:  # reported to the parent, which fails the test
        results.put((os.getpid(), len(calls), 0, 0.0, repr(error)))


def test_two_processes_build_the_same_root(tmp_path):
    root = str(tmp_path / 'shared')
    place_rmd17(root)
    context = multiprocessing.get_context('spawn')
    start, results = context.Event(), context.Queue()
    children = [context.Process(target=build_in_child, args=(root, start, results))
                for _ in range(2)]
    for child in children:
        child.start()
    time.sleep(0.5)  # both children are importing; the event releases them together
    start.set()
    reports = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert [r[4] for r in reports] == [None, None], reports
    # the lock made one child process the raw file and the other load its result
    assert sorted(r[1] for r in reports) == [0, 1]
    assert [r[2] for r in reports] == [20, 20]
    processed = sorted(os.listdir(osp.join(root, 'processed')))
    assert len(processed) == 2 and processed[1] == processed[0] + '.json'
    assert sorted(os.listdir(root)) == sorted([LOCK_FILE_NAME, 'processed', 'raw'])

    single_root = str(tmp_path / 'single')
    place_rmd17(single_root)
    single = RMD17(single_root, molecule='ethanol', log=False)
    shared = RMD17(root, molecule='ethanol', log=False)  # loads, the manifest checks out
    for key in ('z', 'pos', 'energy', 'forces', 'old_index', 'idx'):
        assert torch.equal(shared.storage()[key], single.storage()[key]), key
    with open(shared.processed_paths[0], 'rb') as a, open(single.processed_paths[0], 'rb') as b:
        assert a.read() == b.read()  # byte-identical builds: the manifests agree too
    assert all(r[3] == pytest.approx(single.storage().energy.sum().item(), abs=0) for r in reports)


def die_holding_lock(root, held):
    lock = build_lock(root, 'test')
    lock.__enter__()
    held.set()
    time.sleep(0.2)
    os._exit(3)  # killed without releasing: the operating system drops the lock


def test_lock_of_a_killed_process_is_released(tmp_path):
    root = str(tmp_path)
    context = multiprocessing.get_context('spawn')
    held = context.Event()
    child = context.Process(target=die_holding_lock, args=(root, held))
    child.start()
    assert held.wait(60)
    child.join(60)
    assert child.exitcode == 3
    from filelock import FileLock
    lock = FileLock(osp.join(root, LOCK_FILE_NAME))
    lock.acquire(timeout=5)  # free at once, although its holder never released it
    lock.release()
    place_rmd17(root)
    ds = RMD17(root, molecule='ethanol', log=False)
    assert len(ds) == 20 and np.isfinite(ds.storage().energy.numpy()).all()
