//! Byte counts as users write and read them: `--size 90MB`, `--max-memory 8GiB`, and the
//! figures lowbit prints.

use crate::error::{Error, Result};

/// Parses a byte count given to `flag`: bytes (`94371840`) or a number with a unit (`90MB`,
/// `85.5MiB`, `1.2GB`, `500kB`; SI units are powers of 1000, `Ki`/`Mi`/`Gi` of 1024).
pub fn parse_bytes(flag: &str, text: &str) -> Result<u64> {
    let bad = || {
        Error::Usage(format!("{flag} '{text}': expected bytes or a number with a unit, e.g. 94371840, 90MB, 85.5MiB"))
    };
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(bad());
    }
    Ok(bytes.floor() as u64)
}

/// `b` bytes for people: `7.31 GB`, `390.25 MB`, `12.0 kB`, `512 B` (SI units).
pub fn human_bytes(b: u64) -> String {
    let f = b as f64;
    if f >= 1e9 {
        format!("{:.2} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} kB", f / 1e3)
    } else {
        format!("{b} B")
    }
}

/// This process's peak resident set size so far (`VmHWM`, Linux), if the system says.
pub fn peak_resident_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// This process's resident set size now (`VmRSS`, Linux), if the system says.
pub fn resident_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn proc_status_bytes(field: &str) -> Option<u64> {
    status_field(&std::fs::read_to_string("/proc/self/status").ok()?, field)
}

/// A `kB` field of a `/proc/PID/status` text, in bytes.
fn status_field(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_and_without_units() {
        let b = |s: &str| parse_bytes("--max-memory", s).unwrap();
        assert_eq!(b("94371840"), 94371840);
        assert_eq!(b("90MB"), 90_000_000);
        assert_eq!(b("8 GB"), 8_000_000_000);
        assert_eq!(b("85.5MiB"), (85.5 * 1024.0 * 1024.0) as u64);
        assert_eq!(b("2GiB"), 2 << 30);
        for bad in ["", "MB", "-3MB", "3 parsecs", "0.1"] {
            let e = parse_bytes("--max-memory", bad).unwrap_err().to_string();
            assert!(e.contains("--max-memory"), "{e}");
        }
        assert_eq!(human_bytes(7_310_000_000), "7.31 GB");
        assert_eq!(human_bytes(512), "512 B");
    }

    #[test]
    fn the_peak_is_at_least_what_is_held() {
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        // Both fields from one read of /proc/self/status: other tests run on other threads
        // of this process, so two reads may see different moments (the kernel reports
        // VmHWM as at least VmRSS only within one read).
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let (Some(p), Some(now)) = (status_field(&status, "VmHWM:"), status_field(&status, "VmRSS:")) {
            assert!(p >= 64 << 20, "{p}");
            assert!(p >= now, "{p} {now}");
        }
        assert!(peak_resident_bytes().is_none_or(|p| p >= 64 << 20));
    }
}
