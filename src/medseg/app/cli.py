"""The `medseg` command: each verb parses its arguments and calls one API function.

Bad input ends in one line `error: <file>: <problem>` and exit code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import MedsegError

TARGET_HELP = ("Structure(s) to segment where the layout has several (3D-IRCADb: liver, livertumor1, ...; NIfTI: "
               "label names or values; folder masks: values). One entry: a binary model. Several, comma-separated: "
               "one multi-class model, class k = the k-th entry (where structures overlap the later one wins); an "
               "entry NAME=a+b merges sources into one class, and 3D-IRCADb folders may be a pattern: "
               "--target liver,tumour=livertumor*. Label maps (NIfTI/MSD, folder masks) default to 'all' (every "
               "label its own class, dataset.json's names); 'foreground' merges every non-zero label (binary).")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and apply U-Nets on medical image data sets in their published layouts.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    """medseg: one command each to train, evaluate and predict."""


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="Output folder (data, run, predictions)."),
         time_budget: str = typer.Option("150s", help="Training wall-clock budget.")) -> None:
    """Generate a small synthetic data set, train, evaluate, predict and write a report."""
    from .demo import run_demo
    run_demo(out, time_budget_s=parse_duration(time_budget))


@app.command()
def train(data: Optional[Path] = typer.Argument(None, help="Data set folder in its published layout (with "
                                                 "--resume: default the run's own data)."),
          out: Optional[Path] = typer.Option(None, "--out", help="Run folder to create."),
          resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder from its "
                                                "`last` checkpoint (--epochs/--time-budget set new limits)."),
          format: str = typer.Option("auto", "--format", help="Layout: auto, lgg, busi, ircadb, cbis, nifti, folder."),
          preset: Optional[str] = typer.Option(None, help="A seed workflow's recipe (see `medseg presets`); "
                                               "default: medseg's own settings."),
          setting: list[str] = typer.Option([], "--set", help="Any plan setting as key=value, repeatable, e.g. "
                                            "--set loss=tversky --set neighbours=1 (values parsed as JSON)."),
          folds: Optional[int] = typer.Option(None, help="K-fold cross-validation: K folds by patient "
                                              "(stratified where the layout has classes). With --fold i: that fold "
                                              "alone; without --fold: every fold, one after another, into RUN/fold<i> "
                                              "within one --time-budget (evaluate pools them, predict averages them)."),
          fold: Optional[int] = typer.Option(None, help="Which fold (0..K-1) is the validation set."),
          encoder_weights: Optional[Path] = typer.Option(None, help="Pretrained encoder weights, a local file "
                                                         "(vgg16-unet: torchvision .pth or .safetensors); never downloaded."),
          epochs: Optional[int] = typer.Option(None, help="Stop after this many epochs."),
          time_budget: Optional[str] = typer.Option(None, help="Wall-clock budget, e.g. 20m (default 20m, "
                                                    "or none when --epochs is given)."),
          val_fraction: float = typer.Option(0.2, help="Share of patients/cases held out for validation."),
          seed: int = typer.Option(0, help="Seed for the split, the initialisation and the augmentation."),
          image_size: Optional[int] = typer.Option(None, help="Training size (square); default from the plan."),
          batch_size: Optional[int] = typer.Option(None, help="Batch size; default from the plan."),
          lr: Optional[float] = typer.Option(None, help="Peak learning rate; default from the plan."),
          threads: Optional[int] = typer.Option(None, help="CPU threads (default 1: measured fastest on a shared "
                                                "2-core machine, and reproducible)."),
          target: Optional[str] = typer.Option(None, help=TARGET_HELP),
          skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out images that cannot be read (listed in "
                                        "the output and in RUN/plan.json) instead of stopping.")) -> None:
    """Train a U-Net: split by patient, keep RUN/best and RUN/last, log to RUN/log.csv."""
    from ..planning.plan import parse_setting
    from ..training.command import Options, train_folder
    settings = dict(parse_setting(s) for s in setting) or None
    if encoder_weights:
        settings = {**(settings or {}), "encoder_weights": str(encoder_weights)}
    if skip_bad:
        settings = {**(settings or {}), "skip_bad": True}
    flags = {"epochs": epochs, "time_budget_s": parse_duration(time_budget) if time_budget else None,
             "image_size": image_size, "batch_size": batch_size, "lr": lr}
    train_folder(data, out, layout=format, target=target, preset=preset, settings=settings, val_fraction=val_fraction,
                 seed=seed, folds=folds, fold=fold, resume_run=resume, options=Options(threads=threads),
                 **{k: v for k, v in flags.items() if v is not None})


TTA_HELP = ("Average with the flips the model was trained with (left-right; both for the cbis and strong sets), "
            "with the image resized by the run's tta_scales (2D runs since plan version 6: 0.875 and 1.125) and, "
            "for a run trained with a channel fill (LGG), with the image whose other channels are copies of FLAIR. "
            "Default: on for 2D models, off for 3D ones.")


@app.command()
def evaluate(run: Path = typer.Argument(..., help="Run folder (from medseg train)."),
             data: Optional[Path] = typer.Argument(None, help="Data to evaluate on; default: the training data."),
             split: Optional[str] = typer.Option(None, help="val or all (default: val on the training data, "
                                                 "all on other data)."),
             format: Optional[str] = typer.Option(None, "--format", help="Layout of DATA (default: detect)."),
             tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help=TTA_HELP),
             tune: Optional[bool] = typer.Option(None, "--tune/--no-tune",
                                                 help="Sweep thresholds and post-processing (largest component, "
                                                      "small-component removal) and save the best into the run "
                                                      "(default: on the validation split of the training data)."),
             stress: bool = typer.Option(False, "--stress", help="Also score the cases under controlled input shifts "
                                         "(intensity x0.33 to x3, gamma, noise, blur, halved resolution, left-right "
                                         "flip): a stress table in metrics.json, the report and the output; about 11 "
                                         "more prediction passes over the cases.")) -> None:
    """Score a run: RUN/eval/metrics.json, cases.csv, slices.csv and report.html."""
    from ..evaluation.evaluate import evaluate as run_evaluate
    run_evaluate(run, data, split, format, tta, tune=tune, stress=stress)


@app.command()
def compare(runs: list[Path] = typer.Argument(..., help="Two or more evaluated run folders; the first is the reference."),
            metric: str = typer.Option("dice", help="A column of RUN/eval/cases.csv (dice, iou, hd95, ...).")) -> None:
    """Runs side by side on their shared cases, each tested against the first (paired Wilcoxon)."""
    from ..evaluation.compare import compare as run_compare
    run_compare(runs, metric)


@app.command()
def predict(run: Path = typer.Argument(..., help="Run folder (from medseg train)."),
            inputs: list[Path] = typer.Argument(..., help="Image files, volumes (.nii.gz/.nrrd/.mha), DICOM series "
                                                          "folders, or folders of these (searched recursively)."),
            out: Path = typer.Option(..., "--out", help="Folder for the masks."),
            format: str = typer.Option("auto", "--format", help="auto|png|tif|nifti|dicom-seg (auto: PNG for images, "
                                                                 "NIfTI for volumes, DICOM SEG for DICOM series)."),
            prob: bool = typer.Option(False, "--prob", help="Also write the probability map (16-bit PNG, 2D)."),
            overlay: bool = typer.Option(False, "--overlay", help="Also write an overlay PNG (2D)."),
            tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help=TTA_HELP),
            threshold: Optional[float] = typer.Option(None, help="Override the run's threshold."),
            batch_size: int = typer.Option(8, "--batch-size", help="Slices per forward pass."),
            engine: str = typer.Option("torch", help="torch; torch-bf16 (bf16 autocast: faster on CPUs with AVX512-BF16/AMX, masks may differ at "
                                         "edges); or onnx (RUN/model.onnx from `medseg export`).")) -> None:
    """Masks in each input's own format and geometry; threshold and post-processing from the run."""
    from ..inference.predictor import predict_files
    predict_files(run, inputs, out, tta, fmt=format, prob=prob, overlay=overlay, threshold=threshold,
                  batch_size=batch_size, engine=engine)


@app.command("export")
def export_cmd(run: Path = typer.Argument(..., help="Run folder (from medseg train)."),
               onnx: Optional[Path] = typer.Option(None, "--onnx", help="ONNX file to write (default RUN/model.onnx)."),
               bench: bool = typer.Option(False, "--bench", help="Also time PyTorch vs ONNX Runtime (batch 8).")) -> None:
    """Export the best checkpoint to ONNX (normalisation inside the graph; dynamic batch and size)."""
    from ..inference.onnx import export_onnx, speed
    path, diff = export_onnx(run, onnx)
    typer.echo(f"wrote {path} (max |logit| difference vs PyTorch on a random batch: {diff:.2e})")
    if bench:
        s = speed(run, path)
        typer.echo(f"images/s at batch 8, {torch_threads()} thread(s): PyTorch {s['torch']:.1f}, "
                   f"ONNX Runtime {s['onnxruntime']:.1f} ({s['onnxruntime'] / s['torch']:.2f}x)")


def torch_threads() -> int:
    import torch
    return torch.get_num_threads()


@app.command()
def presets(show: Optional[str] = typer.Option(None, "--show", help="Print one preset's full settings as JSON.")) -> None:
    """List the presets (one per seed workflow) and what each sets; --show NAME for all its settings."""
    import json

    from rich.console import Console
    from rich.table import Table

    from ..errors import MedsegError
    from ..planning.plan import DEFAULTS
    from ..planning.planner import presets as all_presets
    known = all_presets()
    if show:
        if show not in known:
            raise MedsegError(None, f"unknown preset {show!r}; known: {', '.join(known)}")
        print(json.dumps({**known[show], "resolved": {**DEFAULTS, **known[show]["settings"]}}, indent=2))
        return
    t = Table(title="medseg presets (`medseg train DATA --preset NAME`; any flag or --set key=value overrides)")
    for col in ("preset", "what it is", "sets"):
        t.add_column(col)
    t.add_row("(none)", "medseg's defaults, measured fastest to a good mask on a CPU",
              ", ".join(f"{k}={DEFAULTS[k]}" for k in ("model", "image_size", "loss", "augmentation", "lr")))
    for name, p in known.items():
        t.add_row(name, p["description"], ", ".join(f"{k}={v}" for k, v in p["settings"].items()))
    Console().print(t)
    from ..training.losses import LOSSES
    losses = Table(title="losses (`--set loss=NAME`, `--set 'loss_args={...}'` with the arguments in brackets)")
    for col in ("loss", "what it is"):
        losses.add_column(col)
    for name, what in LOSSES.items():
        losses.add_row(name, what)
    Console().print(losses)


@app.command()
def prepare(data: Path = typer.Argument(..., help="Data set folder in its published layout."),
            format: str = typer.Option("auto", "--format", help="Layout (default: detect)."),
            target: Optional[str] = typer.Option(None, help=TARGET_HELP),
            preset: Optional[str] = typer.Option(None, help="Preset whose preprocessing to cache."),
            image_size: Optional[int] = typer.Option(None, help="Training size; default from the preset/plan."),
            setting: list[str] = typer.Option([], "--set", help="Any plan setting, key=value (repeatable).")) -> None:
    """Read, resize and cache a data set ahead of training (uint8 arrays in $MEDSEG_CACHE or ~/.cache/medseg)."""
    from ..data.arrays import prepare as run_prepare
    from ..planning.plan import parse_setting
    settings = dict(parse_setting(s) for s in setting)
    if image_size:
        settings["image_size"] = image_size
    r = run_prepare(data, format, target, preset, settings)
    print(f"{r['layout']}: {r['images']} images {'already cached' if r['already_cached'] else 'cached'} in "
          f"{r['seconds']:.1f}s ({r['megabytes']} MB, size {r['prep']['image_size']}): {r['cache']}")


@app.command("inspect")
def inspect_data(data: Path = typer.Argument(..., help="Data set folder in its published layout."),
                 format: str = typer.Option("auto", "--format", help="Layout (default: detect)."),
                 target: Optional[str] = typer.Option(None, help=TARGET_HELP),
                 as_json: bool = typer.Option(False, "--json", help="Print the fingerprint as JSON only.")) -> None:
    """Fingerprint a data set (counts, sizes, spacings, intensities, foreground, subgroups) and list every
    problem found per file. Problems are findings (exit 0); exit 2 only when the data cannot be read at all."""
    import json

    from ..planning.fingerprint import fingerprint, print_fingerprint
    fp = fingerprint(data, format, target)
    if as_json:
        print(json.dumps(fp, indent=2))
    else:
        print_fingerprint(fp)


@app.command("export-nnunet")
def export_nnunet_cmd(data: Path = typer.Argument(..., help="Data set folder in its published layout."),
                      out: Path = typer.Argument(..., help="nnU-Net raw folder (nnUNet_raw) to write into."),
                      dataset_id: int = typer.Option(..., "--id", help="nnU-Net dataset id, 1..999."),
                      name: str = typer.Option(..., "--name", help="Dataset name (letters, digits, _ and -)."),
                      format: str = typer.Option("auto", "--format", help="Layout (default: detect)."),
                      target: Optional[str] = typer.Option(None, help=TARGET_HELP),
                      force: bool = typer.Option(False, "--force", help="Replace an existing dataset folder.")) -> None:
    """Write OUT/Dataset<id>_<name> in nnU-Net v2's raw format (imagesTr, labelsTr, dataset.json)."""
    import json
    import time

    from ..data.nnunet_export import export_nnunet
    t0 = time.perf_counter()
    path = export_nnunet(data, out, dataset_id, name, format, target, force)
    meta = json.loads((path / "dataset.json").read_text())
    print(f"wrote {path}: {meta['numTraining']} cases, {len(meta['channel_names'])} channel(s) "
          f"in {time.perf_counter() - t0:.1f}s")


weights_app = typer.Typer(no_args_is_help=True, help="Pretrained weights files (local only; never downloaded).")
app.add_typer(weights_app, name="weights")


@app.command()
def serve(run: Path = typer.Argument(..., help="Run folder (from medseg train)."),
          host: str = typer.Option("127.0.0.1", help="Address to listen on (127.0.0.1: this machine only; any "
                                                      "other needs --token or --insecure)."),
          port: int = typer.Option(8000, help="Port."),
          max_upload_mb: float = typer.Option(64, help="Largest accepted upload (413 beyond)."),
          timeout: float = typer.Option(120, help="Seconds one prediction may take (504 beyond)."),
          workers: int = typer.Option(1, help="Predictions run at once."),
          queue: int = typer.Option(4, help="Requests that may wait for a worker (503 beyond)."),
          token: Optional[str] = typer.Option(None, envvar="MEDSEG_TOKEN", show_default=False,
                                              help="Bearer token every route but /health requires (401 without "
                                                   "it); prefer the MEDSEG_TOKEN variable: a command line is "
                                                   "visible to other users of the machine."),
          insecure: bool = typer.Option(False, "--insecure", help="Listen beyond loopback without a token: anyone "
                                                                  "who reaches the port sees and uses everything.")
          ) -> None:
    """HTTP service and browser viewer for a run: POST /predict, POST /view, GET /health, /model, /eval; the
    viewer at http://HOST:PORT/ and the OpenAPI docs at /docs."""
    from .serve import check_access, is_loopback, serve as run_service
    if workers < 1 or queue < 0 or max_upload_mb <= 0 or timeout <= 0:
        raise MedsegError(None, "--workers must be >= 1, --queue >= 0, --max-upload-mb and --timeout > 0")
    check_access(host, token, insecure)  # before the model loads and anything binds
    access = ("a bearer token is required (/health is open)" if token is not None else
              "no token: open to everyone who reaches it (--insecure)" if not is_loopback(host) else "no token")
    print(f"medseg serving {run} at http://{host}:{port}/ (API docs at /docs; {access}); Ctrl-C stops",
          file=sys.stderr)
    run_service(run, host, port, max_upload_mb, timeout, workers, queue, token=token, insecure=insecure)


@weights_app.command("convert")
def weights_convert(src: Path = typer.Argument(..., help="torchvision state dict (.pth), e.g. vgg16-397923af.pth."),
                    dst: Path = typer.Argument(..., help="Output .safetensors file.")) -> None:
    """Turn a torchvision state dict into a safetensors file (same keys; loads without unpickling)."""
    from ..errors import MedsegError
    from ..models.weights import convert
    if dst.suffix != ".safetensors":
        raise MedsegError(dst, "the output must end in .safetensors")
    print(f"wrote {convert(src, dst)}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = (["--debug"] if debug else []) + [a for a in argv if a != "--debug"]
    try:
        app(args=argv, prog_name="medseg")
    except MedsegError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug, not bad input: still no traceback unless asked for
        if debug:
            raise
        print(f"error: unexpected {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


def parse_duration(text: str) -> float:
    """'20m', '90s', '1h30m', '1200' -> seconds."""
    import re
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t:
        raise MedsegError(None, f"cannot read duration {text!r} (examples: 20m, 90s, 1h30m)")
    return sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts)
