"""Side work of the training loop, each in one handler (after MONAI's CheckpointSaver / StatsHandler / EarlyStop):
the CSV log, checkpoints, TensorBoard, the console, early stopping, the user's callback, and Ctrl-C.

The loop (training.loop.Loop) calls `on_step(loop, info)` after every optimizer step and `on_epoch_end(loop,
row)` after every epoch, in the order the handlers are listed; a handler that wants the run to stop sets
`loop.stop_reason`.
"""

from __future__ import annotations

import csv
import io
import signal
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import atomic_path
from ..io.images import overlay
from ..transforms import normalize
from ..version import machine_text
from .state import save_training_checkpoint

console = Console(stderr=True)
TB_IMAGE_EVERY = 5  # epochs between validation overlay images in TensorBoard (and the first epoch)


class Callback:
    def on_step(self, loop, info: dict) -> None:
        """After every optimizer step."""

    def on_epoch_end(self, loop, row: dict) -> None:
        """After every epoch's validation, with its log row."""

    def close(self) -> None:
        """When the loop ends, however it ends."""


class CsvLog(Callback):
    """RUN/log.csv, one row per epoch, rewritten whole (atomically) after each."""

    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, loop, row):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(loop.state.log[0]))
        writer.writeheader()
        writer.writerows(loop.state.log)
        with atomic_path(self.path) as tmp:
            tmp.write_text(buf.getvalue())


class Checkpoints(Callback):
    """RUN/last after every epoch, RUN/best when the selection improved (training.loop), each with the training
    state; model.safetensors holds the validated weights (the moving average when on)."""

    def __init__(self, run: Path):
        self.run = run

    def on_epoch_end(self, loop, row):
        save_training_checkpoint(self.run / "last", loop.eval_module, loop.config(row["val_dice"]), *loop.snap)
        if loop.improved:
            save_training_checkpoint(self.run / "best", loop.eval_module, loop.config(row["val_dice"]), *loop.snap)


class TensorBoard(Callback):
    """RUN/tb: losses, Dice, lr, samples/s, and a validation overlay every TB_IMAGE_EVERY epochs."""

    def __init__(self, run: Path, purge_after: int):
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard is a dependency, but a broken install should not stop training
            console.print(f"[yellow]no TensorBoard logging ({e})[/]")
            return
        self.writer = SummaryWriter(str(run / "tb"), purge_step=purge_after + 1 if purge_after else None)

    def on_epoch_end(self, loop, row):
        if self.writer is None:
            return
        e = row["epoch"]
        self.writer.add_scalar("loss/train", row["train_loss"], e)
        self.writer.add_scalar("lr", row["lr"], e)
        self.writer.add_scalar("samples_per_s", row["samples_per_s"], e)
        if row["val_dice"] == row["val_dice"]:
            self.writer.add_scalar("dice/val", row["val_dice"], e)
        show = loop.feed.show
        if show is not None and (e == 1 or e % TB_IMAGE_EVERY == 0):
            self.writer.add_image("val/overlay", _val_overlay(loop, show), e, dataformats="HWC")
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


@torch.inference_mode()
def _val_overlay(loop, i: int) -> np.ndarray:
    va, plan, model = loop.feed.va, loop.plan, loop.eval_module  # the weights validated
    model.eval()
    x = normalize(va.images[i:i + 1].float() / 255, plan.mean, plan.std).to(loop.device)
    logits = model(x.contiguous(memory_format=torch.channels_last))
    p = logits.argmax(1)[0] > 0 if plan.classes else torch.sigmoid(logits)[0, 0] >= plan.threshold
    img = va.images[i].float().numpy() / 255
    pic = overlay(img if img.shape[0] == 3 else img[:1], va.masks[i, 0].numpy() > 0, p.cpu().numpy(), 10 ** 6)
    return pic.astype(np.float32) / 255


class ConsoleStatus(Callback):
    """The live progress bar (or, when stderr is not a terminal, one line an epoch)."""

    COLUMNS = (lambda: [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                        TextColumn("{task.fields[status]}")])

    def __init__(self, quiet: bool, limit: str, start: float):
        self.quiet = quiet
        self.bar = Progress(*ConsoleStatus.COLUMNS(), console=console, disable=quiet)
        self.bar.start()
        self.task = self.bar.add_task(f"training ({limit})", total=1.0, status="", completed=start)

    def on_step(self, loop, info):
        self.bar.update(self.task, completed=info["progress"])

    def on_epoch_end(self, loop, row):
        status = f"epoch {row['epoch']}  loss {row['train_loss']:.3f}  val Dice {row['val_dice']:.3f}"
        if loop.plan.select == "window":  # with "last" the kept weights are this epoch's
            status += f"  best {loop.state.best:.3f}"
        self.bar.update(self.task, completed=loop.progress(0), status=status)
        if not self.quiet and not console.is_terminal:  # a log file gets no live bar: one line an epoch
            console.print(f"{status}  ({loop.elapsed():.0f} s)", soft_wrap=True)

    def close(self):
        self.bar.stop()


class UserCallback(Callback):
    """`callback(event, info)` of the caller: "step" after every optimizer step, "epoch" after every epoch
    (the log row); both with `model`, the unwrapped live module (not its moving average); for other front ends
    and for tests."""

    def __init__(self, fn: Callable[[str, dict], None]):
        self.fn = fn

    def on_step(self, loop, info):
        self.fn("step", {"epoch": info["epoch"], "step": info["step"], "loss": info["loss"], "model": loop.module})

    def on_epoch_end(self, loop, row):
        self.fn("epoch", {**row, "model": loop.module})


class EarlyStopping(Callback):
    """Stop when the selection (training.loop: running mean of select_window validation Dice values) has not
    improved for `patience` epochs."""

    def __init__(self, patience: int | None):
        self.patience = patience

    def on_epoch_end(self, loop, row):
        if self.patience is not None and loop.feed.va.items and loop.state.bad_epochs >= self.patience:
            loop.stop_reason = loop.stop_reason or \
                f"early stop (no better validation Dice for {self.patience} epochs)"


class Interrupt:
    """SIGINT/SIGTERM set a flag that the loop reads between steps (so no step is cut in half and `last` is
    saved consistently); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.flag, self.old = False, {}

    def _handle(self, signum, frame):
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        self.old = {}
        return False


def print_summary(s: dict, unit: str) -> None:
    t = Table(title=f"medseg train: {s['run']}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    rows = [("epochs", str(s["epochs"])), ("stopped by", str(s["stopped"])), ("time", f"{s['seconds']:.0f} s"),
            ("epoch kept as best", str(s["best_epoch"])),  # the last one unless the plan's select is "window"
            (f"its val Dice (per {unit}, training size)", f"{s['best_val_dice']:.3f}"),
            ("last val Dice", f"{s['last_val_dice']:.3f}"),
            ("samples/s", f"{s['samples_per_s']:.1f} ({s['data_wait_share']:.0%} of it waiting for data)"),
            ("machine", machine_text(s["machine"], s["threads"], s["device"], s["bf16"])),
            ("checkpoints", f"{s['best']}  {s['last']}"), ("log", f"{s['run']}/log.csv, TensorBoard: {s['run']}/tb")]
    if s["processes"] > 1:
        rows.insert(3, ("processes", str(s["processes"])))
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
