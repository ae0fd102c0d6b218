"""The judge stage: generative models judged by physics against held-out MCMC.

Entry point: ``python -m ising_dist.evaluate`` (or ``python -m ising_dist.judge``).
Modules, each with one role (arrows point one way: models <- nmcmc <- judge):
    config        EvaluateConfig: every option of an evaluation, typed and validated
    cli           the command line: flags → EvaluateConfig → driver, exit code 2 on bad input
    driver        one model on one run file: load, split, generate, every section, metrics.json
    compare       comparison statistics per T: observables, W1 vs noise floor, fidelity, verdicts
    latent        latent order parameter, latent Tc, posterior variance, finite-size extrapolation
    embedding     PCA and t-SNE of configurations and codes (scikit-learn)
    cost          seconds per independent sample: generator vs Metropolis / Wolff
    neural_mcmc   neural MCMC chains judged against exact and MCMC, priced per effective sample
    report        pictures (PNG) and index.html
    tc_scan       the latent-Tc finite-size experiment: tc-scan + train + evaluate over L
Model-side helpers (generate, encode_spins, fit_prior, spins ↔ {0, 1}) live in
ising_dist.models.
"""
