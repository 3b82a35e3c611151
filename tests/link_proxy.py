"""A TCP proxy on 127.0.0.1 in front of a real server, whose links a test can freeze or cut.

Modes, per connection:
  forward        pass bytes both ways until freeze() or cut() is called
  silent         accept the TCP connection, never forward or answer: a peer that never answers
  cut-at-auth    forward the SSH key exchange, then close both sides when the client sends its first
                 encrypted packet (the userauth service request): a link dropped during authentication
  freeze-at-auth the same moment, but stop forwarding and keep both sockets open (a silent link)

freeze() makes every open link half-open: the sockets stay connected but nothing passes any more, the way a
link behind a NAT that lost its state, a pulled cable or a suspended laptop looks to both ends.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

_NEWKEYS = 21  # SSH_MSG_NEWKEYS: after the client sends it, everything it sends is encrypted


class _SshClientStream:
    """Follows the plaintext start of an SSH client's byte stream and tells where its encryption starts."""

    def __init__(self) -> None:
        self.buffer = b""
        self.banner_done = False
        self.offset = 0  # bytes of the stream consumed by the parser so far
        self.encrypted_from: int | None = None

    def feed(self, data: bytes) -> int | None:
        """Add bytes; the stream offset where encrypted bytes start, once known."""
        if self.encrypted_from is not None:
            return self.encrypted_from
        self.buffer += data
        while True:
            if not self.banner_done:
                end = self.buffer.find(b"\n")
                if end < 0:
                    return None
                self._consume(end + 1)
                self.banner_done = True
                continue
            if len(self.buffer) < 6:
                return None
            (length,) = struct.unpack(">I", self.buffer[:4])
            if len(self.buffer) < 4 + length:
                return None
            kind = self.buffer[5]
            self._consume(4 + length)
            if kind == _NEWKEYS:
                self.encrypted_from = self.offset
                return self.encrypted_from

    def _consume(self, count: int) -> None:
        self.buffer = self.buffer[count:]
        self.offset += count


class LinkProxy:
    """127.0.0.1:port -> 127.0.0.1:target_port, with links that can go silent or drop."""

    def __init__(self, target_port: int, mode: str = "forward") -> None:
        if mode not in ("forward", "silent", "cut-at-auth", "freeze-at-auth"):
            raise ValueError(f"unknown mode {mode!r}")
        self.target_port = target_port
        self.mode = mode
        self.frozen = threading.Event()
        self.auth_reached = threading.Event()  # set when an *-at-auth link took its action
        self.client_bytes = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        """Stop forwarding on every link, open now or later, and keep the sockets open."""
        self.frozen.set()

    def close(self) -> None:
        """Stop listening and close every link."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def __enter__(self) -> LinkProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
            if self.mode == "silent":
                continue  # connected, and nothing ever comes back
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets.append(server)
            stream = _SshClientStream() if self.mode.endswith("-at-auth") else None
            threading.Thread(target=self._pump, args=(client, server, stream), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, stream: _SshClientStream | None) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if self.frozen.is_set():
                    self.frozen.wait()
                    threading.Event().wait()  # a silent link: hold the bytes forever, answer nothing
                if stream is not None:
                    encrypted_from = stream.feed(data)
                    if encrypted_from is not None and sent + len(data) > encrypted_from:
                        sink.sendall(data[: max(0, encrypted_from - sent)])
                        self.auth_reached.set()
                        if self.mode == "cut-at-auth":
                            break
                        threading.Event().wait()  # freeze-at-auth
                sink.sendall(data)
                sent += len(data)
                if stream is not None:
                    self.client_bytes = sent
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
