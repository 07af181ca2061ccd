"""Hostile input, table-driven: every bad option, file or store gives a non-zero exit, exactly one line on
stderr naming the problem, no traceback, and leaves every existing file as it was.

Most cases run in this process through ``onebit.cli.main``; a few run ``python -m onebit`` for real.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from onebit.cli import main
from onebit.export.packed import save_packed
from onebit.models import WRNConfig, build_model
from onebit.rundir import RunDir
from onebit.train.checkpoint import save_checkpoint
from onebit.train.config import TrainConfig

from conftest import write_cifar_batch

MODEL = WRNConfig(depth=8, width=1)


def _cifar(folder: Path, dtype=np.uint8, scale: float = 1.0) -> Path:
    rng = np.random.default_rng(0)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}", 20) for i in range(1, 6)] + [("test_batch", 20)]:
        images = rng.integers(0, 256, (n, 3072))
        if dtype == np.uint8:
            write_cifar_batch(batches / name, images, rng.integers(0, 10, n).tolist())
        else:
            (batches / name).write_bytes(pickle.dumps({"data": images.astype(dtype) * scale,
                                                       "labels": rng.integers(0, 10, n).tolist()}, protocol=2))
    return folder


def _checkpoint(path: Path, model_config=None, state=None, train_config=None, raw_config=None, poison=None,
                **meta) -> Path:
    """A checkpoint of MODEL whose metadata may be replaced by hostile values (``poison``: a value written
    into the first conv weight)."""
    model = build_model(MODEL)
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    if poison is not None:
        first = next(k for k in tensors if k.endswith("weight"))
        tensors[first] = tensors[first].clone()
        tensors[first].view(-1)[0] = poison
    metadata = {"format": "onebit-checkpoint", "version": "1",
                "model_config": json.dumps(model_config if model_config is not None else MODEL.to_dict()),
                "train_config": json.dumps(train_config if train_config is not None else {}),
                "state": json.dumps(state if state is not None else {"epoch": 1, "best": {}})}
    metadata.update(meta)
    if raw_config is not None:
        metadata["model_config"] = raw_config
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace: data, a finished run, a packed model, a results store, sweep files, hostile files."""
    from onebit.experiments.store import ResultsStore, RunRecord

    root = tmp_path_factory.mktemp("hostile")
    data = _cifar(root / "data")
    _cifar(root / "data64", dtype=np.float64, scale=1000.0)
    cfg = TrainConfig(data_dir=str(data), depth=8, width=1, epochs=2, batch_size=50, num_threads=1)
    run = RunDir(root / "run")
    model = build_model(cfg.model_config())
    save_checkpoint(run.checkpoint, model, cfg.model_config(), None, cfg.to_dict(),
                    {"epoch": 2, "step": 4, "finished": True, "best": {}, "elapsed_s": 1.0})
    run.write_config(cfg.to_dict())
    run.write_metrics([{"epoch": 1, "train_loss": 2.3}, {"epoch": 2, "train_loss": 2.2}])
    run.write_results({"epochs": 2, "test_acc": 0.1, "best": {}})
    save_packed(model, root / "m.onebit")
    with ResultsStore(root / "runs.db") as store:
        store.record(RunRecord(config_hash=cfg.hash(), config=cfg.to_dict(), final={"test_acc": 0.1, "best": {}},
                               epochs=[{"epoch": 1, "test_acc": 0.1}]))
    (root / "empty").write_bytes(b"")
    (root / "garbage.db").write_bytes(b"SQLite format 3\0" + os.urandom(3000))
    (root / "random.bin").write_bytes(os.urandom(4096))
    (root / "afile").write_text("not a folder\n")
    (root / "cexport").mkdir()
    (root / "cexport" / "Makefile").write_text("all:\n\techo mine\n")
    (root / "folder").mkdir()
    (root / "noconfig").mkdir()
    for name, state in [("ckpt_epoch_abc", {"epoch": "abc"}), ("ckpt_state_list", [1, 2]),
                        ("ckpt_elapsed_inf", {"epoch": 1, "elapsed_s": float("inf")})]:
        r = RunDir(root / name)
        _checkpoint(r.checkpoint, state=state, train_config=cfg.to_dict())
        r.write_config(cfg.to_dict())
    _checkpoint(root / "deep.safetensors", model_config={**MODEL.to_dict(), "depth": 60000002})
    _checkpoint(root / "wide.safetensors", model_config={**MODEL.to_dict(), "width": 100000})
    _checkpoint(root / "manydeep.safetensors", model_config={**MODEL.to_dict(), "depth": 1000004})
    _checkpoint(root / "tc_list.safetensors", train_config=[1])
    _checkpoint(root / "cfg_str.safetensors", model_config={**MODEL.to_dict(), "width": "1"})
    _checkpoint(root / "cfg_list.safetensors", model_config=[8, 1])
    _checkpoint(root / "badjson.safetensors", raw_config="{not json")
    _checkpoint(root / "version9.safetensors", version="9")
    _checkpoint(root / "temp_inf.safetensors", model_config={**MODEL.to_dict(), "temperature": float("inf")})
    # a .onebit whose model_config says temperature Infinity (checksum made to match)
    _packed_with_config(root / "m.onebit", {**MODEL.to_dict(), "temperature": float("inf")})
    for name, text in [("list.json", "[1, 2]"), ("epochs_str.json", None), ("broken.json", "{\"epochs\": "),
                       ("unknown.json", None)]:
        r = RunDir(root / f"cfg_{name.split('.')[0]}")
        r.path.mkdir()
        if name == "epochs_str.json":
            text = json.dumps({**cfg.to_dict(), "epochs": "3"})
        if name == "unknown.json":
            text = json.dumps({**cfg.to_dict(), "colour": "red"})
        r.config.write_text(text)
    sweeps = {
        "seed_list": '[base]\npreset = "cifar10-tiny"\n[grid]\nseed = ["x", 1]\n',
        "sweep_int": 'sweep = 5\n[base]\npreset = "cifar10-tiny"\n',
        "nested": "a = " + "[" * 5000 + "]" * 5000 + "\n",
        "unknown_table": '[base]\npreset = "cifar10-tiny"\n[gird]\nseed = [1]\n',
        "bad_toml": '[base\npreset = "x"\n',
        "axis_scalar": '[base]\npreset = "cifar10-tiny"\n[grid]\nseed = 3\n',
        "lr_inf": '[base]\npreset = "cifar10-tiny"\nlr = inf\n',
        "rule_no_when": '[base]\npreset = "cifar10-tiny"\n[[rule]]\nset = {lr = 0.1}\n',
        "unknown_option": '[base]\npreset = "cifar10-tiny"\ncolour = "red"\n',
        "unknown_preset": '[base]\npreset = "nope"\n',
        "epochs_str": '[base]\npreset = "cifar10-tiny"\nepochs = "3"\n',
        "rule_array": 'rule = 3\n[base]\npreset = "cifar10-tiny"\n',
        "ok": '[base]\npreset = "cifar10-tiny"\n[grid]\nseed = [0, 1]\n',
        "binary": None,
    }
    for name, text in sweeps.items():
        path = root / f"{name}.toml"
        path.write_bytes(os.urandom(64) + b"\xff\xfe" if text is None else text.encode())
    # issue 23: resumes that do not match their checkpoint, damaged configs, impossible constants
    for name, ckpt_cfg, config in [("edited", cfg.to_dict(), {**cfg.to_dict(), "seed": 7}),
                                   ("foreign_ckpt", {**cfg.to_dict(), "lr": 0.05}, cfg.to_dict())]:
        r = RunDir(root / name)
        save_checkpoint(r.checkpoint, model, cfg.model_config(), None, ckpt_cfg,
                        {"epoch": 1, "step": 2, "finished": False, "best": {}, "elapsed_s": 1.0})
        r.write_config(config)
        r.write_metrics([{"epoch": 1, "train_loss": 2.3}])
    r = RunDir(root / "no_depth")
    r.path.mkdir()
    r.write_config({k: v for k, v in cfg.to_dict().items() if k != "depth"})
    bn = build_model(WRNConfig(depth=8, width=1, norm="bn"))
    for name, value in [("bn_nan", float("nan")), ("bn_negative_var", -1.0)]:
        bad = build_model(WRNConfig(depth=8, width=1, norm="bn"))
        bad.load_state_dict(bn.state_dict())
        next(m for m in bad.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var[0] = value
        save_packed(bad, root / f"{name}.onebit")
    _checkpoint(root / "weight_inf.safetensors", train_config=cfg.to_dict(), poison=float("inf"))
    os.mkfifo(root / "fifo")
    import sqlite3
    with sqlite3.connect(root / "foreign.db") as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    import shutil
    shutil.copy(root / "runs.db", root / "text_acc.db")
    with sqlite3.connect(root / "text_acc.db") as db:
        db.execute("UPDATE runs SET test_acc = 'high'")
    db.close()
    (root / "huge_grid.toml").write_text('[base]\npreset = "cifar10-tiny"\n[grid]\nseed = %s\nlr = %s\n'
                                         % (list(range(1000)), [0.01 * (i + 1) for i in range(1000)]))
    import scipy.io
    scipy.io.savemat(root / "compressed.mat", {"x": np.zeros((200, 200))}, do_compression=True)
    raw = bytearray((root / "compressed.mat").read_bytes())
    for i in range(200, 260):
        raw[i] ^= 0xFF
    (root / "flipped.mat").write_bytes(bytes(raw))
    (root / "compressed.mat").unlink()
    (root / "empty.mat").write_bytes(b"")
    scipy.io.savemat(root / "other.mat", {"x": np.zeros(3)})
    return root


def _packed_with_config(source: Path, config: dict) -> None:
    """Write ``hostile_temp.onebit``: the packed file ``source`` with ``config`` (and a matching checksum)."""
    from safetensors import safe_open

    from onebit.export.packed import _checksum

    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    metadata["model_config"] = json.dumps(config, sort_keys=True)
    metadata["sha256"] = _checksum({k: v.numpy() for k, v in tensors.items()}, metadata["model_config"],
                                   metadata["extra"])
    save_file(tensors, str(source.parent / "hostile_temp.onebit"), metadata=metadata)


T = ["--depth", "8", "--width", "1", "--num-threads", "1", "--no-progress", "--batch-size", "50",
     "--epochs", "1"]
BAD_UTF8 = os.fsdecode(b"run-\xff\xfe")

# (id, argv with {ws} for the workspace, text the one stderr line must contain)
CASES = [
    # train: numeric options finite and in range, right types, conflicts (issue 10 items 7, 8)
    ("train-temperature-inf", ["train", "--temperature", "inf", "--run-dir", "{ws}/new"], "temperature"),
    ("train-lr-inf", ["train", "--lr", "inf", "--run-dir", "{ws}/new"], "lr must be a finite number"),
    ("train-lr-nan", ["train", "--lr", "nan", "--run-dir", "{ws}/new"], "lr must be a finite number"),
    ("train-lr-negative", ["train", "--lr", "-1", "--run-dir", "{ws}/new"], "lr must be > 0"),
    ("train-stop-after-negative", ["train", "--stop-after", "-5", "--run-dir", "{ws}/new"], "--stop-after"),
    ("train-stop-after-zero", ["train", "--stop-after", "0", "--run-dir", "{ws}/new"], "--stop-after"),
    ("train-resume-and-preset", ["train", "--resume", "{ws}/run", "--preset", "cifar10-tiny"], "drop --preset"),
    ("train-resume-and-run-dir", ["train", "--resume", "{ws}/run", "--run-dir", "{ws}/other"], "--run-dir"),
    ("train-num-threads-negative", ["train", "--num-threads", "-3", "--run-dir", "{ws}/new"], "num_threads"),
    ("train-device-cuda-abc", ["train", "--device", "cuda:abc", "--run-dir", "{ws}/new"], "'cuda:abc'"),
    ("train-device-tpu", ["train", "--device", "tpu", "--run-dir", "{ws}/new"], "'tpu'"),
    ("train-epochs-zero", ["train", "--epochs", "0", "--run-dir", "{ws}/new"], "epochs must be >= 1"),
    ("train-batch-size-zero", ["train", "--batch-size", "0", "--run-dir", "{ws}/new"], "batch_size"),
    ("train-momentum-1.5", ["train", "--momentum", "1.5", "--run-dir", "{ws}/new"], "momentum"),
    ("train-weight-decay-negative", ["train", "--weight-decay", "-1", "--run-dir", "{ws}/new"], "weight_decay"),
    ("train-seed-negative", ["train", "--seed", "-1", "--run-dir", "{ws}/new"], "seed"),
    ("train-seed-huge", ["train", "--seed", str(1 << 70), "--run-dir", "{ws}/new"], "seed"),
    ("train-val-size-negative", ["train", "--val-size", "-1", "--run-dir", "{ws}/new"], "val_size"),
    ("train-cutout-99", ["train", "--cutout", "99", "--run-dir", "{ws}/new"], "cutout"),
    ("train-depth-9", ["train", "--depth", "9", "--run-dir", "{ws}/new"], "depth"),
    ("train-width-zero", ["train", "--width", "0", "--run-dir", "{ws}/new"], "width"),
    ("train-weight-bits-2", ["train", "--weight-bits", "2", "--run-dir", "{ws}/new"], "weight_bits"),
    ("train-norm-foo", ["train", "--norm", "foo", "--run-dir", "{ws}/new"], "norm"),
    ("train-schedule-foo", ["train", "--schedule", "foo", "--run-dir", "{ws}/new"], "schedule"),
    ("train-dataset-mnist", ["train", "--dataset", "mnist", "--run-dir", "{ws}/new"], "mnist"),
    ("train-eval-batch-zero", ["train", "--eval-batch-size", "0", "--run-dir", "{ws}/new"], "eval_batch_size"),
    ("train-lr-min-above-lr", ["train", "--lr", "0.1", "--lr-min", "1", "--run-dir", "{ws}/new"], "lr_min"),
    ("train-batch-size-text", ["train", "--batch-size", "abc"], "invalid int value: 'abc'"),
    ("train-unknown-preset", ["train", "--preset", "nope", "--run-dir", "{ws}/new"], "nope"),
    ("train-unknown-option", ["train", "--colour", "red"], "unrecognized arguments"),
    # train: run directories (items 3, 4, 9)
    ("train-into-finished-run", ["train", *T, "--run-dir", "{ws}/run"], "already holds a run"),
    ("train-resume-missing", ["train", "--resume", "{ws}/nowhere"], "no such run directory"),
    ("train-resume-no-config", ["train", "--resume", "{ws}/noconfig"], "not a run directory"),
    ("train-resume-config-list", ["train", "--resume", "{ws}/cfg_list"], "not a JSON object"),
    ("train-resume-config-epochs-str", ["train", "--resume", "{ws}/cfg_epochs_str"], "epochs must be an integer"),
    ("train-resume-config-broken", ["train", "--resume", "{ws}/cfg_broken"], "unreadable run configuration"),
    ("train-resume-config-unknown", ["train", "--resume", "{ws}/cfg_unknown"], "colour"),
    ("train-resume-change-depth", ["train", "--resume", "{ws}/run", "--depth", "14"], "cannot change depth"),
    ("train-resume-state-epoch-abc", ["train", "--resume", "{ws}/ckpt_epoch_abc"], "state.epoch = 'abc'"),
    ("train-resume-state-list", ["train", "--resume", "{ws}/ckpt_state_list"], "state is not a JSON object"),
    ("train-resume-elapsed-inf", ["train", "--resume", "{ws}/ckpt_elapsed_inf"], "state.elapsed_s"),
    ("train-run-dir-under-file", ["train", *T, "--data-dir", "{ws}/data", "--run-dir", "{ws}/afile/run"],
     "Not a directory"),
    ("train-run-dir-not-utf8", ["train", *T, "--run-dir", "{ws}/" + BAD_UTF8], "UTF-8"),
    ("train-float64-pixels", ["train", *T, "--data-dir", "{ws}/data64", "--run-dir", "{ws}/new64"], "uint8"),
    # eval (items 6, 7, 8)
    ("eval-batch-size-zero", ["eval", "{ws}/run", "--batch-size", "0"], "--batch-size must be >= 1"),
    ("eval-batch-size-negative", ["eval", "{ws}/run", "--batch-size", "-1"], "--batch-size must be >= 1"),
    ("eval-calibrate-negative", ["eval", "{ws}/run", "--engine", "c", "--c-mode", "int", "--calibrate", "-5"],
     "--calibrate must be >= 1"),
    ("eval-threads-zero", ["eval", "{ws}/run", "--threads", "0"], "--threads"),
    ("eval-device-tpu", ["eval", "{ws}/run", "--device", "tpu"], "'tpu'"),
    ("eval-device-cuda-abc", ["eval", "{ws}/run", "--device", "cuda:abc"], "'cuda:abc'"),
    ("eval-checkpoint-depth-60000002", ["eval", "{ws}/deep.safetensors"], "depth = 60000002 is out of range"),
    ("eval-checkpoint-width-100000", ["eval", "{ws}/wide.safetensors"], "has shape"),
    ("eval-checkpoint-depth-1000004", ["eval", "{ws}/manydeep.safetensors"], "needs more tensors"),
    ("eval-checkpoint-width-string", ["eval", "{ws}/cfg_str.safetensors"], "wrong type"),
    ("eval-checkpoint-config-list", ["eval", "{ws}/cfg_list.safetensors"], "not a JSON object"),
    ("eval-checkpoint-config-not-json", ["eval", "{ws}/badjson.safetensors"], "not valid JSON"),
    ("eval-checkpoint-version-9", ["eval", "{ws}/version9.safetensors"], "version '9'"),
    ("eval-checkpoint-temperature-inf", ["eval", "{ws}/temp_inf.safetensors"], "temperature"),
    ("eval-checkpoint-train-config-list", ["eval", "{ws}/tc_list.safetensors"], "train_config"),
    ("eval-packed-temperature-inf", ["eval", "{ws}/hostile_temp.onebit"], "temperature"),
    ("eval-missing-file", ["eval", "{ws}/missing.onebit"], "no such file"),
    ("eval-folder-without-checkpoint", ["eval", "{ws}/folder"], "no such file"),
    ("eval-empty-file", ["eval", "{ws}/empty"], "not a readable safetensors file"),
    ("eval-random-bytes", ["eval", "{ws}/random.bin"], "not a readable safetensors file"),
    ("eval-crops-on-cifar", ["eval", "{ws}/m.onebit", "--crops", "25"], "ImageNet models only"),
    ("eval-float64-pixels", ["eval", "{ws}/m.onebit", "--data-dir", "{ws}/data64"], "uint8"),
    ("summary-checkpoint-depth", ["summary", "{ws}/deep.safetensors"], "out of range"),
    ("summary-model-and-preset", ["summary", "{ws}/m.onebit", "--preset", "cifar10-tiny"], "exactly one"),
    # export (item 5, 8)
    ("export-c-into-user-folder", ["export", "{ws}/m.onebit", "--format", "c", "-o", "{ws}/cexport"], "not empty"),
    ("export-over-training-checkpoint", ["export", "{ws}/run", "-o", "{ws}/run/checkpoint.safetensors"],
     "is the model being exported"),
    ("export-over-existing-file", ["export", "{ws}/run", "-o", "{ws}/m.onebit"], "pass --force"),
    ("export-packed-to-folder", ["export", "{ws}/m.onebit", "-o", "{ws}/folder"], "is a folder"),
    ("export-onnx-to-folder", ["export", "{ws}/m.onebit", "--format", "onnx", "-o", "{ws}/folder"], "is a folder"),
    ("export-c-to-file", ["export", "{ws}/m.onebit", "--format", "c", "-o", "{ws}/afile"], "not a folder"),
    ("export-calibrate-negative", ["export", "{ws}/m.onebit", "--format", "c", "-o", "{ws}/c2", "--calibrate",
                                   "-1"], "--calibrate"),
    ("export-missing-model", ["export", "{ws}/missing.onebit", "-o", "{ws}/x.onebit"], "no such file"),
    # runs / report (items 8, 9)
    ("runs-empty-file", ["runs", "{ws}/empty"], "not a onebit results store"),
    ("runs-corrupt-db", ["runs", "{ws}/garbage.db"], "results store"),
    ("runs-random-file", ["runs", "{ws}/random.bin"], "results store"),
    ("runs-where-unknown-key", ["runs", "{ws}/runs.db", "--where", "foo=bar"], "unknown key"),
    ("runs-where-no-operator", ["runs", "{ws}/runs.db", "--where", "norm~bn"], "expected KEY=VALUE"),
    ("runs-missing-store", ["runs", "{ws}/missing.db"], "not found"),
    ("runs-folder", ["runs", "{ws}/folder"], "is a folder"),
    ("report-output-is-file", ["report", "{ws}/runs.db", "-o", "{ws}/afile"], "not a folder"),
    ("report-empty-store", ["report", "{ws}/empty", "-o", "{ws}/rep"], "not a onebit results store"),
    ("report-where-unknown-key", ["report", "{ws}/runs.db", "-o", "{ws}/rep", "--where", "foo=1"], "unknown key"),
    # sweep files (item 8)
    ("sweep-seed-list", ["sweep", "{ws}/seed_list.toml", "--dry-run"], "seed must be an integer"),
    ("sweep-table-is-int", ["sweep", "{ws}/sweep_int.toml", "--dry-run"], "must be a table"),
    ("sweep-nested-toml", ["sweep", "{ws}/nested.toml", "--dry-run"], "nested too deeply"),
    ("sweep-unknown-table", ["sweep", "{ws}/unknown_table.toml", "--dry-run"], "gird"),
    ("sweep-invalid-toml", ["sweep", "{ws}/bad_toml.toml", "--dry-run"], "not valid TOML"),
    ("sweep-axis-not-list", ["sweep", "{ws}/axis_scalar.toml", "--dry-run"], "non-empty list"),
    ("sweep-lr-inf", ["sweep", "{ws}/lr_inf.toml", "--dry-run"], "lr must be a finite number"),
    ("sweep-rule-without-when", ["sweep", "{ws}/rule_no_when.toml", "--dry-run"], "`when` table"),
    ("sweep-unknown-option", ["sweep", "{ws}/unknown_option.toml", "--dry-run"], "colour"),
    ("sweep-unknown-preset", ["sweep", "{ws}/unknown_preset.toml", "--dry-run"], "nope"),
    ("sweep-epochs-string", ["sweep", "{ws}/epochs_str.toml", "--dry-run"], "epochs must be an integer"),
    ("sweep-rule-not-array", ["sweep", "{ws}/rule_array.toml", "--dry-run"], "array of tables"),
    ("sweep-binary-file", ["sweep", "{ws}/binary.toml", "--dry-run"], "not valid TOML"),
    ("sweep-missing-file", ["sweep", "{ws}/missing.toml", "--dry-run"], "not found"),
    ("sweep-jobs-zero", ["sweep", "{ws}/ok.toml", "--jobs", "0"], "--jobs must be >= 1"),
    # issue 23: upper bounds on what sizes work
    ("train-num-threads-huge", ["train", "--num-threads", "1000000", "--run-dir", "{ws}/new"],
     "num_threads = 1000000 is above the limit of 1024"),
    ("train-num-threads-5000", ["train", "--num-threads", "5000", "--run-dir", "{ws}/new"], "num_threads"),
    ("train-depth-huge", ["train", "--depth", "200000", "--run-dir", "{ws}/new"], "depth = 200000 is above"),
    ("train-width-huge", ["train", "--width", "1000000", "--run-dir", "{ws}/new"], "width = 1000000 is above"),
    ("train-net-too-big", ["train", "--depth", "998", "--width", "100", "--run-dir", "{ws}/new"], "conv weights"),
    ("train-lr-huge", ["train", "--lr", "1e300", "--run-dir", "{ws}/new"], "lr = 1e+300 is above the limit of 1000000.0"),
    ("train-epochs-huge", ["train", "--epochs", "10000000", "--run-dir", "{ws}/new"], "epochs = 10000000"),
    ("sweep-grid-huge", ["sweep", "{ws}/huge_grid.toml", "--dry-run"], "1,000,000 points"),
    # issue 23: a resume must match its checkpoint; recorded configs are complete
    ("train-resume-edited-config", ["train", "--resume", "{ws}/edited", "--num-threads", "1", "--no-progress"], "seed: 0 -> 7"),
    ("train-resume-foreign-checkpoint", ["train", "--resume", "{ws}/foreign_ckpt"], "lr: 0.05 -> 0.1"),
    ("train-resume-config-without-depth", ["train", "--resume", "{ws}/no_depth"], "lacks depth"),
    ("train-resume-change-epochs", ["train", "--resume", "{ws}/run", "--epochs", "5"], "cannot change epochs"),
    ("train-stop-after-beyond-epochs", ["train", *T, "--stop-after", "3", "--run-dir", "{ws}/new"],
     "--stop-after 3 is beyond the run's 1 epochs"),
    ("train-run-dir-is-a-file", ["train", *T, "--data-dir", "{ws}/data", "--run-dir", "{ws}/afile"],
     "is a file, not a run directory"),
    # issue 23: impossible constants, non-regular files
    ("eval-packed-bn-nan", ["eval", "{ws}/bn_nan.onebit"], "NaN or infinite"),
    ("eval-packed-negative-variance", ["eval", "{ws}/bn_negative_var.onebit"], "negative variances"),
    ("export-onnx-bn-nan", ["export", "{ws}/bn_nan.onebit", "--format", "onnx", "-o", "{ws}/x.onnx"], "NaN"),
    ("export-c-bn-nan", ["export", "{ws}/bn_nan.onebit", "--format", "c", "-o", "{ws}/cnan"], "NaN"),
    ("eval-checkpoint-inf-weight", ["eval", "{ws}/weight_inf.safetensors"], "NaN or infinite"),
    ("eval-fifo", ["eval", "{ws}/fifo"], "is not a regular file"),
    ("eval-dev-zero", ["eval", "/dev/zero"], "is not a regular file"),
    # issue 23: never touch what is refused, never overwrite without --force
    ("sweep-foreign-store", ["sweep", "{ws}/ok.toml", "--store", "{ws}/foreign.db"], "not a onebit results store"),
    ("data-export-bin-existing", ["data", "export-bin", "--data-dir", "{ws}/data", "-o", "{ws}/afile"],
     "pass --force"),
    ("data-export-bin-same-file", ["data", "export-bin", "--data-dir", "{ws}/data", "-o", "{ws}/new.bin",
                                   "--labels", "{ws}/new.bin"], "same file"),
    # issue 23: no silent clamps or ignored options
    ("eval-calibrate-huge", ["eval", "{ws}/run", "--engine", "c", "--c-mode", "int", "--calibrate", "1000000000"],
     "above the 50,000 training images"),
    ("eval-calibrate-float-mode", ["eval", "{ws}/run", "--engine", "c", "--calibrate", "100"], "integer modes only"),
    ("eval-c-mode-with-torch", ["eval", "{ws}/run", "--c-mode", "int"], "C runtime only"),
    ("export-calibrate-huge", ["export", "{ws}/m.onebit", "--format", "c", "-o", "{ws}/c3", "--calibrate",
                               "1000000000"], "above the 50,000"),
    ("export-calibrate-packed", ["export", "{ws}/m.onebit", "-o", "{ws}/p.onebit", "--calibrate", "10"],
     "--format c only"),
    ("bench-calibrate-negative", ["bench", "inference", "wrn-8-1", "--calibrate", "-1", "-o", "{ws}/b"], "calibrate"),
    ("bench-subjects-empty", ["bench", "inference", "wrn-8-1", "--subjects", "", "-o", "{ws}/b"], "no benchmark subjects"),
    # issue 23: stores are validated as they are read
    ("runs-text-accuracy", ["runs", "{ws}/text_acc.db"], "test_acc = 'high' is not a number"),
    ("report-text-accuracy", ["report", "{ws}/text_acc.db", "-o", "{ws}/rep"], "is not a number"),
    # import-reference (item 8)
    ("import-empty-mat", ["import-reference", "{ws}/empty.mat", "-o", "{ws}/x.onebit"], "MATLAB"),
    ("import-bit-flipped-mat", ["import-reference", "{ws}/flipped.mat", "-o", "{ws}/x.onebit"], "MATLAB"),
    ("import-not-a-model", ["import-reference", "{ws}/other.mat", "-o", "{ws}/x.onebit"], "not a released"),
    ("import-missing", ["import-reference", "{ws}/missing.mat", "-o", "{ws}/x.onebit"], "no such file"),
]


def tree_hashes(root: Path) -> dict[str, str]:
    """Every entry under ``root``: regular files by content hash, folders and others (FIFOs) by kind."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            out[str((Path(dirpath) / name).relative_to(root)) + "/"] = "folder"
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                out[str(path.relative_to(root))] = "other"
            else:
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:       # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def check_one_line(code: int, err: str, expected: str) -> None:
    assert code != 0, f"exit code 0; stderr {err!r}"
    assert err.count("\n") == 1 and err.endswith("\n"), f"not exactly one line: {err!r}"
    assert "Traceback" not in err and "internal error" not in err, err
    assert err.startswith("onebit"), err
    assert expected in err, f"{expected!r} not in {err!r}"


def test_the_table_covers_enough_cases():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_gives_one_line_and_changes_nothing(ws, case, monkeypatch):
    _, argv, expected = case
    monkeypatch.setenv("ONEBIT_OFFLINE", "1")
    monkeypatch.setenv("ONEBIT_DATA", str(ws / "data"))
    monkeypatch.chdir(ws)
    before = tree_hashes(ws)
    code, err = run_cli([a.replace("{ws}", str(ws)) for a in argv])
    check_one_line(code, err, expected)
    after = tree_hashes(ws)
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"files changed or removed: {changed}"
    # a run directory's lock file stays once a process has held it (removing it would race another writer);
    # SQLite's own -wal/-shm files appear beside a WAL store that is only read
    added = sorted(k for k in set(after) - set(before) if not k.endswith(("/.lock", ".db-wal", ".db-shm")))
    assert not added, f"a refused command left new files: {added}"


@pytest.mark.parametrize("argv, expected", [
    (["train", "--lr", "inf", "--run-dir", "{ws}/new"], "lr must be a finite number"),
    (["runs", "{ws}/empty"], "not a onebit results store"),
    (["eval", "{ws}/deep.safetensors"], "out of range"),
], ids=["train-lr-inf", "runs-empty-file", "eval-deep-checkpoint"])
def test_hostile_input_as_a_real_process(ws, argv, expected):
    before = tree_hashes(ws)
    out = subprocess.run([sys.executable, "-m", "onebit", *[a.replace("{ws}", str(ws)) for a in argv]],
                         capture_output=True, text=True, timeout=120, cwd=ws,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "ONEBIT_OFFLINE": "1"})
    check_one_line(out.returncode, out.stderr, expected)
    assert tree_hashes(ws) == before


def test_a_bug_prints_one_line_and_saves_the_traceback(monkeypatch, tmp_path):
    from onebit.experiments.store import ResultsStore

    def broken(self, *args, **kwargs):
        raise ZeroDivisionError("deliberate")

    monkeypatch.setattr(ResultsStore, "__init__", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, err = run_cli(["runs", "x.db"])
    assert code == 1 and err.count("\n") == 1 and "internal error: ZeroDivisionError: deliberate" in err
    saved = list(tmp_path.glob("onebit-traceback-*.txt"))
    assert len(saved) == 1 and str(saved[0]) in err
    assert "Traceback" in saved[0].read_text() and "ZeroDivisionError" in saved[0].read_text()
