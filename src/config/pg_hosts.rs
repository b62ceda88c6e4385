//! libpq's multi-host forms: `postgres://u:p@h1:5432,h2:5433/db?target_session_attrs=…`
//! and `POSTGRES_HOST=h1,h2:5433`. sqlx parses one host only, so a list is split here into
//! one single-host URL (or host and port) per entry, each then parsed and given its TLS
//! settings exactly as a lone host would be: `verify-full` checks each host's own name.

use super::ConfigError;

/// libpq's `target_session_attrs`, limited to the values that suit a service that writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    /// Any host that accepts a connection (libpq's default; ours with a single host).
    Any,
    /// A session that accepts writes: not in recovery, `transaction_read_only` off. The
    /// default with several hosts, since every replica writes.
    ReadWrite,
    /// A server not in recovery, whatever `default_transaction_read_only` says.
    Primary,
}

impl SessionAttrs {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::Primary => "primary",
        }
    }

    fn parse(value: &str) -> Result<Self, ConfigError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "any" => Ok(SessionAttrs::Any),
            "read-write" => Ok(SessionAttrs::ReadWrite),
            "primary" => Ok(SessionAttrs::Primary),
            v @ ("read-only" | "standby" | "prefer-standby") => Err(ConfigError::new(
                "DATABASE_URL",
                format!(
                    "target_session_attrs={v} cannot serve writes; use read-write, primary or any"
                ),
            )),
            v => Err(ConfigError::new(
                "DATABASE_URL",
                format!("unknown target_session_attrs {v:?}; expected read-write, primary or any"),
            )),
        }
    }

    /// The attribute asked for, else read-write with several hosts (the service writes,
    /// and `any` would stay on whichever host answered first), else any.
    pub fn or_default(asked: Option<Self>, hosts: usize) -> Self {
        asked.unwrap_or(if hosts > 1 {
            SessionAttrs::ReadWrite
        } else {
            SessionAttrs::Any
        })
    }
}

/// One single-host URL per host of `url`, without `target_session_attrs` (which sqlx does
/// not know and would warn about), and that attribute if it was given.
pub fn split_url(url: &str) -> Result<(Vec<String>, Option<SessionAttrs>), ConfigError> {
    let bad = |problem: &str| ConfigError::new("DATABASE_URL", problem.to_owned());
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("must start with postgres:// or postgresql://"))?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let mut attrs = None;
    let mut kept = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => {
                attrs = Some(SessionAttrs::parse(value)?);
            }
            _ => kept.push(pair),
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    let mut urls = Vec::new();
    for host in hosts.split(',') {
        if host.trim().is_empty() && hosts.contains(',') {
            return Err(bad("empty host in the host list (h1:5432,h2:5432)"));
        }
        urls.push(format!("{scheme}://{userinfo}{host}{path}{query}"));
    }
    Ok((urls, attrs))
}

/// `POSTGRES_HOST`'s entries as host and port: `h1,h2:5433,[::1]:5434`; an entry without
/// a port takes `default_port` (`POSTGRES_PORT`).
pub fn split_hosts(list: &str, default_port: u16) -> Result<Vec<(String, u16)>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .map(|entry| host_and_port(entry, default_port))
        .collect()
}

fn host_and_port(entry: &str, default_port: u16) -> Result<(String, u16), ConfigError> {
    let bad = |problem: String| ConfigError::new("POSTGRES_HOST", problem);
    if entry.is_empty() {
        return Err(bad("empty host in the list (h1,h2:5433)".to_owned()));
    }
    let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad(format!("{entry:?}: unclosed [")))?;
        (host, after.strip_prefix(':'))
    } else if entry.matches(':').count() == 1 {
        let (host, port) = entry.split_once(':').unwrap_or((entry, ""));
        (host, Some(port))
    } else {
        // A bare IPv6 address, or a name.
        (entry, None)
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| {
            bad(format!(
                "{entry:?}: the port must be a number from 1 to 65535"
            ))
        })?,
        None => default_port,
    };
    if host.is_empty() || port == 0 {
        return Err(bad(format!("{entry:?}: expected host or host:port")));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_several_hosts_becomes_one_url_per_host() {
        let (urls, attrs) = split_url(
            "postgres://u:p%40@h1:5432,h2:5433,[::1]/db?sslmode=require&target_session_attrs=primary",
        )
        .unwrap();
        assert_eq!(
            urls,
            [
                "postgres://u:p%40@h1:5432/db?sslmode=require",
                "postgres://u:p%40@h2:5433/db?sslmode=require",
                "postgres://u:p%40@[::1]/db?sslmode=require",
            ]
        );
        assert_eq!(attrs, Some(SessionAttrs::Primary));
        let (urls, attrs) = split_url("postgres://h/db").unwrap();
        assert_eq!((urls, attrs), (vec!["postgres://h/db".to_owned()], None));
    }

    #[test]
    fn session_attrs_that_cannot_write_are_refused() {
        for value in ["standby", "read-only", "prefer-standby", "sometimes"] {
            let err =
                split_url(&format!("postgres://a,b/db?target_session_attrs={value}")).unwrap_err();
            assert_eq!(err.var, "DATABASE_URL");
            assert!(err.problem.contains("target_session_attrs"), "{err}");
        }
        assert_eq!(
            split_url("postgres://a,,b/db").unwrap_err().var,
            "DATABASE_URL"
        );
    }

    #[test]
    fn the_host_list_takes_ports_per_host_or_the_default() {
        assert_eq!(
            split_hosts("h1, h2:5433,[::1]:5434", 6543).unwrap(),
            [
                ("h1".to_owned(), 6543),
                ("h2".to_owned(), 5433),
                ("::1".to_owned(), 5434)
            ]
        );
        for bad in ["h1,", "h1:x", "h1:0", ":5432", "[::1"] {
            assert_eq!(
                split_hosts(bad, 5432).unwrap_err().var,
                "POSTGRES_HOST",
                "{bad}"
            );
        }
    }

    #[test]
    fn several_hosts_default_to_read_write() {
        assert_eq!(SessionAttrs::or_default(None, 1), SessionAttrs::Any);
        assert_eq!(SessionAttrs::or_default(None, 2), SessionAttrs::ReadWrite);
        assert_eq!(
            SessionAttrs::or_default(Some(SessionAttrs::Any), 2),
            SessionAttrs::Any
        );
    }
}
