"""Step 4: many cells: a sweep file -> a plan -> cells run here (papermill kernels) or on SLURM.

sweepfile    sweep YAML -> list of canonical RunConfig (one run id per computation), selection, dependency graph
plan         every cell's `xrstudy.training.resolve.ResolvedCell` row, leak flag, dependencies (torch-free)
preflight    checks before anything runs (archs, weights, GPUs, parents)
celllock     a cell's claim and heartbeat, so runners on shared storage never run a cell twice
worker       one attempt at one cell (`AttemptEnd`)
kernels      warm Jupyter kernels that papermill runs cells in
runner       `run_sweep(cells)`: slots and one scheduler
status       every cell's state (done, failed, running, blocked, pending) from the store and run folders (torch-free)
slurm        job arrays sized by the plan, handed to submitit
"""
