"""The babysitter's Prometheus series, on an injected ``CollectorRegistry``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmsvc.babysitter.lifecycle import ExitRecord, Reason, State
from llmsvc.babysitter.resources import Sample

WAKE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class BabysitterMetrics:
    def __init__(self, registry: CollectorRegistry, *, model_name: str) -> None:
        self._model = model_name
        self.engine_up = Gauge(
            "llmsvc_babysitter_engine_up",
            "1 while the engine is ready, else 0.",
            ["model_name"],
            registry=registry,
        )
        self.restarts = Counter(
            "llmsvc_babysitter_restarts_total",
            "Engine restarts, by the reason the previous process ended.",
            ["model_name", "reason"],
            registry=registry,
        )
        self.exits = Counter(
            "llmsvc_babysitter_engine_exits_total",
            "Ends of engine processes (and launches refused by preflight), by reason.",
            ["model_name", "reason"],
            registry=registry,
        )
        self.time_to_ready = Gauge(
            "llmsvc_babysitter_time_to_ready_seconds",
            "Seconds from launch to ready of the latest engine process.",
            ["model_name"],
            registry=registry,
        )
        self.last_exit_code = Gauge(
            "llmsvc_babysitter_last_exit_code",
            "Exit status of the last engine process (128 + signal when killed by one).",
            ["model_name"],
            registry=registry,
        )
        self.state = Gauge(
            "llmsvc_babysitter_state",
            "The babysitter's state, one-hot.",
            ["model_name", "state"],
            registry=registry,
        )
        self.standby = Gauge(
            "llmsvc_babysitter_standby",
            "1 while the engine is in standby (idle: stopped or asleep), else 0.",
            ["model_name"],
            registry=registry,
        )
        self.wakes = Counter(
            "llmsvc_babysitter_wakes",
            "Wakes from standby that reached ready (POST /wake).",
            ["model_name"],
            registry=registry,
        )
        self.wake_seconds = Histogram(
            "llmsvc_babysitter_wake_seconds",
            "Seconds from POST /wake to ready.",
            ["model_name"],
            buckets=WAKE_BUCKETS,
            registry=registry,
        )
        self.gpus_visible = Gauge(
            "llmsvc_babysitter_gpus_visible",
            "GPUs of this engine (--gpus, else all) seen at the last look, by how they were "
            "read (nvml, nvidia-smi; none: no GPU could be asked, 0).",
            ["model_name", "source"],
            registry=registry,
        )
        self.gpu_memory_used = Gauge(
            "llmsvc_babysitter_gpu_memory_used_bytes",
            "Memory in use on each of the engine's GPUs (total - free, every process's).",
            ["model_name", "gpu"],
            registry=registry,
        )
        self.gpu_memory_total = Gauge(
            "llmsvc_babysitter_gpu_memory_total_bytes",
            "Memory of each of the engine's GPUs.",
            ["model_name", "gpu"],
            registry=registry,
        )
        self.gpu_utilization = Gauge(
            "llmsvc_babysitter_gpu_utilization_ratio",
            "Share of the last sample period in which each of the engine's GPUs was busy "
            "(0-1; absent where the GPU does not report it).",
            ["model_name", "gpu"],
            registry=registry,
        )
        self.gpu_temperature = Gauge(
            "llmsvc_babysitter_gpu_temperature_celsius",
            "Temperature of each of the engine's GPUs (absent where not reported).",
            ["model_name", "gpu"],
            registry=registry,
        )
        self.engine_rss = Gauge(
            "llmsvc_babysitter_engine_memory_rss_bytes",
            "Host memory resident in the engine's processes (its process group); 0 while "
            "no engine runs.",
            ["model_name"],
            registry=registry,
        )
        self.engine_memory_limit = Gauge(
            "llmsvc_babysitter_engine_memory_limit_bytes",
            "The memory limit of the engine's cgroup (systemd MemoryMax, a container's "
            "limit); absent where none is set.",
            ["model_name"],
            registry=registry,
        )
        self._init_series()
        self.set_state(State.STARTING)

    def resources(self, sample: Sample) -> None:
        """Replace the GPU and host-memory series with ``sample``'s: what is not seen has none."""
        for gauge in (
            self.gpus_visible,
            self.gpu_memory_used,
            self.gpu_memory_total,
            self.gpu_utilization,
            self.gpu_temperature,
            self.engine_memory_limit,
        ):
            gauge.clear()
        if sample.gpus is not None:
            report = sample.gpus
            self.gpus_visible.labels(self._model, report.source).set(len(report.gpus))
            for gpu in report.gpus:
                self.gpu_memory_used.labels(self._model, gpu.index).set(gpu.used_bytes)
                self.gpu_memory_total.labels(self._model, gpu.index).set(gpu.total_bytes)
                if gpu.utilization_percent is not None:
                    ratio = gpu.utilization_percent / 100
                    self.gpu_utilization.labels(self._model, gpu.index).set(ratio)
                if gpu.temperature_celsius is not None:
                    celsius = gpu.temperature_celsius
                    self.gpu_temperature.labels(self._model, gpu.index).set(celsius)
        self.engine_rss.labels(self._model).set(sample.rss_bytes or 0)
        if sample.limit_bytes is not None:
            self.engine_memory_limit.labels(self._model).set(sample.limit_bytes)

    def _init_series(self) -> None:
        self.engine_up.labels(self._model).set(0)
        self.engine_rss.labels(self._model).set(0)
        self.standby.labels(self._model).set(0)
        self.wakes.labels(self._model)
        self.wake_seconds.labels(self._model)
        for reason in Reason:
            self.exits.labels(self._model, reason.value)
            if reason not in (Reason.STOPPED, Reason.STANDBY):  # never "restarted" (a wake)
                self.restarts.labels(self._model, reason.value)

    def relabel(self, model_name: str) -> None:
        """A model swap: the series of ``model_name`` from now on; the old ones read 0."""
        if model_name == self._model:
            return
        for each in State:
            self.state.labels(self._model, each.value).set(0)
        self.engine_up.labels(self._model).set(0)
        self.engine_rss.remove(self._model)
        self._model = model_name
        self._init_series()

    def set_state(self, state: State) -> None:
        for each in State:
            self.state.labels(self._model, each.value).set(1 if each is state else 0)
        self.engine_up.labels(self._model).set(1 if state is State.READY else 0)

    def set_standby(self, standby: bool) -> None:
        self.standby.labels(self._model).set(1 if standby else 0)

    def woke(self, seconds: float) -> None:
        self.wakes.labels(self._model).inc()
        self.wake_seconds.labels(self._model).observe(seconds)

    def restarted(self, reason: Reason) -> None:
        self.restarts.labels(self._model, reason.value).inc()

    def ready_after(self, seconds: float) -> None:
        self.time_to_ready.labels(self._model).set(seconds)

    def exited(self, record: ExitRecord) -> None:
        self.exits.labels(self._model, record.reason.value).inc()
        if record.code is not None or record.signal is not None:
            self.last_exit_code.labels(self._model).set(record.exit_code())
