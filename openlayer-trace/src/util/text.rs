//! Cutting text to a number of bytes, at a character boundary, and the marker of a cut;
//! URLs as errors may show them.

/// The largest index at most `max` that is a character boundary of `s` (`s.len()` when
/// `s` is no longer than `max`).
pub(crate) fn floor_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// A URL as an error may show it: without its query or fragment (a token there) and
/// without a user or password (`scheme://…@host`).
pub(crate) fn shown_url(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or(url);
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => format!("…@{}", &rest[at + 1..]),
        None => rest.to_string(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest,
    }
}

/// The marker that replaces the end of a cut string, `removed` bytes long.
pub(crate) fn cut_marker(removed: usize) -> String {
    format!("…[truncated {removed} bytes]")
}

#[cfg(test)]
mod tests {

    #[test]
    fn urls_are_shown_without_query_fragment_or_user() {
        assert_eq!(
            super::shown_url("https://u:p@otlp.example:4318/v1/traces?api_key=x#f"),
            "https://…@otlp.example:4318/v1/traces"
        );
        assert_eq!(
            super::shown_url("otlp.example/v1?token=t"),
            "otlp.example/v1"
        );
        assert_eq!(super::shown_url("user@host/path@x"), "…@host/path@x");
        assert_eq!(super::shown_url("http://h/a@b"), "http://h/a@b");
    }
    use super::*;

    #[test]
    fn cuts_fall_back_to_a_character_boundary() {
        assert_eq!(floor_boundary("abc", 5), 3);
        assert_eq!(floor_boundary("abc", 2), 2);
        // "€" takes bytes 2..5.
        assert_eq!(floor_boundary("ab€cd", 4), 2);
        assert_eq!(floor_boundary("ab€cd", 5), 5);
        assert_eq!(floor_boundary("€", 0), 0);
        assert_eq!(cut_marker(3), "…[truncated 3 bytes]");
    }
}
