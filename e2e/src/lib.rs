//! Test harness: starts or attaches to a testbed (real kube-apiserver, CSI, MinIO) and gives tests namespaces, PVCs with known content and checksums.
