"""Give one container process its volumes, then exec its command (used by the launcher).

The launcher runs `ip netns exec <pod netns> python -m kinfer_dev.testbed.sandbox --bind SRC:DST[:ro]
... --keep PATH ... [--read-only-root] -- COMMAND...`. `ip netns exec` has already put this
process into a mount namespace of its own (host mounts propagate in, ours never out), so the binds and the
read-only root below are seen by this container alone; the host's filesystem is untouched
except for empty directories (and, for a file bound on a file such as the termination log at
/dev/termination-log, an empty file) made as mount points where none existed.

The container's "image" is the host's filesystem, so a volume can hide the program itself: an
emptyDir on /tmp hides a checkout (and its virtualenv) under /tmp. `--keep` names what the
program needs (interpreter, virtualenv, code); a kept path a volume now hides is bound back
inside that volume, as it would stand in an image.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import stat
import sys

MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source is not None else None
    if _libc.mount(src, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        sys.exit(f"sandbox: mount {source} on {target}: {os.strerror(err)}")


def _mount_point(fd: int, dst: str) -> None:
    """A directory to bind a directory on, an empty file to bind a file on."""
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.makedirs(dst, exist_ok=True)
        return
    os.makedirs(os.path.dirname(dst) or "/", exist_ok=True)
    if not os.path.exists(dst):
        os.close(os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bind", action="append", default=[], metavar="SRC:DST[:ro]")
    ap.add_argument("--keep", action="append", default=[], metavar="PATH", help="bound back if hidden")
    ap.add_argument("--read-only-root", action="store_true", help="remount / read-only")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command")
    # Open every source first: a bind on /tmp would otherwise hide sources that live under it.
    held = []
    for spec in args.bind:
        src, dst, *flags = spec.split(":")
        held.append((os.open(src, os.O_PATH), dst, flags == ["ro"]))
    kept = [(os.open(p, os.O_PATH | os.O_DIRECTORY), p) for p in args.keep if os.path.isdir(p)]
    for fd, dst, ro in held:
        _mount_point(fd, dst)
        _mount(f"/proc/self/fd/{fd}", dst, MS_BIND)
        if ro:
            _mount(None, dst, MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.close(fd)
    destinations = [dst for _, dst, _ in held]
    for fd, path in kept:
        if any(os.path.commonpath([path, dst]) == dst for dst in destinations):
            os.makedirs(path, exist_ok=True)  # inside the volume that hides it
            _mount(f"/proc/self/fd/{fd}", path, MS_BIND)
        os.close(fd)
    # After the binds (which need their mount points): the binds themselves stay writable
    # unless :ro, as a kubelet's volumes on a read-only root filesystem do.
    if args.read_only_root:
        _mount(None, "/", MS_BIND | MS_REMOUNT | MS_RDONLY)
    try:
        os.execvp(command[0], command)
    except OSError as e:
        sys.exit(f"sandbox: exec {command[0]}: {e}")


if __name__ == "__main__":
    main()
