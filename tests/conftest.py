"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The read-only real datasets folder (``../shared/datasets`` next to the repo).

    ``FEDCOT_SHARED_DATASETS`` overrides the location. Tests that need it are skipped when
    it is absent.
    """
    env = os.environ.get("FEDCOT_SHARED_DATASETS")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    if not path.is_dir():
        pytest.skip(
            f"shared datasets not found at {path} "
            "(set FEDCOT_SHARED_DATASETS to the shared/datasets folder)"
        )
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random chat model saved as a transformers folder."""
    from tiny_models import make_tiny_lm

    folder = tmp_path_factory.mktemp("tiny") / "model"
    model, tok = make_tiny_lm(seed=1, chat=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_parties(tmp_path_factory) -> dict[str, str]:
    """Two tiny random models with two different byte-level tokenizers (FedMKT tests)."""
    from mkt_common import make_tiny_parties

    return make_tiny_parties(tmp_path_factory.mktemp("tiny-mkt"))


@pytest.fixture(scope="module")
def rte_folder(tmp_path_factory) -> Path:
    """A tiny RTE-format dataset (train.jsonl, test.jsonl)."""
    from mkt_common import write_rte

    return write_rte(tmp_path_factory.mktemp("rte"))
