"""Figures, each a matplotlib Figure returned to the caller and saved as PNG + PDF + the CSV it was drawn from.

    figures        the study's figures from the tidy results table
    paper_figures  the authors' own figure style, on top of `figures`
    curves         learning curves of training histories, a cell's summary (notebooks 10 / 20)
    render         every figure of a store in one call (`render_all`)
    explore        figures of a canonical table (sources, labels, co-occurrence)

The package never chooses a matplotlib backend (the `xrstudy` command picks Agg).
"""
