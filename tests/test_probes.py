"""The ablation tables' mechanism probes (probes.py): attention shares read 0.5 without binding and near 1 with it,
the recorder leaves the model as it was, a pasted reference reads as copying, tempting captions change only words."""
import dataclasses
import math

import torch

import caption
import data
import metrics
import probes
from conditioning import Conditioning
from model import TwinTower
from tiny import TINY, TINY_WORLD, perturbed


def test_descriptor_spans_are_the_first_sentences_with_or_without_anchors():
    for anchors in (True, False):
        case = data.held_out_case(dataclasses.replace(data.WorldConfig(), anchors=anchors), "dialogue", 0)
        ids = case["text_ids"]
        spans = probes.descriptor_spans(ids, 2)
        texts = [caption.detokenize(ids[a:b].tolist()) for a, b in spans]
        # each span is one subject's descriptor: its label, looks and voice, ending at its '.'
        for k, text in enumerate(texts):
            assert text.strip().startswith("the one in") and text.endswith("voice."), text
            assert (f"<sub{k + 1}>" in text) == anchors
        if anchors:  # the same spans the caption parser finds from the anchors
            assert spans == [tuple(s) for s in case["subject_spans"].tolist()]


def synthetic_record(bound: bool):
    """One text and one self attention over 4 content tokens + 2 reference tokens per subject, 6 text tokens:
    bound = each subject's reference queries point at its own descriptor and its own box; else all scores 0."""
    n_content, per_ref, L = 4, 2, 6
    spans, boxes = [(0, 3), (3, 6)], torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    S = n_content + 2 * per_ref
    q, k_text, k_self = torch.zeros(1, 1, S, 2), torch.zeros(1, 1, L, 2), torch.zeros(1, 1, S, 2)
    if bound:
        for s in range(2):
            q[0, 0, n_content + s * per_ref: n_content + (s + 1) * per_ref, s] = 10.0   # subject s's references
            q[0, 0, :n_content][boxes[s], s] = 10.0                                     # subject s's region
            k_text[0, 0, slice(*spans[s]), s] = 10.0
            k_self[0, 0, :n_content][boxes[s], s] = 10.0
    record = [("text", q, k_text, None), ("self", q, k_self, None)]
    return probes.binding_of_record(record, n_content, 2, spans, boxes)


def test_binding_reads_one_half_without_binding_and_near_one_with_it():
    loose, bound = synthetic_record(False), synthetic_record(True)
    assert all(math.isclose(v, 0.5, abs_tol=1e-6) for v in loose.values()), loose
    assert all(v > 0.99 for v in bound.values()), bound


def test_attention_binding_runs_on_a_model_and_restores_it():
    net = perturbed(TwinTower(dataclasses.replace(TINY, ocf=False, mtp_ca=False)).eval())
    out = probes.attention_binding(net, TINY_WORLD, cases=1)
    assert set(out) == set(probes.BINDING) and all(0 <= v <= 1 for v in out.values()), out
    # the recorder's wrappers are gone: every attention module calls its class's own method again
    assert not any("attend" in vars(m) for m in net.modules())
    batch = data.collate([data.held_out_case(TINY_WORLD, "dialogue", 0)])
    record = []
    with torch.no_grad(), probes.recording_attention(net, record):
        net(batch["video"], batch["audio"], torch.full((1,), 0.5), Conditioning.from_batch(batch))
    # one self and one text attention per layer; the text keys are the caption's tokens
    assert [kind for kind, *_ in record] == ["self", "text"] * TINY.layers
    assert record[1][2].shape[2] == batch["text_ids"].shape[1]


def test_a_pasted_reference_reads_as_copying():
    world = data.WorldConfig()
    case = data.held_out_case(world, "single", 0)                  # cross-pair: its own backdrop and pose
    frames = (case["video"] + 1) / 2
    pasted = frames.clone()
    side = round(3.2 * world.image_size * 0.2)
    ref = torch.nn.functional.interpolate((case["ref_images"][:1] + 1) / 2, size=(side, side))[0]
    pasted[:, :, 4:4 + side, 6:6 + side] = ref                     # the portrait, pasted whole into every frame
    truth, copied = probes.reference_copy(frames, case, world), probes.reference_copy(pasted, case, world)
    assert copied > 0.99 and copied > truth + 0.1, (truth, copied)


def test_tempting_captions_name_people_and_change_nothing_else():
    plain = data.held_out_case(data.WorldConfig(), "dialogue", 1)
    tempting = data.held_out_case(dataclasses.replace(data.WorldConfig(), nicknames=True), "dialogue", 1)
    assert torch.equal(plain["video"], tempting["video"]) and torch.equal(plain["audio"], tempting["audio"])
    assert tempting["caption"].count(", called ") == 2 and ", called " not in plain["caption"]
    assert tempting["caption"].split(". ")[-1] == plain["caption"].split(". ")[-1]    # the same lines
    # the world's own clip does not say the names: its vocalization is the plain caption's
    world = data.WorldConfig()
    assert metrics.score_clip(tempting["video"], tempting["audio"], tempting, world)["vocalization"] == \
        metrics.score_clip(plain["video"], plain["audio"], plain, world)["vocalization"]


def test_per_b_reads_language_b_cases_only():
    world = data.WorldConfig()
    case = data.held_out_case(world, "complex", 0)
    out = probes.clip_probes(case, case["video"], case["audio"], dict(per=0.25), world)
    assert (out["per_b"] == 0.25) if case["language"] == "B" else math.isnan(out["per_b"])
    assert 0 < out["copy"] <= 1 and "reward" not in out


def test_line_reading_tells_a_script_read_in_order_from_one_ignored_or_read_backwards():
    # 12 audio tokens say a line whose 4 words sit at caption tokens 11..14 (<S> at 10, <E> at 15) of 20 keys
    rows, span, keys = torch.arange(12), (10, 16), 20
    in_order = torch.zeros(12, keys)
    in_order[torch.arange(12), 11 + torch.arange(12) // 3] = 1.0                  # 3 audio tokens per word
    mass, uniform, order = probes.line_reading(in_order, rows, span, keys)
    assert mass == 1.0 and uniform == 4 / 20 and order > 0.9
    assert probes.line_reading(in_order.flip(0), rows, span, keys)[2] < -0.9          # words said back to front
    ignored = torch.full((12, keys), 1 / keys)
    ignored[:, 11:15] += 1e-3 * torch.arange(4)                                 # a hair of order, no preference
    mass, uniform, _ = probes.line_reading(ignored / ignored.sum(-1, keepdim=True), rows, span, keys)
    assert abs(mass - uniform) < 0.01


def test_script_reading_records_the_audio_tower_and_restores_it():
    net = perturbed(TwinTower(dataclasses.replace(TINY, ocf=False, mtp_ca=False)).eval())
    out = probes.script_reading(net, TINY_WORLD, cases=2)
    assert 0 < out["read_uniform"] < 1 and 0 <= out["read_mass"] <= 1 and -1 <= out["read_order"] <= 1, out
    assert not any("attend" in vars(m) for m in net.modules())
