"""cxx_toolchain: ahead-of-time packages are built by a compiler that links the C++ runtime dynamically.

The compilers are real: this machine's g++ (which the CPU AOTInductor tests need anyway) and shell
wrappers around it, one of them linking libstdc++ statically as the H200 image's ``CXX`` does.
"""

from __future__ import annotations

import logging
import shutil
import stat
from pathlib import Path

import pytest

from segtrt.errors import CompiledCacheError
from segtrt.runners import cxx_toolchain

GXX = shutil.which("g++")
READELF = shutil.which("readelf")
if GXX is None or READELF is None:  # a missing test dependency fails loudly instead of skipping
    raise RuntimeError("tests/runners/test_cxx_toolchain.py needs g++ and readelf (binutils) on PATH")


@pytest.fixture(autouse=True)
def _fresh_choice():
    cxx_toolchain.choose.cache_clear()
    yield
    cxx_toolchain.choose.cache_clear()


def _script(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _static(folder: Path, name: str = "static-g++") -> Path:
    """A compiler like the H200 image's /opt/gcc/bin/g++: its shared objects carry their own libstdc++."""
    return _script(folder, name, f'exec {GXX} -static-libstdc++ "$@"')


def test_the_system_compiler_links_libstdcxx_dynamically():
    ok, why = cxx_toolchain.links_cxx_runtime_dynamically(GXX)
    assert ok and why == ""


def test_a_compiler_that_links_libstdcxx_statically_is_recognised(tmp_path):
    ok, why = cxx_toolchain.links_cxx_runtime_dynamically(str(_static(tmp_path)))
    assert not ok
    assert "link the C++ runtime statically" in why and "libstdc++" not in why.split("(needed: ")[1]


def test_a_compiler_that_cannot_link_is_rejected_with_its_error(tmp_path):
    broken = _script(tmp_path, "broken-g++", 'echo "ld: cannot find -lfoo" >&2; exit 1')
    ok, why = cxx_toolchain.links_cxx_runtime_dynamically(str(broken))
    assert not ok and "failed to link a shared object (exit 1: ld: cannot find -lfoo)" in why


def test_a_compiler_message_in_any_encoding_is_reported(tmp_path):
    # compilers print typographic quotes, or bytes of the user's locale; CI runs with an ASCII locale
    broken = _script(tmp_path, "broken-g++", "printf 'g++: fatal: \\342\\200\\230as\\342\\200\\231 \\377\\n' >&2; exit 1")
    ok, why = cxx_toolchain.links_cxx_runtime_dynamically(str(broken))
    assert not ok and "failed to link a shared object (exit 1: g++: fatal: \u2018as\u2019 \ufffd)" in why


def test_inductors_compiler_is_kept_when_it_links_dynamically():
    choice = cxx_toolchain.choose(GXX)
    assert choice.cxx == GXX and choice.reason is None and choice.describe() == {"cxx": GXX}


def test_a_static_default_is_replaced_by_a_dynamic_compiler_and_the_reason_logged(tmp_path, caplog):
    static = _static(tmp_path)
    with caplog.at_level(logging.WARNING, logger="segtrt.runners.cxx_toolchain"):
        choice = cxx_toolchain.choose(str(static))
    assert choice.cxx != str(static) and cxx_toolchain.links_cxx_runtime_dynamically(choice.cxx)[0]
    assert choice.reason.startswith(f"inductor's C++ compiler {static}: its shared objects link the C++ runtime statically")
    assert choice.describe()["cxx_reason"] == choice.reason and str(static) in choice.rejected
    assert any(choice.reason in record.getMessage() for record in caplog.records)


def test_no_usable_compiler_is_one_clear_error(tmp_path, monkeypatch):
    tools = tmp_path / "bin"
    static = _static(tools, "g++")
    for tool in ("readelf", "as", "ld"):  # binutils, which g++ runs from PATH
        (tools / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(tools))  # no c++, clang++ or g++-N here
    with pytest.raises(CompiledCacheError, match=r"no C\+\+ compiler here links the C\+\+ runtime dynamically .*"
                                                 r"use --compile default"):
        cxx_toolchain.choose(str(static))


def test_candidates_start_with_the_default_and_add_versioned_gxx_newest_first(tmp_path, monkeypatch):
    tools = tmp_path / "bin"
    for name in ("g++", "g++-9", "g++-12"):
        _script(tools, name, f'exec {GXX} "$@"')
    (tools / "c++").symlink_to(tools / "g++")  # the same compiler under two names is tried once
    monkeypatch.setenv("PATH", str(tools))
    assert cxx_toolchain.candidates(str(tools / "g++")) == [str(tools / "g++"), "g++-12", "g++-9"]


def test_inductor_default_is_what_inductor_would_run():
    from torch._inductor import config as inductor_config

    with inductor_config.patch({"cpp.cxx": (None, "/opt/some/g++")}):  # (monkeypatch's undo breaks the proxy)
        assert cxx_toolchain.inductor_default() == "/opt/some/g++"
    assert cxx_toolchain.inductor_default() == inductor_config.cpp.cxx[-1] != "/opt/some/g++"
