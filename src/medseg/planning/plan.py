"""The plan: every setting training reads, typed, with its defaults, its validation and its file format here.

A plan is built by planning.planner (data set + preset + the user's flags), saved as RUN/plan.json and inside
every checkpoint, and read back by `Plan.load`/`Plan.from_dict`, so evaluate, predict and serve use exactly the
settings the model was trained with. Three groups of fields:

- settings: what a user may set (presets, `--set key=value`, the train flags); `SETTINGS` lists them and
  `DEFAULTS` gives their default values (the field defaults below are the only place they are written);
- data and split: what the data set decides (channels, intensity rule, target, geometry) and the patients;
- run facts: what training measured or chose (normalisation statistics, threads, item counts), and in a
  checkpoint the epoch and validation Dice it was saved at.

A dataclass rather than pydantic: `import medseg.planning.plan` stays at the standard library (pydantic adds
~0.2 s to every command's start on this machine), and the checks needed are a few ranges and choices.

Versions: plans without a "version" key were written by medseg up to 31ad044 (version 1); they load with the
behaviour of that time (no per-case intensity scaling, no weight averaging, the single best epoch), so their
checkpoints predict the same masks. Version 2 added those three settings; version 3 `init_seed` and the
"robust" augmentation default (a version-2 plan names its augmentation, so it keeps it), and `classes` for
multi-class runs (a plan without them, every version-1/2 plan among them, is binary); version 4
`ema_buffers` on (an older plan keeps the live model's BatchNorm statistics in its averaged weights, as it was
trained, so a resumed run goes on as it began); version 5 `select` "last" (an older plan keeps "window", the
end of its best select_window-epoch run of validation Dice). A plan newer than this medseg stops with one line.

Classes: a binary run (BUSI, LGG, one --target) has `classes == []`, one sigmoid output and masks of 0/1. A
multi-class run lists its foreground classes in order, each {"name", "value", ...}: class k (1-based) is
channel k of the network's K + 1 softmax outputs (channel 0 is background), k in the arrays and in the
DICOM SEG's segment numbers, and `value` in the label maps written (PNG, TIF, NIfTI). The other keys say
where the class comes from in the data: "labels" (the mask/label-map values merged into it) or
"structures" (3D-IRCADb mask folders, listed per item in meta["mask_classes"]).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import MedsegError

PLAN_VERSION = 6
SAMPLINGS = ("lesion", "area", "uniform")  # the implementations: data.sampling.SAMPLING
PRECISIONS = ("auto", "fp32", "bf16")
INTENSITY_NORMS = ("case", "median", "none")  # io.intensity.RULES, and "none"
BODY_MASKS = ("fraction", "log-otsu")  # io.intensity.BODY_MASKS
SELECTIONS = ("last", "window")
DEFAULT_PATCH = (32, 64, 64)
MULTICLASS_LOSSES = ("ce+dice",)  # softmax losses (training.losses)


def _setting(default, doc: str = "", lo=None, hi=None, closed: bool = True, choices: tuple | None = None):
    """A user-settable field: its default, and the range (lo..hi; `closed`: lo itself allowed) or choices."""
    meta = {"setting": True, "doc": doc, "range": None if lo is None else (lo, hi, closed), "choices": choices}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Plan:
    # ---- settings. Per-layout defaults, chosen for a 2-core CPU and a ~20 minute budget (docs/architecture.md)
    model: str = _setting("unet", "network (models registry)")
    # deep_supervision 2 (losses at 1/2 and 1/4 size too, models.unet.DeepSupervisedUNet), for ~12% fewer epochs:
    # pooled 5-fold pairs on the AMX machine, BUSI 30 min +0.031 and +0.013 an image (over both +0.022, 95% CI
    # -0.000 to +0.044, Wilcoxon p 0.03; false masks 11 of 48 against 17), LGG 45 min +0.008 and -0.003 a patient
    # (over both +0.002, -0.005 to +0.011): better on BUSI, neutral on LGG (docs/results.md)
    model_args: dict = _setting({"features": [16, 32, 64, 128, 256], "res_units": 2, "deep_supervision": 2},
                                "network constructor args")
    loss: str = _setting("bce+dice", "loss (training.losses registry)")
    # "robust": the "default" set with gamma 0.5-2 instead of 0.7-1.5 (the stress test's gamma 0.5 and 2 cost
    # up to 0.21 Dice with the narrower range, README "Stress test")
    augmentation: str = _setting("robust", "augmentation set (transforms)")
    # measured: 7-min LGG runs reached val Dice 0.73 at 128 vs 0.36 at 256 (4x the samples/s)
    image_size: int = _setting(128, "training size (square)", 16, 4096)
    # measured on the pooled 5-fold weights of two default runs a data set (2026-12-03, `medseg evaluate`, eval
    # only): LGG +0.006 and +0.005 a patient, BUSI +0.002 and -0.001 an image with 5 and 6 of 24 normal images
    # given a false mask against 8 and 7 (docs/results.md); the 2D TTA passes 3x
    tta_scales: list = _setting([0.875, 1.125], "2D test-time augmentation: also average the probabilities of "
                                                "the image resized by these factors, to multiples of 16 px "
                                                "(inside the +-15% the default sets scale by; []: none, as "
                                                "the presets, whose sets scale by 5% or not at all)")
    # at 128 px a 0/1 mask loses what lies between pixels: LGG's masks (256 px) halved to 0/1 and resized back
    # score 0.971 against themselves (per patient, worst 0.941), their area-weighted shares 0.993 (0.983). Measured
    # (pooled 5-fold, side by side, 2026-12-03): LGG -0.005 a patient, BUSI -0.010 an image (7 of 24 false masks
    # in both arms): not what limits these models, so off by default
    soft_labels: bool = _setting(False, "2D binary runs: train on each pixel's share inside the mask at the "
                                        "training size (area-weighted, geometry resampled bilinearly) instead "
                                        "of the mask halved to 0/1")
    # measured (pooled 5-fold, each alone, 2026-12-05, AVX2 EPYC): 0.5 at 96 px gave 1.4x the samples a second
    # in its first half and 15-30% more epochs, LGG -0.005 a patient (-0.022 to +0.011) against the night
    # before's run, BUSI +0.006 an image (-0.015 to +0.028; 4 of 24 false masks either way) against a run just
    # before it (docs/results.md): no gain, so off by default
    coarse_share: float = _setting(0.0, "2D runs: the share of the run (time or epochs) trained on batches shrunk "
                                        "to coarse_size (progressive resizing: more steps in the budget; 0: off)",
                                   0, 1)
    coarse_size: int = _setting(96, "the coarse start's training size (a multiple of 16)", 16, 4096)
    batch_size: int = _setting(16, "batch size", 1)
    lr: float = _setting(2e-3, "peak learning rate", 0, closed=False)
    weight_decay: float = _setting(1e-4, "weight decay", 0)
    lesion_fraction: float = _setting(0.5, "share of draws from images with foreground (Buda et al.)", 0, 1)
    threshold: float = _setting(0.5, "probability threshold of the masks", 0, 1, closed=False)
    time_budget_s: float | None = _setting(1200.0, "wall-clock budget in seconds (null: none)", 0, closed=False)
    epochs: int | None = _setting(None, "epoch count (null: the budget decides)", 1)
    loss_args: dict = _setting({}, 'e.g. {"pos_weight": 2.0} or {"alpha": 0.3, "beta": 0.7} for tversky')
    optimizer: str = _setting("adamw", "adamw | adam | sgd (momentum 0.9, nesterov)")
    schedule: str = _setting("cosine", "cosine (warm-up + cosine over the budget) | onecycle | plateau | constant")
    warmup: float = _setting(0.03, "share of the run spent warming the learning rate up", 0, 1)
    sampling: str = _setting("lesion", "lesion | area (p ~ mask area, Buda) | uniform", choices=SAMPLINGS)
    empty_drop: float = _setting(0.0, "probability of dropping an empty-mask image from an epoch (liver CT: 0.6)",
                                 0, 1)
    patience: int | None = _setting(None, "early stopping: epochs without a better validation Dice (null: off)", 1)
    # 2.5D: k slices above and below as extra channels. None: 1 for slice stacks (unit "patient": LGG, CT/MR
    # volumes), 0 for 2D images. Measured on LGG dev (30 min, 6 validation patients): per-patient Dice 0.792
    # with k = 1 against 0.766 for single slices (README).
    neighbours: int | None = _setting(None, "2.5D context slices each side (null: by the data)", 0, 8)
    skip_bad: bool = _setting(False, "leave out unreadable images (listed under `skipped`) instead of stopping")
    intensity_override: dict | None = _setting(None, "replaces the layout's intensity rule, e.g. a CT window")
    headline_metric: str = _setting("dice", "dice | iou: the metric the report leads with")
    encoder_weights: str | None = _setting(None, "pretrained encoder file (vgg16-unet); null: the hub cache's")
    freeze_encoder_epochs: int = _setting(0, "keep a pretrained encoder fixed for the first N epochs")
    compile: str | bool = _setting("auto", "torch.compile the step: auto (2D, budget >= 10 min, a C++ compiler)")
    prefetch: str | bool = _setting("auto", "augment ahead in a thread: auto (a spare core, or a GPU)")
    precision: str = _setting("auto", "bf16 autocast: auto (CUDA; a CPU with AMX when timed) | bf16 | fp32",
                              choices=PRECISIONS)
    patch_size: list | None = _setting(None, "3D models: training patch D x H x W (null: 32 x 64 x 64)")
    # MRI and ultrasound have no absolute intensity scale: each case (a 2D image, or a patient's whole slice
    # stack) is scaled by its own statistics before anything else (data.normalise). CT keeps its HU window.
    intensity_norm: str = _setting("case", "case (each case by the 99th percentile of its body pixels, for images "
                                           "read on a relative scale) | median (by their median) | none", choices=INTENSITY_NORMS)
    body_mask: str = _setting("fraction", "the body pixels intensity_norm takes its statistic over: fraction (above "
                                          "5% of the case's 99.9th percentile) | log-otsu (Otsu's threshold on "
                                          "log intensity: the same pixels under any power curve)", choices=BODY_MASKS)
    ema_decay: float | None = _setting(0.999, "exponential moving average of the weights per step, validated, "
                                              "saved and used for predict (null: off)", 0, 1, closed=False)
    # measured (pooled 5-fold, side by side): LGG +0.020 (20 of 30 patients better), BUSI +0.003 (62 of 110)
    ema_buffers: bool = _setting(True, "BatchNorm running mean/var of the averaged weights: their own moving "
                                       "average (true) or the live model's (false, medseg <= plan version 3)")
    # measured on cases no run saw (3 x 20-min single runs a data set, 2026-12-01): the last weights against the
    # selected window LGG +0.001 (30 patients), BUSI +0.012 (117 lesions, false masks 7 of 24 either way), while
    # the selection lifted BUSI's pooled cross-validation by 0.006-0.018 (chosen on the cases it scores)
    select: str = _setting("last", "RUN/best, the weights evaluate and predict use: last (the final averaged "
                                   "weights, as nnU-Net uses its final checkpoint) | window (the end of the best "
                                   "select_window-epoch run of validation Dice)", choices=SELECTIONS)
    select_window: int = _setting(5, "select window: the epoch ending the best running mean of this many "
                                     "validation Dice values (1: the single best epoch); also what patience counts", 1)

    # kaggle_3m marks a missing pre- or post-contrast scan with a copy of FLAIR; without training on such
    # copies a patient missing both got an empty mask (planning.planner.LAYOUT_DEFAULTS sets it for "lgg")
    channel_fill: dict | None = _setting(None, 'train with each channel but "source" replaced by a copy of it '
                                               'with probability "prob", as a layout marks a missing sequence, '
                                               'e.g. {"source": 1, "prob": 0.15} (null: off)')
    # measured on LGG (pooled 5-fold, 45 min, side by side, 0.3): mean +0.013 but 24 of 30 patients worse: off
    sequence_gamma: float = _setting(0.0, "probability that each sequence (channel) of a training sample gets "
                                          "its own gamma 0.5-2, as institutions render a sequence differently", 0, 1)
    init_seed: int | None = _setting(None, "seed of the weights' initialisation, sampling and augmentation "
                                           "(null: the split's seed); another value trains on the same split")

    # ---- data: decided by the data set (planning.planner.data_settings)
    data: str | None = None
    layout: str | None = None
    channels: int = 1
    unit: str = "case"
    intensity: dict = field(default_factory=lambda: {"mode": "range"})
    target_values: list = field(default_factory=list)
    target: str = "foreground"
    target_name: str | None = None
    classes: list = field(default_factory=list)  # multi-class runs: [{"name", "value", ...}], see above
    keep_aspect: bool = False
    preset: str | None = None

    # ---- split: patients, never slices
    seed: int = 0
    val_fraction: float = 0.2
    folds: int | None = None
    fold: int | None = None
    split: dict = field(default_factory=lambda: {"train": [], "val": []})

    # ---- run facts: what training measured or chose
    threads: int | None = None
    mean: list | None = None
    std: list | None = None
    normalization: str | None = None  # "dataset" (mean/std of the training images) or "imagenet"
    n_items: dict | None = None
    skipped: list | None = None
    # in a checkpoint: when it was saved
    epoch: int | None = None
    val_dice: float | None = None
    medseg_version: str | None = None
    version: int = PLAN_VERSION

    # ------------------------------------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, d: dict, source: str | Path | None = None) -> "Plan":
        """A plan (or checkpoint config) as JSON-read: version 1 (no "version", medseg <= 31ad044) to 6."""
        if not isinstance(d, dict):
            raise MedsegError(source, "not a medseg plan (expected a JSON object)")
        version = d.get("version", 1)
        if not isinstance(version, int) or version > PLAN_VERSION:
            raise MedsegError(source, f"plan version {version!r} is newer than this medseg reads "
                                      f"({PLAN_VERSION}): upgrade medseg")
        unknown = set(d) - FIELDS
        if unknown:
            raise MedsegError(source, f"unknown plan keys: {', '.join(sorted(unknown))}")
        if version == 1:  # what medseg <= 31ad044 did: no per-case intensity scaling, no weight averaging
            d = {"intensity_norm": "none", "ema_decay": None, "select_window": 1, **d}
        if version <= 2:  # the augmentation default of that time, for a plan that left it out
            d = {"augmentation": "default", **d}
        if version <= 3:  # the averaged weights were validated with the live model's BatchNorm statistics
            d = {"ema_buffers": False, **d}
        if version <= 4:  # `best` was the end of the best select_window-epoch run of validation Dice
            d = {"select": "window", **d}
        if version <= 5:  # test-time augmentation at the training size only, as the run was evaluated
            d = {"tta_scales": [], **d}
        return cls(**{**d, "version": PLAN_VERSION})

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()), path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MedsegError(path, f"cannot read the plan ({type(e).__name__}: {e})".replace("\n", " ")) from e

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "Plan":
        """A copy with these fields changed (unknown names are a MedsegError, as in `--set`)."""
        d = self.to_dict()
        for k in changes:
            if k not in FIELDS:
                raise MedsegError(None, f"unknown setting {k!r}; known: {', '.join(sorted(SETTINGS))}")
        d.update(changes)
        return Plan(**d)

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in SETTINGS}

    # ------------------------------------------------------------------------------------------------ views
    @property
    def in_channels(self) -> int:
        """The network's input channels: the image's, times 2k + 1 for 2.5D input with k neighbours each side."""
        return int(self.channels) * (2 * int(self.neighbours or 0) + 1)

    @property
    def patch(self) -> tuple[int, int, int]:
        """3D models: the D x H x W training patch; each side must pass the U-Net's downsamplings."""
        size = self.patch_size or list(DEFAULT_PATCH)
        levels = self._levels
        if len(size) != 3 or any(int(s) < 1 or int(s) % 2 ** levels for s in size):
            raise MedsegError(None, f"patch_size must be 3 sides (D, H, W), each a multiple of {2 ** levels} for "
                                    f"this {levels + 1}-level U-Net; got {size}")
        return tuple(int(s) for s in size)

    @property
    def _levels(self) -> int:
        """The U-Net's downsamplings: sizes must be multiples of 2 ** this."""
        return len((self.model_args or {}).get("features") or (0,) * 5) - 1

    def _size_multiple(self) -> tuple[int, str]:
        """What 2D training sizes must be a multiple of, and of which network. MONAI's UNet and the VGG16 U-Net
        cannot join odd halves at their skips (found by a forward pass at 100 and 120 px); the milesial, Buda and
        unet2d nets pad or crop there and take any size."""
        if self.model == "unet":
            return 2 ** self._levels, f"this {self._levels + 1}-level U-Net"
        if self.model == "vgg16-unet":
            return 16, "vgg16-unet (4 poolings before the bottleneck)"
        return 1, self.model

    def _check_sizes(self) -> None:
        """2D training sizes the network can halve to its bottleneck and join back."""
        multiple, net = self._size_multiple()
        if int(self.image_size) % multiple:
            raise MedsegError(None, f"image_size must be a multiple of {multiple} for {net}, got {self.image_size}")
        if self.coarse_share and (int(self.coarse_size) % multiple or self.coarse_size > self.image_size):
            raise MedsegError(None, f"coarse_size must be a multiple of {multiple} ({net}) no larger than "
                                    f"image_size {self.image_size}, got {self.coarse_size}")

    @property
    def multiclass(self) -> bool:
        return bool(self.classes)

    @property
    def out_channels(self) -> int:
        """The network's outputs: one logit (sigmoid) for a binary run, K + 1 (softmax) for K classes."""
        return len(self.classes) + 1 if self.classes else 1

    def class_values(self) -> list[int]:
        """Class index -> the value written in label maps (index 0: background, 0)."""
        return [0] + [int(c["value"]) for c in self.classes]

    def class_names(self) -> list[str]:
        return [str(c["name"]) for c in self.classes]

    # ------------------------------------------------------------------------------------------------ checks
    def validate(self, spatial_dims: int = 2) -> "Plan":
        """Every check of the settings, in one place; a bad value stops before any work with one line naming
        the setting. `spatial_dims`: the model's (models.SPATIAL_DIMS), for the 3D-only checks."""
        for f in fields(self):
            if f.metadata.get("range"):
                _check_range(f.name, getattr(self, f.name), *f.metadata["range"])
        if self.sampling not in SAMPLINGS:
            raise MedsegError(None, f"unknown sampling {self.sampling!r}; known: {', '.join(SAMPLINGS)}")
        if not isinstance(self.select_window, int) or isinstance(self.select_window, bool):
            raise MedsegError(None, f"select_window must be a whole number of epochs >= 1, got {self.select_window!r}")
        if self.select not in SELECTIONS:
            raise MedsegError(None, f"select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise MedsegError(None, f"patience must be a whole number of epochs >= 1 or null, got {self.patience!r}")
        if not self.time_budget_s and not self.epochs:
            raise MedsegError(None, "no end for the run: give --epochs or --time-budget")
        if self.intensity_norm not in INTENSITY_NORMS:
            raise MedsegError(None, f"intensity_norm must be one of {', '.join(INTENSITY_NORMS)}, "
                                    f"got {self.intensity_norm!r}")
        if self.body_mask not in BODY_MASKS:
            raise MedsegError(None, f"body_mask must be one of {', '.join(BODY_MASKS)}, got {self.body_mask!r}")
        self._check_channel_fill()
        self._check_sizes()
        if (self.precision or "auto") not in PRECISIONS:
            raise MedsegError(None, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _check_classes(self.classes)
        if self.classes and self.loss not in MULTICLASS_LOSSES:
            raise MedsegError(None, f"loss {self.loss!r} is for binary runs; a multi-class run takes "
                                    f"{' or '.join(MULTICLASS_LOSSES)} (softmax over background + classes)")
        scales = self.tta_scales
        if not isinstance(scales, list) or any(isinstance(f, bool) or not isinstance(f, (int, float))
                                               or not 0.5 <= f <= 2 for f in scales):
            raise MedsegError(None, f"tta_scales must be a list of factors 0.5..2, e.g. [0.875, 1.125] or [], "
                                    f"got {scales!r}")
        if not isinstance(self.soft_labels, bool):
            raise MedsegError(None, f"soft_labels must be true or false, got {self.soft_labels!r}")
        if self.soft_labels and (self.classes or spatial_dims == 3):
            raise MedsegError(None, "soft_labels is for binary 2D runs; this run is "
                                    + ("multi-class" if self.classes else "3D"))
        if spatial_dims == 3:
            self.patch  # noqa: B018  (raises on a bad patch_size)
            if self.augmentation not in ("3d", "none"):
                raise MedsegError(None, f"augmentation {self.augmentation!r} is for 2D images; the 3D model "
                                        f"takes '3d' or 'none'")
        return self


    def _check_channel_fill(self) -> None:
        f = self.channel_fill
        if f is None:
            return
        ok = isinstance(f, dict) and set(f) == {"source", "prob"} and isinstance(f["source"], int) \
            and not isinstance(f["source"], bool) and 0 <= f["source"] < max(1, int(self.channels))
        if not ok or isinstance(f["prob"], bool) or not isinstance(f["prob"], (int, float)) or not 0 <= f["prob"] <= 1:
            raise MedsegError(None, f'channel_fill must be {{"source": a channel index below {self.channels}, '
                                    f'"prob": 0..1}} or null, got {f!r}')


def _check_classes(classes: list) -> None:
    """Names unique, values distinct whole numbers 1..255 (uint8 label maps, DICOM SEG segment numbers)."""
    if not isinstance(classes, list):
        raise MedsegError(None, f"classes must be a list of {{name, value}}, got {classes!r}")
    names = [str(c.get("name")) for c in classes if isinstance(c, dict)]
    values = [c.get("value") for c in classes if isinstance(c, dict)]
    if len(names) != len(classes) or len(set(names)) != len(names):
        raise MedsegError(None, f"classes need distinct names, got {names}")
    if any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 255 for v in values) \
            or len(set(values)) != len(values):
        raise MedsegError(None, f"class values must be distinct whole numbers 1..255, got {values}")


def _check_range(key: str, v, lo, hi, closed: bool) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise MedsegError(None, f"setting {key} must be a number, got {v!r}")
    low_ok = v >= lo if closed else v > lo
    if not low_ok or (hi is not None and v > hi):
        span = f"{'>=' if closed else '>'} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise MedsegError(None, f"setting {key} must be {span}, got {v}")


FIELDS = frozenset(f.name for f in fields(Plan))
SETTINGS = tuple(f.name for f in fields(Plan) if f.metadata.get("setting"))
DEFAULTS = {k: getattr(Plan(), k) for k in SETTINGS}  # a view of the field defaults above, for listings


def parse_setting(text: str) -> tuple[str, object]:
    """`key=value` from the command line: the value is JSON if it parses (numbers, lists, null), else a
    string. Parsed, never evaluated; the key must be a known plan setting."""
    if "=" not in text:
        raise MedsegError(None, f"--set expects key=value, got {text!r}")
    key, raw = (t.strip() for t in text.split("=", 1))
    if key not in SETTINGS:
        raise MedsegError(None, f"unknown setting {key!r}; known: {', '.join(sorted(SETTINGS))}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value
