"""The preference store: one SQLite file of prompts, generated answers, the pairs shown and the judgments.

No torch here: the app's ranking pane, the CLI's export and the trainer's data reader share it.

Tables (schema version in ``PRAGMA user_version``; ``MIGRATIONS`` brings any older file up to date):
- ``prompts``: a conversation ending in a user turn (JSON messages, unique), where it came from.
- ``responses``: one answer to a prompt, the model/run that wrote it, the sampling settings, time taken.
- ``pairs``: two responses as shown: ``left_id`` is answer A (left, or top when stacked), ``right_id`` is B;
  ``swapped`` records the coin flip (1: the first-generated answer, or model A's, went right).
- ``comparisons``: a judgment of a pair: choice A / B / tie / skip, annotator, note, seconds taken;
  ``undone`` is set (not deleted) when the annotator takes it back; ``round`` is the labeling round
  (``next_round``: a model trained on these labels against the one before) it was made in.

Durability: WAL journal, ``synchronous=FULL``, and every judgment is its own committed transaction
before ``judge`` returns, so a crash (even kill -9) after it returns loses nothing. Several processes may
share one file (SQLite's locking; a busy writer is waited for up to 10 s).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

APP = "coati-tui preference store"
CHOICES = ("A", "B", "tie", "skip")
SUFFIXES = (".sqlite", ".sqlite3", ".db")

MIGRATIONS = [
    # 1: the tables
    """
    CREATE TABLE coati_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE prompts(id INTEGER PRIMARY KEY, messages TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
                         created REAL NOT NULL);
    CREATE TABLE responses(id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id),
                           text TEXT NOT NULL, model TEXT NOT NULL, sampling TEXT NOT NULL, gen_s REAL,
                           created REAL NOT NULL);
    CREATE TABLE pairs(id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id),
                       left_id INTEGER NOT NULL REFERENCES responses(id),
                       right_id INTEGER NOT NULL REFERENCES responses(id),
                       swapped INTEGER NOT NULL, created REAL NOT NULL);
    CREATE TABLE comparisons(id INTEGER PRIMARY KEY, pair_id INTEGER NOT NULL REFERENCES pairs(id),
                             choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie', 'skip')),
                             annotator TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', time_taken_s REAL,
                             created REAL NOT NULL, undone REAL);
    """,
    # 2: the lookups the pane makes per keypress (next pending pair, last judgment) stay O(log n)
    """
    CREATE INDEX comparisons_pair ON comparisons(pair_id, annotator);
    CREATE INDEX comparisons_annotator ON comparisons(annotator, id);
    CREATE INDEX pairs_prompt ON pairs(prompt_id);
    """,
    # 3: labeling rounds (label -> DPO -> label with the new model): each judgment says which round it is of
    """
    ALTER TABLE comparisons ADD COLUMN round INTEGER NOT NULL DEFAULT 1;
    """,
]
VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """A file that is not (or no longer) a usable preference store; the message names it."""


@dataclass
class PairView:
    id: int
    prompt: list[dict[str, Any]]
    left: str
    right: str
    left_model: str
    right_model: str


def prompt_key(messages: list[dict[str, Any]]) -> str:
    """A prompt's stored (and unique) form: role and content only, in that order, as JSON."""
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)


def is_store_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


class Store:
    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path).expanduser()
        if not self.path.exists() and not create:
            raise StoreError(f"{self.path}: no such preference store")
        if self.path.exists() and self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise StoreError(f"{self.path}: not an SQLite file, so not a coati-tui preference store")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)  # explicit transactions
            self.db.execute("PRAGMA busy_timeout = 10000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            full = " (is the disk full?)" if "disk" in str(exc) else ""  # WAL needs room for its -wal / -shm files
            raise StoreError(f"{self.path}: unreadable as a preference store ({exc}){full}") from exc

    # ---- schema -----------------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._write():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version == 0 and tables:
                raise StoreError(
                    f"{self.path}: an SQLite file of something else (tables: "
                    f"{', '.join(sorted(tables)[:6])}), not a coati-tui preference store"
                )
            if version and ("coati_meta" not in tables or self._meta("app") != APP):
                raise StoreError(f"{self.path}: an SQLite file of something else, not a coati-tui preference store")
            if version > VERSION:
                raise StoreError(
                    f"{self.path}: made by a newer coati-tui (schema {version}; this one reads up to "
                    f"{VERSION}). Upgrade coati-tui."
                )
            for n in range(version, VERSION):  # statement by statement: executescript would commit midway
                for stmt in filter(str.strip, MIGRATIONS[n].split(";")):
                    self.db.execute(stmt)
                if n == 0:
                    self.db.execute("INSERT INTO coati_meta VALUES ('app', ?), ('created', ?)", (APP, str(time.time())))
                self.db.execute(f"PRAGMA user_version = {n + 1}")

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM coati_meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _write(self) -> _Tx:
        return _Tx(self.db)

    @property
    def version(self) -> int:
        version: int = self.db.execute("PRAGMA user_version").fetchone()[0]
        return version

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ----------------------------------------------------------------------------------
    def add_prompt(self, messages: list[dict[str, Any]], source: str) -> int:
        text = prompt_key(messages)
        with self._write():
            self.db.execute(
                "INSERT OR IGNORE INTO prompts(messages, source, created) VALUES (?, ?, ?)", (text, source, time.time())
            )
            prompt_id: int = self.db.execute("SELECT id FROM prompts WHERE messages = ?", (text,)).fetchone()[0]
            return prompt_id

    def add_pair(self, prompt_id: int, first: dict[str, Any], second: dict[str, Any], swapped: bool) -> int:
        """Two answers (``{"text", "model", "sampling", "gen_s"}``; ``first`` is model A's or the first
        sample) stored with the pair as it will be shown: ``swapped`` puts ``first`` on the right."""
        now = time.time()
        with self._write():
            ids: list[int] = []
            for r in (first, second):
                cur = self.db.execute(
                    "INSERT INTO responses(prompt_id, text, model, sampling, gen_s, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        prompt_id,
                        r["text"],
                        r["model"],
                        json.dumps(r.get("sampling", {}), ensure_ascii=False),
                        r.get("gen_s"),
                        now,
                    ),
                )
                ids.append(_rowid(cur))
            left, right = (ids[1], ids[0]) if swapped else (ids[0], ids[1])
            return _rowid(
                self.db.execute(
                    "INSERT INTO pairs(prompt_id, left_id, right_id, swapped, created) VALUES (?, ?, ?, ?, ?)",
                    (prompt_id, left, right, int(swapped), now),
                )
            )

    def judge(
        self, pair_id: int, choice: str, annotator: str, note: str = "", time_taken_s: float | None = None
    ) -> int:
        """Record a judgment; committed (and synced) when this returns."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, not {choice!r}")
        with self._write():
            return _rowid(
                self.db.execute(
                    "INSERT INTO comparisons(pair_id, choice, annotator, note, time_taken_s, created, round) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (pair_id, choice, annotator, note, time_taken_s, time.time(), self.current_round()),
                )
            )

    def current_round(self) -> int:
        """The labeling round new judgments belong to (1 until ``next_round``)."""
        row = self.db.execute("SELECT value FROM coati_meta WHERE key = 'round'").fetchone()
        return int(row[0]) if row else 1

    def next_round(self, model_a: str, model_b: str) -> int:
        """Start the next labeling round, with ``model_a`` (usually the model just trained on this store's
        labels) against ``model_b`` (the previous model A); recorded, committed, and returned."""
        with self._write():
            n = self.current_round() + 1
            self.db.execute("INSERT OR REPLACE INTO coati_meta(key, value) VALUES ('round', ?)", (str(n),))
            self.db.execute(
                "INSERT OR REPLACE INTO coati_meta(key, value) VALUES (?, ?)",
                (f"round-{n}", json.dumps({"model_a": model_a, "model_b": model_b, "started": time.time()})),
            )
            return n

    def rounds(self) -> dict[int, int]:
        """Judgments (not undone) per round."""
        rows = self.db.execute("SELECT round, COUNT(*) FROM comparisons WHERE undone IS NULL GROUP BY round")
        return {int(r): int(c) for r, c in rows}

    def undo(self, annotator: str) -> int | None:
        """Take back this annotator's last judgment (kept, marked undone); returns its pair id."""
        with self._write():
            row = self.db.execute(
                "SELECT id, pair_id FROM comparisons WHERE annotator = ? AND undone IS NULL ORDER BY id DESC LIMIT 1",
                (annotator,),
            ).fetchone()
            if row is None:
                return None
            self.db.execute("UPDATE comparisons SET undone = ? WHERE id = ?", (time.time(), row[0]))
            pair_id: int = row[1]
            return pair_id

    def set_note(self, comparison_id: int, note: str) -> None:
        with self._write():
            self.db.execute("UPDATE comparisons SET note = ? WHERE id = ?", (note, comparison_id))

    def last_judgment(self, annotator: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT id, pair_id, choice, note FROM comparisons "
            "WHERE annotator = ? AND undone IS NULL ORDER BY id DESC LIMIT 1",
            (annotator,),
        ).fetchone()
        return dict(zip(("id", "pair_id", "choice", "note"), row)) if row else None

    # ---- reading ----------------------------------------------------------------------------------
    def pair(self, pair_id: int) -> PairView:
        row = self.db.execute(
            "SELECT p.id, q.messages, l.text, r.text, l.model, r.model FROM pairs p "
            "JOIN prompts q ON q.id = p.prompt_id "
            "JOIN responses l ON l.id = p.left_id JOIN responses r ON r.id = p.right_id WHERE p.id = ?",
            (pair_id,),
        ).fetchone()
        if row is None:
            raise KeyError(pair_id)
        return PairView(row[0], json.loads(row[1]), row[2], row[3], row[4], row[5])

    def pending(self, annotator: str, limit: int = 100) -> list[int]:
        """Pairs this annotator has not judged (or took back), oldest first."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT p.id FROM pairs p WHERE NOT EXISTS (SELECT 1 FROM comparisons c WHERE c.pair_id = p.id "
                "AND c.annotator = ? AND c.undone IS NULL) ORDER BY p.id LIMIT ?",
                (annotator, limit),
            )
        ]

    def prompts_with_pairs(self) -> set[str]:
        return {
            r[0]
            for r in self.db.execute("SELECT DISTINCT q.messages FROM prompts q JOIN pairs p ON p.prompt_id = q.id")
        }

    def _latest(self) -> dict[int, dict[str, str]]:
        """pair id -> {annotator: choice}: each annotator's latest standing judgment."""
        out: dict[int, dict[str, str]] = {}
        for pair_id, annotator, choice in self.db.execute(
            "SELECT pair_id, annotator, choice FROM comparisons WHERE undone IS NULL ORDER BY id"
        ):
            out.setdefault(pair_id, {})[annotator] = choice
        return out

    def stats(self) -> dict[str, Any]:
        latest = self._latest()
        counts = {c: 0 for c in CHOICES}
        per_annotator: dict[str, int] = {}
        for judged in latest.values():
            for annotator, choice in judged.items():
                counts[choice] += 1
                if choice != "skip":
                    per_annotator[annotator] = per_annotator.get(annotator, 0) + 1
        shared = [[c for c in j.values() if c != "skip"] for j in latest.values()]
        shared = [c for c in shared if len(c) >= 2]
        agree = sum(len(set(c)) == 1 for c in shared)
        pairs = self.db.execute("SELECT count(*) FROM pairs").fetchone()[0]
        return {
            "labeled": counts["A"] + counts["B"] + counts["tie"],
            "A": counts["A"],
            "B": counts["B"],
            "tie": counts["tie"],
            "skip": counts["skip"],
            "pairs": pairs,
            "annotators": per_annotator,
            "shared_pairs": len(shared),
            "agreement": (agree / len(shared)) if shared else None,
        }

    def preferences(self) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """ColossalChat-form records ``{"context", "chosen", "rejected"}`` (messages with ``from``) for every
        pair whose standing judgments all say A or all say B; and the counts of what was left out."""
        latest = self._latest()
        records: list[dict[str, Any]] = []
        left_out = {"tie": 0, "skip": 0, "conflict": 0}
        rows = {
            r[0]: r[1:]
            for r in self.db.execute(
                "SELECT p.id, q.messages, l.text, r.text FROM pairs p JOIN prompts q ON q.id = p.prompt_id "
                "JOIN responses l ON l.id = p.left_id JOIN responses r ON r.id = p.right_id"
            )
        }
        for pair_id in sorted(latest):
            choices = {c for c in latest[pair_id].values() if c != "skip"}
            if not choices:
                left_out["skip"] += 1
                continue
            if choices == {"tie"}:
                left_out["tie"] += 1
                continue
            if len(choices) > 1:
                left_out["conflict"] += 1
                continue
            messages, left, right = rows[pair_id]
            chosen, rejected = (left, right) if choices == {"A"} else (right, left)
            records.append(
                {
                    "context": [{"from": m["role"], "content": m["content"]} for m in json.loads(messages)],
                    "chosen": [{"from": "assistant", "content": chosen}],
                    "rejected": [{"from": "assistant", "content": rejected}],
                }
            )
        return records, left_out


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one writer at a time across processes."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False


def _rowid(cur: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just made (sqlite3 sets it on every successful INSERT)."""
    assert cur.lastrowid is not None
    return cur.lastrowid


def to_trl(record: dict[str, Any]) -> dict[str, Any]:
    """ColossalChat form -> TRL's conversational ``{"prompt", "chosen", "rejected"}`` (role/content)."""

    def msgs(side: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"role": m["from"], "content": m["content"]} for m in side]

    return {"prompt": msgs(record["context"]), "chosen": msgs(record["chosen"]), "rejected": msgs(record["rejected"])}


def export(store_path: str | Path, fmt: str, out: str | Path) -> tuple[int, dict[str, int]]:
    """Write the store's preferences as JSON lines in ``fmt`` (coati | trl); (records written, left out)."""
    if fmt not in ("coati", "trl"):
        raise ValueError(f"--format must be coati or trl, not {fmt!r}")
    with Store(store_path, create=False) as store:
        records, left_out = store.preferences()
    lines = (json.dumps(rec if fmt == "coati" else to_trl(rec), ensure_ascii=False) + "\n" for rec in records)
    _write_whole(Path(out), lines)
    return len(records), left_out


def _write_whole(out: Path, lines: Iterable[str]) -> None:
    """``out`` holds the old file or the whole new one, never part of it (kill -9, a full disk, two exports
    at once): a temp file of its own in the same folder, synced, then renamed over ``out``."""
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, out)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
