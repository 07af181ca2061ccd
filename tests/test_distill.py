"""Distillation from a teacher model file: the loss, the cached teacher pass, and training with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from onebit.errors import ConfigError
from onebit.export.packed import save_packed
from onebit.models import WRNConfig, build_model
from onebit.train import distill
from onebit.train.checkpoint import load_checkpoint
from onebit.train.config import TrainConfig
from onebit.train.loop import train


def test_distillation_loss_is_the_weighted_sum_of_cross_entropy_and_tempered_kl():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 10), torch.randn(5, 10) * 3, torch.tensor([0, 3, 9, 2, 2])
    a, temp = 0.7, 4.0
    p_t = (t / temp).softmax(1)
    kl = (p_t * (p_t.log() - (s / temp).log_softmax(1))).sum(1).mean()
    ce = -(s.log_softmax(1)[torch.arange(5), y]).mean()
    want = (1 - a) * ce + a * temp ** 2 * kl
    assert float(distill.distillation_loss(s, y, t, a, temp)) == pytest.approx(float(want), rel=1e-5)
    # weight 1: only the teacher; the student equal to the teacher: no soft loss
    assert float(distill.distillation_loss(t, y, t, 1.0, temp)) == pytest.approx(0.0, abs=1e-6)


def test_teacher_logits_are_computed_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEBIT_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    teacher = build_model(WRNConfig(depth=8, width=1)).eval()
    save_packed(teacher, tmp_path / "teacher.onebit")
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    first = distill.teacher_logits(tmp_path / "teacher.onebit", images, 10, batch_size=3, progress=False)
    with torch.no_grad():
        want = teacher(images.float())
    assert first.shape == (7, 10) and first.dtype == torch.float32
    assert (first.argmax(1) == want.argmax(1)).float().mean() >= 0.7          # bf16 where the CPU has it
    assert float((first - want).abs().max()) <= 0.05 * float(want.abs().max())
    assert len(list((tmp_path / "cache" / "teacher").glob("*.safetensors"))) == 1

    def no_teacher(path):
        raise AssertionError("the cached logits should have been used")

    monkeypatch.setattr(distill, "_load_teacher", no_teacher)
    assert torch.equal(distill.teacher_logits(tmp_path / "teacher.onebit", images, 10, progress=False), first)
    # a subset, in another order, is served from the cache (a validation split, --train-limit)
    assert torch.equal(distill.teacher_logits(tmp_path / "teacher.onebit", images[[4, 0, 2]], 10, progress=False),
                       first[[4, 0, 2]])
    with pytest.raises(AssertionError):                     # an image not seen before: a new pass
        distill.teacher_logits(tmp_path / "teacher.onebit", torch.cat([images[:2], 255 - images[:1]]), 10,
                               progress=False)
    [cache_file] = (tmp_path / "cache" / "teacher").glob("*.safetensors")
    cache_file.write_bytes(b"damaged")
    monkeypatch.undo()
    monkeypatch.setenv("ONEBIT_CACHE_DIR", str(tmp_path / "cache"))
    again = distill.teacher_logits(tmp_path / "teacher.onebit", images, 10, progress=False)   # recomputed
    assert torch.equal(again, first) and cache_file.stat().st_size > 100


def test_an_interrupted_teacher_pass_continues_where_it_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEBIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(distill, "SAVE_EVERY", 2)
    save_packed(build_model(WRNConfig(depth=8, width=1)), tmp_path / "teacher.onebit")
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    seen = []
    real_load = distill._load_teacher

    def counting_teacher(path):
        model = real_load(path)
        forward = model.forward

        def counted(x):
            seen.append(len(x))
            if len(seen) == 3 and interrupt:
                raise KeyboardInterrupt
            return forward(x)
        model.forward = counted
        return model

    monkeypatch.setattr(distill, "_load_teacher", counting_teacher)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        distill.teacher_logits(tmp_path / "teacher.onebit", images, 10, batch_size=2, progress=False)
    assert seen == [2, 2, 2]                   # two batches done and saved, the third interrupted
    interrupt, seen[:] = False, []
    logits = distill.teacher_logits(tmp_path / "teacher.onebit", images, 10, batch_size=2, progress=False)
    assert seen == [2] and logits.shape == (6, 10)          # only the last two images computed again


def test_a_teacher_for_other_classes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEBIT_CACHE_DIR", str(tmp_path / "cache"))
    save_packed(build_model(WRNConfig(depth=8, width=1, num_classes=100)), tmp_path / "c100.onebit")
    with pytest.raises(ConfigError, match="100 classes; the student needs a CIFAR model with 10"):
        distill.teacher_logits(tmp_path / "c100.onebit", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 10,
                               progress=False)
    with pytest.raises(ConfigError, match="no such model file"):
        distill.teacher_logits(tmp_path / "missing.onebit", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 10)


def test_training_with_a_teacher_learns_from_it_and_resumes_exactly(tiny_cifar10, tmp_path, monkeypatch):
    monkeypatch.setenv("ONEBIT_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(1)
    save_packed(build_model(WRNConfig(depth=8, width=1)), tmp_path / "teacher.onebit")
    cfg = TrainConfig(data_dir=str(tiny_cifar10), depth=8, width=1, epochs=2, batch_size=50, num_threads=1,
                      teacher=str(tmp_path / "teacher.onebit"), distill_weight=0.9)
    plain = cfg.replace(teacher=None, distill_weight=0.5)
    assert cfg.hash() != plain.hash()
    train(cfg, tmp_path / "straight", progress=False)
    train(plain, tmp_path / "plain", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_after=1)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a, b, c = (load_checkpoint(tmp_path / r).model_state for r in ("straight", "split", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)        # the teacher changed what was learned


def test_distillation_options_without_a_teacher_are_refused():
    with pytest.raises(ConfigError, match="apply with a teacher only"):
        TrainConfig(distill_weight=0.3)
    with pytest.raises(ConfigError, match="distill_weight"):
        TrainConfig(teacher="t.onebit", distill_weight=0.0)


def test_the_step_uses_the_soft_loss_only_when_given_teacher_logits():
    from onebit.train.optimizer import make_optimizer
    from onebit.train.step import TrainStep

    torch.manual_seed(0)
    net = build_model(WRNConfig(depth=8, width=1))
    x, y = torch.randint(0, 256, (4, 3, 32, 32)).float(), torch.arange(4)
    with torch.no_grad():
        logits = net(x)
    t = torch.randn(4, 10)
    step = TrainStep(net, make_optimizer(net, TrainConfig(depth=8, width=1)), torch.device("cpu"), amp=False,
                     channels_last=False, distill=(0.5, 2.0))
    loss, _ = step(x, y, 0.0, t)
    assert float(loss) == pytest.approx(float(distill.distillation_loss(logits, y, t, 0.5, 2.0)), rel=1e-5)
    loss, _ = step(x, y, 0.0)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


def test_a_teacher_counts_by_its_content_in_the_hash_and_on_resume(tiny_cifar10, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("ONEBIT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    torch.manual_seed(1)
    save_packed(build_model(WRNConfig(depth=8, width=1)), tmp_path / "a" / "teacher.onebit")
    save_packed(build_model(WRNConfig(depth=8, width=1)), tmp_path / "b" / "teacher.onebit")   # other weights
    shutil.copy(tmp_path / "a" / "teacher.onebit", tmp_path / "copy.onebit")
    cfg = TrainConfig(data_dir=str(tiny_cifar10), depth=8, width=1, epochs=2, batch_size=50, num_threads=1,
                      teacher=str(tmp_path / "a" / "teacher.onebit"))
    assert cfg.replace(teacher=str(tmp_path / "copy.onebit")).hash() == cfg.hash()            # same bytes
    assert cfg.replace(teacher=str(tmp_path / "b" / "teacher.onebit")).hash() != cfg.hash()   # same name
    train(cfg, tmp_path / "run", progress=False, stop_after=1)
    # the same teacher moved elsewhere resumes; a different file under the recorded path is refused
    train(cfg.replace(teacher=str(tmp_path / "copy.onebit")), tmp_path / "moved", progress=False, stop_after=1)
    shutil.copy(tmp_path / "b" / "teacher.onebit", tmp_path / "a" / "teacher.onebit")
    with pytest.raises(ConfigError, match="is not the file this run was trained with"):
        train(cfg, tmp_path / "run", resume=True, progress=False)


def test_a_reference_teacher_is_found_in_the_reference_models_folder(tmp_path, monkeypatch):
    from onebit.train.config import teacher_file

    save_packed(build_model(WRNConfig(depth=8, width=1)), tmp_path / "released.onebit")
    monkeypatch.setenv("ONEBIT_REFERENCE_MODELS", str(tmp_path))
    assert teacher_file("reference:released.onebit") == tmp_path / "released.onebit"
    cfg = TrainConfig(depth=8, width=1, teacher="reference:released.onebit")
    assert cfg.hash() == cfg.replace(teacher=str(tmp_path / "released.onebit")).hash()    # same file, same run
    monkeypatch.setenv("ONEBIT_REFERENCE_MODELS", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="elsewhere/released.onebit not found; set ONEBIT_REFERENCE_MODELS"):
        teacher_file("reference:released.onebit")
    for bad in ("reference:", "reference:../released.onebit"):
        with pytest.raises(ConfigError, match="takes a file name"):
            teacher_file(bad)


def test_a_released_mat_file_teaches_as_its_imported_model(reference_models_dir):
    """The authors' released WRN-20-10 (.mat) is read as a teacher directly, with the imported model's logits."""
    from onebit.reference import import_reference

    mat = reference_models_dir / "CIFAR10_allparams.mat"

    model = distill._load_teacher(mat)
    want = import_reference(mat).model
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8).float()
    with torch.no_grad():
        assert torch.equal(model(x), want(x)) and model.config.depth == 20 and model.config.width == 10
