//! RFC 3339 timestamps: validating the runtime's text (kept verbatim, nanoseconds and all)
//! and formatting the read time for lines that have none.

use std::time::{SystemTime, UNIX_EPOCH};

/// Sleeps until `deadline`; without one, forever (a `select!` arm that never fires).
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// True for `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, the shape CRI and Docker write.
#[inline]
pub fn is_rfc3339(b: &[u8]) -> bool {
    fn digits(b: &[u8]) -> bool {
        b.iter().all(u8::is_ascii_digit)
    }
    if b.len() < 20 || b.len() > 40 {
        return false;
    }
    let shape = digits(&b[0..4])
        && b[4] == b'-'
        && digits(&b[5..7])
        && b[7] == b'-'
        && digits(&b[8..10])
        && (b[10] == b'T' || b[10] == b't')
        && digits(&b[11..13])
        && b[13] == b':'
        && digits(&b[14..16])
        && b[16] == b':'
        && digits(&b[17..19]);
    if !shape {
        return false;
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    let day = (b[8] - b'0') * 10 + (b[9] - b'0');
    let hour = (b[11] - b'0') * 10 + (b[12] - b'0');
    let minute = (b[14] - b'0') * 10 + (b[15] - b'0');
    let second = (b[17] - b'0') * 10 + (b[18] - b'0');
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return false;
    }
    let mut rest = &b[19..];
    if rest.first() == Some(&b'.') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return false;
        }
        rest = &rest[1 + n..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => digits(&[*h1, *h2, *m1, *m2]),
        _ => false,
    }
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (through `humantime`; before 1970,
/// the epoch).
pub fn format_rfc3339_nanos(t: SystemTime, out: &mut Vec<u8>) {
    use std::io::Write;
    let t = t.max(UNIX_EPOCH);
    let _ = write!(out, "{}", humantime::format_rfc3339_nanos(t));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn accepts_runtime_timestamps() {
        assert!(is_rfc3339(b"2016-10-06T00:17:09.669794202Z"));
        assert!(is_rfc3339(b"2016-10-06T00:17:09Z"));
        assert!(is_rfc3339(b"2016-10-06T00:17:09.5+02:00"));
        assert!(is_rfc3339(b"2016-10-06T00:17:09.123456-07:00"));
    }

    #[test]
    fn rejects_other_text() {
        for bad in [
            &b"2016-10-06 00:17:09Z"[..],
            b"2016-13-06T00:17:09Z",
            b"2016-10-06T00:17:09",
            b"2016-10-06T00:17:09.Z",
            b"2016-10-06T00:17:09.1234567890Z",
            b"2016-10-06T00:17:09Zjunk",
            b"hello world, this is not a time",
        ] {
            assert!(!is_rfc3339(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn formats_known_instants() {
        let mut out = Vec::new();
        format_rfc3339_nanos(UNIX_EPOCH + Duration::new(1_480_000_000, 5), &mut out);
        assert_eq!(out, b"2016-11-24T15:06:40.000000005Z");
        out.clear();
        format_rfc3339_nanos(UNIX_EPOCH + Duration::from_secs(951_782_400), &mut out);
        assert_eq!(out, b"2000-02-29T00:00:00.000000000Z");
        assert!(is_rfc3339(&out));
    }
}
