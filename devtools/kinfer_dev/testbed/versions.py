"""Every version the test bed uses, pinned in one place.

Only versions the Go module proxy serves can be used; `go list -m -versions MODULE` lists them.
"""

KUBERNETES = "v1.36.3"  # k8s.io/kubernetes; staging modules are v0.36.3
ETCD = "v3.6.14"  # go.etcd.io/etcd/server/v3 (kubeadm pairs k8s 1.34+ with etcd 3.6)
KWOK = "v0.8.0"  # sigs.k8s.io/kwok
HELM = "v3.21.4"  # helm.sh/helm/v3
# github.com/prometheus/prometheus tags v3.X.Y as v0.3XX.Y; v0.316.0 is Prometheus 3.16.0.
# (Debian bookworm's prometheus 2.42 is built without kubernetes_sd_configs: unusable.)
PROMETHEUS = "v0.316.0"

# Model storage servers (issue 15): an S3-compatible object store and an OCI registry.
# github.com/minio/minio has no tags; the proxy serves pseudo-versions only.
MINIO = "v0.0.0-20260212201848-7aac2a2c5b7c"
DISTRIBUTION = "v3.1.2"  # github.com/distribution/distribution/v3 (cmd/registry)

# Load clients of bench/runtime_vs_peers.py (built only on request: `install bench`).
VEGETA = "v12.13.0"  # github.com/tsenart/vegeta/v12, HTTP
GHZ = "v0.93.0"  # github.com/bojand/ghz, gRPC

# Source-only modules (downloaded into the module cache at install, nothing built):
# the Gateway API CRDs (config/crd/standard).
GATEWAY_API = "v1.2.1"  # sigs.k8s.io/gateway-api

# The go line of the wrapper modules must be >= every dependency's go line.
GO_LINE = "1.26.0"
