import threading
import time

import pytest
import torch

from pwl.config import parse_bandwidth
from pwl.errors import CheckpointError, ConfigError, MaskError
from pwl.masks import LoadingOrder, adapters_used, masks_for_order
from pwl.runtime import ProgressiveModel
from pwl.runtime.storage import LoadingStopped, Pacer
from tests.conftest import export_tiny, flip_byte, truncate

PREFIX = masks_for_order("prefix", 4)


@pytest.fixture
def exported(tmp_path):
    """(hybrid, bundle dir, input, exact logits of every mask for that input)."""
    hybrid, bundle = export_tiny(tmp_path / "bundle")
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = {m: hybrid(x, m) for m in masks_for_order("all", 4)}
    return hybrid, bundle, x, expected


def teacher_bytes(bundle):
    return sum(p.stat().st_size for p in (bundle / "teacher").iterdir())


def is_freed(module):
    return all(t.is_meta for t in (*module.parameters(), *module.buffers()))


def is_held(module):
    return not any(t.is_meta for t in (*module.parameters(), *module.buffers()))


# The adapters each final mask of N=4 runs through, worked out by hand: one at every
# change of network, named by the side it converts to and the boundary it sits at.
ADAPTERS_OF = {
    "SSSS": set(), "TTTT": set(),
    "TSSS": {("to_student", 0)}, "TTSS": {("to_student", 1)}, "TTTS": {("to_student", 2)},
    "SSST": {("to_teacher", 2)}, "SSTT": {("to_teacher", 1)}, "STTT": {("to_teacher", 0)},
    "TSTS": {("to_student", 0), ("to_teacher", 1), ("to_student", 2)},
    "STST": {("to_teacher", 0), ("to_student", 1), ("to_teacher", 2)},
}


def test_adapters_used_matches_the_hand_written_table():
    for mask, expected in ADAPTERS_OF.items():
        assert adapters_used(mask) == expected, mask


def check_memory(model, mask):
    """Student units and adapters are held exactly when ``mask`` (the final one) uses them."""
    student, adapters = model.hybrid.student, model.hybrid.adapters
    for i, who in enumerate(mask):
        for module in student.unit_modules(i):
            assert (is_freed if who == "T" else is_held)(module), (mask, i)
        for module in model.hybrid.teacher.unit_modules(i):
            assert (is_held if who == "T" else is_freed)(module), (mask, i)
    used = ADAPTERS_OF[mask]
    for kind in ("to_student", "to_teacher"):
        for b, adapter in enumerate(getattr(adapters, kind)):
            assert (is_held if (kind, b) in used else is_freed)(adapter), (mask, kind, b)


def test_open_answers_from_the_student_with_the_teacher_unallocated(exported):
    hybrid, bundle, x, expected = exported
    model = ProgressiveModel.open(bundle)
    assert (model.mask, model.stage, model.done) == ("SSSS", 0, False)
    assert torch.equal(model.predict(x), expected["SSSS"])
    assert torch.equal(model.predict(x), hybrid.student(x))
    assert is_freed(model.hybrid.teacher)
    [event] = model.events
    assert (event.stage, event.mask, event.block, event.error) == (0, "SSSS", None, None)
    assert event.bytes_read == (bundle / "student.safetensors").stat().st_size
    assert model.wait() is True  # nothing to wait for before loading starts


@pytest.mark.parametrize("mmap", [False, True])
def test_prefix_loading_ends_as_the_teacher_and_frees_the_student(exported, mmap):
    hybrid, bundle, x, expected = exported
    model = ProgressiveModel.open(bundle, mmap=mmap)
    assert model.start_loading() == PREFIX
    assert model.wait(timeout=60)
    assert (model.mask, model.stage, model.done, model.error) == ("TTTT", 4, True, None)
    assert torch.equal(model.predict(x), expected["TTTT"])
    assert torch.equal(model.predict(x), hybrid.teacher(x))
    events = model.events
    assert [e.mask for e in events] == PREFIX
    assert [e.block for e in events] == [None, 0, 1, 2, 3]
    # The first step reads the adapters' file before its teacher block.
    size = [(bundle / f"teacher/block_{i}.safetensors").stat().st_size for i in range(4)]
    size[0] += (bundle / "adapters.safetensors").stat().st_size
    assert [e.bytes_read for e in events] == [
        (bundle / "student.safetensors").stat().st_size, *size]
    assert all(a.t <= b.t for a, b in zip(events, events[1:]))
    check_memory(model, "TTTT")
    assert model.resident_bytes() == sum(hybrid.teacher.unit_num_bytes(i) for i in range(4))


@pytest.mark.parametrize("order, final", [
    ([0], "TSSS"), ([2, 0], "TSTS"), ("suffix", "TTTT"), (["TSSS", "TTSS"], "TTSS"),
    ([1, 3], "STST"),
])
def test_any_order_ends_on_its_last_mask_holding_only_what_it_uses(exported, order, final):
    _, bundle, x, expected = exported
    model = ProgressiveModel.open(bundle)
    masks = model.start_loading(order)
    model.wait(timeout=60)
    assert masks == list(LoadingOrder.parse(order, 4).masks)
    assert [e.mask for e in model.events] == masks
    assert model.mask == final
    assert torch.equal(model.predict(x), expected[final])
    check_memory(model, final)


def test_a_prediction_in_flight_keeps_the_student_block_until_it_finishes(exported):
    _, bundle, x, expected = exported
    model = ProgressiveModel.open(bundle)
    entered, release = threading.Event(), threading.Event()

    def hold(module, args):
        entered.set()
        assert release.wait(30)

    handle = model.hybrid.student.blocks[0].register_forward_pre_hook(hold)
    outputs = []
    slow = threading.Thread(target=lambda: outputs.append(model.predict_with_mask(x)))
    slow.start()
    assert entered.wait(30)
    model.start_loading([0])
    deadline = time.monotonic() + 30
    while model.mask != "TSSS" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert model.mask == "TSSS"
    # The swap is published: new predictions run TSSS while the old one still runs on SSSS,
    # so student block 0 must still be in memory.
    assert torch.equal(model.predict(x), expected["TSSS"])
    assert is_held(model.hybrid.student.blocks[0]) and not model.done
    release.set()
    slow.join(30)
    handle.remove()
    model.wait(timeout=30)
    [(logits, mask)] = outputs
    assert mask == "SSSS" and torch.equal(logits, expected["SSSS"])
    assert is_freed(model.hybrid.student.blocks[0]) and is_freed(model.hybrid.student.stem)


def test_four_threads_predicting_while_loading_see_only_whole_masks(exported):
    _, bundle, x, expected = exported
    # About a second of loading, so the threads answer on every stage.
    model = ProgressiveModel.open(bundle, bandwidth=teacher_bytes(bundle))
    results = [[] for _ in range(4)]
    stop = threading.Event()

    def answer(out):
        while not stop.is_set():
            out.append(model.predict_with_mask(x))

    threads = [threading.Thread(target=answer, args=(out,)) for out in results]
    for t in threads:
        t.start()

    def each_thread_answers():
        counts = [len(r) for r in results]
        while any(len(r) <= c for r, c in zip(results, counts)):
            time.sleep(0.005)

    each_thread_answers()
    model.start_loading()
    model.wait(timeout=60)
    each_thread_answers()
    stop.set()
    for t in threads:
        t.join()
    seen = set()
    for out in results:
        for logits, mask in out:
            assert mask in PREFIX
            assert torch.equal(logits, expected[mask]), mask
            seen.add(mask)
    assert {"SSSS", "TTTT"} <= seen


@pytest.mark.parametrize("block", [0, 1, 3])
@pytest.mark.parametrize("fault, message", [
    (lambda p: p.unlink(), "missing"),
    (truncate, "bytes but the manifest says"),
    (flip_byte, "sha256"),
    # a corrupt header: files over 1 MiB are hashed while their header is parsed, and the
    # error still names the hash
    (lambda p: flip_byte(p, offset=12), "sha256"),
])
def test_a_bad_teacher_file_stops_loading_on_the_last_good_mask(exported, block, fault,
                                                               message):
    _, bundle, x, expected = exported
    model = ProgressiveModel.open(bundle)
    fault(bundle / f"teacher/block_{block}.safetensors")
    model.start_loading()
    with pytest.raises(CheckpointError, match=f"block_{block}.safetensors.*{message}"):
        model.wait(timeout=60)
    good = PREFIX[block]
    assert (model.mask, model.stage, model.done) == (good, block, True)
    last = model.events[-1]
    assert (last.block, last.mask) == (block, good)
    assert f"block_{block}.safetensors" in last.error and message in last.error
    assert torch.equal(model.predict(x), expected[good])
    check_memory(model, good)
    with pytest.raises(CheckpointError):
        model.wait()  # the error stays


def test_a_bad_adapters_file_stops_loading_at_the_student(exported):
    _, bundle, x, expected = exported
    model = ProgressiveModel.open(bundle)
    flip_byte(bundle / "adapters.safetensors")
    model.start_loading()
    with pytest.raises(CheckpointError, match="adapters.safetensors.*sha256"):
        model.wait(timeout=60)
    assert (model.mask, model.done) == ("SSSS", True)
    assert torch.equal(model.predict(x), expected["SSSS"])


def test_close_stops_a_slow_download_and_the_model_keeps_answering(exported):
    _, bundle, x, expected = exported
    # The student takes a second at this rate, the teacher blocks about eight.
    model = ProgressiveModel.open(bundle, bandwidth=(bundle / "student.safetensors").stat().st_size)
    model.start_loading()
    model.close()
    assert model.done and model.error is None and model.wait() is True
    assert model.mask in PREFIX[:-1]
    assert torch.equal(model.predict(x), expected[model.mask])


def test_loading_is_started_once_with_a_valid_order(exported):
    _, bundle, _, _ = exported
    model = ProgressiveModel.open(bundle)
    with pytest.raises(MaskError):
        model.start_loading([0, 4])
    with pytest.raises(MaskError):
        model.start_loading("window")
    model.start_loading([1])
    with pytest.raises(RuntimeError, match="already"):
        model.start_loading([0])
    model.wait(timeout=60)


def test_parse_bandwidth():
    assert parse_bandwidth(None) is None and parse_bandwidth("none") is None
    assert parse_bandwidth(1000) == 1000.0
    assert parse_bandwidth("50MB") == 50e6
    assert parse_bandwidth("8MiB/s") == 8 * 2**20
    assert parse_bandwidth("400Mbit") == 50e6
    for bad in ("fast", "-5MB", "10 parsecs"):
        with pytest.raises(ConfigError, match="bandwidth"):
            parse_bandwidth(bad)


def test_pacer_holds_the_rate():
    pacer = Pacer(bytes_per_second=1000)
    began = time.perf_counter()
    for _ in range(4):
        pacer.consumed(50)
    # 200 bytes at 1000 B/s cannot take less than 0.2 s (a floor, so it cannot flake).
    assert time.perf_counter() - began >= 0.2 - 1e-3
    stop = threading.Event()
    stop.set()
    with pytest.raises(LoadingStopped):
        Pacer(1000, stop).consumed(10)


def test_building_on_meta_skips_initialisation_but_not_shapes():
    from pwl.build import build_saved_net_of
    from pwl.runtime.materialise import build_on_meta, on_meta
    from tests.conftest import model_cfg

    with on_meta():
        t = torch.empty(3)
        assert t.normal_() is t and t.is_meta  # a value-only op is skipped
        t.unsqueeze_(0)  # an op that changes the shape still runs
    assert t.shape == (1, 3)
    cfg = model_cfg("resnet_narrow")["teacher"]
    meta, cpu = build_on_meta(cfg, "teacher"), build_saved_net_of(cfg, "teacher", "test")
    assert all(v.is_meta for v in meta.state_dict().values())
    assert ({k: (v.shape, v.dtype) for k, v in meta.state_dict().items()}
            == {k: (v.shape, v.dtype) for k, v in cpu.state_dict().items()})
