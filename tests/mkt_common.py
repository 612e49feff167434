"""Helpers of the FedMKT tests: tiny parties, a tiny RTE dataset and a small config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedcot.mkt.config import MKTConfig


def save_tiny(folder: Path, tok, seed: int) -> str:
    """A tiny random Llama with ``tok`` saved as a transformers folder."""
    from tiny_models import tiny_llama

    tiny_llama(tok, seed, max_positions=1024).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def make_tiny_parties(root: Path) -> dict[str, str]:
    """Two tiny random models with two different byte-level tokenizers."""
    from tiny_models import make_tokenizer

    return {
        "big": save_tiny(root / "big", make_tokenizer(400, chat=False), 1),
        "small": save_tiny(root / "small", make_tokenizer(300, chat=False), 2),
    }


def write_rte(root: Path) -> Path:
    """A tiny RTE-format dataset (train.jsonl with 40 rows, test.jsonl with 6)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 6)):
        rows = []
        for i in range(n):
            x = int(rng.integers(1, 99))
            ent = bool(i % 2)
            rows.append(
                {
                    "premise": f"Maria paid {x} EUR for the rent in {split} case {i}.",
                    "hypothesis": f"Maria paid {x if ent else x + 7} EUR.",
                    "label": "entailment" if ent else "not_entailment",
                    "idx": i,
                }
            )
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def mkt_cfg(tmp_path: Path, parties: dict[str, str], data: Path, **kw) -> MKTConfig:
    """Two rounds, 6 public + 2 × 5 private examples, 2 steps per phase."""
    base = {
        "task": "rte",
        "data": str(data),
        "public_size": 6,
        "private_size": 5,
        "test_limit": 4,
        "server": {"model": parties["big"]},
        "clients": [{"model": parties["small"]}, {"model": parties["small"]}],
        "rounds": 2,
        "top_k": 4,
        "train": {
            "local_steps": 2,
            "server_steps": 2,
            "client_steps": 2,
            "batch_size": 2,
            "lora_r": 4,
            "learning_rate": 1e-3,
        },
        "output_dir": str(tmp_path / "run"),
    }
    base.update(kw)
    return MKTConfig.model_validate(base)


def load_adapter(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def read_adapters(run: Path, round_no: int) -> dict[str, dict[str, np.ndarray]]:
    """Every party's adapter in ``run/rounds/round-N``."""
    folder = run / "rounds" / f"round-{round_no}"
    return {p.name: load_adapter(p) for p in sorted(folder.iterdir()) if p.is_dir()}
