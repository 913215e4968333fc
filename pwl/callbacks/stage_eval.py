"""StageEval: the metric-vs-teacher-blocks curve during training and at test time.

The metric is the task's (``pwl.stages.metrics``): accuracy for a classifier, bits
per character (lower is better) for a language model.

After validation (every ``every_n_epochs`` epochs) the callback evaluates the
configured masks on the validation split with the shared-prefix evaluator of
``pwl.stages``, logs ``stages/<order>/k<k>`` and ``stages/prefix_auc``, and
rewrites ``stages.csv/json/png`` in the run directory with every epoch so far.
At test time the same goes to ``stages_test.*`` and ``stages_test/...``.
With a W&B logger it also logs the rows as a table and two line charts.

``stages/prefix_auc`` (``MONITOR``, the distillation checkpoint's metric, the mean
headline metric along the prefix order: maximised for accuracy, minimised for bits
per character) is logged at every evaluation whatever the orders: the prefix masks it needs are
evaluated with the configured ones (sharing their prefixes) but written and
logged as a curve only when an order asks for them. It is always measured on
the validation split: with ``split=test`` the per-epoch curve is logged under
``stages_test/...`` and the monitor comes from a separate pass over the
validation split, so the test split can never select a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

from pwl.errors import ConfigError
from pwl.masks import parse_orders
from pwl.stages import StageEvaluator, StageResult, StageRow, write_stages
from pwl.stages.files import columns_of, metric_of_rows
from pwl.stages.metrics import metric_of

SPLITS = ("val", "test")
# The scalar that distillation checkpoints monitor, and the order whose masks it needs.
MONITOR = "stages/prefix_auc"
MONITOR_ORDER = "prefix"


class StageEval(L.Callback):
    """Evaluates partial-teacher masks of ``pl_module.hybrid`` and records the curve.

    Args:
        orders: loading orders (prefix, suffix, window, all) and/or explicit masks.
        every_n_epochs: evaluate after validation every this many epochs (checkpoints on
            ``MONITOR`` can only be chosen at these epochs).
        split: the split of the per-epoch curve: ``val`` (the trainer's validation
            loader, limited like validation) or ``test`` (the data module's test loader;
            logged as ``stages_test/...``, never as ``MONITOR``).
        out_dir: where the files go (default: ``trainer.default_root_dir``).
        log_wandb: log a table and charts when a ``WandbLogger`` is attached.
    """

    def __init__(self, orders: str | Sequence[str] = ("prefix",), every_n_epochs: int = 1,
                 split: str = "val", out_dir: str | None = None, log_wandb: bool = True) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ConfigError(f"callbacks.stage_eval.every_n_epochs={every_n_epochs} must be >= 1")
        if split not in SPLITS:
            raise ConfigError(f"callbacks.stage_eval.split={split!r} is unknown; use one of "
                              f"{list(SPLITS)}")
        self.orders = [orders] if isinstance(orders, str) else list(orders)
        self.every_n_epochs = every_n_epochs
        self.split = split
        self.out_dir = out_dir
        self.log_wandb = log_wandb
        self.results: dict[str, list[StageResult]] = {"stages": [], "stages_test": []}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        hybrid = getattr(pl_module, "hybrid", None)
        if hybrid is None:
            raise ConfigError(f"StageEval needs a module with a .hybrid (HybridNet), got "
                              f"{type(pl_module).__name__}; leave callbacks.stage_eval out of "
                              "this phase (phase=teacher drops it)")
        # A typo in the orders fails here, not after the first training epoch.
        parse_orders(self.orders, hybrid.num_blocks)
        metric = metric_of(hybrid)
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.monitor == MONITOR \
                    and cb.mode != metric.direction:
                raise ConfigError(f"callbacks.model_checkpoint.mode={cb.mode} but {MONITOR} is "
                                  f"{metric.label} ({metric.direction} is better); set "
                                  f"callbacks.model_checkpoint.mode={metric.direction}")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        val = (trainer.val_dataloaders, trainer.num_val_batches, True)
        if self.split == "val":
            self._run(trainer, pl_module, *val, "stages", "stages", with_monitor=True)
            return
        # Not the trainer's loader: every process sees the whole split, nothing to sum.
        test = (_datamodule(trainer).test_dataloader(), None, False)
        self._run(trainer, pl_module, *test, "stages", "stages_test", with_monitor=False)
        monitor = self._evaluate(trainer, pl_module, *val, [MONITOR_ORDER], "monitor")
        if monitor is not None:
            pl_module.log(MONITOR, monitor.prefix_auc, sync_dist=True)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run(trainer, pl_module, trainer.test_dataloaders, trainer.num_test_batches, True,
                  "stages_test", "stages_test", with_monitor=False)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, loader: Any,
             limit: Any, shared: bool, stem: str, key: str, with_monitor: bool) -> None:
        """Evaluates the orders on ``loader``, records them under ``stem`` (the files) and
        logs them as ``<key>/...``; ``with_monitor`` adds ``MONITOR`` from the same pass."""
        orders = [*self.orders, MONITOR_ORDER] if with_monitor else self.orders
        evaluated = self._evaluate(trainer, pl_module, loader, limit, shared, orders, stem)
        if evaluated is None:
            return
        # The monitor's extra masks stay out of the curve: files hold the orders asked for.
        wanted = {(o.name, m) for o in parse_orders(self.orders, evaluated.num_blocks)
                  for m in o.masks}
        result = replace(evaluated, rows=[r for r in evaluated.rows
                                          if (r.order, r.mask) in wanted])
        self._record(stem, result)

        scalars = result.scalars(key)
        if with_monitor:
            scalars[MONITOR] = evaluated.prefix_auc
        # The values are already reduced over processes, so the sync is a mean of equal numbers.
        pl_module.log_dict(scalars, sync_dist=True)
        if trainer.is_global_zero:
            split = self.split if stem == "stages" else "test"
            out_dir = Path(self.out_dir or trainer.default_root_dir)
            write_stages(self.results[stem], out_dir, stem, meta={"split": split})
            if self.log_wandb:
                for logger in trainer.loggers:
                    if isinstance(logger, WandbLogger):
                        log_stages_to_wandb(logger, result.rows, key, trainer.global_step)

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, loader: Any,
                  limit: Any, shared: bool, orders: Sequence[str], what: str
                  ) -> StageResult | None:
        """The masks of ``orders`` on ``loader``; None (with a warning naming ``what``) when
        the loader holds no batch.

        ``shared``: the loader is the trainer's, so each process saw its own shard
        (DistributedSampler) and counts are summed over processes. As in Lightning's own
        validation, a shard may repeat a few images so that all shards have one size.
        """
        hybrid = pl_module.hybrid
        preprocess = _datamodule(trainer).preprocess
        if isinstance(loader, (list, tuple)):
            loader, limit = loader[0], (limit[0] if limit else None)
        elif isinstance(limit, (list, tuple)):
            limit = limit[0] if limit else None
        evaluator = StageEvaluator(hybrid, orders)
        was_training = hybrid.training
        hybrid.eval()
        try:
            # The trainer's precision context (e.g. bf16 autocast), as in its own validation.
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                for b, (images, labels) in enumerate(loader):
                    if limit is not None and b >= limit:
                        break
                    images = preprocess(images.to(pl_module.device), train=False)
                    evaluator.update(images, labels.to(pl_module.device))
        finally:
            hybrid.train(was_training)
        counts = evaluator.counts()
        if shared:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        if not evaluator.num_images(counts):
            rank_zero_warn(f"StageEval: no {what} batches to evaluate; nothing recorded")
            return None
        return evaluator.result(trainer.current_epoch, counts)

    def _record(self, stem: str, result: StageResult) -> None:
        """Keeps one evaluation per epoch: a repeated validation in an epoch replaces it."""
        kept = [r for r in self.results[stem] if r.epoch != result.epoch]
        self.results[stem] = [*kept, result]

    def state_dict(self) -> dict[str, Any]:
        """The curve so far, so a resumed run keeps the earlier epochs in its files."""
        return {stem: [asdict(res) for res in results] for stem, results in self.results.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.results = {
            stem: [StageResult(**{**res, "rows": [StageRow(**r) for r in res["rows"]]})
                   for res in results]
            for stem, results in state_dict.items()}


def _datamodule(trainer: L.Trainer) -> Any:
    """The trainer's pwl data module: StageEval preprocesses raw batches with it."""
    dm = trainer.datamodule
    if not hasattr(dm, "preprocess"):
        raise ConfigError("StageEval needs a pwl data module (with preprocess) passed to the "
                          f"trainer as datamodule=, got {type(dm).__name__}")
    return dm


def log_stages_to_wandb(logger: WandbLogger, rows: Sequence[StageRow], prefix: str,
                        step: int) -> None:
    """Logs the rows as ``<prefix>/table`` and two line charts (one series per order) of the
    headline metric (``<m>``: accuracy, or bpc): ``<m>_vs_teacher_blocks`` (mean over masks
    with the same k) and ``<m>_vs_mb_loaded``."""
    import wandb

    rows = list(rows)
    columns = columns_of(rows)
    metric = metric_of_rows(rows)
    m = metric.name
    table = wandb.Table(columns=columns, data=[[getattr(r, c) for c in columns] for r in rows])
    orders = list(dict.fromkeys(r.order for r in rows))
    by_k = []
    for order in orders:
        ks = sorted({r.k for r in rows if r.order == order})
        for k in ks:
            values = [r.value(metric) for r in rows if r.order == order and r.k == k]
            by_k.append([order, k, sum(values) / len(values)])
    by_mb = [[r.order, r.bytes_loaded / 2**20, r.value(metric)]
             for r in sorted(rows, key=lambda r: (orders.index(r.order), r.bytes_loaded))]
    k_table = wandb.Table(columns=["order", "teacher_blocks", m], data=by_k)
    mb_table = wandb.Table(columns=["order", "mb_loaded", m], data=by_mb)
    if prefix == "stages_test":
        log_curves_by_blocks(logger, by_k)
    logger.log_metrics({
        f"{prefix}/table": table,
        f"{prefix}/{m}_vs_teacher_blocks": wandb.plot.line(
            k_table, "teacher_blocks", m, stroke="order",
            title=f"{metric.label} vs teacher blocks loaded"),
        f"{prefix}/{m}_vs_mb_loaded": wandb.plot.line(
            mb_table, "mb_loaded", m, stroke="order",
            title=f"{metric.label} vs MB of teacher weights loaded"),
    }, step=step)


STEP_METRIC = "teacher_blocks_loaded"


def log_curves_by_blocks(logger: WandbLogger, by_k: Sequence[Sequence[Any]]) -> None:
    """Logs the final curves as ``curves/<order>`` against the step metric teacher_blocks_loaded.

    W&B's default line panels then draw the metric vs blocks loaded, one series per order,
    and overlay every run of a project or sweep without any dashboard work.
    """
    run = logger.experiment
    run.define_metric(STEP_METRIC)
    run.define_metric("curves/*", step_metric=STEP_METRIC)
    for k in sorted({k for _, k, _ in by_k}):
        run.log({STEP_METRIC: k,
                 **{f"curves/{order}": acc for order, kk, acc in by_k if kk == k}})
