"""Loopback relays into a pod's network namespace, the test bed's stand-in for a ClusterIP.

There is no kube-proxy, and the API server and Prometheus listen on the host's loopback only.
A pod that talks to the cluster (the operator run from the Helm chart) gets, inside its own
namespace, a listener on 127.0.0.1:<port> for each such host port; every connection to it is
joined to 127.0.0.1:<port> on the host. The listening socket is made inside the pod's namespace
(setns on the calling thread, then back), the upstream connection in the host's, so nothing
listens outside loopback and the pod sees the same URL the host does (the API server's
certificate already names 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Iterator

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


class Relay:
    """127.0.0.1:port in network namespace `netns` → 127.0.0.1:port on the host."""

    def __init__(self, netns: str, port: int) -> None:
        self.port = port
        with in_netns(netns):
            self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(0.5)  # to notice close()
        self.closed = threading.Event()
        threading.Thread(target=self._serve, name=f"relay-{netns}-{port}", daemon=True).start()

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
            upstream = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            conn.close()
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
