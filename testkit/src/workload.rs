//! A reproducible kubelet-style log tree: CRI files under `var/log/pods`, symlinked from
//! `var/log/containers`, with a realistic mix of lines. Every document carries a marker
//! `seq=<n>` (numbered per pod from 0), so a receiver can count each one exactly once.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// What to generate. `lines` counts CRI lines as written (stack-trace lines and partial
/// chunks included), so it is the size of the input, not the number of documents.
#[derive(Debug, Clone)]
pub struct Spec {
    pub lines: u64,
    pub pods: usize,
    /// Mean message length in bytes (the tail is long: a few are many times this).
    pub mean_message: usize,
    /// Share of messages that are JSON objects.
    pub json_share: f64,
    /// Share of documents that are multi-line Java stack traces.
    pub trace_share: f64,
    /// One document in this many is a line over 16 KiB, split by the runtime into P/F chunks.
    pub giant_every: u64,
    pub seed: u64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            lines: 2_000_000,
            pods: 20,
            mean_message: 200,
            json_share: 0.3,
            trace_share: 0.01,
            giant_every: 200_000,
            seed: 42,
        }
    }
}

/// One container's log.
#[derive(Debug, Clone)]
pub struct PodLog {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container: String,
    /// The file kubelet writes (`.../<container>/0.log`).
    pub path: PathBuf,
    /// The symlink in `var/log/containers`.
    pub link: PathBuf,
    /// Documents written so far (their `seq` markers are `0..docs`).
    pub docs: u64,
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub lines: u64,
    pub docs: u64,
    pub bytes: u64,
}

/// The kubelet's split of long lines (16 KiB).
pub const CRI_CHUNK: usize = 16 * 1024;

/// xorshift64*: fast, seeded, good enough for shaping test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545f4914f6cdd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Exponentially distributed with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

const NAMESPACES: [&str; 4] = ["shop", "payments", "search", "platform"];
const WORDS: [&str; 24] = [
    "request",
    "handled",
    "user",
    "order",
    "cache",
    "miss",
    "upstream",
    "timeout",
    "retry",
    "session",
    "token",
    "refresh",
    "query",
    "rows",
    "latency",
    "bytes",
    "client",
    "server",
    "connection",
    "pool",
    "checkout",
    "cart",
    "inventory",
    "shipment",
];
const LEVELS: [&str; 5] = ["debug", "info", "info", "warn", "error"];

/// The tree under `root`, with its pods' files created empty.
pub fn layout(root: &Path, pods: usize) -> Vec<PodLog> {
    let containers = root.join("var/log/containers");
    fs::create_dir_all(&containers).expect("create var/log/containers");
    (0..pods)
        .map(|i| {
            let namespace = NAMESPACES[i % NAMESPACES.len()].to_string();
            let name = format!("app-{i:03}-7d4b9c5f8-x{:04}", i * 7919 % 10_000);
            let uid = format!("0000{i:04}-1111-2222-3333-444455556666");
            let container = "app".to_string();
            let dir = root
                .join("var/log/pods")
                .join(format!("{namespace}_{name}_{uid}"))
                .join(&container);
            fs::create_dir_all(&dir).expect("create the pod's log dir");
            let path = dir.join("0.log");
            File::create(&path).expect("create 0.log");
            let link = containers.join(format!("{name}_{namespace}_{container}-{i:064x}.log"));
            std::os::unix::fs::symlink(&path, &link).expect("symlink into var/log/containers");
            PodLog {
                namespace,
                name,
                uid,
                container,
                path,
                link,
                docs: 0,
            }
        })
        .collect()
}

/// Writes the whole workload under `root`; pods get roughly equal shares.
pub fn generate(root: &Path, spec: &Spec) -> (Vec<PodLog>, Written) {
    let mut pods = layout(root, spec.pods);
    let mut rng = Rng::new(spec.seed);
    let mut gen = Generator::new(spec);
    let mut writers: Vec<BufWriter<File>> = pods
        .iter()
        .map(|p| {
            let f = fs::OpenOptions::new()
                .append(true)
                .open(&p.path)
                .expect("open 0.log");
            BufWriter::with_capacity(1 << 20, f)
        })
        .collect();
    let mut total = Written::default();
    let mut buf = Vec::new();
    while total.lines < spec.lines {
        let i = rng.below(pods.len() as u64) as usize;
        buf.clear();
        let w = gen.document(&mut pods[i], &mut buf);
        writers[i].write_all(&buf).expect("write the log");
        total.lines += w.lines;
        total.docs += w.docs;
        total.bytes += w.bytes;
    }
    for mut w in writers {
        w.flush().expect("flush the log");
    }
    (pods, total)
}

/// Produces documents as CRI lines, one at a time.
pub struct Generator {
    spec: Spec,
    rng: Rng,
    /// Nanoseconds since the Unix epoch of the next line's timestamp.
    clock: u64,
    message: String,
}

impl Generator {
    pub fn new(spec: &Spec) -> Generator {
        Generator {
            spec: spec.clone(),
            rng: Rng::new(spec.seed ^ 0x5eed),
            clock: 1_795_000_000_000_000_000,
            message: String::new(),
        }
    }

    /// Timestamps from now on start at `nanos` (for live writing: the real clock).
    pub fn set_clock(&mut self, nanos: u64) {
        self.clock = nanos;
    }

    /// Appends the next document of `pod` to `out` (one or more CRI lines).
    pub fn document(&mut self, pod: &mut PodLog, out: &mut Vec<u8>) -> Written {
        let seq = pod.docs;
        pod.docs += 1;
        let start = out.len();
        let mut w = Written {
            docs: 1,
            ..Default::default()
        };
        let giant = self.spec.giant_every > 0 && self.rng.below(self.spec.giant_every) == 0;
        let roll = self.rng.unit();
        if giant {
            let size = CRI_CHUNK + 1 + self.rng.below(4 * CRI_CHUNK as u64) as usize;
            self.text(seq, size);
            let msg = std::mem::take(&mut self.message);
            let mut rest = msg.as_bytes();
            while rest.len() > CRI_CHUNK {
                let cut = floor_char_boundary(&msg, msg.len() - rest.len() + CRI_CHUNK)
                    - (msg.len() - rest.len());
                self.line(out, "stdout", 'P', &rest[..cut]);
                w.lines += 1;
                rest = &rest[cut..];
            }
            self.line(out, "stdout", 'F', rest);
            w.lines += 1;
            self.message = msg;
        } else if roll < self.spec.trace_share {
            let head = format!(
                "Exception in thread \"worker-{}\" java.lang.IllegalStateException: order {} not found seq={seq}",
                self.rng.below(16),
                self.rng.below(1_000_000)
            );
            self.line(out, "stderr", 'F', head.as_bytes());
            w.lines += 1;
            for d in 0..5 + self.rng.below(20) {
                let frame = format!(
                    "\tat com.example.shop.{}.{}(Service.java:{})",
                    WORDS[(d as usize * 7 + 3) % WORDS.len()],
                    WORDS[self.rng.below(WORDS.len() as u64) as usize],
                    20 + self.rng.below(400)
                );
                self.line(out, "stderr", 'F', frame.as_bytes());
                w.lines += 1;
            }
        } else {
            let size = self.message_size();
            if roll < self.spec.trace_share + self.spec.json_share {
                self.json(seq, size);
            } else {
                self.text(seq, size);
            }
            let msg = std::mem::take(&mut self.message);
            let stream = if self.rng.below(10) == 0 {
                "stderr"
            } else {
                "stdout"
            };
            self.line(out, stream, 'F', msg.as_bytes());
            w.lines += 1;
            self.message = msg;
        }
        w.bytes = (out.len() - start) as u64;
        w
    }

    /// Mean `mean_message`, a long tail, at least 40 bytes and at most 8 KiB.
    fn message_size(&mut self) -> usize {
        let mean = self.spec.mean_message as f64;
        let base = (mean * 0.3).min(40.0);
        let tail = self.rng.exponential(mean - base);
        (base + tail).clamp(40.0, 8192.0) as usize
    }

    fn words(&mut self, target: usize) {
        while self.message.len() < target {
            let w = WORDS[self.rng.below(WORDS.len() as u64) as usize];
            self.message.push(' ');
            self.message.push_str(w);
            if self.rng.below(6) == 0 {
                let n = self.rng.below(100_000);
                self.message.push_str(&format!("={n}"));
            }
        }
    }

    fn text(&mut self, seq: u64, size: usize) {
        self.message.clear();
        let level = LEVELS[self.rng.below(LEVELS.len() as u64) as usize].to_uppercase();
        self.message
            .push_str(&format!("{level} [main] seq={seq} GET /api/v1/orders"));
        self.words(size);
        self.message
            .truncate(floor_char_boundary(&self.message, size.max(40)));
    }

    fn json(&mut self, seq: u64, size: usize) {
        self.message.clear();
        let level = LEVELS[self.rng.below(LEVELS.len() as u64) as usize];
        let latency = self.rng.exponential(120.0) as u64;
        // The `msg` text first, then the object around it.
        self.message.push_str(&format!("seq={seq} handled request"));
        self.words(size.saturating_sub(110));
        let text = std::mem::take(&mut self.message);
        self.message.push_str(&format!(
            "{{\"level\":\"{level}\",\"msg\":\"{text}\",\"latency_ms\":{latency},\"status\":{},\"path\":\"/api/v1/cart\",\"trace_id\":\"{:016x}\"}}",
            [200, 200, 200, 201, 404, 500][self.rng.below(6) as usize],
            self.rng.next_u64()
        ));
    }

    fn line(&mut self, out: &mut Vec<u8>, stream: &str, tag: char, content: &[u8]) {
        self.clock += 1_000 + self.rng.below(5_000);
        let secs = self.clock / 1_000_000_000;
        let nanos = self.clock % 1_000_000_000;
        let (y, mo, d, h, mi, s) = civil(secs);
        let _ = write!(
            out,
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{nanos:09}Z {stream} {tag} "
        );
        out.extend_from_slice(content);
        out.push(b'\n');
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// UTC calendar fields of a Unix time (Howard Hinnant's days-from-civil, inverted).
fn civil(secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y as u64,
        m as u64,
        d as u64,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
    )
}

/// Nanoseconds since the Unix epoch of a UTC RFC 3339 time (`...Z`), as the CRI writes.
pub fn unix_nanos(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = t.get(20..t.len() - 1).unwrap_or("");
    let nanos = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").get(..9)?.parse::<u64>().ok()?
    };
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    Some(u64::try_from(secs).ok()? * 1_000_000_000 + nanos)
}

/// The current time in nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The `seq=<n>` marker of a document's text, if any.
pub fn seq_of(text: &[u8]) -> Option<u64> {
    let at = text.windows(4).position(|w| w == b"seq=")?;
    let digits = &text[at + 4..];
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_795_000_000), (2026, 11, 18, 11, 6, 40));
        assert_eq!(
            unix_nanos("2026-11-18T11:06:40.000000123Z"),
            Some(1_795_000_000_000_000_123)
        );
        assert_eq!(unix_nanos("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(
            unix_nanos("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000_000_000)
        );
    }

    #[test]
    fn the_mix_matches_the_spec() {
        let dir = std::env::temp_dir().join(format!("workload-{}", std::process::id()));
        let spec = Spec {
            lines: 50_000,
            pods: 5,
            giant_every: 2_000,
            ..Default::default()
        };
        let (pods, w) = generate(&dir, &spec);
        assert!(w.lines >= 50_000 && w.lines < 50_100);
        assert_eq!(pods.iter().map(|p| p.docs).sum::<u64>(), w.docs);
        let mut text = Vec::new();
        for p in &pods {
            text.extend(fs::read(&p.path).unwrap());
        }
        let lines: Vec<&[u8]> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len() as u64, w.lines);
        let partial = lines
            .iter()
            .filter(|l| l.windows(3).any(|x| x == b" P "))
            .count();
        let json = lines
            .iter()
            .filter(|l| l.windows(3).any(|x| x == b" {\""))
            .count();
        let seqs = lines.iter().filter(|l| seq_of(l).is_some()).count() as u64;
        assert!(partial > 0, "some lines over 16 KiB");
        let share = json as f64 / w.docs as f64;
        assert!((0.25..0.35).contains(&share), "JSON share {share}");
        // Every document has exactly one marker: the first line of a trace, the first chunk.
        assert_eq!(seqs, w.docs);
        let mean = (w.bytes as f64) / (w.lines as f64);
        assert!((150.0..400.0).contains(&mean), "mean line {mean}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
