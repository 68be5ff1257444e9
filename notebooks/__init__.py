"""The study's notebooks, shipped inside xrstudy as the package `xrstudy.notebooks` (package data).

This folder is the repository's `notebooks/`; pyproject.toml maps the package `xrstudy.notebooks` onto it
(`[tool.setuptools.package-dir]`), so a wheel carries the notebooks that `xrstudy sweep run` and `xrstudy demo`
execute, and the two results stores that notebooks 30 and 40 draw as shipped. `xrstudy.sweeps.sweepfile.
notebook_path` finds them through `importlib.resources`, in a wheel install as in an editable one. This file
is what makes that work: setuptools' editable finder only maps a folder it sees as a package, and a wheel only
ships data of a package. It holds no code.
"""
