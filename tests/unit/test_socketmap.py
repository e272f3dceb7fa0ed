"""The SRS socketmap table: netstrings, the forward/reverse answers (tables), and the listener's
limits on sockets we own (spfmilter.socketmap, spfmilter.socketmapserver)."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from spfmilter.socketmap import (INVALID, MAX_ADDRESS, MAX_REQUEST, TOO_BIG, MapReply, NetstringReader, Session,
                                 Status, answer, encode_netstring)
from spfmilter.socketmapserver import SocketmapServer, open_listener
from spfmilter.config import SocketSpec
from spfmilter.srs import DAY, SrsKeys, forward
from spfmilter.srspolicy import SrsPolicy

NOW = 1_795_000_000.0
KEYS = SrsKeys((b"socketmap-secret-0123",))
POLICY = SrsPolicy("srs.mx.test", KEYS, frozenset({"mx.test"}), frozenset({"partner.example", ".sub.example"}))


def ns(text: str | bytes) -> bytes:
    return encode_netstring(text.encode() if isinstance(text, str) else text)


# ---------------------------------------------------------------- netstrings

def test_netstrings_in_any_pieces():
    stream = ns("forward a@b.example") + ns("") + ns("reverse x@y")
    for size in (1, 2, 5, len(stream)):
        reader = NetstringReader()
        got = []
        for start in range(0, len(stream), size):
            found, broken = reader.feed(stream[start:start + size])
            assert broken is None
            got += found
        assert got == [b"forward a@b.example", b"", b"reverse x@y"]
        assert not reader.pending


@pytest.mark.parametrize("stream,reply", [
    (b"abc", INVALID),                      # no length
    (b":x,", INVALID),                      # empty length
    (b"3:abc;", INVALID),                   # no comma
    (b"-1:", INVALID),
    (b"3 :abc,", INVALID),
    (b"\x00\xff", INVALID),
    (b"%d:" % (MAX_REQUEST + 1), TOO_BIG),  # refused before the bytes arrive
    (b"99999999999999999999", TOO_BIG),     # a length that never ends
])
def test_broken_streams(stream, reply):
    found, broken = NetstringReader().feed(stream)
    assert (found, broken) == ([], reply)
    assert broken.close and broken.status is Status.PERM


def test_requests_before_a_broken_one_are_answered_first():
    replies = Session().receive(ns("forward alice@pass.example") + b"junk", POLICY, NOW)
    assert [r.status for _, r in replies] == [Status.OK, Status.PERM]
    assert replies[-1][1] == INVALID


def test_a_request_of_the_largest_size_is_read():
    key = "a" * (MAX_REQUEST - len("forward ") - len("@x.example")) + "@x.example"
    found, broken = NetstringReader().feed(ns("forward " + key))
    assert broken is None and found == [b"forward " + key.encode()]


def test_reply_encoding():
    assert MapReply(Status.NOTFOUND).encode() == b"9:NOTFOUND ,"  # the space stays (socketmap_table(5))
    assert MapReply(Status.OK, "a@b").encode() == b"6:OK a@b,"


# ---------------------------------------------------------------- the maps

GENUINE = forward("alice@pass.example", "srs.mx.test", KEYS, NOW)


@pytest.mark.parametrize("request_,status,text", [
    ("forward alice@pass.example", "OK", GENUINE),
    ("forward ALICE@Pass.Example", "OK", forward("ALICE@Pass.Example", "srs.mx.test", KEYS, NOW)),
    # another forwarder's SRS0 address becomes SRS1
    ("forward SRS0=abcd=AA=pass.example=alice@other.example", "OK",
     forward("SRS0=abcd=AA=pass.example=alice@other.example", "srs.mx.test", KEYS, NOW)),
    ("forward bob@mx.test", "NOTFOUND", "Need not rewrite local domain."),
    ("forward bob@MX.TEST.", "NOTFOUND", "Need not rewrite local domain."),
    ("forward " + GENUINE, "NOTFOUND", "Need not rewrite local domain."),  # already ours
    ("forward p@partner.example", "NOTFOUND", "Excluded domain."),
    ("forward p@a.sub.example", "NOTFOUND", "Excluded domain."),  # .sub.example: its subdomains
    ("forward p@sub.example", "OK", forward("p@sub.example", "srs.mx.test", KEYS, NOW)),  # but not itself
    ("forward p@notpartner.example", "OK", forward("p@notpartner.example", "srs.mx.test", KEYS, NOW)),
    ("forward ", "NOTFOUND", "No domain."),
    ("forward postmaster", "NOTFOUND", "No domain."),
    ("forward @pass.example", "NOTFOUND", "No domain."),  # Postfix also asks for @domain
    ('forward "a b"@pass.example', "NOTFOUND", "Cannot rewrite this address."),
    ("forward a@b@", "NOTFOUND", "No domain."),
    ("reverse " + GENUINE, "OK", "alice@pass.example"),
    ("reverse " + GENUINE.lower(), "OK", "alice@pass.example"),  # Postfix folds the key to lower case
    ("reverse " + GENUINE.replace("@srs.mx.test", "@other.example"), "NOTFOUND", "Not in the SRS domain."),
    ("reverse bob@srs.mx.test", "NOTFOUND", "Not an SRS address."),
    ("reverse bob@mx.test", "NOTFOUND", "Not in the SRS domain."),
    ("reverse " + forward("alice@pass.example", "srs.mx.test", KEYS, NOW - 30 * DAY), "NOTFOUND",
     "Time stamp out of date."),
    ("reverse SRS0=ZZZZ=" + GENUINE.split("=", 2)[2], "NOTFOUND", "Hash invalid in SRS address."),
    ("reverse SRS0=ab@srs.mx.test", "NOTFOUND", "Malformed SRS address."),
    ("reverse nodomain", "NOTFOUND", "Not in the SRS domain."),
    ("forward" + "x", "PERM", "Invalid map."),
    ("alias a@b.example", "PERM", "Invalid map."),
    ("a@b.example", "PERM", "Invalid map."),
    ("", "PERM", "Invalid map."),
    ("FORWARD a@b.example", "PERM", "Invalid map."),  # map names are exact, as in PostSRSd
])
def test_answers(request_, status, text):
    reply = answer(request_.encode(), POLICY, NOW)
    assert (reply.status.value, reply.text) == (status, text)
    assert not reply.close


@pytest.mark.parametrize("key", [b"a\x00b@pass.example", b"\xff\xfe@pass.example", b"a@pass.example\r\n",
                                 "ünï@pass.example".encode(), b"a@p\xe4ss.example"])
def test_keys_we_cannot_rewrite_are_left_alone(key):
    for name in (b"forward", b"reverse"):
        reply = answer(name + b" " + key, POLICY, NOW)
        assert reply.status is Status.NOTFOUND
        reply.encode()  # and the reply can be sent


def test_an_overlong_key_is_left_alone():
    key = b"a" * (MAX_ADDRESS - len("@pass.example")) + b"@pass.example"
    assert answer(b"forward " + key, POLICY, NOW).status is Status.OK
    assert answer(b"forward a" + key, POLICY, NOW) == MapReply(Status.NOTFOUND, "Too long.")


def test_without_a_policy_nothing_is_rewritten():
    assert answer(b"forward alice@pass.example", None, NOW) == MapReply(Status.NOTFOUND, "SRS is off.")


# ---------------------------------------------------------------- the listener

@pytest.fixture
def served(tmp_path):
    """A SocketmapServer on a unix socket in tmp_path, with short limits."""
    servers = []

    def start(**limits):
        spec = SocketSpec("unix", str(tmp_path / f"srs{len(servers)}.sock"))
        server = SocketmapServer(open_listener(spec), POLICY, clock=lambda: NOW, **limits)
        server.start()
        servers.append(server)
        return spec.address

    yield start
    for server in servers:
        assert server.stop(5.0)


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_a_connection_carries_many_queries_and_ends_on_garbage(served):
    path = served()
    with connect(path) as sock:
        sock.sendall(ns("forward alice@pass.example"))
        assert sock.recv(4096) == ns("OK " + GENUINE)
        sock.sendall(ns("nomap x") + ns("reverse " + GENUINE))
        expected = ns("PERM Invalid map.") + ns("OK alice@pass.example")
        data = b""
        while len(data) < len(expected):
            data += sock.recv(4096)
        assert data == expected
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert read_all(sock) == INVALID.encode()


def test_an_oversized_request_is_refused_and_the_connection_closed(served):
    path = served()
    with connect(path) as sock:
        sock.sendall(b"%d:" % (MAX_REQUEST + 1))
        assert read_all(sock) == TOO_BIG.encode()


def test_idle_and_slow_connections_are_closed(served):
    path = served(idle_timeout=0.5, request_timeout=0.5)
    with connect(path) as idle, connect(path) as slow:
        slow.sendall(b"30:forward ali")  # and never the rest
        started = time.monotonic()
        assert read_all(idle) == b""
        assert read_all(slow) == b""
        assert time.monotonic() - started < 5
    with connect(path) as sock:  # still serving
        sock.sendall(ns("forward alice@pass.example"))
        assert sock.recv(4096) == ns("OK " + GENUINE)


def test_connections_beyond_the_limit_are_closed_at_once(served):
    path = served(max_connections=2)
    held = [connect(path), connect(path)]
    try:
        for sock in held:  # both served: accepted and counted
            sock.sendall(ns("forward bob@mx.test"))
            assert sock.recv(4096) == ns("NOTFOUND Need not rewrite local domain.")
        with connect(path) as extra:
            assert read_all(extra) == b""
    finally:
        for sock in held:
            sock.close()


def test_stop_waits_for_a_request_in_progress_and_closes_idle_ones(tmp_path):
    spec = SocketSpec("unix", str(tmp_path / "srs.sock"))
    server = SocketmapServer(open_listener(spec), POLICY, clock=lambda: NOW)
    server.start()
    with connect(spec.address) as idle, connect(spec.address) as busy:
        for conn in (idle, busy):  # one answered request each: both are accepted before the stop
            conn.sendall(ns("forward bob@mx.test"))
            conn.recv(4096)
        request = ns("forward alice@pass.example")
        busy.sendall(request[:10])
        result = {}
        stopper = threading.Thread(target=lambda: result.update(done=server.stop(10.0)))
        stopper.start()
        assert read_all(idle) == b""  # closed by the stop
        busy.sendall(request[10:])  # the request in progress is still answered
        assert busy.recv(4096) == ns("OK " + GENUINE)
        busy.close()
        stopper.join(10)
        assert result == {"done": True}
    with pytest.raises(OSError):
        connect(spec.address)  # no longer accepting


def test_a_live_socket_is_not_taken_over_and_a_stale_one_is(tmp_path):
    spec = SocketSpec("unix", str(tmp_path / "srs.sock"))
    first = open_listener(spec)
    with pytest.raises(ValueError, match="already listens"):
        open_listener(spec)
    first.close()  # the path stays: a stale socket, as after a crash
    open_listener(spec).close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a socket"):
        open_listener(SocketSpec("unix", str(tmp_path / "file")))


def test_an_inet_table_on_loopback(tmp_path):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = SocketmapServer(open_listener(SocketSpec("inet", "127.0.0.1", port)), POLICY, clock=lambda: NOW)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(ns("reverse " + GENUINE))
            assert sock.recv(4096) == ns("OK alice@pass.example")
    finally:
        assert server.stop(5.0)
