//! JSON scanning: splitting an object's text into its keys and value texts without
//! building a tree, with a parser fallback for what the fast scan does not accept.

use std::borrow::Cow;

/// Splits a JSON object text into its keys and value texts, in order.
pub(crate) fn object_entries(json: &str) -> Vec<(String, Box<serde_json::value::RawValue>)> {
    struct Entries(Vec<(String, Box<serde_json::value::RawValue>)>);
    impl<'de> serde::Deserialize<'de> for Entries {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Entries;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Entries, A::Error> {
                    let mut v = Vec::new();
                    while let Some(e) = m.next_entry()? {
                        v.push(e);
                    }
                    Ok(Entries(v))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Entries>(json)
        .map(|e| e.0)
        .unwrap_or_default()
}

/// A key of a JSON object, borrowed from its text unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// An object's keys and value texts, in order: a few, so kept inline.
pub(super) type Entries<'a> = smallvec::SmallVec<[(Cow<'a, str>, &'a str); 8]>;

/// [`object_entries`], borrowing the keys (unless escaped) and the value texts.
pub(super) fn borrowed_entries(json: &str) -> Entries<'_> {
    // The texts are serde_json's own compact output: split by hand when that is easy,
    // else parse.
    if let Some(entries) = split_object(json) {
        return entries;
    }
    parsed_entries(json)
        .into_iter()
        .map(|(k, v)| (k, v.get()))
        .collect()
}

/// Splits a JSON object text into its keys and value texts without parsing the values;
/// `None` when a key has an escape or the text is not as expected (then it is parsed).
pub(super) fn split_object(json: &str) -> Option<Entries<'_>> {
    let b = json.as_bytes();
    let ws = |i: &mut usize| {
        while matches!(b.get(*i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            *i += 1;
        }
    };
    let mut i = 0;
    ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    ws(&mut i);
    let mut out = Entries::new();
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let start = i + 1;
            let len = b
                .get(start..)?
                .iter()
                .position(|&c| c == b'"' || c == b'\\')?;
            if b[start + len] != b'"' {
                return None;
            }
            let key = json.get(start..start + len)?;
            i = start + len + 1;
            ws(&mut i);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i += 1;
            ws(&mut i);
            let value_start = i;
            skip_value(b, &mut i)?;
            out.push((Cow::Borrowed(key), json.get(value_start..i)?));
            ws(&mut i);
            match b.get(i) {
                Some(b',') => {
                    i += 1;
                    ws(&mut i);
                }
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    ws(&mut i);
    (i == b.len()).then_some(out)
}

/// Moves past one JSON value starting at `i` (strings with their escapes, nested
/// containers, scalars); `None` when it does not end.
pub(super) fn skip_value(b: &[u8], i: &mut usize) -> Option<()> {
    let mut depth = 0usize;
    loop {
        match *b.get(*i)? {
            b'"' => {
                *i += 1;
                loop {
                    match *b.get(*i)? {
                        b'\\' => *i += 2,
                        b'"' => break,
                        _ => *i += 1,
                    }
                }
                *i += 1;
            }
            b'{' | b'[' => {
                depth += 1;
                *i += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                *i += 1;
            }
            b',' | b':' | b' ' | b'\t' | b'\n' | b'\r' if depth > 0 => *i += 1,
            _ if depth > 0 => *i += 1,
            _ => {
                // A scalar: up to the next delimiter.
                let start = *i;
                while !matches!(
                    b.get(*i),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    *i += 1;
                }
                if *i == start {
                    return None;
                }
            }
        }
        if depth == 0 {
            return Some(());
        }
    }
}

/// [`object_entries`] by parsing, borrowing the keys (unless escaped) and value texts.
pub(super) fn parsed_entries(json: &str) -> Vec<(Cow<'_, str>, &serde_json::value::RawValue)> {
    struct Entries<'a>(Vec<(Cow<'a, str>, &'a serde_json::value::RawValue)>);
    impl<'de> serde::Deserialize<'de> for Entries<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Entries<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Entries<'de>, A::Error> {
                    let mut v = Vec::with_capacity(m.size_hint().unwrap_or(4));
                    while let Some((k, raw)) = m.next_entry::<Key<'de>, _>()? {
                        v.push((k.0, raw));
                    }
                    Ok(Entries(v))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Entries<'_>>(json)
        .map(|e| e.0)
        .unwrap_or_default()
}
