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
    assert cfg.text_vocab == len(caption.VOCAB) and cfg.phoneme_vocab == speech.N_PHONEME_IDS
