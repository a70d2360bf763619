"""Install manifests besides the CRD: the operator's least-privilege RBAC, leader election included.

Generated, like the CRD, so that `config/` and the Helm chart can be checked against one source.
"""

from __future__ import annotations

from typing import Any

from kinfer.api import v1alpha1 as api

SERVICE_ACCOUNT = "kinfer-operator"
OPERATOR_LABELS = {
    "app.kubernetes.io/name": "kinfer-operator",
    "app.kubernetes.io/part-of": "kinfer",
}

# What the reconciler, the autoscaler and the rollout do, and nothing more. Owned objects are
# applied (create + patch), pruned (delete) and watched; pods only read; Secrets never.
OWNED_RULES: list[dict[str, Any]] = [
    # patch: only kopf's finalizer (metadata.finalizers), which stops the per-object timers
    # cleanly on deletion; the operator never writes spec.
    {"apiGroups": [api.GROUP], "resources": [api.PLURAL], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/status"], "verbs": ["get", "patch"]},
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": [""],
        "resources": ["services"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["policy"],
        "resources": ["poddisruptionbudgets"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["autoscaling"],
        "resources": ["horizontalpodautoscalers"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": ["httproutes", "grpcroutes"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["monitoring.coreos.com"],
        "resources": ["servicemonitors"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]
# Leader election: the replicas' Lease, in the operator's own namespace (a Role there).
LEASE_RULE = {
    "apiGroups": ["coordination.k8s.io"],
    "resources": ["leases"],
    "verbs": ["get", "create", "update"],
}
# kopf lists namespaces when it watches named ones (-n), so that it can follow them.
NAMESPACE_READ_RULE = {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}
# kopf discovers the resources it serves by listing CRDs when it starts.
CRD_READ_RULE = {
    "apiGroups": ["apiextensions.k8s.io"],
    "resources": ["customresourcedefinitions"],
    "verbs": ["get", "list", "watch"],
}


def rbac(
    namespace: str, watch_namespaces: list[str] | None = None, name: str = SERVICE_ACCOUNT
) -> list[dict[str, Any]]:
    """ServiceAccount and roles for the operator running in `namespace`.

    Without watch_namespaces: one ClusterRole for all namespaces. With them: a Role and
    RoleBinding in each watched namespace, and only CRD reads cluster-wide. Either way a Role on
    Leases in `namespace`, where the replicas elect their leader.
    """
    sa = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "labels": OPERATOR_LABELS},
    }
    subject = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    out: list[dict[str, Any]] = [sa]
    cluster_rules = [CRD_READ_RULE, NAMESPACE_READ_RULE]
    if not watch_namespaces:
        cluster_rules = [*OWNED_RULES, CRD_READ_RULE, NAMESPACE_READ_RULE]
    out += [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": OPERATOR_LABELS},
            "rules": cluster_rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": OPERATOR_LABELS},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": subject,
        },
    ]
    election = f"{name}-leader-election"
    out += [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": election, "namespace": namespace, "labels": OPERATOR_LABELS},
            "rules": [LEASE_RULE],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": election, "namespace": namespace, "labels": OPERATOR_LABELS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": election},
            "subjects": subject,
        },
    ]
    for watched in watch_namespaces or []:
        out += [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {
                    "name": name,
                    "namespace": watched,
                    "labels": OPERATOR_LABELS,
                },
                "rules": OWNED_RULES,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {
                    "name": name,
                    "namespace": watched,
                    "labels": OPERATOR_LABELS,
                },
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": name,
                },
                "subjects": subject,
            },
        ]
    return out
