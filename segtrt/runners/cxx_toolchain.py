"""Which C++ compiler builds AOTInductor packages that this process can load.

An AOTInductor package is a shared object that torch loads into the running process, next to the
``libstdc++.so.6`` that torch itself uses. A compiler set up to link libstdc++ statically puts a second
copy of the C++ runtime into the package; its locale machinery is never initialised there, and the first
``std::regex`` the package builds (``torch::aot_inductor::parse_device_str``, called while the model
loads) dereferences a null pointer. Measured on the H200 image (2026-12-03, torch 2.11.0+cu130): its
``CXX`` is ``/opt/gcc/bin/g++``, whose shared objects carry no ``libstdc++.so.6`` dependency, and every
package it built crashed on load (SIGSEGV; native backtrace through ``std::regex`` into
``parse_device_str``); the same package built with the image's ``g++-12`` loaded and ran.

:func:`choose` keeps inductor's own compiler when a shared object it links depends on
``libstdc++.so.6`` (the normal case), and otherwise takes the first other compiler on ``PATH`` that
does, saying so in a warning and in the returned :class:`Choice` (compiler and reason go into the
package's metadata; the compiler also into the runner's description, hence the run report). The check links a few lines of C++ that use ``std::regex`` and reads the
result's ``DT_NEEDED`` entries with binutils' ``readelf`` (installed with every GNU toolchain; the
check is skipped, and inductor's compiler kept, where it is missing). The package's own load-and-run
probe in a child process (segtrt.runners.compiled_cache.probe) stays the final check.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

from segtrt.errors import CompiledCacheError

log = logging.getLogger(__name__)

#: a translation unit that needs libstdc++ at run time (strings, regex, locale)
PROBE_SOURCE = """
#include <regex>
#include <string>
extern "C" int segtrt_cxx_probe(const char* text) {
    return std::regex_match(std::string(text), std::regex("[a-z]+(:[0-9]+)?")) ? 1 : 0;
}
"""

#: compilers tried, in order, after inductor's own (versioned g++-N are added, newest first)
FALLBACKS = ("g++", "c++", "clang++")


@dataclass(frozen=True)
class Choice:
    """The compiler to build packages with. ``reason`` is None when it is inductor's own."""

    cxx: str
    default: str
    reason: str | None = None
    rejected: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict:
        info = {"cxx": self.cxx}
        if self.reason:
            info["cxx_reason"] = self.reason
        return info


def inductor_default() -> str:
    """The C++ compiler inductor would use (``torch._inductor.config.cpp.cxx``, itself ``$CXX`` or g++)."""
    from torch._inductor import config as inductor_config

    return str(inductor_config.cpp.cxx[-1])


def needed_libraries(shared_object: str, readelf: str = "readelf") -> list[str]:
    """The ``DT_NEEDED`` sonames of an ELF shared object, from ``readelf -d``."""
    done = subprocess.run([readelf, "-d", shared_object], capture_output=True, text=True, encoding="utf-8",
                          errors="replace", check=True, timeout=60)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", done.stdout)


def links_cxx_runtime_dynamically(cxx: str, readelf: str = "readelf") -> tuple[bool, str]:
    """(True, "") when a shared object ``cxx`` links depends on libstdc++.so / libc++.so; else (False, why)."""
    with tempfile.TemporaryDirectory(prefix="segtrt-cxx-") as tmp:
        source, target = os.path.join(tmp, "probe.cpp"), os.path.join(tmp, "probe.so")
        with open(source, "w") as handle:
            handle.write(PROBE_SOURCE)
        try:
            done = subprocess.run([cxx, "-shared", "-fPIC", "-O0", "-std=c++17", source, "-o", target],
                                  capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"could not run it ({type(exc).__name__}: {exc})"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [""])[-1][:200]
            return False, f"it failed to link a shared object (exit {done.returncode}: {last})"
        needed = needed_libraries(target, readelf)
    if any(name.startswith(("libstdc++.so", "libc++.so")) for name in needed):
        return True, ""
    return False, (f"its shared objects link the C++ runtime statically (needed: {', '.join(needed) or 'none'}), "
                   "and such packages crash when torch loads them")


def candidates(default: str) -> list[str]:
    """``default``, then :data:`FALLBACKS` and every ``g++-N`` on ``PATH`` (newest first), each found once."""
    names = [default, *FALLBACKS]
    versioned: dict[int, str] = {}
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        try:
            entries = os.listdir(folder or ".")
        except OSError:
            continue
        for entry in entries:
            match = re.fullmatch(r"g\+\+-(\d+)", entry)
            if match:
                versioned.setdefault(int(match.group(1)), entry)
    names += [versioned[v] for v in sorted(versioned, reverse=True)]
    found, seen = [], set()
    for name in names:
        path = shutil.which(name)
        if path is None:
            continue
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            found.append(name)
    return found


@functools.lru_cache(maxsize=4)
def choose(default: str | None = None) -> Choice:
    """The compiler for AOTInductor packages (see the module docstring); cached per process."""
    default = default or inductor_default()
    readelf = shutil.which("readelf")
    if readelf is None:
        log.info("readelf not found: building ahead-of-time packages with inductor's compiler %s unchecked", default)
        return Choice(default, default)
    rejected: dict[str, str] = {}
    for cxx in candidates(default) or [default]:
        ok, why = links_cxx_runtime_dynamically(cxx, readelf)
        if ok:
            if cxx == default:
                return Choice(cxx, default, None, rejected)
            reason = f"inductor's C++ compiler {default}: {rejected.get(default, 'not found')}; using {cxx}"
            log.warning("ahead-of-time packages: %s", reason)
            return Choice(cxx, default, reason, rejected)
        rejected[cxx] = why
    detail = "; ".join(f"{name}: {why}" for name, why in rejected.items())
    raise CompiledCacheError(f"no C++ compiler here links the C++ runtime dynamically ({detail}); install g++ "
                             "or set CXX to one that does, or use --compile default")
