"""Helpers for ``bench/fate_inferdpt.py`` (FATE-LLM 2.2.0 InferDPT kit as a baseline).

FATE-LLM's kit is used as a black box: this module only locates and imports
``fate_llm.algo.inferdpt.utils`` and drives ``InferDPTKit`` from a child process, so the
peak memory of building the kit is measured in a clean interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import re
import resource
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

FATE_MODULE = "fate_llm.algo.inferdpt.utils"
WORD_RE = re.compile(r"[A-Za-z]+")
WORD_START = "Ġ"  # byte-level BPE marker for a leading space


def load_fate_utils() -> ModuleType | None:
    """Import ``fate_llm.algo.inferdpt.utils``; fall back to loading the file directly.

    The direct load avoids ``fate_llm``'s package ``__init__`` files should they ever pull
    in dependencies (FATE itself, torch extras) that are not installed here.
    """
    try:
        return importlib.import_module(FATE_MODULE)
    except Exception:  # any failure: try the file itself
        pass
    try:
        spec = importlib.util.find_spec("fate_llm")
    except Exception:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "algo" / "inferdpt" / "utils.py"
    if not path.is_file():
        return None
    file_spec = importlib.util.spec_from_file_location("_fate_inferdpt_utils", path)
    if file_spec is None or file_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(file_spec)
    try:
        file_spec.loader.exec_module(module)
    except Exception:
        return None
    return module


def fate_version() -> str:
    try:
        from importlib.metadata import version

        return version("fate-llm")
    except Exception:
        return "unknown"


def kit_key(token: str) -> str:
    """The key ``InferDPTKit.perturb`` looks up for a ``tokenizer.tokenize`` token."""
    return token[1:] if token and token[0] == " " else token


# ---------------------------------------------------------------- vocabulary rules


def word_start_tokens(vocab: dict[str, int]) -> list[tuple[str, int]]:
    """Tokens ``'Ġ' + w`` with ``w`` purely ASCII-alphabetic (whole words after a space)."""
    return [
        (t, i)
        for t, i in vocab.items()
        if t.startswith(WORD_START) and WORD_RE.fullmatch(t[len(WORD_START) :])
    ]


def rank_primary(vocab: dict[str, int]) -> tuple[list[str], str]:
    """Primary kit rule: word-start alphabetic tokens ranked by English word frequency.

    With ``wordfreq``: descending ``wordfreq.word_frequency(w, "en")`` (case-insensitive,
    so ``Ġthe``/``ĠThe``/``ĠTHE`` are separate entries of equal frequency), ties broken by
    token id (earlier BPE merges first). Without it: token-id order.
    """
    cands = word_start_tokens(vocab)
    try:
        import wordfreq

        freq = {t: wordfreq.word_frequency(t[len(WORD_START) :], "en") for t, _ in cands}
        cands.sort(key=lambda ti: (-freq[ti[0]], ti[1]))
        from importlib.metadata import version

        how = (
            f"wordfreq {version('wordfreq')} `word_frequency(w, 'en')` descending, "
            "ties broken by token id"
        )
    except ImportError:
        cands.sort(key=lambda ti: ti[1])
        how = "token-id order (wordfreq not installed)"
    return [t for t, _ in cands], how


def rank_lowercase(vocab: dict[str, int]) -> list[str]:
    """Sensitivity rule: only lower-case word-start tokens, same frequency ranking."""
    cands = [(t, i) for t, i in word_start_tokens(vocab) if t[len(WORD_START) :].islower()]
    try:
        import wordfreq

        cands.sort(key=lambda ti: (-wordfreq.word_frequency(ti[0][len(WORD_START) :], "en"), ti[1]))
    except ImportError:
        cands.sort(key=lambda ti: ti[1])
    return [t for t, _ in cands]


def all_alpha_tokens(vocab: dict[str, int]) -> list[str]:
    """Sensitivity rule (upper bound for any word kit): every alphabetic token, with or
    without the leading-space marker."""
    return [
        t
        for t in vocab
        if WORD_RE.fullmatch(t[len(WORD_START) :] if t.startswith(WORD_START) else t)
    ]


# ---------------------------------------------------------------- child process


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mib() -> float:
    """Peak RSS of this process image (``VmHWM``, MiB).

    ``getrusage().ru_maxrss`` is not used as the headline number: when a child is spawned
    (vfork + exec) Linux carries the parent's high-water mark into the child's ``maxrss``,
    so a parent holding the model would set its floor. ``VmHWM`` belongs to the exec'd
    image only. Falls back to ``ru_maxrss`` where ``/proc`` is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _maxrss_mib()


def child_main(work: str, n: int, experiments: bool, as_limit: int | None) -> None:
    """Build the kit for the first ``n`` words in ``work``; optionally run the experiments.

    Prints one JSON object on stdout.
    """
    if as_limit:
        resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    import numpy as np
    from transformers import AutoTokenizer

    wd = Path(work)
    utils = load_fate_utils()
    if utils is None:
        raise SystemExit("fate_llm not importable in child")
    tokenizer = AutoTokenizer.from_pretrained(str(wd / "tokenizer"))
    emb = np.load(wd / "embeddings.npy")[:n]
    tokens = json.loads((wd / "tokens.json").read_text())[:n]
    rss_before = _peak_mib()
    t0 = time.perf_counter()
    params = utils.InferDPTKit.make_inferdpt_kit_param(emb, tokens)
    t1 = time.perf_counter()
    kit = utils.InferDPTKit(*params, tokenizer)
    t2 = time.perf_counter()
    res: dict[str, Any] = {
        "n": n,
        "param_s": t1 - t0,
        "init_s": t2 - t1,
        "build_s": t2 - t0,
        "rss_before_build_mib": rss_before,
        "peak_rss_mib": _peak_mib(),
        "ru_maxrss_mib": _maxrss_mib(),
        "embedding_dtype": str(emb.dtype),
        "similarity_table_mib": n * n * emb.dtype.itemsize / 2**20,
    }
    del params
    if experiments:
        res["experiments"] = _experiments(kit, tokenizer, wd, np)
    print(json.dumps(res))


def _skip_stats(kit: Any, tokenizer: Any, texts: list[str]) -> tuple[int, int]:
    total = skipped = 0
    for text in texts:
        for tok in tokenizer.tokenize(text):
            total += 1
            if kit.token_to_vector_dict.get(kit_key(tok), None) is None:
                skipped += 1
    return total, skipped


def _experiments(kit: Any, tokenizer: Any, wd: Path, np: Any) -> dict[str, Any]:
    data = json.loads((wd / "data.json").read_text())
    cqa: list[str] = data["cqa"]
    records: list[dict[str, Any]] = data["records"]
    out: dict[str, Any] = {}

    n_tok, n_skip = _skip_stats(kit, tokenizer, cqa)
    out["cqa"] = {"texts": len(cqa), "tokens": n_tok, "skipped_tokens": n_skip, "runs": {}}
    for eps in data["throughput_eps"]:
        np.random.seed(0)
        t0 = time.perf_counter()
        perturbed = [kit.perturb(q, eps) for q in cqa]
        dt = time.perf_counter() - t0
        out["cqa"]["runs"][str(eps)] = {
            "seconds": dt,
            "tok_per_s": n_tok / dt,
            "unchanged_texts": sum(p == q for p, q in zip(perturbed, cqa)),
            "example": perturbed[0],
        }

    texts = [r["question"] for r in records]
    n_tok, n_skip = _skip_stats(kit, tokenizer, texts)
    rec: dict[str, Any] = {"texts": len(texts), "tokens": n_tok, "skipped_tokens": n_skip}
    # Spans whose every overlapping token skips the mechanism (kit lookup as in perturb()).
    outside = []
    for r in records:
        enc = tokenizer(r["question"], add_special_tokens=False, return_offsets_mapping=True)
        toks = enc.tokens()
        offs = enc["offset_mapping"]
        flags = []
        for sp in r["spans"]:
            over = [t for t, (a, b) in zip(toks, offs) if a < sp["end"] and b > sp["start"]]
            flags.append(all(kit.token_to_vector_dict.get(kit_key(t), None) is None for t in over))
        outside.append(flags)
    rec["span_outside_kit"] = outside
    rec["runs"] = {}
    for eps in data["leak_eps"]:
        np.random.seed(0)
        t0 = time.perf_counter()
        leaked = []
        examples = []
        for i, r in enumerate(records):
            p = kit.perturb(r["question"], eps)
            leaked.append([sp["text"] in p for sp in r["spans"]])
            if i < 2:
                examples.append(p)
        rec["runs"][str(eps)] = {
            "seconds": time.perf_counter() - t0,
            "leaked": leaked,
            "examples": examples,
        }
    out["records"] = rec
    return out


if __name__ == "__main__":  # pragma: no cover - used via run_child
    sys.exit("use bench/fate_inferdpt.py")
