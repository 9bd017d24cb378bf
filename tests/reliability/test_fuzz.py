"""Bad input: property-based manifests (tests/support/spec_fuzz.py, hypothesis, derandomized) through the three
doors a selection comes in by, each of which must refuse it with a one-line message naming the field, or run it:

- the API server (the emulator with the CRD's schema and CEL rules), then the real operator process for whatever
  the server admitted: a status with a phase for every one (Failed/InvalidSpec naming the field, or a run whose
  Jobs the server accepted), and no exception in the operator;
- `lensllm select --local` (exit 2 with one line on stderr, or 0/1 after running the trials with the stand-in
  recipe of tests/support/stand_in_trial.py; valid manifests beyond the first LENSLLM_FUZZ_LOCAL_RUNS (10) are only
  checked to pass local mode's manifest reader, running them all would take an hour);
- `lensllm run-trial --spec` on the trial spec the manifest implies (exit 2 with one line, or 0).

The cluster and local mode must agree on which manifests they accept. YAML-only hostility (alias bombs, deep
nesting) goes to the CLIs in a subprocess with a memory limit, so a reader that lets it through fails the suite
instead of the machine. Knob: LENSLLM_FUZZ_EXAMPLES (500).
"""

import contextlib
import copy
import io
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import stand_in_trial
from cluster import Cluster, free_port, wait_for
from hypothesis import HealthCheck, given, settings
from lensllm.cli.main import main
from lensllm.selection.manifest import read_manifest
from spec_fuzz import Case, manifests

pytestmark = pytest.mark.fuzz
GROUP, VERSION, PLURAL = "lensllm.io", "v1alpha1", "llmselections"
STAND_IN = Path(stand_in_trial.__file__)
# The platform team's policy (allowed tolerations, token Secrets, writable caches) is no part of a manifest's
# validity: the operator runs with the most permissive one, and a refusal that still names a policy (e.g. a runner
# image outside the allowed repositories) is counted apart, not as a disagreement.
PERMISSIVE = {"LENSLLM_ALLOWED_TOLERATION_KEYS": "*", "LENSLLM_ALLOWED_TOKEN_SECRETS": "*",
              "LENSLLM_ALLOW_WRITABLE_MODEL_CACHE": "true"}
# How the operator's policy words a refusal (operator/lensllm_operator/policy.py): "is not an allowed runner image",
# "is not allowed", "which this operator does not allow".
POLICY_REFUSAL = re.compile(r"is not (an )?allowed|does not allow")
BATCH = 25  # admitted selections the operator holds at once before the suite checks and deletes them
MEMORY_LIMIT = 1 << 30  # bytes a CLI fed YAML-only hostility may take before it counts as blown up
SITE = """import importlib.util, sys
class StandInRecipe:
    def find_spec(self, name, path=None, target=None):
        if name == "lensllm.trial.recipe":
            return importlib.util.spec_from_file_location(name, {path!r})
sys.meta_path.insert(0, StandInRecipe())
"""


@dataclass
class Tally:
    """What the suite saw, for the figures and the failure message."""

    cases: int = 0
    api: dict[str, int] = field(default_factory=dict)
    local: dict[str, int] = field(default_factory=dict)
    trial: dict[str, int] = field(default_factory=dict)
    operator: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def count(self, door: dict[str, int], verdict: str) -> None:
        door[verdict] = door.get(verdict, 0) + 1


def one_line(text: str) -> bool:
    return len([line for line in text.splitlines() if line.strip()]) == 1


def create_namespace(kube: Cluster, name: str) -> str:
    """A namespace of its own for each case (raw HTTP: the kubernetes client's checks cost a tenth of a second)."""
    request = urllib.request.Request(f"{kube.url}/api/v1/namespaces", method="POST",
                                     data=json.dumps({"metadata": {"name": name}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
        return name


def api_verdict(kube: Cluster, namespace: str, document: dict[str, Any]) -> tuple[str, str, bool]:
    """admitted, or refused with the server's message (raw HTTP: the kubernetes client checks types itself); and
    whether the server pruned fields the schema does not know from what it stored."""
    url = f"{kube.url}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    request = urllib.request.Request(url, method="POST", data=json.dumps(document).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return "admitted", "", pruned(document, json.loads(response.read()))
    except urllib.error.HTTPError as err:
        body = json.loads(err.read())
        return f"refused {err.code}", body.get("message", ""), False


def pruned(sent: Any, stored: Any) -> bool:
    """Whether some key of `sent` is missing from `stored` (the server added defaults, so only missing keys count)."""
    if isinstance(sent, dict) and isinstance(stored, dict):
        return any(key not in stored or pruned(value, stored[key]) for key, value in sent.items())
    if isinstance(sent, list) and isinstance(stored, list) and len(sent) == len(stored):
        return any(pruned(a, b) for a, b in zip(sent, stored))
    return False


def run_cli(argv: list[str], isolated: bool) -> tuple[int | str, str]:
    """Exit code (or 'crashed') and stderr of `lensllm ARGV`; isolated: in a memory-limited subprocess."""
    if isolated:
        code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({0}, {0}))\n"
                "from lensllm.cli.main import main; sys.exit(main(sys.argv[1:]))").format(MEMORY_LIMIT)
        try:
            done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return "hung", ""
        crashed = "Traceback (most recent call last)" in done.stderr
        return ("crashed" if crashed else done.returncode), done.stderr
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code: int | str = main(argv)
        except BaseException as exc:  # noqa: BLE001 - a crash is exactly what the suite looks for
            code = f"crashed: {type(exc).__name__}: {exc}"[:200]
    return code, err.getvalue()


def accepted_locally(path: Path) -> bool:
    """Whether local mode's manifest reader (the first thing `select --local` does) takes the file."""
    try:
        read_manifest(path)
    except Exception:  # noqa: BLE001 - refused, or crashed: the CLI run shows which, with its exit code
        return False
    return True


def trial_document(document: dict[str, Any] | None) -> dict[str, Any] | None:
    """The runner's trial spec a manifest implies (its first candidate), hostile values carried over as they are."""
    spec = (document or {}).get("spec")
    if not isinstance(spec, dict):
        return None
    candidates = spec.get("candidates")
    first = candidates[0] if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict) else {}
    budget = spec.get("budget") if isinstance(spec.get("budget"), dict) else {}
    trial = {"candidate": {k: v for k, v in first.items() if k not in ("name", "resources")},
             "dataset": spec.get("dataset"), "subsetSizes": budget.get("subsetSizes"),
             "targetSize": budget.get("targetSize"), "training": spec.get("training"), "ntk": spec.get("ntk"),
             "seed": spec.get("seed")}
    return {key: value for key, value in trial.items() if value is not None}


def check_cli(tally: Tally, door: dict[str, int], what: str, case: Case, code: int | str, stderr: str) -> None:
    if code == 2 and one_line(stderr):
        tally.count(door, "refused")
    elif code in (0, 1):
        tally.count(door, "ran")
    else:
        tally.count(door, "broken")
        tally.problems.append(f"{what} [{case.hostility}]: exit {code}, stderr {stderr.strip()[-300:]!r}")


def test_bad_manifests_are_refused_naming_the_field_or_run(kube: Cluster, operator_process, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, figures) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE.format(path=str(STAND_IN)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv(stand_in_trial.SIZE_SECONDS, "0")
    monkeypatch.setenv(stand_in_trial.FITS, "0")
    monkeypatch.setitem(sys.modules, "lensllm.trial.recipe", stand_in_trial)
    metrics, liveness = free_port(), free_port()
    operator = operator_process([sys.executable, "-m", "lensllm.cli.main", "operator", "--all-namespaces",
                                 "--metrics-port", str(metrics), "--liveness-port", str(liveness)],
                                ready=f"http://127.0.0.1:{liveness}/healthz", timeout=60, env=PERMISSIVE)
    tally, admitted, local_accepts = Tally(), {}, {}
    settle = settler(kube, admitted, local_accepts, tally)
    examples = int(os.environ.get("LENSLLM_FUZZ_EXAMPLES", "500"))
    # Running a valid manifest's trials costs seconds: the first few run to the end, the others stop at the reader.
    full_local_runs, local_runs = int(os.environ.get("LENSLLM_FUZZ_LOCAL_RUNS", "10")), [0]

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(manifests())
    def each(case: Case) -> None:
        index = tally.cases
        tally.cases += 1
        work = tmp_path / f"case-{index}"
        work.mkdir()
        namespace = create_namespace(kube, f"fuzz-{index}")
        isolated = case.isolated
        (work / "selection.yaml").write_text(case.text)
        if not isolated and accepted_locally(work / "selection.yaml") and local_runs[0] >= full_local_runs:
            tally.count(tally.local, "accepted")  # valid: the manifest reader `select --local` starts with took it
            local_accepts[namespace] = True
        else:
            local_runs[0] += not isolated
            code, stderr = run_cli(["select", str(work / "selection.yaml"), "--local", "--workers", "3",
                                    "--out", str(work / "out")], isolated)
            check_cli(tally, tally.local, "select --local", case, code, stderr)
            local_accepts[namespace] = code != 2
        trial = trial_document(case.document)
        trial_text = case.text if trial is None else json.dumps(trial)
        (work / "trial.json").write_text(trial_text)
        code, stderr = run_cli(["run-trial", "--spec", str(work / "trial.json"), "--out", str(work / "result.json"),
                                "--termination-log", str(work / "termination")], isolated)
        check_cli(tally, tally.trial, "run-trial", case, code, stderr)
        if case.document is None:
            return
        verdict, message, unknown_fields = api_verdict(kube, namespace, copy.deepcopy(case.document))
        tally.count(tally.api, verdict.split()[0])
        if verdict == "admitted":
            admitted[namespace] = (case, case.document["metadata"]["name"], unknown_fields)
            settle(BATCH)
        elif not any(part in message for part in ("spec", "metadata")) or not one_line(message):
            tally.problems.append(f"API [{case.hostility}]: {verdict} without naming the field: {message!r}")
        elif local_accepts[namespace]:
            tally.problems.append(f"local mode ran what the API server refused [{case.hostility}]: {message}")

    each()
    settle(1)
    tracebacks = operator.log.count("Traceback (most recent call last)")
    tally.operator["exceptions"] = tracebacks
    if tracebacks:
        tally.problems.append(f"the operator logged {tracebacks} exceptions (see its log)")
    figures("fuzz", {"cases": tally.cases, "api": tally.api, "local": tally.local, "run_trial": tally.trial,
                     "operator": tally.operator, "problems": len(tally.problems)})
    assert tally.cases >= examples * 0.9, tally.cases
    assert not tally.problems, f"{len(tally.problems)} problems in {tally.cases} cases:\n" + "\n".join(
        tally.problems[:40])


def settler(kube: Cluster, admitted: dict[str, tuple[Case, str, bool]], local_accepts: dict[str, bool],
            tally: Tally) -> Callable[[int], None]:
    """`settle(n)`: once n selections wait for the operator, check them, then delete them. Left in place, every
    admitted selection that runs stays in the operator's resync for the rest of the suite, and a case took
    seconds more with each hundred before it."""
    custom = kubernetes.client.CustomObjectsApi(kube.api)

    def settle(batch: int) -> None:
        if len(admitted) < batch:
            return
        check_operator(custom, admitted, local_accepts, tally)
        for namespace, (_, name, _) in admitted.items():
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        admitted.clear()
    return settle


def check_operator(custom: kubernetes.client.CustomObjectsApi, admitted: dict[str, tuple[Case, str, bool]],
                   local_accepts: dict[str, bool], tally: Tally) -> None:
    """Every admitted selection gets a phase; a Failed one names the field."""

    def phases() -> dict[str, dict[str, Any]]:
        return {namespace: custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
                .get("status") or {} for namespace, (_, name, _) in admitted.items()}

    try:
        statuses = wait_for(lambda: (s := phases()) and all(v.get("phase") for v in s.values()) and s,
                            "a phase on every admitted selection", timeout=120, interval=1)
    except AssertionError:
        statuses = phases()
    for namespace, status in statuses.items():
        case, _, unknown_fields = admitted[namespace]
        failed = [c for c in status.get("conditions") or [] if c.get("type") == "Failed"]
        cluster_accepts = bool(status.get("phase")) and not any(c.get("reason") == "InvalidSpec" for c in failed)
        policy = any(POLICY_REFUSAL.search(c.get("message", "")) for c in failed)
        tally.count(tally.operator, "refused by policy" if policy else status.get("phase") or "no status")
        if not status.get("phase"):
            tally.problems.append(f"operator [{case.hostility}]: no status after 120 s in {namespace}")
        elif failed and not one_line(failed[-1].get("message", "")):
            tally.problems.append(f"operator [{case.hostility}]: Failed without a one-line reason: {failed[-1]}")
        # A field the schema does not know is pruned by a server that was not asked for strict field validation;
        # kubectl asks for it (--validate=strict, its default) and is refused, as local mode refuses it.
        agree = cluster_accepts == local_accepts[namespace] or (unknown_fields and not local_accepts[namespace])
        if status.get("phase") and not policy and not agree:
            tally.problems.append(f"cluster {'accepts' if cluster_accepts else 'refuses'} what local mode "
                                  f"{'accepts' if local_accepts[namespace] else 'refuses'} [{case.hostility}]: "
                                  f"{(failed[-1].get('message') if failed else status.get('phase'))}")
