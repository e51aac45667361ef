//! Which runtime format a file is in, detected from its first line. A line that fits
//! neither is carried through as it is, flagged.

use super::line::RuntimeLine;
use crate::config::LogFormat;
use bytes::Bytes;

type Parse = fn(&Bytes) -> Option<RuntimeLine>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Cri,
    Docker,
}

/// Per-file format state: fixed by config, or detected on the first line.
#[derive(Debug, Clone, Copy)]
pub struct FormatState {
    detected: Option<Detected>,
}

impl FormatState {
    pub fn new(config: LogFormat) -> Self {
        let detected = match config {
            LogFormat::Auto => None,
            LogFormat::Cri => Some(Detected::Cri),
            LogFormat::Docker => Some(Detected::Docker),
        };
        FormatState { detected }
    }

    pub fn detected(&self) -> Option<Detected> {
        self.detected
    }

    /// Parses a line in the file's format, falling back to the other one.
    pub fn parse(&mut self, line: &Bytes) -> Option<RuntimeLine> {
        let primary = *self.detected.get_or_insert(if line.first() == Some(&b'{') {
            Detected::Docker
        } else {
            Detected::Cri
        });
        let (first, second): (Parse, Parse) = match primary {
            Detected::Cri => (super::cri::parse, super::docker::parse),
            Detected::Docker => (super::docker::parse, super::cri::parse),
        };
        first(line).or_else(|| second(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_and_falls_back() {
        let mut f = FormatState::new(LogFormat::Auto);
        let docker =
            Bytes::from_static(br#"{"log":"a\n","stream":"stdout","time":"2019-01-01T11:11:11Z"}"#);
        let cri = Bytes::from_static(b"2019-01-01T11:11:11Z stderr F b");
        assert_eq!(&f.parse(&docker).unwrap().content[..], b"a");
        assert_eq!(&f.parse(&cri).unwrap().content[..], b"b");
        assert!(f.parse(&Bytes::from_static(b"garbage")).is_none());
    }
}
