"""TrainConfig: every setting of a training run, with the reference recipe as defaults.

``dataset='imagenet'`` reads an ImageFolder tree (``data/imagenet.py``) and builds the ImageNet WRN
(``arch='imagenet'``); ``crop_size`` / ``resize_size`` / ``workers`` apply to it only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onebit.cache import file_sha256
from onebit.data.datasets import DATASET_CLASSES
from onebit.errors import ConfigError
from onebit.models import WRNConfig
from onebit.models.limits import MAX_DIM
from onebit.train.schedules import SCHEDULES

ADDED_FIELDS = {"classes", "crop_size", "resize_size", "label_smoothing", "warmup_epochs", "ema_decay", "teacher",
                "distill_weight", "distill_temperature"}  # hashed only when not
# at their defaults
# Settings that do not change a run's results (paths, devices, speed options): left out of the config hash,
# ignored when grouping runs into variants, and the ones a resumed run may change.
NOT_RESULT_SETTINGS = frozenset({"data_dir", "device", "num_threads", "eval_batch_size", "compile", "workers"})
# Settings every run's config.json has recorded since the first release (they define the network and its
# schedule): a recorded config without one of them is damaged, not old.
RECORDED_ALWAYS = ("dataset", "depth", "width", "norm", "weight_bits", "epochs", "schedule", "lr", "batch_size",
                   "seed")
# Upper bounds on what sizes work (threads, memory, time): far beyond any real run, low enough that a typo
# is refused in one line instead of hanging, crashing or asking for petabytes.
LIMITS = {"num_threads": 1024, "workers": 256, "epochs": 100_000, "first_cycle": 100_000,
          "batch_size": 1_000_000, "eval_batch_size": 100_000, "depth": 1_000, "width": 1_000,
          "classes": 100_000, "crop_size": 4_096, "resize_size": 4_096, "lr": 1e6, "weight_decay": 1.0,
          "temperature": 1e6}
MAX_CONV_WEIGHTS = 1_000_000_000     # ~4 GB of float32 weights, ~12 GB with gradients and momentum


def option(default: Any, help: str) -> Any:
    """A TrainConfig field with its command-line help text (``onebit train --help``) beside it."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # data
    dataset: str = option("cifar10", "cifar10, cifar100 or imagenet (ImageFolder tree)")
    data_dir: str | None = option(None, "folder holding the dataset "
                                        "(default: $ONEBIT_DATA or ~/.cache/onebit/data)")
    val_size: int = option(0, "hold out N training images as a validation set")
    train_limit: int = option(0, "train on the first N training images only (0 = all)")
    classes: int = option(0, "number of classes (0 = the dataset's)")  # set it for other ImageFolder sets
    crop_size: int = option(224, "ImageNet crop size")  # training and evaluation crop
    resize_size: int = option(256, "ImageNet shorter side before the evaluation centre crop")
    workers: int = option(8, "ImageNet data-loading worker processes per rank (capped at the CPU count)")
    # model
    depth: int = option(20, "WRN depth d (6n+2; ImageNet 8n+2)")
    width: int = option(10, "WRN width k (16k channels in stage 1)")
    norm: str = option("none", "bn (BN + ReLU, ICLR 2018) or none (shifted ReLU, 2019)")
    weight_bits: int = option(1, "1 or 32")
    temperature: float | None = option(None, "head temperature T of BN-free nets (default: paper's)")
    binarize_first_last: bool = option(True, "binarize the first and last conv too (reference: yes)")
    # optimisation (reference recipe)
    epochs: int = option(300, "training epochs")
    schedule: str = option("cosine", "cosine (one cycle) or restarts (SGDR 2, 4, 8, ... epochs)")
    lr: float = option(0.1, "peak learning rate")
    lr_min: float = option(1e-5, "final learning rate of each cosine cycle")
    first_cycle: int = option(2, "length in epochs of the first warm-restart cycle")
    warmup_epochs: int = option(0, "linear learning-rate warm-up: the schedule's rate scaled by (step+1)/steps "
                                   "over the first N epochs (0 = off, as the paper)")
    batch_size: int = option(125, "global batch size")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "weight decay on conv weights")
    label_smoothing: float = option(0.0, "label smoothing of the training loss, 0..<1 (0 = off, as the paper)")
    ema_decay: float = option(0.0, "exponential moving average of the weights, decay per step, 0..<1 (0 = off, as "
                                   "the paper; e.g. 0.999): evaluation and the final model use the average")
    teacher: str | None = option(None, "distil from this model file (.onebit, checkpoint or released .mat), or "
                                       "reference:NAME, a model released with the reference implementation "
                                       "in $ONEBIT_REFERENCE_MODELS; its logits are computed once and cached")
    distill_weight: float = option(0.5, "with --teacher: weight a of the teacher's soft loss, 0<a<=1")
    distill_temperature: float = option(4.0, "with --teacher: softmax temperature of the soft loss")
    # augmentation
    translate: int = option(4, "max random translation in pixels (0 = off)")
    flip: bool = option(True, "random horizontal flips")
    cutout: int = option(18, "cutout patch size (0 = off)")
    # run
    seed: int = option(0, "random seed")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    amp: bool | None = option(None, "bf16 autocast (default: on for GPUs, off on CPUs; on a CPU with native "
                                    "bf16, AVX-512 BF16 or AMX, --amp trains 1.4-3.4x faster per step)")
    channels_last: bool = option(True, "channels_last (NHWC) memory format, on GPU and CPU")
    compile: bool | None = option(None, "torch.compile the model (default: on for CUDA, off on CPU)")
    num_threads: int = option(0, "CPU threads (0 = the usable CPUs that other processes are not busy on)")
    eval_batch_size: int = option(500, "evaluation batch size")
    bn_recompute: bool = option(True, "recompute BN statistics after training")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self._check_types()
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and self.lr_min >= 0, "lr must be > 0 and lr_min >= 0"),
            (self.lr_min <= self.lr, f"lr_min {self.lr_min} must not exceed lr {self.lr}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (self.first_cycle >= 1, "first_cycle must be >= 1"),
            (0 <= self.warmup_epochs < self.epochs,
             f"warmup_epochs must be 0..epochs-1, got {self.warmup_epochs} for {self.epochs} epochs"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in 0..<1, got {self.label_smoothing}"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in 0..<1, got {self.ema_decay}"),
            (0 < self.distill_weight <= 1, f"distill_weight must be in 0<..1, got {self.distill_weight}"),
            (0 < self.distill_temperature <= 100,
             f"distill_temperature must be in 0<..100, got {self.distill_temperature}"),
            (self.teacher is None or self.dataset != "imagenet", "--teacher applies to CIFAR runs only"),
            (self.teacher is not None or (self.distill_weight, self.distill_temperature) == (0.5, 4.0),
             "distill_weight and distill_temperature apply with a teacher only; set --teacher or drop them"),
            (self.val_size >= 0 and self.train_limit >= 0, "val_size and train_limit must be >= 0"),
            (self.weight_decay >= 0 and 0 <= self.momentum < 1, "need weight_decay >= 0, 0 <= momentum < 1"),
            (0 <= self.translate <= 16 and 0 <= self.cutout <= 32, "translate must be 0..16, cutout 0..32"),
            (self.dataset in DATASET_CLASSES,
             f"unknown dataset {self.dataset!r}; choose from {', '.join(DATASET_CLASSES)}"),
            (self.classes >= 0 and self.workers >= 0, "classes and workers must be >= 0"),
            (self.dataset == "imagenet" or self.classes in (0, DATASET_CLASSES.get(self.dataset)),
             f"{self.dataset} has {DATASET_CLASSES.get(self.dataset)} classes, not {self.classes}"),
            (self.dataset != "imagenet" or (self.translate == 0 and self.cutout == 0),
             "translate and cutout are CIFAR augmentations; ImageNet uses random-resized crops "
             "(set --translate 0 --cutout 0, or start from an imagenet-* preset)"),
            (8 <= self.crop_size <= self.resize_size,
             f"need 8 <= crop_size <= resize_size, got {self.crop_size} and {self.resize_size}"),
            (0 <= self.seed < 1 << 63, f"seed must be in 0..2**63-1, got {self.seed}"),
            (self.num_threads >= 0, f"num_threads must be >= 0 (0 = automatic), got {self.num_threads}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            (self.temperature is None or self.temperature > 0,
             f"temperature must be > 0, got {self.temperature}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if value is not None and value > limit:
                raise ConfigError(f"{name} = {value} is above the limit of {limit}")
        check_device_name(self.device)
        weights = self.model_config().conv_weight_estimate()
        if weights > MAX_CONV_WEIGHTS:
            raise ConfigError(f"depth {self.depth} x width {self.width} means ~{weights:.3g} conv weights, above "
                              f"the limit of {MAX_CONV_WEIGHTS:.0e}")

    def _check_types(self) -> None:
        """Every value of the type its field declares; numbers finite, integers within MAX_DIM where they
        describe a size (catches ``"epochs": "3"`` in a config file, ``--lr inf`` on the command line)."""
        types = field_types()
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), types[f.name]
            if value is None and f.default is None:
                continue
            if kind is bool:
                ok, want = isinstance(value, bool), "true or false"
            elif kind is int:
                ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
            elif kind is float:
                ok, want = (isinstance(value, (int, float)) and not isinstance(value, bool)
                            and math.isfinite(value)), "a finite number"
            else:
                ok, want = isinstance(value, str), "a string"
            if not ok:
                raise ConfigError(f"{f.name} must be {want}, got {value!r}")
            if kind is int and f.name != "seed" and not -MAX_DIM <= value <= MAX_DIM * 64:
                raise ConfigError(f"{f.name} = {value} is out of range")

    @property
    def num_classes(self) -> int:
        return self.classes or DATASET_CLASSES[self.dataset]  # validate() rejected unknown datasets

    @property
    def arch(self) -> str:
        return "imagenet" if self.dataset == "imagenet" else "cifar"

    def model_config(self) -> WRNConfig:
        try:
            return WRNConfig(depth=self.depth, width=self.width, num_classes=self.num_classes, norm=self.norm,
                             weight_bits=self.weight_bits, temperature=self.temperature,
                             binarize_first_last=self.binarize_first_last, arch=self.arch)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None, recorded: bool = False) -> "TrainConfig":
        """A validated config from a dict (e.g. decoded JSON); ``source`` names the input in errors.

        ``recorded``: ``data`` is a run's own record (config.json), which has always held the settings that
        define the network and its schedule; one that lacks any of them is refused, not filled with defaults.
        """
        try:
            if not isinstance(data, dict):
                raise ConfigError(f"expected a JSON object of training options, got {type(data).__name__}")
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(data) - known)
            if unknown:
                raise ConfigError(f"unknown training options: {', '.join(unknown)}")
            missing = [k for k in RECORDED_ALWAYS if k not in data] if recorded else []
            if missing:
                raise ConfigError(f"the recorded configuration lacks {', '.join(missing)}")
            return cls(**data)
        except ConfigError as exc:
            if source is None:
                raise
            raise ConfigError(f"{source}: {exc}") from None

    def replace(self, **changes: Any) -> "TrainConfig":
        return self.from_dict({**self.to_dict(), **changes})

    def hash(self) -> str:
        """A short stable hash of the settings that change results (not paths, devices or speed options).

        Options added after the first release count only when they differ from their defaults, so the
        hashes of earlier configurations stay valid. ``amp = true`` hashes as ``"bf16"``: before CPUs trained
        in bf16, CPU runs recorded ``amp = true`` and trained in float32, so a bf16 run must not share their
        hash. The teacher counts by its file's SHA-256 (the same file anywhere has the same hash).
        """
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        items = {k: v for k, v in self.to_dict().items()
                 if k not in NOT_RESULT_SETTINGS and not (k in ADDED_FIELDS and v == defaults[k])}
        if self.amp is True:
            items["amp"] = "bf16"
        if self.teacher is not None:
            items["teacher"] = (file_sha256(teacher_file(self.teacher, must_exist=False))
                                or Path(self.teacher).name)
        return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


REFERENCE_PREFIX = "reference:"


def reference_models_dir() -> Path:
    """``$ONEBIT_REFERENCE_MODELS`` if set, else a per-user folder: where ``reference:NAME`` teachers live."""
    return Path(os.environ.get("ONEBIT_REFERENCE_MODELS") or "~/.cache/onebit/reference-models").expanduser()


def teacher_file(teacher: str, must_exist: bool = True) -> Path:
    """The model file a ``teacher`` setting names: a path, or ``reference:NAME``, the file NAME released with
    the reference implementation (github.com/McDonnell-Lab/1-bit-per-weight, TrainedModels/) in
    ``reference_models_dir()``. ConfigError, naming where it looked, when ``must_exist`` and it is absent."""
    if not teacher.startswith(REFERENCE_PREFIX):
        path = Path(teacher).expanduser()
        if must_exist and not path.is_file():
            raise ConfigError(f"teacher {path}: no such model file")
        return path
    name = teacher[len(REFERENCE_PREFIX):]
    if not name or Path(name).name != name:
        raise ConfigError(f"teacher {teacher!r}: reference:NAME takes a file name, e.g. "
                          f"reference:CIFAR10_allparams.mat")
    path = reference_models_dir() / name
    if must_exist and not path.is_file():
        raise ConfigError(f"teacher {teacher}: {path} not found; set ONEBIT_REFERENCE_MODELS to the folder holding "
                          f"the released models (github.com/McDonnell-Lab/1-bit-per-weight, TrainedModels/)")
    return path


def check_device_name(name: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (the only devices onebit runs on), else ConfigError."""
    if re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?", name) is None:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def field_types() -> dict[str, type]:
    """Field name -> the type that parses its command-line value (``X | None`` -> ``X``)."""
    hints = typing.get_type_hints(TrainConfig)
    return {name: next((t for t in typing.get_args(hint) if t is not type(None)), hint)
            for name, hint in hints.items()}
