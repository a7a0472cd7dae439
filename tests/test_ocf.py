"""Prompt-side identity binding (ocf.py): phoneme encoder, Omni-Context Fusion, MTP-CA, switches."""

import torch

import build
import ocf
import speech
from conditioning import Conditioning
from tiny import TINY, tiny_batch


def test_phoneme_encoder_keeps_padding_exactly_zero():
    enc = ocf.PhonemeEncoder(speech.N_PHONEME_IDS, 16, layers=2)
    ids = torch.tensor([[[3, 4, 5, 0, 0], [6, 0, 0, 0, 0]]])
    out = enc(ids, ids > 0)
    assert out[0, 0, 3:].abs().max() == 0 and out[0, 1, 1:].abs().max() == 0
    assert out[0, 0, :3].abs().min() > 0
    # real phonemes do not depend on what the padding slots held (the convolutions never see it)
    scribbled = torch.where(ids > 0, ids, torch.full_like(ids, 9))
    assert torch.allclose(enc(ids, ids > 0), enc(scribbled, ids > 0), atol=1e-6)
    assert not torch.allclose(enc(ids, ids > 0), enc(scribbled, scribbled > 0))   # unmasked, it would


def test_ocf_at_init_is_exactly_the_identity_on_text():
    torch.manual_seed(0)
    net = build.build_model(TINY)
    batch = tiny_batch(batch_size=2, scene="dialogue")
    cond = Conditioning.from_batch(batch)
    plain = net.prompt.text_encoder(cond.text, cond.text_mask)
    enriched = net.prompt(cond)
    assert torch.equal(plain, enriched)


def mtp_inputs():
    batch = tiny_batch(batch_size=2, scene="dialogue")
    text = torch.randn(2, batch["text_ids"].shape[1], 32, requires_grad=True)
    phon = torch.randn(*batch["line_phonemes"].shape, 16, requires_grad=True)
    return batch, text, phon


def test_mtp_ca_is_exactly_zero_outside_speech_spans_in_value_and_gradient():
    torch.manual_seed(0)
    mtp = ocf.MaskedPhonemeCrossAttention(32, 16, heads=2)
    torch.nn.init.normal_(mtp.o.weight)                     # leave zero-init: a non-trivial module
    torch.nn.init.normal_(mtp.o.bias)
    batch, text, phon = mtp_inputs()
    out = mtp(text, phon, batch["phoneme_mask"], batch["speech_spans"], batch["line_mask"])
    added = out - text
    inside = ocf.speech_token_mask(text.shape[1], batch["speech_spans"], batch["line_mask"]).any(-1)  # (B, L)
    assert added[~inside].abs().max() == 0                  # exactly zero outside <S> ... <E>
    assert added[inside].abs().min() > 0                    # and something inside
    # gradient: a loss on the outside tokens' injected part reaches no phoneme
    (added * (~inside)[..., None]).sum().backward(retain_graph=True)
    assert phon.grad is None or phon.grad.abs().max() == 0
    phon.grad = None
    (added * inside[..., None]).sum().backward()
    assert phon.grad.abs().max() > 0


def test_mtp_ca_sends_each_line_only_its_own_phonemes():
    torch.manual_seed(0)
    mtp = ocf.MaskedPhonemeCrossAttention(32, 16, heads=2)
    torch.nn.init.normal_(mtp.o.weight)
    batch, text, phon = mtp_inputs()
    out = mtp(text, phon, batch["phoneme_mask"], batch["speech_spans"], batch["line_mask"])
    other = phon.detach().clone()
    other[:, 1] += 5                                         # change line 2's phonemes only
    out2 = mtp(text, other, batch["phoneme_mask"], batch["speech_spans"], batch["line_mask"])
    a, b = batch["speech_spans"][0, 0].tolist()
    assert torch.equal(out[0, a:b], out2[0, a:b])           # line 1's tokens do not see line 2
    a, b = batch["speech_spans"][0, 1].tolist()
    assert not torch.allclose(out[0, a:b], out2[0, a:b])
