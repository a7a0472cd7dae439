"""Ovi's backbone, exactly (model.py): the parameter layout, the two structures Ovi has and a near copy
would miss, and loading Ovi's released safetensors through the key map (plain and FSDP2-sharded).

tests/ovi_parameters.tsv lists every tensor of Ovi's FusionModel (its released model code) with its shape.
"""
import ast
import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import save_file

import build
import checkpoint
import model
import sharded
from conditioning import Conditioning
from test_train import torchrun
from tiny import TINY

HERE = os.path.dirname(os.path.abspath(__file__))


def ovi_layout() -> dict:
    rows = [line.split("\t") for line in open(os.path.join(HERE, "ovi_parameters.tsv")) if not line.startswith("#")]
    return {name: tuple(ast.literal_eval(shape)) for name, shape in rows}


def test_full_preset_counts_exactly_ovi():
    with torch.device("meta"):
        counts = build.count_parameters(build.build_model(build.PRESETS["full"]))
    assert counts["backbone"] == build.OVI_PARAMETERS == sum(torch.Size(s).numel() for s in ovi_layout().values())


def test_every_ovi_tensor_maps_onto_the_full_preset_with_its_shape():
    with torch.device("meta"):
        net = build.build_model(build.PRESETS["full"])
    ours = dict(net.named_parameters())
    layout = ovi_layout()
    assert len(layout) == 2073
    mapped = {}
    for name, shape in layout.items():
        target = checkpoint.ovi_to_ours(name)
        assert target in ours, name
        expect = (shape[0], torch.Size(shape[1:]).numel()) if name == "video_model.patch_embedding.weight" else shape
        assert tuple(ours[target].shape) == expect, name
        mapped[target] = name
    assert len(mapped) == len(layout)                                  # one to one
    backbone = [n for n in ours if not net.is_addition(n)]
    assert sorted(backbone) == sorted(mapped)                          # and nothing of our backbone is left out


def test_cross_tower_keys_read_layer_normalised_tokens():
    """Ovi's pre_attn_norm_fusion: the other tower's tokens are LayerNorm'ed (affine) before k/v_fusion."""
    torch.manual_seed(0)
    attn = model.CrossAttention(TINY)
    with torch.no_grad():
        attn.pre_attn_norm_fusion.weight.uniform_(0.5, 1.5)
        attn.pre_attn_norm_fusion.bias.normal_()
    x, text, other = torch.randn(1, 3, 32), torch.randn(1, 4, 32), torch.randn(1, 5, 32)
    no_rotation = lambda n: (torch.ones(1, n, 8), torch.zeros(1, n, 8))  # noqa: E731
    own = model.TowerInputs(e=None, emb=None, n=3, mask=None, rope=no_rotation(3), text=text)
    other_io = model.TowerInputs(e=None, emb=None, n=5, mask=None, rope=no_rotation(5), text=None)
    out = attn(x, own, other, other_io, None)
    # shifting and scaling the other tower's tokens per token changes nothing after a LayerNorm
    same = attn(x, own, other * 3 + 2, other_io, None)
    assert torch.allclose(out, same, atol=1e-4)
    # the reference spelled out: k/v from LN(other)
    q = attn.split(attn.norm_q(attn.q(x)))
    normed = torch.nn.functional.layer_norm(other, (32,), attn.pre_attn_norm_fusion.weight,
                                            attn.pre_attn_norm_fusion.bias, eps=TINY.eps)
    k, v = attn.split(attn.norm_k_fusion(attn.k_fusion(normed))), attn.split(attn.v_fusion(normed))
    text_part = torch.nn.functional.scaled_dot_product_attention(
        q, attn.split(attn.norm_k(attn.k(text))), attn.split(attn.v(text)))
    fusion_part = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    expected = attn.o((text_part + fusion_part).transpose(1, 2).flatten(2))
    assert torch.allclose(out, expected, atol=1e-5)


def test_audio_stem_is_ovis_conv_swiglu_without_skip_or_biases():
    torch.manual_seed(0)
    stem = model.ConvAudioStem(4, 8, 16)
    assert stem.conv.bias is not None and all(w.bias is None for w in (stem.w1, stem.w2, stem.w3))
    x = torch.randn(2, 10, 4)
    h = torch.nn.functional.silu(stem.conv(x.transpose(1, 2)))
    assert torch.allclose(stem(x), stem.w2(torch.nn.functional.silu(stem.w1(h)) * stem.w3(h)).transpose(1, 2))
    with torch.no_grad():
        stem.w2.weight.zero_()
    assert stem(x).abs().max() == 0      # no residual: a zero MLP gives zero, not h


def small_ovi_config():
    """Ovi's layout (conv audio stem, latent patch 1x2x2, precomputed text) at a size a test can hold."""
    return dataclasses.replace(build.PRESETS["full"], dim=32, layers=2, heads=2, ffn=48, audio_stem_hidden=24,
                               text_dim=16, ocf_dim=16, ocf_heads=2, phoneme_layers=1, ocf_layers=1)


def write_ovi_like(path, cfg, split=False):
    """A synthetic checkpoint in Ovi's names and layouts (the inverse map of checkpoint.OVI_RENAMES), from a
    randomly initialised model of ours. Returns {our name: the value written}."""
    torch.manual_seed(1)
    source = build.build_model(cfg)
    inverse = {name: checkpoint.ovi_to_ours(name) for name in ovi_layout()}
    inverse = {k: v for k, v in inverse.items() if not v.startswith("layers.") or int(v.split(".")[1]) < cfg.layers}
    params = dict(source.named_parameters())
    tensors = {}
    for ovi_name, ours in inverse.items():
        value = params[ours].detach().clone()
        if ovi_name == "video_model.patch_embedding.weight":  # back to Conv3d (D, C, pt, ph, pw)
            value = value.reshape(cfg.dim, cfg.patch_t, cfg.patch_h, cfg.patch_w, cfg.video_channels).permute(0, 4, 1, 2, 3)
        tensors[ovi_name] = value.contiguous()
    if split:  # a sharded set with an index, as large releases ship
        names = sorted(tensors)
        parts = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
                 "model-00002-of-00002.safetensors": names[len(names) // 2:]}
        for file, keys in parts.items():
            save_file({k: tensors[k] for k in keys}, os.path.join(path, file))
        index = os.path.join(path, "model.safetensors.index.json")
        json.dump({"weight_map": {k: f for f, keys in parts.items() for k in keys}}, open(index, "w"))
        return index, {n: p.detach() for n, p in params.items()}
    file = os.path.join(path, "ovi.safetensors")
    save_file(tensors, file)
    return file, {n: p.detach() for n, p in params.items()}


@pytest.mark.parametrize("split", [False, True])
def test_a_synthetic_ovi_checkpoint_loads_and_reproduces_the_source(tmp_path, split):
    cfg = small_ovi_config()
    path, source = write_ovi_like(str(tmp_path), cfg, split)
    torch.manual_seed(2)
    net = build.build_model(cfg)
    lines = []
    report = checkpoint.load_ovi_weights(net, path, log=lines.append)
    ours = dict(net.named_parameters())
    for name in report["loaded"]:
        assert torch.equal(ours[name], source[name]), name
    assert report["fresh"] and all(net.is_addition(n) for n in report["fresh"])
    assert len(lines) == 1 and "initialised fresh: prompt.mtp_ca, prompt.ocf, prompt.phoneme_encoder" in lines[0]
    # the same weights give the same forward as the model they were written from
    reference = build.build_model(cfg)
    checkpoint.load_state(reference, source)
    with torch.no_grad():
        for name in report["fresh"]:
            ours[name].copy_(source[name])
    video, audio = torch.randn(1, 2, 48, 4, 4), torch.randn(1, 6, 20)
    cond = latent_conditioning(cfg)
    out, ref = net(video, audio, torch.tensor([0.7]), cond), reference(video, audio, torch.tensor([0.7]), cond)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


def latent_conditioning(cfg, B=1):
    """Conditioning as a latent shard brings it: text features, one subject with reference latents."""
    return Conditioning(text=torch.randn(B, 5, cfg.text_dim), text_mask=torch.ones(B, 5, dtype=torch.bool),
                        subject_spans=torch.tensor([[[0, 2]]]).expand(B, -1, -1), speech_spans=torch.tensor([[[2, 5]]]).expand(B, -1, -1),
                        line_mask=torch.ones(B, 1, dtype=torch.bool), line_phonemes=torch.tensor([[[3, 4, 5]]]).expand(B, -1, -1),
                        phoneme_mask=torch.ones(B, 1, 3, dtype=torch.bool), ref_images=torch.randn(B, 1, 48, 4, 4),
                        ref_audio=torch.randn(B, 1, 4, 20), image_mask=torch.ones(B, 1, dtype=torch.bool),
                        voice_mask=torch.ones(B, 1, dtype=torch.bool))


def test_bad_ovi_files_stop_with_one_line(tmp_path):
    cfg = small_ovi_config()
    path, _ = write_ovi_like(str(tmp_path), cfg)
    cases = {}
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    cases["not a readable"] = str(garbage)
    save_file({"video_model.mystery.weight": torch.zeros(2)}, str(tmp_path / "unknown.safetensors"))
    cases["unknown tensor 'video_model.mystery.weight'"] = str(tmp_path / "unknown.safetensors")
    save_file({"video_model.head.head.bias": torch.zeros(7)}, str(tmp_path / "shape.safetensors"))
    cases["'video_model.head.head.bias' has shape (7,)"] = str(tmp_path / "shape.safetensors")
    save_file({"video_model.head.head.bias": torch.zeros(192)}, str(tmp_path / "partial.safetensors"))
    cases["lacks"] = str(tmp_path / "partial.safetensors")
    cases["no such checkpoint"] = str(tmp_path / "missing.safetensors")
    for message, bad in cases.items():
        with pytest.raises(checkpoint.CheckpointError) as err:
            checkpoint.load_ovi_weights(build.build_model(cfg), bad, log=lambda *_: None)
        assert message in str(err.value) and "\n" not in str(err.value), (message, str(err.value))


def test_train_init_from_ovi_fills_fsdp_shards_like_one_rank(tmp_path):
    """--init_from Ovi's safetensors under FSDP2 (2 ranks, each fills only its own rows) and on 1 rank:
    the saved weights agree, and the backbone is the file's."""
    cfg = small_ovi_config()
    path, source = write_ovi_like(str(tmp_path), cfg)
    shard = tmp_path / "shard.pt"
    c = latent_conditioning(cfg, B=2)
    import shards
    shards.write_shard(str(shard), dict(video=torch.randn(2, 2, 48, 4, 4), audio=torch.randn(2, 6, 20), text_emb=c.text,
                                        text_mask=c.text_mask, ref_images=c.ref_images, ref_audio=c.ref_audio,
                                        subject_mask=c.voice_mask, subject_spans=c.subject_spans,
                                        speech_spans=c.speech_spans, line_speaker=torch.zeros(2, 1, dtype=torch.long),
                                        line_mask=c.line_mask, line_phonemes=c.line_phonemes),
                       shards.ShardSpec(48, 20, cfg.text_dim))
    sizes = dict(dim=32, layers=2, heads=2, ffn=48, audio_stem_hidden=24, text_dim=16, ocf_dim=16, ocf_heads=2,
                 phoneme_layers=1, ocf_layers=1)
    flags = ["train.py", "--config", "full", "--init_from", path, "--data", str(shard), "--interleave_audio", "0",
             "--batch_size", "1", "--max_steps", "1", "--lr", "0", "--warmup_steps", "1",
             *[f"--{k}={v}" for k, v in sizes.items()]]
    torchrun(*flags, "--out_dir", str(tmp_path / "one"), nproc=1)
    torchrun(*flags, "--out_dir", str(tmp_path / "two"), "--fsdp", "true", nproc=2)
    one = checkpoint.load_checkpoint(str(tmp_path / "one" / "ckpt.pt"))["model"]
    two = sharded.consolidate(str(tmp_path / "two" / "ckpt_sharded"), str(tmp_path / "two.pt"))["model"]
    net = build.build_model(cfg)
    for name, value in source.items():
        assert torch.allclose(one[name], two[name]), name
        if not net.is_addition(name):
            assert torch.equal(one[name], value), name       # lr 0: the weights are exactly the file's


def test_train_init_from_a_bad_file_fails_in_one_line(tmp_path):
    bad = tmp_path / "ovi.safetensors"
    bad.write_bytes(b"not a safetensors file")
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "train.py", "--config", "full", "--init_from", str(bad), "--out_dir",
                           str(tmp_path / "run"), "--data", str(tmp_path / "*.pt"), "--dim", "32", "--layers", "1", "--heads", "2", "--ffn", "48",
                           "--audio_stem_hidden", "24", "--text_dim", "16", "--ocf_dim", "16", "--ocf_heads", "2"],
                          cwd=os.path.dirname(HERE), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: not a readable .safetensors file")
