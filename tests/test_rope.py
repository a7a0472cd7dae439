"""Rotary positions (rope.py): relative-position scores, time alignment, reference layouts."""
import math

import pytest

import torch

import rope
from caption import caption_fields


def rotated(x, pos, head_dim=32):
    angles = rope.rope_angles(pos, rope.rope_frequencies(head_dim), head_dim)[None]
    return rope.apply_rope(x, angles.cos(), angles.sin())


def test_score_depends_only_on_relative_position():
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)
    def score(pq, pk):
        return (rotated(q, torch.tensor([pq])) * rotated(k, torch.tensor([pk]))).sum().item()
    a = score([3.0, 2.0, 5.0], [1.0, 4.0, 4.0])
    b = score([13.0, 7.0, 6.0], [11.0, 9.0, 5.0])      # same offsets, shifted by (10, 5, 1)
    assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4)
    assert not math.isclose(a, score([3.0, 2.0, 5.0], [2.0, 4.0, 4.0]), abs_tol=1e-3)


def test_rotation_keeps_norms_and_matches_complex_reference():
    x = torch.randn(2, 2, 5, 32)
    pos = torch.randn(5, 3) * 10
    out = rotated(x, pos)
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    angles = rope.rope_angles(pos, rope.rope_frequencies(32), 32)
    reference = torch.view_as_real(torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())
                                   * torch.polar(torch.ones_like(angles.double()), angles.double())).flatten(-2)
    assert torch.allclose(out.double(), reference, atol=1e-5)


def test_video_frame_and_audio_token_at_same_time_share_temporal_phase():
    # toy: 2 video latent frames/s, 32 audio tokens/s -> scale 1/16; frame 3 (1.5 s) <-> audio token 48
    scale = 1 / 16
    video = rope.video_positions(4, 2, 2)
    audio = rope.audio_positions(64, scale)
    freqs = rope.rope_frequencies(32)
    n_t = rope.rope_sections(32)[0]
    frame3 = rope.rope_angles(video[video[:, 0] == 3][:1], freqs, 32)[0, :n_t]
    token48 = rope.rope_angles(audio[48:49], freqs, 32)[0, :n_t]
    assert torch.allclose(frame3, token48)
    assert rope.rope_angles(audio, freqs, 32)[:, n_t:].abs().max() == 0   # audio never rotates h/w pairs


def test_syn_rope_ids_match_the_formula_for_two_identities():
    scale, margin = 31 / 157.55, 150.0
    images, voices = rope.reference_positions("syn", 2, 31, 2, 2, 157, 5, scale, margin)
    assert images[:4, 0].tolist() == [150.0] * 4 and images[4:, 0].tolist() == [300.0] * 4
    assert images[:4, 1:].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    for k in (1, 2):
        expected = [(math.floor(margin / scale) * k + i) * scale for i in range(5)]
        assert torch.allclose(voices[(k - 1) * 5: k * 5, 0], torch.tensor(expected))
    # face and voice of identity k share the temporal phase (up to the floor)
    assert abs(voices[0, 0].item() - images[0, 0].item()) < scale


def test_plain_layout_follows_the_content():
    images, voices = rope.reference_positions("plain", 2, 4, 2, 2, 64, 8, 1 / 16)
    assert images[:, 0].tolist() == [4.0] * 4 + [5.0] * 4
    assert torch.allclose(voices[:, 0] * 16, torch.arange(64, 80).float())


def test_sa_mrope_coordinates_for_a_two_subject_caption():
    caption = "a <sub1>: red. b <sub2>: blue. <sub1> says <S> ta <E>"
    f = caption_fields(caption)
    ids = f["text_ids"]
    (s1, e1), (s2, e2) = f["subject_spans"].tolist()
    assert (s1, e1) == (0, 9) and (s2, e2) == (9, 20)    # "a <sub1>: red." and " b <sub2>: blue."
    h = w = 2
    T_r = 3
    block = max(h, w) + T_r                               # 5 positions per subject's reference block
    mask = f["line_phonemes"] > 0
    pos = rope.sa_mrope_positions(len(ids), f["subject_spans"][None], (h, w), T_r, f["speech_spans"][None],
                                  mask[None])[0]
    L, K = len(ids), 2
    text, image = pos[:L], pos[L:L + K * h * w]
    voice, phon = pos[L + K * h * w: L + K * h * w + K * T_r], pos[L + K * h * w + K * T_r:]
    # text before the first descriptor ends: (i, i, i); after it, shifted by one block; after both, by two
    assert text[8].tolist() == [8.0] * 3 and text[9].tolist() == [9.0 + block] * 3
    assert text[19].tolist() == [19.0 + block] * 3 and text[20].tolist() == [20.0 + 2 * block] * 3
    # subject 1's image block right after its descriptor's last token (position 8): t = 9, h/w offset
    assert image[:4].tolist() == [[9, 9, 9], [9, 9, 10], [9, 10, 9], [9, 10, 10]]
    # subject 2's descriptor ends at token 19, at position 19 + block = 24: its block starts at 25
    assert image[4].tolist() == [25, 25, 25]
    # voices: a 1D run after each image block, max(h, w) = 2 further on
    assert voice[:, 0].tolist() == [11, 12, 13, 27, 28, 29]
    # phonemes t, a: strictly inside <S> ... <E> (positions of those tokens), distinct last coordinate
    s_tok, e_tok = f["speech_spans"][0].tolist()
    ps, pe = text[s_tok, 0].item(), text[e_tok - 1, 0].item()
    assert phon[:, 0].tolist() == pytest.approx([ps + (pe - ps) / 3, ps + 2 * (pe - ps) / 3])
    assert phon[:, 2].tolist() == [-1.0, -1.0]


def test_sa_mrope_batch_path_equals_the_per_sample_path():
    import data
    batch = data.collate([data.make_clip(data.sample_rng(0, 0, 0, i), data.WorldConfig()) for i in range(3)])
    args = lambda sl: (batch["text_ids"].shape[1], batch["subject_spans"][sl], (4, 4), 32,  # noqa: E731
                       batch["speech_spans"][sl], batch["phoneme_mask"][sl])
    together = rope.sa_mrope_positions(*args(slice(None)))
    for i in range(3):
        alone = rope.sa_mrope_positions(*args(slice(i, i + 1)))
        valid = torch.cat([batch["text_mask"][i], batch["subject_mask"][i].repeat_interleave(16),
                           batch["subject_mask"][i].repeat_interleave(32), batch["phoneme_mask"][i].flatten()])
        assert torch.equal(together[i][valid], alone[0][valid])
