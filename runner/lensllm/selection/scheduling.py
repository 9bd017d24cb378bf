"""Where runner pods may run: core/v1 Toleration and Affinity as typed spec models.

Typed (not free-form) so the CRD's schema, the operator and local mode refuse a misspelt key
or a wrong type when the selection is written, instead of the API server refusing every trial
Job later. Field names are those of core/v1 (a test checks them against the kubernetes
client's models); `model_dump(by_alias=True, exclude_none=True)` is the pod spec's value.
"""

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from lensllm.selection.formats import LABEL_VALUE, QUALIFIED_NAME
from lensllm.trial.spec import WireModel

LabelKey = Annotated[str, StringConstraints(pattern=QUALIFIED_NAME, max_length=317)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE, max_length=63)]
Weight = Annotated[int, Field(ge=1, le=100)]


class Toleration(WireModel):
    """A taint the runner pods tolerate (core/v1 Toleration)."""

    key: LabelKey | None = Field(default=None, description="Taint key; empty with operator Exists matches every taint.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: LabelValue | None = Field(default=None, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches every effect."
    )
    toleration_seconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")


class NodeSelectorRequirement(WireModel):
    key: LabelKey = Field(description="Node label key (or field name in matchFields).")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(description="Relation to values.")
    values: list[LabelValue] = Field(default_factory=list, max_length=64, description="Values to relate to.")


class NodeSelectorTerm(WireModel):
    match_expressions: list[NodeSelectorRequirement] = Field(default_factory=list, max_length=32, description="By node labels.")
    match_fields: list[NodeSelectorRequirement] = Field(default_factory=list, max_length=32, description="By node fields.")


class NodeSelector(WireModel):
    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1, max_length=32, description="Terms, ORed.")


class PreferredSchedulingTerm(WireModel):
    weight: Weight = Field(description="1-100.")
    preference: NodeSelectorTerm = Field(description="The preferred nodes.")


class NodeAffinity(WireModel):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes the pod must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=32, description="Nodes the pod prefers."
    )


class LabelSelectorRequirement(WireModel):
    key: LabelKey = Field(description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="Relation to values.")
    values: list[LabelValue] = Field(default_factory=list, max_length=64, description="Values to relate to.")


class LabelSelector(WireModel):
    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, description="Labels that must match.")
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32, description="Expressions, ANDed.")


class PodAffinityTerm(WireModel):
    label_selector: LabelSelector | None = Field(default=None, description="Pods to be near (or away from).")
    namespace_selector: LabelSelector | None = Field(default=None, description="Namespaces those pods are in.")
    namespaces: list[Annotated[str, StringConstraints(max_length=63)]] = Field(
        default_factory=list, max_length=32, description="Namespaces those pods are in."
    )
    topology_key: LabelKey = Field(description="Node label that defines 'near', e.g. kubernetes.io/hostname.")
    match_label_keys: list[LabelKey] = Field(default_factory=list, max_length=32, description="Label keys merged into the selector.")
    mismatch_label_keys: list[LabelKey] = Field(default_factory=list, max_length=32, description="Label keys whose values must differ.")


class WeightedPodAffinityTerm(WireModel):
    weight: Weight = Field(description="1-100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The preferred placement.")


class PodAffinity(WireModel):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, max_length=32, description="Placements the pod must satisfy."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, max_length=32, description="Placements the pod prefers."
    )


class Affinity(WireModel):
    """Node and pod (anti-)affinity of the runner pods (core/v1 Affinity)."""

    node_affinity: NodeAffinity | None = Field(default=None, description="Which nodes.")
    pod_affinity: PodAffinity | None = Field(default=None, description="Near which pods.")
    pod_anti_affinity: PodAffinity | None = Field(default=None, description="Away from which pods.")
