"""Config fields → command-line flags (ising_dist.config.add_flags): every entry point's flags
come from its dataclass, keep the spellings users type, and refuse what the fields refuse."""
import argparse
import dataclasses

import pytest
import yaml

from ising_dist import config as cfgmod
from ising_dist import nmcmc, pt, train, tune
from ising_dist.config import ConfigError, PTConfig
from ising_dist.judge import cli as evaluate_cli
from ising_dist.judge.config import EvaluateConfig
from ising_dist.nmcmc import NMCMCConfig
from ising_dist.train import TrainConfig
from ising_dist.tune import SearchConfig

CONFIGS = (PTConfig, TrainConfig, SearchConfig, NMCMCConfig, EvaluateConfig)


def parser_of(cls):
    p = argparse.ArgumentParser(prog="x")
    cfgmod.add_flags(p, cls)
    return p


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_a_flag_and_help_from_the_dataclass(cls):
    actions = {a.dest: a for a in parser_of(cls)._actions}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            assert f.name not in actions
            continue
        assert f.name in actions, f.name
        assert f.metadata["help"] and f.metadata["help"] in actions[f.name].help, f.name
        assert actions[f.name].choices == f.metadata["choices"], f.name


# what users type today; each must keep meaning what it meant
PT_ARGV = ["--L", "8", "--tmin", "1.5", "--tmax", "3.5", "--replicas", "4", "--ladder", "linear",
           "--thermalize", "10", "--sweeps", "20", "--sample-every", "5", "--exchange-every",
           "2", "--algorithm", "hybrid", "--n-metropolis", "2", "--n-wolff", "3", "--adapt-every",
           "7", "--seed", "9", "--out", "x.h5", "--checkpoint-every", "11", "--writer", "gather",
           "--backend", "numba", "--start", "cold", "--no-progress"]
PT_GIVEN = {"L": 8, "tmin": 1.5, "tmax": 3.5, "replicas": 4, "ladder": "linear",
            "thermalize": 10, "sweeps": 20, "sample_every": 5, "exchange_every": 2,
            "algorithm": "hybrid", "n_metropolis": 2, "n_wolff": 3, "adapt_every": 7, "seed": 9,
            "out": "x.h5", "checkpoint_every": 11, "writer": "gather", "backend": "numba",
            "start": "cold", "progress": False}


def test_the_spellings_users_type_keep_their_meaning():
    args = pt.parse_args(["--config", "c.yaml", "--resume", *PT_ARGV])
    assert args.config == "c.yaml" and args.resume and not args.overwrite
    assert cfgmod.given_flags(args, PTConfig) == PT_GIVEN
    args = pt.parse_args(["--temperatures", "2.0,2.5", "3", "--dry-run", "--overwrite"])
    assert args.dry_run and args.overwrite
    assert cfgmod.load(PTConfig, None, cfgmod.given_flags(args, PTConfig)).temperatures == [
        2.0, 2.5, 3.0]

    args = train.parse_args(["--data", "d.h5", "--out", "o", "--workers", "2", "--gpus", "0.5",
                             "--epochs", "4", "--batch-size", "32", "--lr", "0.01", "--seed",
                             "3", "--quiet", "--resume", "--verbose"])
    assert args.resume and args.verbose
    assert cfgmod.given_flags(args, TrainConfig) == {
        "data": "d.h5", "out": "o", "workers": 2, "gpus": 0.5, "epochs": 4, "batch_size": 32,
        "lr": 0.01, "seed": 3, "progress": False}

    args = tune.parse_args(["--data", "d.h5", "--out", "o", "--epochs", "2",
                            "--workers-per-trial", "2", "--max-concurrent-trials", "3",
                            "--latent-dims", "2", "8", "--resume"])
    assert args.resume
    given = cfgmod.given_flags(args, SearchConfig)
    assert given == {"data": "d.h5", "out": "o", "epochs": 2, "workers_per_trial": 2,
                     "max_concurrent_trials": 3, "latent_dims": "2 8"}
    assert cfgmod.load(SearchConfig, None, given).latent_dims == [2, 8]

    args = evaluate_cli.parse_args(["--data", "a.h5", "b.h5", "--model", "A", "B", "--out", "r",
                                    "--samples", "50", "--temperatures", "2.0,2.5", "--tmin",
                                    "1", "--tmax", "3", "--split", "val", "--prior", "normal",
                                    "--mode", "sign", "--seed", "2", "--cost-sweeps", "200",
                                    "--no-cost", "--no-embedding", "--tsne-points", "0",
                                    "--nmcmc", "n.h5", "--nmcmc-steps", "5", "--nmcmc-k", "2",
                                    "--no-pictures", "--tune", "t.csv", "--config", "e.yaml"])
    assert args.config == "e.yaml"
    assert cfgmod.given_flags(args, EvaluateConfig) == {
        "data": ["a.h5", "b.h5"], "model": ["A", "B"], "out": "r", "samples": 50,
        "temperatures": "2.0,2.5", "tmin": 1.0, "tmax": 3.0, "split": "val", "prior": "normal",
        "mode": "sign", "seed": 2, "cost_sweeps": 200, "cost": False, "embedding": False,
        "tsne_points": 0, "nmcmc": "n.h5", "nmcmc_steps": 5, "nmcmc_k": 2, "pictures": False,
        "tune": "t.csv"}

    cfg = nmcmc.parse_args(["--model", "m", "--temperatures", "2.0,2.5", "--steps", "10",
                            "--out", "o.h5", "--burn-in", "5", "--k", "2", "--batch", "7",
                            "--L", "4", "--seed", "1", "--overwrite", "--quiet"])
    assert cfg == NMCMCConfig(model="m", temperatures="2.0,2.5", steps=10, out="o.h5",
                              burn_in=5, k=2, batch=7, L=4, seed=1, overwrite=True, quiet=True)


def test_flags_not_given_leave_the_preset_alone(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"L": 12, "progress": False, "sweeps": 40,
                                      "sample_every": 4}))
    cfg = cfgmod.load(PTConfig, preset, cfgmod.given_flags(pt.parse_args(["--L", "8"]),
                                                           PTConfig))
    assert (cfg.L, cfg.progress, cfg.sweeps) == (8, False, 40)
    assert cfgmod.given_flags(train.parse_args(["--compile"]), TrainConfig) == {"compile": True}


def test_a_value_outside_the_choices_is_refused_by_the_flag_and_by_yaml(capsys):
    with pytest.raises(SystemExit) as exit_:
        pt.parse_args(["--ladder", "zigzag"])
    assert exit_.value.code == 2 and "--ladder: invalid choice: 'zigzag'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="ladder='zigzag': choose one of geometric, linear, "
                                          "adaptive"):
        cfgmod.from_dict(PTConfig, {"ladder": "zigzag"})
    with pytest.raises(ConfigError, match="algorithm='heatbath': choose one of metropolis, "
                                          "wolff, hybrid"):
        cfgmod.from_dict(PTConfig, {"algorithm": "heatbath"})
    with pytest.raises(SystemExit):
        nmcmc.parse_args(["--model", "m", "--temperatures", "2"])   # --steps, --out missing
    assert "required: --steps, --out" in capsys.readouterr().err


def test_resume_may_change_is_declared_on_the_fields():
    assert set(pt.RESUME_MAY_CHANGE) == {"out", "progress", "sweeps", "checkpoint_every",
                                         "backend", "writer"}
    assert set(train.RESUME_MAY_CHANGE) == {
        "epochs", "workers", "gpus", "cpus_per_worker", "threads", "max_failures",
        "keep_checkpoints", "progress", "out", "data", "chaos_kill_epoch", "shm_allreduce"}
