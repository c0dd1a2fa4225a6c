"""ZeroMQ CURVE keys: making them (`rl keys DIR`) and putting them on the learner's and workers' sockets.

A keys folder holds the learner's key pair (server.key, server.key_secret), one worker key pair
(worker.key, worker.key_secret; more with `rl keys DIR --add-worker NAME`) and authorized_workers/,
the public keys the learner admits. The learner needs server.key_secret and authorized_workers/;
a worker needs its NAME.key_secret and server.key. Files are pyzmq certificates; secret ones are 0600.

The learner side runs pyzmq's ZAP authenticator in a thread (one per ZeroMQ context). It re-reads
authorized_workers/ on each new connection, so a public key dropped in there works without a restart.
Without a running authenticator libzmq would admit any CURVE client, so `secure_server` starts it
before the socket binds.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth.certs import create_certificates, load_certificate, load_certificates

log = logging.getLogger(__name__)

AUTHORIZED = "authorized_workers"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SecurityError(ValueError):
    """Keys that are missing or unusable; the message names the file and the fix."""


@dataclass(frozen=True)
class KeyPaths:
    directory: Path
    server_public: Path
    server_secret: Path
    worker_public: Path
    worker_secret: Path
    authorized: Path  # the copy of worker_public in authorized_workers/


# ---------------------------------------------------------------- making keys


def create_keys(directory: str | os.PathLike, overwrite: bool = False) -> KeyPaths:
    """Make the learner's key pair, one worker key pair, and authorize that worker."""
    folder = Path(directory).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise SecurityError(f"{folder} is a file; `rl keys` needs a folder (new or existing) for the keys.")
    paths = KeyPaths(
        directory=folder,
        server_public=folder / "server.key",
        server_secret=folder / "server.key_secret",
        worker_public=folder / "worker.key",
        worker_secret=folder / "worker.key_secret",
        authorized=folder / AUTHORIZED / "worker.key",
    )
    refuse_existing([paths.server_public, paths.server_secret, paths.worker_public, paths.worker_secret, paths.authorized], overwrite)
    write_key_pair(folder, "server")
    write_key_pair(folder, "worker")
    return paths


def add_worker_key(directory: str | os.PathLike, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """One more worker key pair NAME.key / NAME.key_secret in a folder made by `create_keys`; the learner admits it."""
    folder = Path(directory).expanduser().resolve()
    if not NAME_PATTERN.fullmatch(name) or name == "server":
        raise SecurityError(f"worker key name {name!r}: use letters, digits, '_', '.' or '-' (and not 'server').")
    if not (folder / "server.key").is_file():
        raise SecurityError(f"{folder / 'server.key'} is missing: make the keys folder first with `rl keys {directory}`.")
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    refuse_existing([public, secret, folder / AUTHORIZED / f"{name}.key"], overwrite)
    write_key_pair(folder, name)
    return public, secret


def refuse_existing(paths: list[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise SecurityError(
            f"keys already exist: {', '.join(existing)}; pass --overwrite (overwrite=True) to replace them "
            "(workers holding the old keys will then be refused)."
        )


def write_key_pair(folder: Path, name: str) -> None:
    """NAME.key and NAME.key_secret (0600) in `folder`, and a copy of NAME.key in authorized_workers/.

    The pair is written in a private (0700) temporary folder and moved into place, so the secret
    is never readable by others, not even for a moment.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    (folder / AUTHORIZED).mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=folder))
    try:
        public, secret = (Path(p) for p in create_certificates(staging, name))
        os.chmod(secret, 0o600)
        if name != "server":
            shutil.copyfile(public, staging / "authorized.key")
            os.replace(staging / "authorized.key", folder / AUTHORIZED / f"{name}.key")
        os.replace(secret, folder / secret.name)
        os.replace(public, folder / public.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- loading keys


def load_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a NAME.key_secret file, or a SecurityError saying how to get one."""
    if not path.is_file():
        raise SecurityError(
            f"{path} is missing: make keys with `rl keys {path.parent}` (on the learner's host) and copy "
            "worker.key_secret and server.key to each worker's keys folder."
        )
    try:
        public, secret = load_certificate(path)
    except (OSError, ValueError) as err:
        raise SecurityError(f"{path} is not a CURVE key file ({err}); remake it with `rl keys {path.parent} --overwrite`.") from None
    if not secret:
        raise SecurityError(f"{path} holds no secret key (is it a public .key file?); remake it with `rl keys {path.parent} --overwrite`.")
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; run `chmod 600 %s`", path, path)
    return public, secret


def load_public(path: Path) -> bytes:
    if not path.is_file():
        raise SecurityError(
            f"{path} is missing: copy server.key from the keys folder made by `rl keys DIR` on the learner's host."
        )
    try:
        return load_certificate(path)[0]
    except (OSError, ValueError) as err:
        raise SecurityError(f"{path} is not a CURVE key file ({err}).") from None


# ---------------------------------------------------------------- the learner's side


class AuthorizedKeys:
    """ZAP callback: admits the public keys in one authorized_workers/ folder, read afresh per connection."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.refused: set[bytes] = set()

    def callback(self, domain: str, z85_key: bytes) -> bool:
        try:
            allowed = z85_key in load_certificates(self.folder)
        except (OSError, ValueError) as err:
            log.error("cannot read the authorized worker keys in %s: %s", self.folder, err)
            return False
        if not allowed and z85_key not in self.refused:  # a refused peer retries; say it once
            self.refused.add(z85_key)
            log.warning("refused a worker whose CURVE public key %s is not in %s", z85_key.decode(), self.folder)
        return allowed


_authenticators: dict[zmq.Context, object] = {}
_lock = threading.Lock()


def secure_server(sock: zmq.Socket, keys_dir: str | os.PathLike) -> str:
    """Make `sock` a CURVE server that admits only keys in KEYS_DIR/authorized_workers; call before bind.

    Returns a one-line description for the start-up log.
    """
    folder = Path(keys_dir).expanduser().resolve()
    public, secret = load_secret(folder / "server.key_secret")
    authorized = folder / AUTHORIZED
    if not authorized.is_dir():
        raise SecurityError(f"{authorized} is missing: make the keys folder with `rl keys {keys_dir}`.")
    count = len(load_certificates(authorized))
    if count == 0:
        raise SecurityError(
            f"{authorized} holds no public keys (*.key), so no worker could join: "
            f"add one with `rl keys {keys_dir} --add-worker NAME` or copy a worker's NAME.key there."
        )
    # The ZAP domain ties this socket to its own folder of keys, so learners in one process stay apart.
    domain = "rl-" + hashlib.sha256(str(authorized).encode()).hexdigest()[:16]
    authenticator = start_authenticator(sock.context)
    authenticator.configure_curve_callback(domain, AuthorizedKeys(authorized))
    sock.zap_domain = domain.encode()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_server = True
    return f"CURVE encryption; {count} authorized worker key{'s' if count != 1 else ''} in {authorized}"


def start_authenticator(context: zmq.Context):
    """The running ZAP authenticator of `context`, started on first use."""
    # Imported here: it pulls in asyncio, which only the learner needs.
    from zmq.auth.thread import ThreadAuthenticator

    with _lock:
        authenticator = _authenticators.get(context)
        if authenticator is None:
            authenticator = ThreadAuthenticator(context, log=logging.getLogger("rl.security.zap"))
            authenticator.start()
            _authenticators[context] = authenticator
        return authenticator


def stop_authenticator(context: zmq.Context | None = None) -> None:
    """Stop the authenticator of `context` (default: every one this module started)."""
    with _lock:
        contexts = [context] if context is not None else list(_authenticators)
        for ctx in contexts:
            authenticator = _authenticators.pop(ctx, None)
            if authenticator is not None:
                stop_thread(authenticator)


def stop_thread(authenticator, timeout_s: float = 5.0) -> None:
    """ThreadAuthenticator.stop() with bounded waits: its own blocks for ever if the thread is already gone."""
    thread = authenticator.thread
    if thread is not None and thread.is_alive():
        try:
            authenticator.pipe.send(b"TERMINATE", zmq.NOBLOCK)
        except zmq.ZMQError:  # no peer (thread exiting) or the context was closed
            pass
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("the ZeroMQ authenticator thread did not stop within %.0f s", timeout_s)
            return  # a daemon thread: it ends with the process; its sockets are not ours to close now
    for sock in (authenticator.pipe, authenticator.zap_socket):
        if sock is not None:
            sock.close(linger=0)
    authenticator.pipe = authenticator.zap_socket = authenticator.thread = None


# ---------------------------------------------------------------- a worker's side


def secure_client(sock: zmq.Socket, keys: str | os.PathLike, name: str = "worker") -> str:
    """Make `sock` a CURVE client with KEYS/NAME.key_secret that trusts only KEYS/server.key; call before connect.

    `keys` may also name a key file directly (DIR/NAME.key_secret).
    """
    path = Path(keys).expanduser().resolve()
    if path.suffix == ".key_secret":
        path, name = path.parent, path.stem
    public, secret = load_secret(path / f"{name}.key_secret")
    sock.curve_serverkey = load_public(path / "server.key")
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    return f"CURVE encryption with {path / f'{name}.key_secret'}"


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only: 127.0.0.0/8, ::1 or localhost (no name is looked up)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
