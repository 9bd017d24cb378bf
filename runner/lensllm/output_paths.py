"""Checks that an output can be written, made before the work that produces it: results must not be lost to a
path that was wrong from the start (a folder given as a file, a read-only or missing mount)."""

import tempfile
from pathlib import Path

from lensllm.errors import LensLLMError


def check_file(path: Path, flag: str) -> None:
    """The file `flag` names can be written: an existing one is opened for appending (the kubelet's termination log
    exists, its folder may be read-only), a new one is created in its folder (made when missing, as the writers
    do) and removed again."""
    if path.is_dir():
        raise LensLLMError(f"{flag} {path}: is a folder; give a file name")
    try:
        if path.exists():
            with path.open("a"):
                pass
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
                pass
    except OSError as err:
        raise LensLLMError(f"{flag} {path}: cannot be written ({err.strerror or err})") from None


def check_folder(path: Path, flag: str) -> None:
    """The folder `flag` names exists, or is made, and files can be created in it."""
    if path.exists() and not path.is_dir():
        raise LensLLMError(f"{flag} {path}: is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".lensllm-probe."):
            pass
    except OSError as err:
        raise LensLLMError(f"{flag} {path}: cannot be written ({err.strerror or err})") from None
