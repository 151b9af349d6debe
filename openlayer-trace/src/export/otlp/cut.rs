//! Bounding a span's string attributes: cut at a character boundary with a marker, a JSON
//! object or list by cutting its strings so that it stays JSON.

use serde_json::Value;

use crate::util::json::push_str as push_json_str;

/// Appends an attribute's `value` to `out`, at most `max` bytes (and a marker) long: a
/// longer JSON object or list (messages, inputs, a column) has its strings cut, each
/// marked, so that it stays JSON a collector can read, when that makes it fit; anything
/// else is cut whole (see [`push_cut`]).
pub(super) fn push_attr(out: &mut String, value: &str, max: usize) {
    if value.len() > max
        && let Some(json) = cut_json_strings(value, max)
    {
        out.push_str(&json);
        return;
    }
    push_cut(out, value, max);
}

/// `value`, a JSON object or list, with its strings cut (each to at most a length cut by
/// four from `max` until the whole fits in `max` bytes, down to [`SMALLEST_CUT`]); `None`
/// when it is not JSON, or when cutting its strings cannot make it fit (checked first, in
/// one pass). Each pass writes the parsed value again, never a copy of it: at most about
/// eight passes for a 1 MiB bound.
pub(super) fn cut_json_strings(value: &str, max: usize) -> Option<String> {
    fn write_cut(v: &Value, limit: usize, out: &mut String) {
        match v {
            Value::String(s) if s.len() > limit => {
                let mut cut = String::new();
                push_cut(&mut cut, s, limit);
                push_json_str(out, &cut);
            }
            Value::String(s) => push_json_str(out, s),
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_cut(v, limit, out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                out.push('{');
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    push_json_str(out, k);
                    out.push(':');
                    write_cut(v, limit, out);
                }
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let start = value.trim_start().as_bytes().first()?;
    if *start != b'{' && *start != b'[' {
        return None;
    }
    let parsed: Value = serde_json::from_str(value).ok()?;
    let mut out = String::new();
    write_cut(&parsed, SMALLEST_CUT, &mut out);
    if out.len() > max {
        return None;
    }
    let mut limit = max;
    while limit > SMALLEST_CUT {
        let mut text = String::new();
        write_cut(&parsed, limit, &mut text);
        if text.len() <= max {
            return Some(text);
        }
        limit = (limit / 4).max(SMALLEST_CUT);
    }
    Some(out)
}

/// The shortest a string of a JSON attribute is cut to.
const SMALLEST_CUT: usize = 64;

/// Appends `value` to `out`, cut to at most `max` bytes at a character boundary and
/// marked (`…[truncated N bytes]`) when longer. The marker comes on top of the `max`
/// bytes kept, as the data stream's `field_budget` does; a value whose cut would be
/// shorter than its marker is kept whole.
pub(super) fn push_cut(out: &mut String, value: &str, max: usize) {
    let end = crate::util::text::floor_boundary(value, max);
    let removed = value.len() - end;
    if removed == 0 {
        out.push_str(value);
        return;
    }
    let marker = crate::util::text::cut_marker(removed);
    if marker.len() >= removed {
        out.push_str(value);
        return;
    }
    out.reserve(end + marker.len());
    out.push_str(&value[..end]);
    out.push_str(&marker);
}
