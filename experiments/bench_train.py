"""Training and evaluation throughput, each against its compute floor and a naive implementation.

    python experiments/bench_train.py [--pairs default resnet vgg vit] [--modes random all_prefix]
                                      [--batch 128] [--rounds 5] [--steps 3] [--eval]
                                      [--levers | --levers-only]
                                      [--switches channels_last+bf16]
                                      [--out experiments/results/bench_train]

Training, per model pair and cross-path mode (``random``: one random mixed mask per
step, ``loss=pwl``; ``all_prefix``: every prefix mask, ``loss=pwl_all``), four
variants on the same batch:

- step: the distillation step as ``DistillModule`` runs it (mixed paths continue from
  the cached feature at their first switch), with the optimizer step;
- naive: the same step with every mixed path run from the input;
- baseline: a student cross-entropy step plus a teacher forward (no grad);
- floor: the compute the step cannot avoid, each part timed alone: teacher forward
  (no grad), student forward/backward, and every mixed path's suffix forward/backward
  from the cached feature, on the masks the step itself ran.

Apart from the floor, the adapter conversions of the feature terms (sync and
reconstruction: 6 per boundary whose adapters are learnable, none where both are
identities) are timed alone, forward and backward, so that ``step / (floor + adapters)``
shows what is left for the loss maths and the optimizer on pairs with learnable adapters.

``--switches`` turns speed switches on for all four (default: plain fp32, contiguous).
The table gives images/s of the step, overhead = step / baseline, step / floor,
floor / baseline (the least overhead any implementation of the step's compute can have)
and the naive speed-up = naive / step. With ``--eval``, stage evaluation of every mask
(``pwl.evaluate orders=[all]``) with the shared-prefix ``StageEvaluator`` is timed
against one forward per mask from the input, with the blocks each runs.

With ``--levers``, the speed switches of a run (``channels_last``, bf16 autocast as
``trainer.precision=bf16-mixed`` applies it, and both, which is what the defaults give on a
CPU with AVX512-BF16) are timed on the teacher's cross-entropy step and on the
distillation step of each pair, on the first of ``--modes``, one step of each variant per
round. Each comparison of ``COMPARISONS`` (a switch against fp32, channels_last where bf16
is on, pwl's mse against torch's) is the median of its per-round ratios with a 95%
bootstrap interval (``levers.csv|json``).

Variants alternate within rounds so machine noise hits all of them alike; times are
medians. Inputs are random tensors of the data's shape, so data loading is not
measured. Results go to ``--out`` as ``train.csv|json`` and ``eval.csv|json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from pwl import speed
from pwl.build import build_hybrid, build_teacher
from pwl.config import to_dict
from pwl.hybrid import HybridNet
from pwl.lit import DistillModule
from pwl.losses import DistillOutputs
from pwl.masks import first_switch, masks_for_order
from pwl.stages import StageEvaluator

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
OUT = ROOT / "experiments" / "results" / "bench_train"

# Model pairs as (model config, data config, overrides). "default" is the conf model on
# Fashion-MNIST's shape; the others are the reference code's shapes on 3x32x32.
# model.adapter=identity_if_equal follows the reference, which converts only where
# feature shapes differ, so the comparison with it is like for like.
PAIRS: dict[str, tuple[str, str, list[str]]] = {
    "default": ("resnet_narrow", "fashion_mnist", []),
    "resnet": ("resnet", "cifar10", [
        "model.teacher.depths=[3,4,6,3]", "model.teacher.widths=[32,64,128,256]",
        "model.student.depths=[1,1,1,1]", "model.student.widths=[32,64,128,256]"]),
    "vgg": ("vgg", "cifar10", [
        "model.teacher.depths=[2,2,3,3,3]", "model.teacher.widths=[64,128,256,512,512]",
        "model.student.depths=[1,1,1,1,1]", "model.student.widths=[64,128,256,512,512]"]),
    "vit": ("vit", "cifar10", [
        *(f"model.{role}.{key}={value}" for role in ("teacher", "student")
          for key, value in (("embed_dim", 192), ("num_heads", 3), ("patch_size", 4),
                             ("num_blocks", 6))),
        "model.teacher.depth=12", "model.student.depth=6"]),
}
# Cross-path mode -> the loss preset that trains with it.
MODES = {"random": "pwl", "all_prefix": "pwl_all"}
TRAIN_VARIANTS = ("step", "naive", "baseline", "floor")
FLOOR_PARTS = ("teacher", "student", "suffixes")


@dataclass
class RecordedOutputs(DistillOutputs):
    """DistillOutputs that note the mixed masks the loss asks for, so that the floor
    times exactly the paths the step ran."""

    asked: list[str] = field(default_factory=list, repr=False)

    def mixed_logits(self, mask: str) -> torch.Tensor:
        self.asked.append(mask)
        return super().mixed_logits(mask)


@dataclass
class NaiveOutputs(RecordedOutputs):
    """Runs every mixed path from the input, as an implementation without caching would."""

    def mixed_logits(self, mask: str) -> torch.Tensor:
        self.asked.append(mask)
        return self.hybrid(self.images, mask)


@dataclass
class TrainRow:
    """One (pair, mode) of the training benchmark; times are medians in ms per step.

    ``floor_ms`` is the median of the floor's totals; its parts (teacher, student,
    suffixes) are medians of their own, so they need not add up to it exactly.
    ``step_masks[i]`` are the distinct mixed masks the i-th timed step ran and
    ``floor_masks[i]`` those its floor timed.
    """

    pair: str
    mode: str
    switches: str
    num_blocks: int
    batch: int
    timed_steps: int
    masks_per_step: float
    step_ms: float
    naive_ms: float
    baseline_ms: float
    floor_ms: float
    teacher_ms: float
    student_ms: float
    suffixes_ms: float
    adapters_ms: float
    images_per_s: float
    overhead: float
    step_over_floor: float
    step_over_floor_adapters: float
    floor_over_baseline: float
    naive_speedup: float
    step_masks: list[list[str]]
    naive_masks: list[list[str]]
    floor_masks: list[list[str]]


@dataclass
class LeverRow:
    """One comparison of the levers benchmark on one pair and step (``teacher``: the
    teacher's cross-entropy step; ``distill``: the distillation step): the medians in ms per
    step of ``lever`` and of ``base``, and the median over rounds of the per-round ratio
    lever / base with its 95% bootstrap interval (below 1: the lever is faster)."""

    pair: str
    mode: str
    step: str
    lever: str
    base: str
    batch: int
    rounds: int
    lever_ms: float
    base_ms: float
    ratio: float
    ratio_low: float
    ratio_high: float


@dataclass
class EvalRow:
    """One pair of the evaluation benchmark; times are medians in ms per batch."""

    pair: str
    num_blocks: int
    masks: int
    batch: int
    timed_batches: int
    shared_ms: float
    naive_ms: float
    shared_images_per_s: float
    naive_images_per_s: float
    speedup: float
    block_runs: int
    naive_block_runs: int


def compose_pair(pair: str, loss: str = "pwl") -> DictConfig:
    """The training config of ``pair`` (a key of PAIRS) with the loss preset ``loss``."""
    model, data, overrides = PAIRS[pair]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", [f"model={model}", f"data={data}", f"loss={loss}",
                                 "model.adapter=identity_if_equal", *overrides])


def random_batch(cfg: DictConfig, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, C, H, W) of the pair's input shape and labels (B,)."""
    x = torch.randn(batch, *cfg.model.input_shape)
    return x, torch.randint(0, cfg.data.num_classes, (batch,))


def autocast(bf16: bool) -> torch.autocast:
    """bf16 autocast on the CPU as Lightning's ``bf16-mixed`` applies it (forward and loss
    inside, backward and optimizer outside); a no-op when ``bf16`` is false."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def distill_step(module: DistillModule, opt: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor, outputs: type[RecordedOutputs],
                 bf16: bool = False) -> tuple[float, list[str]]:
    """One ``DistillModule.distill_step`` (the step training runs) and the optimizer step.

    Returns:
        seconds, and the distinct mixed masks the loss asked for.
    """
    start = time.perf_counter()
    with autocast(bf16):
        total, _, out = module.distill_step((x, y), outputs)
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return time.perf_counter() - start, list(dict.fromkeys(out.asked))


def baseline_step(module: DistillModule, opt: torch.optim.Optimizer, x: torch.Tensor,
                  y: torch.Tensor, bf16: bool = False) -> float:
    """Seconds of a teacher forward (no grad) plus a student cross-entropy step."""
    start = time.perf_counter()
    with autocast(bf16):
        with torch.no_grad():
            module.hybrid.teacher.forward_intermediates(x)
        loss = F.cross_entropy(module.hybrid.student(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def floor_parts(hybrid: HybridNet, x: torch.Tensor, y: torch.Tensor,
                masks: Sequence[str], bf16: bool = False) -> dict[str, float]:
    """Seconds of the work a distillation step on ``masks`` cannot avoid, each part alone.

    The parts are the teacher forward (no grad), the student forward/backward and, per
    mixed mask, its suffix forward/backward from the cached feature before its first
    switch (as ``DistillOutputs.mixed_logits`` starts it). The loss terms' own maths and
    the optimizer step are left out: they are part of what step / floor exposes.

    Returns:
        ``teacher``, ``student`` and ``suffixes`` (the sum over masks) in seconds.
    """
    hybrid.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with autocast(bf16), torch.no_grad():
        teacher_feats = hybrid.teacher.forward_intermediates(x)
    teacher = time.perf_counter() - start
    start = time.perf_counter()
    with autocast(bf16):
        student_feats = hybrid.student.forward_intermediates(x)
        loss = F.cross_entropy(student_feats[-1], y)
    loss.backward()
    student = time.perf_counter() - start
    suffixes = 0.0
    for mask in masks:
        switch = first_switch(mask)
        if switch is None:  # a pure mask reuses the cached logits: no suffix to run
            continue
        cached = (teacher_feats if mask[0] == "T" else student_feats)[switch - 1].detach()
        # The step's suffix backward ends at a cached student feature (the student's own
        # backward is counted once above); a teacher feature needs no gradient.
        cached.requires_grad_(mask[0] == "S")
        hybrid.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with autocast(bf16):
            loss = F.cross_entropy(hybrid.forward_from(switch - 1, cached, mask), y)
        loss.backward()
        suffixes += time.perf_counter() - start
    return {"teacher": teacher, "student": student, "suffixes": suffixes}


FEATURE_TERMS = ("feature_sync", "feature_recon")


def adapter_conversions(hybrid: HybridNet, x: torch.Tensor, terms: Sequence[str],
                        bf16: bool = False) -> tuple[float, int]:
    """Seconds of the adapter conversions the feature terms ``terms`` run, forward and
    backward, timed alone; and how many outputs they give.

    Per boundary whose adapters are learnable: ``to_S(t_i)`` and ``to_T(s_i)`` for sync,
    and ``to_T(to_S(t_i))`` and ``to_S(to_T(sg(s_i)))`` for the
    reconstruction. Gradients of ones stand in for the distances' (made before the clock
    starts, like the feature they convert into), so the distances themselves stay out.
    Boundaries whose adapters are both identities convert nothing.
    """
    sync, recon = (name in terms for name in FEATURE_TERMS)
    learnable = [i for i in range(hybrid.num_blocks - 1) if not hybrid.adapters.is_identity(i)]
    if not learnable or not (sync or recon):
        return 0.0, 0
    with autocast(bf16), torch.no_grad():
        teacher_feats = hybrid.teacher.forward_intermediates(x)
        student_feats = hybrid.student.forward_intermediates(x)
    ones = {"S": [torch.ones_like(f) for f in student_feats],
            "T": [torch.ones_like(f) for f in teacher_feats]}
    hybrid.zero_grad(set_to_none=True)
    start = time.perf_counter()
    outs, grads = [], []
    with autocast(bf16):
        for i in learnable:
            s = student_feats[i].detach().requires_grad_(sync)
            for space, out in _conversions(hybrid, i, teacher_feats[i], s, sync, recon):
                outs.append(out)
                grads.append(ones[space][i])
    torch.autograd.backward(outs, grads)
    return time.perf_counter() - start, len(outs)


def _conversions(hybrid: HybridNet, i: int, t: torch.Tensor, s: torch.Tensor, sync: bool,
                 recon: bool) -> list[tuple[str, torch.Tensor]]:
    """The feature terms' conversions at boundary ``i`` (see ``adapter_conversions``), each
    with the space ('S'/'T') it lands in."""
    outs = []
    if sync:
        outs += [("S", hybrid.convert(i, t, "S")), ("T", hybrid.convert(i, s, "T"))]
    if recon:
        outs.append(("T", hybrid.convert(i, hybrid.convert(i, t, "S"), "T")))
        outs.append(("S", hybrid.convert(i, hybrid.convert(i, s.detach(), "T"), "S")))
    return outs


def step_seed(seed: int, round_index: int, step: int, steps: int) -> int:
    """The RNG seed of a timed step: the step and the naive variant draw the same masks."""
    return seed + round_index * steps + step


def ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1e3


def distill_module(cfg: DictConfig, switches: str,
                   seed: int) -> tuple[DistillModule, torch.optim.Optimizer]:
    """The pair's distillation module in train mode, with the layout of ``switches`` (a key
    of LEVERS), and an SGD optimizer over what it trains. The same seed gives the same
    weights whatever the switches."""
    torch.manual_seed(seed)
    module = DistillModule(to_dict(cfg.model), to_dict(cfg.loss), to_dict(cfg.optim))
    module.hybrid.train()
    if LEVERS[switches].get("channels_last", False):
        speed.use_channels_last(module)
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1e-3,
                          momentum=0.9)
    return module, opt


def bench_train(pair: str, mode: str, batch: int, rounds: int, steps: int,
                seed: int = 0, switches: str = "fp32") -> TrainRow:
    """Times the four variants of the module docstring on one pair and cross-path mode,
    all four with the speed switches ``switches`` (a key of LEVERS) turned on."""
    cfg = compose_pair(pair, MODES[mode])
    module, opt = distill_module(cfg, switches, seed)
    bf16 = LEVERS[switches].get("bf16", False)
    got = module.loss.terms["cross_path"].mode
    if got != mode:
        raise SystemExit(f"loss={MODES[mode]} trains cross_path.mode={got!r}, not {mode!r}; "
                         "update MODES in experiments/bench_train.py")
    x, y = random_batch(cfg, batch)

    # Warm-up: allocator growth and kernel selection stay out of the timings.
    _, warm_masks = distill_step(module, opt, x, y, RecordedOutputs, bf16)
    distill_step(module, opt, x, y, NaiveOutputs, bf16)
    baseline_step(module, opt, x, y, bf16)
    floor_parts(module.hybrid, x, y, warm_masks, bf16)

    terms = [name for name in module.loss.active if name in FEATURE_TERMS]
    adapter_conversions(module.hybrid, x, terms, bf16)
    times: dict[str, list[float]] = {k: [] for k in (*TRAIN_VARIANTS, "adapters")}
    times |= {f"floor_{part}": [] for part in FLOOR_PARTS}
    masks: dict[str, list[list[str]]] = {"step": [], "naive": [], "floor": []}
    for r in range(rounds):
        round_masks = []
        for s in range(steps):
            torch.manual_seed(step_seed(seed, r, s, steps))
            seconds, asked = distill_step(module, opt, x, y, RecordedOutputs, bf16)
            times["step"].append(seconds)
            round_masks.append(asked)
        masks["step"] += round_masks
        for s in range(steps):
            torch.manual_seed(step_seed(seed, r, s, steps))
            seconds, asked = distill_step(module, opt, x, y, NaiveOutputs, bf16)
            times["naive"].append(seconds)
            masks["naive"].append(asked)
        times["baseline"] += [baseline_step(module, opt, x, y, bf16) for _ in range(steps)]
        for asked in round_masks:
            parts = floor_parts(module.hybrid, x, y, asked, bf16)
            for part, seconds in parts.items():
                times[f"floor_{part}"].append(seconds)
            times["floor"].append(sum(parts.values()))
            masks["floor"].append(list(asked))
            times["adapters"].append(adapter_conversions(module.hybrid, x, terms, bf16)[0])

    step, naive, baseline, floor = (ms(times[k]) for k in TRAIN_VARIANTS)
    return TrainRow(
        pair=pair, mode=mode, switches=switches, num_blocks=module.hybrid.num_blocks,
        batch=batch,
        timed_steps=rounds * steps,
        masks_per_step=statistics.mean(len(m) for m in masks["step"]),
        step_ms=step, naive_ms=naive, baseline_ms=baseline, floor_ms=floor,
        teacher_ms=ms(times["floor_teacher"]), student_ms=ms(times["floor_student"]),
        suffixes_ms=ms(times["floor_suffixes"]), adapters_ms=ms(times["adapters"]),
        images_per_s=batch / step * 1e3, overhead=step / baseline, step_over_floor=step / floor,
        step_over_floor_adapters=step / (floor + ms(times["adapters"])),
        floor_over_baseline=floor / baseline,
        naive_speedup=naive / step,
        step_masks=masks["step"], naive_masks=masks["naive"], floor_masks=masks["floor"])


# Speed switches timed by --levers, as a run turns them on: pwl.speed for the layout,
# autocast as Lightning's bf16-mixed precision plugin applies it.
LEVERS: dict[str, dict[str, bool]] = {
    "fp32": {},
    "channels_last": {"channels_last": True},
    "bf16": {"bf16": True},
    "channels_last+bf16": {"channels_last": True, "bf16": True},
    # the defaults with torch's F.mse_loss as the feature distance instead of pwl's own
    "channels_last+bf16+torch_mse": {"channels_last": True, "bf16": True, "torch_mse": True},
}
# (lever, base) pairs the levers section compares: each switch against plain fp32,
# channels_last where bf16 is on already (what it adds to the defaults), and pwl's mse
# against torch's under the defaults.
COMPARISONS = [("channels_last", "fp32"), ("bf16", "fp32"), ("channels_last+bf16", "fp32"),
               ("channels_last+bf16", "bf16"),
               ("channels_last+bf16", "channels_last+bf16+torch_mse")]


def median_interval(ratios: Sequence[float], draws: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """The median of paired ratios and its 95% bootstrap interval (percentiles of the
    medians of ``draws`` resamples)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios)))
                     for _ in range(draws))
    return (statistics.median(ratios), medians[int(0.025 * draws)],
            medians[int(0.975 * draws) - 1])


class LeverVariant:
    """A teacher module and a distillation module of one pair with one lever turned on.

    Both start from the same seed, so every variant trains the same weights."""

    def __init__(self, cfg: DictConfig, lever: str, seed: int) -> None:
        switches = LEVERS[lever]
        self.bf16 = switches.get("bf16", False)
        self.distill, self.distill_opt = distill_module(cfg, lever, seed)
        if switches.get("torch_mse", False):
            for term in self.distill.loss.terms.values():
                if getattr(term, "distance_name", None) == "mse":
                    term.distance = F.mse_loss
        # The teacher phase trains a teacher of its own: a copy, so its steps leave the
        # distillation's frozen teacher alone.
        torch.manual_seed(seed)
        self.teacher_net = build_teacher(to_dict(cfg.model)).train()
        self.teacher_net.requires_grad_(True)
        if switches.get("channels_last", False):
            speed.use_channels_last(self.teacher_net)
        self.teacher_opt = torch.optim.SGD(self.teacher_net.parameters(), lr=1e-3,
                                           momentum=0.9)

    def teacher_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        with autocast(self.bf16):
            loss = F.cross_entropy(self.teacher_net(x), y)
        self.teacher_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.teacher_opt.step()
        return time.perf_counter() - start

    def distill_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return distill_step(self.distill, self.distill_opt, x, y, RecordedOutputs, self.bf16)[0]


def bench_levers(pair: str, mode: str, batch: int, rounds: int, seed: int = 0,
                 comparisons: Sequence[tuple[str, str]] = tuple(COMPARISONS)) -> list[LeverRow]:
    """Times the teacher step and the distillation step of ``pair`` with each lever the
    comparisons name, one step of each variant per round, alternating; each comparison
    is the median of its per-round ratios, with a 95% bootstrap interval."""
    cfg = compose_pair(pair, MODES[mode])
    levers = list(dict.fromkeys(name for pair_ in comparisons for name in pair_))
    variants = {lever: LeverVariant(cfg, lever, seed) for lever in levers}
    x, y = random_batch(cfg, batch)
    for variant in variants.values():  # warm-up: kernel selection and allocator growth
        variant.teacher_step(x, y)
        variant.distill_step(x, y)
    times = {(lever, step): [] for lever in levers for step in ("teacher", "distill")}
    for r in range(rounds):
        for lever, variant in variants.items():
            times[lever, "teacher"].append(variant.teacher_step(x, y))
            torch.manual_seed(step_seed(seed, r, 0, 1))
            times[lever, "distill"].append(variant.distill_step(x, y))
    rows = []
    for step in ("teacher", "distill"):
        for lever, base in comparisons:
            ratios = [a / b for a, b in zip(times[lever, step], times[base, step], strict=True)]
            ratio, low, high = median_interval(ratios, seed=seed)
            rows.append(LeverRow(pair=pair, mode=mode, step=step, lever=lever, base=base,
                                 batch=batch, rounds=rounds, lever_ms=ms(times[lever, step]),
                                 base_ms=ms(times[base, step]), ratio=ratio, ratio_low=low,
                                 ratio_high=high))
    return rows


def naive_eval(hybrid: HybridNet, masks: Sequence[str], x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
    """Correct answers per mask, one forward from the input per mask."""
    with torch.no_grad():
        return torch.stack([(hybrid(x, mask).argmax(dim=1) == y).sum() for mask in masks])


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_eval(pair: str, batch: int, rounds: int, steps: int, seed: int = 0) -> EvalRow:
    """Times stage evaluation of every mask: the shared-prefix evaluator vs one forward per
    mask, on the same batch, alternating in rounds."""
    cfg = compose_pair(pair)
    torch.manual_seed(seed)
    hybrid = build_hybrid(to_dict(cfg.model)).eval()
    masks = masks_for_order("all", hybrid.num_blocks)
    x, y = random_batch(cfg, batch)
    evaluator = StageEvaluator(hybrid, ["all"])
    # Warm-up. The evaluator's block counts are reported per batch, so this batch may count.
    evaluator.update(x, y)
    naive_eval(hybrid, masks, x, y)
    shared: list[float] = []
    naive: list[float] = []
    for _ in range(rounds):
        shared += [timed(lambda: evaluator.update(x, y)) for _ in range(steps)]
        naive += [timed(lambda: naive_eval(hybrid, masks, x, y)) for _ in range(steps)]
    result = evaluator.result()
    shared_ms, naive_ms = ms(shared), ms(naive)
    return EvalRow(
        pair=pair, num_blocks=hybrid.num_blocks, masks=len(masks), batch=batch,
        timed_batches=rounds * steps, shared_ms=shared_ms, naive_ms=naive_ms,
        shared_images_per_s=batch / shared_ms * 1e3, naive_images_per_s=batch / naive_ms * 1e3,
        speedup=naive_ms / shared_ms, block_runs=result.block_runs // result.batches,
        naive_block_runs=result.naive_block_runs // result.batches)


def scalar_columns(row_type: type) -> list[str]:
    """The columns of a row type that fit in a CSV cell (the mask lists go to JSON only)."""
    return [f.name for f in fields(row_type) if f.type in ("str", "int", "float")]


def write_rows(rows: Sequence[TrainRow | EvalRow | LeverRow], row_type: type, stem: Path,
               meta: dict[str, Any]) -> list[Path]:
    """Writes ``<stem>.csv`` (scalar columns) and ``<stem>.json`` (meta and whole rows)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    columns = scalar_columns(row_type)
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    json_path.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1)
                         + "\n")
    return [csv_path, json_path]


def train_table(rows: Sequence[TrainRow]) -> Table:
    switches = sorted({r.switches for r in rows})
    table = Table(title=f"distillation step ({', '.join(switches)})")
    for col in ("pair", "mode", "images/s", "overhead", "step/floor", "floor/baseline",
                "step/(floor+adapters)", "naive speed-up"):
        table.add_column(col, justify="left" if col in ("pair", "mode") else "right")
    for r in rows:
        table.add_row(r.pair, r.mode, f"{r.images_per_s:.1f}", f"{r.overhead:.2f}x",
                      f"{r.step_over_floor:.2f}", f"{r.floor_over_baseline:.2f}x",
                      f"{r.step_over_floor_adapters:.2f}", f"{r.naive_speedup:.2f}x")
    return table


def lever_table(rows: Sequence[LeverRow]) -> Table:
    table = Table(title="speed switches: lever / base in the same rounds, median and 95% "
                        "interval (below 1: faster)")
    for col in ("pair", "step", "lever", "base", "lever ms", "base ms", "ratio [95% CI]"):
        table.add_column(col, justify="left" if col in ("pair", "step", "lever", "base")
                         else "right")
    for r in rows:
        table.add_row(r.pair, r.step, r.lever, r.base, f"{r.lever_ms:.1f}", f"{r.base_ms:.1f}",
                      f"{r.ratio:.3f} [{r.ratio_low:.3f}, {r.ratio_high:.3f}]")
    return table


def eval_table(rows: Sequence[EvalRow]) -> Table:
    table = Table(title="stage evaluation, every mask")
    for col in ("pair", "masks", "shared images/s", "naive images/s", "speed-up",
                "blocks run", "naive blocks"):
        table.add_column(col, justify="left" if col == "pair" else "right")
    for r in rows:
        table.add_row(r.pair, str(r.masks), f"{r.shared_images_per_s:.1f}",
                      f"{r.naive_images_per_s:.1f}", f"{r.speedup:.2f}x", str(r.block_runs),
                      str(r.naive_block_runs))
    return table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--batch", type=int, default=128, help="images per step and per "
                        "evaluation batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each variant "
                        "per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--switches", choices=list(LEVERS)[:4], default="fp32",
                        help="speed switches of the training table's four variants "
                        "(channels_last+bf16 is what a run's defaults give on this CPU); "
                        "a table not in fp32 is written as train_<switches>.csv|json")
    section = parser.add_mutually_exclusive_group()
    section.add_argument("--eval", action="store_true", help="also time stage evaluation")
    section.add_argument("--eval-only", action="store_true", help="time stage evaluation only")
    parser.add_argument("--levers", action="store_true", help="also time the speed switches")
    parser.add_argument("--levers-only", action="store_true", help="time the speed switches "
                        "only")
    parser.add_argument("--eval-pairs", nargs="+", choices=list(PAIRS),
                        default=["default", "resnet"])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    for key in ("batch", "rounds", "steps"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, list]:
    """Runs the benchmark of the module docstring, prints its tables and writes its files.

    Args:
        argv: command-line arguments (None: ``sys.argv``).

    Returns:
        ``{"train": [TrainRow, ...], "eval": [EvalRow, ...], "levers": [LeverRow, ...]}``
        (a section not run is empty).
    """
    args = parse_args(argv)
    console = Console()
    meta = {"batch": args.batch, "rounds": args.rounds, "steps": args.steps, "seed": args.seed,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "processor": platform.processor(),
            "native_bf16": speed.cpu_has_native_bf16()}
    console.print(f"batch {args.batch}, {args.rounds} rounds x {args.steps} steps, "
                  f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    results: dict[str, list] = {"train": [], "eval": [], "levers": []}
    written: list[Path] = []
    if (args.levers or args.levers_only) and not args.eval_only:
        # One mode: the switches act on the same kernels in both, and loss=pwl trains random.
        for pair in args.pairs:
            results["levers"] += bench_levers(pair, args.modes[0], args.batch, args.rounds,
                                              args.seed)
        console.print(lever_table(results["levers"]))
        written += write_rows(results["levers"], LeverRow, args.out / "levers", meta)
    if not (args.eval_only or args.levers_only):
        for pair in args.pairs:
            for mode in args.modes:
                row = bench_train(pair, mode, args.batch, args.rounds, args.steps, args.seed,
                                  args.switches)
                console.print(f"  {pair} {mode}: {row.images_per_s:.1f} images/s, step "
                              f"{row.step_ms:.1f} ms, floor {row.floor_ms:.1f} ms")
                results["train"].append(row)
        console.print(train_table(results["train"]))
        stem = "train" if args.switches == "fp32" else f"train_{args.switches}"
        written += write_rows(results["train"], TrainRow, args.out / stem, meta)
    if args.eval or args.eval_only:
        for pair in args.eval_pairs:
            results["eval"].append(bench_eval(pair, args.batch, args.rounds, args.steps,
                                              args.seed))
        console.print(eval_table(results["eval"]))
        written += write_rows(results["eval"], EvalRow, args.out / "eval", meta)
    console.print("wrote: " + ", ".join(str(p) for p in written), soft_wrap=True)
    return results


if __name__ == "__main__":
    main()
