"""The training engine: exact resume, Ctrl-C, time budget, lock, early stopping, optimisers/schedules/sampling.

Runs use the LGG replica (3 patients x 5 slices, 64 px) trained at 32 px with a tiny U-Net, so each epoch takes
a fraction of a second; the checks are about behaviour and exact equality, not accuracy.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medseg.planning.plan import Plan
from medseg.training import loop as loop_mod, speed as speed_mod
from medseg.training.state import load_training_state, optimizer_from_tensors, optimizer_to_tensors
from medseg.data.sampling import epoch_pool, sample_indices
from medseg.training.optim import build_optimizer, build_schedule, lr_factor
from runs import train

from conftest import run_cli, write_lgg_replica

TINY = {"model_args": {"features": [8, 16, 32], "res_units": 1}}
KW = dict(image_size=32, batch_size=2, val_fraction=0.34, quiet=True)


@pytest.fixture(scope="module")
def lgg(tmp_path_factory) -> Path:
    return write_lgg_replica(tmp_path_factory.mktemp("data") / "kaggle_3m")


def weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / which / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


def sigint_at(epoch: int, step: int):
    """A training callback that sends this process SIGINT (Ctrl-C) at that step of that epoch."""
    def callback(event, info):
        if event == "step" and info["epoch"] == epoch and info["step"] == step:
            os.kill(os.getpid(), signal.SIGINT)
    return callback


def assert_clean(run: Path) -> None:
    stray = [p.name for p in run.rglob("*") if p.name.endswith((".tmp", ".old")) or p.name == ".lock"]
    assert not stray, stray


def test_resume_at_epoch_boundary_equals_uninterrupted(tmp_path, lgg):
    """constant schedule, no warm-up: 2 epochs, then `medseg train --resume RUN --epochs 4` == 4 epochs straight."""
    settings = {**TINY, "schedule": "constant", "warmup": 0.0}  # nothing that depends on the total length
    train(lgg, tmp_path / "straight", epochs=4, settings=settings, **KW)
    train(lgg, tmp_path / "split", epochs=2, settings=settings, **KW)
    assert run_cli("train", "--resume", str(tmp_path / "split"), "--epochs", "4") == 0
    assert_same_weights(tmp_path / "straight", tmp_path / "split")
    log = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert len(log) == 5 and json.loads((tmp_path / "split" / "plan.json").read_text())["epochs"] == 4
    assert_clean(tmp_path / "split")


def test_resume_mid_epoch_and_from_a_copied_checkpoint_equal_uninterrupted(tmp_path, lgg):
    """cosine over 4 epochs: (a) SIGINT in epoch 3 saves `last` at that step, resume finishes it; (b) the
    epoch-2 `last` of the uninterrupted run, copied aside and resumed. Both end with the same weights (the
    moving average, on by default, and the live ones) and the same optimizer state as the uninterrupted run."""
    straight, snap = tmp_path / "straight", tmp_path / "snap"

    def copy_at_epoch_2(event, info):
        if event == "epoch" and info["epoch"] == 2:
            snap.mkdir()
            shutil.copy(straight / "plan.json", snap / "plan.json")
            shutil.copytree(straight / "last", snap / "last")

    train(lgg, straight, epochs=4, settings=TINY, callback=copy_at_epoch_2, **KW)

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt, match="--resume"):
        train(lgg, cut, epochs=4, settings=TINY, callback=sigint_at(3, 5), **KW)
    _, state, _ = load_training_state(cut / "last")
    assert (state["epoch"], state["pos"]) == (2, 5) and state["ema_updates"] == 2 * 16 + 5  # EMA on: the default
    assert_clean(cut)
    train(resume=cut, quiet=True)
    train(resume=snap, quiet=True)
    for other in (cut, snap):
        assert_same_weights(straight, other)
        ta, sa, _ = load_training_state(straight / "last")
        tb, sb, _ = load_training_state(other / "last")
        oa = optimizer_from_tensors(ta, sa["optimizer"])["state"]
        ob = optimizer_from_tensors(tb, sb["optimizer"])["state"]
        assert all(torch.equal(oa[p][k], ob[p][k]) for p in oa for k in oa[p] if torch.is_tensor(oa[p][k]))
        raw = [k for k in ta if k.startswith("raw.")]
        assert raw and all(torch.equal(ta[k], tb[k]) for k in raw) and sa["ema_updates"] == sb["ema_updates"]
        assert [r["train_loss"] for r in sa["log"]] == [r["train_loss"] for r in sb["log"]]


def test_ctrl_c_saves_last_and_exits_130(tmp_path, lgg):
    run = tmp_path / "run"
    cmd = [sys.executable, "-c", "from medseg.app.cli import main; main()", "train", str(lgg), "--out", str(run),
           "--epochs", "200", "--image-size", "32", "--batch-size", "2", "--val-fraction", "0.34"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (run / "log.csv").is_file():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert f"--resume {run}" in err
    tensors, state, _ = load_training_state(run / "last")
    assert state["epoch"] >= 1 and any(k.startswith("optimizer.") for k in tensors)
    assert json.loads((run / "last" / "config.json").read_text())["epoch"] == state["epoch"]
    assert_clean(run)
    target = state["epoch"] + 1
    assert run_cli("train", "--resume", str(run), "--epochs", str(target)) == 0
    assert load_training_state(run / "last")[1]["epoch"] == target
    assert len((run / "log.csv").read_text().splitlines()) == target + 1


def test_time_budget_stops_keeps_best_and_counts_time_spent_on_resume(tmp_path, lgg, monkeypatch):
    """The loop's clock is replaced by one that moves STEP seconds in each optimizer step (as the step's batch is
    normalised): no wall-clock race. The budget ends the run with the step that reaches it, and a resumed run
    spends only what is left."""
    STEP, clock, steps = 0.3, {"now": 0.0}, []  # 8 s end no epoch exactly: 16 steps each
    real_normalize = loop_mod.normalize

    def normalize(*a, **k):
        clock["now"] += STEP
        return real_normalize(*a, **k)

    monkeypatch.setattr(loop_mod, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: clock["now"])}))
    monkeypatch.setattr(loop_mod, "normalize", normalize)

    def tick(event, info):
        if event == "step":
            steps.append(info["step"])

    run = tmp_path / "run"
    s = train(lgg, run, time_budget_s=8, epochs=50, settings={**TINY, "select": "window"}, callback=tick, **KW)
    assert s["stopped"] == "time budget" and len(steps) == math.ceil(8.0 / STEP) and s["epochs"] == 2, (steps, s)
    assert s["seconds"] == round(len(steps) * STEP, 1)
    log = (run / "log.csv").read_text().splitlines()[1:]
    dice = [float(r.split(",")[4]) for r in log]
    best = json.loads((run / "best" / "config.json").read_text())
    w = best["select_window"]  # best: the epoch ending the best running mean of w Dice values (the first such)
    means = [float(np.mean(dice[max(0, i + 1 - w):i + 1])) for i in range(len(dice))]
    e = means.index(max(means))
    assert best["val_dice"] == dice[e] == s["best_val_dice"] and best["epoch"] == e + 1 == s["best_epoch"]
    steps.clear()
    s2 = train(resume=run, time_budget_s=10, quiet=True, callback=tick)  # 8 s already spent: 2 s more
    assert s2["stopped"] == "time budget" and len(steps) == math.ceil((10.0 - s["seconds"]) / STEP), (steps, s2)
    assert s2["epochs"] == s["epochs"] + 1 and s2["seconds"] == round(s["seconds"] + len(steps) * STEP, 1)


def test_lock_blocks_a_second_training_and_stale_lock_is_taken_over(tmp_path, lgg, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(f"{os.getpid()} {os.uname().nodename}\n")  # this very process: alive
    assert run_cli("train", str(lgg), "--out", str(run), "--epochs", "1", "--image-size", "32") == 2
    err = capsys.readouterr().err
    assert str(run) in err and "another training" in err and not (run / "plan.json").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid} {os.uname().nodename}\n")
    assert run_cli("train", str(lgg), "--out", str(run), "--epochs", "1", "--image-size", "32",
                   "--batch-size", "2", "--val-fraction", "0.34") == 0
    assert (run / "last" / "state.json").is_file() and not (run / ".lock").exists()
    # a folder that holds a run is never trained over without --resume
    assert run_cli("train", str(lgg), "--out", str(run), "--epochs", "1") == 2
    assert "use --resume" in capsys.readouterr().err


@pytest.mark.parametrize("select, kept", [("last", 2), ("window", 1)])
def test_early_stopping_when_dice_cannot_improve(tmp_path, lgg, monkeypatch, select, kept):
    """patience counts epochs without a better select_window mean whichever weights `best` keeps."""
    monkeypatch.setattr(loop_mod, "validate", lambda *a, **k: 0.5)
    s = train(lgg, tmp_path / "run", epochs=10, settings={**TINY, "patience": 1, "select": select}, **KW)
    assert s["epochs"] == 2 and s["stopped"].startswith("early stop") and s["best_epoch"] == kept
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize("buffers", [False, True])
def test_saved_weights_are_the_moving_average_of_the_live_weights(tmp_path, lgg, monkeypatch, buffers):
    """model.safetensors (what predict uses) and validation get the EMA of the live weights over the steps,
    with TensorFlow's warm-up min(decay, (1 + n) / (10 + n)); state.safetensors the live ones. BatchNorm's
    running mean/var: copied from the live model, or (ema_buffers) the same average; its counter: copied."""
    live, validated, real_validate = [], [], loop_mod.validate

    def record(event, info):
        if event == "step":
            live.append((info["model"], {k: v.detach().clone() for k, v in info["model"].state_dict().items()}))

    def spy(module, *a, **k):
        validated.append((module, {k: v.detach().clone() for k, v in module.state_dict().items()}))
        return real_validate(module, *a, **k)

    monkeypatch.setattr(loop_mod, "validate", spy)
    run = tmp_path / "run"
    train(lgg, run, epochs=2, settings={**TINY, "ema_decay": 0.7, "ema_buffers": buffers}, callback=record,
          **KW)  # the cap from n = 20
    module, final = live[-1]
    params = {k for k, v in module.state_dict().items()
              if k in dict(module.named_parameters()) or (buffers and v.is_floating_point())}
    assert not buffers or any(k.endswith("running_var") for k in params)
    ema = {k: live[0][1][k].double() for k in params}
    for n, (_, w) in enumerate(live[1:], start=1):
        d = min(0.7, (1 + n) / (10 + n))
        ema = {k: d * ema[k] + (1 - d) * w[k].double() for k in params}
    saved = weights(run)
    assert saved.keys() == final.keys() and len(live) == 32
    for k in saved:
        if k in params:
            assert torch.allclose(saved[k].double(), ema[k], rtol=1e-5, atol=1e-6), k
        else:
            assert torch.equal(saved[k], final[k]), k  # copied from the live model (the counter at least)
    assert sum(not torch.allclose(saved[k], final[k], rtol=1e-4, atol=1e-5) for k in params) > len(params) // 2
    tensors, state, _ = load_training_state(run / "last")
    assert state["ema_updates"] == 32 and all(torch.equal(tensors[f"raw.{k}"], v) for k, v in final.items())
    assert len(validated) == 2 and all(m is not module for m, _ in validated)
    assert all(torch.equal(validated[-1][1][k], saved[k]) for k in saved)  # the weights validated are those saved


def test_without_ema_the_live_weights_are_saved_as_before(tmp_path, lgg):
    """ema_decay null + select_window 1 (the settings of version-1 plans): model.safetensors holds the live
    weights, the state no copy of them, and two runs are identical."""
    for name in ("a", "b"):
        live = {}

        def record(event, info):
            if event == "epoch":
                live.update({k: v.detach().clone() for k, v in info["model"].state_dict().items()})

        train(lgg, tmp_path / name, epochs=2, settings={**TINY, "ema_decay": None, "select_window": 1},
              callback=record, **KW)
        saved = weights(tmp_path / name)
        assert saved.keys() == live.keys() and all(torch.equal(saved[k], live[k]) for k in live)
        tensors, state, _ = load_training_state(tmp_path / name / "last")
        assert not any(k.startswith("raw.") for k in tensors) and "ema_updates" not in state
    assert_same_weights(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("select, window, best_epoch, bad_epochs", [("window", 3, 9, 1), ("window", 1, 4, 6),
                                                                    ("last", 3, 10, 1)])
def test_best_is_the_best_running_mean_not_a_one_epoch_peak(tmp_path, lgg, monkeypatch, select, window, best_epoch,
                                                            bad_epochs):
    """Validation Dice 0.3 0.3 0.3 [0.9] 0.3 0.3 0.6 0.6 0.6 0.3: with select "window" and select_window 3 the
    running means are .3 .3 .3 .5 .5 .5 .4 .5 .6 .5, so `best` is epoch 9 (its own Dice 0.6), not the peak of
    epoch 4 (which window 1 picks); the bad-epoch count of early stopping follows the same rule. With select
    "last" (the default) `best` holds the final weights whatever the Dice, and the count is the same."""
    scores = iter([0.3, 0.3, 0.3, 0.9, 0.3, 0.3, 0.6, 0.6, 0.6, 0.3])
    monkeypatch.setattr(loop_mod, "validate", lambda *a, **k: next(scores))
    run = tmp_path / "run"
    s = train(lgg, run, epochs=10, settings={**TINY, "select": select, "select_window": window}, **KW)
    best = json.loads((run / "best" / "config.json").read_text())
    assert (s["best_epoch"], best["epoch"]) == (best_epoch, best_epoch)
    assert s["best_val_dice"] == best["val_dice"] == {9: 0.6, 4: 0.9, 10: 0.3}[best_epoch]
    assert load_training_state(run / "last")[1]["bad_epochs"] == bad_epochs
    wb, wl = weights(run, "best"), weights(run, "last")
    assert (all(torch.equal(wb[k], wl[k]) for k in wl)) == (select == "last")


@pytest.mark.parametrize("settings", [
    {"optimizer": "adam", "schedule": "onecycle", "sampling": "area"},
    {"optimizer": "sgd", "schedule": "plateau", "sampling": "uniform", "empty_drop": 0.6},
    {"optimizer": "adamw", "schedule": "constant", "sampling": "lesion", "warmup": 0.0},
])
def test_each_optimizer_schedule_and_sampling_trains_an_epoch(tmp_path, lgg, settings):
    run = tmp_path / "run"
    s = train(lgg, run, epochs=1, settings={**TINY, **settings}, **KW)
    assert s["epochs"] == 1 and math.isfinite(s["last_val_dice"])
    tensors, state, _ = load_training_state(run / "last")
    assert state["schedule"]["name"] == settings["schedule"]
    n_momentum = sum(k.endswith("momentum_buffer") for k in tensors)
    assert (n_momentum > 0) == (settings["optimizer"] == "sgd")
    row = (run / "log.csv").read_text().splitlines()[1].split(",")
    if settings["schedule"] == "constant":
        assert float(row[2]) == pytest.approx(2e-3)
    if settings["schedule"] == "onecycle":
        assert float(row[2]) < 2e-3 * 0.05  # the last step of the run is deep in the annealing phase


def test_neighbour_slices_train_and_evaluate(tmp_path, lgg):
    """2.5D: k = 1 neighbour each side makes 3 x 3 input channels, in training and in the rebuilt model."""
    from medseg.inference.checkpoint import load_checkpoint
    from medseg.evaluation.evaluate import evaluate
    run = tmp_path / "run"
    train(lgg, run, epochs=1, settings={**TINY, "neighbours": 1}, **KW)
    model, cfg = load_checkpoint(run / "best")
    assert len(cfg.mean) == 9 and cfg.channels == 3
    assert 0.0 <= evaluate(run, quiet=True)["dice"]["mean"] <= 1.0


def test_schedule_shapes_and_state_round_trip():
    plan = {"lr": 1.0, "warmup": 0.1}
    cos = build_schedule(Plan(**{**plan, "schedule": "cosine"}))
    assert [cos.factor(p) for p in (0.0, 0.05, 0.5, 1.0)] == [lr_factor(p, 0.1) for p in (0.0, 0.05, 0.5, 1.0)]
    assert build_schedule(Plan(**{"lr": 1.0})).name == "cosine"  # plans without the key keep today's behaviour
    one = build_schedule(Plan(**{**plan, "schedule": "onecycle"}))
    assert one.factor(0.0) == pytest.approx(1 / 25) and one.factor(0.3) == pytest.approx(1.0)
    assert one.factor(1.0) == pytest.approx(1 / 25e4) and one.momentum(0.3) == pytest.approx(0.85)
    p = torch.nn.Parameter(torch.zeros(2))
    for name in ("sgd", "adam"):
        opt = build_optimizer(Plan(lr=0.1, optimizer=name, weight_decay=0.0), [p])
        one.apply(opt, 0.1, 0.3)
        g = opt.param_groups[0]
        assert (g["momentum"] if name == "sgd" else g["betas"][0]) == pytest.approx(0.85)
        assert g["lr"] == pytest.approx(0.1)
    assert build_optimizer(Plan(lr=0.1, optimizer="sgd", weight_decay=0.0), [p]).param_groups[0]["nesterov"] is True
    plateau = build_schedule(Plan(**{**plan, "schedule": "plateau"}))
    for dice in (0.5, 0.6, 0.6, 0.59):  # two epochs without improvement: halve
        plateau.epoch_end(dice)
    assert plateau.factor(0.5) == 0.5
    again = build_schedule(Plan(**{**plan, "schedule": "plateau"}))
    again.load_state_dict(json.loads(json.dumps(plateau.state_dict())))
    assert again.state_dict() == plateau.state_dict() and again.factor(0.5) == 0.5
    const = build_schedule(Plan(**{**plan, "schedule": "constant"}))
    assert const.factor(0.0) == pytest.approx(0.1) and const.factor(0.9) == 1.0


def test_optimizer_state_round_trips_through_tensors_and_json():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    for name in ("adamw", "sgd"):
        opt = build_optimizer(Plan(**{"lr": 0.1, "optimizer": name, "weight_decay": 1e-4}), net.parameters())
        net(torch.randn(4, 3)).sum().backward()
        opt.step()
        tensors, index = optimizer_to_tensors(opt.state_dict())
        index = json.loads(json.dumps(index))
        fresh = build_optimizer(Plan(**{"lr": 0.1, "optimizer": name, "weight_decay": 1e-4}), net.parameters())
        fresh.load_state_dict(optimizer_from_tensors(tensors, index))
        a, b = opt.state_dict(), fresh.state_dict()
        assert a["param_groups"] == b["param_groups"]
        assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])


def _old_lesion_sampler(masks, n, lesion_fraction, rng):
    """sample_indices before sampling modes existed (medseg 0.1): the default must draw exactly the same."""
    has = masks.flatten(1).any(1).numpy()
    pos = np.flatnonzero(has)
    n_pos = int(round(n * lesion_fraction)) if len(pos) else 0
    drawn = np.concatenate([rng.choice(pos, n_pos) if n_pos else np.empty(0, int),
                            rng.integers(0, len(has), n - n_pos)])
    rng.shuffle(drawn)
    return drawn


def _masks(areas: list[int]) -> torch.Tensor:
    m = torch.zeros(len(areas), 1, 10, 10, dtype=torch.uint8)
    for i, a in enumerate(areas):
        m[i].view(-1)[:a] = 1
    return m


def test_sampling_modes_are_deterministic_and_weighted():
    masks = _masks([0, 0, 10, 30, 60])
    old = _old_lesion_sampler(masks, 500, 0.5, np.random.default_rng(3))
    assert np.array_equal(sample_indices(masks, 500, 0.5, np.random.default_rng(3)), old)
    draws = sample_indices(masks, 40000, 0.5, np.random.default_rng(0), mode="area")
    assert np.array_equal(draws, sample_indices(masks, 40000, 0.5, np.random.default_rng(0), mode="area"))
    w = np.array([0, 0, 10, 30, 60]) + 0.1 * 20  # area + 10% of the mean area (Buda et al.)
    freq = np.bincount(draws, minlength=5) / len(draws)
    assert np.allclose(freq, w / w.sum(), atol=0.01), freq
    lesion = freq[2:] / freq[2:].sum()
    assert np.allclose(lesion, w[2:] / w[2:].sum(), atol=0.01)  # lesion images in proportion to area
    uni = np.bincount(sample_indices(masks, 20000, 0.5, np.random.default_rng(0), mode="uniform"), minlength=5)
    assert np.allclose(uni / 20000, 0.2, atol=0.015)


def test_empty_drop_drops_about_that_share_of_empty_images():
    areas = np.array([0] * 2000 + [5] * 100)
    pool = epoch_pool(areas, 0.6, np.random.default_rng(0))
    kept_empty = np.sum(areas[pool] == 0) / 2000
    assert 0.37 <= kept_empty <= 0.43 and np.sum(areas[pool] > 0) == 100
    assert len(epoch_pool(areas, 0.0, np.random.default_rng(0))) == len(areas)
    drawn = sample_indices(areas, 5000, 0.0, np.random.default_rng(1), mode="uniform", empty_drop=0.6)
    empty_share = np.mean(areas[drawn] == 0)
    assert abs(empty_share - 800 / 900) < 0.03  # ~800 of 2000 empty images left beside the 100 lesion ones


@pytest.mark.slow  # compiling takes ~20 s on 2 cores
def test_compiled_training_step_trains_and_saves_plain_weights(tmp_path, lgg):
    summary = train(lgg, tmp_path / "c", epochs=2, settings={**TINY, "compile": True}, **KW)
    assert math.isfinite(summary["best_val_dice"])
    assert not any(k.startswith("_orig_mod") for k in weights(tmp_path / "c"))  # the module's own names


@pytest.mark.parametrize("aug", ["default", "fast"])
def test_prefetching_trains_exactly_as_without(tmp_path, lgg, aug):
    """data.Prefetch (augmentation in a background thread) changes when batches are made, never which: the
    same weights and losses as the plain stream, for the per-sample MONAI set and the batched one."""
    runs = {}
    for p in (False, True):
        runs[p] = tmp_path / f"prefetch-{p}"
        train(lgg, runs[p], epochs=2, settings={**TINY, "augmentation": aug, "prefetch": p}, **KW)
    assert_same_weights(runs[False], runs[True])


def test_prefetch_keeps_order_passes_errors_and_rewinds_to_the_last_batch_used():
    from medseg.data.sampling import Prefetch

    state = {"made": 0}

    def source():
        for i in range(10):
            state["made"] += 1
            if i == 7:
                raise ValueError("unreadable batch")
            yield i

    def restore(made):
        state["made"] = made

    stream = Prefetch(source(), 3, lambda: state["made"], restore)
    got = [next(stream) for _ in range(4)]
    time.sleep(0.2)  # the thread runs ahead, up to 3 batches past the 4 taken
    assert got == [0, 1, 2, 3] and state["made"] > 4
    stream.close()
    assert state["made"] == 4  # as if the batches made ahead had never been drawn
    stream = Prefetch(source(), 2, lambda: state["made"], restore)
    with pytest.raises(ValueError, match="unreadable"):
        list(stream)
    stream.close()


def test_compile_auto_needs_a_2d_model_a_long_budget_and_a_cxx_compiler(monkeypatch):
    from medseg.training.speed import compiles
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(speed_mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    plan = {"compile": "auto", "model": "unet", "time_budget_s": 1200}
    assert compiles(Plan(**plan))
    assert compiles(Plan(**{**plan, "time_budget_s": 360}))  # a fold of a 30-minute --folds 5 run
    assert not compiles(Plan(**{**plan, "time_budget_s": 200})) and not compiles(Plan(**{**plan, "time_budget_s": None}))
    assert not compiles(Plan(**{**plan, "model": "unet3d"}))
    assert compiles(Plan(**{**plan, "compile": True, "time_budget_s": None})) and not compiles(Plan(**{**plan, "compile": False}))
    monkeypatch.setattr(speed_mod.shutil, "which", lambda name: None)  # no C++ compiler: inductor cannot build
    assert not compiles(Plan(**plan))


def test_bf16_auto_on_cuda_and_on_a_timed_run_of_a_cpu_with_amx(monkeypatch, tmp_path):
    from medseg.training.speed import has_amx, uses_bf16
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    plan = {"precision": "auto", "time_budget_s": 540}
    monkeypatch.setattr(speed_mod, "has_amx", lambda: True)
    assert uses_bf16(Plan(**plan), cpu) and uses_bf16(Plan(**plan), cuda)
    assert not uses_bf16(Plan(**{**plan, "time_budget_s": None}), cpu)  # fixed epochs: the same weights on any CPU
    assert not uses_bf16(Plan(**{**plan, "precision": "fp32"}), cpu)
    monkeypatch.setattr(speed_mod, "has_amx", lambda: False)  # AVX512-BF16 alone gained 1.02x: fp32
    assert not uses_bf16(Plan(**plan), cpu) and uses_bf16(Plan(**plan), cuda)
    assert uses_bf16(Plan(**{**plan, "precision": "bf16"}), cpu)
    monkeypatch.undo()
    flags = tmp_path / "cpuinfo"  # has_amx reads the flags line of /proc/cpuinfo
    for line, amx in (("flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n", True),
                      ("flags\t\t: fpu avx512f avx512_bf16\n", False)):
        flags.write_text("processor\t: 0\n" + line)
        real_open = open
        monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(flags if p == "/proc/cpuinfo" else p, *a, **k))
        assert has_amx() is amx
        monkeypatch.undo()


def test_init_seed_changes_the_weights_not_the_split(tmp_path, lgg):
    """init_seed re-draws the initialisation, sampling and augmentation on the same patients (the seed spread
    of one split); init_seed equal to seed is the plain run, weight for weight."""
    runs = {}
    for name, init in (("plain", None), ("same", 0), ("other", 1)):
        runs[name] = tmp_path / name
        train(lgg, runs[name], epochs=1, settings={**TINY, "init_seed": init}, **KW)
    plans = {n: json.loads((r / "plan.json").read_text()) for n, r in runs.items()}
    assert plans["plain"]["split"] == plans["other"]["split"] and plans["other"]["init_seed"] == 1
    assert_same_weights(runs["plain"], runs["same"])
    wa, wb = weights(runs["plain"]), weights(runs["other"])
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_deep_supervision_trains_its_heads_and_predicts_as_a_plain_unet(tmp_path, lgg):
    """`model_args.deep_supervision`: the loop's loss takes the model's list of outputs, so the auxiliary
    heads move away from their initial weights (without their loss they get no gradient and the optimizer
    leaves them exactly as they were); the saved run predicts through the full-size output alone."""
    from medseg.inference.predictor import Predictor
    from medseg.models import build_model

    args = {**TINY["model_args"], "deep_supervision": 1}
    train(lgg, tmp_path / "ds", epochs=2, settings={"model_args": args, "ema_decay": None}, **KW)
    saved = weights(tmp_path / "ds")
    in_channels = saved["unet.model.0.conv.unit0.conv.weight"].shape[1]
    torch.manual_seed(0)  # the loop builds the model right after seeding with the plan's seed (0)
    init = build_model("unet", in_channels, 1, **args).state_dict()
    assert (saved["heads.0.conv.weight"] - init["heads.0.conv.weight"]).abs().max() > 1e-3
    predictor = Predictor.load(tmp_path / "ds")
    prob = predictor.probabilities_batch(np.random.default_rng(0).random((1, predictor.plan.in_channels, 32, 32),
                                                                          dtype=np.float32))
    assert prob.shape == (1, 32, 32)


def test_the_coarse_start_trains_its_share_of_the_run_at_the_coarse_size(tmp_path, lgg, monkeypatch):
    """coarse_share 0.5 of a 4-epoch run (progressive resizing): the steps of epochs 1-2 see 16x16 batches,
    images and masks alike and the masks still 0/1; those of epochs 3-4 the full 32x32."""
    steps, real_loss = [], loop_mod.build_loss

    def spy_loss(*a, **k):
        loss = real_loss(*a, **k)

        def record(module, args):
            logits, y = args
            steps.append((tuple(logits.shape[-2:]), tuple(y.shape[-2:]), set(y.unique().tolist()) <= {0.0, 1.0}))
        loss.register_forward_pre_hook(record)
        return loss

    monkeypatch.setattr(loop_mod, "build_loss", spy_loss)
    train(lgg, tmp_path / "run", epochs=4, settings={**TINY, "coarse_share": 0.5, "coarse_size": 16}, **KW)
    assert len(steps) == 64 and all(ok for *_, ok in steps)
    assert [s[:2] for s in steps] == [((16, 16), (16, 16))] * 32 + [((32, 32), (32, 32))] * 32
