"""Time the synthetic generator per preset: counts, seconds and peak RSS (each preset in a fresh
process, so the peaks do not mix).

    python benchmarks/synthetic_scale.py                 # tiny small medium
    python benchmarks/synthetic_scale.py medium large
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time


def measure(preset: str, seed: int) -> None:
    from mmkgrec.data.synthetic import generate

    start = time.perf_counter()
    ds = generate(preset, seed=seed)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"{preset:>7}  users {ds.n_users:>7,}  items {ds.n_items:>6,}  "
          f"interactions {len(ds.interactions):>9,}  positives {int(ds.positive_mask().sum()):>9,}  "
          f"triples {len(ds.triples):>7,}  {seconds:6.1f} s  peak RSS {peak_mib:,.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", default=["tiny", "small", "medium"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure(args.presets[0], args.seed)
        return
    for preset in args.presets:
        subprocess.run([sys.executable, __file__, "--one", preset, "--seed", str(args.seed)],
                       check=True)


if __name__ == "__main__":
    main()
