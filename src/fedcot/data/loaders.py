"""Loading datasets into :class:`~fedcot.data.tasks.Example` lists.

Readers for JSON Lines / JSON / CSV files, Hugging Face datasets, and the folders in
``shared/datasets``: the Distilling-step-by-step layout (cqa, svamp, esnli, anli1, with PaLM
rationales), GSM8K (``#### n`` answers) and RTE. Every malformed row raises a
:class:`~fedcot.errors.DataError` that names the file and the 1-based line.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcot.data.tasks import (
    Example,
    MathTask,
    MultipleChoiceTask,
    NLITask,
    Task,
    get_task,
    has_answer_marker,
)
from fedcot.errors import ConfigError, DataError, require

__all__ = [
    "DSS_DATASETS",
    "FieldMapping",
    "default_mapping",
    "load_csv",
    "load_dataset",
    "load_dss",
    "load_hf",
    "load_jsonl",
    "write_jsonl",
]

logger = logging.getLogger(__name__)


@dataclass
class FieldMapping:
    """Which source column fills which :class:`Example` field.

    ``choices`` names a column holding a list (JSON list, or a ``|``-separated string in
    CSV), or several columns separated by commas (``"A,B,C,D"``). ``id=None`` takes an
    ``id``/``uid``/``ID`` column when there is one, else a generated id.
    """

    question: str = "question"
    label: str = "answer"
    choices: str | None = None
    premise: str | None = None
    id: str | None = None
    rationale: str | None = None


def default_mapping(task: Task, row: dict[str, Any] | None = None) -> FieldMapping:
    """The usual column names for ``task``, adapted to the columns of ``row`` when given.

    Also reads files written by :func:`write_jsonl` (``label``/``rationale`` columns).
    """
    keys = set(row) if row is not None else set()

    def pick(*names: str) -> str:
        for n in names:
            if n in keys:
                return n
        return names[0]

    if isinstance(task, NLITask):
        m = FieldMapping(question=pick("hypothesis", "question"), label=pick("label", "answer"))
        m.premise = "premise"
    else:
        m = FieldMapping(question=pick("question", "input"), label=pick("answer", "label"))
    if isinstance(task, MultipleChoiceTask):
        m.choices = "choices"
    if row is not None and row.get("rationale") is not None:
        m.rationale = "rationale"
    return m


# --------------------------------------------------------------------------------------
# Row conversion
# --------------------------------------------------------------------------------------

_ID_COLUMNS = ("id", "uid", "ID")
# GSM8K calculator annotations "<<16-3-4=9>>" are tool markup, not part of the explanation.
_CALC_RE = re.compile(r"<<[^<>]*>>")


def _fail(where: str, what: str, hint: str) -> DataError:
    return DataError(f"{where}: {what}", hint=hint)


def _split_choices(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    s = str(value).strip()
    if s.startswith("["):
        loaded = json.loads(s)
        if not isinstance(loaded, list):
            raise ValueError("choices are not a list")
        return [str(v) for v in loaded]
    return [c.strip() for c in s.split("|")]


def _row_to_example(
    row: dict[str, Any],
    task: Task,
    mapping: FieldMapping,
    where: str,
    default_id: str,
    hint: str,
) -> Example:
    """Turn one source row into an :class:`Example`; raise DataError naming ``where``."""
    used: set[str] = set()

    def get(col: str, what: str) -> Any:
        if col not in row or row[col] is None:
            cols = ", ".join(sorted(str(k) for k in row)) or "none"
            raise _fail(where, f"missing field {col!r} ({what}); the row has: {cols}", hint)
        used.add(col)
        return row[col]

    question = get(mapping.question, "question")
    if not isinstance(question, str):
        raise _fail(where, f"field {mapping.question!r} is not a string", hint)
    raw_label = get(mapping.label, "label")

    choices: list[str] = []
    if mapping.choices:
        cols = [c.strip() for c in mapping.choices.split(",")]
        try:
            if len(cols) == 1:
                choices = _split_choices(get(cols[0], "choices"))
            else:
                choices = [str(get(c, "choice")) for c in cols]
        except (ValueError, json.JSONDecodeError) as e:
            raise _fail(where, f"cannot read the choices: {e}", hint) from None

    premise = None
    if mapping.premise:
        premise = str(get(mapping.premise, "premise"))

    if mapping.id:
        ex_id = str(get(mapping.id, "id"))
    else:
        ex_id = default_id
        for c in _ID_COLUMNS:
            if row.get(c) is not None:
                ex_id = str(row[c])
                used.add(c)
                break

    rationale: str | None = None
    if mapping.rationale:
        r = get(mapping.rationale, "rationale")
        rationale = str(r).strip() or None

    ex = Example(id=ex_id, question=question, label="", choices=choices, premise=premise)

    # GSM8K-style answers carry their own rationale: "<steps>\n#### 72".
    rationale_label: str | None = None
    solution = False
    if isinstance(task, MathTask) and isinstance(raw_label, str) and "####" in raw_label:
        steps, final = raw_label.rsplit("####", 1)
        raw_label = final
        if rationale is None:
            rationale = _CALC_RE.sub("", steps).strip() or None
            solution = rationale is not None

    try:
        ex.label = task.normalize_label(raw_label, ex)
    except ValueError as e:
        raise _fail(where, str(e), hint) from None

    if "rationale_label" in row and row["rationale_label"] is not None:
        used.add("rationale_label")
        try:
            rationale_label = task.normalize_label(row["rationale_label"], ex)
        except ValueError as e:
            raise _fail(where, f"rationale_label: {e}", hint) from None
    elif solution:
        rationale_label = ex.label  # the human GSM8K solution ends in the gold answer
    elif rationale is not None and has_answer_marker(rationale):
        rationale_label = task.extract_answer(rationale, ex)

    # Everything not mapped stays available in meta ("spans", explanations, indices...).
    for k, v in row.items():
        if k in used or k is None:
            continue
        if k == "meta" and isinstance(v, dict):
            ex.meta.update(v)
        else:
            ex.meta[str(k)] = v
    ex.rationale = rationale
    ex.rationale_label = rationale_label
    return ex


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")


def _convert_rows(
    rows: Iterable[tuple[str, dict[str, Any]]],
    task: Task,
    mapping: FieldMapping | None,
    id_prefix: str,
    limit: int | None,
    source: str,
) -> list[Example]:
    """Convert (where, row) pairs into examples (at most ``limit``)."""
    _check_limit(limit)
    out: list[Example] = []
    if limit == 0:
        return out
    hint = (
        "fix or remove that row, or pass a FieldMapping that names the right columns"
        if mapping is not None
        else "fix or remove that row, or pass a FieldMapping(question=..., label=...)"
    )
    for i, (where, row) in enumerate(rows):
        # Default columns are resolved per row: optional ones (rationale) may come and go.
        m = mapping if mapping is not None else default_mapping(task, row)
        out.append(_row_to_example(row, task, m, where, f"{id_prefix}-{i}", hint))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{source}: no rows", hint="the file is empty; check the path and split")
    return out


def _id_prefix(path: Path) -> str:
    # "gsm8k/test.jsonl" -> "gsm8k-test": a bare split name alone would collide across sets.
    if path.stem.lower() in {"train", "test", "val", "valid", "validation", "dev"}:
        return f"{path.parent.name}-{path.stem}"
    return path.stem


def _open_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such file", hint="check the path (and the split name)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})", hint="re-save the file as UTF-8") from None


def _iter_json_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for a JSON Lines file, or for a file holding one JSON array of objects."""
    text = _open_text(path)
    hint = "each line must be one JSON object; fix or remove that line"
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}, line {e.lineno}: invalid JSON ({e.msg})", hint="fix the JSON"
            ) from None
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict):
                raise _fail(f"{path}, item {i}", "expected a JSON object", hint)
            yield f"{path}, item {i}", item
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise _fail(where, f"invalid JSON ({e.msg})", hint) from None
        if not isinstance(row, dict):
            raise _fail(where, f"expected a JSON object, got {type(row).__name__}", hint)
        yield where, row


def load_jsonl(
    path: str | Path,
    task: Task | str,
    mapping: FieldMapping | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Load a JSON Lines file (or a JSON array of objects) as examples of ``task``.

    ``mapping=None`` uses the task's usual columns (:func:`default_mapping`). Columns that
    are not mapped are kept in ``meta``. ``limit`` keeps the first N rows.
    """
    task = _as_task(task)
    path = Path(path)
    return _convert_rows(_iter_json_rows(path), task, mapping, _id_prefix(path), limit, str(path))


def _iter_csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    text = _open_text(path)
    reader = csv.DictReader(text.splitlines(keepends=True))
    if reader.fieldnames is None:
        return
    prev_end = reader.line_num  # the header's last line
    for row in reader:
        start = prev_end + 1  # a quoted cell may span lines: report where the row begins
        prev_end = reader.line_num
        where = f"{path}, line {start}"
        if None in row:
            raise _fail(
                where, "the row has more fields than the header", "fix the quoting of that row"
            )
        if not any((v or "").strip() for v in row.values()):
            continue
        yield where, row


def load_csv(
    path: str | Path,
    task: Task | str,
    mapping: FieldMapping | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Load a CSV file with a header row as examples of ``task`` (see :func:`load_jsonl`)."""
    task = _as_task(task)
    path = Path(path)
    return _convert_rows(_iter_csv_rows(path), task, mapping, _id_prefix(path), limit, str(path))


def write_jsonl(examples: Iterable[Example], path: str | Path) -> Path:
    """Write examples as JSON Lines that :func:`load_jsonl` reads back unchanged.

    Columns: id, question, label, and choices/premise/rationale/rationale_label when set;
    ``meta["spans"]`` becomes a top-level ``spans`` column and the rest of ``meta`` a
    ``meta`` object.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            row: dict[str, Any] = {"id": ex.id, "question": ex.question, "label": ex.label}
            if ex.choices:
                row["choices"] = list(ex.choices)
            if ex.premise is not None:
                row["premise"] = ex.premise
            if ex.rationale is not None:
                row["rationale"] = ex.rationale
            if ex.rationale_label is not None:
                row["rationale_label"] = ex.rationale_label
            meta = dict(ex.meta)
            if "spans" in meta:
                row["spans"] = meta.pop("spans")
            if meta:
                row["meta"] = meta
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# --------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------


def load_hf(
    name_or_path: str,
    task: Task | str,
    split: str,
    mapping: FieldMapping | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Load a split with the ``datasets`` library (extra ``hf``).

    A local path is read with ``load_from_disk`` (works offline); anything else is a hub
    name for ``datasets.load_dataset``.
    """
    require("datasets", "hf")
    import datasets  # optional dependency

    task = _as_task(task)
    source = f"hf:{name_or_path}"
    try:
        if Path(name_or_path).exists():
            ds: Any = datasets.load_from_disk(name_or_path)
            if isinstance(ds, datasets.DatasetDict):
                names = list(ds.keys())
                key = next((s for s in _split_candidates(split) if s in ds), None)
                if key is None:
                    raise DataError(
                        f"{source}: no split {split!r}", hint=f"available splits: {names}"
                    )
                ds = ds[key]
        else:
            ds = datasets.load_dataset(name_or_path, split=split)
    except DataError:
        raise
    except Exception as e:  # the library raises many types; all mean "could not load"
        raise DataError(
            f"{source}: could not load split {split!r} ({type(e).__name__}: {e})",
            hint="check the name and split; offline, pass a path saved with save_to_disk",
        ) from e
    rows = ((f"{source}, row {i}", dict(r)) for i, r in enumerate(ds, 1))
    prefix = re.sub(r"[^\w.-]+", "-", Path(name_or_path).name or name_or_path)
    return _convert_rows(rows, task, mapping, f"{prefix}-{split}", limit, source)


# --------------------------------------------------------------------------------------
# Distilling-step-by-step folders (cqa, svamp, esnli, anli1)
# --------------------------------------------------------------------------------------


def _cut_mc(raw: str) -> tuple[str, str | None]:
    # cqa: the completion runs on into an invented "Q:" turn.
    head = raw.split("Q:", 1)[0]
    if "So the answer is" not in head:
        return head, None
    rationale, tail = head.split("So the answer is", 1)
    return rationale, tail


def _cut_svamp(raw: str) -> tuple[str, str | None]:
    head = raw.split("Q:", 1)[0]
    if "The answer is" not in head:
        return head, None
    rationale, tail = head.split("The answer is", 1)
    return rationale, tail


def _cut_esnli(raw: str) -> tuple[str, str | None]:
    rationale = raw.split("Answer:", 1)[0]
    if "Answer: " not in raw:
        return rationale, None
    return rationale, raw.split("Answer: ", 1)[1].split("Premise", 1)[0]


def _cut_anli(raw: str) -> tuple[str, str | None]:
    head = raw.split("Premise:", 1)[0]
    if "So the answer is" not in head:
        return head, None
    rationale, tail = head.split("So the answer is", 1)
    return rationale, tail.strip().removesuffix(".")


@dataclass(frozen=True)
class _DSSSpec:
    task: str
    block: int  # rationale rows per llm/{split}_CoT_{k}.json file
    mapping: FieldMapping
    cut: Callable[[str], tuple[str, str | None]]


#: The DSS datasets this loader knows: name -> task, rows per rationale file, columns, cutter.
DSS_DATASETS: dict[str, _DSSSpec] = {
    "cqa": _DSSSpec("cqa", 1000, FieldMapping("question", "answer", "choices", id="id"), _cut_mc),
    "svamp": _DSSSpec("svamp", 500, FieldMapping("input", "label"), _cut_svamp),
    "esnli": _DSSSpec(
        "esnli", 5500, FieldMapping("hypothesis", "label", premise="premise"), _cut_esnli
    ),
    "anli1": _DSSSpec(
        "anli1", 5000, FieldMapping("hypothesis", "label", premise="premise", id="uid"), _cut_anli
    ),
}

_SPLIT_ALIASES = {
    "valid": ("valid", "val", "validation", "dev"),
    "val": ("val", "valid", "validation", "dev"),
    "validation": ("validation", "valid", "val", "dev"),
    "dev": ("dev", "valid", "val", "validation"),
}


def _split_candidates(split: str) -> tuple[str, ...]:
    s = split.strip().lower()
    return _SPLIT_ALIASES.get(s, (s,))


def _available_splits(folder: Path, name: str) -> list[str]:
    return sorted(p.stem[len(name) + 1 :] for p in folder.glob(f"{name}_*.json"))


def load_dss(
    root: str | Path,
    name: str,
    split: str,
    *,
    rationales: bool = True,
    limit: int | None = None,
) -> list[Example]:
    """Load a Distilling-step-by-step dataset folder ``{root}/{name}`` with PaLM rationales.

    Inputs come from ``{name}_{split}.json`` (JSON Lines); rationale row i of
    ``llm/{split}_CoT_{k}.json`` belongs to example ``k*B + i``. Completions are cut as the
    DSS release does and parsed into ``rationale``/``rationale_label``. ``"dev"`` and
    ``"validation"`` mean ``"valid"``. With ``rationales=False`` no rationale file is read.
    """
    _check_limit(limit)
    root = Path(root)
    spec = DSS_DATASETS.get(name)
    if spec is None:
        raise DataError(
            f"{root / name}: not a known DSS dataset {name!r}",
            hint=f"known DSS datasets: {', '.join(DSS_DATASETS)}; for other files use load_jsonl",
        )
    folder = root / name
    if not folder.is_dir():
        raise DataError(
            f"{folder}: no such dataset folder", hint="point root at the shared/datasets folder"
        )
    split_key = next(
        (s for s in _split_candidates(split) if (folder / f"{name}_{s}.json").is_file()), None
    )
    if split_key is None:
        raise DataError(
            f"{folder}: no split {split!r}",
            hint=f"available splits: {', '.join(_available_splits(folder, name)) or 'none'}",
        )
    task = get_task(spec.task)
    path = folder / f"{name}_{split_key}.json"
    rows = list(_iter_json_rows(path))
    n_total = len(rows)
    examples = _convert_rows(rows, task, spec.mapping, f"{name}-{split_key}", limit, str(path))
    if name == "svamp":
        # The gold equation ("( 10.0 * 45.0 )") stays available next to its value.
        for (_, row), ex in zip(rows, examples, strict=False):
            ex.meta["equation"] = row.get("label")
    if rationales:
        _attach_dss_rationales(folder, split_key, spec, task, examples, n_total)
    return examples


def _attach_dss_rationales(
    folder: Path, split: str, spec: _DSSSpec, task: Task, examples: list[Example], n_total: int
) -> None:
    """Read just the rationale files that cover ``examples`` and fill the rationale fields."""
    n_files = math.ceil(n_total / spec.block)
    needed = math.ceil(len(examples) / spec.block)
    hint = "pass rationales=False to load the inputs without teacher rationales"
    for k in range(needed):
        path = folder / "llm" / f"{split}_CoT_{k}.json"
        if not path.is_file():
            raise DataError(f"{path}: rationale file is missing", hint=hint)
        try:
            outs = json.loads(_open_text(path))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})", hint=hint) from None
        # Row alignment relies on every file but the last holding exactly B rows.
        expected = spec.block if k < n_files - 1 else n_total - k * spec.block
        if not isinstance(outs, list) or len(outs) != expected:
            got = len(outs) if isinstance(outs, list) else type(outs).__name__
            raise DataError(
                f"{path}: expected a list of {expected} completions, got {got}",
                hint="the rationale files do not match the inputs; " + hint,
            )
        for i, raw in enumerate(outs):
            idx = k * spec.block + i
            if idx >= len(examples):
                break
            ex = examples[idx]
            if not isinstance(raw, str):
                raise DataError(f"{path}, item {i + 1}: expected a string", hint=hint)
            rationale, tail = spec.cut(raw)
            ex.rationale = rationale.strip() or None
            ex.rationale_label = task.extract_answer(tail, ex) if tail else None
            ex.meta["teacher_answer"] = tail.strip() if tail else None


# --------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------


def _as_task(task: Task | str) -> Task:
    return task if isinstance(task, Task) else get_task(task)


def _load_file(
    path: Path, task: Task, mapping: FieldMapping | None, limit: int | None
) -> list[Example]:
    if path.suffix.lower() == ".csv":
        return load_csv(path, task, mapping, limit)
    return load_jsonl(path, task, mapping, limit)


_FILE_SUFFIXES = (".jsonl", ".json", ".csv")


def _find_split_file(folder: Path, split: str) -> Path | None:
    def find(names: Iterable[str]) -> Path | None:
        for n in names:
            for suf in _FILE_SUFFIXES:
                p = folder / f"{n}{suf}"
                if p.is_file():
                    return p
        return None

    found = find(_split_candidates(split))
    if found is None and split.strip().lower() == "test":
        # Some sets ship no labelled test split (SuperGLUE RTE): evaluate on validation.
        found = find(_SPLIT_ALIASES["val"])
        if found is not None:
            logger.warning("%s has no 'test' split; using %s instead", folder, found.name)
    return found


def load_dataset(
    source: str | Path,
    task: Task | str,
    split: str = "test",
    *,
    limit: int | None = None,
    mapping: FieldMapping | None = None,
    rationales: bool = True,
) -> list[Example]:
    """Load examples from any supported source.

    ``source`` is one of: a DSS folder (``.../shared/datasets/cqa``); the datasets root
    (the task name picks the folder); a folder with ``{split}.jsonl`` files (GSM8K, RTE;
    ``"test"`` falls back to ``val`` with a warning where there is no test file); a
    ``.jsonl``/``.json``/``.csv`` file; or ``"hf:NAME"``.
    """
    task_obj = _as_task(task)
    if isinstance(source, str) and source.startswith("hf:"):
        return load_hf(source[3:], task_obj, split, mapping, limit)
    path = Path(source)
    if path.is_file():
        return _load_file(path, task_obj, mapping, limit)
    if path.is_dir():
        if path.name in DSS_DATASETS and any(path.glob(f"{path.name}_*.json")):
            dss_task = get_task(DSS_DATASETS[path.name].task)
            if dss_task.kind != task_obj.kind or getattr(dss_task, "labels", None) != getattr(
                task_obj, "labels", None
            ):
                raise ConfigError(
                    f"{path} holds a {dss_task.name!r} dataset, which does not fit task "
                    f"{task_obj.name!r}",
                    hint=f"use task {dss_task.name!r}",
                )
            return load_dss(path.parent, path.name, split, rationales=rationales, limit=limit)
        sub = path / task_obj.name
        if sub.is_dir():
            return load_dataset(
                sub, task_obj, split, limit=limit, mapping=mapping, rationales=rationales
            )
        split_file = _find_split_file(path, split)
        if split_file is None:
            # A DSS-style folder of an unknown name: "{name}_{split}.json" without rationales.
            split_file = next(
                (
                    path / f"{path.name}_{s}.json"
                    for s in _split_candidates(split)
                    if (path / f"{path.name}_{s}.json").is_file()
                ),
                None,
            )
        if split_file is not None:
            return _load_file(split_file, task_obj, mapping, limit)
        raise DataError(
            f"{path}: no {split!r} split for task {task_obj.name!r} in this folder",
            hint="expected {split}.jsonl/.json/.csv, a DSS folder, or a sub-folder named "
            "after the task",
        )
    raise DataError(
        f"{path}: no such file or folder",
        hint="pass a dataset folder, a .jsonl/.json/.csv file, or 'hf:NAME'",
    )


def read_text_rows(
    path: str | Path, keep_blank: bool = False
) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(1-based line number, row) for each non-blank line of a ``.txt`` file (the line) or a
    JSONL file (the parsed object). Bad JSON or a non-object is a :class:`DataError` that
    names the file and line. With ``keep_blank``, a blank line of a ``.txt`` file is
    yielded as ``""`` (so a caller can report it)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"input file not found: {p}", hint="check the path")
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                if keep_blank and p.suffix.lower() == ".txt" and line.strip("\n"):
                    yield lineno, ""
                continue
            if p.suffix.lower() == ".txt":
                yield lineno, line.rstrip("\n")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{p}, line {lineno}: not valid JSON ({exc.msg})",
                    hint="one JSON object per line",
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{p}, line {lineno}: expected a JSON object")
            yield lineno, row
