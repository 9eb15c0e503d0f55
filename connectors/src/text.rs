//! Splitting a long text into the parts a platform takes in one message.
//!
//! Parts are cut only between UTF-8 characters, after the last newline that fits (so a paragraph
//! stays whole when it can), else after the last space, else at the limit. Nothing is dropped or
//! added: the parts concatenated give back the input exactly, so a reader of the split messages
//! sees every character once.

use crate::{ConnectorError, Platform};

/// How a platform counts a text's length.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Measure {
    /// Unicode scalar values (Telegram, WhatsApp).
    Chars,
    /// UTF-8 bytes (Instagram).
    Bytes,
}

/// Refuses, before any call, a text part `platform` would refuse for its length alone: an
/// empty one, or one over `max` as the platform counts.
pub(crate) fn check(
    platform: Platform,
    text: &str,
    max: usize,
    measure: Measure,
) -> Result<(), ConnectorError> {
    if text.is_empty() {
        return Err(ConnectorError::Rejected {
            code: 0,
            description: "empty text".into(),
        });
    }
    let (len, unit) = match measure {
        Measure::Chars => (text.chars().count(), "characters"),
        Measure::Bytes => (text.len(), "bytes"),
    };
    if len > max {
        return Err(ConnectorError::TooLong {
            platform: platform.as_str(),
            len,
            max,
            unit,
        });
    }
    Ok(())
}

/// Splits `text` into parts of at most `max_chars` Unicode scalar values (what Telegram and
/// WhatsApp call characters). An empty text gives no parts. A `max_chars` of 0 is treated as 1.
pub fn split_chars(text: &str, max_chars: usize) -> Vec<String> {
    let max = max_chars.max(1);
    split(text, |rest| {
        // The byte offset just past the `max`-th character, or the whole rest when shorter.
        rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i)
    })
}

/// Splits `text` into parts of at most `max_bytes` UTF-8 bytes (Instagram's limit). An empty text
/// gives no parts. When `max_bytes` is smaller than one character, that character is a part on
/// its own (a character is never cut).
pub fn split_bytes(text: &str, max_bytes: usize) -> Vec<String> {
    split(text, |rest| {
        if rest.len() <= max_bytes {
            return rest.len();
        }
        let mut cut = max_bytes;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            // Progress over a limit below one character: take the character whole.
            cut = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        cut
    })
}

/// The splitting loop: `window(rest)` is the byte length of the longest prefix of `rest` within
/// the limit (always > 0 for a non-empty `rest`, and on a character boundary).
fn split(text: &str, window: impl Fn(&str) -> usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let limit = window(rest);
        let cut = if limit == rest.len() {
            limit
        } else {
            break_point(&rest[..limit]).unwrap_or(limit)
        };
        parts.push(rest[..cut].to_owned());
        rest = &rest[cut..];
    }
    parts
}

/// Where to end a part inside `window`: just after its last newline, else just after its last
/// space. A break whose part would be only whitespace is not taken (a platform like Telegram
/// trims a message and refuses one left empty), so the next kind of break, or the hard limit,
/// is used instead.
fn break_point(window: &str) -> Option<usize> {
    [b'\n', b' '].into_iter().find_map(|sep| {
        let at = window.bytes().rposition(|b| b == sep)?;
        let part = &window[..=at];
        (!part.trim().is_empty()).then_some(at + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_chars(text: &str, max: usize) -> Vec<String> {
        let parts = split_chars(text, max);
        assert_eq!(parts.concat(), text, "parts must concatenate to the input");
        for p in &parts {
            assert!(!p.is_empty(), "no empty part");
            assert!(
                p.chars().count() <= max.max(1),
                "part over {max} chars: {p:?}"
            );
        }
        parts
    }

    fn check_bytes(text: &str, max: usize) -> Vec<String> {
        let parts = split_bytes(text, max);
        assert_eq!(parts.concat(), text, "parts must concatenate to the input");
        for p in &parts {
            assert!(!p.is_empty(), "no empty part");
            assert!(
                p.len() <= max || p.chars().count() == 1,
                "part over {max} bytes: {p:?}"
            );
        }
        parts
    }

    #[test]
    fn empty_text_gives_no_part() {
        assert!(split_chars("", 10).is_empty());
        assert!(split_bytes("", 10).is_empty());
    }

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(check_chars("hello", 5), vec!["hello"]);
        assert_eq!(check_bytes("héllo", 6), vec!["héllo"]);
    }

    #[test]
    fn prefers_the_last_newline_then_the_last_space() {
        assert_eq!(
            check_chars("one two\nthree four five", 16),
            vec!["one two\n", "three four five"]
        );
        assert_eq!(
            check_chars("one two three four", 10),
            vec!["one two ", "three four"]
        );
    }

    #[test]
    fn hard_cut_without_a_break() {
        assert_eq!(check_chars("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
    }

    #[test]
    fn whitespace_only_break_is_not_taken() {
        // Cutting after the leading newline would leave a part Telegram refuses as empty.
        assert_eq!(check_chars("\nabcdef", 4), vec!["\nabc", "def"]);
    }

    #[test]
    fn bytes_never_cut_inside_a_character() {
        // "é" is 2 bytes, "😀" 4: a 5-byte limit must not cut either.
        let text = "éé😀😀ééé";
        let parts = check_bytes(text, 5);
        assert_eq!(parts, vec!["éé", "😀", "😀", "éé", "é"]);
        // A limit below one character: each character alone.
        assert_eq!(check_bytes("😀😀", 2), vec!["😀", "😀"]);
    }

    #[test]
    fn chars_count_scalars_not_bytes() {
        let text = "😀".repeat(10);
        let parts = check_chars(&text, 4);
        assert_eq!(parts.len(), 3);
    }

    #[test]
    fn property_every_part_within_limit_and_concat_exact() {
        // A deterministic pseudo-random sweep (xorshift; no seed to print: it is fixed) over
        // texts mixing ASCII, multi-byte characters, spaces and newlines.
        let alphabet = ['a', 'b', ' ', '\n', 'é', '漢', '😀', 'z', ' ', 'x'];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300 {
            let len = (next() % 200) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let max = 1 + (next() % 40) as usize;
            check_chars(&text, max);
            check_bytes(&text, max);
        }
    }

    #[test]
    fn platform_sized_limits() {
        let para = "word ".repeat(300) + "\n";
        let text = para.repeat(10);
        let parts = check_chars(&text, 4096);
        assert!(parts.len() >= 4);
        assert!(
            parts
                .iter()
                .all(|p| p.ends_with('\n') || p == parts.last().expect("a part"))
        );
        check_bytes(&text, 1000);
    }
}
