"""The SuTI path on IF-shaped diffusers U-Nets: encoder reuse, zero-init identity, gradients."""
import pytest
import torch

pytest.importorskip("diffusers")

from if_helpers import TEXT_DIM, TEXT_LEN, exemplars  # noqa: E402

from suti.if_backbone.context import IFContextUNet, resolve_placement  # noqa: E402
from suti.if_backbone.stage import new_if_stage  # noqa: E402


def _inputs(unet, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x = torch.randn(b, unet.config.in_channels, size, size, generator=g)
    k = torch.tensor([3, 700][:b])
    text = torch.randn(b, TEXT_LEN, TEXT_DIM, generator=g)
    labels = torch.tensor([0, 250][:b]) if unet.config.class_embed_type == "timestep" else None
    return x, k, text, labels


def _stock_internals(unet, x, k, text, labels):
    """Feature maps captured from an unmodified U-Net's full forward at each hook point."""
    from suti.if_backbone.context import _hook_point

    got, handles = {}, []
    points = {f"down{i}": _hook_point(blk) for i, blk in enumerate(unet.down_blocks)}
    points["mid"] = unet.mid_block
    for name, mod in points.items():
        handles.append(mod.register_forward_hook(lambda m, a, o, name=name: got.__setitem__(name, o.clone())))
    with torch.no_grad():
        out = unet(x, k, encoder_hidden_states=text, class_labels=labels).sample
    for h in handles:
        h.remove()
    return got, out


@pytest.mark.parametrize("which", ["tiny_one", "tiny_two"])
def test_exemplar_encoder_equals_unet_internals_and_zero_init_is_identity(which, request):
    unet = request.getfixturevalue(which)
    x, k, text, labels = _inputs(unet)
    stock_feats, stock_out = _stock_internals(unet, x, k, text, labels)
    model = IFContextUNet(unet, ("down-1", "mid", "up0"), head_dim=16)
    with torch.no_grad():
        feats = model.encoder_features(x, k, text, labels)
        out_none = model(x, k, text, labels, context=None)
        # with exemplar context present too: zero-initialised output projections add exactly nothing
        tokens = {s: (f.flatten(2).transpose(1, 2), torch.ones(f.shape[0], f.shape[2] * f.shape[3], dtype=torch.bool))
                  for s, f in feats.items()}
        out_ctx = model(x, k, text, labels, context=model.project_context(tokens))
    assert set(feats) == {f"down{len(unet.down_blocks) - 1}", "mid"}
    for name, f in feats.items():
        assert torch.equal(f, stock_feats[name]), name
    assert torch.equal(out_none, stock_out)
    assert torch.equal(out_ctx, stock_out)


def test_placement_names_and_errors(tiny_one):
    assert resolve_placement(tiny_one, ("down-1", "mid", "up0")) == ("down2", "mid", "up0")
    assert resolve_placement(tiny_one, ("down1", "up-1")) == ("down1", "up2")
    with pytest.raises(ValueError, match="3 down blocks"):
        resolve_placement(tiny_one, ("down5",))
    with pytest.raises(ValueError, match="use 'down<i>'"):
        resolve_placement(tiny_one, ("middle",))
    with pytest.raises(ValueError, match="twice"):
        resolve_placement(tiny_one, ("down2", "down-1"))


def test_other_placements_keep_identity_and_read_matching_features(tiny_one):
    x, k, text, _ = _inputs(tiny_one)
    with torch.no_grad():
        stock = tiny_one(x, k, encoder_hidden_states=text).sample
    model = IFContextUNet(tiny_one, ("down0", "down1", "mid", "up1", "up2"), head_dim=16)
    assert model.source == {"down0": "down0", "down1": "down1", "mid": "mid", "up1": "down1", "up2": "down0"}
    with torch.no_grad():
        assert torch.equal(model(x, k, text), stock)


def test_gradients_reach_every_new_parameter_after_the_first_step(tiny_one, null_text):
    stage = new_if_stage(tiny_one, null_text_emb=null_text, context_head_dim=16,
                         diffusion={"prediction": "eps", "text_drop_prob": 0.0, "context_drop_prob": 0.0,
                                    "joint_drop_prob": 0.0}).train_context_only()
    opt = torch.optim.Adam([p for p in stage.parameters() if p.requires_grad], lr=1e-3)
    assert {n for n, p in stage.named_parameters() if p.requires_grad} == \
        {f"unet.context_attn.{n}" for n, _ in stage.unet.context_attn.named_parameters()}
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    text, mask = torch.randn(2, TEXT_LEN, TEXT_DIM, generator=g), torch.ones(2, TEXT_LEN, dtype=torch.bool)
    ex = exemplars(b=2)
    for step in range(2):
        opt.zero_grad()
        stage.training_loss(x0, text, mask, exemplars=ex, generator=g).backward()
        if step == 0:  # zero-initialised output: only it gets a gradient at first
            assert all(p.grad is not None for p in stage.unet.context_attn.parameters())
        opt.step()
    dead = [n for n, p in stage.unet.context_attn.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    assert all(p.grad is None for p in stage.unet.unet.parameters())


def test_exemplar_cache_encodes_once_per_generation(tiny_one, null_text):
    from suti.sampling import Guidance

    stage = new_if_stage(tiny_one, null_text_emb=null_text, context_head_dim=16)
    calls = []
    orig = stage.unet.encoder_features
    stage.unet.encoder_features = lambda *a, **kw: calls.append(1) or orig(*a, **kw)
    text, mask = torch.randn(2, TEXT_LEN, TEXT_DIM), torch.ones(2, TEXT_LEN, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    a = stage.sample(text, mask, exemplars=exemplars(), guidance=Guidance(3.0, "interleaved"), steps=4, generator=g)
    assert len(calls) == 1
    g = torch.Generator().manual_seed(0)
    b = stage.sample(text, mask, exemplars=exemplars(), guidance=Guidance(3.0, "interleaved"), steps=4, generator=g,
                     cache_context=False)
    assert len(calls) == 1 + 4
    assert torch.allclose(a, b, atol=1e-6)
