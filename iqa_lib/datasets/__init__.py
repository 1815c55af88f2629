"""Data sets for the kit: public IQA data sets converted to its layout, and synthetic demo data.

Two commands::

    python -m iqa_lib.datasets.prepare NAME SRC DEST [--holdout 0.2] ...   # convert a download
    python -m iqa_lib.datasets.demo data/demo [--n-train N] ...            # make the demo data

Modules:

- ``prepare``: the converter (``prepare(...)`` and its command): the registry of data sets,
  the holdout split, writing images, CSVs and ``dataset.json``, copying README / licence files.
- ``clive``, ``koniq``, ``kadid``, ``spaq``, ``kit``: one reader per data set (``NAME``), each
  with its original layout, licence and citation (``kit``: a folder already in the kit's layout).
- ``common``: what the readers share (``Scores``, ``DatasetInfo``, finding the original files).
- ``demo``: the synthetic demo data set (``make_demo_data(...)`` and its command).
- ``cli``: what both commands share (checking and clearing DEST, reporting a user error).

Nothing is imported here: ``import iqa_lib.datasets.demo`` stays light (no torch).
"""
