"""The PDSS encoder-decoder strategy on a tiny random model (no downloads)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

import fedcot.train.multitask as multitask
from fedcot.cot.encoder_decoder import (
    DECODE_KIND,
    ENCODE_KIND,
    METADATA_FILE,
    UNAVAILABLE,
    EncoderDecoder,
    EncoderDecoderConfig,
    decode_prompt,
    encode_prompt,
    encoder_decoder_items,
)
from fedcot.data.synthetic import generate_private_records
from fedcot.data.tasks import get_task
from fedcot.errors import BackendError, ConfigError
from fedcot.models.backends.base import Completion
from fedcot.privacy.mechanisms import ExponentialMechanism
from fedcot.privacy.perturb import PerturbConfig, Perturber
from fedcot.privacy.space import EmbeddingSpace
from fedcot.train.multitask import TrainConfig, render_prompt

from tiny_models import hash_embedder, make_tiny_lm

WORDS = ["alice", "bob", "paid", "the", "rent", "for", "and", "tax", "carol", "money"]
TASK = get_task("private-records")


def make_perturber(seed: int = 5) -> Perturber:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(WORDS), 8)).astype(np.float32)
    space = EmbeddingSpace(list(WORDS), vectors, embed_fn=hash_embedder(8))
    return Perturber(ExponentialMechanism(space), strategy="exponential", epsilon=3.0, seed=seed)


def stub_rationale(text: str) -> str:
    return "Because " + " ".join(text.split()[:3])


class Ask:
    """A deterministic stand-in for the server; records every call."""

    def __init__(self, empty_for: tuple[int, ...] = ()) -> None:
        self.calls: list[list[str]] = []
        self.empty_for = empty_for

    def __call__(self, texts: list[str]) -> list[str]:
        self.calls.append(list(texts))
        return ["" if i in self.empty_for else stub_rationale(t) for i, t in enumerate(texts)]


def small_cfg(**kw) -> EncoderDecoderConfig:
    train = TrainConfig(max_steps=3, batch_size=2, max_length=256, logging_steps=1)
    return EncoderDecoderConfig(
        public_limit=6, train=train, max_new_tokens_encode=10, max_new_tokens_decode=10, **kw
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("encdec")
    model, tok = make_tiny_lm(seed=0)
    base = root / "base"  # the pristine base: fit wraps `model` with LoRA in place
    model.save_pretrained(base)
    tok.save_pretrained(base)
    examples = generate_private_records(7)  # public_limit = 6 keeps the first six
    ask = Ask()
    seen: list = []
    real_train = multitask.train_multitask

    def spy(model, tokenizer, groups, cfg, output_dir, **kw):
        seen.append((groups, kw))
        return real_train(model, tokenizer, groups, cfg, output_dir, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(multitask, "train_multitask", spy)
        ed = EncoderDecoder.fit(
            model,
            tok,
            TASK,
            examples,
            make_perturber(),
            ask,
            small_cfg(),
            root / "ed",
            chat=True,
            progress=False,
        )
    return SimpleNamespace(
        ed=ed, tok=tok, base=base, out=root / "ed", examples=examples[:6], ask=ask, seen=seen
    )


def test_training_items_hold_the_right_prompts_and_targets(trained):
    originals = [TASK.input_text(ex) for ex in trained.examples]
    perturbed = [p.text for p in make_perturber().perturb(originals)]
    assert len(trained.seen) == 1
    groups, kw = trained.seen[0]
    assert kw["loss_weights"] == {ENCODE_KIND: 0.5, DECODE_KIND: 0.5}
    assert len(groups) == 6
    for group, orig, pert in zip(groups, originals, perturbed):
        enc, dec = group
        assert enc.kind == ENCODE_KIND and dec.kind == DECODE_KIND
        assert enc.prompt == render_prompt(trained.tok, encode_prompt(orig, chat=True))[0]
        assert enc.target == pert != orig
        assert not enc.add_special_tokens  # chat template text carries its own markers
        expect = decode_prompt(pert, stub_rationale(pert), orig, chat=True)
        assert dec.prompt == render_prompt(trained.tok, expect)[0]
        assert dec.target == stub_rationale(orig)
    # The encode targets keep the line layout of the originals.
    assert [p.count("\n") for p in perturbed] == [o.count("\n") for o in originals]


def test_ask_is_called_twice_with_originals_then_perturbed(trained):
    originals = [TASK.input_text(ex) for ex in trained.examples]
    groups, _ = trained.seen[0]
    assert trained.ask.calls == [originals, [g[0].target for g in groups]]


def test_metadata_and_training_result(trained):
    meta = json.loads((trained.out / METADATA_FILE).read_text())
    assert meta["formal_dp_guarantee"] is False
    assert meta["n_public"] == 6 and meta["n_decode_items"] == 6
    assert meta["steps"] == 3 == trained.ed.train_result.steps
    assert meta["mechanism"]["strategy"] == "exponential"
    assert meta["mechanism"]["epsilon"] == 3.0
    assert meta["chat"] is True and meta["task"] == TASK.name
    assert (trained.out / meta["adapter_dir"] / "adapter_config.json").is_file()
    assert EncoderDecoderConfig.model_validate(meta["config"]) == trained.ed.cfg


def test_encode_decode_and_reload(trained):
    ed = trained.ed
    originals = [TASK.input_text(ex) for ex in trained.examples[:3]]
    stand_ins = ed.encode(originals, seed=1)
    assert len(stand_ins) == 3 and all(isinstance(s, str) and s for s in stand_ins)
    assert not set(stand_ins) & set(originals)
    assert ed.encode(originals, seed=1) == stand_ins  # seeded sampling
    rationales = ["Because the rent was paid."] * 3
    decoded = ed.decode(stand_ins, rationales, originals)
    assert len(decoded) == 3 and all(isinstance(d, str) for d in decoded)
    assert ed.stats.encoded == 6 and ed.stats.decoded == 3

    adapter = trained.ed.train_result.adapter_dir
    again = EncoderDecoder.load(trained.base, adapter)
    assert again.chat is True and again.cfg == ed.cfg  # from encoder_decoder.json
    assert again.decode(stand_ins, rationales, originals) == decoded
    assert again.encode(originals, seed=1) == stand_ins
    with pytest.raises(ValueError, match="differ in length"):
        ed.decode(stand_ins, rationales[:2], originals)


class FakeGenerate:
    """Replaces the backend's generate: returns queued outputs, records prompts and seeds."""

    def __init__(self, *rounds: list[str]) -> None:
        self.rounds = list(rounds)
        self.calls: list[tuple[list, int | None]] = []

    def __call__(self, prompts, params=None):
        self.calls.append((list(prompts), params.seed))
        texts = self.rounds.pop(0)
        assert len(texts) == len(prompts)
        return [Completion(t, "stop", 1, 1) for t in texts]


@pytest.fixture(scope="module")
def untrained():
    model, tok = make_tiny_lm(seed=3)
    return model, tok


def test_encode_never_falls_back_to_the_original(untrained):
    model, tok = untrained
    ed = EncoderDecoder(model, tok, chat=True, cfg=EncoderDecoderConfig(seed=4))
    texts = ["Question: Alice paid 10 EUR.", "Question: Bob paid 5 EUR.", "Question: Carol?"]
    fake = FakeGenerate(["", "  Question: Bob   paid 5 EUR.\n", "Question: Dan?"], ["Q: x", ""])
    ed.backend.generate = fake
    out = ed.encode(texts)
    # Empty and verbatim-copy outputs are sampled again (only those), with another seed.
    assert out == ["Q: x", UNAVAILABLE, "Question: Dan?"]
    assert fake.calls[1][0] == [encode_prompt(t, chat=True) for t in texts[:2]]
    assert fake.calls[0][1] == 4 and fake.calls[1][1] != 4
    s = ed.stats
    assert (s.empty, s.copies, s.resampled, s.unavailable) == (2, 1, 2, 1)

    ed.backend.generate = FakeGenerate([""] * 3, [""] * 3)
    assert ed.encode(texts) == [UNAVAILABLE] * 3
    assert ed.stats_dict()["unavailable"] == 4
    with pytest.raises(ConfigError, match="empty"):
        ed.encode(["  "])
    with pytest.raises(TypeError):
        ed.encode("Question: one text")


def test_encode_fallback_with_a_real_empty_generation():
    # A model whose every logit is 0: greedy picks token 0, which is EOS → empty outputs.
    import torch

    model, tok = make_tiny_lm(seed=3)
    assert tok.eos_token_id == 0
    with torch.no_grad():
        model.lm_head.weight.zero_()
    cfg = EncoderDecoderConfig(max_new_tokens_encode=1, encode_temperature=0.0)
    ed = EncoderDecoder(model, tok, chat=False, cfg=cfg)
    assert ed.encode(["Question: Alice?", "Question: Bob?"]) == [UNAVAILABLE] * 2
    assert (ed.stats.empty, ed.stats.resampled, ed.stats.unavailable) == (4, 2, 2)


def test_items_skip_decode_without_rationales(untrained):
    _, tok = untrained
    groups = encoder_decoder_items(
        tok, ["A b.", "C d."], ["E f.", "G h."], ["", "Because C."], ["R1", "R2"], chat=False
    )
    assert [[it.kind for it in g] for g in groups] == [[ENCODE_KIND], [ENCODE_KIND, DECODE_KIND]]
    assert groups[0][0].add_special_tokens  # plain prompts: the tokenizer adds its tokens
    assert groups[0][0].prompt == encode_prompt("A b.", chat=False)


def test_fit_rejects_bad_inputs(untrained, tmp_path):
    model, tok = untrained
    ask = Ask()
    one = generate_private_records(1)
    with pytest.raises(ConfigError, match="at least 2"):
        EncoderDecoder.fit(
            model, tok, TASK, one, make_perturber(), ask, small_cfg(), tmp_path, chat=True
        )
    assert ask.calls == []
    two = generate_private_records(2)
    with pytest.raises(BackendError, match="returned"):
        EncoderDecoder.fit(
            model, tok, TASK, two, make_perturber(), lambda t: ["x"], small_cfg(), tmp_path,
            chat=True,
        )  # fmt: skip
    with pytest.raises(BackendError, match="no usable rationale"):
        EncoderDecoder.fit(
            model, tok, TASK, two, make_perturber(), Ask(empty_for=(0, 1)), small_cfg(),
            tmp_path, chat=True,
        )  # fmt: skip
    identity = Perturber(None, strategy="none", epsilon=float("inf"))
    with pytest.raises(ConfigError, match="does not perturb"):
        EncoderDecoder.fit(model, tok, TASK, two, identity, ask, small_cfg(), tmp_path, chat=True)


def test_prompts_keep_the_text_and_its_layout():
    text = "Question: Alice paid 10 EUR.\nAnswer choices: (a) yes (b) no"
    chat = encode_prompt(text, chat=True)
    assert len(chat) == 1 and chat[0]["role"] == "user" and chat[0]["content"].endswith(text)
    plain = encode_prompt(text, chat=False)
    assert isinstance(plain, str) and text in plain and plain.endswith("Rewritten text:\n")
    dec = decode_prompt("Question: Bob paid 3 USD.", " Because Bob. ", text, chat=False)
    assert "Because Bob.\n" in dec and text in dec
    assert dec.endswith("Rationale for the original text:\n")
    assert decode_prompt("p", "r", "o", chat=True)[0]["content"].endswith("Original text:\no")


def test_chat_needs_a_template():
    model, tok = make_tiny_lm(seed=0, chat=False)
    with pytest.raises(ConfigError, match="chat template"):
        EncoderDecoder(model, tok, chat=True)


@pytest.mark.parametrize(
    "bad",
    [
        {"public_limit": 1},
        {"mechanism": PerturbConfig(strategy="none")},
        {"encode_weight": 0.0},
        {"encode_weight": 1.0},
        {"encode_temperature": -0.1},
        {"max_new_tokens_encode": 0},
        {"unknown": 1},
        {"train": {"epochs": 0}},
    ],
)
def test_config_validation(bad):
    with pytest.raises(ValidationError):
        EncoderDecoderConfig(**bad)


def test_config_defaults():
    cfg = EncoderDecoderConfig()
    assert cfg.mechanism.strategy == "exponential" and cfg.mechanism.epsilon == 3.0
    assert cfg.train.epochs == 2 and cfg.public_limit == 64
    assert cfg.loss_weights == {ENCODE_KIND: 0.5, DECODE_KIND: 0.5}
    cfg2 = EncoderDecoderConfig.model_validate({"train": {"max_steps": 5}, "encode_weight": 0.3})
    assert cfg2.train.max_steps == 5 and cfg2.loss_weights[DECODE_KIND] == pytest.approx(0.7)
