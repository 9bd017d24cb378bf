"""The cluster and local mode build the same status from the same trial documents, whatever the NTK probe size."""

import pytest
from demo_selection import demo_models, selection_manifest
from selections import GROUP, PLURAL, VERSION, comparable, create, run_locally, wait_for_phase


@pytest.mark.slow
def test_a_256_example_ntk_probe_gives_the_same_status_and_ranking_on_the_cluster_and_locally(
    demo_world, namespace, kubelet, start_operator, custom, tmp_path
):
    start_operator()
    doc = selection_manifest(demo_world, demo_models(demo_world, "tiny-gpt2", "tiny-opt"), name="wide-probe",
                             method="lensllm", ntk={"probeSize": 256}, budget={"subsetSizes": [16, 32, 64], "targetSize": 1024})
    create(custom, namespace, doc)
    status = wait_for_phase(custom, namespace, "wide-probe", "Complete", "Failed")
    assert status.phase == "Complete", status.conditions
    assert all(entry.ntk.n == 256 for entry in status.candidates.values())
    # A fit inside the NTK's bounds (t > 0) reads F(t) between them, which the lumped modes shape.
    assert any(entry.fit["t"] > 0 for entry in status.candidates.values())
    cluster_status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "wide-probe")["status"]
    assert comparable(run_locally(doc, tmp_path)) == comparable(cluster_status)
