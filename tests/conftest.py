import functools
import os
from collections import Counter
from typing import Callable, Dict, Optional

import pytest
import torch

# Tests never touch the network; the Hub client must read only its local cache.
os.environ.setdefault('HF_HUB_OFFLINE', '1')

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')

try:
    import hypothesis
    from hypothesis.errors import UnsatisfiedAssumption
except ImportError:  # the test extra carries it; without it only the hypothesis tests fail
    hypothesis = None

#: Bounds shared by both profiles: every property test runs this many generated cases.
HYPOTHESIS_MAX_EXAMPLES = 25


def hypothesis_profile_name(environ: Optional[Dict[str, str]] = None) -> str:
    """The hypothesis profile a run uses: :obj:`HYPOTHESIS_PROFILE` if set, else :obj:`"ci"`
    when :obj:`CI` is set (as CI services do), else :obj:`"dev"`.

    Args:
        environ (Dict[str, str], optional): The environment to read. (default: :obj:`None`,
            i.e. :obj:`os.environ`)
    """
    environ = os.environ if environ is None else environ
    name = environ.get('HYPOTHESIS_PROFILE', '').strip()
    if name:
        return name
    ci = environ.get('CI', '').strip().lower()
    return 'ci' if ci not in ('', '0', 'false', 'no') else 'dev'


if hypothesis is not None:
    # "dev" replays earlier failures from hypothesis's database (.hypothesis/, which ignores
    # itself in git); "ci" draws the same cases on every run and every machine, keeps no
    # state, and prints the blob that reproduces a failure with @reproduce_failure. No
    # deadline: the first call of a model test pays for TorchScript and kernel warm-up.
    hypothesis.settings.register_profile(
        'dev', max_examples=HYPOTHESIS_MAX_EXAMPLES, deadline=None)
    hypothesis.settings.register_profile(
        'ci', max_examples=HYPOTHESIS_MAX_EXAMPLES, deadline=None, derandomize=True,
        database=None, print_blob=True)

HYPOTHESIS_PROFILE = hypothesis_profile_name()


def pytest_configure(config: pytest.Config) -> None:
    if hypothesis is None:
        return
    try:
        hypothesis.settings.load_profile(HYPOTHESIS_PROFILE)
    except hypothesis.errors.InvalidArgument:
        raise pytest.UsageError(
            f'HYPOTHESIS_PROFILE={HYPOTHESIS_PROFILE!r} is not a hypothesis profile of this '
            f"test suite; use 'dev' or 'ci' (tests/conftest.py)") from None


#: Per hypothesis test (node id): cases run ('run') and rejected by assume() ('rejected').
HYPOTHESIS_CASES: Dict[str, Counter] = {}


def pytest_report_header(config: pytest.Config) -> str:
    if hypothesis is None:
        return 'hypothesis: not installed'
    current = hypothesis.settings()
    return (f'hypothesis profile: {HYPOTHESIS_PROFILE} (max_examples={current.max_examples}, '
            f'derandomize={current.derandomize})')


def _counting(inner: Callable, counts: Counter) -> Callable:
    @functools.wraps(inner)
    def counted(*args, **kwargs):
        counts['run'] += 1
        try:
            return inner(*args, **kwargs)
        except UnsatisfiedAssumption:
            counts['rejected'] += 1
            raise

    return counted


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item):
    # Hypothesis calls `test.hypothesis.inner_test` once per generated case (documented as
    # replaceable), so wrapping it counts the cases of every phase (explicit examples,
    # generation, shrinking) without touching hypothesis's own statistics machinery.
    handle = getattr(getattr(item, 'obj', None), 'hypothesis', None)
    inner = getattr(handle, 'inner_test', None)
    if hypothesis is None or inner is None:
        yield
        return
    counts = HYPOTHESIS_CASES.setdefault(item.nodeid, Counter())
    handle.inner_test = _counting(inner, counts)
    try:
        yield
    finally:
        handle.inner_test = inner


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not HYPOTHESIS_CASES:
        return
    terminalreporter.section(f'hypothesis cases per test (profile {HYPOTHESIS_PROFILE})')
    for nodeid, counts in sorted(HYPOTHESIS_CASES.items()):
        rejected = f" ({counts['rejected']} rejected by assume)" if counts['rejected'] else ''
        terminalreporter.write_line(f"{counts['run']:6d}  {nodeid}{rejected}")
    total = sum(c['run'] for c in HYPOTHESIS_CASES.values())
    terminalreporter.write_line(f'{total:6d}  in {len(HYPOTHESIS_CASES)} hypothesis tests')


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(12345)
    yield


@pytest.fixture
def fixtures_dir():
    return FIXTURES


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread for a module of small systems (used with ``pytestmark =
    pytest.mark.usefixtures('one_thread')``): on a shared 2-core machine more threads only add
    waiting (measured 10x slower under load), and no result depends on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
