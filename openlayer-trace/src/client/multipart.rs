//! A `multipart/form-data` body for the presigned-URL upload: the storage's form fields
//! first, in the order given, then the file.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// A complete multipart body and its boundary.
#[derive(Debug)]
pub(crate) struct Multipart {
    pub boundary: String,
    pub body: Vec<u8>,
}

impl Multipart {
    /// The `Content-Type` header value.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }
}

/// Escapes a name for a `Content-Disposition` parameter, as browsers do.
fn escape(name: &str) -> String {
    name.replace('\r', "%0D")
        .replace('\n', "%0A")
        .replace('"', "%22")
}

/// 32 random hex digits (from the standard library's randomly keyed hasher).
pub(crate) fn random_token() -> String {
    let a = RandomState::new().build_hasher().finish();
    let mut h = RandomState::new().build_hasher();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
}

pub(crate) fn random_boundary() -> String {
    format!("------------------------{}", random_token())
}

/// Whether `needle` occurs in `haystack` (Boyer-Moore-Horspool: an upload of tens of MiB
/// is searched for its boundary in milliseconds, not in a comparison per byte).
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&last, head)) = needle.split_last() else {
        return true;
    };
    let n = needle.len();
    let mut skip = [n; 256];
    for (i, &b) in head.iter().enumerate() {
        skip[usize::from(b)] = n - 1 - i;
    }
    let mut at = 0;
    while let Some(&b) = haystack.get(at + n - 1) {
        if b == last && haystack[at..at + n - 1] == *head {
            return true;
        }
        at += skip[usize::from(b)];
    }
    false
}

/// Whether `boundary` can delimit a form with these `fields`.
pub(crate) fn fits(boundary: &str, fields: &[(String, String)]) -> bool {
    !fields
        .iter()
        .any(|(k, v)| k.contains(boundary) || v.contains(boundary))
}

/// Appends everything before the file's bytes: each of `fields` as a text part, then the
/// head of the part named `file`.
pub(crate) fn write_head(
    body: &mut Vec<u8>,
    boundary: &str,
    fields: &[(String, String)],
    file_name: &str,
    file_content_type: &str,
) {
    for (name, value) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(
            format!(
                "Content-Disposition: form-data; name=\"{}\"\r\n\r\n",
                escape(name)
            )
            .as_bytes(),
        );
        body.extend_from_slice(value.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    body.extend_from_slice(
        format!(
            "Content-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: {file_content_type}\r\n\r\n",
            escape(file_name)
        )
        .as_bytes(),
    );
}

/// Appends everything after the file's bytes.
pub(crate) fn write_tail(body: &mut Vec<u8>, boundary: &str) {
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
}

/// Builds the body: each of `fields` as a text part, then `file` as a part named `file`.
pub(crate) fn build(
    fields: &[(String, String)],
    file_name: &str,
    file_content_type: &str,
    file: &[u8],
) -> Multipart {
    let boundary = loop {
        let b = random_boundary();
        if !contains(file, b.as_bytes()) && fits(&b, fields) {
            break b;
        }
    };
    let mut body = Vec::with_capacity(file.len() + 256 * (fields.len() + 1));
    write_head(&mut body, &boundary, fields, file_name, file_content_type);
    body.extend_from_slice(file);
    write_tail(&mut body, &boundary);
    Multipart { boundary, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_first_in_order_then_the_file() {
        let fields = vec![
            ("key".to_string(), "uploads/x.csv".to_string()),
            ("policy".to_string(), "abc".to_string()),
            ("a\"b".to_string(), "v".to_string()),
        ];
        let m = build(&fields, "x.csv", "text/csv", b"a,b\n1,2\n");
        let b = &m.boundary;
        let expected = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nuploads/x.csv\r\n\
             --{b}\r\nContent-Disposition: form-data; name=\"policy\"\r\n\r\nabc\r\n\
             --{b}\r\nContent-Disposition: form-data; name=\"a%22b\"\r\n\r\nv\r\n\
             --{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.csv\"\r\nContent-Type: text/csv\r\n\r\n\
             a,b\n1,2\n\r\n--{b}--\r\n"
        );
        assert_eq!(String::from_utf8(m.body.clone()).unwrap(), expected);
        assert_eq!(
            m.content_type(),
            format!("multipart/form-data; boundary={b}")
        );
    }

    #[test]
    fn contains_finds_a_needle_wherever_it_is() {
        let naive = |h: &[u8], n: &[u8]| h.windows(n.len()).any(|w| w == n);
        let needle = random_boundary().into_bytes();
        // Bytes like the needle's (dashes, hex digits) and others, from a fixed sequence.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"-0123456789abcdef\x00\xff\r\n";
        let hay: Vec<u8> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % alphabet.len() as u64) as usize]
            })
            .collect();
        assert!(!contains(&hay, &needle));
        for at in [0, 1, 7, 5_000, hay.len() - needle.len()] {
            let mut h = hay.clone();
            h[at..at + needle.len()].copy_from_slice(&needle);
            assert!(contains(&h, &needle), "at {at}");
            // One byte off anywhere: not found.
            for off in [0, needle.len() / 2, needle.len() - 1] {
                let mut g = h.clone();
                g[at + off] ^= 1;
                assert_eq!(contains(&g, &needle), naive(&g, &needle), "at {at}+{off}");
            }
        }
        for (h, n) in [
            (&b"abc"[..], &b"abcd"[..]),
            (b"", b"a"),
            (b"aab", b"ab"),
            (b"ba", b"a"),
        ] {
            assert_eq!(contains(h, n), naive(h, n), "{h:?} {n:?}");
        }
        assert!(contains(b"x", b""));
    }

    #[test]
    fn boundaries_differ() {
        assert_ne!(random_boundary(), random_boundary());
    }
}
