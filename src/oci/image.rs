//! Image assembly: base layers (reused by digest) + built layers → OCI image
//! config and OCI image manifest, both canonical JSON, both stored in the
//! blob store. [`build`] is THE one code path that computes an image digest:
//! `lock`, `check` and any dry run all call it, so they cannot disagree.
//!
//! Invariants: `created` is the spec mtime as RFC 3339 (epoch 0 gives
//! `1970-01-01T00:00:00Z`); no `history`; the platform comes from the base
//! image (linux/amd64 for `scratch`); base layer blobs are referenced with
//! their original digests and sizes, never unpacked or recompressed.

use serde_json::{Map, Value, json};

use super::digest::{canonical_json, hex_part};
use super::layer::build_layer;
use super::spec::{Base, ConfigSpec, Digest, ImageSpec};
use super::store::BlobStore;
use super::{OciError, media};

/// OS / architecture (/ variant) of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl Platform {
    /// Parse `os/arch[/variant]`, e.g. `linux/amd64`, `linux/arm64/v8`.
    pub fn parse(s: &str) -> Result<Platform, OciError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(OciError::Unsupported {
                what: format!("platform `{s}`"),
                reason: "expected `os/arch` or `os/arch/variant`, e.g. `linux/amd64`".into(),
            }),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One layer of a built image, as the lockfile records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// `from:<i>` for base layers, else the [`super::spec::LayerSpec`] name.
    pub name: String,
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
}

/// A complete image: every blob it names is in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    /// Base layers first, then built layers, bottom to top.
    pub layers: Vec<LayerRef>,
    pub platform: Platform,
    /// How many built layers came from the layer cache (no compression).
    pub layers_from_cache: usize,
}

impl BuiltImage {
    /// The manifest's media type, from its own `mediaType` field: OCI for
    /// images this crate builds, possibly Docker's for pulled bases (a
    /// registry wants the matching Content-Type when it is pushed again).
    pub fn manifest_media_type(&self) -> String {
        serde_json::from_slice::<Value>(&self.manifest)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(Value::as_str).map(String::from))
            .unwrap_or_else(|| media::OCI_MANIFEST.to_string())
    }

    /// Reconstruct an image from its manifest in the store (for pushing an
    /// image built earlier, `bottle push`, `export`). Layer names are
    /// `layer:<i>` because the manifest does not carry spec names.
    pub fn from_store(manifest_digest: &str, store: &BlobStore) -> Result<BuiltImage, OciError> {
        let manifest = store.read(manifest_digest, "image manifest")?;
        let m = parse_manifest(&manifest, manifest_digest)?;
        let config = store.read(&m.config_digest, "image config")?;
        let c = parse_config(&config, &m.config_digest)?;
        if c.diff_ids.len() != m.layers.len() {
            return Err(OciError::Unsupported {
                what: format!("image {manifest_digest}"),
                reason: format!(
                    "manifest lists {} layers but config lists {} diff_ids",
                    m.layers.len(),
                    c.diff_ids.len()
                ),
            });
        }
        let layers = m
            .layers
            .into_iter()
            .zip(c.diff_ids)
            .enumerate()
            .map(|(i, (l, diff_id))| LayerRef {
                name: format!("layer:{i}"),
                digest: l.digest,
                diff_id,
                size: l.size,
                media_type: l.media_type,
            })
            .collect();
        Ok(BuiltImage {
            manifest_digest: manifest_digest.to_string(),
            config_digest: m.config_digest,
            manifest,
            config,
            layers,
            platform: c.platform,
            layers_from_cache: 0,
        })
    }
}

/// Most layers an image may have: Docker's layer store refuses a deeper
/// one ("max depth exceeded", `maxLayerDepth` in moby's `layer_store.go`),
/// so a deeper image could be locked and pushed but never run.
pub const MAX_LAYERS: usize = 125;

/// Build an image from its spec. Writes every new blob to the store and
/// returns the digests; nothing else (no registry, no engine).
type BaseParts = (Platform, Vec<LayerRef>, Map<String, Value>);

/// The base's platform, layers (renamed `from:<i>`, OCI media types) and
/// runtime config; every base blob must be in the store.
fn base_of(spec: &ImageSpec, store: &BlobStore) -> Result<BaseParts, OciError> {
    Ok(match &spec.base {
        Base::Scratch => (Platform::default(), Vec::new(), Map::new()),
        Base::Image {
            reference,
            manifest_digest,
        } => {
            let base = BuiltImage::from_store(manifest_digest, store).map_err(|e| match e {
                OciError::MissingBlob { digest, store, .. } => OciError::MissingBlob {
                    digest,
                    what: format!("part of base image {reference}"),
                    store,
                },
                other => other,
            })?;
            for l in &base.layers {
                if !store.has(&l.digest) {
                    return Err(OciError::MissingBlob {
                        digest: l.digest.clone(),
                        what: format!("a layer of base image {reference}"),
                        store: store.root().to_path_buf(),
                    });
                }
            }
            let cfg = parse_config(&base.config, &base.config_digest)?;
            let layers = base
                .layers
                .into_iter()
                .enumerate()
                .map(|(i, l)| LayerRef {
                    name: format!("from:{i}"),
                    media_type: oci_layer_type(&l.media_type),
                    ..l
                })
                .collect();
            (cfg.platform, layers, cfg.runtime)
        }
    })
}

pub fn build(spec: &ImageSpec, store: &BlobStore) -> Result<BuiltImage, OciError> {
    let (platform, base_layers, base_config) = base_of(spec, store)?;

    if base_layers.len() + spec.layers.len() > MAX_LAYERS {
        return Err(OciError::Unsupported {
            what: "the image".into(),
            reason: format!(
                "it would have {} layers ({} from the base image, {} built); the engine runs \
                 no image deeper than {MAX_LAYERS} layers: list fewer skills or use a base \
                 image with fewer layers",
                base_layers.len() + spec.layers.len(),
                base_layers.len(),
                spec.layers.len()
            ),
        });
    }
    let mut layers = base_layers;
    let mut from_cache = 0;
    for l in build_layers(spec, store)? {
        from_cache += usize::from(l.from_cache);
        layers.push(LayerRef {
            name: l.name,
            digest: l.digest,
            diff_id: l.diff_id,
            size: l.size,
            media_type: l.media_type,
        });
    }

    let mut config = Map::new();
    config.insert("architecture".into(), json!(platform.architecture));
    config.insert("os".into(), json!(platform.os));
    if let Some(v) = &platform.variant {
        config.insert("variant".into(), json!(v));
    }
    config.insert("created".into(), json!(rfc3339(spec.mtime)));
    config.insert(
        "config".into(),
        Value::Object(runtime_config(&base_config, &spec.config)),
    );
    config.insert(
        "rootfs".into(),
        json!({
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        }),
    );
    let config = canonical_json(&Value::Object(config));
    let config_digest = store.put(&config)?;

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {
            "mediaType": media::OCI_CONFIG,
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": l.digest,
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = canonical_json(&manifest);
    let manifest_digest = store.put(&manifest)?;

    Ok(BuiltImage {
        manifest_digest,
        config_digest,
        manifest,
        config,
        layers,
        platform,
        layers_from_cache: from_cache,
    })
}

/// Build every layer of the spec, several at a time (one per core), and
/// return them in spec order. Each layer's bytes depend only on its own
/// spec, so the order of work cannot change any digest; on failure the
/// first failing layer in spec order is reported.
fn build_layers(spec: &ImageSpec, store: &BlobStore) -> Result<Vec<super::Layer>, OciError> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let n = spec.layers.len();
    let workers = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(1)
        .min(n);
    if workers <= 1 {
        return spec
            .layers
            .iter()
            .map(|ls| build_layer(ls, spec.mtime, store))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<super::Layer, OciError>>>> =
        Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(ls) = spec.layers.get(i) else { break };
                    let r = build_layer(ls, spec.mtime, store);
                    let failed = r.is_err();
                    if let Ok(mut slots) = results.lock() {
                        slots[i] = Some(r);
                    }
                    if failed {
                        // Let the others finish their current layer; take no more.
                        next.store(n, Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    let slots = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::with_capacity(n);
    for (i, slot) in slots.into_iter().enumerate() {
        match slot {
            Some(r) => out.push(r?),
            // Only skipped after an earlier-started layer failed; report that.
            None => {
                return Err(OciError::Unsupported {
                    what: format!("layer `{}`", spec.layers[i].name),
                    reason: "not built because another layer failed".into(),
                });
            }
        }
    }
    Ok(out)
}

/// Docker's gzip layer type names the same bytes as OCI's; an OCI manifest
/// should use the OCI name.
fn oci_layer_type(t: &str) -> String {
    if t == media::DOCKER_LAYER_GZIP {
        media::OCI_LAYER_GZIP.to_string()
    } else {
        t.to_string()
    }
}

/// The image's runtime `config`: the base's, with every non-empty field of
/// the spec overriding it; env entries replace the base's by name; labels
/// merge with the spec winning.
fn runtime_config(base: &Map<String, Value>, spec: &ConfigSpec) -> Map<String, Value> {
    let mut c = base.clone();
    let mut set_str = |key: &str, v: &str| {
        if !v.is_empty() {
            c.insert(key.into(), json!(v));
        }
    };
    set_str("User", &spec.user);
    set_str("WorkingDir", &spec.working_dir);
    if !spec.entrypoint.is_empty() {
        c.insert("Entrypoint".into(), json!(spec.entrypoint));
    }
    if !spec.cmd.is_empty() {
        c.insert("Cmd".into(), json!(spec.cmd));
    }
    let mut env: Vec<String> = c
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for e in &spec.env {
        let key = e.split('=').next().unwrap_or(e);
        match env.iter_mut().find(|x| x.split('=').next() == Some(key)) {
            Some(slot) => *slot = e.clone(),
            None => env.push(e.clone()),
        }
    }
    if !env.is_empty() {
        c.insert("Env".into(), json!(env));
    }
    let mut labels = c
        .get("Labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in &spec.labels {
        labels.insert(k.clone(), json!(v));
    }
    if !labels.is_empty() {
        c.insert("Labels".into(), Value::Object(labels));
    }
    c
}

/// RFC 3339 UTC timestamp of seconds since the epoch (days-from-civil
/// inverse, Howard Hinnant's algorithm), without a clock or TZ lookup.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

pub(crate) struct ParsedManifest {
    pub config_digest: Digest,
    pub layers: Vec<ParsedDescriptor>,
}

pub(crate) struct ParsedDescriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

fn bad_shape(what: String, reason: &str) -> OciError {
    OciError::Unsupported {
        what,
        reason: reason.to_string(),
    }
}

fn descriptor(v: &Value, what: &str) -> Result<ParsedDescriptor, OciError> {
    let digest = v
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_shape(what.to_string(), "a descriptor has no `digest`"))?;
    hex_part(digest)?;
    Ok(ParsedDescriptor {
        media_type: v
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or(media::OCI_LAYER_GZIP)
            .to_string(),
        digest: digest.to_string(),
        size: v
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad_shape(what.to_string(), "a descriptor has no `size`"))?,
    })
}

/// Parse an image manifest (OCI or Docker v2 schema 2). Image indexes are
/// refused here: the registry module resolves them to one platform first.
pub(crate) fn parse_manifest(bytes: &[u8], digest: &str) -> Result<ParsedManifest, OciError> {
    let what = format!("image manifest {digest}");
    let v: Value = serde_json::from_slice(bytes).map_err(|e| OciError::Json {
        what: what.clone(),
        source: e,
    })?;
    let mt = v.get("mediaType").and_then(Value::as_str).unwrap_or("");
    if mt == media::OCI_INDEX || mt == media::DOCKER_MANIFEST_LIST || v.get("manifests").is_some() {
        return Err(bad_shape(
            what,
            "is an image index, not a manifest; pin the platform's manifest digest instead",
        ));
    }
    let config = v
        .get("config")
        .ok_or_else(|| bad_shape(what.clone(), "has no `config`"))?;
    let config = descriptor(config, &what)?;
    let layers = v
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_shape(what.clone(), "has no `layers` array"))?
        .iter()
        .map(|l| descriptor(l, &what))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParsedManifest {
        config_digest: config.digest,
        layers,
    })
}

struct ParsedConfig {
    platform: Platform,
    diff_ids: Vec<Digest>,
    runtime: Map<String, Value>,
}

fn parse_config(bytes: &[u8], digest: &str) -> Result<ParsedConfig, OciError> {
    let what = format!("image config {digest}");
    let v: Value = serde_json::from_slice(bytes).map_err(|e| OciError::Json {
        what: what.clone(),
        source: e,
    })?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    let platform = Platform {
        os: s("os").ok_or_else(|| bad_shape(what.clone(), "has no `os`"))?,
        architecture: s("architecture")
            .ok_or_else(|| bad_shape(what.clone(), "has no `architecture`"))?,
        variant: s("variant"),
    };
    let diff_ids = v
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_shape(what.clone(), "has no `rootfs.diff_ids`"))?
        .iter()
        .map(|d| d.as_str().map(String::from))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad_shape(what.clone(), "`rootfs.diff_ids` holds a non-string"))?;
    let runtime = v
        .get("config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    Ok(ParsedConfig {
        platform,
        diff_ids,
        runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::spec::{Entry, EntryKind, FileSource, LayerSpec};

    #[test]
    fn an_image_deeper_than_the_engine_runs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let layer = |i: usize| LayerSpec {
            name: format!("l{i}"),
            entries: vec![Entry {
                path: format!("etc/l{i}"),
                mode: 0o644,
                uid: 0,
                gid: 0,
                kind: EntryKind::File(FileSource::Bytes(Vec::new())),
            }],
        };
        let mut spec = spec_with(b"x");
        spec.layers = (0..MAX_LAYERS).map(layer).collect();
        assert_eq!(build(&spec, &store).unwrap().layers.len(), MAX_LAYERS);
        spec.layers.push(layer(MAX_LAYERS));
        let e = build(&spec, &store).unwrap_err();
        assert_eq!(
            crate::error::Classify::exit_kind(&e),
            crate::error::ExitKind::BadInput
        );
        assert!(
            e.to_string()
                .contains("126 layers (0 from the base image, 126 built)"),
            "{e}"
        );
    }

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    fn spec_with(content: &[u8]) -> ImageSpec {
        ImageSpec {
            base: Base::Scratch,
            layers: vec![
                LayerSpec {
                    name: "one".into(),
                    entries: vec![Entry {
                        path: "etc/a".into(),
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        kind: EntryKind::File(FileSource::Bytes(b"a".to_vec())),
                    }],
                },
                LayerSpec {
                    name: "two".into(),
                    entries: vec![Entry {
                        path: "etc/b".into(),
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        kind: EntryKind::File(FileSource::Bytes(content.to_vec())),
                    }],
                },
            ],
            config: ConfigSpec {
                user: "1000".into(),
                env: vec!["PATH=/bin".into()],
                cmd: vec!["sh".into()],
                ..ConfigSpec::default()
            },
            mtime: 0,
        }
    }

    #[test]
    fn config_and_manifest_are_canonical() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let img = build(&spec_with(b"b"), &store).unwrap();
        let cfg: Value = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(canonical_json(&cfg), img.config);
        assert_eq!(cfg["created"], "1970-01-01T00:00:00Z");
        assert_eq!(cfg["architecture"], "amd64");
        assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        let man: Value = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(canonical_json(&man), img.manifest);
        assert_eq!(man["config"]["digest"], img.config_digest.as_str());
        assert_eq!(
            BuiltImage::from_store(&img.manifest_digest, &store)
                .unwrap()
                .config,
            img.config
        );
    }

    #[test]
    fn parallel_layer_builds_report_the_first_failing_layer() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut s = spec_with(b"b");
        let mut bad = s.layers[0].clone();
        bad.name = "bad".into();
        bad.entries[0].path = "/abs".into();
        s.layers.insert(1, bad);
        for i in 0..4 {
            let mut extra = s.layers[0].clone();
            extra.name = format!("extra{i}");
            s.layers.push(extra);
        }
        let err = build(&s, &store).unwrap_err();
        assert!(
            matches!(&err, OciError::InvalidPath { layer, .. } if layer == "bad"),
            "{err}"
        );
        // Same layers, same order, same digest, however the work was split.
        let ok = spec_with(b"b");
        let a = build(&ok, &store).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        let b = build(&ok, &BlobStore::open(dir2.path()).unwrap()).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
    }

    #[test]
    fn one_byte_changes_exactly_one_layer() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let a = build(&spec_with(b"b"), &store).unwrap();
        let b = build(&spec_with(b"c"), &store).unwrap();
        assert_ne!(a.manifest_digest, b.manifest_digest);
        assert_eq!(a.layers[0], b.layers[0]);
        assert_ne!(a.layers[1].digest, b.layers[1].digest);
    }

    #[test]
    fn base_layers_are_reused_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let base = build(&spec_with(b"b"), &store).unwrap();
        let mut s = spec_with(b"x");
        s.base = Base::Image {
            reference: "test/base".into(),
            manifest_digest: base.manifest_digest.clone(),
        };
        s.layers.truncate(1);
        s.config = ConfigSpec {
            env: vec!["PATH=/usr/bin".into(), "A=1".into()],
            ..ConfigSpec::default()
        };
        let img = build(&s, &store).unwrap();
        assert_eq!(img.layers.len(), 3);
        assert_eq!(img.layers[0].digest, base.layers[0].digest);
        assert_eq!(img.layers[1].digest, base.layers[1].digest);
        assert_eq!(img.layers[0].name, "from:0");
        let cfg: Value = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(cfg["config"]["Env"], json!(["PATH=/usr/bin", "A=1"]));
        assert_eq!(cfg["config"]["User"], "1000");
    }
}
