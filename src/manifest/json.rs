//! Strict JSON reading for manifests, recipes and lockfiles: the error names
//! the field path and the line/column serde saw, and a value found later to be
//! invalid can be located in the text so its diagnostic carries a line too.

use serde::de::DeserializeOwned;

use super::error::ManifestError;

/// Deserialize `text` (the content of `file`) into `T`, tracking the field path.
pub fn parse<T: DeserializeOwned>(file: &str, text: &str, help: &str) -> Result<T, ManifestError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            return Err(from_serde(file, &path, &inner, help));
        }
    };
    de.end().map_err(|e| from_serde(file, "", &e, help))?;
    Ok(value)
}

/// Parse into an untyped value (for canonical hashing and schema peeking).
pub fn parse_value(file: &str, text: &str, help: &str) -> Result<serde_json::Value, ManifestError> {
    parse::<serde_json::Value>(file, text, help)
}

fn from_serde(file: &str, path: &str, e: &serde_json::Error, help: &str) -> ManifestError {
    let full = e.to_string();
    // serde_json appends " at line L column C"; we print the position ourselves.
    let problem = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    let field = if path == "." || path == "?" { "" } else { path };
    let at = (e.line() > 0).then(|| (e.line(), e.column()));
    let help = if problem.starts_with("unknown field") {
        format!("remove the field or fix its spelling; {help}")
    } else if matches!(
        e.classify(),
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof
    ) {
        format!("the file is not valid JSON; fix the syntax at that position ({help})")
    } else {
        help.to_string()
    };
    ManifestError::invalid(file, at, field, problem, help)
}

/// Position (1-based line, column) of the first occurrence of the JSON string
/// `needle` in `text`, so a semantic error on a value can point at a line.
pub fn locate(text: &str, needle: &str) -> Option<(usize, usize)> {
    let quoted = serde_json::to_string(needle).ok()?;
    let offset = text.find(&quoted)?;
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    Some((line, col))
}

/// Object keys sorted at every level: the canonical form that gets hashed
/// and written. One implementation, shared with image digests.
pub use crate::oci::digest::canonical;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: Vec<u32>,
    }

    #[test]
    fn names_field_and_position() {
        let e = parse::<T>("f.json", "{\n  \"a\": [1, \"x\"]\n}", "see README").unwrap_err();
        let d = e.diag().unwrap();
        assert_eq!(d.field, "a[1]");
        assert_eq!(d.at.unwrap().0, 2);
        let e = parse::<T>("f.json", "{\"a\": [], \"b\": 1}", "see README").unwrap_err();
        let d = e.diag().unwrap();
        assert!(d.problem.contains("unknown field `b`"), "{}", d.problem);
        assert!(d.help.starts_with("remove the field"));
        let e = parse::<T>("f.json", "{\"a\": [] ", "x").unwrap_err();
        assert!(e.to_string().starts_with("f.json:1:"), "{e}");
        assert!(parse::<T>("f.json", "{\"a\": []} x", "x").is_err());
    }

    #[test]
    fn locates_strings() {
        assert_eq!(locate("{\n  \"k\": \"v\"}", "v"), Some((2, 8)));
        assert_eq!(locate("{}", "v"), None);
    }

    #[test]
    fn canonical_sorts_keys() {
        let v: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{"d":1,"c":2}}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&canonical(&v)).unwrap(),
            r#"{"a":{"c":2,"d":1},"b":1}"#
        );
    }
}
