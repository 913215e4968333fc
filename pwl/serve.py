"""Serve a bundle: answer test images from the student at once while teacher blocks load.

    python -m pwl.serve bundle=<dir> [bandwidth=20MB] [mmap=true] [data=fashion_mnist]
    python -m pwl.serve bundle=https://host/path/bundle/ [cache_dir=true]

Test images stream through ``ProgressiveModel`` batch by batch from the moment
it opens; loading starts at once in the background. A live display shows the
blocks loaded, the running accuracy and the answers per second. The run
directory gets ``timeline.csv`` (one row per batch), ``timeline.png``
(accuracy vs time, a vertical line at each swap) and ``events.json``.

It then reports the accuracy over time of the load (``pwl.stages.curves``): the
time each stage became active with that stage's accuracy from the manifest,
time to first answer and to the teacher's accuracy, the mean accuracy over the
load and over a fixed window (the time the fp32 teacher's bytes take at
``bandwidth``), and, with ``monotonicity=true``, the share of the split's images
each swap turns from right to wrong (counted by the stage evaluator with the
bundle's stored weights, since each streamed image is answered on one mask only).
These go to ``curve.json``.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import to_absolute_path
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from pwl.cli import CONF_DIR, human_bytes, make_console, run_dir, user_errors_as_one_line
from pwl.config import parse_bandwidth
from pwl.data.registry import build_datamodule
from pwl.errors import ConfigError
from pwl.runtime.bundle import MANIFEST, Manifest, read_manifest
from pwl.runtime.materialise import load_bundle_hybrid
from pwl.runtime.progressive import LoadEvent, ProgressiveModel
from pwl.runtime.sources import Source, is_url, open_source, url_options
from pwl.schemas import check_app_config
from pwl.stages.curves import consecutive_pairs, load_curve
from pwl.stages.measure import evaluate_on_split

TIMELINE_COLUMNS = ("t", "stage", "mask", "batch_accuracy", "running_accuracy",
                    "answers_per_s", "answers")
RATE_WINDOW = 10  # batches over which answers per second are measured


def stream(model: ProgressiveModel, images: torch.Tensor, labels: torch.Tensor,
           preprocess: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
           max_seconds: float | None, max_batches: int | None, tail_batches: int,
           on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Answers batches of ``images`` (uint8, cycling through them) until a stop condition.

    Stops after ``max_seconds`` since open, after ``max_batches``, or once loading
    has ended and ``tail_batches`` batches were answered on the final mask.

    Returns:
        one timeline row per batch (see ``TIMELINE_COLUMNS``); ``running_accuracy``
        is the accuracy of all answers given on the row's mask so far.
    """
    rows: list[dict[str, Any]] = []
    window: deque[tuple[float, int]] = deque(maxlen=RATE_WINDOW)  # (start, answers)
    per_mask: dict[str, list[int]] = {}
    pos, answers, tail = 0, 0, 0
    while True:
        if pos >= len(labels):
            pos = 0
        began = model.elapsed()
        y = labels[pos:pos + batch_size]
        logits, mask = model.predict_with_mask(preprocess(images[pos:pos + batch_size]))
        pos += batch_size
        correct = int((logits.argmax(1).cpu() == y).sum())
        t = model.elapsed()
        window.append((began, len(y)))
        answers += len(y)
        seen = per_mask.setdefault(mask, [0, 0])
        seen[0] += correct
        seen[1] += len(y)
        row = {"t": t, "stage": mask.count("T"), "mask": mask,
               "batch_accuracy": correct / len(y), "running_accuracy": seen[0] / seen[1],
               "answers_per_s": sum(n for _, n in window) / max(t - window[0][0], 1e-9),
               "answers": answers}
        rows.append(row)
        if on_row is not None:
            on_row(row)
        if model.done and mask == model.mask:
            tail += 1
        if ((max_batches is not None and len(rows) >= max_batches)
                or (max_seconds is not None and t >= max_seconds)
                or (model.done and tail >= tail_batches)):
            return rows


def live_view(model: ProgressiveModel, row: dict[str, Any] | None) -> Table:
    """The live display: loading progress and the answers so far."""
    n = model.num_blocks
    events = model.events
    loaded_bytes = sum(e.bytes_read for e in events if e.block is not None and e.error is None)
    teacher_bytes = model.manifest.teacher_bytes()
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("mask", f"{model.mask}  (teacher blocks {model.stage}/{n})")
    table.add_row("loaded", ProgressBar(total=n, completed=model.stage, width=40))
    table.add_row("teacher bytes", f"{human_bytes(loaded_bytes)} / {human_bytes(teacher_bytes)}")
    table.add_row("weights in memory", human_bytes(model.resident_bytes()))
    if row is not None:
        table.add_row("answers", f"{row['answers']:,}  ({row['answers_per_s']:.0f}/s)")
        table.add_row("accuracy", f"batch {row['batch_accuracy']:.3f}  running on "
                      f"{row['mask']} {row['running_accuracy']:.4f}")
        table.add_row("elapsed", f"{row['t']:.2f} s")
    if model.error is not None:
        table.add_row("error", f"[red]{model.error}[/red]")
    return table


def write_timeline(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TIMELINE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v
                             for k, v in row.items()})


def plot_timeline(rows: list[dict[str, Any]], events: list[LoadEvent],
                  stage_accuracy: Mapping[str, float], path: Path) -> None:
    """Accuracy vs seconds since open; a vertical line at each swap (and at a failure)."""
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    t = [r["t"] for r in rows]
    ax.scatter(t, [r["batch_accuracy"] for r in rows], s=6, alpha=0.35, label="batch accuracy")
    ax.plot(t, [r["running_accuracy"] for r in rows], drawstyle="steps-post", lw=1.8,
            label="running accuracy on the current mask")
    for event in events[1:]:
        color = "tab:red" if event.error else "tab:gray"
        ax.axvline(event.t, color=color, ls="--", lw=1)
        label = f"block {event.block} failed" if event.error else event.mask
        ax.annotate(label, (event.t, 1.0), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=8, color=color)
    # The exported accuracy of each mask, drawn over the time that mask answered.
    good = [e for e in events if e.error is None]
    for event, until in zip(good, [e.t for e in good[1:]] + [max(t, default=0.0)]):
        if event.mask in stage_accuracy:
            ax.hlines(stage_accuracy[event.mask], event.t, until, colors="tab:green", lw=1,
                      ls=":")
    ax.set_xlabel("seconds since open")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("answers while teacher blocks load (dotted: exported stage accuracy)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summary_table(rows: list[dict[str, Any]], events: list[LoadEvent],
                  stage_accuracy: Mapping[str, float]) -> Table:
    """Per mask: when it took over, how many answers it gave, and their accuracy."""
    table = Table(title="answers per mask")
    for name in ("mask", "from (s)", "answers", "accuracy", "exported accuracy"):
        table.add_column(name, justify="left" if name == "mask" else "right")
    since = {e.mask: e.t for e in events if e.error is None}
    counts: dict[str, int] = {}
    previous = 0
    for row in rows:
        counts[row["mask"]] = counts.get(row["mask"], 0) + row["answers"] - previous
        previous = row["answers"]
    last = {row["mask"]: row for row in rows}
    for mask, count in counts.items():
        exported = stage_accuracy.get(mask)
        table.add_row(mask, f"{since.get(mask, 0.0):.2f}", f"{count:,}",
                      f"{last[mask]['running_accuracy']:.4f}",
                      f"{exported:.4f}" if exported is not None else "-")
    return table


def open_options(cfg: DictConfig) -> dict[str, Any]:
    """``ProgressiveModel.open``'s arguments from the serve config."""
    return {"bandwidth": cfg.bandwidth, "mmap": cfg.mmap, "device": cfg.device,
            "connections": int(cfg.get("connections") or 1), **url_options(cfg)}


def serve(cfg: DictConfig) -> list[dict[str, Any]]:
    """Streams the data split through the bundle while it loads; returns the timeline."""
    check_app_config(cfg, "serve")
    bundle = cfg.bundle if is_url(cfg.bundle) else Path(to_absolute_path(cfg.bundle))
    manifest = read_manifest(open_source(bundle, **url_options(cfg)))
    if manifest.data and manifest.data.get("vocab"):
        return serve_text(cfg, bundle, manifest)
    data_cfg, source = cfg.get("data"), None
    if data_cfg is not None:
        data_cfg = OmegaConf.to_container(data_cfg, resolve=True)
    else:
        data_cfg, source = manifest.data, f"{str(bundle).rstrip('/')}/{MANIFEST}"
    if data_cfg is None:
        raise ConfigError("the bundle stores no data config; pass one with data=<name> "
                          "(e.g. data=fashion_mnist)")
    dm = build_datamodule(data_cfg, saved_from=source)
    if list(dm.input_shape) != list(manifest.model["input_shape"]):
        raise ConfigError(f"data gives images of shape {list(dm.input_shape)} but the bundle's "
                          f"model takes {manifest.model['input_shape']}; pick the data "
                          "config it was trained on")
    if cfg.split not in dm.splits or not len(dm.splits[cfg.split]):
        raise ConfigError(f"split={cfg.split!r} is empty or unknown; use test or val")
    split = dm.splits[cfg.split]
    order = cfg.loading_order
    if OmegaConf.is_config(order):
        order = OmegaConf.to_container(order)
    stage_accuracy = manifest.stage_accuracies()
    out = run_dir()
    console = make_console()

    model = ProgressiveModel.open(bundle, **open_options(cfg))
    with model:
        model.start_loading(order)
        live = (Live(live_view(model, None), console=console, refresh_per_second=4)
                if cfg.live else None)
        with live or nullcontext():
            rows = stream(model, split.images, split.labels,
                          lambda images: dm.preprocess(images, train=False), cfg.batch_size,
                          cfg.max_seconds, cfg.max_batches, cfg.tail_batches,
                          on_row=(lambda row: live.update(live_view(model, row))) if live
                          else None)
    console.print()
    events = model.events
    write_timeline(rows, out / "timeline.csv")
    (out / "events.json").write_text(json.dumps([e.to_json() for e in events], indent=2) + "\n")
    plot_timeline(rows, events, stage_accuracy, out / "timeline.png")
    console.print(summary_table(rows, events, stage_accuracy))
    console.print(f"first answer {rows[0]['t']:.3f} s after open; final mask {model.mask} "
                  f"at {events[-1].t:.2f} s; outputs in {out}")
    if model.error is not None:
        raise model.error
    flips = (swap_flips(model.source, model.loading_order or [model.mask], dm, cfg.split)
             if cfg.get("monotonicity", True) else None)
    report = curve_report(events, stage_accuracy, rows[0]["t"], manifest,
                          parse_bandwidth(cfg.bandwidth), flips)
    (out / "curve.json").write_text(json.dumps(report, indent=2) + "\n")
    console.print(curve_summary(report))
    return rows


def serve_text(cfg: DictConfig, bundle: Path | str, manifest: Manifest) -> list[dict[str, Any]]:
    """A language-model bundle continues ``cfg.prompt`` while its teacher loads; the text is
    shown as it grows with the current stage and its recorded bits per character. Writes
    ``generation.json`` (the text, each token's mask) and ``events.json``; returns one row
    per chunk of tokens."""
    out = run_dir()
    console = make_console()
    values = manifest.stage_values()
    model = ProgressiveModel.open(bundle, **open_options(cfg))
    rows: list[dict[str, Any]] = []
    text, masks = cfg.prompt, []
    window = int(manifest.model["teacher"]["context_length"])

    def view() -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        bpc = values.get(model.mask)
        table.add_row("mask", f"{model.mask}  (teacher blocks {model.stage}/{model.num_blocks})"
                      + (f"  bpc {bpc:.3f}" if bpc is not None else ""))
        table.add_row("text", text[-600:])
        return table

    with model:
        model.start_loading(cfg.loading_order if cfg.loading_order is None
                            else OmegaConf.to_container(cfg.loading_order)
                            if OmegaConf.is_config(cfg.loading_order) else cfg.loading_order)
        live = Live(view(), console=console, refresh_per_second=8) if cfg.live else None
        with live or nullcontext():
            while len(masks) < cfg.max_new_tokens:
                began = model.elapsed()
                step = min(cfg.tokens_per_step, cfg.max_new_tokens - len(masks))
                more, used = model.generate_with_masks(text[-window:], step, seed=None
                                                       if cfg.seed is None else cfg.seed
                                                       + len(masks),
                                                       temperature=cfg.temperature)
                text += more[len(text[-window:]):]
                masks += used
                rows.append({"t": model.elapsed(), "tokens": len(masks), "mask": used[-1],
                             "tokens_per_s": step / max(model.elapsed() - began, 1e-9)})
                if live:
                    live.update(view())
        events = model.events
    (out / "generation.json").write_text(json.dumps(
        {"prompt": cfg.prompt, "text": text, "masks": masks, "rows": rows}, indent=2) + "\n")
    (out / "events.json").write_text(json.dumps([e.to_json() for e in events], indent=2) + "\n")
    if not cfg.live:
        console.print(text)
    console.print(f"{len(masks)} tokens on masks {' -> '.join(dict.fromkeys(masks))}; "
                  f"outputs in {out}")
    if model.error is not None:
        raise model.error
    return rows


def fp32_teacher_bytes(manifest: Manifest) -> int:
    """Bytes of the teacher at fp32: its files when stored at fp32, else 4 bytes per
    parameter (buffers such as BatchNorm statistics left out)."""
    if manifest.teacher_dtype == "fp32":
        return manifest.teacher_bytes()
    return 4 * int(manifest.params["teacher"])


def swap_flips(bundle: Path | Source, masks: list[str], dm: Any, split: str) -> list[float]:
    """Per swap of ``masks``, the share of ``split``'s images it turns from right to wrong
    (a URL's files are fetched again unless its cache holds them)."""
    hybrid, _ = load_bundle_hybrid(bundle)
    pairs = consecutive_pairs(masks)
    result = evaluate_on_split(hybrid, dm, split, masks, flip_pairs=pairs)
    return [result.flip_rate(*p) for p in pairs]


def curve_report(events: list[LoadEvent], stage_accuracy: Mapping[str, float],
                 first_answer_s: float, manifest: Manifest, rate: float | None,
                 flips: list[float] | None) -> dict[str, Any]:
    """The load's accuracy over time (``load_curve``) as JSON; {"error": why} when the
    manifest lacks the accuracy of a mask the load passed through."""
    window = fp32_teacher_bytes(manifest) / rate if rate else None
    try:
        curve = load_curve([(e.t, e.mask) for e in events if e.error is None], stage_accuracy,
                           first_answer_s, window)
    except ConfigError as e:
        return {"error": str(e), "flips": flips}
    return {**asdict(curve), "flips": flips}


def curve_summary(report: Mapping[str, Any]) -> str:
    if "error" in report:
        return f"accuracy over time: not computed ({report['error']})"
    reached = report["time_to_teacher_s"]
    text = (f"accuracy over time: mean {report['mean_accuracy_load']:.4f} over the load "
            f"({report['loaded_s']:.3f} s)")
    if report["window_s"] is not None:
        text += (f", {report['mean_accuracy_window']:.4f} over the fp32 teacher's load time "
                 f"({report['window_s']:.3f} s)")
    text += ("; teacher's accuracy at " + (f"{reached:.3f} s" if reached is not None
                                           else "no stage"))
    if report["flips"] is not None:
        text += ("; right->wrong per swap " + " ".join(f"{f:.2%}" for f in report["flips"]))
    return text


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="serve")
def main(cfg: DictConfig) -> None:
    user_errors_as_one_line(serve)(cfg)


if __name__ == "__main__":
    main()
