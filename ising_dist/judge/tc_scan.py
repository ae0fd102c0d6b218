"""The latent-Tc experiment (issue 15, seed 000): the critical temperature read from a model's
latent space, per lattice size and extrapolated to L → ∞, beside the same for MCMC.

    python -m ising_dist.judge.tc_scan [--L 16 32 64] [--models PRESET.yaml …]
        [--pt-config configs/pt/tc-scan.yaml] [--out runs/latent-tc] [--ranks 2]
        [--sweeps N] [--thermalize N] [--sample-every N] [--epochs E] [--workers W]
        [--samples N]
    make latent-tc         the experiment as configured (about 20 minutes on 2 cores)
    make latent-tc-small   the same pipeline at reduced size (sweeps, epochs)

Steps, each skipped when its output is complete (a rerun continues where one stopped):
  1. sample   mpiexec -n RANKS python -m ising_dist.pt --config PT_CONFIG --L L
              → OUT/pt/L<L>.h5 (a dense ladder around Tc: configs/pt/tc-scan.yaml)
  2. learn    python -m ising_dist.train --config PRESET --data OUT/pt/L<L>.h5
              → OUT/train/<preset>/L<L>/ for every model preset (default: an AE, whose code
              is linear in m, seed 000; and a VAE, whose posterior variance seed 000 reports to
              peak near Tc: configs/train/latent-tc-{ae,vae}.yaml)
  3. judge    the judge on every size of one preset together (in this process, no cost,
              neural MCMC or t-SNE): OUT/judge/<preset>/ with a report per L and
              finite_size.json (judge.latent.finite_size: the latent susceptibility peak Tc(L),
              the MCMC χ peak Tc(L), the posterior-variance peak where it exists, each fitted
              to Tc(L) = Tc(∞) + a L^(-1/ν), ν = 1)
  4. summary  OUT/latent_tc.json, OUT/index.html and the printed lines: per preset the
              extrapolations against the exact Tc and the 1% target (judge.latent.against_exact)
              and whether the posterior-variance peak exists at each L, and where.
Exit code 2 with one line for bad input; a failed step names its command and log file.
"""
from __future__ import annotations

import argparse
import html
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from ..config import ConfigError
from ..exact import TC
from .config import EvaluateConfig
from .driver import write_metrics

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ("configs/train/latent-tc-ae.yaml", "configs/train/latent-tc-vae.yaml")


class StepError(RuntimeError):
    """A step's command failed; the message names the command and its log file."""


def _mpiexec() -> str:
    """The mpiexec beside this Python (the venv's MPICH), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else "mpiexec"


def pt_command(L: int, out: Path, pt_config: str, ranks: int, overrides: dict) -> list[str]:
    """The sampling command of one size (overrides: pt flags without dashes, e.g. sweeps)."""
    cmd = [sys.executable, "-m", "ising_dist.pt", "--config", pt_config, "--L", str(L),
           "--out", str(out), "--overwrite", "--no-progress"]
    for k, v in overrides.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    return ([_mpiexec(), "-n", str(ranks)] if ranks > 1 else []) + cmd


def train_command(preset: str, data: Path, out: Path, overrides: dict) -> list[str]:
    """The training command of one (preset, size) pair."""
    cmd = [sys.executable, "-m", "ising_dist.train", "--config", preset, "--data", str(data),
           "--out", str(out), "--quiet"]
    for k, v in overrides.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def _step(cmd: list[str], log: Path, done: Path, say) -> None:
    """Run cmd (output to log) unless ``done`` exists; write ``done`` on success."""
    if done.exists():
        say(f"done before: {done.parent / done.stem}")
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    say("$ " + " ".join(cmd))
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    with open(log, "w") as fh:
        res = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise StepError(f"`{' '.join(cmd)}` failed (exit {res.returncode}); log {log}:\n{tail}")
    done.write_text("ok\n")


def _variance_peak_words(v: dict) -> str:
    """One size's posterior-variance peak (judge.latent.variance_peak) in words."""
    if v["exists"]:
        return f"L={v['L']}: at {v['tc_estimate']:.4f} ± {v['tc_error']:.4f}"
    if v["peak_at_edge"]:
        return f"L={v['L']}: none (largest at T = {v['tc_estimate']:.4f}, the end of the ladder)"
    return (f"L={v['L']}: not resolved (largest at T = {v['tc_estimate']:.4f}, but at the "
            f"ladder's end in {100 * v['edge_fraction']:.0f}% of the bootstrap replicates)")


def summarize(fss_by_preset: dict[str, dict]) -> dict:
    """The experiment's answer from judge.latent.finite_size results per preset (all presets
    trained on the same files, so the MCMC χ peak is said once): sentences (each
    extrapolation against the exact Tc and the 1% target; the posterior-variance peak per L:
    exists or not, and where) and the numbers behind them."""
    lines, rows = [], {}
    for name, fss in fss_by_preset.items():
        rows[name] = {"L": fss["L"], "latent_tc": list(zip(fss["tc_estimate"], fss["tc_error"])),
                      "mcmc_chi_peak": list(zip(fss["mcmc_chi_peak"],
                                                fss["mcmc_chi_peak_error"]))}
        for key in ("extrapolation", "mcmc_extrapolation", "posterior_var_extrapolation"):
            if key == "mcmc_extrapolation" and name != next(iter(fss_by_preset)):
                rows[name][key] = fss.get(key)          # the same files: said once
                continue
            if key in fss:
                rows[name][key] = fss[key]
                lines.append(f"{name}: {fss[key]['against_exact']['sentence']}")
        if len(fss["L"]) < 2:
            lines.append(f"{name}: fewer than two sizes with a latent Tc: no extrapolation.")
        peaks = fss.get("posterior_var_peak", [])
        if peaks and all("exists" in v for v in peaks):
            lines.append(f"{name}: posterior-variance peak "
                         + ", ".join(_variance_peak_words(v) for v in peaks) + ".")
            rows[name]["posterior_var_peak"] = peaks
    return {"exact_tc": TC, "sentences": lines, "presets": rows}


def write_summary(out: Path, summary: dict) -> None:
    """OUT/latent_tc.json and OUT/index.html (the sentences, links to each preset's page)."""
    write_metrics(out / "latent_tc.json", summary)
    links = "".join(f"<li><a href='judge/{html.escape(n)}/index.html'>{html.escape(n)}</a>: "
                    f"finite-size trend and a report per L</li>" for n in summary["presets"])
    said = "".join(f"<p>{html.escape(s)}</p>" for s in summary["sentences"])
    (out / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>latent Tc</title></head>"
        f"<body><h1>The latent Tc by finite-size scaling</h1>{said}<ul>{links}</ul>"
        "</body></html>")


def run_experiment(Ls: list[int], presets: list[str], out: Path, pt_config: str, ranks: int,
                   pt_overrides: dict, train_overrides: dict, samples: int,
                   say=print) -> dict:
    """Steps 1-4 of the module doc; returns the summary."""
    from .cli import evaluate_all
    from .latent import finite_size
    out.mkdir(parents=True, exist_ok=True)
    data = {L: out / "pt" / f"L{L}.h5" for L in Ls}
    for L in Ls:
        _step(pt_command(L, data[L], pt_config, ranks, pt_overrides), out / "logs" / f"pt_L{L}.log",
              out / "pt" / f"L{L}.done", say)
    fss_by_preset = {}
    for preset in presets:
        name = Path(preset).stem
        runs = {L: out / "train" / name / f"L{L}" for L in Ls}
        for L in Ls:
            _step(train_command(preset, data[L], runs[L], train_overrides),
                  out / "logs" / f"train_{name}_L{L}.log", runs[L] / "done", say)
        cfg = EvaluateConfig(data=[str(data[L]) for L in Ls], model=[str(runs[L]) for L in Ls],
                             out=str(out / "judge" / name), samples=samples, cost=False,
                             nmcmc_steps=0, embedding=False)
        cfg.validate()
        results = evaluate_all(cfg)
        fss_by_preset[name] = finite_size(results)
        if len(Ls) == 1:
            write_metrics(out / "judge" / name / "finite_size.json", fss_by_preset[name])
    summary = summarize(fss_by_preset)
    write_summary(out, summary)
    for s in summary["sentences"]:
        say(s)
    say(f"report: {out / 'index.html'}")
    return summary


def _preset(f: str) -> str:
    """The absolute path of a preset given relative to here or to the repository."""
    for p in (Path(f), ROOT / f):
        if p.is_file():
            return str(p.absolute())
    raise ConfigError(f"{f!r} does not exist; give a YAML preset (configs/pt/, configs/train/)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ising_dist.judge.tc_scan",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--L", type=int, nargs="+", default=[16, 32, 64], help="lattice sides")
    p.add_argument("--models", nargs="+", default=list(PRESETS),
                   help="train presets, one series per preset (default: "
                        + ", ".join(PRESETS) + ")")
    p.add_argument("--pt-config", default="configs/pt/tc-scan.yaml", dest="pt_config")
    p.add_argument("--out", default="runs/latent-tc")
    p.add_argument("--ranks", type=int, default=2, help="MPI ranks of each PT run")
    p.add_argument("--sweeps", type=int, help="override the PT config's sweeps")
    p.add_argument("--thermalize", type=int, help="override the PT config's thermalize")
    p.add_argument("--sample-every", type=int, dest="sample_every",
                   help="override the PT config's sample_every")
    p.add_argument("--epochs", type=int, help="override the presets' epochs")
    p.add_argument("--workers", type=int, help="override the presets' Ray Train workers")
    p.add_argument("--samples", type=int, default=2000,
                   help="generated configurations per temperature in the judge")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        bad = [L for L in args.L if L < 4 or L % 2]
        if bad or len(set(args.L)) != len(args.L):
            raise ConfigError(f"--L {' '.join(map(str, args.L))}: give distinct even sides ≥ 4 "
                              f"(e.g. --L 16 32 64)")
        pt_config, models = _preset(args.pt_config), [_preset(m) for m in args.models]
        if args.ranks < 1:
            raise ConfigError(f"--ranks {args.ranks}: give at least 1")
        pt = {"sweeps": args.sweeps, "thermalize": args.thermalize,
              "sample_every": args.sample_every}
        train = {"epochs": args.epochs, "workers": args.workers}
        run_experiment(args.L, models, Path(args.out).absolute(), pt_config, args.ranks, pt,
                       train, args.samples, say=lambda s: print(s, flush=True))
    except (ConfigError, ValueError, StepError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
