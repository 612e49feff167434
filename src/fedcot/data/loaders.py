"""Loading datasets into :class:`~fedcot.data.tasks.Example` lists.

Readers for JSON Lines / JSON / CSV / TSV files, Hugging Face datasets, and the folders in
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
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    "FIELD_KEYS",
    "PASSAGE_COLUMNS",
    "FieldMapping",
    "check_fields",
    "default_mapping",
    "load_csv",
    "load_dataset",
    "load_dss",
    "load_hf",
    "load_jsonl",
    "parse_field_flags",
    "write_jsonl",
]

logger = logging.getLogger(__name__)


@dataclass
class FieldMapping:
    """Which source column fills which :class:`Example` field.

    ``choices`` names a column holding a list (JSON list, a ``|``-separated string, or one
    string with markers: ``"(A) x (B) y"``, ``"A) x B) y"``, ``"A. x B. y"``), or several
    columns separated by commas (``"A,B,C,D"``). ``premise`` is the NLI premise, or the
    passage/context of other tasks. ``id=None`` takes an ``id``/``uid``/``ID`` column when
    there is one, else a generated id. From the CLI or a config file, name columns with
    ``--field question=query`` or a ``[fields]`` table instead (see :func:`check_fields`).
    """

    question: str = "question"
    label: str = "answer"
    choices: str | None = None
    premise: str | None = None
    id: str | None = None
    rationale: str | None = None


#: A mapping argument: a full :class:`FieldMapping`, or ``{field: column}`` overrides of the
#: auto-detected columns (the ``--field`` flags and ``[fields]`` table), or ``None``.
ColumnMapping = FieldMapping | Mapping[str, str] | None

#: The keys of ``--field KEY=COLUMN`` and of a config's ``[fields]`` table.
FIELD_KEYS: tuple[str, ...] = ("question", "label", "choices", "premise", "rationale", "id")
_FIELD_ALIASES = {
    "answer": "label",
    "passage": "premise",
    "context": "premise",
    "hypothesis": "question",
    "options": "choices",
}
#: Columns auto-detected as the passage/context of a non-NLI task (first present wins).
PASSAGE_COLUMNS: tuple[str, ...] = (
    "passage", "context", "premise", "paragraph", "article", "document", "story",
)  # fmt: skip
_VALID_KEYS = "question, label (answer), choices, premise (passage, context), rationale, id"


def check_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    """``{field: column}`` with aliases resolved (``passage`` -> ``premise``).

    Raises :class:`ConfigError` naming the valid keys for an unknown field key, or for an
    empty column name.
    """
    out: dict[str, str] = {}
    for key, column in fields.items():
        k = str(key).strip().lower()
        name = _FIELD_ALIASES.get(k, k)
        if name not in FIELD_KEYS:
            raise ConfigError(
                f"unknown data field {key!r}",
                hint=f"valid keys: {_VALID_KEYS}; e.g. --field question=query",
            )
        if not isinstance(column, str) or not column.strip():
            raise ConfigError(
                f"data field {key!r} needs a column name", hint=f"write --field {k}=COLUMN"
            )
        out[name] = column.strip()
    return out


def parse_field_flags(items: Iterable[str]) -> dict[str, str]:
    """Repeated ``--field KEY=COLUMN`` flags -> checked ``{field: column}``."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, column = item.partition("=")
        if not sep:
            raise ConfigError(
                f"--field {item!r} has no '='", hint="write --field KEY=COLUMN, e.g. question=query"
            )
        pairs[key.strip()] = column
    return check_fields(pairs)


def default_mapping(task: Task, row: dict[str, Any] | None = None) -> FieldMapping:
    """The usual column names for ``task``, adapted to the columns of ``row`` when given.

    Also reads files written by :func:`write_jsonl` (``label``/``rationale`` columns). A
    non-NLI task takes a passage from the first of :data:`PASSAGE_COLUMNS` in ``row``.
    """
    keys = set(row) if row is not None else set()

    def pick(*names: str) -> str:
        for n in names:
            if n in keys:
                return n
        return names[0]

    if isinstance(task, NLITask):
        m = FieldMapping(question=pick("hypothesis", "question"), label=pick("label", "answer"))
        m.premise = pick("premise", "passage", "context")
    else:
        m = FieldMapping(question=pick("question", "input"), label=pick("answer", "label"))
        present = [c for c in PASSAGE_COLUMNS if row is not None and row.get(c) is not None]
        m.premise = present[0] if present else None
    if isinstance(task, MultipleChoiceTask):
        m.choices = pick("choices", "options")
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


def _column_hint(key: str) -> str:
    return (
        f"fix or remove that row, or name the column: --field {key}=COLUMN "
        f'(config file: [fields] {key} = "COLUMN")'
    )


# Choice markers of one-string choices: "(A) x (B) y", "A) x B) y", "A. x B. y".
_MARKER_STYLES = (r"\({}\)\s*", r"{}\)\s+", r"{}\.\s+")


def _marker_spans(s: str, style: str, letters: str) -> list[re.Match[str]]:
    """Markers for letters[0], letters[1], ... in order; the first opens the string, every
    later one follows whitespace (so "plan B." inside a word or sentence is no marker)."""
    found: list[re.Match[str]] = []
    for i, letter in enumerate(letters):
        lead = "^" if i == 0 else r"(?<=\s)"
        m = re.compile(lead + style.format(letter)).search(s, found[-1].end() if found else 0)
        if m is None:
            break
        found.append(m)
    return found


def _split_lettered(s: str) -> list[str] | None:
    """Split ``"(A) foo (B) bar"`` (or ``A) ..``, ``A. ..``; lower case too) by its markers;
    ``None`` unless at least two markers A, B, ... appear in order with text after each."""
    for style in _MARKER_STYLES:
        for letters in (string.ascii_uppercase, string.ascii_lowercase):
            found = _marker_spans(s, style, letters)
            if len(found) < 2:
                continue
            ends = [m.start() for m in found[1:]] + [len(s)]
            parts = [s[m.end() : e].strip().rstrip(",;").strip() for m, e in zip(found, ends)]
            if all(parts):
                return parts
    return None


def _split_choices(value: Any) -> list[str]:
    """Choices from a list, a JSON list string, ``"x|y|z"`` or ``"(A) x (B) y"``."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    s = str(value).strip()
    if s.startswith("["):
        loaded = json.loads(s)
        if not isinstance(loaded, list):
            raise ValueError("choices are not a list")
        return [str(v) for v in loaded]
    if "|" not in s:
        lettered = _split_lettered(s)
        if lettered is not None:
            return lettered
    return [c.strip() for c in s.split("|")]


class _RowReader:
    """Reads the columns of one source row (errors name ``where``) and records which it read."""

    __slots__ = ("row", "used", "where")

    def __init__(self, row: dict[str, Any], where: str) -> None:
        self.row = row
        self.where = where
        self.used: set[str] = set()

    def get(self, col: str, what: str) -> Any:
        """The value of column ``col`` (the ``what`` field); DataError when missing or None."""
        row = self.row
        if col not in row or row[col] is None:
            cols = ", ".join(sorted(str(k) for k in row)) or "none"
            key = "choices" if what == "choice" else what
            msg = f"missing field {col!r} ({what}); the row has: {cols}"
            raise _fail(self.where, msg, _column_hint(key))
        self.used.add(col)
        return row[col]


def _read_choices(reader: _RowReader, columns: str, hint: str) -> list[str]:
    """The choices from one list column or from several comma-separated columns."""
    cols = [c.strip() for c in columns.split(",")]
    try:
        if len(cols) == 1:
            return _split_choices(reader.get(cols[0], "choices"))
        return [str(reader.get(c, "choice")) for c in cols]
    except (ValueError, json.JSONDecodeError) as e:
        raise _fail(reader.where, f"cannot read the choices: {e}", hint) from None


def _read_id(reader: _RowReader, column: str | None, default_id: str) -> str:
    """The mapped id column, else the first of :data:`_ID_COLUMNS` present, else the default."""
    if column:
        return str(reader.get(column, "id"))
    row = reader.row
    for c in _ID_COLUMNS:
        if row.get(c) is not None:
            reader.used.add(c)
            return str(row[c])
    return default_id


def _split_math_solution(
    task: Task, raw_label: Any, rationale: str | None
) -> tuple[Any, str | None, bool]:
    """(label, rationale, whether the rationale is the row's own solution) of a row.

    GSM8K-style answers carry their own rationale: ``"<steps>\\n#### 72"``. For a math task
    the label becomes what follows ``####``; the steps (calculator markup removed) become the
    rationale unless the row has one already. Other rows pass through unchanged.
    """
    solution = False
    if isinstance(task, MathTask) and isinstance(raw_label, str) and "####" in raw_label:
        steps, final = raw_label.rsplit("####", 1)
        raw_label = final
        if rationale is None:
            rationale = _CALC_RE.sub("", steps).strip() or None
            solution = rationale is not None
    return raw_label, rationale, solution


def _read_rationale_label(
    reader: _RowReader,
    task: Task,
    ex: Example,
    rationale: str | None,
    solution: bool,
    hint: str,
) -> str | None:
    """The answer the rationale reaches: the ``rationale_label`` column, the gold label of a
    row's own solution, or the answer marked in the rationale; else None."""
    row = reader.row
    if "rationale_label" in row and row["rationale_label"] is not None:
        reader.used.add("rationale_label")
        try:
            return task.normalize_label(row["rationale_label"], ex)
        except ValueError as e:
            raise _fail(reader.where, f"rationale_label: {e}", hint) from None
    if solution:
        return ex.label  # the human GSM8K solution ends in the gold answer
    if rationale is not None and has_answer_marker(rationale):
        return task.extract_answer(rationale, ex)
    return None


def _keep_unmapped_columns(ex: Example, row: dict[str, Any], used: set[str]) -> None:
    """Every column not read stays available in ``ex.meta`` ("spans", explanations...).

    A ``meta`` column holding a dict is merged into it.
    """
    for k, v in row.items():
        if k in used or k is None:
            continue
        if k == "meta" and isinstance(v, dict):
            ex.meta.update(v)
        else:
            ex.meta[str(k)] = v


def _row_to_example(
    row: dict[str, Any],
    task: Task,
    mapping: FieldMapping,
    where: str,
    default_id: str,
    hint: str,
) -> Example:
    """Turn one source row into an :class:`Example`; raise DataError naming ``where``."""
    reader = _RowReader(row, where)
    question = reader.get(mapping.question, "question")
    if not isinstance(question, str):
        raise _fail(where, f"field {mapping.question!r} is not a string", hint)
    raw_label = reader.get(mapping.label, "label")
    choices = _read_choices(reader, mapping.choices, hint) if mapping.choices else []
    premise = str(reader.get(mapping.premise, "premise")) if mapping.premise else None
    ex_id = _read_id(reader, mapping.id, default_id)
    rationale: str | None = None
    if mapping.rationale:
        rationale = str(reader.get(mapping.rationale, "rationale")).strip() or None

    ex = Example(id=ex_id, question=question, label="", choices=choices, premise=premise)
    raw_label, rationale, solution = _split_math_solution(task, raw_label, rationale)
    try:
        ex.label = task.normalize_label(raw_label, ex)
    except ValueError as e:
        raise _fail(where, str(e), hint) from None
    rationale_label = _read_rationale_label(reader, task, ex, rationale, solution, hint)

    _keep_unmapped_columns(ex, row, reader.used)
    ex.rationale = rationale
    ex.rationale_label = rationale_label
    return ex


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")


_NOT_PASSAGE = re.compile(r"rationale|explanation|reason|solution|answer", re.I)


def _looks_like_passage(column: str, value: Any, question: str) -> bool:
    """An unused text column at least as long as the question, a dozen words or more."""
    if not isinstance(value, str) or _NOT_PASSAGE.search(column):
        return False
    return len(value.split()) >= 12 and len(value) >= len(question)


def _warn_unused_passage(ex: Example, source: str) -> None:
    for column, value in ex.meta.items():
        if _looks_like_passage(column, value, ex.question):
            logger.warning(
                "%s: column %r looks like a passage but is not part of the prompt (kept in "
                "meta only); to use it: --field premise=%s (config file: [fields] premise = "
                '"%s")',
                source,
                column,
                column,
                column,
            )


def _convert_rows(
    rows: Iterable[tuple[str, dict[str, Any]]],
    task: Task,
    mapping: ColumnMapping,
    id_prefix: str,
    limit: int | None,
    source: str,
) -> list[Example]:
    """Convert (where, row) pairs into examples (at most ``limit``)."""
    _check_limit(limit)
    out: list[Example] = []
    if limit == 0:
        return out
    fixed = mapping if isinstance(mapping, FieldMapping) else None
    overrides = check_fields(mapping) if mapping and fixed is None else {}
    hint = _column_hint("label")
    for i, (where, row) in enumerate(rows):
        # Default columns are resolved per row: optional ones (rationale) may come and go.
        m = fixed or _overridden(default_mapping(task, row), overrides)
        out.append(_row_to_example(row, task, m, where, f"{id_prefix}-{i}", hint))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{source}: no rows", hint="the file is empty; check the path and split")
    if fixed is None:
        _warn_unused_passage(out[0], source)
    return out


def _overridden(m: FieldMapping, overrides: Mapping[str, str]) -> FieldMapping:
    for name, column in overrides.items():
        setattr(m, name, column)
    return m


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
    mapping: ColumnMapping = None,
    limit: int | None = None,
) -> list[Example]:
    """Load a JSON Lines file (or a JSON array of objects) as examples of ``task``.

    ``mapping=None`` uses the task's usual columns (:func:`default_mapping`); a dict such as
    ``{"question": "query"}`` overrides some of them; a :class:`FieldMapping` fixes them all.
    Columns that are not mapped are kept in ``meta``. ``limit`` keeps the first N rows.
    """
    task = _as_task(task)
    path = Path(path)
    return _convert_rows(_iter_json_rows(path), task, mapping, _id_prefix(path), limit, str(path))


def _csv_dialect(path: Path) -> str:
    # TSV: tab-separated, quoted as CSV is where a cell needs it (what pandas and csv write).
    return "excel-tab" if path.suffix.lower() == ".tsv" else "excel"


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line where the row begins, row) for each non-blank row of a CSV/TSV file."""
    text = _open_text(path)
    reader = csv.DictReader(text.splitlines(keepends=True), dialect=_csv_dialect(path))
    if reader.fieldnames is None:
        return
    prev_end = reader.line_num  # the header's last line
    for row in reader:
        start = prev_end + 1  # a quoted cell may span lines: report where the row begins
        prev_end = reader.line_num
        if None in row:
            raise _fail(
                f"{path}, line {start}",
                "the row has more fields than the header",
                "fix the quoting of that row",
            )
        if not any((v or "").strip() for v in row.values()):
            continue
        yield start, row


def _iter_csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for lineno, row in _csv_rows(path):
        yield f"{path}, line {lineno}", row


def load_csv(
    path: str | Path,
    task: Task | str,
    mapping: ColumnMapping = None,
    limit: int | None = None,
) -> list[Example]:
    """Load a CSV file with a header row as examples of ``task`` (see :func:`load_jsonl`).

    A ``.tsv`` file is read as tab-separated values.
    """
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
    mapping: ColumnMapping = None,
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


def _load_file(path: Path, task: Task, mapping: ColumnMapping, limit: int | None) -> list[Example]:
    if path.suffix.lower() in (".csv", ".tsv"):
        return load_csv(path, task, mapping, limit)
    return load_jsonl(path, task, mapping, limit)


_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


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
    mapping: ColumnMapping = None,
    rationales: bool = True,
) -> list[Example]:
    """Load examples from any supported source.

    ``source`` is one of: a DSS folder (``.../shared/datasets/cqa``); the datasets root
    (the task name picks the folder); a folder with ``{split}.jsonl`` files (GSM8K, RTE;
    ``"test"`` falls back to ``val`` with a warning where there is no test file); a
    ``.jsonl``/``.json``/``.csv``/``.tsv`` file; or ``"hf:NAME"``. ``mapping``: see
    :func:`load_jsonl` (a DSS folder has fixed columns and ignores it, with a warning).
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
            if mapping:
                logger.warning("%s is a DSS folder with fixed columns; ignoring fields", path)
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
            hint=f"expected {split}.jsonl/.json/.csv/.tsv, a DSS folder, or a sub-folder "
            f"named {task_obj.name!r} after the task",
        )
    raise DataError(
        f"{path}: no such file or folder",
        hint="pass a dataset folder, a .jsonl/.json/.csv/.tsv file, or 'hf:NAME'",
    )


def read_text_rows(
    path: str | Path, keep_blank: bool = False
) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(1-based line number, row) for each non-blank line of a ``.txt`` file (the line) or a
    JSONL file (the parsed object), or each row of a ``.csv``/``.tsv`` file with a header
    (a dict of its cells). Bad JSON or a non-object is a :class:`DataError` that
    names the file and line. With ``keep_blank``, a blank line of a ``.txt`` file is
    yielded as ``""`` (so a caller can report it)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"input file not found: {p}", hint="check the path")
    if p.suffix.lower() in (".csv", ".tsv"):
        yield from _csv_rows(p)
        return
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
