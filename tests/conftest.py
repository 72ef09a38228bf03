"""Shared pytest setup: makes test helpers importable and builds real nnU-Net models once per session."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture(scope="session")
def nnunet_model_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``nnunet_model_folder(FactorySpec(...)) -> Path``: a trained nnU-Net model folder, built once per spec.

    nnunetv2 (the reference implementation) is a test dependency: without it the tests fail.
    """
    import nnunetv2  # noqa: F401  (a test dependency: missing = failure)
    from nnunet_factory import make_model_folder

    built: dict = {}

    def get(spec) -> Path:
        if spec not in built:
            built[spec] = make_model_folder(tmp_path_factory.mktemp(spec.key), spec)
        return built[spec]

    return get
