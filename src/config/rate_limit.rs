//! `[rate_limit]`: lines per second a container may ship, off by default; a pod may set
//! its own with the annotation `logferry.io/rate-limit: "500/s"`.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Per container; 0 leaves containers unlimited unless their pod asks.
    pub lines_per_second: u32,
    /// Lines a quiet container may send at once; 0 means one second's worth.
    pub burst: u32,
    /// How often a container that is over its limit gets a summary event of what was dropped.
    #[serde(with = "super::duration_str")]
    pub summary_interval: Duration,
    /// Honour the pod annotation `logferry.io/rate-limit`.
    pub pod_annotation: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            lines_per_second: 0,
            burst: 0,
            summary_interval: Duration::from_secs(10),
            pod_annotation: true,
        }
    }
}

impl RateLimitConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.summary_interval.is_zero() {
            return Err((
                "rate_limit.summary_interval".into(),
                "must be greater than zero".into(),
            ));
        }
        if self.burst > 0 && self.lines_per_second == 0 {
            return Err((
                "rate_limit.burst".into(),
                "needs rate_limit.lines_per_second".into(),
            ));
        }
        Ok(())
    }
}
