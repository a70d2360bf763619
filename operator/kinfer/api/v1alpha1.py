"""The InferenceService API, kinfer.dev/v1alpha1.

These models are the source of truth: the CRD under ``crds/`` is generated from them
(``kinfer crd``), and every docstring below becomes ``kubectl explain`` text, so each one says the
unit, the range and the default.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema

from kinfer.api import formats, uris
from kinfer.api.rules import ApiModel, Rule, validations

GROUP = "kinfer.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"
SINGULAR = "inferenceservice"
SHORT_NAMES = ("kisvc",)

# Names become Deployment, Service and pod names; "-canary" and the pod-template hash must still fit
# in a 63-character DNS label, hence the shorter bound.
MAX_NAME_LENGTH = 45

MODEL_URI_MAX = uris.MAX
MODEL_URI_RULES = uris.RULES

# Kubernetes resource quantities: "500m", "2", "1.5", "8Gi", "1e3", or a bare integer (kubectl
# sends `cpu: 2` as a number). A fraction written unquoted (`cpu: 0.5`) is a JSON number the
# schema cannot take; quote it or write 500m.
Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "maxLength": formats.QUANTITY_MAX,
            **validations(formats.QUANTITY_RULE),
        }
    ),
]


class Model(ApiModel):
    """Where the model lives and how it is packaged."""

    rules = uris.MODEL_RULES

    uri: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MODEL_URI_MAX,
            json_schema_extra=validations(*MODEL_URI_RULES),
        ),
    ]
    """Location of the model. pvc://CLAIM/PATH mounts the PersistentVolumeClaim CLAIM read-only and
    loads PATH inside it; file:///PATH loads a path that exists in the runtime image or on the node
    (development). s3://BUCKET/PATH (an object, or a prefix ending in /), oci://REGISTRY/REPO:TAG
    or @sha256:DIGEST (a model directory pushed as an OCI artifact, e.g. by kinfer model push) and
    https://HOST/PATH (a file, or a .tar/.tar.gz/.zip archive that is unpacked) are downloaded by
    an init container into the pod, through the node's model cache. Required."""

    format: Literal["torchscript", "torch-export", "generative"] = "torchscript"
    """How the model is packaged: torchscript (torch.jit.save), torch-export (torch.export.save
    archive) or generative (a Hugging Face transformers causal language model directory:
    config.json, safetensors weights, tokenizer files and a signature.json with kind generative,
    context_length and max_new_tokens; loaded offline, served with token streaming over
    /v1/completions, /v1/chat/completions and /v2/models/NAME/generate[_stream]). Default
    torchscript."""

    secret_name: Annotated[
        str,
        Field(
            max_length=formats.DNS_SUBDOMAIN_MAX,
            json_schema_extra=validations(formats.OPTIONAL_DNS_SUBDOMAIN_RULE),
        ),
    ] = ""
    """Secret in the service's namespace whose keys become the downloader's environment: for s3://
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_SESSION_TOKEN, AWS_REGION and
    AWS_ENDPOINT_URL (any S3-compatible endpoint); for oci:// and https:// KINFER_STORAGE_USERNAME
    and KINFER_STORAGE_PASSWORD (registry login, HTTP basic auth) or KINFER_STORAGE_TOKEN (bearer).
    Empty: the pod's own environment and identity (e.g. injected web-identity credentials)."""

    sha256: Annotated[str, Field(max_length=64, json_schema_extra=validations(uris.SHA256_RULE))] = ""
    """SHA-256 digest (64 lower-case hex digits) the downloaded https:// file must have; a
    mismatch fails the download and nothing is kept. Empty: not checked."""

    cache: bool = True
    """Keep the downloaded model in the node's model cache (keyed by content digest) and start the
    next pod of this model on the same node from it. false: download every time and never cache.
    Default true."""


class Batching(ApiModel):
    """Dynamic batching in the model server."""

    rules = (
        Rule(
            cel="self.maxQueue >= self.maxBatchSize",
            message="maxQueue must be at least maxBatchSize, or a full batch could never queue",
            holds=lambda b: b["maxQueue"] >= b["maxBatchSize"],
            field="maxQueue",
        ),
    )

    max_batch_size: Annotated[int, Field(ge=1, le=1024)] = 32
    """Largest batch, in rows, sent to one forward pass. 1 disables batching. Range 1-1024,
    default 32."""

    max_delay_ms: Annotated[int, Field(ge=0, le=1000)] = 5
    """Longest time, in milliseconds, the first queued request waits for a batch to fill.
    Range 0-1000, default 5."""

    max_queue: Annotated[int, Field(ge=1, le=100000)] = 512
    """Rows allowed to wait per replica; beyond it requests are refused at once with HTTP 429 /
    gRPC RESOURCE_EXHAUSTED. Range 1-100000, default 512."""


class Generation(ApiModel):
    """Continuous batching of a generative model (model.format generative)."""

    max_sequences: Annotated[int, Field(ge=1, le=1024)] = 32
    """Most sequences decoded together in one step per replica; more wait (up to
    batching.maxQueue sequences, then HTTP 429). Range 1-1024, default 32."""

    max_tokens_in_flight: Annotated[int, Field(ge=0, le=10000000)] = 0
    """Most tokens (prompt plus max_tokens of each running sequence) one replica reserves in its
    KV cache. 0 means maxSequences times the model's context length. Range 0-10000000,
    default 0."""


class Runtime(ApiModel):
    """The model server that runs in each pod."""

    server: Literal["kinfer", "triton"] = "kinfer"
    """Server implementation: kinfer (kinfer-runtime) or triton (NVIDIA Triton; same Open Inference
    Protocol v2). Default kinfer."""

    image: Annotated[
        str, Field(max_length=1024, json_schema_extra=validations(formats.NO_SURROUNDING_SPACE_RULE))
    ] = ""
    """Container image of the server. Empty means the operator's configured default for the
    chosen server."""

    batching: Batching = Batching()
    """Dynamic batching settings. For generative models maxQueue is the number of sequences
    allowed to wait; maxBatchSize and maxDelayMs do not apply."""

    generation: Generation = Generation()
    """Continuous batching settings of generative models (ignored for other formats)."""


class Resources(ApiModel):
    """Compute for each model-server pod."""

    rules = (
        Rule(
            cel="self.gpuProduct == '' || self.gpu >= 1",
            message="gpuProduct needs gpu >= 1",
            holds=lambda r: r["gpuProduct"] == "" or r["gpu"] >= 1,
            field="gpuProduct",
        ),
    )

    gpu: Annotated[int, Field(ge=0, le=16)] = 0
    """Whole GPUs (nvidia.com/gpu) per pod. Range 0-16, default 0 (CPU only)."""

    gpu_product: Annotated[
        str,
        Field(
            max_length=formats.LABEL_VALUE_MAX,
            json_schema_extra=validations(formats.LABEL_VALUE_RULE),
        ),
    ] = ""
    """GPU model to schedule on, matched against the node label nvidia.com/gpu.product
    (e.g. NVIDIA-L4): a label value, at most 63 characters. Empty means any GPU. Needs gpu >= 1."""

    cpu: Quantity = "1"
    """CPU request per pod, as a non-negative Kubernetes quantity (e.g. 500m, 2, "1.5").
    Default 1."""

    memory: Quantity = "2Gi"
    """Memory request and limit per pod, as a non-negative Kubernetes quantity (e.g. 8Gi, 512Mi,
    1e9). Default 2Gi."""


class Toleration(ApiModel):
    """A toleration added to the model-server pods (same meaning, and the same rules, as in a Pod
    spec)."""

    rules = (
        Rule(
            cel="self.key != '' || self.operator == 'Exists'",
            message='operator must be Exists when `key` is empty, which means "match all values '
            'and all keys"',
            holds=lambda t: t["key"] != "" or t["operator"] == "Exists",
            field="operator",
        ),
        Rule(
            cel="self.operator != 'Exists' || self.value == ''",
            message="value must be empty when `operator` is 'Exists'",
            holds=lambda t: t["operator"] != "Exists" or t["value"] == "",
            field="value",
        ),
        Rule(
            cel="!has(self.tolerationSeconds) || self.effect == 'NoExecute'",
            message="effect must be 'NoExecute' when `tolerationSeconds` is set",
            holds=lambda t: "tolerationSeconds" not in t or t["effect"] == "NoExecute",
            field="effect",
        ),
    )

    key: Annotated[
        str,
        Field(
            max_length=formats.LABEL_KEY_MAX,
            json_schema_extra=validations(formats.OPTIONAL_LABEL_KEY_RULE),
        ),
    ] = ""
    """Taint key to tolerate, a label key (e.g. nvidia.com/gpu). Empty, with operator Exists,
    tolerates every taint."""

    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal. Default Equal."""

    value: Annotated[
        str,
        Field(
            max_length=formats.LABEL_VALUE_MAX,
            json_schema_extra=validations(formats.LABEL_VALUE_RULE),
        ),
    ] = ""
    """Taint value to match when operator is Equal, a label value; empty when operator is
    Exists."""

    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    """Taint effect to match; empty matches all effects."""

    toleration_seconds: Annotated[int, Field(ge=0)] | None = None
    """Only with effect NoExecute: seconds the pod stays bound after the taint appears. Unset
    means forever."""


class Scheduling(ApiModel):
    """Where model-server pods may run, in addition to what resources.gpu and gpuProduct imply."""

    node_selector: Annotated[
        dict[
            str,
            Annotated[
                str,
                Field(
                    max_length=formats.LABEL_VALUE_MAX,
                    json_schema_extra=validations(formats.LABEL_VALUE_RULE),
                ),
            ],
        ],
        Field(
            max_length=formats.NODE_SELECTOR_MAX,
            json_schema_extra=validations(formats.LABEL_KEYS_RULE),
        ),
    ] = {}
    """Extra node labels the pods require: label keys to label values, at most 64. Merged with
    the GPU product selector."""

    tolerations: Annotated[list[Toleration], Field(max_length=64)] = []
    """Extra tolerations, at most 64. A toleration for nvidia.com/gpu:NoSchedule is always added
    when resources.gpu >= 1."""

    affinity: Annotated[
        dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    ] = {}
    """Pod affinity rules, passed through to the pod spec unchanged."""

    priority_class_name: Annotated[
        str,
        Field(
            max_length=formats.DNS_SUBDOMAIN_MAX,
            json_schema_extra=validations(formats.OPTIONAL_DNS_SUBDOMAIN_RULE),
        ),
    ] = ""
    """PriorityClass of the pods, a DNS subdomain. Empty means the cluster default."""


class Targets(ApiModel):
    """What the autoscaler keeps each replica at."""

    queue_depth_per_replica: Annotated[float, Field(gt=0, le=10000)] = 4
    """Requests waiting or in flight per replica the autoscaler aims for. Greater than 0,
    default 4."""

    p95_latency_ms: Annotated[int, Field(ge=1, le=600000)] = 250
    """95th-percentile request latency, in milliseconds, the autoscaler keeps replicas under.
    Range 1-600000, default 250. Generative models stream for seconds: their request latency
    is not scaled on; set p95TimeToFirstTokenMs and tokensInFlightPerReplica instead."""

    p95_time_to_first_token_ms: Annotated[int | None, Field(ge=1, le=600000)] = None
    """Generative models: 95th-percentile time to first token (arrival to the first generated
    token), in milliseconds, the autoscaler keeps replicas under. Unset means not a target.
    Range 1-600000."""

    tokens_in_flight_per_replica: Annotated[int | None, Field(ge=1, le=10000000)] = None
    """Generative models: tokens reserved by running sequences (prompt plus max_tokens each) per
    replica the autoscaler aims for. Unset means not a target. Range 1-10000000."""


class ScaleToZero(ApiModel):
    """Scaling to no replicas when there is no traffic."""

    enabled: bool = False
    """Scale to 0 replicas after idleSeconds without requests. Default false."""

    idle_seconds: Annotated[int, Field(ge=30, le=86400)] = 600
    """Seconds without a request before scaling to zero. Range 30-86400, default 600."""


class Scaling(ApiModel):
    """How many model-server replicas run."""

    rules = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be less than or equal to maxReplicas",
            holds=lambda s: s["minReplicas"] <= s["maxReplicas"],
            field="minReplicas",
        ),
        Rule(
            cel="self.minReplicas >= 1 || self.scaleToZero.enabled",
            message="minReplicas 0 needs scaleToZero.enabled",
            holds=lambda s: s["minReplicas"] >= 1 or s["scaleToZero"]["enabled"],
            field="minReplicas",
        ),
        Rule(
            cel="!self.scaleToZero.enabled || self.mode == 'metrics'",
            message="scaleToZero needs mode metrics",
            holds=lambda s: not s["scaleToZero"]["enabled"] or s["mode"] == "metrics",
            field="scaleToZero.enabled",
        ),
    )

    mode: Literal["metrics", "hpa", "fixed"] = "metrics"
    """metrics: the operator scales on queue depth and p95 latency read from Prometheus.
    hpa: a HorizontalPodAutoscaler on the same signals (needs prometheus-adapter).
    fixed: exactly minReplicas replicas. Default metrics."""

    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    """Fewest replicas. 0 only with scaleToZero.enabled. Range 0-1000, default 1."""

    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 8
    """Most replicas. Range 1-1000, default 8."""

    targets: Targets = Targets()
    """Per-replica targets."""

    scale_up_stabilization_seconds: Annotated[int, Field(ge=0, le=3600)] = 0
    """Seconds a higher recommendation must hold before scaling up. Range 0-3600, default 0."""

    scale_down_stabilization_seconds: Annotated[int, Field(ge=0, le=3600)] = 300
    """Seconds the highest recommendation of the window is kept before scaling down.
    Range 0-3600, default 300 (the HPA default)."""

    max_scale_up_rate: Annotated[float, Field(ge=1, le=1000)] = 10
    """Most a scale-up may multiply the current replicas by in one step. Range 1-1000,
    default 10."""

    scale_to_zero: ScaleToZero = ScaleToZero()
    """Scale to zero when idle."""


class DriftCheck(ApiModel):
    """Output drift check: canary pods also send a bounded sample of their live requests to the
    stable track (its answer is discarded) and compare the outputs. Present means on."""

    rules = (
        Rule(
            cel="has(self.maxAbsDiff) || has(self.minArgmaxAgreement)",
            message="set maxAbsDiff, minArgmaxAgreement or both",
            holds=lambda d: "maxAbsDiff" in d or "minArgmaxAgreement" in d,
        ),
    )

    max_abs_diff: Annotated[float, Field(ge=0, le=1_000_000)] | None = None
    """Largest absolute difference allowed between the two tracks' outputs for one input, over
    every output element. Compared at the bound of the 1-2-5 series at or above it (0.003 counts
    as 0.005). For a generative model (greedy answers compared token by token) any differing
    answer fails, whatever the value. Unset: not checked."""

    min_argmax_agreement: Annotated[float, Field(ge=0, le=1)] | None = None
    """Smallest fraction of sampled rows whose argmax (the predicted class) is the same on both
    tracks, for classifiers; for a generative model, of sampled prompts whose greedy answers
    (temperature 0, up to 32 tokens) are the same token for token. Range 0-1. Unset: not
    checked."""

    min_samples: Annotated[int, Field(ge=1, le=100_000)] = 20
    """Comparisons a step needs before the drift check gives a verdict. Default 20."""

    samples_per_second: Annotated[float, Field(ge=0.01, le=100)] = 1.0
    """Most live requests each canary pod shadows to stable per second. Range 0.01-100,
    default 1."""


class Analysis(ApiModel):
    """What a canary step must show before it moves on. Compared on the same window as stable."""

    max_p95_latency_ms: Annotated[int, Field(ge=1, le=600000)] = 300
    """Highest canary p95 latency, in milliseconds. For a generative model (model.format
    generative) this is the p95 time to first token: a streamed answer is not timed as a
    request. Range 1-600000, default 300."""

    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    """Highest fraction of canary requests answered with 5xx. Range 0-1, default 0.01."""

    min_requests: Annotated[int, Field(ge=0, le=10_000_000)] = 100
    """Requests the canary must have served in a step before a verdict. Default 100."""

    drift: DriftCheck | None = None
    """Compare the canary's outputs with stable's on a sample of live inputs. Unset: off."""


class Canary(ApiModel):
    """A new model rolled out in weighted steps. Present means a canary is running."""

    rules = (
        # With the list a set (a repeat is refused as a Duplicate), sorted means strictly increasing.
        Rule(
            cel="self.steps.isSorted()",
            message="steps must be strictly increasing",
            holds=lambda c: all(a <= b for a, b in zip(c["steps"], c["steps"][1:], strict=False)),
            field="steps",
        ),
        # An empty list is refused by minItems; the rule must not fail on it as well.
        Rule(
            cel="size(self.steps) == 0 || self.steps[size(self.steps) - 1] == 100",
            message="steps must end at 100",
            holds=lambda c: not c["steps"] or c["steps"][-1] == 100,
            field="steps",
        ),
    )

    model: Model
    """The model the canary serves. Required."""

    steps: Annotated[
        list[Annotated[int, Field(ge=1, le=100)]],
        Field(min_length=1, max_length=20, json_schema_extra={"x-kubernetes-list-type": "set"}),
    ] = [10, 25, 50, 100]
    """Traffic percent sent to the canary at each step, strictly increasing, ending at 100.
    Default [10, 25, 50, 100]."""

    step_seconds: Annotated[int, Field(ge=10, le=86400)] = 120
    """Seconds each step lasts before analysis decides. Range 10-86400, default 120."""

    analysis: Analysis = Analysis()
    """Thresholds a step must meet."""


class AbTest(ApiModel):
    """Route by request header instead of by weight: matching requests go to the canary model."""

    header: Annotated[
        str,
        Field(min_length=1, max_length=256, json_schema_extra=validations(formats.HEADER_NAME_RULE)),
    ]
    """HTTP header that selects the variant, e.g. x-model-variant. Required."""

    value: Annotated[str, Field(min_length=1, max_length=4096)] = "canary"
    """Header value that sends a request to the canary model. Default canary."""


class Rollout(ApiModel):
    """Progressive delivery of a new model."""

    rules = (
        Rule(
            cel="!has(self.abTest) || has(self.canary)",
            message="abTest needs canary: the canary model is variant B",
            holds=lambda r: "abTest" not in r or "canary" in r,
            field="abTest",
        ),
    )

    canary: Canary | None = None
    """The canary in progress. Remove it (or change spec.model to it) to finish a rollout."""

    ab_test: AbTest | None = None
    """Route by header between the stable model and the canary model."""


class InferenceServiceSpec(ApiModel):
    """Desired state of an InferenceService."""

    rules = (
        Rule(
            cel="self.model.format != 'generative' || self.runtime.server == 'kinfer'",
            message="model.format generative needs runtime.server kinfer",
            holds=lambda s: s["model"]["format"] != "generative" or s["runtime"]["server"] == "kinfer",
            field="runtime.server",
        ),
        Rule(
            cel="!has(self.rollout.canary) || !has(self.rollout.canary.analysis.drift) "
            "|| self.runtime.server == 'kinfer'",
            message="the drift check needs runtime.server kinfer: Triton does not shadow requests",
            holds=lambda s: (
                "canary" not in s["rollout"]
                or "drift" not in s["rollout"]["canary"]["analysis"]
                or s["runtime"]["server"] == "kinfer"
            ),
            field="runtime.server",
        ),
    )

    model: Model
    """The model to serve. Required."""

    runtime: Runtime = Runtime()
    """The model server."""

    resources: Resources = Resources()
    """Compute per pod."""

    scheduling: Scheduling = Scheduling()
    """Node placement."""

    scaling: Scaling = Scaling()
    """Replica count and autoscaling."""

    rollout: Rollout = Rollout()
    """Canary and A/B rollouts."""


class Condition(ApiModel):
    """An observation of one aspect of the InferenceService (Kubernetes condition conventions)."""

    type: str
    """Ready, Progressing, Degraded, ScalingActive, MetricsAvailable or RolloutSucceeded."""

    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""

    reason: str = ""
    """One CamelCase word saying why."""

    message: str = ""
    """What happened and what to do about it."""

    last_transition_time: str = ""
    """When status last changed (RFC 3339)."""

    observed_generation: int = 0
    """metadata.generation this condition was computed from."""


class MetricsStatus(ApiModel):
    """Signals the autoscaler last read from Prometheus."""

    queue_depth: float | None = None
    """Requests waiting or in flight per replica."""

    p95_latency_ms: float | None = None
    """95th-percentile latency in milliseconds."""

    requests_per_second: float | None = None
    """Request rate over all replicas."""

    sampled_at: str = ""
    """When the sample was taken (RFC 3339)."""


class CanaryStatus(ApiModel):
    """Where the canary rollout stands."""

    phase: Literal["Pending", "Progressing", "Paused", "Promoting", "Succeeded", "RollingBack", "Failed"]
    """Pending, Progressing, Paused, Promoting, Succeeded, RollingBack or Failed."""

    step: int = 0
    """Index of the current step in spec.rollout.canary.steps, from 0."""

    weight: int = 0
    """Percent of traffic the current step gives the canary (the routes' weight)."""

    applied_weight: int = 0
    """Percent of requests the canary really gets: the route's weight when a Gateway has accepted
    the HTTPRoute, otherwise the canary's share of the ready pods behind the one Service."""

    applied_by: str = ""
    """What splits the traffic: HTTPRoute (a Gateway accepted the route) or replicas (none did)."""

    step_started_at: str = ""
    """When the current step began (RFC 3339)."""

    message: str = ""
    """Last analysis verdict or failure reason."""

    summary: str = ""
    """One-line summary shown in kubectl get, e.g. 2/4 25%."""

    revision: str = ""
    """The canary model (uri) this state belongs to; a different canary model starts over."""

    handed_over: bool = False
    """After promotion: the stable Deployment runs the canary's model on all replicas and the
    canary Deployment is scaled to zero, so removing spec.rollout.canary costs no capacity."""


class ColdStartStatus(ApiModel):
    """How long this service's new pods take from created to Ready, as the operator measured it
    from the API (pods with no container restart). The autoscaler's headroom and backlog terms
    use it."""

    seconds: float
    """The estimate, in seconds: a moving average over measured pods (recent pods weigh at
    least a fifth)."""

    samples: int = 0
    """Pods measured so far."""

    measured_until: str = ""
    """Ready time of the newest pod counted (RFC 3339); pods Ready later are new samples."""


class AutoscalerStatus(ApiModel):
    """What the autoscaler carries between ticks (mode metrics), saved so that a restarted
    operator or a new leader continues with the same stabilization window, panic and learned
    throughput instead of starting over. Written at most about once a minute, and whenever the
    count or the panic state changes. Times are Unix seconds."""

    saved_at: float = 0
    """When this was saved (Unix seconds)."""

    recommendations: list[list[float]] = []
    """(time, replicas) pairs within the longest stabilization window."""

    panic_until: float | None = None
    """Panic holds until this time; absent when not panicking."""

    panic_floor: int = 0
    """Fewest replicas while the panic lasts."""

    last_demand_at: float | None = None
    """When demand (queue, in flight or requests) was last seen."""

    last_scale_at: float | None = None
    """When the autoscaler last changed the count."""

    fit: list[float] = []
    """Decayed per-second sums over forwards (count, rows, seconds, rows², rows x seconds) and
    when they were decayed: the fit of the runtime's batch-latency line."""

    history: list[list[float]] = []
    """(time, queue depth, arrival rate) per tick over the last 10 minutes."""


class PodStart(ApiModel):
    """How the most recently ready pod started: the model download, then the server."""

    pod: str = ""
    """The pod these times are of."""

    download_seconds: float | None = None
    """Seconds the storage initializer took (0 on a node-cache hit); unset for pvc:// and file://."""

    download_bytes: int = 0
    """Bytes it downloaded (0 on a cache hit)."""

    cache_hit: bool = False
    """Whether the node's model cache served the model."""

    start_seconds: float | None = None
    """Seconds from the server container's start to Ready: model load, warm-up, first probe."""

    created_to_ready_seconds: float | None = None
    """Seconds from the pod's creation to Ready (scheduling, download, start): the cold start."""


class InferenceServiceStatus(ApiModel):
    """Observed state, written by the operator."""

    observed_generation: int = 0
    """metadata.generation the operator last acted on."""

    conditions: list[Condition] = []
    """Ready, Progressing, Degraded, ScalingActive, MetricsAvailable, RolloutSucceeded."""

    replicas: int = 0
    """Model-server pods that exist, all tracks."""

    ready_replicas: int = 0
    """Model-server pods that are ready, all tracks."""

    desired_replicas: int = 0
    """Replicas the autoscaler wants."""

    effective_model_uri: str = ""
    """The model the stable track serves: spec.model.uri, or the promoted canary's model until
    the manifest names it (set spec.model.uri to it and remove spec.rollout.canary)."""

    last_scale_time: str = ""
    """When the replica count last changed (RFC 3339)."""

    last_scale_reason: str = ""
    """Why the replica count last changed."""

    metrics: MetricsStatus = MetricsStatus()
    """Signals last read from Prometheus."""

    canary: CanaryStatus | None = None
    """The canary rollout, when one runs."""

    cold_start: ColdStartStatus | None = None
    """Measured created→Ready time of this service's pods."""

    autoscaler: AutoscalerStatus | None = None
    """The autoscaler's carried state (mode metrics)."""

    url: str = ""
    """In-cluster URL of the Service."""

    last_start: PodStart | None = None
    """Download, start and created-to-Ready seconds of the most recently ready pod (the
    autoscaler's estimate over all pods is coldStart)."""


_DNS_1035 = re.compile(formats.DNS_1035_LABEL)

# metadata.name as the CRD checks it (the API server adds its own DNS-subdomain check).
NAME_RULES = (
    Rule(
        cel=f"size(self) <= {MAX_NAME_LENGTH}",
        message=f"must be at most {MAX_NAME_LENGTH} characters (it names Deployments, Services and pods)",
        holds=lambda name: len(name) <= MAX_NAME_LENGTH,
    ),
    Rule(
        cel=formats.matches("self", formats.DNS_1035_LABEL),
        message="must be a DNS-1035 label: lower-case letters, digits and '-', starting with a "
        "letter and ending with a letter or digit",
        holds=lambda name: _DNS_1035.fullmatch(name) is not None,
    ),
)


class InvalidSpec(ValueError):
    """A spec the API server would refuse; `problems` name each field and reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def validate_spec(spec: Any) -> InferenceServiceSpec:
    """Check a spec the way the API server does (the generated CRD: schema, defaults and rules),
    then parse it. Raises InvalidSpec naming every problem."""
    try:
        key = json.dumps(spec, sort_keys=True)
    except (TypeError, ValueError):
        return _validate_spec(spec)
    return _validate_spec_text(key)


@functools.lru_cache(maxsize=4096)
def _validate_spec_text(text: str) -> InferenceServiceSpec:
    # Timers parse every service's spec on every tick; the same spec gives the same (frozen)
    # model, so it is checked once. Invalid specs raise and are not cached.
    return _validate_spec(json.loads(text))


def _validate_spec(spec: Any) -> InferenceServiceSpec:
    from kinfer.api.validation import admitted_spec  # validation reads the CRD made from here

    return InferenceServiceSpec.model_validate(admitted_spec(spec))
