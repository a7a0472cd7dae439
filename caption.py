"""The structured caption (Omni-Customizer Eq. 2, DreamID-Omni) and the toy's tokenizer.

A caption says who is in the clip, what each subject looks and sounds like, and what each one says:

    the one in blue <sub1>: grey short hair, blue shirt, dark skin, square face, high soft voice.
    a grey room with dots. <sub1> talks. <sub1> says <S> ku ta <E>

  <subk>          binds a descriptor and every line after it to reference k (the k-th face and voice)
  descriptor      subject k's clause: from the start of the clause holding its first <subk> to its '.'
  <S> ... <E>     a spoken line; its speaker is the subject whose anchor came last before it

`parse_caption` reads that structure (token ids, each subject's descriptor span, each line's span,
speaker and phonemes) and stops with one line (CaptionError) on a caption that breaks it; OCF's SA-MRoPE
and MTP-CA (ocf.py) and the toy world's batches (data.py) read its spans. Real captions are umT5's
business (precomputed features, shards.py). The toy has two tokenizers (the world's --tokenizer):

  chars   one token per character (33 characters); `<subk>`, `<S>`, `<E>` are single tokens
  pairs   every word cut into letter pairs from its start, the space before a word carried by its first
          pair ("the one" -> "th" "e" " on" "e"): about half the tokens of chars. The toy's spoken words are
          CV syllables with an optional final consonant, so their pairs are exactly their syllables
          ("tuke" -> "tu" "ke"); descriptor words are cut the same way, so descriptors and lines share
          units and a model can still wrongly speak its descriptors (caption vocalization stays possible
          and measurable). A small fixed subword vocabulary, in the spirit of umT5's SentencePiece.
"""
from __future__ import annotations

import re

import torch

import speech

MAX_SUBJECTS = 4  # the tokenizer knows <sub1>..<sub4>
SPECIALS = ["<pad>"] + [f"<sub{k}>" for k in range(1, MAX_SUBJECTS + 1)] + ["<S>", "<E>"]
CHARS = list("abcdefghijklmnopqrstuvwxyz .,:;'-")
VOCAB = SPECIALS + CHARS
LETTERS = CHARS[:26]
# pairs: the chars vocabulary (same ids), then every letter pair, then each letter and pair after a space
PAIR_VOCAB = VOCAB + [a + b for a in LETTERS for b in LETTERS] + [" " + a for a in LETTERS] + \
    [" " + a + b for a in LETTERS for b in LETTERS]
VOCABS = {"chars": VOCAB, "pairs": PAIR_VOCAB}
TOKEN_ID = {tok: i for i, tok in enumerate(PAIR_VOCAB)}  # a chars id is the same id in pairs
PAD_ID, S_ID, E_ID = TOKEN_ID["<pad>"], TOKEN_ID["<S>"], TOKEN_ID["<E>"]
_SPECIAL_RE = re.compile(r"(<sub\d+>|<S>|<E>)")
_WORD_RE = re.compile(r" ?[a-z]+|.", re.DOTALL)  # a word with the space before it, or any other character


class CaptionError(ValueError):
    """A caption that cannot be tokenized; the message is one line for the user."""


MAX_CAPTION_CHARS = 2000  # the toy world's longest captions (three subjects, three lines) run to ~500


def tokenize(caption: str, tokenizer: str = "chars") -> list[int]:
    """Token ids (chars or pairs, see above); `<subk>`, `<S>`, `<E>` are single tokens."""
    ids = []
    for piece in _SPECIAL_RE.split(caption):  # the split keeps the special tokens as their own pieces
        if _SPECIAL_RE.fullmatch(piece):
            if piece not in TOKEN_ID:
                raise CaptionError(f"caption uses {piece} but at most {MAX_SUBJECTS} subjects are supported")
            ids.append(TOKEN_ID[piece])
            continue
        for ch in piece.lower():
            if ch not in TOKEN_ID:
                raise CaptionError(f"caption has the character {ch!r}, which the tokenizer does not know "
                                   f"(allowed: letters, space and {''.join(CHARS[26:]).strip()})")
        if tokenizer == "chars":
            ids += [TOKEN_ID[ch] for ch in piece.lower()]
            continue
        for word in _WORD_RE.findall(piece.lower()):  # " tuke" -> " tu", "ke"; "." -> "."
            lead = 1 if word.startswith(" ") and len(word) > 1 else 0
            ids += [TOKEN_ID[word[0 if i == lead else i: i + 2]] for i in range(lead, len(word), 2)]
    return ids


def detokenize(ids) -> str:
    return "".join(PAIR_VOCAB[i] for i in ids if i != PAD_ID)  # either vocabulary: chars ids mean the same


def parse_caption(caption: str, tokenizer: str = "chars") -> dict:
    """Structure of a caption: token ids, per-subject descriptor spans, and every spoken line.

    Descriptor of subject k: from the start of the clause that holds the *first* `<subk>` to the
    end of that clause (up to '.'), i.e. "label <subk>: looks, voice." Lines: each `<S> ... <E>`
    with the subject whose anchor most recently precedes it. Spans are [start, end) token indices.
    """
    if len(caption) > MAX_CAPTION_CHARS:  # attention is quadratic in tokens: 100,000 characters would run for minutes
        raise CaptionError(f"caption has {len(caption):,} characters; the limit is {MAX_CAPTION_CHARS:,} "
                           "(describe each subject in a clause, then the lines)")
    ids = tokenize(caption, tokenizer)
    subject_spans, lines = {}, []  # subject index -> [start, end); line dicts in caption order
    clause_start, open_line, last_subject = 0, None, None
    period = TOKEN_ID["."]
    for i, tok in enumerate(ids):
        name = PAIR_VOCAB[tok]
        if name.startswith("<sub") and open_line is not None:  # the speaker is named before the line, not in it
            raise CaptionError(f"caption has {name} inside a line <S> ... <E>: name the speaker before the line, "
                               f"e.g. '{name} says <S> ka ta <E>'")
        if name.startswith("<sub"):
            last_subject = int(name[4:-1]) - 1
            if last_subject not in subject_spans:
                end = next((j + 1 for j in range(i, len(ids)) if ids[j] == period), len(ids))
                subject_spans[last_subject] = (clause_start, end)
        elif tok == S_ID:
            if open_line is not None:
                raise CaptionError("caption opens <S> twice without <E> in between")
            if last_subject is None:
                raise CaptionError("caption has a line <S> ... <E> before any <subk> says who speaks it")
            open_line = i
        elif tok == E_ID:
            if open_line is None:
                raise CaptionError("caption has <E> without an opening <S>")
            text = detokenize(ids[open_line + 1: i]).strip()
            if not any(c.isalpha() for c in text):
                raise CaptionError(f"caption has an empty line <S> {text} <E>: give each line some words")
            lines.append(dict(span=(open_line, i + 1), speaker=last_subject, text=text,
                              phonemes=speech.phoneme_ids(text)))
            open_line = None
        if open_line is None and tok == period:
            clause_start = i + 1
    if open_line is not None:
        raise CaptionError("caption opens <S> without closing it with <E>")
    for line in lines:  # a descriptor holds looks and voice; a line inside it would be read as both
        for k, (a, b) in subject_spans.items():
            if a <= line["span"][0] < b:
                raise CaptionError(f"caption has a line <S> ... <E> inside <sub{k + 1}>'s description (which runs from "
                                   "the start of its sentence to its '.'): describe each subject in a sentence of "
                                   "its own first, then give the lines")
    n = max(subject_spans) + 1 if subject_spans else 0
    missing = [k + 1 for k in range(n) if k not in subject_spans]
    if missing:
        raise CaptionError(f"caption uses <sub{n}> but never <sub{missing[0]}>: number subjects from 1")
    return dict(ids=ids, subject_spans=[subject_spans[k] for k in range(n)], lines=lines)


def caption_fields(caption: str, tokenizer: str = "chars") -> dict:
    """Tensors of a caption: token ids, descriptor spans, speech spans, line speakers, phonemes."""
    parsed = parse_caption(caption, tokenizer)
    lines = parsed["lines"]
    longest = max([len(ln["phonemes"]) for ln in lines] + [1])
    phonemes = torch.zeros(len(lines), longest, dtype=torch.long)
    for m, ln in enumerate(lines):
        phonemes[m, : len(ln["phonemes"])] = torch.tensor(ln["phonemes"])
    return dict(
        text_ids=torch.tensor(parsed["ids"]),
        subject_spans=torch.tensor(parsed["subject_spans"], dtype=torch.long).reshape(-1, 2),
        speech_spans=torch.tensor([ln["span"] for ln in lines], dtype=torch.long).reshape(-1, 2),
        line_speaker=torch.tensor([ln["speaker"] for ln in lines], dtype=torch.long),
        line_phonemes=phonemes,
    )


# ------------------------------------------------------------------------------------------------
# Real captions (prepare.py): the same structure read on characters, for umT5's tokens
# ------------------------------------------------------------------------------------------------

# MTP-CA's phoneme stream for real speech. F5-TTS's text front end is characters (pinyin for Chinese), so
# the real vocabulary is characters: 0 = padding, 1 = any character outside printable ASCII, then the 95
# printable ASCII characters (space to '~'), case kept as F5-TTS keeps it. Chinese would need pinyin first
# (F5-TTS uses pypinyin), which we do not do: such lines read as 1s, and prepare.py says so.
REAL_CHAR_VOCAB = 2 + 95


def character_ids(text: str) -> list[int]:
    """A real line's characters -> MTP-CA ids (REAL_CHAR_VOCAB of them)."""
    return [ord(c) - 32 + 2 if 32 <= ord(c) < 127 else 1 for c in text]


def text_structure(caption: str) -> dict:
    """A real caption's structure on its characters, by parse_caption's rules: each subject's descriptor (from
    the start of the sentence holding its first <subk> to that sentence's '.') and each line <S> ... <E> with its
    speaker (the subject named last before it). Spans are [start, end) character offsets of `caption`."""
    marks = [(m.start(), m.end(), m.group()) for m in re.finditer(r"<sub(\d+)>|<S>|<E>|\.", caption)]
    subjects, lines, clause_start, open_line, last = {}, [], 0, None, None
    for start, end, mark in marks:
        if mark.startswith("<sub"):
            if open_line is not None:
                raise CaptionError(f"caption has {mark} inside a line <S> ... <E>: name the speaker before the line")
            last = int(mark[4:-1]) - 1
            if last not in subjects:
                stop = caption.find(".", end)
                subjects[last] = (clause_start, stop + 1 if stop >= 0 else len(caption))
        elif mark == "<S>":
            if open_line is not None or last is None:
                raise CaptionError("caption opens <S> twice, or before any <subk> says who speaks the line")
            open_line = start
        elif mark == "<E>":
            if open_line is None:
                raise CaptionError("caption has <E> without an opening <S>")
            text = caption[open_line + 3: start].strip()
            if not any(c.isalpha() for c in text):
                raise CaptionError(f"caption has an empty line <S> {text} <E>: give each line some words")
            lines.append(dict(span=(open_line, end), speaker=last, text=text))
            open_line = None
        elif open_line is None:  # a '.' outside a line ends the sentence
            clause_start = end
    if open_line is not None:
        raise CaptionError("caption opens <S> without closing it with <E>")
    n = max(subjects) + 1 if subjects else 0
    if any(k not in subjects for k in range(n)) or n > MAX_SUBJECTS:
        raise CaptionError(f"caption names subjects {sorted(k + 1 for k in subjects)}: number them <sub1>.."
                           f"<sub{MAX_SUBJECTS}> from 1 without gaps")
    if not lines:
        raise CaptionError("caption has no line <S> ... <E>: give what is said")
    return dict(subject_spans=[subjects[k] for k in range(n)], lines=lines)
