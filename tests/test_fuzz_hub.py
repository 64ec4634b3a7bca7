"""Fuzzing of from_pretrained on a local folder and on a seeded offline Hub cache.

Every damaged save (missing, extra, ill-typed or contradictory ``config.json`` keys, invalid
JSON, truncated or altered safetensors, tensors of the wrong shape or dtype) must give either
the saved model, exactly, or a :class:`PretrainedModelError` whose message names the file;
never another exception, never a model that differs from what the files say, and the files
are left as they were.
"""
import os

os.environ['HF_HUB_OFFLINE'] = '1'  # before huggingface_hub is imported, as a user would

import hashlib  # noqa: E402
import json  # noqa: E402
import os.path as osp  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import huggingface_hub.constants  # noqa: E402
from pyg_tensorpot import TensorNet  # noqa: E402
from pyg_tensorpot.hub import (  # noqa: E402
    CONFIG_KEYS,
    CONFIG_NAME,
    MODEL_CLASSES,
    WEIGHTS_NAME,
    PretrainedModelError,
    from_pretrained,
    save_pretrained,
)
from test_hub import seed_hub_cache as seed_commit  # noqa: E402 (tests/ is on sys.path)

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
Z = torch.tensor([8, 1, 1, 6, 1])
POS = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0],
                    [2.5, 0.3, 0.2], [3.1, 1.0, 0.4]], dtype=torch.float64)
REPO = 'fuzz/tiny-tensornet'


@pytest.fixture(scope='module', autouse=True)
def no_network():
    """Any connection except to this machine's loopback raises; the Hub is offline."""
    real_connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ('127.0.0.1', '::1', 'localhost'):
            raise OSError(f'network access blocked in tests (tried {address!r})')
        return real_connect(sock, address)

    patch = pytest.MonkeyPatch()
    patch.setattr(socket.socket, 'connect', guarded)
    patch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    yield
    patch.undo()


def tiny_model(dtype=torch.float32) -> TensorNet:
    torch.manual_seed(0)
    model = TensorNet(hidden_channels=8, num_layers=1, num_rbf=4, cutoff=4.0, max_z=10)
    model.set_atomref({1: -13.6, 6: -1029.8, 8: -2041.9})
    model.set_standardization(0.125, 0.75)
    return model.to(dtype)


def saved_files(dtype=torch.float32) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(tiny_model(dtype), folder, supported_elements=[1, 6, 8],
                        training_data={'name': 'none (fuzz test)'})
        return {name: open(osp.join(folder, name), 'rb').read() for name in os.listdir(folder)}


@pytest.fixture(scope='module')
def good():
    files = saved_files()
    reference = from_folder_files(files, 'folder')
    assert isinstance(reference, TensorNet)
    return files, reference.state_dict(), energy(reference)


def energy(model):
    pos = POS.to(model.std.dtype)
    return model.energy_and_forces(Z, pos)


def seed_hub_cache(cache: str, files: dict) -> str:
    """``files`` as one commit of REPO in the Hub cache layout (test_hub's seeding, with the
    commit named after the contents); returns the snapshot folder."""
    commit = hashlib.sha1(b''.join(files[k] for k in sorted(files))).hexdigest()
    seed_commit(cache, REPO, files, commit=commit)
    return osp.join(cache, 'models--' + REPO.replace('/', '--'), 'snapshots', commit)


def tree_bytes(root: str) -> dict:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = osp.join(folder, name)
            out[osp.relpath(path, root)] = (osp.islink(path), open(path, 'rb').read())
    return out


def from_folder_files(files: dict, where: str):
    """Writes ``files`` (folder or Hub cache), loads them; returns the model or the error,
    after checking that the files are unchanged and that an error names one of them."""
    with tempfile.TemporaryDirectory() as root:
        if where == 'folder':
            folder = osp.join(root, 'model')
            os.makedirs(folder)
            for name, content in files.items():
                with open(osp.join(folder, name), 'wb') as f:
                    f.write(content)
            before = tree_bytes(root)
            call = lambda: from_pretrained(folder)  # noqa: E731
        else:
            folder = seed_hub_cache(osp.join(root, 'hub'), files)
            before = tree_bytes(root)
            call = lambda: from_pretrained(REPO, cache_dir=osp.join(root, 'hub'))  # noqa
        try:
            result = call()
        except PretrainedModelError as error:
            message = str(error)
            assert (osp.join(folder, CONFIG_NAME) in message
                    or osp.join(folder, WEIGHTS_NAME) in message
                    or (where == 'hub' and REPO in message)), message
            result = error
        assert tree_bytes(root) == before, 'loading changed the files'
    return result


def assert_is_what_the_files_say(model, files: dict) -> None:
    """A loaded model is exactly the files: class and arguments of config.json, every tensor
    of model.safetensors bit for bit (no silent cast), config recorded."""
    from safetensors.torch import load
    config = json.loads(files[CONFIG_NAME])
    assert type(model) is MODEL_CLASSES[config['model_class']]
    for key, value in config['model_kwargs'].items():
        stored = getattr(model, key)
        assert (list(stored) if isinstance(stored, tuple) else stored) == value, key
    state = load(files[WEIGHTS_NAME])
    own = model.state_dict()
    assert own.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(own[key].to(tensor.dtype), tensor), key
        assert own[key].dtype == tensor.dtype or key in ('atomref', 'mean'), key
    assert model.pretrained_config == config


def assert_same_model(model, good, predict: bool = False) -> None:
    """Same class, arguments and tensors (and so the same function) as the saved model;
    with :obj:`predict` also the same energies and forces, bit for bit (a first call per model
    instance costs about a second, so only where it matters)."""
    files, state, (e_ref, f_ref) = good
    assert type(model) is TensorNet
    for key, value in json.loads(files[CONFIG_NAME])['model_kwargs'].items():
        assert getattr(model, key) == value, key
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) and model.state_dict()[k].dtype == v.dtype
               for k, v in state.items())
    if predict:
        e, f = energy(model)
        assert torch.equal(e, e_ref) and torch.equal(f, f_ref)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3), max_leaves=5)
NESTED = ('model_kwargs', 'weights', 'standardization', 'reference_energies', 'units')


@st.composite
def config_edits(draw, config: dict):
    """One to three edits of a config.json: delete, set or add a top-level or nested key."""
    config = json.loads(json.dumps(config))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(['delete', 'set', 'add', 'nested']))
        if op == 'delete' and config:
            del config[draw(st.sampled_from(sorted(config)))]
        elif op == 'set' and config:
            config[draw(st.sampled_from(sorted(config)))] = draw(json_values)
        elif op == 'add':
            config[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
        elif op == 'nested':
            section = draw(st.sampled_from(NESTED))
            if not isinstance(config.get(section), dict):
                continue
            keys = sorted(config[section])
            key = draw(st.sampled_from(keys) | st.text(max_size=8)) if keys else \
                draw(st.text(max_size=8))
            if draw(st.booleans()) and key in config[section]:
                del config[section][key]
            else:
                config[section][key] = draw(json_values | st.integers(-3, 64))
    return config


def check(result, files, good, must_load=False):
    if isinstance(result, PretrainedModelError):
        assert not must_load, result
    else:
        assert_is_what_the_files_say(result, files)
        if must_load:
            assert_same_model(result, good)


@SETTINGS
@given(data=st.data(), where=st.sampled_from(['folder', 'hub']))
def test_edited_config_json(good, data, where):
    files = dict(good[0])
    config = json.loads(files[CONFIG_NAME])
    edited = data.draw(config_edits(config))
    files[CONFIG_NAME] = json.dumps(edited).encode()
    result = from_folder_files(files, where)
    check(result, files, good)
    unknown = [key for key in edited if key not in CONFIG_KEYS]
    version = edited.get('format_version', 1)
    if unknown and 'model_class' in edited and 'model_kwargs' in edited \
            and type(version) is int and version == 1:
        assert isinstance(result, PretrainedModelError)
        assert 'unknown key' in str(result) and "model_kwargs" in str(result)


@SETTINGS
@given(data=st.data())
def test_documentation_edits_keep_the_model(good, data):
    files = dict(good[0])
    config = json.loads(files[CONFIG_NAME])
    for key in data.draw(st.lists(st.sampled_from(['name', 'description', 'training_data',
                                                   'training', 'metrics', 'library']),
                                  unique=True)):
        if data.draw(st.booleans()):
            del config[key]
        elif key in ('name', 'description'):
            config[key] = data.draw(st.text(max_size=20) | st.none())
        else:
            config[key] = data.draw(st.dictionaries(st.text(max_size=6), json_values,
                                                    max_size=3))
    files[CONFIG_NAME] = json.dumps(config, indent=data.draw(st.sampled_from([None, 1, 4]))
                                    ).encode()
    check(from_folder_files(files, 'folder'), files, good, must_load=True)


@SETTINGS
@given(data=st.data(), where=st.sampled_from(['folder', 'hub']))
def test_invalid_json(good, data, where):
    files = dict(good[0])
    raw = files[CONFIG_NAME].rstrip()
    choice = data.draw(st.sampled_from(['truncate', 'garbage', 'replace']))
    if choice == 'truncate':
        files[CONFIG_NAME] = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif choice == 'garbage':
        files[CONFIG_NAME] = data.draw(st.binary(max_size=40))
    else:
        at = data.draw(st.integers(0, len(raw) - 1))
        files[CONFIG_NAME] = raw[:at] + data.draw(st.binary(min_size=1, max_size=3)) + \
            raw[at + 1:]
    check(from_folder_files(files, where), files, good)


@SETTINGS
@given(data=st.data(), keep_hash=st.booleans())
def test_damaged_safetensors(good, data, keep_hash):
    files = dict(good[0])
    raw = files[WEIGHTS_NAME]
    if data.draw(st.booleans()):
        files[WEIGHTS_NAME] = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        at = data.draw(st.integers(0, len(raw) - 1))
        files[WEIGHTS_NAME] = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + \
            raw[at + 1:]
    if not keep_hash:
        config = json.loads(files[CONFIG_NAME])
        del config['weights']['sha256']
        files[CONFIG_NAME] = json.dumps(config).encode()
    result = from_folder_files(files, 'folder')
    check(result, files, good)
    if keep_hash:  # the recorded SHA-256 catches any change
        assert isinstance(result, PretrainedModelError) and WEIGHTS_NAME in str(result)


def rewrite_weights(files: dict, state: dict) -> dict:
    """New weights with a matching SHA-256 in config.json (a consistent but wrong save)."""
    from safetensors.torch import save
    files = dict(files)
    files[WEIGHTS_NAME] = save(state)
    config = json.loads(files[CONFIG_NAME])
    config['weights']['sha256'] = hashlib.sha256(files[WEIGHTS_NAME]).hexdigest()
    files[CONFIG_NAME] = json.dumps(config).encode()
    return files


@SETTINGS
@given(data=st.data())
def test_wrong_tensor_shapes_and_dtypes(good, data):
    from safetensors.torch import load
    state = load(good[0][WEIGHTS_NAME])
    key = data.draw(st.sampled_from(sorted(state)))
    op = data.draw(st.sampled_from(['grow', 'shrink', 'dtype', 'drop', 'extra']))
    tensor = state[key]
    if op == 'grow':
        state[key] = torch.cat([tensor.reshape(-1), tensor.reshape(-1)[:1]])
    elif op == 'shrink' and tensor.numel() > 1:
        state[key] = tensor.reshape(-1)[:-1].clone()
    elif op == 'dtype':
        state[key] = tensor.to(data.draw(st.sampled_from(
            [torch.float64, torch.float16, torch.int64] if tensor.is_floating_point()
            else [torch.float32, torch.int32])))
    elif op == 'drop':
        del state[key]
    else:
        state[data.draw(st.text(min_size=1, max_size=10))] = torch.zeros(2)
    files = rewrite_weights(good[0], state)
    result = from_folder_files(files, 'folder')
    changed = load(files[WEIGHTS_NAME]).keys() != load(good[0][WEIGHTS_NAME]).keys() or any(
        load(files[WEIGHTS_NAME])[k].dtype != load(good[0][WEIGHTS_NAME])[k].dtype
        or load(files[WEIGHTS_NAME])[k].shape != load(good[0][WEIGHTS_NAME])[k].shape
        for k in load(good[0][WEIGHTS_NAME]))
    # a float32 file's reference energies may be float64 (kept in float64 by the model)
    widened = op == 'dtype' and key in ('atomref', 'mean') and state[key].dtype == torch.float64
    if changed and not widened:
        assert isinstance(result, PretrainedModelError), op
        assert WEIGHTS_NAME in str(result)
    else:
        check(result, files, good)


def test_documented_messages(good, tmp_path):
    files = dict(good[0])
    config = json.loads(files[CONFIG_NAME])

    def error_of(edited: dict) -> str:
        result = from_folder_files({**files, CONFIG_NAME: json.dumps(edited).encode()},
                                   'folder')
        assert isinstance(result, PretrainedModelError)
        return str(result)

    message = error_of({**config, 'model_kwrags': {}})
    assert "unknown key 'model_kwrags'" in message and 'model_kwargs' in message
    assert 'dtype mismatch' in error_of({**config, 'dtype': 'float64'})
    assert 'contradicts model_kwargs.cutoff' in error_of({**config, 'cutoff': 5.0})
    assert 'reference energy of Z=8' in error_of(
        {**config, 'reference_energies': {**config['reference_energies'], '8': -2000.0}})
    assert 'standardization.std' in error_of(
        {**config, 'standardization': {'mean': 0.125, 'std': 1.0}})
    assert 'number of parameters' in error_of({**config, 'num_parameters': 7})
    assert "architecture 'HIP-NN'" in error_of({**config, 'architecture': 'HIP-NN'})
    assert 'format version 2' in error_of({**config, 'format_version': 2})
    assert 'weights.file' in error_of({**config, 'weights': {'file': '../x.safetensors'}})
    assert 'supported_elements' in error_of({**config, 'supported_elements': ['H']})
    assert 'larger model than the file holds' in error_of(
        {**config, 'model_kwargs': {**config['model_kwargs'], 'num_layers': 10**6}})
    # a float64 save with float32 weights: a narrowed copy is refused, not cast back
    files64 = saved_files(torch.float64)
    from safetensors.torch import load
    narrowed = {k: v.float() if v.is_floating_point() else v
                for k, v in load(files64[WEIGHTS_NAME]).items()}
    result = from_folder_files(rewrite_weights(files64, narrowed), 'folder')
    assert isinstance(result, PretrainedModelError) and 'dtype mismatch' in str(result)
    # without a dtype key the weights' dtype is used
    del config['dtype']
    result = from_folder_files({**files, CONFIG_NAME: json.dumps(config).encode()}, 'folder')
    assert_same_model(result, good, predict=True)
    with pytest.raises(TypeError, match='name_or_path'):
        from_pretrained(3)
