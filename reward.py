"""Latent identity reward: DreamVideo-Omni's LIRM and the LIReFL objective (its stage 2).

LIRM (latent identity reward model) answers "is the person in this (noisy, or one-step denoised) video
the person in this reference?" with a scalar:

    F = trunk(patchify(video))                  spatio-temporal features (B, N, d)
    Q = embed(patchify(reference))              the reference's identity features (B, M, d), the queries
    h = CrossAttention(Q, F, F)                 the identity looks for itself in the video
    r = MLP(mean_M(h + Q))                      (B,) the reward (a logit)

Two forms, trained the same way on the toy world, where identity labels are exact: a clip with its own
subject's cross-pair reference is a match, with another clip's subject's reference not, at noise levels
t in [0, 0.6] so the reward reads the blurred predictions LIReFL will give it.
  LatentLIRM  the paper's: F from a frozen copy of the generator's video tower (the base), reading the codec's
              latents, so LIReFL never decodes. Only the queries' projection, the attention and the head train.
  LIRM        a small pixel model of its own (two transformer blocks over the video's patches); over a latent
              model DecodedReward decodes the estimate first. It is also the tables' independent judge
              (probes.py): a reward the generator was not trained against.

LIReFL (train.py, --reward_model): from the step's random t, the model's one gradient-enabled denoising
step predicts x0_hat = x_t - t v_hat; the frozen LIRM scores it against the reference, and
    L = L_sft + lambda_2 * L_LIReFL,   L_LIReFL = -E[r].

    python reward.py --out out/lirm.pt --steps 600      # trains LIRM, prints held-out accuracy
    python reward.py --out out/lirm_latent.pt --steps 300 --backbone out/base_gpu/ckpt.pt   # the paper's form
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
from conditioning import KEY_MASKS, NULL_TOKEN, Conditioning
from precision import LayerNorm32
from text import TextBlock


@dataclass
class RewardConfig:
    dim: int = 96        # feature width
    heads: int = 4
    layers: int = 2      # trunk blocks over the video's patches
    patch: int = 4       # pixels per patch side (video patches also span `patch` frames)


class IdentityAttention:
    """The part both LIRMs share: the reference's features Q attend to the video's F (the paper's
    h_attn = Softmax(Q K^T / sqrt(d)) V), and a small MLP head H reads h_attn + Q: r = H(h_attn + Q)."""

    def identity_layers(self, d: int):
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))     # identity cross-attention
        # a logit, not a probability: LIReFL's -E[r] then keeps a gradient where a sigmoid would saturate
        self.head = nn.Sequential(LayerNorm32(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))

    def identity_reward(self, q: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Q (B, M, d), F (B, N, d) -> r (B,)."""
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731   (B, H, S, d/H)
        h = attention(split(self.q(q)), split(self.k(f)), split(self.v(f)))         # the identity queries the video
        h = self.o(h.transpose(1, 2).flatten(2))                                     # (B, M, d)
        # the residual keeps what the reference itself looked like next to what it found in the video
        return self.head((h + q).mean(1)).squeeze(-1)                               # (B,)


class LIRM(IdentityAttention, nn.Module):
    """The reward r(video, reference): a video trunk, the reference's patches as queries, one cross-attention."""

    def __init__(self, cfg: RewardConfig = RewardConfig(), frames: int = 16, size: int = 32, ref_size: int = 16):
        super().__init__()
        self.cfg, d, p, self.heads = cfg, cfg.dim, cfg.patch, cfg.heads
        n_video = (frames // p) * (size // p) ** 2  # tubelets of p frames x p x p pixels
        self.video_embed = nn.Linear(3 * p ** 3, d)
        self.video_pos = nn.Parameter(torch.randn(1, n_video, d) * 0.02)          # learned: the trunk is small
        # no positions in the trunk: the learned video_pos added once at the input is all it needs
        self.trunk = nn.ModuleList(TextBlock(d, cfg.heads) for _ in range(cfg.layers))
        self.ref_embed = nn.Linear(3 * p * p, d)  # the reference is one image: p x p patches
        self.ref_pos = nn.Parameter(torch.randn(1, (ref_size // p) ** 2, d) * 0.02)
        self.identity_layers(d)

    def patches(self, video):
        """(B, T, 3, H, W) -> (B, T/p * H/p * W/p, p^3 * 3)."""
        p = self.cfg.patch
        B, T, C, H, W = video.shape
        x = video.reshape(B, T // p, p, C, H // p, p, W // p, p).permute(0, 1, 4, 6, 2, 5, 7, 3)
        return x.reshape(B, -1, p ** 3 * C)

    def forward(self, video: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """video (B, T, 3, H, W) in [-1, 1] (clean, noisy or predicted); reference (B, 3, h, w) -> reward (B,)."""
        p = self.cfg.patch
        f = self.video_embed(self.patches(video)) + self.video_pos                 # (B, N, d)
        for block in self.trunk:
            f = block(f)
        ref = reference.unfold(2, p, p).unfold(3, p, p)                             # (B, 3, h/p, w/p, p, p)
        ref = ref.permute(0, 2, 3, 4, 5, 1).flatten(1, 2).flatten(2)                # (B, M, p*p*3)
        return self.identity_reward(self.ref_embed(ref) + self.ref_pos, f)          # Q: (B, M, d)


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


# ------------------------------------------------------------------------------------------------
# The paper's form: the reward reads the generator's own features
# ------------------------------------------------------------------------------------------------


def empty_conditioning(net, B: int, device) -> Conditioning:
    """What the backbone is told besides the latents: nothing. The empty prompt (one null token, or one zero
    feature for a model fed umT5 features) and no subjects (K = 0), so no reference enters the backbone: the
    reference reaches the reward only as the queries."""
    none = lambda *shape, dtype=torch.long: torch.zeros(B, 0, *shape, dtype=dtype, device=device)  # noqa: E731
    text = (torch.full((B, 1), NULL_TOKEN, device=device) if net.cfg.text_layers > 0
            else torch.zeros(B, 1, net.cfg.text_dim, device=device))
    return Conditioning(text=text, text_mask=torch.ones(B, 1, dtype=torch.bool, device=device),
                        subject_spans=none(2), speech_spans=none(2), line_mask=none(dtype=torch.bool),
                        line_phonemes=none(1), phoneme_mask=none(1, dtype=torch.bool),
                        ref_images=none(net.cfg.video_channels, 1, 1, dtype=torch.float),
                        ref_audio=none(1, net.cfg.audio_channels, dtype=torch.float),
                        image_mask=none(dtype=torch.bool), voice_mask=none(dtype=torch.bool),
                        full=frozenset(KEY_MASKS))


class LatentLIRM(IdentityAttention, nn.Module):
    """DreamVideo-Omni's LIRM as the paper builds it: "a video diffusion model backbone, an identity cross-
    attention layer, and a reward prediction head", reading latents, never pixels.

        F = backbone's video tower over the latents (B, N, D)   a frozen copy of the generator (the base), at t = 0,
                                                                 empty prompt, no references; its last layer's tokens
        Q = W_in stem(reference latent) (B, M, D)                the same copy's patch embedding of the reference
        r = H(Attention(Q, F, F) + Q)

    Only W_in, the attention and the head train. We chose t = 0 for the backbone whatever the input: LIReFL
    gives it a one-step estimate x0_hat, which is blurred rather than noisy, and the head is trained over
    noise levels t in [0, 0.6] (like the pixel LIRM) so it reads both."""

    def __init__(self, backbone, heads: int = 4):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        d, self.heads = backbone.cfg.dim, heads
        self.norm = LayerNorm32(d)          # the residual stream's scale grows with depth; the keys read it normed
        self.ref_in = nn.Linear(d, d)
        self.identity_layers(d)

    def video_features(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, t, C, h, w) latents -> (B, N, D): the video tower alone, as in its unimodal pretraining."""
        net, B = self.backbone, latents.shape[0]
        t = torch.zeros(B, device=latents.device)
        v, _, ctx = net.prepare(latents, None, t, empty_conditioning(net, B, latents.device))
        for layer in net.layers:
            v, _ = layer(v, None, ctx)                                              # (B, N, D), K = 0: content only
        return self.norm(v)

    def reference_features(self, reference: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) reference latent frame -> (B, M, D): held over the temporal patch as the model holds it."""
        net = self.backbone
        frames = reference[:, None].expand(-1, net.cfg.patch_t, -1, -1, -1)         # (B, pt, C, h, w)
        return net.video_stem(net.patchify_video(frames))

    def forward(self, latents: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """latents (B, t, C, h, w) (clean, noisy or predicted); reference (B, C, h, w) latent -> reward (B,)."""
        return self.identity_reward(self.ref_in(self.reference_features(reference.float())),
                                    self.video_features(latents.float()))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # the frozen backbone never switches to training behaviour (activation checkpointing)
        return self

    def trained_state(self) -> dict:
        """The weights that train: the backbone's are the base's, saved once beside them (save_latent_lirm)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}


def latent_backbone(path: str) -> tuple:
    """(the model's EMA weights, its codec) of a latent model's checkpoint: what a LatentLIRM is built over."""
    codec = checkpoint.codec_from_checkpoint(checkpoint.load_checkpoint(path), path)
    if codec is None:
        raise checkpoint.CheckpointError(f"{path}: not a latent model (no codec inside); the paper's LIRM reads "
                                         "latents: give a mini-Ovi checkpoint")
    return checkpoint.model_from_checkpoint(path), codec


def latent_pool(codec, world: data.WorldConfig, seed: int, stream: int, n: int, batch: int = 64):
    """clip_pool through the codec: latents (n, t, C, h, w) and reference latent frames (n, C, h, w)."""
    videos, refs = clip_pool(world, seed, stream, n)
    with torch.no_grad():
        lat = torch.cat([codec.encode_video(videos[i:i + batch]) for i in range(0, n, batch)])
        ref = codec.encode_images(refs[:, None])[:, 0]
    return lat, ref


def train_latent_lirm(backbone, codec, steps: int, batch: int = 16, seed: int = 0, lr: float = 1e-3,
                      pool: int = 512, log=print) -> LatentLIRM:
    """Fit the latent LIRM's head over a frozen copy of `backbone`: the pixel LIRM's task, on codec latents."""
    torch.manual_seed(seed)
    model = LatentLIRM(copy.deepcopy(backbone).float())
    return fit(model, *latent_pool(codec, reward_world(), seed, 5, pool), steps, batch, seed, lr, log)


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
    """Fit the pixel LIRM on a pool of toy clips (stream 5: not the generator's training stream)."""
    torch.manual_seed(seed)
    return fit(LIRM(cfg), *clip_pool(reward_world(), seed, 5, pool), steps, batch, seed, lr, log)


def fit(model, videos, refs, steps: int, batch: int, seed: int, lr: float, log):
    """Binary cross-entropy, match vs swapped identity; every step draws other clips, other partners and other
    noise from the pool. Only what trains is optimised (a LatentLIRM's backbone is frozen)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        video, ref, labels = pairs(videos, refs, torch.randint(0, len(videos), (batch,), generator=gen), gen)
        loss = F.binary_cross_entropy_with_logits(model(video, ref), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            log(f"step {step + 1}: loss {loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def held_out_accuracy(model, cases: int = 64, seed: int = 2024, codec=None) -> float:
    """Share of held-out clips (people never trained on) whose own person's reference scores above another's.
    A LatentLIRM reads the clips through `codec` (the base's)."""
    if codec is not None:
        videos, refs = latent_pool(codec, reward_world(), seed, 6, cases)
    else:
        videos, refs = clip_pool(reward_world(), seed, 6, cases)
    video, ref, _ = pairs(videos, refs, torch.arange(cases), torch.Generator().manual_seed(seed))
    r = model(video, ref)  # the first half with their own person's reference, the second with another's
    return (r[:cases] > r[cases:]).float().mean().item()  # a pairwise ranking: the threshold does not matter


def world_sizes() -> dict:
    world = reward_world()
    return dict(frames=world.frames, size=world.image_size, ref_size=world.ref_image_size)


def load_lirm(path: str, world: data.WorldConfig | None = None):
    """A frozen reward model from `python reward.py --out PATH` (a LIRM over pixels) or from save_latent_lirm (a
    LatentLIRM over the generator's features); with `world`, checked to read that world's clips."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("kind") == "latent":
            backbone = checkpoint.empty_model(checkpoint.config_from_checkpoint(ckpt, path), "cpu")
            checkpoint.load_state(backbone, ckpt["backbone"], path)
            model = LatentLIRM(backbone, ckpt["heads"])
            model.load_state_dict(ckpt["model"], strict=False)   # the backbone's weights are in already
        else:
            model = LIRM(RewardConfig(**ckpt["config"]), **ckpt["sizes"])
            # an earlier version named the trunk blocks' output projection `o` (text.TextBlock calls it `proj`)
            model.load_state_dict({re.sub(r"^(trunk\.\d+)\.o\.", r"\1.proj.", k): v for k, v in ckpt["model"].items()})
    except checkpoint.CheckpointError:
        raise
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
    checkpoint.save_atomic(dict(model=model.state_dict(), config=dataclasses.asdict(model.cfg), sizes=world_sizes()),
                           path)


def save_latent_lirm(model: LatentLIRM, path: str):
    """A LatentLIRM whole: its backbone (the base's weights and ModelConfig, so the file stands alone) and head."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    checkpoint.save_atomic(dict(kind="latent", model=model.trained_state(), heads=model.heads, sizes=world_sizes(),
                                model_config=dataclasses.asdict(model.backbone.cfg),
                                backbone=model.backbone.state_dict()), path)


def main():
    from cli import OneLineParser, out_dir_problems
    parser = OneLineParser(description="Train DreamVideo-Omni's latent identity reward model on the toy world.")
    parser.add_argument("--out", default="out/lirm.pt", help="where to save it")
    parser.add_argument("--steps", type=int, default=600, help="training steps (batch 16 matching + 16 swapped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="", help="a mini-Ovi checkpoint: the paper's form, a head over a frozen "
                                                        "copy of its video tower reading its codec's latents "
                                                        "(default: a small pixel model of its own)")
    args = parser.parse_args()
    problems = out_dir_problems(os.path.dirname(os.path.abspath(args.out)))
    if args.steps < 1:
        problems.append(f"--steps must be at least 1, got {args.steps}")
    if args.backbone and not os.path.isfile(args.backbone):
        problems.append(f"--backbone {args.backbone}: no such file")
    if problems:
        parser.exit(2, "".join(f"error: {p}\n" for p in problems))
    try:
        if args.backbone:
            backbone, codec = latent_backbone(args.backbone)
            model = train_latent_lirm(backbone, codec, args.steps, seed=args.seed)
            save_latent_lirm(model, args.out)
        else:
            codec, model = None, train_lirm(args.steps, seed=args.seed)
            save_lirm(model, args.out)
    except checkpoint.CheckpointError as e:
        parser.exit(2, f"error: {e}\n")
    print(f"held-out accuracy (own reference scored above another's): {held_out_accuracy(model, codec=codec):.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
