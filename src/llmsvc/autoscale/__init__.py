"""The one scaling decision code: how many replicas demand needs, and when to wake a
standby engine.

Pure and clock-injected (every call takes ``now``), importing no service, so that the
operator's autoscaler, the router (waking standby engines) and ``llmsvc simulate``
decide with exactly the same code: a simulated day of traffic is then evidence about
the real autoscaler, not about a copy of it.
"""

from llmsvc.autoscale.policy import Decision, Metric, Observation, Policy, Scaler, need
from llmsvc.autoscale.wake import to_wake

__all__ = ["Decision", "Metric", "Observation", "Policy", "Scaler", "need", "to_wake"]
