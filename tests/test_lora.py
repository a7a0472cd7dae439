"""LoRA (lora.py): the adapted model starts as the base, merging changes nothing, only adapters and our
additions learn, a run checkpoints what trains and samples from base + adapters, and FSDP2 on two ranks
equals one rank."""
import dataclasses
import os

import pytest
import torch

import build
import checkpoint
import lora
import train
from conditioning import Conditioning
from tiny import TINY, TINY_OVERRIDES, TINY_WORLD_OVERRIDES, perturbed, tiny_batch

ADAPTED = dataclasses.replace(TINY, lora_rank=4, lora_alpha=8.0)


def forward(net, seed=0):
    b = tiny_batch(2, seed=seed)
    return net(b["video"], b["audio"], torch.tensor([0.3, 0.8]), Conditioning.from_batch(b))


def randomised(net):
    return perturbed(net, replace=True)


def test_at_initialisation_the_adapted_model_is_the_base_exactly():
    base = randomised(build.build_model(TINY))
    adapted = build.build_model(ADAPTED)
    names = dict(base.named_parameters())
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if name in names:
                p.copy_(names[name])                           # the base weights; adapters as initialised
    assert all(torch.equal(x, y) for x, y in zip(forward(base), forward(adapted)))
    targets = lora.target_pattern(ADAPTED.lora_targets)
    assert all(isinstance(m, lora.LoRALinear) == bool(targets.fullmatch(n))
               for n, m in adapted.named_modules() if isinstance(m, torch.nn.Linear))


def test_merged_equals_unmerged():
    net = randomised(build.build_model(ADAPTED))                 # B != 0: the adapters do something
    before = forward(net)
    assert lora.merge(net) == 10 * 2 * TINY.layers      # per block: self q,k,v,o; cross q,o; fusion k,v; FFN 2
    assert not any(lora.is_adapter(n) for n, _ in net.named_parameters())
    for x, y in zip(before, forward(net)):
        assert torch.allclose(x, y, atol=1e-5)


def test_only_adapters_and_additions_learn_and_the_checkpoint_holds_only_them(tmp_path):
    """A LoRA run from a full checkpoint: the base stays bitwise, adapters and additions move; ckpt.pt holds
    what trains and names the base; sampling rebuilds base + adapters."""
    tiny = dict(out_dir=str(tmp_path / "base"), batch_size=2, max_steps=2, progress_every=0, warmup_steps=0)
    train.train(train.TrainConfig(**tiny), TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    base = checkpoint.load_checkpoint(str(tmp_path / "base" / "ckpt.pt"))["model"]
    run = dict(tiny, out_dir=str(tmp_path / "lora"), init_from=str(tmp_path / "base" / "ckpt.pt"), max_steps=3)
    train.train(train.TrainConfig(**run), dict(TINY_OVERRIDES, lora_rank=4), TINY_WORLD_OVERRIDES)
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "lora" / "ckpt.pt"))
    assert ckpt["lora_base"] == run["init_from"]
    held = set(ckpt["model"])
    adapted = build.build_model(build.ModelConfig(**ckpt["model_config"]))
    assert held and all(lora.is_adapter(n) or adapted.is_addition(n) for n in held)
    assert any(n.endswith("lora_b") and ckpt["model"][n].abs().sum() > 0 for n in held)   # B left zero
    net = checkpoint.model_from_checkpoint(str(tmp_path / "lora" / "ckpt.pt"), use_ema=False)
    for name, p in net.named_parameters():
        expected = ckpt["model"][name] if name in held else base[name]   # the frozen base, bitwise
        assert torch.equal(p, expected), name


def test_fsdp2_lora_on_two_ranks_equals_one_rank(tmp_path):
    from test_train import HERE, torchrun
    script = os.path.join(HERE, "dist_check.py")
    torchrun(script, str(tmp_path / "one.pt"), "fsdp_lora", nproc=1)
    torchrun(script, str(tmp_path / "two.pt"), "fsdp_lora", nproc=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    moved = 0
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-4), name
        moved += lora.is_adapter(name)
    assert moved


def test_a_lora_checkpoint_cannot_be_the_base_of_another(tmp_path):
    """It holds adapters, not weights: adapting it would silently start from random backbone weights."""
    import pytest
    torch.save(dict(model={}, model_config=dataclasses.asdict(ADAPTED), lora_base="ovi.safetensors"), tmp_path / "l.pt")
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load_base(build.build_model(ADAPTED), str(tmp_path / "l.pt"))
    assert "is a LoRA checkpoint" in str(err.value)


def test_adapters_refuse_a_base_that_was_trained_on_since(tmp_path):
    """A LoRA checkpoint records its base by path and by fingerprint: when that file holds other weights now
    (trained on since), sampling and resuming stop in one line instead of adapting the wrong weights."""
    tiny = dict(out_dir=str(tmp_path / "base"), batch_size=2, max_steps=1, progress_every=0, warmup_steps=0)
    train.train(train.TrainConfig(**tiny), TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    base = str(tmp_path / "base" / "ckpt.pt")
    lora_run = dict(tiny, out_dir=str(tmp_path / "lora"), init_from=base, max_steps=1)
    train.train(train.TrainConfig(**lora_run), dict(TINY_OVERRIDES, lora_rank=4), TINY_WORLD_OVERRIDES)
    adapters = str(tmp_path / "lora" / "ckpt.pt")
    assert checkpoint.load_checkpoint(adapters)["lora_base_fingerprint"] == checkpoint.fingerprint(base)
    checkpoint.model_from_checkpoint(adapters)                                   # the base as it was: fine
    train.train(train.TrainConfig(**dict(tiny, max_steps=2)), TINY_OVERRIDES, TINY_WORLD_OVERRIDES)  # trained on
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.model_from_checkpoint(adapters)
    assert "holds other weights now" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(checkpoint.CheckpointError, match="holds other weights now"):
        train.train(train.TrainConfig(**dict(lora_run, max_steps=2)), dict(TINY_OVERRIDES, lora_rank=4),
                    TINY_WORLD_OVERRIDES)
