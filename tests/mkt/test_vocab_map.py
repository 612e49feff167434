"""MinED vocabulary mapping: token texts, the pruned search against brute force, the cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedcot.mkt import vocab_map as vm
from fedcot.mkt.vocab_map import (
    VocabMap,
    brute_force_min_distance,
    build_vocab_map,
    byte_level_alphabet,
    min_distance_search,
    token_strings,
    tokenizer_hash,
    vocab_map_path,
    vocab_maps,
)

from tiny_models import make_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# -- tiny tokenizers of both families --------------------------------------------------------------
def _byte_level_tokenizer():
    """A byte-level BPE (GPT-2 style): the 256 byte characters, then a few merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(byte_level_alphabet(), key=lambda ch: byte_level_alphabet()[ch])
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = [("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("Ã", "©"), ("c", "a"), ("ca", "t")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


SP_PIECES = ["<unk>", *(f"<0x{b:02X}>" for b in range(256)), "▁", "t", "h", "e", "é", "c"]
SP_PIECES += ["a", "▁t", "▁th", "▁the", "▁c", "▁ca", "▁cat", "th", "the", "日本"]


def _sentencepiece_tokenizer(decoder: str = "llama", model: str = "bpe"):
    """A SentencePiece-style tokenizer: ``▁`` word starts and ``<0xHH>`` byte fallback."""
    from tokenizers import Tokenizer, decoders, models

    if model == "bpe":
        vocab = {p: i for i, p in enumerate(SP_PIECES)}
        merges = [("▁", "t"), ("▁t", "h"), ("▁th", "e"), ("▁", "c"), ("▁c", "a")]
        merges += [("▁ca", "t"), ("t", "h"), ("th", "e")]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    else:
        scores = [(p, -float(len(p))) for p in SP_PIECES]
        tok = Tokenizer(models.Unigram(scores, unk_id=0, byte_fallback=True))
    if decoder == "llama":  # strips the leading space of a first piece
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
    elif decoder == "metaspace":
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    else:  # gemma: keeps the space
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
    return tok


def test_byte_level_alphabet_is_the_standard_one():
    from tokenizers import pre_tokenizers

    table = byte_level_alphabet()
    assert len(table) == 256 and sorted(table.values()) == list(range(256))
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table["Ġ"] == 0x20 and table["Ċ"] == 0x0A and table["!"] == 0x21
    assert table["Ã"] == 0xC3 and table["©"] == 0xA9 and table["ÿ"] == 0xFF
    assert table[chr(256)] == 0 and table["ġ"] == 0x7F  # 0x7F: the 34th unprintable byte


def test_byte_level_token_strings():
    tok = _byte_level_tokenizer()
    texts = token_strings(tok)
    assert len(texts) == tok.get_vocab_size(with_added_tokens=True)
    at = {p: texts[tok.token_to_id(p)] for p in ("Ġthe", "Ġ", "Ã©", "Ã", "©", "Ċ", "A", "cat")}
    assert at == {
        "Ġthe": " the",
        "Ġ": " ",
        "Ã©": "é",
        "Ã": "\udcc3",  # a lone UTF-8 lead byte keeps its byte
        "©": "\udca9",
        "Ċ": "\n",
        "A": "A",
        "cat": "cat",
    }
    assert texts[tok.token_to_id("<|endoftext|>")] == "<|endoftext|>"


@pytest.mark.parametrize("decoder", ["llama", "metaspace", "gemma"])
@pytest.mark.parametrize("model", ["bpe", "unigram"])
def test_sentencepiece_token_strings(decoder, model):
    tok = _sentencepiece_tokenizer(decoder, model)
    texts = token_strings(tok)
    at = {p: texts[tok.token_to_id(p)] for p in SP_PIECES}
    assert at["▁the"] == " the" and at["▁"] == " " and at["the"] == "the"
    assert at["é"] == "é" and at["日本"] == "日本"
    assert at["<0x41>"] == "A" and at["<0x20>"] == " " and at["<0x0A>"] == "\n"
    assert at["<0xC3>"] == "\udcc3" and at["<0xA9>"] == "\udca9" and at["<0xFF>"] == "\udcff"


def test_families_give_the_same_texts():
    bl, sp = _byte_level_tokenizer(), _sentencepiece_tokenizer()
    bl_texts, sp_texts = set(token_strings(bl)), set(token_strings(sp))
    for shared in (" the", " ", "é", "\udcc3", "\udca9", "A", "\n"):
        assert shared in bl_texts and shared in sp_texts, repr(shared)


def test_map_between_families(tmp_path):
    bl, sp = _byte_level_tokenizer(), _sentencepiece_tokenizer()
    fwd, back = vocab_maps(bl, sp, cache_dir=tmp_path, workers=1)
    assert len(fwd) == bl.get_vocab_size(True) and len(back) == sp.get_vocab_size(True)
    # (" " is both <0x20> and ▁ in the SentencePiece vocabulary: the lower id wins)
    for bl_piece, sp_piece in [("Ġthe", "▁the"), ("Ã", "<0xC3>"), ("Ã©", "é"), ("Ġ", "<0x20>")]:
        i = bl.token_to_id(bl_piece)
        assert fwd.ids[i] == sp.token_to_id(sp_piece) and fwd.distance[i] == 0
    # the byte-level "A" (0x41) and the byte piece <0x41> are the same text
    assert back.ids[sp.token_to_id("<0x41>")] == bl.token_to_id("A")
    # "日本" is two edits from any single byte-level character: lowest id at distance 2
    j = sp.token_to_id("日本")
    assert back.distance[j] == 2 and back.ids[j] == 0
    assert fwd.exact_share > 0.9 and fwd.within1_share >= fwd.exact_share


def test_transformers_wrapper_matches_raw_tokenizer():
    tok = make_tokenizer(400)
    raw = tok.backend_tokenizer
    assert token_strings(tok) == token_strings(raw)
    assert len(token_strings(tok)) == len(tok)
    assert tokenizer_hash(tok) == tokenizer_hash(raw)
    h = tokenizer_hash(tok)
    assert len(h) == 16 and int(h, 16) >= 0
    assert tokenizer_hash(make_tokenizer(400)) == h  # stable across loads
    assert tokenizer_hash(make_tokenizer(300)) != h
    texts = token_strings(tok)
    assert " the" in texts or " The" in texts


# -- the search against brute force ----------------------------------------------------------------
def _both(queries, candidates, **kw):
    """Pruned search with and without the one-edit index; both must agree."""
    out = [min_distance_search(queries, candidates, one_edit_index=flag, **kw) for flag in (0, 1)]
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])
    return out[0]


@pytest.mark.parametrize(
    ("queries", "candidates", "dist", "ids"),
    [
        # tie-break: all three at distance 1, the lowest id wins
        (["abx"], ["abd", "abe", "abc"], [1], [0]),
        # duplicates among candidates: the lowest id of the text
        (["abc", "abd"], ["zz", "abc", "abc"], [0, 1], [1, 1]),
        # empty query: any one-character candidate is one insertion away
        ([""], ["xy", "z", "q"], [1], [1]),
        ([""], ["xy", ""], [0], [1]),
        # empty candidate: as far as the query is long, ties to the lowest id
        (["ab"], ["", "zz", "qqq"], [2], [0]),
        (["ab"], ["qqq", "zz", ""], [2], [1]),
        # d >= 3, and the winner three lengths away
        (["abcdef"], ["xyz", "abcxyzzz", "qqqqqqqqqq"], [5], [1]),
        (["aaaa"], ["bbbb", "a", "aaaaaaa"], [3], [1]),
        # length bands: the first band has a distance-8 match, the best is 4 lengths away
        (["abcdefgh"], ["zzzzzzzz", "abcdefghijkl"], [4], [1]),
        # foreign characters (in no candidate): substituted or deleted
        (["日本語x"], ["abcd", "x", "日"], [3], [1]),
        (["日本語"], ["xyzw", "ab", "abc"], [3], [1]),
        # lone surrogates (byte fragments) are characters like any other
        (["\udcc3\udca9"], ["é", "\udcc3", "\udcc3\udcaa"], [1], [1]),
    ],
)
def test_known_answers(queries, candidates, dist, ids):
    d, i = _both(queries, candidates, workers=1)
    assert d.tolist() == dist and i.tolist() == ids
    bd, bi = brute_force_min_distance(queries, candidates)
    assert bd.tolist() == dist and bi.tolist() == ids


def _random_strings(rng, n, alphabet, max_len):
    return ["".join(rng.choice(alphabet, size=rng.integers(0, max_len + 1))) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_lists_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    alphabet = [*"abcde ", "é", "ж", "日", "\udcc3"]
    candidates = _random_strings(rng, 600, alphabet[:7] if seed == 2 else alphabet, 9)
    queries = _random_strings(rng, 400, alphabet, 12) + candidates[:20] + ["日日日日日日"]
    bd, bi = brute_force_min_distance(queries, candidates)
    for workers in (1, 2):
        d, i = _both(queries, candidates, workers=workers)
        np.testing.assert_array_equal(d, bd)
        np.testing.assert_array_equal(i, bi)
    assert bd.max() >= 3  # the deeper levels are exercised


def test_broken_pruning_is_caught():
    """A lower bound one too high (a band too narrow) must show up against brute force."""
    rng = np.random.default_rng(5)
    alphabet = list("abcdef")
    candidates = _random_strings(rng, 500, alphabet, 9)
    queries = _random_strings(rng, 300, alphabet, 12)
    bd, bi = brute_force_min_distance(queries, candidates)
    d, i = min_distance_search(queries, candidates, workers=1, one_edit_index=False)
    assert (d == bd).all() and (i == bi).all()
    d, i = min_distance_search(queries, candidates, workers=1, one_edit_index=False, _bound_slack=1)
    assert (d != bd).any() or (i != bi).any()


def test_stats_and_no_candidates():
    stats: dict[str, float] = {}
    min_distance_search(["ab", "zz"], ["ab", "ac"], workers=1, stats=stats)
    assert stats["queries"] == 2 and stats["exact"] == 1 and stats["total_s"] >= 0
    with pytest.raises(ValueError):
        min_distance_search(["a"], [])
    with pytest.raises(ValueError):
        brute_force_min_distance(["a"], [])


# -- VocabMap and the cache ------------------------------------------------------------------------
def test_vocab_map_map_shares_and_round_trip(tmp_path):
    m = VocabMap("a" * 16, "b" * 16, np.array([3, 0, 2, 1]), np.array([0, 1, 2, 0]))
    assert len(m) == 4 and m.ids.dtype == np.int32
    got = m.map(np.array([[0, 3], [4, -1]]))
    assert got.tolist() == [[3, 1], [-1, -1]] and got.dtype == np.int32
    assert m.map(np.array([], dtype=np.int64)).shape == (0,)
    assert m.exact_share == 0.5 and m.within1_share == 0.75
    with pytest.raises(TypeError):
        m.map(np.array([0.5]))
    path = tmp_path / "sub" / "m.npz"
    m.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.npz"]  # no temp file left
    back = VocabMap.load(path)
    assert back == m and back.source_hash == "a" * 16 and back.target_hash == "b" * 16
    with pytest.raises(ValueError):
        VocabMap("a", "b", np.zeros(3), np.zeros(2))


def test_cache_round_trip(tmp_path, monkeypatch):
    a, b = make_tokenizer(400), make_tokenizer(300)
    first = build_vocab_map(a, b, cache_dir=tmp_path, workers=1)
    path = vocab_map_path(a, b, tmp_path)
    assert path.is_file() and path.parent == tmp_path
    assert tokenizer_hash(a) in path.name and tokenizer_hash(b) in path.name
    assert first.source_hash == tokenizer_hash(a) and first.target_hash == tokenizer_hash(b)
    assert len(first) == len(a) and (first.ids < len(b)).all() and (first.ids >= 0).all()
    texts_a, texts_b = token_strings(a), token_strings(b)
    bd, bi = brute_force_min_distance(texts_a, texts_b)
    np.testing.assert_array_equal(first.distance, bd)
    np.testing.assert_array_equal(first.ids, bi)

    def no_search(*args, **kw):
        raise AssertionError("the cached map was not used")

    monkeypatch.setattr(vm, "min_distance_search", no_search)
    second = build_vocab_map(a, b, cache_dir=tmp_path)
    assert second == first and "load_s" in second.timings
    # another tokenizer is another key (and here needs a search)
    with pytest.raises(AssertionError, match="not used"):
        build_vocab_map(a, make_tokenizer(350), cache_dir=tmp_path)
    assert vocab_map_path(b, a, tmp_path) != path
    # a damaged cache file is rebuilt
    monkeypatch.undo()
    path.write_bytes(b"not an npz")
    assert build_vocab_map(a, b, cache_dir=tmp_path, workers=1) == first


def test_default_cache_dir_is_under_fedcot_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCOT_HOME", str(tmp_path))
    a, b = make_tokenizer(300), make_tokenizer(400)
    build_vocab_map(a, b, workers=1)
    assert vocab_map_path(a, b).parent == tmp_path / "vocab_maps"
    assert vocab_map_path(a, b).is_file()


# -- the real tokenizers ---------------------------------------------------------------------------
def _real(name: str):
    from tokenizers import Tokenizer

    from fedcot.errors import ModelNotFoundError
    from fedcot.models.registry import prepare

    try:
        folder = Path(prepare(name))
    except (ModelNotFoundError, ImportError) as exc:
        pytest.skip(f"{name} is not available: {exc}")
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def real_maps():
    smol, gemma = _real("smollm2-135m-instruct"), _real("gemma3-270m")
    fwd, back = vocab_maps(smol, gemma)  # the default cache: a second run loads it
    return smol, gemma, fwd, back


@pytest.mark.models
def test_real_maps_build_both_directions(real_maps):
    smol, gemma, fwd, back = real_maps
    assert len(fwd) == smol.get_vocab_size(True) == 49152
    assert len(back) == gemma.get_vocab_size(True) == 262144
    assert (fwd.ids >= 0).all() and (fwd.ids < len(back)).all()
    assert (back.ids >= 0).all() and (back.ids < len(fwd)).all()
    the_s, the_g = smol.token_to_id("Ġthe"), gemma.token_to_id("▁the")
    assert fwd.ids[the_s] == the_g and fwd.distance[the_s] == 0
    assert back.ids[the_g] == the_s and back.distance[the_g] == 0
    # a lone UTF-8 lead byte: byte-level "Ã" is Gemma's byte-fallback "<0xC3>"
    assert fwd.ids[smol.token_to_id("Ã")] == gemma.token_to_id("<0xC3>")
    assert fwd.exact_share > 0.9 and back.exact_share > 0.1


@pytest.mark.models
@pytest.mark.parametrize("direction", ["smollm2->gemma3", "gemma3->smollm2"])
def test_real_maps_match_brute_force(real_maps, direction):
    smol, gemma, fwd, back = real_maps
    src, tgt, vmap = (smol, gemma, fwd) if direction.startswith("smol") else (gemma, smol, back)
    src_texts, tgt_texts = token_strings(src), token_strings(tgt)
    rng = np.random.default_rng(20240601)
    hard = np.flatnonzero(vmap.distance > 0)
    sample = np.unique(
        np.r_[
            rng.choice(len(src_texts), 2000, replace=False),
            rng.choice(hard, min(1000, len(hard)), replace=False),
        ]
    )
    queries = [src_texts[k] for k in sample]
    bd, bi = brute_force_min_distance(queries, tgt_texts)
    np.testing.assert_array_equal(vmap.distance[sample], bd)
    np.testing.assert_array_equal(vmap.ids[sample], bi)  # same tie-break: lowest id
    # a fresh search on the sample agrees as well (the map above may come from the cache)
    d, i = min_distance_search(queries, tgt_texts, one_edit_index=True)
    np.testing.assert_array_equal(d, bd)
    np.testing.assert_array_equal(i, bi)
    # ... and a band one too narrow would have been caught
    d, i = min_distance_search(queries, tgt_texts, one_edit_index=False, _bound_slack=1)
    assert (d != bd).any() or (i != bi).any()
