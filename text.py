"""The toy's prompt encoder: a small character transformer standing in for umT5-XXL.

Ovi reads a prompt as umT5-XXL's 4096-d features, computed once outside the model (the `full` preset takes
them precomputed: `--text_layers 0`). The toy world's captions are short strings over a 40-symbol
alphabet (caption.py), so the toy learns its own encoder: token embeddings, a few pre-norm transformer
blocks with rotary positions, a final LayerNorm. `TextBlock` is also the block of Omni-Context Fusion
(ocf.py), which runs it over [text | references | phonemes] with SA-MRoPE positions, and of the reward
model's video trunk (reward.py), without positions.

Ovi never trains umT5, which arrived pretrained on text. The toy's counterpart: `pretrain_text_encoder` learns the
encoder on captions alone (masked tokens) before the video model exists; train.py's --text_init starts a run
from it and --freeze_text keeps it fixed, as Ovi keeps umT5.

    python text.py --out out/text_encoder.pt --config mini     # ~4 minutes on one core; prints held-out accuracy
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

import rope
from attention import attention, key_padding
from precision import LayerNorm32


class TextBlock(nn.Module):
    """Pre-norm transformer block: self-attention (with 3D RoPE when given positions' cos / sin), then a GELU
    MLP. The toy text encoder's, Omni-Context Fusion's (ocf.py) and the reward model's trunk (reward.py)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = LayerNorm32(dim), LayerNorm32(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x, cos=None, sin=None, key_mask=None):
        B, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if cos is not None:
            q, k = rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin)        # (B, H, L, hd)
        att = attention(q, k, v, key_padding(key_mask))                              # (B, H, L, hd)
        x = x + self.proj(att.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.norm2(x))


class CharTextEncoder(nn.Module):
    """Caption token ids (B, L) -> text features (B, L, dim); padding rows are returned as zeros."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(TextBlock(dim, heads) for _ in range(layers))
        self.norm = LayerNorm32(dim)
        self.head_dim = dim // heads

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # text positions follow M-RoPE's convention (Qwen2-VL, which SA-MRoPE extends): token i sits at (i, i, i)
        pos = torch.arange(ids.shape[1], device=ids.device)[None, :, None].expand(-1, -1, 3)  # (1, L, 3)
        cos, sin = rope.cos_sin(pos, self.head_dim)
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        return self.norm(x) * mask[..., None]


class Prompt(nn.Module):
    """What both towers' prompt projections read: the toy encoder's features of the caption ids, or the
    precomputed umT5 features as given (`text_layers` 0). ocf.py's PromptEncoder extends it with Omni-
    Customizer's phoneme encoder, Omni-Context Fusion and MTP-CA."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        if cfg.text_layers > 0:
            self.text_encoder = CharTextEncoder(cfg.text_vocab, cfg.text_dim, cfg.text_layers, cfg.text_heads)

    def forward(self, cond) -> torch.Tensor:
        """cond: a Conditioning -> (B, L, text_dim) prompt features."""
        return self.text_encoder(cond.text, cond.text_mask) if self.cfg.text_layers > 0 else cond.text


# ------------------------------------------------------------------------------------------------
# Pretraining the encoder on captions alone (the toy's umT5)
# ------------------------------------------------------------------------------------------------
# Ovi's towers read umT5-XXL, pretrained on text alone and frozen: its features name what a prompt says before
# the video model ever sees them. The toy's encoder otherwise learns only from the denoising loss, whose
# gradient reaches it through a prompt path the model barely uses (docs/experiments.md). Pretraining it the way
# T5 was pretrained -- recover corrupted tokens from their context -- gives it that start. We chose BERT's form
# of the objective (predict each masked token in place: an encoder and a tied output layer, no decoder), a close
# relative of T5's span corruption that needs no decoder. The result is measured in docs/experiments.md.

MASK_RATE = 0.15   # BERT's and T5's share of corrupted tokens


def caption_pool(world, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n captions of the world's clips as token ids (n, L) and their mask (stream 7: no training clip's)."""
    import data  # the toy world: this file otherwise depends on none of it
    ids = data.pad_stack([data.make_clip(data.sample_rng(seed, 7, 0, i), world)["text_ids"] for i in range(n)],
                         0)                                          # padding id 0 (caption.PAD_ID)
    return ids, ids != 0


def corrupt(ids: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, rate: float = MASK_RATE) -> tuple:
    """(inputs, chosen): `rate` of the real tokens chosen; each replaced by the padding id (the toy has no
    [MASK] token: the padding id, attended, marks "a token is missing here")."""
    chosen = (torch.rand(ids.shape, generator=gen) < rate) & mask
    return ids.masked_fill(chosen, 0), chosen


def pretrain_text_encoder(cfg, world, steps: int = 800, batch: int = 32, lr: float = 1e-3, pool: int = 2048,
                          seed: int = 0, log=print) -> tuple["CharTextEncoder", float]:
    """Masked-token pretraining of the toy encoder (cfg: a ModelConfig's text_* sizes) on the world's captions.
    Returns the encoder and its held-out accuracy on masked tokens (captions it never saw)."""
    torch.manual_seed(seed)
    encoder = CharTextEncoder(cfg.text_vocab, cfg.text_dim, cfg.text_layers, cfg.text_heads)
    ids, mask = caption_pool(world, pool, seed)
    held_ids, held_mask = caption_pool(world, 256, seed + 1)
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        pick = torch.randint(0, pool, (batch,), generator=gen)
        inputs, chosen = corrupt(ids[pick], mask[pick], gen)
        # logits only where a token was hidden (N, vocab), through the tied output layer (the input embedding)
        logits = encoder(inputs, mask[pick])[chosen] @ encoder.embed.weight.T
        loss = nn.functional.cross_entropy(logits, ids[pick][chosen])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            log(f"text encoder step {step + 1}: masked-token loss {loss.item():.3f}")
    return encoder.eval(), masked_accuracy(encoder, held_ids, held_mask)


@torch.no_grad()
def masked_accuracy(encoder: "CharTextEncoder", ids: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> float:
    """Share of masked tokens the encoder restores from their context (a held-out measure of what it learned)."""
    inputs, chosen = corrupt(ids, mask, torch.Generator().manual_seed(seed))
    logits = encoder(inputs, mask)[chosen] @ encoder.embed.weight.T               # (N, vocab)
    return (logits.argmax(-1) == ids[chosen]).float().mean().item()


def save_text_encoder(encoder: "CharTextEncoder", path: str, tokenizer: str, accuracy: float):
    """The file --text_init reads: weights, sizes, the tokenizer its ids mean, its held-out accuracy."""
    import checkpoint
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sizes = dict(vocab=encoder.embed.num_embeddings, dim=encoder.embed.embedding_dim, layers=len(encoder.blocks),
                 heads=encoder.blocks[0].heads if len(encoder.blocks) else 1)
    checkpoint.save_atomic(dict(kind="text_encoder", model=encoder.state_dict(), sizes=sizes, tokenizer=tokenizer,
                                accuracy=accuracy), path)


def load_text_encoder(path: str, cfg, tokenizer: str) -> dict:
    """The pretrained encoder's state dict, checked against the model's text_* sizes and the world's tokenizer."""
    import checkpoint
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a missing or truncated file: one line, not a traceback
        ckpt = {"kind": type(e).__name__}
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "text_encoder":  # or another kind of checkpoint
        what = ckpt.get("kind", "another kind of file") if isinstance(ckpt, dict) else "another kind of file"
        raise checkpoint.CheckpointError(f"--text_init {path}: not a text encoder written by text.py ({what})")
    checkpoint.verify_checksums(ckpt, path)
    want = dict(vocab=cfg.text_vocab, dim=cfg.text_dim, layers=cfg.text_layers, heads=cfg.text_heads)
    if ckpt["sizes"] != want or ckpt["tokenizer"] != tokenizer:
        raise checkpoint.CheckpointError(f"--text_init {path}: an encoder of {ckpt['sizes']} over {ckpt['tokenizer']} "
                                         f"tokens; this model's is {want} over {tokenizer}")
    return ckpt["model"]


def caption_world(world):
    """The captions an encoder is pretrained on: the whole world's (1-3 people), whatever scene a run reads."""
    import dataclasses
    return dataclasses.replace(world, scene="mixed", min_subjects=1, max_subjects=3)


def ensure_pretrained(path: str, cfg, world, log=print):
    """Pretrain an encoder on `world`'s captions and save it at `path`, unless one is cached there already."""
    if not os.path.exists(path):
        log(f"pretraining the toy text encoder on captions alone (masked tokens), cached at {path}")
        encoder, accuracy = pretrain_text_encoder(cfg, caption_world(world), log=log)
        log(f"held-out masked-token accuracy {accuracy:.3f}")
        save_text_encoder(encoder, path, world.tokenizer, accuracy)


def main():
    import build
    import data
    from cli import OneLineParser
    parser = OneLineParser(description="Pretrain the toy's text encoder on the world's captions (masked tokens).")
    parser.add_argument("--out", default="out/text_encoder.pt", help="where to save it (replaced if it exists)")
    parser.add_argument("--config", default="mini", choices=("toy", "mini"), help="whose text_* sizes")
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps of 32 captions")
    args = parser.parse_args()
    if args.steps < 1:
        parser.exit(2, f"error: --steps must be at least 1, got {args.steps}\n")
    cfg, world = build.PRESETS[args.config], caption_world(data.WorldConfig())
    encoder, accuracy = pretrain_text_encoder(cfg, world, steps=args.steps)
    save_text_encoder(encoder, args.out, world.tokenizer, accuracy)
    print(f"held-out masked-token accuracy {accuracy:.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
