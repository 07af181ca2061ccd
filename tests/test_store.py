"""The SQLite results store: round trip, insert-or-ignore, filters, corrupt files, concurrent writers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onebit.cli import main
from onebit.experiments.store import ResultsStore, RunRecord, StoreError
from onebit.train.config import TrainConfig


def make_record(seed: int, norm: str = "none", epochs: int = 2, acc: float = 0.5) -> RunRecord:
    cfg = TrainConfig(depth=8, width=1, norm=norm, epochs=epochs, seed=seed, val_size=40)
    curve = [{"epoch": e + 1, "train_loss": 2.0 - 0.1 * e, "train_acc": 0.2 + 0.1 * e, "lr": 0.1 / (e + 1),
              "images_per_s": 100.0 + e, "epoch_time_s": 2.0, "val_acc": acc - 0.01 * (epochs - 1 - e),
              "test_acc": acc, "elapsed_s": 2.5 * (e + 1)} for e in range(epochs)]
    final = {"epochs": epochs, "test_acc": acc, "test_top5": 0.9, "test_loss": 1.5, "val_acc": acc - 0.02,
             "best": {"val_acc": acc, "epoch": epochs}, "elapsed_s": 5.0, "config_hash": cfg.hash()}
    return RunRecord(cfg.hash(), cfg.to_dict(), final, curve, wall_time_s=5.0, train_images_per_s=100.5,
                     device="cpu", versions={"torch": "x"}, git_commit="abc", sweep="t")


def test_round_trip_and_insert_or_ignore(tmp_path):
    rec = make_record(0, acc=0.61)
    with ResultsStore(tmp_path / "r.db") as store:
        assert store.record(rec) is True
        assert store.record(make_record(0, acc=0.99)) is False      # same config hash: first one kept
        assert store.has(rec.config_hash) and store.hashes() == {rec.config_hash}
        (row,) = store.runs()
        assert row["test_acc"] == 0.61 and row["val_acc"] == pytest.approx(0.59)
        assert row["best_metric"] == "val_acc" and row["best_value"] == 0.61 and row["best_epoch"] == 2
        assert row["config"] == rec.config and row["final"] == rec.final
        assert row["model"] == "wrn-8-1-srelu-1bit" and row["seed"] == 0 and row["depth"] == 8
        assert row["versions"] == {"torch": "x"} and row["git_commit"] == "abc"
        epochs = store.epochs(rec.config_hash)
        assert [e["epoch"] for e in epochs] == [1, 2]
        assert epochs[1]["lr"] == pytest.approx(0.05) and epochs[0]["val_top5"] is None
    with sqlite3.connect(tmp_path / "r.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_run_deleted_by_hand_records_again_with_its_new_epochs(tmp_path):
    """To record a run again (e.g. re-finished after a fix), its runs row is deleted by hand; the epochs it
    leaves behind are replaced, not a UNIQUE-constraint crash."""
    with ResultsStore(tmp_path / "r.db") as store:
        store.record(make_record(0, acc=0.61, epochs=3))
    with sqlite3.connect(tmp_path / "r.db") as db:
        db.execute("DELETE FROM runs")
    with ResultsStore(tmp_path / "r.db") as store:
        rec = make_record(0, acc=0.78, epochs=3)
        assert store.record(rec) is True
        (row,) = store.runs()
        assert row["test_acc"] == 0.78
        assert [e["test_acc"] for e in store.epochs(rec.config_hash)] == [0.78] * 3


def test_filters_on_columns_and_config_options(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        for seed in range(3):
            for norm in ("bn", "none"):
                store.record(make_record(seed, norm))
        assert len(store.runs([("norm", "=", "bn")])) == 3
        assert {r["seed"] for r in store.runs([("seed", ">=", 1), ("norm", "!=", "bn")])} == {1, 2}
        assert len(store.runs([("val_size", "=", 40)])) == 6                      # a config option
        assert store.runs([("val_size", "=", 41)]) == []
        with pytest.raises(StoreError):
            store.runs([("seed", "LIKE", 1)])
        with pytest.raises(StoreError):
            store.runs([("seed; DROP TABLE runs", "=", 1)])


def test_runs_command_lists_and_filters(tmp_path, capsys):
    with ResultsStore(tmp_path / "r.db") as store:
        store.record(make_record(0, "bn", acc=0.75))
        store.record(make_record(1, "none", acc=0.5))
    assert main(["runs", str(tmp_path / "r.db"), "--where", "norm=bn"]) == 0
    out = capsys.readouterr().out
    assert "wrn-8-1-bn-1bit" in out and "25.00" in out and "srelu" not in out and "1 run(s)" in out
    assert main(["runs", str(tmp_path / "r.db"), "--where", "seed>0", "--json"]) == 0
    assert '"seed": 1' in capsys.readouterr().out
    assert main(["runs", str(tmp_path / "missing.db")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "r.db"), "--where", "seed~1"]) == 1


def test_corrupt_or_foreign_store_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable results store"):
        ResultsStore(bad)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        ResultsStore(other)


WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_store import make_record
from onebit.experiments.store import ResultsStore
go = Path({go!r})
while not go.exists():
    time.sleep(0.01)
store = ResultsStore({db!r})
inserted = sum(store.record(make_record(seed, acc=seed / 1000)) for seed in range({start}, {stop}))
print(inserted)
"""


def test_two_processes_writing_at_once_do_not_corrupt_the_store(tmp_path):
    db, go = tmp_path / "shared.db", tmp_path / "go"
    ranges = [(0, 120), (80, 200)]              # seeds 80..119 are written by both
    procs = [subprocess.Popen([sys.executable, "-c", WRITER.format(tests=str(Path(__file__).parent), go=str(go),
                                                                   db=str(db), start=a, stop=b)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a, b in ranges]
    time.sleep(0.5)
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    inserted = [int(o[0]) for o in outs]
    assert sum(inserted) == 200                 # each overlapping run recorded exactly once
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 200
        assert conn.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 400
        orphans = conn.execute("SELECT COUNT(*) FROM epochs WHERE config_hash NOT IN "
                               "(SELECT config_hash FROM runs)").fetchone()[0]
        assert orphans == 0
    with ResultsStore(db) as store:
        assert sorted(r["seed"] for r in store.runs()) == list(range(200))
        assert all(r["test_acc"] == r["seed"] / 1000 for r in store.runs())


# docs/results/cpu-study/runs.db as it was in schema 1 (before the host column), kept for this test: the
# study's own store has since been written by a newer onebit
SCHEMA_1_STORE = Path(__file__).resolve().parent / "data" / "store-schema-1.db"


def test_schema_1_store_reads_unchanged_and_migrates_on_first_write(tmp_path):
    """A store from before the host column (schema 1: the CPU study's, as first committed)."""
    import hashlib
    import shutil

    old = tmp_path / "old.db"
    shutil.copy(SCHEMA_1_STORE, old)
    before = hashlib.sha256(old.read_bytes()).hexdigest()
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    with ResultsStore(old, create=False) as store:
        rows = store.runs()
        assert len(rows) == 24 and all("host" not in r for r in rows)
    assert hashlib.sha256(old.read_bytes()).hexdigest() == before          # reading changed nothing
    rec = make_record(5)
    rec.host = "node-7"
    with ResultsStore(old) as store:
        assert store.record(rec)
        rows = {r["config_hash"]: r for r in store.runs()}
    assert len(rows) == 25 and rows[rec.config_hash]["host"] == "node-7"
    assert sum(r["host"] is None for r in rows.values()) == 24
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 4
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []


def schema_2_store(path: Path) -> Path:
    """A store as onebit wrote it before bf16 on the CPU (schema 2, keys from the hash of that time, here
    stand-ins): CPU runs recorded with "amp": true, and one GPU run with "amp": true (bf16 then too)."""
    with ResultsStore(path) as store:
        for i, seed in enumerate((0, 1, 2, 9)):
            rec = make_record(seed)
            rec.config = {**rec.config, "amp": True}
            rec.config_hash = f"01d{i:013d}"
            if seed == 9:
                rec.device = "cuda:0 (H100)"
            store.record(rec)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 2")
    return path


def test_cpu_runs_recorded_with_amp_before_bf16_are_corrected_to_float32(tmp_path):
    """Before schema 3, amp applied to GPUs only: CPU runs recorded "amp": true trained in float32."""
    old = schema_2_store(tmp_path / "old.db")
    with sqlite3.connect(old) as db:
        raw = {h: (json.loads(c), d) for h, c, d in db.execute("SELECT config_hash, config_json, device FROM runs")}
        epochs = dict(db.execute("SELECT config_hash, count(*) FROM epochs GROUP BY config_hash").fetchall())
    assert all(c["amp"] is True for c, _ in raw.values())
    fixed = {h: {**c, "amp": not d.startswith("cpu")} for h, (c, d) in raw.items()}
    want = {TrainConfig.from_dict(c).hash(): h for h, c in fixed.items()}
    assert len(want) == 4 and not set(want) & set(raw)                 # every run re-keyed by today's hash
    with ResultsStore(old, create=False) as store:            # reading: corrected in memory, file unchanged
        assert store.hashes() == set(want)
        assert sorted(r["config"]["amp"] for r in store.runs()) == [False, False, False, True]
        assert store.version == 2
    with ResultsStore(old) as store:                           # a writer migrates the file
        assert store.version == 4 and store.hashes() == set(want)
        rows = store.runs()
        assert {r["config_hash"] for r in rows} == set(want)
        for r in rows:
            assert r["config"] == fixed[want[r["config_hash"]]]
            assert TrainConfig.from_dict(r["config"]).hash() == r["config_hash"]
            assert len(store.epochs(r["config_hash"])) == epochs[want[r["config_hash"]]] > 0
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    with ResultsStore(old) as store:                           # migrating twice changes nothing
        assert store.hashes() == set(want)


def test_a_cpu_run_recorded_now_keeps_its_bf16_setting(tmp_path):
    rec = make_record(0)
    rec.config = {**rec.config, "amp": True}
    rec.config_hash = TrainConfig.from_dict(rec.config).hash()
    with ResultsStore(tmp_path / "new.db") as store:
        assert store.version == 4 and store.record(rec)
    with ResultsStore(tmp_path / "new.db") as store:
        [row] = store.runs()
        assert row["config"]["amp"] is True and row["config_hash"] == rec.config_hash
