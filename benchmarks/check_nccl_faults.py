"""Failure handling of the multi-GPU launcher on real NCCL (issue 22): a rank that raises and a rank killed with
SIGKILL, inside collectives and in the middle of a whole generation, must reach the caller as one error within 60 s,
leave no process behind and write no output.

    python benchmarks/check_nccl_faults.py [--num-gpus 2] [--repo converted_weights/wan2.1-t2v-tiny]

The same cases run on gloo in tests/test_parallel.py; this script is their NCCL twin for a machine with GPUs.
Exit status 1 when any case fails; one line per case either way.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidport.runtime.parallel import launch  # noqa: E402

from benchmarks.common import worker_pids  # noqa: E402

LIMIT_S = 60.0
DEVICE = os.environ.get("VIDPORT_FAULT_DEVICE", "cuda")  # "cpu": the same cases on gloo (a check of this script)


def _raise_on_rank_1(worker):
    dist.barrier()
    if worker.rank == 1:
        raise ValueError("boom on rank 1")
    dist.all_reduce(torch.ones(1, device=DEVICE))  # rank 0 waits here for a peer that never comes
    return "unreachable"


def _die_on_rank_1(worker):
    dist.barrier()
    if worker.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(torch.ones(1, device=DEVICE))
    return "unreachable"


def case(name: str, fn) -> bool:
    before = worker_pids()
    start = time.monotonic()
    try:
        fn()
        error = None
    except BaseException as e:  # noqa: BLE001 - the case reports whatever reached the caller
        error = e
    seconds = time.monotonic() - start
    time.sleep(1.0)  # let the launcher's reaping finish before counting processes
    left = worker_pids() - before
    ok = error is not None and seconds < LIMIT_S and not left
    first = str(error).splitlines()[0] if error is not None else "no error reached the caller"
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {type(error).__name__ if error else '-'} after {seconds:.1f} s "
          f"({first[:140]}); processes left: {len(left)}", flush=True)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-gpus", type=int, default=2)
    ap.add_argument("--repo", type=Path, default=Path("converted_weights/wan2.1-t2v-tiny"),
                    help="a Diffusers-format repo for the whole-generation cases (the tiny one is enough)")
    args = ap.parse_args()
    n = args.num_gpus
    results = [
        case(f"a rank raises inside an NCCL collective ({n} GPUs)",
             lambda: launch(_raise_on_rank_1, n, device=DEVICE)),
        case(f"a rank is killed (SIGKILL) inside an NCCL collective ({n} GPUs)",
             lambda: launch(_die_on_rank_1, n, device=DEVICE)),
    ]
    if args.repo.is_dir():
        from vidport.runtime import VideoGenerator

        out = Path("out") / "nccl-fault.mp4"
        out.parent.mkdir(exist_ok=True)
        out.unlink(missing_ok=True)
        request = dict(num_frames=5, height=32, width=48, num_inference_steps=40, guidance_scale=5.0, seed=0)

        def killed_mid_generation():
            with VideoGenerator.from_pretrained(args.repo, num_gpus=n, device=DEVICE,
                                                dtype="bf16" if DEVICE == "cuda" else "fp32") as gen:
                victims = sorted(worker_pids())

                def kill_one(i, total):  # rank 0's progress reaches the caller: kill a rank at step 3
                    if i == 2:
                        threading.Thread(target=os.kill, args=(victims[-1], signal.SIGKILL)).start()

                gen.generate_video("a red fox in the snow", output_path=out, on_step=kill_one, **request)

        results.append(case(f"a rank is killed (SIGKILL) mid-generation ({n} GPUs)", killed_mid_generation))
        written = out.exists()
        print(f"{'FAIL' if written else 'ok  '} no output written after the failed generation: {out} "
              f"{'exists' if written else 'absent'}", flush=True)
        results.append(not written)
    else:
        print(f"skip whole-generation cases: no repo at {args.repo} (port convert the tiny release first)")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
