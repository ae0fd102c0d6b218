"""The shared-memory gradient all-reduce (ising_dist.allreduce) against gloo's, in real
processes joined by a real gloo process group."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ising_dist.allreduce import SHM_DIR, SharedMemoryAllReduce, use_shared_memory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank, world, port):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _train(rank, world, port, shm, q):
    """Five DDP steps of a small net on rank-dependent data, in buckets of ~1 000 floats so
    that each step all-reduces several; puts (rank, weights after, registered) on q."""
    _join(rank, world, port)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                              torch.nn.Tanh(), torch.nn.Linear(64, 1))
    model = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=0.004)
    registered = use_shared_memory(model) if shm else False
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(5):
        x = torch.randn(32, 16, generator=gen)
        loss = (model(x) - x.sum(1, keepdim=True).sin()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = torch.cat([p.detach().flatten() for p in net.parameters()])
    q.put((rank, weights.numpy().copy(), registered))   # a tensor would travel by fd
    dist.destroy_process_group()


def _run(world, shm):
    ctx = mp.get_context("spawn")
    q, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_train, args=(r, world, port, shm, q)) for r in range(world)]
    for p in procs:
        p.start()
    out = dict((r, (torch.from_numpy(w), reg)) for r, w, reg in (q.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return out


def _ours():
    return sorted(p.name for p in SHM_DIR.glob("ising_dist-allreduce-*"))


@pytest.mark.parametrize("world", [2, 3])
def test_shared_memory_all_reduce_trains_as_gloo_does(world):
    """Every rank ends with the same weights as under gloo's all-reduce: bit for bit with
    two ranks (a/2 + b/2 is the same sum either way round); with three, up to the order of
    the float sums. The shared file is gone once the ranks have mapped it."""
    before = _ours()
    gloo, shm = _run(world, shm=False), _run(world, shm=True)
    assert all(reg for _, reg in shm.values()) and not any(reg for _, reg in gloo.values())
    for r in range(world):
        assert torch.equal(shm[r][0], shm[0][0]), "the ranks' weights differ"
        if world == 2:
            assert torch.equal(shm[r][0], gloo[r][0])
        else:
            assert torch.allclose(shm[r][0], gloo[r][0], rtol=0, atol=1e-5)
    assert not torch.equal(shm[0][0], _run(1, shm=True)[0][0]), "world 1 sees other data"
    assert _ours() == before


def _die_or_reduce(rank, world, port, q):
    _join(rank, world, port)
    state = SharedMemoryAllReduce.connect(8)
    if rank == 1:
        os._exit(0)             # a worker killed between two steps
    try:
        state.all_reduce_mean(torch.ones(8))
        q.put("returned")
    except RuntimeError as e:
        q.put(str(e))


def test_a_dead_rank_ends_the_all_reduce_with_a_clear_error():
    ctx = mp.get_context("spawn")
    q, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_die_or_reduce, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    msg = q.get(timeout=120)
    for p in procs:
        p.join(30)
    assert "rank 1 closed its connection" in msg and "did that worker die" in msg


def test_a_model_not_under_ddp_is_left_alone():
    assert use_shared_memory(torch.nn.Linear(2, 2)) is False
