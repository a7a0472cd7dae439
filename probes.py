"""Mechanism probes: what each ablated mechanism does inside the model, next to the tables' end-to-end claims.

An ablation table says whether a row moves a metric; a probe says why it does or does not (ablations.py prints
them under each table). Each is measured on the same held-out cases the claims are scored on:

  bind_ref_text     binding in the prompt (SA-MRoPE, Syn-RoPE, anchors, identity embeddings): the video
                    tower's text attention from subject k's reference tokens, the share of its mass on k's own
                    descriptor against the other subject's. 0.5 = no binding; 1 = every bit on its own words.
  bind_region_text  the same from the video tokens inside subject k's box (its generated region).
  bind_ref_box      self-attention from subject k's reference tokens: the share on k's own box against the
                    other's (does the reference find its person in the picture?).
  tempting          caption vocalization (Omni-Customizer's MTP-CA claim) on captions built to tempt it: every
                    descriptor also gives the person a nickname of language A (data.nickname), words a model
                    that speaks its caption would say. The pictures, voices and lines are the same cases'.
  per_b             PER on the language-B cases only (the interleaved audio-only corpus is 80% language B, the
                    paired clips 10%): where Omni-Customizer's TTS-interleaved steps should act.
  copy              copy-paste of the reference: the best placement of the reference portrait (backdrop, pose
                    and all), at the size a head-and-shoulders crop of the subject has in the clip, scored like
                    Face-Sim over every pixel. References are cross-pair here, so the world's own clip scores
                    what a faithful clip that does not paste gets; a model far above it pastes the reference,
                    the failure the curriculum and cross-pair data are meant to prevent (DreamID-Omni,
                    Omni-Customizer).
  reward            DreamVideo-Omni's LIRM reward of the sample against its reference (a probability), next to
                    Face-Sim and sharpness: a reward that climbs while they do not is reward hacking.
  read_*            the audio tower reading its script (bench.py --quality prints it under every table): while a
                    line is spoken, read_mass is the share of the tower's text attention on that line's words,
                    read_uniform what uniform attention would put there, read_order the correlation of time with
                    the position read inside the line (1: word after word, as a TTS model aligned to its script).
                    It tells a model that has not yet learned where it is in its lines from one that has (PER).

The attention probes read the model at three noise levels of the case's own latents (one forward each, no
sampling); the others read the sampled clips bench.quality scores.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

import caption as caption_lib
import data
import metrics
from attention import attention_weights, key_padding
from conditioning import Conditioning, box_masks, relative_boxes

BINDING = ("bind_ref_text", "bind_region_text", "bind_ref_box")
PROBE_T = (0.25, 0.5, 0.75)   # noise levels the attention probes read (rectified-flow t; 1 = pure noise)


# ------------------------------------------------------------------------------------------------
# Probes of a sampled clip (bench.quality's `probe` hook)
# ------------------------------------------------------------------------------------------------


def clip_probes(case: dict, video: torch.Tensor, mel: torch.Tensor, scored: dict, world: data.WorldConfig,
                lirm=None) -> dict:
    """per_b, copy (and reward, with a LIRM) of one clip; NaN where a probe does not apply (nanmean skips it)."""
    frames = ((video.float() + 1) / 2).clamp(0, 1)                               # (T, 3, H, W) in [0, 1]
    out = dict(per_b=scored["per"] if case["language"] == "B" else float("nan"),
               copy=reference_copy(frames, case, world))
    if lirm is not None:
        out["reward"] = lirm_reward(lirm, video, case)
    return out


def reference_copy(frames: torch.Tensor, case: dict, world: data.WorldConfig) -> float:
    """How closely each on-screen subject's reference portrait appears, pasted whole, in the frames (mean over
    subjects of the per-frame best placement's 1 - RMS difference)."""
    on_screen = [k for k, r in enumerate(case["roles"]) if r != "offscreen"]
    if not on_screen:
        return float("nan")
    # a crop_portrait of the clip spans 3.2 head radii
    side = max(4, round(3.2 * data.layout_radius(len(on_screen), world.image_size)))
    values = []
    for k in on_screen:
        ref = (case["ref_images"][k].float() + 1) / 2                             # (3, r, r) in [0, 1]
        template = F.interpolate(ref[None], size=(side, side), mode="nearest")[0]  # (3, side, side)
        score, _, _ = metrics.match(frames, template, torch.ones(side, side))      # (T,) best placement per frame
        values.append(score.clamp_min(0).mean().item())
    return float(np.mean(values))


def lirm_reward(lirm, video: torch.Tensor, case: dict) -> float:
    """The LIRM's probability that the clip shows the first subject's reference (LIReFL reads subject 0 too)."""
    device = next(lirm.parameters()).device
    with torch.no_grad():
        logit = lirm(video[None].float().to(device), case["ref_images"][:1].float().to(device))
    return torch.sigmoid(logit).item()


# ------------------------------------------------------------------------------------------------
# Attention probes: where the video tower looks
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def recording_attention(net, record: list, tower: str = "video"):
    """Inside the block, every `tower` block's self-attention and text attention appends (kind, q, k, key_mask)
    to `record` (kind "self" or "text"); the fusion keys of the same cross sublayer are not recorded."""
    patched = []
    for layer in net.layers:
        block = getattr(layer, tower)
        for kind, module in (("self", getattr(block, "self_attn", None)),
                             ("text", getattr(block, "cross_attn", None))):
            if module is None:
                continue
            original = module.attend

            def attend(q, k, v, key_mask, shared_kv=False, _original=original, _kind=kind):
                if _kind == "self" or shared_kv:  # the text call is the one with keys shared by every rank
                    record.append((_kind, q.detach().float(), k.detach().float(), key_mask))
                return _original(q, k, v, key_mask, shared_kv)
            module.attend = attend  # an instance attribute: shadows the method until removed
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.attend


def attention_probs(q, k, key_mask) -> torch.Tensor:
    """The attention weights with the key mask, averaged over heads: (S_q, S_k) of batch row 0."""
    mask = None if key_mask is None else key_padding(key_mask[:1]).to(q.device)  # (1, 1, 1, S_k)
    return attention_weights(q[:1], k[:1], mask)[0].mean(0)


def descriptor_spans(text_ids: torch.Tensor, subjects: int) -> list[tuple]:
    """[start, end) of each subject's descriptor: the caption's first `subjects` sentences (true of the anchored
    captions and of the label-only ones of --anchors false alike)."""
    ends = (text_ids == caption_lib.TOKEN_ID["."]).nonzero().flatten().tolist()
    starts = [0] + [e + 1 for e in ends]
    return [(starts[k], ends[k] + 1) for k in range(min(subjects, len(ends)))]


def box_tokens(batch: dict, grid: tuple) -> torch.Tensor:
    """(K, T'H'W') True where a content token lies mostly inside subject k's box and in no other's."""
    boxes = relative_boxes(batch)[0]                                              # (K, T, 4) fractions
    H, W = batch["video"].shape[-2:]
    inside = box_masks(boxes, H, W).float()                                       # (K, T, H, W)
    pooled = F.adaptive_avg_pool3d(inside[None], grid)[0] > 0.5                   # (K, T', H', W')
    alone = pooled & (pooled.sum(0, keepdim=True) == 1)                           # overlaps belong to nobody
    return alone.flatten(1)


def share(probs: torch.Tensor, queries: torch.Tensor, own: torch.Tensor, other: torch.Tensor) -> float:
    """Mass on `own` keys against `other` keys, from the `queries` rows: own / (own + other)."""
    if not queries.any() or not own.any() or not other.any():
        return float("nan")
    rows = probs[queries]                                                         # (q, S_k)
    a, b = rows[:, own].sum(-1), rows[:, other].sum(-1)
    return (a / (a + b).clamp_min(1e-12)).mean().item()


def binding_of_record(record: list, n_content: int, subjects: int, spans: list, boxes: torch.Tensor) -> dict:
    """bind_* from one forward's recorded attention: each subject against the next, averaged over layers."""
    values = {name: [] for name in BINDING}
    for kind, q, k, key_mask in record:
        probs = attention_probs(q, k, key_mask)                                   # (S_q, S_k)
        S_q = probs.shape[0]
        per_ref = (S_q - n_content) // subjects                                   # 0: references not in this stream
        for s in range(subjects):
            o = (s + 1) % subjects                                                # "the other subject"
            ref_q = torch.zeros(S_q, dtype=torch.bool)
            ref_q[n_content + s * per_ref: n_content + (s + 1) * per_ref] = per_ref > 0
            region_q = torch.zeros(S_q, dtype=torch.bool)
            region_q[:n_content] = boxes[s]
            if kind == "text":
                own, other = (torch.zeros(probs.shape[1], dtype=torch.bool) for _ in range(2))
                own[slice(*spans[s])], other[slice(*spans[o])] = True, True
                values["bind_ref_text"].append(share(probs, ref_q, own, other))
                values["bind_region_text"].append(share(probs, region_q, own, other))
            else:
                own, other = (torch.zeros(S_q, dtype=torch.bool) for _ in range(2))
                own[:n_content], other[:n_content] = boxes[s], boxes[o]
                values["bind_ref_box"].append(share(probs, ref_q, own, other))
    return {name: float(np.nanmean(v)) if v and not all(math.isnan(x) for x in v) else float("nan")
            for name, v in values.items()}


def recorded_forwards(net, world: data.WorldConfig, subset: str, cases: int, codec=None, device="cpu", seed: int = 0,
                      tower: str = "video", min_subjects: int = 1):
    """Per held-out `subset` case with at least `min_subjects` people and per probe noise level: one forward of
    the case's own clip noised to that level, recording `tower`'s attention. Yields (case, batch, model_in,
    record): the world's case, its collated batch, what the model read (latents for mini-Ovi) and the record."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(cases):
        case = data.held_out_case(world, subset, i)
        batch = data.collate([case])
        model_in = codec.encode_batch(batch) if codec is not None else batch     # mini-Ovi reads latents
        cond = Conditioning.from_batch(model_in).to(device)
        if cond.subjects < min_subjects:  # skipped before any noise is drawn: the others' noise stays the same
            continue
        video, audio = model_in["video"].to(device), model_in["audio"].to(device)
        for t in PROBE_T:
            noise_v = torch.randn(video.shape, generator=gen).to(device)
            noise_a = torch.randn(audio.shape, generator=gen).to(device)
            record = []
            with torch.no_grad(), recording_attention(net, record, tower):
                tt = torch.full((1,), t, device=device)
                net((1 - t) * video + t * noise_v, (1 - t) * audio + t * noise_a, tt, cond)
            yield case, batch, model_in, record


def mean_values(values: dict) -> dict:
    """{name: the mean of its values, NaNs left out (NaN when there is nothing else)}."""
    return {name: float(np.nanmean(v)) if v and not all(math.isnan(x) for x in v) else float("nan")
            for name, v in values.items()}


def attention_binding(net, world: data.WorldConfig, cases: int, codec=None, device="cpu", seed: int = 0,
                      subset: str = "dialogue") -> dict:
    """{bind_*: the mean over cases and noise levels} of the held-out `subset` cases (two or more people)."""
    values = {name: [] for name in BINDING}
    for _, batch, model_in, record in recorded_forwards(net, world, subset, cases, codec, device, seed, min_subjects=2):
        K = batch["ref_images"].shape[1]
        grid = net.video_grid(model_in["video"].shape)
        spans = descriptor_spans(batch["text_ids"][0], K)
        for name, v in binding_of_record(record, math.prod(grid), K, spans, box_tokens(batch, grid)).items():
            values[name].append(v)
    return mean_values(values)


# ------------------------------------------------------------------------------------------------
# The audio tower reading its script (issue 24: why the words do not come)
# ------------------------------------------------------------------------------------------------


def line_reading(probs: torch.Tensor, rows: torch.Tensor, span: tuple, n_keys: int) -> tuple[float, float, float]:
    """For the audio tokens `rows` (in time order) said during one line and the line's caption tokens `span`
    ([<S>, <E>] inclusive) among `n_keys` unmasked caption tokens: (mass on the line's words, the mass they
    would get if attention were uniform, the correlation of time with the attention-weighted position read
    within the line). A TTS model aligned to its script reads the line's words in order: mass well above
    uniform, correlation near 1."""
    words = torch.arange(span[0] + 1, span[1] - 1)                                # the tokens between <S> and <E>
    if len(rows) < 3 or len(words) < 2:
        return float("nan"), float("nan"), float("nan")
    on_line = probs[rows][:, words]                                               # (q, words)
    mass = on_line.sum(-1).mean().item()
    uniform = len(words) / n_keys
    where = (on_line / on_line.sum(-1, keepdim=True).clamp_min(1e-12)) @ torch.arange(len(words)).float()  # (q,)
    order = torch.corrcoef(torch.stack([torch.arange(len(rows)).float(), where]))[0, 1].item()
    return mass, uniform, order


def script_reading(net, world: data.WorldConfig, cases: int, codec=None, device="cpu", seed: int = 0,
                   subset: str = "single") -> dict:
    """The audio tower's text attention while each line is spoken, over held-out `subset` cases at the probe's
    noise levels, averaged over layers, lines, levels and cases: read_mass (on the line's own words),
    read_uniform (what uniform attention would give) and read_order (see line_reading)."""
    values = {"read_mass": [], "read_uniform": [], "read_order": []}
    for case, _, model_in, record in recorded_forwards(net, world, subset, cases, codec, device, seed, tower="audio"):
        n_audio = model_in["audio"].shape[1] // net.cfg.audio_patch              # content tokens, in time order
        per_second = n_audio / world.clip_seconds
        for kind, q, k, key_mask in record:
            if kind != "text":
                continue
            probs = attention_probs(q, k, key_mask)                               # (S_q, S_k)
            n_keys = k.shape[2] if key_mask is None else int(key_mask[0].sum())
            for (_, start, end), span in zip(case["line_times"], case["speech_spans"].tolist()):
                rows = torch.arange(math.ceil(start * per_second), min(n_audio, math.floor(end * per_second)))
                for name, v in zip(values, line_reading(probs, rows, span, n_keys)):
                    values[name].append(v)
    return mean_values(values)
