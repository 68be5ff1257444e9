"""Package data, no code: the throughput, memory and parameter-count tables `xrstudy.training.cost` reads.

A package of its own so that setuptools ships it as one (a data folder that Python could import as a
namespace package draws setuptools' "Package would be ignored" warning on every build)."""
