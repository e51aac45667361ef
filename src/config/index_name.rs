//! What makes a legal index or data stream name, for validation and for routing alike.

/// Makes any string a legal index name part: lowercase, none of `\/*?"<>|,# :`, no
/// leading `-_+`, at most 255 bytes.
pub fn sanitize_index(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| match c {
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':' | ' ' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    while out.starts_with(['-', '_', '+']) {
        out.remove(0);
    }
    if out.is_empty() || out == "." || out == ".." {
        out = "logferry".into();
    }
    let mut end = out.len().min(255);
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out
}

/// A data stream dataset or namespace part: `-` is the separator, so it becomes `_`.
pub fn sanitize_part(s: &str) -> String {
    let mut v = sanitize_index(&s.replace('-', "_"));
    v.truncate(100);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes() {
        assert_eq!(sanitize_index("_A/b c*"), "a_b_c_");
        assert_eq!(sanitize_index(""), "logferry");
        assert_eq!(sanitize_part("my-ns"), "my_ns");
        assert!(sanitize_index(&"x".repeat(300)).len() <= 255);
    }
}
