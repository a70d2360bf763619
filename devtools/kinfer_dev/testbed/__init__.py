"""The test bed: a real Kubernetes control plane with kwok GPU nodes, a pod launcher and Prometheus.

`kinfer dev install|up|down|status|env` drive it (see docs/testbed.md).
"""
