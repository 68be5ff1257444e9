"""Step 3: one study cell, from a RunConfig and its tables to a result JSON.

    recipes      pure numbers: BiT-HyperRule, the pre-training schedule, a cell's `Recipe`, input statistics
    cost         throughput and memory tables (package data `tables/`): GPU-hours, the micro-batch a GPU holds
    resolve      one cell resolved (`resolve(cfg, facts) -> ResolvedCell`, what `sweep plan` prints and `train` runs)
                 and `canonical(cfg)`: one run id per computation (torch-free)
    history      a run's training history: log interval, history.csv rows, the result's <= 200 points (torch-free)
    archs        architectures xrstudy registers in timm
    checkpoints  weight files (xrstudy checkpoints, state dicts), `CheckpointError`
    paper_weights  the authors' released checkpoints: key map and reading
    models       timm model creation, the `INITS` registry, heads
    metrics      NaN-safe accuracy, mean AUC / AP, bootstrap intervals (numpy / scikit-learn)
    callbacks    fastai callbacks: batch preparation, masked MixUp, LR schedule, AGC, training state
    monitor      HistoryLogger: history.csv + TensorBoard scalars every log_every steps; stops a diverging run
    learner      the fastai Learner: masked BCE, fit / predict / restore, best-validation checkpoint
    probe        `train_mode: probe`: frozen fp32 features (cached per weights, view and images), a logistic regression
    train        `run(cfg) -> result`: the one readable path of a cell (probe cells fork to `run_probe_cell`)

`recipes`, `cost`, `resolve` and `history` import no torch (`xrstudy sweep plan` / `status` use them).
"""
