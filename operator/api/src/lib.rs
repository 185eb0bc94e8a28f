//! The holdfast.dev/v1alpha1 API: custom resource types shared by the controllers, the mover and the CLI. Pure data; no cluster access.
