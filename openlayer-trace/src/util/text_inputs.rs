//! Step inputs kept as text and encoded to JSON later, off the application's thread.
//!
//! A web request's inputs are a few short strings (the method, the path, some headers).
//! Writing them as JSON on the request's thread costs more than the rest of its step:
//! every key and value is checked for characters to escape, and the object's structure
//! is built as it goes. Here they are copied as they are, each behind its length, and the
//! worker that encodes the trace turns them into the same JSON object.
//!
//! The form, all of it valid UTF-8 (so it lives in the trace's text next to JSON texts):
//! [`MARK`] first (no JSON text starts with a control character), then the entries:
//!
//! - `s<key len>:<key><value len>:<value>`: a string field;
//! - `j<key len>:<key><value len>:<value>`: a field whose value is a JSON text;
//! - `o<key len>:<key>` ... `e`: a field whose value is an object of the entries between.
//!
//! Lengths are in bytes, in decimal.

/// The first character of inputs kept as text.
pub(crate) const MARK: char = '\u{1}';

/// Whether a step's inputs text is in this form (not JSON yet).
#[inline]
pub(crate) fn is_text_inputs(text: &str) -> bool {
    text.as_bytes().first() == Some(&(MARK as u8))
}

/// Most bytes a length and its colon take.
const LEN_MAX: usize = 21;

/// Writes `n` in decimal and a colon at `dst`; returns the bytes written.
///
/// # Safety
///
/// `dst` writable for [`LEN_MAX`] bytes.
#[inline(always)]
unsafe fn put_len(dst: *mut u8, n: usize) -> usize {
    // SAFETY: at most `LEN_MAX` bytes are written, as the caller allows.
    unsafe {
        if n < 10 {
            dst.write(b'0' + n as u8);
            dst.add(1).write(b':');
            2
        } else if n < 100 {
            dst.write(b'0' + (n / 10) as u8);
            dst.add(1).write(b'0' + (n % 10) as u8);
            dst.add(2).write(b':');
            3
        } else {
            let mut digits = [0u8; 20];
            let mut i = digits.len();
            let mut m = n;
            while m > 0 {
                i -= 1;
                digits[i] = b'0' + (m % 10) as u8;
                m /= 10;
            }
            let len = digits.len() - i;
            std::ptr::copy_nonoverlapping(digits.as_ptr().add(i), dst, len);
            dst.add(len).write(b':');
            len + 1
        }
    }
}

/// Appends an entry: its tag, its key and (for a field, not an object) its value, each
/// behind its length. One reservation and plain stores: this runs on the application's
/// thread, for every input of a web request.
#[inline]
pub(crate) fn push_entry(out: &mut String, tag: u8, key: &str, value: Option<&str>) {
    debug_assert!(tag.is_ascii(), "entry tags are ASCII letters");
    let (k, v) = (key.as_bytes(), value.map(str::as_bytes));
    // Checked: on a 32-bit target a key and a value can together come near the address
    // space, and a wrapped sum would reserve too little for the stores below. Such an
    // entry is left out (a traced path never panics).
    let Some(need) = (1 + 2 * LEN_MAX)
        .checked_add(k.len())
        .and_then(|n| n.checked_add(v.map_or(0, <[u8]>::len)))
        .filter(|n| isize::try_from(*n).is_ok())
    else {
        return;
    };
    // SAFETY: what is appended is ASCII (the tag, digits, colons) and whole UTF-8 strings
    // (`key` and `value`), so the string stays valid UTF-8.
    let out = unsafe { out.as_mut_vec() };
    out.reserve(need);
    // SAFETY: `reserve` made room for `need` more bytes, which bounds what is written
    // below (a tag, at most two lengths of `LEN_MAX` bytes, the key and the value); every
    // byte up to the new length is written before it is set; the sources do not overlap
    // `out` (borrowed mutably).
    unsafe {
        let base = out.as_mut_ptr().add(out.len());
        let mut at = 0;
        base.write(tag);
        at += 1;
        at += put_len(base.add(at), k.len());
        crate::util::json::copy_short(k.as_ptr(), base.add(at), k.len());
        at += k.len();
        if let Some(v) = v {
            at += put_len(base.add(at), v.len());
            crate::util::json::copy_short(v.as_ptr(), base.add(at), v.len());
            at += v.len();
        }
        out.set_len(out.len() + at);
    }
}

/// The JSON object that `text` (in this form, [`MARK`] first) stands for; `None` if it is
/// not well formed (never, for a text written by the writer).
#[cfg(any(test, feature = "otlp"))]
pub(crate) fn to_json(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 16);
    write_json(text, &mut out).then_some(out)
}

/// Appends the JSON object that `text` stands for to `out`; false (and `out` as it was)
/// if `text` is not well formed.
pub(crate) fn write_json(text: &str, out: &mut String) -> bool {
    write_json_fields(text, out, None)
}

/// A top-level field of the object, as written to the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field<'t> {
    /// The key, not escaped.
    pub key: &'t str,
    /// Where the key is in the output, as a JSON string (quoted and escaped).
    pub quoted_key: std::ops::Range<usize>,
    /// Where the value's JSON text is in the output.
    pub value: std::ops::Range<usize>,
}

/// The top-level fields of one object: a few, so kept inline.
pub(crate) type Fields<'t> = smallvec::SmallVec<[Field<'t>; 8]>;

/// Like [`write_json`], and also lists the object's top-level fields in `fields` (when
/// given), so that the row's columns need not parse the JSON again.
pub(crate) fn write_json_fields<'t>(
    text: &'t str,
    out: &mut String,
    mut fields: Option<&mut Fields<'t>>,
) -> bool {
    let mark = out.len();
    let listed = fields.as_ref().map_or(0, |f| f.len());
    if append_json(text, out, fields.as_deref_mut()).is_none() {
        out.truncate(mark);
        if let Some(f) = fields {
            f.truncate(listed);
        }
        return false;
    }
    true
}

fn append_json<'t>(
    text: &'t str,
    out: &mut String,
    mut fields: Option<&mut Fields<'t>>,
) -> Option<()> {
    use crate::util::json::push_str;
    let b = text.as_bytes();
    if b.first() != Some(&(MARK as u8)) {
        return None;
    }
    out.reserve(text.len() + 16);
    out.push('{');
    let (mut at, mut depth, mut first) = (1, 0usize, true);
    // The top-level field being written: its key, where its quoted key is, and where its
    // value starts.
    let mut top: Option<(&'t str, std::ops::Range<usize>, usize)> = None;
    while let Some(&tag) = b.get(at) {
        at += 1;
        if tag == b'e' {
            depth = depth.checked_sub(1)?;
            out.push('}');
            first = false;
        } else {
            if !first {
                out.push(',');
            }
            let key = part(text, &mut at)?;
            let key_at = out.len();
            push_str(out, key);
            let quoted_key = key_at..out.len();
            out.push(':');
            if depth == 0 {
                top = Some((key, quoted_key, out.len()));
            }
            match tag {
                b's' => push_str(out, part(text, &mut at)?),
                b'j' => out.push_str(part(text, &mut at)?),
                b'o' => {
                    depth += 1;
                    out.push('{');
                }
                _ => return None,
            }
            first = tag == b'o';
        }
        if depth == 0
            && let Some((key, quoted_key, start)) = top.take()
            && let Some(f) = fields.as_deref_mut()
        {
            f.push(Field {
                key,
                quoted_key,
                value: start..out.len(),
            });
        }
    }
    if depth != 0 {
        return None;
    }
    out.push('}');
    Some(())
}

/// The part `<len>:<part>` at `*at` in `text`; moves `*at` past it.
#[inline]
fn part<'a>(text: &'a str, at: &mut usize) -> Option<&'a str> {
    let b = text.as_bytes();
    let mut len = 0usize;
    let mut i = *at;
    loop {
        match *b.get(i)? {
            c @ b'0'..=b'9' => {
                len = len.checked_mul(10)?.checked_add(usize::from(c - b'0'))?;
                i += 1;
            }
            b':' if i > *at => break,
            _ => return None,
        }
    }
    let start = i + 1;
    let end = start.checked_add(len)?;
    // Past the end, or inside a character: not written by the writer.
    let s = text.get(start..end)?;
    *at = end;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(entries: impl FnOnce(&mut String)) -> String {
        let mut s = String::from(MARK);
        entries(&mut s);
        s
    }

    #[test]
    fn strings_objects_and_json_become_the_same_object_serde_json_writes() {
        let long = "x".repeat(1234);
        let t = text(|s| {
            push_entry(s, b's', "method", Some("GET"));
            push_entry(s, b'o', "headers", None);
            push_entry(
                s,
                b's',
                "user-agent",
                Some("quote \" backslash \\ newline \n é"),
            );
            push_entry(s, b's', "x-long", Some(&long));
            s.push('e');
            push_entry(s, b'j', "body", Some(r#"{"a":[1,2]}"#));
            push_entry(s, b's', "key with \"quote\"", Some(""));
        });
        assert!(is_text_inputs(&t));
        let json = to_json(&t).expect("well formed");
        let expected = serde_json::json!({
            "method": "GET",
            "headers": {"user-agent": "quote \" backslash \\ newline \n é", "x-long": long},
            "body": {"a": [1, 2]},
            "key with \"quote\"": "",
        });
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed, expected);
        // Fields keep their order.
        assert!(json.starts_with(r#"{"method":"GET","headers":{"user-agent":"#));
    }

    #[test]
    fn every_length_round_trips() {
        for n in [0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 12_345, 100_000] {
            let key = "k".repeat(n % 130);
            let value = "é".repeat(n / 2) + &"v".repeat(n % 2);
            let t = text(|s| push_entry(s, b's', &key, Some(&value)));
            let parsed: serde_json::Value = serde_json::from_str(&to_json(&t).unwrap()).unwrap();
            assert_eq!(parsed, serde_json::json!({ key: value }), "length {n}");
        }
    }

    #[test]
    fn top_level_fields_are_listed_with_their_values() {
        let t = text(|s| {
            push_entry(s, b's', "method", Some("GET"));
            push_entry(s, b'o', "headers", None);
            push_entry(s, b's', "a", Some("1"));
            push_entry(s, b'o', "inner", None);
            push_entry(s, b's', "b", Some("q\""));
            s.push('e');
            s.push('e');
            push_entry(s, b'j', "body", Some("[1,2]"));
            push_entry(s, b's', "k\"ey", Some(""));
        });
        let mut out = String::from("prefix");
        let mut fields = Fields::new();
        assert!(write_json_fields(&t, &mut out, Some(&mut fields)));
        let got: Vec<(&str, &str, &str)> = fields
            .iter()
            .map(|f| (f.key, &out[f.quoted_key.clone()], &out[f.value.clone()]))
            .collect();
        assert_eq!(
            got,
            [
                ("method", r#""method""#, r#""GET""#),
                (
                    "headers",
                    r#""headers""#,
                    r#"{"a":"1","inner":{"b":"q\""}}"#
                ),
                ("body", r#""body""#, "[1,2]"),
                ("k\"ey", r#""k\"ey""#, r#""""#),
            ]
        );
        // A malformed text leaves both as they were.
        let mut fields: Fields<'_> = smallvec::smallvec![Field {
            key: "x",
            quoted_key: 0..0,
            value: 0..0
        }];
        assert!(!write_json_fields("\u{1}s1:a", &mut out, Some(&mut fields)));
        assert_eq!(fields.len(), 1);
        assert!(out.ends_with('}') && out.starts_with("prefix{"));
    }

    #[test]
    fn malformed_texts_are_refused_not_misread() {
        for bad in [
            "{}",
            "\u{1}s3:abc",
            "\u{1}s3:abc9:x",
            "\u{1}o1:a",
            "\u{1}e",
            "\u{1}q1:a1:b",
            "\u{1}sx:a1:b",
            "\u{1}s:a1:b",
            "\u{1}s99999999999999999999999:a",
            "\u{1}s1:é1:b",
        ] {
            assert_eq!(to_json(bad), None, "{bad:?}");
        }
        assert_eq!(to_json("\u{1}").as_deref(), Some("{}"));
        assert!(!is_text_inputs(r#"{"a":1}"#));
    }
}
