"""The results store and what is computed from it, without torch.

    store        result JSON schema, atomic save, validated load, the tidy table
    legacy       the paper's published CSVs imported into the same schema (`origin: "paper"`)
    scaling      power-law fits with bootstrap intervals

Training writes results through `store`; sweeps read it to skip finished cells; plots draw from it.
"""
