"""`python -m torch_impl.bench`: the benchmark command (`torch_impl.bench.command`)."""

from ref_numpy.train.options import run_main
from torch_impl.bench.command import main

run_main(main)
