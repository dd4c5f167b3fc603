"""Autoscaling benchmarks (issue 14): does ``llmsvc simulate`` agree with real processes
(``agreement.py``, ``make autoscale-agreement``), and what do a fixed fleet, autoscaling and
autoscaling to zero cost and give over the built-in traces (``study.py``,
``make autoscale-study``)."""
