"""Disks that fail as real ones do, for the storage-fault tests (run as root): a small tmpfs that
fills up, and an ext4 volume on a loop device whose disk can err or lose power."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Ext4Volume", "fill", "sh", "tmpfs"]

# linux/fs.h: _IOR('X', 125, __u32); NOLOGFLUSH: stop at once, journal and page cache unwritten.
_FS_IOC_SHUTDOWN = 0x8004587D
_SHUTDOWN_NOLOGFLUSH = 2


def sh(*argv: str, ok: tuple[int, ...] = (0,)) -> str:
    """A system command that must succeed (mount, mkfs.ext4, e2fsck; as root): its output, or
    a loud failure naming what is missing on this machine."""
    if shutil.which(argv[0]) is None:
        raise AssertionError(f"{argv[0]} is not installed: the storage-fault tests need it")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode not in ok:
        raise AssertionError(
            f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}{done.stdout}"
        )
    return done.stdout


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "12m") mounted on `where` for the block, unmounted after it."""
    where.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where))
    try:
        yield where
    finally:
        sh("umount", "--lazy", str(where))


def fill(directory: Path) -> Path:
    """Writes a file until the filesystem has no space left; returns it (delete it to heal)."""
    filler = directory / "filler"
    chunk = b"\0" * (64 * 1024)
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        with contextlib.suppress(OSError):  # the last bytes that fit
            while True:
                f.write(b"\0" * 512)
    return filler


class Ext4Volume:
    """An ext4 filesystem in an image file on a loop device, mounted on `where`: a real disk's
    page cache, journal and fsync, whose disk can err or lose power."""

    def __init__(self, image: Path, where: Path, size_mb: int = 64) -> None:
        self.image, self.where = image, where
        with image.open("wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        sh("mkfs.ext4", "-q", "-F", str(image))
        where.mkdir(parents=True, exist_ok=True)
        self.mount()

    def mount(self) -> None:
        """Mounts (replaying the journal, as at boot); a disk error turns it read-only."""
        sh("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.where))

    def unmount(self) -> None:
        sh("umount", str(self.where))

    def disk_error(self) -> None:
        """What the kernel does when the disk under ext4 fails: the journal is aborted and the
        filesystem remounted read-only, under whoever has files open on it."""
        device = Path(sh("findmnt", "-n", "-o", "SOURCE", str(self.where)).strip()).name
        Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("storage-fault test\n")

    def pull_the_plug(self) -> None:
        """A power cut: the filesystem stops at once; what was not on the disk (unsynced page
        cache, uncommitted journal) is lost, as on a machine that lost power."""
        fd = os.open(self.where, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, _FS_IOC_SHUTDOWN, struct.pack("I", _SHUTDOWN_NOLOGFLUSH))
        finally:
            os.close(fd)

    def repair(self) -> None:
        """What ops do after either: unmount, check the filesystem, mount again."""
        self.unmount()
        sh("e2fsck", "-f", "-y", str(self.image), ok=(0, 1))  # 1: errors fixed
        self.mount()

    def close(self) -> None:
        with contextlib.suppress(AssertionError):
            sh("umount", "--lazy", str(self.where))
        self.image.unlink(missing_ok=True)
