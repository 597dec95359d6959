//! Bounded text: messages cut to a byte limit with a marker saying how much there was. Used
//! for driver error messages (sandbox) and event notes (controller).

/// Cut `text` to at most `max` bytes (on a character boundary), saying how much was dropped.
pub fn cap_message(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let marker = truncated_marker(text.len());
    let keep = floor_char_boundary(&text, max.saturating_sub(marker.len()));
    let mut out = String::with_capacity(keep + marker.len());
    out.push_str(&text[..keep]);
    out.push_str(&marker);
    out
}

/// The marker appended to cut text.
pub fn truncated_marker(total: usize) -> String {
    format!(" … [truncated: {total} bytes in all]")
}

/// The largest index `<= i` on a character boundary of `s`.
pub fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// An error with its causes on one line (reqwest's own text omits them: "error sending
/// request" says nothing of the refused connection or the untrusted certificate).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
