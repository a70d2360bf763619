"""Model storage: `kinfer-runtime fetch URI DIR`, the init container that downloads s3://, oci://
and https:// models into the pod through the node's digest-keyed cache (fetch.py)."""
