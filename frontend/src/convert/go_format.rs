//! Values printed the way Go's fmt prints them, because BuildKit's history text is Go's output and image
//! an image's config digest depends on it byte for byte.

use kiln_llb::image::HealthConfig;

/// Go's `%+v` of BuildKit's healthcheck struct, as it writes HEALTHCHECK into history:
/// `{Test:[CMD-SHELL curl -f http://localhost/] Interval:30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:3}`.
pub(super) fn go_health(h: &HealthConfig) -> String {
    format!(
        "{{Test:[{}] Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
        h.test.join(" "),
        go_duration(h.interval),
        go_duration(h.timeout),
        go_duration(h.start_period),
        go_duration(h.start_interval),
        h.retries
    )
}

/// Go's `time.Duration.String()` of a number of nanoseconds: `0s`, `1.5s`, `1m30s`, `1h0m0s`, `250ms`.
pub(super) fn go_duration(nanos: u64) -> String {
    /// `value / unit` with the fraction's trailing zeros dropped.
    fn fraction(value: u64, unit: u64, digits: usize) -> String {
        let (whole, rest) = (value / unit, value % unit);
        if rest == 0 {
            return whole.to_string();
        }
        let decimals = format!("{rest:0digits$}");
        format!("{whole}.{}", decimals.trim_end_matches('0'))
    }
    const SECOND: u64 = 1_000_000_000;
    match nanos {
        0 => "0s".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}µs", fraction(n, 1_000, 3)),
        n if n < SECOND => format!("{}ms", fraction(n, 1_000_000, 6)),
        n => {
            let (hours, minutes) = (n / (3600 * SECOND), n / (60 * SECOND) % 60);
            let seconds = fraction(n % (60 * SECOND), SECOND, 9);
            match (hours, minutes) {
                (0, 0) => format!("{seconds}s"),
                (0, m) => format!("{m}m{seconds}s"),
                (h, m) => format!("{h}h{m}m{seconds}s"),
            }
        }
    }
}

/// Go's `%q` of a string slice, as docker writes CMD and ENTRYPOINT into history.
pub(super) fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_go() {
        // time.Duration.String() of the same values.
        for (nanos, want) in [
            (0, "0s"),
            (999, "999ns"),
            (1_500, "1.5µs"),
            (250_000_000, "250ms"),
            (1_500_000_000, "1.5s"),
            (30_000_000_000, "30s"),
            (90_000_000_000, "1m30s"),
            (300_000_000_000, "5m0s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_004_000_000, "1h2m3.004s"),
        ] {
            assert_eq!(go_duration(nanos), want, "{nanos}");
        }
        let check = HealthConfig {
            test: vec!["CMD-SHELL".into(), "curl -f http://localhost/ || exit 1".into()],
            interval: 300_000_000_000,
            timeout: 3_000_000_000,
            retries: 3,
            ..HealthConfig::default()
        };
        assert_eq!(
            go_health(&check),
            "{Test:[CMD-SHELL curl -f http://localhost/ || exit 1] Interval:5m0s Timeout:3s StartPeriod:0s \
             StartInterval:0s Retries:3}"
        );
    }
}
