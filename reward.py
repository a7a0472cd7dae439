"""Latent identity reward: DreamVideo-Omni's LIRM and the LIReFL objective (its stage 2).

LIRM (latent identity reward model) answers "is the person in this (noisy, or one-step denoised) video
the person in this reference?" with a scalar:

    F = trunk(patchify(video))                  spatio-temporal features (B, N, d)
    Q = embed(patchify(reference))              the reference's identity features (B, M, d), the queries
    h = CrossAttention(Q, F, F)                 the identity looks for itself in the video
    r = MLP(mean_M(h + Q))                      (B,) the reward (a logit)

The paper takes F from a frozen copy of the video tower; ours is a small trunk of its own (two transformer
blocks over the video's patches), trained here on the toy world, where identity labels are exact: a clip
with its own subject's cross-pair reference is a match, with another clip's subject's reference not, at
noise levels t in [0, 0.6] so the reward reads the blurred predictions LIReFL will give it.

LIReFL (train.py, --reward_model): from the step's random t, the model's one gradient-enabled denoising
step predicts x0_hat = x_t - t v_hat; the frozen LIRM scores it against the reference, and
    L = L_sft + lambda_2 * L_LIReFL,   L_LIReFL = -E[r].

    python reward.py --out out/lirm.pt --steps 600      # trains LIRM, prints held-out accuracy
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoint
import data
from attention import attention
from precision import LayerNorm32
from text import TextBlock


@dataclass
class RewardConfig:
    dim: int = 96        # feature width
    heads: int = 4
    layers: int = 2      # trunk blocks over the video's patches
    patch: int = 4       # pixels per patch side (video patches also span `patch` frames)


class LIRM(nn.Module):
    """The reward r(video, reference): a video trunk, the reference's patches as queries, one cross-attention."""

    def __init__(self, cfg: RewardConfig = RewardConfig(), frames: int = 16, size: int = 32, ref_size: int = 16):
        super().__init__()
        self.cfg, d, p = cfg, cfg.dim, cfg.patch
        n_video = (frames // p) * (size // p) ** 2  # tubelets of p frames x p x p pixels
        self.video_embed = nn.Linear(3 * p ** 3, d)
        self.video_pos = nn.Parameter(torch.randn(1, n_video, d) * 0.02)          # learned: the trunk is small
        # no positions in the trunk: the learned video_pos added once at the input is all it needs
        self.trunk = nn.ModuleList(TextBlock(d, cfg.heads) for _ in range(cfg.layers))
        self.ref_embed = nn.Linear(3 * p * p, d)  # the reference is one image: p x p patches
        self.ref_pos = nn.Parameter(torch.randn(1, (ref_size // p) ** 2, d) * 0.02)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))     # identity cross-attention
        # a logit, not a probability: LIReFL's -E[r] then keeps a gradient where a sigmoid would saturate
        self.head = nn.Sequential(LayerNorm32(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))

    def patches(self, video):
        """(B, T, 3, H, W) -> (B, T/p * H/p * W/p, p^3 * 3)."""
        p = self.cfg.patch
        B, T, C, H, W = video.shape
        x = video.reshape(B, T // p, p, C, H // p, p, W // p, p).permute(0, 1, 4, 6, 2, 5, 7, 3)
        return x.reshape(B, -1, p ** 3 * C)

    def forward(self, video: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """video (B, T, 3, H, W) in [-1, 1] (clean, noisy or predicted); reference (B, 3, h, w) -> reward (B,)."""
        p, H = self.cfg.patch, self.cfg.heads
        f = self.video_embed(self.patches(video)) + self.video_pos                 # (B, N, d)
        for block in self.trunk:
            f = block(f)
        ref = reference.unfold(2, p, p).unfold(3, p, p)                             # (B, 3, h/p, w/p, p, p)
        ref = ref.permute(0, 2, 3, 4, 5, 1).flatten(1, 2).flatten(2)                # (B, M, p*p*3)
        q = self.ref_embed(ref) + self.ref_pos                                      # Q: (B, M, d)
        split = lambda t: t.unflatten(-1, (H, -1)).transpose(1, 2)  # noqa: E731   (B, H, S, d/H)
        h = attention(split(self.q(q)), split(self.k(f)), split(self.v(f)))         # the identity queries the video
        h = self.o(h.transpose(1, 2).flatten(2))                                     # (B, M, d)
        # the residual keeps what the reference itself looked like next to what it found in the video
        return self.head((h + q).mean(1)).squeeze(-1)                               # (B,)


def lirefl_reward(lirm: LIRM, xt_v, t, pred_v, reference) -> torch.Tensor:
    """LIReFL's reward (B,) of one gradient-enabled denoising step: x0_hat = x_t - t v_hat, the model's one-step
    estimate of the clean video, scored by the frozen LIRM against the reference face; train.py's loss
    subtracts lambda_2 * its mean. The gradient flows through v_hat into the generator, not into LIRM."""
    x0_hat = xt_v - t.view(-1, 1, 1, 1, 1) * pred_v                              # (B, T, C, H, W)
    return lirm(x0_hat.float(), reference)


class DecodedReward(nn.Module):
    """A pixel LIRM over a latent model (mini-Ovi): the one-step estimate x0_hat is a latent, so the toy codec's
    decoder (a frozen copy, on the reward's device) turns it into pixels first, differentiably, and the LIRM
    scores those against the pixel reference. DreamVideo-Omni's LIRM reads Wan's latents directly through a
    copy of the video tower; ours is a small pixel model, and the decoder is the bridge."""

    def __init__(self, lirm: LIRM, codec):
        super().__init__()
        self.lirm, self.codec = lirm, copy.deepcopy(codec).requires_grad_(False)

    def forward(self, latents: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return self.lirm(self.codec.decode_video(latents), reference)               # (B, T, 3, H, W) pixels


def clip_pool(world: data.WorldConfig, seed: int, stream: int, n: int):
    """n single-subject clips: videos (n, T, 3, H, W) and their subjects' references (n, 3, h, w)."""
    clips = [data.make_clip(data.sample_rng(seed, stream, 0, i), world) for i in range(n)]
    return torch.stack([c["video"] for c in clips]), torch.stack([c["ref_images"][0] for c in clips])


def pairs(videos, refs, index: torch.Tensor, gen: torch.Generator):
    """For clips `index` of a pool: each with its own person's reference (label 1) and with another clip's
    person's (label 0), noised to t in [0, 0.6]. Returns videos (2n, ...), references (2n, ...), labels (2n,)."""
    n = len(index)
    # a shift of 1..len-1 around the pool: a random partner that is never the clip itself
    other = (index + torch.randint(1, len(videos), (n,), generator=gen)) % len(videos)   # never the same clip
    video = torch.cat([videos[index], videos[index]])  # the same clips twice: label 1, then label 0
    # up to t = 0.6: LIReFL scores one-step predictions, which are blurred like a moderately noisy clip
    t = torch.rand(2 * n, generator=gen).view(-1, 1, 1, 1, 1) * 0.6
    video = (1 - t) * video + t * torch.randn(video.shape, generator=gen)
    return video, torch.cat([refs[index], refs[other]]), torch.cat([torch.ones(n), torch.zeros(n)])


def reward_world() -> data.WorldConfig:
    """Single subjects with cross-pair references: the reference is never a crop of the clip itself."""
    return dataclasses.replace(data.WorldConfig(), scene="single", cross_pair=1.0)


def train_lirm(steps: int, batch: int = 16, seed: int = 0, lr: float = 1e-3, pool: int = 512, log=print,
               cfg: RewardConfig = RewardConfig()) -> LIRM:
    """Fit LIRM on a pool of toy clips with binary cross-entropy (match vs swapped identity); every step
    draws other clips, other partners and other noise from the pool."""
    torch.manual_seed(seed)
    model = LIRM(cfg)
    videos, refs = clip_pool(reward_world(), seed, 5, pool)  # stream 5: not the generator's training stream
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        video, ref, labels = pairs(videos, refs, torch.randint(0, pool, (batch,), generator=gen), gen)
        loss = F.binary_cross_entropy_with_logits(model(video, ref), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            log(f"step {step + 1}: loss {loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def held_out_accuracy(model: LIRM, cases: int = 64, seed: int = 2024) -> float:
    """Share of held-out clips (people never trained on) whose own person's reference scores above another's."""
    videos, refs = clip_pool(reward_world(), seed, 6, cases)
    video, ref, _ = pairs(videos, refs, torch.arange(cases), torch.Generator().manual_seed(seed))
    r = model(video, ref)  # the first half with their own person's reference, the second with another's
    return (r[:cases] > r[cases:]).float().mean().item()  # a pairwise ranking: the threshold does not matter


def load_lirm(path: str, world: data.WorldConfig | None = None) -> LIRM:
    """A frozen LIRM from `python reward.py --out PATH`; with `world`, checked to read that world's clips."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = LIRM(RewardConfig(**ckpt["config"]), **ckpt["sizes"])
        # an earlier version named the trunk blocks' output projection `o` (text.TextBlock calls it `proj`)
        model.load_state_dict({re.sub(r"^(trunk\.\d+)\.o\.", r"\1.proj.", k): v for k, v in ckpt["model"].items()})
    except Exception as e:  # a truncated file, another kind of checkpoint: one line, not a traceback
        raise checkpoint.CheckpointError(f"{path}: not a reward model written by reward.py ({type(e).__name__})") from None
    checkpoint.verify_checksums(ckpt, path)
    sizes = dict(frames=world.frames, size=world.image_size, ref_size=world.ref_image_size) if world else None
    if sizes and sizes != ckpt["sizes"]:
        raise checkpoint.CheckpointError(f"{path}: a reward model for clips of {ckpt['sizes']}, this run's are {sizes}")
    for p in model.parameters():  # frozen: LIReFL's gradient flows through it into the generator only
        p.requires_grad_(False)
    return model.eval()


def save_lirm(model: LIRM, path: str):
    """The file load_lirm reads: weights, config and the clip sizes it scores (written whole, then renamed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    world = reward_world()
    checkpoint.save_atomic(dict(model=model.state_dict(), config=dataclasses.asdict(model.cfg),
                                sizes=dict(frames=world.frames, size=world.image_size, ref_size=world.ref_image_size)),
                           path)


def main():
    from cli import OneLineParser, out_dir_problems
    parser = OneLineParser(description="Train DreamVideo-Omni's latent identity reward model on the toy world.")
    parser.add_argument("--out", default="out/lirm.pt", help="where to save it")
    parser.add_argument("--steps", type=int, default=600, help="training steps (batch 16 matching + 16 swapped)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    problems = out_dir_problems(os.path.dirname(os.path.abspath(args.out)))
    if args.steps < 1:
        problems.append(f"--steps must be at least 1, got {args.steps}")
    if problems:
        parser.exit(2, "".join(f"error: {p}\n" for p in problems))
    model = train_lirm(args.steps, seed=args.seed)
    save_lirm(model, args.out)
    print(f"held-out accuracy (own reference scored above another's): {held_out_accuracy(model):.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
