"""`python -m ref_numpy.train`: the NumPy trainer (`ref_numpy.train.numpy_trainer`)."""

from ref_numpy.train.numpy_trainer import main
from ref_numpy.train.options import run_main

run_main(main)
