"""Names and label values of the objects the operator creates, for any valid selection name.

A selection's name may be any DNS subdomain of up to 253 characters, while Job names and label
values must fit 63. Both are therefore cut and completed by a hash: deterministic (a restarted
operator finds its Jobs), and the full name stays in an annotation. A Job name also hashes the
selection's uid: two selections whose joined names read the same (`col` + candidate `x-y` and
`col-x` + `y`), or a selection deleted and re-created under the same name while its old Jobs
are still being collected, never want the same Job.
"""

import hashlib
import re

from lensllm.selection.plan import Trial

LIMIT = 63
_DIGEST = 8
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST]


def _shortened(prefix: str, digest: str) -> str:
    """`prefix-digest` within LIMIT characters, the prefix cut where needed and never ending in '-' or '.'."""
    return f"{prefix[: LIMIT - len(digest) - 1].rstrip('-.')}-{digest}"


def label_value(name: str) -> str:
    """`name` itself when it is a valid label value, else a shortened, hashed form of it."""
    if len(name) <= LIMIT and _LABEL_VALUE.fullmatch(name):
        return name
    return _shortened(name, _digest(name))


def job_name(selection: str, uid: str, trial: Trial) -> str:
    """`<selection>-<candidate>-r<round>[-a<attempt>]-<hash>`, the readable part cut to fit 63 characters."""
    attempt = f"-a{trial.attempt}" if trial.attempt else ""
    readable = f"{selection.replace('.', '-')}-{trial.candidate}-r{trial.round}{attempt}"
    return _shortened(readable, _digest(f"{uid}/{trial.candidate}/{trial.round}/{trial.attempt}"))
