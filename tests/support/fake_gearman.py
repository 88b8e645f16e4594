"""A fake Gearman job server that answers every connection with fixed bytes: for the codec, property
and chaos tests that need a server saying exactly the wrong thing."""

from __future__ import annotations

import socket
import threading


class FakeServer:
    """Accepts connections on loopback and answers each with fixed bytes, then keeps it open."""

    def __init__(self, reply: bytes, close_after: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            try:
                conn.recv(65536)
                conn.sendall(self.reply)
                if self.close_after:
                    conn.close()
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()
