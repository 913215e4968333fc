"""Loading under stress: 8 threads predicting while a slow bundle loads and a shard goes bad.

PWL_STRESS_PREDICTIONS sets how many predictions the threads make at least
(a few thousand here; ``make stress`` asks for many more).
"""

import os
import threading
import time

import torch

from pwl.errors import CheckpointError
from pwl.masks import masks_for_order
from pwl.runtime import ProgressiveModel
from tests.conftest import export_tiny, flip_byte

PREDICTIONS = int(os.environ.get("PWL_STRESS_PREDICTIONS", "3000"))
THREADS = 8


def test_eight_threads_see_whole_masks_while_a_corrupted_bundle_loads(tmp_path):
    hybrid, bundle = export_tiny(tmp_path / "bundle")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = {m: hybrid(x, m) for m in masks_for_order("all", 4)}
    # Every mask's logits differ from every other's, so an output names its mask.
    assert all(not torch.equal(expected[a], expected[b])
               for a in expected for b in expected if a < b)
    teacher_bytes = sum(p.stat().st_size for p in (bundle / "teacher").iterdir())
    # About two seconds of loading: every thread answers on several masks.
    model = ProgressiveModel.open(bundle, bandwidth=teacher_bytes / 2)
    outputs = [[] for _ in range(THREADS)]
    stop = threading.Event()
    failures = []

    def answer(out):
        try:
            while not stop.is_set():
                out.append(model.predict_with_mask(x))
        except Exception as e:  # surfaced by the main thread, which asserts none happened
            failures.append(e)

    threads = [threading.Thread(target=answer, args=(out,)) for out in outputs]
    for t in threads:
        t.start()
    model.start_loading()
    while model.stage < 1:
        time.sleep(0.001)
    # Block 3 is read last, long after this: its last byte goes bad on disk mid-load.
    flip_byte(bundle / "teacher/block_3.safetensors", offset=-1)
    def answered():
        return sum(len(out) for out in outputs)

    began = time.monotonic()
    while (answered() < PREDICTIONS or not model.done) and time.monotonic() - began < 600:
        time.sleep(0.01)
    answered_after_error = answered()
    time.sleep(0.2)  # the model keeps answering once loading has failed
    stop.set()
    for t in threads:
        t.join()

    assert not failures
    assert answered() >= PREDICTIONS and answered() > answered_after_error
    seen = set()
    for out in outputs:
        for logits, mask in out:
            assert torch.equal(logits, expected[mask]), mask  # whole, never torn
            seen.add(mask)
    assert seen == {"SSSS", "TSSS", "TTSS", "TTTS"}
    assert (model.mask, model.done) == ("TTTS", True)
    assert all(mask == "TTTS" for out in outputs for _, mask in out[-3:])
    errors = [e for e in model.events if e.error is not None]
    assert len(errors) == 1
    assert (errors[0].block, errors[0].mask) == (3, "TTTS")
    assert "block_3.safetensors has sha256" in errors[0].error
    try:
        model.wait(timeout=10)
    except CheckpointError as e:
        assert str(e) == errors[0].error
    else:
        raise AssertionError("wait() did not raise the loading error")
    # open, three swaps, then the failed step: the error is reported once, on the last event
    assert [(e.mask, e.error is None) for e in model.events] == [
        ("SSSS", True), ("TSSS", True), ("TTSS", True), ("TTTS", True), ("TTTS", False)]
