"""Speed switches (pwl.speed): the layout changes, the answers and the saved files do not;
precision auto picks bf16 only where the hardware computes it."""

import logging

import lightning as L
import pytest
import torch

from pwl import speed
from pwl.checkpoint import load_hybrid
from pwl.errors import ConfigError
from pwl.train import train
from tests.conftest import model_cfg, tiny_hybrid, tiny_train_cfg

CFG = model_cfg("resnet_narrow")


def _hybrid():
    """A resnet_narrow hybrid with trained-looking adapters and BatchNorm statistics."""
    torch.manual_seed(0)
    return tiny_hybrid(CFG)[0]


def test_channels_last_keeps_every_mask_answer_and_stores_nhwc_kernels():
    plain, nhwc = _hybrid(), speed.use_channels_last(_hybrid())
    kernels = [p for p in nhwc.parameters() if p.dim() == 4]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    assert not all(p.is_contiguous() for p in kernels)
    x = torch.randn(6, *CFG["input_shape"])
    with torch.no_grad():
        for mask in ("SSSS", "TSST", "TTTT", "STTS"):
            torch.testing.assert_close(nhwc(x, mask), plain(x, mask), rtol=1e-4, atol=1e-5)


def test_runs_with_nhwc_weights_save_files_a_plain_model_loads(tmp_path):
    class Keep(L.Callback):
        def on_train_end(self, trainer, pl_module):
            self.module = pl_module

    teacher, run, kept = tmp_path / "teacher", tmp_path / "distill", Keep()
    short = ["channels_last=true", "trainer.limit_train_batches=2", "test=false"]
    train(tiny_train_cfg(teacher, "phase=teacher", *short))
    train(tiny_train_cfg(run, "phase=distill", f"teacher={teacher}", *short),
          extra_callbacks=[kept])
    trained = kept.module.hybrid.eval()   # NHWC, with the weights the run saved
    assert trained.student.blocks[0][0].conv1.weight.is_contiguous(
        memory_format=torch.channels_last)
    hybrid, _ = load_hybrid(run)   # a fresh, plain-layout model: names and shapes match
    x = torch.randn(3, *CFG["input_shape"])
    with torch.no_grad():
        for mask in ("SSSS", "TSTS", "TTTT"):
            torch.testing.assert_close(hybrid.eval()(x, mask), trained(x, mask),
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("override", ["channels_last=yes", "channels_last=1"])
def test_a_switch_that_is_not_a_boolean_is_one_clear_error(tmp_path, override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        train(tiny_train_cfg(tmp_path, "phase=teacher", override))


def test_auto_precision_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    chosen, line = speed.resolve_precision("auto", "cpu")
    assert chosen == "bf16-mixed" and "AVX512-BF16" in line
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: False)
    chosen, line = speed.resolve_precision("auto", "cpu")
    assert chosen == "32-true" and "emulated" in line
    assert speed.resolve_precision("auto", "gpu")[0] == "32-true"   # no GPU here
    assert speed.resolve_precision("16-mixed", "gpu") == ("16-mixed", None)


def test_a_run_says_what_auto_precision_chose_and_trains_with_it(tmp_path, monkeypatch,
                                                                   caplog):
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: False)
    seen = []

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.append(trainer.precision)

    with caplog.at_level(logging.INFO):
        train(tiny_train_cfg(tmp_path, "phase=teacher", "trainer.precision=auto"),
              extra_callbacks=[Probe()])
    assert "trainer.precision=auto -> 32-true" in caplog.text
    assert seen == ["32-true"]
