//! OCI images: deterministic layers, image config and manifest, digests, and
//! the local blob store. No registry and no engine in here (ko's seam: the
//! builder returns an image and its digest; `registry` publishes it).

pub mod spec;
