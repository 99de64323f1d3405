//! Text a guest chose, made safe to print: [`escape_line`].

/// `text` with every control character escaped (`\n`, `\r`, `\t` as such,
/// the others as `\u{..}`), and the Unicode line and paragraph separators
/// and bidirectional controls too, so that it prints as one line of plain
/// text that reads in the order it was written. For text a guest chose
/// (its log lines and output, the names in its module) before it reaches
/// a terminal or a log.
pub fn escape_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || breaks_or_reorders(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that are not control characters but end a line (U+2028,
/// U+2029) or reorder what follows (the bidirectional marks, embeddings,
/// overrides and isolates).
fn breaks_or_reorders(c: char) -> bool {
    matches!(
        c,
        '\u{2028}' | '\u{2029}' | '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_is_one_line_without_control_characters() {
        let e = escape_line("a\nb\r\x1b[2J\x07\u{9b}c\u{2028}\u{2029}\u{202e}\u{2067}é");
        assert_eq!(
            e,
            "a\\nb\\r\\u{1b}[2J\\u{7}\\u{9b}c\\u{2028}\\u{2029}\\u{202e}\\u{2067}é"
        );
        assert!(!e.chars().any(|c| c.is_control() || breaks_or_reorders(c)));
    }
}
