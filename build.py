"""Every switch of the model, its presets, and the model a configuration builds.

`ModelConfig` is Ovi's backbone config (model.py) plus each paper's switches, declared in the paper's own
file: ocf.py (Omni-Customizer's prompt side), presence.py (Identity-as-Presence), motion.py (DreamVideo-
Omni), lora.py. Every field is a command-line flag of train.py; `config_problems` checks them all (one line
per impossible value, named as its flag). `build_model(cfg)` puts the model together:

  the twin tower        model.TwinTower, or presence.PresenceTwinTower (--ref_mode presence), or
                        motion.MotionTwinTower (--motion)
  its prompt side       ocf.PromptEncoder when OCF or MTP-CA is on, else the plain text.Prompt
  LoRA                  lora.add_adapters on the built model (--lora_rank)
  weights               init_weights, unless built on the meta device (checkpoint.py then fills them)

`python build.py` prints every preset's parameter count (the `full` backbone counts exactly Ovi's
11,660,753,108) and training FLOPs per sample; `--memory` the per-GPU memory plan (memory.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

import caption
import lora
import model
import motion
import ocf
import presence
from lora import LoRAConfig
from motion import MotionConfig
from ocf import OCFConfig
from presence import PresenceConfig


@dataclass
class ModelConfig(MotionConfig, LoRAConfig, PresenceConfig, OCFConfig, model.OviConfig):
    """Ovi's fields first, then Omni-Customizer's prompt side, Identity-as-Presence, LoRA, DreamVideo-Omni."""


PRESETS = {
    # ~5.5M parameters: trains on a 2-core CPU in minutes at 256 video + 64 audio tokens per clip.
    # The width must be at least a token's size (4x4x4 RGB = 192 numbers): near t = 1 the target velocity is
    # mostly the input noise itself, which a narrower stream cannot carry through (at width 128 the toy
    # learned audio, 80 numbers a token, but its video stayed noise). One layer each for the text encoder,
    # OCF and the phoneme encoder keeps the captions (~130 letter-pair tokens) cheap.
    "toy": ModelConfig(text_layers=1, ocf_layers=1, phoneme_layers=1),
    # mini-Ovi: the toy over its own latent codecs (codec.py), as Ovi sits over Wan2.2's and MMAudio's VAEs. A
    # video token is one latent (16 channels for 4x4x4 pixels), an audio token one latent (16 for 2 mel frames):
    # the same 256 + 64 tokens per clip as `toy`, each a 16-number target instead of 192 or 80.
    "mini": ModelConfig(text_layers=1, ocf_layers=1, phoneme_layers=1, video_channels=16, patch_t=1, patch_h=1,
                        patch_w=1, audio_channels=16, audio_patch=1),
    # one GPU, hours: the same toy world, a wider and deeper twin tower
    "small": ModelConfig(dim=512, layers=12, heads=8, ffn=2048, text_dim=256, text_layers=4),
    # Ovi's size and layout (its released code): 3072 x 30 layers x 24 heads, FFN 14336, over Wan2.2 VAE
    # latents (48 ch, patch 1x2x2), MMAudio VAE latents (20 ch, conv stem) and umT5-XXL features (4096-d).
    # audio_scale is the literal of Ovi's config (31 / 157.55 = 0.1967629 would drift 1.3e-3 rad by token 157).
    "full": ModelConfig(dim=3072, layers=30, heads=24, ffn=14336, video_channels=48, patch_t=1, patch_h=2,
                        patch_w=2, audio_channels=20, audio_patch=1, audio_stem="conv", audio_stem_hidden=8192,
                        audio_scale=0.19676, text_dim=4096, text_layers=0, task_inputs=False,
                        ocf_dim=1024, ocf_heads=16, phoneme_layers=4, voice_offset=630.0,
                        phoneme_vocab=97),  # real lines: F5-TTS-style characters (caption.REAL_CHAR_VOCAB)
}
OVI_PARAMETERS = 11_660_753_108

# The fields that only add modules or move reference tokens: given with --init_from they change the
# checkpoint's model (e.g. --motion true over a model without), and the modules it lacks start from their
# usual initialisation (zero-init residuals: the same function at step 0). That is how every paper starts:
# Ovi's weights, its own modules added.
ADDITION_FIELDS = ("task_inputs", "ref_rope", "syn_margin") + tuple(
    f.name for part in (OCFConfig, PresenceConfig, MotionConfig) for f in dataclasses.fields(part))
LORA_FIELDS = tuple(f.name for f in dataclasses.fields(LoRAConfig))


CHOICES = {"audio_stem": ("linear", "conv"), "ref_rope": ("plain", "syn", "condition"), "ocf_rope": ("sa_mrope", "1d"),
           "ref_mode": ("concat", "presence"), "box_injection": ("hierarchical", "input")}


def config_problems(cfg: ModelConfig) -> list[str]:
    """Every field value that cannot build a model, one line each, named as its command-line flag."""
    problems = []
    for name in ("dim", "layers", "heads", "ffn", "freq_dim", "video_channels", "patch_t", "patch_h", "patch_w",
                 "audio_channels", "audio_patch", "text_dim", "text_vocab", "phoneme_vocab", "ocf_heads"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("text_layers", "ocf_layers", "phoneme_layers", "ocf_dim", "audio_stem_hidden"):
        if getattr(cfg, name) < 0:
            problems.append(f"--{name} must be 0 or more, got {getattr(cfg, name)}")
    for name in ("eps", "rope_theta", "audio_scale"):
        if not getattr(cfg, name) > 0:
            problems.append(f"--{name} must be positive, got {getattr(cfg, name)}")
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            problems.append(f"--{name} must be one of {' | '.join(allowed)}, got {getattr(cfg, name)!r}")
    # RoPE rotates pairs of a head's channels, split over (t, h, w): a head needs an even width of 6 or more
    if cfg.heads >= 1 and (cfg.dim % cfg.heads or cfg.head_dim % 2 or cfg.head_dim < 6):
        problems.append(f"--heads {cfg.heads} must divide --dim {cfg.dim} into an even head width of 6 or more "
                        "(RoPE rotates pairs over t, h, w)")
    if cfg.ocf_heads >= 1 and cfg.fusion_dim % cfg.ocf_heads:
        problems.append(f"--ocf_heads {cfg.ocf_heads} must divide the fusion width {cfg.fusion_dim} (--ocf_dim or --text_dim)")
    if cfg.lora_rank < 0 or cfg.lora_alpha < 0:
        problems.append(f"--lora_rank and --lora_alpha must be 0 or more, got {cfg.lora_rank}, {cfg.lora_alpha}")
    elif cfg.lora_rank > cfg.dim:  # B A of rank r > width is no longer low-rank, only a larger copy of W
        problems.append(f"--lora_rank {cfg.lora_rank} exceeds the layers' width (--dim {cfg.dim}): a low-rank update "
                        f"has rank at most {cfg.dim}")
    if cfg.motion and cfg.max_groups < caption.MAX_SUBJECTS:  # group k binds reference k to box k
        problems.append(f"--max_groups {cfg.max_groups} must be at least {caption.MAX_SUBJECTS}: one group per subject "
                        f"(<sub1>..<sub{caption.MAX_SUBJECTS}>)")
    unknown = [t for t in cfg.lora_targets.split(",") if t.strip() not in lora.TARGETS]
    if unknown or not cfg.lora_targets.strip():
        problems.append(f"--lora_targets takes some of {','.join(lora.TARGETS)}, got {cfg.lora_targets!r}")
    if cfg.motion and cfg.ref_mode == "presence":  # presence reads every token after the content as identity
        problems.append("--motion works with --ref_mode concat (trajectory tokens would join the identity stream)")
    if cfg.ref_mode == "presence" and cfg.ref_rope != "plain":  # presence places its identity tokens itself
        problems.append("--ref_mode presence has its own identity positions; leave --ref_rope plain")
    if cfg.audio_stem == "conv" and cfg.audio_patch != 1:  # Ovi's stem convolves latent frames, one token each
        problems.append(f"--audio_stem conv reads one audio frame per token: give --audio_patch 1, not {cfg.audio_patch}")
    if cfg.text_layers and cfg.text_heads >= 1 and cfg.text_dim % cfg.text_heads:
        problems.append(f"--text_heads {cfg.text_heads} must divide --text_dim {cfg.text_dim}")
    return problems


def build_model(cfg: ModelConfig) -> model.TwinTower:
    """The model `cfg` describes, initialised from seed 0 (call init_weights(seed) for another), or, built
    under `torch.device("meta")`, without values."""
    prompt = ocf.PromptEncoder(cfg) if cfg.ocf or cfg.mtp_ca else None
    if cfg.ref_mode == "presence":
        net = presence.PresenceTwinTower(cfg, prompt)
    elif cfg.motion:
        net = motion.MotionTwinTower(cfg, prompt)
    else:
        net = model.TwinTower(cfg, prompt)
    if cfg.lora_rank:  # after every module exists: the adapters wrap the backbone's linear layers in place
        lora.add_adapters(net, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    if not any(p.is_meta for p in net.parameters()):
        net.init_weights()
    return net


# ------------------------------------------------------------------------------------------------
# Accounting: parameters and FLOPs
# ------------------------------------------------------------------------------------------------


def count_parameters(net: model.TwinTower) -> dict:
    """backbone (Ovi's weights), additions (ours and the papers', trained fully), adapters (LoRA)."""
    counts = dict(backbone=0, additions=0, adapters=0)
    for name, p in net.named_parameters():
        kind = "adapters" if lora.is_adapter(name) else "additions" if net.is_addition(name) else "backbone"
        counts[kind] += p.numel()
    return dict(counts, total=sum(counts.values()))


def estimate_flops(cfg: ModelConfig, video_tokens: int, audio_tokens: int, text_tokens: int,
                   ref_video_tokens: int = 0, ref_audio_tokens: int = 0, phoneme_tokens: int = 0,
                   video: bool = True) -> float:
    """Training FLOPs (forward + backward) per sample (nanoGPT / PaLM Appendix B: 6 x weights per token).

    6 x weights each token passes through (stems and heads, q/k/v/o, FFN, cross q/o, prompt
    projections over text tokens, fusion k/v over the *other* stream's tokens), plus attention
    12 x layers x heads x head_dim x (keys seen) per query, plus the per-sample timestep MLPs,
    plus the prompt side: text encoder, phoneme encoder, OCF over [text, refs, phonemes], MTP-CA.
    phoneme_tokens counts the padded (lines x phonemes) grid, as the encoders see it.
    """
    d, f, L = cfg.dim, cfg.ffn, cfg.layers
    s_v = (video_tokens + ref_video_tokens) if video else 0
    s_a = audio_tokens + ref_audio_tokens
    text_w = cfg.text_dim * d + d * d
    block = 6 * d * d + 2 * d * f                       # self q,k,v,o + cross q,o + FFN, per token
    macs = 0.0
    for s, s_other, content, stem_in, head_out in (
            (s_v, s_a, video_tokens, cfg.video_patch_dim, cfg.video_patch_dim),
            (s_a, s_v, audio_tokens, cfg.audio_token_dim, cfg.audio_token_dim)):
        if s == 0:
            continue
        if cfg.audio_stem == "conv" and stem_in == cfg.audio_token_dim:
            stem = 7 * cfg.audio_channels * d + 3 * 7 * d * cfg.audio_stem_hidden
        else:
            stem = stem_in * d
        macs += s * (L * block + stem) + content * d * head_out
        macs += L * 2 * d * d * (text_tokens + s_other)  # text k/v and fusion k/v
        macs += text_tokens * text_w                      # this tower's prompt projection
        macs += 2 * (cfg.freq_dim * d + d * d + 6 * d * d)  # timestep MLP for t and for 0
        attn_keys = s * (s + text_tokens + s_other)
        macs += L * 2 * d * attn_keys                     # QK^T and AV: 2 x d MACs per (query, key)
    td, fd = cfg.text_dim, cfg.fusion_dim
    if cfg.text_layers:
        macs += cfg.text_layers * (text_tokens * 12 * td * td + 2 * td * text_tokens ** 2)
    if cfg.ocf or cfg.mtp_ca:   # phoneme encoder: pointwise MLP (d -> 2d -> d) + depthwise conv k7
        macs += cfg.phoneme_layers * phoneme_tokens * (4 * fd * fd + 7 * fd)
    if cfg.ocf:
        s_ocf = text_tokens + ref_video_tokens + ref_audio_tokens + phoneme_tokens
        image_in = cfg.patch_h * cfg.patch_w * cfg.video_channels
        macs += text_tokens * td * fd + ref_video_tokens * image_in * fd + ref_audio_tokens * cfg.audio_token_dim * fd
        macs += cfg.ocf_layers * (s_ocf * 12 * fd * fd + 2 * fd * s_ocf ** 2 + text_tokens * fd * td)
    if cfg.mtp_ca:              # q and o over the prompt, k and v over the phonemes, attention to them all
        macs += 2 * text_tokens * td * fd + 2 * phoneme_tokens * fd * fd + 2 * fd * text_tokens * phoneme_tokens
    return 6.0 * macs


# data.WorldConfig's default clip (2 s of 32x32 at 8 fps, 128 mel frames, 16x16 reference portraits,
# 1 s reference voices). Held here so this file need not import the toy world; tests/test_data.py checks it.
TOY_CLIP = dict(frames=16, image_size=32, mel_frames=128, ref_image_size=16, ref_mel_frames=64)
# the same clip on mini-Ovi's latent grid (codec.py: 4x4x4 pixels and 2 mel frames per latent)
TOY_LATENT_CLIP = dict(frames=4, image_size=8, mel_frames=64, ref_image_size=4, ref_mel_frames=32)


def toy_token_counts(cfg: ModelConfig, clip: dict | None = None, subjects: int = 2, text_tokens: int = 130):
    """Token counts of one toy sample (for FLOPs and bench); `clip` holds the world's sizes (TOY_CLIP's keys;
    default: the world's clip, on the codec's latent grid for a latent model). 130 text tokens: a mixed scene's
    caption in letter pairs (caption.py)."""
    clip = clip or (TOY_CLIP if cfg.video_channels == 3 else TOY_LATENT_CLIP)
    v = (clip["frames"] // cfg.patch_t) * (clip["image_size"] // cfg.patch_h) * (clip["image_size"] // cfg.patch_w)
    a = clip["mel_frames"] // cfg.audio_patch
    rv = subjects * (clip["ref_image_size"] // cfg.patch_h) * (clip["ref_image_size"] // cfg.patch_w)
    ra = subjects * clip["ref_mel_frames"] // cfg.audio_patch
    return dict(video_tokens=v, audio_tokens=a, text_tokens=text_tokens, ref_video_tokens=rv, ref_audio_tokens=ra,
                phoneme_tokens=subjects * 12)


def full_token_counts(subjects: int = 2):
    """Token counts of one 5 s 720x720 Ovi sample: 31 latent frames of 45x45 latents, patch 2x2."""
    return dict(video_tokens=31 * 22 * 22, audio_tokens=157, text_tokens=512,
                ref_video_tokens=subjects * 22 * 22, ref_audio_tokens=subjects * 157, phoneme_tokens=subjects * 40)


def main():
    from cli import OneLineParser, parse_bool  # one line per bad flag, like every entry point
    parser = OneLineParser(description="Parameter counts and training FLOPs per preset; --memory: the memory plan.")
    parser.add_argument("--config", choices=list(PRESETS), nargs="*", default=list(PRESETS), help="presets to count")
    parser.add_argument("--memory", action="store_true", help="print the per-GPU memory plan (memory.py) instead")
    parser.add_argument("--gpus", type=int, default=8, help="--memory: GPUs the parameters are sharded over (FSDP2)")
    parser.add_argument("--batch", type=int, default=1, help="--memory: samples per GPU")
    parser.add_argument("--lora_rank", type=int, default=0, help="--memory: LoRA rank (0 = full fine-tuning)")
    parser.add_argument("--grad_ckpt", type=parse_bool, nargs="?", const=True, default=False,
                        help="--memory: activation checkpointing per layer")
    parser.add_argument("--seq_parallel", type=int, default=1, help="--memory: ranks that share each sample's tokens")
    args = parser.parse_args()
    if args.memory:
        import memory
        if min(args.gpus, args.batch, args.seq_parallel) < 1 or args.lora_rank < 0 or args.gpus % args.seq_parallel:
            parser.exit(2, "error: --gpus, --batch, --seq_parallel must be at least 1, --seq_parallel must divide "
                           "--gpus, --lora_rank 0 or more\n")
        for name in args.config:
            cfg = memory.with_lora(PRESETS[name], args.lora_rank)
            tokens = full_token_counts() if name == "full" else toy_token_counts(cfg)
            memory.print_plan(name, cfg, tokens, args.gpus, args.batch, args.grad_ckpt, args.seq_parallel)
        return
    for name in args.config:
        cfg = PRESETS[name]
        with torch.device("meta"):  # no memory: the full model is 11.7B parameters
            counts = count_parameters(build_model(cfg))
        tokens = full_token_counts() if name == "full" else toy_token_counts(cfg)
        flops = estimate_flops(cfg, **tokens)
        line = (f"{name:5s} backbone {counts['backbone']:>15,d}  additions {counts['additions']:>10,d}  "
                f"train FLOPs/sample {flops:.3e}  ({tokens['video_tokens']}+{tokens['ref_video_tokens']} video, "
                f"{tokens['audio_tokens']}+{tokens['ref_audio_tokens']} audio, {tokens['text_tokens']} text tokens)")
        if name == "full":
            line += f"  vs Ovi {OVI_PARAMETERS:,d}: {counts['backbone'] - OVI_PARAMETERS:+,d}"
        print(line)
        with torch.device("meta"):  # Identity-as-Presence: the decoupled identity streams are additions
            for audio in (False, True):
                twin = build_model(dataclasses.replace(cfg, ref_mode="presence", decouple_audio=audio))
                extra = count_parameters(twin)
                print(f"      --ref_mode presence{' --decouple_audio true' if audio else '':23s} additions "
                      f"{extra['additions']:>13,d}  (identity stream {extra['additions'] - counts['additions']:+,d})")


if __name__ == "__main__":
    main()
