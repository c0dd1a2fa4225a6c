"""CURVE keys, the encrypted and authenticated learner-worker connection, and the insecure-network guard.

Real ZeroMQ sockets on 127.0.0.1. A refused client is checked three ways: its own monitor reports
the failed handshake where libzmq says so, nothing it sends arrives, and a good client that comes
after it still gets through (so "nothing arrived" is not a broken server).
"""

from __future__ import annotations

import select
import shutil
import socket
import stat
import threading
import time

import pytest
import zmq
from zmq.auth.certs import load_certificate
from zmq.auth.thread import AuthenticationThread
from zmq.utils.monitor import recv_monitor_message

from rl.cli import main as cli_main
from rl.config import ConfigError, load_config
from rl.security import (
    SecurityError,
    add_worker_key,
    create_keys,
    is_loopback,
    secure_client,
    secure_server,
    stop_authenticator,
)

SECRET = b"policy-weights-0123456789-do-not-leak"
REFUSED_WAIT_MS = 1000


@pytest.fixture(autouse=True)
def no_leftover_authenticator():
    yield
    stop_authenticator()  # the authenticator of zmq.Context.instance() must not outlive a test
    assert not [t for t in threading.enumerate() if isinstance(t, AuthenticationThread)]


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    stop_authenticator(ctx)
    ctx.destroy(linger=0)


@pytest.fixture
def keys(tmp_path):
    return create_keys(tmp_path / "keys").directory


def start_server(context, keys_dir=None):
    server = context.socket(zmq.ROUTER)
    server.linger = 0
    if keys_dir is not None:
        secure_server(server, keys_dir)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    return server, port


def client_socket(context, keys_dir=None):
    client = context.socket(zmq.DEALER)
    client.linger = 0
    if keys_dir is not None:
        secure_client(client, keys_dir)
    return client


def receive(sock, timeout_ms=5000):
    assert sock.poll(timeout_ms), "nothing arrived"
    return sock.recv_multipart()


def assert_round_trip(server, client, port, text=b"hello"):
    client.connect(f"tcp://127.0.0.1:{port}")
    client.send(text)
    identity, got = receive(server)
    assert got == text
    server.send_multipart([identity, text + b" back"])
    assert receive(client) == [text + b" back"]


def folder_with(tmp_path, name, worker_secret, server_public):
    """A worker's keys folder assembled from two key files (to mix keys of different learners)."""
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(worker_secret, folder / "worker.key_secret")
    shutil.copy(server_public, folder / "server.key")
    return folder


def wait_for_event(monitor, wanted, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    seen = []
    while monitor.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        event = recv_monitor_message(monitor)
        seen.append(event["event"])
        if event["event"] in wanted:
            return event
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no {wanted} within {timeout_s} s; saw {seen}")


# ---------------------------------------------------------------- keys


def test_create_keys_makes_private_secrets_and_refuses_overwrite(tmp_path):
    paths = create_keys(tmp_path / "keys")
    for secret in (paths.server_secret, paths.worker_secret):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        public, secret_key = load_certificate(secret)
        assert public and secret_key
    assert load_certificate(paths.server_public) == (load_certificate(paths.server_secret)[0], None)
    assert load_certificate(paths.authorized)[0] == load_certificate(paths.worker_public)[0]
    assert paths.authorized == paths.directory / "authorized_workers" / "worker.key"
    assert sorted(p.name for p in paths.directory.iterdir()) == [
        "authorized_workers", "server.key", "server.key_secret", "worker.key", "worker.key_secret"
    ]  # no staging folder left behind

    before = paths.server_secret.read_bytes()
    with pytest.raises(SecurityError) as err:
        create_keys(paths.directory)
    assert "server.key_secret" in str(err.value) and "overwrite" in str(err.value)
    assert paths.server_secret.read_bytes() == before  # refused means untouched

    old_secret = load_certificate(paths.server_secret)[1]
    create_keys(paths.directory, overwrite=True)
    assert load_certificate(paths.server_secret)[1] != old_secret
    assert stat.S_IMODE(paths.server_secret.stat().st_mode) == 0o600


def test_add_worker_key_is_authorized_and_refuses_bad_names(keys):
    public, secret = add_worker_key(keys, "gpu2")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert load_certificate(keys / "authorized_workers" / "gpu2.key")[0] == load_certificate(public)[0]
    with pytest.raises(SecurityError, match="gpu2.key"):
        add_worker_key(keys, "gpu2")
    for bad in ("server", "../escape", ""):
        with pytest.raises(SecurityError):
            add_worker_key(keys, bad)


def test_missing_keys_name_the_file_and_the_fix(tmp_path, context, keys):
    sock = context.socket(zmq.ROUTER)
    with pytest.raises(SecurityError, match=r"server\.key_secret is missing.*rl keys"):
        secure_server(sock, tmp_path / "nowhere")
    for key in (keys / "authorized_workers").iterdir():
        key.unlink()
    with pytest.raises(SecurityError, match="no public keys.*--add-worker"):
        secure_server(sock, keys)
    (keys / "server.key").unlink()
    with pytest.raises(SecurityError, match=r"server\.key is missing"):
        secure_client(context.socket(zmq.DEALER), keys)


# ---------------------------------------------------------------- the connection


class Relay:
    """A TCP relay between a ZeroMQ client and its server that keeps every byte it passes on."""

    def __init__(self, upstream_port: int):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream_port = upstream_port
        self.seen = bytearray()
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        peers: dict[socket.socket, socket.socket] = {}
        while not self.stopping:
            ready, _, _ = select.select([self.listener, *peers], [], [], 0.05)
            for sock in ready:
                if sock is self.listener:
                    inner, _ = self.listener.accept()
                    outer = socket.create_connection(("127.0.0.1", self.upstream_port))
                    peers[inner], peers[outer] = outer, inner
                elif sock in peers:
                    data = sock.recv(65536)
                    if data:
                        self.seen += data
                        peers[sock].sendall(data)
                    else:
                        other = peers.pop(sock)
                        peers.pop(other, None)
                        sock.close()
                        other.close()
        for sock in peers:
            sock.close()
        self.listener.close()

    def stop(self):
        self.stopping = True
        self.thread.join(5)


@pytest.mark.parametrize("encrypted", [True, False], ids=["curve", "plain-control"])
def test_traffic_on_the_wire_is_encrypted(context, keys, encrypted):
    server, port = start_server(context, keys if encrypted else None)
    relay = Relay(port)
    try:
        client = client_socket(context, keys if encrypted else None)
        client.connect(f"tcp://127.0.0.1:{relay.port}")
        client.send(SECRET)
        identity, got = receive(server)
        assert got == SECRET
        server.send_multipart([identity, SECRET[::-1]])
        assert receive(client) == [SECRET[::-1]]
    finally:
        relay.stop()
    assert len(relay.seen) > 2 * len(SECRET)  # both messages went through the relay
    # The control shows the relay would see plaintext; with CURVE neither direction shows it.
    assert (SECRET in relay.seen) is (not encrypted)
    assert (SECRET[::-1] in relay.seen) is (not encrypted)


@pytest.mark.parametrize("case", ["no_curve", "fresh_unauthorized_key", "key_of_another_learner", "wrong_server_key"])
def test_refused_clients_get_nothing_through(tmp_path, context, keys, case, caplog):
    server, port = start_server(context, keys)
    other = create_keys(tmp_path / "other").directory
    other_server, _ = start_server(context, other)  # same context: its authorized keys must not open `server`
    if case == "no_curve":
        client = client_socket(context)
    elif case == "fresh_unauthorized_key":
        client = client_socket(context)
        client.curve_publickey, client.curve_secretkey = zmq.curve_keypair()
        client.curve_serverkey = load_certificate(keys / "server.key")[0]
    elif case == "key_of_another_learner":
        client = client_socket(context, folder_with(tmp_path, "mixed", other / "worker.key_secret", keys / "server.key"))
    else:  # the right worker key, but it trusts another server's key: an impostor learner could not fool it
        client = client_socket(context, folder_with(tmp_path, "mixed", keys / "worker.key_secret", other / "server.key"))
    monitor = client.get_monitor_socket()
    client.connect(f"tcp://127.0.0.1:{port}")
    client.send(SECRET)
    if case in ("fresh_unauthorized_key", "key_of_another_learner"):
        event = wait_for_event(monitor, {zmq.EVENT_HANDSHAKE_FAILED_AUTH})
        assert event["value"] == 400  # the ZAP handler said no
    elif case == "no_curve":
        wait_for_event(monitor, {zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL})

    assert not server.poll(REFUSED_WAIT_MS), "a refused client's message reached the learner"
    assert not other_server.poll(0)

    good = client_socket(context, keys)
    assert_round_trip(server, good, port)
    assert not server.poll(0) and not client.poll(0)
    if case in ("fresh_unauthorized_key", "key_of_another_learner"):
        assert any("refused a worker" in r.getMessage() for r in caplog.records)
    client.disable_monitor()


def test_added_worker_key_is_read_without_restart_and_removing_it_refuses(context, keys):
    server, port = start_server(context, keys)
    add_worker_key(keys, "gpu2")  # after the learner started
    assert_round_trip(server, client_socket(context, keys / "gpu2.key_secret"), port, b"from gpu2")

    (keys / "authorized_workers" / "gpu2.key").unlink()
    refused = client_socket(context, keys / "gpu2.key_secret")
    monitor = refused.get_monitor_socket()
    refused.connect(f"tcp://127.0.0.1:{port}")
    refused.send(SECRET)
    wait_for_event(monitor, {zmq.EVENT_HANDSHAKE_FAILED_AUTH})
    assert not server.poll(REFUSED_WAIT_MS)
    refused.disable_monitor()


def test_endpoints_with_keys_talk_and_describe_themselves(keys):
    from rl.transport import LearnerEndpoint, WorkerEndpoint

    learner = LearnerEndpoint("127.0.0.1", 0, curve_keys=str(keys))
    worker = WorkerEndpoint(learner.address, curve_keys=str(keys))
    try:
        assert learner.security_description == f"CURVE encryption; 1 authorized worker key in {keys / 'authorized_workers'}"
        assert learner.socket.curve_server and worker.socket.mechanism == zmq.CURVE
        worker.socket.send(b"hello")
        identity, got = receive(learner.socket)
        assert got == b"hello"
        learner.socket.send_multipart([identity, b"welcome"])
        assert receive(worker.socket) == [b"welcome"]
    finally:
        worker.socket.close(linger=0)
        learner.socket.close(linger=0)


def test_learner_endpoint_refuses_a_reachable_host_without_keys_or_opt_in():
    from rl.transport import LearnerEndpoint

    # 192.0.2.1 (TEST-NET) is never bound: the guard must refuse before binding is even tried.
    with pytest.raises(SecurityError, match="curve_keys.*allow_insecure_network"):
        LearnerEndpoint("192.0.2.1", 0)
    learner = LearnerEndpoint("127.0.0.1", 0)
    try:
        assert learner.security_description == "no encryption (loopback only)"
        assert not learner.socket.curve_server
    finally:
        learner.socket.close(linger=0)


# ---------------------------------------------------------------- config and CLI


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.3.2.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("*", False), ("10.0.0.5", False), ("::", False),
     ("127.0.0.1.example.com", False), ("example.com", False)],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_non_loopback_host_needs_keys_or_an_explicit_opt_in(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("run:\n  name: t\n")
    with pytest.raises(ConfigError) as err:
        load_config(config, ["transport.host=0.0.0.0"])
    message = str(err.value)
    assert "transport.host='0.0.0.0'" in message
    assert "transport.curve_keys=DIR" in message and "rl keys DIR" in message
    assert "transport.allow_insecure_network=true" in message
    assert "Value error" not in message and "\n" not in message

    assert load_config(config, ["transport.host=0.0.0.0", "transport.allow_insecure_network=true"]).transport.allow_insecure_network
    assert load_config(config, ["transport.host=0.0.0.0", f"transport.curve_keys={tmp_path}"]).transport.curve_keys == str(tmp_path)
    assert load_config(config, ["transport.host=localhost"]).transport.curve_keys is None


def test_rl_keys_command(tmp_path, capsys):
    folder = tmp_path / "keys"
    assert cli_main(["keys", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"transport.curve_keys={folder}" in out and f"--keys {folder}" in out
    for name in ("server.key", "server.key_secret", "worker.key", "worker.key_secret", "authorized_workers/worker.key"):
        assert (folder / name).is_file()
    before = (folder / "server.key").read_bytes()

    assert cli_main(["keys", str(folder)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (folder / "server.key").read_bytes() == before
    assert cli_main(["keys", str(folder), "--overwrite"]) == 0
    assert (folder / "server.key").read_bytes() != before

    assert cli_main(["keys", str(folder), "--add-worker", "gpu2"]) == 0
    assert "--keys DIR/gpu2.key_secret" in capsys.readouterr().out
    assert (folder / "authorized_workers" / "gpu2.key").is_file()
