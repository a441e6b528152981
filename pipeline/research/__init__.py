"""Research and training scripts behind BENCHMARKS.md's URaG and REFRAG sections, run by hand
as `python -m pipeline.research.<name>`; built on the answering seam (`Answerer.prepare`)."""
