"""Real text that installs offline, parsed into records: the raw material of LensBench tasks.

Sources: the Debian packages `trans-de-en` (German-English dictionary), `wordnet-base`
(WordNet glosses) and `fortunes` (quotations), fetched with `apt-get download` and unpacked
with `dpkg-deb -x` into a cache folder (no installation, no root), and the Python standard
library's own source code, which is always there. Every reader returns records in a fixed
order, so a seeded shuffle of them is reproducible.

Called by `lensllm_bench.tasks` (task rows) and `lensllm_bench.zoo` (pre-training text).
"""

import ast
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lensllm.errors import LensLLMError

PACKAGES = {"de-en": "trans-de-en", "wordnet": "wordnet-base", "fortunes": "fortunes"}
_NOTES = re.compile(r"\s*(\{[^}]*\}|\[[^\]]*\]|<[^>]*>)")  # {f}, [übtr.], <abbr>: grammar notes, not words


class CorpusError(LensLLMError):
    """A corpus cannot be fetched or read (no apt-get, package missing, unexpected layout)."""


@dataclass(frozen=True)
class Pair:
    """One input/target record, e.g. a German word and its English translation."""

    source: str
    target: str


def unpack_package(package: str, cache: Path) -> Path:
    """The root of the unpacked Debian package `package` under `cache`, downloading it once."""
    root = cache / package
    if (root / ".unpacked").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        if shutil.which("apt-get") is None:
            raise CorpusError(f"Debian package {package!r} is not in {cache} and apt-get is not available")
        done = subprocess.run(["apt-get", "download", package], cwd=cache, capture_output=True, text=True)
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if done.returncode != 0 or not debs:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise CorpusError(f"apt-get download {package} failed: {last}")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True, capture_output=True)
    (root / ".unpacked").touch()
    return root


def _clean(text: str) -> str:
    return " ".join(_NOTES.sub("", text).split())


def german_english(cache: Path) -> list[Pair]:
    """Dictionary entries of trans-de-en: the first German headword and its first English sense."""
    path = unpack_package(PACKAGES["de-en"], cache) / "usr/share/trans/de-en"
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or " :: " not in line:
            continue
        german, english = line.split(" :: ", 1)
        german = _clean(german.split(" | ")[0].split(";")[0])
        english = _clean(english.split(" | ")[0].split(";")[0])
        if german and english:
            pairs.append(Pair(german, english))
    return pairs


def wordnet_glosses(cache: Path, parts: tuple[str, ...] = ("noun", "verb", "adj", "adv")) -> list[Pair]:
    """WordNet synsets as (first word, definition), the gloss cut before its quoted examples."""
    folder = unpack_package(PACKAGES["wordnet"], cache) / "usr/share/wordnet"
    pairs = []
    for part in parts:
        for line in (folder / f"data.{part}").read_text(encoding="utf-8").splitlines():
            if line.startswith(" ") or " | " not in line:
                continue  # the licence header is indented
            fields, gloss = line.split(" | ", 1)
            word = fields.split()[4].replace("_", " ")
            definition = gloss.split('; "')[0].strip().rstrip(";")
            if definition:
                pairs.append(Pair(word, definition))
    return pairs


def fortunes(cache: Path) -> list[str]:
    """The quotations of the fortunes package (its inoffensive files), one string each."""
    folder = unpack_package(PACKAGES["fortunes"], cache) / "usr/share/games/fortunes"
    texts = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.suffix):
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = " ".join(entry.split())
            if text and text != "%":
                texts.append(text)
    return texts


def stdlib_modules(*, tests: bool) -> list[Path]:
    """The standard library's modules in path order: its test suites, or everything else."""
    root = Path(sysconfig.get_paths()["stdlib"])
    modules = []
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts)
        if "site-packages" not in parts and bool(parts & {"test", "tests"}) == tests:
            modules.append(path)
    return modules


def python_functions(modules: Iterable[Path]) -> Iterator[Pair]:
    """Functions of these modules as (signature, first line of the docstring), module by module."""
    for path in modules:
        tree = _parse(path)
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (doc := ast.get_docstring(node)):
                summary = doc.strip().splitlines()[0].strip()
                if summary:
                    yield Pair(f"def {node.name}({ast.unparse(node.args)}):", summary)


def python_source(modules: Iterable[Path]) -> Iterator[str]:
    """Source of every top-level function and class of these modules, one string each."""
    for path in modules:
        tree = _parse(path)
        lines = path.read_text(encoding="utf-8").splitlines() if tree else []
        for node in tree.body if tree else ():
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                yield "\n".join(lines[node.lineno - 1 : node.end_lineno])


def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None  # a few files are deliberately broken (test data); they are not code to learn from
