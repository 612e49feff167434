"""Config loading, overrides and validation messages."""

from __future__ import annotations

import pytest

from fedcot.config import (
    BackendConfig,
    DemoConfig,
    EvalConfig,
    dump_config,
    load_config,
    parse_override,
)
from fedcot.errors import ConfigError
from fedcot.models.backends import GenerationParams


def test_defaults_are_valid():
    cfg = load_config(EvalConfig)
    assert cfg.model.model == "smollm2-135m-instruct"
    assert cfg.generation.max_new_tokens == 32
    assert load_config(DemoConfig).teacher.model == "qwen2.5-coder-0.5b-instruct"


def test_toml_yaml_and_precedence(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'task = "svamp"\nlimit = 10\n[model]\nbatch_size = 4\n'
        '[generation]\nmax_new_tokens = 64\nstop = ["\\n"]\n'
    )
    yml = tmp_path / "run.yaml"
    yml.write_text(
        "task: svamp\nlimit: 10\nmodel: {batch_size: 4}\n"
        'generation:\n  max_new_tokens: 64\n  stop: ["\\n"]\n'
    )
    a, b = load_config(EvalConfig, toml), load_config(EvalConfig, yml)
    assert a == b
    assert a.task == "svamp" and a.limit == 10 and a.model.batch_size == 4
    assert a.generation.stop == ("\n",)
    # --set beats the file, named flags beat --set; None means "flag not given".
    c = load_config(
        EvalConfig,
        toml,
        ["limit=20", "generation.temperature=0.7", "model.model=gemma3-270m"],
        {"limit": 30, "task": None},
    )
    assert c.limit == 30 and c.task == "svamp"
    assert c.generation.temperature == 0.7 and c.model.model == "gemma3-270m"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("generation.max_new_tokens=0", "generation.max_new_tokens"),
        ("generation.temperature=-1", "generation.temperature"),
        ("limit=0", "limit"),
        ("method=guess", "method"),
        ("model.batch_size=many", "model.batch_size"),
        ("model.kind=openai", "model"),
        ("typo_field=1", "typo_field"),
        ("generation.stop=['']", "generation.stop"),
    ],
)
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, None, [override])
    assert field in str(info.value)
    assert "hint" in str(info.value)


def test_unknown_field_is_called_unknown(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("modle: x\n")
    with pytest.raises(ConfigError, match=r"modle: unknown field"):
        load_config(EvalConfig, p)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(EvalConfig, tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("task = \n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(EvalConfig, bad)
    ini = tmp_path / "x.ini"
    ini.write_text("a=1")
    with pytest.raises(ConfigError, match="unsupported config format"):
        load_config(EvalConfig, ini)
    lst = tmp_path / "l.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level"):
        load_config(EvalConfig, lst)


def test_override_parsing():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("x=true") == (["x"], True)
    assert parse_override("s=[a, b]") == (["s"], ["a", "b"])
    assert parse_override("u=http://h:1/v1") == (["u"], "http://h:1/v1")
    for bad in ("novalue", "=3", "a..b=1"):
        with pytest.raises(ConfigError):
            parse_override(bad)


def test_openai_needs_url_and_roundtrip():
    with pytest.raises(ConfigError, match="base_url is required"):
        load_config(EvalConfig, None, ["model.kind=openai"])
    cfg = load_config(
        EvalConfig, None, ["model.kind=openai", "model.base_url=http://127.0.0.1:9/v1"]
    )
    assert isinstance(cfg.model, BackendConfig)
    import yaml

    assert EvalConfig.model_validate(yaml.safe_load(dump_config(cfg))) == cfg


def test_generation_params_validation():
    assert GenerationParams(stop="x").stop == ("x",)
    assert GenerationParams().greedy
    with pytest.raises(ValueError):
        GenerationParams(top_p=0)
    with pytest.raises(ValueError):
        GenerationParams(unknown=1)  # type: ignore[call-arg]


def test_example_distill_configs_are_valid():
    from pathlib import Path

    from fedcot.cot.config import FedCoTConfig

    folder = Path(__file__).resolve().parents[1] / "examples"
    paths = sorted(folder.glob("distill-*.toml"))
    assert len(paths) >= 2
    for path in paths:
        cfg = load_config(FedCoTConfig, path)
        assert cfg.train.alpha == 0.5


def test_eval_and_distill_score_multiple_choice_candidates_alike():
    """`fedcot eval` and `fedcot distill` score a model on the same candidate strings."""
    from fedcot.config import EvalConfig
    from fedcot.cot.config import FedCoTConfig
    from fedcot.data.tasks import Example, get_task

    ex = Example("1", "Where?", "a shelf", ["a shelf", "the sea", "a box"])
    ev, di = EvalConfig(), FedCoTConfig()
    assert ev.answer_style == di.answer_style == "text"
    eval_task = get_task("cqa", answer_style=ev.answer_style)
    distill_task = get_task(di.task, answer_style=di.answer_style)
    assert eval_task.candidates(ex) == distill_task.candidates(ex) == ex.choices


def test_distill_eval_cot_gets_a_cot_budget_and_refuses_likelihood():
    from fedcot.cot.config import FedCoTConfig
    from fedcot.data.tasks import COT_MAX_NEW_TOKENS

    assert FedCoTConfig(eval_cot=True).eval_generation.max_new_tokens == COT_MAX_NEW_TOKENS
    chosen = FedCoTConfig(eval_cot=True, eval_generation={"max_new_tokens": 64})
    assert chosen.eval_generation.max_new_tokens == 64
    assert FedCoTConfig().eval_generation.max_new_tokens == 32
    with pytest.raises(ValueError, match="eval_cot"):
        FedCoTConfig(eval_cot=True, eval_method="likelihood")
