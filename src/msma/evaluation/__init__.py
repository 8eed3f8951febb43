"""msma.evaluation: the held-out evaluator and the benchmarks of ``msma eval``.

``heldout`` (the one evaluator: validation, ``metrics.json``, ``msma eval --data synthetic``, the notebooks),
``split`` (a network on its run's held-out split), ``aflw2000`` (NME per yaw bin), ``scans`` (MICC / NoW),
``report`` (table and JSON of ``msma eval``).
"""
