"""DreamVideo-Omni's motion control: each subject's boxes and trajectories, bound to its reference (Sec. 3).

DreamVideo-Omni conditions the video tower on where each subject is and how it moves, and binds every
motion condition to the reference it belongs to, so "subject 2 walks left" cannot move subject 1:

  group / role     subject k has a group embedding g_k; a role embedding says what a token is (0 =
                   appearance asset: the reference image; 1 = motion guidance: boxes and trajectories).
                   Reference k's tokens get Z_ref(g_k + role_0) (`ref_bind`), so reference and box share g_k.
  boxes            z_box (B, n_v, D): for every video token, the share of its patch inside subject k's box
                   times (g_k + role_1), summed over subjects (`box_features`)
  hierarchical     h_0 = z_t + Z_in(z_box) at the input, h_{l+1} = Block_l(h_l) + Z_l(z_box) after every
  injection        block (`--box_injection hierarchical`; `input`: Z_in only). Every Z starts at zero.
  trajectories     one token per subject, latent frame and tracked point, carrying (point + g_k + role_1),
                   appended to the video stream at the RoPE position of the video token the point lies on
                   (condition-aware 3D RoPE, rope.trajectory_positions); its references all share time T'
                   (`--ref_rope condition`, which `--recipe dreamvideo` sets)
  box loss         (1 + lambda_1 M) |v - v_hat|^2 with M the union of the boxes (`box_weights`, train.py's
                   `--box_loss_weight` lambda_1)

Its reward (LIRM, LIReFL) is reward.py; its two stages recipes.py's DREAMVIDEO_STAGES.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import rope
from conditioning import Conditioning, box_masks, relative_boxes
from model import TowerInputs, TwinTower, declare

MAX_POINTS = 8  # tracked points per subject a trajectory may name (the toy uses 3)


@dataclass
class MotionConfig:
    # DreamVideo-Omni's motion control (video tower): each subject's box, bound to its reference
    motion: bool = False           # box conditions injected into the video tower
    box_injection: str = "hierarchical"  # hierarchical: Z_in at the input and Z_l after every block | input: Z_in only
    group_embed: bool = True       # group embeddings bind reference k to box k (off: boxes carry the role alone)
    max_groups: int = 20           # the group table's size (the release: 20 ids)


def box_weights(batch: dict, video_shape, weight: float) -> torch.Tensor:
    """The box-reweighted loss's weights (B, T, 1, H, W): 1 + lambda_1 inside any subject's box, 1 elsewhere."""
    inside = box_masks(relative_boxes(batch), *video_shape[-2:])                  # (B, K, T, H, W)
    return 1 + weight * inside.any(dim=1).float()[:, :, None]


class MotionTwinTower(TwinTower):
    """The twin tower with box and trajectory conditions on the video tower."""

    def __init__(self, cfg, prompt: nn.Module | None = None):
        super().__init__(cfg, prompt)
        d = cfg.dim
        # every motion module is new and belongs to the video side; the Z projections start at zero
        new = dict(addition=True, video=True)
        self.group_embed = declare(nn.Embedding(cfg.max_groups, d), **new)  # group k: reference k and box k share it
        self.role_embed = declare(nn.Embedding(2, 16), **new)     # 0 = appearance asset, 1 = motion guidance (16-d)
        self.role_proj = declare(nn.Linear(16, d, bias=False), **new)
        self.point_embed = declare(nn.Embedding(MAX_POINTS, d), **new)  # which tracked point a trajectory token is
        self.ref_bind = declare(nn.Linear(d, d), zero=True, **new)   # adds (group + role) to reference k's tokens
        self.box_in = declare(nn.Linear(d, d), zero=True, **new)     # Z_in
        if cfg.box_injection == "hierarchical":                      # Z_l
            self.box_layers = declare(nn.ModuleList(nn.Linear(d, d) for _ in range(cfg.layers)), zero=True, **new)

    def forward(self, video, audio, t, cond: Conditioning):
        """TwinTower.forward with DreamVideo-Omni's conditions: trajectory tokens join the video stream, and
        h_0 = z_t + Z_in(z_box), h_{l+1} = Block_l(h_l) + Z_l(z_box) (hierarchical injection)."""
        v, a, ctx = self.prepare(video, audio, t, cond)
        z_box = None
        if video is not None and cond.boxes is not None:
            if self.sp is not None:
                raise ValueError("--motion with --seq_parallel is not supported (seqpar.py)")
            if cond.trajectories is not None:
                v, ctx.video = self.add_trajectory_tokens(v, ctx.video, cond, video.shape)
            z_box = self.box_features(cond.boxes.to(video.device), video.shape)
            v = self.inject_boxes(v, z_box, ctx.video.n, self.box_in)
        for i, layer in enumerate(self.layers):
            v, a = layer(v, a, ctx)
            if z_box is not None and self.cfg.box_injection == "hierarchical":
                v = self.inject_boxes(v, z_box, ctx.video.n, self.box_layers[i])
        return self.outputs(v, a, ctx, video, audio)

    def group_codes(self, K: int, role: int) -> torch.Tensor:
        """(K, D): subject k's group embedding (binding its reference to its box) plus the role embedding
        (0 = appearance asset, 1 = motion guidance). Without group embeddings, the role alone."""
        role_code = self.role_proj(self.role_embed.weight[role])                    # (D,)
        if not self.cfg.group_embed:
            return role_code.expand(K, -1)
        return self.group_embed.weight[:K] + role_code

    def reference_tokens(self, ref, B: int, K: int, tower: str):
        """Reference image k carries group k's code (role: appearance asset); voices are unchanged."""
        if tower == "video":
            ref = ref + self.ref_bind(self.group_codes(K, role=0)).repeat(B, 1)[:, None]   # (B*K, m, D)
        return super().reference_tokens(ref, B, K, tower)

    def box_features(self, boxes: torch.Tensor, video_shape) -> torch.Tensor:
        """z_box (B, n_v, D): for every video token, the sum over subjects of (how much of the token's patch
        subject k's box covers) x (group k's motion code). boxes (B, K, T, 4) as fractions of the frame."""
        B, T, _, H, W = video_shape
        K = boxes.shape[1]
        inside = box_masks(boxes, H, W)                                             # (B, K, T, H, W)
        # the box-mask video (B*K, T, 1, H, W) -> per token the share of its patch inside each box
        cover = self.patchify_video(inside.float().flatten(0, 1)[:, :, None]).mean(-1)   # (B*K, n_v)
        return torch.einsum("bkn,kd->bnd", cover.unflatten(0, (B, K)), self.group_codes(K, role=1))

    def add_trajectory_tokens(self, v, io: TowerInputs, cond: Conditioning, video_shape):
        """Append one token per subject, latent frame and tracked point, carrying (point + group code, role:
        motion); its RoPE position is the video token the point lies on (rope.trajectory_positions), so the
        content reads "subject k's mouth goes here at t". A token is real where the subject's box is given.
        Returns the video tokens and the video tower's inputs, both extended."""
        c = self.cfg
        B, T, _, H, W = video_shape
        points = cond.trajectories.to(v.device)                                     # (B, K, T, P, 2)
        K, P = points.shape[1], points.shape[3]
        code = self.point_embed.weight[:P][None] + self.group_codes(K, role=1)[:, None]  # (K, P, D)
        Tl = -(-T // c.patch_t)
        tokens = code[None, :, None].expand(B, K, Tl, P, -1).reshape(B, K * Tl * P, -1)  # (B, M, D)
        box = cond.boxes[:, :, ::c.patch_t].to(points.device)                      # (B, K, T', 4)
        given = ((box[..., 2] > box[..., 0]) & (box[..., 3] > box[..., 1]))[..., None].expand(B, K, Tl, P)
        pos = rope.trajectory_positions(points, (c.patch_t, c.patch_h, c.patch_w), (H, W))   # (B, M, 3)
        cos_sin = rope.cos_sin(pos, c.head_dim, c.rope_theta)                      # (B, M, pairs) each
        mask = torch.ones(B, v.shape[1], dtype=torch.bool, device=v.device) if io.mask is None else io.mask
        io = TowerInputs(io.e, io.emb, io.n, torch.cat([mask, given.reshape(B, -1)], 1),
                         tuple(torch.cat([x.expand(B, -1, -1), y], 1) for x, y in zip(io.rope, cos_sin)), io.text)
        return torch.cat([v, tokens.to(v.dtype)], 1), io

    def inject_boxes(self, v, z_box, n_v: int, proj: nn.Module):
        """h + Z(z_box) on the content tokens; references and trajectory tokens untouched."""
        return torch.cat([v[:, :n_v] + proj(z_box).to(v.dtype), v[:, n_v:]], dim=1)
