//! A client's string as a refusal or log line shows it: cut short, so a huge name makes neither huge.

/// How much of a client's string a refusal echoes: enough to recognise it,
/// never so much that a huge name makes a huge answer or log line.
const SHOWN_CHARS: usize = 64;

/// `text` as a refusal shows it: its first [`SHOWN_CHARS`] characters, and
/// how long it was when that is not all of it.
pub(crate) fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_shown_cut_with_their_length() {
        assert_eq!(shown("tso"), "tso");
        let long = "é".repeat(10_000);
        let cut = shown(&long);
        assert!(cut.starts_with(&"é".repeat(64)), "{cut}");
        assert!(cut.ends_with("... (20000 bytes)"), "{cut}");
    }

    proptest::proptest! {
        /// Whatever a client sends, what a refusal echoes stays short and
        /// starts as the client's text did.
        #[test]
        fn any_string_is_shown_short(text in ".{0,3000}") {
            let cut = shown(&text);
            proptest::prop_assert!(cut.chars().count() <= 64 + 24, "{}", cut);
            let head: String = text.chars().take(64).collect();
            proptest::prop_assert!(cut.starts_with(&head));
        }
    }
}
