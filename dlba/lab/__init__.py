"""dlba-lab: the network-namespace array for the end-to-end tests and the full-flow demo
(DESIGN.md §8).  Glue: ``ip`` and processes; what to build is in ``dlba/labplan.py``.
Never imported by the daemon."""
