//! The builtin sidecar image (placeholder until the `oci` builder lands).
