"""Prometheus configuration: discover pods through the test bed's API server, scrape the ones
annotated `prometheus.io/scrape: "true"` on their pod IP, with `prometheus.io/port` and
`prometheus.io/path`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SCRAPE_INTERVAL = "2s"


def _relabel() -> list[dict[str, Any]]:
    ann = "__meta_kubernetes_pod_annotation_prometheus_io_"
    return [
        {"source_labels": [f"{ann}scrape"], "regex": "true", "action": "keep"},
        {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
        # The pod role emits one target per declared container port; keep one per pod.
        {
            "source_labels": ["__meta_kubernetes_pod_container_init"],
            "regex": "true",
            "action": "drop",
        },
        {
            "source_labels": ["__meta_kubernetes_pod_ip", f"{ann}port"],
            "regex": r"(.+);(\d+)",
            "replacement": "$1:$2",
            "target_label": "__address__",
        },
        {
            "source_labels": [f"{ann}path"],
            "regex": "(.+)",
            "target_label": "__metrics_path__",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
        {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
    ]


def config(kubeconfig: Path) -> str:
    conf = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": "1s",
                # Prometheus 3 refuses a scrape without a valid Content-Type unless told how
                # to parse it; simple test servers send none.
                "fallback_scrape_protocol": "PrometheusText0.0.4",
                "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
                "relabel_configs": _relabel(),
            }
        ],
    }
    return yaml.safe_dump(conf, sort_keys=False)
