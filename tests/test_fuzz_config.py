"""Fuzzing of the training configuration (YAML file and ``key=value`` overrides) and of the
``pyg-tensorpot train`` command line: every input gives a valid configuration or a
:class:`ConfigError` that names the key (and lists the valid keys for an unknown one); the
command line answers exit status 2 with the message, never a traceback."""
import dataclasses
import inspect
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip('yaml')

import yaml  # noqa: E402

from pyg_tensorpot import TensorNet  # noqa: E402
from pyg_tensorpot.training.config import (  # noqa: E402
    ConfigError,
    DataConfig,
    LossConfig,
    OptimConfig,
    TrainerConfig,
    TrainingConfig,
    load_config,
    parse_overrides,
)

SECTIONS = {'data': DataConfig, 'loss': LossConfig, 'optim': OptimConfig,
            'trainer': TrainerConfig}
TOP_LEVEL = ('seed', 'precision', 'out_dir', 'model', 'data', 'loss', 'optim', 'trainer')
FIELDS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}
# the model's constructor arguments are checked at load time too
TENSORNET_ARGS = [name for name in inspect.signature(TensorNet.__init__).parameters
                  if name != 'self']

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
identifiers = st.from_regex(r'[a-z][a-z_]{2,10}', fullmatch=True)


def check_result(make):
    """``make()`` returns a valid configuration or raises ConfigError; returns either."""
    try:
        config = make()
    except ConfigError as error:
        assert str(error), 'an empty error message'
        return error
    assert isinstance(config, TrainingConfig)
    config.validate()  # what was accepted stays valid
    return config


def round_trips(config: TrainingConfig) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'config.yaml')
        config.save(path)
        assert load_config(path).to_dict() == config.to_dict()


@SETTINGS
@given(section=st.sampled_from(sorted(FIELDS)), key=identifiers, value=values)
def test_unknown_section_key_lists_the_valid_ones(section, key, value):
    if key in FIELDS[section]:
        return
    with pytest.raises(ConfigError) as info:
        TrainingConfig.from_dict({section: {key: value}})
    message = str(info.value)
    assert f'{section}.{key}' in message
    for allowed in FIELDS[section]:
        assert repr(allowed) in message


@SETTINGS
@given(key=identifiers | st.integers(), value=values)
def test_unknown_top_level_key_lists_the_valid_ones(key, value):
    if key in TOP_LEVEL:
        return
    with pytest.raises(ConfigError) as info:
        TrainingConfig.from_dict({key: value, 'seed': 1})
    for allowed in TOP_LEVEL:
        assert repr(allowed) in str(info.value)


@SETTINGS
@given(section=st.sampled_from(sorted(FIELDS)), data=st.data(), value=values)
def test_any_value_of_a_known_key_is_valid_or_named(section, data, value):
    key = data.draw(st.sampled_from(FIELDS[section]))
    result = check_result(lambda: TrainingConfig.from_dict({section: {key: value}}))
    if isinstance(result, ConfigError):
        assert f'{section}.{key}' in str(result)
    else:
        round_trips(result)


@SETTINGS
@given(key=st.sampled_from(['seed', 'precision', 'out_dir', 'model']), value=values)
def test_any_top_level_value_is_valid_or_named(key, value):
    result = check_result(lambda: TrainingConfig.from_dict({key: value}))
    if isinstance(result, ConfigError):
        assert key in str(result)
    else:
        round_trips(result)


@SETTINGS
@given(key=st.sampled_from(TENSORNET_ARGS) | identifiers, value=scalars)
def test_model_arguments_are_checked_at_load_time(key, value):
    result = check_result(lambda: TrainingConfig.from_dict({'model': {key: value}}))
    if key not in TENSORNET_ARGS + ['name', 'init', 'freeze'] and isinstance(result, ConfigError):
        message = str(result)
        assert f'model.{key}' in message and "'hidden_channels'" in message
    assert key in TENSORNET_ARGS + ['name', 'init', 'freeze'] or isinstance(result, ConfigError)


override_keys = st.lists(identifiers, min_size=1, max_size=3).map('.'.join)
override_texts = st.text(max_size=16) | values.map(
    lambda v: yaml.safe_dump(v, default_flow_style=True).strip())


@SETTINGS
@given(items=st.lists(st.tuples(override_keys | st.sampled_from(
    [f'{s}.{k}' for s in FIELDS for k in FIELDS[s]] + list(TOP_LEVEL)), override_texts),
    min_size=1, max_size=3))
def test_overrides_are_valid_or_named(items):
    overrides = [f'{key}={text}' for key, text in items]
    result = check_result(lambda: load_config(None, overrides))
    if isinstance(result, ConfigError):
        message = str(result)
        # the message names the override, its top-level key or its section key
        assert any(key.split('.')[0] in message for key, _ in items), message


@pytest.mark.parametrize('override, words', [
    ('optim.lr=[1,', ["optim.lr=[1,", 'quote it']),
    ('model.name=*alias', ['model.name', 'quote it']),
    ('data=5', ['data: is a section', "'batch_size'"]),
    ('optim=fast', ['optim: is a section', "'lr'"]),
    ('seed.value=3', ['seed', 'expected an integer']),
    ('optim.lr.peak=1e-3', ['optim.lr', 'expected a number']),
    ('foo.bar=1', ["'foo'", "'trainer'"]),
    ('trainer.max_epochs=.nan', ['trainer.max_epochs']),
    ('optim.lr=.inf', ['optim.lr', 'finite']),
    ('precision=32.0', ['precision', '32', '64']),
    ('seed=99999999999', ['seed', '<=']),
    ('data.reference_energies={H: -13.6}', ['data.reference_energies', "'H'"]),
    ('data.reference_energies={1: .nan}', ['data.reference_energies.1', 'finite']),
    ('data.root=2024-01-01', ['data.root', 'date']),
    ('data.energy_key=7', ['data.energy_key', 'string']),
    ('data.args={1: 2}', ['data.args', 'keyword argument']),
    ('model.hidden_size=8', ['model.hidden_size', "'hidden_channels'"]),
    ('model.name=SchNet', ['model.name', 'TensorNet']),
    ('optim.lr', ['key=value']),
    ('=3', ['empty key']),
])
def test_bad_overrides_named(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize('content', [
    b'\xff\xfe not utf-8',
    b'optim: {lr: [1, 2\n',
    b'- a list\n- not a mapping\n',
    b'a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n'
    b'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n'
    b'e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n'
    b'g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\ntrainer: {max_epochs: *g}\n',
    b'optim: {lr: 1e-3}\ntrainer: ' + b'[' * 5000 + b']' * 5000 + b'\n',
    b'seed: 2024-01-01\n',
    b'data: {root: !!binary aGVsbG8=}\n',
])
def test_bad_yaml_files_named(tmp_path, content):
    path = tmp_path / 'bad.yaml'
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value)


yaml_documents = st.dictionaries(
    st.sampled_from(TOP_LEVEL) | identifiers,
    values | st.dictionaries(st.sampled_from(sorted({k for f in FIELDS.values() for k in f}))
                             | identifiers, values, max_size=3), max_size=4)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(document=yaml_documents, overrides=st.lists(st.tuples(override_keys, override_texts),
                                                  max_size=2))
def test_cli_train_never_crashes(document, overrides, monkeypatch_module, capsys):
    """``pyg-tensorpot train FILE key=value ...``: status 2 and the message for a bad
    configuration; a valid one reaches train() (replaced here by a recorder)."""
    from pyg_tensorpot.cli import main
    reached = monkeypatch_module
    reached.clear()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'config.yaml')
        with open(path, 'w') as f:
            yaml.safe_dump(document, f)
        argv = ['train', path] + [f'{key}={text}' for key, text in overrides]
        status = main(argv)
    err = capsys.readouterr().err
    if reached:
        assert status == 0 and isinstance(reached[0], TrainingConfig)
    else:
        assert status == 2 and 'pyg-tensorpot train: error:' in err


@pytest.fixture(scope='module')
def monkeypatch_module():
    """train() replaced by a recorder of the configurations it is given."""
    import pyg_tensorpot.training.run as run
    reached = []

    class Result:
        interrupted = False

    def record(config, **kwargs):
        reached.append(config)
        return Result()

    patch = pytest.MonkeyPatch()
    patch.setattr(run, 'train', record)
    yield reached
    patch.undo()


def test_parse_overrides_conflicts():
    with pytest.raises(ConfigError, match='conflicts'):
        parse_overrides(['optim=1', 'optim.lr=2'])
    assert parse_overrides(['optim.lr=2', 'optim.warmup_steps=3']) == {
        'optim': {'lr': 2, 'warmup_steps': 3}}
