"""The schedule bridge: IF's discrete DDPM schedule driven by the project's samplers."""
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402
from if_helpers import TEXT_DIM, TEXT_LEN  # noqa: E402

from suti.if_backbone.schedule import IF_SCHEDULER_DEFAULTS, DiscreteSchedule  # noqa: E402
from suti.if_backbone.stage import new_if_stage  # noqa: E402
from suti.sampling import Guidance, ddim_sample, ddpm_sample, time_grid  # noqa: E402


def _scheduler(cls=DDPMScheduler, **over):
    cfg = {**IF_SCHEDULER_DEFAULTS, "variance_type": "fixed_small", **over}
    if cls is DDIMScheduler:
        cfg = {k: v for k, v in cfg.items() if k not in ("variance_type",)}
        cfg["set_alpha_to_one"] = True
    return cls.from_config(cfg)


def _fake_eps(x, k):
    """A deterministic stand-in for the U-Net: depends on the image and the timestep."""
    kk = k.double().reshape(-1, 1, 1, 1).to(x.dtype)
    return 0.7 * x * torch.cos(kk / 150.0) + 0.3 * torch.sin(3 * x + kk / 97.0)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_grid_times_map_to_the_scheduler_timesteps(spacing, steps):
    sched = _scheduler(timestep_spacing=spacing)
    sched.set_timesteps(steps)
    bridge = DiscreteSchedule.from_config({"timestep_spacing": spacing})
    ts = time_grid(steps)
    assert torch.equal(bridge.timesteps(ts[:-1], steps), sched.timesteps)
    assert int(bridge.timesteps(ts[-1:], steps)) == -1  # t = 0: clean, alpha_bar = 1


def test_threshold_is_the_schedulers():
    sched = _scheduler()
    bridge = DiscreteSchedule.from_config()
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.5, 1.2, 2.0, 9.0])[:, None, None, None]
    assert torch.equal(bridge.threshold(x0, "dynamic"), sched._threshold_sample(x0))
    assert torch.equal(bridge.threshold(x0, "static"), x0.clamp(-1, 1))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddpm_sampler_matches_ddpm_scheduler_step_by_step(spacing):
    """The project's DDPM sampler over the bridge = DDPMScheduler.step (posterior mean, fixed-small
    variance, IF's dynamic thresholding), with the same noise draws."""
    steps, shape = 10, (2, 3, 8, 8)
    sched = _scheduler(timestep_spacing=spacing)
    sched.set_timesteps(steps)
    bridge = DiscreteSchedule.from_config({"timestep_spacing": spacing})

    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g) * 1.0
    ref_states = []
    for k in sched.timesteps:
        x = sched.step(_fake_eps(x, k.expand(shape[0])), k, x, generator=g).prev_sample
        ref_states.append(x)

    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(shape, generator=g)
    ours = []

    def denoise(x, t, i):
        k = bridge.timesteps(t, steps)
        return bridge.threshold(bridge.x0_from_eps(x, _fake_eps(x, k), k), "dynamic")

    out = ddpm_sample(denoise, x_T, steps, threshold="none", generator=g, logsnr_fn=bridge.logsnr_fn(steps),
                      callback=lambda i, x, x0: ours.append(x))
    if spacing == "trailing":  # the scheduler still draws (near-zero variance) noise at its last step, t=19
        ref_states[-1] = None
    for i, (a, b) in enumerate(zip(ref_states, ours)):
        if a is not None:
            assert torch.allclose(a, b, atol=2e-5, rtol=1e-5), (i, (a - b).abs().max())
    assert torch.allclose(out, ours[-1])


def test_ddim_sampler_matches_ddim_scheduler_without_thresholding():
    steps, shape = 8, (2, 3, 8, 8)
    sched = _scheduler(DDIMScheduler, thresholding=False, clip_sample=False)
    sched.set_timesteps(steps)
    bridge = DiscreteSchedule.from_config()
    x = x_T = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    for k in sched.timesteps:
        x = sched.step(_fake_eps(x, k.expand(shape[0])), k, x, eta=0.0).prev_sample

    def denoise(x, t, i):
        k = bridge.timesteps(t, steps)
        return bridge.x0_from_eps(x, _fake_eps(x, k), k)

    out = ddim_sample(denoise, x_T, steps, threshold="none", logsnr_fn=bridge.logsnr_fn(steps))
    assert torch.allclose(out, x, atol=2e-5, rtol=1e-5), (out - x).abs().max()


def test_a_full_sampling_run_equals_a_stock_ifpipeline_run(tiny_one, null_text):
    """Same prompt_embeds, negative (empty-prompt) embeds, seed and steps: the IF stage with the project's
    DDPM sampler and text guidance gives the stock IFPipeline's images, with IF's own scheduler: its
    learned_range variance is the noise the project's DDPM sampler adds for an IF stage."""
    from diffusers import IFPipeline

    stage = new_if_stage(tiny_one, null_text_emb=null_text, context_head_dim=16)  # context layers present, unused
    prompt = torch.randn(2, TEXT_LEN, TEXT_DIM, generator=torch.Generator().manual_seed(5))
    pipe = IFPipeline(tokenizer=None, text_encoder=None, unet=tiny_one, scheduler=_scheduler(variance_type="learned_range"),
                      safety_checker=None,
                      feature_extractor=None, watermarker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompt_embeds=prompt, negative_prompt_embeds=null_text.expand(2, -1, -1), num_inference_steps=6,
               guidance_scale=4.0, generator=torch.Generator().manual_seed(11), output_type="pt").images
    ours = stage.sample(prompt, torch.ones(2, TEXT_LEN, dtype=torch.bool), guidance=Guidance(4.0, "text"), steps=6,
                        sampler="ddpm", threshold="dynamic", generator=torch.Generator().manual_seed(11))
    assert ref.shape == ours.shape
    print("max |ours - IFPipeline| =", float((ours - ref).abs().max()))
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    assert ref.std() > 0.1  # a real image-shaped output, not a constant


def test_learned_variance_is_the_schedulers():
    """IF's learned_range variance, which the project's DDPM sampler adds for IF stages."""
    steps = 10
    sched = _scheduler(variance_type="learned_range")
    sched.set_timesteps(steps)
    bridge = DiscreteSchedule.from_config()
    v = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for i, k in enumerate(sched.timesteps):
        k_prev = sched.timesteps[i + 1] if i + 1 < steps else torch.tensor(-1)
        ref = sched._get_variance(k, predicted_variance=v)
        ours = bridge.learned_log_variance(v, k.reshape(1), k_prev.reshape(1))
        assert torch.allclose(ours, ref, atol=1e-5), (int(k), (ours - ref).abs().max())


def test_a_super_resolution_run_equals_a_stock_if_super_resolution_pipeline_run(tiny_two, null_text):
    """IF-II: bilinear upsampling, noise level 250 through the noising schedule, class label, guidance."""
    from diffusers import IFSuperResolutionPipeline

    stage = new_if_stage(tiny_two, name="sr", null_text_emb=null_text, lowres_size=16, context_head_dim=16,
                         scheduler={"sample_max_value": 1.0})
    g = torch.Generator().manual_seed(5)
    prompt = torch.randn(2, TEXT_LEN, TEXT_DIM, generator=g)
    lowres = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    pipe = IFSuperResolutionPipeline(tokenizer=None, text_encoder=None, unet=tiny_two,
                                     scheduler=_scheduler(sample_max_value=1.0, variance_type="learned_range"),
                                     image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
                                     safety_checker=None, feature_extractor=None, watermarker=None,
                                     requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(image=lowres, prompt_embeds=prompt, negative_prompt_embeds=null_text.expand(2, -1, -1),
               num_inference_steps=4, guidance_scale=4.0, noise_level=250, height=32, width=32,
               generator=torch.Generator().manual_seed(11), output_type="pt").images
    ours = stage.sample(prompt, torch.ones(2, TEXT_LEN, dtype=torch.bool), lowres=lowres, aug_level=0.25,
                        guidance=Guidance(4.0, "text"), steps=4, sampler="ddpm", generator=torch.Generator().manual_seed(11))
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    assert ref.std() > 0.1
