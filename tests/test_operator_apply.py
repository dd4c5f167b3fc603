"""When and how the operator patches a child: ``children.covers`` and ``children.patch_for``.

A live object carries what the API server and other controllers added (defaults,
revision annotations); none of that may cause a patch, while every field the
builder sets must end up as built, including keys it stopped setting in the maps
it owns (``nodeSelector``).
"""

from __future__ import annotations

import copy
from typing import Any

from llmsvc.operator.children import covers, patch_for


def built() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "labels": {"llmsvc.io/inference-service": "m"},
            "annotations": {"llmsvc.io/model": "Qwen3-8B"},
            "ownerReferences": [{"kind": "InferenceService", "name": "m", "uid": "u1"}],
        },
        "spec": {
            "replicas": 1,
            "template": {
                "spec": {
                    "nodeSelector": {"gpu": "h100"},
                    "containers": [
                        {"name": "engine", "resources": {"limits": {"nvidia.com/gpu": "2"}}}
                    ],
                }
            },
        },
    }


def live_of(desired: dict[str, Any]) -> dict[str, Any]:
    """``desired`` as the API server returns it: defaults and other writers' fields added."""
    live = copy.deepcopy(desired)
    live["metadata"].update(resourceVersion="7", uid="d1", generation=3)
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "3"
    live["spec"]["strategy"] = {"type": "RollingUpdate"}
    pod = live["spec"]["template"]["spec"]
    pod["dnsPolicy"] = "ClusterFirst"
    pod["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    live["status"] = {"readyReplicas": 1}
    return live


def test_an_unchanged_child_is_not_patched() -> None:
    desired = built()
    assert patch_for(live_of(desired), desired) is None


def test_a_changed_field_patches_the_spec_and_the_owned_metadata() -> None:
    live = live_of(built())
    desired = built()
    desired["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] = {
        "nvidia.com/gpu": "4"
    }
    patch = patch_for(live, desired)
    assert patch is not None
    container = patch["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert set(patch["metadata"]) == {"labels", "annotations", "ownerReferences"}
    assert "resourceVersion" not in patch["metadata"]  # a merge patch never conflicts
    assert "status" not in patch


def test_a_key_dropped_from_an_owned_map_is_removed() -> None:
    live = live_of(built())
    desired = built()
    desired["spec"]["template"]["spec"]["nodeSelector"] = {}
    patch = patch_for(live, desired)
    assert patch is not None
    assert patch["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": None}


def test_other_writers_keys_in_other_maps_stay() -> None:
    live = live_of(built())
    live["metadata"]["labels"]["team"] = "ml"
    assert patch_for(live, built()) is None


def test_a_list_of_another_length_is_replaced() -> None:
    live = live_of(built())
    desired = built()
    desired["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"})
    patch = patch_for(live, desired)
    assert patch is not None
    assert [c["name"] for c in patch["spec"]["template"]["spec"]["containers"]] == [
        "engine",
        "sidecar",
    ]


def test_covers() -> None:
    assert covers({"a": 1, "b": [{"c": 2, "d": 3}]}, {"b": [{"c": 2}]})
    assert not covers({"a": 1}, {"a": "1"})
    assert not covers({"b": [{"c": 2}, {"c": 3}]}, {"b": [{"c": 2}]})
    assert not covers({}, {"a": None})


# -- an autoscaled Deployment: spec.replicas belongs to the autoscaler -------------------


def scaled_live(replicas: int) -> dict[str, Any]:
    """The live Deployment after an autoscaler set ``replicas`` (the built one asks for 1)."""
    live = live_of(built())
    live["spec"]["replicas"] = replicas
    return live


def test_without_a_range_the_built_replicas_win() -> None:
    patch = patch_for(scaled_live(3), built())
    assert patch is not None and patch["spec"]["replicas"] == 1


def test_the_autoscalers_replicas_are_kept_when_nothing_else_changed() -> None:
    assert patch_for(scaled_live(3), built(), replicas_within=(0, 4)) is None
    assert patch_for(scaled_live(0), built(), replicas_within=(0, 4)) is None


def test_a_spec_change_of_an_autoscaled_deployment_leaves_out_its_replicas() -> None:
    desired = built()
    desired["spec"]["template"]["spec"]["nodeSelector"] = {"gpu": "h200"}
    patch = patch_for(scaled_live(3), desired, replicas_within=(0, 4))
    assert patch is not None
    assert patch["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "h200"}
    assert "replicas" not in patch["spec"]  # a merge patch without it keeps the live 3
    assert desired["spec"]["replicas"] == 1  # the built object is not changed


def test_replicas_outside_the_range_are_brought_within_it() -> None:
    lowered = patch_for(scaled_live(6), built(), replicas_within=(0, 4))  # maxReplicas 6 → 4
    assert lowered is not None and lowered["spec"]["replicas"] == 4
    raised = patch_for(scaled_live(0), built(), replicas_within=(2, 4))  # minReplicas 0 → 2
    assert raised is not None and raised["spec"]["replicas"] == 2


def test_a_live_object_without_replicas_gets_the_built_count() -> None:
    live = live_of(built())
    del live["spec"]["replicas"]
    patch = patch_for(live, built(), replicas_within=(0, 4))
    assert patch is not None and patch["spec"]["replicas"] == 1
