"""The results store: one SQLite file holding every finished run and its per-epoch curve.

Tables: ``runs`` (one row per finished run, keyed by the config hash: resolved config, seed, final and best
metrics, wall time, training images/s, device, host (the machine that trained it), library versions, git
commit) and ``epochs`` (one row per run and epoch: the metrics.jsonl line). The file is opened in WAL mode
with a busy timeout, and a run is written in one ``BEGIN IMMEDIATE`` transaction with insert-or-ignore, so
several processes (sweeps, or a sweep's parallel jobs) can record into one store at once and a run is
recorded at most once.

Schema versions: 1 had no ``host`` column. Version 3 corrects what versions 1-2 recorded for CPU runs:
``amp`` then applied to GPUs only, so a CPU run recorded with ``"amp": true`` trained in float32; from
version 3 its config says ``"amp": false``, since a CPU run with amp on now trains in bf16. Version 4 keys
every run by ``TrainConfig.hash()`` as it is now (``amp = true`` hashes as bf16, so no bf16 run can take the
key of an older float32 one); the epochs follow their run. Opening an older store for writing (a sweep)
migrates it; reading it (``runs``, ``report``, ``sweep --dry-run``) applies the corrections in memory
(``hashes()`` as the migration will key the runs, each row keeping its stored key) and never modifies the
file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from onebit.errors import OnebitError, StoreError
from onebit.train.config import TrainConfig

SCHEMA_VERSION = 4
BUSY_TIMEOUT_S = 60.0
EPOCH_COLUMNS = ("train_loss", "train_acc", "lr", "images_per_s", "epoch_time_s", "val_acc", "val_top5",
                 "val_loss", "test_acc", "test_top5", "test_loss", "elapsed_s")
# Config fields copied into their own columns so that `onebit runs --where` and the report can filter on them.
CONFIG_COLUMNS = ("dataset", "depth", "width", "norm", "weight_bits", "epochs", "schedule", "seed")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    config_hash TEXT PRIMARY KEY,
    sweep TEXT,
    preset TEXT,
    model TEXT NOT NULL,
    dataset TEXT NOT NULL, depth INTEGER NOT NULL, width INTEGER NOT NULL, norm TEXT NOT NULL,
    weight_bits INTEGER NOT NULL, epochs INTEGER NOT NULL, schedule TEXT NOT NULL, seed INTEGER NOT NULL,
    config_json TEXT NOT NULL,
    test_acc REAL, test_top5 REAL, test_loss REAL, val_acc REAL, val_top5 REAL, val_loss REAL,
    best_metric TEXT, best_value REAL, best_epoch INTEGER,
    final_json TEXT NOT NULL,
    wall_time_s REAL, train_images_per_s REAL,
    device TEXT, host TEXT, versions_json TEXT, git_commit TEXT,
    run_dir TEXT, recorded_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS epochs (
    config_hash TEXT NOT NULL REFERENCES runs(config_hash) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    {", ".join(f"{c} REAL" for c in EPOCH_COLUMNS)},
    PRIMARY KEY (config_hash, epoch)
);
CREATE INDEX IF NOT EXISTS runs_by_variant ON runs (dataset, depth, width, norm, weight_bits);
"""


@dataclass
class RunRecord:
    """Everything recorded about one finished run."""

    config_hash: str
    config: dict[str, Any]
    final: dict[str, Any]                 # results.json of the run
    epochs: list[dict[str, Any]]          # metrics.jsonl rows
    wall_time_s: float | None = None
    train_images_per_s: float | None = None
    device: str | None = None
    host: str | None = None               # the machine that trained the run
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    sweep: str | None = None
    preset: str | None = None
    run_dir: str | None = None
    recorded_at: str = ""

    @property
    def model(self) -> str:
        return TrainConfig.from_dict(self.config).model_config().name


class ResultsStore:
    """A SQLite results store; safe to share between processes. Use as a context manager or close()."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"results store {self.path} is a folder, not a file")
        if not create and not self.path.is_file():
            raise StoreError(f"results store {self.path} not found")
        self.create = create
        existing = self.path.is_file() and self.path.stat().st_size > 0
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            else:       # read-only: a file that is not a store is never written to
                self.db = sqlite3.connect(self.path.absolute().as_uri() + "?mode=ro", uri=True,
                                          timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._init_schema(existing)       # refuses a foreign file before anything is written to it
            if create:
                self.db.execute("PRAGMA journal_mode = WAL")
                self._migrate()               # a writer brings an older store to this version first
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable results store ({exc})") from None

    def _init_schema(self, existing: bool) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, 2, 3, SCHEMA_VERSION):
            raise StoreError(f"{self.path}: schema version {version}, this onebit reads 1 to {SCHEMA_VERSION}")
        if version == 0 and not self.create:
            raise StoreError(f"{self.path} is not a onebit results store (written by `onebit sweep`)")
        if version == 0:
            with self.transaction() as db:     # under the write lock: another process may be creating it now
                if db.execute("PRAGMA user_version").fetchone()[0] != 0:
                    return                      # it just did
                if existing and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise StoreError(f"{self.path} is not a onebit results store (written by `onebit sweep`)")
                for statement in filter(str.strip, SCHEMA.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def version(self) -> int:
        """The schema version of the file as it is now."""
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error): takes the write lock up front."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        """Bring an older store to the current schema (see the module docstring); called by writers."""
        if self.db.execute("PRAGMA user_version").fetchone()[0] not in (1, 2, 3):
            return
        with self.transaction() as db:              # re-read under the write lock: another writer may have
            version = db.execute("PRAGMA user_version").fetchone()[0]     # migrated it meanwhile
            if version == 1:
                db.execute("ALTER TABLE runs ADD COLUMN host TEXT")
            if version in (1, 2, 3):
                db.execute("PRAGMA defer_foreign_keys = ON")            # runs and epochs re-keyed together
                rows = db.execute("SELECT config_hash, device, config_json FROM runs").fetchall()
                taken = {r[0] for r in rows}
                for old_hash, device, config_json in rows:
                    config, new_hash = current_identity(old_hash, json.loads(config_json), device, version)
                    if new_hash != old_hash and new_hash in taken:
                        new_hash = old_hash     # that run is stored under its new key already: keep both
                    db.execute("UPDATE runs SET config_hash = ?, config_json = ? WHERE config_hash = ?",
                               (new_hash, json.dumps(config, sort_keys=True), old_hash))
                    if new_hash != old_hash:
                        db.execute("UPDATE epochs SET config_hash = ? WHERE config_hash = ?", (new_hash, old_hash))
                        taken.add(new_hash)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ----- writing -----
    def record(self, rec: RunRecord) -> bool:
        """Insert ``rec`` unless its config hash is already stored; True if it was inserted."""
        final = rec.final
        best = final.get("best") or {}
        best_metric = next((k for k in best if k != "epoch"), None)
        row = {
            "config_hash": rec.config_hash, "sweep": rec.sweep, "preset": rec.preset, "model": rec.model,
            **{c: rec.config[c] for c in CONFIG_COLUMNS},
            "config_json": json.dumps(rec.config, sort_keys=True),
            **{k: final.get(k) for k in ("test_acc", "test_top5", "test_loss", "val_acc", "val_top5",
                                         "val_loss")},
            "best_metric": best_metric, "best_value": best.get(best_metric) if best_metric else None,
            "best_epoch": best.get("epoch"), "final_json": json.dumps(final, sort_keys=True),
            "wall_time_s": rec.wall_time_s, "train_images_per_s": rec.train_images_per_s,
            "device": rec.device, "host": rec.host, "versions_json": json.dumps(rec.versions, sort_keys=True),
            "git_commit": rec.git_commit, "run_dir": rec.run_dir,
            "recorded_at": rec.recorded_at or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self._migrate()
        with self.transaction() as db:
            cur = db.execute(f"INSERT OR IGNORE INTO runs ({', '.join(row)}) "
                             f"VALUES ({', '.join('?' * len(row))})", list(row.values()))
            if cur.rowcount != 1:
                return False
            cols = ("config_hash", "epoch", *EPOCH_COLUMNS)
            # epochs of a run whose runs row was deleted by hand (to record it again) are orphans: replace them
            db.execute("DELETE FROM epochs WHERE config_hash = ?", (rec.config_hash,))
            db.executemany(f"INSERT INTO epochs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                           [(rec.config_hash, int(e["epoch"]), *(e.get(c) for c in EPOCH_COLUMNS))
                            for e in rec.epochs])
        return True

    # ----- reading -----
    def has(self, config_hash: str) -> bool:
        return self.db.execute("SELECT 1 FROM runs WHERE config_hash = ?", (config_hash,)).fetchone() is not None

    def hashes(self) -> set[str]:
        """The config hashes of the stored runs (of an older store read without migrating it: as the
        migration will key them, see the module docstring)."""
        with self.reading():
            version = self.version
            rows = self.db.execute("SELECT config_hash, device, config_json FROM runs").fetchall()
            return {current_identity(h, json.loads(c), d, version)[1] for h, d, c in rows}

    def runs(self, where: list[tuple[str, str, Any]] | None = None) -> list[dict[str, Any]]:
        """Stored runs as dicts (``config``, ``final``, ``versions`` decoded), oldest first.

        ``where``: (key, op, value) triples ANDed together; key is a column of ``runs`` or any config
        option (matched in the stored config), op one of = != < <= > >=.
        """
        from onebit.train.config import TrainConfig

        clauses, params = [], []
        columns = self.columns()
        options = set(TrainConfig.__dataclass_fields__)
        for key, op, value in where or []:
            if op not in ("=", "!=", "<", "<=", ">", ">="):
                raise StoreError(f"unknown comparison {op!r}")
            if key in columns:
                clauses.append(f"{key} {op} ?")
            elif key in options:
                clauses.append(f"json_extract(config_json, '$.{key}') {op} ?")
            else:
                raise StoreError(f"--where {key}: unknown key; use a training option (see `onebit train "
                                 f"--help`) or one of the columns {', '.join(columns)}")
            params.append(value)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        with self.reading():
            rows = self.db.execute(sql + " ORDER BY recorded_at, rowid", params).fetchall()
            out = [self._decode(r) for r in rows]
        version = self.version
        if version < SCHEMA_VERSION:                  # corrected in memory; the row keeps its stored hash
            for run in out:
                run["config"] = current_identity(run["config_hash"], run["config"], run.get("device"), version)[0]
        return out

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Turn a corrupt database page or row met while reading into one StoreError line."""
        try:
            yield
        except (sqlite3.DatabaseError, ValueError) as exc:
            raise StoreError(f"{self.path}: corrupt results store ({exc})") from None

    def epochs(self, config_hash: str) -> list[dict[str, Any]]:
        with self.reading():
            rows = self.db.execute("SELECT * FROM epochs WHERE config_hash = ? ORDER BY epoch", (config_hash,))
            out = [{k: r[k] for k in r.keys() if k != "config_hash"} for r in rows]
            for row in out:
                _check_numbers(row, ("epoch", *EPOCH_COLUMNS), f"epochs row of {config_hash}")
            return out

    def columns(self) -> list[str]:
        return [r[1] for r in self.db.execute("PRAGMA table_info(runs)")]

    @staticmethod
    def _decode(row: sqlite3.Row) -> dict[str, Any]:
        """A run row as a dict; a value of the wrong kind (text where a number belongs, a config that is not
        a JSON object) raises ValueError, which ``reading`` turns into one line."""
        out = {k: row[k] for k in row.keys()}
        _check_numbers(out, NUMERIC_RUN_COLUMNS, f"run {out.get('config_hash')}")
        out["config"] = json.loads(out.pop("config_json"))
        out["final"] = json.loads(out.pop("final_json"))
        out["versions"] = json.loads(out.pop("versions_json") or "{}")
        for key in ("config", "final", "versions"):
            if not isinstance(out[key], dict):
                raise ValueError(f"run {out.get('config_hash')}: {key} is not a JSON object")
        return out


def current_identity(stored_hash: str, config: dict[str, Any], device: str | None,
                     version: int) -> tuple[dict[str, Any], str]:
    """(config, config hash) of a run recorded under schema ``version``, as the current schema keys it:
    before version 3 a CPU run's ``amp = true`` meant float32 (amp applied to GPUs only), so it becomes
    ``false``; before version 4 the hash is recomputed (``amp = true`` hashes as bf16 since then). A config
    that no longer validates keeps its stored hash."""
    if version < 3 and (device or "").startswith("cpu") and config.get("amp") is True:
        config = {**config, "amp": False}
    if version >= 4:
        return config, stored_hash
    try:
        return config, TrainConfig.from_dict(config).hash()
    except OnebitError:
        return config, stored_hash


NUMERIC_RUN_COLUMNS = ("depth", "width", "weight_bits", "epochs", "seed", "test_acc", "test_top5", "test_loss",
                       "val_acc", "val_top5", "val_loss", "best_value", "best_epoch", "wall_time_s",
                       "train_images_per_s")


def _check_numbers(row: dict[str, Any], columns: tuple[str, ...], where: str) -> None:
    """Every listed column of ``row`` NULL or a number (SQLite stores whatever it is given)."""
    for col in columns:
        value = row.get(col)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ValueError(f"{where}: {col} = {value!r} is not a number")
