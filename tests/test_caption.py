"""The structured caption (caption.py): its spans and phonemes round-trip, and a broken one stops in one line."""
import pytest

import build
import caption
import speech
from data import WorldConfig, make_clip, sample_rng


def test_caption_spans_and_phonemes_round_trip():
    s = make_clip(sample_rng(0, 0, 0, 1), WorldConfig())
    ids = s["text_ids"].tolist()
    assert caption.detokenize(ids) == s["caption"]
    for k, (a, b) in enumerate(s["subject_spans"].tolist()):
        descriptor = caption.detokenize(ids[a:b])
        assert f"<sub{k + 1}>" in descriptor and descriptor.endswith(".")
    speakers = [who for who, _, _ in s["line_times"]]
    for m, (a, b) in enumerate(s["speech_spans"].tolist()):
        assert ids[a] == caption.S_ID and ids[b - 1] == caption.E_ID
        text = caption.detokenize(ids[a + 1: b - 1]).strip()
        phonemes = s["line_phonemes"][m][s["line_phonemes"][m] > 0].tolist()
        assert phonemes == speech.phoneme_ids(text)
        assert s["line_speaker"][m].item() == speakers[m]


@pytest.mark.parametrize("text, message", [
    ("a <sub1>: x. <sub1> says <S> <E>", "empty line"),
    ("a <sub1>: x. <sub1> says <S> ta", "without closing"),
    ("<S> ta <E>", "before any <subk>"),
    ("a <sub2>: x.", "never <sub1>"),
    ("a <sub1>: x! ", "character"),
    ("a <sub1>: x. <sub1> says <S> ta <sub1> <E>", "inside a line"),
    ("a <sub5>: x.", "at most 4 subjects"),
    ("a <sub1>: red, <S> ta <E>.", "inside <sub1>'s description"),
])
def test_bad_captions_stop_with_one_clear_line(text, message):
    with pytest.raises(caption.CaptionError, match=message) as err:
        caption.parse_caption(text)
    assert "\n" not in str(err.value)


def test_the_models_token_tables_are_the_tokenizers():
    cfg = build.PRESETS["toy"]
    assert cfg.text_vocab == len(caption.PAIR_VOCAB) and cfg.phoneme_vocab == speech.N_PHONEME_IDS
    assert caption.PAIR_VOCAB[:len(caption.VOCAB)] == caption.VOCAB  # a chars id means the same in pairs


def test_pairs_halve_the_tokens_and_keep_the_structure():
    """The pair tokenizer: words cut into letter pairs (a spoken CV syllable is one token), the text and every
    span the same as with characters, about half the tokens on the world's captions."""
    import data
    text = "the one in red <sub1>: black short hair. <sub1> says <S> tuke lon <E>"
    pieces = [caption.PAIR_VOCAB[i] for i in caption.tokenize(text, "pairs")]
    assert pieces[-7:] == ["<S>", " tu", "ke", " lo", "n", " ", "<E>"]
    for tok in ("chars", "pairs"):
        parsed = caption.parse_caption(text, tok)
        assert caption.detokenize(parsed["ids"]) == text
        a, b = parsed["subject_spans"][0]
        assert caption.detokenize(parsed["ids"][a:b]) == "the one in red <sub1>: black short hair."
        assert parsed["lines"][0]["text"] == "tuke lon"
    lengths = {tok: sum(len(caption.tokenize(data.make_clip(data.sample_rng(0, 0, 0, i), data.WorldConfig())["caption"],
                                             tok)) for i in range(10)) for tok in ("chars", "pairs")}
    assert lengths["pairs"] < 0.6 * lengths["chars"]


def test_a_checkpoint_from_before_the_pair_tokenizer_reads_characters():
    """A world config without `tokenizer` was written when captions were characters: it is read as chars, and
    its 40-token model fits; a 40-token model asked to read pairs is one line."""
    import dataclasses
    import build
    import checkpoint
    import data
    old_world = {k: v for k, v in dataclasses.asdict(data.WorldConfig()).items() if k != "tokenizer"}
    old_model = dataclasses.asdict(dataclasses.replace(build.PRESETS["toy"], text_vocab=40))
    world = checkpoint.world_from_checkpoint(dict(world_config=old_world, model_config=old_model))
    assert world.tokenizer == "chars"
    bad = data.model_fit_problems(dataclasses.replace(build.PRESETS["toy"], text_vocab=40), data.WorldConfig(), "toy")
    assert len(bad) == 1 and "--text_vocab 40" in bad[0] and "pairs" in bad[0]
