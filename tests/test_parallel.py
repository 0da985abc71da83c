"""Sequence-parallel (Ulysses) and CFG-parallel Wan DiT on N gloo ranks against the single-process
model with the same weights; the launcher's failure handling; a whole tiny generation on 2 ranks.

Spawning ranks costs seconds, so each world size is one module-scoped ``WorkerPool`` shared by tests.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist
from vidport.runtime.models.wan.config import preset
from vidport.runtime.models.wan.model import WanDiT
from vidport.runtime.models.wan.parallel import parallelize_wan
from vidport.runtime.parallel import WorkerError, check_heads, launch, parallelize

from benchmarks.common import worker_pids
from vidport.errors import UserError

TINY = preset("tiny")  # 4 heads: 1, 2 or 4 ranks
TINY6 = TINY.replace(dim=96, num_heads=6)  # 6 heads (head_dim 16): 3 ranks
TINY12 = TINY.replace(dim=192, num_heads=12)  # 12 heads (head_dim 16): 6 a rank on 2 ranks
ATOL = 1e-5  # fp32


def make_dit(cfg, seed=0) -> WanDiT:
    torch.manual_seed(seed)
    model = WanDiT(cfg).eval()
    with torch.no_grad():  # default init leaves biases and norms trivial: randomize every tensor
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def make_cases(cfg) -> dict[str, tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(1)
    return {
        # grid 2x3x4 = 24 tokens: divisible by 2 and 3
        "even": (torch.randn(1, 16, 2, 6, 8, generator=g), torch.tensor([700.0]),
                 torch.randn(1, 9, cfg.text_dim, generator=g)),
        # grid 1x5x5 = 25 tokens: not divisible by 2 or 3 (padded shards); batch 2, two timesteps
        "uneven": (torch.randn(2, 16, 1, 10, 10, generator=g), torch.tensor([999.0, 40.0]),
                   torch.randn(2, 5, cfg.text_dim, generator=g)),
    }


def reference_outputs(cfg):
    model = make_dit(cfg)
    cases = make_cases(cfg)
    with torch.no_grad():
        return model.state_dict(), cases, {name: model(*inputs) for name, inputs in cases.items()}


# --- what the ranks run (module level: spawned workers import them by name) ---------------------
def _sequence_parallel(worker, cfg, state_dict, cases, backend):
    model = WanDiT(cfg).eval()
    model.load_state_dict(state_dict)
    model.set_attention_backend(backend)
    dit = parallelize_wan(model)
    with torch.no_grad():
        return {name: dit(*inputs) for name, inputs in cases.items()}


def _head_groups(worker, cfg, state_dict, cases, chunk_counts):
    from vidport.runtime.parallel import DistributedAttention

    model = WanDiT(cfg).eval()
    model.load_state_dict(state_dict)
    dit = parallelize_wan(model)
    ops = [m for m in model.modules() if isinstance(m, DistributedAttention)]
    out = {}
    with torch.no_grad():
        for chunks in chunk_counts:
            for op in ops:
                op.chunks = chunks
            try:
                out[chunks] = {name: dit(*inputs) for name, inputs in cases.items()}
            except ValueError as e:  # caught here: the shared pool's ranks stay up
                out[chunks] = str(e)
        for op in ops:  # batch-1 parts received through an all-to-all and reordered, as batch 2 always is
            op.chunks, op.direct_receive = None, False
        out["reordered"] = {name: dit(*inputs) for name, inputs in cases.items()}
    return out


def _cfg_parallel(worker, cfg, state_dict, x, t, cond, uncond, scale):
    model = WanDiT(cfg).eval()
    model.load_state_dict(state_dict)
    dit, strategy = parallelize(model, parallelize_wan, cfg_parallel=True)
    with torch.no_grad():
        return strategy(dit, x, t, cond, uncond, scale)


def _parallelize_error(worker, cfg):
    try:
        parallelize_wan(WanDiT(cfg))
    except UserError as e:
        return str(e)
    return None


def _fail_on_rank_1(worker):
    dist.barrier()
    if worker.rank == 1:
        raise ValueError("boom on rank 1")
    dist.all_reduce(torch.ones(1))  # rank 0 waits here for a peer that never comes
    return "unreachable"


def _fail_on_rank_1_after_rank_0_returned(worker):
    if worker.rank == 1:  # rank 0 is done by now (as after an asynchronous NCCL collective)
        time.sleep(0.5)
        raise ValueError("late boom on rank 1")
    return "rank 0 done"


def _die_on_rank_1(worker):
    dist.barrier()
    if worker.rank == 1:
        os.kill(os.getpid(), 9)
    dist.all_reduce(torch.ones(1))
    return "unreachable"


def _pids(worker):
    pids = [None] * worker.world_size
    dist.all_gather_object(pids, os.getpid())
    return pids


def assert_same(got, want, what):
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL, msg=lambda m: f"{what} vs single process: {m}")


# --- sequence parallelism ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sdpa-math", "sdpa", "sdpa-flash"])
def test_two_ranks_equal_one_process(pool2, backend):
    state_dict, cases, want = reference_outputs(TINY)
    got = pool2.run(_sequence_parallel, TINY, state_dict, cases, backend)
    for name in cases:
        assert_same(got[name], want[name], f"2 ranks ({name}, {backend})")


def test_three_ranks_equal_one_process(pool3):
    state_dict, cases, want = reference_outputs(TINY6)
    got = pool3.run(_sequence_parallel, TINY6, state_dict, cases, "sdpa-math")
    for name in cases:
        assert_same(got[name], want[name], f"3 ranks ({name})")


def test_pipelined_head_groups_change_nothing(pool2):
    """The exchange pipelined over 2, 3 or 6 head groups (and the default: 2 here, 1 for TINY's 2 heads a rank)
    gives the unpipelined output and the single process's, with padded shards too, whether a batch of one is
    received in place or reordered after an all-to-all; a group count that does not divide the heads is
    refused."""
    from vidport.runtime.parallel.ulysses import pipeline_chunks

    assert [pipeline_chunks(n) for n in (1, 2, 3, 4, 5, 6, 9, 10)] == [1, 1, 1, 2, 1, 2, 3, 2]  # >= 2 heads a group
    assert pipeline_chunks(6, "sdpa-cudnn") == 2 and pipeline_chunks(6, "flash-attn-4") == 1  # FA4 holds every SM
    state_dict, cases, want = reference_outputs(TINY12)
    got = pool2.run(_head_groups, TINY12, state_dict, cases, [1, 2, 3, 6, None, 4])
    assert got.pop(4) == "4 head groups do not divide this rank's 6 heads"
    for chunks, outputs in got.items():
        for name in cases:
            assert torch.equal(outputs[name], got[1][name]), f"{chunks} head groups ({name}) vs 1"
            assert_same(outputs[name], want[name], f"2 ranks, {chunks} head groups ({name})")


def test_heads_not_divisible_by_ranks(pool3):
    message = pool3.run(_parallelize_error, TINY)  # 4 heads, 3 ranks
    assert message == ("sequence parallelism over 3 ranks needs the head count to divide evenly, "
                       "but the model has 4 heads; valid sizes: 1, 2, 4")
    with pytest.raises(UserError, match="valid sizes: 1, 2, 3, 4, 6, 12$"):
        check_heads(12, 5)  # Wan 1.3B on 5 GPUs


# --- CFG parallelism --------------------------------------------------------------------------
def test_cfg_parallel_equals_serial_cfg(pool2):
    from vidport.runtime.pipeline import Conditioning
    from vidport.runtime.pipeline.guidance import SerialCFG

    model = make_dit(TINY)
    x, t, context = make_cases(TINY)["uneven"]
    x, t, context = x[:1], t[:1], context[:1]
    cond, uncond = Conditioning({"context": context}), Conditioning({"context": torch.randn_like(context)})
    with torch.no_grad():
        want = SerialCFG()(model, x, t, cond, uncond, 5.0)
        unguided = SerialCFG()(model, x, t, cond, None, 5.0)
    got = pool2.run(_cfg_parallel, TINY, model.state_dict(), x, t, cond, uncond, 5.0)
    assert_same(got, want, "CFG-parallel on 2 ranks vs serial CFG")
    assert (got - unguided).abs().max() > 1e-2  # the guidance did something: the test can fail
    got = pool2.run(_cfg_parallel, TINY, model.state_dict(), x, t, cond, None, 5.0)
    assert_same(got, unguided, "CFG-parallel without guidance")


# --- launching --------------------------------------------------------------------------------
def test_failing_worker_stops_everything():
    before = worker_pids()  # the shared pools' workers
    start = time.monotonic()
    with pytest.raises(ValueError, match="boom on rank 1") as info:
        launch(_fail_on_rank_1, 2, device="cpu")
    assert time.monotonic() - start < 60
    assert "(raised on rank 1 of 2)" in info.value.__notes__
    assert "_fail_on_rank_1" in str(info.value.__cause__)  # the worker's traceback travels along
    assert worker_pids() - before == set()


def test_a_run_fails_when_any_rank_fails_even_after_rank_0_returned():
    """A run succeeds only when every rank finished it: on NCCL, rank 0 can return before a peer fails (its
    collectives are asynchronous), and that failure must still reach the caller (benchmarks/check_nccl_faults.py)."""
    before = worker_pids()
    with pytest.raises(ValueError, match="late boom on rank 1"):
        launch(_fail_on_rank_1_after_rank_0_returned, 2, device="cpu")
    assert worker_pids() - before == set()


def test_killed_worker_is_reported():
    before = worker_pids()
    with pytest.raises(WorkerError, match="rank 1 of 2 was killed by signal 9"):
        launch(_die_on_rank_1, 2, device="cpu")
    assert worker_pids() - before == set()


def test_under_torchrun_this_process_is_the_rank(monkeypatch):
    """With torchrun's environment, launch runs the function here (no spawn) on the env:// group."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    before = worker_pids()
    assert launch(_pids, 1, device="cpu") == [os.getpid()]
    assert not dist.is_initialized()  # the group launch created is gone
    assert worker_pids() == before
    with pytest.raises(UserError, match="torchrun started 1"):
        launch(_pids, 2, device="cpu")


def test_pool_keeps_its_processes(pool2):
    first = pool2.run(_pids)
    assert pool2.run(_pids) == first and set(first) <= worker_pids()


# --- a whole generation -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    from test_generate import write_tiny_repo  # the tiny Diffusers-format repo the generator tests use

    return write_tiny_repo(tmp_path_factory.mktemp("wan-tiny-parallel"))


@pytest.mark.parametrize("options, message", [
    ({"num_gpus": 3}, "sequence parallelism over 3 ranks needs the head count to divide evenly, but the model "
                      "has 4 heads; valid sizes: 1, 2, 4"),
    ({"num_gpus": 3, "cfg_parallel": True}, "cfg_parallel needs an even number of GPUs, got num_gpus=3"),
    ({"num_gpus": 2, "sequence_parallel": True}, "unknown option(s) for num_gpus=2: sequence_parallel; "
                                                 "parallel options are cfg_parallel and timeout"),
])
def test_generator_refuses_bad_layouts_before_starting_ranks(tiny_repo, options, message):
    from vidport.runtime import VideoGenerator

    before = worker_pids()
    with pytest.raises(UserError) as info:
        VideoGenerator.from_pretrained(tiny_repo, device="cpu", **options)
    assert str(info.value) == message
    assert worker_pids() == before


def test_generation_on_two_ranks_equals_one(tiny_repo, tmp_path_factory):
    from vidport.runtime import VideoGenerator

    before = worker_pids()
    repo = tiny_repo
    options = dict(attention_backend="sdpa-math", dtype="fp32", device="cpu")
    request = dict(num_frames=5, height=32, width=48, num_inference_steps=3, guidance_scale=5.0, seed=3)
    want = VideoGenerator.from_pretrained(repo, **options).generate_video("a red fox in the snow", **request)

    out = tmp_path_factory.mktemp("videos") / "fox.mp4"
    with VideoGenerator.from_pretrained(repo, num_gpus=2, **options) as gen:
        steps = []
        got = gen.generate_video("a red fox in the snow", output_path=out, on_step=lambda i, n: steps.append(i),
                                 **request)
        assert steps == [0, 1, 2]  # rank 0's progress reaches the caller
        assert got.shape == want.shape == (5, 32, 48, 3)
        assert (got == want).all(), f"frames differ: max abs {abs(got.astype(int) - want).max()}"
        assert out.stat().st_size > 0 and gen.last_report.settings["num_gpus"] == 2
        assert gen.last_report.settings["vae_split"] == 2  # the ranks shared the (untiled) decode by rows
        parts = gen.last_report.as_dict()["load_s"]  # where the load went, as rank 0 saw it
        assert list(parts) == ["start_ranks", "attention", "components", "parallelize", "wait_for_peers", "return"]
        assert all(v >= 0 for v in parts.values())
        assert sum(parts.values()) == pytest.approx(gen.last_report.timings["load"], abs=0.05)
        # a failing run writes nothing and stops the ranks
        bad = out.with_name("bad.mp4")
        with pytest.raises(UserError):
            gen.generate_video("a red fox", output_path=bad, num_frames=6, height=32, width=48)
        assert not bad.exists()
        with pytest.raises(WorkerError, match="closed"):
            gen.generate_video("a red fox", **request)
    assert worker_pids() - before == set()


# --- the prompt is encoded once: rank 0 loads the text encoder, the others receive its encoding --------------------
class _Encode:
    name = "encode"

    def __init__(self, fail: bool):
        self.fail = fail

    def __call__(self, state):
        from vidport.runtime.pipeline.state import Conditioning

        if self.fail:
            raise ValueError("no such token")
        state.cond = Conditioning({"context": torch.arange(6.0).reshape(1, 2, 3), "mask": torch.ones(1, 2).bool()})
        return state


def _encode_on_ranks(worker, fail: bool):
    import torch.distributed as dist
    from vidport.runtime.parallel.generator import EncodeOnRankZero
    from vidport.runtime.pipeline.state import GenerationRequest, PipelineState

    request = GenerationRequest("a fox", "", 5, 32, 48, 2, 5.0, 0)
    # only rank 0's stage may run: the others' would raise if called
    stage = EncodeOnRankZero(_Encode(fail) if worker.rank == 0 else _Encode(True))
    state = stage(PipelineState(request=request, device=worker.device))
    got = torch.stack([state.cond.kwargs["context"].flatten(), state.cond.kwargs["mask"].float().flatten().repeat(3)])
    every = [torch.empty_like(got) for _ in range(worker.world_size)]
    dist.all_gather(every, got)
    return [e.tolist() for e in every], state.uncond


def test_rank_zero_encodes_and_the_others_receive(pool2):
    every, uncond = pool2.run(_encode_on_ranks, False)
    assert every[0] == every[1] == [[0.0, 1, 2, 3, 4, 5], [1.0] * 6] and uncond is None


def test_a_failed_encode_on_rank_zero_fails_every_rank():
    from vidport.runtime.parallel import WorkerPool

    with WorkerPool(3, device="cpu") as pool:  # its own: a failed run closes the pool
        with pytest.raises(ValueError, match="no such token"):
            pool.run(_encode_on_ranks, True)


def _loaded_text_encoders(worker):
    import torch.distributed as dist

    has = torch.tensor([int(worker.state["generator"].components.text_encoder is not None)])
    every = [torch.empty_like(has) for _ in range(worker.world_size)]
    dist.all_gather(every, has)
    return [int(e) for e in every]


def test_only_rank_zero_loads_the_text_encoder(tiny_repo):
    from vidport.runtime import VideoGenerator

    with VideoGenerator.from_pretrained(tiny_repo, num_gpus=2, attention_backend="sdpa-math", device="cpu") as gen:
        assert gen.pool.run(_loaded_text_encoders) == [1, 0]
