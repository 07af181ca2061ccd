"""The report from a small store of real tiny runs: tables checked against the stored numbers; statistics."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from onebit.cli import main
from onebit.experiments.stats import Summary, welch_interval
from onebit.experiments.store import ResultsStore
from onebit.models import WRNConfig, build_model


def table_rows(markdown: str, heading: str) -> list[dict[str, str]]:
    """The rows of the first table after ``heading``, as {column header: cell}."""
    lines = [ln for ln in markdown.split(heading, 1)[1].splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    table = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        table.append([c.strip() for c in ln.strip().strip("|").split("|")])
    header, body = table[0], table[2:]
    return [dict(zip(header, row)) for row in body]


def parse_pm(cell: str) -> tuple[float, float]:
    mean, _, std = cell.partition(" ± ")
    return float(mean), float(std) if std else math.nan


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, str]:
    """A store of 6 real tiny runs (BN / shifted ReLU x seeds 0,1 at 1 bit; one seed of each at 32 bits)
    and the report written from it."""

    from conftest import write_cifar_batch

    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    folder = root / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", rng.integers(0, 256, (40, 3, 32, 32)),
                          rng.integers(0, 10, 40).tolist())
    write_cifar_batch(folder / "test_batch", rng.integers(0, 256, (50, 3, 32, 32)),
                      rng.integers(0, 10, 50).tolist())
    sweep = root / "tiny.toml"
    sweep.write_text("""
[base]
data_dir = "data"
depth = 8
width = 1
epochs = 2
batch_size = 40
val_size = 40
device = "cpu"
num_threads = 1
[grid]
weight_bits = [1, 32]
norm = ["bn", "none"]
seed = [0, 1]
[[rule]]
when = {norm = "bn"}
set = {schedule = "restarts", first_cycle = 1}
[[exclude]]
weight_bits = 32
seed = 1
""")
    assert main(["sweep", str(sweep), "--no-progress"]) == 0
    assert main(["report", str(root / "runs.db"), "-o", str(root / "out")]) == 0
    return root, (root / "out" / "report.md").read_text()


def stored(root: Path, **where) -> list[dict]:
    with ResultsStore(root / "runs.db") as store:
        return store.runs([(k, "=", v) for k, v in where.items()])


def test_error_table_matches_the_stored_runs(study):
    root, report = study
    rows = table_rows(report, "## CIFAR-10: error rates")
    assert len(rows) == 4
    assert [r["schedule"] for r in rows] == ["restarts", "restarts", "cosine", "cosine"]   # varying settings shown
    for row in rows:
        network, design, bits, n = row["network"], row["design"], int(row["weight bits"]), int(row["n"])
        test_err, val_err = row["test error % (mean ± std)"], row["validation error %"]
        assert network == "WRN-8-1"
        runs = stored(root, norm="bn" if design == "BN" else "none", weight_bits=bits)
        assert n == len(runs) == (2 if bits == 1 else 1)
        err = np.array([1 - r["test_acc"] for r in runs]) * 100
        mean, std = parse_pm(test_err)
        assert mean == pytest.approx(err.mean(), abs=0.006)
        val = np.array([1 - r["val_acc"] for r in runs]) * 100
        if n > 1:
            assert std == pytest.approx(err.std(ddof=1), abs=0.006)
            assert float(row["test s.e."]) == pytest.approx(err.std(ddof=1) / math.sqrt(n), abs=0.006)
            assert float(row["validation s.e."]) == pytest.approx(val.std(ddof=1) / math.sqrt(n), abs=0.006)
        else:
            assert math.isnan(std) and row["test s.e."] == row["validation s.e."] == "–"
        assert parse_pm(val_err)[0] == pytest.approx(val.mean(), abs=0.006)
        assert row["published test error %"] == "–"           # no published number for WRN-8-1


def test_margin_table_and_sentences_match_the_stored_runs(study):
    root, report = study
    rows = table_rows(report, "## The margin of BN over shifted ReLU")
    assert [(r["network"], r["weight bits"]) for r in rows] == [("WRN-8-1", "1"), ("WRN-8-1", "32")]
    bn = np.array([r["test_acc"] for r in stored(root, norm="bn", weight_bits=1)])
    sr = np.array([r["test_acc"] for r in stored(root, norm="none", weight_bits=1)])
    assert float(rows[0]["margin (points)"]) == pytest.approx(100 * (bn.mean() - sr.mean()), abs=0.006)
    res = stats.ttest_ind(bn, sr, equal_var=False)
    sentences = [line for line in report.splitlines() if line.startswith("* On CIFAR-10")]
    assert len(sentences) == 2
    if bn.std() or sr.std():
        ci = res.confidence_interval(0.95)
        low, high = (float(x) for x in re.findall(r"[+-]\d+\.\d+", rows[0]["95% CI"]))
        assert low == pytest.approx(100 * ci.low, abs=0.006) and high == pytest.approx(100 * ci.high, abs=0.006)
        significant = ci.low > 0 or ci.high < 0
        assert rows[0]["significant"] == ("yes" if significant else "no")
        assert ("excludes 0" if significant else "includes 0") in sentences[0]
    assert rows[1]["95% CI"] == "–" and "no confidence interval" in sentences[1]      # one seed each at 32 bits


def inference_parameters(model) -> int:
    """Learned parameters plus BN running statistics, counted from the built network (not by the summary)."""
    return sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))


def test_cost_table_and_figures(study):
    root, report = study
    rows = table_rows(report, "## Cost")
    assert len(rows) == 4
    for row in rows:
        norm = "bn" if row["design"] == "BN" else "none"
        bits = int(row["weight bits"])
        model = build_model(WRNConfig(depth=8, width=1, num_classes=10, norm=norm, weight_bits=bits))
        assert int(row["parameters"].replace(",", "")) == inference_parameters(model)
        rates = [r["train_images_per_s"] for r in stored(root, norm=norm, weight_bits=bits)]
        assert float(row["training images/s"].split(" ± ")[0]) == pytest.approx(np.mean(rates), abs=0.5)
        assert (int(row["BN ops / image"].replace(",", "")) > 0) == (norm == "bn")   # BN ops only in the BN design
    pngs = sorted(p.name for p in (root / "out" / "figures").glob("*.png"))
    assert pngs == ["curves-cifar10-wrn8-1.png", "error-vs-width-cifar10-d8.png", "lr-schedules.png",
                    "margin-over-training-cifar10.png"]
    for name in pngs:
        assert (root / "out" / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(figures/{name})" in report


def test_welch_interval_and_summary():
    a, b = np.array([0.61, 0.63, 0.62]), np.array([0.58, 0.60, 0.57])
    low, high, p, dof = welch_interval(a, b)
    # by hand: Welch-Satterthwaite
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    d = a.mean() - b.mean()
    assert (low, high, dof) == pytest.approx((d - half, d + half, df))
    assert 0 < p < 0.05
    assert all(math.isnan(x) for x in welch_interval(a, b[:1]))
    assert Summary.of(np.array([0.5])).n == 1 and math.isnan(Summary.of(np.array([0.5])).std)


def test_report_of_missing_or_empty_store_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none.db"), "-o", str(tmp_path / "out")]) == 1
    assert "not found" in capsys.readouterr().err
    ResultsStore(tmp_path / "empty.db").close()
    assert main(["report", str(tmp_path / "empty.db"), "-o", str(tmp_path / "out")]) == 1
    assert "no runs" in capsys.readouterr().err


def test_report_of_a_store_holding_an_imagenet_run(tmp_path):
    """The cost table builds the ImageNet WRN (depth 18 = 8n+2) for an ImageNet run, named as the model is."""
    from onebit.experiments.store import RunRecord
    from onebit.presets import get_preset

    cfg = get_preset("imagenet-wrn18-2.5-srelu-1bit", depth=10, width=1, epochs=1)
    curve = [{"epoch": 1, "train_loss": 6.0, "train_acc": 0.01, "lr": 0.1, "images_per_s": 50.0,
              "epoch_time_s": 3.0, "test_acc": 0.02, "elapsed_s": 3.0}]
    final = {"epochs": 1, "test_acc": 0.02, "test_top5": 0.06, "test_loss": 6.5, "best": {}, "elapsed_s": 3.0,
             "config_hash": cfg.hash()}
    record = RunRecord(cfg.hash(), cfg.to_dict(), final, curve, wall_time_s=3.0, train_images_per_s=50.0,
                       device="cpu", versions={"torch": "x"}, recorded_at="2026-01-01T00:00:00")
    assert record.model == cfg.model_config().name == "imagenet-wrn-10-0.25-srelu-1bit"
    with ResultsStore(tmp_path / "runs.db") as store:
        store.record(record)
    assert main(["report", str(tmp_path / "runs.db"), "-o", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## ImageNet: error rates" in report
    (row,) = table_rows(report, "## Cost")
    assert row["network"] == "WRN-10-1"
    assert int(row["parameters"].replace(",", "")) == inference_parameters(build_model(cfg.model_config()))


def test_bf16_and_float32_twins_are_compared_by_seed(tmp_path):
    """The report pairs runs that differ only in amp by seed; the interval is the paired t interval,
    computed here by hand (t quantile for 2 degrees of freedom: 4.302653)."""
    from onebit.experiments.store import RunRecord
    from onebit.train.config import TrainConfig

    val = {False: [0.60, 0.62, 0.61], True: [0.59, 0.62, 0.60]}
    with ResultsStore(tmp_path / "runs.db") as store:
        for amp, accs in val.items():
            for seed, acc in enumerate(accs):
                cfg = TrainConfig(depth=8, width=1, epochs=1, seed=seed, amp=amp, val_size=100)
                final = {"epochs": 1, "val_acc": acc, "test_acc": acc - 0.01, "best": {}, "elapsed_s": 1.0}
                store.record(RunRecord(cfg.hash(), cfg.to_dict(), final, [{"epoch": 1, "val_acc": acc}],
                                       wall_time_s=1.0, train_images_per_s=10.0, device="cpu"))
        other = TrainConfig(depth=8, width=2, epochs=1, seed=0, amp=True, val_size=100)      # no twin
        store.record(RunRecord(other.hash(), other.to_dict(), {"epochs": 1, "val_acc": 0.7, "test_acc": 0.7,
                                                               "best": {}}, [], device="cpu"))
    assert main(["report", str(tmp_path / "runs.db"), "-o", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    rows = table_rows(report, "## Number format: bf16 autocast vs float32")
    assert [(r["network"], r["metric"]) for r in rows] == [("WRN-8-1", "validation"), ("WRN-8-1", "test")]
    d = np.array(val[True]) - np.array(val[False])
    half = 4.302653 * d.std(ddof=1) / math.sqrt(3)
    for row, fp32_mean in zip(rows, ("61.00", "60.00")):          # test accuracies are 1 point lower
        assert row["seeds"] == "3" and row["float32 acc. %"] == f"{fp32_mean} ± 1.00"
        assert row["bf16 - float32 (points)"] == f"{100 * d.mean():+.2f}" == "-0.67"
        low, high = (float(x) for x in row["95% CI (paired t)"].split(" to "))
        assert low == pytest.approx(100 * (d.mean() - half), abs=0.006)
        assert high == pytest.approx(100 * (d.mean() + half), abs=0.006)
        assert row["mean within 1.0 point"] == "yes"


def test_the_margin_per_epoch_and_the_verdicts_follow_the_stored_curves(study):
    from onebit.experiments.stats import group_variants, margin_per_epoch, margins

    root, report = study
    with ResultsStore(root / "runs.db", create=False) as store:
        runs = store.runs()
        curves = {r["config_hash"]: store.epochs(r["config_hash"]) for r in runs}
    [m1, m32] = margins(group_variants(runs), "val_acc")
    curve = margin_per_epoch(m1, curves.__getitem__, "val_acc")
    assert list(curve["epoch"]) == [1, 2]
    for i, epoch in enumerate(curve["epoch"]):
        bn = [e["val_acc"] for r in stored(root, norm="bn", weight_bits=1) for e in curves[r["config_hash"]]
              if e["epoch"] == epoch]
        sr = [e["val_acc"] for r in stored(root, norm="none", weight_bits=1) for e in curves[r["config_hash"]]
              if e["epoch"] == epoch]
        assert curve["diff"][i] == pytest.approx(np.mean(bn) - np.mean(sr), abs=1e-12)
        if np.std(bn) or np.std(sr):
            ci = stats.ttest_ind(bn, sr, equal_var=False).confidence_interval(0.95)
            assert (curve["low"][i], curve["high"][i]) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert np.isnan(margin_per_epoch(m32, curves.__getitem__, "val_acc")["low"]).all()   # one seed a side
    rows = table_rows(report, "## The margin on the validation split")
    for row in rows:
        low_high = re.findall(r"[+-]\d+\.\d+", row["95% CI"])
        want = ("undecided (fewer than 2 seeds)" if not low_high else
                "BN ahead" if float(low_high[0]) > 0 else
                "shifted ReLU ahead" if float(low_high[1]) < 0 else "no significant difference")
        assert row["verdict"] == want


def test_margin_plot_limits_fit_the_lines_and_say_when_a_band_is_clipped():
    from onebit.experiments.figures import margin_limits

    nan = float("nan")
    curve = {"diff": np.array([0.05, -0.10]), "low": np.array([nan, -0.14]), "high": np.array([nan, -0.06])}
    lo, hi, clipped = margin_limits([curve])
    assert (lo, hi, clipped) == (pytest.approx(-15.0), pytest.approx(10.0), False)   # range 15 -> pad 5
    wide = dict(curve, low=np.array([-1.2, -0.14]), high=np.array([0.9, -0.06]))     # a 2 + 2 run band
    assert margin_limits([wide])[:2] == (lo, hi) and margin_limits([wide])[2] is True
    above = {"diff": np.array([0.02, 0.03]), "low": np.full(2, nan), "high": np.full(2, nan)}
    lo, hi, clipped = margin_limits([above])
    assert lo == pytest.approx(-5.0) and hi == pytest.approx(8.0) and not clipped     # 0 stays in view


def test_frontier_of_the_committed_main_job_store(tmp_path, capsys):
    """``onebit report --frontier``: every run with a measured architecture is a point; the frontier keeps
    the runs no other run beats on both time and validation accuracy."""
    from onebit.experiments.frontier import frontier, load_points

    folder = Path(__file__).resolve().parents[1] / "docs" / "results" / "main-job"
    assert main(["report", str(folder / "runs.db"), "-o", str(tmp_path), "--frontier",
                 str(folder / "throughput.json")]) == 0
    points = load_points(folder / "runs.db", folder / "throughput.json")
    lines = [line for line in capsys.readouterr().out.splitlines() if " ep  T=" in line]
    assert len(lines) == len(points) > 5 and (tmp_path / "frontier.png").stat().st_size > 10_000
    front = frontier(points)
    for p in points:                      # nothing is both faster and more accurate than a frontier point
        assert not any(q["seconds"] < p["seconds"] and q["val_acc"] > p["val_acc"] for q in points) or p not in front
    assert [p["val_acc"] for p in front] == sorted(p["val_acc"] for p in front)
    synthetic = [{"seconds": 1, "val_acc": 50}, {"seconds": 2, "val_acc": 40}, {"seconds": 3, "val_acc": 60}]
    assert frontier(synthetic) == [synthetic[0], synthetic[2]]
    assert main(["report", str(folder / "runs.db"), "-o", str(tmp_path), "--frontier", str(tmp_path / "x.json")]) == 1
