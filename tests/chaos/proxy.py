"""A TCP proxy in the test process that can make its connections go half-open.

``freeze()`` stops forwarding on every connection it holds without closing anything: both
ends still see an established TCP connection (the proxy's kernel keeps ACKing), but no byte
moves either way, like a NAT or firewall that silently dropped the flow. Connections made
after a freeze are forwarded normally.
"""

from __future__ import annotations

import select
import socket
import threading


class FreezingProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.generation = 0
        self.accepted = 0
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="chaos-proxy", daemon=True).start()

    def freeze(self) -> None:
        with self._lock:
            self.generation += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        for s in [self.server, *sockets]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self.accepted += 1
                generation = self.generation
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, generation), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, generation: int) -> None:
        while not self._closed:
            if self.generation != generation:
                # Frozen: read nothing, send nothing, close nothing; wait for close().
                threading.Event().wait(0.2)
                continue
            try:
                ready, _, _ = select.select([src], [], [], 0.2)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data or self.generation != generation:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    continue  # froze while reading: drop it, as the network would
                dst.sendall(data)
            except OSError:
                return
