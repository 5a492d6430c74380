"""The registry: patches, base models, stacks, evaluations and jobs in one SQLite database.

Every function returns dataclasses (see `records.py`); no SQL leaves this package. A write
that touches a file and rows does it in this order, so a process killed at any moment
leaves the old state or the new one:

- adding a patch: the file goes into the content-addressed store first (temporary name,
  fsync, rename), then its row is inserted in one transaction; a kill in between leaves an
  unreferenced file, which `gc()` removes (after a grace period, so that a concurrent writer's
  not-yet-committed file is never taken);
- removing a patch: the rows go in one transaction, then the file is deleted.

The database runs in WAL mode with a busy timeout, so the desktop app and a CLI can use one
registry at once; write transactions start with BEGIN IMMEDIATE (no lock upgrades, hence no
deadlock between two writers). Whether bytes are already registered is decided inside the
write transaction, so two processes importing one file both see it registered once.

Opening a registry that can be written also tidies up after processes that were killed: jobs
they left "running" become "interrupted" (each job row records its pid and host), and their
temporary files in the store are removed. A registry whose database or folder cannot be
written is opened read-only: listing, showing and searching work, writes are refused.

Patches are named by id as ``#12`` or ``id:12``; a bare number of fewer than 6 digits is an
id too, while 6 or more hex digits (digits only included) are a sha256 prefix, which needs
at least 6: the two can never be confused.

>>> with Registry.open("/tmp/fmn-registry") as reg:  # doctest: +SKIP
...     rec = reg.add_patch(open("castle.safetensors", "rb").read(), tags=["demo"])
...     reg.create_stack("clean", mode="fused")
...     reg.add_to_stack("clean", rec.name, strength=1.0)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from fmn_desktop.fileio import pid_alive, sweep
from fmn_desktop.limits import strength_problem
from fmn_desktop.registry.errors import (
    NotFoundError,
    PatchInUseError,
    RegistryBusyError,
    RegistryCorruptError,
    RegistryError,
)
from fmn_desktop.registry.header import Header, parse_header
from fmn_desktop.registry.keywords import keywords
from fmn_desktop.registry.location import DB_NAME, STORE_NAME, registry_dir
from fmn_desktop.registry.migrations import migrations
from fmn_desktop.registry.records import (  # noqa: F401  (REF_HELP re-exported)
    REF_HELP,
    SHA_PREFIX_MIN,
    BaseModelRecord,
    EvaluationRecord,
    JobRecord,
    PatchRecord,
    StackItemRecord,
    StackRecord,
)
from fmn_desktop.registry.store import PatchStore, sha256_bytes, sha256_file

KINDS = ("forget", "correct")
STACK_MODES = ("additive", "fused")
JOB_STATUSES = ("running", "ok", "failed", "cancelled", "interrupted")
GC_GRACE_S = 3600.0
ID_RE = re.compile(r"(?:#|id:)\s*(\d+)", re.IGNORECASE)
SHORT_ID_RE = re.compile(r"\d{1,5}")  # a bare number of fewer than SHA_PREFIX_MIN digits
SHA_PREFIX_RE = re.compile(r"[0-9a-f]{6,64}")


def parse_id(text: str) -> int | None:
    """The id of a reference written `#12`, `id:12`, or as a bare number of up to 5 digits
    (6 or more digits are a sha256 prefix); else None."""
    text = text.strip()
    m = ID_RE.fullmatch(text)
    if m:
        return int(m.group(1))
    if SHORT_ID_RE.fullmatch(text):
        return int(text)
    return None


def host_name() -> str:
    try:
        return socket.gethostname()
    except OSError:
        return ""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_list(text: str | None) -> list:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _json_dict(text: str | None) -> dict:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:60] or "patch"


def _sqlite_error(exc: sqlite3.Error, path: Path) -> RegistryError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return RegistryBusyError(
            f"registry {path} is busy (another program is writing to it); try again"
        )
    if isinstance(exc, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text or "corrupt" in text
    ):
        return RegistryCorruptError(
            f"registry database {path} is damaged ({text}); move it aside and re-import "
            "the patch files from its store folder"
        )
    return RegistryError(f"registry {path}: {text}")


class Registry:
    """One registry folder: `registry.db` and the `patches/` store beside it."""

    def __init__(self, root: Path, db: Database, busy_timeout: float, readonly: bool = False):
        self.root = root
        self.db = db
        self.busy_timeout = busy_timeout
        self.readonly = readonly
        self.store = PatchStore(root / STORE_NAME)
        # One connection may be shared by the GUI's threads: one statement or transaction
        # at a time (separate processes are serialised by SQLite's own locks).
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        root: str | os.PathLike | None = None,
        busy_timeout: float = 10.0,
        readonly: bool | None = None,
    ) -> Registry:
        """Open (creating if needed) and migrate the registry at `root` (see `registry_dir`).

        `readonly` None: read-only when the database or its folder cannot be written (then
        nothing is created, migrated or tidied), else read-write."""
        root = registry_dir(root)
        path = root / DB_NAME
        if path.exists() and path.is_dir():
            raise RegistryError(f"{path} is a folder, not a registry database")
        if readonly is None:
            readonly = path.is_file() and not (
                os.access(path, os.W_OK) and os.access(root, os.W_OK | os.X_OK)
            )
        if readonly:
            return cls._open_readonly(root, path, busy_timeout)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(f"cannot create registry folder {root}: {exc}") from exc
        try:
            conn = sqlite3.connect(
                str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, path) from exc
        reg = cls(root, Database(conn), busy_timeout)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            reg.migrate()
            reg.recover()
        except sqlite3.Error as exc:
            conn.close()
            raise _sqlite_error(exc, path) from exc
        except BaseException:
            conn.close()
            raise
        return reg

    @classmethod
    def _open_readonly(cls, root: Path, path: Path, busy_timeout: float) -> Registry:
        from urllib.parse import quote

        if not path.is_file():
            raise RegistryError(f"no registry database at {path}")
        uri = f"file:{quote(str(path.resolve()))}"
        last: sqlite3.Error | None = None
        # mode=ro reads a WAL database when its -shm can be used; a folder nobody may write
        # (so no -shm can exist or change) is read as immutable.
        for query in ("?mode=ro", "?immutable=1"):
            try:
                conn = sqlite3.connect(
                    uri + query,
                    uri=True,
                    timeout=busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                conn.execute("select count(*) from sqlite_master").fetchone()
            except sqlite3.Error as exc:
                last = exc
                continue
            return cls(root, Database(conn), busy_timeout, readonly=True)
        assert last is not None
        raise _sqlite_error(last, path) from last

    def recover(self) -> None:
        """Tidy up after killed processes: their "running" jobs on this host become
        "interrupted", their temporary files in the store and the registry folder go."""
        if self.readonly:
            return
        host = host_name()
        rows = self._rows(
            "select id, pid from jobs where status = 'running' and host = ? and pid is not null",
            [host],
        )
        dead = [r["id"] for r in rows if not pid_alive(int(r["pid"]))]
        if dead:
            with self._write() as db:
                for job_id in dead:
                    db.execute(
                        "update jobs set status = 'interrupted', finished = ?, message = ? "
                        "where id = ? and status = 'running'",
                        [now(), "the process running it ended before it did", job_id],
                    )
        self.store.sweep()
        sweep(self.root)

    def migrate(self, stop_before: str | None = None) -> None:
        """Apply pending migrations (serialised between processes by a write lock)."""
        if not migrations.pending(self.db):
            return
        with self._write():
            migrations.apply(self.db, stop_before=stop_before)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    @contextlib.contextmanager
    def _write(self) -> Iterator[Database]:
        """One write transaction (BEGIN IMMEDIATE); nested sqlite-utils calls use savepoints."""
        if self.readonly:
            raise RegistryError(
                f"registry {self.root} is read-only (its database or folder cannot be "
                "written): listing and showing work, changes do not"
            )
        with self._lock:
            with self._transaction() as db:
                yield db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Database]:
        conn = self.db.conn
        if conn.in_transaction:  # nested: a savepoint
            with self.db.atomic():
                yield self.db
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, self.db_path) from exc
        try:
            yield self.db
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise _sqlite_error(exc, self.db_path) from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _sqlite_error(exc, self.db_path) from exc

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        try:
            with self._lock:
                return list(self.db.query(sql, list(params)))
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, self.db_path) from exc

    # ----------------------------------------------------------------- base models
    def add_base_model(
        self, fingerprint: str, *, name: str = "", path: str = "", family: str = ""
    ) -> BaseModelRecord:
        """Record a base model (idempotent on the fingerprint; name/path/family updated)."""
        if not fingerprint:
            raise RegistryError("a base model needs a fingerprint")
        with self._write() as db:
            rows = self._rows("select id from base_models where fingerprint = ?", [fingerprint])
            if rows:
                db["base_models"].update(
                    rows[0]["id"],
                    {k: v for k, v in dict(name=name, path=path, family=family).items() if v},
                )
            else:
                new_id = (
                    db["base_models"]
                    .insert(
                        dict(
                            fingerprint=fingerprint,
                            name=name,
                            path=path,
                            family=family,
                            added=now(),
                        )
                    )
                    .last_pk
                )
                db.execute(  # patches registered before their base model was known
                    "update patches set base_model_id = ? where base_fingerprint = ?",
                    [new_id, fingerprint],
                )
        return self.base_model(fingerprint)

    def base_model(self, fingerprint: str) -> BaseModelRecord:
        rows = self._rows("select * from base_models where fingerprint = ?", [fingerprint])
        if not rows:
            raise NotFoundError(f"no base model with fingerprint {fingerprint[:12]}")
        return BaseModelRecord(**rows[0])

    def base_models(self) -> list[BaseModelRecord]:
        return [BaseModelRecord(**r) for r in self._rows("select * from base_models order by id")]

    # ----------------------------------------------------------------- patches
    def _patch(self, row: dict) -> PatchRecord:
        return PatchRecord(
            id=row["id"],
            sha256=row["sha256"],
            name=row["name"],
            title=row["title"] or "",
            kind=row["kind"],
            concepts=_json_list(row["concepts"]),
            method=row["method"] or "",
            family=row["family"] or "",
            base_fingerprint=row["base_fingerprint"] or "",
            format=row["format"] or "",
            hyperparameters=_json_dict(row["hyperparameters"]),
            scores=_json_dict(row["scores"]),
            size=row["size"] or 0,
            created=row["created"] or "",
            added=row["added"] or "",
            source=row["source"] or "",
            tags=_json_list(row["tags"]),
            notes=row["notes"] or "",
            path=self.store.path(row["sha256"]),
            base_model_id=row["base_model_id"],
        )

    def _unique_name(self, wanted: str) -> str:
        taken = {r["name"] for r in self._rows("select name from patches")}
        if wanted not in taken:
            return wanted
        i = 2
        while f"{wanted}-{i}" in taken:
            i += 1
        return f"{wanted}-{i}"

    def find_sha(self, sha: str) -> PatchRecord | None:
        rows = self._rows("select * from patches where sha256 = ?", [sha])
        return self._patch(rows[0]) if rows else None

    def add_patch(
        self,
        data: bytes | os.PathLike | str,
        *,
        name: str | None = None,
        tags: Iterable[str] = (),
        notes: str = "",
        source: str = "",
        concepts: list[str] | None = None,
        kind: str | None = None,
    ) -> PatchRecord:
        """Store a patch file (bytes or a path) and register it; its metadata fills the row.

        Adding bytes already stored returns the existing record (tags are merged).
        """
        return self.put_patch(
            data, name=name, tags=tags, notes=notes, source=source, concepts=concepts, kind=kind
        )[0]

    def put_patch(
        self,
        data: bytes | os.PathLike | str,
        *,
        name: str | None = None,
        tags: Iterable[str] = (),
        notes: str = "",
        source: str = "",
        concepts: list[str] | None = None,
        kind: str | None = None,
    ) -> tuple[PatchRecord, bool]:
        """`add_patch`, and whether the bytes were new. The record returned is the row as
        committed, even if another process removes it right after."""
        if not isinstance(data, bytes):
            path = Path(data)
            if not path.is_file():
                raise RegistryError(f"no such patch file: {path}")
            source = source or str(path)
            data = path.read_bytes()
        header = parse_header(data, what=Path(source).name if source else "patch file")
        sha = sha256_bytes(data)
        tags = sorted({t.strip() for t in tags if t.strip()})
        existing = self.find_sha(sha)
        if existing is not None:
            return (self.tag(existing.id, add=tags) if tags else existing), False
        row = self._row_from_header(header, sha, len(data), source, notes, concepts, kind)
        if name is not None:
            check_patch_name(name)
        row["tags"] = json.dumps(tags)
        self._write_guard()
        _, written = self.store.put(data, sha)
        new = True
        try:
            with self._write() as db:
                again = self._rows("select * from patches where sha256 = ?", [sha])
                if again:  # another process registered the same bytes meanwhile
                    new = False
                    if tags:
                        merged = sorted(set(_json_list(again[0]["tags"])) | set(tags))
                        db["patches"].update(again[0]["id"], {"tags": json.dumps(merged)})
                else:
                    if name is not None and self._rows(
                        "select 1 from patches where name = ?", [name.strip()]
                    ):
                        raise RegistryError(f"a patch named {name.strip()!r} already exists")
                    if not self.store.has(sha):  # a concurrent removal took the file
                        self.store.put(data, sha)
                    row["name"] = (
                        name.strip()
                        if name is not None
                        else self._unique_name(
                            _slug(f"{row['kind']}-{'-'.join(_json_list(row['concepts']))}")
                        )
                    )
                    base = self._rows(
                        "select id from base_models where fingerprint = ?",
                        [row["base_fingerprint"]],
                    )
                    row["base_model_id"] = base[0]["id"] if base else None
                    self._insert_patch_row(db, row)
                committed = self._rows("select * from patches where sha256 = ?", [sha])[0]
        except BaseException:
            if written and new:
                with contextlib.suppress(RegistryError, sqlite3.Error):
                    if self.find_sha(sha) is None:
                        self.store.delete(sha)
            raise
        return self._patch(committed), new

    def _write_guard(self) -> None:
        if self.readonly:
            with self._write():
                pass  # raises the read-only error

    def _insert_patch_row(self, db: Database, row: dict) -> None:
        db["patches"].insert(row)

    @staticmethod
    def _row_from_header(
        header: Header,
        sha: str,
        size: int,
        source: str,
        notes: str,
        concepts: list[str] | None,
        kind: str | None,
    ) -> dict:
        meta = header.metadata
        keys = list(header.tensors)
        fmt = meta.get("fmn.format") or (
            "lora" if any(k.endswith(".lora_down.weight") for k in keys) else "diff"
        )
        kind = kind or meta.get("fmn.kind", "forget")
        if kind not in KINDS:
            raise RegistryError(f"unknown patch kind {kind!r}; valid: {', '.join(KINDS)}")
        if concepts is None:
            concepts = _json_list(meta.get("fmn.concepts"))
        return dict(
            sha256=sha,
            title=meta.get("modelspec.title", ""),
            kind=kind,
            concepts=json.dumps([str(c) for c in concepts]),
            method=meta.get("fmn.method", "unknown"),
            family=meta.get("fmn.family", ""),
            base_fingerprint=meta.get("fmn.base_fingerprint", ""),
            format=fmt,
            hyperparameters=json.dumps(_json_dict(meta.get("fmn.hyperparameters"))),
            scores=json.dumps(_json_dict(meta.get("fmn.scores"))),
            size=size,
            created=meta.get("fmn.created", meta.get("modelspec.date", "")),
            added=now(),
            source=source,
            notes=notes,
        )

    def get_patch(self, ref: str | int) -> PatchRecord:
        """A patch by id (an int, `#12`, `id:12`, or up to 5 digits), name, or a unique sha256
        prefix (at least 6 hex digits; see the module docstring)."""
        if isinstance(ref, int):
            rows = self._rows("select * from patches where id = ?", [ref])
            if not rows:
                raise NotFoundError(f"no patch with id {ref}")
            return self._patch(rows[0])
        text = str(ref).strip()
        pid = parse_id(text)
        if pid is not None:
            rows = self._rows("select * from patches where id = ?", [pid])
        else:
            rows = self._rows("select * from patches where name = ?", [text])
            prefix = text.lower()
            if not rows and SHA_PREFIX_RE.fullmatch(prefix):
                rows = self._rows(
                    "select * from patches where substr(sha256, 1, ?) = ?", [len(prefix), prefix]
                )
                if len(rows) > 1:
                    raise NotFoundError(f"sha256 prefix {text!r} matches {len(rows)} patches")
                if not rows and prefix.isdigit():
                    raise NotFoundError(
                        f"no patch whose sha256 starts with {text!r} (for the patch with that "
                        f"id, write #{int(prefix)})"
                    )
        if not rows:
            names = [r["name"] for r in self._rows("select name from patches order by id")]
            known = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
            raise NotFoundError(f"no patch {text!r}; known: {known or '(registry is empty)'}")
        return self._patch(rows[0])

    def list_patches(
        self,
        *,
        kind: str | None = None,
        tag: str | None = None,
        concept: str | None = None,
        base_fingerprint: str | None = None,
    ) -> list[PatchRecord]:
        out = [self._patch(r) for r in self._rows("select * from patches order by id")]
        if kind:
            out = [p for p in out if p.kind == kind]
        if tag:
            out = [p for p in out if tag in p.tags]
        if concept:
            out = [p for p in out if concept.lower() in (c.lower() for c in p.concepts)]
        if base_fingerprint:
            out = [p for p in out if p.base_fingerprint.startswith(base_fingerprint)]
        return out

    def search(self, query: str) -> list[PatchRecord]:
        """Patches matching every word of `query`, best first.

        A word matches a patch when it occurs in its name, title, concepts, tags or notes
        (full-text, porter stemming, as a word or a word's start: `cast` finds `castle`), or
        starts one of its `keywords` (kind, method, format, concept kind, file name); quotes
        and FTS operators in the query are plain text."""
        words = re.findall(r"\w+", query)
        if not words:
            return []
        ranked = {pid: i for i, pid in enumerate(self._fts_ids(words))}
        per_word = [set(self._fts_ids([w])) for w in words]
        hits = []
        for row in self._rows("select * from patches order by id"):
            mine = keywords(row)
            if all(
                row["id"] in found or any(k.startswith(w.lower()) for k in mine)
                for w, found in zip(words, per_word)
            ):
                hits.append(row)
        hits.sort(key=lambda r: (ranked.get(r["id"], len(ranked)), r["id"]))
        return [self._patch(r) for r in hits]

    def _fts_ids(self, words: list[str]) -> list[int]:
        """Ids of the patches whose indexed text holds every word, best first."""
        match = " ".join('"' + w.replace('"', '""') + '"*' for w in words)
        try:
            with self._lock:
                rows = list(
                    self.db.query(
                        "select patches.id from patches join patches_fts "
                        "on patches.rowid = patches_fts.rowid "
                        "where patches_fts match ? order by patches_fts.rank",
                        [match],
                    )
                )
        except sqlite3.OperationalError as exc:
            if "fts5" in str(exc):
                return []
            raise _sqlite_error(exc, self.db_path) from exc
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, self.db_path) from exc
        return [r["id"] for r in rows]

    def tag(
        self, ref: str | int, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> PatchRecord:
        with self._write() as db:
            rec = self.get_patch(ref)
            tags = (set(rec.tags) | {t.strip() for t in add if t.strip()}) - set(remove)
            db["patches"].update(rec.id, {"tags": json.dumps(sorted(tags))})
        return self.get_patch(rec.id)

    def update_patch(
        self, ref: str | int, *, name: str | None = None, notes: str | None = None
    ) -> PatchRecord:
        with self._write() as db:
            rec = self.get_patch(ref)
            changes: dict[str, Any] = {}
            if name is not None and name != rec.name:
                check_patch_name(name)
                if self._rows("select 1 from patches where name = ?", [name]):
                    raise RegistryError(f"a patch named {name!r} already exists")
                changes["name"] = name
            if notes is not None:
                changes["notes"] = notes
            if changes:
                db["patches"].update(rec.id, changes)
        return self.get_patch(rec.id)

    def stacks_using(self, ref: str | int) -> list[str]:
        rec = self.get_patch(ref)
        rows = self._rows(
            "select distinct s.name from stack_items i join stacks s on s.id = i.stack_id "
            "where i.patch_id = ? order by s.name",
            [rec.id],
        )
        return [r["name"] for r in rows]

    def remove_patch(self, ref: str | int, *, cascade: bool = False) -> PatchRecord:
        """Delete a patch row and then its file. A patch in a stack is refused unless
        `cascade`, which also takes it out of those stacks (and drops its evaluations)."""
        with self._write() as db:
            rec = self.get_patch(ref)
            users = self.stacks_using(rec.id)
            if users and not cascade:
                raise PatchInUseError(
                    f"patch {rec.name!r} is used by stack(s) {', '.join(users)}; remove it "
                    "there first, or delete with cascade (CLI: --cascade)"
                )
            stack_ids = [
                r["stack_id"]
                for r in self._rows(
                    "select distinct stack_id from stack_items where patch_id = ?", [rec.id]
                )
            ]
            db.execute("delete from stack_items where patch_id = ?", [rec.id])
            for sid in stack_ids:
                self._renumber(sid)
            db.execute("delete from evaluations where patch_id = ?", [rec.id])
            db.execute("update jobs set patch_id = null where patch_id = ?", [rec.id])
            db["patches"].delete(rec.id)
        # The file goes under the write lock, so a concurrent add of the same bytes (which
        # checks the file inside its own transaction) never ends with a row and no file.
        with self._write():
            if self.find_sha(rec.sha256) is None:
                self.store.delete(rec.sha256)
        return rec

    def read_patch_bytes(self, ref: str | int) -> bytes:
        """The stored file, checked against its hash (a damaged file is a clear error)."""
        rec = self.get_patch(ref)
        if not rec.path.is_file():
            raise RegistryCorruptError(
                f"patch {rec.name!r}: its file {rec.path} is missing from the store"
            )
        data = rec.path.read_bytes()
        if sha256_bytes(data) != rec.sha256:
            raise RegistryCorruptError(
                f"patch {rec.name!r}: stored file {rec.path} is damaged (hash mismatch)"
            )
        return data

    # ----------------------------------------------------------------- consistency
    def verify(self) -> list[str]:
        """Problems: rows whose file is missing or damaged. Unreferenced files are not
        problems (a writer killed between file and row leaves one; `gc` removes it)."""
        problems = []
        for rec in self.list_patches():
            if not rec.path.is_file():
                problems.append(f"{rec.name}: file missing ({rec.path})")
            elif sha256_file(rec.path) != rec.sha256:
                problems.append(f"{rec.name}: file damaged ({rec.path})")
        return problems

    def gc(self, grace_s: float = GC_GRACE_S) -> list[Path]:
        """Delete store files no row refers to, and leftover temporaries, older than
        `grace_s` (so a concurrent writer's file-before-row is left alone)."""
        import time

        known = {r["sha256"] for r in self._rows("select sha256 from patches")}
        removed = []
        cutoff = time.time() - grace_s
        for sha, path in self.store.files().items():
            if sha not in known and path.stat().st_mtime <= cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
        for tmp in self.store.temporaries(grace_s):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        return removed

    # ----------------------------------------------------------------- stacks
    def _stack_row(self, ref: str | int) -> dict:
        if isinstance(ref, int):
            rows = self._rows("select * from stacks where id = ?", [ref])
            if rows:
                return rows[0]
        text = str(ref).strip()
        rows = self._rows("select * from stacks where name = ?", [text])
        sid = re.fullmatch(r"\d+", text) and int(text)
        m = ID_RE.fullmatch(text)
        if m:
            sid = int(m.group(1))
        if not rows and sid:
            rows = self._rows("select * from stacks where id = ?", [sid])
        if not rows:
            names = [r["name"] for r in self._rows("select name from stacks order by name")]
            raise NotFoundError(f"no stack {text!r}; known: {', '.join(names) or '(none yet)'}")
        return rows[0]

    def create_stack(
        self, name: str, *, mode: str = "additive", notes: str = "", base_fingerprint: str = ""
    ) -> StackRecord:
        name = name.strip()
        if not name or re.fullmatch(r"\d+", name):
            raise RegistryError("a stack needs a name that is not a bare number")
        if mode not in STACK_MODES:
            raise RegistryError(f"unknown stack mode {mode!r}; valid: {', '.join(STACK_MODES)}")
        with self._write() as db:
            if self._rows("select 1 from stacks where name = ?", [name]):
                raise RegistryError(f"a stack named {name!r} already exists")
            db["stacks"].insert(
                dict(
                    name=name,
                    mode=mode,
                    notes=notes,
                    base_fingerprint=base_fingerprint,
                    created=now(),
                    updated=now(),
                )
            )
        return self.get_stack(name)

    def get_stack(self, ref: str | int) -> StackRecord:
        row = self._stack_row(ref)
        items = [
            StackItemRecord(r["position"], r["strength"], self.get_patch(r["patch_id"]))
            for r in self._rows(
                "select * from stack_items where stack_id = ? order by position", [row["id"]]
            )
        ]
        return StackRecord(
            id=row["id"],
            name=row["name"],
            mode=row["mode"],
            base_fingerprint=row["base_fingerprint"] or "",
            notes=row["notes"] or "",
            created=row["created"] or "",
            updated=row["updated"] or "",
            items=items,
        )

    def list_stacks(self) -> list[StackRecord]:
        return [self.get_stack(r["id"]) for r in self._rows("select id from stacks order by name")]

    def update_stack(
        self, ref: str | int, *, mode: str | None = None, notes: str | None = None
    ) -> StackRecord:
        if mode is not None and mode not in STACK_MODES:
            raise RegistryError(f"unknown stack mode {mode!r}; valid: {', '.join(STACK_MODES)}")
        with self._write() as db:
            row = self._stack_row(ref)
            changes = {k: v for k, v in dict(mode=mode, notes=notes).items() if v is not None}
            changes["updated"] = now()
            db["stacks"].update(row["id"], changes)
        return self.get_stack(row["id"])

    def add_to_stack(
        self,
        stack: str | int,
        patch: str | int,
        *,
        strength: float = 1.0,
        position: int | None = None,
    ) -> StackRecord:
        """Append (or insert at `position`) a patch; a patch already there gets `strength`."""
        problem = strength_problem(strength)
        if problem:
            raise RegistryError(problem)
        strength = float(strength)
        with self._write() as db:
            srow = self._stack_row(stack)
            rec = self.get_patch(patch)
            have = self._rows(
                "select id from stack_items where stack_id = ? and patch_id = ?",
                [srow["id"], rec.id],
            )
            if have:
                db["stack_items"].update(have[0]["id"], {"strength": strength})
            else:
                count = self._rows(
                    "select count(*) as n from stack_items where stack_id = ?", [srow["id"]]
                )[0]["n"]
                pos = count if position is None else max(0, min(int(position), count))
                db.execute(
                    "update stack_items set position = position + 1 "
                    "where stack_id = ? and position >= ?",
                    [srow["id"], pos],
                )
                db["stack_items"].insert(
                    dict(stack_id=srow["id"], patch_id=rec.id, position=pos, strength=strength)
                )
            db["stacks"].update(srow["id"], {"updated": now()})
        return self.get_stack(srow["id"])

    def remove_from_stack(self, stack: str | int, patch: str | int) -> StackRecord:
        with self._write() as db:
            srow = self._stack_row(stack)
            rec = self.get_patch(patch)
            cur = db.execute(
                "delete from stack_items where stack_id = ? and patch_id = ?",
                [srow["id"], rec.id],
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"patch {rec.name!r} is not in stack {srow['name']!r}")
            self._renumber(srow["id"])
            db["stacks"].update(srow["id"], {"updated": now()})
        return self.get_stack(srow["id"])

    def _renumber(self, stack_id: int) -> None:
        rows = self._rows(
            "select id from stack_items where stack_id = ? order by position", [stack_id]
        )
        for i, r in enumerate(rows):
            self.db.execute("update stack_items set position = ? where id = ?", [i, r["id"]])

    def delete_stack(self, ref: str | int) -> None:
        with self._write() as db:
            row = self._stack_row(ref)
            db.execute("delete from stack_items where stack_id = ?", [row["id"]])
            db.execute("delete from evaluations where stack_id = ?", [row["id"]])
            db.execute("update jobs set stack_id = null where stack_id = ?", [row["id"]])
            db["stacks"].delete(row["id"])

    # ----------------------------------------------------------------- evaluations
    def add_evaluation(
        self,
        metric: str,
        value: float,
        *,
        patch: str | int | None = None,
        stack: str | int | None = None,
        concept: str = "",
        low: float | None = None,
        high: float | None = None,
        n: int | None = None,
        settings: dict | None = None,
    ) -> EvaluationRecord:
        """Store one measured score of a patch or of a stack."""
        if (patch is None) == (stack is None):
            raise RegistryError("an evaluation belongs to exactly one patch or one stack")
        with self._write() as db:
            pid = self.get_patch(patch).id if patch is not None else None
            sid = self._stack_row(stack)["id"] if stack is not None else None
            row = dict(
                patch_id=pid,
                stack_id=sid,
                metric=metric,
                concept=concept,
                value=float(value),
                low=low,
                high=high,
                n=n,
                settings=json.dumps(settings or {}, sort_keys=True),
                created=now(),
            )
            new_id = db["evaluations"].insert(row).last_pk
        return self._evaluation(self._rows("select * from evaluations where id = ?", [new_id])[0])

    def add_evaluations(
        self,
        rows: Iterable[dict],
        *,
        patch: str | int | None = None,
        stack: str | int | None = None,
    ) -> list[EvaluationRecord]:
        """Store several scores of one patch or stack at once: all of them or none.

        Each row holds `add_evaluation`'s keyword arguments (metric, value, concept, ...).
        """
        with self._write():
            return [self.add_evaluation(**row, patch=patch, stack=stack) for row in rows]

    @staticmethod
    def _evaluation(r: dict) -> EvaluationRecord:
        return EvaluationRecord(
            id=r["id"],
            metric=r["metric"],
            value=r["value"],
            concept=r["concept"] or "",
            low=r["low"],
            high=r["high"],
            n=r["n"],
            patch_id=r["patch_id"],
            stack_id=r["stack_id"],
            settings=_json_dict(r["settings"]),
            created=r["created"] or "",
        )

    def evaluations(
        self, *, patch: str | int | None = None, stack: str | int | None = None
    ) -> list[EvaluationRecord]:
        if patch is not None:
            rows = self._rows(
                "select * from evaluations where patch_id = ? order by id",
                [self.get_patch(patch).id],
            )
        elif stack is not None:
            rows = self._rows(
                "select * from evaluations where stack_id = ? order by id",
                [self._stack_row(stack)["id"]],
            )
        else:
            rows = self._rows("select * from evaluations order by id")
        return [self._evaluation(r) for r in rows]

    # ----------------------------------------------------------------- jobs
    def start_job(self, kind: str, args: dict | None = None) -> int:
        with self._write() as db:
            return int(
                db["jobs"]
                .insert(
                    dict(
                        kind=kind,
                        args=json.dumps(args or {}, sort_keys=True, default=str),
                        status="running",
                        started=now(),
                        pid=os.getpid(),
                        host=host_name(),
                    )
                )
                .last_pk
            )

    def finish_job(
        self,
        job_id: int,
        status: str,
        message: str = "",
        *,
        patch: str | int | None = None,
        stack: str | int | None = None,
    ) -> JobRecord:
        if status not in JOB_STATUSES:
            raise RegistryError(f"unknown job status {status!r}")
        with self._write() as db:
            changes: dict[str, Any] = dict(status=status, message=message[:2000], finished=now())
            # What the job made may be gone already (a concurrent rm): the job still ended.
            if patch is not None:
                with contextlib.suppress(NotFoundError):
                    changes["patch_id"] = self.get_patch(patch).id
            if stack is not None:
                with contextlib.suppress(NotFoundError):
                    changes["stack_id"] = self._stack_row(stack)["id"]
            db["jobs"].update(job_id, changes)
        return self.job_record(job_id)

    @contextlib.contextmanager
    def job(self, kind: str, args: dict | None = None) -> Iterator[dict]:
        """Record a job around a block: ok, cancelled (KeyboardInterrupt) or failed.

        The block may set `info["message"]`, `info["patch"]` or `info["stack"]`.
        """
        job_id = self.start_job(kind, args)
        info: dict[str, Any] = {"id": job_id}
        try:
            yield info
        except KeyboardInterrupt:
            self._finish_quietly(job_id, "cancelled", "interrupted")
            raise
        except BaseException as exc:
            self._finish_quietly(job_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        # The work is done (and committed): a registry too busy to record that is no failure
        # of the job; its row is marked "interrupted" at a later open.
        self._finish_quietly(
            job_id,
            "ok",
            info.get("message", ""),
            patch=info.get("patch"),
            stack=info.get("stack"),
        )

    def _finish_quietly(self, job_id: int, status: str, message: str, **refs) -> None:
        with contextlib.suppress(RegistryError):
            self.finish_job(job_id, status, message, **refs)

    def job_record(self, job_id: int) -> JobRecord:
        rows = self._rows("select * from jobs where id = ?", [job_id])
        if not rows:
            raise NotFoundError(f"no job {job_id}")
        r = rows[0]
        return JobRecord(
            id=r["id"],
            kind=r["kind"],
            args=_json_dict(r["args"]),
            status=r["status"],
            message=r["message"] or "",
            started=r["started"] or "",
            finished=r["finished"],
            patch_id=r["patch_id"],
            stack_id=r["stack_id"],
            pid=r.get("pid"),
            host=r.get("host") or "",
        )

    def jobs(self, limit: int = 50) -> list[JobRecord]:
        rows = self._rows("select id from jobs order by id desc limit ?", [limit])
        return [self.job_record(r["id"]) for r in rows]


def check_patch_name(name: str) -> str:
    """A usable patch name: not empty, not readable as an id or a sha256 prefix."""
    text = name.strip()
    if not text:
        raise RegistryError("a patch name cannot be empty")
    if parse_id(text) is not None or re.fullmatch(r"\d+", text):
        raise RegistryError(f"a patch name cannot be a bare number or #id ({name!r}): ids are")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise RegistryError(f"a patch name cannot hold control characters ({name!r})")
    return text


def open_registry(
    root: str | os.PathLike | None = None,
    busy_timeout: float = 10.0,
    readonly: bool | None = None,
) -> Registry:
    """`Registry.open`: the registry at `root`, `$FMN_REGISTRY`, or the user data dir."""
    return Registry.open(root, busy_timeout=busy_timeout, readonly=readonly)
