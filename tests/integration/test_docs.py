"""Every file or folder of the repository that the docs name exists (READMEs, role READMEs, docs/)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Backticked words and markdown link targets that may name a path.
CODE = re.compile(r"`([^`\s]+)`")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
# Named on purpose and never in the repository: the operator creates it with ansible-vault.
ABSENT_BY_DESIGN = {"inventory/example/group_vars/all/vault.yml"}


def tracked() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(listed.split())


def top_levels(files: set[str]) -> set[str]:
    return {path.split("/")[0] for path in files}


def documents() -> list[Path]:
    return sorted(ROOT / path for path in tracked() if path.endswith(".md"))


def named_paths(text: str, roots: set[str]) -> set[str]:
    """The words of a document that name a repository path: they start with a top-level file or folder."""
    found = set()
    for word in CODE.findall(text) + LINK.findall(text):
        word = word.rstrip(".,:;")
        if "://" in word or word.startswith(("/", "~", "$", ".run/")) or "*" in word or "<" in word:
            continue
        if word.split("/")[0] in roots and ("/" in word or "." in word):
            found.add(word)
    return found


@pytest.mark.parametrize("document", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_paths_a_document_names_exist(document: Path) -> None:
    files = tracked()
    roots = top_levels(files) - {"README.md"}
    missing = []
    for word in sorted(named_paths(document.read_text(), roots)):
        if word not in ABSENT_BY_DESIGN and not (ROOT / word).exists():
            missing.append(word)
    for word in sorted(named_paths(document.read_text(), {"defaults", "tasks", "meta", "vars", "templates"})):
        if document.parent.parent.name == "roles" and not (document.parent / word).exists():
            missing.append(word)
    assert not missing, f"{document.relative_to(ROOT)} names paths that do not exist: {missing}"


def sources() -> list[Path]:
    suffixes = (".py", ".yml", ".yaml", ".toml", ".cfg", ".md")
    return sorted(ROOT / p for p in tracked() if p.endswith(suffixes) or p in ("Makefile", ".ci/run"))


def test_the_files_that_code_and_comments_name_exist() -> None:
    """Docstrings, comments and configuration name files by their repository path (docs/contract.md, …)."""
    files = tracked()
    roots = "|".join(re.escape(r) for r in sorted(top_levels(files)) if "." not in r or r.startswith("."))
    named = re.compile(rf"(?<![\w/.-])((?:{roots})/[\w./-]*\.(?:md|py|yml|yaml|toml|json|cfg|sh))\b")
    missing = []
    for path in sources():
        for word in named.findall(path.read_text(errors="replace")):
            if "*" not in word and word not in ABSENT_BY_DESIGN and not (ROOT / word).exists():
                missing.append(f"{path.relative_to(ROOT)}: {word}")
    assert not missing, "files named but absent:\n" + "\n".join(sorted(set(missing)))
