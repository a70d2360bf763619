"""Relays into a pod's network namespace: the test bed's stand-in for kube-proxy.

A relay listens on an address inside a pod's network namespace and joins each connection it
accepts to an upstream address dialled from the host's namespace; the upstream is asked for
anew per connection, and None closes the connection at once (a reset). The listening socket is
made inside the pod's namespace (setns on the calling thread, then back), the upstream
connection in the host's. Two uses (launcher.py):
- pods that talk to the cluster (the operator run from the Helm chart): 127.0.0.1:<port> in the
  pod → 127.0.0.1:<port> on the host, for the API server and Prometheus, which listen on the
  host's loopback only; the pod sees the same URL the host does (the API server's certificate
  already names 127.0.0.1);
- Services: <ClusterIP>:<port> in the test bed's service namespace, where the pods route the
  service range (network.py) → a ready endpoint's podIP:port (services.py), which the host
  reaches over the bridge.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator

Address = tuple[str, int]
Upstream = Callable[[], Address | None]  # where this connection goes; None: nowhere

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block on this thread inside network namespace `name` (made by `ip netns add`)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)  # pass the half-close on; the other pump ends the rest


def host_loopback(port: int) -> Upstream:
    """Always 127.0.0.1:`port` on the host."""
    return lambda: ("127.0.0.1", port)


def _reset(conn: socket.socket) -> None:
    """Close with a RST, so the client fails at once rather than reading an empty reply."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class Relay:
    """`listen` in network namespace `netns` → `upstream()` from the host, per connection."""

    def __init__(self, netns: str, listen: Address, upstream: Upstream) -> None:
        self.listen, self.upstream = listen, upstream
        with in_netns(netns):
            self.server = socket.create_server(listen)
        self.server.settimeout(0.5)  # to notice close()
        self.closed = threading.Event()
        name = f"relay-{netns}-{listen[0]}:{listen[1]}"
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn.settimeout(None)
            threading.Thread(target=self._join, args=(conn,), daemon=True).start()

    def _join(self, conn: socket.socket) -> None:
        try:
            target = self.upstream()
        except BaseException:
            _reset(conn)
            raise  # a bug in upstream(): the thread's traceback goes to the launcher's log
        try:
            if target is None:
                raise ConnectionRefusedError("no upstream")
            upstream = socket.create_connection(target, timeout=5)
        except OSError:
            _reset(conn)
            return
        upstream.settimeout(None)
        back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
        back.start()
        _pump(conn, upstream)
        back.join()
        conn.close()
        upstream.close()

    def close(self) -> None:
        self.closed.set()
        self.server.close()
