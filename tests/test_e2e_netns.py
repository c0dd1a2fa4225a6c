"""A rollout worker on "another host": its own network namespace, interface and address.

The learner binds the host end of a veth pair; `rl rollout` runs inside the namespace and can reach
the learner only over that link, by TCP, with CURVE keys. A worker holding keys that were never
authorized is refused first. Needs root and `ip netns` (skipped otherwise, e.g. on CI).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from tests.test_e2e import (
    REPO,
    assert_no_process_mentions,
    check_run,
    run_dir_of,
    write_config,
)

pytestmark = pytest.mark.e2e

NEEDS = "needs root and `ip netns` (CAP_SYS_ADMIN + CAP_NET_ADMIN)"


@dataclass
class Namespace:
    name: str
    host_address: str  # the host end of the veth pair: what the learner binds
    address: str  # the namespace's own address

    def exec(self) -> list[str]:
        """The prefix that runs a command inside the namespace (it keeps the environment and cwd)."""
        return ["ip", "netns", "exec", self.name]


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=30)


def free_subnet() -> int:
    """X in 10.231.X.0/30 that no interface here uses yet (tests in parallel get different pids)."""
    used = ip("-4", "-o", "addr", "show").stdout
    for offset in range(254):
        x = (os.getpid() + offset) % 254 + 1
        if f"10.231.{x}." not in used:
            return x
    pytest.skip("no free 10.231.X.0/30 subnet for the test's veth pair")


def reachable(namespace: Namespace) -> str | None:
    """None if a TCP connection from inside the namespace reaches the host end; else what went wrong."""
    with socket.socket() as server:
        server.bind((namespace.host_address, 0))
        server.listen(1)
        target = (namespace.host_address, server.getsockname()[1])
        probe = f"import socket; socket.create_connection({target!r}, timeout=5).close()"
        result = subprocess.run([*namespace.exec(), sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=60)
        return None if result.returncode == 0 else (result.stderr.strip() or f"exit code {result.returncode}")


@pytest.fixture
def netns():
    if shutil.which("ip") is None:
        pytest.skip(f"{NEEDS}: no `ip` command (iproute2) on PATH")
    if os.geteuid() != 0:
        pytest.skip(f"{NEEDS}: not running as root (euid {os.geteuid()})")
    pid = os.getpid()
    x = free_subnet()
    namespace = Namespace(f"rl-test-{pid}", f"10.231.{x}.1", f"10.231.{x}.2")
    host_veth, inner_veth = f"rlh{pid}", f"rln{pid}"  # interface names: at most 15 characters
    try:
        steps = [
            ("netns", "add", namespace.name),
            ("link", "add", host_veth, "type", "veth", "peer", "name", inner_veth),
            ("link", "set", inner_veth, "netns", namespace.name),
            ("addr", "add", f"{namespace.host_address}/30", "dev", host_veth),
            ("link", "set", host_veth, "up"),
            ("netns", "exec", namespace.name, "ip", "addr", "add", f"{namespace.address}/30", "dev", inner_veth),
            ("netns", "exec", namespace.name, "ip", "link", "set", inner_veth, "up"),
            ("netns", "exec", namespace.name, "ip", "link", "set", "lo", "up"),
        ]
        for step in steps:
            result = ip(*step)
            if result.returncode != 0:
                pytest.skip(f"{NEEDS}: `ip {' '.join(step)}` failed: {result.stderr.strip()}")
        problem = None
        for _ in range(10):  # a fresh veth can take a moment to come up
            problem = reachable(namespace)
            if problem is None:
                break
            time.sleep(0.5)
        assert problem is None, f"the namespace cannot reach {namespace.host_address} over the veth pair: {problem}"
        yield namespace
    finally:
        # Anything the test left running in the namespace is the test's own; end it by pid.
        for line in ip("netns", "pids", namespace.name).stdout.split():
            try:
                os.kill(int(line), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass
        ip("netns", "del", namespace.name)  # also removes the inner end of the pair ...
        ip("link", "del", host_veth)  # ... and with it the host end; this only makes sure
        assert namespace.name not in ip("netns", "list").stdout


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def test_a_worker_in_its_own_network_namespace_joins_over_tcp_with_curve_keys(tmp_path, tiny_model_dir, netns):
    keys, strangers = tmp_path / "keys", tmp_path / "strangers"
    for folder in (keys, strangers):
        made = subprocess.run([sys.executable, "-m", "rl.cli", "keys", str(folder)], check=False, cwd=REPO, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
    # the stranger knows the learner's public key, but its own key was never authorized
    (strangers / "server.key").write_bytes((keys / "server.key").read_bytes())

    port = free_port(netns.host_address)
    address = f"tcp://{netns.host_address}:{port}"
    config = write_config(tmp_path, tiny_model_dir, num_workers=0, wait_for_workers=1)
    overrides = [f"transport.host={netns.host_address}", f"transport.port={port}", f"transport.curve_keys={keys}"]
    train_log, worker_log = tmp_path / "train.log", tmp_path / "worker.log"
    train = subprocess.Popen([sys.executable, "-m", "rl.cli", "train", str(config), *overrides], cwd=REPO,
                             stdout=train_log.open("w"), stderr=subprocess.STDOUT, text=True)
    worker = None
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "runs").glob("*/learner_address")):
            assert train.poll() is None, train_log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the learner never wrote its address"
            time.sleep(0.3)
        run_dir = run_dir_of(tmp_path)
        assert (run_dir / "learner_address").read_text().strip() == address

        rollout = [*netns.exec(), sys.executable, "-m", "rl.cli", "rollout", "--connect", address]
        stranger = subprocess.run([*rollout, "--keys", str(strangers)], check=False, cwd=REPO, env=dict(os.environ),
                                  capture_output=True, text=True, timeout=120)
        assert stranger.returncode == 2 and "refused" in stranger.stderr, stranger.stderr[-2000:]

        worker = subprocess.Popen([*rollout, "--keys", str(keys), "--name", "netns-worker"], cwd=REPO, env=dict(os.environ),
                                  stdout=worker_log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while "joined (netns-worker" not in train_log.read_text():
            assert worker.poll() is None, worker_log.read_text()[-3000:]
            assert train.poll() is None, train_log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker in the namespace never joined"
            time.sleep(0.3)
        # `ip netns exec` execs the command, so the worker's pid is the one that lives in the namespace
        assert os.readlink(f"/proc/{worker.pid}/ns/net") != os.readlink("/proc/self/ns/net")

        assert train.wait(timeout=600) == 0, train_log.read_text()[-3000:]
        assert worker.wait(timeout=60) == 0, worker_log.read_text()[-3000:]
    finally:
        for proc in (worker, train):
            if proc is not None and proc.poll() is None:
                proc.kill()

    output = train_log.read_text()
    assert f"learner listening on {address} (CURVE encryption; 1 authorized worker key" in output, output[-3000:]
    assert "refused a worker whose CURVE public key" in output
    assert "rollout worker 0 joined (netns-worker" in output, output[-3000:]
    check_run(run_dir, workers=1)  # 2 steps; the worker's live weights are the learner's final ones
    assert_no_process_mentions(str(run_dir))
