"""Ray Tune over latent size × KL weight: a real 2×2 grid, stopped like Ctrl-C and resumed;
the ranking rule; configs that would over-commit the cluster."""
from __future__ import annotations

import csv
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from ising_dist import config as cfgmod
from ising_dist import tune
from ising_dist.judge import driver
from ising_dist.config import ConfigError
from ising_dist.models import load_model
from tests.test_data import make_pt_file
from ising_dist import train
from tests.test_train import _own_lines, kill_session, local_ray_head, start_local_ray

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pt_file(tmp_path_factory):
    return make_pt_file(tmp_path_factory)


def tiny_train_preset(tmp_path, pt_file):
    preset = tmp_path / "tiny-train.yaml"
    preset.write_text(yaml.safe_dump({
        "name": "tiny", "data": str(pt_file), "batch_size": 64, "lr": 3.0e-3, "seed": 1,
        "model": {"family": "vae", "arch": "mlp", "hidden": [32, 16]}}))
    return preset


@pytest.fixture(scope="module")
def ray_local():
    start_local_ray()


def test_grid_search_stopped_by_a_signal_resumes_and_writes_its_table(tmp_path, pt_file,
                                                                      ray_local, capfd):
    preset = tiny_train_preset(tmp_path, pt_file)
    search = tmp_path / "tiny-search.yaml"
    search.write_text(yaml.safe_dump({
        "name": "tiny", "train": str(preset), "latent_dims": [2, 4], "kl_weights": [0.0, 1.0],
        "epochs": 1, "workers_per_trial": 1}))
    out = tmp_path / "search-out"

    # Stop the search as soon as one trial has finished (the others still run or wait), with
    # SIGUSR1, which Tune treats like Ctrl-C; outside Tune's fit it is ignored, so a late
    # signal cannot kill pytest.
    def stop_after_first_trial():
        deadline = time.time() + 300
        while time.time() < deadline and not list((out / "search").glob("*/train/model.pt")):
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGUSR1)
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    watcher = threading.Thread(target=stop_after_first_trial, daemon=True)
    try:
        watcher.start()
        assert tune.main(["--config", str(search), "--out", str(out)]) == 1
        watcher.join()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    first = capfd.readouterr()
    assert "search stopped with" in first.out
    finished = {p: p.stat().st_mtime_ns for p in (out / "search").glob("*/train/model.pt")}
    assert 1 <= len(finished) < 4 and not (out / "best").exists()
    # one line a trial start, epoch and end (SearchProgress), not Tune's tables of each
    # trial's configuration nor its "Tuner.restore" hint (the resume command is ours)
    assert "4 trial(s) (grid over latent_dims [2, 4] × kl_weights [0.0, 1.0])" in first.out
    assert "(latent_dim 2, kl_weight 0) started" in first.out
    for theirs in ("started with configuration", "Trial status", "== Status ==",
                   "Tuner.restore", "base/batch_size"):
        assert theirs not in first.out + first.err, theirs

    assert tune.main(["--out", str(out), "--resume"]) == 0
    second = capfd.readouterr()
    assert "best: latent_dim=" in second.out
    assert f"resuming search {out}: {len(finished)} of 4 trial(s) finished" in second.out
    assert "[4/4 trials done]" in second.out, second.out
    both = first.out + second.out   # a trial that ended as the search stopped reports again
    for latent, kl in [(2, 0), (2, 1), (4, 0), (4, 1)]:
        assert re.search(rf"\(latent_dim {latent}, kl_weight {kl}\) epoch 1/1  val_recon "
                         rf"[\d.]+  val_kl [\d.e-]+  val_total [\d.]+\n", both), both
        assert re.search(rf"\(latent_dim {latent}, kl_weight {kl}\) finished \[\d/4 trials "
                         rf"done\]", both), both
    # trials finished before the stop were not trained again
    assert {p: p.stat().st_mtime_ns for p in finished} == finished

    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and all(r["status"] == "complete" for r in rows)
    assert {(int(r["latent_dim"]), float(r["kl_weight"])) for r in rows} == {
        (2, 0.0), (2, 1.0), (4, 0.0), (4, 1.0)}
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    scores = [float(r["val_recon"]) for r in rows]
    assert scores == sorted(scores) and [float(r["score"]) for r in rows] == pytest.approx(scores)
    md = (out / "results.md").read_text()
    assert md.count("\n| ") == 5 and "ranked by val_recon" in md
    model, extra = load_model(out / "best" / "model.pt")
    assert model.cfg.latent_dim == int(rows[0]["latent_dim"])
    assert model.cfg.kl_weight == float(rows[0]["kl_weight"])


def test_a_cluster_that_dies_under_a_search_ends_with_one_message_and_the_resume_command(
        tmp_path, pt_file, ray_local, monkeypatch):
    """The cluster a search runs on is killed (SIGKILL to its own session) once a trial has
    written checkpoint 2 of 4. The driver ends with exit code 1 and one message (what
    happened, the trials finished, the command that continues), no traceback, within the
    watchdog's grace rather than Ray's 60 s; that command, run as printed on a local Ray,
    finishes every trial, and the checkpointed one continues from its checkpoint."""
    preset = tiny_train_preset(tmp_path, pt_file)
    search = tmp_path / "tiny-search.yaml"
    search.write_text(yaml.safe_dump({
        "name": "tiny", "train": str(preset), "latent_dims": [2, 4], "kl_weights": [0.0],
        "epochs": 4, "workers_per_trial": 1}))
    out = tmp_path / "search-out"
    with local_ray_head(tmp_path / "ray-start.log") as head:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ising_dist.tune", "--config", str(search), "--out",
             str(out)], cwd=ROOT, env=dict(head.env, RAY_ADDRESS=head.gcs),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 240
            while not (found := list(out.glob("search/*/train/checkpoint_0002/trainer.pt"))):
                assert proc.poll() is None and time.time() < deadline, proc.communicate()
                time.sleep(0.2)
            kill_session(head.proc.pid)
            killed = time.monotonic()
            stdout, stderr = proc.communicate(timeout=120)
            took = time.monotonic() - killed
        finally:
            proc.kill()
    own = _own_lines(stderr)
    assert proc.returncode == 1, stdout[-2000:] + stderr[-4000:]
    assert took < 40, f"the driver took {took:.0f} s to end"   # Ray alone: 60 s and no advice
    assert "Traceback" not in own and own.count("error: ") == 1, own[-4000:]
    message = own[own.index("error: "):]
    assert "Ray cluster" in message and "trial(s) finished" in message, message
    command = message.split("continue with:\n", 1)[1].splitlines()[0].strip()
    assert command == f"python -m ising_dist.tune --out {out} --resume", message

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert tune.main(shlex.split(command)[3:]) == 0
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["status"] == "complete" and int(r["epochs"]) == 4
                                  for r in rows), rows
    run_dir = found[0].parent.parent
    assert train.load_state(train.checkpoints(run_dir)[-1])["resumed_at"][0] >= 2


def test_search_ranked_by_physics_fidelity_writes_scores_and_heatmap(tmp_path, pt_file,
                                                                    ray_local):
    """The loop closed: trials ranked by the physics fidelity of their generated samples
    (W1 of e and |m| against MCMC over the noise floor), with the heatmap of it."""
    preset = tiny_train_preset(tmp_path, pt_file)
    search = tmp_path / "physics-search.yaml"
    search.write_text(yaml.safe_dump({
        "name": "physics", "train": str(preset), "latent_dims": [2], "kl_weights": [0.0, 1.0],
        "epochs": 1, "workers_per_trial": 1, "rank_by": "physics"}))
    out = tmp_path / "physics-out"
    assert tune.main(["--config", str(search), "--out", str(out)]) == 0
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    scores = [float(r["score"]) for r in rows]
    assert len(rows) == 2 and scores == sorted(scores) and [int(r["rank"]) for r in rows] == [1, 2]
    # each score is the physics fidelity that evaluate computes for that trial's final model
    # on the validation split of its file (1000 samples per T, the scorer's default)
    for r in rows:
        loaded = driver.load_run(r["model"])
        m = driver.evaluate_model(loaded["model"], r["data"], 1000, extra=loaded["extra"],
                                  split="val", cost=False, latent=False)
        assert float(r["score"]) == pytest.approx(m["fidelity"], rel=1e-5), r["trial"]
        assert m["split"]["evaluated"] == "val" and m["split"]["same_file_as_training"]
    assert "ranked by physics" in (out / "results.md").read_text()
    heatmap = out / "fidelity_heatmap.png"
    assert heatmap.is_file() and heatmap.stat().st_size > 5000


def _row(latent, kl, recon, kl_term, epochs=1):
    return {"trial": f"t{latent}_{kl}", "latent_dim": latent, "kl_weight": kl,
            "epochs": epochs, "status": "complete", "val_recon": recon, "val_kl": kl_term,
            "val_total": recon + kl * kl_term, "model": "", "data": ""}


def test_ranking_ignores_the_kl_term_and_accepts_a_plugged_in_score():
    rows = [_row(2, 0.0, 30.0, 9.0), _row(2, 100.0, 29.0, 0.5), _row(8, 1.0, 31.0, 1.0),
            _row(8, 10.0, 0.0, 0.0, epochs=0)]
    ranked = tune.rank([dict(r) for r in rows], "val_recon")
    # kl_weight=100 has by far the largest total but the best reconstruction: it wins
    assert [(r["latent_dim"], r["kl_weight"]) for r in ranked] == [
        (2, 100.0), (2, 0.0), (8, 1.0), (8, 10.0)]
    assert [r["rank"] for r in ranked] == [1, 2, 3, ""] and math.isnan(ranked[-1]["score"])
    # a physics score (here a stand-in: prefer small latent sizes) is one function
    tune.register_scorer("smallest_latent", lambda r: r["latent_dim"] + r["val_recon"] / 1e3)
    try:
        ranked = tune.rank([dict(r) for r in rows], "smallest_latent")
        assert [(r["latent_dim"], r["kl_weight"]) for r in ranked][:2] == [(2, 100.0), (2, 0.0)]
        cfg = cfgmod.from_dict(tune.SearchConfig, {"rank_by": "smallest_latent"})
        assert cfg.rank_by == "smallest_latent"
    finally:
        del tune.SCORERS["smallest_latent"]
    with pytest.raises(ConfigError,
                       match="rank_by='smallest_latent': choose one of physics, val_recon"):
        cfgmod.from_dict(tune.SearchConfig, {"rank_by": "smallest_latent"})


def test_concurrency_is_fitted_to_the_cpus_and_over_commit_is_refused(pt_file):
    search = cfgmod.from_dict(tune.SearchConfig, {"train": str(ROOT / "configs/train/demo.yaml"),
                                                  "data": str(pt_file), "workers_per_trial": 2})
    base = search.base_train_config()
    assert tune.fit_concurrency(search, base, cluster_cpus=8) == 4
    assert tune.fit_concurrency(search, base, cluster_cpus=2) == 1
    # a trial's driver CPU comes out of its workers' share: 2 × (1 − 0.005) + 0.01 = 2 CPUs
    space = tune.param_space(search, base)
    assert space["base"]["cpus_per_worker"] * 2 + tune.TRIAL_DRIVER_CPU == pytest.approx(2.0)
    search.max_concurrent_trials = 2
    with pytest.raises(ConfigError, match="max_concurrent_trials=2 × 2 CPUs per trial exceeds "
                                          "the cluster's 2 CPUs"):
        tune.fit_concurrency(search, base, cluster_cpus=2)
    with pytest.raises(ConfigError, match="workers_per_trial"):
        tune.fit_concurrency(search, base, cluster_cpus=1)


def test_bad_search_configs_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": str(ROOT / "configs/train/wgan-gp.yaml")}))
    assert tune.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.family='wgan-gp'" in err
    bad.write_text(yaml.safe_dump({"search": "bayes"}))
    assert tune.main(["--config", str(bad)]) == 2
    assert "search='bayes': choose one of grid, random" in capsys.readouterr().err
