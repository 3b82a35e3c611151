"""The pool's store: the SQLite file, its schema and migrations, transactions, errors and integrity checks.

Every write is a single IMMEDIATE transaction, so a crash mid-write leaves every finished write intact and no
half write. WAL mode lets readers run beside a writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from edge_smsp.core.documents import DocumentError, load_json
from edge_smsp.core.errors import OutputPathError, PoolError
from edge_smsp.core.fileio import checked_output_path
from edge_smsp.core.paths import expand_user
from edge_smsp.pool.schema import BASE_SCHEMA, BASE_VERSION, MIGRATIONS, SCHEMA_VERSION, statements

POOL_ENV_VAR = "EDGE_SMSP_POOL"
BUSY_TIMEOUT_MS = 30_000
_SQLITE_HEADER = b"SQLite format 3\x00"

# Pool files this process holds open through SQLite, by (device, inode). Closing *any* descriptor of a file drops
# every POSIX lock the process holds on it, SQLite's included (sqlite.org/howtocorrupt.html, 2.2): a header read
# from Python while a connection is open lets another process take the file as unused and delete the WAL under
# that connection. So the header is read only before the process's first connection to the file.
_open_files: Counter[tuple[int, int]] = Counter()
_open_files_lock = threading.Lock()


def default_pool_path() -> Path:
    """$EDGE_SMSP_POOL if set, else ~/.cache/edge-smsp/pool.sqlite."""
    override = os.environ.get(POOL_ENV_VAR)
    if override:
        # Never raises (help texts show it): a '~nosuchuser/p' is refused when the pool is opened.
        return Path(os.path.expanduser(override))
    return Path.home() / ".cache" / "edge-smsp" / "pool.sqlite"


class PoolStore:
    """An open pool database file; use as a context manager or call close()."""

    def __init__(
        self,
        path: str | Path | None = None,
        create: bool = True,
        check: Literal["quick", "full", "none"] = "quick",
        *,
        lazy: bool = False,
        read_only: bool = False,
    ) -> None:
        """Open (or with create=True, create) the pool; check is "quick", "full" or "none" integrity checking.
        A pool of an older schema version is migrated in place. With lazy=True a missing pool is created on
        first use, so that a command failing before it needs the pool leaves no file behind. A pool that cannot
        be written (a read-only file system, no permission), or any with read_only=True, opens read-only: it is
        read as usual, and a write raises a PoolError saying it is read-only."""
        if check not in ("quick", "full", "none"):
            raise ValueError(f"check must be 'quick', 'full' or 'none', got {check!r}")
        self.path = expand_user(path if path is not None else default_pool_path())
        self._connection: sqlite3.Connection | None = None
        self._file_id = (0, 0)
        self._side_files_before = True
        self._closed = False
        self._check = check
        self.read_only_reason: str | None = "opened read-only" if read_only else None
        self._check_file(create)
        self._made_here = create and not self.path.exists()  # removed again if the work it was for fails
        if not (lazy and create and not self.path.exists()):
            self._open(create)

    def _open(self, create: bool) -> None:
        if self.read_only_reason is None and self.path.exists():
            self.read_only_reason = _unwritable(self.path)
        if create and self.read_only_reason is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise PoolError(
                    f"cannot create the pool's folder {self.path.parent}: {error.strerror}"
                ) from None
        self._side_files_before = os.path.lexists(f"{self.path}-wal") or os.path.lexists(f"{self.path}-shm")
        self._connection = self._connect(create)
        self._file_id = _file_id(self.path)
        with _open_files_lock:
            _open_files[self._file_id] += 1
        try:
            self._validate(self._check)
            self._ensure_schema(create)
            if self.read_only_reason is None:
                self._pragma("journal_mode=WAL")
        except BaseException:
            self.__exit__(BaseException)  # stopped while being made (SIGTERM, say): no empty pool left either
            raise

    # --- lifecycle and checks ------------------------------------------------------------------------------

    def __enter__(self) -> PoolStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.close()
        with _open_files_lock:  # another handle of this process on the file keeps it
            shared = self._file_id in _open_files
        if exc_type is not None and self._made_here and not shared:  # a first build or deploy that failed
            remove_unused_pool(self.path)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None
            with _open_files_lock:
                _open_files[self._file_id] -= 1
                if _open_files[self._file_id] <= 0:
                    del _open_files[self._file_id]
            if self.read_only_reason is not None and not self._side_files_before:
                self._remove_side_files()

    def _remove_side_files(self) -> None:
        """The -wal and -shm a read-only reader of a WAL pool made (SQLite removes them only when it can write
        the pool), when the -wal is empty: nothing of anyone's is in them."""
        wal, shm = Path(f"{self.path}-wal"), Path(f"{self.path}-shm")
        with contextlib.suppress(OSError):
            if wal.exists() and wal.stat().st_size > 0:
                return
            for path in (wal, shm):
                path.unlink(missing_ok=True)

    def journal_mode(self) -> str:
        """The SQLite journal mode in use ("wal" once opened)."""
        with self._errors():
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        with self._errors():
            return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    def integrity_check(self) -> list[str]:
        """Full SQLite integrity check plus foreign keys; an empty list means the file is sound."""
        with self._errors():
            problems = [row[0] for row in self._db.execute("PRAGMA integrity_check") if row[0] != "ok"]
            problems += [
                f"dangling reference in {row[0]} row {row[1]}"
                for row in self._db.execute("PRAGMA foreign_key_check")
            ]
        return problems

    # --- for the tables' code --------------------------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            if self._closed:
                raise PoolError(f"pool {self.path} is closed")
            self._open(create=True)  # a lazy pool's first use
        assert self._connection is not None
        return self._connection

    def _loads(self, text: str, what: str, kind: type[list] | type[dict]) -> Any:
        """A JSON column's value (a list or a dict); PoolError when the stored text is not one (a damaged or
        hand-edited file)."""
        try:
            value = load_json(text)  # bounded: a row nested 100,000 deep or with NaN is damage, not a crash
        except (TypeError, DocumentError):
            value = None
        if not isinstance(value, kind):
            raise PoolError(
                f"pool {self.path}: {what} is not a JSON {kind.__name__}, the database is damaged; "
                f"{self._fix_hint()}"
            )
        return value

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's exceptions as PoolErrors that say what to do."""
        try:
            yield
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise PoolError(
                    f"pool {self.path} stayed locked by another process for {BUSY_TIMEOUT_MS // 1000} s; try again"
                ) from None
            if "no such table" in str(error) or "no such column" in str(error):
                raise PoolError(
                    f"pool {self.path} is not a whole edge-smsp pool ({error}: damaged, or made by another tool); "
                    f"{self._fix_hint()}"
                ) from None
            raise PoolError(f"pool {self.path}: {error}") from None
        except sqlite3.IntegrityError as error:
            raise PoolError(f"pool {self.path} refused the write: {error}") from None
        except sqlite3.DatabaseError as error:
            raise PoolError(f"pool {self.path} is unreadable ({error}); {self._fix_hint()}") from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One IMMEDIATE transaction: takes the write lock up front so concurrent writers wait, not fail."""
        self.check_writable()
        with self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                # SQLite may already have rolled back by itself (disk full, I/O error).
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _fix_hint(self) -> str:
        return _fix_hint(self.path)

    def check_writable(self) -> None:
        """PoolError unless this pool can be written: to refuse a command before its work, not after."""
        if self.read_only_reason is None and self._connection is None and self.path.exists():
            self.read_only_reason = _unwritable(self.path)  # a lazy pool not opened yet
        if self.read_only_reason is not None:
            raise PoolError(
                f"pool {self.path} is read-only ({self.read_only_reason}): nothing can be stored in it; "
                "pass --pool PATH naming a pool you can write"
            )

    # --- opening ---------------------------------------------------------------------------------------------

    def _check_file(self, create: bool) -> None:
        if not create and not self.path.exists() and not self.path.is_symlink():
            raise PoolError(
                f"no pool at {self.path}; build one with `edge-smsp pool build` or pass --pool PATH"
            )
        check_pool_file(self.path, create=create)

    def _connect(self, create: bool) -> sqlite3.Connection:
        mode = "rwc" if create else "rw"
        if self.read_only_reason is not None:
            # A WAL pool read without its -shm file (none left after a clean close, and none can be made on a
            # read-only file system or in a folder one may not write) must be opened as immutable.
            shm = Path(f"{self.path}-shm")
            mode = "ro" if shm.exists() or os.access(self.path.parent, os.W_OK) else "ro&immutable=1"
            mode = "ro&immutable=1" if _read_only_file_system(self.path) else mode
        uri = f"file:{_quote_uri_path(self.path.absolute())}?mode={mode}"
        try:
            connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as error:
            raise PoolError(f"cannot open pool {self.path}: {error}") from None
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA foreign_keys = ON")
            # FULL: a commit is on disk before a write returns, so a finished entry survives power loss too.
            connection.execute("PRAGMA synchronous = FULL")
            # Entries carry whole models; without a limit the WAL file keeps the size of the largest one.
            connection.execute(f"PRAGMA journal_size_limit = {64 * 1024 * 1024}")
        except sqlite3.Error as error:
            connection.close()
            # Only a damaged file is worth rebuilding; a file that cannot be opened (permissions) is not one.
            hint = (
                "" if "unable to open" in str(error) or "readonly" in str(error) else f"; {self._fix_hint()}"
            )
            raise PoolError(f"cannot open pool {self.path}: {error}{hint}") from None
        return connection

    def _pragma(self, statement: str) -> None:
        with self._errors():
            self._db.execute(f"PRAGMA {statement}")

    def _validate(self, check: str) -> None:
        if check == "none":
            return
        pragma = "quick_check" if check == "quick" else "integrity_check"
        with self._errors():
            problems = [row[0] for row in self._db.execute(f"PRAGMA {pragma}") if row[0] != "ok"]
        if problems:
            raise PoolError(f"pool {self.path} is corrupt ({problems[0]}); {self._fix_hint()}")

    def _ensure_schema(self, create: bool) -> None:
        versions = self._schema_versions()
        if versions is None and not create:
            raise PoolError(
                f"{self.path} is an empty file, not a pool; build one with `edge-smsp pool build` or pass --pool PATH"
            )
        if versions is not None and self._version(versions) == SCHEMA_VERSION:
            return
        if self.read_only_reason is not None:
            raise PoolError(
                f"pool {self.path} has schema version {versions and versions[0]} (this edge-smsp reads "
                f"{SCHEMA_VERSION}) and is read-only ({self.read_only_reason}): open it once where it can be "
                "written, which upgrades it in place"
            )
        with self._write():
            # Re-read under the write lock: another process may have created or migrated the schema meanwhile.
            versions = self._schema_versions()
            if versions is None:
                for statement in statements(BASE_SCHEMA):
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO schema_version (version, created) VALUES (?, ?)", (BASE_VERSION, now())
                )
                versions = [BASE_VERSION]
            for version in range(self._version(versions), SCHEMA_VERSION):
                for statement in MIGRATIONS[version]:
                    self._db.execute(statement)
            self._db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def _version(self, versions: list[Any]) -> int:
        """The one recorded version, if this edge-smsp can read (or migrate) it."""
        if len(versions) != 1 or not isinstance(versions[0], int):
            raise PoolError(
                f"pool {self.path} has an unreadable schema version {versions!r}; {self._fix_hint()}"
            )
        if versions[0] > SCHEMA_VERSION:
            raise PoolError(
                f"pool {self.path} has schema version {versions[0]}, newer than this edge-smsp understands "
                f"({SCHEMA_VERSION}); upgrade edge-smsp or pass --pool PATH"
            )
        if versions[0] < BASE_VERSION:
            raise PoolError(
                f"pool {self.path} has unknown schema version {versions[0]} (expected {SCHEMA_VERSION}); "
                f"{self._fix_hint()}"
            )
        return versions[0]

    def _schema_versions(self) -> list[Any] | None:
        """Versions recorded in schema_version; None for a database with no tables at all."""
        with self._errors():
            tables = {
                row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if "schema_version" in tables:
                return [row[0] for row in self._db.execute("SELECT version FROM schema_version")]
        if tables:
            raise PoolError(
                f"{self.path} is an SQLite database but not an edge-smsp pool; pass --pool PATH to use another file"
            )
        return None


def check_pool_file(path: Path, *, create: bool = False) -> None:
    """Refuse what cannot be a pool file before anything opens it: a directory, a FIFO or device (reading one
    blocks or never ends), a file without SQLite's header; with create, a missing file that cannot be made."""
    if path.is_dir():
        raise PoolError(f"pool path {path} is a directory; pass --pool PATH naming a file")
    if path.exists():
        if not path.is_file():
            raise PoolError(
                f"pool path {path} is not a regular file (a FIFO, device or socket); pass --pool PATH naming a file"
            )
        # Already open here: its header was checked then, and reading it now would drop SQLite's locks.
        with _open_files_lock:
            if _file_id(path) in _open_files:
                return
        try:
            with path.open("rb") as handle:
                header = handle.read(len(_SQLITE_HEADER))
        except OSError as error:
            raise PoolError(f"cannot read pool {path}: {error.strerror}") from None
        # An empty file is an empty database to SQLite; anything else must carry the SQLite header.
        if header and header != _SQLITE_HEADER:
            raise PoolError(f"{path} is not an SQLite pool database; {_fix_hint(path)}")
    elif create:
        try:
            checked_output_path(path, directory=False)
        except OutputPathError as error:
            raise PoolError(f"cannot create the pool: {error}") from None


def remove_unused_pool(path: Path) -> bool:
    """Remove the pool file at `path` (and SQLite's -wal, -shm) when it holds nothing: no entry, measurement or
    build claim, and no other process holds it. For a new pool whose first build failed: an
    empty database would be left where the user expects a pool. Returns whether it was removed."""
    tables = (
        "entries",
        "device_measurements",
        "build_claims",
    )  # not tasks, backbones: a build's registrations
    try:
        database = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            database.execute("BEGIN EXCLUSIVE")  # fails while another process has the pool open for writing
            names = {
                row[0] for row in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            used = any(
                database.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                for table in tables
                if table in names
            )
            database.execute("ROLLBACK")
        finally:
            database.close()
    except sqlite3.Error:
        return False
    if used:
        return False
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    return True


def _read_only_file_system(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _unwritable(path: Path) -> str | None:
    """Why this process cannot write the pool file at `path` (SQLite writes the file and, in WAL mode, makes
    files beside it), or None. Root passes every permission check: only a read-only file system stops it."""
    if _read_only_file_system(path):
        return "on a read-only file system"
    if not os.access(path, os.W_OK):
        return "no permission to write the file"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"no permission to write its folder {path.parent}"
    return None


def _file_id(path: Path) -> tuple[int, int]:
    """(device, inode) of the file at `path`, the identity POSIX locks are held on."""
    status = path.stat()
    return status.st_dev, status.st_ino


def _fix_hint(path: Path) -> str:
    return f"move {path} aside and rebuild the pool, or pass --pool PATH to use another file"


def now() -> str:
    """A write's timestamp (UTC, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def dumps(payload: dict[str, Any], what: str) -> str:
    """JSON for a TEXT column; PoolError when it is not serialisable."""
    try:
        return json.dumps(payload, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise PoolError(f"{what} must be JSON-serialisable: {error}") from None


def _quote_uri_path(path: Path) -> str:
    return str(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
