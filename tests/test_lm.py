"""The language-model pair: text data, the causal model, sequence losses, stage metrics."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from pwl.build import build_hybrid
from pwl.data import TextDataModule
from pwl.data.kjv import KJV_VOCAB, read_kjv, split_books
from pwl.errors import ConfigError, DataError
from pwl.models import gpt
from pwl.report import report
from pwl.stages import COLUMNS, evaluate_on_split, evaluate_stages, read_stages, write_stages
from pwl.stages.curves import load_curve
from pwl.stages.files import metric_of_rows
from pwl.stages.metrics import BPC
from pwl.stages.plans import best_order, read_plan_rows
from pwl.train import train
from pwl.vocab import CharVocab
from tests.conftest import compose_cfg, model_cfg

# The LM pair at its full size on the synthetic corpus, a few batches on CPU.
LM_FAST = ["experiment=lm_kjv", "data.source=synthetic", "data.batch_size=4",
           "data.eval_batch_size=16", "trainer=cpu", "debug=fast", "logger=none",
           "epochs.teacher=1", "epochs.distill=1"]


def synthetic(**kwargs) -> TextDataModule:
    dm = TextDataModule(source="synthetic", **{"context_length": 16, **kwargs})
    dm.setup()
    return dm


def test_vocab_round_trips_and_names_a_foreign_symbol():
    vocab = CharVocab("ab\n ")
    ids = vocab.encode("ab a\nb")
    assert ids.tolist() == [0, 1, 3, 0, 2, 1]
    assert vocab.decode(ids) == "ab a\nb"
    with pytest.raises(DataError, match=r"'z' \(position 2\).*data.vocab"):
        vocab.encode("abz")


def test_books_split_whole_by_their_index():
    books = {f"b{i}": f"{i};" for i in range(22)}
    texts = split_books(books)
    assert texts["val"] == "5;16;"
    assert texts["test"] == "10;21;"
    assert len(texts["train"].split(";")) - 1 == 18


def test_text_batches_are_tokens_and_next_tokens():
    dm = synthetic(batch_size=4, eval_batch_size=3)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    x, y = next(iter(dm.val_dataloader()))
    val = dm.ids["val"]
    # Consecutive non-overlapping windows from the split's start.
    assert torch.equal(x[0], val[:16]) and torch.equal(y[0], val[1:17])
    assert torch.equal(x[1], val[16:32])
    assert dm.input_shape == (16,) and dm.num_classes == len(KJV_VOCAB) == 63


def test_text_data_checks_its_vocabulary_size():
    with pytest.raises(ConfigError, match=r"data.num_classes=10 .* 63 symbols"):
        TextDataModule(source="synthetic", num_classes=10)


def test_missing_bible_program_says_how_to_install(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(DataError, match=r"apt-get install bible-kjv") as err:
        read_kjv()
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.skipif(shutil.which("bible") is None, reason="bible-kjv is not installed")
def test_kjv_is_read_once_into_the_cache(tmp_path):
    dm = TextDataModule(cache_dir=str(tmp_path), context_length=64)
    dm.setup()
    assert (tmp_path / "kjv" / "books.json").is_file()
    books = dm.books()
    assert len(books) == 66 and books["Ge"].startswith("In the beginning God created")
    assert sum(len(v) for v in dm.ids.values()) == sum(len(t) for t in books.values())


def test_gpt_blocks_hold_embeddings_first_and_the_head_last():
    net = gpt(vocab_size=63, context_length=32, embed_dim=32, depth=4, num_heads=2,
              num_blocks=2)
    assert net.task == "language_model" and net.num_blocks == 2
    assert net.unit_prefixes(0) == ["stem.", "blocks.0."]
    assert net.unit_prefixes(1) == ["blocks.1.", "head."]
    tokens = torch.randint(0, 63, (2, 32))
    feats = net.forward_intermediates(tokens)
    assert feats[0].shape == (2, 32, 32) and feats[1].shape == (2, 32, 63)


def test_gpt_is_causal():
    torch.manual_seed(0)
    net = gpt(vocab_size=63, context_length=16, embed_dim=32, depth=2, num_heads=2,
              num_blocks=2).eval()
    a = torch.randint(0, 63, (1, 16))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % 63
    with torch.no_grad():
        la, lb = net(a), net(b)
    assert torch.equal(la[:, :10], lb[:, :10])
    assert not torch.allclose(la[:, 10:], lb[:, 10:])


def test_context_longer_than_the_model_is_one_clear_line():
    net = gpt(vocab_size=63, context_length=16, embed_dim=32, depth=2, num_heads=2,
              num_blocks=2)
    with pytest.raises(ConfigError, match=r"context of 17 tokens .* context_length=16") as err:
        net(torch.zeros(1, 17, dtype=torch.int64))
    assert len(str(err.value).splitlines()) == 1


def test_gpt_pair_has_linear_token_adapters_and_every_mask_runs():
    hybrid = build_hybrid(model_cfg("gpt_kjv", "kjv"))
    assert [m[0].in_features for m in hybrid.adapters.to_student] == [128, 128]
    assert [m[0].out_features for m in hybrid.adapters.to_student] == [96, 96]
    tokens = torch.randint(0, 63, (2, 128))
    with torch.no_grad():
        assert torch.equal(hybrid(tokens, "TTT"), hybrid.teacher(tokens))
        assert torch.equal(hybrid(tokens, "SSS"), hybrid.student(tokens))
        assert hybrid(tokens, "STS").shape == (2, 128, 63)


@pytest.mark.parametrize("loss", ["pwl", "kd", "paper"])
def test_lm_pair_trains_both_phases_at_full_size(loss, tmp_path):
    teacher = tmp_path / "teacher"
    metrics = train(compose_cfg("train", [*LM_FAST, "phase=teacher", f"run_dir={teacher}"]))
    assert metrics["val/bpc"] == pytest.approx(metrics["val/bpc"])  # finite
    assert 0 < metrics["test/bpc"] < 2 * math.log2(63)
    metrics = train(compose_cfg("train", [*LM_FAST, "phase=distill", f"loss={loss}",
                                          f"teacher={teacher}",
                                          f"run_dir={tmp_path / 'distill'}"]))
    assert all(math.isfinite(v) for k, v in metrics.items() if k.startswith("train/loss"))
    assert (tmp_path / "distill" / "stages.csv").is_file()


def _lm_hybrid():
    torch.manual_seed(0)
    hybrid = build_hybrid(model_cfg("gpt_kjv", "kjv", context_length=16)).eval()
    with torch.no_grad():  # adapters off their init, so every switch changes the answer
        for p in hybrid.adapters.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hybrid


def test_shared_prefix_stages_on_sequences_equal_one_forward_per_mask():
    hybrid = _lm_hybrid()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 63, (3, 16), generator=g),
                torch.randint(0, 63, (3, 16), generator=g)) for _ in range(2)]
    result = evaluate_stages(hybrid, batches, ["all"])
    assert result.metric == "bpc" and result.samples == 2 * 3 * 16
    n = hybrid.num_blocks
    assert result.block_runs < result.naive_block_runs == 2 * 2**n * n
    for row in result.rows:
        nats, hits = 0.0, 0
        with torch.no_grad():
            for tokens, nxt in batches:
                logits = hybrid(tokens, row.mask)
                nats += torch.nn.functional.cross_entropy(
                    logits.reshape(-1, 63), nxt.reshape(-1), reduction="sum").item()
                hits += (logits.argmax(-1) == nxt).sum().item()
        assert row.bpc == pytest.approx(nats / 96 / math.log(2), rel=1e-6)
        assert row.accuracy == hits / 96


def test_lm_stage_files_carry_bpc_and_name_it_the_headline(tmp_path):
    hybrid = _lm_hybrid()
    tokens = torch.randint(0, 63, (2, 16))
    result = evaluate_stages(hybrid, [(tokens, tokens.roll(-1, 1))], ["prefix"])
    paths = write_stages([result], tmp_path)
    header = paths["csv"].read_text().splitlines()[0].split(",")
    assert header == [*COLUMNS, "bpc"]
    doc = json.loads(paths["json"].read_text())
    assert (doc["metric"], doc["higher_is_better"]) == ("bpc", False)
    rows = read_stages(paths["csv"])
    assert [r.bpc for r in rows] == [r.bpc for r in result.rows]
    assert metric_of_rows(rows) is BPC
    # Lower is better: the prefix area is the mean bpc, and the best mask has the least.
    assert result.prefix_auc == pytest.approx(sum(r.bpc for r in rows) / len(rows))
    assert BPC.best({r.mask: r.bpc for r in rows}) == min(rows, key=lambda r: r.bpc).mask


def test_checkpoint_on_the_prefix_area_must_minimise_bpc(tmp_path):
    teacher = tmp_path / "teacher"
    train(compose_cfg("train", [*LM_FAST, "phase=teacher", f"run_dir={teacher}"]))
    with pytest.raises(ConfigError, match=r"mode=max but stages/prefix_auc is bits per "
                                          r"character .*mode=min"):
        train(compose_cfg("train", [*LM_FAST, "phase=distill", f"teacher={teacher}",
                                    "callbacks.model_checkpoint.mode=max",
                                    f"run_dir={tmp_path / 'distill'}"]))


@pytest.mark.parametrize("table,masks", [
    ({"SS": 3.0, "TS": 2.0, "ST": 2.9, "TT": 1.0}, ["SS", "TS", "TT"]),
    ({"SS": 3.0, "TS": 2.9, "ST": 2.0, "TT": 1.0}, ["SS", "ST", "TT"])])
def test_planner_minimises_the_area_under_bits_per_character(table, masks):
    order, area = best_order(table, [1, 1], BPC)
    assert list(order.masks) == masks
    assert area == pytest.approx(3.0 + 2.0)


def test_report_tabulates_bits_per_character(tmp_path):
    hybrid = _lm_hybrid()
    tokens = torch.randint(0, 63, (2, 16))
    result = evaluate_stages(hybrid, [(tokens, tokens.roll(-1, 1))], ["prefix"])
    write_stages([result], tmp_path / "runs" / "a", stem="stages_test")
    runs = report([tmp_path / "runs"], tmp_path / "report")
    assert runs[0].metric is BPC
    text = (tmp_path / "report" / "report.md").read_text()
    assert text.startswith("# Bits per character at every partial-teacher stage")
    student = next(r.bpc for r in result.rows if r.mask == "SSS")
    assert f"| student | {student:.3f} |" in text
    assert (tmp_path / "report" / "bpc_vs_k.png").is_file()


def test_load_curve_of_bits_per_character_counts_from_the_first_answer():
    bpc = {"SS": 3.0, "TS": 2.5, "TT": 2.0}
    curve = load_curve([(1.0, "SS"), (2.0, "TS"), (4.0, "TT")], bpc, metric=BPC)
    assert curve.time_to_teacher_s == 4.0
    # 1 s at 3.0, then 2 s at 2.5, over the 3 s after the first answer.
    assert curve.mean_accuracy_load == pytest.approx((3.0 + 5.0) / 3)
    assert curve.mean_accuracy_window is None


@pytest.fixture(scope="module")
def lm_distill_run(tmp_path_factory):
    """A teacher and a PWL distillation of the LM pair, a few batches each."""
    root = tmp_path_factory.mktemp("lm")
    train(compose_cfg("train", [*LM_FAST, "phase=teacher", f"run_dir={root / 'teacher'}"]))
    train(compose_cfg("train", [*LM_FAST, "phase=distill", f"teacher={root / 'teacher'}",
                                "test=false", f"run_dir={root / 'distill'}"]))
    return root / "distill"


def test_plan_and_evaluate_take_bits_per_character(lm_distill_run, tmp_path):
    from pwl.evaluate import evaluate
    from pwl.plan import plan

    data = ["data=kjv", "data.source=synthetic"]  # runs trained in-process save no .hydra
    rows = plan(compose_cfg("plan", [f"checkpoint={lm_distill_run}", f"out={tmp_path}",
                                     "device=cpu", "limit_batches=2", *data]))
    table = read_stages(tmp_path / "stages_all_val.csv")
    bpc = {r.mask: r.bpc for r in table}
    assert len(bpc) == 8 and all(v > 0 for v in bpc.values())
    # The plan holds the least area under bpc of all orders of its table.
    order, area = best_order(bpc, [1, 1, 1], BPC)
    assert all(r.bpc == bpc[r.mask] for r in rows)
    by_order = {r.order: r.mean_bpc for r in rows}
    assert by_order["plan"] <= min(by_order["prefix"], by_order["suffix"]) + 1e-12
    assert read_plan_rows(tmp_path / "plan.csv") == rows
    evaluate(compose_cfg("evaluate", [f"checkpoint={lm_distill_run}", "split=test",
                                      "orders=[prefix]", "limit_batches=2", "device=cpu",
                                      f"out={tmp_path / 'eval'}", *data]))
    doc = json.loads((tmp_path / "eval" / "stages.json").read_text())
    assert (doc["metric"], doc["split"]) == ("bpc", "test")
    masks = (tmp_path / "eval" / "masks.csv").read_text().splitlines()
    assert masks[0].endswith(",bpc") and len(masks) == 1 + 4


def test_evaluating_on_windows_of_another_length_is_one_clear_line():
    with pytest.raises(ConfigError, match=r"^the data gives windows of \[32\] but the model "
                                          r"expects \[16\]; pass the data config"):
        evaluate_on_split(_lm_hybrid(), synthetic(context_length=32), "val", "prefix",
                          input_shape=[16])
