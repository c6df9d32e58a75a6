"""Storage faults: SQLite errors that come from the disk or another process, not from a bug.

A fault is a state the bot waits out (it stops taking commands, says why on /healthz and
resumes by itself), never a reason to exit or to answer a command as if it had run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

FULL, IO, READ_ONLY, BUSY, CORRUPT = "full", "io", "read_only", "busy", "corrupt"
KINDS = (FULL, IO, READ_ONLY, BUSY, CORRUPT)

# SQLite's primary result codes (the extended ones, such as SQLITE_IOERR_WRITE, start with
# these names) and the kind of fault each one is.
_BY_NAME = {
    "SQLITE_FULL": FULL,
    "SQLITE_IOERR": IO,
    "SQLITE_READONLY": READ_ONLY,
    "SQLITE_CANTOPEN": READ_ONLY,
    "SQLITE_PERM": READ_ONLY,
    "SQLITE_BUSY": BUSY,
    "SQLITE_LOCKED": BUSY,
    "SQLITE_CORRUPT": CORRUPT,
    "SQLITE_NOTADB": CORRUPT,
}
LOW_SPACE_BYTES = 64 * 1024  # less free than this, and an I/O error is a full disk


@dataclass(frozen=True)
class StorageFault(Exception):
    kind: str
    path: Path  # the database file
    statement: str  # what SQLite was asked when it failed
    error: str  # SQLite's own words

    def __str__(self) -> str:
        # The log line names the file, even where the reason (for /healthz) does not.
        where = "" if str(self.path) in self.reason else f"; file: {self.path}"
        return f"{self.reason} ({self.error}; statement: {self.statement}{where})"

    @property
    def advice(self) -> str:
        """What ops should do, for the one line the bot prints when it cannot start."""
        return {
            FULL: "free some space there, then start the bot again (a disk that fills up "
            "while it runs is waited out)",
            BUSY: "another process holds the database: stop it (a second bot, an open "
            "sqlite3 shell)",
            READ_ONLY: "make the directory writable for the bot's user; a filesystem that "
            "went read-only by itself had a disk error: read the kernel log and check it first",
            CORRUPT: "restore a backup: `onboarding-bot backup --to FILE` makes one while the "
            "bot runs; stop the bot, put the copy in place of the database, start it",
        }.get(self.kind, "check the disk and the kernel log")

    @property
    def reason(self) -> str:
        """For /healthz and people: what is wrong, in the words ops search for."""
        if self.kind == FULL:
            # A file of the bot's own (its session, keys, lock) fills the same disk.
            what = "database" if self.path.suffix == ".db" else "data_dir"
            return f"{what}: no space left on {self.path.parent}"
        if self.kind == BUSY:
            return "database locked by another process"
        if self.kind == READ_ONLY:
            return f"data_dir read-only: {self.path.parent}"
        if self.kind == CORRUPT:
            return f"database corrupt: {self.path}"
        return f"database: disk I/O error on {self.path}"


def kind_of(error: BaseException, path: Path) -> str | None:
    """The fault an SQLite error stands for, or None (a bug: a constraint, bad SQL, misuse)."""
    if isinstance(error, OSError):
        return _os_kind(error, path)
    if not isinstance(error, sqlite3.Error):
        return None
    name = getattr(error, "sqlite_errorname", "") or ""
    kind = next((k for prefix, k in _BY_NAME.items() if name.startswith(prefix)), None)
    if kind is None and not name:  # raised by the sqlite3 module itself, not by SQLite
        kind = _by_message(str(error))
    if kind == IO:
        kind = _io_cause(path)
    return kind


def fault_from(error: BaseException, path: Path) -> StorageFault | None:
    """The fault, naming the statement `noting` left on the error, or None for a bug."""
    kind = kind_of(error, path)
    if kind is None:
        return None
    statement = next(iter(getattr(error, "__notes__", ())), "(opening the database)")
    return StorageFault(kind, path, " ".join(statement.split())[:200], str(error))


def file_fault(error: OSError, path: Path, doing: str) -> StorageFault:
    """The fault of writing one of the bot's own files in data_dir (its session, its keys, its
    lock): no space, a read-only directory, or an I/O error."""
    return StorageFault(_os_kind(error, path), path, doing, str(error))


def key_store_fault(
    error: BaseException, path: Path, doing: str = "nio's key store, during a sync"
) -> StorageFault | None:
    """A fault of nio's key store (SQLite too, in data_dir), or None. Its errors come through
    peewee, which raises its own exception with SQLite's as the context."""
    cause: BaseException | None = error
    for _ in range(8):  # a chain of causes, not a loop
        if cause is None or isinstance(cause, sqlite3.Error):
            break
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, sqlite3.Error) or (kind := kind_of(cause, path)) is None:
        return None
    return StorageFault(kind, path, doing, str(cause))


def noting(error: BaseException, statement: str) -> None:
    """Adds the statement to an SQLite error on its way up (once: the innermost is the one)."""
    if not getattr(error, "__notes__", None):
        error.add_note(statement)


def _by_message(message: str) -> str | None:
    text = message.lower()
    for needle, kind in (
        ("disk is full", FULL),
        ("locked", BUSY),
        ("readonly", READ_ONLY),
        ("read-only", READ_ONLY),
        ("malformed", CORRUPT),
        ("not a database", CORRUPT),
        ("disk i/o error", IO),
        ("unable to open", READ_ONLY),
    ):
        if needle in text:
            return kind
    return None


def _os_kind(error: OSError, path: Path) -> str:
    return _errno_kind(error.errno) or _io_cause(path)


def _errno_kind(number: int | None) -> str | None:
    if number == errno.ENOSPC:
        return FULL
    if number in (errno.EROFS, errno.EACCES, errno.EPERM):
        return READ_ONLY
    return None


def _io_cause(path: Path) -> str:
    """An I/O error is often a full disk or a filesystem gone read-only underneath: say so.

    SQLite does not pass the system's error on, so a small write of our own asks the
    filesystem. Only a write tells: ext4 after a disk error refuses every write (EROFS) yet
    still calls itself writable to access(2) and statvfs(2)."""
    directory = path.parent
    try:
        space = os.statvfs(directory)
    except OSError:
        return IO
    if space.f_bavail * space.f_frsize < LOW_SPACE_BYTES:
        return FULL
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".write-test-")
    except OSError as exc:
        return _errno_kind(exc.errno) or IO
    try:
        os.write(fd, b"?")
    except OSError as exc:
        return _errno_kind(exc.errno) or IO
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)
    return IO


class AlreadyRunning(Exception):
    """Another bot process holds the data directory's lock."""


def lock_data_dir(data_dir: Path) -> int:
    """Takes `data_dir/bot.lock` for this process (released when it ends, however it ends).

    Two bots on one data directory would both sync with one device and write one database:
    the second is refused before it touches anything. Returns the lock file's descriptor,
    which must stay open."""
    path = data_dir / "bot.lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise file_fault(exc, path, f"opening {path}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(
            f"another bot is running on {data_dir} (pid {holder}); stop it first, or give "
            "this one a storage.data_dir of its own"
        ) from None
    try:  # the pid, for the message above (a full disk has no room even for that)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:
        os.close(fd)
        raise file_fault(exc, path, f"writing {path}") from exc
    return fd
