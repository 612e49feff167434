"""Run configurations: pydantic models loaded from TOML or YAML, overridable from the CLI.

A config file gives the defaults of a run; ``--set key.sub=value`` flags (and the named CLI
flags of each command) override single fields. Any invalid value is rejected with a
:class:`~fedcot.errors.ConfigError` that names the field.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from fedcot.data.loaders import check_fields
from fedcot.data.tasks import COT_MAX_NEW_TOKENS
from fedcot.errors import ConfigError
from fedcot.models.backends import make_backend
from fedcot.models.backends.base import GenerationParams
from fedcot.privacy.perturb import PerturbConfig
from fedcot.strict import StrictModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

C = TypeVar("C", bound=BaseModel)


def _checked_fields(value: dict[str, str]) -> dict[str, str]:
    try:
        return check_fields(value)
    except ConfigError as exc:
        raise ValueError(f"{exc.message} ({exc.hint})") from None


#: ``{field: column}`` of a run's data (a ``[fields]`` table; ``--field question=query``).
DataFields = Annotated[dict[str, str], AfterValidator(_checked_fields)]


def data_fields() -> Any:
    """The ``fields`` entry of a config: columns to read, next to its ``data`` source."""
    return Field(
        default_factory=dict,
        description="data columns by field, e.g. {question = 'query'}; others auto-detected",
    )


class BackendConfig(StrictModel):
    """Who generates: an in-process model, a llama.cpp GGUF, or an OpenAI-compatible URL."""

    kind: Literal["transformers", "openai", "llamacpp", "replay"] = "transformers"
    model: str = "smollm2-135m-instruct"
    base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint, e.g. http://host:8000/v1"
    )
    api_key_env: str = "OPENAI_API_KEY"
    batch_size: int = Field(8, ge=1, le=512)
    max_concurrency: int = Field(8, ge=1, le=1024)
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0, le=20)

    @model_validator(mode="after")
    def _url_for_openai(self) -> BackendConfig:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("base_url is required when kind = 'openai'")
        return self

    def build(self):
        """Construct the backend this config describes."""
        if self.kind == "transformers":
            return make_backend("transformers", self.model, batch_size=self.batch_size)
        if self.kind == "openai":
            return make_backend(
                "openai",
                self.model,
                base_url=self.base_url,
                api_key_env=self.api_key_env,
                max_concurrency=self.max_concurrency,
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
        if self.kind == "replay":
            raise ConfigError(
                "the replay teacher is built by 'fedcot distill' from the run's dataset",
                hint="use kind = 'replay' as the server of a distill run with strategy = 'none'",
            )
        return make_backend("llamacpp", self.model)


class EvalConfig(StrictModel):
    """``fedcot eval``: score a model on a task's split."""

    model: BackendConfig = Field(default_factory=BackendConfig)
    task: str = "cqa"
    data: str = "../shared/datasets"
    fields: DataFields = data_fields()
    split: str = "test"
    limit: int | None = Field(None, ge=1)
    method: Literal["generate", "likelihood"] = "generate"
    answer_style: Literal["text", "letter"] = Field(
        "text",
        description="multiple choice: candidates are the choice texts ('text') or "
        "'(c) choice text' ('letter'); the same default as fedcot distill, so both score a "
        "model the same way",
    )
    chat: bool | None = Field(
        None, description="chat prompts; None = when the model has a template"
    )
    fewshot: int = Field(0, ge=0, le=32)
    cot: bool = False
    generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(max_new_tokens=32)
    )
    output: Path | None = Field(None, description="per-example predictions (JSONL)")
    seed: int = 0

    @model_validator(mode="after")
    def _cot_budget(self) -> EvalConfig:
        """A chain of thought needs room: without an explicit max_new_tokens, --cot gets
        the CoT budget instead of the 32 tokens of a bare answer."""
        explicit = "generation" in self.model_fields_set and (
            "max_new_tokens" in self.generation.model_fields_set
        )
        if self.cot and not explicit:
            self.generation = self.generation.model_copy(
                update={"max_new_tokens": COT_MAX_NEW_TOKENS}
            )
        return self


class DemoConfig(StrictModel):
    """``fedcot demo``: the whole FedCoT pipeline on the embedded defaults."""

    student: BackendConfig = Field(default_factory=BackendConfig)
    teacher: BackendConfig = Field(
        default_factory=lambda: BackendConfig(model="qwen2.5-coder-0.5b-instruct", batch_size=8)
    )
    records: int = Field(32, ge=2, le=10000, description="private training records")
    test_records: int = Field(48, ge=1, le=10000, description="held-out records to evaluate")
    privacy: PerturbConfig = Field(default_factory=PerturbConfig)
    seed: int = 0
    generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(max_new_tokens=80),
        description="the teacher's generation parameters (rationales)",
    )
    eval_cot: bool = Field(
        True,
        description="score the student by its chain of thought (the rationale task it "
        "learns); false: by a bare answer (the label task)",
    )
    eval_calculator: bool = Field(
        True,
        description="redo the arithmetic of the student's chain of thought exactly before "
        "reading its answer: what is scored is the plan the student learned",
    )
    eval_generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(max_new_tokens=64)
    )
    train_steps: int = Field(24, ge=1, description="LoRA steps of the student")
    learning_rate: float = Field(5e-4, gt=0, description="LoRA learning rate of the student")
    alpha: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="weight of the rationale loss. The demo scores the rationale task, and at "
        "0.5 the 135M student mostly answers the step-by-step instruction with a bare number, "
        "the label task's form (docs/benchmarks.md, rationale weight α)",
    )
    filter: bool = Field(
        True,
        description="train the rationale task only on decoded rationales that reach the "
        "record's answer (the client knows it); the others teach a wrong plan",
    )
    output_dir: Path = Path("runs/demo")


# -- loading -----------------------------------------------------------------------------


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}", hint="check the path passed to --config")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif p.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(
                f"unsupported config format '{p.suffix}' ({p})", hint="use a .toml or .yaml file"
            )
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot parse {p}: {exc}", hint="fix the syntax error above") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a table/mapping at the top level")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` → (["a", "b"], 3). Values are read as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' has no '='", hint="write --set key.sub=value")
    key, raw = item.split("=", 1)
    parts = [k.strip() for k in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"override '{item}' has an empty key", hint="write --set key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _set_path(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for k in parts[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[parts[-1]] = value


def _format_errors(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        field = ".".join(str(x) for x in err["loc"]) or "(top level)"
        got = err.get("input")
        got_s = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {field}: {msg}{got_s}")
    return ConfigError(
        f"invalid configuration ({source}):\n" + "\n".join(lines),
        hint="fix the field(s) named above in the file or the --set flags",
    )


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    values: Mapping[str, Any] | None = None,
) -> C:
    """Build a config of type ``cls`` from a file, ``--set`` overrides and CLI values.

    Precedence: ``values`` (named CLI flags; ``None`` means "not given") over ``overrides``
    over the file over the model's defaults.
    """
    data: dict[str, Any] = read_config_file(path) if path else {}
    for item in overrides:
        parts, value = parse_override(item)
        _set_path(data, parts, value)
    for key, value in (values or {}).items():
        if value is not None:
            _set_path(data, key.split("."), value)
    source = str(path) if path else "command line"
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _format_errors(exc, source) from None


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (written into run folders)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
