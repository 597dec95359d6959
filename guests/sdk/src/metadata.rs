//! Compile-time assembly of the metadata custom section (a byte array built in `const`).

/// Total length of the parts.
pub const fn metadata_len(parts: &[&str]) -> usize {
    let mut len = 0;
    let mut i = 0;
    while i < parts.len() {
        len += parts[i].len();
        i += 1;
    }
    len
}

/// The parts concatenated into a fixed-size array (`N` = [`metadata_len`]).
pub const fn metadata_bytes<const N: usize>(parts: &[&str]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut pos = 0;
    let mut i = 0;
    while i < parts.len() {
        let bytes = parts[i].as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            out[pos] = bytes[j];
            pos += 1;
            j += 1;
        }
        i += 1;
    }
    out
}
