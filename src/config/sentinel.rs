//! `REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER` and `REDIS_SENTINEL_PASSWORD`: where to ask
//! for the Redis master instead of naming its host.
//!
//! With sentinels, the master's address comes from them alone: the host and port of
//! `REDIS_URL` (or `REDIS_HOST` and `REDIS_PORT`) are not used, while its password, user
//! name and database number still are, since they are the master's own. That keeps one
//! place for the master's credentials whichever way it is found.

use super::{set, ConfigError, Secret, Source};

/// The sentinels to ask and the master to ask them for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    /// `host:port` of each sentinel, in the configured order.
    pub addresses: Vec<(String, u16)>,
    /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master: String,
    /// The sentinels' own password (`requirepass` in sentinel.conf), if any.
    pub password: Option<Secret>,
}

/// `None` when `REDIS_SENTINELS` is unset; then the two others must be unset too, since a
/// master name or sentinel password alone would be silently ignored.
pub fn sentinels(src: &dyn Source, url: &str) -> Result<Option<SentinelSettings>, ConfigError> {
    let Some(list) = set(src, "REDIS_SENTINELS") else {
        for var in ["REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD"] {
            if set(src, var).is_some() {
                return Err(ConfigError::new(var, "applies only with REDIS_SENTINELS"));
            }
        }
        return Ok(None);
    };
    let addresses = addresses(&list)?;
    let master = set(src, "REDIS_SENTINEL_MASTER").ok_or_else(|| {
        ConfigError::new(
            "REDIS_SENTINEL_MASTER",
            "must be set with REDIS_SENTINELS: the name the sentinels monitor the master under",
        )
    })?;
    if master.chars().any(char::is_whitespace) {
        return Err(ConfigError::new(
            "REDIS_SENTINEL_MASTER",
            format!("{master:?} holds white space; a Sentinel master name cannot"),
        ));
    }
    check_url(url)?;
    Ok(Some(SentinelSettings {
        addresses,
        master,
        password: src
            .get("REDIS_SENTINEL_PASSWORD")
            .filter(|p| !p.is_empty())
            .map(Secret::new),
    }))
}

/// The sentinels hand out TCP addresses, which a socket URL cannot take; and TLS to the
/// sentinels is not built (nor tested), so it is refused rather than half-working.
fn check_url(url: &str) -> Result<(), ConfigError> {
    match redis::parse_redis_url(url).as_ref().map(|u| u.scheme()) {
        Some("redis") => Ok(()),
        Some("rediss") => Err(ConfigError::new(
            "REDIS_URL",
            "rediss:// (TLS) is not supported with REDIS_SENTINELS yet",
        )),
        _ => Err(ConfigError::new(
            "REDIS_URL",
            "must be a redis:// URL with REDIS_SENTINELS (a socket path cannot be followed)",
        )),
    }
}

/// `h1:26379,h2:26379`: every entry a host and a port, no repeats.
fn addresses(list: &str) -> Result<Vec<(String, u16)>, ConfigError> {
    let bad = |problem: String| ConfigError::new("REDIS_SENTINELS", problem);
    let mut addresses: Vec<(String, u16)> = Vec::new();
    for entry in list.split(',').map(str::trim) {
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("{entry:?} is not host:port")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(format!("{entry:?}: {port:?} is not a port")))?;
        if host.is_empty() || host.chars().any(char::is_whitespace) {
            return Err(bad(format!("{entry:?} has no host")));
        }
        if addresses.iter().any(|(h, p)| h == host && *p == port) {
            return Err(bad(format!("{entry:?} is listed twice")));
        }
        addresses.push((host.to_owned(), port));
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_hosts_and_ports() {
        assert_eq!(
            addresses("h1:26379, 10.0.0.2:26380,[::1]:26381").unwrap(),
            vec![
                ("h1".to_owned(), 26379),
                ("10.0.0.2".to_owned(), 26380),
                ("::1".to_owned(), 26381)
            ]
        );
        for bad in [
            "h1",
            "h1:",
            ":26379",
            "h1:0",
            "h1:x",
            "h1:26379,",
            "h1:1,h1:1",
        ] {
            assert_eq!(addresses(bad).unwrap_err().var, "REDIS_SENTINELS", "{bad}");
        }
    }
}
