"""Multi-task (label + rationale) fine-tuning on tiny random models."""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch

from fedcot.data.tasks import Example, get_task
from fedcot.errors import ConfigError
from fedcot.train import (
    LengthBucketSampler,
    MultiTaskArguments,
    MultiTaskCollator,
    MultiTaskTrainer,
    SFTItem,
    TrainConfig,
    load_trained,
    measure_matmul_gflops,
    multitask_items,
    render_prompt,
    tokenize_groups,
    tokenize_item,
    train_multitask,
    training_flops_per_token,
)

from tiny_models import make_tiny_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHOICES = ["park", "house", "city", "river", "forest"]


def cqa_examples(n: int, *, rationale: bool = True) -> list[Example]:
    return [
        Example(
            id=f"q{i}",
            question=f"Where would you find thing number {i}?",
            label=CHOICES[i % 5],
            choices=list(CHOICES),
            rationale=f"Thing {i} is usually kept near the {CHOICES[i % 5]}."
            if rationale
            else None,
        )
        for i in range(n)
    ]


def fast_cfg(**kw) -> TrainConfig:
    base = {
        "max_steps": 2,
        "batch_size": 2,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "lora_r": 4,
        "lora_alpha": 8,
        "save_steps": 1000,  # only the final checkpoint
        "eval_each_epoch": False,
    }
    return TrainConfig(**{**base, **kw})


def seq_ce(model, prompt_ids: list[int], target_ids: list[int]) -> float:
    """Mean cross-entropy of ``target_ids`` after ``prompt_ids``, one unpadded sequence."""
    ids = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    p = len(prompt_ids)
    return -sum(float(logp[p - 1 + j, t]) for j, t in enumerate(target_ids)) / len(target_ids)


def hand_kind_losses(model, tok, groups: list[list[SFTItem]]) -> dict[str, float]:
    """Mean sequence CE per kind, tokenized here independently of the library."""
    per: dict[str, list[float]] = {}
    for g in groups:
        for it in g:
            prompt = tok(it.prompt, add_special_tokens=it.add_special_tokens)["input_ids"]
            target = tok(it.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            per.setdefault(it.kind, []).append(seq_ce(model, prompt, target))
    return {k: sum(v) / len(v) for k, v in per.items()}


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


# --------------------------------------------------------------------------------------
# Items and config
# --------------------------------------------------------------------------------------


def test_multitask_items_chat_and_plain():
    _, tok = make_tiny_lm(0)
    task = get_task("cqa")
    exs = cqa_examples(2)
    exs[1].rationale = "  "
    groups = multitask_items(task, exs, tok, chat=True, alpha=0.5)
    assert [[it.kind for it in g] for g in groups] == [["label", "rationale"], ["label"]]
    label, rat = groups[0]
    assert label.prompt != rat.prompt  # the instructions are the task prefixes
    assert label.prompt.endswith("<|im_start|>assistant\n") and not label.add_special_tokens
    assert label.target == "(a) park"
    assert rat.target == "Thing 0 is usually kept near the park. So the answer is (a) park."
    assert (label.prompt, False) == render_prompt(tok, task.prompt(exs[0], chat=True))

    only_label = multitask_items(task, exs, tok, chat=True, alpha=0.0)
    assert [[it.kind for it in g] for g in only_label] == [["label"], ["label"]]
    only_rat = multitask_items(task, exs, tok, chat=True, alpha=1.0)
    assert [[it.kind for it in g] for g in only_rat] == [["rationale"], []]

    nli = get_task("esnli")
    ex = Example(
        id="n", question="A person makes music.", premise="A man plays a guitar.",
        label="entailment", rationale="Playing a guitar is making music.",
    )  # fmt: skip
    ((plain_label, plain_rat),) = multitask_items(nli, [ex], tok, chat=False, alpha=0.5)
    assert plain_label.add_special_tokens and plain_label.prompt.endswith("Answer:")
    assert plain_label.target == " " + nli.answer_text(ex)  # follows "Answer:" like at eval
    assert plain_rat.target.startswith(" Playing a guitar")

    with pytest.raises(ConfigError):
        multitask_items(task, exs, tok, chat=True, alpha=1.5)


def test_train_config_validation():
    cfg = TrainConfig()
    assert cfg.alpha == 0.5 and cfg.method == "lora" and cfg.lora_targets == "all-linear"
    assert all(f.description for f in TrainConfig.model_fields.values())
    for bad in ({"alpha": 1.5}, {"batch_size": 0}, {"nope": 1}, {"lora_targets": []}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


# --------------------------------------------------------------------------------------
# Tokenization, masking, batching
# --------------------------------------------------------------------------------------


def test_prompt_masked_and_left_truncation_keeps_target():
    _, tok = make_tiny_lm(0)
    item = SFTItem(
        prompt="<|im_start|>user\nWhat is two plus three?<|im_end|>\n<|im_start|>assistant\n",
        target="five.",
        kind="label",
    )
    p_ids = tok(item.prompt, add_special_tokens=False)["input_ids"]
    t_ids = tok(item.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    seq = tokenize_item(item, tok, max_length=384)
    assert seq["input_ids"] == p_ids + t_ids
    assert seq["labels"] == [-100] * len(p_ids) + t_ids
    assert seq["labels"][-1] == tok.eos_token_id and seq["kind"] == "label"

    # Too long: the prompt is cut from the left, the target stays whole.
    n = len(t_ids) + 3
    cut = tokenize_item(item, tok, max_length=n)
    assert len(cut["input_ids"]) == n
    assert cut["input_ids"] == p_ids[-3:] + t_ids
    assert cut["labels"] == [-100] * 3 + t_ids

    # A target that alone does not fit keeps its start behind one prompt token.
    long = SFTItem(item.prompt, "five. " * 40, "rationale")
    lt = tokenize_item(long, tok, max_length=16)
    assert len(lt["input_ids"]) == 16 and lt["input_ids"][0] == p_ids[-1]
    assert lt["labels"][0] == -100 and all(x != -100 for x in lt["labels"][1:])

    # Collation: right padding, -100 on prompt and padding, kind ids.
    groups = tokenize_groups([[item, long], [], [item]], tok, max_length=24)
    assert len(groups) == 2  # the empty group is dropped
    batch = MultiTaskCollator(tok.pad_token_id, ["label", "rationale"])(groups)
    assert batch["kind_ids"].tolist() == [0, 1, 0]
    lens = [len(s["input_ids"]) for g in groups for s in g]
    assert batch["input_ids"].shape == (3, max(lens))
    for r, m in enumerate(lens):
        assert batch["attention_mask"][r].tolist() == [1] * m + [0] * (max(lens) - m)
        assert batch["labels"][r, m:].eq(-100).all()
        assert batch["input_ids"][r, m:].eq(tok.pad_token_id).all()
    n_target = int(batch["labels"].ne(-100).sum())
    assert n_target == sum(sum(x != -100 for x in s["labels"]) for g in groups for s in g)

    with pytest.raises(ConfigError, match="no loss weight"):
        MultiTaskCollator(tok.pad_token_id, ["label"])(groups)


# --------------------------------------------------------------------------------------
# The weighted loss
# --------------------------------------------------------------------------------------


def test_weighted_loss_matches_formula(tmp_path):
    model, tok = make_tiny_lm(0)
    task = get_task("cqa")
    exs = cqa_examples(3)
    exs[2].rationale = None  # 3 label sequences, 2 rationale sequences
    groups = multitask_items(task, exs, tok, chat=True, alpha=0.5)
    hand = hand_kind_losses(model, tok, groups)
    assert abs(hand["label"] - hand["rationale"]) > 1e-3  # swapped weights would show

    kinds = ["label", "rationale"]
    batch = MultiTaskCollator(tok.pad_token_id, kinds)(tokenize_groups(groups, tok, 384))
    got = {}
    for alpha in (0.2, 0.8):
        args = MultiTaskArguments(
            output_dir=str(tmp_path / str(alpha)),
            loss_weights={"label": 1 - alpha, "rationale": alpha},
            use_cpu=True,
            report_to="none",
            remove_unused_columns=False,
        )
        trainer = MultiTaskTrainer(model=model, args=args, data_collator=lambda x: x)
        with torch.no_grad():
            loss = trainer.compute_loss(model, dict(batch))
        want = alpha * hand["rationale"] + (1 - alpha) * hand["label"]
        assert float(loss) == pytest.approx(want, rel=1e-5)
        got[alpha] = float(loss)
        # Per-kind losses are collected for the log.
        sums = trainer._kind_sums["eval"]
        assert sums[0][0] == pytest.approx(hand["label"], rel=1e-5)
        assert sums[1][0] == pytest.approx(hand["rationale"], rel=1e-5)
    assert abs(got[0.2] - got[0.8]) > 1e-4


def test_gradient_accumulation_matches_bigger_batch(tmp_path):
    task = get_task("cqa")
    finals = []
    for bs, ga in ((2, 1), (1, 2)):
        model, tok = make_tiny_lm(0)
        groups = multitask_items(task, cqa_examples(4), tok, chat=True, alpha=0.5)
        cfg = fast_cfg(max_steps=1, batch_size=bs, grad_accum=ga, lora_dropout=0.0)
        res = train_multitask(model, tok, groups, cfg, tmp_path / f"{bs}x{ga}", progress=False)
        finals.append((res.losses()[0], adapter_state(res.model)))
    (loss_a, state_a), (loss_b, state_b) = finals
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for k in state_a:
        torch.testing.assert_close(state_a[k], state_b[k], rtol=1e-4, atol=1e-6)


def test_one_joint_forward_per_step_gives_the_weighted_loss(tmp_path):
    """Label and rationale sequences share one forward; the loss is α·L_r + (1 − α)·L_l."""
    model, tok = make_tiny_lm(0)
    task = get_task("cqa")
    exs = cqa_examples(4)
    exs[3].rationale = None  # 4 label sequences, 3 rationale sequences
    groups = multitask_items(task, exs, tok, chat=True, alpha=0.3)
    hand = hand_kind_losses(model, tok, groups)  # LoRA starts as the identity
    rows = []
    model.register_forward_hook(lambda m, args, kwargs, out: rows.append(kwargs["input_ids"]),
                                with_kwargs=True)  # fmt: skip
    cfg = fast_cfg(alpha=0.3, max_steps=1, batch_size=4, lora_dropout=0.0)
    res = train_multitask(model, tok, groups, cfg, tmp_path / "run", progress=False)
    assert len(rows) == 1 and rows[0].shape[0] == 7  # one forward, every sequence in it
    assert res.losses()[0] == pytest.approx(0.3 * hand["rationale"] + 0.7 * hand["label"], 1e-5)
    assert res.losses("loss_label")[0] == pytest.approx(hand["label"], rel=1e-5)
    assert res.losses("loss_rationale")[0] == pytest.approx(hand["rationale"], rel=1e-5)


# --------------------------------------------------------------------------------------
# Length-grouped batches, throughput
# --------------------------------------------------------------------------------------


def test_length_bucket_sampler_orders_and_is_seeded():
    lengths = [50, 10, 31, 12, 49, 30, 11, 48, 29, 13]
    sampler = LengthBucketSampler(lengths, bucket_size=3, seed=5)
    buckets = sampler.buckets()
    assert sorted(i for b in buckets for i in b) == list(range(10)) and len(sampler) == 10
    assert [len(b) for b in buckets] == [3, 3, 3, 1]  # the remainder comes last
    assert [lengths[i] for i in buckets[-1]] == [10]  # ... and holds the shortest
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in buckets[:3])
    assert spans == [(11, 13), (29, 31), (48, 50)]
    assert list(sampler) == [i for b in buckets for i in b]
    # Seeded: the same seed and epoch give the same order; the order changes across epochs.
    assert LengthBucketSampler(lengths, 3, seed=5).buckets() == buckets
    orders = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        orders.add(tuple(sampler))
    assert len(orders) > 1
    with pytest.raises(ValueError):
        LengthBucketSampler(lengths, 0)


def test_length_grouping_cuts_padding_and_throughput_is_reported(tmp_path):
    task = get_task("cqa")
    exs = cqa_examples(8)
    for i, ex in enumerate(exs):  # rationales of very different lengths
        ex.rationale = " ".join([f"Thing {i} is kept near the {ex.label}."] * (1 + 2 * i))
    results = {}
    for grouped in (False, True):
        model, tok = make_tiny_lm(0)
        groups = multitask_items(task, exs, tok, chat=True, alpha=0.5)
        cfg = fast_cfg(max_steps=4, batch_size=2, group_by_length=grouped)
        results[grouped] = train_multitask(
            model, tok, groups, cfg, tmp_path / str(grouped), progress=False, matmul_gflops=50.0
        )
    seqs = tokenize_groups(groups, tok, 384)
    n_tokens = sum(len(s["input_ids"]) for g in seqs for s in g)
    n_target = sum(sum(x != -100 for x in s["labels"]) for g in seqs for s in g)
    for res in results.values():  # one epoch: every sequence once
        assert (res.tokens, res.target_tokens) == (n_tokens, n_target)
        assert res.tokens_per_second == pytest.approx(res.tokens / res.step_seconds, rel=1e-2)
        assert 0 < res.target_tokens_per_second < res.tokens_per_second
        assert res.matmul_gflops == 50.0 and res.flops_per_token > 0
        want = res.tokens_per_second * res.flops_per_token / 50e9
        assert res.matmul_share == pytest.approx(want, rel=1e-2, abs=1e-4)
        logged = res.losses("tokens_per_second")
        assert len(logged) == 4 and all(x > 0 for x in logged)
        assert res.losses("train_tokens") == [n_tokens]
    assert results[True].padded_tokens < results[False].padded_tokens
    assert results[True].padding_share < results[False].padding_share


def test_training_flops_and_matmul_rate():
    model, _ = make_tiny_lm(0)
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    model.requires_grad_(True)
    assert training_flops_per_token(model) == 6 * n  # forward 2N, backward 4N
    model.requires_grad_(False)
    assert training_flops_per_token(model) == 4 * n  # frozen: no weight gradients
    rng = torch.get_rng_state()
    assert measure_matmul_gflops(seconds=0.05, size=128) > 0
    assert torch.equal(torch.get_rng_state(), rng)


# --------------------------------------------------------------------------------------
# Training, saving, reloading, evaluating
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """LoRA-trained tiny model memorising 4 examples; the base saved first."""
    root = tmp_path_factory.mktemp("lora")
    model, tok = make_tiny_lm(0)
    with torch.no_grad():  # random tiny logits are too flat for LoRA alone to move far
        model.lm_head.weight.mul_(10)
    base_dir = root / "base"
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    task = get_task("cqa")
    exs = cqa_examples(4)
    groups = multitask_items(task, exs, tok, chat=True, alpha=0.5)
    before = hand_kind_losses(model, tok, groups)
    cfg = fast_cfg(
        max_steps=20, batch_size=4, learning_rate=2e-2, lora_r=8, lora_alpha=16, lora_dropout=0.0
    )
    res = train_multitask(
        model, tok, groups, cfg, root / "run", eval_groups=groups[:2], progress=False
    )
    return {"res": res, "tok": tok, "base_dir": base_dir, "task": task, "exs": exs,
            "groups": groups, "before": before}  # fmt: skip


def test_lora_training_reduces_loss(trained):
    res = trained["res"]
    assert res.steps == 20 and res.resumed_from is None
    after = hand_kind_losses(res.model, trained["tok"], trained["groups"])
    for kind in ("label", "rationale"):
        assert after[kind] < trained["before"][kind] - 1.5, (kind, trained["before"], after)
    logged = res.losses()
    assert logged[-1] < logged[0]
    # Per-kind losses reach the log history; eval ran once at the end.
    assert len(res.losses("loss_label")) == len(res.losses("loss_rationale")) == 20
    assert len(res.losses("eval_loss")) == 1 and res.losses("eval_loss_rationale")
    assert (res.output_dir / "checkpoints" / "checkpoint-20").is_dir()


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")  # peft reads a deprecated prop
def test_adapter_reloads_with_plain_peft(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    res = trained["res"]
    assert (res.adapter_dir / "adapter_config.json").is_file()
    assert (res.adapter_dir / "tokenizer_config.json").is_file()
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(trained["base_dir"]), res.adapter_dir
    ).eval()
    tok = trained["tok"]
    ids = torch.tensor([tok(trained["groups"][0][1].prompt)["input_ids"]])
    with torch.no_grad():
        want = res.model(input_ids=ids).logits
        torch.testing.assert_close(reloaded(input_ids=ids).logits, want)
        model2, tok2 = load_trained(trained["base_dir"], res.adapter_dir)
        torch.testing.assert_close(model2(input_ids=ids).logits, want)
        merged, _ = load_trained(trained["base_dir"], res.adapter_dir, merge=True)
        torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
    assert tok2.chat_template == tok.chat_template


def test_evaluate_trained_model(trained):
    from transformers import AutoModelForCausalLM

    from fedcot.evaluation import evaluate
    from fedcot.models.backends.transformers import TransformersBackend

    task, exs, tok = trained["task"], trained["exs"], trained["tok"]
    res = trained["res"]
    out = evaluate(
        TransformersBackend(res.model, tok, batch_size=3), task, exs, method="likelihood",
        progress=False,
    )  # fmt: skip
    assert out.n == 4 and all(len(p.scores) == 5 for p in out.predictions)
    base = AutoModelForCausalLM.from_pretrained(trained["base_dir"]).eval()
    before = evaluate(
        TransformersBackend(base, tok), task, exs, method="likelihood", progress=False
    )

    def gold_score(result):
        return sum(p.scores[ex.choices.index(ex.label)] for p, ex in zip(result.predictions, exs))

    assert gold_score(out) > gold_score(before) + 1.0  # training made the answers likelier


# --------------------------------------------------------------------------------------
# Resume, full fine-tuning, determinism
# --------------------------------------------------------------------------------------


def test_resume_from_checkpoint(tmp_path):
    task = get_task("cqa")
    run = tmp_path / "run"

    def fresh():
        model, tok = make_tiny_lm(0)
        return model, tok, multitask_items(task, cqa_examples(4), tok, chat=True, alpha=0.5)

    model, tok, groups = fresh()
    first = train_multitask(
        model, tok, groups, fast_cfg(max_steps=4, save_steps=2), run, resume=True, progress=False
    )
    assert first.resumed_from is None and first.steps == 4  # nothing to resume: fresh
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    model, tok, groups = fresh()
    second = train_multitask(
        model, tok, groups, fast_cfg(max_steps=6, save_steps=2), run, resume=True, progress=False
    )
    assert second.resumed_from is not None and second.resumed_from.endswith("checkpoint-4")
    assert second.steps == 6
    steps = [h["step"] for h in second.log_history if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]  # the history of the first run is kept


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    task = get_task("cqa")
    cfg = fast_cfg(max_steps=6, save_steps=2, save_total_limit=3, lora_dropout=0.1)
    model, tok = make_tiny_lm(0)
    groups = multitask_items(task, cqa_examples(4), tok, chat=True, alpha=0.5)
    full = train_multitask(model, tok, groups, cfg, tmp_path / "run", progress=False)
    want = adapter_state(full.model)
    # "Kill" the run after step 4: its last checkpoint never got written completely.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "checkpoint-6")
    (tmp_path / "run" / "checkpoints" / "checkpoint-6").mkdir()
    model, tok = make_tiny_lm(0)
    again = train_multitask(model, tok, groups, cfg, tmp_path / "run", resume=True, progress=False)
    assert again.resumed_from.endswith("checkpoint-4") and again.steps == 6
    got = adapter_state(again.model)
    for k in want:
        torch.testing.assert_close(got[k], want[k])


def test_full_finetuning_with_label_only_loss(tmp_path):
    model, tok = make_tiny_lm(0)
    original = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    groups = multitask_items(get_task("cqa"), cqa_examples(4), tok, chat=True, alpha=0.5)
    cfg = fast_cfg(method="full", alpha=0.0, learning_rate=1e-3)
    res = train_multitask(model, tok, groups, cfg, tmp_path / "full", progress=False)
    assert res.steps == 2
    assert not torch.equal(res.model.model.layers[0].mlp.up_proj.weight, original)
    # alpha = 0: rationale sequences were dropped before training.
    assert res.losses("loss_label") and not res.losses("loss_rationale")
    assert (res.adapter_dir / "config.json").is_file()
    reloaded, _ = load_trained(None, res.adapter_dir)
    ids = torch.tensor([tok(groups[0][0].prompt)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, res.model(input_ids=ids).logits)


def test_deterministic_for_a_seed(tmp_path):
    task = get_task("cqa")
    runs = []
    for i in range(2):
        model, tok = make_tiny_lm(0)
        groups = multitask_items(task, cqa_examples(4), tok, chat=True, alpha=0.5)
        cfg = fast_cfg(max_steps=3, lora_dropout=0.2, seed=7)
        res = train_multitask(model, tok, groups, cfg, tmp_path / f"r{i}", progress=False)
        runs.append((res.losses(), adapter_state(res.model)))
    assert runs[0][0] == runs[1][0] and all(math.isfinite(x) for x in runs[0][0])
    for k in runs[0][1]:
        assert torch.equal(runs[0][1][k], runs[1][1][k])
    # The caller's global RNG is left as it was.
    model, tok = make_tiny_lm(0)
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    train_multitask(model, tok, groups, fast_cfg(max_steps=1), tmp_path / "r3", progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_errors(tmp_path):
    model, tok = make_tiny_lm(0)
    task = get_task("cqa")
    with pytest.raises(ConfigError, match="no training items"):
        train_multitask(model, tok, [], fast_cfg(), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="no training items"):
        train_multitask(model, tok, [[], []], fast_cfg(), tmp_path / "a", progress=False)
    no_rat = multitask_items(task, cqa_examples(3, rationale=False), tok, chat=True, alpha=0.5)
    with pytest.raises(ConfigError) as err:
        train_multitask(model, tok, no_rat, fast_cfg(alpha=0.5), tmp_path / "b", progress=False)
    assert "alpha = 0" in str(err.value.hint)
    odd = [[SFTItem("p", "t", "encode")]]
    with pytest.raises(ConfigError, match="no loss weight"):
        train_multitask(model, tok, odd, fast_cfg(), tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match="LoRA") as err:
        train_multitask(
            model,
            tok,
            no_rat,
            fast_cfg(alpha=0.0, lora_targets=["no_such_proj"]),
            tmp_path / "d",
            progress=False,
        )
    assert "q_proj" in str(err.value.hint)


def test_eval_loss_is_the_loss_of_the_kinds_present():
    import torch

    from fedcot.train.multitask import eval_mean

    weights = [0.3, 0.7]  # label, rationale (alpha = 0.7)
    label_only = eval_mean(torch.tensor(0.3 * 2.0), {0: torch.tensor(2.0)}, weights)
    assert float(label_only) == pytest.approx(2.0)  # not (1 - alpha) × 2.0
    both = eval_mean(torch.tensor(0.3 * 2.0 + 0.7 * 1.0), {0: 2.0, 1: 1.0}, weights)
    assert float(both) == pytest.approx(0.3 * 2.0 + 0.7 * 1.0)
