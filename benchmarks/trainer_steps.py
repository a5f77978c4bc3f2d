"""Wall time of N training steps of the default digits config through `genlab.engine.trainer.train` (start-up
included), optionally under cProfile: where the trainer's time goes beyond the bare step.

    python benchmarks/trainer_steps.py 150             # seconds for 150 steps
    python benchmarks/trainer_steps.py 150 --profile   # plus the 25 most expensive functions
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from genlab.engine.config import load_config
from genlab.engine.trainer import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits-diffusion.yaml"


def main(argv: list[str]) -> float:
    steps = int(argv[0]) if argv and argv[0].isdigit() else 150
    cfg = load_config(CONFIG, [f"trainer.max_steps={steps}", "trainer.progress=false",
                               "trainer.sample_every=100000000", "trainer.ckpt_every=100000000"])
    prof = cProfile.Profile()
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        if "--profile" in argv:
            prof.enable()
        train(cfg, Path(work) / "run")
        prof.disable()
        seconds = time.perf_counter() - start
    print(f"{steps} steps in {seconds:.1f} s")
    if "--profile" in argv:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return seconds


if __name__ == "__main__":
    main(sys.argv[1:])
