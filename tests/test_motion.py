"""Motion ground truth in the toy world (DreamVideo-Omni's control signals) and the metrics that read it:
trajectories follow their subjects, a camera pan moves the room and everyone together, and box mIoU /
trajectory error score the world's own clips high and a wrong request low."""
import dataclasses

import numpy as np
import pytest
import torch

import build
import data
import metrics
import model
import motion
import outputs

MOVING = dataclasses.replace(data.WorldConfig(), move_prob=1.0)


def test_trajectories_follow_their_subjects():
    """Every tracked point lies inside its subject's box in every frame, and moves when the subject does."""
    for i in range(6):
        c = data.make_clip(data.sample_rng(3, 0, 0, i), MOVING)
        for k, role in enumerate(c["roles"]):
            if role == "offscreen":
                assert not c["trajectories"][k].any()
                continue
            box, pts = c["boxes"][k], c["trajectories"][k]                      # (T, 4), (T, 3, 2)
            visible = box[:, 2] > box[:, 0]
            x, y = pts[..., 0], pts[..., 1]
            inside = (x >= box[:, None, 0] - 1) & (x <= box[:, None, 2] + 1) & (y >= box[:, None, 1] - 1)
            assert inside[visible].all()


def test_a_camera_pan_moves_the_room_and_everyone_together_and_is_off_by_default():
    assert not data.make_clip(data.sample_rng(0, 0, 0, 0), data.WorldConfig())["camera"].any()
    world = dataclasses.replace(data.WorldConfig(), camera_pan=1.0, move_prob=0.0)
    c = data.make_clip(data.sample_rng(0, 0, 0, 1), world)
    cam = c["camera"]
    assert cam.abs().max() >= 7                                                 # 0.5-1 px a frame over 16 frames
    for k, role in enumerate(c["roles"]):                                       # still people shift with the camera
        if role != "offscreen":
            heads = c["trajectories"][k, :, 0, 0]
            assert torch.allclose(heads - heads[0], -(cam - cam[0]), atol=1.0)
    room = data.render_room(world.image_size, {"period": 3, "texture": "bars", "colour": np.ones(3)}, x0=5)
    assert np.array_equal(room[:, :-5], data.render_room(world.image_size, {"period": 3, "texture": "bars",
                                                                            "colour": np.ones(3)})[:, 5:])


def test_box_miou_and_trajectory_error_score_truth_high_and_a_wrong_request_low():
    world = dataclasses.replace(MOVING, camera_pan=0.5)
    truth, wrong = [], []
    for i in range(6):
        c = data.make_clip(data.sample_rng(7, 4, 0, i), world)
        truth.append(metrics.score_motion(c["video"], c, world))
        asked = dict(c, boxes=c["boxes"] + torch.tensor([8.0, 0, 8.0, 0]), trajectories=c["trajectories"] + torch.tensor([8.0, 0]))
        wrong.append(metrics.score_motion(c["video"], asked, world))
    mean = lambda rows, m: float(np.nanmean([r[m] for r in rows]))  # noqa: E731
    assert mean(truth, "box_miou") > 0.8 and mean(truth, "traj_epe") < 3
    assert mean(wrong, "box_miou") < 0.4 and mean(wrong, "traj_epe") > 6


# ------------------------------------------------------------------------------------------------
# Motion control in the model (DreamVideo-Omni: boxes bound to subjects)
# ------------------------------------------------------------------------------------------------


def motion_inputs():
    from conditioning import Conditioning
    from tiny import tiny_batch
    b = tiny_batch(2, scene="dialogue")
    return b, Conditioning.from_batch(b)


def randomise(net, skip=()):
    from tiny import perturbed
    return perturbed(net, replace=True, skip=skip)


def test_zero_initialised_box_injections_are_no_ops_at_the_start():
    """A motion model with the same backbone weights predicts exactly what the model without motion does."""
    from tiny import TINY
    b, cond = motion_inputs()
    plain = randomise(build.build_model(TINY))
    moving = build.build_model(dataclasses.replace(TINY, motion=True))
    weights = dict(plain.named_parameters())
    with torch.no_grad():
        for name, p in moving.named_parameters():
            if name in weights:
                p.copy_(weights[name])
    t = torch.tensor([0.3, 0.8])
    boxes_only = dataclasses.replace(cond, trajectories=None)   # trajectory tokens are new tokens, not an injection
    assert all(torch.equal(x, y) for x, y in zip(plain(b["video"], b["audio"], t, boxes_only),
                                                 moving(b["video"], b["audio"], t, boxes_only)))
    assert not torch.equal(plain(b["video"], b["audio"], t, cond)[0], moving(b["video"], b["audio"], t, cond)[0])


def test_trajectory_tokens_sit_where_their_points_are_in_their_frames():
    """Condition-aware 3D RoPE: a point at the centre of video token (t', i, j) gets position (t', i, j);
    the time index follows the frame (first frame of each temporal patch); references share one index."""
    import rope
    T, H, W, patch = 8, 32, 32, (4, 4, 4)
    points = torch.zeros(1, 1, T, 1, 2)
    for f in range(T):                                   # the point walks one token right and down per frame
        points[0, 0, f, 0] = torch.tensor([(f + 0.5) * 4 / W, (2 * f + 0.5) * 4 / H])
    pos = rope.trajectory_positions(points, patch, (H, W))
    assert pos.tolist() == [[[0.0, 0.0, 0.0], [1.0, 8.0, 4.0]]]   # frames 0 and 4 (t' = 0, 1)
    images, _ = rope.reference_positions("condition", 3, 2, 4, 4, 64, 32, 1 / 16)
    assert set(images[:, 0].tolist()) == {2.0}                    # one shared time index, after the content


def test_trajectory_tokens_of_a_subject_without_a_box_are_masked():
    from tiny import TINY
    b, cond = motion_inputs()
    net = build.build_model(dataclasses.replace(TINY, motion=True))
    boxes = cond.boxes.clone()
    boxes[0, 1] = 0                                                  # subject 2 of sample 0: no box anywhere
    rope_v = net.rope_tables(net.video_grid(b["video"].shape), 2, (4, 4), 64, 32, "cpu")[0]
    v = torch.zeros(2, rope_v[0].shape[1], TINY.dim)                     # content + reference tokens
    io = model.TowerInputs(e=None, emb=None, n=256, mask=None, rope=rope_v, text=None)
    _, io = net.add_trajectory_tokens(v, io, dataclasses.replace(cond, boxes=boxes), b["video"].shape)
    per_subject = io.mask[:, v.shape[1]:].reshape(2, 2, -1)              # the trajectory tokens' mask
    assert not per_subject[0, 1].any() and per_subject[0, 0].all()


def test_group_k_reaches_only_subject_ks_box_tokens():
    from tiny import TINY
    b, cond = motion_inputs()
    net = randomise(build.build_model(dataclasses.replace(TINY, motion=True)))
    base = net.box_features(cond.boxes, b["video"].shape)                              # (B, n_v, D)
    with torch.no_grad():
        net.group_embed.weight[1] += 1.0                                               # subject 2's group only
    changed = (net.box_features(cond.boxes, b["video"].shape) - base).abs().sum(-1) > 0  # (B, n_v)
    inside = net.patchify_video(box_mask(cond.boxes[:, 1], b["video"].shape)[:, :, None]).amax(-1) > 0
    assert changed.any() and torch.equal(changed, inside)


def box_mask(boxes, shape):
    """(B, T, H, W) pixels whose centre lies in the box (B, T, 4 fractions)."""
    H, W = shape[-2:]
    ys, xs = (torch.arange(H) + 0.5) / H, (torch.arange(W) + 0.5) / W
    b = boxes[..., None, None, :]
    return ((xs >= b[..., 0]) & (xs < b[..., 2]) & (ys[:, None] >= b[..., 1]) & (ys[:, None] < b[..., 3])).float()


def test_box_reweighted_loss_weights_are_one_plus_lambda_inside_the_boxes():
    b, _ = motion_inputs()
    w = motion.box_weights(b, b["video"].shape, 2.0)                                    # (B, T, 1, H, W)
    x0, y0, x1, y1 = b["boxes"][0, 0, 3].long().tolist()
    assert w[0, 3, 0, y0, x0] == 3.0 and set(w.unique().tolist()) == {1.0, 3.0}
    assert (w > 1).float().mean() < 0.9                                                 # the room stays at 1


def test_a_motion_request_is_read_and_drawn_and_a_bad_one_is_one_line(tmp_path):
    """sample.py --motion: one box held for every frame gives the points where the toy's sprites carry
    them; the page gets motion.gif; a box with x1 < x0 stops with one line."""
    import json

    import pytest

    import inputs
    from tiny import TINY_WORLD
    (tmp_path / "ok.json").write_text(json.dumps({"subjects": [{"box": [0.2, 0.25, 0.6, 1.0]}]}))
    boxes, points = inputs.load_motion(str(tmp_path / "ok.json"), 1, TINY_WORLD.frames)
    assert boxes.shape == (1, 1, TINY_WORLD.frames, 4) and points.shape == (1, 1, TINY_WORLD.frames, 3, 2)
    assert torch.allclose(points[0, 0, 0, 1], torch.tensor([0.4, 0.25 + 0.45 * 0.75]))   # the mouth
    clip = data.make_clip(data.sample_rng(0, 2, 0, 0), TINY_WORLD)
    outputs.write_outputs(str(tmp_path / "out"), clip["video"], clip["audio"], TINY_WORLD, clip["caption"],
                         clip["ref_images"], clip["ref_audio"], motion=(boxes[0].expand(len(clip["roles"]), -1, -1),
                                                                        points[0].expand(len(clip["roles"]), -1, -1, -1)))
    assert (tmp_path / "out" / "motion.gif").stat().st_size > 0
    assert "motion.gif" in (tmp_path / "out" / "index.html").read_text()
    (tmp_path / "bad.json").write_text(json.dumps({"subjects": [{"box": [0.6, 0.2, 0.2, 1.0]}]}))
    with pytest.raises(inputs.InputError) as err:
        inputs.load_motion(str(tmp_path / "bad.json"), 1, TINY_WORLD.frames)
    assert "0 <= x0 < x1 <= 1" in str(err.value) and "\n" not in str(err.value)


def test_the_benchmarks_motion_subset_scores_truth_above_noise():
    import bench
    scores = bench.quality(None, data.WorldConfig(), 2, subsets=[bench.MOTION], log=lambda *_: None)["motion"]
    truth, noise = (np.mean(scores[s]["box_miou"]) for s in ("truth", "noise"))
    assert truth > 0.7 > noise and np.mean(scores["truth"]["traj_epe"]) < np.mean(scores["noise"]["traj_epe"])
    case = data.held_out_case(data.WorldConfig(), "motion", 0)
    assert all(not torch.equal(b[0], b[-1]) for b, r in zip(case["boxes"], case["roles"]) if r != "offscreen")


def test_motion_switched_on_over_a_base_checkpoint_starts_as_the_base(tmp_path):
    """--init_from a model without motion, with --motion true (the paper fine-tunes a pretrained model): the
    backbone is the checkpoint's, the new injections start at zero; a size flag that differs still stops."""
    import pytest

    import checkpoint
    import train
    from tiny import TINY_OVERRIDES, TINY_WORLD_OVERRIDES
    base_run = dict(batch_size=2, max_steps=1, progress_every=0, warmup_steps=0)
    train.train(train.TrainConfig(out_dir=str(tmp_path / "base"), **base_run), TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    path = str(tmp_path / "base" / "ckpt.pt")
    base = checkpoint.load_checkpoint(path)["model"]
    tc = train.TrainConfig(out_dir=str(tmp_path / "motion"), init_from=path, **base_run)
    run = train.start_run(tc, dict(TINY_OVERRIDES, motion=True, ref_rope="condition"), TINY_WORLD_OVERRIDES,
                          0, 1, torch.device("cpu"))
    assert run.mcfg.motion and run.mcfg.ref_rope == "condition"
    added = [n for n, _ in run.net.named_parameters() if n not in base]
    assert any(n.startswith("box_layers.") for n in added) and all(run.net.is_addition(n) for n in added)
    for name, p in run.net.named_parameters():
        if name in base:
            assert torch.equal(p, base[name]), name
        elif name.startswith(("box_in.", "box_layers.")) and name.endswith("weight"):
            assert not p.any(), name                                    # zero-init: the base's function at step 0
    with pytest.raises(checkpoint.CheckpointError) as err:
        train.start_run(tc, dict(TINY_OVERRIDES, motion=True, ffn=128), TINY_WORLD_OVERRIDES, 0, 1,
                        torch.device("cpu"))
    assert "ffn 64 there, 128 here" in str(err.value)


BAD_MOTION = [  # (what is wrong, the subject's entry, a fragment of the one line)
    ("points as a list", {"box": [0.2, 0.2, 0.6, 1.0], "points": [[0.5, 0.5]]}, "points are a list"),
    ("an unknown point name", {"box": [0.2, 0.2, 0.6, 1.0], "points": {"mouht": [[0.5, 0.5]] * 8}}, "['mouht']"),
    ("NaN points", {"box": [0.2, 0.2, 0.6, 1.0], "points": {"mouth": [[float("nan"), 0.5]] * 8}}, "inside the frame"),
    ("points far outside", {"box": [0.2, 0.2, 0.6, 1.0], "points": {"mouth": [[1e30, 0.5]] * 8}}, "inside the frame"),
    ("a box with x1 < x0", {"box": [0.6, 0.2, 0.2, 1.0]}, "0 <= x0 < x1 <= 1"),
]


@pytest.mark.parametrize("what, subject, message", BAD_MOTION, ids=[c[0] for c in BAD_MOTION])
def test_a_bad_motion_request_is_one_line(tmp_path, what, subject, message):
    """Before: points given as a list raised AttributeError; NaN, 1e30 or misspelled points were taken silently."""
    import json

    import inputs
    (tmp_path / "bad.json").write_text(json.dumps({"subjects": [subject]}))
    with pytest.raises(inputs.InputError) as err:
        inputs.load_motion(str(tmp_path / "bad.json"), 1, 8)
    assert message in str(err.value) and "\n" not in str(err.value)
