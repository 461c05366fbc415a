//! What `bottle run` accepts as "which bottle": a locked agent name, an agent
//! pinned to a digest, or a full `<registry>/<repo>@sha256:…` reference.
//!
//! Invariants: a parsed reference that names an image always carries a
//! `sha256:` digest of 64 lowercase hex digits; tags are refused (a bottle
//! runs by digest, never by a name that can move). Pure: no I/O here; the
//! lockfile lookup for a bare agent name happens in `runner`.

use std::fmt;

pub use crate::oci::digest::is_digest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `hello`: the digest comes from `lockfiles/hello.lock.json`.
    Agent(String),
    /// `hello@sha256:…`: the repository comes from the registry setting.
    AgentDigest { agent: String, digest: String },
    /// `localhost:5000/bottle/hello@sha256:…`.
    Full {
        registry: String,
        repository: String,
        digest: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error(
        "reference is empty; expected <agent>, <agent>@sha256:<hex> or <registry>/<repo>@sha256:<hex>"
    )]
    Empty,
    #[error(
        "reference `{0}` names a tag; a bottle runs by digest: use `<agent>` (digest from its lockfile) or `…@sha256:<64 hex>`"
    )]
    Tag(String),
    #[error(
        "reference `{0}` has a bad digest; expected `sha256:` followed by 64 lowercase hex digits"
    )]
    Digest(String),
    #[error(
        "reference `{0}` has a bad name; agent and repository path components are lowercase letters, digits, `.`, `_`, `-`"
    )]
    Name(String),
    #[error(
        "reference `{0}` has a repository path but no registry host; write `<registry>/<repo>@sha256:…` (e.g. `localhost:5000/{0}`)"
    )]
    NoRegistry(String),
}

impl crate::error::Classify for ReferenceError {
    fn exit_kind(&self) -> crate::error::ExitKind {
        crate::error::ExitKind::BadInput
    }
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name, digest) = match input.split_once('@') {
            Some((n, d)) => {
                if !is_digest(d) {
                    return Err(ReferenceError::Digest(input.to_string()));
                }
                (n, Some(d.to_string()))
            }
            None => (input, None),
        };
        // A tag is a `:` in the last path component (a `:` in the first
        // component of a multi-component name is a registry port).
        let last = name.rsplit('/').next().unwrap_or(name);
        if last.contains(':') {
            return Err(ReferenceError::Tag(input.to_string()));
        }
        match name.split_once('/') {
            None => {
                if !is_component(name) {
                    return Err(ReferenceError::Name(input.to_string()));
                }
                Ok(match digest {
                    None => Reference::Agent(name.to_string()),
                    Some(digest) => Reference::AgentDigest {
                        agent: name.to_string(),
                        digest,
                    },
                })
            }
            Some((first, rest)) => {
                let Some(digest) = digest else {
                    // `registry/repo` without a digest can only mean "latest".
                    return Err(ReferenceError::Tag(input.to_string()));
                };
                if !looks_like_registry(first) {
                    return Err(ReferenceError::NoRegistry(name.to_string()));
                }
                if !is_registry(first) || !rest.split('/').all(is_component) {
                    return Err(ReferenceError::Name(input.to_string()));
                }
                Ok(Reference::Full {
                    registry: first.to_string(),
                    repository: rest.to_string(),
                    digest,
                })
            }
        }
    }

    /// The agent name when the reference is agent-based (the full form's
    /// agent is only known once the image's policy is read).
    pub fn agent(&self) -> Option<&str> {
        match self {
            Reference::Agent(a) | Reference::AgentDigest { agent: a, .. } => Some(a),
            Reference::Full { .. } => None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Agent(a) => f.write_str(a),
            Reference::AgentDigest { agent, digest } => write!(f, "{agent}@{digest}"),
            Reference::Full {
                registry,
                repository,
                digest,
            } => write!(f, "{registry}/{repository}@{digest}"),
        }
    }
}

/// Docker's rule: `localhost`, or a component with a `.` or a `:` port.
fn looks_like_registry(s: &str) -> bool {
    s == "localhost" || s.contains('.') || s.contains(':') || s.starts_with('[')
}

fn is_registry(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-:[]".contains(&c))
}

fn is_component(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn the_three_forms() {
        assert_eq!(
            Reference::parse("hello"),
            Ok(Reference::Agent("hello".into()))
        );
        assert_eq!(
            Reference::parse(&format!("hello@{D}")),
            Ok(Reference::AgentDigest {
                agent: "hello".into(),
                digest: D.into()
            })
        );
        assert_eq!(
            Reference::parse(&format!("localhost:5000/bottle/hello@{D}")),
            Ok(Reference::Full {
                registry: "localhost:5000".into(),
                repository: "bottle/hello".into(),
                digest: D.into()
            })
        );
        let r = format!("registry.example.com/hello@{D}");
        assert_eq!(Reference::parse(&r).unwrap().to_string(), r);
    }

    #[test]
    fn tags_are_refused() {
        for r in [
            "hello:latest",
            "localhost:5000/hello:v1",
            "localhost:5000/hello",
            "registry.example.com/a/b:1",
        ] {
            assert!(
                matches!(Reference::parse(r), Err(ReferenceError::Tag(_))),
                "{r}"
            );
        }
    }

    #[test]
    fn bad_digests_names_and_registries() {
        assert!(matches!(
            Reference::parse("hello@sha256:abc"),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(
            Reference::parse(&format!("hello@{}", D.to_uppercase())),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(
            Reference::parse(&format!("hello@sha512:{}", &D[7..])),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(
            Reference::parse("Hello"),
            Err(ReferenceError::Name(_))
        ));
        assert!(matches!(Reference::parse(""), Err(ReferenceError::Empty)));
        assert!(matches!(
            Reference::parse(&format!("bottle/hello@{D}")),
            Err(ReferenceError::NoRegistry(_))
        ));
        assert!(matches!(
            Reference::parse(&format!("localhost:5000/He/x@{D}")),
            Err(ReferenceError::Name(_))
        ));
    }
}
