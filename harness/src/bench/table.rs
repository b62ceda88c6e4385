//! The table of figures: each row beside its same-run baseline and target, rendered as
//! Markdown, with the machine it was measured on, written into `BENCHMARKS.md`.

use std::path::Path;

/// Milliseconds with sensible precision.
pub fn ms(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3}")
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

pub fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// Reported, no target.
    Info,
    /// Could not be measured in this run.
    Missing,
}

impl Verdict {
    pub fn of(ok: bool) -> Self {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }

    fn text(self, smoke: bool) -> &'static str {
        match (self, smoke) {
            (Verdict::Missing, _) => "MISSING",
            (Verdict::Info, _) => "-",
            (_, true) => "(smoke)",
            (Verdict::Pass, false) => "PASS",
            (Verdict::Miss, false) => "MISS",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Figure {
    pub section: &'static str,
    pub name: String,
    pub value: String,
    /// The baseline measured in the same run, with its name.
    pub baseline: String,
    pub ratio: Option<f64>,
    pub target: String,
    pub verdict: Verdict,
}

impl Figure {
    pub fn info(section: &'static str, name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            section,
            name: name.into(),
            value: value.into(),
            baseline: String::new(),
            ratio: None,
            target: String::new(),
            verdict: Verdict::Info,
        }
    }

    pub fn missing(section: &'static str, name: impl Into<String>, why: impl Into<String>) -> Self {
        // A child's log may follow the reason; a table row holds one line.
        let why: String = why.into();
        let why = why
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take_while(|l| !l.starts_with("Stack backtrace"))
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            verdict: Verdict::Missing,
            ..Self::info(section, name, why)
        }
    }

    pub fn baseline(mut self, baseline: impl Into<String>) -> Self {
        self.baseline = baseline.into();
        self
    }

    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = Some(ratio);
        self
    }

    pub fn target(mut self, target: impl Into<String>, ok: bool) -> Self {
        self.target = target.into();
        self.verdict = Verdict::of(ok);
        self
    }
}

/// The figures as a Markdown table (readable as plain text too).
pub fn table(figures: &[Figure], smoke: bool) -> String {
    let mut out = String::from(
        "| Section | Figure | Value | Baseline (same run) | Ratio | Target | Verdict |\n\
         | --- | --- | --- | --- | ---: | --- | --- |\n",
    );
    for f in figures {
        let ratio = f
            .ratio
            .map(|r| format!("{:.0} %", r * 100.0))
            .unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            f.section,
            f.name,
            f.value.replace('|', "/"),
            f.baseline.replace('|', "/"),
            ratio,
            f.target,
            f.verdict.text(smoke)
        ));
    }
    out
}

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// The machine the figures were measured on.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into());
    let memory = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), {memory} RAM; load average at start {load}")
}

/// Replaces the text between `<!-- bench:begin -->` and `<!-- bench:end -->` in `path`
/// (appends the block when the markers are absent).
pub fn write_section(path: &Path, content: &str) -> anyhow::Result<()> {
    const BEGIN: &str =
        "<!-- bench:begin (generated by the bench binary; edits here are overwritten) -->";
    const END: &str = "<!-- bench:end -->";
    let block = format!("{BEGIN}\n{content}\n{END}");
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let text = match (existing.find("<!-- bench:begin"), existing.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{block}{}", &existing[..b], &existing[e + END.len()..])
        }
        _ if existing.is_empty() => format!("{block}\n"),
        _ => format!("{existing}\n{block}\n"),
    };
    std::fs::write(path, text)?;
    Ok(())
}

/// UTC date and time, without pulling a date crate into the harness.
pub fn chrono_like_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1234.4), "1,234");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }

    #[test]
    fn the_section_is_replaced_in_place() {
        let dir = std::env::temp_dir().join(format!("bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("B.md");
        std::fs::write(&path, "# Title\n\nbefore\n").unwrap();
        write_section(&path, "one").unwrap();
        write_section(&path, "two").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Title\n\nbefore\n"));
        assert!(text.contains("\ntwo\n") && !text.contains("one"));
        assert_eq!(text.matches("bench:end").count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
