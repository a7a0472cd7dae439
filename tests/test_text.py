"""The toy text encoder pretrained on captions alone (text.py, the toy's umT5): it learns to restore masked caption
tokens from their context, and a run started from it (--text_init) holds exactly those weights, kept fixed under
--freeze_text."""
import dataclasses
import json

import pytest
import torch

import checkpoint
import text
import train
from tiny import TINY, TINY_OVERRIDES, TINY_WORLD, TINY_WORLD_OVERRIDES


def unigram_accuracy(ids, mask) -> float:
    """What guessing the most frequent token restores: the floor a context-blind encoder reaches."""
    real = ids[mask]
    return (real == real.mode().values).float().mean().item()


def test_masked_token_pretraining_beats_the_context_blind_guess_on_held_out_captions():
    encoder, accuracy = text.pretrain_text_encoder(TINY, TINY_WORLD, steps=600, batch=32, pool=96, log=lambda *_: None)
    ids, mask = text.caption_pool(TINY_WORLD, 64, seed=1)
    assert accuracy > unigram_accuracy(ids, mask) + 0.1


def test_corruption_hides_only_real_tokens_at_the_rate():
    ids, mask = text.caption_pool(TINY_WORLD, 16)
    inputs, chosen = text.corrupt(ids, mask, torch.Generator().manual_seed(0))
    assert not (chosen & ~mask).any() and (inputs[chosen] == 0).all() and torch.equal(inputs[~chosen], ids[~chosen])
    assert 0.1 < chosen.sum().item() / mask.sum().item() < 0.2


def test_a_run_starts_from_the_pretrained_encoder_and_keeps_it_frozen(tmp_path):
    encoder, accuracy = text.pretrain_text_encoder(TINY, TINY_WORLD, steps=2, batch=4, pool=8, log=lambda *_: None)
    path = str(tmp_path / "text_encoder.pt")
    text.save_text_encoder(encoder, path, TINY_WORLD.tokenizer, accuracy)
    tc = train.TrainConfig(out_dir=str(tmp_path / "run"), batch_size=2, max_steps=2, log_every=1, progress_every=0,
                           text_init=path, freeze_text=True, interleave_audio=0)
    train.train(tc, TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    saved = checkpoint.load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))
    for name, value in encoder.state_dict().items():
        assert torch.equal(saved["model"][f"prompt.text_encoder.{name}"], value), name
    assert len([json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]) == 2
    # sampling reads the EMA, which holds only what trained: the frozen encoder comes from the weights beside it
    net = checkpoint.model_from_checkpoint(str(tmp_path / "run" / "ckpt.pt"))
    assert torch.equal(net.prompt.text_encoder.embed.weight, encoder.embed.weight)


def test_an_encoder_of_other_sizes_is_refused_in_one_line(tmp_path):
    other = dataclasses.replace(TINY, text_dim=16, text_heads=2)
    encoder = text.CharTextEncoder(other.text_vocab, other.text_dim, other.text_layers, other.text_heads)
    path = str(tmp_path / "text_encoder.pt")
    text.save_text_encoder(encoder, path, TINY_WORLD.tokenizer, 0.0)
    with pytest.raises(checkpoint.CheckpointError, match="this model's is"):
        text.load_text_encoder(path, TINY, TINY_WORLD.tokenizer)
    with pytest.raises(checkpoint.CheckpointError, match="not a text encoder"):
        text.load_text_encoder(str(tmp_path / "run"), TINY, TINY_WORLD.tokenizer)


def test_a_frozen_pretrained_encoder_runs_under_bf16(tmp_path):
    """The GPU regime rehearsed: with --precision bf16 the frozen encoder is held in bf16 (like LoRA's frozen base);
    the run trains to finite losses and keeps the pretrained weights up to bf16 rounding."""
    encoder, accuracy = text.pretrain_text_encoder(TINY, TINY_WORLD, steps=2, batch=4, pool=8, log=lambda *_: None)
    path = str(tmp_path / "text_encoder.pt")
    text.save_text_encoder(encoder, path, TINY_WORLD.tokenizer, accuracy)
    tc = train.TrainConfig(out_dir=str(tmp_path / "run"), batch_size=2, max_steps=2, log_every=1, progress_every=0,
                           text_init=path, freeze_text=True, precision="bf16", interleave_audio=0)
    train.train(tc, TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "log.jsonl")]
    assert len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses)))
    saved = checkpoint.load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))["model"]["prompt.text_encoder.embed.weight"]
    assert saved.dtype == torch.bfloat16
    assert torch.allclose(saved.float(), encoder.embed.weight, rtol=1e-2, atol=1e-3)
