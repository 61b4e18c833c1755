"""Run every benchmark with small defaults: ``python -m bench [--full] [name ...]``.

``--full`` uses the sizes of issue 9 (minutes to hours on a CPU; meant for a GPU machine).
"""

from __future__ import annotations

import argparse

from bench import ensure_malloc_env

FULL_ARGS = {
    "group_forward": ["--prompt-lens", "4096,8192", "--completion", "256", "--G", "8", "--checkpointing"],
    "rollout": ["--prompt-lens", "1024,4096", "--new-tokens", "64", "--G", "8"],
    "logprobs": ["--tokens", "16384,32768"],
    "trl_step": ["--prompt-lens", "64,4096", "--completion", "64", "--G", "8", "--checkpointing"],
    "eval": ["--prompt-lens", "1024,2048", "--new-tokens", "64", "--batch", "8"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", choices=[[], *FULL_ARGS], default=[], metavar="name",
                    help=f"subset of {list(FULL_ARGS)} (default: all)")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--device", default="")
    args = ap.parse_args()
    from bench import bench_eval, bench_group_forward, bench_logprobs, bench_rollout, bench_trl_step

    modules = {"group_forward": bench_group_forward, "rollout": bench_rollout, "logprobs": bench_logprobs,
               "trl_step": bench_trl_step, "eval": bench_eval}
    for name in args.names or list(FULL_ARGS):
        argv = (FULL_ARGS[name] if args.full else []) + (["--device", args.device] if args.device else [])
        modules[name].main(argv)


if __name__ == "__main__":
    ensure_malloc_env("bench")
    main()
