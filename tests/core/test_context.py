import pytest
import torch

from suti.cascade import Stage, convert_to_context_stage
from suti.context import ExemplarContext, Exemplars, encode_exemplars
from suti.presets import preset
from suti.sampling import Guidance
from suti.unet import ProjectedContext

D = 16


def _t2i():
    torch.manual_seed(0)
    st = Stage(preset("tiny-base32", text_embed_dim=D)).eval()
    torch.nn.init.normal_(st.unet.out[-1].weight, std=0.05)  # "trained" output layer
    return st


def _exemplars(b=2, k=3, mask=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.ones(b, k, dtype=torch.bool) if mask is None else mask
    return Exemplars(torch.rand(b, k, 3, 32, 32, generator=g) * 2 - 1, torch.randn(b, k, 4, D, generator=g),
                     torch.ones(b, k, 4, dtype=torch.bool), m)


def _trained_context_stage():
    st, _ = convert_to_context_stage(_t2i())
    for name, p in st.unet.named_parameters():  # pretend the context layers were trained
        if "context_attn.out" in name:
            torch.nn.init.normal_(p, std=0.2, generator=torch.Generator().manual_seed(1))
    return st.eval()


def test_zero_init_conversion_is_bitwise_equal():
    t2i = _t2i()
    suti, report = convert_to_context_stage(t2i)
    suti.eval()
    assert 0 < report["growth"] < 0.15 and report["params_added"] > 0
    te, tm = torch.randn(2, 4, D), torch.ones(2, 4, dtype=torch.bool)
    x_T = torch.randn(2, 3, 32, 32)
    # Until trained, dropping the context changes nothing, so text and joint guidance equal plain CFG
    # and context guidance equals no guidance at all.
    for mode, t2i_mode in (("text", "text"), ("joint", "text"), ("context", "none")):
        a = t2i.sample(te, tm, steps=3, noise=x_T, guidance=Guidance(mode=t2i_mode))
        b = suti.sample(te, tm, steps=3, noise=x_T, exemplars=_exemplars(), guidance=Guidance(mode=mode))
        assert torch.equal(a, b), mode
    # a single forward too, raw output
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    feats = encode_exemplars(suti.unet, _exemplars())
    assert torch.equal(t2i.unet(x, t, te, tm), suti.unet(x, t, te, tm, context=feats))


def test_cache_equality_and_encode_count():
    st = _trained_context_stage()
    te, tm = torch.randn(2, 4, D), torch.ones(2, 4, dtype=torch.bool)
    x_T = torch.randn(2, 3, 32, 32)
    a = st.sample(te, tm, steps=4, noise=x_T, exemplars=_exemplars(), cache_context=True)
    b = st.sample(te, tm, steps=4, noise=x_T, exemplars=_exemplars(), cache_context=False)
    assert torch.equal(a, b)
    ctx = ExemplarContext(st.unet, _exemplars(), cache=True)
    for _ in range(5):
        cached = ctx.features()
    assert ctx.encode_calls == 1
    # The cache holds each context layer's keys/values (down, middle and up stack), not raw features,
    # and feeding them gives the same output as feeding the raw exemplar features.
    assert isinstance(cached, ProjectedContext)
    assert {"middle"} < set(cached) and any(k.startswith("down") for k in cached) and any(k.startswith("up") for k in cached)
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    raw = encode_exemplars(st.unet, _exemplars())
    assert torch.equal(st.unet(x, t, te, tm, context=cached), st.unet(x, t, te, tm, context=raw))
    ctx = ExemplarContext(st.unet, _exemplars(), cache=False)
    for _ in range(5):
        ctx.features()
    assert ctx.encode_calls == 5


@pytest.mark.parametrize("mode", ["text", "context", "joint", "interleaved"])
def test_sampler_encodes_once_per_generation_in_every_guidance_mode(mode, monkeypatch):
    """The sampler itself uses the cache: one exemplar encode per generation (every step and guidance
    branch reuses it), one per step without it. The call counts are what this tests: the encode is
    deterministic, so the output equality below only catches a cache that a branch alters (e.g. an
    in-place context drop in the "no_context" branch leaking into the next step's "full" branch)."""
    from suti.unet import EfficientUNet

    st = _trained_context_stage()
    calls = []
    real = EfficientUNet.exemplar_features
    monkeypatch.setattr(EfficientUNet, "exemplar_features", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    te, tm = torch.randn(2, 4, D), torch.ones(2, 4, dtype=torch.bool)
    x_T = torch.randn(2, 3, 32, 32)
    g = Guidance(scale=4.0, mode=mode, text_ratio=0.5)
    cached = st.sample(te, tm, steps=4, noise=x_T, exemplars=_exemplars(), guidance=g, cache_context=True)
    assert len(calls) == 1
    uncached = st.sample(te, tm, steps=4, noise=x_T, exemplars=_exemplars(), guidance=g, cache_context=False)
    assert len(calls) == 1 + 4
    assert torch.equal(cached, uncached), mode


def test_one_subject_is_encoded_once_for_many_images():
    """A single exemplar row spread over a batch (one subject, several images) gives the same images as
    the exemplars repeated per row, with one encode at batch 1."""
    st = _trained_context_stage()
    te, tm = torch.randn(3, 4, D), torch.ones(3, 4, dtype=torch.bool)
    x_T = torch.randn(3, 3, 32, 32)
    one = _exemplars(1, seed=4)
    g = Guidance(mode="interleaved")
    a = st.sample(te, tm, steps=3, noise=x_T, exemplars=one, guidance=g)
    b = st.sample(te, tm, steps=3, noise=x_T, exemplars=one.repeat(3), guidance=g)
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="cannot be spread"):
        st.sample(te[:2], tm[:2], steps=1, noise=x_T[:2], exemplars=_exemplars(3))


def test_no_exemplars_takes_the_trained_null_context_path():
    """No exemplars = every exemplar dropped, as in training's context drop (null key/value only)."""
    st = _trained_context_stage()
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    te, tm = torch.randn(2, 4, D), torch.ones(2, 4, dtype=torch.bool)
    from suti.context import drop_context

    dropped = drop_context(encode_exemplars(st.unet, _exemplars()), torch.zeros(2, dtype=torch.bool))
    assert torch.allclose(st.unet(x, t, te, tm, context=None), st.unet(x, t, te, tm, context=dropped), atol=1e-5)
    # and that path is not a no-op once the context layers are trained
    plain = _t2i()
    assert not torch.allclose(st.unet(x, t, te, tm), plain.unet(x, t, te, tm), atol=1e-3)


def test_context_changes_output_once_trained():
    st = _trained_context_stage()
    te, tm = torch.randn(1, 4, D), torch.ones(1, 4, dtype=torch.bool)
    x_T = torch.randn(1, 3, 32, 32)
    a = st.sample(te, tm, steps=3, noise=x_T, exemplars=_exemplars(1, seed=1))
    b = st.sample(te, tm, steps=3, noise=x_T, exemplars=_exemplars(1, seed=2))
    assert not torch.allclose(a, b)


def test_variable_k_and_padding_mask():
    st = _trained_context_stage()
    x, t = torch.randn(1, 3, 32, 32), torch.rand(1)
    te, tm = torch.randn(1, 4, D), torch.ones(1, 4, dtype=torch.bool)
    for k in (1, 2, 5):
        feats = encode_exemplars(st.unet, _exemplars(1, k))
        tokens, mask = feats["middle"]
        assert tokens.shape[1] == mask.shape[1] == k * 8 * 8  # 32px / 4 = 8x8 at the lowest of 3 levels
        assert torch.isfinite(st.unet(x, t, te, tm, context=feats)).all()
    # K=2 real + 3 padded slots (garbage) equals K=2 alone: padding is masked out
    two = _exemplars(1, 2, seed=3)
    padded = Exemplars(torch.cat([two.images, torch.randn(1, 3, 3, 32, 32)], 1),
                       torch.cat([two.text_emb, torch.randn(1, 3, 4, D)], 1), torch.ones(1, 5, 4, dtype=torch.bool),
                       torch.tensor([[True, True, False, False, False]]))
    a = st.unet(x, t, te, tm, context=encode_exemplars(st.unet, two))
    b = st.unet(x, t, te, tm, context=encode_exemplars(st.unet, padded))
    assert torch.allclose(a, b, atol=1e-5)
    # batch rows with different K in one batch
    mixed = _exemplars(2, 3, mask=torch.tensor([[True, False, False], [True, True, True]]))
    out = st.unet(x.repeat(2, 1, 1, 1), t.repeat(2), te.repeat(2, 1, 1), tm.repeat(2, 1),
                  context=encode_exemplars(st.unet, mixed))
    assert torch.isfinite(out).all()


def test_exemplar_shape_errors():
    with pytest.raises(ValueError, match="at least one exemplar"):
        _exemplars(1, 2, mask=torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="disagree"):
        Exemplars(torch.randn(1, 3, 3, 8, 8), torch.randn(1, 2, 4, D), torch.ones(1, 3, 4, dtype=torch.bool),
                  torch.ones(1, 3, dtype=torch.bool))


def test_context_training_loss_backprops_into_context_layers():
    st, _ = convert_to_context_stage(_t2i())
    st.train()
    loss = st.training_loss(torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 4, D), torch.ones(2, 4, dtype=torch.bool),
                            exemplars=_exemplars(), generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = {n: p.grad for n, p in st.unet.named_parameters() if "context_attn.out.weight" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
