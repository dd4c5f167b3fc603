"""EndpointSlices + Services -> records: the pure mapping of the registry's Kubernetes source."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from llmsvc.registry.k8s_records import (
    EndpointSlice,
    Service,
    build_records,
    maintenance_entries,
    parse_service,
    parse_slice,
    zero_endpoint_records,
)

LABELS = {
    "llmsvc.io/inference-service": "qwen",
    "llmsvc.io/model": "Qwen3-32B",
    "kubernetes.io/service-name": "qwen",
}
PORTS = [
    {"name": "http", "port": 8000, "protocol": "TCP"},
    {"name": "babysitter", "port": 8001, "protocol": "TCP"},
]


def endpoint(
    address: str, pod: str | None = None, *, ready: bool | None = True, **conditions: Any
) -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": [address], "conditions": {**conditions}}
    if ready is not None:
        ep["conditions"]["ready"] = ready
    if pod is not None:
        ep["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "llm"}
    return ep


def slice_(
    name: str = "qwen-abcde",
    endpoints: list[dict[str, Any]] | None = None,
    *,
    namespace: str = "llm",
    labels: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    address_type: str = "IPv4",
) -> EndpointSlice:
    return parse_slice(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": LABELS if labels is None else labels,
            },
            "addressType": address_type,
            "endpoints": endpoints if endpoints is not None else [endpoint("10.0.0.1", "qwen-0")],
            "ports": PORTS if ports is None else ports,
        }
    )


def service(
    name: str = "qwen",
    *,
    namespace: str = "llm",
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
) -> Service:
    return parse_service(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": LABELS if labels is None else labels,
                "annotations": annotations or {},
            },
            "spec": {"clusterIP": "None", "ports": PORTS if ports is None else ports},
        }
    )


def test_one_record_per_endpoint_named_after_the_pod() -> None:
    eps = [endpoint("10.0.0.1", "qwen-0"), endpoint("10.0.0.2", "qwen-1")]
    mapped = build_records([slice_(endpoints=eps)], [service()])
    assert [r.name for r in mapped.records] == ["llm.qwen-0", "llm.qwen-1"]
    first = mapped.records[0]
    assert (first.host, first.port, first.url) == ("10.0.0.1", 8000, "http://10.0.0.1:8000")
    assert first.type == "openai-api" and first.weight == 1 and first.healthy
    assert first.metadata == {
        "models": ["Qwen3-32B"],
        "source": "kubernetes",
        "namespace": "llm",
        "inference_service": "qwen",
        "service": "qwen",
        "endpoint_slice": "qwen-abcde",
        "babysitter_port": 8001,
        "pod": "qwen-0",
        "node": None,
    }
    assert mapped.notes == []


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ({"ready": True}, "healthy"),
        ({"ready": False}, "unhealthy"),
        ({"ready": None}, "healthy"),  # unknown counts as ready, as the API asks
        ({"ready": False, "serving": True}, "unhealthy"),
        ({"ready": False, "serving": True, "terminating": True}, None),  # going away: no record
        ({"ready": True, "terminating": True}, None),
    ],
)
def test_status_follows_the_ready_condition(
    conditions: dict[str, Any], expected: str | None
) -> None:
    ready = conditions.pop("ready")
    mapped = build_records(
        [slice_(endpoints=[endpoint("10.0.0.1", "p", ready=ready, **conditions)])], [service()]
    )
    assert [r.status for r in mapped.records] == ([expected] if expected else [])


def test_several_slices_of_one_service_are_merged() -> None:
    slices = [
        slice_("qwen-aaaaa", [endpoint("10.0.0.1", "qwen-0")]),
        slice_("qwen-bbbbb", [endpoint("10.0.0.2", "qwen-1", ready=False)]),
    ]
    mapped = build_records(slices, [service(annotations={"llmsvc.io/weight": "3"})])
    by_name = {r.name: r for r in mapped.records}
    assert set(by_name) == {"llm.qwen-0", "llm.qwen-1"}
    assert by_name["llm.qwen-1"].metadata["endpoint_slice"] == "qwen-bbbbb"
    assert not by_name["llm.qwen-1"].healthy
    assert {r.weight for r in mapped.records} == {3}


def test_a_pod_in_two_slices_gives_one_record_preferring_the_ready_one() -> None:
    slices = [
        slice_("qwen-v4", [endpoint("10.0.0.1", "qwen-0", ready=False)]),
        slice_("qwen-v6", [endpoint("fd00::1", "qwen-0")], address_type="IPv6"),
    ]
    mapped = build_records(slices, [service()])
    assert len(mapped.records) == 1
    record = mapped.records[0]
    assert record.healthy and record.url == "http://[fd00::1]:8000"


def test_without_a_target_ref_the_name_comes_from_slice_and_address() -> None:
    mapped = build_records([slice_(endpoints=[endpoint("10.0.0.9")])], [service()])
    assert [r.name for r in mapped.records] == ["llm.qwen-abcde.10.0.0.9"]
    assert mapped.records[0].metadata["pod"] is None


def test_same_pod_name_in_two_namespaces_gives_two_records() -> None:
    slices = [slice_(namespace="a"), slice_(namespace="b")]
    mapped = build_records(slices, [service(namespace="a"), service(namespace="b")])
    assert [r.name for r in mapped.records] == ["a.qwen-0", "b.qwen-0"]


def test_overlong_names_are_shortened_and_stay_unique() -> None:
    pods = ["p" * 250 + "1", "p" * 250 + "2"]
    eps = [endpoint("10.0.0.1", pods[0]), endpoint("10.0.0.2", pods[1])]
    names = [r.name for r in build_records([slice_(endpoints=eps)], [service()]).records]
    assert len(set(names)) == 2
    assert all(len(n) <= 253 for n in names)


@pytest.mark.parametrize(
    ("annotations", "labels", "expected"),
    [
        ({"llmsvc.io/model": "Qwen/Qwen3-32B"}, LABELS, ["Qwen/Qwen3-32B"]),  # exact name
        ({}, {**LABELS, "llmsvc.io/model": "from-service-label"}, ["from-service-label"]),
    ],
)
def test_model_from_the_service_annotation_else_its_label(
    annotations: dict[str, str], labels: dict[str, str], expected: list[str]
) -> None:
    mapped = build_records([slice_()], [service(annotations=annotations, labels=labels)])
    assert mapped.records[0].models == expected


def test_model_from_the_slice_label_while_the_service_is_unknown() -> None:
    mapped = build_records([slice_()], [])
    assert mapped.records[0].models == ["Qwen3-32B"]
    assert mapped.records[0].weight == 1


def test_no_model_anywhere_is_noted() -> None:
    labels = {k: v for k, v in LABELS.items() if k != "llmsvc.io/model"}
    mapped = build_records([slice_(labels=labels)], [service(labels=labels)])
    assert mapped.records[0].models == []
    assert "no 'llmsvc.io/model'" in mapped.notes[0]


@pytest.mark.parametrize(
    ("value", "weight", "noted"),
    [("5", 5, False), (" 1000 ", 1000, False), ("0", 1, True), ("1001", 1, True),
     ("heavy", 1, True)],
)  # fmt: skip
def test_weight_from_the_service_annotation(value: str, weight: int, noted: bool) -> None:
    mapped = build_records([slice_()], [service(annotations={"llmsvc.io/weight": value})])
    assert mapped.records[0].weight == weight
    assert bool(mapped.notes) == noted


@pytest.mark.parametrize(
    ("ports", "port"),
    [
        (PORTS, 8000),
        (list(reversed(PORTS)), 8000),
        ([{"port": 9000}], 9000),  # a single unnamed port
        ([{"name": "metrics", "port": 9090}], 9090),  # a single port, whatever its name
        ([{"name": "a", "port": 1}, {"name": "b", "port": 2}], None),  # ambiguous
        ([{"name": "http", "port": 8000, "protocol": "UDP"}], None),
        ([], None),
    ],
)
def test_port_selection(ports: list[dict[str, Any]], port: int | None) -> None:
    mapped = build_records([slice_(ports=ports)], [service()])
    assert [r.port for r in mapped.records] == ([port] if port else [])
    if port is None:
        assert "no port named 'http'" in mapped.notes[0]


def test_objects_without_the_inference_service_label_are_ignored() -> None:
    other = {"kubernetes.io/service-name": "web"}
    mapped = build_records([slice_("web-x", labels=other)], [service("web", labels=other)])
    assert mapped.records == []


def test_slice_service_matched_by_namespace_and_name() -> None:
    # The weight of a same-named Service in another namespace does not apply.
    mapped = build_records(
        [slice_(namespace="a")],
        [service(namespace="b", annotations={"llmsvc.io/weight": "9"})],
    )
    assert mapped.records[0].weight == 1


def test_endpoints_without_addresses_and_null_lists_give_nothing() -> None:
    raw = {"metadata": {"name": "s", "namespace": "llm", "labels": LABELS}, "endpoints": None,
           "ports": None}  # fmt: skip
    assert build_records([parse_slice(raw)], []).records == []
    empty = slice_(endpoints=[{"addresses": [], "conditions": {"ready": True}}])
    assert build_records([empty], []).records == []


def test_an_endpoint_that_makes_no_valid_record_is_skipped_with_a_note() -> None:
    mapped = build_records([slice_(ports=[{"name": "http", "port": 0}])], [service()])
    assert mapped.records == []
    assert "skipped" in mapped.notes[0]


def idle(slices: list[EndpointSlice], services: list[Service]) -> list[tuple[str, str]]:
    """(name, models) of the zero-endpoint records, as the source builds them."""
    mapped = build_records(slices, services)
    return [(r.name, r.models[0]) for r in zero_endpoint_records(services, mapped.records).records]


def test_a_service_without_any_slice_keeps_a_record_that_names_its_model() -> None:
    annotations = {"llmsvc.io/model": "Qwen/Qwen3-32B"}
    mapped = zero_endpoint_records([service(annotations=annotations)], [])
    assert mapped.notes == []
    [record] = mapped.records
    assert record.name == "llm.qwen" and record.type == "inference-service"
    assert (record.host, record.port, record.status) == ("qwen.llm.svc", 8000, "unhealthy")
    assert record.metadata == {
        "models": ["Qwen/Qwen3-32B"],
        "source": "kubernetes",
        "inference_service": "qwen",
        "namespace": "llm",
        "service": "qwen",
        "ready_endpoints": 0,
    }


@pytest.mark.parametrize(
    "endpoints",
    [
        [],  # an empty slice
        [endpoint("10.0.0.1", "qwen-0", ready=False)],
        [endpoint("10.0.0.1", "qwen-0", ready=True, terminating=True)],
        [{"addresses": [], "conditions": {"ready": True}}],
    ],
)
def test_no_ready_endpoint_keeps_the_record(endpoints: list[dict[str, Any]]) -> None:
    assert idle([slice_(endpoints=endpoints)], [service()]) == [("llm.qwen", "Qwen3-32B")]


def test_one_ready_endpoint_removes_the_record() -> None:
    eps = [endpoint("10.0.0.1", "qwen-0", ready=False), endpoint("10.0.0.2", "qwen-1")]
    assert idle([slice_(endpoints=eps)], [service()]) == []
    # Ready in another slice of the same Service counts; in a same-named Service of
    # another namespace it does not.
    slices = [slice_("qwen-a", []), slice_("qwen-b", [endpoint("10.0.0.2", "qwen-1")])]
    assert idle(slices, [service()]) == []
    assert idle([slice_(namespace="b")], [service(namespace="a")]) == [("a.qwen", "Qwen3-32B")]


def test_zero_endpoint_records_only_for_the_operators_services_with_a_model() -> None:
    other = {"kubernetes.io/service-name": "web"}
    assert idle([], [service("web", labels=other)]) == []
    no_model = {k: v for k, v in LABELS.items() if k != "llmsvc.io/model"}
    mapped = zero_endpoint_records([service(labels=no_model)], [])
    assert mapped.records == []
    assert mapped.notes == ["Service llm/qwen: no 'llmsvc.io/model' annotation or label; no record"]


@pytest.mark.parametrize(
    ("ports", "port"),
    [
        (PORTS, 8000),
        ([{"port": 9000}], 9000),
        ([{"name": "a", "port": 1}, {"name": "b", "port": 2}], 80),
        ([{"name": "http", "port": 8000, "protocol": "UDP"}], 80),
        ([], 80),
    ],
)
def test_zero_endpoint_record_port(ports: list[dict[str, Any]], port: int) -> None:
    [record] = zero_endpoint_records([service(ports=ports)], []).records
    assert record.port == port


def test_the_autoscalers_annotations_give_the_start_estimate() -> None:
    annotations = {
        "llmsvc.io/scaling-since": "1800000000.25",
        "llmsvc.io/cold-start-seconds": " 42.5 ",
    }
    mapped = zero_endpoint_records([service(annotations=annotations)], [])
    assert mapped.notes == []
    [record] = mapped.records
    meta = record.metadata
    assert (meta["starting_since"], meta["startup_seconds"]) == (1_800_000_000.25, 42.5)
    assert isinstance(meta["starting_since"], float) and isinstance(meta["startup_seconds"], float)
    # Either alone: a first scale-up has no measured cold start yet; after it, the
    # measurement stays while scaling-since is gone.
    [alone] = zero_endpoint_records(
        [service(annotations={"llmsvc.io/cold-start-seconds": "7"})], []
    ).records
    assert alone.metadata["startup_seconds"] == 7.0 and "starting_since" not in alone.metadata
    # A ready endpoint: no zero-endpoint record, and the endpoints' records carry neither.
    mapped_eps = build_records([slice_()], [service(annotations=annotations)])
    assert (
        zero_endpoint_records([service(annotations=annotations)], mapped_eps.records).records == []
    )
    assert all("startup_seconds" not in r.metadata for r in mapped_eps.records)


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("llmsvc.io/scaling-since", "soon"),
        ("llmsvc.io/scaling-since", "0"),
        ("llmsvc.io/scaling-since", "-5"),
        ("llmsvc.io/scaling-since", "inf"),
        ("llmsvc.io/cold-start-seconds", "nan"),
        ("llmsvc.io/cold-start-seconds", "-1"),
        ("llmsvc.io/cold-start-seconds", ""),
        ("llmsvc.io/cold-start-seconds", "12s"),
    ],
)
def test_an_unusable_start_annotation_is_ignored_with_a_note(annotation: str, value: str) -> None:
    other = (
        ("llmsvc.io/cold-start-seconds", "30")
        if annotation == "llmsvc.io/scaling-since"
        else ("llmsvc.io/scaling-since", "1800000000")
    )
    mapped = zero_endpoint_records(
        [service(annotations={annotation: value, other[0]: other[1]})], []
    )
    [record] = mapped.records  # the model stays known
    key = "starting_since" if annotation == "llmsvc.io/scaling-since" else "startup_seconds"
    assert key not in record.metadata
    assert record.metadata[
        "startup_seconds" if key == "starting_since" else "starting_since"
    ] == float(other[1])
    [note] = mapped.notes
    assert note.startswith(f"Service llm/qwen: annotation '{annotation}' must be ")
    assert note.endswith(f"(got {value!r}); ignored")


NOW = 1_800_000_000.0


def test_the_maintenance_annotation_is_a_model_wide_entry() -> None:
    annotations = {"llmsvc.io/model": "Qwen/Qwen3-32B", "llmsvc.io/maintenance": "GPU swap",
                   "llmsvc.io/maintenance-until": "2027-01-15T14:00:00+01:00"}  # fmt: skip
    maintained = maintenance_entries([service(annotations=annotations), service("b")], NOW)
    assert maintained.notes == []
    [entry] = maintained.entries
    assert (entry.model, entry.backend, entry.message, entry.source) == (
        "Qwen/Qwen3-32B", None, "GPU swap", "kubernetes")  # fmt: skip
    assert entry.until == datetime(2027, 1, 15, 13, 0, tzinfo=UTC)
    assert entry.since == datetime.fromtimestamp(NOW, UTC)


@pytest.mark.parametrize(
    ("until", "expected"),
    [
        (None, None),
        ("2027-01-15T13:00:00Z", datetime(2027, 1, 15, 13, 0, tzinfo=UTC)),
        (" 2027-01-15T13:00:00z ", datetime(2027, 1, 15, 13, 0, tzinfo=UTC)),
        ("", None),
    ],
)
def test_maintenance_until_rfc3339(until: str | None, expected: datetime | None) -> None:
    annotations = {"llmsvc.io/maintenance": "down"}
    if until is not None:
        annotations["llmsvc.io/maintenance-until"] = until
    maintained = maintenance_entries([service(annotations=annotations)], NOW)
    assert [e.until for e in maintained.entries] == [expected] and maintained.notes == []


@pytest.mark.parametrize("until", ["tomorrow", "2027-01-15T13:00:00", "2027-13-01T00:00:00Z"])
def test_an_unusable_until_gives_the_entry_without_an_end_and_a_note(until: str) -> None:
    annotations = {"llmsvc.io/maintenance": "down", "llmsvc.io/maintenance-until": until}
    maintained = maintenance_entries([service(annotations=annotations)], NOW)
    assert [(e.model, e.until) for e in maintained.entries] == [("Qwen3-32B", None)]
    [note] = maintained.notes
    assert note.startswith("Service llm/qwen: 'llmsvc.io/maintenance-until' must be an RFC 3339")
    assert repr(until) in note


def test_maintenance_messages_are_one_line_and_blank_is_none() -> None:
    multi = {"llmsvc.io/maintenance": "  new\n  driver\t today "}
    assert [e.message for e in maintenance_entries([service(annotations=multi)], NOW).entries] == [
        "new driver today"]  # fmt: skip
    blank = {"llmsvc.io/maintenance": " \n "}
    assert maintenance_entries([service(annotations=blank)], NOW).entries == []
    long = maintenance_entries([service(annotations={"llmsvc.io/maintenance": "x" * 600})], NOW)
    assert len(long.entries[0].message) == 500 and "cut to 500" in long.notes[0]


def test_maintenance_only_on_the_operators_services_with_a_model() -> None:
    on = {"llmsvc.io/maintenance": "down"}
    other = {"kubernetes.io/service-name": "web"}
    assert maintenance_entries([service("web", labels=other, annotations=on)], NOW).entries == []
    no_model = {k: v for k, v in LABELS.items() if k != "llmsvc.io/model"}
    maintained = maintenance_entries([service(labels=no_model, annotations=on)], NOW)
    assert maintained.entries == [] and "no model" in maintained.notes[0]
