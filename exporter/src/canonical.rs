//! Canonical JSON for everything kiln hashes into a digest (configs, manifests, indexes): object keys sorted
//! by their bytes, no insignificant whitespace, strings and numbers as serde_json writes them.
//!
//! The sorting is done here rather than left to `serde_json::Map`, which is a BTreeMap only while no crate
//! in the build enables serde_json's `preserve_order` feature; any dependency could turn that on and silently
//! change every digest kiln produces.

use serde_json::Value;

/// The canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(v, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Writing a null, bool, number or string into a Vec cannot fail: there is no I/O and no map key to reject.
    if let Err(e) = serde_json::to_writer(&mut *out, value) {
        unreachable!("serializing a JSON scalar failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_at_every_depth_and_nothing_else_changes() {
        let mut inner = serde_json::Map::new();
        inner.insert("b".into(), Value::from(1));
        inner.insert("a".into(), Value::from("x\"\n\u{e9}"));
        let mut outer = serde_json::Map::new();
        outer.insert("z".into(), Value::Array(vec![Value::Object(inner), Value::Null]));
        outer.insert("Z".into(), Value::Bool(true));
        outer.insert("m".into(), Value::from(1.5));
        let got = String::from_utf8(to_vec(&Value::Object(outer))).expect("utf-8");
        assert_eq!(
            got,
            r#"{"Z":true,"m":1.5,"z":[{"a":"x\"\n\u00e9","b":1},null]}"#.replace("\\u00e9", "\u{e9}")
        );
    }
}
