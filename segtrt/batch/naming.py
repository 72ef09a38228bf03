"""Safe output names: each case's output path relative to the output folder (pure string work).

- Every path component is sanitised: letters, digits, '.', '_', '-' and '+' are kept, anything else
  (spaces, slashes inside DICOM descriptions, control characters, non-ASCII) becomes '_'; leading dots
  are removed (no hidden files, no '..'); components are at most 80 characters; an empty one becomes
  'case'. A relative name therefore never leaves the output folder.
- Collisions (two cases with the same name, compared without letter case, since macOS and Windows
  file systems ignore it) are resolved deterministically: cases are ordered by their name and then by
  their source, the first keeps the name and the others get '_2', '_3', ...; each rename is returned
  so that the report can list it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
MAX_COMPONENT = 80


@dataclass(frozen=True)
class Rename:
    source: str
    wanted: str
    given: str

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "wanted": self.wanted, "given": self.given,
                "reason": "another case has the same output name"}


def safe_component(text: str) -> str:
    """One sanitised path component (never empty, never hidden, never '.' or '..')."""
    cleaned = _UNSAFE.sub("_", text.strip()).lstrip(".")
    cleaned = cleaned[:MAX_COMPONENT].rstrip(". ")
    return cleaned or "case"


def safe_relative(parts: Sequence[str]) -> str:
    """A POSIX relative name from components, each sanitised ('a b/c' -> 'a_b_c' within one part)."""
    components = [safe_component(part) for part in parts if part not in ("", ".")]
    return "/".join(components) if components else "case"


def resolve_collisions(wanted: Sequence[tuple[str, str]]) -> tuple[list[str], list[Rename]]:
    """Unique names for ``(wanted_name, source)`` pairs, in the input order, and the renames made.

    Deterministic whatever the input order: the pairs are ranked by (name without case, name, source).
    """
    order = sorted(range(len(wanted)), key=lambda i: (wanted[i][0].lower(), wanted[i][0], wanted[i][1]))
    taken: set[str] = set()
    given: list[str] = [""] * len(wanted)
    renames: list[Rename] = []
    for index in order:
        name, source = wanted[index]
        candidate, number = name, 1
        while candidate.lower() in taken:
            number += 1
            candidate = f"{name}_{number}"
        taken.add(candidate.lower())
        given[index] = candidate
        if candidate != name:
            renames.append(Rename(source, name, candidate))
    return given, renames
