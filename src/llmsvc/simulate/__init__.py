"""``llmsvc simulate``: the fleet in simulated time (router, autoscaler, engines).

A discrete-event simulation that uses the simulated engine's timing model
(:mod:`llmsvc.simengine.model`, its profiles) and the operator's scaling decisions
(:mod:`llmsvc.autoscale`) unchanged, so that a day of traffic at 10 requests/s says
in seconds what a policy costs in GPU-seconds and TTFT. See docs/autoscaling.md.
"""

from llmsvc.simulate.api import POLICIES, Percentiles, PolicyName, SimConfig, SimResult, simulate
from llmsvc.simulate.events import Sample
from llmsvc.simulate.timing import EngineTiming, engine_timing
from llmsvc.simulate.traces import BUILTIN_TRACES, Trace, TraceError, load_trace

__all__ = [
    "BUILTIN_TRACES",
    "POLICIES",
    "EngineTiming",
    "Percentiles",
    "PolicyName",
    "Sample",
    "SimConfig",
    "SimResult",
    "Trace",
    "TraceError",
    "engine_timing",
    "load_trace",
    "simulate",
]
