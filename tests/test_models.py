"""Generative models: shapes, loss bookkeeping, real (tiny) training, files, configs, DDP."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from ising_dist.models import (ModelConfig, build_model, evaluate_epoch, load_model, save_model,
                               train_epoch)
from ising_dist.models.nets import PeriodicConv2d, PeriodicConvTranspose2d

FAMILIES = ["ae", "vae", "cvae", "dcgan", "wgan-gp"]
LIKELIHOOD = ["ae", "vae", "cvae"]


pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def tiny(family="vae", arch="mlp", L=8, **kw) -> ModelConfig:
    return ModelConfig(family=family, arch=arch, L=L, hidden=kw.pop("hidden", [32, 16]),
                       channels=kw.pop("channels", [8, 4]), **kw)


def two_mode(n, L, flip, g):
    """{0,1} lattices [n, L, L]: all up or all down (equal odds), each site flipped w.p. flip."""
    up = torch.randint(0, 2, (n, 1, 1), generator=g).float()
    return (up + (torch.rand(n, L, L, generator=g) < flip).float()) % 2


def batches(x, T, size, g):
    idx = torch.randperm(len(x), generator=g)
    return [(x[idx[i:i + size]], T[idx[i:i + size]]) for i in range(0, len(x), size)]


def abs_m(spins):
    return spins.float().mean((1, 2)).abs()


def assert_spins(s, n, L):
    assert s.dtype == torch.int8 and s.shape == (n, L, L)
    assert set(s.unique().tolist()) <= {-1, 1}


# ---------------------------------------------------------------------- building and shapes
@pytest.mark.parametrize("L", [8, 16])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_builds_with_documented_shapes(family, arch, L):
    model = build_model(tiny(family, arch, L, latent_dim=3, noise_dim=5))
    x, T = torch.randint(0, 2, (4, L, L)).float(), torch.full((4,), 2.0)
    if model.kind == "likelihood":
        mu, logvar = model.encode(x, T)
        assert mu.shape == (4, 3)
        assert logvar is None if family == "ae" else logvar.shape == (4, 3)
        z = torch.randn(4, 3)
    else:
        assert model.kind == "adversarial"
        with pytest.raises(NotImplementedError, match="no encoder"):
            model.encode(x, T)
        z = torch.randn(4, 5)
    assert model.decode(z, T).shape == (4, L, L)
    for mode in ("bernoulli", "sign"):
        assert_spins(model.sample(6, T=2.0, mode=mode), 6, L)
    assert_spins(model.sample(3, T=torch.tensor([1.0, 2.0, 3.0])), 3, L)
    assert len(model.configure_optimizers(1e-3)) == (1 if model.kind == "likelihood" else 2)


def test_sign_mode_thresholds_and_bernoulli_mode_draws_from_the_generator():
    """Sign mode is p > 1/2 whatever the generator; Bernoulli mode draws a new lattice for
    each generator (and the same one for the same seed), with frequencies sigmoid(logits)."""
    model = build_model(tiny("vae"))
    with torch.no_grad():
        logits = model.decode(torch.randn(400, 2))
    gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    sign5, sign6 = model.to_spins(logits, "sign", gen(5)), model.to_spins(logits, "sign", gen(6))
    assert torch.equal(sign5, sign6)
    assert torch.equal(sign5, torch.where(logits > 0, 1, -1).to(torch.int8))
    b5, b6 = model.to_spins(logits, "bernoulli", gen(5)), model.to_spins(logits, "bernoulli",
                                                                          gen(6))
    assert not torch.equal(b5, b6)
    assert torch.equal(b5, model.to_spins(logits, "bernoulli", gen(5)))
    p = torch.sigmoid(logits)                                   # 25600 sites: 4 sigma
    up = (b5 == 1).float()
    sigma = (p * (1 - p)).sum().sqrt() / p.numel()
    assert abs(up.mean() - p.mean()) < 4 * sigma
    # the configured mode is the default of sample(): sign under two generators agrees only
    # when the code is the same, so compare decodes of one code
    cfg = dict(tiny("ae").to_dict(), sample_mode="sign")
    ae = build_model(cfg)
    z = torch.randn(50, 2)
    with torch.no_grad():
        assert torch.equal(ae.to_spins(ae.decode(z), None, gen(1)),
                           ae.to_spins(ae.decode(z), None, gen(2)))


def test_sampling_errors_name_the_problem():
    with pytest.raises(ValueError, match="pass T"):
        build_model(tiny("cvae")).sample(4)
    with pytest.raises(ValueError, match="pass T"):
        build_model(tiny("wgan-gp")).sample(4)
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        build_model(tiny("cvae")).sample(4, T=torch.ones(3))
    with pytest.raises(ValueError, match="mode='coin'"):
        build_model(tiny("vae")).sample(4, mode="coin")
    with pytest.raises(ValueError, match="fit_prior"):
        build_model(tiny("vae")).sample(4, prior="fitted")


# ---------------------------------------------------------------------- losses
def pin_outputs(model, logit: float, mu=None, logvar=None) -> None:
    """Make the networks' last layers constant: decoder logits ≡ logit at every site, encoder
    output ≡ (mu, logvar) (AE: mu) for every input; the losses then have closed forms."""
    conv = model.cfg.arch == "conv"
    dec = model.decoder.deconvs[-1] if conv else model.decoder.net[-1]
    enc = model.encoder.dense if conv else model.encoder.net[-1]
    with torch.no_grad():
        for layer in (dec, enc):
            for param in layer.parameters():
                param.zero_()
        dec.bias.fill_(logit)
        enc.bias.copy_(torch.tensor(mu if logvar is None else mu + logvar))


@pytest.mark.parametrize("kl_weight", [0.0, 1.0, 100.0])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("family", LIKELIHOOD)
def test_losses_equal_their_closed_forms_and_total_is_the_weighted_sum(family, arch, kl_weight):
    """With constant outputs p = sigmoid(b) and code (mu, logvar), computed here in float64:
    recon = −Σ_sites [x ln p + (1−x) ln(1−p)] (batch mean), KL(N(mu, σ²) ‖ N(0, 1)) =
    −½ Σ_d (1 + logvar − mu² − e^logvar) (Kingma & Welling 2014, appendix B), mag = batch mean
    of (m_in − (2p − 1))², binarize = p(1 − p)."""
    cfg = ModelConfig.from_dict(dict(tiny(family, arch, latent_dim=3).to_dict(),
                                     kl_weight=kl_weight, mag_weight=3.0, binarize_weight=7.0))
    model = build_model(cfg)
    b, mu, logvar = 0.7, [0.5, -1.0, 2.0], [0.3, -0.4, 0.0]
    pin_outputs(model, b, mu, None if family == "ae" else logvar)
    x, T = torch.randint(0, 2, (8, 8, 8)).float(), torch.linspace(1.0, 4.0, 8)
    terms = model(x, T)
    assert set(terms) == {"recon", "kl", "mag", "binarize", "total"}
    assert all(v.ndim == 0 for v in terms.values())

    p = 1 / (1 + math.exp(-b))
    ones = x.double().sum((1, 2))
    recon = float((-(ones * math.log(p) + (64 - ones) * math.log(1 - p))).mean())
    kl = 0.0 if family == "ae" else -0.5 * sum(1 + lv - m * m - math.exp(lv)
                                               for m, lv in zip(mu, logvar))
    mag = float(((2 * x.double() - 1).mean((1, 2)) - (2 * p - 1)).pow(2).mean())
    binarize = p * (1 - p)
    for key, want in (("recon", recon), ("kl", kl), ("mag", mag), ("binarize", binarize)):
        assert terms[key].item() == pytest.approx(want, rel=1e-5, abs=1e-6), key
    total = recon + kl_weight * kl + 3.0 * mag + 7.0 * binarize
    assert terms["total"].item() == pytest.approx(total, rel=1e-5)


def test_recon_is_bce_summed_over_sites():
    model = build_model(tiny("ae"))
    x = torch.randint(0, 2, (5, 8, 8)).float()
    code, _ = model.encode(x)
    p = torch.sigmoid(model.decode(code))
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2)).mean()
    assert torch.allclose(model.losses(x, None)["recon"], bce, rtol=1e-5)


def test_gans_train_a_few_steps_with_finite_losses():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([two_mode(32, 8, 0.05, g), two_mode(32, 8, 0.5, g)])
    T = torch.cat([torch.full((32,), 1.5), torch.full((32,), 4.0)])
    for family in ("dcgan", "wgan-gp"):
        for arch in ("mlp", "conv"):
            model = build_model(tiny(family, arch, n_critic=2))
            opts = model.configure_optimizers(1e-3)
            gen_before = [p.clone() for p in model.generator.parameters()]
            for _ in range(2):
                out = train_epoch(model, batches(x, T, 16, g), opts, "cpu")
            assert all(math.isfinite(v) for v in out.values())
            assert "gen_total" in out and "critic_total" in out
            if family == "wgan-gp":
                assert out["critic_gp"] >= 0
            assert any(not torch.equal(a, b)
                       for a, b in zip(gen_before, model.generator.parameters()))
            ev = evaluate_epoch(model, batches(x, T, 16, g), "cpu")
            assert set(ev) == set(out) and all(math.isfinite(v) for v in ev.values())
            assert_spins(model.sample(5, T=1.5), 5, 8)


# ---------------------------------------------------------------------- learning
@pytest.mark.parametrize("mode", ["bernoulli", "sign"])
@pytest.mark.parametrize("family", ["dcgan", "wgan-gp"])
def test_the_critic_judges_the_spins_that_sampling_draws(family, mode):
    """The fakes shown to the critic are the configurations sample() draws (same generator
    state: same spins), binary like the real lattices, and still pass a gradient back to the
    generator (straight-through)."""
    model = build_model(tiny(family, sample_mode=mode))
    fake = model.fake(torch.full((64,), 2.0), torch.Generator().manual_seed(3))
    drawn = model.sample(64, T=2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fake.detach(), (drawn == 1).float())
    fake.sum().backward()
    assert all(p.grad is not None for p in model.generator.parameters())
    assert sum(p.grad.abs().sum() for p in model.generator.parameters()) > 0


@pytest.mark.parametrize("family, epochs", [("dcgan", 80), ("wgan-gp", 150)])
def test_conditional_gans_follow_temperature(family, epochs):
    """Issue 16: two temperatures, ordered two-mode lattices at T = 1.5 (<|m|> ≈ 0.90) and
    fair coins at T = 4 (<|m|> ≈ 0.10). The generated <|m|> must differ between them by more
    than 0.6 × the data's own difference, and sit within 0.2 of the data at each T. Measured
    over torch seeds 0-2 (L = 8, 512 lattices, batch 32, lr 2e-3 / 1e-3, one critic step per
    generator step): differences 0.78-0.81 (DCGAN) and 0.68-0.76 (WGAN-GP) against the data's
    0.80; a critic shown probabilities instead of spins gave ≈ 0 (see gan.py)."""
    g = torch.Generator().manual_seed(1)
    n = 256
    x = torch.cat([two_mode(n, 8, 0.05, g), two_mode(n, 8, 0.5, g)])
    T = torch.cat([torch.full((n,), 1.5), torch.full((n,), 4.0)])
    data_low, data_high = abs_m(2 * x[:n] - 1).mean(), abs_m(2 * x[n:] - 1).mean()
    model = build_model(tiny(family, hidden=[64, 32], n_critic=1))
    opts = model.configure_optimizers(1e-3 if family == "dcgan" else 2e-3)
    for _ in range(epochs):
        train_epoch(model, batches(x, T, 32, g), opts, "cpu")
    gen = torch.Generator().manual_seed(2)
    low = abs_m(model.sample(400, T=1.5, generator=gen)).mean()
    high = abs_m(model.sample(400, T=4.0, generator=gen)).mean()
    assert low - high > 0.6 * (data_low - data_high), (low, high, data_low, data_high)
    assert abs(low - data_low) < 0.2 and abs(high - data_high) < 0.2, (low, high)


def test_vae_learns_two_ordered_modes():
    g = torch.Generator().manual_seed(1)
    L = 8
    x_tr, x_va = two_mode(512, L, 0.05, g), two_mode(256, L, 0.05, g)
    T_tr, T_va = torch.full((512,), 1.5), torch.full((256,), 1.5)
    model = build_model(tiny("vae", hidden=[64, 32], latent_dim=2))
    opts = model.configure_optimizers(3e-3)
    before = evaluate_epoch(model, batches(x_va, T_va, 128, g), "cpu")
    for _ in range(40):                                           # 320 steps
        train_epoch(model, batches(x_tr, T_tr, 64, g), opts, "cpu")
    after = evaluate_epoch(model, batches(x_va, T_va, 128, g), "cpu")
    entropy = L * L * -(0.05 * math.log(0.05) + 0.95 * math.log(0.95))  # best possible recon
    assert before["recon"] > 40 and after["recon"] < 1.3 * entropy
    m = abs_m(model.sample(500, generator=torch.Generator().manual_seed(2)))
    assert m.median() >= 0.8 and m.mean() > 0.65
    m_sign = abs_m(model.sample(500, mode="sign", generator=torch.Generator().manual_seed(2)))
    assert m_sign.mean() > 0.9


def test_cvae_orders_at_low_T_and_disorders_at_high_T():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([two_mode(256, 8, 0.05, g), two_mode(256, 8, 0.5, g)])
    T = torch.cat([torch.full((256,), 1.5), torch.full((256,), 4.0)])
    model = build_model(tiny("cvae", hidden=[64, 32], latent_dim=2))
    opts = model.configure_optimizers(3e-3)
    for _ in range(40):
        train_epoch(model, batches(x, T, 64, g), opts, "cpu")
    gen = torch.Generator().manual_seed(2)
    low, high = abs_m(model.sample(400, T=1.5, generator=gen)), abs_m(model.sample(400, T=4.0,
                                                                               generator=gen))
    assert low.mean() > 0.55 and high.mean() < 0.35 and low.mean() > high.mean() + 0.3

    # seed 001's fitted prior: per-T Gaussians of the codes, nearest fitted T is used
    with torch.no_grad():
        mu, _ = model.encode(x, T)
    model.fit_prior(mu, T)
    assert model.prior_T.tolist() == [1.5, 4.0] and model.prior_mean.shape == (2, 2)
    assert torch.allclose(model.prior_var[0], mu[:256].var(0, unbiased=False))
    low_fit = abs_m(model.sample(400, T=1.3, prior="fitted", generator=gen))
    assert low_fit.mean() > 0.55


def test_evaluate_epoch_changes_nothing():
    model = build_model(tiny("vae")).train()
    data = [(torch.randint(0, 2, (8, 8, 8)).float(), torch.ones(8))]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = evaluate_epoch(model, data, "cpu")
    assert set(out) == {"recon", "kl", "mag", "binarize", "total"} and model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


# ---------------------------------------------------------------------- periodic convs
def test_periodic_transposed_conv_is_adjoint_of_circular_conv_and_equivariant():
    for (k, n), c in itertools.product(((3, 4), (5, 4), (3, 1), (5, 1), (5, 2)), (1, 3, 8)):
        # n = 1, 2: the overhang is at least half the ring
        conv = torch.nn.Conv2d(c, 2, k, stride=2, padding=k // 2, padding_mode="circular",
                               bias=False)
        up = PeriodicConvTranspose2d(2, c, k)
        up.conv.weight.data.copy_(conv.weight.data)
        x, y = torch.randn(2, c, 2 * n, 2 * n), torch.randn(2, 2, n, n)
        with torch.no_grad():
            assert torch.allclose((conv(x) * y).sum(), (x * up(y)).sum(), atol=1e-4), (k, n, c)
            shifted = up(torch.roll(y, (1, 1), dims=(2, 3)))
            assert torch.allclose(shifted, torch.roll(up(y), (2, 2), dims=(2, 3)), atol=1e-5)
    with pytest.raises(ValueError, match="kernel size 4 is even"):
        PeriodicConvTranspose2d(2, 2, 4)
    with pytest.raises(ValueError, match="2×2 lattice padded by 0 is smaller than the kernel"):
        PeriodicConv2d(1, 2, 5, stride=2)(torch.zeros(1, 1, 2, 2))


def test_periodic_convs_have_exact_gradients_and_second_derivatives():
    """gradcheck and gradgradcheck (float64) of both periodic convs, inputs and parameters:
    the WGAN-GP's gradient penalty differentiates the critic's gradient again. Pads that wrap
    the ring more than once (N = 2, k = 5) included."""
    g = torch.Generator().manual_seed(3)
    for c_in, c_out, k, N, pad in ((1, 3, 5, 8, 2), (3, 2, 3, 4, 1), (2, 2, 5, 2, 2),
                                   (2, 1, 3, 3, 4)):
        conv = PeriodicConv2d(c_in, c_out, k, stride=2, padding=pad).double()
        up = PeriodicConvTranspose2d(c_out, c_in, k).double()
        x = torch.randn(2, c_in, N, N, dtype=torch.float64, generator=g, requires_grad=True)
        y = conv(x).detach().normal_(generator=g).requires_grad_()
        for f, inp in ((conv, x), (up, y)):
            params = tuple(f.parameters())
            assert torch.autograd.gradcheck(lambda t, *_: f(t), (inp, *params)), (c_in, k, N)
            assert torch.autograd.gradgradcheck(lambda t, *_: f(t), (inp, *params)), (c_in, k, N)


def test_periodic_convs_give_gradients_in_their_parameters_layout():
    """Each parameter's gradient has the parameter's own strides, one channel on either side
    included: DDP's gradient_as_bucket_view (train.ddp_options) otherwise warns on every worker
    that they differ from its bucket's, and copies them."""
    for c_in, c_out in ((1, 8), (2, 8), (8, 1), (16, 16)):
        for conv in (PeriodicConv2d(c_in, c_out, 5, stride=2, padding=2),
                     PeriodicConvTranspose2d(c_in, c_out, 5)):
            conv(torch.randn(3, c_in, 8, 8)).square().sum().backward()
            for name, p in conv.named_parameters():
                assert p.grad.stride() == p.stride(), (type(conv).__name__, c_in, c_out, name)


def test_periodic_conv_matches_torch_circular_conv():
    """PeriodicConv2d against nn.Conv2d(padding_mode="circular") with the same weights:
    outputs and the gradients of input and weights, for 1, 2 and 16 input channels, with the
    input's gradient and without it."""
    g = torch.Generator().manual_seed(1)
    for c_in, k, needs_grad in ((1, 5, True), (2, 5, True), (1, 5, False), (16, 3, True)):
        ref = torch.nn.Conv2d(c_in, 6, k, stride=2, padding=k // 2, padding_mode="circular")
        ours = PeriodicConv2d(c_in, 6, k, stride=2, padding=k // 2)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(4, c_in, 8, 8, generator=g)
        outs, grads = [], []
        for conv in (ref, ours):
            xi = x.clone().requires_grad_(needs_grad)
            out = conv(xi)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
            outs.append(out)
            grads.append([xi.grad if needs_grad else None, conv.weight.grad, conv.bias.grad])
        assert torch.allclose(outs[0], outs[1], atol=1e-5), (c_in, needs_grad)
        for a, b in zip(*grads):
            assert (a is None and b is None) or torch.allclose(a, b, atol=1e-4), (c_in, k)
    # pads that wrap the ring more than once (torch's circular pad refuses them): against an
    # unpadded conv of the lattice tiled by hand, site q of the padded axis = (q − pad) mod N
    for N, k, pad in ((2, 5, 2), (3, 3, 4), (4, 5, 5)):
        ours = PeriodicConv2d(2, 3, k, stride=2, padding=pad)
        x = torch.randn(2, 2, N, N, generator=g)
        tiled = torch.arange(-pad, N + pad) % N
        ref = F.conv2d(x[..., tiled, :][..., tiled], ours.weight, ours.bias, stride=2)
        with torch.no_grad():
            assert torch.allclose(ours(x), ref, atol=1e-5), (N, k, pad)


# ---------------------------------------------------------------------- files
def test_save_load_roundtrip_is_exact(tmp_path):
    g = torch.Generator().manual_seed(1)
    x, T = two_mode(64, 8, 0.1, g), torch.cat([torch.full((32,), 1.5), torch.full((32,), 3.0)])
    for family, arch in (("cvae", "conv"), ("ae", "mlp"), ("wgan-gp", "conv")):
        model = build_model(tiny(family, arch))
        train_epoch(model, batches(x, T, 16, g), model.configure_optimizers(1e-3), "cpu")
        if model.kind == "likelihood":
            with torch.no_grad():
                model.fit_prior(model.encode(x, T)[0], T)
        path = tmp_path / f"{family}.pt"
        save_model(path, model, {"epoch": 3, "metrics": {"recon": 1.5}, "tags": ["a", None]})
        raw = torch.load(path, weights_only=True, map_location="cpu")
        assert raw["format"] == "ising_dist.model" and raw["version"] == 1
        loaded, extra = load_model(path)
        assert extra == {"epoch": 3, "metrics": {"recon": 1.5}, "tags": ["a", None]}
        assert loaded.cfg == model.cfg and type(loaded) is type(model)
        d = model.cfg.latent_dim if model.kind == "likelihood" else model.cfg.noise_dim
        z = torch.randn(6, d)
        with torch.no_grad():
            assert torch.equal(model.decode(z, T[:6]), loaded.decode(z, T[:6]))
        prior = "fitted" if model.kind == "likelihood" else None
        s1 = model.sample(10, T=1.6, prior=prior, generator=torch.Generator().manual_seed(3))
        s2 = loaded.sample(10, T=1.6, prior=prior, generator=torch.Generator().manual_seed(3))
        assert torch.equal(s1, s2)
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_foreign_files_and_bad_extra_raise_value_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not an ising_dist model file"):
        load_model(text)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="expected format='ising_dist.model'"):
        load_model(other)
    newer = tmp_path / "newer.pt"
    torch.save({"format": "ising_dist.model", "version": 2}, newer)
    with pytest.raises(ValueError, match="version 2"):
        load_model(newer)
    with pytest.raises(ValueError, match="extra"):
        save_model(tmp_path / "m.pt", build_model(tiny()), {"x": torch.zeros(2)})
    assert not (tmp_path / "m.pt").exists()


# ---------------------------------------------------------------------- configs
@pytest.mark.parametrize("change, message", [
    ({"kl_weight": -1}, "kl_weight=-1"),
    ({"mag_weight": -0.5}, "mag_weight=-0.5"),
    ({"kl_weight": "1e-3"}, "1.0e-3"),
    ({"klweight": 1.0}, "klweight"),
    ({"family": "gan"}, "family='gan'"),
    ({"arch": "resnet"}, "arch='resnet'"),
    ({"arch": "conv", "L": 10}, "L=10"),
    ({"hidden": []}, "hidden=[]"),
    ({"latent_dim": 0}, "latent_dim=0"),
    ({"L": "16"}, "L='16'"),
    ({"sample_mode": "argmax"}, "sample_mode='argmax'"),
    ({"family": "dcgan", "prior": "fitted"}, "prior='fitted'"),
    ({"n_critic": 0}, "n_critic=0"),
    ({"t_scale": 0}, "t_scale=0"),
    ({"gp_weight": float("inf")}, "gp_weight=inf"),
    ({"periodic_padding": "yes"}, "periodic_padding='yes'"),
])
def test_bad_configs_name_the_value(change, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ModelConfig.from_dict(dict(tiny().to_dict(), **change))


def test_config_roundtrips_through_plain_dict():
    cfg = ModelConfig.from_dict({"family": "cvae", "arch": "conv", "L": 16, "kl_weight": 0,
                                 "channels": (16, 8)})
    d = cfg.to_dict()
    assert ModelConfig.from_dict(d) == cfg and d["channels"] == [16, 8]
    assert all(isinstance(v, (str, int, float, bool, list)) for v in d.values())
    assert build_model(d).cfg == cfg


# ---------------------------------------------------------------------- DDP
def test_loop_under_ddp_single_process(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        data = [(torch.randint(0, 2, (16, 8, 8)).float(), torch.rand(16) + 1.5) for _ in range(4)]
        for family in ("vae", "wgan-gp"):
            model = build_model(tiny(family, "conv", n_critic=2))
            wrapped = DDP(model, find_unused_parameters=model.kind == "adversarial")
            out = train_epoch(wrapped, data, model.configure_optimizers(1e-3), "cpu")
            assert out and all(math.isfinite(v) for v in out.values())
            assert evaluate_epoch(wrapped, data, "cpu").keys() == out.keys()
            save_model(tmp_path / f"{family}.pt", wrapped, {})
            assert load_model(tmp_path / f"{family}.pt")[0].cfg == model.cfg
        gan = build_model(tiny("dcgan"))
        with pytest.raises(ValueError, match="find_unused_parameters=True"):
            train_epoch(DDP(gan), data, gan.configure_optimizers(1e-3), "cpu")
    finally:
        dist.destroy_process_group()


# ====================================================================== issue 15
# InfoGAN, ACGAN, the learned prior p(z|T), conditioning on (T, |m|), the standardised T input
from ising_dist.models.condition import MagnetizationTable, make_condition  # noqa: E402
from ising_dist.models.cvae import gaussian_kl  # noqa: E402
from ising_dist.models.nets import t_feature  # noqa: E402

LADDER = [1.5, 2.5, 4.0]
NEW_GANS = ["infogan", "acgan"]


def laddered(family, arch="mlp", L=8, **kw) -> ModelConfig:
    return tiny(family, arch, L, ladder=kw.pop("ladder", LADDER), **kw)


def pin_critic(model, bias) -> None:
    """Make the critic's outputs constant (last layer's weights 0, its bias ``bias``)."""
    last = model.critic.dense if model.cfg.arch == "conv" else model.critic.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(bias))


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("family", NEW_GANS)
def test_infogan_and_acgan_build_sample_and_train_with_finite_losses(family, arch):
    model = build_model(laddered(family, arch, noise_dim=5, info_categories=3,
                                 info_continuous=2))
    assert model.kind == "adversarial" and model.cfg.adversarial and model.cfg.conditional
    assert model.z_dim == (5 + 3 + 2 if family == "infogan" else 5)
    T = torch.tensor([1.5, 2.5, 4.0, 1.5])
    assert model.decode(torch.randn(4, model.z_dim), T).shape == (4, 8, 8)
    for mode in ("bernoulli", "sign"):
        assert_spins(model.sample(6, T=2.5, mode=mode), 6, 8)
    g = torch.Generator().manual_seed(1)
    x = torch.cat([two_mode(32, 8, 0.05, g), two_mode(32, 8, 0.5, g)])
    Tx = torch.cat([torch.full((32,), 1.5), torch.full((32,), 4.0)])
    opts = model.configure_optimizers(1e-3)
    out = train_epoch(model, batches(x, Tx, 16, g), opts, "cpu")
    key = "info" if family == "infogan" else "aux"
    assert {f"critic_{key}", f"gen_{key}", "critic_total", "gen_total"} <= set(out)
    assert all(math.isfinite(v) for v in out.values())
    ev = evaluate_epoch(model, batches(x, Tx, 16, g), "cpu")
    assert set(ev) == set(out)
    # the critic judges the spins that sampling draws (same generator state: same spins)
    fake = model.fake(torch.full((16,), 2.5), torch.Generator().manual_seed(3))
    drawn = model.sample(16, T=2.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fake.detach(), (drawn == 1).float())


def test_infogan_information_term_is_the_cross_entropy_and_gaussian_bound():
    """With a constant Q head (categorical logits q, continuous means mu), L_I must equal
    λ_cat·CE(q, c_cat) + λ_cont·½ Σ (mu − c_cont)², batch mean, over the codes the fakes were
    drawn with (Chen et al. 2016, eq. 5 with a unit-variance Gaussian Q; λ per kind of code,
    §6), in both players' losses."""
    lam_cat, lam_cont = 0.7, 0.2
    model = build_model(laddered("infogan", info_categories=3, info_continuous=2,
                                 info_weight=lam_cat, info_weight_continuous=lam_cont))
    q, mu = [0.3, -1.0, 0.5], [0.2, -0.4]
    pin_critic(model, [0.0] + q + mu)
    x, T = torch.randint(0, 2, (64, 8, 8)).float(), torch.full((64,), 2.5)
    for part in ("critic", "generator"):
        torch.manual_seed(5)
        _, cat, cont = model.latent(64)
        torch.manual_seed(5)
        terms = model(x, T, part)
        logq = torch.log_softmax(torch.tensor(q, dtype=torch.float64), 0)
        want = (-lam_cat * logq[cat].mean()
                + lam_cont * 0.5 * (torch.tensor(mu, dtype=torch.float64) - cont.double())
                .pow(2).sum(1).mean())
        assert terms["info"].item() == pytest.approx(want.item(), rel=1e-5), part


@pytest.mark.parametrize("twin", [True, False])
def test_acgan_classifies_the_ladder_index_of_each_temperature(twin):
    """Constant class logits l (and twin logits l'): the discriminator's aux term is
    CE(l, y) + CE(l' or l, y), the generator's CE(l, y) − CE(l', y) (TAC-GAN) or CE(l, y)
    (Odena), y the ladder index of each lattice's T."""
    model = build_model(laddered("acgan", aux_twin=twin))
    l, l2 = [0.5, -1.0, 2.0], [1.0, 0.0, -0.5]
    pin_critic(model, [0.0] + l + (l2 if twin else []))
    T = torch.tensor([1.5, 2.5, 4.0, 4.0, 1.5, 2.5])
    y = torch.tensor([0, 1, 2, 2, 0, 1])
    x = torch.randint(0, 2, (6, 8, 8)).float()

    def ce(logits):
        lp = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), 0)
        return -lp[y].mean().item()
    d, g = model.critic_loss(x, T)["aux"], model.generator_loss(x, T)["aux"]
    assert d.item() == pytest.approx(ce(l) + ce(l2 if twin else l), rel=1e-5)
    assert g.item() == pytest.approx(ce(l) - (ce(l2) if twin else 0.0), rel=1e-5)
    with pytest.raises(ValueError, match=r"T=3 is not a training temperature"):
        model.critic_loss(x, torch.full((6,), 3.0))


def test_learned_prior_kl_is_the_gaussian_kl_and_the_prior_learns_at_kl_weight_zero():
    """KL(N(mu_q, e^lv_q) ‖ N(mu_p, e^lv_p)) = ½ Σ [lv_p − lv_q + (e^lv_q + (mu_q − mu_p)²)
    e^−lv_p − 1] with the encoder and prior network pinned; with kl_weight = 0 the total is
    recon + 0·kl in value, and the prior network still gets a gradient."""
    model = build_model(laddered("cvae", latent_dim=2, kl_weight=0.0))
    assert model.cfg.prior == "learned"          # the cvae default (issue 15)
    mu_q, lv_q, mu_p, lv_p = [0.5, -1.0], [0.3, -0.4], [0.2, 0.1], [-0.5, 0.7]
    pin_outputs(model, 0.2, mu_q, lv_q)
    with torch.no_grad():
        model.prior_net[-1].bias.copy_(torch.tensor(mu_p + lv_p))
    want = 0.5 * sum(b - a + (math.exp(a) + (m - n) ** 2) * math.exp(-b) - 1
                     for m, a, n, b in zip(mu_q, lv_q, mu_p, lv_p))
    x, T = torch.randint(0, 2, (8, 8, 8)).float(), torch.full((8,), 2.5)
    terms = model(x, T)
    assert terms["kl"].item() == pytest.approx(want, rel=1e-5)
    assert gaussian_kl(*(torch.tensor(v) for v in (mu_q, lv_q, mu_p, lv_p))).item() == \
        pytest.approx(want, rel=1e-5)
    assert terms["total"].item() == pytest.approx(terms["recon"].item(), rel=1e-6)
    terms["total"].backward()
    assert model.prior_net[-1].bias.grad.abs().sum() > 0
    mean, logvar = model.learned_prior(torch.full((3,), 2.5))
    assert mean.shape == logvar.shape == (3, 2)


def test_learned_prior_fits_the_codes_of_each_temperature():
    """After training on two temperatures, p(z|T) sits on the codes the encoder gives at that
    T: its mean within 0.5 aggregate-posterior widths of the codes' mean at T."""
    g = torch.Generator().manual_seed(1)
    x = torch.cat([two_mode(256, 8, 0.05, g), two_mode(256, 8, 0.5, g)])
    T = torch.cat([torch.full((256,), 1.5), torch.full((256,), 4.0)])
    model = build_model(laddered("cvae", hidden=[64, 32], latent_dim=2, ladder=[1.5, 4.0]))
    opts = model.configure_optimizers(3e-3)
    for _ in range(40):
        train_epoch(model, batches(x, T, 64, g), opts, "cpu")
    with torch.no_grad():
        mu, logvar = model.encode(x, T)
        pm, plv = model.learned_prior(torch.tensor([1.5, 4.0]))
    for k, rows in enumerate((slice(0, 256), slice(256, 512))):
        width = (logvar[rows].exp().mean(0) + mu[rows].var(0)).sqrt()
        assert ((pm[k] - mu[rows].mean(0)).abs() < 0.5 * width).all(), (k, pm, mu[rows].mean(0))


def test_t_feature_standardises_over_the_ladder():
    cfg = laddered("dcgan", ladder=[1.8, 2.4, 3.0])
    f = t_feature(torch.tensor([1.8, 2.4, 3.0]), cfg, 3)
    assert torch.allclose(f.squeeze(1), torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)
    f2 = t_feature(torch.tensor([[1.8, 0.25], [3.0, 1.0]]), cfg, 2)
    assert torch.allclose(f2, torch.tensor([[-1.0, -0.5], [1.0, 1.0]]), atol=1e-6)
    old = tiny("dcgan")                        # no ladder: T / t_scale, as older files had
    assert t_feature(torch.tensor([2.0]), old, 1).item() == pytest.approx(2.0 / old.t_scale)


def test_magnetization_table_counts_the_training_lattices_and_draws_from_them():
    """|m| levels of L = 4 lattices counted per ladder temperature; draws follow the counts
    (each level within 4.5 sigma over 20000 draws)."""
    table = MagnetizationTable([2.0, 3.0], 4)
    x = torch.zeros(6, 4, 4)
    x[1, 0, :3] = 1                      # Σs = −16 + 6 = −10: |m| = 10/16, level 5
    x[2] = 1                             # |m| = 1, level 8
    x[3, :2] = 1                         # Σs = 0, level 0
    T = torch.tensor([2.0, 2.0, 2.0, 3.0, 3.0, 3.0])
    table.observe(x, T)
    want = torch.zeros(2, 9, dtype=torch.float64)
    want[0, 8] += 2
    want[0, 5] += 1
    want[1, 8] += 2
    want[1, 0] += 1
    assert torch.equal(table.counts, want)
    assert torch.allclose(table.mean(), torch.tensor([(2 + 10 / 16) / 3, 2 / 3],
                                                     dtype=torch.float64))
    m = table.draw(torch.full((20000,), 2.0), torch.Generator().manual_seed(1))
    frac = (m == 1.0).double().mean()
    assert set(m.tolist()) == {1.0, 10 / 16}
    assert abs(frac - 2 / 3) < 4.5 * math.sqrt(2 / 9 / 20000)
    with pytest.raises(ValueError, match=r"T=2\.5 is not a training temperature"):
        table.draw(torch.tensor([2.5]))
    empty = MagnetizationTable([2.0, 3.0], 4)
    with pytest.raises(ValueError, match="no |m| has been counted"):
        empty.draw(torch.tensor([2.0]))


@pytest.mark.parametrize("family", ["cvae", "dcgan", "wgan-gp", "infogan"])
def test_condition_m_trains_on_each_lattices_m_and_draws_m_at_generation(family):
    model = build_model(laddered(family, condition_m=True, n_critic=1))
    assert model.cfg.n_conditions == 2
    g = torch.Generator().manual_seed(1)
    x = torch.cat([two_mode(32, 8, 0.05, g), two_mode(32, 8, 0.5, g)])
    T = torch.cat([torch.full((32,), 1.5), torch.full((32,), 4.0)])
    c = make_condition(model, T, 64, x)
    assert torch.allclose(c[:, 1], (2 * x - 1).mean((1, 2)).abs()) and torch.equal(c[:, 0], T)
    opts = model.configure_optimizers(1e-3)
    out = train_epoch(model, batches(x, T, 16, g), opts, "cpu")
    assert all(math.isfinite(v) for v in out.values())
    assert model.m_table.counts.sum() == 64          # train_epoch showed it every lattice
    assert_spins(model.sample(5, T=1.5), 5, 8)
    with pytest.raises(ValueError, match=r"T=2 is not a training temperature"):
        model.sample(5, T=2.0)
    with pytest.raises(ValueError, match="no |m| has been counted"):
        model.sample(5, T=2.5)                      # on the ladder, never trained on


@pytest.mark.parametrize("change, message", [
    ({"family": "rbn"}, "family='rbn'"),
    ({"family": "acgan", "ladder": [2.0]}, "family='acgan' classifies the temperature"),
    ({"family": "vae", "condition_m": True}, "condition_m=true with family='vae'"),
    ({"family": "acgan", "condition_m": True}, "condition_m=true with family='acgan'"),
    ({"family": "vae", "prior": "learned"}, "prior='learned' with family='vae'"),
    ({"family": "infogan", "info_categories": 1}, "info_categories=1"),
    ({"family": "infogan", "info_categories": 0, "info_continuous": 0}, "no latent codes"),
    ({"family": "acgan", "aux_twin": "yes"}, "aux_twin='yes'"),
    ({"family": "rbm", "cd_k": 0}, "cd_k=0: CD-k needs k ≥ 1"),
    ({"family": "dcgan", "ladder": [2.0, 2.0]}, "ladder=[2.0, 2.0]"),
])
def test_bad_issue15_configs_name_the_value(change, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ModelConfig.from_dict({**tiny().to_dict(), "prior": "", **change})


def test_acgan_without_temperatures_is_refused_when_built_and_when_sampled():
    with pytest.raises(ValueError, match="fewer than two"):
        build_model(tiny("acgan"))
    with pytest.raises(ValueError, match="pass T"):
        build_model(laddered("acgan")).sample(4)


# ---------------------------------------------------------------------- Ray Train, 2 workers
RAY_MODELS = {
    "rbm": {"family": "rbm", "latent_dim": 16, "ais_runs": 16, "ais_steps": 100,
            "gibbs_burn_in": 20},
    "infogan": {"family": "infogan", "hidden": [32, 16], "noise_dim": 4},
    "acgan": {"family": "acgan", "hidden": [32, 16], "noise_dim": 4},
    "cvae-tm": {"family": "cvae", "hidden": [32, 16], "latent_dim": 2, "condition_m": True},
}


@pytest.fixture(scope="module")
def pt_file(tmp_path_factory):
    from tests.test_data import make_pt_file
    return make_pt_file(tmp_path_factory)


@pytest.mark.parametrize("name", sorted(RAY_MODELS))
def test_new_families_train_under_two_ddp_workers_and_resume(name, tmp_path, pt_file):
    """python -m ising_dist.train's path with a real local Ray: 2 epochs on 2 DDP workers on
    the real L = 8 PT file, then --resume to 3; the model file holds the data's ladder and
    generates at its temperatures."""
    from ising_dist import train
    from tests.test_train import cfg_of, start_local_ray
    from tests.test_train import tiny as tiny_run

    start_local_ray()
    out = tmp_path / name
    train.run(cfg_of(tiny_run(pt_file, out, model=RAY_MODELS[name], workers=2, epochs=2)))
    assert [r["epoch"] for r in train.read_metrics(out)] == [1, 2]
    assert train.main(["--out", str(out), "--resume", "--epochs", "3", "--quiet"]) == 0
    rows = train.read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(v) for r in rows for v in r.values())
    assert train.load_state(train.checkpoints(out)[-1])["resumed_at"] == [2]
    if name == "rbm":
        assert all("val_nll" in r and 0 < r["val_nll"] < 1 for r in rows)
    model, extra = load_model(out / "model.pt")
    ladder = extra["data"]["temperatures"]
    assert model.cfg.ladder == pytest.approx(ladder) and len(ladder) == 4
    assert_spins(model.sample(8, T=ladder[0]), 8, 8)


# ---------------------------------------------------------------------- issue 15: follow T
# A real PT file spanning Tc (L = 8, T = 1.6 … 3.2, 4 temperatures, 3000 samples each), written
# by the real CLI; MCMC <|m|> ≈ 0.980, 0.906, 0.572, 0.289.
SPANNING_PT_ARGS = ["--L", "8", "--tmin", "1.6", "--tmax", "3.2", "--replicas", "4",
                    "--thermalize", "500", "--sweeps", "6000", "--sample-every", "2", "--seed",
                    "5", "--no-progress"]
FOLLOW_T = {    # family → (model settings, lr, epochs); MLP 64-32, batch 64
    "cvae": ({"latent_dim": 2}, 3e-3, 30),
    "dcgan": ({}, 1e-3, 30),
    "wgan-gp": ({"n_critic": 1}, 2e-3, 30),
    "acgan": ({}, 1e-3, 30),
    "infogan": ({}, 1e-3, 30),
}


@pytest.fixture(scope="module")
def spanning_pt_file(tmp_path_factory):
    import subprocess
    import sys
    from tests.test_data import ROOT
    path = tmp_path_factory.mktemp("spanning") / "pt.h5"
    res = subprocess.run([sys.executable, "-m", "ising_dist.pt", "--out", str(path),
                          *SPANNING_PT_ARGS], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return path


@pytest.mark.validation
@pytest.mark.parametrize("family", sorted(FOLLOW_T))
def test_conditional_models_follow_temperature_across_tc(family, spanning_pt_file):
    """Issue 15: trained on a real PT file spanning Tc, a conditional model's generated <|m|>
    falls with T at every step of the ladder and is within 0.1 of MCMC's (read from the file)
    at its two ends.

    Monotonic is strict: MCMC's <|m|> falls by ≥ 0.074 between neighbouring temperatures and
    2000 generated lattices give <|m|> to ±0.007 (standard error), so a model that follows T
    cannot break the order by noise alone, while one that ignores T (the issue's wgan-gp)
    breaks it by chance (23 orders in 24).
    Measured (torch seeds 0-2 for init, batch order and sampling; MLP 64-32, batch 64, 30
    epochs), generated <|m|> at T = 1.6 / 3.2 against MCMC's 0.980 / 0.289:
      cvae     0.905 0.910 0.913 / 0.280 0.307 0.294
      dcgan    0.943 0.916 0.915 / 0.321 0.225 0.269
      wgan-gp  0.901 0.926 0.941 / 0.312 0.340 0.320
      acgan    0.926 0.905 0.940 / 0.363 0.324 0.383
      infogan  0.971 0.984 0.962 / 0.346 0.304 0.309
    all strictly decreasing but InfoGAN's seed 2 (0.962, 0.965 at T = 1.6, 2.0); the test runs
    seed 0. InfoGAN is the least stable: with the continuous code's λ at 1 instead of 0.1
    (models/gan.py) seeds 0-2 gave 0.874 0.934 0.926 at T = 1.6; at seed 1, 60 epochs generated
    0.986 at T = 3.2. The cVAE's low end stays ≈ 0.07 below MCMC
    (60 epochs: 0.899): one Gaussian p(z | T) spans both ordered modes and decodes disordered
    lattices between them (seed 0: the codes of held-out T = 1.6 lattices sit at z₂ ≈ +5.2
    (m > 0) and −3.4 (m < 0), p(z₂ | 1.6) = N(1.9, 4.5²); decoding the codes gives <|m|> 0.980,
    the data's, decoding the prior's 0.903, 13% of them below |m| = 0.8). Generation that ignores T (sampling every T at
    the ladder's second temperature) fails the order for all four families."""
    import h5py
    from ising_dist.data import batches as file_batches
    from ising_dist.data import make_datasets

    settings, lr, epochs = FOLLOW_T[family]
    sets, fp = make_datasets(spanning_pt_file, val_fraction=0.1, test_fraction=0.1)
    ladder = fp["temperatures"]
    with h5py.File(spanning_pt_file, "r") as f:
        mcmc = [float(v) for v in abs(f["magnetization"][()]).mean(1)]
    assert len(ladder) == 4 and ladder[0] < 2.269 < ladder[-1]
    model = build_model(ModelConfig(family=family, arch="mlp", L=8, hidden=[64, 32],
                                    ladder=ladder, **settings))
    opts = model.configure_optimizers(lr)
    data = file_batches(sets["train"], 64, seed=0)
    for epoch in range(epochs):
        data.set_epoch(epoch)
        train_epoch(model, data, opts, "cpu")
    model.eval()
    gen = torch.Generator().manual_seed(100)
    made = [abs_m(model.sample(2000, T=T, generator=gen)).mean().item() for T in ladder]
    assert all(a > b for a, b in zip(made, made[1:])), (made, mcmc)
    assert abs(made[0] - mcmc[0]) < 0.1 and abs(made[-1] - mcmc[-1]) < 0.1, (made, mcmc)
