"""ProgressiveModel.generate: text from a language-model bundle while its teacher loads."""

import pytest
import torch

from pwl.build import build_hybrid
from pwl.config import to_dict
from pwl.errors import ConfigError, DataError
from pwl.runtime import ProgressiveModel, load_bundle_hybrid, read_manifest, write_bundle
from tests.conftest import compose_cfg, export_tiny

LM = ["experiment=lm_kjv", "data.source=synthetic", "data.context_length=16"]


@pytest.fixture(scope="module")
def lm_bundle(tmp_path_factory):
    cfg = compose_cfg("train", LM)
    model_cfg, data_cfg = to_dict(cfg.model), to_dict(cfg.data)
    torch.manual_seed(0)
    hybrid = build_hybrid(model_cfg).eval()
    path = tmp_path_factory.mktemp("lm") / "bundle"
    write_bundle(hybrid, model_cfg, path, data_cfg=data_cfg)
    return path, data_cfg["vocab"]


def test_each_token_runs_wholly_on_one_mask_while_the_teacher_loads(lm_bundle):
    bundle, vocab = lm_bundle
    prompt = text = "In the beginning"  # 16 characters: the model's whole window
    masks = []
    rate = read_manifest(bundle).teacher_bytes() / 0.5  # the teacher arrives in about 0.5 s
    with ProgressiveModel.open(bundle, bandwidth=rate) as model:
        model.start_loading()
        while not model.done and len(masks) < 5000:  # generating all the while it loads
            more, used = model.generate_with_masks(text[-16:], 10)
            text += more[16:]
            masks += used
        model.wait()
    order = ["SSS", "TSS", "TTS", "TTT"]
    assert masks[0] == "SSS" and len(set(masks)) >= 3 and all(m in order for m in masks)
    assert [order.index(m) for m in masks] == sorted(order.index(m) for m in masks)
    # each token is the argmax of the whole hybrid run on its own mask alone
    hybrid, _ = load_bundle_hybrid(bundle)
    ids = [vocab.index(c) for c in text]
    with torch.no_grad():
        for i, mask in enumerate(masks):
            at = len(prompt) + i
            window = torch.tensor([ids[at - 16:at]])
            assert int(hybrid(window, mask)[0, -1].argmax()) == ids[at], (i, mask)


def test_a_seeded_sample_repeats_on_the_same_mask(lm_bundle):
    bundle, _ = lm_bundle
    with ProgressiveModel.open(bundle) as model:
        first = model.generate("And God said", 30, seed=7, temperature=1.0)
        again = model.generate("And God said", 30, seed=7, temperature=1.0)
        other = model.generate("And God said", 30, seed=8, temperature=1.0)
    assert first == again and first != other


def test_a_prompt_outside_the_vocabulary_is_one_line(lm_bundle):
    bundle, _ = lm_bundle
    with ProgressiveModel.open(bundle) as model, pytest.raises(DataError) as caught:
        model.generate("caf\u00e9", 5)
    assert "'\u00e9'" in str(caught.value) and "\n" not in str(caught.value)


def test_an_image_bundle_cannot_generate(tmp_path):
    _, bundle = export_tiny(tmp_path / "bundle")
    with ProgressiveModel.open(bundle) as model, pytest.raises(ConfigError, match="language"):
        model.generate("x", 1)


def test_serve_prints_the_text_of_a_language_model_bundle_as_it_loads(lm_bundle, tmp_path):
    import json

    from tests.conftest import run_module

    bundle, _ = lm_bundle
    out = tmp_path / "serve"
    proc = run_module("pwl.serve", f"bundle={bundle}", f"hydra.run.dir={out}", "live=false",
                      "max_new_tokens=24", "prompt=And God said")
    assert proc.returncode == 0, proc.stderr
    generation = json.loads((out / "generation.json").read_text())
    assert generation["text"].startswith("And God said") and len(generation["masks"]) == 24
    assert generation["text"] in proc.stdout


def test_the_load_bench_answers_a_language_model_with_token_ids(lm_bundle):
    from pwl.bench_worker import measure

    bundle, _ = lm_bundle
    model_cfg = read_manifest(bundle).model
    result = measure({"variant": "bundle", "path": str(bundle), "model_cfg": model_cfg,
                      "full": True})
    assert result["final_mask"] == "TTT" and [m for _, m in result["events"]] == [
        "SSS", "TSS", "TTS", "TTT"]


def test_bench_gives_tokens_per_second_at_each_stage_of_the_loading_order(lm_bundle):
    from pwl.bench import Target, generation_rows

    bundle, _ = lm_bundle
    manifest = read_manifest(bundle)
    target = Target("lm", bundle, bundle, bundle, bundle, manifest.model)
    rows = generation_rows(target, tokens=4, repeats=3, first_token_s=0.25)
    assert [r["mask"] for r in rows] == manifest.loading_order == ["SSS", "TSS", "TTS", "TTT"]
    assert [r["first_token_s"] for r in rows] == [0.25, None, None, None]
    for r in rows:
        assert 0 < r["tokens_per_s_low"] <= r["tokens_per_s"] <= r["tokens_per_s_high"], r
