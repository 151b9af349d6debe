//! Cutting text to a number of bytes, at a character boundary, and the marker of a cut.

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

/// The marker that replaces the end of a cut string, `removed` bytes long.
pub(crate) fn cut_marker(removed: usize) -> String {
    format!("…[truncated {removed} bytes]")
}

#[cfg(test)]
mod tests {
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
