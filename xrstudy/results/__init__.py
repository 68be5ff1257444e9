"""The results store and what is computed from it, without torch.

    store        result JSON schema, atomic save, validated load, the tidy table
    legacy       the paper's published CSVs imported into the same schema (`origin: "paper"`)
    scaling      power and saturating laws against model size / pre-training data: bootstrap intervals
                 over seeds for every parameter, AICc to choose, leave-one-size-out; < 3 sizes refused
    stats        seed statistics per cell (mean, SD, interval, seeds for ±1 point) and new results
                 against published ones (prediction interval, Welch test, multiple-comparison control)

Training writes results through `store`; sweeps read it to skip finished cells; plots draw from it.
"""
