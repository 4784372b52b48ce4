"""Tests of diffnotes.training on several processes: DDP on two CPU processes (gloo, loopback only) equals one process.

One ``torchrun`` launch (``python -m torch.distributed.run --nproc_per_node=2``) runs this file as a worker: it
trains several configurations in one process group and saves every rank's parameters; the tests then train the same
models on one process, with the plain single-process loop of :func:`diffnotes.training.train`, and compare.

Tolerance.  Everything runs in float64.  One process computes the gradient of the mean over the global batch in one
backward pass; two processes compute the means over two slices, and DDP averages them, i.e. the same sum
re-associated: the gradients differ by a few units of the last place (relative ~1e-16).  Adam's update
``lr * m / (sqrt(v) + eps)`` is a smooth function of the gradients away from zero gradients (the SiLU network has
none), and 15 steps at lr 1e-2 amplify the difference by a modest factor, so we expect ~1e-15 on parameters of size
~1 and assert ``atol = 1e-10`` (measured 1.1e-16 and 1.4e-16 for even and unequal slices, and the two ranks are
bitwise equal).  The negative controls differ by 0.18 (per-rank noise) and 0.15 (no all-reduce), nine orders of
magnitude above the tolerance: the comparison is able to tell right from wrong.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffnotes import training
from diffnotes.data import mixture_data
from diffnotes.losses import dsm_loss
from diffnotes.networks import ScoreMLP, as_score
from diffnotes.sde import ConstantVP
from diffnotes.targets import GaussianMixture
from diffnotes.training import dsm_draws, init_distributed, rank_slice, train

SDE = ConstantVP(T=5.0)
TARGET = GaussianMixture([0.5, 0.5], [[-1.5, 0.0], [1.5, 0.5]], [0.2, 0.4], SDE)
T0 = 1e-2
STEPS, LR, SEED = 15, 1e-2, 3
ATOL = 1e-10
LOSS = functools.partial(dsm_loss, t0=T0, sde=SDE)
CLI = ["--data", "mixture", "--n", "300", "--steps", "12", "--batch-size", "30", "--hidden", "16", "--depth", "1",
       "--dtype", "float64", "--seed", "5", "--no-progress", "--ema", "0.9"]


def _data():
    return mixture_data(TARGET, 400, torch.Generator().manual_seed(0))[0]


def _model():
    torch.manual_seed(0)
    return as_score(ScoreMLP(2, hidden=32, depth=2), "eps", SDE).double()


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _single(batch_size, ema=None):
    """The reference: the single-process loop, the loss drawing its own times and noise from the generator."""
    model = _model()
    res = train(model, LOSS, _data(), steps=STEPS, batch_size=batch_size, lr=LR, ema=ema, progress=False,
                generator=torch.Generator().manual_seed(SEED))
    return _flat(model), (None if ema is None else _flat(res.ema_model)), res.losses


# -- the worker (run by torchrun) -----------------------------------------------------------------------------------
def _worker(out: Path) -> None:
    ctx = init_distributed()
    assert ctx.backend == "gloo" and ctx.world_size == 2
    results = {}

    def run(name, batch_size, loss=LOSS, ema=None, **kw):
        model = _model()
        if ctx.rank == 1:  # DDP must broadcast rank 0's initial parameters
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        res = train(model, loss, _data(), steps=STEPS, batch_size=batch_size, lr=LR, ema=ema, progress=False,
                    generator=kw.pop("generator", torch.Generator().manual_seed(SEED)), **kw)
        results[name] = {"params": _flat(model), "losses": res.losses,
                         "ema": None if res.ema_model is None else _flat(res.ema_model)}

    run("even", 64, ema=0.9)  # slices of 32 and 32
    run("odd", 63)  # slices of 31 and 32: the loss of each rank is rescaled by W * B_r / B
    # Negative control 1, the diffusion trap: each rank draws times and noise for its own slice (from the same seed).
    local = torch.Generator().manual_seed(SEED + 100)
    run("per_rank_noise", 64, loss=lambda m, x, generator=None: dsm_loss(m, x, T0, sde=SDE, generator=local),
        draws="none")
    # Negative control 2: skip DDP's gradient all-reduce, so each rank steps with its own slice's gradient.
    plain = training._step_context
    training._step_context = lambda ddp: ddp.no_sync()
    try:
        run("no_sync", 64)
    finally:
        training._step_context = plain
    # Bad input must raise on every rank (and not hang).
    errors = {}

    def own_draws(m, x, generator=None):  # a loss whose randomness train cannot know
        return LOSS(m, x, generator=generator)

    for name, kwargs in [("small_batch", dict(batch_size=1)),
                         ("no_draws", dict(batch_size=64, loss=own_draws)),
                         ("seeds_differ", dict(batch_size=64, generator=torch.Generator().manual_seed(ctx.rank))),
                         ("no_generator", dict(batch_size=64, generator=None))]:
        try:
            run(name, **kwargs)
        except ValueError as e:
            errors[name] = str(e)
    # The command-line program, run inside the group.
    training.main(CLI + ["--out", str(out / "cli.pt")])
    torch.save({"results": results, "errors": errors}, out / f"rank{ctx.rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.pop("WORLD_SIZE", None), env.pop("RANK", None), env.pop("LOCAL_RANK", None)
    if sys.platform.startswith("linux") and Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only: no other network is touched
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", __file__, "--worker", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {"ranks": ranks, "out": out, "stdout": proc.stdout, "seconds": time.perf_counter() - start}


# -- the tests ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,batch_size", [("even", 64), ("odd", 63)])
def test_two_processes_equal_one_process(two_ranks, name, batch_size):
    """Same seed and global batch: the parameters after 15 steps equal single-process training to ATOL."""
    ema = 0.9 if name == "even" else None
    params, ema_params, losses = _single(batch_size, ema)
    r0, r1 = (two_ranks["ranks"][r]["results"][name] for r in range(2))
    assert torch.equal(r0["params"], r1["params"])  # every rank makes the same step
    assert (r0["params"] - params).abs().max() < ATOL
    np.testing.assert_allclose(r0["losses"], losses, rtol=0, atol=1e-11)  # the loss of the global batch
    np.testing.assert_array_equal(r0["losses"], r1["losses"])
    if ema is not None:
        assert torch.equal(r0["ema"], r1["ema"]) and (r0["ema"] - ema_params).abs().max() < ATOL
    assert (params - _flat(_model())).abs().max() > 1e-3  # and training did move the parameters


@pytest.mark.parametrize("name", ["per_rank_noise", "no_sync"])
def test_negative_controls_differ(two_ranks, name):
    """Per-rank noise, or gradients left un-averaged, give other parameters: far outside the tolerance."""
    params, _, _ = _single(64)
    r0, r1 = (two_ranks["ranks"][r]["results"][name] for r in range(2))
    assert (r0["params"] - params).abs().max() > 1e4 * ATOL
    if name == "no_sync":  # without the all-reduce the ranks even drift apart
        assert (r0["params"] - r1["params"]).abs().max() > 1e4 * ATOL


def test_bad_input_raises_on_every_rank(two_ranks):
    for rank in two_ranks["ranks"]:
        errors = rank["errors"]
        assert "at least the number of processes" in errors["small_batch"]
        assert "draws" in errors["no_draws"]
        assert "seed the generator identically" in errors["seeds_differ"]
        assert "explicit generator" in errors["no_generator"]


def test_command_line_on_two_processes_equals_one(two_ranks, tmp_path, capsys):
    saved = torch.load(two_ranks["out"] / "cli.pt", weights_only=False)
    assert saved["world_size"] == 2
    training.main(CLI + ["--out", str(tmp_path / "one.pt")])
    one = torch.load(tmp_path / "one.pt", weights_only=False)
    assert one["world_size"] == 1 and one["model"].keys() == saved["model"].keys()
    for key in ("model", "ema"):
        for name, value in one[key].items():
            assert (saved[key][name] - value).abs().max() < ATOL, (key, name)
    assert "saved" in capsys.readouterr().out


# -- one process: the split and the draws -------------------------------------------------------------------------
def test_draws_on_one_process_reproduce_the_plain_loop_exactly():
    """dsm_draws draws what dsm_loss draws for itself, in the same order: bit-for-bit the same run."""
    params, _, losses = _single(64)
    model = _model()
    res = train(model, LOSS, _data(), steps=STEPS, batch_size=64, lr=LR, progress=False,
                generator=torch.Generator().manual_seed(SEED), draws=dsm_draws(T0, sde=SDE))
    assert torch.equal(_flat(model), params) and np.array_equal(res.losses, losses)


def test_rank_slice_partitions_the_batch():
    for B, W in [(64, 2), (63, 2), (10, 3), (5, 5)]:
        parts = [rank_slice(B, W, r) for r in range(W)]
        sizes = [s.stop - s.start for s in parts]
        assert parts[0].start == 0 and parts[-1].stop == B and max(sizes) - min(sizes) <= 1
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:], strict=False))
    for args in [(1, 2, 0), (4, 2, 2), (4, 2, -1), (4, 0, 0), (4, 2, 0.5)]:
        with pytest.raises(ValueError):
            rank_slice(*args)


def test_bad_distributed_arguments_raise(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        init_distributed()
    model = _model()
    common = dict(steps=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="explicit generator"):
        train(model, LOSS, _data(), distributed=True, **common)
    with pytest.raises(ValueError, match="torchrun"):
        train(model, LOSS, _data(), distributed=True, generator=torch.Generator(), **common)
    with pytest.raises(TypeError, match="distributed"):
        train(model, LOSS, _data(), distributed="yes", **common)
    with pytest.raises(TypeError, match="draws"):
        train(model, LOSS, _data(), draws=3, **common)
    with pytest.raises(ValueError, match="first dimension"):
        train(model, LOSS, _data(), draws=lambda b, g: {"t": torch.ones(3)}, **common)
    with pytest.raises(TypeError, match="dict"):
        train(model, LOSS, _data(), draws=lambda b, g: [1], **common)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "two")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed()


if __name__ == "__main__":
    if sys.argv[1:2] != ["--worker"] or len(sys.argv) != 3:
        raise SystemExit("usage: torchrun --nproc_per_node=2 tests/test_training_distributed.py --worker OUT_DIR")
    _worker(Path(sys.argv[2]))
