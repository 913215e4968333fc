"""A test-only callback: every process writes the stage accuracies it computed."""

import json
from pathlib import Path

import lightning as L

from pwl.callbacks import StageEval


class RankReport(L.Callback):
    """Writes ``rank<r>.json``: {stem: [{mask: accuracy}, ...]} as this rank's StageEval saw it."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage_eval = next(c for c in trainer.callbacks if isinstance(c, StageEval))
        report = {stem: [{f"{r.order}:{r.mask}": r.accuracy for r in res.rows} for res in results]
                  for stem, results in stage_eval.results.items()}
        report["samples"] = {stem: [res.samples for res in results]
                             for stem, results in stage_eval.results.items()}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))
