"""The benchmarks: `python -m torch_impl.bench` (`command`), one module per section (`train`,
`attention`, `adamw`, `numpy_step`) listed in `sections`, the timing of calls (`timing`) and
what the sections share (`common`). How results are saved and named is `torch_impl.report`.
"""
