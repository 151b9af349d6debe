//! Recording values as JSON on the application's thread: a `serde` serializer whose output
//! is byte for byte that of `serde_json`'s compact serializer, with a faster path for the
//! common case of strings that need no escaping.
//!
//! `serde_json` checks a string for characters to escape one byte at a time, which made
//! escaping the largest single cost of a traced call (arguments and outputs are mostly
//! strings). Here a string is checked 16 bytes at a time (SSE2 on x86-64, else eight with
//! word arithmetic) and, when nothing needs escaping, copied whole; any string that does
//! need escaping, and every number, key and other primitive, is written by `serde_json`
//! itself, so the output does not differ. (One exception, on purpose: a `Serialize` impl
//! that announces an empty sequence or map and then adds elements gets them written as
//! JSON, where `serde_json` writes `[],1]`.)

use serde::ser::{self, Impossible, Serialize, SerializeMap as _};
use serde_json::Error;

/// Appends the compact JSON of `value` to `out`. On error, what was written is left in
/// `out` (the caller truncates). A `Serialize` implementation that panics is an error
/// too (see [`unpanicked`]).
#[inline]
pub(crate) fn to_vec<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Error> {
    unpanicked(
        || value.serialize(Ser { out }),
        || ser::Error::custom("the value's Serialize implementation panicked"),
    )
}

/// Runs `serialize`, a value's (the application's) `Serialize` implementation: should it
/// panic, the panic stops here (see [`caught`](crate::util::panic::caught)) and
/// `panicked()` is returned, so that the value is recorded as `null` (or left out) and
/// the traced code goes on as if untraced. Nothing `serialize` holds is used after, but
/// what it wrote is (whole UTF-8 pieces only, cut off by the caller).
#[inline]
pub(crate) fn unpanicked<R, E>(
    serialize: impl FnOnce() -> Result<R, E>,
    panicked: impl FnOnce() -> E,
) -> Result<R, E> {
    match crate::util::panic::caught(serialize) {
        Some(r) => r,
        None => {
            crate::util::diag::warn_limited!(
                "a traced value's Serialize implementation panicked; recorded as null"
            );
            Err(panicked())
        }
    }
}

/// The JSON text `s` with every `\u` escape of a lone surrogate (one not part of a pair)
/// replaced by `\ufffd`; `None` when it has none. JSON text recorded as it came (a
/// client's body) may hold one, and serde_json refuses it in a string it decodes.
pub(crate) fn replace_lone_surrogates(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let hex = |i: usize| -> Option<u16> {
        let h = std::str::from_utf8(b.get(i..i + 4)?).ok()?;
        u16::from_str_radix(h, 16).ok()
    };
    let (high, low) = (0xD800..0xDC00, 0xDC00..0xE000);
    let mut out: Option<String> = None;
    let (mut copied, mut i, mut in_string) = (0, 0, false);
    while i < b.len() {
        match b[i] {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => {
                let Some(u) = (b.get(i + 1) == Some(&b'u')).then(|| hex(i + 2)).flatten() else {
                    // Any other escape: the character after the backslash is ASCII.
                    i += 2;
                    continue;
                };
                if high.contains(&u)
                    && b.get(i + 6) == Some(&b'\\')
                    && b.get(i + 7) == Some(&b'u')
                    && hex(i + 8).is_some_and(|l| low.contains(&l))
                {
                    i += 12;
                    continue;
                }
                if high.contains(&u) || low.contains(&u) {
                    let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
                    o.push_str(&s[copied..i]);
                    o.push_str("\\ufffd");
                    copied = i + 6;
                }
                i += 6;
            }
            _ => i += 1,
        }
    }
    out.map(|mut o| {
        o.push_str(&s[copied..]);
        o
    })
}

/// The JSON text `s` with every number beyond `f64`'s range (`1e400`, a 400-digit
/// integer) written `null`, as the SDK writes an infinity; `None` when it has none. JSON
/// text recorded as it came (a client's body) may hold one: serde_json's parser refuses
/// it, and the platform would read it as an infinity.
pub(crate) fn replace_huge_numbers(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out: Option<String> = None;
    let (mut copied, mut i, mut in_string) = (0, 0, false);
    while i < b.len() {
        match b[i] {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => i += 2,
            b'-' | b'0'..=b'9' if !in_string => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                // Without an exponent, only one of more than 300 digits can be out of
                // range: other numbers are not parsed.
                let token = &s[start..i];
                if (token.len() > 300 || token.contains(['e', 'E']))
                    && token.parse::<f64>().is_ok_and(f64::is_infinite)
                {
                    let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
                    o.push_str(&s[copied..start]);
                    o.push_str("null");
                    copied = i;
                }
            }
            _ => i += 1,
        }
    }
    out.map(|mut o| {
        o.push_str(&s[copied..]);
        o
    })
}

/// JSON text recorded as it came, made what serde_json and the platform read: lone
/// surrogate escapes replaced (see [`replace_lone_surrogates`]) and numbers beyond `f64`
/// written `null` (see [`replace_huge_numbers`]).
pub(crate) fn sanitized_raw(s: &str) -> std::borrow::Cow<'_, str> {
    let numbers = replace_huge_numbers(s);
    let text = numbers.as_deref().unwrap_or(s);
    match (replace_lone_surrogates(text), numbers) {
        (Some(fixed), _) => std::borrow::Cow::Owned(fixed),
        (None, Some(n)) => std::borrow::Cow::Owned(n),
        (None, None) => std::borrow::Cow::Borrowed(s),
    }
}

/// Whether the JSON text `s` nests arrays and objects more than `max` levels deep
/// (brackets inside strings do not count). Parsing recurses once per level: a text read
/// from a file is checked first, so that a damaged or hostile line is an error, not a
/// stack overflow.
pub(crate) fn nests_deeper_than(s: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in s {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Appends `s` as a JSON string.
#[inline]
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        // `serde_json` escapes exactly as it would on its own; writing to a `Vec` cannot fail.
        let _ = serde::Serializer::serialize_str(&mut serde_json::Serializer::new(out), s);
    } else {
        push_quoted(out, s.as_bytes());
    }
}

/// Appends `b` between quotes. A short string (most keys and many values) is copied with a
/// few word moves rather than a call to `memcpy`, which costs more than the copy itself.
#[inline]
fn push_quoted(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    out.reserve(n + 2);
    let len = out.len();
    // SAFETY: `reserve` made room for `n + 2` more bytes after `len`; every byte up to
    // `len + n + 2` is written before the length is set; `b` and `out` do not overlap
    // (`out` is borrowed mutably).
    unsafe {
        let dst = out.as_mut_ptr().add(len);
        dst.write(b'"');
        copy_short(b.as_ptr(), dst.add(1), n);
        dst.add(1 + n).write(b'"');
        out.set_len(len + n + 2);
    }
}

/// Copies `n` bytes from `src` to `dst` (not overlapping): up to 16 bytes with two
/// overlapping unaligned moves of a word (or of half a word, or bytes one by one), more
/// with `copy_nonoverlapping`.
///
/// # Safety
///
/// `src` readable and `dst` writable for `n` bytes, not overlapping.
#[inline(always)]
pub(crate) unsafe fn copy_short(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY (all branches): every read is within `src[..n]` and every write within
    // `dst[..n]`, as the caller guarantees; unaligned accesses are explicit.
    unsafe {
        if n >= 8 {
            if n > 16 {
                std::ptr::copy_nonoverlapping(src, dst, n);
                return;
            }
            let head = src.cast::<u64>().read_unaligned();
            let tail = src.add(n - 8).cast::<u64>().read_unaligned();
            dst.cast::<u64>().write_unaligned(head);
            dst.add(n - 8).cast::<u64>().write_unaligned(tail);
        } else if n >= 4 {
            let head = src.cast::<u32>().read_unaligned();
            let tail = src.add(n - 4).cast::<u32>().read_unaligned();
            dst.cast::<u32>().write_unaligned(head);
            dst.add(n - 4).cast::<u32>().write_unaligned(tail);
        } else {
            for i in 0..n {
                dst.add(i).write(src.add(i).read());
            }
        }
    }
}

/// Appends `s` to `out` as a JSON string, exactly as `serde_json` writes it.
#[inline]
pub(crate) fn push_str(out: &mut String, s: &str) {
    // SAFETY: what is appended is valid UTF-8: quotes around `s` itself, or `serde_json`'s
    // escaping of it.
    write_str(unsafe { out.as_mut_vec() }, s)
}

/// Whether a string has a byte that JSON escapes: `"`, `\` or a control character.
/// Eight bytes at a time; the last word overlaps the one before it, and a string shorter
/// than a word is padded with a byte that needs no escaping.
#[inline]
fn needs_escape(b: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if b.len() >= 16 {
        return sse2::needs_escape(b);
    }
    needs_escape_words(b)
}

/// [`needs_escape`] eight bytes at a time.
#[inline]
fn needs_escape_words(b: &[u8]) -> bool {
    let n = b.len();
    if n < 8 {
        // Two overlapping halves (a byte checked twice is checked alike), or bytes one by
        // one in a word of `a`s: no variable-length copy, which would call `memcpy`.
        if n >= 4 {
            let half = |i: usize| {
                let mut h = [0; 4];
                h.copy_from_slice(&b[i..i + 4]);
                u64::from(u32::from_le_bytes(h))
            };
            return word_needs_escape(half(0) | half(n - 4) << 32);
        }
        let mut w = [b'a'; 8];
        for (i, &c) in b.iter().enumerate() {
            w[i] = c;
        }
        return word_needs_escape(u64::from_le_bytes(w));
    }
    let word = |i: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(w)
    };
    let mut i = 0;
    while i + 8 <= n {
        if word_needs_escape(word(i)) {
            return true;
        }
        i += 8;
    }
    i < n && word_needs_escape(word(n - 8))
}

/// Whether a byte of `w` is `"`, `\` or below 0x20. Exact: `(x - 0x01..) & !x & 0x80..` is
/// non-zero only if a byte of `x` is zero (the borrow that could flag a neighbour starts at
/// a zero byte), and `(w - 0x20..) & !w & 0x80..` only if a byte of `w` is below 0x20.
#[inline(always)]
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (control | quote | backslash) & HIGH != 0
}

/// [`needs_escape`] sixteen bytes at a time, with SSE2 (part of every x86-64 CPU).
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };

    /// For strings of at least 16 bytes; the last block overlaps the one before it.
    #[inline]
    pub(super) fn needs_escape(b: &[u8]) -> bool {
        debug_assert!(b.len() >= 16);
        let n = b.len();
        let mut i = 0;
        while i + 16 <= n {
            if block_needs_escape(&b[i..i + 16]) {
                return true;
            }
            i += 16;
        }
        i < n && block_needs_escape(&b[n - 16..])
    }

    #[inline(always)]
    fn block_needs_escape(block: &[u8]) -> bool {
        debug_assert_eq!(block.len(), 16);
        // SAFETY: SSE2 is enabled on every x86-64 target; the load reads the 16 bytes of
        // `block` (unaligned loads are allowed).
        unsafe {
            let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // Below 0x20, unsigned: min(v, 0x1f) == v.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) != 0
        }
    }
}

/// Calls `$then!` with serde's number methods (name and argument type), which several
/// serializers here handle alike.
macro_rules! with_numbers {
    ($then:ident $(, $more:ident($ty:ty))*) => {
        $then!(
            serialize_i8(i8),
            serialize_i16(i16),
            serialize_i32(i32),
            serialize_i64(i64),
            serialize_i128(i128),
            serialize_u8(u8),
            serialize_u16(u16),
            serialize_u32(u32),
            serialize_u64(u64),
            serialize_u128(u128),
            serialize_f32(f32),
            serialize_f64(f64)
            $(, $more($ty))*
        );
    };
}
pub(crate) use with_numbers;

/// Methods of [`Ser`] that `serde_json` writes itself, on this buffer.
macro_rules! by_serde_json {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method(self, v: $ty) -> Result<(), Error> {
            serde::Serializer::$method(&mut serde_json::Serializer::new(self.out), v)
        }
    )*};
}

struct Ser<'a> {
    out: &'a mut Vec<u8>,
}

/// The name under which `serde_json`'s `RawValue` and arbitrary-precision `Number` serialize
/// themselves: their one field is JSON text to write as it is.
fn is_raw_token(name: &str) -> bool {
    name == "$serde_json::private::RawValue" || name == "$serde_json::private::Number"
}

impl<'a> Ser<'a> {
    /// `{"variant":` of an enum variant with content.
    fn variant_key(&mut self, variant: &str) {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.push(b':');
    }

    fn compound(self, open: u8, close: &'static [u8]) -> Compound<'a> {
        self.out.push(open);
        Compound {
            out: self.out,
            first: true,
            close,
            raw: false,
            key_written: false,
        }
    }
}

impl<'a> ser::Serializer for Ser<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    with_numbers!(by_serde_json, serialize_bytes(&[u8]));
    fn serialize_char(self, v: char) -> Result<(), Error> {
        write_str(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.variant_key(variant);
        value.serialize(Ser { out: self.out })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, Error> {
        Ok(self.compound(b'[', b"]"))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Compound<'a>, Error> {
        Ok(self.compound(b'[', b"]"))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Error> {
        Ok(self.compound(b'[', b"]"))
    }
    fn serialize_tuple_variant(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Error> {
        self.variant_key(variant);
        Ok(self.compound(b'[', b"]}"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, Error> {
        Ok(self.compound(b'{', b"}"))
    }
    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Compound<'a>, Error> {
        if is_raw_token(name) {
            return Ok(Compound {
                out: self.out,
                first: true,
                close: b"",
                raw: true,
                key_written: false,
            });
        }
        Ok(self.compound(b'{', b"}"))
    }
    fn serialize_struct_variant(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Error> {
        self.variant_key(variant);
        Ok(self.compound(b'{', b"}}"))
    }
}

/// An array or object being written.
struct Compound<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    /// What ends it: `]`, `}`, or those plus the `}` of an enum variant.
    close: &'static [u8],
    /// A `serde_json` raw value: its field is written as it is.
    raw: bool,
    /// A map's key was written and its value is due. A `Serialize` implementation that
    /// breaks serde's order (a key without its value, two values) is an error, so that
    /// the text stays valid JSON (`{"k":}` or `{"k":12}` otherwise).
    key_written: bool,
}

impl Compound<'_> {
    #[inline]
    fn separator(&mut self) {
        if self.first {
            self.first = false;
        } else {
            self.out.push(b',');
        }
    }

    #[inline]
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.separator();
        value.serialize(Ser { out: self.out })
    }

    #[inline]
    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Error> {
        if self.raw {
            return raw_text(self.out, value);
        }
        self.separator();
        write_str(self.out, key);
        self.out.push(b':');
        value.serialize(Ser { out: self.out })
    }

    #[inline]
    fn end(self) -> Result<(), Error> {
        if self.key_written {
            return Err(ser::Error::custom("a map key without its value"));
        }
        self.out.extend_from_slice(self.close);
        Ok(())
    }
}

/// The array traits: each element through [`Compound::element`].
macro_rules! array_compound {
    ($($trait:ident::$method:ident),* $(,)?) => {$(
        impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }
            fn end(self) -> Result<(), Error> {
                Compound::end(self)
            }
        }
    )*};
}

array_compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        if self.key_written {
            return Err(ser::Error::custom("a map key without its value"));
        }
        self.separator();
        key.serialize(KeySer { out: self.out })?;
        self.out.push(b':');
        self.key_written = true;
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if !std::mem::take(&mut self.key_written) {
            return Err(ser::Error::custom("a map value without its key"));
        }
        value.serialize(Ser { out: self.out })
    }
    fn end(self) -> Result<(), Error> {
        Compound::end(self)
    }
}

/// The struct traits: each field through [`Compound::field`].
macro_rules! struct_compound {
    ($($trait:ident),* $(,)?) => {$(
        impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                self.field(key, value)
            }
            fn end(self) -> Result<(), Error> {
                Compound::end(self)
            }
        }
    )*};
}

struct_compound!(SerializeStruct, SerializeStructVariant);

/// Writes the field of a `serde_json` raw value (its JSON text, a string) as it is.
#[cold]
fn raw_text<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Error> {
    let text: String = serde_json::from_value(serde_json::to_value(value)?)?;
    out.extend_from_slice(sanitized_raw(&text).as_bytes());
    Ok(())
}

/// Writes a map key exactly as `serde_json` does (a number or a `bool` becomes a string;
/// a key that is not a string, a number, a `bool` or a unit variant is an error), by letting
/// `serde_json` write it as the key of a map of its own and keeping only the key.
fn key_by_serde_json<K: Serialize + ?Sized>(out: &mut Vec<u8>, key: &K) -> Result<(), Error> {
    let mark = out.len();
    let mut ser = serde_json::Serializer::new(&mut *out);
    let mut map = serde::Serializer::serialize_map(&mut ser, None)?;
    map.serialize_key(key)?;
    // Not ended: drop the `{` it opened with.
    out.remove(mark);
    Ok(())
}

/// The serializer of map keys: strings directly, anything else as `serde_json` would.
struct KeySer<'a> {
    out: &'a mut Vec<u8>,
}

macro_rules! key_via_serde_json {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method(self, v: $ty) -> Result<(), Error> {
            key_by_serde_json(self.out, &v)
        }
    )*};
}

/// The error `serde_json` gives for a key that cannot be a JSON object key.
fn key_error(out: &mut Vec<u8>) -> Error {
    let mark = out.len();
    let e = key_by_serde_json(out, &()).err();
    out.truncate(mark);
    e.unwrap_or_else(|| ser::Error::custom("key must be a string"))
}

/// Methods of [`KeySer`] for what cannot be a key: `serde_json`'s error.
macro_rules! not_a_key {
    ($($method:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {$(
        fn $method(self, $($arg: $ty),*) -> Result<$ret, Error> {
            Err(key_error(self.out))
        }
    )*};
}

impl ser::Serializer for KeySer<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    with_numbers!(
        key_via_serde_json,
        serialize_bool(bool),
        serialize_char(char)
    );

    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), Error> {
        Err(key_error(self.out))
    }
    not_a_key! {
        serialize_bytes(_v: &[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(_name: &'static str) -> ();
        serialize_seq(_len: Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(_len: usize) -> Self::SerializeTuple;
        serialize_tuple_struct(_name: &'static str, _len: usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(_name: &'static str, _index: u32, _variant: &'static str, _len: usize)
            -> Self::SerializeTupleVariant;
        serialize_map(_len: Option<usize>) -> Self::SerializeMap;
        serialize_struct(_name: &'static str, _len: usize) -> Self::SerializeStruct;
        serialize_struct_variant(_name: &'static str, _index: u32, _variant: &'static str, _len: usize)
            -> Self::SerializeStructVariant;
    }
}

#[cfg(test)]
mod tests;
