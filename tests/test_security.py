"""A bundle, a run directory and a checkpoint are data: hostile ones are refused, nothing runs.

The configs here are written by hand (a two-block ResNet pair) so the expected
outcomes do not depend on ``conf/``.
"""

import hashlib
import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pwl.build import build_hybrid
from pwl.checkpoint import load_hybrid
from pwl.data.registry import build_datamodule
from pwl.errors import CheckpointError, ConfigError, PWLError
from pwl.models import build_saved_net, check_saved_net
from pwl.runtime import BundleError, ProgressiveModel, load_bundle_hybrid, verify, write_bundle
from pwl.runtime.storage import parse_header
from pwl.weights import save_model_cfg, save_weights

TEACHER = {"_target_": "pwl.models.resnet", "depths": [1, 1], "widths": [4, 8],
           "in_chans": 3, "num_classes": 3}
STUDENT = {**TEACHER, "widths": [2, 4]}
MODEL = {"name": "tiny", "adapter": "linear", "input_shape": [3, 8, 8],
         "teacher": TEACHER, "student": STUDENT}
DATA = {"_target_": "pwl.data.SyntheticDataModule", "num_train": 64, "num_test": 32,
        "batch_size": 16, "val_size": 16, "image_size": 8, "in_chans": 3, "num_classes": 3}
MASKS = ("SS", "ST", "TS", "TT")

# A torch hub entry point that leaves a sentinel file: the proof that code ran.
HUBCONF = """
from pathlib import Path
def model(sentinel, **kwargs):
    Path(sentinel).write_text("code from the bundle ran")
    return None
"""


def tiny_bundle(path, **kwargs):
    """(hybrid, bundle dir) of the hand-written two-block pair."""
    torch.manual_seed(0)
    hybrid = build_hybrid(MODEL).eval()
    write_bundle(hybrid, MODEL, path, data_cfg=DATA, **kwargs)
    return hybrid, Path(path)


def edit_manifest(bundle, edit):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def rewrite(bundle, rel, data):
    """Replaces file ``rel`` with ``data`` and makes the manifest agree (a forged bundle)."""
    (bundle / rel).write_bytes(data)

    def agree(manifest):
        manifest["files"][rel].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    edit_manifest(bundle, agree)


def hub_attack(cfg_dir, sentinel):
    """The model config of the attack: torch.hub.load of a hubconf.py placed in ``cfg_dir``."""
    (cfg_dir / "hubconf.py").write_text(HUBCONF)
    return {**MODEL, "teacher": {"_target_": "torch.hub.load", "repo_or_dir": str(cfg_dir),
                                 "model": "model", "source": "local",
                                 "sentinel": str(sentinel), "trust_repo": True}}


def test_the_sentinel_works_when_the_hubconf_is_called(tmp_path):
    # Guards the tests below: the hubconf does create the sentinel when something calls it.
    sentinel = tmp_path / "sentinel"
    cfg = hub_attack(tmp_path, sentinel)["teacher"]
    torch.hub.load(cfg["repo_or_dir"], "model", source="local", sentinel=str(sentinel))
    assert sentinel.read_text() == "code from the bundle ran"


def test_a_bundle_naming_torch_hub_load_is_refused_and_runs_nothing(tmp_path):
    _, bundle = tiny_bundle(tmp_path / "bundle")
    sentinel = tmp_path / "sentinel"
    edit_manifest(bundle, lambda m: m.update(model=hub_attack(bundle, sentinel)))
    message = r"manifest.json: model.teacher._target_='torch.hub.load' is not a registered"
    with pytest.raises(CheckpointError, match=message):
        ProgressiveModel.open(bundle)
    with pytest.raises(CheckpointError, match=message):
        load_bundle_hybrid(bundle)
    with pytest.raises(CheckpointError, match=message):
        load_hybrid(bundle)
    with pytest.raises(BundleError, match=message):
        verify(bundle)
    assert not sentinel.exists()


def test_a_run_dir_or_checkpoint_naming_torch_hub_load_is_refused(tmp_path):
    sentinel = tmp_path / "sentinel"
    run = tmp_path / "run"
    hybrid = build_hybrid(MODEL)
    save_weights(hybrid, run / "hybrid.safetensors")
    save_model_cfg(hub_attack(run, sentinel), run)
    with pytest.raises(CheckpointError, match=r"model.yaml: model.teacher._target_="
                                              r"'torch.hub.load' is not a registered"):
        load_hybrid(run)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {"model_cfg": hub_attack(run, sentinel)},
                "state_dict": {}}, ckpt)
    with pytest.raises(CheckpointError, match=r"model_cfg\): model.teacher._target_="):
        load_hybrid(ckpt)
    assert not sentinel.exists()


def test_a_saved_data_config_must_name_a_registered_data_module(tmp_path):
    target = tmp_path / "copied"
    hostile = {"_target_": "shutil.copyfile", "src": __file__, "dst": str(target)}
    with pytest.raises(CheckpointError, match=r"data._target_='shutil.copyfile' is not a "
                                              "registered data module"):
        build_datamodule(hostile, saved_from=tmp_path / "manifest.json")
    with pytest.raises(CheckpointError, match=r"data.batch_size=0 must be >= 1"):
        build_datamodule({**DATA, "batch_size": 0}, saved_from=tmp_path / "manifest.json")
    assert not target.exists()
    # A stored config never downloads (where data comes from is the user's call).
    dm = build_datamodule({**DATA, "num_train": 48}, saved_from=tmp_path / "manifest.json")
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 48


def test_every_spelling_of_a_registered_builder_names_it():
    for target in ("pwl.models.resnet", "pwl.models.resnet.resnet", "resnet"):
        builder, kwargs = check_saved_net({**TEACHER, "_target_": target}, "model.teacher")
        assert builder.name == "resnet"
        assert kwargs == {"depths": [1, 1], "widths": [4, 8], "in_chans": 3, "num_classes": 3}
    net = build_saved_net(TEACHER, "model.teacher")
    assert net.num_blocks == 2 and net.num_classes == 3


@pytest.mark.parametrize("change, message", [
    ({"_target_": "builtins.exec"}, "model.teacher._target_='builtins.exec' is not a registered"),
    ({"_target_": None}, "model.teacher._target_='None' is not a registered"),
    ({"depths": [1, 0]}, "model.teacher.depths.1=0 must be >= 1"),
    ({"depths": [1, 1, 1]}, "model.teacher: depths [1, 1, 1] and widths [4, 8] must have"),
    ({"widths": [4, 10**9]}, "model.teacher.widths.1=1000000000 must be <= 8192"),
    ({"num_classes": True}, "model.teacher.num_classes=True input should be a valid integer"),
    ({"num_classes": "3"}, "model.teacher.num_classes='3' input should be a valid integer"),
    ({"drop_rate": float("nan")}, "model.teacher.drop_rate=nan must be a finite number"),
    ({"block": "evil"}, "model.teacher.block='evil' must be one of 'basic' or 'bottleneck'"),
    ({"repo_or_dir": "."}, "model.teacher.repo_or_dir is not a known key"),
])
def test_saved_builder_arguments_are_typed_and_range_checked(change, message):
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        check_saved_net({**TEACHER, **change}, "model.teacher")


def test_a_saved_timm_config_names_only_timm_models_and_never_downloads():
    cfg = {"_target_": "pwl.models.timm_split", "model_name": "resnet18", "pretrained": True}
    _, kwargs = check_saved_net(cfg, "model.teacher")
    assert kwargs == {"model_name": "resnet18", "pretrained": False}
    for name in ("hf-hub:someone/model", "timm/resnet18", "no_such_model"):
        with pytest.raises(ConfigError, match="model_name=.* is not a model of timm's registry"):
            check_saved_net({**cfg, "model_name": name}, "model.teacher")


@pytest.mark.parametrize("rel", ["../student.safetensors", "/etc/passwd",
                                 "teacher/../student.safetensors", "./student.safetensors"])
def test_file_names_must_stay_inside_the_bundle(tmp_path, rel):
    _, bundle = tiny_bundle(tmp_path / "bundle")

    def rename(manifest):
        manifest["files"][rel] = manifest["files"].pop("student.safetensors")
    edit_manifest(bundle, rename)
    with pytest.raises(CheckpointError, match="is not a normalised relative path inside the "
                                              "bundle"):
        ProgressiveModel.open(bundle)


def test_symbolic_links_and_special_files_are_refused(tmp_path):
    _, bundle = tiny_bundle(tmp_path / "bundle")
    outside = tmp_path / "outside.safetensors"
    shutil.move(bundle / "student.safetensors", outside)
    (bundle / "student.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="student.safetensors is a symbolic link"):
        ProgressiveModel.open(bundle)
    (bundle / "student.safetensors").unlink()
    shutil.move(outside, bundle / "student.safetensors")
    shutil.move(bundle / "teacher", tmp_path / "teacher")
    (bundle / "teacher").symlink_to(tmp_path / "teacher")
    with pytest.raises(CheckpointError, match="bundle/teacher is a symbolic link"):
        ProgressiveModel.open(bundle)
    (bundle / "teacher").unlink()
    shutil.move(tmp_path / "teacher", bundle / "teacher")
    block = bundle / "teacher/block_1.safetensors"
    block.unlink()
    os.mkfifo(block)  # reading a FIFO would wait forever
    with pytest.raises(CheckpointError, match="block_1.safetensors is not a regular file"):
        ProgressiveModel.open(bundle)


def header_of(data):
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])


def with_header(data, header):
    """``data`` with its header replaced (padded like safetensors, to 8 bytes)."""
    n = int.from_bytes(data[:8], "little")
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def _huge_length(data):
    return (1 << 62).to_bytes(8, "little") + data[8:]


def _overlap(data):
    header = header_of(data)
    names = sorted((k for k in header if k != "__metadata__"),
                   key=lambda k: header[k]["data_offsets"][0])
    first, second = header[names[0]], header[names[1]]
    size = first["data_offsets"][1] - first["data_offsets"][0]
    second["data_offsets"] = [first["data_offsets"][0], first["data_offsets"][0] + size]
    second["shape"], second["dtype"] = first["shape"], first["dtype"]
    return with_header(data, header)


def _unknown_dtype(data):
    header = header_of(data)
    name = next(k for k in header if k != "__metadata__")
    header[name]["dtype"] = "F128"
    return with_header(data, header)


def _wrong_size(data):
    header = header_of(data)
    name = next(k for k in header if k != "__metadata__" and header[k]["shape"])
    header[name]["shape"] = [s * 2 for s in header[name]["shape"]]
    return with_header(data, header)


@pytest.mark.parametrize("forge, message", [
    (_huge_length, "header length 4611686018427387904 does not fit the file"),
    (_overlap, "has overlapping tensor data"),
    (_unknown_dtype, "the unknown dtype 'F128'"),
    (_wrong_size, "bytes but shape"),
    (lambda data: data[:8] + b"{not json" + data[17:], "header is not JSON"),
])
def test_a_safetensors_header_that_lies_is_refused(tmp_path, forge, message):
    _, bundle = tiny_bundle(tmp_path / "bundle")
    rel = "teacher/block_0.safetensors"
    rewrite(bundle, rel, forge((bundle / rel).read_bytes()))
    model = ProgressiveModel.open(bundle)
    model.start_loading()
    with pytest.raises(CheckpointError, match=message):
        model.wait(timeout=30)
    assert model.mask == "SS"
    with pytest.raises(CheckpointError, match=message):
        load_bundle_hybrid(bundle)


def test_tensor_shapes_and_dtypes_must_match_the_model(tmp_path):
    _, bundle = tiny_bundle(tmp_path / "bundle")
    rel = "teacher/block_1.safetensors"
    data = (bundle / rel).read_bytes()
    header = header_of(data)
    # head.fc.weight is (3, 8): as (8, 3) it has the same bytes but not the model's shape
    header["head.fc.weight"]["shape"] = [8, 3]
    rewrite(bundle, rel, with_header(data, header))
    with pytest.raises(CheckpointError, match=r"head.fc.weight has shape \[8, 3\], the model "
                                              r"\[3, 8\]"):
        load_bundle_hybrid(bundle)


def test_parse_header_reads_what_safetensors_wrote(tmp_path):
    _, bundle = tiny_bundle(tmp_path / "bundle")
    data = (bundle / "teacher/block_1.safetensors").read_bytes()
    header = parse_header(data, len(data), bundle)
    assert header["head.fc.weight"].shape == (3, 8)
    assert header["head.fc.weight"].dtype == "F32"
    assert header["blocks.1.0.bn1.num_batches_tracked"].dtype == "I64"


def test_verify_reports_every_problem_in_one_error(tmp_path):
    _, bundle = tiny_bundle(tmp_path / "bundle")
    block0 = bundle / "teacher/block_0.safetensors"
    data = bytearray(block0.read_bytes())
    data[-1] ^= 0xFF
    block0.write_bytes(bytes(data))
    block1 = bundle / "teacher/block_1.safetensors"
    block1.write_bytes(block1.read_bytes()[:100])
    edit_manifest(bundle, lambda m: m.update(loading_order=["SS", "ST", "SS"]))
    with pytest.raises(BundleError) as caught:
        verify(bundle)
    problems = caught.value.problems
    assert len(problems) == 4, problems
    assert str(caught.value).splitlines()[0].startswith(f"{bundle} fails verification with "
                                                        "4 problems; first: ")
    assert any("block_1.safetensors has 100 bytes but the manifest says" in p for p in problems)
    assert any("loading_order is invalid" in p for p in problems)
    assert any("block_0.safetensors has sha256" in p for p in problems)
    assert any("block_1.safetensors has sha256" in p for p in problems)


def test_a_manifest_breaking_its_schema_is_named_by_key(tmp_path):
    _, bundle = tiny_bundle(tmp_path / "bundle")

    def damage(manifest):
        manifest["num_blocks"] = "2"
        manifest["files"]["student.safetensors"]["bytes"] = -1
        manifest["surprise"] = 1
    edit_manifest(bundle, damage)
    with pytest.raises(BundleError) as caught:
        verify(bundle)
    assert [p.split(": ", 1)[1] for p in caught.value.problems] == [
        "num_blocks='2' input should be a valid integer; re-export the bundle",
        "files.student.safetensors.bytes=-1 must be >= 0; re-export the bundle",
        "surprise is not a known key; re-export the bundle"]
    with pytest.raises(CheckpointError, match="manifest.json: num_blocks='2' input should be"):
        ProgressiveModel.open(bundle)


def test_a_plan_is_accepted_and_an_unknown_dtype_refused(tmp_path):
    hybrid, bundle = tiny_bundle(tmp_path / "bundle")

    edit_manifest(bundle, lambda m: m.update(plan=["SS", "ST", "TT"]))
    loaded, _ = load_bundle_hybrid(bundle)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x, "TT"), hybrid.teacher(x))
    edit_manifest(bundle, lambda m: m["files"]["student.safetensors"].update(dtype="fp8"))
    with pytest.raises(CheckpointError, match=r"files.student.safetensors.dtype='fp8' must be "
                                              "one of"):
        ProgressiveModel.open(bundle)


def test_json_nested_too_deeply_is_one_error(tmp_path):
    _, bundle = tiny_bundle(tmp_path / "bundle")
    (bundle / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(PWLError, match="not readable JSON"):
        ProgressiveModel.open(bundle)


# --- Property-based fuzzing: mutated manifests and shards of a tiny bundle -------------------
# Every mutated bundle either loads to exactly the reference logits of the mask it ends on,
# or raises the project's own error; never another exception, never a hang, never a file
# written or code run. PWL_FUZZ_EXAMPLES raises the budget (make stress).

FUZZ_EXAMPLES = int(os.environ.get("PWL_FUZZ_EXAMPLES", "150"))
HOSTILE_TARGETS = ["torch.hub.load", "shutil.copyfile", "builtins.exec", "os.system",
                   "numpy.save", "pwl.models.resnet.ResNetArgs", "__import__"]
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2, -1, 3, 8]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["../x", "/etc/passwd", "SS", "TT", "prefix", "fp16", "F32",
                     "teacher/block_0.safetensors", "student.safetensors"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8)


def _paths(node, prefix=()):
    """Every path into a JSON tree, the root first."""
    yield prefix
    children = (node.items() if isinstance(node, dict)
                else enumerate(node) if isinstance(node, list) else ())
    for key, child in children:
        yield from _paths(child, (*prefix, key))


def _mutate_json(tree, draw):
    """One random edit of a JSON tree (in place): replace, delete, add, rename or hostile."""
    paths = list(_paths(tree))
    path = paths[draw(st.integers(0, len(paths) - 1))]
    op = draw(st.sampled_from(["replace", "delete", "add", "rename", "hostile", "number"]))
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if not path:
        if op == "replace":
            return draw(json_values)
        return tree
    key = path[-1]
    if op == "replace":
        parent[key] = draw(json_values)
    elif op == "number":
        old = parent[key]
        if isinstance(old, (int, float)) and not isinstance(old, bool):
            parent[key] = draw(st.sampled_from([old + 1, old - 1, -old, old * 2, 0, 2**63, 0.5]))
        else:
            parent[key] = draw(st.integers(-3, 2**40))
    elif op == "delete":
        del parent[key]
    elif op == "add" and isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = draw(json_values)
    elif op == "rename" and isinstance(parent, dict):
        parent[draw(st.sampled_from(["_target_", "teacher", "files", "x", "dtype"]))] = (
            parent.pop(key))
    elif op == "hostile" and isinstance(parent, dict):
        parent["_target_"] = draw(st.sampled_from(HOSTILE_TARGETS))
    return tree


@st.composite
def damage(draw):
    """A list of edits to apply to a copy of the bundle: (file, kind, details)."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(["manifest.json", "student.safetensors",
                                       "teacher/block_0.safetensors",
                                       "teacher/block_1.safetensors"]))
        if target == "manifest.json":
            edits.append((target, "json", draw(st.randoms(use_true_random=False))))
        else:
            kind = draw(st.sampled_from(["truncate", "flip", "append", "length", "header"]))
            edits.append((target, kind, draw(st.randoms(use_true_random=False))))
    return edits


def _apply(bundle, edits, data_draw):
    """Applies ``edits``; returns True if a shard was forged (its new hash put in the manifest)."""
    forged = False
    # Shards first: a forged shard's new hash goes into the manifest before that is mutated.
    for rel, kind, rnd in sorted(edits, key=lambda e: e[0] == "manifest.json"):
        path = bundle / rel
        if kind == "json":
            manifest = json.loads(path.read_text())
            path.write_text(json.dumps(_mutate_json(manifest, data_draw)))
            continue
        data = bytearray(path.read_bytes())
        if not data:  # an earlier edit truncated it to nothing
            continue
        if kind == "truncate":
            data = data[:rnd.randrange(len(data))]
        elif kind == "flip":
            position = rnd.randrange(len(data))
            data[position] ^= 1 << rnd.randrange(8)
        elif kind == "append":
            data += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64)))
        elif kind == "length":
            data[:8] = rnd.choice([0, 1, 7, len(data), 2**63, rnd.randrange(2**64)]).to_bytes(
                8, "little")
        else:  # a header edited and the manifest made to agree: only the header checks stand
            try:
                header = _mutate_json(header_of(bytes(data)), data_draw)
            except ValueError:  # an earlier edit already broke the header
                continue
            data = bytearray(with_header(bytes(data), header))
            rewrite(bundle, rel, bytes(data))
            forged = True
            continue
        path.write_bytes(bytes(data))
    return forged


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(bundle dir, input, exact logits of every mask, sentinel path)."""
    root = tmp_path_factory.mktemp("fuzz")
    hybrid, bundle = tiny_bundle(root / "reference")
    # The attack's hubconf sits in the bundle: any mutation that reaches it would run it.
    (bundle / "hubconf.py").write_text(HUBCONF)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = {m: hybrid(x, m) for m in MASKS}
    return bundle, x, expected, root / "sentinel"


@settings(max_examples=FUZZ_EXAMPLES, derandomize=True, database=None,
          deadline=timedelta(seconds=10), suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.generate])
@given(edits=damage(), mmap=st.booleans(), data=st.data())
def test_fuzzed_bundles_load_exactly_or_raise_our_error(reference, tmp_path_factory, edits,
                                                        mmap, data):
    bundle_ref, x, expected, sentinel = reference
    work = tmp_path_factory.mktemp("case")
    bundle = work / "bundle"
    shutil.copytree(bundle_ref, bundle)
    forged = _apply(bundle, edits, data.draw)
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    try:
        model = ProgressiveModel.open(bundle, mmap=mmap)
    except PWLError:
        model = None
    if model is not None:
        model.start_loading()
        try:
            assert model.wait(timeout=20), "loading hung"
        except PWLError:
            pass
        finally:
            model.close()
        logits = model.predict(x)
        if not forged:
            assert torch.equal(logits, expected[model.mask]), model.mask
    assert not sentinel.exists()
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before
    shutil.rmtree(work)
